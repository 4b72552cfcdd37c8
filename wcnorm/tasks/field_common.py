"""What the neural-field tasks (`nerf.py`, `shape.py`) share: which dataset trains which
field model, the checks of a field config, and random batches from a fixed pool.

A field config pairs a dataset with its model: a scene (``dataset=blender`` or
``dataset=llff``) trains ``model=nerf``, a mesh (``dataset=mesh``) ``model=occupancy``.
`field_config_problems` finds what would stop such a run before anything is built:
a wrong pairing, an activation normalizer or ENorm (the field protocol compares
none, WN, WS and WC: docs/methods.md section 5), options the model or renderer
refuses, and the data's files (the scene's metadata and file names, the mesh itself:
present, non-empty, watertight). No pixel is read.

`PoolLoader` is the training data of both tasks: each epoch, `steps_per_epoch`
batches of random examples of a fixed pool (a scene's training rays, a shape's
labelled points), drawn from the generator of (seed, epoch) so that a resumed run
sees the batches an uninterrupted one saw.

`dataset.val_split` (0 by default) holds a fraction of the training data out, as it
does for images: training views of a scene (`held_out_views`), points of a shape's
pool. A learning-rate search tunes on them (`final_val_psnr`, `final_val_iou`); the
test views and test points never choose a rate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ..errors import ConfigError, WcnormError
from ..fields.render import RenderSettings
from ..fields.scenes import BLENDER_SPLITS, LLFF_SPLITS, check_scene
from ..fields.tooling import tooling_problem
from ..loaders import epoch_generator
from ..models.coordinate_mlps import FIELD_MODELS, build, default_options

__all__ = ["FIELD_DATASETS", "SCENE_SPLITS", "FIELD_WEIGHT_METHODS", "RENDER_KEYS", "is_field_config",
           "field_config_problems", "scene_options", "val_sources", "field_model", "held_out_count",
           "held_out_views", "PoolLoader"]

# dataset -> the field model it trains
FIELD_DATASETS = {"blender": "nerf", "llff": "nerf", "mesh": "occupancy"}
SCENE_SPLITS = {"blender": BLENDER_SPLITS, "llff": LLFF_SPLITS}
# The weight methods the field protocol compares; no activation normalizer: a batch of
# random rays or points is not a sample whose statistics a layer should depend on.
FIELD_WEIGHT_METHODS = ("none", "wn", "ws", "wc")
# model.* keys that set NeRF's sampling (the renderer's), not the MLP's options
RENDER_KEYS = ("n_coarse", "n_fine")
# dataset.* keys that are the scene loaders' options
SCENE_OPTIONS = {"blender": ("downscale",), "llff": ("downscale", "ndc", "holdout")}
TEST_SPLIT = "test"


def is_field_config(cfg: DictConfig) -> bool:
    """Whether `cfg` names a field dataset or a field model (its checks are then these)."""
    return cfg.dataset.name in FIELD_DATASETS or cfg.model.name in FIELD_MODELS


def val_sources(layout: str) -> tuple[str, ...]:
    """The splits a scene's `val_*` columns may be rendered from: any but the test split."""
    return tuple(s for s in SCENE_SPLITS[layout] if s != TEST_SPLIT)


def scene_options(dataset: DictConfig) -> dict:
    """The loader options of a scene dataset config (`load_blender` / `load_llff`)."""
    return {k: dataset[k] for k in SCENE_OPTIONS[dataset.name]}


def held_out_count(n: int, fraction: float, what: str) -> int:
    """How many of `n` training examples `dataset.val_split=fraction` holds out: at least
    one, and never all (ConfigError naming `what`, e.g. "the 17 training views of fern")."""
    k = max(1, round(n * fraction))
    if k >= n:
        raise ConfigError(f"dataset.val_split={fraction} holds out all of {what}: lower "
                          f"dataset.val_split (at least one example must be left to train on)")
    return k


def held_out_views(n: int, fraction: float, what: str) -> list[int]:
    """The training views `dataset.val_split` holds out: evenly spaced over the `n` views
    (each in the middle of its share), so that they see the scene from around it."""
    k = held_out_count(n, fraction, what)
    return [int((i + 0.5) * n / k) for i in range(k)]


def field_model(model: DictConfig) -> tuple[str, dict]:
    """(name, options of `wcnorm.models.coordinate_mlps.build`) of a field model config."""
    options = OmegaConf.to_container(model, resolve=True)
    name = options.pop("name")
    return name, {k: v for k, v in options.items() if k not in RENDER_KEYS}


# ----------------------------------------------------------------------------- checks


def field_config_problems(cfg: DictConfig, *, check_files: bool = True) -> list[str]:
    """Everything that stops `cfg` from training a neural field (empty: nothing does).
    Reads the scene's metadata and loads the mesh (not with ``check_files=False``: the
    config alone, e.g. to check presets where the data is absent); builds the model on
    the meta device only (no memory, no initialisation)."""
    d, m = cfg.dataset, cfg.model
    wanted = FIELD_DATASETS.get(d.name)
    if wanted is None:
        scenes = ", ".join(f"dataset={k}" for k, v in FIELD_DATASETS.items() if v == m.name)
        return [f"model={m.name} is a neural field: it trains on {scenes}, not on dataset={d.name}"]
    if m.name != wanted:
        return [f"dataset={d.name} trains model={wanted}, not model={m.name}"]
    problems = _norm_problems(cfg) + _model_problems(m)
    if cfg.diagnostics.hessian:
        problems.append("diagnostics.hessian=true: the Hessian probe needs a classification batch; "
                        "neural fields have none (set diagnostics.hessian=false)")
    if d.name not in SCENE_SPLITS and tooling_problem():  # the shape task's mesh tooling: an extra
        return [*problems, f"dataset={d.name}: {tooling_problem()}"]
    problems += _scene_problems(d, check_files) if d.name in SCENE_SPLITS else _mesh_problems(d, check_files)
    return problems


def _norm_problems(cfg: DictConfig) -> list[str]:
    n, p = cfg.norm, []
    if n.act != "none":
        p.append(f"norm={n.name}: field MLPs take no activation normalizer (norm.act={n.act}); "
                 f"use norm={', '.join(FIELD_WEIGHT_METHODS)}")
    if n.weight not in FIELD_WEIGHT_METHODS:
        p.append(f"norm.weight={n.weight}: on neural fields choose one of {', '.join(FIELD_WEIGHT_METHODS)}")
    if n.enorm.enabled:
        p.append(f"norm={n.name}: ENorm is not part of the neural-field protocol (none, WN, WS, WC: "
                 "docs/methods.md section 5); use norm=none, wn, ws or wc")
    return p


def _model_problems(model: DictConfig) -> list[str]:
    name, options = field_model(model)
    valid = default_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        return [f"model={name}: unknown option(s) {unknown}; valid: {', '.join([*valid, *RENDER_KEYS])}"]
    p = []
    coarse_fine = True
    if name == "nerf":
        try:
            settings = RenderSettings(near=0.0, far=1.0, n_coarse=model.n_coarse, n_fine=model.n_fine)
            coarse_fine = settings.n_fine > 0
        except (TypeError, ValueError) as err:
            p.append(f"model.n_coarse/n_fine: {err}")
    try:
        with torch.device("meta"):  # the model's own checks, without memory or initialisation
            build(name, coarse_fine=coarse_fine, **options)
    except (TypeError, ValueError) as err:
        p.append(f"model={name}: {err}")
    return p


def _count(d: DictConfig, key: str, *, allow_none: bool = False, least: int = 1) -> list[str]:
    v = d.get(key)
    if v is None and allow_none:
        return []
    if not isinstance(v, int) or isinstance(v, bool) or v < least:
        none = " or null" if allow_none else ""
        return [f"dataset.{key}={v!r}: must be an integer >= {least}{none}"]
    return []


def _scene_problems(d: DictConfig, check_files: bool) -> list[str]:
    p = _count(d, "steps_per_epoch") + _count(d, "eval_every") + _count(d, "eval_views", allow_none=True)
    sources = val_sources(d.name)
    if d.val_source not in sources:
        why = (" (the test views are rendered once, when the run has finished, never during training)"
               if d.val_source == TEST_SPLIT else "")
        p.append(f"dataset.val_source={d.val_source!r}: choose one of {', '.join(sources)}{why}")
        return p
    if not check_files:
        return p
    try:
        splits = tuple(dict.fromkeys(("train", d.val_source, TEST_SPLIT)))
        check_scene(d.name, d.root, splits, **scene_options(d))
    except WcnormError as err:
        p.append(f"dataset={d.name} (scene {d.get('scene')!r}): {err}")
    return p


def _mesh_problems(d: DictConfig, check_files: bool) -> list[str]:
    p = _count(d, "train_points") + _count(d, "eval_points") + _count(d, "chamfer_points")
    p += _count(d, "mc_resolution", least=2) + _count(d, "steps_per_epoch", allow_none=True)
    if not 0 <= d.near_fraction <= 1:
        p.append(f"dataset.near_fraction={d.near_fraction}: must lie in [0, 1]")
    if not d.surface_sigma > 0:
        p.append(f"dataset.surface_sigma={d.surface_sigma}: must be > 0")
    if not check_files:
        return p
    p += _surface_memory_problems(d)
    try:
        from ..fields.shapes import load_mesh  # igl, trimesh, scipy: for a shape task only

        load_mesh(d.path, require_watertight=bool(d.require_watertight))
    except WcnormError as err:
        p.append(f"dataset=mesh (shape {d.get('shape')!r}): {err}")
    return p


def available_memory() -> int | None:
    """Bytes of memory this machine can give now (MemAvailable), else its physical memory."""
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kb * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None


def _surface_memory_problems(d: DictConfig) -> list[str]:
    """The surface is extracted once training has finished: a grid too large for this
    machine must be refused before, not after, the training."""
    from ..fields.shapes import surface_memory  # scipy: for a shape task only

    res = d.mc_resolution
    have = available_memory()
    if not isinstance(res, int) or res < 2 or have is None or surface_memory(res) <= have:
        return []
    largest = int((have / surface_memory(1)) ** (1 / 3))
    return [f"dataset.mc_resolution={res}: extracting the surface on a {res}^3 grid needs at least "
            f"{surface_memory(res) / 2**30:.0f} GiB of memory, this machine has {have / 2**30:.1f} GiB "
            f"available: choose dataset.mc_resolution={largest} or less"]


# ----------------------------------------------------------------------------- batches


class PoolLoader:
    """`steps` batches per epoch of `batch_size` random examples of a pool of `size`.

    An epoch's examples are a prefix of concatenated random permutations of the pool
    (without replacement until the pool is used up), drawn from the generator of
    (seed, epoch). Under data parallelism every rank draws the same permutation and
    takes its own contiguous share of each batch (batch_size / world_size examples),
    so the processes together see what one process would. `fetch(indices)` makes a
    batch (a tuple of tensors) from indices on `device`.
    """

    def __init__(self, size: int, batch_size: int, steps: int, fetch: Callable[[Tensor], tuple], *,
                 seed: int, device, limit: int | None = None, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ConfigError(f"trainer.batch_size={batch_size} must be a multiple of the "
                              f"{world_size} data-parallel processes")
        self.size, self.batch_size, self.steps, self.fetch = size, batch_size, steps, fetch
        self.seed, self.device, self.limit = seed, torch.device(device), limit
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return min(self.steps, self.limit) if self.limit else self.steps

    def __iter__(self):
        g = epoch_generator(self.seed, self.epoch)
        need = len(self) * self.batch_size
        order = torch.cat([torch.randperm(self.size, generator=g) for _ in range(math.ceil(need / self.size))])
        share = order[:need].view(len(self), self.world_size, -1)[:, self.rank]
        for indices in share.to(self.device):
            yield self.fetch(indices)
