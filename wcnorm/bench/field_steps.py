"""The neural fields on the bench: wcnorm's step against a plain loop, and WC's cost.

Each field is its preset's network at a budget (`wc_nerf`, `wc_shape`; the size's
`field_budget`: the CPU recipe on the CPU, the paper's on a GPU), trained on a small
scene and a small shape that the bench writes to a temporary folder in the layouts
training reads (a Blender scene of random images seen from a circle of cameras; an
icosphere): a step costs the same whatever the pixels show.

* wcnorm's step: the run `wcnorm train experiment=<preset>` assembles
  (`wcnorm.training.assemble`): rays or points drawn on the device by the task's pool
  loader, `Trainer.train_step`;
* the reference: the same network and renderer in the loop a NeRF or occupancy
  script usually is: every ray (or point) precomputed in host memory, a shuffling
  DataLoader over a TensorDataset, fp32, torch.optim.Adam;
* WC's overhead: the step with `norm=wc` over the step with `norm=none`, on a fixed
  batch, interleaved repeats.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from ..fields.scenes import Scene
from ..fields.tooling import require
from ..tasks import build_task
from ..training.assemble import Run, assemble, seed_everything
from ..training.config import validate
from .setups import describe, forever

# field -> (its preset, what one training example is)
FIELDS = {"nerf": ("wc_nerf", "rays"), "occupancy": ("wc_shape", "points")}
SCENE_PX, SCENE_VIEWS = 32, 4   # the bench's Blender scene: 4 views of 32 x 32 px per split
CAMERA_DISTANCE = 4.0           # Blender-scene cameras, on a circle around the origin


def orbit_pose(angle: float, distance: float = CAMERA_DISTANCE) -> np.ndarray:
    """A camera-to-world matrix (OpenGL axes: the camera looks down its -z) on a circle in
    the z = 0.5 plane, looking at the origin."""
    back = np.array([math.cos(angle), math.sin(angle), 0.5])
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, np.cross(back, right), back], axis=1)
    pose[:3, 3] = distance * back
    return pose


def write_bench_scene(root: Path, seed: int = 0) -> Path:
    """A Blender-layout scene (train, val and test splits) of random opaque images."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for k in range(SCENE_VIEWS):
            rgba = rng.integers(0, 256, (SCENE_PX, SCENE_PX, 4), dtype=np.uint8)
            rgba[..., 3] = 255
            Image.fromarray(rgba, "RGBA").save(root / split / f"r_{k}.png")
            frames.append({"file_path": f"./{split}/r_{k}",
                           "transform_matrix": orbit_pose(2 * math.pi * k / SCENE_VIEWS).tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    return root


def write_bench_shape(path: Path) -> Path:
    require("trimesh").creation.icosphere(subdivisions=3, radius=0.6).export(path)
    return path


def field_data(folder: Path, field: str) -> list[str]:
    """The dataset overrides of the bench's scene or shape, written into `folder`."""
    if field == "nerf":
        return [f"dataset.root={write_bench_scene(folder / 'scene')}"]
    return [f"dataset.path={write_bench_shape(folder / 'sphere.obj')}"]


def field_config(field: str, budget: str, data: list[str], *, norm: str, device="cpu",
                 batch: int | None = None) -> DictConfig:
    """The config of `wcnorm train experiment=<field's preset> budget=<budget> norm=<norm>`
    on the bench's data (`data`: its overrides), without evaluation or diagnostics."""
    preset, _ = FIELDS[field]
    args = [f"experiment={preset}", f"budget={budget}", f"norm={norm}", *data, f"trainer.device='{device}'",
            "trainer.progress=false", "diagnostics.conditioning=false",
            *([f"trainer.batch_size={batch}"] if batch else [])]
    with initialize_config_module(config_module="wcnorm.conf", version_base="1.3"):
        cfg = compose("train", overrides=args)
    validate(cfg)
    return cfg


def network_shape(cfg: DictConfig) -> str:
    """The bench's `shape` column for a field: its MLP (and the NeRF's samples per ray)."""
    m = cfg.model
    mlp = f"mlp {m.depth}x{m.width}"
    return f"{mlp}, {m.n_coarse}+{m.n_fine} samples" if m.name == "nerf" else mlp


# ----------------------------------------------------------------------------- the two steps


def build_field_run(cfg: DictConfig, device) -> Run:
    run = assemble(cfg, torch.device(device))
    run.model.train()
    return run


def wcnorm_field_step(cfg: DictConfig, device):
    """(step, setup): the task's next batch (drawn on the device), then Trainer.train_step."""
    run = build_field_run(cfg, device)
    batches = forever(run.train_loader)
    return (lambda: run.trainer.train_step(*next(batches))[0]), describe(run)


def fixed_field_step(cfg: DictConfig, device, *, with_model: bool = False, batch_weights: bool = True):
    """Trainer.train_step on one fixed batch: the model step alone (and the model).
    `batch_weights=False`: the effective weights computed lazily (Trainer.batch_weights)."""
    trainer = build_field_run(cfg, device).trainer
    trainer.batch_weights = batch_weights
    batch = next(iter(trainer.train_loader))
    step = lambda: trainer.train_step(*batch)[0]  # noqa: E731
    return (step, trainer.model) if with_model else step


def _examples(task) -> tuple[torch.Tensor, ...]:
    """Every training example of a field task, in host memory: (origins, directions,
    viewdirs, colours) of every pixel of every training view, or (points, labels)."""
    if isinstance(task.data, Scene):
        rays = task.data.rays()
        return tuple(t.reshape(-1, 3).cpu() for t in (*rays, task.data.images))
    return task.data.points.cpu(), task.data.labels.cpu()


def _plain_loss(model, batch) -> torch.Tensor:
    if len(batch) == 4:  # rays: the rendering loss of every pass (coarse and fine)
        passes = model(*batch[:3])
        return sum(F.mse_loss(p.rgb, batch[3]) for p in passes.values())
    return F.binary_cross_entropy_with_logits(model(batch[0]), batch[1])


def reference_field_step(cfg: DictConfig, device, *, workers: int = 0):
    """(step, setup): the plain loop over the same task's network and examples (see the
    module docstring)."""
    device = torch.device(device)
    seed_everything(cfg.seed, bool(cfg.trainer.deterministic))
    task = build_task(cfg, device)
    model = task.model.train()
    loader = DataLoader(TensorDataset(*_examples(task)), int(cfg.trainer.batch_size), shuffle=True,
                        drop_last=True, num_workers=workers, pin_memory=device.type == "cuda")
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg.optim.lr))
    batches = forever(loader)

    def step():
        batch = [t.to(device, non_blocking=True) for t in next(batches)]
        loss = _plain_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, f"reference[fp32,DataLoader(workers={workers}),Adam]"
