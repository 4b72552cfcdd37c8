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
* A signal (SIGTERM, Ctrl-C) stops the whole sweep, not only the job that is training:
  the sweep's process records it in the sweep directory (STOP_FILE), a job that is
  training saves a checkpoint and stops (its own process is signalled when the
  launcher runs it elsewhere: `watch_for_stop`), and every job that has not started
  returns at once without training. The summary lists what was interrupted and what
  never started, and the command exits with 128 + the signal's number; the same
  command resumes.

`SweepCallback` is registered in conf/train.yaml (`hydra.callbacks`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from ..errors import DivergedError, Interrupted, WcnormError
from ..models import ModelConfigError
from ..outputs import atomic_write_text
from .config import problems

log = logging.getLogger("wcnorm")

JOB_LOG, JOB_RECORD = "job.log", "job.json"
# The outcomes (job.json "status") of a job that did not finish.
UNFINISHED = ("failed", "diverged")
# The outcomes of a job that a signal stopped, or kept from starting: the rerun resumes it.
STOPPED = ("interrupted", "not started")
# In the sweep directory once a signal has stopped the sweep: the signal's name.
STOP_FILE = "STOPPED"
# Hydra's own sweeper (hydra.sweeper._target_), named, not imported: it is internal to Hydra.
BASIC_SWEEPER = "BasicSweeper"
# Launchers whose jobs run on other machines: what this one has (CUDA?) says nothing there.
REMOTE_LAUNCHERS = ("SlurmLauncher",)
# Errors that are the user's to fix: reported as their message; anything else with its traceback.
USER_ERRORS = (WcnormError, ModelConfigError)


@dataclass
class JobFailure:
    """What a failed job of a sweep returns to Hydra in place of its result."""

    error: str
    diverged: bool = False  # the loss became NaN or inf (DivergedError)
    interrupted: bool = False  # a signal stopped it; its checkpoint is kept (Interrupted)


@dataclass
class NotStarted:
    """What a job of a stopped sweep returns: it trained nothing."""

    reason: str


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_failed(err: Exception) -> JobFailure:
    """Log why a job of a sweep failed (into its job.log too) and make its return value."""
    if isinstance(err, USER_ERRORS):
        log.error("%s", err)
        return JobFailure(str(err), diverged=isinstance(err, DivergedError),
                          interrupted=isinstance(err, Interrupted))
    log.exception("the job failed:")
    return JobFailure(f"{type(err).__name__}: {err}")


def expand_grid(overrides: list[Override]) -> list[list[str]]:
    """Each job's overrides, in the order and with the numbers the basic sweeper gives
    them: the last override of a key replaces the earlier ones in their place, and every
    discrete sweep (`a,b`, `range(...)`, `choice(...)`) multiplies the jobs."""
    by_key: dict[str, list[str]] = {}
    for o in overrides:
        key = o.get_key_element()
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise ValueError(f"{key}: a sweep of this kind is not a list of values ({o.input_line})")
        by_key[key] = ([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                       else [f"{key}={o.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*by_key.values())]


def job_overrides(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, in launch order, as the basic sweeper expands the sweep
    (`hydra.sweeper.params`, then the command line); None under another sweeper, or a
    sweep the basic sweeper refuses itself."""
    if not str(config.hydra.sweeper._target_).endswith(BASIC_SWEEPER):
        return None
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    try:
        return expand_grid(parser.parse_overrides([*params, *config.hydra.overrides.task]))
    except ValueError:
        return None


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


# ---------------------------------------------------------------------- stopping a sweep

def stop_reason(sweep_dir: str | Path) -> str | None:
    """Why the sweep stopped (the signal's name), or None while it runs on."""
    try:
        return (Path(sweep_dir) / STOP_FILE).read_text().strip() or "a signal"
    except FileNotFoundError:
        return None


def request_stop(sweep_dir: str | Path, reason: str) -> None:
    """Stop the sweep: no job starts from now on (the first reason is kept)."""
    if stop_reason(sweep_dir) is None:
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(sweep_dir) / STOP_FILE, reason)


def job_stop_reason() -> str | None:
    """In a job of a sweep: why the sweep stopped (then the job must not start), or None."""
    return stop_reason(HydraConfig.get().sweep.dir) if in_multirun() else None


def not_started(reason: str) -> NotStarted:
    log.warning("the sweep was stopped (%s): this job does not start; run the same command "
                "again to resume the sweep", reason)
    return NotStarted(reason)


# The sweep process's signal handlers while a sweep runs, and a job's watcher thread:
# module state, as neither may travel with the callback, which Hydra pickles for launchers.
_previous_handlers: dict[int, object] = {}
_watcher_done: threading.Event | None = None


def _stop_on_signals(sweep_dir: str) -> None:
    """In the sweep's process: a signal stops the sweep (a second Ctrl-C stops at once).
    The job training in this process has handlers of its own (the trainer's) for as
    long as it trains; it saves a checkpoint, and its outcome stops the sweep."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and stop_reason(sweep_dir) is not None:
            raise KeyboardInterrupt
        request_stop(sweep_dir, name)
        log.warning("%s received: the sweep stops; a job that is training saves a checkpoint, no "
                    "other job starts (Ctrl-C again to stop at once)", name)

    for s in (signal.SIGTERM, signal.SIGINT):
        _previous_handlers[s] = signal.signal(s, stop)


def _restore_signals() -> None:
    while _previous_handlers:
        s, handler = _previous_handlers.popitem()
        signal.signal(s, handler)


def watch_for_stop(sweep_dir: str, every_s: float = 0.5) -> threading.Event:
    """In a job that runs outside the sweep's process (a launcher's worker): when the sweep
    stops, signal this process as the sweep was signalled, so that the trainer saves a
    checkpoint and stops. Only once the trainer's handler is in place: outside training a
    SIGTERM would kill the worker, and a job past its last step may as well finish."""
    done = threading.Event()

    def watch():
        while not done.wait(every_s):
            reason = stop_reason(sweep_dir)
            if reason is not None and callable(signal.getsignal(signal.SIGTERM)):
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="wcnorm-sweep-stop", daemon=True).start()
    return done


def _exit_status(reason: str | None) -> int:
    """128 + the signal's number, as a shell reports a command a signal ended; else 1."""
    try:
        return 128 + signal.Signals[str(reason)].value
    except KeyError:
        return 1


# ---------------------------------------------------------------------- the callback

class SweepCallback(Callback):
    """Check a sweep's jobs before they start, record each one's log and outcome, stop
    the sweep on a signal, summarise at the end (see the module docstring)."""

    def __init__(self) -> None:
        self.jobs: list[list[str]] | None = None
        self.sweep_pid: int | None = None  # the sweep's process; a job elsewhere watches for a stop
        self._log_file: logging.Handler | None = None

    # ------------------------------------------------------------------ in the sweep's process

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.sweep_pid = os.getpid()
        self.jobs = job_overrides(config)
        if self.jobs is not None:  # another sweeper checks its own jobs (training.lr_search)
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
        sweep_dir = Path(str(config.hydra.sweep.dir))
        (sweep_dir / STOP_FILE).unlink(missing_ok=True)  # a stop of an earlier sweep in this folder
        _stop_on_signals(str(sweep_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        _restore_signals()
        sweep_dir = Path(str(config.hydra.sweep.dir))
        outcomes: dict[int, dict] = {}
        for path in sorted(sweep_dir.rglob("job*.json")):  # one per job (and per failed DDP rank > 0)
            record = json.loads(path.read_text())
            if outcomes.get(record["num"], {}).get("status") not in (*UNFINISHED, *STOPPED):
                outcomes[record["num"]] = record
        searched = self.jobs is None  # another sweeper: a search (module docstring)
        failing = {"failed"} if searched else set(UNFINISHED)
        failed = [r for _, r in sorted(outcomes.items()) if r["status"] in failing]
        diverged = sum(r["status"] == "diverged" for r in outcomes.values()) if searched else 0
        unreported = sorted(set(range(len(self.jobs))) - set(outcomes)) if self.jobs is not None else []
        total = len(self.jobs) if self.jobs is not None else len(outcomes)
        swept = swept_keys(self.jobs if self.jobs is not None else [r["overrides"] for r in outcomes.values()])
        stopped = stop_reason(sweep_dir)
        if stopped is not None:
            self._report_stop(stopped, outcomes, unreported, failed, swept)
        ended = (f"all {total} trials ended, {diverged} of them diverged (their rates were too high)"
                 if diverged else f"all {total} jobs finished")
        if not failed and not unreported:
            log.info("sweep: %s; logs in %s/<job>/%s", ended, sweep_dir, JOB_LOG)
            return
        lines = [f"  {job_label(r['num'], r['overrides'], swept)}:\n{_indent(r['error'])}\n      log: {r['log']}"
                 for r in failed]
        lines += [f"  {job_label(num, self.jobs[num], swept)}: left no outcome (killed?); "
                  f"see the launcher's logs" for num in unreported]
        log.error("sweep: %d of %d jobs failed (the others finished):\n%s",
                  len(failed) + len(unreported), total, "\n".join(lines))
        # Hydra turns a callback's exception into a warning; SystemExit is how it ends
        # a failed command itself.
        raise SystemExit(1)

    def _report_stop(self, reason: str, outcomes: dict[int, dict], unreported: list[int],
                     failed: list[dict], swept: set[str]) -> None:
        """The summary of a sweep that a signal stopped; it exits non-zero."""
        def jobs(status: str) -> list[str]:
            return [job_label(r["num"], r["overrides"], swept) for _, r in sorted(outcomes.items())
                    if r["status"] == status]

        finished, interrupted, waiting = jobs("finished"), jobs("interrupted"), jobs("not started")
        waiting += [job_label(num, self.jobs[num], swept) for num in unreported]  # type: ignore[index]
        lines = [f"  interrupted (checkpoint saved, resumes from it): {', '.join(interrupted) or 'none'}",
                 f"  not started: {', '.join(waiting) or 'none'}",
                 f"  finished: {len(finished)}; failed: {len(failed)}"]
        lines += [f"  {job_label(r['num'], r['overrides'], swept)}: {r['error']}" for r in failed]
        log.error("sweep: stopped by %s:\n%s\nRun the same command again to resume the sweep.",
                  reason, "\n".join(lines))
        raise SystemExit(_exit_status(reason))

    # ------------------------------------------------------------------ in each job's process

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        global _watcher_done
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        self._log_file = logging.FileHandler(Path(config.hydra.runtime.output_dir) / JOB_LOG)
        self._log_file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
        logging.getLogger().addHandler(self._log_file)
        if self.sweep_pid is not None and self.sweep_pid != os.getpid():
            _watcher_done = watch_for_stop(str(config.hydra.sweep.dir))
            if threading.current_thread() is threading.main_thread():
                # A terminal's Ctrl-C reaches every process of the sweep: a worker leaves it
                # to the sweep's process (and to the trainer's handler while it trains),
                # instead of dying of it between jobs.
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        global _watcher_done
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        if _watcher_done is not None:
            _watcher_done.set()
            _watcher_done = None
        out = Path(config.hydra.runtime.output_dir)
        if self._log_file is not None:
            logging.getLogger().removeHandler(self._log_file)
            self._log_file.close()
            self._log_file = None
        error, status = None, "finished"
        if job_return.status == JobStatus.FAILED:  # an exception that escaped the job
            try:
                _ = job_return.return_value  # re-raises it
            except Exception as err:
                error, status = f"{type(err).__name__}: {err}", "failed"
        elif isinstance(job_return.return_value, JobFailure):
            failure = job_return.return_value
            error = failure.error
            status = "interrupted" if failure.interrupted else "diverged" if failure.diverged else "failed"
        elif isinstance(job_return.return_value, NotStarted):
            error, status = job_return.return_value.reason, "not started"
        if status == "interrupted":  # a signal reached the job first: it stops the sweep too
            caught = re.search(r"stopped by (SIG[A-Z]+)", error or "")
            request_stop(config.hydra.sweep.dir, caught.group(1) if caught else "a signal")
        rank = int(os.environ.get("RANK", "0"))  # DDP jobs: rank 0 speaks for the job
        if rank and error is None:
            return
        record = {"num": int(config.hydra.job.num), "overrides": list(job_return.overrides or []),
                  "status": status, "error": error, "log": str(out / JOB_LOG)}
        name = JOB_RECORD if not rank else f"job.rank{rank}.json"
        atomic_write_text(out / name, json.dumps(record, indent=1))
