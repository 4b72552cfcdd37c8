"""`wcnorm train`: one run from a composed config, end to end.

    validate -> run directory (skip if finished) -> assemble (seed, data, model, weight
    method, optimizer, schedule, ENorm, callbacks, Trainer) -> Trainer.fit (resumes from
    last.pt) -> result.json
"""

from __future__ import annotations

import json
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

from ..methods import describe_weight_method
from ..models import count_parameters
from ..modules import unwrap
from ..outputs import atomic_write_text, environment, run_dir_for, run_lock, write_json
from . import dist
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
        # if the config resolved differently per process) and its verdict on result.json.
        run_dir, finished = ctx.on_main(lambda: _locate(cfg))
        if finished is not None:
            log.info("already finished: %s (delete it, or change the config, to train again)",
                     run_dir / "result.json")
            return finished
        with ExitStack() as stack:
            ctx.on_main(lambda: stack.enter_context(run_lock(run_dir)))  # rank 0 holds the lock
            ctx.device = ctx.device or stack.enter_context(dist.job_gpu(cfg.trainer))
            result = _train(cfg, run_dir, ctx)
        ctx.barrier()  # no rank returns before rank 0's last.pt and result.json are written
        return result
    finally:
        ctx.close()


def _locate(cfg: DictConfig):
    run_dir = run_dir_for(cfg)
    done = run_dir / "result.json"
    return run_dir, json.loads(done.read_text()) if done.exists() else None


def _train(cfg: DictConfig, run_dir, ctx) -> dict:
    device = ctx.device or resolve_device(str(cfg.trainer.device))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # streams, graphs and bare "cuda" tensors follow it
    if ctx.is_main:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        log.info("run directory: %s", run_dir)
    run = assemble(cfg, device, run_dir=run_dir, ctx=ctx, progress=show_progress(cfg.trainer.progress))
    t0 = time.perf_counter()
    history = run.trainer.fit()
    if not run.trainer.finished:
        return {"status": "interrupted", "epoch": run.trainer.epoch, "run_dir": str(run_dir)}
    result = {**summarize(run, history), "run_dir": str(run_dir)}
    if ctx.is_main:
        result.update(run.task.finish(unwrap(run.model), run_dir))  # end-of-run measurements
        write_json(run_dir / "result.json", result)
        metric = run.task.metric
        log.info("finished: final %s %.4g (best epoch %d: %.4g) in %.0f s -> %s", metric,
                 result[f"final_{metric}"], result["best_epoch"], result[f"best_{metric}"],
                 time.perf_counter() - t0, run_dir)
    return result


def summarize(run: Run, history: list[dict]) -> dict:
    """result.json: the final epoch, the best one (marked), what ran, where and on what."""
    final, task = history[-1], run.task
    metric = task.metric
    best = history[0]
    for row in history[1:]:
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
