"""What the training loop needs from a kind of learning problem: a `Task`.

The loop (`wcnorm.training.trainer.Trainer`) knows nothing of images, labels, rays or
points. A task owns its data, its model and its loaders, and answers four questions:
the loss of a batch (with the sums an epoch accumulates), what those sums mean, how
the model scores on held-out data after an epoch, and what is measured once at the
end of a run. Classification (`classification.py`) and the neural fields
(`wcnorm.tasks.field_common`) are the tasks wcnorm has.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import Tensor, nn

Reduce = Callable[[Tensor], Tensor]  # sums a tensor over data-parallel processes, in place


class Task:
    """Base class: a task sets `model` and `train_loader` (an iterable of batches with
    `set_epoch(epoch)` and `len()`) and overrides the methods below."""

    model: nn.Module
    train_loader: object
    #: the headline metric of a run (logs, `result.json`'s best epoch, tables)
    metric: str = "test_loss"
    higher_is_better: bool = False
    #: what one counted training example is, for the throughput column `<unit>_per_s`
    unit: str = "samples"
    #: the metrics the one-line epoch log shows, in order
    log_keys: tuple[str, ...] = ("train_loss",)

    def loss(self, model: nn.Module, batch: tuple) -> tuple[Tensor, Tensor]:
        """The training loss of one batch, and a 1-D float tensor of sums the epoch
        accumulates on the device: ``[loss x count, ..., count]`` (the loop checks the
        first entry for NaN and reads the count from the last)."""
        raise NotImplementedError

    def train_metrics(self, sums: Tensor) -> dict:
        """The epoch's training columns from its accumulated (reduced) sums."""
        return {"train_loss": sums[0].item() / max(sums[-1].item(), 1)}

    def evaluate(self, model: nn.Module, *, autocast: Callable[[], AbstractContextManager],
                 reduce: Reduce, epoch: int) -> dict:
        """Held-out metrics after an epoch (the model is in eval mode, gradients off)."""
        return {}

    def finish(self, model: nn.Module, run_dir: Path | None) -> dict:
        """Measured once, when the run has finished (e.g. a test set scored only at the
        end, pictures of the result); merged into `result.json` as given."""
        return {}

    def is_better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b


def sums_tensor(*values, device) -> Tensor:
    """Per-batch sums as one float64 tensor (exact counts, no drift over an epoch)."""
    return torch.stack([torch.as_tensor(v, device=device).double().reshape(()) for v in values])
