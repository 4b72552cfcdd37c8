"""The model zoo: one name, one image size, one activation normalization -> a model.

``build_model(name, num_classes=..., image_size=..., act_norm=..., **options)``
builds the project's CIFAR-size definition when ``image_size <= 64`` (these run at
32x32 and 64x64 thanks to adaptive pooling) and torchvision's ImageNet-size one
when ``image_size > 64`` (``weights=None``, never downloaded). ``enorm_fc`` and
``enorm_fullconv`` exist only as the project's definitions, at any size.
``check_model`` validates a configuration without building anything; every
problem is a `ModelConfigError` that names the valid choices.

The coordinate MLPs of neural fields (`fields`: NeRF and the occupancy MLP, named in
``FIELD_MODELS``) read points, not images: `fields.build` makes them, and the
conventions below, but for the named output layers (``wcnorm_classifier``), are not
theirs.

Conventions the rest of wcnorm relies on:

- Input is NCHW float, output is logits of shape (N, num_classes).
- The stem is the FIRST and the classifier the LAST `nn.Conv2d`/`nn.Linear` in
  ``model.modules()`` order; no auxiliary heads are registered.
- CNNs use `nn.ReLU` modules (one per position, never shared, never in-place),
  not functional calls, so activations can be hooked and the graph read.
- The CIFAR-size models are traceable by ``torch.fx.symbolic_trace``.
- A conv/linear layer that feeds a normalization layer has no bias; with
  ``act_norm="none"`` it has one (see `layers`). The ENorm paper nets are the
  exception: they never have biases.
- GroupNorm uses 32 groups, or the largest divisor of the channels <= 32.
- Attention (ViT, both sizes) uses separate ``q``/``k``/``v``/``proj`` linears.
- ``width`` (default 1, the published model) multiplies the channels of the
  CIFAR-size CNNs (the ENorm paper's fully convolutional net too) and the ViT's
  embedding dim; each count is rounded by
  `layers.scaled` (nearest integer, at least 1). It must be a finite number > 0,
  and exactly 1 at ImageNet size: torchvision's definitions have no multiplier.
  (``enorm_fc``'s ``width`` is its hidden layers' unit count, a different option.)
"""

from __future__ import annotations

import math
import numbers

from torch import nn

from . import densenet, enorm_nets, googlenet, imagenet, resnet, vit
from .coordinate_mlps import FIELD_MODELS
from .layers import ACT_NORMS, WIDTH, ModelConfigError, gn_groups, norm1d, norm2d, swap_norm

__all__ = ["MODELS", "FIELD_MODELS", "ACT_NORMS", "CIFAR_MAX_SIZE", "ModelConfigError", "supported_act_norms",
           "check_model", "build_model", "count_parameters", "default_options", "is_torchvision",
           "gn_groups", "norm1d", "norm2d", "swap_norm"]

MODELS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "densenet121", "googlenet", "vit",
                           "enorm_fc", "enorm_fullconv")
CIFAR_MAX_SIZE = 64  # image_size above this -> torchvision's ImageNet-size definition
CNN_NORMS = ("bn", "gn", "none")
VIT_NORMS = ("ln", "none")
MIN_CNN_SIZE = 8  # three 2x down-samplings must leave at least one pixel

_CIFAR = {"resnet18": resnet, "resnet34": resnet, "resnet50": resnet, "densenet121": densenet,
          "googlenet": googlenet, "vit": vit}
_ENORM = ("enorm_fc", "enorm_fullconv")


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ModelConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def supported_act_norms(name: str) -> tuple[str, ...]:
    """The act_norm values a model accepts (its first one is its usual norm)."""
    _check_name(name)
    return VIT_NORMS if name == "vit" else CNN_NORMS


def is_torchvision(name: str, image_size: int) -> bool:
    """Whether `build_model` gives torchvision's ImageNet-size definition."""
    return name not in _ENORM and image_size > CIFAR_MAX_SIZE


def default_options(name: str, image_size: int = 32) -> dict:
    """The options a model accepts at that image size, with their defaults."""
    _check_name(name)
    if name == "enorm_fc":
        return dict(enorm_nets.FC_DEFAULTS)
    if name == "enorm_fullconv":
        return dict(enorm_nets.FULLCONV_DEFAULTS)
    if is_torchvision(name, image_size):
        return {**imagenet.DEFAULTS, **(imagenet.VIT_OPTIONS if name == "vit" else {})}
    return dict(_CIFAR[name].DEFAULTS)


def _check_types(name: str, options: dict, defaults: dict) -> None:
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise ModelConfigError(f"model {name!r} got unknown option(s) {unknown}; valid options: {valid}")
    for key, value in options.items():
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            kind = "number" if isinstance(default, float) else type(default).__name__
            raise ModelConfigError(f"model {name!r}: option {key}={value!r} must be a "
                                   f"{kind} (default {default!r})")


def _check_width(name: str, image_size: int, width: float) -> None:
    if not (math.isfinite(width) and width > 0):
        raise ModelConfigError(f"{name}: width={width!r} must be a finite number > 0 (the channel "
                               f"multiplier; {WIDTH:g} is the published model, 0.5 halves every layer)")
    if is_torchvision(name, image_size) and width != WIDTH:
        raise ModelConfigError(
            f"{name} at image_size={image_size} is torchvision's ImageNet-size definition, which has "
            f"no width multiplier: width must be {WIDTH:g}, got {width!r}; width applies at "
            f"image_size <= {CIFAR_MAX_SIZE} (the CIFAR-size definitions)")


def _check_vit(image_size: int, o: dict) -> None:
    for key in ("patch_size", "dim", "depth", "heads"):
        if o[key] < 1:
            raise ModelConfigError(f"vit: {key} must be >= 1, got {o[key]}")
    if o["mlp_ratio"] <= 0:
        raise ModelConfigError(f"vit: mlp_ratio must be > 0, got {o['mlp_ratio']}")
    if o["dim"] % o["heads"]:
        raise ModelConfigError(f"vit: dim={o['dim']} is not divisible by heads={o['heads']}; "
                               "pick heads among the divisors of dim")
    if image_size % o["patch_size"]:
        raise ModelConfigError(f"vit: patch_size={o['patch_size']} does not divide image_size="
                               f"{image_size}; use a patch size that divides it (e.g. 4 for 32x32)")
    if o["pool"] not in vit.POOLS:
        raise ModelConfigError(f"vit: pool={o['pool']!r}; choose one of {vit.POOLS}")


def check_model(name: str, *, image_size: int, act_norm: str = "bn", **options) -> None:
    """Raise `ModelConfigError` if the model cannot be built like this (builds nothing)."""
    _check_name(name)
    norms = supported_act_norms(name)
    if act_norm not in norms:
        hint = " (the ViT's own norm is LayerNorm: 'ln')" if name == "vit" else ""
        raise ModelConfigError(f"model {name!r} does not support act_norm={act_norm!r}; "
                               f"choose one of {norms}{hint}")
    if not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise ModelConfigError(f"image_size must be a positive integer, got {image_size!r}")
    defaults = default_options(name, image_size)
    _check_types(name, options, defaults)
    o = {**defaults, **options}
    if name != "enorm_fc":  # enorm_fc's own width (a unit count) is checked below
        _check_width(name, image_size, o["width"])
    if name in _ENORM:
        if name == "enorm_fc" and (o["depth"] < 0 or o["width"] < 1):
            raise ModelConfigError(f"enorm_fc: need depth >= 0 and width >= 1, got {o}")
        if name == "enorm_fullconv" and o["official_quirk"] and image_size != enorm_nets.QUIRK_IMAGE_SIZE:
            raise ModelConfigError(
                f"enorm_fullconv with official_quirk=True only works on {enorm_nets.QUIRK_IMAGE_SIZE}x"
                f"{enorm_nets.QUIRK_IMAGE_SIZE} inputs (its AvgPool2d(5) must see a 9x9 map), got "
                f"image_size={image_size}; use 28 (random 28x28 crops) or official_quirk=False")
    elif is_torchvision(name, image_size):
        if name == "vit" and image_size % imagenet.VIT_PATCH:
            raise ModelConfigError(f"vit at image_size > {CIFAR_MAX_SIZE} is torchvision's ViT-B/16: "
                                   f"image_size={image_size} must be a multiple of 16 (e.g. 224)")
        if "dropout" in o and not 0 <= o["dropout"] < 1:
            raise ModelConfigError(f"{name}: dropout must be in [0, 1), got {o['dropout']}")
    elif name == "vit":
        _check_vit(image_size, o)
        if not 0 <= o["dropout"] < 1:
            raise ModelConfigError(f"vit: dropout must be in [0, 1), got {o['dropout']}")
    elif image_size < MIN_CNN_SIZE:
        raise ModelConfigError(f"{name} needs image_size >= {MIN_CNN_SIZE}, got {image_size}")


def build_model(name: str, *, num_classes: int, image_size: int, in_channels: int = 3,
                act_norm: str = "bn", **options) -> nn.Module:
    """Build a freshly initialised model (see the module docstring for the conventions)."""
    check_model(name, image_size=image_size, act_norm=act_norm, **options)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ModelConfigError(f"{key} must be a positive integer, got {value!r}")
    args = dict(num_classes=int(num_classes), in_channels=int(in_channels), act_norm=act_norm)
    if name in _ENORM:
        return enorm_nets.build(name, image_size=image_size, **args, **options)
    if is_torchvision(name, image_size):
        return imagenet.build(name, image_size=image_size, **args, **options)
    if name == "vit":
        return vit.build(name, image_size=image_size, **args, **options)
    return _CIFAR[name].build(name, **args, **options)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (distinct) parameters, all of them unless `trainable_only`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
