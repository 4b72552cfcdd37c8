"""3D shapes as occupancy: meshes, labelled points, surfaces, Chamfer distance.

The data of an occupancy network (Mescheder et al. 2019): a watertight triangle mesh
is centred on its bounding box and scaled so that its longest side spans
[-`MESH_EXTENT`, `MESH_EXTENT`] (inside [-1, 1]^3, with a margin so that near-surface
points and the marching-cubes grid surround the whole surface). Points are drawn
uniformly in the box [-1, 1]^3 and near the surface (area-uniform surface samples plus
isotropic Gaussian jitter of standard deviation `SURFACE_SIGMA`, clipped to the box),
half and half; a point is inside where the generalized winding number (Jacobson et al.
2013, libigl) exceeds 1/2 in absolute value. On a watertight mesh the winding number is
exactly 0 outside and +-1 inside, so these labels are exact; libigl's fast
(Barnes-Hut) winding number is used, and recomputed exactly where it is ambiguous.

The evaluation set is drawn from its own fixed seed stream, independent of the
training seed, so every run of a shape is scored on the same points. A field's
surface is extracted by marching cubes (scikit-image) on a grid over [-1, 1]^3, with
the field evaluated chunk by chunk; surfaces are compared by the Chamfer-L1 distance
of Occupancy Networks, with scipy's k-d tree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from ..errors import DatasetUnavailable, WcnormError
from .tooling import require

if TYPE_CHECKING:  # the mesh tooling is the `fields` extra, imported where it is used
    import trimesh

__all__ = ["MeshError", "MESH_EXTENT", "SURFACE_SIGMA", "NEAR_FRACTION", "N_TRAIN_POINTS",
           "N_EVAL_POINTS", "EVAL_SEED", "OccupancySet", "load_mesh", "normalize_mesh",
           "sample_points", "inside", "occupancy_sets", "extract_surface", "chamfer_distance",
           "surface_chamfer"]

MESH_EXTENT = 0.9  # the longest side of the normalised mesh spans [-0.9, 0.9]
SURFACE_SIGMA = 0.04  # near-surface jitter: 2 % of the box side (2)
NEAR_FRACTION = 0.5  # share of near-surface points (the rest uniform in the box)
N_TRAIN_POINTS = 500_000
N_EVAL_POINTS = 100_000
EVAL_SEED = 2024  # the held-out points' own seed: the same set for every run
AMBIGUOUS = 0.25  # fast winding numbers within this of 1/2 are recomputed exactly
BOX = 1.0  # the box is [-BOX, BOX]^3


class MeshError(WcnormError, ValueError):
    """A mesh file that cannot serve as an occupancy target (empty, not watertight)."""


# -------------------------------------------------------------------------- meshes
def load_mesh(path: str | Path, *, require_watertight: bool = True) -> trimesh.Trimesh:
    """A triangle mesh (.obj, .ply, ... anything trimesh reads), checked: an empty mesh is
    an error; a mesh that is not watertight is an error, or a warning with
    ``require_watertight=False`` (its labels are then a winding-number estimate)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetUnavailable(f"mesh {path} is missing")
    trimesh = require("trimesh")
    try:
        mesh = trimesh.load(path, force="mesh")
    except Exception as err:  # trimesh raises many types for unreadable files
        raise MeshError(f"{path} could not be read as a mesh ({type(err).__name__}: {err})") from err
    if len(mesh.faces) == 0 or not mesh.is_watertight or not np.isfinite(np.asarray(mesh.vertices)).all():
        _check_finite_vertices(path, mesh)  # before saying "empty" or "not watertight"
    if len(mesh.faces) == 0:
        raise MeshError(f"{path} holds no triangle: an occupancy target needs a closed surface")
    if not mesh.is_watertight:
        message = (f"{path} is not watertight (some edges do not join exactly two triangles): "
                   "inside/outside is then ill-defined; repair the mesh (e.g. remesh it closed)")
        if require_watertight:
            raise MeshError(message + ", or accept approximate labels with require_watertight=False")
        warnings.warn(message + "; labels are generalized-winding-number estimates", stacklevel=2)
    return mesh


def _check_finite_vertices(path: Path, mesh: trimesh.Trimesh) -> None:
    """Name a vertex that is not finite (NaN or inf): trimesh drops such vertices with
    their triangles as it loads, which would then read as a hole ("not watertight")."""
    raw = mesh
    if np.isfinite(np.asarray(mesh.vertices)).all():
        trimesh = require("trimesh")
        try:
            raw = trimesh.load(path, force="mesh", process=False)  # the vertices as written
        except Exception:  # noqa: BLE001 - it loaded processed: nothing more to learn here
            return
    bad = np.flatnonzero(~np.isfinite(np.asarray(raw.vertices)).all(axis=1))
    if len(bad):
        raise MeshError(f"{path}: vertex {bad[0]} (of {len(raw.vertices)}) is not finite (NaN or inf)"
                        + (f", and {len(bad) - 1} more" if len(bad) > 1 else "") + "; fix or remove it")


# The memory that extracting a surface holds at once, per vertex of the grid: its float32
# values, and marching cubes' own copies and per-cube work (a lower bound).
SURFACE_BYTES_PER_VERTEX = 8


def surface_memory(resolution: int) -> int:
    """Bytes that `extract_surface` needs at least on a `resolution`^3 grid."""
    return SURFACE_BYTES_PER_VERTEX * int(resolution) ** 3


def normalize_mesh(mesh: trimesh.Trimesh, extent: float = MESH_EXTENT) -> trimesh.Trimesh:
    """A copy centred on its bounding box, its longest side scaled to [-extent, extent]."""
    lo, hi = mesh.bounds
    out = mesh.copy()
    out.apply_translation(-(lo + hi) / 2)
    out.apply_scale(2 * extent / (hi - lo).max())
    return out


# -------------------------------------------------------------------------- points
def sample_points(mesh: trimesh.Trimesh, n: int, rng: np.random.Generator, *,
                  near_fraction: float = NEAR_FRACTION,
                  sigma: float = SURFACE_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 3) float64, near_surface (n,) bool): uniform in the box and jittered
    surface samples, clipped to the box."""
    n_near = int(round(n * near_fraction))
    uniform = rng.uniform(-BOX, BOX, size=(n - n_near, 3))
    surface, _ = require("trimesh").sample.sample_surface(mesh, n_near, seed=rng)
    near = np.clip(surface + rng.normal(0.0, sigma, size=surface.shape), -BOX, BOX)
    points = np.concatenate([uniform, near])
    return points, np.arange(n) >= n - n_near


def inside(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Whether each point is inside: |generalized winding number| > 1/2 (the absolute
    value makes the test indifferent to the mesh's orientation)."""
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    points = np.ascontiguousarray(points, dtype=np.float64)
    igl = require("igl")
    winding = np.abs(igl.fast_winding_number(vertices, faces, points))
    unsure = np.abs(winding - 0.5) < AMBIGUOUS
    if unsure.any():
        winding[unsure] = np.abs(igl.winding_number(vertices, faces, points[unsure]))
    return winding > 0.5


@dataclass
class OccupancySet:
    points: Tensor  # (n, 3) float32 in [-1, 1]^3
    labels: Tensor  # (n,) float32, 1 inside, 0 outside (BCE targets)
    near_surface: Tensor  # (n,) bool: drawn near the surface (else uniform in the box)


def _labelled(mesh: trimesh.Trimesh, n: int, seed_words: list[int], **sampling) -> OccupancySet:
    rng = np.random.default_rng(np.random.SeedSequence(seed_words))
    points, near = sample_points(mesh, n, rng, **sampling)
    labels = inside(mesh, points)
    return OccupancySet(torch.from_numpy(points).float(), torch.from_numpy(labels).float(),
                        torch.from_numpy(near))


def occupancy_sets(mesh: trimesh.Trimesh, *, n_train: int = N_TRAIN_POINTS,
                   n_eval: int = N_EVAL_POINTS, seed: int = 0, eval_seed: int = EVAL_SEED,
                   **sampling) -> tuple[OccupancySet, OccupancySet]:
    """(training set, evaluation set) of a *normalised* mesh. The training points depend
    on ``seed``, the evaluation points only on ``eval_seed``; the two streams are
    distinct even for equal seeds. ``sampling``: `sample_points`' keywords."""
    train = _labelled(mesh, n_train, [seed, 0], **sampling)
    held_out = _labelled(mesh, n_eval, [eval_seed, 1], **sampling)
    return train, held_out


# ------------------------------------------------------------------------ surfaces
def _grid_points(flat: Tensor, resolution: int) -> Tensor:
    """Coordinates of flat grid indices (i, j, k in C order) on linspace(-1, 1, res)^3."""
    ijk = torch.stack([flat // resolution**2, (flat // resolution) % resolution, flat % resolution],
                      dim=-1)
    return ijk.float() * (2 * BOX / (resolution - 1)) - BOX


@torch.no_grad()
def extract_surface(field: Callable[[Tensor], Tensor], resolution: int = 256, *,
                    level: float = 0.0, chunk: int = 2**18, device=None) -> trimesh.Trimesh:
    """The ``level`` set of ``field`` (points (N, 3) -> values (N,), larger inside; e.g.
    occupancy logits, level 0 = probability 1/2) by marching cubes on a ``resolution``^3
    grid over [-1, 1]^3, evaluating ``chunk`` points at a time. Empty where the field
    does not cross the level."""
    trimesh, measure = require("trimesh"), require("skimage.measure")
    values = torch.empty(resolution**3)
    for start in range(0, resolution**3, chunk):
        flat = torch.arange(start, min(start + chunk, resolution**3), device=device)
        values[start:start + len(flat)] = field(_grid_points(flat, resolution)).float().cpu()
    volume = values.reshape(resolution, resolution, resolution).numpy()
    if not volume.min() < level < volume.max():
        return trimesh.Trimesh()
    step = 2 * BOX / (resolution - 1)
    verts, faces, _, _ = measure.marching_cubes(volume, level, spacing=(step, step, step))
    return trimesh.Trimesh(verts - BOX, faces, process=False)


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Chamfer-L1 of two point sets: the mean of the two mean nearest-neighbour distances
    (Occupancy Networks' definition; not squared). Infinite if either set is empty."""
    if len(a) == 0 or len(b) == 0:
        return float("inf")
    a_to_b, _ = cKDTree(b).query(a)
    b_to_a, _ = cKDTree(a).query(b)
    return 0.5 * (float(a_to_b.mean()) + float(b_to_a.mean()))


def surface_chamfer(mesh: trimesh.Trimesh, reference: trimesh.Trimesh, n_points: int = 100_000,
                    seed: int = EVAL_SEED) -> float:
    """Chamfer-L1 between ``n_points`` area-uniform samples of each surface."""
    if len(mesh.faces) == 0 or len(reference.faces) == 0:
        return float("inf")
    rng = np.random.default_rng(seed)
    trimesh = require("trimesh")
    a, _ = trimesh.sample.sample_surface(mesh, n_points, seed=rng)
    b, _ = trimesh.sample.sample_surface(reference, n_points, seed=rng)
    return chamfer_distance(a, b)
