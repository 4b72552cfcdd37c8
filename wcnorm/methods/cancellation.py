"""Which weight methods a following normalization cancels: read from the model's graph.

A per-channel normalization (BatchNorm, InstanceNorm, GroupNorm with one channel per
group) divides each channel by its own spread, so it undoes any positive scale of that
channel: BN(D W x) = BN(W x) for a positive diagonal D, up to BN's eps. A weight method
whose effective weight is a positive scale of each raw row -- row WC of any p, WN (see
``WeightMethod.scales_rows``) -- is therefore cancelled *exactly* on a layer whose
output channels reach such a normalization: the loss is the same function of the raw
weights with or without it, so are its gradients and the whole trajectory. With the
classifier skipped, BN + WC is BN.

The scale may travel before it is normalized, through every op that commutes with a
positive per-channel scale (the op tables of ENorm's trace, :mod:`.enorm.ops`):
ReLU and dropout (f(d x) = d f(x)), pooling, and concatenation along channels, so the
pre-activation and concatenating blocks of DenseNet count too. A layer is cancelled
only if *every* use of its output ends in such a normalization; an addition (a residual
sum mixes the channel with unscaled ones), a reshape, or the model output stops it. A
layer with a bias is followed through pooling and concatenation only: relu(d z + b) is
no longer a scale of relu(z + b).

:func:`cancelled_layers` answers for the Conv/Linear layers of any model;
:func:`describe_cancellation` for the layers carrying a weight method.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from .enorm import ops
from .enorm.ops import Op
from .weight_method import installed_methods

__all__ = ["cancels_channel_scale", "cancelled_layers", "describe_cancellation", "cancellation_line"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_IDENTITY_LIKE = ("contiguous", "clone")  # call_method targets that copy their input


def cancels_channel_scale(module: nn.Module) -> bool:
    """Whether ``module`` normalizes each channel by statistics of that channel alone."""
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return True
    return isinstance(module, nn.GroupNorm) and module.num_groups == module.num_channels


class _Tracer(fx.Tracer):
    """Conv/Linear layers (parametrized ones too) and normalizations stay single nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*_LAYERS, nn.modules.batchnorm._NormBase, nn.GroupNorm)) \
            or super().is_leaf_module(m, qualname)


def _passes(user: fx.Node, node: fx.Node, module: nn.Module | None, biased: bool) -> bool:
    """Whether a positive per-channel scale of ``node`` reaches ``user``'s output intact."""
    kind = ops.op_kind(user, module)
    if kind is Op.POOL:
        return not ops.returns_indices(user, module)
    if kind is Op.CAT:  # along channels only, and with the layer's output as one piece
        return ops.arg(user, 1, "dim", 0) == 1 and node in ops.arg(user, 0, "tensors", ())
    if kind is Op.SAME:
        identity = isinstance(module, nn.Identity) or (user.op == "call_method" and user.target in _IDENTITY_LIKE)
        return identity or not biased
    return False


def _normalized_by(node: fx.Node, modules: dict[str, nn.Module], biased: bool) -> list[str] | None:
    """The normalizations every use of ``node`` reaches through scale-commuting ops, or
    None where some use escapes (or nothing normalizes it)."""
    found: list[str] = []
    for user in node.users:
        module = modules.get(user.target) if user.op == "call_module" else None
        if module is not None and cancels_channel_scale(module):
            if user.args[:1] != (node,) or len(user.args) != 1 or user.kwargs:
                return None
            found.append(str(user.target))
            continue
        if ops.op_kind(user, module) is Op.SIZE:  # a shape query reads no values
            continue
        if not _passes(user, node, module, biased):
            return None
        below = _normalized_by(user, modules, biased)
        if below is None:
            return None
        found += below
    return found or None


def cancelled_layers(model: nn.Module) -> dict[str, list[str]]:
    """Conv/Linear layers (qualified names) on which a positive per-row scale of the
    weight is cancelled exactly, each with the normalizations that cancel it.

    Reads the model's graph with ``torch.fx`` (the model must be traceable; a
    ``torch.fx`` error propagates). A model without a per-channel normalization is not
    traced: nothing can cancel a scale there.

    Example::

        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.Flatten(), nn.LazyLinear(10))
        >>> cancelled_layers(net)
        {'0': ['1']}
    """
    if not any(cancels_channel_scale(m) for m in model.modules()):
        return {}
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    verdicts: dict[str, list[str] | None] = {}
    for node in graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(module, _LAYERS):
            continue
        norms = _normalized_by(node, modules, biased=module.bias is not None)
        name = str(node.target)
        # A layer called twice is cancelled only if every call is.
        verdicts[name] = None if name in verdicts and verdicts[name] is None else \
            (None if norms is None else sorted(set(norms) | set(verdicts.get(name) or [])))
    return {name: norms for name, norms in verdicts.items() if norms}


def describe_cancellation(model: nn.Module) -> dict:
    """The weight-method layers of ``model`` that a following normalization cancels:
    ``{"cancelled_layers", "acting_layers", "cancelled_by", "traced", "note"}``.

    ``cancelled_layers``: layers whose method scales their rows (``scales_rows``) and
    whose every output channel is normalized per channel after them; ``acting_layers``:
    the other layers carrying a method. A model torch.fx cannot trace is reported as
    untraced (``traced`` False, the reason in ``note``), every layer counted as acting.
    """
    installed = installed_methods(model)
    labels = [item.label for item in installed]
    try:
        found = cancelled_layers(model) if any(item.parametrization.scales_rows for item in installed) else {}
        traced, note = True, ""
    except Exception as err:  # a model torch.fx cannot trace: say so, cancel nothing
        found, traced, note = {}, False, f"not traced ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    by = {item.label: found[item.label] for item in installed
          if item.tensor == "weight" and item.parametrization.scales_rows and item.label in found}
    return {"cancelled_layers": [n for n in labels if n in by],
            "acting_layers": [n for n in labels if n not in by],
            "cancelled_by": by, "traced": traced, "note": note}


def cancellation_line(method: str, record: dict) -> str | None:
    """One line for the run's log: how many of the method's layers a normalization
    cancels and what remains; None where it cancels none."""
    cancelled, acting = record["cancelled_layers"], record["acting_layers"]
    if not cancelled:
        return None
    total = len(cancelled) + len(acting)
    head = (f"weight method {method}: {len(cancelled)} of its {total} layers are followed by a "
            "per-channel normalization that cancels it exactly (the loss is the same function "
            "of the raw weights)")
    if not acting:
        return head + "; it acts on no layer: this run trains the normalization alone"
    shown = ", ".join(acting[:4]) + (f" and {len(acting) - 4} more" if len(acting) > 4 else "")
    return f"{head}; it acts only on: {shown}"
