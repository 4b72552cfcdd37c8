"""Volume rendering of a radiance field (Mildenhall et al., NeRF, ECCV 2020, section 4-5).

A *field* is any callable ``field(points, viewdirs) -> (rgb, sigma)`` on flat batches:
points and unit viewing directions of shape (N, 3) give colours (N, 3) in [0, 1] and
densities (N,) >= 0 (`wcnorm.models.coordinate_mlps.NeRF` is one). Every function here is
batched over rays and samples; nothing loops over them, except `render_view`, which
walks over chunks of rays to bound the memory of a whole image.

The pipeline of one batch of rays (`render_rays`):

1. *stratified sampling*: [near, far] is cut into ``n_coarse`` equal bins and one
   depth is drawn uniformly inside each bin while training (bin centres otherwise);
2. the coarse field is rendered at those depths (the quadrature below);
3. *hierarchical sampling*: ``n_fine`` more depths are drawn by inverse transform
   sampling from the piecewise-constant density whose bins are the coarse bins and
   whose masses are the coarse weights, and the fine field is rendered at all
   ``n_coarse + n_fine`` depths, sorted.

The quadrature: with spacings delta_i = t_{i+1} - t_i (times the ray direction's
length, so that they are distances), alpha_i = 1 - exp(-sigma_i delta_i), the
transmittance T_i = exp(-sum_{j<i} sigma_j delta_j) and the weights w_i = T_i alpha_i,
the colour is sum_i w_i c_i, the expected depth sum_i w_i t_i and the opacity sum_i w_i
= 1 - T_final. The last spacing is `LAST_DELTA` ("infinite"), as in NeRF's code: the
last sample absorbs what is left of the ray. On a white background (Blender scenes)
the remaining transmittance is added as white.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .rays import viewing_directions

__all__ = ["Field", "LAST_DELTA", "PDF_PADDING", "Rendering", "RenderSettings",
           "stratified_depths", "composite", "sample_pdf", "render_rays", "final_pass", "render_view"]

Field = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

# The spacing after the last sample: large enough that any density there is opaque.
LAST_DELTA = 1e10
# Added to every coarse weight before hierarchical sampling (NeRF's code): keeps the
# distribution defined on empty rays, where it falls back to uniform in depth.
PDF_PADDING = 1e-5


@dataclass(frozen=True)
class RenderSettings:
    """How rays are sampled and rendered. The depth range comes from the scene
    (`wcnorm.fields.scenes.Scene.render_settings`); the sample counts default to the
    NeRF paper's."""

    near: float
    far: float
    n_coarse: int = 64
    n_fine: int = 128  # 0: a single (coarse) pass, as the Gaussian-activated NeRF
    white_background: bool = True

    def __post_init__(self):
        if not 0 <= self.near < self.far:
            raise ValueError(f"need 0 <= near < far, got near={self.near}, far={self.far}")
        if self.n_coarse < 1 or self.n_fine < 0:
            raise ValueError(f"need n_coarse >= 1 and n_fine >= 0, got {self.n_coarse}, {self.n_fine}")


class Rendering(NamedTuple):
    """What a batch of R rays with S samples renders to."""

    rgb: Tensor  # (R, 3)
    depth: Tensor  # (R,) expected depth (the ray parameter t)
    opacity: Tensor  # (R,) sum of the weights = 1 - final transmittance
    weights: Tensor  # (R, S)
    depths: Tensor  # (R, S) the sample depths t_i


def stratified_depths(n_rays: int, n_samples: int, near: float | Tensor, far: float | Tensor, *,
                      perturb: bool, generator: torch.Generator | None = None,
                      dtype=torch.float32, device=None) -> tuple[Tensor, Tensor]:
    """(depths (R, S), bin edges (R, S + 1)): one depth per equal bin of [near, far],
    uniform inside its bin if `perturb`, at its centre otherwise."""
    u = torch.linspace(0.0, 1.0, n_samples + 1, dtype=dtype, device=device)
    near = torch.as_tensor(near, dtype=dtype, device=device).reshape(-1, 1)
    far = torch.as_tensor(far, dtype=dtype, device=device).reshape(-1, 1)
    edges = (near + (far - near) * u).expand(n_rays, -1)
    if perturb:
        offset = torch.rand(n_rays, n_samples, generator=generator, dtype=dtype, device=device)
    else:
        offset = torch.full((n_rays, n_samples), 0.5, dtype=dtype, device=device)
    depths = edges[:, :-1] + offset * (edges[:, 1:] - edges[:, :-1])
    return depths, edges


def composite(rgb: Tensor, sigma: Tensor, depths: Tensor, directions: Tensor, *,
              white_background: bool) -> Rendering:
    """The quadrature of the volume rendering integral (module docstring).

    rgb (R, S, 3), sigma (R, S), depths (R, S) sorted along each ray, directions (R, 3)."""
    last = torch.full_like(depths[:, :1], LAST_DELTA)
    deltas = torch.cat([depths[:, 1:] - depths[:, :-1], last], dim=-1)
    optical = sigma * deltas * directions.norm(dim=-1, keepdim=True)  # sigma_i * distance_i
    alpha = 1.0 - torch.exp(-optical)
    # T_i = exp(-sum_{j<i} ...): an exclusive cumulative sum (shifted, not cumsum minus
    # the term, which would cancel catastrophically against the huge last term), exact
    # where NeRF's cumulative product of (1 - alpha + eps) is not.
    before = torch.cat([torch.zeros_like(optical[:, :1]), optical[:, :-1]], dim=-1)
    transmittance = torch.exp(-torch.cumsum(before, dim=-1))
    weights = transmittance * alpha
    opacity = weights.sum(dim=-1)
    color = (weights[..., None] * rgb).sum(dim=-2)
    if white_background:
        color = color + (1.0 - opacity[..., None])
    depth = (weights * depths).sum(dim=-1)
    return Rendering(color, depth, opacity, weights, depths)


def sample_pdf(edges: Tensor, weights: Tensor, n_samples: int, *, deterministic: bool,
               generator: torch.Generator | None = None) -> Tensor:
    """Inverse transform sampling of the piecewise-constant density on bins ``edges``
    (R, S + 1) with masses ``weights`` (R, S): depths (R, n_samples). Deterministic
    sampling reads the inverse CDF at evenly spaced quantiles."""
    weights = weights + PDF_PADDING
    pdf = weights / weights.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)
    cdf[:, -1] = 1.0  # exactly, whatever the rounding
    shape = (cdf.shape[0], n_samples)
    if deterministic:
        u = torch.linspace(0.0, 1.0, n_samples, dtype=cdf.dtype, device=cdf.device).expand(shape)
    else:
        u = torch.rand(shape, generator=generator, dtype=cdf.dtype, device=cdf.device)
    u = u.contiguous()
    above = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    below = above - 1
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    edge_lo, edge_hi = edges.gather(-1, below), edges.gather(-1, above)
    frac = (u - cdf_lo) / (cdf_hi - cdf_lo).clamp_min(torch.finfo(cdf.dtype).tiny)
    return edge_lo + frac.clamp(0.0, 1.0) * (edge_hi - edge_lo)


def _shade(field: Field, origins: Tensor, directions: Tensor, viewdirs: Tensor, depths: Tensor,
           white_background: bool) -> Rendering:
    n_rays, n_samples = depths.shape
    points = origins[:, None, :] + depths[..., None] * directions[:, None, :]
    dirs = viewdirs[:, None, :].expand(n_rays, n_samples, 3)
    rgb, sigma = field(points.reshape(-1, 3), dirs.reshape(-1, 3))
    return composite(rgb.reshape(n_rays, n_samples, 3), sigma.reshape(n_rays, n_samples), depths,
                     directions, white_background=white_background)


def render_rays(coarse: Field, fine: Field | None, origins: Tensor, directions: Tensor,
                settings: RenderSettings, *, viewdirs: Tensor | None = None, perturb: bool = False,
                generator: torch.Generator | None = None) -> dict[str, Rendering]:
    """Render rays (R, 3) with the coarse and fine fields: ``{"coarse": ..., "fine": ...}``
    (only "coarse" when ``settings.n_fine == 0``). ``fine=None`` reuses the coarse field
    for the fine pass. ``viewdirs`` default to the unit ray directions; NDC scenes pass
    the world-space ones. Both passes are returned because NeRF trains both."""
    if viewdirs is None:
        viewdirs = viewing_directions(directions)
    depths, edges = stratified_depths(origins.shape[0], settings.n_coarse, settings.near,
                                      settings.far, perturb=perturb, generator=generator,
                                      dtype=origins.dtype, device=origins.device)
    out = {"coarse": _shade(coarse, origins, directions, viewdirs, depths, settings.white_background)}
    if settings.n_fine:
        # The fine depths are a sampling choice, not a function to differentiate through.
        extra = sample_pdf(edges, out["coarse"].weights.detach(), settings.n_fine,
                           deterministic=not perturb, generator=generator)
        depths = torch.sort(torch.cat([depths, extra], dim=-1), dim=-1).values
        out["fine"] = _shade(coarse if fine is None else fine, origins, directions, viewdirs, depths,
                             settings.white_background)
    return out


def final_pass(passes: dict[str, Rendering]) -> Rendering:
    """The pass whose colour is the rendering's: the fine one, if there is one."""
    return passes.get("fine", passes["coarse"])


@torch.no_grad()
def render_view(coarse: Field, fine: Field | None, origins: Tensor, directions: Tensor,
                settings: RenderSettings, *, viewdirs: Tensor | None = None,
                chunk: int = 4096) -> dict[str, Tensor]:
    """Render a whole view without gradients, ``chunk`` rays at a time so that memory is
    bounded by the chunk, not by the image. Rays have shape (H, W, 3); returns the last
    pass's ``rgb`` (H, W, 3), ``depth`` (H, W) and ``opacity`` (H, W)."""
    shape = origins.shape[:-1]
    flat = [x.reshape(-1, 3) for x in (origins, directions)]
    flat_viewdirs = None if viewdirs is None else viewdirs.reshape(-1, 3)
    parts: dict[str, list[Tensor]] = {"rgb": [], "depth": [], "opacity": []}
    for start in range(0, flat[0].shape[0], chunk):
        window = slice(start, start + chunk)
        passes = render_rays(coarse, fine, flat[0][window], flat[1][window], settings,
                             viewdirs=None if flat_viewdirs is None else flat_viewdirs[window])
        final = final_pass(passes)
        for key in parts:
            parts[key].append(getattr(final, key))
    return {"rgb": torch.cat(parts["rgb"]).reshape(*shape, 3),
            "depth": torch.cat(parts["depth"]).reshape(shape),
            "opacity": torch.cat(parts["opacity"]).reshape(shape)}
