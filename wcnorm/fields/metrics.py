"""Scores of neural fields: PSNR and SSIM of rendered views, IoU of occupancy.

PSNR and SSIM take images with values in [0, 1] (data range 1). A scene's score is the
mean of its views' scores, as the NeRF paper reports it: call these per view.

SSIM is the standard setting of Wang et al. (2004), the one NeRF's code evaluates with
(``tf.image.ssim``): an 11x11 Gaussian window of standard deviation 1.5, K1 = 0.01,
K2 = 0.03, population (not sample) covariances, averaged over the window positions
that lie wholly inside the image and over the colour channels. It equals
scikit-image's ``structural_similarity(..., data_range=1, channel_axis=-1,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``; it is written in
torch so that it runs on the device the renders are on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SSIM_SIGMA", "SSIM_RADIUS", "psnr", "ssim", "iou"]

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # scipy's Gaussian truncation at 3.5 sigma: int(3.5 * 1.5 + 0.5) = 5 -> 11 taps
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB for a data range of 1: -10 log10(MSE)."""
    return -10.0 * torch.log10(F.mse_loss(pred, target))


def _gaussian_window(dtype, device) -> Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype, device=device)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return g / g.sum()


def _blur(x: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian filter over the valid positions of (C, 1, H, W) images."""
    x = F.conv2d(x, window.reshape(1, 1, -1, 1))
    return F.conv2d(x, window.reshape(1, 1, 1, -1))


def _channels(image: Tensor) -> Tensor:
    """(H, W, C) or (H, W) -> (C, 1, H, W): each channel scored on its own."""
    return (image if image.dim() == 3 else image[..., None]).permute(2, 0, 1)[:, None]


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Structural similarity of two (H, W, C) or (H, W) images in [0, 1] (see the
    module docstring); both sides must be at least 11 pixels."""
    if pred.shape != target.shape:
        raise ValueError(f"ssim needs images of the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if min(pred.shape[:2]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"ssim needs images of at least {2 * SSIM_RADIUS + 1} pixels a side, "
                         f"got {tuple(pred.shape[:2])}")
    x, y = _channels(pred), _channels(target)
    window = _gaussian_window(x.dtype, x.device)
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mu_x**2
    var_y = _blur(y * y, window) - mu_y**2
    cov = _blur(x * y, window) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean()


def iou(pred: Tensor, target: Tensor) -> float:
    """Intersection over union of two boolean occupancy sets (e.g. ``logits > 0``, i.e.
    probability > 0.5, against the labels). Two empty sets agree everywhere: 1."""
    pred, target = pred.bool(), target.bool()
    union = (pred | target).sum().item()
    return 1.0 if union == 0 else (pred & target).sum().item() / union

