"""A small Vision Transformer for 32x32 / 64x64 images (Dosovitskiy et al. 2021).

Default size (every value overridable through `build_model(..., **options)`):
patch 4 (64 tokens at 32x32), embedding dim ``dim=384``, ``depth=7`` blocks, ``heads=6``
of 64 dims, ``mlp_ratio=4``, ``dropout=0``: DeiT-S width at the depth of the
ViT-Lite-7/4 CIFAR models (Hassani et al. 2021), about 12.4M parameters. Pre-LN
blocks; a class token is classified by default (``pool="cls"``, as in ViT-B/16),
``pool="mean"`` averages the patch tokens instead. Learned position embeddings.

``width`` scales each head's dimension and keeps the heads: the embedding dim becomes
``heads * scaled(dim // heads, width)`` (`layers.scaled`), the multiple of ``heads``
nearest to ``dim * width`` and at least ``heads`` (one dim per head), so the heads
always divide it; the MLP's hidden width follows (``mlp_ratio`` times it).
``depth`` and ``heads`` are options of their own.

Attention uses separate `q`, `k`, `v`, `proj` linears (not a packed in-projection)
so per-layer methods (weight conditioning, ENorm's q/k and v/proj balancing) see
each projection as its own `nn.Linear`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import WIDTH, norm1d, scaled

DEFAULTS = {"patch_size": 4, "dim": 384, "depth": 7, "heads": 6, "mlp_ratio": 4.0,
            "dropout": 0.0, "pool": "cls", "width": WIDTH}
POOLS = ("cls", "mean")


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/proj linears and fused SDPA."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, H, N, D)
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        # `self.training` is read at call time (eagerly) or at trace time (torch.fx)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, act_norm: str):
        super().__init__()
        self.norm1 = norm1d(act_norm, dim)
        self.attn = Attention(dim, heads, dropout, dropout)
        self.norm2 = norm1d(act_norm, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, num_classes: int, image_size: int = 32, in_channels: int = 3,
                 act_norm: str = "ln", patch_size: int = 4, dim: int = 384, depth: int = 7,
                 heads: int = 6, mlp_ratio: float = 4.0, dropout: float = 0.0, pool: str = "cls",
                 width: float = WIDTH):
        super().__init__()
        assert image_size % patch_size == 0 and pool in POOLS and dim % heads == 0
        dim = heads * scaled(dim // heads, width)
        self.pool = pool
        num_tokens = (image_size // patch_size) ** 2 + (pool == "cls")
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, dropout, act_norm) for _ in range(depth)))
        self.norm = norm1d(act_norm, dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # timm/torchvision-style: truncated normal 0.02 for linears and embeddings,
        # LeCun normal for the patch projection; zero biases, LayerNorm 1/0.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        fan_in = self.patch_embed.weight[0].numel()
        nn.init.trunc_normal_(self.patch_embed.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        x = self.norm(self.blocks(self.drop(x + self.pos_embed)))
        x = x[:, 0] if self.cls_token is not None else x.mean(1)
        return self.head(x)


def build(name: str, num_classes: int, in_channels: int, act_norm: str, image_size: int,
          **options) -> ViT:
    assert name == "vit"
    return ViT(num_classes, image_size, in_channels, act_norm, **{**DEFAULTS, **options})
