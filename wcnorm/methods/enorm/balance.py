"""ENorm during training: the model's unit groups, one cycle per optimizer step, the
optimizer's state rescaled with the weights, and the diagnostics (objective, imbalance)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...modules import unwrap
from .attention import is_attention
from .cudagraph import CycleGraph
from .cycle import ORDERS, Cycle, Wave, accumulation_dtype
from .fused import ChainCycle, chain_links
from .units import describe_groups, find_unit_groups

# optimizer state that scales like the gradient (power 1) or its square (power 2); a weight
# multiplied by f has its gradient, hence these, multiplied by 1/f (resp. 1/f^2)
STATE_POWERS = {
    torch.optim.SGD: (("momentum_buffer", 1),),
    torch.optim.Adam: (("exp_avg", 1), ("exp_avg_sq", 2), ("max_exp_avg_sq", 2)),
    torch.optim.AdamW: (("exp_avg", 1), ("exp_avg_sq", 2), ("max_exp_avg_sq", 2)),
}


class ENorm:
    """Equi-normalization of a ReLU network, interleaved with the optimizer::

        enorm = ENorm(model, optimizer, c=1.0)
        ...; optimizer.step(); enorm.step()

    Options: `order` "sequential" (Gauss-Seidel, input to output) or "jacobi" (the
    official code); `balance_last=False` leaves the units feeding the classifier (and so
    the classifier) alone; `bn` "ignore" or "fold" (see the package docstring);
    `bias_in_norm` counts biases in l; `attention` balances q/k and v/proj; `eps`: a unit
    whose l or r is below it keeps d = 1. `cuda_graph=True` replays the cycle as one CUDA
    graph when the weights are on a GPU (see `wcnorm.methods.enorm.cudagraph`; on CPU the
    option changes nothing). `fused=True` runs the sequential cycle of a chain (an MLP,
    a plain conv stack) visiting each weight once (`wcnorm.methods.enorm.fused`: the same
    factors, the weights equal to rounding); on any other network, or with
    order="jacobi", the packed waves run as without it (`self.fused` says which).

    Optimizer state (SGD, Adam, AdamW): a rescale is a jump in parameter space, so the
    state moves with the weights: a weight x f has its momentum / exp_avg x 1/f and its
    exp_avg_sq x 1/f^2. This is exact for the gradient part of a buffer only: with
    coupled weight decay (SGD's weight_decay, Adam's L2 term) a buffer also holds decay
    terms lambda w, which scale like the weight (x f), not like its gradient (x 1/f); the
    rescale treats them as gradient, an approximation the official code makes too.
    AdamW's decoupled decay keeps no state and is exact.

    Depth, for `c`: the objective is sum_k c^(-2 k) ||W_k||^2, k the depth of a layer =
    the number of Conv/Linear (and, with bn="fold", norm) layers on the longest path from
    the input to it, itself excluded (layers reading the input have depth 0; in attention
    q, k and v share a depth and proj is one deeper). A unit with producers at depth k
    and consumers at depth k + 1 (every unit of a chain) gets the paper's update
    d = sqrt(r / (c l)) and has r / l = c at the fixed point. In a DAG a tied unit can see
    layers of several depths: each slice then enters l^2 and r^2 weighted by
    c^(-2 (depth - expected depth)), so that d stays the exact minimiser of the objective
    and the fixed point has (weighted) r / l = c. With c = 1 all weights are 1.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
        ...                       nn.Linear(16, 2)).double()
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> enorm = ENorm(model, optimizer, c=1.0)
        >>> enorm                                    # the 2 hidden layers' units
        ENorm(2 groups, 32 units, order='sequential', c=1.0)
        >>> x = torch.randn(8, 4, dtype=torch.float64)
        >>> loss = model(x).square().mean()
        >>> loss.backward(); optimizer.step(); enorm.step()   # one cycle per SGD step
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 c: float = 1.0, order: str = "sequential", balance_last: bool = True,
                 bn: str = "ignore", bias_in_norm: bool = False, attention: bool = False,
                 eps: float = 1e-12, cuda_graph: bool = False, fused: bool = False):
        if not c > 0:
            raise ValueError(f"ENorm: c must be > 0, got {c}")
        if order not in ORDERS:
            raise ValueError(f"ENorm: order={order!r}; choose one of {ORDERS}")
        self.c, self.order, self.bias_in_norm, self.eps = float(c), order, bias_in_norm, eps
        self.options = dict(c=c, order=order, balance_last=balance_last, bn=bn,
                            bias_in_norm=bias_in_norm, attention=attention, cuda_graph=cuda_graph,
                            fused=fused)
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
        analysis = find_unit_groups(net, bn=bn, attention=attention, balance_last=balance_last)
        self.groups, self.excluded = analysis.groups, analysis.excluded
        if not self.groups:
            raise ValueError(self._nothing_message(net))
        slices = [s for g in self.groups for s in g.slices]
        terms = {}  # the objective's terms: every weight (and counted bias) once, c-weighted by depth
        for s in slices:
            terms[id(s.param)] = (s.param, self.c ** (-2 * s.depth))
            if bias_in_norm and s.bias is not None:
                terms[id(s.bias)] = (s.bias, self.c ** (-2 * s.depth))
        self._terms = list(terms.values())
        links = chain_links(self.groups) if fused and order == "sequential" else None
        self.fused = links is not None  # fused asked for, and the network is a chain
        if self.fused:
            self.cycle = ChainCycle(links, c=self.c, bias_in_norm=bias_in_norm, eps=eps, states=self._states)
        else:
            self.cycle = Cycle(self.groups, c=self.c, order=order, bias_in_norm=bias_in_norm, eps=eps,
                               states=self._states)
        # every unit at once, for the diagnostics
        self._all = self.cycle.waves[0] if order == "jacobi" else Wave(self.groups, c=self.c,
                                                                       bias_in_norm=bias_in_norm)
        touched = {id(t): t for s in slices for t in (s.param, s.bias) if t is not None}
        self._touched = list(touched.values())
        self.graph = CycleGraph(self.cycle, self._tensors, prepare=self.cycle.prepare) if cuda_graph else None

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

    @torch.no_grad()
    def step(self, cycles: int = 1) -> None:
        """Run `cycles` balancing cycles, in place, on the model's parameters (and the
        optimizer's state): the function is unchanged, the objective does not rise.

        Example::

            >>> import torch
            >>> from torch import nn
            >>> _ = torch.manual_seed(0)
            >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)).double()
            >>> with torch.no_grad():
            ...     _ = model[0].weight.mul_(10)        # unbalanced: big incoming weights
            >>> enorm = ENorm(model)
            >>> x = torch.randn(8, 4, dtype=torch.float64)
            >>> y, before = model(x), enorm.objective()
            >>> enorm.step(5)
            >>> torch.allclose(model(x), y), bool(enorm.objective() < 0.5 * before)
            (True, True)
            >>> mean, worst = enorm.imbalance()        # |log(r / (c l))| over the units
            >>> bool(worst < 1e-6)
            True
        """
        graphed = self.graph is not None and self._touched[0].is_cuda
        for _ in range(cycles):
            (self.graph if graphed else self.cycle)()

    @torch.no_grad()
    def objective(self) -> Tensor:
        """sum_k c^(-2 k) ||W_k||^2 over the layers ENorm touches (0-dim tensor, no sync).

        Example::

            >>> from torch import nn
            >>> model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
            >>> _ = nn.init.ones_(model[0].weight), nn.init.ones_(model[2].weight)
            >>> ENorm(model).objective()                 # 6 + 3 ones
            tensor(9.)
        """
        return torch.stack([t.to(accumulation_dtype(t)).square().sum() * w for t, w in self._terms]).sum()

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
        """The unit groups found, and why the other units are not balanced.

        Example::

            >>> from torch import nn
            >>> print(ENorm(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))).describe())
            ENorm: 1 unit groups, 3 balanced units
              group 0: 3 units
                in:  0 rows xd (depth 0)
                out: 2 columns x1/d (depth 1)
              not balanced: 1 units
                1 x model output
              options: c=1.0, order='sequential', ...
        """
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return describe_groups(self.groups, self.excluded) + f"\n  options: {opts}"

    def __repr__(self) -> str:
        return f"ENorm({len(self.groups)} groups, {self.num_units} units, order={self.order!r}, c={self.c})"
