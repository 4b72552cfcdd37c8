"""The weight-level baselines WC is compared with: weight standardization (WS) and
weight normalization (WN), both on the layers of :func:`wcnorm.methods.base.weight_layers`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import WeightMethod, install

__all__ = [
    "WeightStandardization",
    "WeightNormalization",
    "weight_standardization",
    "weight_normalization",
]


class WeightStandardization(WeightMethod):
    """Parametrization W -> (W - mean) / (std + eps) per output channel, over
    C_in*kh*kw (Qiao et al. 2019), for layers followed by BN or GN (spec section 3).
    The std is the population std (no Bessel correction): W_eff rows have exactly zero
    mean and, up to eps, unit std."""

    method = "ws"

    def __init__(self, *, eps: float = 1e-5):
        super().__init__()
        self.eps = float(eps)

    def forward(self, W: Tensor) -> Tensor:
        A = W.reshape(W.shape[0], -1)
        std, mean = torch.std_mean(A, dim=1, correction=0, keepdim=True)
        return ((A - mean) / (std + self.eps)).reshape(W.shape)

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"


class WeightNormalization(WeightMethod):
    """Parametrization (g, V) -> g V / ||V|| per output unit (Salimans & Kingma 2016),
    as torch's ``weight_norm(dim=0)`` computes it: the trainable tensors are the gain g
    (``parametrizations.weight.original0``) and the direction V (``original1``).
    ``right_inverse`` starts g at the row norms of W and V at W, so the function is
    unchanged at application time."""

    method = "wn"
    scales_rows = True  # g_i v_i / ||v_i||, with g_i > 0 from its init on (a BN after it leaves g's gradient zero)

    def forward(self, g: Tensor, V: Tensor) -> Tensor:
        return torch._weight_norm(V, g, 0)  # torch's fused g * V / ||V||, norms over dims 1..

    def right_inverse(self, W: Tensor) -> tuple[Tensor, Tensor]:
        return torch.norm_except_dim(W, 2, 0), W


def weight_standardization(model: nn.Module, *, eps: float = 1e-5, include_classifier: bool = False,
                           skip_stem: bool = False) -> nn.Module:
    """Register :class:`WeightStandardization` on the layers of ``weight_layers``, in
    place; returns ``model``."""
    return install(model, lambda layer: WeightStandardization(eps=eps), dict(eps=eps),
                   include_classifier=include_classifier, skip_stem=skip_stem)


def weight_normalization(model: nn.Module, *, include_classifier: bool = False,
                         skip_stem: bool = False) -> nn.Module:
    """Register :class:`WeightNormalization` on the layers of ``weight_layers``, in
    place; returns ``model``. WC row/p=2 is this with g fixed at 1."""
    return install(model, lambda layer: WeightNormalization(), {},
                   include_classifier=include_classifier, skip_stem=skip_stem)
