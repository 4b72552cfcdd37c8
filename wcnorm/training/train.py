"""`wcnorm train`: one run from a composed config, end to end.

    validate -> run directory and identity (skip if finished) -> assemble (seed, data,
    model, weight method, optimizer, schedule, ENorm, callbacks, Trainer) -> lock the
    directory, check it is this run's, write config.yaml -> Trainer.fit (resumes from
    last.pt) -> result.json

Nothing is written before the run is assembled: a dataset that is missing or does not
fit the config stops the command with the run directory untouched (or never made). The
one exception is a rename: a run found under the name older identity rules gave it
(`outputs.former_run_dir`) gets today's name when it is located.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import ExitStack

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ..errors import DatasetUnavailable, DivergedError, WcnormError
from ..methods import describe_weight_method
from ..models import count_parameters
from ..modules import unwrap
from ..outputs import (
    adopt_run,
    atomic_write_text,
    check_checkpoint,
    discard_run,
    environment,
    finished_result,
    former_run_dir,
    remove_stale_temporaries,
    run_dir_for,
    run_identity,
    run_lock,
    write_json,
)
from ..rundirs import check_holds_a_run, check_name_lengths, run_dir_for_data
from . import dist
from .allocator import keep_freed_memory
from .assemble import Run, assemble, resolve_device
from .config import validate

log = logging.getLogger("wcnorm")


def show_progress(spec) -> bool:
    """trainer.progress; "auto": bars only for a single run in a terminal, outside CI."""
    if spec != "auto":
        return bool(spec)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return not multirun and not os.environ.get("CI") and sys.stderr.isatty()


def train(cfg: DictConfig) -> dict:
    """Train the run `cfg` describes; return its result (also in result.json)."""
    validate(cfg)
    ctx = dist.init(cfg.trainer)
    try:
        # Rank 0 alone looks at the disk; every rank gets its run directory (the same one even
        # if the config resolved differently per process), its identity and its verdict on
        # result.json.
        run_dir, identity, finished = ctx.on_main(lambda: _locate(cfg))
        if finished is not None and finished.get("status") == DIVERGED:
            raise DivergedError(f"{finished.get('error', 'the training loss diverged')} (recorded in "
                                f"{run_dir / 'result.json'}; rerun with trainer.restart=true to train "
                                "it again, e.g. at a lower optim.lr)")
        if finished is not None:
            log.info("already finished: %s. To train it again from scratch, rerun with trainer.restart=true "
                     "(deleting result.json alone does not retrain: the run rewrites it from last.pt)",
                     run_dir / "result.json")
            return finished
        with ExitStack() as stack:
            ctx.device = ctx.device or stack.enter_context(dist.job_gpu(cfg.trainer))
            run = _assemble(cfg, run_dir, identity, ctx)  # loads the data: before anything is written
            ctx.on_main(lambda: stack.enter_context(run_lock(run_dir)))  # rank 0 holds the lock
            ctx.on_main(lambda: _claim(cfg, run_dir, identity))
            result = _train(run, run_dir, ctx)
        ctx.barrier()  # no rank returns before rank 0's last.pt and result.json are written
        return result
    finally:
        ctx.close()


def _restarting(cfg: DictConfig) -> bool:
    """trainer.restart: delete what the run directory holds and train from scratch."""
    return bool(cfg.trainer.get("restart", False))


def _locate(cfg: DictConfig):
    """The run directory, the run's identity, and its result if it has finished (and is
    this run's: another config's or other data's result is refused, not returned). A run
    that older identity rules named otherwise is renamed to today's name first."""
    run_dir, identity = run_dir_for(cfg), run_identity(cfg)
    check_name_lengths(run_dir)
    if "missing" in identity["data"]:  # said as what it is, not as "other data"
        raise DatasetUnavailable(f"dataset: '{identity['data']['missing']}' does not exist; check "
                                 f"dataset.{'path' if cfg.dataset.get('path') else 'root'}")
    pinned = bool(cfg.get("run_dir"))
    former = None if pinned or _restarting(cfg) else former_run_dir(run_dir, identity["config_sha1"])
    if former is not None:  # named by older identity rules: give it today's name
        adopt_run(former, run_dir)
        log.info("found this run under its former name '%s' (older identity rules): renamed it to '%s'",
                 former.name, run_dir.name)
    if not pinned:  # the same config on other data (another folder, another scene) gets its own
        run_dir = run_dir_for_data(run_dir, identity)
    check_holds_a_run(run_dir)  # a folder of someone else's files is never written into, nor discarded
    if _restarting(cfg):
        return run_dir, identity, None
    return run_dir, identity, finished_result(run_dir, identity)


def _assemble(cfg: DictConfig, run_dir, identity: dict, ctx) -> Run:
    device = ctx.device or resolve_device(str(cfg.trainer.device))
    if device.type == "cpu":  # before the data and the model allocate (training.allocator)
        keep_freed_memory()
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # streams, graphs and bare "cuda" tensors follow it
    run = assemble(cfg, device, run_dir=run_dir, ctx=ctx, progress=show_progress(cfg.trainer.progress))
    run.trainer.identity = identity  # saved in every last.pt
    return run


def _claim(cfg: DictConfig, run_dir, identity: dict) -> None:
    """Rank 0, holding the lock, before it writes anything: remove what interrupted writes
    left, then delete the old run (`trainer.restart`) or make sure the one there is this
    config's, on this data; then config.yaml."""
    for tmp in remove_stale_temporaries(run_dir):
        log.info("removed %s (left by an interrupted write)", tmp)
    if _restarting(cfg):
        for path in discard_run(run_dir):
            log.info("trainer.restart: deleted %s", path)
    else:
        check_checkpoint(run_dir, identity)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    log.info("run directory: %s", run_dir)


DIVERGED = "diverged"  # result.json's status for a run whose loss became NaN or inf


def _train(run: Run, run_dir, ctx) -> dict:
    t0 = time.perf_counter()
    try:
        history = run.trainer.fit()
    except DivergedError as err:
        # A diverged run is a result, not a gap: its record says so, and a rerun reports
        # it again instead of silently training it anew.
        if ctx.is_main:
            write_json(run_dir / "result.json", {
                "status": DIVERGED, "error": str(err), "epoch": run.trainer.epoch + 1,
                "run_dir": str(run_dir), "identity": run.trainer.identity, **environment(run.device),
                "config": OmegaConf.to_container(run.cfg, resolve=True)})
        raise
    if not run.trainer.finished:
        return {"status": "interrupted", "epoch": run.trainer.epoch, "run_dir": str(run_dir)}
    result = {**summarize(run, history), "run_dir": str(run_dir), "identity": run.trainer.identity}
    if ctx.is_main:
        result.update(_finish(run, run_dir))
        write_json(run_dir / "result.json", result)
        metric = run.task.metric
        log.info("finished: final %s %.4g (best epoch %d: %.4g) in %.0f s -> %s", metric,
                 result[f"final_{metric}"], result["best_epoch"], result[f"best_{metric}"],
                 time.perf_counter() - t0, run_dir)
    return result


def _finish(run: Run, run_dir) -> dict:
    """The task's end-of-run measurements (a NeRF's test views, a shape's surface). They
    run after the final checkpoint: one that runs out of memory loses no training."""
    try:
        return run.task.finish(unwrap(run.model), run_dir)
    except (MemoryError, torch.OutOfMemoryError) as err:
        raise WcnormError(
            f"training finished and '{run_dir / 'last.pt'}' holds it, but the end-of-run measurement ran "
            f"out of memory ({type(err).__name__}). Free memory (or use a machine with more) and rerun the "
            f"same command: it trains no step and measures again.") from None


def summarize(run: Run, history: list[dict]) -> dict:
    """result.json: the final epoch, the best one (marked), what ran, where and on what."""
    final, task = history[-1], run.task
    metric = task.metric
    evaluated = [row for row in history if metric in row]  # tasks may evaluate every few epochs
    best = evaluated[0]
    for row in evaluated[1:]:
        best = row if task.is_better(row[metric], best[metric]) else best
    throughput = f"{task.unit}_per_s"
    model = unwrap(run.model)
    result = {
        "status": "finished",
        "epochs": final["epoch"],
        # Every metric of the final epoch: final_test_acc, final_train_loss, ...
        **{f"final_{k}": v for k, v in final.items() if k.startswith(("train_", "val_", "test_"))
           and not k.endswith("_time_s")},
        "metric": metric,
        # Reported for information only: choosing it would select a model on the test set.
        f"best_{metric}": best[metric],
        "best_epoch": best["epoch"],
        "best_note": "best epoch on the held-out split, for information; never used for model selection",
        "wall_time_s": sum(r["epoch_time_s"] for r in history),
        throughput: float(np.median([r[throughput] for r in history])),
        "num_params": count_parameters(model),
        **environment(run.device),
        "weight_method": describe_weight_method(model),
        "enorm": run.enorm.describe() if run.enorm is not None else None,
        "config": OmegaConf.to_container(run.cfg, resolve=True),
    }
    if run.conditioning is not None:
        result["conditioning"] = run.conditioning.summary()
    return result
