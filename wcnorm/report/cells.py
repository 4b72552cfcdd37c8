"""A cell: the runs of one method at one grid point, as the tables and the claims both
read them (one type, so that a table's "50.3 ± 1.6 (n=3)" and a claim's Welch test rest
on the same runs, counted the same way)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Cell:
    name: str
    values: np.ndarray  # the metric of each finished run that reports it
    seeds: frozenset = frozenset()  # those runs' seeds
    # the method classes its finished runs recorded (runs.method_scope); None: a run without
    classes: frozenset = frozenset()
    diverged: int = 0  # runs whose loss became NaN: counted as such, never in the mean
    unfinished: int = 0  # runs without a final epoch (the diverged among them)

    @classmethod
    def of(cls, runs: pd.DataFrame, metric: str, name: str = "") -> Cell:
        """The cell of ``runs`` (a ``load_runs`` or runs.csv frame of one method and point)."""
        finished = runs["finished"].astype(bool)
        done = runs[finished & runs[metric].notna()]
        classes = frozenset(runs.loc[finished, "method_class"].where(runs.loc[finished, "method_class"].notna(),
                                                                       None)) \
            if "method_class" in runs.columns else frozenset({None} if finished.any() else ())
        return cls(name, done[metric].to_numpy(dtype=float), frozenset(done["seed"].dropna()), classes,
                   int((runs["status"] == "diverged").sum()) if "status" in runs.columns else 0,
                   int((~finished).sum()))

    @property
    def method_class(self) -> str | None:
        """The one function of the raw weights every run of the cell trained, if known."""
        return next(iter(self.classes)) if len(self.classes) == 1 else None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if self.n else math.nan

    @property
    def finite(self) -> bool:
        """False where a run's number is infinite (a Chamfer distance of no surface)."""
        return bool(np.isfinite(self.values).all())

    @property
    def std(self) -> float:
        """Sample std; NaN for one run, or where a value is infinite (its spread is undefined)."""
        return float(self.values.std(ddof=1)) if self.n > 1 and self.finite else math.nan

    @property
    def min(self) -> float:
        return float(self.values.min()) if self.n else math.nan

    @property
    def max(self) -> float:
        return float(self.values.max()) if self.n else math.nan

    def __str__(self) -> str:
        if self.n == 0:
            return f"{self.name}: no finished run"
        std = "" if math.isnan(self.std) else f"±{self.std:.2f}" if abs(self.mean) >= 1 \
            else f"±{self.std:.3g}"
        lost = f", {self.diverged} diverged" if self.diverged else ""
        return f"{self.name} {number(self.mean)}{std} (n={self.n}{lost})"


def number(x: float) -> str:
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.4g}"
