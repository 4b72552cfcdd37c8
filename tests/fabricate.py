"""Fabricate run directories with known numbers, following the trainer's contract.

Used by the table, plot and claims tests: no training, only files. Classification runs
(`make_run`), NeRF runs (`make_nerf_run`: test renders as PNGs) and 3D-shape runs
(`make_shape_run`: a mesh and its picture).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import yaml


def make_run(root, *, model="resnet18", dataset="cifar10", norm="bn", seed=0,
             final_acc=90.0, best_gap=0.5, depth=None, experiment="test_preset",
             budget="short", epochs=4, finished=True, conditioning=False,
             loss_scale=1.0, lr=0.1, batch_size=128, device="Fake GPU",
             commit="abc1234", date="2024-10-01T12:00:00", tag="", norm_cfg=None,
             weight_method=None) -> Path:
    """Write one run directory and return it.

    The final-epoch test accuracy is exactly ``final_acc`` and the best-epoch one
    ``final_acc + best_gap``. An unfinished run stops half-way with absurd accuracies
    (0 %), so a test notices if they ever enter a mean.
    """
    name = f"{model}_{dataset}_{norm}" + (f"_p{depth}" if depth is not None else "") + tag
    run_dir = Path(root) / str(experiment) / name / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = {"name": model} | ({"depth": depth} if depth is not None else {})
    config = {
        "model": model_cfg, "dataset": {"name": dataset}, "norm": {"name": norm},
        "seed": seed, "experiment": experiment, "budget": budget,
        "trainer": {"epochs": epochs, "batch_size": batch_size},
        "optim": {"name": "sgd", "lr": lr},
    }
    config["norm"].update(norm_cfg or {})  # e.g. {"act": "bn", "weight": "wc", "wc": {...}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    done = epochs if finished else max(1, epochs // 2)
    ep = np.arange(1, done + 1)
    test_acc = final_acc - 10.0 * (epochs - ep) / epochs
    if finished:
        test_acc[-2 if done > 1 else -1] = final_acc + best_gap  # the best epoch
        test_acc[-1] = final_acc
    else:
        test_acc[:] = 0.0
    train_loss = loss_scale * 2.0 * 0.6 ** ep
    metrics = pd.DataFrame({
        "epoch": ep, "lr": lr * (1 - (ep - 1) / epochs), "train_loss": train_loss,
        "train_acc": test_acc + 5, "test_loss": train_loss * 1.2, "test_acc": test_acc,
        "epoch_time_s": 1.0, "images_per_s": 5000.0,
        "enorm_objective": 1.0 / ep,  # an extra column the loader must tolerate
    })
    metrics.to_csv(run_dir / "metrics.csv", index=False)

    if conditioning:
        rows = []
        for e in range(done + 1):
            for layer, base in (("conv1", 40.0), ("layer1.0.conv1", 80.0), ("fc", 20.0)):
                raw = base * (1 + 0.1 * e)
                eff = raw / (2.0 if "wc" in norm or norm == "bn_e" else 1.0)
                rows.append({"epoch": e, "layer": layer, "shape": "64x27", "kappa_eff": eff,
                             "kappa_raw": raw, "row_norm_spread": 1.0})
        pd.DataFrame(rows).to_csv(run_dir / "conditioning.csv", index=False)

    if finished:
        result = {
            "status": "finished", "epochs": epochs, "final_test_acc": final_acc,
            "final_test_loss": float(metrics.test_loss.iloc[-1]),
            "final_train_loss": float(metrics.train_loss.iloc[-1]),
            "best_test_acc": final_acc + max(best_gap, 0.0),
            "best_epoch": done - 1 if best_gap > 0 else done,
            "wall_time_s": 10.0 * epochs, "num_params": 11_000_000,
            "torch_version": "2.4.0", "cuda_version": None, "device_name": device,
            "git_commit": commit, "date": date, "config": config,
        }
        if weight_method is not None:  # what describe_weight_method records
            result["weight_method"] = weight_method
        (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return run_dir


# The WC-layout grid the table tests use: (model, dataset, norm) -> finished accuracies
# by seed. googlenet/cifar100/bn_wc is absent on purpose (a missing cell), and
# resnet18/cifar10/bn_ws lacks seed 2 (a missing seed).
WC_GRID = {
    ("resnet18", "cifar10", "bn"): {0: 90.0, 1: 91.0, 2: 92.0},
    ("resnet18", "cifar10", "bn_wc"): {0: 92.0, 1: 93.0, 2: 94.0},
    ("resnet18", "cifar10", "bn_ws"): {0: 89.0, 1: 90.0},
    ("googlenet", "cifar100", "bn"): {0: 70.0, 1: 72.0, 2: 74.0},
    ("googlenet", "cifar100", "bn_ws"): {0: 60.0, 1: 62.0},
}


def make_wc_grid(root) -> Path:
    """WC_GRID as run dirs, plus one unfinished run (googlenet/cifar100/bn_ws seed 2)
    and one junk folder."""
    for (model, dataset, norm), accs in WC_GRID.items():
        for seed, acc in accs.items():
            make_run(root, model=model, dataset=dataset, norm=norm, seed=seed,
                     final_acc=acc, experiment="wc_test", conditioning="wc" in norm,
                     date=f"2024-10-0{seed + 1}T12:00:00")
    make_run(root, model="googlenet", dataset="cifar100", norm="bn_ws", seed=2,
             final_acc=99.0, experiment="wc_test", finished=False)
    junk = Path(root) / "wc_test" / "junk"
    junk.mkdir(parents=True, exist_ok=True)
    (junk / "result.json").write_text("{not json")
    return Path(root)


def make_fc_grid(root, accs: dict[tuple[int, str], float], seeds=(0, 1)) -> Path:
    """ENorm FC runs: ``accs[(depth, norm)]`` is the mean accuracy; seeds spread +-0.5."""
    for (depth, norm), acc in accs.items():
        for i, seed in enumerate(seeds):
            make_run(root, model="enorm_fc", dataset="cifar10", norm=norm, seed=seed,
                     depth=depth, final_acc=acc + (i - (len(seeds) - 1) / 2),
                     experiment="enorm_fc", lr=0.05)
    return Path(root)


# --- neural fields ----------------------------------------------------------------------

SCENE_LAYOUTS = {"lego": "blender", "fern": "llff"}  # scene -> its dataset layout


def _picture(path: Path, seed: int) -> None:
    """A small PNG with content (a colour gradient with noise), different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:64] / 64.0
    img = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + seed)], axis=-1)
    img = np.clip(img + 0.1 * rng.standard_normal(img.shape), 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    mpimg.imsave(path, img)


def _field_run_dir(root, experiment, model, subject, norm, seed, config) -> Path:
    run_dir = Path(root) / str(experiment) / f"{model}_{subject}_{norm}" / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run_dir


def _field_config(model, dataset, norm, seed, experiment, budget, epochs, lr) -> dict:
    return {"model": {"name": model}, "dataset": dataset, "norm": {"name": norm},
            "seed": seed, "experiment": experiment, "budget": budget,
            "trainer": {"epochs": epochs, "batch_size": 1024},
            "optim": {"name": "adam", "lr": lr}}


def _finish(run_dir: Path, config: dict, epochs: int, **numbers) -> None:
    result = {"status": "finished", "epochs": epochs, **numbers, "best_epoch": epochs,
              "wall_time_s": 10.0 * epochs, "num_params": 600_000, "torch_version": "2.4.0",
              "cuda_version": None, "device_name": "Fake GPU", "git_commit": "abc1234",
              "date": "2024-10-01T12:00:00", "config": config}
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))


def make_nerf_run(root, *, scene="lego", norm="wc", seed=0, test_psnr=30.0, test_ssim=None,
                  epochs=6, eval_every=2, finished=True, views=("r_0", "r_1"),
                  render_names="{view}_{role}.png", scene_key=True,
                  experiment="wc_nerf", budget="short", lr=5e-4) -> Path:
    """One NeRF run directory. The end-of-run test PSNR is ``test_psnr`` (SSIM
    ``test_ssim``, default ``test_psnr / 40``); the validation PSNR is 1 dB lower, rising
    to its best at the last epoch, logged every ``eval_every`` epochs (the val columns are
    empty in between). As the trainer does, the test ``views`` are rendered to
    ``renders/test/`` (result.json's ``renders``), named
    ``render_names.format(view=..., role="pred" | "gt")``, and the last epoch's val
    views to ``renders/epoch_<NNN>/``. An unfinished run stops half-way with a 0 dB
    validation PSNR, and has no result.json and no test renders. ``scene_key=False``
    names the scene only by its data folder (``dataset.root``)."""
    test_ssim = test_psnr / 40 if test_ssim is None else test_ssim
    dataset = {"name": SCENE_LAYOUTS.get(scene, "blender"),
               "root": f"data/{SCENE_LAYOUTS.get(scene, 'blender')}/{scene}"}
    if scene_key:
        dataset["scene"] = scene
    config = _field_config("nerf", dataset, norm, seed, experiment, budget, epochs, lr)
    subject = scene if lr == 5e-4 else f"{scene}_lr{lr:g}"
    run_dir = _field_run_dir(root, experiment, "nerf", subject, norm, seed, config)

    done = epochs if finished else max(1, epochs // 2)
    ep = np.arange(1, done + 1)
    val = test_psnr - 1.0 - 4.0 * (epochs - ep) / epochs if finished else 0.0 * ep
    evaluated = (ep % eval_every == 0) | (ep == epochs)
    train_loss = 0.05 * 0.7 ** ep
    metrics = pd.DataFrame({
        "epoch": ep, "lr": 5e-4 * 0.9 ** (ep - 1), "train_loss": train_loss,
        "train_psnr": -10 * np.log10(train_loss),
        "val_psnr": np.where(evaluated, val, np.nan),
        "val_ssim": np.where(evaluated, val / 40, np.nan),
        "epoch_time_s": 2.0, "rays_per_s": 50_000.0,
    })
    metrics.to_csv(run_dir / "metrics.csv", index=False)
    if not finished:
        return run_dir
    for i, view in enumerate(views):
        for role in ("pred", "gt"):
            # The ground truth is the same picture in every run of a scene.
            picture_seed = 1000 * i + sum(map(ord, scene if role == "gt" else norm + str(seed)))
            name = render_names.format(view=view, role=role)
            _picture(run_dir / "renders" / "test" / name, picture_seed)
            if i == 0:  # a val view of the last epoch: never a test render
                _picture(run_dir / "renders" / f"epoch_{epochs:03d}" / name.replace(view, "r_9"),
                         picture_seed + 1)
    _finish(run_dir, config, epochs, metric="val_psnr",
            final_train_loss=float(train_loss[-1]), final_train_psnr=float(metrics.train_psnr.iloc[-1]),
            final_val_psnr=float(val[-1]), final_val_ssim=float(val[-1] / 40),
            best_val_psnr=float(val[-1]), final_test_psnr=test_psnr, final_test_ssim=test_ssim,
            test_views=len(views), renders="renders/test")
    return run_dir


def make_shape_run(root, *, shape="armadillo", norm="wc", seed=0, test_iou=0.95,
                   chamfer=0.01, epochs=4, finished=True, mesh_picture=True,
                   experiment="wc_shape", budget="short") -> Path:
    """One 3D-shape run directory: final (and best) test IoU ``test_iou``, Chamfer
    distance ``chamfer`` (None: the run reports none), ``mesh.obj`` and, with
    ``mesh_picture``, ``mesh.png`` (result.json's ``mesh``, ``mesh_picture``).
    Unfinished: half the epochs at IoU 0."""
    dataset = {"name": "mesh", "path": f"data/meshes/{shape}.ply", "shape": shape}
    config = _field_config("occupancy", dataset, norm, seed, experiment, budget, epochs, 1e-3)
    run_dir = _field_run_dir(root, experiment, "occupancy", shape, norm, seed, config)

    done = epochs if finished else max(1, epochs // 2)
    ep = np.arange(1, done + 1)
    iou = test_iou - 0.2 * (epochs - ep) / epochs if finished else 0.0 * ep
    train_loss = 0.3 * 0.6 ** ep
    metrics = pd.DataFrame({
        "epoch": ep, "lr": 1e-3 * np.ones(done), "train_loss": train_loss,
        "train_acc": 90 + ep, "test_iou": iou, "test_acc": 50 + 50 * iou,
        "epoch_time_s": 1.0, "points_per_s": 1e6,
    })
    metrics.to_csv(run_dir / "metrics.csv", index=False)
    if not finished:
        return run_dir
    (run_dir / "mesh.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    numbers = {"final_test_chamfer": chamfer} if chamfer is not None else {}
    if mesh_picture:
        _picture(run_dir / "mesh.png", sum(map(ord, f"{shape}{norm}{seed}")))
        numbers["mesh_picture"] = "mesh.png"
    _finish(run_dir, config, epochs, metric="test_iou", final_train_loss=float(train_loss[-1]),
            final_train_acc=float(metrics.train_acc.iloc[-1]), final_test_iou=test_iou,
            final_test_acc=float(metrics.test_acc.iloc[-1]), best_test_iou=test_iou,
            mesh="mesh.obj", **numbers)
    return run_dir


# The NeRF grid the tests use: (scene, norm) -> test PSNR by seed. fern/ws is absent
# (a missing cell: WS is optional in the preset), lego/ws lacks seed 2.
NERF_GRID = {
    ("lego", "none"): {0: 30.0, 1: 30.5, 2: 31.0},
    ("lego", "wn"): {0: 31.0, 1: 31.5, 2: 32.0},
    ("lego", "ws"): {0: 30.5, 1: 31.5},
    ("lego", "wc"): {0: 33.0, 1: 33.5, 2: 34.0},
    ("fern", "none"): {0: 24.0, 1: 24.5, 2: 25.0},
    ("fern", "wn"): {0: 25.0, 1: 25.5, 2: 26.0},
    ("fern", "wc"): {0: 26.5, 1: 27.0, 2: 27.5},
}

# The shape grid: (shape, norm) -> (test IoU, Chamfer distance) by seed. WC has the
# highest IoU and the lowest Chamfer distance on both shapes; bunny/ws seed 1 reports no
# Chamfer distance.
SHAPE_GRID = {
    (shape, norm): {seed: (iou + 0.002 * seed, cd * (1 + 0.05 * seed)) for seed in (0, 1, 2)}
    for shape, off in (("armadillo", 0.0), ("bunny", 0.01))
    for norm, iou, cd in (("none", 0.90 - off, 4e-3), ("wn", 0.92 - off, 3e-3),
                          ("ws", 0.91 - off, 3.5e-3), ("wc", 0.95 - off, 1e-3))
}


def make_nerf_grid(root, **kw) -> Path:
    """NERF_GRID as run dirs, plus one unfinished run (lego/ws seed 2)."""
    for (scene, norm), psnrs in NERF_GRID.items():
        for seed, psnr in psnrs.items():
            make_nerf_run(root, scene=scene, norm=norm, seed=seed, test_psnr=psnr, **kw)
    make_nerf_run(root, scene="lego", norm="ws", seed=2, test_psnr=99.0, finished=False, **kw)
    return Path(root)


def make_shape_grid(root, **kw) -> Path:
    for (shape, norm), numbers in SHAPE_GRID.items():
        for seed, (iou, cd) in numbers.items():
            no_cd = (shape, norm, seed) == ("bunny", "ws", 1)
            make_shape_run(root, shape=shape, norm=norm, seed=seed, test_iou=iou,
                           chamfer=None if no_cd else cd, **kw)
    return Path(root)
