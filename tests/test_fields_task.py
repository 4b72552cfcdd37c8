"""Neural fields as tasks of the training loop: NeRF on a scene, occupancy on a mesh.

Tiny scenes and meshes are written here; each run goes through the real config, the
real `assemble` and `Trainer.fit`, with networks small enough to train in seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import trimesh
from conftest import compose_cfg, wcnorm
from PIL import Image
from test_fields_data import write_llff

from wcnorm.errors import ConfigError, DatasetUnavailable
from wcnorm.fields.rays import camera_rays, pixel_rays
from wcnorm.fields.scenes import load_llff
from wcnorm.methods.weight_method import installed_methods
from wcnorm.outputs import search_objective
from wcnorm.tasks import NeRFTask, OccupancyTask, field_config_problems, is_field_config
from wcnorm.tasks.field_common import PoolLoader, held_out_views
from wcnorm.tasks.nerf import evenly_spaced
from wcnorm.training.assemble import assemble, with_weight_method
from wcnorm.training.train import summarize

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: a second thread would only add synchronisation (and on a
    shared machine, waiting for a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
COLOUR = (51, 128, 204)  # every pixel of the tiny scene


def camera_on_circle(angle: float, radius: float = 4.0) -> np.ndarray:
    """A camera-to-world matrix (OpenGL axes) on a circle around the origin, looking at it."""
    back = np.array([math.sin(angle), 0.0, math.cos(angle)])
    up = np.array([0.0, 1.0, 0.0])
    right = np.cross(up, back)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, up, back], axis=1)
    pose[:3, 3] = radius * back
    return pose


def write_scene(root: Path, size: int = 12, views=(("train", 3), ("val", 2), ("test", 2))) -> Path:
    """A Blender scene (transforms_<split>.json + RGBA PNGs) whose every pixel is COLOUR,
    seen by cameras on a circle: a radiance field can match it exactly."""
    root.mkdir(parents=True, exist_ok=True)
    for s, (split, n) in enumerate(views):
        (root / split).mkdir(exist_ok=True)
        frames = []
        for k in range(n):
            rgba = np.zeros((size, size, 4), np.uint8)
            rgba[..., :3], rgba[..., 3] = COLOUR, 255
            Image.fromarray(rgba, "RGBA").save(root / split / f"r_{k}.png")
            pose = camera_on_circle(2 * math.pi * (k + 0.37 * s) / n)
            frames.append({"file_path": f"./{split}/r_{k}", "transform_matrix": pose.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    return root


def write_sphere(path: Path, radius: float = 0.6) -> Path:
    trimesh.creation.icosphere(subdivisions=3, radius=radius).export(path)
    return path


BASE = ["trainer.device=cpu", "trainer.progress=false", "norm=none", "optim=adamw", "optim.weight_decay=0",
        "sched=constant", "trainer.epochs=2"]
TINY_NERF = ["model=nerf", "dataset=blender", "model.width=16", "model.depth=2", "model.skips=[0]",
             "model.n_coarse=8", "model.n_fine=8", "trainer.batch_size=32", "dataset.steps_per_epoch=4",
             "optim.lr=5e-3"]
TINY_SHAPE = ["model=occupancy", "dataset=mesh", "model.width=32", "model.depth=2", "dataset.shape=sphere",
              "dataset.train_points=2000", "dataset.eval_points=1000", "dataset.steps_per_epoch=4",
              "dataset.mc_resolution=24", "dataset.chamfer_points=2000", "trainer.batch_size=256",
              "optim.lr=1e-2"]


@pytest.fixture
def nerf_cfg(tmp_path):
    root = write_scene(tmp_path / "scene")

    def make(*overrides: str):
        return compose_cfg([*BASE, *TINY_NERF, f"dataset.root={root}", f"out_dir={tmp_path / 'runs'}",
                            *overrides], smoke=False)

    return make


@pytest.fixture
def shape_cfg(tmp_path):
    path = write_sphere(tmp_path / "sphere.obj")

    def make(*overrides: str):
        return compose_cfg([*BASE, *TINY_SHAPE, f"dataset.path={path}", f"out_dir={tmp_path / 'runs'}",
                            *overrides], smoke=False)

    return make


def assemble_in(cfg, run_dir: Path):
    """`cfg`'s run in `run_dir`, as `wcnorm train` assembles it after its checks."""
    assert field_config_problems(cfg) == []
    run_dir.mkdir(parents=True, exist_ok=True)
    return assemble(cfg, CPU, run_dir=run_dir)


def fit(cfg, run_dir: Path):
    """Train `cfg` in `run_dir` as `wcnorm train` does; the run and its result.json
    entries (None if it was interrupted)."""
    run = assemble_in(cfg, run_dir)
    history = run.trainer.fit()
    result = {**summarize(run, history), **run.task.finish(run.model, run_dir)} if run.trainer.finished else None
    return run, result


def metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")


# ----------------------------------------------------------------------------- NeRF


def test_a_nerf_run_writes_its_columns_renders_and_test_scores(nerf_cfg, tmp_path):
    cfg = nerf_cfg("norm=wc")
    assert is_field_config(cfg)
    run, result = fit(cfg, tmp_path / "run")
    assert isinstance(run.task, NeRFTask) and run.task.metric == "val_psnr" and run.task.unit == "rays"
    rows = metrics(tmp_path / "run")
    assert list(rows.epoch) == [1, 2]
    for column in ("train_loss", "train_psnr", "val_psnr", "val_ssim", "rays_per_s"):
        assert rows[column].notna().all() and np.isfinite(rows[column]).all(), column
    assert (rows.rays_per_s > 0).all()
    # The val views, each rendering beside its ground truth, after every epoch.
    for epoch in (1, 2):
        folder = tmp_path / "run" / "renders" / f"epoch_{epoch:03d}"
        assert sorted(p.name for p in folder.iterdir()) == ["r_0_gt.png", "r_0_pred.png", "r_1_gt.png",
                                                            "r_1_pred.png"]
    truth = np.asarray(Image.open(tmp_path / "run" / "renders" / "test" / "r_1_gt.png"))
    assert truth.shape == (12, 12, 3) and (truth == COLOUR).all()
    assert result["renders"] == "renders/test" and result["test_views"] == 2
    assert (tmp_path / "run" / "renders" / "test" / "r_1_pred.png").is_file()
    for key in ("final_test_psnr", "final_test_ssim", "final_val_psnr", "final_train_psnr", "best_val_psnr"):
        assert math.isfinite(result[key]), key
    assert result["final_val_psnr"] == pytest.approx(rows.val_psnr.iloc[-1])
    json.dumps(result)  # result.json-ready


def test_a_nerf_learns_a_scene_it_can_match(nerf_cfg, tmp_path):
    """Every pixel one colour: the rendered test views approach it (the untrained
    network's grey is about 10 dB off)."""
    run, result = fit(nerf_cfg("trainer.epochs=6", "dataset.steps_per_epoch=25"), tmp_path / "run")
    rows = metrics(tmp_path / "run")
    assert rows.val_psnr.iloc[-1] > rows.val_psnr.iloc[0] + 5
    assert result["final_test_psnr"] > 25


def test_the_test_views_are_read_only_when_the_run_has_finished(nerf_cfg, tmp_path):
    run = assemble_in(nerf_cfg(), tmp_path / "run")
    for png in (tmp_path / "scene" / "test").iterdir():
        png.unlink()
    run.trainer.fit()  # trains and evaluates without them
    with pytest.raises(DatasetUnavailable, match="r_0.png is missing"):
        run.task.finish(run.model, tmp_path / "run")


def test_evaluation_every_few_epochs_and_after_the_last(nerf_cfg, tmp_path):
    run = assemble_in(nerf_cfg("trainer.epochs=3", "dataset.eval_every=2", "dataset.eval_views=1"),
                      tmp_path / "run")
    history = run.trainer.fit()
    assert ["val_psnr" in row for row in history] == [False, True, True]
    assert sorted(p.name for p in (tmp_path / "run" / "renders").iterdir()) == ["epoch_002", "epoch_003"]
    assert {p.name for p in (tmp_path / "run" / "renders" / "epoch_002").iterdir()} == {"r_0_gt.png", "r_0_pred.png"}


def test_an_llff_run_validates_on_training_views_and_tests_on_the_held_out_ones(tmp_path):
    (tmp_path / "fern").mkdir()
    write_llff(tmp_path / "fern", n=10, size=(12, 16), factor=4)
    cfg = compose_cfg([*BASE, *TINY_NERF, "dataset=llff", f"dataset.root={tmp_path / 'fern'}",
                       "dataset.downscale=4", "dataset.eval_views=2", "trainer.epochs=1",
                       f"out_dir={tmp_path / 'runs'}"], smoke=False)
    run, result = fit(cfg, tmp_path / "run")
    train_files = [f.stem for f in load_llff(tmp_path / "fern", "train", downscale=4).files]
    rendered = {p.name for p in (tmp_path / "run" / "renders" / "epoch_001").iterdir()}
    assert rendered == {f"{train_files[i]}_{role}.png" for i in (0, 7) for role in ("pred", "gt")}
    assert {p.name for p in (tmp_path / "run" / "renders" / "test").glob("*_pred.png")} == {
        "img000_pred.png", "img008_pred.png"}  # every 8th view
    assert result["val_source"] == "train" and result["test_views"] == 2
    assert math.isfinite(result["final_test_psnr"])


def test_a_validation_split_holds_training_views_out_and_scores_them(nerf_cfg, tmp_path):
    """dataset.val_split: training views held out of training become the val views (the
    split a search tunes on), whatever val_source says; the test views stay for the end."""
    cfg = nerf_cfg("dataset.val_split=0.34", "trainer.epochs=1")
    run, result = fit(cfg, tmp_path / "run")
    assert len(run.task.data) == 2 and len(run.task.val) == 1  # 3 training views: 1 held out
    assert run.task.val.files[0].stem == "r_1"  # evenly spaced: the middle of its share
    assert [f.stem for f in run.task.data.files] == ["r_0", "r_2"]
    assert run.train_loader.size == 2 * 12 * 12  # the rays of the views left to train on
    assert {p.name for p in (tmp_path / "run" / "renders" / "epoch_001").iterdir()} == {"r_1_gt.png", "r_1_pred.png"}
    assert result["val_source"] == "held_out" and math.isfinite(result["final_val_psnr"])
    assert search_objective(result) == "final_val_psnr"
    with pytest.raises(ConfigError, match="holds out all of the 3 training views"):
        assemble_in(nerf_cfg("dataset.val_split=0.9"), tmp_path / "all")


@pytest.mark.parametrize("n, fraction, views", [(3, 0.34, [1]), (17, 0.1, [4, 12]), (100, 0.1, list(range(5, 100, 10)))])
def test_held_out_views_are_evenly_spaced_and_at_least_one(n, fraction, views):
    assert held_out_views(n, fraction, "views") == views
    assert held_out_views(n, 1e-9, "views") == [n // 2]  # a fraction that rounds to none still holds one out


# ----------------------------------------------------------------------------- shapes


def test_a_shape_run_writes_its_columns_mesh_and_chamfer_distance(shape_cfg, tmp_path):
    run, result = fit(shape_cfg("norm=wc", "trainer.epochs=3", "dataset.steps_per_epoch=40"), tmp_path / "run")
    assert isinstance(run.task, OccupancyTask) and run.task.metric == "test_iou" and run.task.unit == "points"
    rows = metrics(tmp_path / "run")
    for column in ("train_loss", "train_acc", "test_iou", "test_acc", "test_iou_uniform", "test_iou_near",
                   "points_per_s"):
        assert rows[column].notna().all(), column
    # A sphere is easy: the field separates inside from outside, and its surface is close.
    assert rows.test_iou.iloc[-1] > 0.8 and rows.test_acc.iloc[-1] > 90
    assert result["final_test_iou"] == pytest.approx(rows.test_iou.iloc[-1])
    assert result["mesh"] == "mesh.obj" and result["mesh_picture"] == "mesh.png"
    mesh = trimesh.load(tmp_path / "run" / "mesh.obj", force="mesh")
    assert len(mesh.faces) == result["mesh_faces"] > 100
    # the sphere of radius 0.6 fills the box's longest side to 0.9 once normalised
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(np.median(radii) - 0.9) < 0.1
    assert 0 < result["final_test_chamfer"] < 0.05
    assert Image.open(tmp_path / "run" / "mesh.png").size == (400, 400)
    json.dumps(result)


def test_every_shape_run_is_scored_on_the_same_held_out_points(shape_cfg, tmp_path):
    a = assemble(shape_cfg("seed=0"), CPU).task
    b = assemble(shape_cfg("seed=1"), CPU).task
    assert torch.equal(a.held_out.points, b.held_out.points)
    assert not torch.equal(a.data.points, b.data.points)  # the training pools follow the seed


def test_a_validation_split_holds_pool_points_out_and_scores_them_apart(shape_cfg, tmp_path):
    plain = assemble(shape_cfg(), CPU).task
    run, result = fit(shape_cfg("dataset.val_split=0.2"), tmp_path / "run")
    task = run.task
    assert len(task.data.labels) == 1600 and len(task.val.labels) == 400  # of the 2,000-point pool
    # the pool split, not a new sample, in the pool's mix of uniform and near-surface points
    in_pool = lambda points: (points[:, None] == plain.data.points[None]).all(-1).any(1)  # noqa: E731
    assert in_pool(task.val.points).all() and in_pool(task.data.points).all()
    assert not (task.val.points[:, None] == task.data.points[None]).all(-1).any()
    assert task.val.near_surface.float().mean() == plain.data.near_surface.float().mean() == 0.5
    assert torch.equal(task.held_out.points, plain.held_out.points)  # the test points are unchanged
    assert run.train_loader.size == 1600
    rows = metrics(tmp_path / "run")
    for column in ("val_iou", "val_acc", "val_iou_uniform", "val_iou_near", "test_iou"):
        assert rows[column].notna().all(), column
    assert search_objective(result) == "final_val_iou" and result["final_val_iou"] == pytest.approx(rows.val_iou.iloc[-1])
    assert result["final_val_iou"] != result["final_test_iou"]  # two different sets of points
    fit(shape_cfg(), tmp_path / "plain")
    assert "val_iou" not in metrics(tmp_path / "plain")  # no split: no val columns
    for fraction, what in ((0.9999, "all"), (1e-6, "none")):
        with pytest.raises(ConfigError, match=f"val_split={fraction} holds out {what} of the 2000 training points"):
            assemble(shape_cfg(f"dataset.val_split={fraction}"), CPU)


# ----------------------------------------------------------------------------- both


@pytest.mark.parametrize("field", ["nerf", "shape"])
def test_an_interrupted_field_run_resumes_to_the_uninterrupted_result(field, nerf_cfg, shape_cfg, tmp_path):
    make = nerf_cfg if field == "nerf" else shape_cfg
    whole, _ = fit(make("trainer.epochs=3"), tmp_path / "whole")
    first, result = fit(make("trainer.epochs=3", "trainer.stop_after=1"), tmp_path / "parts")
    assert result is None and first.trainer.epoch == 1
    resumed, _ = fit(make("trainer.epochs=3"), tmp_path / "parts")
    drop = ("time_s", "_per_s")
    a, b = (metrics(tmp_path / d) for d in ("whole", "parts"))
    columns = [c for c in a.columns if not c.endswith(drop)]
    pd.testing.assert_frame_equal(a[columns], b[columns])
    for (name, x), (_, y) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("field", ["nerf", "shape"])
@pytest.mark.parametrize("p", ["1", "2", "inf"])
def test_wc_rows_of_the_hidden_layers_have_unit_norm(field, p, nerf_cfg, shape_cfg):
    cfg = (nerf_cfg if field == "nerf" else shape_cfg)("norm=wc", f"norm.wc.p={p}")
    run = assemble(cfg, CPU)
    model = run.task.model
    conditioned = {i.label for i in installed_methods(model)}
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert conditioned == linears - set(model.wcnorm_classifier)  # every hidden layer, no head
    order = {"1": 1, "2": 2, "inf": math.inf}[p]
    for name in conditioned:
        rows = model.get_submodule(name).weight.norm(p=order, dim=1)
        torch.testing.assert_close(rows, torch.ones_like(rows))
    heads = [model.get_submodule(n).weight.norm(dim=1) for n in model.wcnorm_classifier]
    assert not all(torch.allclose(h, torch.ones_like(h)) for h in heads)


def test_weight_methods_leave_a_field_model_whole(nerf_cfg):
    """WS and WN parametrize the same hidden layers; none leaves the model alone."""
    for method in ("ws", "wn"):
        run = assemble(nerf_cfg(f"norm={method}"), CPU)
        layers = {i.label for i in installed_methods(run.task.model)}
        assert layers and not layers & set(run.task.model.wcnorm_classifier)
    model = assemble(nerf_cfg("norm=none"), CPU).task.model
    assert installed_methods(with_weight_method(model, nerf_cfg("norm=none").norm)) == []


# ----------------------------------------------------------------------------- checks


def problems_of(cfg) -> str:
    found = field_config_problems(cfg)
    assert found, "expected a problem"
    return "\n".join(found)


def test_field_config_problems_refuse_a_wrong_pairing():
    def problems(model, dataset):
        return problems_of(compose_cfg([f"model={model}", f"dataset={dataset}", "norm=none"], smoke=False))

    text = problems("nerf", "cifar10")
    assert "model=nerf is a neural field" in text and "dataset=blender, dataset=llff" in text
    assert "dataset=blender trains model=nerf, not model=occupancy" in problems("occupancy", "blender")
    assert "dataset=mesh trains model=occupancy, not model=nerf" in problems("nerf", "mesh")
    assert "dataset=llff trains model=nerf, not model=resnet18" in problems("resnet18", "llff")
    assert not is_field_config(compose_cfg(["model=resnet18", "dataset=cifar10"], smoke=False))


def test_field_config_problems_refuse_methods_outside_the_protocol(nerf_cfg, shape_cfg):
    assert "no activation normalizer (norm.act=bn)" in problems_of(nerf_cfg("norm=bn_wc"))
    assert "ENorm is not part of the neural-field protocol" in problems_of(shape_cfg("norm=enorm"))
    assert "diagnostics.hessian" in problems_of(shape_cfg("diagnostics.hessian=true"))
    for method in ("none", "wn", "ws", "wc"):
        assert field_config_problems(shape_cfg(f"norm={method}")) == []


def test_field_config_problems_refuse_bad_options(nerf_cfg, shape_cfg):
    assert "unknown option(s) ['colour']" in problems_of(nerf_cfg("+model.colour=red"))
    assert "skips" in problems_of(nerf_cfg("model.skips=[5]"))
    assert "n_coarse" in problems_of(nerf_cfg("model.n_coarse=0"))
    assert "unknown activation 'tanh'" in problems_of(shape_cfg("model.activation=tanh"))
    assert "dataset.steps_per_epoch=0" in problems_of(nerf_cfg("dataset.steps_per_epoch=0"))
    assert "dataset.mc_resolution=1" in problems_of(shape_cfg("dataset.mc_resolution=1"))
    assert "near_fraction" in problems_of(shape_cfg("dataset.near_fraction=1.5"))


def test_field_config_problems_refuse_missing_scene_files_and_unknown_splits(nerf_cfg, tmp_path):
    (tmp_path / "scene" / "transforms_test.json").unlink()
    assert "transforms_test.json is missing" in problems_of(nerf_cfg())
    assert field_config_problems(nerf_cfg(), check_files=False) == []  # the config alone
    write_scene(tmp_path / "scene")
    assert field_config_problems(nerf_cfg()) == []
    text = problems_of(nerf_cfg("dataset.val_source=dev"))
    assert "dataset.val_source='dev': choose one of train, val" in text
    assert "rendered once, when the run has finished" in problems_of(nerf_cfg("dataset.val_source=test"))
    (tmp_path / "scene" / "val" / "r_1.png").unlink()
    assert "r_1.png is missing" in problems_of(nerf_cfg())
    assert field_config_problems(nerf_cfg("dataset.val_source=train")) == []  # val is not read then


def test_field_config_problems_refuse_an_empty_or_open_mesh(shape_cfg, tmp_path):
    empty = tmp_path / "empty.obj"
    empty.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    assert "holds no triangle" in problems_of(shape_cfg(f"dataset.path={empty}"))
    sphere = trimesh.creation.icosphere(subdivisions=2)
    open_mesh = trimesh.Trimesh(sphere.vertices, sphere.faces[1:])
    open_mesh.export(tmp_path / "open.obj")
    assert "is not watertight" in problems_of(shape_cfg(f"dataset.path={tmp_path / 'open.obj'}"))
    with pytest.warns(UserWarning, match="not watertight"):
        assert field_config_problems(shape_cfg(f"dataset.path={tmp_path / 'open.obj'}",
                                               "dataset.require_watertight=false")) == []
    assert "is missing" in problems_of(shape_cfg(f"dataset.path={tmp_path / 'none.obj'}"))


# ----------------------------------------------------------------------------- pieces


def test_pool_batches_are_seeded_by_epoch_and_shared_out_between_ranks():
    def take(rank=0, world=1, epoch=1, seed=3):
        loader = PoolLoader(10, 4, 5, lambda i: (i,), seed=seed, device=CPU, rank=rank, world_size=world)
        loader.set_epoch(epoch)
        return torch.stack([batch for (batch,) in loader])

    whole = take()
    assert whole.shape == (5, 4)
    assert sorted(whole.flatten()[:10].tolist()) == list(range(10))  # a permutation, then the next
    assert torch.equal(whole, take()) and not torch.equal(whole, take(epoch=2))
    assert not torch.equal(whole, take(seed=4))
    assert torch.equal(torch.cat([take(rank=0, world=2), take(rank=1, world=2)], dim=1), whole)
    limited = PoolLoader(10, 4, 5, lambda i: (i,), seed=3, device=CPU, limit=2)
    limited.set_epoch(1)
    assert torch.equal(torch.stack([b for (b,) in limited]), whole[:2])


def test_rays_of_single_pixels_are_those_of_whole_views():
    poses = torch.stack([torch.from_numpy(camera_on_circle(a)).float() for a in (0.3, 1.9)])
    origins, directions = camera_rays(poses, 5, 7, 6.0)
    views, rows, cols = torch.tensor([0, 1, 1]), torch.tensor([0, 4, 2]), torch.tensor([6, 0, 3])
    o, d = pixel_rays(poses[views], rows, cols, 5, 7, 6.0)
    torch.testing.assert_close(o, origins[views, rows, cols])
    torch.testing.assert_close(d, directions[views, rows, cols])


def test_llff_downscales_the_nearest_factor_folder(tmp_path):
    write_llff(tmp_path, size=(12, 16), factor=4)
    eighth = load_llff(tmp_path, "train", downscale=8)  # images_4, halved
    quarter = load_llff(tmp_path, "train", downscale=4)
    assert eighth.images.shape[1:3] == (6, 8) and eighth.focal == pytest.approx(quarter.focal / 2)


def test_evenly_spaced_views():
    assert evenly_spaced(20, None) == list(range(20))
    assert evenly_spaced(17, 3) == [0, 8, 16]
    assert evenly_spaced(5, 9) == [0, 1, 2, 3, 4]
    assert evenly_spaced(5, 1) == [0]


@pytest.mark.slow
def test_a_grid_search_tunes_a_shapes_rate_on_held_out_pool_points(tmp_path):
    """`+search=lr_grid` on an occupancy field: every normalizer trains the grid's rates
    on a pool with 10 % held out, scored by final_val_iou; `wcnorm search` tables it."""
    pytest.importorskip("optuna")
    path = write_sphere(tmp_path / "sphere.obj")
    overrides = [o for o in (*BASE, *TINY_SHAPE) if not o.startswith("optim.lr")]
    wcnorm("train", "-m", "+search=lr_grid", *overrides, f"dataset.path={path}", "out_dir=out", "norm=none,wc",
           "hydra.sweeper.sampler.search_space={optim.lr: [0.001, 0.01]}", "hydra.sweeper.n_trials=2",
           "trainer.epochs=1", cwd=tmp_path)
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("result.json")]
    assert len(results) == 4 and all(r["status"] == "finished" for r in results)
    assert all(0 <= r["final_val_iou"] <= 1 and r["final_val_iou"] != r["final_test_iou"] for r in results)
    wcnorm("search", "out", "--out", "tables", cwd=tmp_path)
    points = pd.read_csv(tmp_path / "tables" / "search.csv")
    assert list(points["norm"]) == ["none", "wc"] and "val_iou" in points and "val_acc" not in points
    best = {r["config"]["norm"]["name"]: max((x["final_val_iou"], -x["config"]["optim"]["lr"]) for x in results
                                              if x["config"]["norm"]["name"] == r["config"]["norm"]["name"])
            for r in results}
    assert list(points["val_iou"]) == pytest.approx([best["none"][0], best["wc"][0]], abs=1e-4)
    assert "validation IoU" in (tmp_path / "tables" / "search.md").read_text()
