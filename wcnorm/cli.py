"""The `wcnorm` command: `wcnorm <command> [args]`.

`train` is a Hydra app (overrides, `--help`, `--cfg job`, `-m` multirun, shell
completion); the others are plain argparse tools that read run directories.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

COMMANDS = {
    "train": "train one run, or a sweep with -m (Hydra overrides: `wcnorm train --help`)",
    "report": "a results folder from run directories: per preset tables, claims, figures, runs.csv",
    "table": "tables like the papers' (CSV + Markdown) and the claims check, from run directories",
    "search": "the best learning rate of each grid point of a search (`train -m ... +search=lr`)",
    "plot": "figures like the papers' (curves, accuracy vs depth, condition numbers)",
    "bench": "measure step throughput, WC and ENorm overheads and MFU against a plain PyTorch loop",
}

# The module whose `main(argv)` each plain command runs.
TOOL_MODULES = {"report": "wcnorm.report.pipeline", "table": "wcnorm.report.table", "search": "wcnorm.report.search_table", "plot": "wcnorm.report.plot",
                "bench": "wcnorm.bench"}

USAGE = "usage: wcnorm <command> [args]\n\ncommands:\n" + "\n".join(
    f"  {name:<7} {text}" for name, text in COMMANDS.items()) + (
    "\n\nexamples:\n"
    "  wcnorm train model=resnet18 norm=bn_wc\n"
    "  wcnorm train -m norm=bn,bn_wc,enorm seed=0,1,2\n"
    "  wcnorm table runs/ --out results/table\n"
    "  wcnorm report runs/cpu --out results\n"
    "  wcnorm train -m experiment=wc_resnet budget=short +search=lr\n")


# Launchers that need a Hydra plugin: `hydra/launcher=<name>` -> (plugin module, pip package).
# Without the plugin Hydra only says "Could not find 'hydra/launcher/...'"; we say what to install.
LAUNCHER_PLUGINS = {
    name: ("hydra_submitit_launcher", "hydra-submitit-launcher") for name in ("slurm", "submitit_slurm", "submitit_local")
} | {name: ("hydra_joblib_launcher", "hydra-joblib-launcher") for name in ("local_parallel", "joblib")}

# `+search=<name>` (conf/search/): a learning-rate search, on Optuna (the `search` extra).
SEARCH_GROUP = "search"
SEARCH_PACKAGE = ("optuna", "optuna>=5")
# Flags of `wcnorm train` under which it trains no single run: a sweep, or Hydra's help and
# config printing. Without one, a search would train one run at the default rate.
NOT_A_RUN = {"-m", "--multirun", "--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help",
             "-sc", "--shell-completion"}


# What a process killed by SIGPIPE reports (128 + 13): `wcnorm ... | head` ends as any
# other command cut short by its reader does, also under `set -o pipefail`.
BROKEN_PIPE_STATUS = 141


class StdoutClosed(BrokenPipeError):
    """A log record could not be written: the reader of stdout has gone."""


def _stdout_closed() -> int:
    """Stop quietly once stdout's reader has gone. Python flushes stdout again at exit
    and would report that failure too: point stdout at the null device first."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return BROKEN_PIPE_STATUS


def _stop_logging_into_a_closed_stdout() -> None:
    """Make a log record that cannot reach stdout raise StdoutClosed: `logging` would
    print a traceback of its own for every record, and the run would go on."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handle_error = handler.handleError

            def raise_if_closed(record, handle_error=handle_error):
                if isinstance(sys.exc_info()[1], BrokenPipeError):
                    raise StdoutClosed() from sys.exc_info()[1]
                handle_error(record)

            handler.handleError = raise_if_closed


def _choices(argv: list[str], group: str) -> list[str]:
    """The options chosen for a config group on the command line (`group=x`, `+group=x`)."""
    return [name for key, _, name in (arg.partition("=") for arg in argv) if key.lstrip("+") == group]


def _plugin_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(f"hydra_plugins.{module}") is not None
    except ModuleNotFoundError:  # no Hydra plugin at all: no `hydra_plugins` namespace
        return False


def missing_launcher_plugin(argv: list[str]) -> str | None:
    """The message for a `hydra/launcher=...` override whose plugin is not installed, else None."""
    for name in _choices(argv, "hydra/launcher"):
        if name not in LAUNCHER_PLUGINS:
            continue
        module, package = LAUNCHER_PLUGINS[name]
        if not _plugin_installed(module):
            return (f"hydra/launcher={name} needs the Hydra launcher plugin '{package}', which is not "
                    f"installed here. Install it with:\n  pip install 'wcnorm[cluster]'\n"
                    f"or\n  pip install {package}")
    return None


def search_problem(argv: list[str]) -> str | None:
    """Why a `+search=...` command cannot start (its plugin is absent, or it is not a sweep), else None."""
    names = _choices(argv, SEARCH_GROUP)
    if not names:
        return None
    module, package = SEARCH_PACKAGE
    if importlib.util.find_spec(module) is None:
        return (f"+{SEARCH_GROUP}={names[-1]} needs Optuna, which is not installed here. Install it "
                f"with:\n  pip install 'wcnorm[search]'\nor\n  pip install '{package}'")
    if not NOT_A_RUN & set(argv):
        return f"+{SEARCH_GROUP}={names[-1]} is a sweep of many runs: add -m (`wcnorm train -m ...`)"
    return None


def _train(argv: list[str]) -> int:
    missing = missing_launcher_plugin(argv) or search_problem(argv)
    if missing:
        print(f"wcnorm train: {missing}", file=sys.stderr)
        return 2
    import hydra
    from omegaconf import DictConfig

    from .training.sweep import USER_ERRORS, in_multirun, job_failed, job_stop_reason, not_started
    from .training.train import train

    @hydra.main(config_path="pkg://wcnorm.conf", config_name="train", version_base="1.3")
    def app(cfg: DictConfig):
        _stop_logging_into_a_closed_stdout()
        stopped = job_stop_reason()
        if stopped is not None:  # a signal stopped the sweep: no further job trains
            return not_started(stopped)
        try:
            return train(cfg)
        except StdoutClosed:
            raise SystemExit(_stdout_closed()) from None
        except Exception as err:
            if in_multirun():  # recorded as this job's failure; the sweep goes on
                return job_failed(err)
            if not isinstance(err, USER_ERRORS):
                raise
            logging.getLogger("wcnorm").error("%s", err)
            sys.exit(1)

    # Hydra reads sys.argv; present the subcommand as the program name, except to
    # shell completion, which must register (and later call) the real program.
    saved = sys.argv
    prog = saved[0] if saved else "wcnorm"
    sys.argv = [prog if "-sc" in argv else f"{prog} train", *argv]
    try:
        app()
    finally:
        sys.argv = saved
    return 0


def _tool(module: str, argv: list[str]) -> int:
    import importlib

    return importlib.import_module(TOOL_MODULES[module]).main(argv) or 0


def _complete(argv: list[str]) -> int:
    """Tab completion of `wcnorm train ...`: hand Hydra the line without `train`."""
    import os

    line, point = os.environ.get("COMP_LINE", ""), int(os.environ.get("COMP_POINT", "0") or 0)
    words = line.split(" ")
    if len(words) > 1 and words[1] == "train":
        os.environ["COMP_LINE"] = " ".join(words[:1] + words[2:])
        os.environ["COMP_POINT"] = str(max(0, point - len("train ")))
    elif "query" in " ".join(argv):
        return 0  # completing the subcommand itself, or another command: nothing from Hydra
    return _train(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:  # flushed here (also on Hydra's sys.exit), where a closed pipe can be caught
            sys.stdout.flush()
    except BrokenPipeError:  # `wcnorm ... | head`: the reader has all it wanted
        return _stdout_closed()


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "-sc":  # Hydra's completion calls `wcnorm -sc query=bash` with the line typed so far
        return _complete(argv)
    if cmd == "train":
        return _train(rest)
    if cmd in COMMANDS:
        return _tool(cmd, rest)
    print(f"wcnorm: unknown command '{cmd}'\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
