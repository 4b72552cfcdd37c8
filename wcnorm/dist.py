"""Data-parallel training with torch.distributed (DDP), started by torchrun.

`torchrun --nproc_per_node=N -m wcnorm train ...` sets RANK / WORLD_SIZE /
LOCAL_RANK; `init` then joins the process group (NCCL on CUDA, gloo on CPU) and
returns the run's `DistContext`. Without those variables everything is a no-op.

The rule for batch and learning rate: `trainer.batch_size` is the GLOBAL batch,
split evenly over the ranks, and `optim.lr` is the learning rate for that global
batch. Nothing is rescaled behind your back, so N processes train the same
trajectory as one process with the same global batch.
"""

from __future__ import annotations

import os
from contextlib import nullcontext  # noqa: F401  (re-exported for callers)
from dataclasses import dataclass, field

import torch
import torch.distributed as td
from torch import nn

from .errors import ConfigError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None  # None: let the trainer config decide
    sync_bn: bool = False
    _extra: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def all_reduce(self):
        return None if self.world_size == 1 else (lambda t: td.all_reduce(t))

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        if self.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def init(trainer_cfg) -> DistContext:
    """Join the process group when launched by torchrun; else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if trainer_cfg.batch_size % world:
        raise ConfigError(f"trainer.batch_size={trainer_cfg.batch_size} is the global batch and must "
                          f"divide evenly over {world} processes")
    spec = str(trainer_cfg.device)
    use_cuda = torch.cuda.is_available() and spec != "cpu"
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not td.is_initialized():
        td.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank, world, device, bool(trainer_cfg.get("sync_bn", False)))
