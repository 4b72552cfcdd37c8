"""3D shape modelling: an occupancy MLP fitted to one watertight mesh (binary occupancy,
the recipe of docs/methods.md section 5), scored by IoU on held-out points and by the
Chamfer distance of the surface it defines.

- Data: the mesh normalised into [-1, 1]^3 (`wcnorm.fields.shapes`); a pool of
  `dataset.train_points` labelled points (uniform in the box and near the surface,
  labelled by winding numbers), drawn once at start-up from the run's seed. An epoch
  is `dataset.steps_per_epoch` batches of `trainer.batch_size` points of the pool
  (null: one pass over it), shuffled per epoch (`PoolLoader`).
- Loss: binary cross-entropy with logits; sums [loss x points, correct at 0.5, points]
  -> `train_loss`, `train_acc` (%).
- Evaluation, every epoch: the held-out set of `dataset.eval_points` points, drawn from
  its own fixed seed (the same points for every run) -> `test_iou` (IoU of logit > 0
  against the labels, a fraction), `test_acc` (%), and the IoU of its uniform and its
  near-surface points (`test_iou_uniform`, `test_iou_near`). With `dataset.val_split`
  > 0, that fraction of the training pool is held out of training and scored the same
  way first (`val_iou`, `val_acc`, ...): the set a learning-rate search tunes on.
- End of run: the surface (marching cubes of the logits at level 0 on a grid of
  `dataset.mc_resolution`^3 vertices) -> ``mesh.obj``, a picture of it ``mesh.png``,
  and `final_test_chamfer` (Chamfer-L1 to the true surface, in the normalised
  units, `dataset.chamfer_points` samples of each).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ..errors import ConfigError
from ..fields.pictures import mesh_png
from ..fields.shapes import (
    OccupancySet,
    extract_surface,
    load_mesh,
    normalize_mesh,
    occupancy_sets,
    surface_chamfer,
)
from ..fields.tooling import require
from ..models.coordinate_mlps import build
from ..outputs import MESH_FILE, MESH_PICTURE, atomic_write_bytes, atomic_write_text
from .field_common import PoolLoader, field_model
from .task import Task, sums_tensor

if TYPE_CHECKING:  # the `fields` extra (wcnorm.fields.tooling), imported where it is used
    import trimesh


def _iou(intersection: Tensor, union: Tensor, points: Tensor) -> float:
    """IoU from counts: two empty sets agree everywhere (1, as `wcnorm.fields.metrics.iou`);
    no points at all say nothing (NaN)."""
    if points.item() == 0:
        return math.nan
    return 1.0 if union.item() == 0 else intersection.item() / union.item()


def occupancy_counts(inside: Tensor, labels: Tensor, near_surface: Tensor) -> Tensor:
    """[intersection, union, points, correct] of all points, then [intersection, union,
    points] of the uniform and of the near-surface ones: sums that add over chunks and
    ranks."""
    truth = labels.bool()
    both, either = inside & truth, inside | truth
    parts = [both.sum(), either.sum(), len(labels), (inside == truth).sum()]
    for subset in (~near_surface, near_surface):
        parts += [(both & subset).sum(), (either & subset).sum(), subset.sum()]
    return sums_tensor(*parts, device=labels.device)


def obj_text(mesh: trimesh.Trimesh) -> str:
    """A Wavefront OBJ of the mesh (a comment alone when it is empty)."""
    if len(mesh.faces) == 0:
        return "# no surface: the field does not cross its level anywhere on the grid\n"
    return require("trimesh").exchange.obj.export_obj(mesh, include_normals=False, include_texture=False)


class OccupancyTask(Task):
    metric, higher_is_better, unit = "test_iou", True, "points"
    log_keys = ("train_loss", "train_acc", "test_iou", "test_acc")

    def __init__(self, train: OccupancySet, held_out: OccupancySet, reference: trimesh.Trimesh,
                 model: nn.Module, train_loader: PoolLoader, *, eval_batch: int,
                 limit_eval_batches: int | None, mc_resolution: int, chamfer_points: int, name: str,
                 val: OccupancySet | None = None, rank: int = 0, world_size: int = 1):
        self.data, self.held_out, self.reference, self.name = train, held_out, reference, name
        self.val = val  # points of the pool held out of training (dataset.val_split), or None
        self.model, self.train_loader = model, train_loader
        self.eval_batch, self.limit_eval_batches = eval_batch, limit_eval_batches
        self.mc_resolution, self.chamfer_points = mc_resolution, chamfer_points
        self.rank, self.world_size = rank, world_size

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        points, labels = batch
        logits = model(points).float()
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        correct = ((logits > 0) == labels.bool()).sum()
        return loss, sums_tensor(loss.detach() * len(labels), correct, len(labels), device=labels.device)

    def train_metrics(self, sums: Tensor) -> dict:
        n = max(sums[2].item(), 1)
        return {"train_loss": sums[0].item() / n, "train_acc": 100 * sums[1].item() / n}

    def evaluate(self, model, *, autocast, reduce, epoch: int) -> dict:
        scores = {}
        if self.val is not None:
            scores |= {f"val_{k}": v for k, v in self._score(model, self.val, autocast, reduce).items()}
        return scores | {f"test_{k}": v for k, v in self._score(model, self.held_out, autocast, reduce).items()}

    def _score(self, model, points_set: OccupancySet, autocast, reduce) -> dict:
        """iou, acc (%), iou_uniform, iou_near of the model on `points_set`."""
        mine = slice(self.rank, None, self.world_size)
        points, labels, near = (t[mine] for t in (points_set.points, points_set.labels,
                                                  points_set.near_surface))
        chunks = range(0, len(labels), self.eval_batch)[: self.limit_eval_batches]
        sums = torch.zeros(10, dtype=torch.float64, device=labels.device)
        for start in chunks:
            part = slice(start, start + self.eval_batch)
            with autocast():
                inside = model(points[part]).float() > 0
            sums += occupancy_counts(inside, labels[part], near[part])
        sums = reduce(sums)
        return {"iou": _iou(*sums[0:3]), "acc": 100 * sums[3].item() / max(sums[2].item(), 1),
                "iou_uniform": _iou(*sums[4:7]), "iou_near": _iou(*sums[7:10])}

    def finish(self, model: nn.Module, run_dir: Path | None) -> dict:
        model.eval()
        device = next(model.parameters()).device
        surface = extract_surface(model, self.mc_resolution, device=device)
        result = {"final_test_chamfer": surface_chamfer(surface, self.reference, self.chamfer_points),
                  "mc_resolution": self.mc_resolution, "mesh_faces": len(surface.faces)}
        if run_dir is not None:
            run_dir = Path(run_dir)
            atomic_write_text(run_dir / MESH_FILE, obj_text(surface))
            atomic_write_bytes(run_dir / MESH_PICTURE, mesh_png(surface, f"{self.name}: the field's surface"))
            result.update(mesh=MESH_FILE, mesh_picture=MESH_PICTURE)
        return result


def hold_out_points(pool: OccupancySet, fraction: float, name: str) -> tuple[OccupancySet, OccupancySet | None]:
    """(the training pool, its held-out part or None): `dataset.val_split` of the pool's
    uniform points and of its near-surface points (the mix the training sees), the last
    ones of each kind (each kind is an i.i.d. sample, so its last points are one too)."""
    if not fraction:
        return pool, None
    held = torch.zeros_like(pool.near_surface)
    for kind in (~pool.near_surface, pool.near_surface):
        index = kind.nonzero().flatten()
        held[index[len(index) - round(len(index) * fraction):]] = True
    if held.all() or not held.any():
        what = "all" if held.all() else "none"
        raise ConfigError(f"dataset.val_split={fraction} holds out {what} of the {len(held)} training points "
                          f"of {name}: choose a fraction that leaves points to train on and to validate on")
    return _part(pool, ~held), _part(pool, held)


def _part(pool: OccupancySet, rows: Tensor) -> OccupancySet:
    return OccupancySet(pool.points[rows], pool.labels[rows], pool.near_surface[rows])


def _to(points: OccupancySet, device) -> OccupancySet:
    return OccupancySet(points.points.to(device), points.labels.to(device), points.near_surface.to(device))


def shape_task(cfg: DictConfig, device: torch.device, *, rank: int = 0, world_size: int = 1,
               run_dir: Path | None = None) -> OccupancyTask:
    """The shape task of `cfg` (dataset=mesh, model=occupancy), its model on `device`."""
    d, t = cfg.dataset, cfg.trainer
    reference = normalize_mesh(load_mesh(d.path, require_watertight=bool(d.require_watertight)))
    train, held_out = occupancy_sets(reference, n_train=int(d.train_points), n_eval=int(d.eval_points),
                                     seed=cfg.seed, near_fraction=float(d.near_fraction),
                                     sigma=float(d.surface_sigma))
    train, val = hold_out_points(train, float(d.get("val_split") or 0), name=d.get("shape") or Path(d.path).stem)
    train, held_out = _to(train, device), _to(held_out, device)
    val = None if val is None else _to(val, device)
    name, options = field_model(cfg.model)
    model = build(name, **options).to(device)
    batch = int(t.batch_size)
    steps = int(d.steps_per_epoch or max(1, len(train.labels) // batch))
    loader = PoolLoader(len(train.labels), batch, steps, lambda i: (train.points[i], train.labels[i]),
                        seed=cfg.seed, device=device, limit=t.limit_batches, rank=rank, world_size=world_size)
    return OccupancyTask(train, held_out, reference, model, loader,
                         eval_batch=int(t.eval_batch_size or 2 * batch), limit_eval_batches=t.limit_eval_batches,
                         mc_resolution=int(d.mc_resolution), chamfer_points=int(d.chamfer_points),
                         name=d.get("shape") or Path(d.path).stem, val=val, rank=rank, world_size=world_size)
