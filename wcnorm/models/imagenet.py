"""ImageNet-size variants (image_size > 64): torchvision's own definitions.

Always built with ``weights=None`` (nothing is ever downloaded); the normalization
is swapped by `layers.swap_norm`; GoogLeNet has no auxiliary heads. Two changes
keep these models in line with the project's conventions, without changing their
function class or parameter count:

- ``in_channels != 3`` replaces the stem (first) conv by one with that many inputs;
- the ViT-B/16's ``nn.MultiheadAttention`` (one packed in-projection) is replaced
  by `vit.Attention` (separate q/k/v/proj linears) holding the same weights.

The ``width`` option exists here only so one model config serves both sizes: it must
be 1. torchvision's constructors have no channel multiplier (ResNet's
``width_per_group`` widens only the bottleneck's inner conv; DenseNet and GoogLeNet
fix their widths), and a narrower ViT-B/16 would no longer be the ViT-B/16.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import WIDTH, init_cnn, swap_norm
from .resnet import scale_residual_branches
from .vit import Attention

DEFAULTS = {"width": WIDTH}  # every model's options
VIT_OPTIONS = {"dropout": 0.0}  # and the ViT's own (passed to torchvision's vit_b_16)
VIT_PATCH = 16


class TorchvisionAttention(Attention):
    """`Attention` with nn.MultiheadAttention's call signature, for torchvision's EncoderBlock."""

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> TorchvisionAttention:
        assert mha.batch_first and mha._qkv_same_embed_dim
        attn = cls(mha.embed_dim, mha.num_heads, attn_drop=mha.dropout)
        with torch.no_grad():
            for lin, w, b in zip((attn.q, attn.k, attn.v), mha.in_proj_weight.chunk(3),
                                 mha.in_proj_bias.chunk(3)):
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            attn.proj.weight.copy_(mha.out_proj.weight)
            attn.proj.bias.copy_(mha.out_proj.bias)
        return attn

    def forward(self, query, key=None, value=None, need_weights=False):
        return super().forward(query), None


def _replace_stem(model: nn.Module, in_channels: int, gain: float) -> None:
    # He (gain 2) for the CNN stems, LeCun (gain 1) for the ViT's linear patch projection
    parent, name, old = next((p, n, c) for p in model.modules() for n, c in p.named_children()
                             if isinstance(c, nn.Conv2d))
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    bias=old.bias is not None)
    nn.init.trunc_normal_(new.weight, std=math.sqrt(gain / new.weight[0].numel()))
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    setattr(parent, name, new)


def build(name: str, num_classes: int, in_channels: int, act_norm: str, image_size: int,
          width: float = WIDTH, **options) -> nn.Module:
    assert width == WIDTH, "torchvision's models have no width multiplier"
    # torchvision here, not at the top: importing it takes seconds, and only these models need it
    import torchvision.models as tvm

    if name == "vit":
        model = tvm.vit_b_16(weights=None, num_classes=num_classes, image_size=image_size,
                             **{**VIT_OPTIONS, **options})
        for block in model.encoder.layers:
            block.self_attention = TorchvisionAttention.from_mha(block.self_attention)
    elif name == "googlenet":
        model = tvm.googlenet(weights=None, num_classes=num_classes, aux_logits=False,
                              init_weights=True)
    else:
        model = getattr(tvm, name)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_stem(model, in_channels, 1.0 if name == "vit" else 2.0)
    swap_norm(model, act_norm)
    if act_norm == "none" and name != "vit":  # re-init for a network without norm layers
        init_cnn(model, act_norm)
        if name.startswith("resnet"):
            scale_residual_branches(model)
    return model
