"""The statistics of the claims check: Welch's t-test, Holm's correction, a seed count.

Seeds of one cell are independent draws of a run's final number; two cells may have
different spreads (a normalizer can make training more or less stable), so two cells
are compared by Welch's unequal-variance t-test (Welch 1947), never by a pooled one:

    diff = m_a - m_b,   se^2 = s_a^2 / n_a + s_b^2 / n_b,   t = diff / se,
    df   = se^4 / ((s_a^2/n_a)^2 / (n_a - 1) + (s_b^2/n_b)^2 / (n_b - 1))

(Welch-Satterthwaite), with the sample variances s^2 (ddof 1). The p-value is
two-sided, so a gap in either direction is tested alike; the interval is
diff +- t_{df, 1 - alpha/2} se, significant at alpha exactly when p < alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Welch:
    """Welch's test of mean(a) - mean(b). NaN t, df, p and interval when both cells
    have no spread: the test is then undefined (a tie of constants tests nothing)."""

    diff: float
    se: float
    t: float
    df: float
    p: float
    ci_low: float
    ci_high: float
    n_a: int
    n_b: int


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Welch:
    """Welch's two-sided t-test and ``level`` confidence interval; each sample needs
    at least two values (a variance needs two)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs >= 2 values per sample, got {len(a)} and {len(b)}")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)  # squared standard errors
    diff, se = float(a.mean() - b.mean()), math.sqrt(va + vb)
    if se == 0:
        nan = float("nan")
        return Welch(diff, 0.0, nan, nan, nan, nan, nan, len(a), len(b))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = diff / se
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return Welch(diff, se, t, float(df), float(2 * stats.t.sf(abs(t), df)), diff - half,
                 diff + half, len(a), len(b))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979) of one family of tests.

    The i-th smallest of m p-values is multiplied by m - i + 1 (i from 1), the results
    made non-decreasing in that order and capped at 1. Rejecting where the adjusted p
    is below alpha keeps the chance of any false rejection in the family below alpha,
    whatever the dependence between the tests.
    """
    p = np.asarray(p, dtype=float)
    if np.isnan(p).any():
        raise ValueError("Holm's correction needs every p-value of the family")
    adjusted, running = np.empty_like(p), 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def seeds_for_power(diff: float, sd_a: float, sd_b: float, alpha: float = 0.05,
                    power: float = 0.8, most: int = 1000) -> int | None:
    """Seeds per cell (equal in both) for Welch's two-sided test at ``alpha`` to detect
    a true gap ``diff`` with probability ``power``, given the spreads ``sd_a``, ``sd_b``.

    Power is that of the noncentral t with the Welch-Satterthwaite df at n per cell.
    A planning estimate: plugging in an observed gap and spread is itself noisy.
    None when no n up to ``most`` suffices, or the gap or both spreads are zero.
    """
    var = sd_a**2 + sd_b**2
    if diff == 0 or not var > 0:
        return None
    for n in range(2, most + 1):
        df = (n - 1) * var**2 / (sd_a**4 + sd_b**4)
        crit, ncp = stats.t.ppf(1 - alpha / 2, df), abs(diff) / math.sqrt(var / n)
        if stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp) >= power:
            return n
    return None
