"""Checks on a composed config, run before anything is built or loaded.

Hydra already refuses unknown choices of a config group (with the list of valid
ones); this catches values that compose but cannot work, and reports all of them
at once.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig, OmegaConf

from ..data import DATASETS
from ..errors import ConfigError
from ..methods import METHODS
from ..methods.enorm import BN_MODES, ORDERS
from ..methods.wc import P_VALUES, SIDES, parse_p
from ..models import ModelConfigError, check_model
from .optim import OPTIMIZERS, SCHEDULES

AMP_CHOICES = ("auto", True, False, "bf16", "fp16")


def _model_options(cfg: DictConfig) -> dict:
    return {k: v for k, v in cfg.model.items() if k != "name"}


def _positive_int(problems, cfg, key, allow_none=False):
    v = OmegaConf.select(cfg, key)
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        problems.append(f"{key}={v!r}: must be a positive integer{' or null' if allow_none else ''}")


def validate(cfg: DictConfig) -> None:
    """Raise a ConfigError listing every problem of `cfg`."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:  # `???` in a config: a value only the user can give
        raise ConfigError("required settings are missing: " + ", ".join(
            f"{k} (set {k}=...)" for k in missing))
    p: list[str] = []
    for key in ("trainer.epochs", "trainer.batch_size"):
        _positive_int(p, cfg, key)
    for key in ("trainer.limit_batches", "trainer.limit_eval_batches", "trainer.eval_batch_size", "trainer.stop_after"):
        _positive_int(p, cfg, key, allow_none=True)
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        p.append(f"seed={cfg.seed!r}: must be a non-negative integer")
    o = cfg.optim
    if o.name not in OPTIMIZERS:
        p.append(f"optim.name={o.name!r}: valid: {', '.join(OPTIMIZERS)}")
    if not isinstance(o.lr, (int, float)) or not 0 <= o.lr < math.inf:
        p.append(f"optim.lr={o.lr!r}: must be a finite number >= 0")
    if not isinstance(o.weight_decay, (int, float)) or o.weight_decay < 0:
        p.append(f"optim.weight_decay={o.weight_decay!r}: must be >= 0")
    if o.name == "sgd" and not 0 <= o.momentum < 1:
        p.append(f"optim.momentum={o.momentum!r}: must lie in [0, 1)")
    if cfg.sched.name not in SCHEDULES:
        p.append(f"sched.name={cfg.sched.name!r}: valid: {', '.join(SCHEDULES)}")
    if cfg.sched.get("warmup_epochs", 0) < 0:
        p.append("sched.warmup_epochs must be >= 0")
    t = cfg.trainer
    if t.amp not in AMP_CHOICES:
        p.append(f"trainer.amp={t.amp!r}: valid: auto, true, false, bf16, fp16")
    dev = str(t.device)
    if dev not in ("auto", "cpu", "cuda") and not dev.startswith("cuda:"):
        p.append(f"trainer.device={dev!r}: valid: auto, cpu, cuda, cuda:N")
    elif dev.startswith("cuda") and not torch.cuda.is_available():
        p.append(f"trainer.device={dev}: CUDA is not available here; use trainer.device=cpu (or auto)")
    if t.label_smoothing < 0 or t.label_smoothing >= 1:
        p.append(f"trainer.label_smoothing={t.label_smoothing}: must lie in [0, 1)")
    if cfg.dataset.name not in DATASETS:
        p.append(f"dataset.name={cfg.dataset.name!r}: valid: {', '.join(DATASETS)}")
    _positive_int(p, cfg, "dataset.image_size")
    p += _norm_problems(cfg)
    try:
        check_model(cfg.model.name, image_size=cfg.dataset.image_size, act_norm=cfg.norm.act, **_model_options(cfg))
    except ModelConfigError as err:
        p.append(f"model={cfg.model.name} with norm={cfg.norm.name} on {cfg.dataset.name}: {err}")
    if p:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(p))


def _norm_problems(cfg: DictConfig) -> list[str]:
    n, p = cfg.norm, []
    if n.weight not in METHODS:
        p.append(f"norm.weight={n.weight!r}: valid: {', '.join(METHODS)}")
    wc = n.wc
    if wc.side not in SIDES:
        p.append(f"norm.wc.side={wc.side!r}: valid: {', '.join(SIDES)}")
    try:
        parse_p(wc.p)
    except ValueError:
        p.append(f"norm.wc.p={wc.p!r}: valid: {', '.join(f'{v:g}' for v in P_VALUES)}")
    e = n.enorm
    if e.enabled:
        if n.weight != "none":
            p.append(f"norm={n.name}: ENorm cannot be combined with a weight-level method "
                     f"(norm.weight={n.weight}); WC/WS/WN make the layers scale-invariant")
        if n.act not in ("none", "bn") and not (n.act == "ln" and e.attention):
            p.append(f"norm={n.name}: ENorm runs with norm.act=none or bn (ENorm + BN), not {n.act}")
        if cfg.model.name == "vit" and not e.attention:
            p.append("norm.enorm on the ViT: its units feed GELU/LayerNorm/softmax, which are not "
                     "positively homogeneous, so nothing is balanceable; set norm.enorm.attention=true "
                     "to balance the q/k and v/proj pairs (the attention extension)")
        if not e.c > 0:
            p.append(f"norm.enorm.c={e.c}: must be > 0")
        for key in ("every", "cycles"):
            if not isinstance(e[key], int) or e[key] < 1:
                p.append(f"norm.enorm.{key}={e[key]!r}: must be an integer >= 1")
        if e.order not in ORDERS:
            p.append(f"norm.enorm.order={e.order!r}: valid: {', '.join(ORDERS)}")
        if e.bn not in BN_MODES:
            p.append(f"norm.enorm.bn={e.bn!r}: valid: {', '.join(BN_MODES)}")
        if not isinstance(e.cuda_graph, bool):
            p.append(f"norm.enorm.cuda_graph={e.cuda_graph!r}: must be true or false")
    return p
