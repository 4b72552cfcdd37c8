"""Checks on a composed config, run before anything is built or loaded.

Hydra already refuses unknown choices of a config group (with the list of valid
ones) and unknown keys set without `+`; this catches values that compose but cannot
work, and keys added with `+` that nothing reads, and reports all of them at once.
"""

from __future__ import annotations

import difflib
import math

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ..data import DATASETS
from ..errors import ConfigError
from ..methods import METHODS
from ..methods.enorm import BN_MODES, ORDERS
from ..methods.wc import P_VALUES, SIDES, parse_p
from ..models import ModelConfigError, check_model
from ..tasks.field_common import field_config_problems, is_field_config
from .optim import OPTIMIZERS, SCHEDULES
from .trackers import check_trackers

AMP_CHOICES = ("auto", True, False, "bf16", "fp16")

# The config nodes that take keys they do not declare, added with `+`: a model's
# options (`+model.depth=12`; each model lists its own, and `check_model` refuses the
# rest) and a tracker's (`+logger.wandb.notes=...`, passed to the tracker). A `+key`
# anywhere else names a setting nothing reads: a typo, refused.
OPEN_NODES = ("model", "logger")


def _model_options(cfg: DictConfig) -> dict:
    return {k: v for k, v in cfg.model.items() if k != "name"}


def _positive_int(problems, cfg, key, allow_none=False):
    v = OmegaConf.select(cfg, key)
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        problems.append(f"{key}={v!r}: must be a positive integer{' or null' if allow_none else ''}")


def validate(cfg: DictConfig, hydra: DictConfig | None = None, *, this_machine: bool = True) -> None:
    """Raise a ConfigError listing every problem of `cfg` (see `problems`)."""
    p = problems(cfg, hydra, this_machine=this_machine)
    if p:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(p))


def problems(cfg: DictConfig, hydra: DictConfig | None = None, *, this_machine: bool = True) -> list[str]:
    """Every problem of `cfg`, one line each; none: it can run.

    `hydra`: the `hydra` node the config was composed with (its overrides and group
    choices), for the check of keys added with `+`; default: Hydra's current one, if
    any. `this_machine=False` leaves out what depends on the machine (is CUDA here?),
    for a job that a launcher runs elsewhere."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:  # `???` in a config: a value only the user can give (the checks below would trip on it)
        return ["required settings are missing: " + ", ".join(f"{k} (set {k}=...)" for k in missing)]
    p: list[str] = []
    for key in ("trainer.epochs", "trainer.batch_size"):
        _positive_int(p, cfg, key)
    for key in ("trainer.limit_batches", "trainer.limit_eval_batches", "trainer.eval_batch_size", "trainer.stop_after",
                "trainer.checkpoint_every"):
        _positive_int(p, cfg, key, allow_none=True)
    if cfg.norm.act == "bn" and cfg.trainer.batch_size == 1:
        p.append("trainer.batch_size=1 with BatchNorm (norm.act=bn): a training batch of one example "
                 "has no batch statistics to normalise with (each feature's variance over it is 0); "
                 "use trainer.batch_size >= 2, or a normalizer without batch statistics (norm=gn or none)")
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
    elif dev.startswith("cuda") and this_machine and not torch.cuda.is_available():
        p.append(f"trainer.device={dev}: CUDA is not available here; use trainer.device=cpu (or auto)")
    if t.label_smoothing < 0 or t.label_smoothing >= 1:
        p.append(f"trainer.label_smoothing={t.label_smoothing}: must lie in [0, 1)")
    p += check_trackers(cfg, this_machine=this_machine)
    if is_field_config(cfg):  # a neural field (wcnorm.tasks.field_common): no image size, no classifier
        return p + _norm_problems(cfg) + _added_key_problems(cfg, hydra) + field_config_problems(cfg)
    if cfg.dataset.name not in DATASETS:
        p.append(f"dataset.name={cfg.dataset.name!r}: valid: {', '.join(DATASETS)}")
    _positive_int(p, cfg, "dataset.image_size")
    v = cfg.dataset.get("val_split", 0)  # the image datasets have it (neural-field data: none)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        p.append(f"dataset.val_split={v!r}: must be a fraction in [0, 1) (0: no validation set)")
    p += _norm_problems(cfg)
    p += _added_key_problems(cfg, hydra)
    try:
        check_model(cfg.model.name, image_size=cfg.dataset.image_size, act_norm=cfg.norm.act, **_model_options(cfg))
    except ModelConfigError as err:
        p.append(f"model={cfg.model.name} with norm={cfg.norm.name} on {cfg.dataset.name}: {err}")
    return p


def _added_key_problems(cfg: DictConfig, hydra: DictConfig | None) -> list[str]:
    """`+key=value` overrides outside OPEN_NODES, each with the closest declared key."""
    if hydra is None:
        if not HydraConfig.initialized():
            return []
        hydra = HydraConfig.get()
    groups = set(hydra.runtime.choices)  # `+group=option` adds a config group, not a key
    added = [o.key_or_group for o in OverridesParser.create().parse_overrides(list(hydra.overrides.task))
             if o.is_add() and o.package is None and o.key_or_group not in groups]
    added = [k for k in added if k.split(".")[0] not in OPEN_NODES]
    declared = [k for k in _leaf_keys(OmegaConf.to_container(cfg, resolve=False))
                if not any(k == a or k.startswith(a + ".") for a in added)]
    p = []
    for key in added:
        close = difflib.get_close_matches(key, declared, n=1)
        hint = f"did you mean {close[0]}?" if close else "nothing reads it"
        p.append(f"+{key}: not a setting of wcnorm ({hint}); `+` adds only model options (+model.<option>)")
    return p


def _leaf_keys(node, prefix: str = ""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _leaf_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


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
        for key in ("cuda_graph", "fused"):
            if not isinstance(e.get(key, False), bool):
                p.append(f"norm.enorm.{key}={e[key]!r}: must be true or false")
    return p
