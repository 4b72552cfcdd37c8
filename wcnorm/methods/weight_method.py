"""What every weight-level method shares: which layers it touches, how it is installed,
and how it is found again.

A weight-level method (WC in :mod:`wcnorm.methods.wc`, WS and WN in
:mod:`wcnorm.methods.baselines`) is a :class:`WeightMethod`, a
``torch.nn.utils.parametrize`` parametrization of the weight of the layers chosen by
:func:`weight_layers`. The raw weights stay the trainable parameters
(``<layer>.parametrizations.weight.original``); the effective weight is recomputed on
every forward. :func:`install` is the one walk that registers a method on a model.
:func:`effective_weights` computes a model's effective weights once, all together, for
a training step or an evaluation.

This module imports nothing of wcnorm: the methods sit on it, and the dispatch by name
(:mod:`wcnorm.methods`) sits on them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import ClassVar, NamedTuple

from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "WeightMethod",
    "Installed",
    "weight_tensor_names",
    "weight_layers",
    "installed_methods",
    "install",
    "json_safe",
    "effective_weights",
]


class WeightMethod(nn.Module):
    """Base of the weight-level parametrizations: ``forward`` maps the trainable raw
    tensor(s) to the effective weight.

    ``method`` is the method's short name ("wc", "ws", "wn"). ``options`` holds what
    :func:`install` was asked (the method's options and the layer selection, JSON-safe),
    or ``None`` for a parametrization registered by hand. The record lives on the
    parametrization, so it travels with the layer (``copy.deepcopy``) and goes away
    with it (:func:`wcnorm.methods.remove_weight_methods`).
    """

    method: ClassVar[str]
    options: dict | None = None
    # True where the effective weight is a positive scale of each raw row (row WC of any
    # p, WN): a per-channel normalization after the layer then cancels the method
    # exactly (see :mod:`wcnorm.methods.cancellation`).
    scales_rows: ClassVar[bool] = False

    def check(self, label: str, weight: Tensor) -> None:
        """Called by :func:`install` before registering on ``weight`` (the layer
        ``label``): warn about, or refuse, a weight the method cannot train. Default:
        every weight is fine."""

    def batch_key(self) -> Hashable | None:
        """Parametrizations of one class with equal keys compute their effective weights
        together, in one call of :meth:`forward_batch` (see :func:`effective_weights`);
        ``None`` (the default): one by one, through ``forward``."""
        return None

    @classmethod
    def forward_batch(cls, key: Hashable, tensors: Sequence[Tensor]) -> Sequence[Tensor]:
        """``[forward(W) for W in tensors]`` for parametrizations whose batch key is ``key``,
        as one call: bitwise the same values and gradients."""
        raise NotImplementedError(f"{cls.__name__} has a batch key but no forward_batch")


class Installed(NamedTuple):
    """One tensor carrying a weight method."""

    label: str  # the layer's qualified name; "<layer>.<tensor>" for a tensor other than weight
    module: nn.Module
    tensor: str
    parametrization: WeightMethod


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


def _label(name: str, tensor: str) -> str:
    return name if tensor == "weight" else f"{name}.{tensor}".lstrip(".")


# ------------------------------------------------------------------- registration
def installed_methods(model: nn.Module) -> list[Installed]:
    """Every tensor of ``model`` carrying a weight method, in module order (the first
    method of its parametrization list, should a foreign one sit beside it)."""
    out = []
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor, plist in module.parametrizations.items():
            ours = [p for p in plist if isinstance(p, WeightMethod)]
            if ours:
                out.append(Installed(_label(name, tensor), module, tensor, ours[0]))
    return out


def json_safe(options: Mapping) -> dict:
    """``options`` as JSON can hold them: p = inf as "inf", whole floats as ints."""
    def conv(v):
        if isinstance(v, float) and math.isinf(v):
            return "inf"
        if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
            return int(v) if v != 0 else v
        return v

    return {k: conv(v) for k, v in options.items()}


def _layer_targets(layer: nn.Module, name: str | None, skip_stem: bool) -> list[tuple[str, nn.Module, str]]:
    """The tensors of one layer that a method is installed on (see :func:`install`)."""
    if skip_stem:
        raise ValueError(f"skip_stem=True selects layers of a model; {type(layer).__name__} is "
                         "conditioned as one layer (drop skip_stem, or pass the model)")
    tensors = weight_tensor_names(layer) if name is None else (name,)
    for tensor in tensors:
        value = getattr(layer, tensor, None)
        if not isinstance(value, Tensor) or value.dim() < 2:
            raise ValueError(f"{type(layer).__name__} has no weight matrix {tensor!r} (a tensor of >= 2 "
                             f"dims); its parameters: {[n for n, _ in layer.named_parameters(recurse=False)]}")
    return [(_label("", tensor), layer, tensor) for tensor in tensors]


def install(model: nn.Module, make: Callable[[nn.Module], WeightMethod], options: Mapping, *,
            name: str | None = None, include_classifier: bool = False,
            skip_stem: bool = False) -> nn.Module:
    """Register ``make(layer)`` on weight tensors of ``model``, in place; returns ``model``.
    Each parametrization records ``options`` and the layer selection.

    A layer is conditioned, a model is walked, as ``torch.nn.utils.parametrizations``
    acts on one module:

    * **one layer** -- ``model`` is itself a Conv/Linear/MultiheadAttention, or ``name``
      is given: the tensor ``name`` of ``model`` (default: its weight matrices, see
      :func:`weight_tensor_names`), whatever its place in a larger model;
    * **a model** -- otherwise: every weight tensor of :func:`weight_layers`.

    Two weight methods are never stacked on one tensor (the second would condition the
    first's output, a method of its own): a model where any target already carries one
    is refused before anything is registered."""
    if name is not None or weight_tensor_names(model):
        targets = _layer_targets(model, name, skip_stem)
        record = json_safe(dict(options))
    else:
        targets = [(_label(layer_name, tensor), module, tensor)
                   for layer_name, module in weight_layers(model, include_classifier=include_classifier,
                                                           skip_stem=skip_stem)
                   for tensor in weight_tensor_names(module)]
        record = json_safe(dict(options, include_classifier=include_classifier, skip_stem=skip_stem))
    for label, module, tensor in targets:
        if parametrize.is_parametrized(module, tensor) and any(
                isinstance(p, WeightMethod) for p in module.parametrizations[tensor]):
            raise ValueError(f"{label or 'the layer'} ({type(module).__name__}.{tensor}) already has a "
                             "weight method; call remove_weight_methods(model) first")
    for label, module, tensor in targets:
        parametrization = make(module)
        parametrization.check(label, getattr(module, tensor))
        parametrization.options = dict(record)
        parametrize.register_parametrization(module, tensor, parametrization)
    return model


# ----------------------------------------------------------- one step's effective weights
def _batchable(module: nn.Module, tensor: str):
    """The parametrization of ``module.<tensor>`` when it can join a batch: a lone weight
    method with a batch key over a single raw tensor; else None."""
    plist = module.parametrizations[tensor]
    method = plist[0]
    if len(plist) == 1 and plist.is_tensor and isinstance(method, WeightMethod):
        return method if method.batch_key() is not None else None
    return None


@contextmanager
def effective_weights(model: nn.Module, *, batched: bool = True) -> Iterator[None]:
    """``torch.nn.utils.parametrize.cached()``, with every parametrized weight of ``model``
    computed on entry, all together, and reused by every call of its layer inside.
    ``batched=False``: ``parametrize.cached()`` alone, each weight computed at its layer's
    first call (the lazy path; the bench times it against the batched one).

    Why all together: a method's own work is a handful of small ops per layer. Run lazily,
    each layer's ops wait for its first call, between the network's large matrix
    products, and pay for cold caches and the Python path of a parametrization call
    each time; the NeRF field MLP's step (12 small layers) measured several percent slower
    that way than with the same ops run first, back to back (docs/performance.md).
    Parametrizations that share a batch key (:meth:`WeightMethod.batch_key`; row WC with
    p = 2) run as one call, one autograd node; the others are computed one by one on
    entry. Values and gradients are bitwise those of the lazy path; a layer the forward
    does not call gets no gradient, as before. A batch's results are placed in torch's
    own cache (``parametrize._cache``, keyed as ``get_parametrized`` reads it; the tests
    check that a layer then returns them); a torch without that cache gets every weight
    computed up front through its parametrization instead.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from wcnorm.methods import apply_weight_method
        >>> model = apply_weight_method(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "wc")
        >>> with effective_weights(model):
        ...     loss = model(torch.randn(3, 4)).square().sum()
        >>> loss.backward()
        >>> model[0].parametrizations.weight.original.grad.shape
        torch.Size([8, 4])
    """
    with parametrize.cached():
        if not batched:
            yield
            return
        cache = getattr(parametrize, "_cache", None)  # torch's cache of the effective weights
        batches = defaultdict(list)
        for module in model.modules():
            if not parametrize.is_parametrized(module):
                continue
            for tensor in module.parametrizations:
                method = _batchable(module, tensor) if isinstance(cache, dict) else None
                if method is None:
                    getattr(module, tensor)  # computed, and cached, through the parametrization
                elif (id(module), tensor) not in cache:  # an enclosing cached() may hold it already
                    batches[type(method), method.batch_key()].append((module, tensor))
        for (cls, key), members in batches.items():
            outs = cls.forward_batch(key, [m.parametrizations[t].original for m, t in members])
            for (module, tensor), out in zip(members, outs):
                parametrize._cache[(id(module), tensor)] = out  # the key get_parametrized reads
        yield
