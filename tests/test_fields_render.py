"""Rays, sampling and volume rendering against closed forms; PSNR and SSIM."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from wcnorm.fields.metrics import psnr, ssim
from wcnorm.fields.rays import camera_rays, ndc_rays, pixel_directions, viewing_directions
from wcnorm.fields.render import (
    LAST_DELTA,
    RenderSettings,
    composite,
    render_rays,
    render_view,
    sample_pdf,
    stratified_depths,
)

F64 = torch.float64


def rotation(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def camera(seed: int = 0) -> torch.Tensor:
    c2w = torch.zeros(3, 4, dtype=F64)
    c2w[:, :3] = rotation(seed)
    c2w[:, 3] = torch.tensor([0.3, -1.2, 2.5], dtype=F64)
    return c2w


# --------------------------------------------------------------------------- rays
def test_the_centre_pixel_looks_down_the_camera_minus_z_axis():
    c2w = camera()
    origins, directions = camera_rays(c2w, 7, 9, focal=5.0)  # odd sizes: a centre pixel exists
    assert origins.shape == directions.shape == (7, 9, 3)
    torch.testing.assert_close(directions[3, 4], -c2w[:, 2])
    torch.testing.assert_close(origins, c2w[:, 3].expand(7, 9, 3))


def test_a_ray_projects_back_onto_its_pixel_centre():
    c2w, focal, h, w = camera(1), 11.0, 6, 8
    origins, directions = camera_rays(c2w, h, w, focal)
    points = origins + 2.7 * directions  # any point along each ray
    local = (points - c2w[:, 3]) @ c2w[:, :3]  # world -> camera coordinates
    col = focal * local[..., 0] / -local[..., 2] + w / 2
    row = -focal * local[..., 1] / -local[..., 2] + h / 2
    jj, ii = torch.meshgrid(torch.arange(h, dtype=F64), torch.arange(w, dtype=F64), indexing="ij")
    torch.testing.assert_close(col, ii + 0.5)
    torch.testing.assert_close(row, jj + 0.5)
    # depth along the optical axis is the ray parameter: camera z = -t
    torch.testing.assert_close(local[..., 2], torch.full((h, w), -2.7, dtype=F64))


def test_rays_of_many_cameras_at_once_match_one_at_a_time():
    poses = torch.stack([camera(s) for s in range(3)])
    origins, directions = camera_rays(poses, 4, 5, 3.0)
    assert directions.shape == (3, 4, 5, 3)
    for k in range(3):
        torch.testing.assert_close(directions[k], camera_rays(poses[k], 4, 5, 3.0)[1])
    unit = viewing_directions(directions)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(3, 4, 5, dtype=F64))


def project_ndc(p, h, w, focal, near):
    """The NDC projection of world points (NeRF paper, appendix C)."""
    x, y, z = p.unbind(-1)
    return torch.stack([-2 * focal / w * x / z, -2 * focal / h * y / z, 1 + 2 * near / z], dim=-1)


def test_ndc_ray_of_the_optical_axis():
    o = torch.zeros(1, 3, dtype=F64)
    d = torch.tensor([[0.0, 0.0, -1.0]], dtype=F64)
    o_ndc, d_ndc = ndc_rays(o, d, 30, 40, 25.0, near=1.0)
    torch.testing.assert_close(o_ndc, torch.tensor([[0.0, 0.0, -1.0]], dtype=F64))
    torch.testing.assert_close(d_ndc, torch.tensor([[0.0, 0.0, 2.0]], dtype=F64))


def test_ndc_rays_are_the_projected_world_rays_from_the_near_plane_to_infinity():
    h, w, focal, near = 30, 40, 25.0, 1.0
    c2w = torch.eye(4, dtype=F64)[:3]
    c2w[:, 3] = torch.tensor([0.1, -0.05, 0.2])
    origins, directions = camera_rays(c2w, h, w, focal)
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    o_ndc, d_ndc = ndc_rays(origins, directions, h, w, focal, near)
    torch.testing.assert_close(o_ndc[:, 2], torch.full_like(o_ndc[:, 2], -1.0))  # t = 0: z = -near
    for depth in (1.5, 4.0, 50.0):
        s = (depth + origins[:, 2]) / -directions[:, 2]  # the world point at z = -depth
        p = project_ndc(origins + s[:, None] * directions, h, w, focal, near)
        t = (p[:, 2] - o_ndc[:, 2]) / d_ndc[:, 2]
        torch.testing.assert_close(p, o_ndc + t[:, None] * d_ndc)  # on the NDC ray
        torch.testing.assert_close(t, torch.full_like(t, 1 - near / depth))  # linear in disparity
        assert ((p[:, :2] > -1.2) & (p[:, :2] < 1.2)).all()


# ----------------------------------------------------------------------- sampling
def test_stratified_depths_stay_in_their_bins():
    depths, edges = stratified_depths(5, 8, 2.0, 6.0, perturb=True, dtype=F64,
                                      generator=torch.Generator().manual_seed(0))
    assert depths.shape == (5, 8) and edges.shape == (5, 9)
    torch.testing.assert_close(edges[0], torch.linspace(2, 6, 9, dtype=F64))
    assert ((depths >= edges[:, :-1]) & (depths <= edges[:, 1:])).all()
    assert not torch.allclose(depths[0], depths[1])  # each ray draws its own offsets
    centres, _ = stratified_depths(2, 8, 2.0, 6.0, perturb=False, dtype=F64)
    torch.testing.assert_close(centres[0], torch.linspace(2.25, 5.75, 8, dtype=F64))


def test_stratified_depths_take_per_ray_bounds():
    depths, edges = stratified_depths(2, 4, torch.tensor([0.0, 1.0]), torch.tensor([1.0, 3.0]),
                                      perturb=False, dtype=F64)
    torch.testing.assert_close(edges[1], torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0], dtype=F64))
    torch.testing.assert_close(depths[0], torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=F64))


def test_hierarchical_samples_follow_the_weights():
    edges = torch.linspace(0, 4, 5, dtype=F64).expand(1, 5)
    weights = torch.tensor([[0.1, 0.6, 0.3, 0.0]], dtype=F64)
    samples = sample_pdf(edges, weights, 100_000, deterministic=False,
                         generator=torch.Generator().manual_seed(0))
    counts = torch.histc(samples, bins=4, min=0, max=4) / samples.numel()
    torch.testing.assert_close(counts, torch.tensor([0.1, 0.6, 0.3, 0.0], dtype=F64), atol=5e-3, rtol=0)
    # deterministic: the inverse CDF at evenly spaced quantiles, linear inside a bin
    quantiles = sample_pdf(edges, weights, 5, deterministic=True)
    padded = (weights + 1e-5) / (weights + 1e-5).sum()
    cdf = torch.cat([torch.zeros(1, dtype=F64), padded[0].cumsum(0)])
    expected = np.interp(np.linspace(0, 1, 5), cdf.numpy(), edges[0].numpy())
    torch.testing.assert_close(quantiles[0], torch.from_numpy(expected))


def test_hierarchical_samples_concentrate_in_a_heavy_bin():
    edges = torch.linspace(2, 6, 65, dtype=F64).expand(3, 65)
    weights = torch.zeros(3, 64, dtype=F64)
    weights[:, 40] = 1.0
    samples = sample_pdf(edges, weights, 128, deterministic=True)
    lo, hi = edges[0, 40], edges[0, 41]
    assert ((samples >= lo) & (samples <= hi)).double().mean() > 0.98
    empty = sample_pdf(edges, torch.zeros(3, 64, dtype=F64), 64, deterministic=True)
    assert empty.min() >= 2 and empty.max() <= 6  # an empty ray falls back to uniform
    assert (empty[:, 1:] >= empty[:, :-1]).all()


# ---------------------------------------------------------------- volume rendering
def test_constant_density_matches_the_closed_form():
    n, delta, sigma = 10, 0.1, 1.3
    depths = (2.0 + delta * torch.arange(n, dtype=F64)).expand(4, n)
    density = torch.full((4, n), sigma, dtype=F64)
    density[:, -1] = 0.0  # an empty last sample: the ray leaves with transmittance left
    directions = torch.tensor([[0.0, 0, -1], [0, 0, -2], [1, 0, 0], [0, 3, 4]], dtype=F64)
    rgb = torch.rand(4, n, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = composite(rgb, density, depths, directions, white_background=False)
    length = directions.norm(dim=-1, keepdim=True)  # spacings are distances along the ray
    alpha = 1 - torch.exp(-sigma * delta * length)
    i = torch.arange(n - 1, dtype=F64)
    expected = (1 - alpha) ** i * alpha
    torch.testing.assert_close(out.weights[:, :-1], expected)
    torch.testing.assert_close(out.weights[:, -1], torch.zeros(4, dtype=F64))
    final_transmittance = torch.exp(-sigma * delta * (n - 1) * length[:, 0])
    torch.testing.assert_close(out.opacity, 1 - final_transmittance)
    torch.testing.assert_close(out.rgb, (out.weights[..., None] * rgb).sum(1))
    torch.testing.assert_close(out.depth, (out.weights * depths).sum(1))
    white = composite(rgb, density, depths, directions, white_background=True)
    torch.testing.assert_close(white.rgb, out.rgb + final_transmittance[:, None])


def test_an_opaque_first_sample_takes_its_colour():
    depths = torch.linspace(2, 6, 16, dtype=F64).expand(2, 16)
    density = torch.rand(2, 16, dtype=F64)
    density[:, 0] = 1e6
    rgb = torch.rand(2, 16, 3, dtype=F64)
    out = composite(rgb, density, depths, torch.tensor([[0, 0, -1.0]] * 2, dtype=F64),
                    white_background=True)
    torch.testing.assert_close(out.rgb, rgb[:, 0])
    torch.testing.assert_close(out.depth, depths[:, 0])
    torch.testing.assert_close(out.opacity, torch.ones(2, dtype=F64))


def test_the_last_sample_absorbs_the_rest_of_the_ray():
    depths = torch.linspace(2, 6, 8).expand(1, 8)
    density = torch.zeros(1, 8)
    density[0, -1] = 0.01
    out = composite(torch.rand(1, 8, 3), density, depths, torch.tensor([[0, 0, -1.0]]),
                    white_background=True)
    assert out.weights[0, -1] == pytest.approx(1.0)  # 0.01 * LAST_DELTA is opaque
    assert LAST_DELTA >= 1e9
    empty = composite(torch.rand(1, 8, 3), torch.zeros(1, 8), depths, torch.tensor([[0, 0, -1.0]]),
                      white_background=True)
    torch.testing.assert_close(empty.rgb, torch.ones(1, 3))  # nothing there: the white background
    assert empty.opacity.item() == 0


class Ball:
    """A toy radiance field: an opaque red ball of radius 0.5 at the origin."""

    def __init__(self):
        self.calls = 0

    def __call__(self, points, viewdirs):
        self.calls += 1
        inside = (points.norm(dim=-1) < 0.5).to(points.dtype)
        rgb = torch.stack([inside, torch.zeros_like(inside), torch.zeros_like(inside)], dim=-1)
        return rgb, 50.0 * inside


def ball_rays(n=16):
    c2w = torch.eye(4, dtype=F64)[:3]
    c2w[2, 3] = 4.0  # 4 units back from the ball, looking at it down -z
    return camera_rays(c2w, n, n, focal=n * 1.2)


def test_fine_samples_gather_where_the_coarse_weights_are():
    origins, directions = ball_rays()
    o, d = origins.reshape(-1, 3), directions.reshape(-1, 3)
    settings = RenderSettings(near=2.0, far=6.0, n_coarse=32, n_fine=64)
    out = render_rays(Ball(), None, o, d, settings, perturb=True,
                      generator=torch.Generator().manual_seed(0))
    hits = out["coarse"].opacity > 0.5
    assert 10 < hits.sum() < len(o)  # the ball is in view, and so is the background
    fine = out["fine"]
    assert fine.depths.shape == (len(o), 96)
    assert (fine.depths[:, 1:] >= fine.depths[:, :-1]).all()
    # on rays that hit, most samples of the fine pass sit within a coarse bin of the
    # entry depth (about 3.5), where uniform sampling puts only 2 of 32
    entry = out["coarse"].depth[hits, None]

    def near_entry(depths):
        return ((depths[hits] - entry).abs() < 4.0 / 32).double().mean()

    assert near_entry(out["coarse"].depths) < 0.1
    assert near_entry(fine.depths) > 0.5
    torch.testing.assert_close(fine.rgb[hits], torch.tensor([1.0, 0, 0], dtype=F64).expand(int(hits.sum()), 3),
                               atol=1e-3, rtol=0)


def test_a_single_pass_renderer_and_reused_fields():
    origins, directions = ball_rays(4)
    o, d = origins.reshape(-1, 3), directions.reshape(-1, 3)
    field = Ball()
    out = render_rays(field, None, o, d, RenderSettings(2.0, 6.0, n_coarse=16, n_fine=0))
    assert set(out) == {"coarse"} and field.calls == 1
    out = render_rays(field, None, o, d, RenderSettings(2.0, 6.0, n_coarse=16, n_fine=8))
    assert set(out) == {"coarse", "fine"} and field.calls == 3  # the coarse field shades both


def test_a_view_rendered_in_chunks_equals_one_pass():
    origins, directions = ball_rays(12)
    settings = RenderSettings(2.0, 6.0, n_coarse=16, n_fine=16)
    whole = render_view(Ball(), Ball(), origins, directions, settings, chunk=10_000)
    chunked = render_view(Ball(), Ball(), origins, directions, settings, chunk=7)
    assert whole["rgb"].shape == (12, 12, 3) and whole["depth"].shape == (12, 12)
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key])
    # the ball's silhouette: red centre, white corners
    torch.testing.assert_close(whole["rgb"][6, 6], torch.tensor([1.0, 0, 0], dtype=F64), atol=1e-3, rtol=0)
    torch.testing.assert_close(whole["rgb"][0, 0], torch.ones(3, dtype=F64))


def test_render_settings_reject_impossible_ranges():
    with pytest.raises(ValueError, match="near < far"):
        RenderSettings(near=6.0, far=2.0)
    with pytest.raises(ValueError, match="n_coarse"):
        RenderSettings(2.0, 6.0, n_coarse=0)


def test_pixel_directions_have_unit_depth():
    dirs = pixel_directions(3, 5, 2.0)
    assert dirs.shape == (3, 5, 3)
    assert (dirs[..., 2] == -1).all()
    assert dirs[0, 0, 0] < 0 < dirs[0, 0, 1]  # top-left pixel: left of and above the axis


# ------------------------------------------------------------------------ metrics
def test_psnr_of_a_known_mse():
    target = torch.rand(8, 8, 3, dtype=F64)
    assert psnr(target + 0.1, target).item() == pytest.approx(20.0)
    assert psnr(target + 0.01, target).item() == pytest.approx(40.0)
    assert psnr(target, target).item() == math.inf


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(32, 40, 3, dtype=F64, generator=g)
    assert ssim(image, image).item() == pytest.approx(1.0)
    scores = [ssim((image + s * torch.randn(image.shape, dtype=F64, generator=g)).clamp(0, 1), image).item()
              for s in (0.02, 0.1, 0.3)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_ssim_matches_scikit_image():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(24, 31, 3, dtype=F64, generator=g)
    b = (a + 0.15 * torch.randn(a.shape, dtype=F64, generator=g)).clamp(0, 1)
    expected = structural_similarity(a.numpy(), b.numpy(), data_range=1.0, channel_axis=-1,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b).item() == pytest.approx(expected, abs=1e-10)
    gray = structural_similarity(a[..., 0].numpy(), b[..., 0].numpy(), data_range=1.0,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(a[..., 0], b[..., 0]).item() == pytest.approx(gray, abs=1e-10)


def test_ssim_rejects_mismatched_or_tiny_images():
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(16, 16, 3), torch.rand(16, 17, 3))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.rand(8, 16, 3), torch.rand(8, 16, 3))
