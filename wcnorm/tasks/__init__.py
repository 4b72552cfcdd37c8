"""The kinds of learning problem wcnorm trains: each supplies its data, model, loss
and evaluation to the one training loop (`task.Task`).

- `classification`: images and labels (every dataset of `wcnorm.data`);
- `nerf`: a radiance field fitted to a scene's views (``dataset=blender`` or ``llff``);
- `shape`: an occupancy field fitted to a mesh (``dataset=mesh``);
- `fields`: what the two field tasks share, and the checks of a field config.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from omegaconf import DictConfig

from .classification import Classification, classification
from .field_common import FIELD_DATASETS, field_config_problems, is_field_config
from .task import Task

__all__ = ["Task", "Classification", "NeRFTask", "OccupancyTask", "FIELD_DATASETS", "build_task",
           "field_config_problems", "is_field_config"]

# field model -> the module and function of the task that trains it (FIELD_DATASETS: which
# datasets train which model). Imported when used: a classification run does not load the
# field tooling (trimesh, igl, scipy, scikit-image, matplotlib).
_FIELD_TASKS = {"nerf": ("nerf", "nerf_task"), "occupancy": ("shape", "shape_task")}
_LAZY = {"NeRFTask": "nerf", "OccupancyTask": "shape"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def build_task(cfg: DictConfig, device: torch.device, *, rank: int = 0, world_size: int = 1,
               run_dir: Path | None = None) -> Task:
    """The task `cfg` describes, its model on `device` (without the weight method).
    `run_dir`: where a task writes its pictures while it trains (None: nowhere)."""
    field_model = FIELD_DATASETS.get(cfg.dataset.name)
    if field_model is not None:
        module, task = _FIELD_TASKS[field_model]
        build = getattr(importlib.import_module(f".{module}", __name__), task)
        return build(cfg, device, rank=rank, world_size=world_size, run_dir=run_dir)
    return classification(cfg, device, rank=rank, world_size=world_size)
