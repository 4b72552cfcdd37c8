"""Sweeps (`wcnorm train -m`) that one bad job does not stop.

* Before any job starts, every job's config is composed as its launcher will compose
  it and checked (`config.problems`); the invalid ones are listed together, with their
  overrides. They still run, as part of the sweep, and fail at once.
* A job that fails hands its error back to Hydra as its return value (`JobFailure`).
  Raising would do no better: Hydra's sweeper re-raises a job's exception once the
  batch is done, which ends the sweep before its end-of-sweep hook (no summary); and
  `sys.exit` ends the sweep process outright, or kills a joblib worker mid-write.
* Every job writes its log (`job.log`) and its outcome (`job.json`) into its folder of
  the sweep directory, `<hydra.sweep.dir>/<job number>/`, from whatever process or
  machine the launcher ran it on; at the end the sweep reads the outcomes back, lists
  the failed jobs with their logs, and exits with status 1 if any failed.
* Under the basic sweeper every job is one the user asked for, and a job whose loss
  diverged has failed. Under a search (another sweeper: the jobs are its proposals) a
  diverged trial is an answer, its rate was too high, and does not fail the sweep.

`SweepCallback` is registered in conf/train.yaml (`hydra.callbacks`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from ..errors import DivergedError, WcnormError
from ..models import ModelConfigError
from ..outputs import atomic_write_text
from .config import problems

log = logging.getLogger("wcnorm")

JOB_LOG, JOB_RECORD = "job.log", "job.json"
# The outcomes (job.json "status") of a job that did not finish.
UNFINISHED = ("failed", "diverged")
# What a search maximizes (result.json): the final epoch's accuracy on the validation split
# (`dataset.val_split`), in %. Never the test set's.
SEARCH_OBJECTIVE = "final_val_acc"
# Launchers whose jobs run on other machines: what this one has (CUDA?) says nothing there.
REMOTE_LAUNCHERS = ("SlurmLauncher",)
# Errors that are the user's to fix: reported as their message; anything else with its traceback.
USER_ERRORS = (WcnormError, ModelConfigError)


@dataclass
class JobFailure:
    """What a failed job of a sweep returns to Hydra in place of its result."""

    error: str
    diverged: bool = False  # the loss became NaN or inf (DivergedError)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_failed(err: Exception) -> JobFailure:
    """Log why a job of a sweep failed (into its job.log too) and make its return value."""
    if isinstance(err, USER_ERRORS):
        log.error("%s", err)
        return JobFailure(str(err), diverged=isinstance(err, DivergedError))
    log.exception("the job failed:")
    return JobFailure(f"{type(err).__name__}: {err}")


def job_overrides(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, in launch order, as the basic sweeper expands the sweep
    (`hydra.sweeper.params`, then the command line); None under another sweeper."""
    if not str(config.hydra.sweeper._target_).endswith(BasicSweeper.__name__):
        return None
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = parser.parse_overrides([*params, *config.hydra.overrides.task])
    # The sweeper's own expansion (a static method of the plugin): the same jobs, in the
    # order that gives them their numbers (hydra.job.num).
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


@dataclass
class InvalidJob:
    num: int
    overrides: list[str]
    problems: list[str]
    composes: bool  # False: Hydra cannot even compose its config

    def describe(self, swept: set[str]) -> str:
        return f"  {job_label(self.num, self.overrides, swept)}:\n" + _indent("\n".join(self.problems))


def invalid_jobs(config: DictConfig, jobs: list[list[str]]) -> list[InvalidJob]:
    """The jobs whose config cannot run, or cannot be composed."""
    loader = GlobalHydra.instance().config_loader()
    here = str(config.hydra.launcher._target_).rsplit(".", 1)[-1] not in REMOTE_LAUNCHERS
    bad = []
    for num, overrides in enumerate(jobs):
        try:
            cfg = loader.load_sweep_config(config, overrides)  # as the launcher will compose it
        except Exception as err:  # Hydra's composition errors: an unknown option or key
            bad.append(InvalidJob(num, overrides, [_one_line(err)], composes=False))
            continue
        hydra = cfg.hydra
        with open_dict(cfg):
            del cfg["hydra"]
        found = problems(cfg, hydra, this_machine=here)
        if found:
            bad.append(InvalidJob(num, overrides, found, composes=True))
    return bad


def _one_line(err: Exception) -> str:
    """Hydra's composition error without its search path, on one line."""
    lines = [line.strip() for line in str(err).split("Config search path:")[0].splitlines() if line.strip()]
    return lines[0] + (f" ({' '.join(lines[1:])})" if len(lines) > 1 else "")


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in str(text).splitlines())


def _key(override: str) -> str:
    return override.partition("=")[0]


def swept_keys(jobs: list[list[str]]) -> set[str]:
    """The keys whose value differs between jobs: what tells one job from another."""
    values: dict[str, set[str]] = {}
    for overrides in jobs:
        for o in overrides:
            values.setdefault(_key(o), set()).add(o)
    return {k for k, v in values.items() if len(v) > 1}


def own_overrides(overrides: list[str], swept: set[str]) -> list[str]:
    """The overrides that tell this job from the others of its sweep (the common ones left out)."""
    return [o for o in overrides if _key(o) in swept]


def job_label(num: int, overrides: list[str], swept: set[str]) -> str:
    """`#3 norm=bn_wc seed=1`: the job's number and its own overrides."""
    return f"#{num} {' '.join(own_overrides(overrides, swept) or overrides)}"


class SweepCallback(Callback):
    """Check a sweep's jobs before they start, record each one's log and outcome,
    summarise at the end (see the module docstring)."""

    def __init__(self) -> None:
        self.jobs: list[list[str]] | None = None
        self._log_file: logging.Handler | None = None

    # ------------------------------------------------------------------ in the sweep's process

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.jobs = job_overrides(config)
        if self.jobs is None:
            return  # another sweeper: each job still checks its config as it starts
        bad = invalid_jobs(config, self.jobs)
        swept = swept_keys(self.jobs)
        listing = "\n".join(job.describe(swept) for job in bad)
        if not all(job.composes for job in bad):
            # Hydra launches nothing of a sweep with a job it cannot compose; say it for all of them.
            log.error("%d of %d jobs of this sweep are invalid, and Hydra cannot compose some of them, "
                      "so no job starts:\n%s", len(bad), len(self.jobs), listing)
            raise SystemExit(1)
        if bad:
            log.error("%d of %d jobs of this sweep are invalid; they will fail at once, the others run:\n%s",
                      len(bad), len(self.jobs), listing)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        outcomes: dict[int, dict] = {}
        for path in sorted(sweep_dir.rglob("job*.json")):  # one per job (and per failed DDP rank > 0)
            record = json.loads(path.read_text())
            if outcomes.get(record["num"], {}).get("status") not in UNFINISHED:
                outcomes[record["num"]] = record
        searched = self.jobs is None  # another sweeper: a search (module docstring)
        failing = {"failed"} if searched else set(UNFINISHED)
        failed = [r for _, r in sorted(outcomes.items()) if r["status"] in failing]
        diverged = sum(r["status"] == "diverged" for r in outcomes.values()) if searched else 0
        unreported = sorted(set(range(len(self.jobs))) - set(outcomes)) if self.jobs is not None else []
        total = len(self.jobs) if self.jobs is not None else len(outcomes)
        ended = (f"all {total} trials ended, {diverged} of them diverged (their rates were too high)"
                 if diverged else f"all {total} jobs finished")
        if not failed and not unreported:
            log.info("sweep: %s; logs in %s/<job>/%s", ended, sweep_dir, JOB_LOG)
            return
        swept = swept_keys(self.jobs if self.jobs is not None else [r["overrides"] for r in outcomes.values()])
        lines = [f"  {job_label(r['num'], r['overrides'], swept)}:\n{_indent(r['error'])}\n      log: {r['log']}"
                 for r in failed]
        lines += [f"  {job_label(num, self.jobs[num], swept)}: left no outcome (killed?); "
                  f"see the launcher's logs" for num in unreported]
        log.error("sweep: %d of %d jobs failed (the others finished):\n%s",
                  len(failed) + len(unreported), total, "\n".join(lines))
        # Hydra turns a callback's exception into a warning; SystemExit is how it ends
        # a failed command itself.
        raise SystemExit(1)

    # ------------------------------------------------------------------ in each job's process

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        self._log_file = logging.FileHandler(Path(config.hydra.runtime.output_dir) / JOB_LOG)
        self._log_file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
        logging.getLogger().addHandler(self._log_file)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        out = Path(config.hydra.runtime.output_dir)
        if self._log_file is not None:
            logging.getLogger().removeHandler(self._log_file)
            self._log_file.close()
            self._log_file = None
        error, diverged = None, False
        if job_return.status == JobStatus.FAILED:  # an exception that escaped the job
            try:
                _ = job_return.return_value  # re-raises it
            except Exception as err:
                error = f"{type(err).__name__}: {err}"
        elif isinstance(job_return.return_value, JobFailure):
            error, diverged = job_return.return_value.error, job_return.return_value.diverged
        rank = int(os.environ.get("RANK", "0"))  # DDP jobs: rank 0 speaks for the job
        if rank and error is None:
            return
        record = {"num": int(config.hydra.job.num), "overrides": list(job_return.overrides or []),
                  "status": "finished" if error is None else "diverged" if diverged else "failed",
                  "error": error,
                  "log": str(out / JOB_LOG)}
        name = JOB_RECORD if not rank else f"job.rank{rank}.json"
        atomic_write_text(out / name, json.dumps(record, indent=1))
