"""Which operations a positive per-channel scale passes through: the op tables of the trace.

A unit's factor d travels from the layer that produces its channel to the layers that
consume it, so every op in between must commute with a positive per-channel scale.
`op_kind` sorts a torch.fx node's target (a function, a method name or a module) into
one of the kinds below; a target with no kind stops the channels it touches.
"""

from __future__ import annotations

import enum
import numbers
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn


class Op(enum.Enum):
    SIZE = "size"        # a shape query (x.size(0), x.shape, len(x)): not a tensor at all
    GETITEM = "getitem"  # indexing: understood on shapes only
    SAME = "same"        # positively homogeneous and elementwise, f(d x) = d f(x): relu, dropout, copies
    # elementwise but not positively homogeneous (sigmoid, SiLU, Hardswish, GELU, ReLU6...):
    # stops the channels it reads; its output, which the balancing leaves unchanged, keeps the shape
    ELEMENTWISE = "elementwise"
    POOL = "pool"        # per-channel pooling over positions (channel axis at dim 1)
    FLATTEN = "flatten"
    VIEW = "view"        # view/reshape: understood as the flatten x.view(x.size(0), -1) only
    REDUCE = "reduce"    # mean/sum/max over positions
    SCALE = "scale"      # multiplication or division by a number
    ADD = "add"          # addition or subtraction of tensors: ties the summands
    CAT = "cat"          # concatenation along channels: each channel keeps its producer


# call_function targets and call_method names, by kind
_FUNCTIONS: dict[object, Op] = {
    **dict.fromkeys((getattr, len, "size", "dim", "numel", "ndimension"), Op.SIZE),
    operator.getitem: Op.GETITEM,
    **dict.fromkeys((F.relu, F.relu_, torch.relu, torch.relu_, F.leaky_relu, F.dropout, F.dropout1d,
                     F.dropout2d, F.dropout3d, torch.dropout, "relu", "relu_", "contiguous", "clone"),
                    Op.SAME),
    **dict.fromkeys((F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                     F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                     F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
                     torch.max_pool1d, torch.max_pool2d, torch.max_pool3d, torch.avg_pool1d), Op.POOL),
    **dict.fromkeys((torch.sigmoid, F.sigmoid, F.hardsigmoid, F.silu, F.hardswish, F.gelu, F.mish, torch.tanh,
                     F.tanh, F.relu6, F.hardtanh, F.elu, F.selu, F.celu, F.softplus, "sigmoid", "sigmoid_",
                     "tanh", "tanh_"), Op.ELEMENTWISE),
    **dict.fromkeys((torch.flatten, "flatten"), Op.FLATTEN),
    **dict.fromkeys((torch.reshape, "view", "reshape"), Op.VIEW),
    **dict.fromkeys((torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"), Op.REDUCE),
    **dict.fromkeys((operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul,
                     torch.div, "mul", "mul_", "div", "div_"), Op.SCALE),
    **dict.fromkeys((operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub,
                     "add", "add_", "sub", "sub_"), Op.ADD),
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate), Op.CAT),
}
# functions of other packages, by (module, name), so that they need not be imported:
# torchvision's stochastic depth multiplies each sample by a random 0 or 1/(1 - p), the
# same for all its channels, as dropout does
_FUNCTIONS_BY_NAME: dict[tuple[str, str], Op] = {
    ("torchvision.ops.stochastic_depth", "stochastic_depth"): Op.SAME,
}
# a number, or a gate, may come first: 2 * x, gate * x
COMMUTATIVE = {operator.mul, torch.mul, "mul"}

# parameter-free modules, by kind (layers with weights are the trace's own business)
_MODULES: tuple[tuple[tuple[type[nn.Module], ...], Op], ...] = (
    ((nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d), Op.SAME),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
      nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
      nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d), Op.POOL),
    ((nn.Flatten,), Op.FLATTEN),
    ((nn.Sigmoid, nn.Hardsigmoid, nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish, nn.Tanh, nn.Hardtanh, nn.ELU,
      nn.SELU, nn.CELU, nn.Softplus), Op.ELEMENTWISE),  # nn.ReLU6 is a Hardtanh
)


def op_kind(node: fx.Node, module: nn.Module | None = None) -> Op | None:
    """The kind of a call_function / call_method node, or of the module a call_module
    node calls; None: unknown, it stops the channels it touches."""
    if module is not None:
        if isinstance(module, nn.PReLU):  # one slope for all channels: homogeneous
            return Op.SAME if module.num_parameters == 1 else None
        return next((kind for types, kind in _MODULES if isinstance(module, types)), None)
    try:
        kind = _FUNCTIONS.get(node.target)
    except TypeError:  # an unhashable target
        return None
    if kind is None and callable(node.target):
        kind = _FUNCTIONS_BY_NAME.get((getattr(node.target, "__module__", None),
                                       getattr(node.target, "__name__", None)))
    return kind


def returns_indices(node: fx.Node, module: nn.Module | None = None) -> bool:
    """A max pooling that also returns its indices (a tuple, not a tensor of channels)."""
    if module is not None:
        return bool(getattr(module, "return_indices", False))
    if node.kwargs.get("return_indices"):
        return True
    name = getattr(node.target, "__name__", "")
    i = 2 if name.startswith("adaptive") else 6  # its position in F.*max_pool*
    return "max" in name and len(node.args) > i and bool(node.args[i])


def is_number(v) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool)


def arg(node: fx.Node, i: int, name: str, default=None):
    """The node's argument at position `i`, or keyword `name`."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def input_nodes(node: fx.Node) -> list[fx.Node]:
    """Every node among the node's arguments, nested ones included."""
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), out.append)
    return out
