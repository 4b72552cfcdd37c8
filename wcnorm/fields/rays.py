"""Camera rays: one ray per pixel of a pinhole camera, and NeRF's NDC rays.

Cameras follow the OpenGL convention of the Blender scenes: a camera-to-world matrix
``c2w`` (3x4 or 4x4) whose columns are the camera's x (right), y (up) and z (back)
axes and its centre; the camera looks down its -z axis. The principal point is the
image centre and the focal length is in pixels.

Ray directions are *not* normalised: the direction through a pixel has camera-space
z = -1, so a ray parameter t is the depth along the optical axis (what NeRF's near
and far bounds measure). `viewing_directions` gives the unit vectors the view-dependent
colour head reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PIXEL_CENTER", "NDC_NEAR", "pixel_directions", "camera_rays", "pixel_rays",
           "viewing_directions", "ndc_rays"]

# A ray passes through the *centre* of its pixel (x + 0.5, y + 0.5). The NeRF paper's
# code shoots through the pixel's corner (offset 0); the half-pixel shift is the
# geometrically exact choice and is what later reimplementations use.
PIXEL_CENTER = 0.5

# The plane NeRF's NDC warp maps to depth -1 for forward-facing scenes: 1.0 after
# the LLFF poses are rescaled so that the nearest scene bound is 1 / 0.75 (see
# `wcnorm.fields.scenes`), so it lies in front of all of the scene's content.
NDC_NEAR = 1.0


def pixel_directions(height: int, width: int, focal: float, *, dtype=torch.float32,
                     device=None) -> Tensor:
    """Camera-space directions through every pixel, shape (height, width, 3).

    Row ``j`` grows downwards in the image and camera y points up, hence the sign."""
    j, i = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                          torch.arange(width, dtype=dtype, device=device), indexing="ij")
    return _directions(j, i, height, width, focal)


def _directions(rows: Tensor, cols: Tensor, height: int, width: int, focal: float) -> Tensor:
    """Camera-space directions through the centres of pixels (rows, cols), shape (..., 3)."""
    x = (cols + PIXEL_CENTER - 0.5 * width) / focal
    y = -(rows + PIXEL_CENTER - 0.5 * height) / focal
    return torch.stack([x, y, -torch.ones_like(x)], dim=-1)


def camera_rays(c2w: Tensor, height: int, width: int, focal: float) -> tuple[Tensor, Tensor]:
    """World-space (origins, directions) of all pixels of one or many cameras.

    ``c2w`` has shape (..., 3, 4) or (..., 4, 4); both outputs have shape
    (..., height, width, 3)."""
    dirs = pixel_directions(height, width, focal, dtype=c2w.dtype, device=c2w.device)
    rotation = c2w[..., None, None, :3, :3]  # broadcast over the pixel grid
    directions = (rotation @ dirs[..., None]).squeeze(-1)
    origins = c2w[..., None, None, :3, 3].expand_as(directions)
    return origins, directions


def pixel_rays(c2w: Tensor, rows: Tensor, cols: Tensor, height: int, width: int,
               focal: float) -> tuple[Tensor, Tensor]:
    """World-space (origins, directions) of single pixels: ray k passes through pixel
    (rows[k], cols[k]) of camera ``c2w[k]``. ``c2w`` has shape (R, 3, 4) or (R, 4, 4),
    ``rows`` and ``cols`` shape (R,); both outputs (R, 3). A batch of random training
    rays, made where it is used without the rays of whole images."""
    dirs = _directions(rows.to(c2w.dtype), cols.to(c2w.dtype), height, width, focal)
    directions = (c2w[:, :3, :3] @ dirs[..., None]).squeeze(-1)
    return c2w[:, :3, 3], directions


def viewing_directions(directions: Tensor) -> Tensor:
    """Unit ray directions: what the view-dependent colour head is conditioned on."""
    return directions / directions.norm(dim=-1, keepdim=True)


def ndc_rays(origins: Tensor, directions: Tensor, height: int, width: int, focal: float,
             near: float = NDC_NEAR) -> tuple[Tensor, Tensor]:
    """NeRF's normalised-device-coordinate rays for forward-facing scenes.

    The perspective projection maps the camera frustum from depth ``near`` to infinity
    onto the cube [-1, 1]^3, and straight rays to straight rays. Origins are first
    moved onto the plane z = -near, and the returned rays span that plane (t = 0) to
    infinity (t = 1), so NDC scenes sample t in [0, 1] linearly, which is linear in
    disparity in world space (NeRF paper, appendix C). Inputs are world-space rays of
    cameras near the identity pose (the recentred LLFF poses)."""
    t = -(near + origins[..., 2]) / directions[..., 2]
    origins = origins + t[..., None] * directions
    ox, oy, oz = origins.unbind(-1)
    dx, dy, dz = directions.unbind(-1)
    ax, ay = -2.0 * focal / width, -2.0 * focal / height
    ndc_origins = torch.stack([ax * ox / oz, ay * oy / oz, 1.0 + 2.0 * near / oz], dim=-1)
    ndc_dirs = torch.stack([ax * (dx / dz - ox / oz), ay * (dy / dz - oy / oz),
                            -2.0 * near / oz], dim=-1)
    return ndc_origins, ndc_dirs
