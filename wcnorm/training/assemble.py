"""From a config to the objects of one training run: `assemble`.

    seed -> task (data, model, loaders) -> weight method -> optimizer, schedule
    -> ENorm (the step hook) -> callbacks -> DDP wrap, compile -> Trainer

`wcnorm train` and `wcnorm bench` both build their runs here, so what the bench times
is what training runs. The task (`wcnorm.tasks`: classification, neural fields)
supplies the data, the model on the device and its loaders, the loss and the
evaluation; everything after it is the same for every task.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..errors import ConfigError, WcnormError
from ..methods import apply_weight_method
from ..methods.cancellation import cancellation_line, describe_cancellation
from ..methods.enorm import ENorm
from ..tasks import Classification, Task, build_task
from .callbacks import ConditioningCallback, ENormCallback
from .dist import DistContext, ReplicaCheck
from .optim import build_optimizer, build_scheduler
from .trackers import build_trackers
from .trainer import Callback, Trainer

log = logging.getLogger("wcnorm")

# ----------------------------------------------------------------------------- the process


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


# ----------------------------------------------------------------------------- the weight method


def with_weight_method(model: nn.Module, norm: DictConfig) -> nn.Module:
    """Register `norm.weight` with its options (the build hook), in place. Before the
    optimizer is built: it must hold the parametrized tensors.

    Then say, in one line, on how many of its layers a following per-channel
    normalization cancels the method (methods.md section 1): a warning where it is
    cancelled everywhere, since the run then trains the normalization alone (which may
    be what the user wants to measure, so it is no error)."""
    if norm.weight != "none":
        apply_weight_method(model, norm.weight, OmegaConf.to_container(norm[norm.weight], resolve=True))
        record = describe_cancellation(model)
        line = cancellation_line(f"{norm.weight} ({norm.name})", record)
        if line and not record["acting_layers"]:
            log.warning("%s (the same run as without it; include the classifier to make it act: "
                        "norm.%s.include_classifier=true)", line, norm.weight)
        elif line:
            log.info(line)
        elif not record["traced"]:
            log.info("weight method %s: %s; its layers are all counted as acting", norm.weight, record["note"])
    return model


# ----------------------------------------------------------------------------- the methods' hooks


def build_enorm(enorm: DictConfig, model: nn.Module, optimizer: torch.optim.Optimizer) -> ENorm:
    """ENorm with the options of a `norm.enorm` config node."""
    return ENorm(model, optimizer, c=float(enorm.c), order=enorm.order, balance_last=bool(enorm.balance_last),
                 bn=enorm.bn, bias_in_norm=bool(enorm.bias_in_norm), attention=bool(enorm.attention),
                 cuda_graph=bool(enorm.cuda_graph), fused=bool(enorm.get("fused", False)))


def build_callbacks(cfg: DictConfig, task: Task, enorm: ENorm | None, run_dir,
                    ctx: DistContext) -> tuple[list[Callback], ConditioningCallback | None]:
    """ENorm's cycle, the conditioning diagnostics, the replica check (under DDP)."""
    callbacks: list[Callback] = []
    if enorm is not None:
        callbacks.append(ENormCallback(enorm, cfg.norm.enorm.every, cfg.norm.enorm.cycles))
    conditioning = None
    d = cfg.diagnostics
    if d.get("conditioning", True):
        batch = None
        if d.hessian and isinstance(task, Classification):
            x, y = next(iter(task.test_loader))  # a fixed batch: the test loader is not shuffled
            batch = (x[: d.hessian_batch], y[: d.hessian_batch])
        conditioning = ConditioningCallback(
            run_dir if ctx.is_main else None, every=d.every, all_layers=cfg.norm.weight == "none",
            hessian_batch=batch, hessian_iters=d.hessian_iters)
        callbacks.append(conditioning)
    if ctx.world_size > 1:
        callbacks.append(ReplicaCheck())  # same resume epoch, same weights on every rank
    # Last: the trackers report the row every other callback has filled.
    callbacks += build_trackers(cfg, run_dir, is_main=ctx.is_main)
    return callbacks, conditioning


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """The objects of one run; `trainer.fit()` trains it."""

    cfg: DictConfig
    device: torch.device
    task: Task
    model: nn.Module  # as trained: under DDP with several processes, compiled in place if asked
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    weight_method: str  # norm.weight, registered on the model ("none": nothing)
    enorm: ENorm | None
    conditioning: ConditioningCallback | None
    callbacks: list[Callback]
    trainer: Trainer

    @property
    def data(self):
        return self.task.data

    @property
    def train_loader(self):
        return self.trainer.train_loader


def _check_steps(cfg: DictConfig, task: Task) -> None:
    """An epoch must take a step: a training split smaller than a batch of two (a last
    batch of one is dropped, BatchNorm cannot normalise it) would train nothing."""
    if len(task.train_loader):
        return
    data = getattr(task, "data", None)
    n = len(data.train) if data is not None and hasattr(data, "train") else None
    held = (f", after dataset.val_split={cfg.dataset.get('val_split')} held out the rest"
            if cfg.dataset.get("val_split") else "")
    raise ConfigError(f"dataset '{cfg.dataset.name}': the training split "
                      f"{f'has {n} example(s){held}, which' if n is not None else ''} makes no training "
                      f"batch of trainer.batch_size={cfg.trainer.batch_size} (a batch needs at least 2 "
                      f"examples): lower dataset.val_split or use more training data")


def assemble(cfg: DictConfig, device: torch.device, *, run_dir=None, ctx: DistContext | None = None,
             progress: bool = False) -> Run:
    """Seed, then build the run `cfg` describes on `device`.

    `run_dir`: where the trainer checkpoints and the diagnostics write (None: nowhere);
    `ctx`: the data-parallel context (default: one process); `progress`: tqdm bars
    (on the main process only)."""
    ctx = ctx or DistContext()
    t = cfg.trainer
    seed_everything(cfg.seed, bool(t.deterministic))
    task = build_task(cfg, device, rank=ctx.rank, world_size=ctx.world_size, run_dir=run_dir)
    _check_steps(cfg, task)
    with_weight_method(task.model, cfg.norm)
    optimizer = build_optimizer(task.model, cfg.optim, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.sched, steps_per_epoch=len(task.train_loader), epochs=int(t.epochs))
    # ENorm and the optimizer hold the bare model's tensors, which DDP and compile keep.
    enorm = build_enorm(cfg.norm.enorm, task.model, optimizer) if cfg.norm.enorm.enabled else None
    callbacks, conditioning = build_callbacks(cfg, task, enorm, run_dir, ctx)
    model = ctx.wrap(task.model)
    if t.compile:
        model.compile()  # in place: state dicts keep their plain keys
    trainer = Trainer(
        model, optimizer, scheduler, task, device=device, epochs=t.epochs,
        run_dir=run_dir, amp_dtype=resolve_amp(t.amp, device),
        grad_clip=t.grad_clip, callbacks=callbacks, progress=ctx.is_main and progress,
        stop_after=t.stop_after, is_main=ctx.is_main, all_reduce=ctx.all_reduce,
        checkpoint_every=t.get("checkpoint_every"),
        # Compiled, the parametrizations are traced into the model's graph, where the compiler
        # fuses WC's ops with the layers': left lazy, not computed eagerly before the forward.
        batch_weights=not t.compile)
    return Run(cfg, device, task, model, optimizer, scheduler, cfg.norm.weight, enorm, conditioning,
               callbacks, trainer)
