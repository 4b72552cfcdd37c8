"""The ENorm cycle: per-unit factors d = sqrt(r / (c l)) applied to weights and optimizer state."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

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


def _accumulate_(p: Piece, out: Tensor, bias_in_norm: bool) -> None:
    """out[unit] += omega * (squared norm of the piece's slice of each unit)."""
    sq = None
    for t in (p.param, p.bias if bias_in_norm else None):
        if t is not None:
            x = _take(p, t).to(out.dtype).square()
            s = x.sum([i for i in range(x.ndim) if i != _dim(p, t)]) if x.ndim > 1 else x
            sq = s if sq is None else sq + s
    if p.start is not None:
        out.narrow(0, p.u0, p.n // p.rep).add_(sq.view(-1, p.rep).sum(1), alpha=p.omega)
    else:
        out.index_add_(0, p.units, sq, alpha=p.omega)


def _expand(p: Piece, f: Tensor) -> Tensor:
    """Per-unit factors -> one factor per index of the piece."""
    if p.start is None:
        return f.index_select(0, p.units)
    f = f.narrow(0, p.u0, p.n // p.rep)
    return f.repeat_interleave(p.rep) if p.rep > 1 else f


def rescale_(p: Piece, t: Tensor, f: Tensor) -> None:
    """t[piece] *= f, in place (f: one factor per index along the piece's dim)."""
    dim = _dim(p, t)
    f = f.to(t.dtype).view([-1 if i == dim else 1 for i in range(t.ndim)])
    if p.start is not None:
        t.narrow(dim, p.start, p.n).mul_(f)
    else:
        t.index_copy_(dim, p.index, t.index_select(dim, p.index).mul_(f))


def unit_norms(g: UnitGroup, bias_in_norm: bool) -> tuple[Tensor, Tensor]:
    """c-weighted squared norms of every unit's incoming (l^2) and outgoing (r^2) weights."""
    w = g.incoming[0].param
    l2 = torch.zeros(g.n, dtype=_acc(w), device=w.device)
    r2 = torch.zeros_like(l2)
    for p in g.incoming:
        _accumulate_(p, l2, bias_in_norm)
    for p in g.outgoing:
        _accumulate_(p, r2, bias_in_norm)
    return l2, r2


def unit_factors(l2: Tensor, r2: Tensor, c: float, eps: float) -> Tensor:
    """d = sqrt(r / (c l)); 1 for a dead unit (l or r below eps), so no inf/NaN ever."""
    ok = (l2 > eps * eps) & (r2 > eps * eps)
    d = (r2 / l2.clamp_min(eps * eps)).pow(0.25).mul_(c**-0.5)
    return torch.where(ok, d, torch.ones_like(d))


def rescale_group_(g: UnitGroup, d: Tensor, states) -> None:
    """Incoming weights (and their biases) x d, outgoing x 1/d; optimizer state inversely."""
    inv = d.reciprocal()
    for p in (*g.incoming, *g.outgoing):
        f = _expand(p, d if p.incoming else inv)
        finv = None
        for t in (p.param, p.bias):
            if t is None:
                continue
            rescale_(p, t, f)
            for s, power in states(t):
                finv = 1 / f if finv is None else finv
                rescale_(p, s, finv if power == 1 else finv.square())


def balance_cycle(groups: list[UnitGroup], *, c: float = 1.0, order: str = "sequential",
                  bias_in_norm: bool = False, eps: float = 1e-12, states=lambda t: ()) -> None:
    """One ENorm cycle over all groups (call under torch.no_grad()).

    sequential: Gauss-Seidel, groups input -> output, each from the already updated weights
    (exact block coordinate descent: the objective never increases). jacobi: every factor from
    the weights at the start of the cycle (the official code). Same fixed point."""
    if order == "jacobi":
        ds = [unit_factors(*unit_norms(g, bias_in_norm), c, eps) for g in groups]
        for g, d in zip(groups, ds):
            rescale_group_(g, d, states)
    else:
        for g in groups:
            rescale_group_(g, unit_factors(*unit_norms(g, bias_in_norm), c, eps), states)


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
                 eps: float = 1e-12):
        if not c > 0:
            raise ValueError(f"ENorm: c must be > 0, got {c}")
        if order not in ORDERS:
            raise ValueError(f"ENorm: order={order!r}; choose one of {ORDERS}")
        self.c, self.order, self.bias_in_norm, self.eps = float(c), order, bias_in_norm, eps
        self.options = dict(c=c, order=order, balance_last=balance_last, bn=bn,
                            bias_in_norm=bias_in_norm, attention=attention)
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

    @torch.no_grad()
    def step(self, cycles: int = 1) -> None:
        """Run `cycles` balancing cycles, in place, on the model's parameters."""
        for _ in range(cycles):
            balance_cycle(self.groups, c=self.c, order=self.order, bias_in_norm=self.bias_in_norm,
                          eps=self.eps, states=self._states)

    @torch.no_grad()
    def objective(self) -> Tensor:
        """sum_k c^(-2 k) ||W_k||^2 over the layers ENorm touches (0-dim tensor, no sync)."""
        return torch.stack([t.to(_acc(t)).square().sum() * w for t, w in self._terms]).sum()

    @torch.no_grad()
    def imbalance(self) -> tuple[Tensor, Tensor]:
        """Mean and max over balanced (non-dead) units of |log(r / (c l))| (0 when balanced)."""
        logs, oks = [], []
        for g in self.groups:
            l2, r2 = unit_norms(g, self.bias_in_norm)
            ok = (l2 > self.eps**2) & (r2 > self.eps**2)
            x = (0.5 * (r2.clamp_min(self.eps**2).log() - l2.clamp_min(self.eps**2).log())
                 - math.log(self.c)).abs()
            logs.append(torch.where(ok, x, torch.zeros_like(x)))
            oks.append(ok)
        x, ok = torch.cat(logs), torch.cat(oks)
        return x.sum() / ok.sum().clamp_min(1), x.max()

    @property
    def num_units(self) -> int:
        return sum(g.n for g in self.groups)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return describe_groups(self.groups, self.excluded) + f"\n  options: {opts}"

    def __repr__(self) -> str:
        return f"ENorm({len(self.groups)} groups, {self.num_units} units, order={self.order!r}, c={self.c})"
