"""Attention modules ENorm can balance inside: q against k, v against the output projection.

With separate q/k/v/proj linears, q k^T is unchanged by q * d, k / d and (A V) W_o by
v * d, proj / d, per head dimension. A module is balanced only after a numerical check
that it really computes attention that way (no q/k norm, no fused projection).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def is_attention(m: nn.Module) -> bool:
    """Multi-head attention with separate q/k/v/proj linears (wcnorm.models.vit.Attention)."""
    return (all(isinstance(getattr(m, a, None), nn.Linear) for a in ("q", "k", "v", "proj"))
            and isinstance(getattr(m, "num_heads", None), int)
            and isinstance(getattr(m, "head_dim", None), int))


def _first(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def check_attention(name: str, m: nn.Module) -> None:
    """Refuse an attention module whose output is not invariant under the q/k, v/proj rescale
    (a q/k norm, a fused projection, another head layout): checked numerically on a copy."""
    n, dim = m.num_heads * m.head_dim, m.q.in_features
    if not (m.q.out_features == m.k.out_features == m.v.out_features == m.proj.in_features == n
            and m.k.in_features == m.v.in_features == dim):
        raise ValueError(f"ENorm(attention=True): {name} has q/k/v/proj shapes that do not match "
                         f"num_heads * head_dim = {n}")
    g = torch.Generator().manual_seed(0)
    a = copy.deepcopy(m).double().eval()
    x = torch.randn(2, 5, dim, generator=g, dtype=torch.float64)
    d1, d2 = [torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.25 for _ in range(2)]
    with torch.no_grad():
        y0 = _first(a(x))
        for lin, f in ((a.q, d1), (a.k, 1 / d1), (a.v, d2)):
            lin.weight.mul_(f[:, None])
            if lin.bias is not None:
                lin.bias.mul_(f)
        a.proj.weight.div_(d2)
        y1 = _first(a(x))
    err = ((y1 - y0).norm() / y0.norm().clamp_min(1e-300)).item()
    if not err < 1e-9:
        raise ValueError(f"ENorm(attention=True): {name} ({type(m).__name__}) is not invariant "
                         f"under q*d, k/d and v*d, proj/d per head dimension (rel. error {err:.1e}); "
                         "it cannot be balanced")
