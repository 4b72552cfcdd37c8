"""The methods: the weight-level ones by name (WC, and the baselines WS and WN), ENorm
(:mod:`wcnorm.methods.enorm`), and the diagnostics of conditioning
(:mod:`wcnorm.methods.diagnostics`).

A weight-level method is chosen by name, as a config names it::

    apply_weight_method(model, "wc", {"side": "row", "p": 2})

Build the optimizer *after* applying a method (the trainable tensors move under
``<layer>.parametrizations``), and call :func:`remove_weight_methods` to export plain
layers.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from torch import nn
from torch.nn.utils import parametrize

from .baselines import weight_normalization, weight_standardization
from .cancellation import cancellation_line, cancelled_layers, describe_cancellation
from .wc import weight_conditioning
from .weight_method import WeightMethod, installed_methods, weight_tensor_names

__all__ = ["METHODS", "apply_weight_method", "describe_weight_method", "remove_weight_methods",
           "cancelled_layers", "cancellation_line"]


def _none(model: nn.Module, *, include_classifier: bool = False,
                     skip_stem: bool = False) -> nn.Module:
    """The "none" method: the model as it is."""
    return model


# Each method by name, and the function that applies it. Its keyword-only arguments are
# the method's options.
_BUILDERS = {"none": _none, "wc": weight_conditioning, "ws": weight_standardization,
             "wn": weight_normalization}
METHODS = tuple(_BUILDERS)


def apply_weight_method(model: nn.Module, method: str | None, options: Mapping | None = None) -> nn.Module:
    """Apply a weight method by name, in place; returns ``model``.

    ``method``: one of ``METHODS`` ("none", "wc", "ws", "wn"; ``None`` means "none").
    ``options``: the method's keyword options, e.g. ``cfg.norm[cfg.norm.weight]`` -- for
    wc: side, p, eps, detach, iters, include_classifier, skip_stem; for ws: eps,
    include_classifier, skip_stem; for wn and none: include_classifier, skip_stem.
    Any other key is a ValueError (a misspelt option must not be silently ignored).

    Example::

        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> model = apply_weight_method(model, "wc", {"side": "row", "p": 2})
        >>> describe_weight_method(model)["layers"]     # the classifier is left alone
        ['0']
        >>> apply_weight_method(nn.Linear(4, 2), "wc", {"sides": "row"})
        Traceback (most recent call last):
        ValueError: weight method 'wc': unknown options ['sides']; valid: [...]
    """
    method = "none" if method is None else str(method).lower()
    if method not in _BUILDERS:
        raise ValueError(f"unknown weight method {method!r}; valid choices: {', '.join(METHODS)}")
    build = _BUILDERS[method]
    options = dict(options or {})
    valid = [n for n, p in inspect.signature(build).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"weight method {method!r}: unknown options {unknown}; valid: {valid}")
    return build(model, **options)


def remove_weight_methods(model: nn.Module) -> nn.Module:
    """Bake the effective weights into plain parameters (``leave_parametrized=True``)
    wherever WC, WS or WN is installed; the outputs are unchanged. Other
    parametrizations are left alone, but one stacked on the same tensor as ours is
    refused (removing ours would remove it too), before anything is removed.
    Parameters are new objects afterwards: rebuild any optimizer.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> model = apply_weight_method(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), "wc")
        >>> x = torch.randn(3, 4)
        >>> y = model(x)
        >>> model = remove_weight_methods(model)
        >>> type(model[0].weight).__name__, torch.allclose(model(x), y)
        ('Parameter', True)
    """
    installed = installed_methods(model)
    for item in installed:
        if not all(isinstance(p, WeightMethod) for p in item.module.parametrizations[item.tensor]):
            raise ValueError(f"{item.label}: a weight method is stacked with another parametrization")
    for item in installed:
        parametrize.remove_parametrizations(item.module, item.tensor, leave_parametrized=True)
    return model


def describe_weight_method(model: nn.Module) -> dict:
    """What weight method is installed: ``{"method", "options", "num_layers",
    "layers", "untouched_layers", "cancelled_layers", "acting_layers", "cancelled_by",
    "traced", "note"}``. ``layers`` are the qualified names of the
    parametrized layers (``name.in_proj_weight`` for attention input projections);
    ``untouched_layers`` the Conv/Linear layers left plain (classifier, stem);
    ``cancelled_layers`` those of ``layers`` on which a following per-channel
    normalization cancels the method exactly, ``acting_layers`` the rest (see
    :func:`wcnorm.methods.cancellation.describe_cancellation`). JSON-safe
    (p = inf is written "inf").

    ``method`` and ``options`` are those of the one call that installed every method
    found; otherwise (several calls, or parametrizations registered by hand) the
    methods found joined by "+", and no options.

    Example::

        >>> from torch import nn
        >>> model = apply_weight_method(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), "ws")
        >>> info = describe_weight_method(model)
        >>> info["method"], info["options"]["eps"], info["layers"], info["untouched_layers"]
        ('ws', 1e-05, ['0'], ['1'])
    """
    installed = installed_methods(model)
    records = [(item.parametrization.method, item.parametrization.options) for item in installed]
    if records and records[0][1] is not None and all(r == records[0] for r in records):
        method, options = records[0]
    else:
        method, options = "+".join(sorted({m for m, _ in records})) or "none", {}
    touched = {id(item.module) for item in installed}
    return {"method": method, "options": dict(options), "num_layers": len(installed),
            "layers": [item.label for item in installed],
            "untouched_layers": [n for n, m in model.named_modules()
                                 if weight_tensor_names(m) and id(m) not in touched],
            **describe_cancellation(model)}
