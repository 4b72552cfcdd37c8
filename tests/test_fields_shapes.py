"""Occupancy data: meshes, winding-number labels, marching cubes, Chamfer, IoU."""

import time

import igl
import numpy as np
import pytest
import torch
import trimesh

from wcnorm.errors import DatasetUnavailable
from wcnorm.fields.metrics import iou
from wcnorm.fields.shapes import (
    MESH_EXTENT,
    NEAR_FRACTION,
    MeshError,
    chamfer_distance,
    extract_surface,
    inside,
    load_mesh,
    normalize_mesh,
    occupancy_sets,
    sample_points,
    surface_chamfer,
)

RADIUS = 0.8


@pytest.fixture(scope="module")
def sphere():
    return trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)


def test_sphere_labels_match_the_analytic_inside_test(sphere):
    points = np.random.default_rng(0).uniform(-1, 1, size=(20_000, 3))
    r = np.linalg.norm(points, axis=1)
    labels = inside(sphere, points)
    # the icosphere is inscribed in the sphere: they differ only within its chord sag
    clear = np.abs(r - RADIUS) > 0.01
    np.testing.assert_array_equal(labels[clear], r[clear] < RADIUS)
    assert 0 < labels.mean() < 1
    flipped = sphere.copy()
    flipped.invert()  # the orientation of the faces does not matter
    np.testing.assert_array_equal(inside(flipped, points), labels)


def test_labels_are_exact_right_next_to_the_surface(sphere):
    # points a hair inside and outside the faces' centroids, where the fast winding
    # number is least accurate
    centres, normals = sphere.triangles_center, sphere.face_normals
    points = np.concatenate([centres - 1e-4 * normals, centres + 1e-4 * normals])
    expected = np.arange(len(points)) < len(centres)
    np.testing.assert_array_equal(inside(sphere, points), expected)


def test_labels_of_an_open_mesh_follow_the_exact_winding_number(sphere, monkeypatch):
    # without its top cap the winding number takes every value in (0, 1): where the fast
    # approximation is near 1/2 the exact one decides
    open_mesh = sphere.copy()
    open_mesh.update_faces(open_mesh.triangles_center[:, 2] < 0.4)
    points = np.random.default_rng(1).uniform(-1, 1, size=(3000, 3))
    exact = np.abs(igl.winding_number(open_mesh.vertices, open_mesh.faces.astype(np.int64), points))
    assert ((exact > 0.3) & (exact < 0.7)).sum() > 100
    np.testing.assert_array_equal(inside(open_mesh, points), exact > 0.5)
    # an approximation off by up to 0.2 is still corrected where it matters
    noise = np.random.default_rng(2).uniform(-0.2, 0.2, len(points))
    monkeypatch.setattr(igl, "fast_winding_number", lambda v, f, q: exact + noise)
    np.testing.assert_array_equal(inside(open_mesh, points), exact > 0.5)


def test_occupancy_sets_mix_uniform_and_near_surface_points(sphere):
    mesh = normalize_mesh(sphere)
    train, held_out = occupancy_sets(mesh, n_train=4000, n_eval=2000, seed=0)
    assert train.points.shape == (4000, 3) and held_out.points.shape == (2000, 3)
    assert train.points.dtype == torch.float32 and train.labels.dtype == torch.float32
    assert train.points.abs().max() <= 1
    assert train.near_surface.float().mean().item() == pytest.approx(NEAR_FRACTION)
    r = train.points.norm(dim=-1)
    near, far = r[train.near_surface], r[~train.near_surface]
    assert (near - MESH_EXTENT).abs().median() < 0.05  # jittered around the surface
    assert (far - MESH_EXTENT).abs().median() > 0.1  # spread over the box
    clear = (r - MESH_EXTENT).abs() > 0.02  # away from the inscribed polyhedron's sag
    torch.testing.assert_close(train.labels[clear], (r[clear] < MESH_EXTENT).float())
    again, same_eval = occupancy_sets(mesh, n_train=4000, n_eval=2000, seed=1)
    torch.testing.assert_close(same_eval.points, held_out.points)  # independent of the seed
    assert not torch.equal(again.points, train.points)
    assert not torch.equal(train.points[:2000], held_out.points)  # own stream, even for seed 0


def test_normalize_mesh_fills_the_box_around_the_origin():
    box = trimesh.creation.box(extents=(4.0, 2.0, 1.0))
    box.apply_translation((10.0, -3.0, 7.0))
    out = normalize_mesh(box)
    np.testing.assert_allclose(out.bounds, [[-0.9, -0.45, -0.225], [0.9, 0.45, 0.225]])
    np.testing.assert_allclose(box.bounds[0], [8.0, -4.0, 6.5])  # the input is untouched


def test_sample_points_reproducible_and_clipped(sphere):
    a, near_a = sample_points(sphere, 1000, np.random.default_rng(3), sigma=0.5)
    b, _ = sample_points(sphere, 1000, np.random.default_rng(3), sigma=0.5)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1 and near_a.sum() == 500


def test_iou_of_perfect_and_constant_predictors():
    labels = torch.tensor([1, 1, 0, 0, 0, 1, 0, 0], dtype=torch.float32)
    assert iou(labels > 0.5, labels) == 1.0
    assert iou(torch.ones(8, dtype=torch.bool), labels) == pytest.approx(3 / 8)
    assert iou(torch.zeros(8, dtype=torch.bool), labels) == 0.0
    assert iou(torch.tensor([1, 0, 0, 0, 0, 1, 0, 1]), labels) == pytest.approx(2 / 4)
    assert iou(torch.zeros(3), torch.zeros(3)) == 1.0


def test_marching_cubes_recovers_an_analytic_sphere():
    surface = extract_surface(lambda x: 0.6 - x.norm(dim=-1), resolution=48, chunk=5000)
    radii = np.linalg.norm(surface.vertices, axis=1)
    assert np.abs(radii - 0.6).max() < 0.005
    exact = trimesh.creation.icosphere(subdivisions=5, radius=0.6)
    d = surface_chamfer(surface, exact, n_points=30_000)
    assert d < 0.01
    assert d < surface_chamfer(surface, trimesh.creation.icosphere(5, radius=0.65), 30_000) / 4


def test_a_field_that_never_crosses_the_level_has_no_surface():
    empty = extract_surface(lambda x: -torch.ones(len(x)), resolution=8)
    assert len(empty.faces) == 0
    assert surface_chamfer(empty, trimesh.creation.icosphere(2)) == float("inf")


def test_chamfer_distance_of_a_shifted_point_set():
    a = np.random.default_rng(0).uniform(-1, 1, (500, 3)) * 100  # sparse: neighbours are far
    assert chamfer_distance(a, a + [0.01, 0.0, 0.0]) == pytest.approx(0.01)
    assert chamfer_distance(a, a) == 0
    assert chamfer_distance(a, a[:0]) == float("inf")


def test_mesh_errors_name_the_file(tmp_path, sphere):
    with pytest.raises(DatasetUnavailable, match=r"mesh .*nothing\.obj is missing"):
        load_mesh(tmp_path / "nothing.obj")
    empty = tmp_path / "empty.obj"
    empty.write_text("# no geometry\n")
    with pytest.raises(MeshError, match=r"empty\.obj holds no triangle"):
        load_mesh(empty)
    holed = sphere.copy()
    holed.update_faces(np.arange(len(holed.faces)) != 0)  # one triangle missing
    path = tmp_path / "holed.ply"
    holed.export(path)
    with pytest.raises(MeshError, match=r"holed\.ply is not watertight.*require_watertight=False"):
        load_mesh(path)
    with pytest.warns(UserWarning, match=r"holed\.ply is not watertight"):
        mesh = load_mesh(path, require_watertight=False)
    assert len(mesh.faces) == len(sphere.faces) - 1
    closed = tmp_path / "sphere.obj"
    sphere.export(closed)
    assert load_mesh(closed).is_watertight


@pytest.mark.shared_data
def test_shared_meshes_are_watertight_and_their_labels_balanced(shared_data):
    root = shared_data / "shapes"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    start = time.perf_counter()
    bunny = normalize_mesh(load_mesh(root / "bunny.obj"))
    train, held_out = occupancy_sets(bunny, n_train=50_000, n_eval=10_000)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"loading and labelling 60k points took {elapsed:.1f} s"
    assert np.abs(bunny.bounds).max() == pytest.approx(MESH_EXTENT)
    for points in (train, held_out):  # both classes well represented, mostly near the surface
        assert 0.2 < points.labels.mean().item() < 0.45
        assert 0.35 < points.labels[points.near_surface].mean().item() < 0.65
        assert 0.05 < points.labels[~points.near_surface].mean().item() < 0.3
    for name in ("armadillo", "lucy"):
        assert load_mesh(root / f"{name}.obj").is_watertight
