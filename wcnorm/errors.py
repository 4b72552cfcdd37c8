"""The errors wcnorm reports to users: each says what is wrong and what to do."""


class WcnormError(Exception):
    """Base class: the CLI prints these as one clear message, without a traceback."""


class ConfigError(WcnormError, ValueError):
    """A config value that cannot work (found before anything is built)."""


class DatasetUnavailable(WcnormError):
    """The dataset is not on disk and cannot be downloaded."""


class DivergedError(WcnormError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class CheckpointError(WcnormError):
    """A checkpoint or result file that cannot be trusted or read (it is never unpickled)."""


class RunMismatchError(WcnormError):
    """A run directory whose checkpoint or result belongs to another config or other data."""


class Interrupted(WcnormError):
    """A signal (SIGTERM, Ctrl-C) stopped training; the checkpoint at that step is kept."""


class DiskFull(WcnormError, OSError):
    """No space left to write a run's file; the previous version of the file is kept whole."""
