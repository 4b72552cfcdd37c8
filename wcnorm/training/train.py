"""`wcnorm train`: one run from a composed config, end to end.

    validate -> run directory (skip if finished) -> seed -> data -> model
    -> weight method (build hook) -> optimizer, schedule -> ENorm (step hook)
    -> Trainer.fit (resumes from last.pt) -> result.json
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from contextlib import ExitStack

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import dist
from .callbacks import ConditioningCallback, ENormCallback
from .config import validate
from ..data import load_dataset, make_loaders
from ..errors import WcnormError
from .optim import build_optimizer, build_scheduler
from ..outputs import atomic_write_text, environment, run_dir_for, run_lock, write_json
from .trainer import Trainer

log = logging.getLogger("wcnorm")


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise WcnormError(f"trainer.device={spec} but CUDA is not available here; use trainer.device=cpu")
    return torch.device(spec)


def resolve_amp(spec, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; CPU runs in fp32 unless asked."""
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {True: torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}.get(spec)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def show_progress(spec) -> bool:
    if spec != "auto":
        return bool(spec)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return not multirun and not os.environ.get("CI") and sys.stderr.isatty()


def build_model_for(cfg: DictConfig, data) -> torch.nn.Module:
    """The model, with the config's weight-level method registered (the build hook)."""
    from ..models import build_model
    from ..methods.weight_methods import apply_weight_method

    options = {k: v for k, v in cfg.model.items() if k != "name"}
    model = build_model(cfg.model.name, num_classes=data.num_classes, image_size=data.image_size,
                        in_channels=data.in_channels, act_norm=cfg.norm.act, **options)
    method = cfg.norm.weight
    if method != "none":
        apply_weight_method(model, method, OmegaConf.to_container(cfg.norm[method], resolve=True))
    return model


def build_enorm(cfg: DictConfig, model, optimizer):
    from ..methods.enorm import ENorm

    e = cfg.norm.enorm
    return ENorm(model, optimizer, c=float(e.c), order=e.order, balance_last=bool(e.balance_last),
                 bn=e.bn, bias_in_norm=bool(e.bias_in_norm), attention=bool(e.attention),
                 cuda_graph=bool(e.cuda_graph))


def _uses_convs(cfg) -> bool:
    return cfg.model.name not in ("vit", "enorm_fc")


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
    t = cfg.trainer
    seed_everything(cfg.seed, bool(t.deterministic))
    device = ctx.device or resolve_device(str(t.device))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # streams, graphs and bare "cuda" tensors follow it
    if ctx.is_main:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        log.info("run directory: %s", run_dir)
    data = load_dataset(cfg.dataset)
    model = build_model_for(cfg, data).to(device)
    channels_last = device.type == "cuda" and _uses_convs(cfg) if t.channels_last == "auto" else bool(t.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    on_device = data.is_array and (device.type == "cuda" if t.data_on_device == "auto" else bool(t.data_on_device))
    train_loader, test_loader = make_loaders(
        data, cfg.dataset, t, device=device, seed=cfg.seed, data_on_device=on_device,
        channels_last=channels_last, rank=ctx.rank, world_size=ctx.world_size)
    optimizer = build_optimizer(model, cfg.optim, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.sched, steps_per_epoch=len(train_loader), epochs=int(t.epochs))

    callbacks, enorm = [], None
    if cfg.norm.enorm.enabled:
        enorm = build_enorm(cfg, model, optimizer)
        callbacks.append(ENormCallback(enorm, cfg.norm.enorm.every, cfg.norm.enorm.cycles))
    conditioning = None
    if cfg.diagnostics.get("conditioning", True):
        batch = None
        if cfg.diagnostics.hessian:
            x, y = next(iter(test_loader))  # a fixed batch: the test loader is not shuffled
            batch = (x[: cfg.diagnostics.hessian_batch], y[: cfg.diagnostics.hessian_batch])
        conditioning = ConditioningCallback(
            run_dir if ctx.is_main else None, every=cfg.diagnostics.every,
            all_layers=cfg.norm.weight == "none", hessian_batch=batch, hessian_iters=cfg.diagnostics.hessian_iters)
        callbacks.append(conditioning)

    if ctx.world_size > 1:
        callbacks.append(dist.ReplicaCheck())  # same resume epoch, same weights on every rank
    model = ctx.wrap(model)
    if t.compile:
        model.compile()  # in place: state dicts keep their plain keys
    trainer = Trainer(
        model, optimizer, scheduler, train_loader, test_loader, device=device, epochs=t.epochs,
        run_dir=run_dir, amp_dtype=resolve_amp(t.amp, device), label_smoothing=t.label_smoothing,
        grad_clip=t.grad_clip, callbacks=callbacks, progress=ctx.is_main and show_progress(t.progress),
        stop_after=t.stop_after, is_main=ctx.is_main, all_reduce=ctx.all_reduce)
    t0 = time.perf_counter()
    history = trainer.fit()
    if not trainer.finished:
        return {"status": "interrupted", "epoch": trainer.epoch, "run_dir": str(run_dir)}
    result = summarize(cfg, history, trainer, model, device, enorm, conditioning)
    result["run_dir"] = str(run_dir)
    if ctx.is_main:
        write_json(run_dir / "result.json", result)
        log.info("finished: final test_acc %.2f %% (best epoch %d: %.2f %%) in %.0f s -> %s",
                 result["final_test_acc"], result["best_epoch"], result["best_test_acc"],
                 time.perf_counter() - t0, run_dir)
    return result


def summarize(cfg, history, trainer, model, device, enorm, conditioning) -> dict:
    from ..models import count_parameters
    from .trainer import unwrap
    from ..methods.weight_methods import describe_weight_method

    final = history[-1]
    best = max(history, key=lambda r: r["test_acc"])
    result = {
        "status": "finished",
        "epochs": final["epoch"],
        "final_test_acc": final["test_acc"],
        "final_test_loss": final["test_loss"],
        "final_train_loss": final["train_loss"],
        "final_train_acc": final["train_acc"],
        # Reported for information only: choosing it would select a model on the test set.
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "best_note": "best epoch on the test split, for information; never used for model selection",
        "wall_time_s": sum(r["epoch_time_s"] for r in history),
        "images_per_s": float(np.median([r["images_per_s"] for r in history])),
        "num_params": count_parameters(unwrap(model)),
        **environment(device),
        "weight_method": describe_weight_method(unwrap(model)),
        "enorm": enorm.describe() if enorm is not None else None,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if conditioning is not None:
        result["conditioning"] = conditioning.summary()
    return result
