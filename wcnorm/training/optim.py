"""Optimizers and per-step learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..modules import NORM_LAYERS

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "linear", "constant")


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """One group, or two when normalization parameters and biases are exempt from decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    exempt = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    exempt |= {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
    # Tensors of rank <= 1 are gains, biases and scales: decaying them only hurts.
    exempt |= {id(p) for p in params if p.ndim <= 1}
    return [
        {"params": [p for p in params if id(p) not in exempt], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg, *, fused: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(model, float(cfg.weight_decay), bool(cfg.get("no_decay_norm_bias", False)))
    # foreach (multi-tensor) kernels on every device; fused ones on CUDA when asked.
    impl = {"fused": True} if fused else {"foreach": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=bool(cfg.nesterov), **impl)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **impl)
    raise ConfigError(f"unknown optimizer '{cfg.name}'; valid: {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, total: int, warmup: int, cfg, steps_per_epoch: int) -> float:
    """The multiplier of the base lr after `step` optimizer steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if cfg.name == "cosine":
        lo = float(cfg.get("min_lr_ratio", 0.0))
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if cfg.name == "linear":
        return max(0.0, 1.0 - t)
    if cfg.name == "step":
        epoch = step / steps_per_epoch
        epochs = total / steps_per_epoch
        marks = [m * epochs if isinstance(m, float) and m < 1 else m for m in cfg.milestones]
        return float(cfg.gamma) ** sum(epoch >= m for m in marks)
    return 1.0


def build_scheduler(optimizer, cfg, *, steps_per_epoch: int, epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step (its state is just the step count)."""
    if cfg.name not in SCHEDULES:
        raise ConfigError(f"unknown schedule '{cfg.name}'; valid: {', '.join(SCHEDULES)}")
    total = steps_per_epoch * epochs
    warmup = round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg, steps_per_epoch))
