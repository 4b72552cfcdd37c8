"""Shared building blocks: the activation-normalization factory and standard inits.

Every architecture in the zoo asks this module for its normalization layers, so
that `act_norm` means the same thing everywhere:

- ``"bn"``   -> ``nn.BatchNorm1d/2d``
- ``"gn"``   -> ``nn.GroupNorm`` with 32 groups, or the largest divisor of the
  channel count that is <= 32 (so 24 channels get 24 groups, 500 features 25)
- ``"ln"``   -> ``nn.LayerNorm`` (transformers only)
- ``"none"`` -> ``nn.Identity``

A conv/linear layer whose output feeds a normalization layer has no bias (the
norm's shift makes it redundant); with ``act_norm="none"`` the same layer gets a
bias, because the architecture then needs it (`use_bias`).

The ``width`` option of the CIFAR-size models multiplies their channel counts
(`scaled`); width 1 is the published architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modules import NORM_LAYERS

ACT_NORMS = ("bn", "gn", "ln", "none")
GN_MAX_GROUPS = 32
WIDTH = 1.0  # the published architectures' channel multiplier


class ModelConfigError(ValueError):
    """A model was asked for with a configuration it cannot be built with."""


def gn_groups(channels: int, max_groups: int = GN_MAX_GROUPS) -> int:
    """Largest divisor of `channels` that is <= `max_groups`."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def scaled(channels: int, width: float) -> int:
    """`channels` times the width multiplier, rounded to the nearest integer (ties to
    even, as Python's `round`) and at least 1, so every layer keeps a channel.
    Any count is valid for every norm: `gn_groups` picks a divisor of it."""
    return max(1, round(channels * width))


def use_bias(kind: str) -> bool:
    """Conv/linear layers feeding a norm layer need no bias; without norm they do."""
    return kind == "none"


def norm2d(kind: str, channels: int) -> nn.Module:
    """Normalization layer for NCHW feature maps."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(gn_groups(channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ModelConfigError(f"act_norm={kind!r} is not available for conv layers; use 'bn', 'gn' or 'none'")


def norm1d(kind: str, features: int) -> nn.Module:
    """Normalization layer for (N, C) features (and (N, L, C) tokens for 'ln')."""
    if kind == "bn":
        return nn.BatchNorm1d(features)
    if kind == "gn":
        return nn.GroupNorm(gn_groups(features), features)
    if kind == "ln":
        return nn.LayerNorm(features)
    if kind == "none":
        return nn.Identity()
    raise ModelConfigError(f"unknown act_norm={kind!r}; choose one of {ACT_NORMS}")


class ConvNormAct(nn.Sequential):
    """conv -> norm -> ReLU, with the bias rule applied (named conv / norm / act)."""

    def __init__(self, cin: int, cout: int, kernel: int, act_norm: str, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=use_bias(act_norm))
        self.norm = norm2d(act_norm, cout)
        self.act = nn.ReLU()


def init_cnn(model: nn.Module, act_norm: str = "bn") -> None:
    """Standard CNN init: Kaiming-normal convs, zero biases, norm layers weight 1 /
    bias 0; linear layers keep PyTorch's default weight init.

    With a norm layer the convs use fan_out (as torchvision); without one they use
    fan_in, which preserves the forward signal's scale, the only thing keeping an
    un-normalized network's activations from exploding or vanishing with depth.
    """
    mode = "fan_in" if act_norm == "none" else "fan_out"
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        elif isinstance(m, NORM_LAYERS) and m.weight is not None:
            nn.init.ones_(m.weight)
        if isinstance(m, (nn.Conv2d, nn.Linear, *NORM_LAYERS)) and getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


def swap_norm(model: nn.Module, kind: str) -> nn.Module:
    """Swap the normalization of a torchvision-style model in place and return it.

    ``"bn"`` and ``"ln"`` keep the model's own layers. ``"gn"`` replaces every
    BatchNorm2d by a GroupNorm (same affine parameter count). ``"none"`` replaces
    every normalization layer (BatchNorm, LayerNorm, any `NORM_LAYERS`) by
    ``nn.Identity`` and gives every bias-less
    conv/linear layer a zero-initialised bias: in torchvision models a layer has no
    bias exactly because a BatchNorm follows (or, in DenseNet, normalizes) its output.
    """
    if kind not in ACT_NORMS:
        raise ModelConfigError(f"unknown act_norm={kind!r}; choose one of {ACT_NORMS}")
    if kind in ("bn", "ln"):
        return model
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if kind == "gn" and isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.GroupNorm(gn_groups(child.num_features), child.num_features))
            elif kind == "none" and isinstance(child, NORM_LAYERS):
                setattr(parent, name, nn.Identity())
    if kind == "none":
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is None:
                m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], device=m.weight.device))
    return model
