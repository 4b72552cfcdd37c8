"""Experiment trackers: a run's numbers and pictures, live, in TensorBoard, Weights &
Biases or MLflow, next to the CSV files every run writes anyway.

    wcnorm train logger=[tensorboard,wandb]    # any of tensorboard, wandb, mlflow; csv alone adds none

Each chosen tracker receives

* the resolved config, once, as hyperparameters (dotted keys: `optim.lr`, `norm.wc.p`);
* the training loss and the learning rate every `logger.every_n_steps` optimizer steps
  (tags `step/train_loss`, `step/lr`);
* every column of each epoch's metrics.csv row under its CSV name, so the methods'
  columns (ENorm's objective and imbalance, the condition numbers) come along;
* the pictures a task leaves for an epoch, PNGs in `<run_dir>/<kind>/epoch_<NNN>/`
  (`epoch_folder`; NeRF's renders: `renders/epoch_003/r_0_pred.png`), as `<kind>/<name>`.

Everything is logged against the optimizer step (the epoch is a column), so per-step
and per-epoch series share one axis and grow monotonically, as W&B requires.

One training run is one tracker run, whatever the interruptions: its identity comes
from the run directory (`run_key`), so a resumed run continues it. TensorBoard hides
what a crashed process logged past the checkpoint (`purge_step`), W&B reuses the id
with `resume="allow"`, MLflow finds the run by its `wcnorm.run_key` tag. A run that
starts from scratch again in the same directory (`trainer.restart`) is a new tracker
run. A tracker chosen only when resuming receives the epochs trained before.

Only the main process logs (`build_trackers` gives the other ranks nothing). Each
tracker's package is an optional extra (`pip install 'wcnorm[trackers]'`);
`check_trackers` names a missing one before any work starts.
"""

from __future__ import annotations

import hashlib
import inspect
import netrc
import os
import re
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from .trainer import Callback

INSTALL = "pip install 'wcnorm[trackers]'"
WANDB_MODES = ("offline", "online", "disabled")
# The metrics TensorBoard's HParams dashboard shows next to each run's hyperparameters.
HPARAM_METRICS = ("test_acc", "test_loss", "train_loss")
MLFLOW_BATCH = 100  # MLflow takes at most 100 params per log_batch call
WANDB_FOLDER = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-(.+)")  # a W&B run's local folder: time, id


# ----------------------------------------------------------------------------- a run's identity


def run_key(run_dir: str | Path) -> str:
    """The tracker-side id of a training run: a hash of its run directory's absolute path.

    The same directory (a resumed run) gives the same W&B id and MLflow tag, two
    directories never share one; 16 hex digits suit W&B's id alphabet."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def run_name(cfg: DictConfig, run_dir: str | Path) -> str:
    """How the run is listed in a tracker: its directory below `out_dir`
    (`cifar10/resnet18/bn_wc/seed0-1a2b3c4d`), or its folder name if it lies elsewhere."""
    run_dir, out_dir = Path(run_dir).resolve(), Path(cfg.out_dir).resolve()
    return run_dir.relative_to(out_dir).as_posix() if run_dir.is_relative_to(out_dir) else run_dir.name


def hyperparameters(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """The config flattened to dotted keys with scalar values (trackers' hyperparameter
    tables hold scalars only): lists become their text, nulls `null`."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(hyperparameters(value, f"{name}."))
        elif value is None:
            flat[name] = "null"
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def numeric(row: dict) -> dict[str, float]:
    """The numeric columns of a metrics row."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ----------------------------------------------------------------------------- pictures


def epoch_folder(run_dir: str | Path, kind: str, epoch: int) -> Path:
    """Where a task leaves the pictures of epoch `epoch` (PNGs) for the trackers:
    `<run_dir>/<kind>/epoch_<NNN>/`, e.g. NeRF's renders in `renders/epoch_003/`."""
    return Path(run_dir) / kind / f"epoch_{epoch:03d}"


def epoch_images(run_dir: str | Path, epoch: int) -> dict[str, Path]:
    """{`<kind>/<name>`: PNG} of the pictures left for epoch `epoch` (`epoch_folder`)."""
    found = sorted(Path(run_dir).glob(f"*/epoch_{epoch:03d}/*.png"))
    return {f"{p.parent.parent.name}/{p.stem}": p for p in found}


def read_png(path: Path) -> np.ndarray:
    """(H, W, 3) uint8."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------------------- the trackers


@dataclass(frozen=True)
class TrackedRun:
    """What every tracker needs to know of the training run it mirrors."""

    run_dir: Path
    name: str  # run_name
    key: str  # run_key
    config: dict  # the resolved config
    experiment: str | None  # the preset (`experiment=...`), if any


class Tracker:
    """One tracker's side of a run. `package` is the module it needs installed."""

    package: str

    def start(self, step: int) -> bool:
        """Open (or reopen, when resuming at optimizer step `step`) the tracker's run
        and record the hyperparameters; True when that run is new (holds nothing yet)."""
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_images(self, images: dict[str, Path], step: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Make what was logged durable (after each epoch)."""

    def close(self, finished: bool) -> None:
        raise NotImplementedError


class TensorBoard(Tracker):
    """Event files in `<run_dir>/tensorboard/`: `tensorboard --logdir <out_dir>` shows a
    whole sweep, each run under its directory's name."""

    package = "tensorboard"

    def __init__(self, run: TrackedRun, flush_secs: int = 30):
        self.run, self.flush_secs = run, int(flush_secs)
        self.log_dir = run.run_dir / "tensorboard"

    def start(self, step: int) -> bool:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
        from torch.utils.tensorboard.summary import hparams

        new = not any(self.log_dir.glob("events.out.tfevents.*"))
        # A session-start event at step + 1: TensorBoard hides what a crashed process
        # logged past the checkpoint, which this process logs again.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1, flush_secs=self.flush_secs)
        for summary in hparams(hyperparameters(self.run.config), dict.fromkeys(HPARAM_METRICS, 0.0)):
            self.writer.file_writer.add_summary(summary)
        return new

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        for tag, path in images.items():
            self.writer.add_image(tag, read_png(path), step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self, finished: bool) -> None:
        self.writer.close()


class WandB(Tracker):
    """A W&B run with id `run_key`, its files in `<run_dir>/wandb/`; offline by default
    (no account, no network): `wandb sync` uploads it later, resumed parts included."""

    package = "wandb"

    def __init__(self, run: TrackedRun, project: str = "wcnorm", entity: str | None = None,
                 group: str | None = None, mode: str = "offline", tags=()):
        self.run, self.project, self.entity, self.mode = run, project, entity, mode
        self.group, self.tags = group, list(tags)

    def start(self, step: int) -> bool:
        import wandb  # the optional wandb package

        self.wandb = wandb
        run_id, new = self._run_id(step)
        self.handle = wandb.init(
            project=self.project, entity=self.entity, group=self.group, name=self.run.name, tags=self.tags,
            id=run_id, resume="allow", mode=self.mode, dir=str(self.run.run_dir), config=self.run.config)
        return new

    def _run_id(self, step: int) -> tuple[str, bool]:
        """(the W&B id, whether that run is new). A resume continues the newest W&B run of
        the directory; a start from scratch is `run_key`'s run, or where the directory
        held W&B runs before (`trainer.restart`), a new one, `<run_key>-<n>`: W&B keeps a
        run's steps increasing, so a second start cannot reuse the first's run."""
        folders = sorted(m.groups() for p in (self.run.run_dir / "wandb").glob("*run-*")
                         if (m := WANDB_FOLDER.fullmatch(p.name)))
        ids = [run_id for _, run_id in folders]
        if not ids:
            return self.run.key, True
        if step > 0:
            return ids[-1], False
        n = 1
        while f"{self.run.key}-{n}" in ids:
            n += 1
        return f"{self.run.key}-{n}", True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.handle.log(metrics, step=step)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        self.handle.log({tag: self.wandb.Image(str(p)) for tag, p in images.items()}, step=step)

    def close(self, finished: bool) -> None:
        # A run stopped before its last epoch shows as failed until a resume continues it.
        self.handle.finish(exit_code=0 if finished else 1)
        # finish() hands the records to W&B's service process, which writes them after it
        # returns; wait for it here: a worker process of a parallel sweep lives on to the
        # next job, and may be ended without the exit hook that would wait otherwise.
        self.wandb.teardown()


class MLflow(Tracker):
    """An MLflow run tagged `wcnorm.run_key`, in experiment `experiment_name` of the store
    at `tracking_uri` (default: a file store, `<out_dir>/mlruns`, one folder per run, so
    the parallel jobs of a sweep never contend for it)."""

    package = "mlflow"

    def __init__(self, run: TrackedRun, tracking_uri: str, experiment_name: str = "wcnorm"):
        self.run, self.uri, self.experiment_name = run, str(tracking_uri), experiment_name

    def start(self, step: int) -> bool:
        from mlflow.tracking import MlflowClient  # the optional mlflow package

        if self.uri.startswith("file:") or "://" not in self.uri:
            # MLflow 3 keeps its file store in maintenance, behind this opt-in.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(self.uri)
        experiment = self._experiment_id()
        # A resume continues the newest run of the directory; a start from scratch is a new run.
        found = step > 0 and self.client.search_runs(
            [experiment], f"tags.`wcnorm.run_key` = '{self.run.key}'", order_by=["attributes.start_time DESC"],
            max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return False
        tags = {"wcnorm.run_key": self.run.key, "wcnorm.run_dir": str(self.run.run_dir)}
        if self.run.experiment:
            tags["wcnorm.experiment"] = self.run.experiment
        self.run_id = self.client.create_run(experiment, run_name=self.run.name, tags=tags).info.run_id
        self._log_params()  # once: MLflow params cannot change, and a resumed run keeps its first
        return True

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is None:
            try:
                return self.client.create_experiment(self.experiment_name)
            except MlflowException:  # another job of the sweep created it first
                found = self.client.get_experiment_by_name(self.experiment_name)
                if found is None:
                    raise
        return found.experiment_id

    def _log_params(self) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in hyperparameters(self.run.config).items()]
        for i in range(0, len(params), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + MLFLOW_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_images(self, images: dict[str, Path], step: int) -> None:
        for path in images.values():  # at the same place as in the run directory
            folder = path.parent.relative_to(self.run.run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")


TRACKERS: dict[str, type[Tracker]] = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


# ----------------------------------------------------------------------------- the callback


class TrackerCallback(Callback):
    """Feeds the chosen trackers from the training loop.

    Needs two hooks of the loop: `on_epoch_logged(trainer, row)`, after the epoch's row
    (every callback's columns and the epoch time) is in metrics.csv, and
    `on_fit_end(trainer)`, when `fit` returns or raises."""

    def __init__(self, trackers: list[Tracker], run_dir: Path, every_n_steps: int = 50):
        self.trackers, self.run_dir, self.every = trackers, Path(run_dir), int(every_n_steps)

    def _log_epoch(self, tracker: Tracker, row: dict, step: int) -> None:
        tracker.log_metrics(numeric(row), step)
        images = epoch_images(self.run_dir, int(row["epoch"]))
        if images:
            tracker.log_images(images, step)
        tracker.flush()

    def on_fit_start(self, trainer) -> None:
        for tracker in self.trackers:
            if tracker.start(trainer.step) and trainer.history:
                # New to a resumed run: give it the epochs trained before, at the steps they ended.
                steps_per_epoch = trainer.step // trainer.epoch
                for row in trainer.history:
                    self._log_epoch(tracker, row, int(row["epoch"]) * steps_per_epoch)

    def on_step_end(self, trainer) -> None:
        if trainer.step % self.every:
            return
        metrics = {"step/lr": float(trainer.optimizer.param_groups[0]["lr"])}
        loss = getattr(trainer, "last_loss", None)
        if loss is not None:
            metrics["step/train_loss"] = float(loss)  # waits for the device: every N steps only
        for tracker in self.trackers:
            tracker.log_metrics(metrics, trainer.step)

    def on_epoch_logged(self, trainer, row: dict) -> None:
        for tracker in self.trackers:
            self._log_epoch(tracker, row, trainer.step)

    def on_fit_end(self, trainer) -> None:
        for tracker in self.trackers:
            tracker.close(trainer.finished)


# ----------------------------------------------------------------------------- from the config


def chosen_trackers(cfg: DictConfig) -> list[str]:
    """The trackers the `logger` group picked, in config order (`csv` is no tracker:
    metrics.csv and result.json are always written)."""
    return [name for name in cfg.get("logger") or {} if name in TRACKERS]


def check_trackers(cfg: DictConfig, *, this_machine: bool = True) -> list[str]:
    """The problems of the `logger` settings, as config validation lists them. With
    `this_machine`, a chosen tracker whose package is not installed here is one, with
    the command that installs it (a job a launcher runs elsewhere has its own packages)."""
    logger, problems = cfg.get("logger") or {}, []
    every = logger.get("every_n_steps")
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        problems.append(f"logger.every_n_steps={every!r}: must be a positive integer")
    for name in chosen_trackers(cfg) if this_machine else ():
        package = TRACKERS[name].package
        if find_spec(package) is None:
            problems.append(f"logger={name} needs the '{package}' package, which is not installed: "
                            f"{INSTALL} (or pip install {package})")
    for name in chosen_trackers(cfg):
        valid = [p for p in inspect.signature(TRACKERS[name].__init__).parameters if p not in ("self", "run")]
        unknown = [k for k in (logger.get(name) or {}) if k not in valid]
        if unknown:
            problems.append(f"logger.{name}: unknown option(s) {unknown}; valid: {', '.join(valid)}")
    if "wandb" in logger and logger.wandb.mode not in WANDB_MODES:
        problems.append(f"logger.wandb.mode={logger.wandb.mode!r}: valid: {', '.join(WANDB_MODES)}")
    if this_machine:
        problems += _reachability_problems(logger)
    return problems


def _nearest_folder(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _reachability_problems(logger) -> list[str]:
    """What would stop a chosen tracker once the run has started: an MLflow file store
    that cannot be written, online W&B without an API key."""
    problems = []
    uri = str((logger.get("mlflow") or {}).get("tracking_uri", "")) if "mlflow" in logger else ""
    if uri and (uri.startswith("file:") or "://" not in uri) and not uri.startswith("sqlite:"):
        store = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser()
        folder = _nearest_folder(store)
        if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            problems.append(f"logger.mlflow.tracking_uri={uri!r}: '{folder}' cannot be written; choose a "
                            "store you can write (e.g. logger.mlflow.tracking_uri=file:<folder of yours>)")
    if "wandb" in logger and logger.wandb.get("mode") == "online" and not _wandb_key():
        problems.append("logger.wandb.mode=online needs a W&B API key: run `wandb login` or set "
                        "WANDB_API_KEY, or log offline (logger.wandb.mode=offline) and `wandb sync` later")
    return problems


def _wandb_key() -> bool:
    """Whether W&B finds an API key: WANDB_API_KEY, or `wandb login`'s entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def build_trackers(cfg: DictConfig, run_dir: str | Path | None, *, is_main: bool) -> list[Callback]:
    """The callback feeding the trackers `cfg.logger` chose; nothing on ranks other than
    0 (one process speaks for the run), without a run directory, or when none is chosen."""
    names = chosen_trackers(cfg)
    if not (is_main and run_dir and names):
        return []
    run = TrackedRun(Path(run_dir), run_name(cfg, run_dir), run_key(run_dir),
                     OmegaConf.to_container(cfg, resolve=True), cfg.get("experiment"))
    trackers = [TRACKERS[name](run, **OmegaConf.to_container(cfg.logger[name], resolve=True)) for name in names]
    return [TrackerCallback(trackers, Path(run_dir), cfg.logger.every_n_steps)]
