"""The kinds of learning problem wcnorm trains: each supplies its data, model, loss
and evaluation to the one training loop (`base.Task`)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from .base import Task
from .classification import Classification, classification

__all__ = ["Task", "Classification", "build_task"]


def build_task(cfg: DictConfig, device: torch.device, *, rank: int = 0, world_size: int = 1) -> Task:
    """The task `cfg` describes, its model on `device` (without the weight method)."""
    return classification(cfg, device, rank=rank, world_size=world_size)
