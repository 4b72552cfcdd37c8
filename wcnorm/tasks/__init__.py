"""The kinds of learning problem wcnorm trains: each supplies its data, model, loss
and evaluation to the one training loop (`base.Task`).

- `classification`: images and labels (every dataset of `wcnorm.data`);
- `nerf`: a radiance field fitted to a scene's views (``dataset=blender`` or ``llff``);
- `shape`: an occupancy field fitted to a mesh (``dataset=mesh``);
- `fields`: what the two field tasks share, and the checks of a field config.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from .base import Task
from .classification import Classification, classification
from .fields import FIELD_DATASETS, field_config_problems, is_field_config
from .nerf import NeRFTask, nerf_task
from .shape import OccupancyTask, shape_task

__all__ = ["Task", "Classification", "NeRFTask", "OccupancyTask", "FIELD_DATASETS", "build_task",
           "field_config_problems", "is_field_config"]

# field model -> the task that trains it (FIELD_DATASETS: which datasets train which model)
_FIELD_TASKS = {"nerf": nerf_task, "occupancy": shape_task}


def build_task(cfg: DictConfig, device: torch.device, *, rank: int = 0, world_size: int = 1,
               run_dir: Path | None = None) -> Task:
    """The task `cfg` describes, its model on `device` (without the weight method).
    `run_dir`: where a task writes its pictures while it trains (None: nowhere)."""
    field_model = FIELD_DATASETS.get(cfg.dataset.name)
    if field_model is not None:
        return _FIELD_TASKS[field_model](cfg, device, rank=rank, world_size=world_size, run_dir=run_dir)
    return classification(cfg, device, rank=rank, world_size=world_size)
