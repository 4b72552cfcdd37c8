"""Weight-level methods: shared machinery and the baselines WS and WN.

Every weight-level method (WC in :mod:`wcnorm.methods.wc`, weight standardization, weight
normalization) is a ``torch.nn.utils.parametrize`` parametrization of the ``weight``
of the layers chosen by :func:`weight_layers`. The raw weights stay the trainable
parameters (``<layer>.parametrizations.weight.original``); the effective weight is
recomputed on every forward. Build the optimizer *after* applying a method, and call
:func:`remove_weight_methods` to export plain layers.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

__all__ = [
    "METHODS",
    "weight_layers",
    "weight_tensor_names",
    "WeightStandardization",
    "weight_standardization",
    "weight_normalization",
    "remove_weight_methods",
    "apply_weight_method",
    "describe_weight_method",
]

METHODS = ("none", "wc", "ws", "wn")
_RECORD = "_wcnorm_weight_method"  # attribute on the root model: what apply_* recorded


# --------------------------------------------------------------------------- layers
def weight_tensor_names(module: nn.Module) -> tuple[str, ...]:
    """The weight matrices of a layer a weight method touches: ``weight`` of a Conv or
    Linear; the input projections of ``nn.MultiheadAttention`` (its output projection
    is an ``nn.Linear`` child and is found on its own)."""
    if isinstance(module, nn.MultiheadAttention):
        if module._qkv_same_embed_dim:
            return ("in_proj_weight",)
        return ("q_proj_weight", "k_proj_weight", "v_proj_weight")
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return ("weight",)
    return ()


def _named_override(model: nn.Module, attr: str, names: list[str], default: list[str]) -> set[str]:
    value = getattr(model, attr, default)
    value = [] if value is None else [value] if isinstance(value, str) else list(value)
    unknown = set(value) - set(names)
    if unknown:
        raise ValueError(f"{type(model).__name__}.{attr} names no weight layer: {sorted(unknown)}")
    return set(value)


def weight_layers(model: nn.Module, *, include_classifier: bool = False,
                  skip_stem: bool = False) -> list[tuple[str, nn.Module]]:
    """The (qualified name, module) pairs a weight-level method touches.

    Rule: every ``nn.Conv1d/2d/3d`` and ``nn.Linear`` (subclasses included, so
    attention projections are covered; ``nn.MultiheadAttention`` counts too, for its
    packed input projection), in ``model.named_modules()`` order, except

    * the **classifier**, by default the *last* such layer: WC's schematic places a
      preconditioner after each hidden layer and none after the output layer, and the
      baselines follow the same rule so the comparison is like for like. Kept with
      ``include_classifier=True``.
    * the **stem**, by default the *first* such layer, only with ``skip_stem=True``.

    A model whose module order does not match (e.g. a head defined before the body)
    sets ``wcnorm_classifier`` / ``wcnorm_stem`` on its root module: a qualified module
    name, a list of names, or ``None`` for "no such layer".
    """
    layers = [(n, m) for n, m in model.named_modules() if weight_tensor_names(m)]
    names = [n for n, _ in layers]
    skip: set[str] = set()
    if not include_classifier:
        skip |= _named_override(model, "wcnorm_classifier", names, names[-1:])
    if skip_stem:
        skip |= _named_override(model, "wcnorm_stem", names, names[:1])
    return [(n, m) for n, m in layers if n not in skip]


# ------------------------------------------------------------------- registration
def _ours() -> tuple[type, ...]:
    from .wc import WeightConditioning

    return (WeightConditioning, WeightStandardization, parametrizations._WeightNorm)


def _method_of(parametrization: nn.Module) -> str | None:
    from .wc import WeightConditioning

    for cls, name in ((WeightConditioning, "wc"), (WeightStandardization, "ws"),
                      (parametrizations._WeightNorm, "wn")):
        if isinstance(parametrization, cls):
            return name
    return None


def _installed(model: nn.Module) -> list[tuple[str, str, nn.Module, str]]:
    """(label, method, module, tensor) for every tensor carrying one of our methods."""
    out = []
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor, plist in module.parametrizations.items():
            methods = [m for m in map(_method_of, plist) if m]
            if methods:
                label = name if tensor == "weight" else f"{name}.{tensor}".lstrip(".")
                out.append((label, methods[0], module, tensor))
    return out


def _register(module: nn.Module, tensor: str, parametrization: nn.Module | None) -> None:
    """Register one parametrization (``None``: torch's weight_norm), refusing to stack
    two weight methods on the same tensor."""
    if parametrize.is_parametrized(module, tensor) and any(
            isinstance(p, _ours()) for p in module.parametrizations[tensor]):
        raise ValueError(f"{type(module).__name__}.{tensor} already has a weight method; "
                         "call remove_weight_methods(model) first")
    if parametrization is None:
        parametrizations.weight_norm(module, name=tensor, dim=0)
    else:
        parametrize.register_parametrization(module, tensor, parametrization)


def _json_safe(options: Mapping) -> dict:
    def conv(v):
        if isinstance(v, float) and math.isinf(v):
            return "inf"
        if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
            return int(v) if v != 0 else v
        return v

    return {k: conv(v) for k, v in options.items()}


def _record(model: nn.Module, method: str, options: Mapping) -> nn.Module:
    object.__setattr__(model, _RECORD, {"method": method, "options": _json_safe(options)})
    return model


# ----------------------------------------------------------------------- baselines
class WeightStandardization(nn.Module):
    """Parametrization W -> (W - mean) / (std + eps) per output channel, over
    C_in*kh*kw (Qiao et al. 2019), for layers followed by BN or GN (spec section 3).
    The std is the population std (no Bessel correction): W_eff rows have exactly zero
    mean and, up to eps, unit std."""

    def __init__(self, *, eps: float = 1e-5):
        super().__init__()
        self.eps = float(eps)

    def forward(self, W: Tensor) -> Tensor:
        A = W.reshape(W.shape[0], -1)
        std, mean = torch.std_mean(A, dim=1, correction=0, keepdim=True)
        return ((A - mean) / (std + self.eps)).reshape(W.shape)

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"


def weight_standardization(model: nn.Module, *, eps: float = 1e-5, include_classifier: bool = False,
                           skip_stem: bool = False) -> nn.Module:
    """Register :class:`WeightStandardization` on the layers of :func:`weight_layers`."""
    for _, module in weight_layers(model, include_classifier=include_classifier, skip_stem=skip_stem):
        for tensor in weight_tensor_names(module):
            _register(module, tensor, WeightStandardization(eps=eps))
    return _record(model, "ws", dict(eps=eps, include_classifier=include_classifier, skip_stem=skip_stem))


def weight_normalization(model: nn.Module, *, include_classifier: bool = False,
                         skip_stem: bool = False) -> nn.Module:
    """Weight normalization (Salimans & Kingma 2016) via torch's parametrize-based
    ``weight_norm(dim=0)``: W = g * V / ||V|| per output unit, with a learnable gain g
    (``parametrizations.weight.original0``) initialised to the row norms, so the
    function is unchanged at application time. WC row/p=2 is this with g fixed at 1."""
    for _, module in weight_layers(model, include_classifier=include_classifier, skip_stem=skip_stem):
        for tensor in weight_tensor_names(module):
            _register(module, tensor, None)
    return _record(model, "wn", dict(include_classifier=include_classifier, skip_stem=skip_stem))


# ---------------------------------------------------------------- export, dispatch
def remove_weight_methods(model: nn.Module) -> nn.Module:
    """Bake the effective weights into plain parameters (``leave_parametrized=True``)
    wherever WC, WS or WN is installed; the outputs are unchanged. Other
    parametrizations are left alone, but one stacked on the same tensor as ours is
    refused (removing ours would remove it too). Parameters are new objects afterwards:
    rebuild any optimizer."""
    for label, _, module, tensor in _installed(model):
        if not all(isinstance(p, _ours()) for p in module.parametrizations[tensor]):
            raise ValueError(f"{label}: a weight method is stacked with another parametrization")
        parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
    if _RECORD in model.__dict__:
        object.__delattr__(model, _RECORD)
    return model


def _builders() -> dict:
    from .wc import weight_conditioning

    def none(model, *, include_classifier=False, skip_stem=False):
        return _record(model, "none", {})

    return {"none": none, "wc": weight_conditioning, "ws": weight_standardization,
            "wn": weight_normalization}


def apply_weight_method(model: nn.Module, method: str | None, options: Mapping | None = None) -> nn.Module:
    """Apply a weight method by name, in place; returns ``model``.

    ``method``: one of ``METHODS`` ("none", "wc", "ws", "wn"; ``None`` means "none").
    ``options``: the method's keyword options, e.g. ``cfg.norm[cfg.norm.weight]`` -- for
    wc: side, p, eps, detach, iters, include_classifier, skip_stem; for ws: eps,
    include_classifier, skip_stem; for wn and none: include_classifier, skip_stem.
    Any other key is a ValueError (a misspelt option must not be silently ignored).
    """
    method = "none" if method is None else str(method).lower()
    builders = _builders()
    if method not in builders:
        raise ValueError(f"unknown weight method {method!r}; valid choices: {', '.join(METHODS)}")
    build = builders[method]
    options = dict(options or {})
    valid = [n for n, p in inspect.signature(build).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"weight method {method!r}: unknown options {unknown}; valid: {valid}")
    return build(model, **options)


def describe_weight_method(model: nn.Module) -> dict:
    """What weight method is installed: ``{"method", "options", "num_layers",
    "layers", "untouched_layers"}``. ``layers`` are the qualified names of the
    parametrized layers (``name.in_proj_weight`` for attention input projections);
    ``untouched_layers`` the Conv/Linear layers left plain (classifier, stem). JSON-safe
    (p = inf is written "inf")."""
    installed = _installed(model)
    record = model.__dict__.get(_RECORD)
    if record is None:
        found = sorted({m for _, m, _, _ in installed})
        record = {"method": "+".join(found) or "none", "options": {}}
    layers = [label for label, *_ in installed]
    touched = {id(module) for *_, module, _ in installed}
    untouched = [n for n, m in model.named_modules() if weight_tensor_names(m) and id(m) not in touched]
    return {"method": record["method"], "options": dict(record["options"]),
            "num_layers": len(layers), "layers": layers, "untouched_layers": untouched}

