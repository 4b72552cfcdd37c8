"""The methods' hooks into the training loop."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..methods.diagnostics import condition_numbers, hessian_top_eigenvalue, summarize_conditioning
from ..modules import unwrap
from ..outputs import write_csv
from .trainer import Callback, Trainer

CONDITIONING_COLUMNS = ["epoch", "layer", "shape", "kappa_eff", "kappa_raw", "row_norm_spread"]


class ENormCallback(Callback):
    """One ENorm call (`cycles` cycles) every `every` optimizer steps; the objective
    and the imbalance |log(r / (c l))| go into metrics.csv each epoch."""

    def __init__(self, enorm, every: int = 1, cycles: int = 1):
        self.enorm, self.every, self.cycles = enorm, int(every), int(cycles)

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step % self.every == 0:
            self.enorm.step(self.cycles)

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> dict:
        mean, worst = self.enorm.imbalance()
        return {"enorm_objective": float(self.enorm.objective()), "enorm_imbalance_mean": float(mean),
                "enorm_imbalance_max": float(worst)}


class ConditioningCallback(Callback):
    """Per-layer condition numbers of the effective and raw weights, before training
    (epoch 0), every `every` epochs and at the end, into conditioning.csv; optionally
    the top Hessian eigenvalue on a fixed batch into metrics.csv."""

    def __init__(self, run_dir: Path | None, *, every: int = 1, all_layers: bool = False,
                 hessian_batch: tuple[torch.Tensor, torch.Tensor] | None = None, hessian_iters: int = 20):
        self.path = run_dir / "conditioning.csv" if run_dir else None
        self.every, self.all_layers = max(1, int(every)), all_layers
        self.hessian_batch, self.hessian_iters = hessian_batch, hessian_iters
        self.rows: list[dict] = []
        self.start: dict = {}
        self.end: dict = {}

    def _snapshot(self, trainer: Trainer, epoch: int) -> dict:
        rows = condition_numbers(unwrap(trainer.model), all_layers=self.all_layers)
        self.rows += [{"epoch": epoch, **r, "shape": "x".join(map(str, r["shape"]))} for r in rows]
        if self.path and trainer.is_main:
            write_csv(self.path, self.rows, CONDITIONING_COLUMNS)
        return summarize_conditioning(rows)

    def _hessian(self, trainer: Trainer) -> float:
        model = unwrap(trainer.model)
        was_training = model.training
        model.eval()  # a fixed function of the weights: BN in eval mode, no dropout
        x, y = (t.to(trainer.device) for t in self.hessian_batch)
        value = hessian_top_eigenvalue(model, F.cross_entropy, x, y, iters=self.hessian_iters)
        model.train(was_training)
        return value

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.epoch == 0:
            self.rows = []
            self.start = self._snapshot(trainer, 0)
        elif self.path and self.path.exists():  # resumed: keep the snapshots of the epochs kept
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= trainer.epoch]
            for r in rows:
                r["epoch"] = int(r["epoch"])
                for k in ("kappa_eff", "kappa_raw", "row_norm_spread"):
                    r[k] = float(r[k])
            self.rows = rows
            self.start = summarize_conditioning([r for r in rows if r["epoch"] == 0])
            # The latest snapshot kept is the end so far: a run resumed from its final
            # checkpoint trains no epoch, and its result must still report the end.
            done = [r["epoch"] for r in rows if r["epoch"] > 0]
            if done:
                self.end = summarize_conditioning([r for r in rows if r["epoch"] == max(done)])

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> dict:
        if epoch % self.every and epoch != trainer.epochs:
            return {}
        self.end = self._snapshot(trainer, epoch)
        row = dict(self.end)
        if self.hessian_batch is not None:
            row["hessian_top_eig"] = self._hessian(trainer)
        return {k: v for k, v in row.items() if isinstance(v, (int, float)) and math.isfinite(v)}

    def summary(self) -> dict:
        return {"start": self.start, "end": self.end}
