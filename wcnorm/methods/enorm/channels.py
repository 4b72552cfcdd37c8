"""Channel tracking: trace a model with torch.fx and follow every channel from the layer
that produces it to the layers that consume it.

The pass walks the traced graph once, in execution order, and knows for every tensor the
channel id at each position along its channel axis (a `TracedTensor`). Conv/Linear layers
(and, with ``bn="fold"``, affine norm layers) create fresh ids for their output channels:
the rows of their weight are those channels' incoming weights. A layer that reads tracked
channels records which id each of its input columns reads: the channels' outgoing weights.
Both are a `WeightAxis`. Ops that commute with a positive per-channel scale (see `ops`)
pass ids through; an addition ties the ids of its summands (`UnionFind`); anything else,
and the model output, stops the ids it touches, with the reason. `trace_channels`
returns what it found (a `ChannelMap`); `units.find_unit_groups` makes units of it.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import Tensor, nn

from ...modules import BATCH_NORMS, NORM_LAYERS
from . import ops
from .attention import check_attention, is_attention
from .ops import Op
from .unionfind import UnionFind

BN_MODES = ("ignore", "fold")
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SIZE = "size"  # a non-tensor value derived from shapes (x.size(0), x.shape): harmless to use


@dataclass
class TracedTensor:
    """What the pass knows about one tensor of the traced graph."""

    channels: list[int] | None  # channel id at each position of the channel axis; None: untracked
    depth: int = -1  # longest path, in parameterised layers, from the input (-1: the input)
    axis: int = 1  # channel axis: 1 (N, C, ...) or -1 (..., C); the same when rank == 2
    rank: int | None = None
    # positions per channel along the axis: 1, or H*W after a flatten of (N, C, H, W)
    # (None: not known until a Linear reads it)
    per_channel: int | None = 1

    @property
    def chan_first(self) -> bool:
        return self.axis == 1 or self.rank == 2

    @property
    def chan_last(self) -> bool:
        return self.axis == -1 or self.rank == 2


@dataclass
class WeightAxis:
    """One layer's weight along one axis, with the channel id at every index: its rows
    (dim 0, the channels' incoming weights, scaled with the bias) or its columns (dim 1,
    their outgoing weights; attention's k rows are outgoing too)."""

    name: str
    param: Tensor
    bias: Tensor | None  # the producer's bias; with its rows (dim 0) only
    dim: int
    channels: list[int]
    depth: int  # the deepest call of the layer
    incoming: bool  # True: into the channels (x d); False: out of them (x 1/d)
    order: int  # graph position of the layer's first call


@dataclass
class ChannelMap:
    """What the pass found: every weight axis, the ties, and why channels were stopped."""

    axes: list[WeightAxis]
    ties: UnionFind
    stopped: dict[int, str]  # channel id -> the first reason it cannot be balanced


def _plain_weights(m: nn.Module) -> bool:
    """Parameters that ENorm can rescale in place: not a parametrization's computed weight,
    not a tensor recomputed by a hook (old-style weight_norm)."""
    if torch.nn.utils.parametrize.is_parametrized(m):
        return False
    return all(getattr(m, a, None) is None or isinstance(getattr(m, a), nn.Parameter)
               for a in ("weight", "bias"))


def _attr(model: nn.Module, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class _Tracer(fx.Tracer):
    def __init__(self, attention: bool):
        super().__init__()
        self.attention = attention
        self.failed_in: str | None = None  # the innermost module whose tracing failed

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (self.attention and is_attention(m)) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = f"{self.path_of_module(m)} ({type(m).__name__})"
            raise


def _where(e: BaseException) -> str:
    """The innermost line of the model's own code (outside torch) an exception passed."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(torch_dir)]
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""


class _ChannelPass:
    def __init__(self, model: nn.Module, bn: str, attention: bool):
        self.model, self.bn, self.attention = model, bn, attention
        self.ties = UnionFind()
        self.stopped: dict[int, str] = {}
        self.axes: list[WeightAxis] = []
        self.rows: dict[Tensor, WeightAxis] = {}  # by weight: a layer called twice keeps its ids
        self.columns: dict[Tensor, WeightAxis] = {}
        self.classifier: WeightAxis | None = None  # the columns of the last Conv/Linear called
        self.read_directly: set[int] = set()  # ids of tensors read outside their layer (get_attr)
        self.order = 0
        self.handlers = {Op.SAME: self._same, Op.ELEMENTWISE: self._elementwise, Op.POOL: self._pool,
                         Op.FLATTEN: self._flatten,
                         Op.VIEW: self._view, Op.REDUCE: self._reduce, Op.SCALE: self._scale,
                         Op.ADD: self._add}

    def stop(self, values, reason: str) -> None:
        for v in values if isinstance(values, (list, tuple)) else [values]:
            if isinstance(v, TracedTensor) and v.channels is not None:
                self.stop_channels(v.channels, reason)

    def stop_channels(self, channels: list[int], reason: str) -> None:
        for i in channels:
            self.stopped.setdefault(i, reason)

    # -- weights ------------------------------------------------------------------------
    def produce(self, name: str, param: Tensor, bias: Tensor | None, n: int, depth: int) -> list[int]:
        """Fresh ids for the `n` output channels of a layer (the same ids on a second call)."""
        rows = self.rows.get(param)
        if rows is None:
            rows = WeightAxis(name, param, bias, 0, self.ties.add(n), depth, True, self.order)
            self.rows[param] = rows
            self.axes.append(rows)
        elif rows.bias is not bias:  # one weight, two biases: the second would not be rescaled
            self.stop_channels(rows.channels, f"{name} weight shared with another bias")
        rows.depth = max(rows.depth, depth)
        return rows.channels

    def consume(self, name: str, param: Tensor, channels: list[int], depth: int, dim: int = 1,
                bias: Tensor | None = None) -> WeightAxis:
        """Record that `param`'s indices along `dim` read `channels`."""
        axis = self.columns.get(param)
        if axis is None:
            axis = WeightAxis(name, param, bias, dim, list(channels), depth, False, self.order)
            self.columns[param] = axis
            self.axes.append(axis)
        else:  # a layer called twice: its input columns tie the two inputs
            for a, b in zip(axis.channels, channels):
                self.ties.union(a, b)
        axis.depth = max(axis.depth, depth)
        return axis

    # -- modules ------------------------------------------------------------------------
    def call_module(self, node: fx.Node, env) -> TracedTensor:
        m = self.model.get_submodule(node.target)
        name, kind = node.target, type(m).__name__
        x = env.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        x = x if isinstance(x, TracedTensor) else TracedTensor(None)
        if self.attention and is_attention(m):  # whatever its call signature
            self.unknown(node, env, f"{kind} input")
            return self.attention_module(name, m, x)
        if len(node.args) != 1 or node.kwargs or not _plain_weights(m):
            return self.unknown(node, env, kind)
        if isinstance(m, (*CONVS, nn.Linear)):
            return self.layer(name, m, x)
        if isinstance(m, NORM_LAYERS):
            return self.norm(node, env, name, m, x)
        op = ops.op_kind(node, m)
        if op is Op.SAME:
            return x
        if op is Op.ELEMENTWISE:
            return self.elementwise(x, kind)
        if op is Op.POOL:
            return self.pool(x, kind, ops.returns_indices(node, m))
        if op is Op.FLATTEN:
            return self.flatten(x, m.start_dim, m.end_dim)
        return self.unknown(node, env, kind)

    def layer(self, name: str, m: nn.Module, x: TracedTensor) -> TracedTensor:
        conv = isinstance(m, CONVS)
        depth = x.depth + 1
        n_in, n_out = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
        columns, dim = None, 1
        if x.channels is not None:
            channels, why = None, "input layout not understood"
            conv_input = conv and x.chan_first and x.per_channel == 1 and len(x.channels) == n_in
            if conv and m.groups != 1 and (m.groups != n_in or not conv_input):
                # each input channel reads a block of rows x columns: not one axis of the weight
                why = f"grouped conv input, {n_in // m.groups} channels per group: no rule"
            elif conv_input and m.groups != 1:
                # depthwise: input channel i is read by its own rows only (out/in of them), so
                # its outgoing weights are rows (dim 0) too, like attention's k
                channels, dim = [i for i in x.channels for _ in range(n_out // n_in)], 0
            elif conv_input:
                channels = x.channels
            elif not conv and x.chan_last:  # a flatten's per_channel is known now
                per = x.per_channel if x.per_channel is not None else n_in // len(x.channels)
                if per * len(x.channels) == n_in:
                    channels = [i for i in x.channels for _ in range(per)]
            if channels is None:
                self.stop(x, f"{type(m).__name__} {name} ({why})")
            else:
                columns = self.consume(name, m.weight, channels, depth, dim=dim)
        self.classifier = columns
        out = self.produce(name, m.weight, m.bias, n_out, depth)
        return TracedTensor(out, depth, 1, m.weight.ndim) if conv else TracedTensor(out, depth, -1, x.rank)

    def norm(self, node: fx.Node, env, name: str, m: nn.Module, x: TracedTensor) -> TracedTensor:
        kind = type(m).__name__
        if isinstance(m, BATCH_NORMS):
            n = m.num_features
        elif isinstance(m, nn.GroupNorm):
            n = m.num_channels
        else:  # LayerNorm, InstanceNorm: modelled in neither mode
            return self.unknown(node, env, kind)
        if x.channels is not None and x.axis == -1 and x.rank is None and isinstance(m, nn.BatchNorm1d):
            x = TracedTensor(x.channels, x.depth, 1, 2, x.per_channel)  # (N, C): BN1d's only channels-last
        fits = x.channels is not None and x.chan_first and x.per_channel == 1 and len(x.channels) == n
        if self.bn == "ignore":
            if not isinstance(m, BATCH_NORMS):
                # GroupNorm pools its statistics over the channels of a group: a per-channel
                # scale of its input changes its output, so its input is not balanced (and,
                # its parameters left alone in this mode, it produces no channels)
                self.stop(x, f"{kind} input (bn='ignore': it does not cancel a per-channel scale)")
                return TracedTensor(None, x.depth)
            # transparent: neither rescaled nor counted (the paper's ENorm + BN)
            if x.channels is not None and not fits:
                self.stop(x, f"{kind} {name} (layout not understood)")
                return TracedTensor(None, x.depth)
            return x
        # fold: the norm cancels (train) or fixes (eval) the scale of its input, so its input
        # channels are not balanced; its gamma/beta produce the output channels
        self.stop(x, f"{kind} input (bn='fold')")
        if not m.affine:
            return TracedTensor(None, x.depth)
        depth = x.depth + 1
        return TracedTensor(self.produce(name, m.weight, m.bias, n, depth), depth, 1, x.rank)

    def attention_module(self, name: str, m: nn.Module, x: TracedTensor) -> TracedTensor:
        if not all(_plain_weights(getattr(m, a)) for a in ("q", "k", "v", "proj")):
            return TracedTensor(None, x.depth + 2)
        check_attention(name, m)
        n, depth = m.num_heads * m.head_dim, x.depth + 1
        # q row *= d, k row /= d: q k^T unchanged; k's rows are "outgoing" at q's depth
        ids = self.produce(f"{name}.q", m.q.weight, m.q.bias, n, depth)
        self.consume(f"{name}.k", m.k.weight, ids, depth, dim=0, bias=m.k.bias)
        # v row *= d, proj column /= d: (A V) W_o unchanged
        ids = self.produce(f"{name}.v", m.v.weight, m.v.bias, n, depth)
        self.consume(f"{name}.proj", m.proj.weight, ids, depth + 1)
        return TracedTensor(None, depth + 1)  # the output is left untracked: conservative

    # -- functions and methods ----------------------------------------------------------
    def call(self, node: fx.Node, env) -> TracedTensor | str:
        kind, name = ops.op_kind(node), ops.op_name(node)
        args = [env.get(a) if isinstance(a, fx.Node) else a for a in node.args]
        x = args[0] if args else None
        if kind is Op.SIZE:
            return SIZE
        if kind is Op.GETITEM:
            return SIZE if x is SIZE else self.unknown(node, env, name)
        if x is SIZE and all(v is SIZE or not isinstance(v, TracedTensor) for v in args):
            return SIZE  # arithmetic on sizes
        if (node.target in ops.COMMUTATIVE and len(args) == 2 and isinstance(args[1], TracedTensor)
                and args[1].channels is not None
                and (ops.is_number(x) or isinstance(x, TracedTensor) and x.channels is None)):
            x, args = args[1], [args[1], x]  # 2 * t, gate * t
        if kind is Op.CAT:
            return self.cat(node, env, name)
        if not isinstance(x, TracedTensor):
            return self.unknown(node, env, name)
        if kind is not Op.ADD:  # any other tensor argument is a use we do not model
            others = [env.get(a) for a in ops.input_nodes(node)]
            self.stop([v for v in others if v is not x], f"{name} (tensor argument)")
        handler = self.handlers.get(kind)
        return handler(node, env, x, args, name) if handler else self.unknown(node, env, name)

    def _same(self, node, env, x: TracedTensor, args, name) -> TracedTensor:
        return x

    def _elementwise(self, node, env, x: TracedTensor, args, name) -> TracedTensor:
        return self.elementwise(x, name)

    def _pool(self, node, env, x: TracedTensor, args, name) -> TracedTensor:
        return self.pool(x, name, ops.returns_indices(node))

    def _flatten(self, node, env, x: TracedTensor, args, name) -> TracedTensor:
        return self.flatten(x, ops.arg(node, 1, "start_dim", 0), ops.arg(node, 2, "end_dim", -1))

    def _view(self, node, env, x: TracedTensor, args, name) -> TracedTensor:
        shape = node.args[1:] if len(node.args) > 2 else (node.args[1] if len(node.args) > 1 else ())
        if (isinstance(shape, (list, tuple)) and len(shape) == 2 and shape[1] == -1
                and isinstance(shape[0], fx.Node) and env.get(shape[0]) is SIZE):
            return self.flatten(x, 1, -1)  # x.view(x.size(0), -1)
        return self.unknown(node, env, name)

    def _reduce(self, node, env, x: TracedTensor, args, name) -> TracedTensor:
        dims = ops.arg(node, 1, "dim")
        keep = bool(ops.arg(node, 2, "keepdim", False))
        dims = [dims] if isinstance(dims, int) else dims
        if x.channels is None:
            return TracedTensor(None, x.depth)
        if not (isinstance(dims, (list, tuple)) and dims and x.axis == 1 and x.per_channel == 1):
            return self.unknown(node, env, name)
        if any(d < 0 for d in dims):
            if x.rank is None:
                return self.unknown(node, env, name)
            dims = [d % x.rank for d in dims]
        if 0 in dims or 1 in dims:
            return self.unknown(node, env, name)
        rank = x.rank if keep or x.rank is None else x.rank - len(set(dims))
        return TracedTensor(x.channels, x.depth, 1, rank)

    def _scale(self, node, env, x: TracedTensor, args, name) -> TracedTensor:
        if len(args) == 2 and not node.kwargs and (ops.is_number(args[1]) or args[1] is SIZE):
            return x
        if len(args) == 2 and not node.kwargs and self.is_gate(x, args[1]):
            # x * g or x / g with g untracked (e.g. a squeeze-and-excitation gate): the
            # balancing leaves an untracked tensor unchanged (each channel it was computed
            # from was stopped, or read by a consumer that undoes its scale), and the product
            # is linear in x, so a per-channel scale of x passes
            g = args[1]
            same_rank = x.rank is not None and g.rank is not None and g.rank <= x.rank
            return TracedTensor(x.channels, max(x.depth, g.depth), x.axis, x.rank if same_rank else None,
                                x.per_channel)
        return self.unknown(node, env, name)

    @staticmethod
    def is_gate(x: TracedTensor, g) -> bool:
        """Whether x * g keeps x's channel axis: g untracked, and broadcasting cannot move
        the axis (it aligns trailing dims, so a channels-last axis always stays last; a
        channel axis at dim 1 stays there when g's rank is known and not above x's)."""
        if not (isinstance(g, TracedTensor) and g.channels is None and x.channels is not None):
            return False
        if x.axis == -1:
            return True
        return x.rank is not None and g.rank is not None and g.rank <= x.rank

    def _add(self, node, env, x: TracedTensor, args, name) -> TracedTensor:
        if len(args) == 2 and not node.kwargs and isinstance(args[1], TracedTensor):
            return self.tie(x, args[1], name)
        return self.unknown(node, env, name)

    # -- the rules ----------------------------------------------------------------------
    def elementwise(self, x: TracedTensor, kind: str) -> TracedTensor:
        self.stop(x, f"{kind} (not positively homogeneous)")
        return TracedTensor(None, x.depth, x.axis, x.rank)

    def pool(self, x: TracedTensor, kind: str, indices: bool = False) -> TracedTensor:
        if x.channels is not None and (indices or x.axis != 1 or x.per_channel != 1 or (x.rank or 3) < 3):
            self.stop(x, kind)
            return TracedTensor(None, x.depth)
        return x

    def flatten(self, x: TracedTensor, start: int, end: int) -> TracedTensor:
        if x.channels is None:
            return TracedTensor(None, x.depth, -1, 2 if (start, end) == (1, -1) else None)
        if (start, end) == (1, -1) and x.chan_first:  # channel c -> features [c*S, (c+1)*S)
            return TracedTensor(x.channels, x.depth, -1, 2, x.per_channel if x.rank == 2 else None)
        if x.axis == 1 and start >= 2:  # merges positions only
            rank = None if x.rank is None else x.rank - (end % x.rank - start)
            return TracedTensor(x.channels, x.depth, 1, rank, x.per_channel)
        self.stop(x, "flatten")
        return TracedTensor(None, x.depth)

    def tie(self, a: TracedTensor, b: TracedTensor, name: str) -> TracedTensor:
        depth = max(a.depth, b.depth)
        if a.channels is None and b.channels is None:
            return TracedTensor(None, depth)
        # broadcasting aligns trailing dims: channels-last always line up, channels at
        # dim 1 only when both ranks are known and equal
        aligned = (a.channels is not None and b.channels is not None and len(a.channels) == len(b.channels)
                   and a.per_channel == b.per_channel and ((a.axis == b.axis == -1) or (
                       a.rank is not None and a.rank == b.rank and a.chan_first and b.chan_first)))
        if not aligned:
            self.stop([a, b], f"{name} (with an untracked tensor)")
            return TracedTensor(None, depth)
        for i, j in zip(a.channels, b.channels):  # every summand of a stream gets the same factor
            self.ties.union(i, j)
        return TracedTensor(a.channels, depth, a.axis, a.rank if a.rank is not None else b.rank, a.per_channel)

    def cat(self, node: fx.Node, env, name: str) -> TracedTensor:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = ops.arg(node, 1, "dim", 0)
        vals = [env.get(a) if isinstance(a, fx.Node) else None for a in tensors]
        depth = max([v.depth for v in vals if isinstance(v, TracedTensor)], default=-1)
        ok = all(isinstance(v, TracedTensor) and v.channels is not None and v.per_channel == 1
                 for v in vals) and ((dim == 1 and all(v.chan_first for v in vals))
                                     or (dim == -1 and all(v.chan_last for v in vals)))
        if not ok:  # concatenation along another dim, or with an untracked tensor
            self.stop(vals, f"{name} (dim={dim})")
            return TracedTensor(None, depth)
        channels = [i for v in vals for i in v.channels]  # each channel keeps its own producer
        return TracedTensor(channels, depth, vals[0].axis, vals[0].rank)

    def unknown(self, node: fx.Node, env, reason: str) -> TracedTensor:
        vals = [env.get(a) for a in ops.input_nodes(node)]
        self.stop(vals, reason)
        return TracedTensor(None, max([v.depth for v in vals if isinstance(v, TracedTensor)], default=-1))

    # -- the walk -----------------------------------------------------------------------
    def run(self, graph: fx.Graph) -> None:
        env: dict[fx.Node, TracedTensor | str] = {}
        for self.order, node in enumerate(graph.nodes):
            if node.op == "get_attr":  # a weight read outside its layer cannot be rescaled
                self.read_directly.add(id(_attr(self.model, node.target)))
                env[node] = TracedTensor(None)
            elif node.op == "placeholder":
                env[node] = TracedTensor(None)
            elif node.op == "output":
                self.stop([env.get(a) for a in ops.input_nodes(node)], "model output")
            elif node.op == "call_module":
                env[node] = self.call_module(node, env)
            else:
                env[node] = self.call(node, env)
        self.stop_shared_tensors()

    def stop_shared_tensors(self) -> None:
        """A bias shared by two weights, or a weight also read directly, cannot follow its rows."""
        owners: dict[int, set[int]] = {}
        for a in self.axes:
            if a.bias is not None:
                owners.setdefault(id(a.bias), set()).add(id(a.param))
        for a in self.axes:
            if a.bias is not None and len(owners[id(a.bias)]) > 1:
                self.stop_channels(a.channels, f"{a.name} bias shared with another weight")
            if id(a.param) in self.read_directly or id(a.bias) in self.read_directly:
                self.stop_channels(a.channels, f"{a.name} weight used outside its layer")


def trace_channels(model: nn.Module, *, bn: str = "ignore", attention: bool = False,
                   balance_last: bool = True) -> ChannelMap:
    """Trace `model` and follow its channels (see the module docstring)."""
    if bn not in BN_MODES:
        raise ValueError(f"ENorm: bn={bn!r}; choose one of {BN_MODES}")
    tracer = _Tracer(attention)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the same to the user
        # one line, naming the layer and the line of code: fx's own messages span many
        where = ", ".join(w for w in (tracer.failed_in and f"in {tracer.failed_in}", _where(e)) if w)
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise ValueError(f"ENorm analyses the model with torch.fx, and {type(model).__name__} could not "
                         f"be traced{f' ({where})' if where else ''}: {type(e).__name__}: {first}") from e
    walk = _ChannelPass(model, bn, attention)
    walk.run(graph)
    if not balance_last and walk.classifier is not None:
        # the official code's choice: the classifier's input units are left alone
        walk.stop_channels(walk.classifier.channels, "feeds the classifier (balance_last=False)")
    return ChannelMap(walk.axes, walk.ties, walk.stopped)
