"""Structural analysis: trace a model with torch.fx and find its rescalable hidden units.

The pass walks the traced graph once, in execution order, and tracks for every
tensor the *channel id* of each position along its channel axis. Conv/Linear layers
(and affine norm layers in ``bn="fold"`` mode) create fresh ids for their outputs
(they are the ids' producers) and record which ids their input columns read (they
are consumers). Ops that commute with a positive per-channel scale pass ids through;
an addition unites the ids of its summands (union-find: tied channels); anything
else, and the model output, *kills* the ids it touches. What survives, grouped, is a
list of `UnitGroup`: the units that one block-coordinate step can update at once.
"""

from __future__ import annotations

import copy
import numbers
import operator
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

BN_MODES = ("ignore", "fold")
META = "meta"  # a non-tensor value derived from shapes (x.size(0), x.shape): harmless to use

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
_SAME_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout, nn.Dropout1d,
                 nn.Dropout2d, nn.Dropout3d)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
# positively homogeneous and elementwise: f(d x) = d f(x) for d > 0
_SAME_FNS = {F.relu, F.relu_, torch.relu, torch.relu_, F.leaky_relu, F.dropout, F.dropout1d,
             F.dropout2d, F.dropout3d, torch.dropout}
_SAME_METHODS = {"relu", "relu_", "contiguous", "clone"}
# per-channel pooling over spatial positions (needs the channel axis at dim 1)
_POOL_FNS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
             F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
             F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
             torch.max_pool1d, torch.max_pool2d, torch.max_pool3d, torch.avg_pool1d}
_REDUCE = {"mean", "sum", "amax"}
_ADD = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub,
        "add", "add_", "sub", "sub_"}
_SCALE = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div,
          "mul", "mul_", "div", "div_"}
_MUL = {operator.mul, torch.mul, "mul"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_META_METHODS = {"size", "dim", "numel", "ndimension"}


def _is_number(v) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool)


def _plain_weights(m: nn.Module) -> bool:
    """Parameters that ENorm can rescale in place: not a parametrization's computed weight,
    not a tensor recomputed by a hook (old-style weight_norm)."""
    if torch.nn.utils.parametrize.is_parametrized(m):
        return False
    return all(getattr(m, a, None) is None or isinstance(getattr(m, a), nn.Parameter)
               for a in ("weight", "bias"))


def is_attention(m: nn.Module) -> bool:
    """Multi-head attention with separate q/k/v/proj linears (wcnorm.models.vit.Attention)."""
    return (all(isinstance(getattr(m, a, None), nn.Linear) for a in ("q", "k", "v", "proj"))
            and isinstance(getattr(m, "num_heads", None), int)
            and isinstance(getattr(m, "head_dim", None), int))


@dataclass
class Val:
    """What the analysis knows about one tensor of the traced graph."""

    ids: list[int] | None  # channel id of each position along the channel axis; None: untracked
    depth: int = -1  # longest path, in parameterised layers, from the input (-1: the input)
    axis: int = 1  # channel axis: 1 (N, C, ...) or -1 (..., C); the same when rank == 2
    rank: int | None = None
    rep: int | None = 1  # positions per channel (flatten of N,C,H,W: H*W; None: resolved later)

    @property
    def chan_first(self) -> bool:
        return self.axis == 1 or self.rank == 2

    @property
    def chan_last(self) -> bool:
        return self.axis == -1 or self.rank == 2


@dataclass
class Record:
    """One layer's slice of weights on a set of channels: rows (dim 0) or columns (dim 1)."""

    name: str
    param: Tensor
    bias: Tensor | None  # scaled with the rows (dim 0 only)
    dim: int
    ids: list[int]  # channel id of every index along `dim`
    depth: int
    incoming: bool  # True: weights into the unit (x d); False: out of it (x 1/d)
    order: int  # graph position of the layer


@dataclass
class Piece:
    """The part of one tensor that belongs to the units of one group, ready for step()."""

    name: str
    param: Tensor
    bias: Tensor | None
    dim: int
    incoming: bool
    depth: int
    n: int  # number of indices along dim
    start: int | None  # contiguous indices start..start+n, units u0 + i // rep
    u0: int = 0
    rep: int = 1
    index: Tensor | None = None  # otherwise: indices along dim and the unit of each
    units: Tensor | None = None
    omega: float = 1.0  # c-weight of these squared norms relative to the group (see ENorm)


@dataclass
class UnitGroup:
    """Hidden units updated together: no weight is shared by two of its units."""

    n: int
    depth: int  # depth of its shallowest producer
    order: int  # graph position of its first producer (the sequential order)
    incoming: list[Piece] = field(default_factory=list)
    outgoing: list[Piece] = field(default_factory=list)


class _Tracer(fx.Tracer):
    def __init__(self, attention: bool):
        super().__init__()
        self.attention = attention

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (self.attention and is_attention(m)) or super().is_leaf_module(m, qualname)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP/DataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _nodes(args) -> list[fx.Node]:
    out = []
    fx.node.map_arg(args, out.append)
    return out


def _arg(node: fx.Node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _return_indices(node: fx.Node) -> bool:
    if node.kwargs.get("return_indices"):
        return True
    name = getattr(node.target, "__name__", "")
    i = 2 if name.startswith("adaptive") else 6  # its position in F.*max_pool*
    return "max" in name and len(node.args) > i and bool(node.args[i])


def _fn_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def _attr(model: nn.Module, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _first(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def check_attention(name: str, m: nn.Module) -> None:
    """Refuse an attention module whose output is not invariant under the q/k, v/proj rescale
    (a q/k norm, a fused projection, another head layout): checked numerically on a copy."""
    n, dim = m.num_heads * m.head_dim, m.q.in_features
    if not (m.q.out_features == m.k.out_features == m.v.out_features == m.proj.in_features == n
            and m.k.in_features == m.v.in_features == dim):
        raise ValueError(f"ENorm(attention=True): {name} has q/k/v/proj shapes that do not match "
                         f"num_heads * head_dim = {n}")
    g = torch.Generator().manual_seed(0)
    a = copy.deepcopy(m).double().eval()
    x = torch.randn(2, 5, dim, generator=g, dtype=torch.float64)
    d1, d2 = [torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.25 for _ in range(2)]
    with torch.no_grad():
        y0 = _first(a(x))
        for lin, f in ((a.q, d1), (a.k, 1 / d1), (a.v, d2)):
            lin.weight.mul_(f[:, None])
            if lin.bias is not None:
                lin.bias.mul_(f)
        a.proj.weight.div_(d2)
        y1 = _first(a(x))
    err = ((y1 - y0).norm() / y0.norm().clamp_min(1e-300)).item()
    if not err < 1e-9:
        raise ValueError(f"ENorm(attention=True): {name} ({type(m).__name__}) is not invariant "
                         f"under q*d, k/d and v*d, proj/d per head dimension (rel. error {err:.1e}); "
                         "it cannot be balanced")


class _Analysis:
    def __init__(self, model: nn.Module, bn: str, attention: bool, balance_last: bool):
        self.model, self.bn, self.attention = model, bn, attention
        self.parent: list[int] = []  # union-find over channel ids
        self.killed: dict[int, str] = {}  # id -> why it cannot be balanced
        self.records: list[Record] = []
        self.produced: dict[Tensor, Record] = {}  # keyed by weight: shared layers reuse their ids
        self.consumed: dict[Tensor, Record] = {}
        self.last_layer: Record | None = None  # the classifier's columns (last Conv/Linear called)
        self.depth: dict[Tensor, int] = {}
        self.balance_last = balance_last
        self.raw: set[int] = set()  # ids of tensors read directly (get_attr)

    # -- union-find over channel ids --------------------------------------------------
    def new_ids(self, n: int) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def kill(self, vals, reason: str) -> None:
        for v in vals if isinstance(vals, (list, tuple)) else [vals]:
            if isinstance(v, Val) and v.ids is not None:
                for i in v.ids:
                    self.killed.setdefault(i, reason)

    # -- layers -----------------------------------------------------------------------
    def produce(self, name, param, bias, n, depth, order) -> list[int]:
        r = self.produced.get(param)
        if r is None:  # first call of this layer
            r = Record(name, param, bias, 0, self.new_ids(n), depth, True, order)
            self.produced[param] = r
            self.records.append(r)
        elif r.bias is not bias:  # one weight, two biases: the second would not be rescaled
            self.kill(Val(r.ids), f"{name} weight shared with another bias")
        r.depth = max(r.depth, depth)
        self.depth[param] = max(self.depth.get(param, depth), depth)
        return r.ids

    def consume(self, name, param, ids, depth, order, dim=1, bias=None) -> Record:
        r = self.consumed.get(param)
        if r is None:
            r = Record(name, param, bias, dim, list(ids), depth, False, order)
            self.consumed[param] = r
            self.records.append(r)
        else:  # a layer called twice: its input columns tie the two inputs
            for a, b in zip(r.ids, ids):
                self.union(a, b)
        r.depth = max(r.depth, depth)
        self.depth[param] = max(self.depth.get(param, depth), depth)
        return r

    def layer(self, node, name, m, x: Val) -> Val:
        conv = isinstance(m, _CONV)
        depth = x.depth + 1
        n_in, n_out = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
        rec = None
        if x.ids is not None:
            ids, why = None, "input layout not understood"
            if conv and m.groups != 1:
                why = "grouped conv input"
            elif conv and x.chan_first and x.rep == 1 and len(x.ids) == n_in:
                ids = x.ids
            elif not conv and x.chan_last:
                rep = x.rep if x.rep is not None else n_in // len(x.ids)
                if rep * len(x.ids) == n_in:
                    ids = [i for i in x.ids for _ in range(rep)]
            if ids is None:
                self.kill(x, f"{type(m).__name__} {name} ({why})")
            else:
                rec = self.consume(name, m.weight, ids, depth, self.order)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            self.last_layer = rec
        out = self.produce(name, m.weight, m.bias, n_out, depth, self.order)
        if conv:
            return Val(out, depth, 1, m.weight.ndim)
        return Val(out, depth, -1, x.rank)

    def norm(self, name, m, x: Val) -> Val:
        n = m.num_features if isinstance(m, nn.modules.batchnorm._BatchNorm) else m.num_channels
        kind = type(m).__name__
        if x.ids is not None and x.axis == -1 and x.rank is None and isinstance(m, nn.BatchNorm1d):
            x = Val(x.ids, x.depth, 1, 2, x.rep)  # (N, C) is the only way BN1d reads channels last
        ok = x.ids is not None and x.chan_first and x.rep == 1 and len(x.ids) == n
        if self.bn == "ignore":  # transparent: neither rescaled nor counted (the paper's ENorm + BN)
            if x.ids is not None and not ok:
                self.kill(x, f"{kind} {name} (layout not understood)")
                return Val(None, x.depth)
            return x
        # fold: the norm cancels (train) or fixes (eval) the scale of its input, so its input
        # channels are not balanced; its gamma/beta produce the output channels
        self.kill(x, f"{kind} input (bn='fold')")
        if not m.affine:
            return Val(None, x.depth)
        depth = x.depth + 1
        return Val(self.produce(name, m.weight, m.bias, n, depth, self.order), depth, 1, x.rank)

    def attention_leaf(self, name, m, x: Val) -> Val:
        if not all(_plain_weights(getattr(m, a)) for a in ("q", "k", "v", "proj")):
            return Val(None, x.depth + 2)
        check_attention(name, m)
        n, depth, order = m.num_heads * m.head_dim, x.depth + 1, self.order
        # q row *= d, k row /= d: q k^T unchanged; k's rows are "outgoing" at q's depth
        ids = self.produce(f"{name}.q", m.q.weight, m.q.bias, n, depth, order)
        self.consume(f"{name}.k", m.k.weight, ids, depth, order, dim=0, bias=m.k.bias)
        # v row *= d, proj column /= d: (A V) W_o unchanged
        ids = self.produce(f"{name}.v", m.v.weight, m.v.bias, n, depth, order)
        self.consume(f"{name}.proj", m.proj.weight, ids, depth + 1, order)
        return Val(None, depth + 1)  # the output is left untracked: conservative

    # -- ops --------------------------------------------------------------------------
    def module(self, node, env) -> Val:
        m = self.model.get_submodule(node.target)
        name, kind = node.target, type(m).__name__
        x = env.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        x = x if isinstance(x, Val) else Val(None)
        if self.attention and is_attention(m):  # whatever its call signature
            self.unknown(node, env, f"{kind} input")
            return self.attention_leaf(name, m, x)
        if len(node.args) != 1 or node.kwargs or not _plain_weights(m):
            return self.unknown(node, env, kind)
        if isinstance(m, (*_CONV, nn.Linear)):
            return self.layer(node, name, m, x)
        if isinstance(m, _NORM):
            return self.norm(name, m, x)
        if isinstance(m, nn.PReLU) and m.num_parameters != 1:
            return self.unknown(node, env, kind)
        if isinstance(m, _SAME_MODULES):
            return x
        if isinstance(m, _POOL_MODULES):
            return self.pool(x, kind, getattr(m, "return_indices", False))
        if isinstance(m, nn.Flatten):
            return self.flatten(x, m.start_dim, m.end_dim)
        return self.unknown(node, env, kind)

    def pool(self, x: Val, kind: str, indices=False) -> Val:
        if x.ids is not None and (indices or x.axis != 1 or x.rep != 1 or (x.rank or 3) < 3):
            self.kill(x, kind)
            return Val(None, x.depth)
        return x

    def flatten(self, x: Val, start: int, end: int) -> Val:
        if x.ids is None:
            return Val(None, x.depth, -1, 2 if (start, end) == (1, -1) else None)
        if (start, end) == (1, -1) and x.chan_first:  # channel c -> features [c*S, (c+1)*S)
            return Val(x.ids, x.depth, -1, 2, x.rep if x.rank == 2 else None)
        if x.axis == 1 and start >= 2:  # merges spatial dims only
            rank = None if x.rank is None else x.rank - (end % x.rank - start)
            return Val(x.ids, x.depth, 1, rank, x.rep)
        self.kill(x, "flatten")
        return Val(None, x.depth)

    def unknown(self, node, env, name: str) -> Val:
        vals = [env.get(a) for a in _nodes((node.args, node.kwargs))]
        self.kill(vals, name)
        return Val(None, max([v.depth for v in vals if isinstance(v, Val)], default=-1))

    def function(self, node, env) -> Val | str:
        t, name = node.target, _fn_name(node)
        args = [env.get(a) if isinstance(a, fx.Node) else a for a in node.args]
        x = args[0] if args else None
        if t is getattr or t is len or t in _META_METHODS:
            return META
        if t is operator.getitem:
            return META if x is META else self.unknown(node, env, "getitem")
        if x is META and all(v is META or not isinstance(v, Val) for v in args):
            return META  # arithmetic on sizes
        if t in _MUL and len(args) == 2 and _is_number(x) and isinstance(args[1], Val):
            x, args = args[1], [args[1], x]  # 2 * t
        if not isinstance(x, Val) and t not in _CAT:
            return self.unknown(node, env, name)
        if t not in _ADD and t not in _CAT:  # any other tensor argument is a use we do not model
            others = [env.get(a) for a in _nodes((node.args, node.kwargs))]
            others = [v for v in others if v is not x]
            self.kill(others, f"{name} (tensor argument)")
        if t in _SAME_FNS or t in _SAME_METHODS:
            return x
        if t in _POOL_FNS:
            return self.pool(x, name, _return_indices(node))
        if t in (torch.flatten, "flatten"):
            return self.flatten(x, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        if t in ("view", "reshape") or t is torch.reshape:
            shape = node.args[1:] if len(node.args) > 2 else (node.args[1] if len(node.args) > 1 else ())
            if (isinstance(shape, (list, tuple)) and len(shape) == 2 and shape[1] == -1
                    and isinstance(shape[0], fx.Node) and env.get(shape[0]) is META):
                return self.flatten(x, 1, -1)  # x.view(x.size(0), -1)
            return self.unknown(node, env, name)
        if t in _REDUCE or t in (torch.mean, torch.sum, torch.amax):
            return self.reduce(node, env, x, name)
        if t in _SCALE:
            y = args[1] if len(args) > 1 else None
            if len(args) == 2 and not node.kwargs and (_is_number(y) or y is META):
                return x
            return self.unknown(node, env, name)
        if t in _ADD:
            y = args[1] if len(args) > 1 else None
            if len(args) == 2 and not node.kwargs and isinstance(y, Val):
                return self.tie(x, y, name)
            return self.unknown(node, env, name)
        if t in _CAT:
            return self.cat(node, env, name)
        return self.unknown(node, env, name)

    def reduce(self, node, env, x: Val, name) -> Val:
        dims = _arg(node, 1, "dim")
        keep = bool(_arg(node, 2, "keepdim", False))
        dims = [dims] if isinstance(dims, int) else dims
        if x.ids is None:
            return Val(None, x.depth)
        if not (isinstance(dims, (list, tuple)) and dims and x.axis == 1 and x.rep == 1):
            return self.unknown(node, env, name)
        if any(d < 0 for d in dims):
            if x.rank is None:
                return self.unknown(node, env, name)
            dims = [d % x.rank for d in dims]
        if 0 in dims or 1 in dims:
            return self.unknown(node, env, name)
        rank = x.rank if keep or x.rank is None else x.rank - len(set(dims))
        return Val(x.ids, x.depth, 1, rank)

    def tie(self, a: Val, b: Val, name) -> Val:
        depth = max(a.depth, b.depth)
        if a.ids is None and b.ids is None:
            return Val(None, depth)
        # broadcasting aligns trailing dims: channels-last always line up, channels at
        # dim 1 only when both ranks are known and equal
        same = (a.ids is not None and b.ids is not None and len(a.ids) == len(b.ids)
                and a.rep == b.rep and ((a.axis == b.axis == -1) or (
                    a.rank is not None and a.rank == b.rank and a.chan_first and b.chan_first)))
        if not same:
            self.kill([a, b], f"{name} (with an untracked tensor)")
            return Val(None, depth)
        for i, j in zip(a.ids, b.ids):  # every summand of a stream gets the same factor
            self.union(i, j)
        return Val(a.ids, depth, a.axis, a.rank if a.rank is not None else b.rank, a.rep)

    def cat(self, node, env, name) -> Val:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = _arg(node, 1, "dim", 0)
        vals = [env.get(a) if isinstance(a, fx.Node) else None for a in tensors]
        depth = max([v.depth for v in vals if isinstance(v, Val)], default=-1)
        ok = all(isinstance(v, Val) and v.ids is not None and v.rep == 1 for v in vals) and (
            (dim == 1 and all(v.chan_first for v in vals))
            or (dim == -1 and all(v.chan_last for v in vals)))
        if not ok:  # concatenation along another dim, or with an untracked tensor
            self.kill(vals, f"{name} (dim={dim})")
            return Val(None, depth)
        ids = [i for v in vals for i in v.ids]  # each channel keeps its own producer
        return Val(ids, depth, vals[0].axis, vals[0].rank)

    def run(self, graph: fx.Graph) -> None:
        env: dict[fx.Node, Val | str] = {}
        for self.order, node in enumerate(graph.nodes):
            if node.op == "get_attr":  # a weight read outside its layer cannot be rescaled
                self.raw.add(id(_attr(self.model, node.target)))
                env[node] = Val(None)
            elif node.op == "placeholder":
                env[node] = Val(None)
            elif node.op == "output":
                self.kill([env.get(a) for a in _nodes(node.args)], "model output")
            elif node.op == "call_module":
                env[node] = self.module(node, env)
            else:
                env[node] = self.function(node, env)
        owners = defaultdict(set)
        for r in self.records:
            if r.bias is not None:
                owners[id(r.bias)].add(id(r.param))
        for r in self.records:
            if r.bias is not None and len(owners[id(r.bias)]) > 1:
                self.kill(Val(r.ids), f"{r.name} bias shared with another weight")
            if id(r.param) in self.raw or id(r.bias) in self.raw:
                self.kill(Val(r.ids), f"{r.name} weight used outside its layer")
        if not self.balance_last and self.last_layer is not None:
            # the official code's choice: the classifier's input units are left alone
            self.kill(Val(self.last_layer.ids), "feeds the classifier (balance_last=False)")


def _piece(r: Record, pos: list[int], units: list[int], device) -> Piece:
    p = Piece(r.name, r.param, r.bias if r.dim == 0 else None, r.dim, r.incoming, r.depth,
              len(pos), None)
    rep = 1
    while rep < len(units) and units[rep] == units[0]:
        rep += 1
    if (pos == list(range(pos[0], pos[0] + len(pos))) and len(pos) % rep == 0
            and units == [units[0] + i // rep for i in range(len(pos))]):
        p.start, p.u0, p.rep = pos[0], units[0], rep
    else:
        p.index = torch.tensor(pos, dtype=torch.long, device=device)
        p.units = torch.tensor(units, dtype=torch.long, device=device)
    return p


def find_unit_groups(model: nn.Module, *, bn: str = "ignore", attention: bool = False,
                     balance_last: bool = True) -> tuple[list[UnitGroup], dict, Counter]:
    """Analyse `model`: its unit groups in sequential order, the depth of every layer weight
    involved, and why the other channels were excluded (reason -> number of units)."""
    if bn not in BN_MODES:
        raise ValueError(f"ENorm: bn={bn!r}; choose one of {BN_MODES}")
    try:
        graph = _Tracer(attention).trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the same to the user
        raise ValueError(f"ENorm analyses the model with torch.fx, and {type(model).__name__} "
                         f"could not be traced: {type(e).__name__}: {e}") from e
    a = _Analysis(model, bn, attention, balance_last)
    a.run(graph)

    roots = {a.find(i) for i in range(len(a.parent))}
    killed: dict[int, str] = {}
    for i, why in a.killed.items():
        killed.setdefault(a.find(i), why)
    ins, outs = defaultdict(set), defaultdict(set)  # unit -> the weights on each side
    names = {}
    for r in a.records:
        names[id(r.param)] = r.name
        for i in r.ids:
            (ins if r.incoming else outs)[a.find(i)].add(id(r.param))
    for u in roots:
        both = ins[u] & outs[u]
        if u not in killed and both:  # e.g. a layer applied twice: d/d on its own entries
            killed[u] = f"{names[min(both)]} both produces and consumes it"
    alive = {u for u in roots if u not in killed and ins[u] and outs[u]}

    # Units with the same producers are updated together. No weight then has rows and
    # columns in one group (that would be a unit with the weight on both sides, killed
    # above), so the objective is separable over a group and one step is exact.
    key = {u: frozenset(ins[u]) for u in alive}
    members: dict[frozenset, list[Record]] = defaultdict(list)
    for r in a.records:
        for k in {key[u] for u in (a.find(i) for i in r.ids) if u in alive}:
            members[k].append(r)

    groups = []
    for k, recs in members.items():
        unit_of: dict[int, int] = {}
        for r in sorted(recs, key=lambda r: (not r.incoming, r.order)):
            for u in (a.find(i) for i in r.ids):
                if u in alive and key[u] == k and u not in unit_of:
                    unit_of[u] = len(unit_of)
        grp = UnitGroup(len(unit_of), min(r.depth for r in recs if r.incoming),
                        min(r.order for r in recs if r.incoming))
        for r in recs:
            pos, units = [], []
            for j, i in enumerate(r.ids):
                u = unit_of.get(a.find(i))
                if u is not None:
                    pos.append(j)
                    units.append(u)
            (grp.incoming if r.incoming else grp.outgoing).append(_piece(r, pos, units, r.param.device))
        groups.append(grp)
    groups.sort(key=lambda g: g.order)
    excluded = Counter(killed[u] for u in roots if u in killed)
    excluded.update(["no producer or no consumer"] * sum(
        1 for u in roots if u not in killed and not (ins[u] and outs[u])))
    return groups, {p: d for p, d in a.depth.items()}, excluded


def describe_groups(groups: list[UnitGroup], excluded: Counter) -> str:
    def fmt(p: Piece) -> str:
        where = ("rows" if p.param.ndim > 1 else "entries") if p.dim == 0 else "columns"
        return f"{p.name} {where} x{'d' if p.incoming else '1/d'} (depth {p.depth})"

    lines = [f"ENorm: {len(groups)} unit groups, {sum(g.n for g in groups)} balanced units"]
    for k, g in enumerate(groups):
        tied = (f"; tied: each unit has {len(g.incoming)} producers" if len(g.incoming) > 1 else "")
        lines.append(f"  group {k}: {g.n} units{tied}")
        lines.append("    in:  " + ", ".join(fmt(p) for p in g.incoming))
        lines.append("    out: " + ", ".join(fmt(p) for p in g.outgoing))
    if excluded:
        lines.append(f"  not balanced: {sum(excluded.values())} units")
        lines.extend(f"    {n} x {why}" for why, n in excluded.most_common())
    return "\n".join(lines)


__all__ = ["UnitGroup", "Piece", "find_unit_groups", "describe_groups", "unwrap", "is_attention"]
