"""The sequential ENorm cycle of a chain, one visit per weight (`ENorm(fused=True)`).

In a chain (an MLP, a plain conv stack: every hidden unit has one producer and one
consumer, nothing tied) group k rescales the rows of W_k by d_k and the columns of
W_k+1 by 1/d_k. The packed waves of `cycle` (the reference) visit every weight twice,
as the consumer of one wave and the producer of the next, with the whole rest of the
network in between, so on a CPU each visit reads the weight from memory again. Here the
cycle walks the chain once and does all of a weight's work in one visit, while it is in
cache: its columns / d_k-1, its row norms, its rows x d_k; the column norms of the next
weight (which d_k needs) start that weight's visit.

The factors are the reference's, from the same weights in the same order (Gauss-Seidel):
l_k from the rows of W_k after their columns were scaled by 1/d_k-1, r_k from the columns
of W_k+1 before any scaling. Only the order of floating-point operations changes: column
norms as a sum of squares (PyTorch's vector_norm over a leading dim is an order of
magnitude slower than over the last one on a CPU), divisions as multiplications by the
reciprocal. The weights equal the reference's to about 1e-15 relative per cycle in
float64 (tests/test_enorm_fused.py holds them to 1e-12 over several cycles).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cycle import States, accumulation_dtype, unit_factors
from .units import UnitGroup, UnitSlice


@dataclass
class Link:
    """One group of a chain: the rows of `rows.param` (its producer) and the columns of
    `cols.param` (its consumer), `per_unit` consecutive columns per unit."""

    rows: UnitSlice
    cols: UnitSlice

    @property
    def per_unit(self) -> int:
        return self.cols.per_unit


def _whole(s: UnitSlice, dim: int, n: int) -> bool:
    """The slice is every index of its weight along `dim`, contiguous, at the plain depth."""
    return (s.dim == dim and s.start == 0 and s.param.ndim >= 2 and s.param.shape[dim] == s.n
            and s.depth_shift == 0 and s.n == n * s.per_unit)


def chain_links(groups: list[UnitGroup]) -> list[Link] | None:
    """The groups as a chain (group k's consumer is group k+1's producer), or None when
    they are not one: ties, concatenations, partial slices, depth-weighted terms."""
    links = []
    for g in groups:
        if len(g.incoming) != 1 or len(g.outgoing) != 1:
            return None
        rows, cols = g.incoming[0], g.outgoing[0]
        if not (_whole(rows, 0, g.n) and rows.per_unit == 1 and _whole(cols, 1, g.n) and cols.bias is None):
            return None
        if links and links[-1].cols.param is not rows.param:
            return None
        links.append(Link(rows, cols))
    params = [id(x.rows.param) for x in links] + [id(links[-1].cols.param)] if links else []
    return links if links and len(set(params)) == len(params) else None


def _rows_sq(w: Tensor, dtype: torch.dtype) -> Tensor:
    """Squared norm of every row (dim 0) of w."""
    w = w if w.dtype == dtype else w.to(dtype)
    return torch.linalg.vector_norm(w, dim=tuple(range(1, w.ndim))).square_()


def _cols_sq(w: Tensor, per_unit: int, dtype: torch.dtype) -> Tensor:
    """Squared norm of every block of `per_unit` consecutive columns (dim 1) of w."""
    w = w if w.dtype == dtype else w.to(dtype)
    sq = w.square()
    if per_unit > 1:
        sq = sq.unflatten(1, (-1, per_unit))
    return sq.sum(dim=[i for i in range(sq.ndim) if i != 1])


def _along(f: Tensor, t: Tensor, dim: int) -> Tensor:
    """f shaped to scale `t` along `dim` (a 1-d bias along its only dim)."""
    f = f if f.dtype == t.dtype else f.to(t.dtype)
    dim = dim if t.ndim > 1 else 0
    return f.view([-1 if i == dim else 1 for i in range(t.ndim)])


class ChainCycle:
    """One sequential ENorm cycle over a chain, each weight visited once (see the module
    docstring); called like `Cycle`, under torch.no_grad()."""

    def __init__(self, links: list[Link], *, c: float = 1.0, bias_in_norm: bool = False,
                 eps: float = 1e-12, states: States = lambda t: ()):
        self.links, self.c, self.bias_in_norm, self.eps, self.states = links, float(c), bias_in_norm, eps, states

    def _scale(self, t: Tensor, f: Tensor, dim: int) -> None:
        """t x f along dim; the optimizer state of t x f^-power (it scales like the gradient)."""
        t.mul_(_along(f, t, dim))
        for buf, power in self.states(t):
            buf.mul_(_along(f.pow(-power), buf, dim))

    def __call__(self) -> None:
        inv = None  # 1 / d of the previous group, one entry per column of the current weight
        for link in self.links:
            w, bias = link.rows.param, link.rows.bias
            if inv is not None:
                self._scale(w, inv, 1)  # the previous group's consumer: columns / d_k-1
            dtype = accumulation_dtype(w)
            l2 = _rows_sq(w, dtype)
            if self.bias_in_norm and bias is not None:
                l2 = l2 + bias.to(dtype).square()
            r2 = _cols_sq(link.cols.param, link.per_unit, dtype)
            d = unit_factors(l2, r2, self.c, self.eps)
            self._scale(w, d, 0)
            if bias is not None:
                self._scale(bias, d, 0)
            inv = d.reciprocal()
            if link.per_unit > 1:
                inv = inv.repeat_interleave(link.per_unit)
        if inv is not None:
            self._scale(self.links[-1].cols.param, inv, 1)

    def prepare(self) -> None:
        """Nothing to build ahead (the chain has no index tensors)."""
