"""The weight-level baselines WC is compared with: weight standardization (WS) and
weight normalization (WN), both on the layers of :func:`wcnorm.methods.weight_method.weight_layers`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .weight_method import WeightMethod, install

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


def weight_standardization(model: nn.Module, name: str | None = None, *, eps: float = 1e-5,
                           include_classifier: bool = False, skip_stem: bool = False) -> nn.Module:
    """Register :class:`WeightStandardization` on one layer, or on the layers of
    ``weight_layers`` of a model, in place; returns ``model``. A layer or a model, and
    ``name``: as in :func:`wcnorm.methods.wc.weight_conditioning`.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> conv = weight_standardization(nn.Conv2d(3, 8, 3))
        >>> rows = conv.weight.flatten(1)
        >>> bool(rows.mean(1).abs().max() < 1e-6), bool((rows.std(1, correction=0) - 1).abs().max() < 1e-3)
        (True, True)
    """
    return install(model, lambda layer: WeightStandardization(eps=eps), dict(eps=eps), name=name,
                   include_classifier=include_classifier, skip_stem=skip_stem)


def weight_normalization(model: nn.Module, name: str | None = None, *, include_classifier: bool = False,
                         skip_stem: bool = False) -> nn.Module:
    """Register :class:`WeightNormalization` on one layer, or on the layers of
    ``weight_layers`` of a model, in place; returns ``model``. A layer or a model, and
    ``name``: as in :func:`wcnorm.methods.wc.weight_conditioning`. WC row/p=2 is this
    with g fixed at 1.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(5, 3)
        >>> before = layer.weight.detach().clone()
        >>> layer = weight_normalization(layer)      # the function is unchanged...
        >>> torch.allclose(layer.weight, before)
        True
        >>> g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
        >>> tuple(g.shape), tuple(v.shape)          # ...and the gain g is trained apart from V
        ((3, 1), (3, 5))
    """
    return install(model, lambda layer: WeightNormalization(), {}, name=name,
                   include_classifier=include_classifier, skip_stem=skip_stem)
