"""The ENorm cycle: per-unit factors d = sqrt(r / (c l)) applied to weights and optimizer state.

A cycle is a sequence of *waves*: groups whose factors are computed together, from the
same weights. `sequential` order (Gauss-Seidel) has one wave per level of groups that
share no weight (see `levels`), `jacobi` a single wave of all groups. A wave costs a fixed
handful of tensor ops plus about two per weight slice: the norms of all its slices go into
one vector, one `index_add_` sums their squares per unit, one gather hands every slice its
factors, and one `_foreach_mul_` (and `_foreach_div_` for the optimizer state) rescales
every slice. The cycle reads each weight once, so on a GPU its many small kernels are
expected to make it launch-bound: the number of ops is what counts (`wcnorm bench`
reports it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .cudagraph import CycleGraph
from .graph import Piece, UnitGroup, describe_groups, find_unit_groups, is_attention, unwrap

ORDERS = ("sequential", "jacobi")
# optimizer state that scales like the gradient (power 1) or its square (power 2); a weight
# multiplied by f has its gradient, hence these, multiplied by 1/f (resp. 1/f^2)
STATE_POWERS = {
    torch.optim.SGD: (("momentum_buffer", 1),),
    torch.optim.Adam: (("exp_avg", 1), ("exp_avg_sq", 2), ("max_exp_avg_sq", 2)),
    torch.optim.AdamW: (("exp_avg", 1), ("exp_avg_sq", 2), ("max_exp_avg_sq", 2)),
}


def _acc(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _dim(p: Piece, t: Tensor) -> int:
    return p.dim if t.ndim > 1 else 0  # biases are 1-d and follow the rows


def _take(p: Piece, t: Tensor) -> Tensor:
    if p.start is not None:
        return t.narrow(_dim(p, t), p.start, p.n)
    return t.index_select(_dim(p, t), p.index)


def _norms(x: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """L2 norm of a slice at each index along `dim` (one kernel; squared after the cat)."""
    x = x if x.dtype == dtype else x.to(dtype)
    if x.ndim == 1:
        return x.abs()
    return torch.linalg.vector_norm(x, dim=[i for i in range(x.ndim) if i != dim])


def _broadcast(f: Tensor, t: Tensor, dim: int) -> Tensor:
    f = f if f.dtype == t.dtype else f.to(t.dtype)
    return f.view([-1 if i == dim else 1 for i in range(t.ndim)])


def _queue(p: Piece, t: Tensor, f: Tensor, batch, view: Tensor | None = None) -> None:
    """Queue `t[piece] (x or /)= f` for one of a wave's _foreach_ calls (`batch`: its slices
    and factors). Scattered pieces have no view to write through: they are done at once."""
    dim = _dim(p, t)
    f = _broadcast(f, t, dim)
    if p.start is None:
        op = Tensor.mul_ if batch[2] == "mul" else Tensor.div_
        t.index_copy_(dim, p.index, op(t.index_select(dim, p.index), f))
    else:
        batch[0].append(view if view is not None else t.narrow(dim, p.start, p.n))
        batch[1].append(f)


def unit_factors(l2: Tensor, r2: Tensor, c: float, eps: float) -> Tensor:
    """d = sqrt(r / (c l)); 1 for a dead unit (l or r below eps), so no inf/NaN ever
    (a dead unit's 0/0 or x/0 is computed, then overwritten)."""
    dead = torch.minimum(l2, r2) <= eps * eps
    d = torch.div(r2, l2).pow_(0.25)
    return (d if c == 1 else d.mul_(c**-0.5)).masked_fill_(dead, 1.0)


class Wave:
    """Groups balanced together, from the same weights (one group, or all of them).

    Index tensors are built on first use, on the weights' device, and again if the model
    moves: `owner[j]` is the slot of index j of the concatenated norm terms in the wave's
    [l^2 | r^2] vector (outgoing units offset by n), `piece_unit[j]` the unit (the entry
    of d) of index j of the concatenated pieces."""

    def __init__(self, groups: list[UnitGroup], bias_in_norm: bool):
        self.groups, self.bias_in_norm = groups, bias_in_norm
        self.n = sum(g.n for g in groups)
        self.pieces, units, owners, omegas, u0 = [], [], [], [], 0
        for g in groups:
            for p in (*g.incoming, *g.outgoing):
                local = p.units.tolist() if p.start is None else [p.u0 + i // p.rep for i in range(p.n)]
                self.pieces.append(p)
                units.append([u0 + u for u in local])  # the wave's unit of each index
                owners.append([u + (0 if p.incoming else self.n) for u in units[-1]])
                omegas.append(p.omega)
            u0 += g.n
        # the norm terms: every piece's weights, and its bias where biases count in l
        terms = [(k, p.param) for k, p in enumerate(self.pieces)]
        if bias_in_norm:
            terms += [(k, p.bias) for k, p in enumerate(self.pieces) if p.bias is not None]
        self.terms = [(self.pieces[k], t) for k, t in terms]
        self._owner = [i for k, _ in terms for i in owners[k]]
        self._omega = [omegas[k] for k, _ in terms for _ in owners[k]]
        self._piece_unit = [u for us in units for u in us]
        self.sizes = [p.n for p in self.pieces]
        self._key = None

    def _ready(self) -> None:
        w = self.pieces[0].param
        if (w.device, w.dtype) == self._key:
            return
        device, dtype = w.device, _acc(w)
        self.owner = torch.tensor(self._owner, dtype=torch.long, device=device)
        self.piece_unit = torch.tensor(self._piece_unit, dtype=torch.long, device=device)
        self.omega = (None if all(o == 1.0 for o in self._omega)
                      else torch.tensor(self._omega, dtype=dtype, device=device))
        for p in self.pieces:
            if p.start is None and p.index.device != device:
                p.index, p.units = p.index.to(device), p.units.to(device)
        self.dtype, self._key = dtype, (w.device, w.dtype)

    def slices(self) -> list[Tensor]:
        """The norm terms' slices: views for contiguous pieces, copies for scattered ones."""
        self._ready()
        return [_take(p, t) for p, t in self.terms]

    def norms(self, slices: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """c-weighted squared norms of every unit's incoming (l^2) and outgoing (r^2) weights."""
        slices = self.slices() if slices is None else slices
        dtype = self.dtype
        sq = torch.cat([_norms(x, _dim(p, t), dtype) for x, (p, t) in zip(slices, self.terms)]).square_()
        if self.omega is not None:
            sq = sq.mul_(self.omega)
        lr = torch.zeros(2 * self.n, dtype=dtype, device=sq.device).index_add_(0, self.owner, sq)
        return lr[: self.n], lr[self.n :]

    def rescale_(self, d: Tensor, states, slices: list[Tensor] | None = None) -> None:
        """Incoming weights (and their biases) x d, outgoing / d; optimizer state inversely.
        `slices`: the weights' slices from `slices()` (the first len(pieces) terms), reused."""
        self._ready()
        f = d.index_select(0, self.piece_unit)  # the factor at every index of every piece
        per_piece = {1: f.split(self.sizes)}  # and its square, for Adam's second moments
        mul, div = ([], [], "mul"), ([], [], "div")  # (slices, factors) for one _foreach_ call each
        for k, p in enumerate(self.pieces):
            weights, state = (mul, div) if p.incoming else (div, mul)
            for t in (p.param, p.bias):
                if t is None:
                    continue
                view = slices[k] if slices is not None and t is p.param else None
                _queue(p, t, per_piece[1][k], weights, view)
                for s, power in states(t):
                    if power not in per_piece:
                        per_piece[power] = f.pow(power).split(self.sizes)
                    _queue(p, s, per_piece[power][k], state)
        for (ts, fs, _), op in ((mul, torch._foreach_mul_), (div, torch._foreach_div_)):
            if ts:
                op(ts, fs)

    def step(self, c: float, eps: float, states) -> None:
        slices = self.slices()
        self.rescale_(unit_factors(*self.norms(slices), c, eps), states, slices)


def levels(groups: list[UnitGroup]) -> list[list[UnitGroup]]:
    """Groups in sequential order, batched without changing the result: two groups that
    share no weight commute (neither changes the other's norms), so each group goes one
    level after the last earlier group it shares a weight with, and a level's groups are
    updated at once. Gauss-Seidel exactly, in fewer waves (ResNet-18: 12 groups, 8 levels;
    in a DenseNet every group shares a weight with the one before)."""
    level_of: dict[int, int] = {}  # weight -> level of the last group that touched it
    out: list[list[UnitGroup]] = []
    for g in groups:
        touched = {id(p.param) for p in (*g.incoming, *g.outgoing)}
        k = 1 + max((level_of.get(t, -1) for t in touched), default=-1)
        for t in touched:
            level_of[t] = k
        if k == len(out):
            out.append([])
        out[k].append(g)
    return out


def waves(groups: list[UnitGroup], order: str, bias_in_norm: bool) -> list[Wave]:
    """The cycle's waves: one per level of groups (sequential), or one of all (jacobi)."""
    if order not in ORDERS:
        raise ValueError(f"ENorm: order={order!r}; choose one of {ORDERS}")
    if order == "jacobi":
        return [Wave(groups, bias_in_norm)]
    return [Wave(level, bias_in_norm) for level in levels(groups)]


def unit_norms(g: UnitGroup, bias_in_norm: bool) -> tuple[Tensor, Tensor]:
    """c-weighted squared norms of one group's incoming (l^2) and outgoing (r^2) weights."""
    return Wave([g], bias_in_norm).norms()


def balance_cycle(groups: list[UnitGroup], *, c: float = 1.0, order: str = "sequential",
                  bias_in_norm: bool = False, eps: float = 1e-12, states=lambda t: ()) -> None:
    """One ENorm cycle over all groups (call under torch.no_grad()).

    sequential: Gauss-Seidel, groups input -> output, each from the already updated weights
    (exact block coordinate descent: the objective never increases). jacobi: every factor from
    the weights at the start of the cycle (the official code). Same fixed point.
    `ENorm.step` does the same with its waves built once."""
    for w in waves(groups, order, bias_in_norm):
        w.step(c, eps, states)


class ENorm:
    """Equi-normalization of a ReLU network, interleaved with the optimizer::

        enorm = ENorm(model, optimizer, c=1.0)
        ...; optimizer.step(); enorm.step()

    Options: `order` "sequential" (Gauss-Seidel, input to output) or "jacobi" (the
    official code); `balance_last=False` leaves the units feeding the classifier (and so
    the classifier) alone; `bn` "ignore" or "fold" (see the package docstring);
    `bias_in_norm` counts biases in l; `attention` balances q/k and v/proj; `eps`: a unit
    whose l or r is below it keeps d = 1. Optimizer state (SGD, Adam, AdamW) is rescaled
    with the weights: a weight x f has its momentum / exp_avg x 1/f, exp_avg_sq x 1/f^2.
    `cuda_graph=True` replays the cycle as one CUDA graph when the weights are on a GPU
    (see `wcnorm.methods.enorm.cudagraph`; on CPU the option changes nothing).

    Depth, for `c`: the objective is sum_k c^(-2 k) ||W_k||^2, k the depth of a layer =
    the number of Conv/Linear (and, with bn="fold", norm) layers on the longest path from
    the input to it, itself excluded (layers reading the input have depth 0; in attention
    q, k and v share a depth and proj is one deeper). A unit with producers at depth k
    and consumers at depth k + 1 (every unit of a chain) gets the paper's update
    d = sqrt(r / (c l)) and has r / l = c at the fixed point. In a DAG a tied unit can see
    layers of several depths: each slice then enters l^2 and r^2 weighted by
    c^(-2 (depth - expected depth)), so that d stays the exact minimiser of the objective
    and the fixed point has (weighted) r / l = c. With c = 1 all weights are 1.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 c: float = 1.0, order: str = "sequential", balance_last: bool = True,
                 bn: str = "ignore", bias_in_norm: bool = False, attention: bool = False,
                 eps: float = 1e-12, cuda_graph: bool = False):
        if not c > 0:
            raise ValueError(f"ENorm: c must be > 0, got {c}")
        if order not in ORDERS:
            raise ValueError(f"ENorm: order={order!r}; choose one of {ORDERS}")
        self.c, self.order, self.bias_in_norm, self.eps = float(c), order, bias_in_norm, eps
        self.options = dict(c=c, order=order, balance_last=balance_last, bn=bn,
                            bias_in_norm=bias_in_norm, attention=attention, cuda_graph=cuda_graph)
        self.optimizer, self._powers = optimizer, ()
        if optimizer is not None:
            kind = next((k for k in STATE_POWERS if type(optimizer) is k), None)
            if kind is None:
                raise TypeError(
                    f"ENorm rescales the state of SGD, Adam and AdamW only; {type(optimizer).__name__} "
                    "keeps state that would be inconsistent with the rescaled weights. Use one of "
                    "those, or pass optimizer=None to leave the optimizer state untouched")
            self._powers = STATE_POWERS[kind]

        net = unwrap(model)
        self.groups, depths, self.excluded = find_unit_groups(
            net, bn=bn, attention=attention, balance_last=balance_last)
        if not self.groups:
            raise ValueError(self._nothing_message(net))
        # c-weights: every slice relative to the group's own depth (see the class docstring)
        for g in self.groups:
            for p in (*g.incoming, *g.outgoing):
                p.depth = depths[p.param]
                p.omega = self.c ** (-2 * (p.depth - g.depth - (0 if p.incoming else 1)))
        k0 = min(depths.values())
        terms = {}
        for g in self.groups:
            for p in (*g.incoming, *g.outgoing):
                w = self.c ** (-2 * (p.depth - k0))
                terms[id(p.param)] = (p.param, w)
                if bias_in_norm and p.bias is not None:
                    terms[id(p.bias)] = (p.bias, w)
        self._terms = list(terms.values())
        self.waves = waves(self.groups, order, bias_in_norm)  # built once: index tensors are reused
        self._all = self.waves[0] if order == "jacobi" else Wave(self.groups, bias_in_norm)
        touched = {id(t): t for g in self.groups for p in (*g.incoming, *g.outgoing)
                   for t in (p.param, p.bias) if t is not None}
        self._touched = list(touched.values())
        self.graph = (CycleGraph(self._cycle, self._tensors, prepare=self._ready)
                      if cuda_graph else None)

    def _nothing_message(self, net: nn.Module) -> str:
        why = "; ".join(f"{n} x {r}" for r, n in self.excluded.most_common(6)) or "no Conv/Linear layers"
        msg = (f"ENorm found no balanceable hidden units in {type(net).__name__}: a unit needs a "
               "Conv/Linear (or, with bn='fold', norm) producer and Conv/Linear consumers, "
               "connected only through ReLU, pooling, dropout, flatten, concatenation and "
               f"addition. Channels excluded: {why}.")
        if not self.options["attention"] and any(is_attention(m) for m in net.modules()):
            msg += (" The model has attention modules: attention=True balances their q/k and "
                    "v/proj pairs")
        return msg

    def _states(self, t: Tensor):
        st = self.optimizer.state.get(t) if self.optimizer is not None else None
        if not st:
            return ()
        return [(st[k], pw) for k, pw in self._powers
                if isinstance(st.get(k), Tensor) and st[k].shape == t.shape]

    def _tensors(self) -> list[Tensor]:
        """Every tensor a cycle reads or writes: the weights and their optimizer state."""
        return [x for t in self._touched for x in (t, *(s for s, _ in self._states(t)))]

    def _ready(self) -> None:
        for w in self.waves:
            w._ready()

    def _cycle(self) -> None:
        for w in self.waves:
            w.step(self.c, self.eps, self._states)

    @torch.no_grad()
    def step(self, cycles: int = 1) -> None:
        """Run `cycles` balancing cycles, in place, on the model's parameters."""
        graphed = self.graph is not None and self._touched[0].is_cuda
        for _ in range(cycles):
            (self.graph if graphed else self._cycle)()

    @torch.no_grad()
    def objective(self) -> Tensor:
        """sum_k c^(-2 k) ||W_k||^2 over the layers ENorm touches (0-dim tensor, no sync)."""
        return torch.stack([t.to(_acc(t)).square().sum() * w for t, w in self._terms]).sum()

    @torch.no_grad()
    def imbalance(self) -> tuple[Tensor, Tensor]:
        """Mean and max over balanced (non-dead) units of |log(r / (c l))| (0 when balanced)."""
        l2, r2 = self._all.norms()
        ok = (l2 > self.eps**2) & (r2 > self.eps**2)
        x = (0.5 * (r2.clamp_min(self.eps**2).log() - l2.clamp_min(self.eps**2).log())
             - math.log(self.c)).abs()
        x = torch.where(ok, x, torch.zeros_like(x))
        return x.sum() / ok.sum().clamp_min(1), x.max()

    @property
    def num_units(self) -> int:
        return sum(g.n for g in self.groups)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return describe_groups(self.groups, self.excluded) + f"\n  options: {opts}"

    def __repr__(self) -> str:
        return f"ENorm({len(self.groups)} groups, {self.num_units} units, order={self.order!r}, c={self.c})"
