"""The ENorm cycle: per-unit factors d = sqrt(r / (c l)) applied to weights and optimizer state.

A cycle is a sequence of *waves*: groups whose factors are computed together, from the
same weights. `sequential` order (Gauss-Seidel) has one wave per level of groups that
share no weight (see `levels`), `jacobi` a single wave of all groups. A wave costs a fixed
handful of tensor ops plus about two per weight slice: the norms of all its slices go into
one vector, one gather lays them out as a (units x terms) table that one row sum reduces
to every unit's l^2 and r^2, one gather hands every slice its factors, and one
`_foreach_mul_` (and `_foreach_div_` for the optimizer state) rescales every slice. The
cycle reads each weight once, so on a GPU its many small kernels are expected to make it
launch-bound: the number of ops is what counts (`wcnorm bench` reports it).

Every op of a cycle is deterministic (no atomics: the per-unit sums are a row sum in a
fixed order, not a scatter-add), so DDP ranks holding the same weights compute the same
factors to the last bit, and their weights and optimizer state stay identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .units import UnitGroup, UnitSlice

ORDERS = ("sequential", "jacobi")
# the optimizer state of a tensor, as (state tensor, power): the state scales like the
# gradient to that power, so a weight multiplied by f has its state multiplied by f^-power
States = Callable[[Tensor], Iterable[tuple[Tensor, int]]]


def accumulation_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _dim(s: UnitSlice, t: Tensor) -> int:
    return s.dim if t.ndim > 1 else 0  # biases are 1-d and follow the rows


def _take(s: UnitSlice, t: Tensor) -> Tensor:
    if s.start is not None:
        return t.narrow(_dim(s, t), s.start, s.n)
    return t.index_select(_dim(s, t), s.index)


def _norms(x: Tensor, dim: int, per_unit: int, dtype: torch.dtype) -> Tensor:
    """L2 norm of each block of `per_unit` consecutive indices of `x` along `dim` (one
    kernel; squared after the cat)."""
    x = x if x.dtype == dtype else x.to(dtype)
    if per_unit > 1:
        x = x.unflatten(dim, (-1, per_unit))  # a view: blocks along dim, their indices at dim + 1
    elif x.ndim == 1:
        return x.abs()
    return torch.linalg.vector_norm(x, dim=[i for i in range(x.ndim) if i != dim])


def _broadcast(f: Tensor, t: Tensor, dim: int) -> Tensor:
    f = f if f.dtype == t.dtype else f.to(t.dtype)
    return f.view([-1 if i == dim else 1 for i in range(t.ndim)])


def _queue(s: UnitSlice, t: Tensor, f: Tensor, batch, view: Tensor | None = None) -> None:
    """Queue `t[slice] (x or /)= f` for one of a wave's _foreach_ calls (`batch`: its tensors
    and factors). Scattered slices have no view to write through: they are done at once."""
    dim = _dim(s, t)
    f = _broadcast(f, t, dim)
    if s.start is None:
        op = Tensor.mul_ if batch[2] == "mul" else Tensor.div_
        t.index_copy_(dim, s.index, op(t.index_select(dim, s.index), f))
    else:
        batch[0].append(view if view is not None else t.narrow(dim, s.start, s.n))
        batch[1].append(f)


def unit_factors(l2: Tensor, r2: Tensor, c: float, eps: float) -> Tensor:
    """d = sqrt(r / (c l)); 1 for a dead unit (l or r below eps), so no inf/NaN ever
    (a dead unit's 0/0 or x/0 is computed, then overwritten)."""
    dead = torch.minimum(l2, r2) <= eps * eps
    d = torch.div(r2, l2).pow_(0.25)
    return (d if c == 1 else d.mul_(c**-0.5)).masked_fill_(dead, 1.0)


class Wave:
    """Groups balanced together, from the same weights (one group, or several that share
    no weight).

    Its norm terms are every slice's weight, and its bias where biases count in l. A
    contiguous slice gives one norm per unit (the unit's block of indices at once), a
    scattered one a norm per index. `table[k]` lists the terms of entry k of the wave's
    [l^2 | r^2] vector (outgoing units offset by n), padded with the index of a zero
    appended to the norms. Index tensors are built on first use, on the weights' device,
    and again if the model moves."""

    def __init__(self, groups: list[UnitGroup], *, c: float = 1.0, bias_in_norm: bool = False):
        self.groups, self.c = groups, float(c)
        self.n = sum(g.n for g in groups)
        self.slices, units, offset = [], [], 0
        for g in groups:
            for s in g.slices:
                self.slices.append(s)
                units.append([offset + u for u in s.unit_of_index()])  # the wave's unit of each index
            offset += g.n
        self.terms = [(s, s.param) for s in self.slices]  # (slice, tensor) whose norms count
        if bias_in_norm:
            self.terms += [(s, s.bias) for s in self.slices if s.bias is not None]
        units_of = {id(s): us for s, us in zip(self.slices, units)}
        entries, weights = [], []  # per norm: its entry of [l^2 | r^2], its c-weight
        for s, _ in self.terms:
            per_norm = units_of[id(s)][:: s.per_unit] if s.start is not None else units_of[id(s)]
            entries += [u + (0 if s.incoming else self.n) for u in per_norm]
            weights += [s.c_weight(self.c)] * len(per_norm)
        members: list[list[int]] = [[] for _ in range(2 * self.n)]
        for norm, entry in enumerate(entries):
            members[entry].append(norm)
        width = max(map(len, members), default=1)
        self._table = [m + [len(entries)] * (width - len(m)) for m in members]
        self._weights = None if all(w == 1.0 for w in weights) else [*weights, 0.0]
        self._unit_of_index = [u for us in units for u in us]
        self.sizes = [s.n for s in self.slices]
        self._key = None

    def ready(self) -> None:
        """Build the index tensors on the weights' device (again if they moved)."""
        w = self.slices[0].param
        if (w.device, w.dtype) == self._key:
            return
        device, dtype = w.device, accumulation_dtype(w)
        self.table = torch.tensor(self._table, dtype=torch.long, device=device)
        self.zero = torch.zeros(1, dtype=dtype, device=device)
        self.unit_of_index = torch.tensor(self._unit_of_index, dtype=torch.long, device=device)
        self.weights = None if self._weights is None else torch.tensor(self._weights, dtype=dtype, device=device)
        for s in self.slices:
            if s.start is None and s.index.device != device:
                s.index, s.units = s.index.to(device), s.units.to(device)
        self.dtype, self._key = dtype, (w.device, w.dtype)

    def views(self) -> list[Tensor]:
        """The norm terms' slices: views for contiguous slices, copies for scattered ones."""
        self.ready()
        return [_take(s, t) for s, t in self.terms]

    def norms(self, views: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """c-weighted squared norms of every unit's incoming (l^2) and outgoing (r^2) weights."""
        views = self.views() if views is None else views
        norms = [_norms(x, _dim(s, t), s.per_unit if s.start is not None else 1, self.dtype)
                 for x, (s, t) in zip(views, self.terms)]
        sq = torch.cat([*norms, self.zero]).square_()
        if self.weights is not None:
            sq = sq.mul_(self.weights)
        lr = sq[self.table].sum(1)  # a gather and a row sum: deterministic, unlike a scatter-add
        return lr[: self.n], lr[self.n :]

    def rescale_(self, d: Tensor, states: States, views: list[Tensor] | None = None) -> None:
        """Incoming weights (and their biases) x d, outgoing / d; optimizer state inversely.
        `views`: the weights' slices from `views()` (the first len(slices) terms), reused."""
        self.ready()
        f = d.index_select(0, self.unit_of_index)  # the factor at every index of every slice
        per_slice = {1: f.split(self.sizes)}  # and its square, for Adam's second moments
        mul, div = ([], [], "mul"), ([], [], "div")  # (tensors, factors) for one _foreach_ call each
        for k, s in enumerate(self.slices):
            weights, state = (mul, div) if s.incoming else (div, mul)
            for t in (s.param, s.bias):
                if t is None:
                    continue
                view = views[k] if views is not None and t is s.param else None
                _queue(s, t, per_slice[1][k], weights, view)
                for buf, power in states(t):
                    if power not in per_slice:
                        per_slice[power] = f.pow(power).split(self.sizes)
                    _queue(s, buf, per_slice[power][k], state)
        for (ts, fs, _), op in ((mul, torch._foreach_mul_), (div, torch._foreach_div_)):
            if ts:
                op(ts, fs)

    def step(self, eps: float, states: States) -> None:
        views = self.views()
        self.rescale_(unit_factors(*self.norms(views), self.c, eps), states, views)


def levels(groups: list[UnitGroup]) -> list[list[UnitGroup]]:
    """Groups in sequential order, batched without changing the result: two groups that
    share no weight commute (neither changes the other's norms), so each group goes one
    level after the last earlier group it shares a weight with, and a level's groups are
    updated at once. Gauss-Seidel exactly, in fewer waves (ResNet-18: 12 groups, 8 levels;
    in a DenseNet every group shares a weight with the one before)."""
    level_of: dict[int, int] = {}  # weight -> level of the last group that touched it
    out: list[list[UnitGroup]] = []
    for g in groups:
        touched = {id(s.param) for s in g.slices}
        k = 1 + max((level_of.get(t, -1) for t in touched), default=-1)
        for t in touched:
            level_of[t] = k
        if k == len(out):
            out.append([])
        out[k].append(g)
    return out


def waves(groups: list[UnitGroup], order: str, *, c: float = 1.0, bias_in_norm: bool = False) -> list[Wave]:
    """The cycle's waves: one per level of groups (sequential), or one of all (jacobi)."""
    if order not in ORDERS:
        raise ValueError(f"ENorm: order={order!r}; choose one of {ORDERS}")
    if order == "jacobi":
        return [Wave(groups, c=c, bias_in_norm=bias_in_norm)]
    return [Wave(level, c=c, bias_in_norm=bias_in_norm) for level in levels(groups)]


def unit_norms(g: UnitGroup, *, c: float = 1.0, bias_in_norm: bool = False) -> tuple[Tensor, Tensor]:
    """c-weighted squared norms of one group's incoming (l^2) and outgoing (r^2) weights."""
    return Wave([g], c=c, bias_in_norm=bias_in_norm).norms()


class Cycle:
    """One ENorm cycle over `groups`, run in place by calling it (under torch.no_grad()).

    sequential: Gauss-Seidel, groups input -> output, each from the already updated weights
    (exact block coordinate descent: the objective never increases). jacobi: every factor
    from the weights at the start of the cycle (the official code). Same fixed point. The
    waves are built once, so their index tensors are reused from cycle to cycle."""

    def __init__(self, groups: list[UnitGroup], *, c: float = 1.0, order: str = "sequential",
                 bias_in_norm: bool = False, eps: float = 1e-12, states: States = lambda t: ()):
        self.waves = waves(groups, order, c=c, bias_in_norm=bias_in_norm)
        self.eps, self.states = eps, states

    def prepare(self) -> None:
        """Build every wave's index tensors now (before a CUDA graph capture)."""
        for w in self.waves:
            w.ready()

    def __call__(self) -> None:
        for w in self.waves:
            w.step(self.eps, self.states)


def balance_cycle(groups: list[UnitGroup], *, c: float = 1.0, order: str = "sequential",
                  bias_in_norm: bool = False, eps: float = 1e-12, states: States = lambda t: ()) -> None:
    """One ENorm cycle over `groups` (see `Cycle`; `ENorm` keeps one and calls it every step)."""
    Cycle(groups, c=c, order=order, bias_in_norm=bias_in_norm, eps=eps, states=states)()
