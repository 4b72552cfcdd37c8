"""Scenes for NeRF: the Blender-synthetic layout and the LLFF (forward-facing) layout.

Both loaders return a `Scene`: images (N, H, W, 3) in [0, 1], camera-to-world poses
(N, 3, 4) in the OpenGL convention of `wcnorm.fields.rays` (x right, y up, camera
looking down -z), the focal length in pixels, the depth range [near, far] that rays
are sampled in, and whether rays are warped to NDC.

*Blender* (``transforms_{train,val,test}.json`` + RGBA PNGs): images are composited
onto white (``rgb * alpha + 1 - alpha``), as in the NeRF paper, and then area-averaged
by ``downscale``; focal = W / (2 tan(camera_angle_x / 2)) at the loaded width;
near 2, far 6, white background.

*LLFF* (``poses_bounds.npy`` + ``images_<downscale>/``, or the images of the largest
factor folder dividing ``downscale`` (``images/`` for the originals), resized): as
the NeRF code's ``load_llff_data`` with its defaults. The poses' axes [down, right,
back] become [right, up, back]; poses and bounds are scaled so that the nearest bound
is 1 / 0.75 (so the NDC near plane at 1 lies in front of the scene); poses are
recentred on their average pose. Every 8th view (0, 8, 16, ...) is held out as the
test split, the others train. Rays are warped to NDC (near 0, far 1) by default; without
NDC, near and far are 0.9 x the smallest and 1 x the largest scene bound.

A training run checks a scene's files first (`check_scene`: metadata, camera values
and file names, and every image's structure, without decoding it) and makes its rays where it uses them: a whole view's
(`Scene.view_rays`) or single pixels' (`Scene.pixel_rays`, a batch of random rays).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..errors import ConfigError, DatasetUnavailable, WcnormError
from .rays import NDC_NEAR, camera_rays, ndc_rays, pixel_rays, viewing_directions
from .render import RenderSettings

__all__ = ["SceneError", "Scene", "Rays", "BLENDER_SPLITS", "LLFF_SPLITS", "BLENDER_NEAR",
           "BLENDER_FAR", "LLFF_HOLDOUT", "LLFF_BOUND_FACTOR", "load_blender", "load_llff",
           "load_scene", "check_scene"]

BLENDER_SPLITS = ("train", "val", "test")
LLFF_SPLITS = ("train", "test")
BLENDER_NEAR, BLENDER_FAR = 2.0, 6.0
LLFF_HOLDOUT = 8  # every 8th view is a test view (the NeRF code's llffhold)
LLFF_BOUND_FACTOR = 0.75  # the nearest bound is rescaled to 1 / 0.75 (NeRF's bd_factor)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class SceneError(WcnormError, ValueError):
    """A scene file that exists but does not hold what its layout promises."""


class Rays(NamedTuple):
    """Rays of every pixel of every view, each (N, H, W, 3). ``viewdirs`` are the unit
    world-space directions the colour head reads (also for NDC rays)."""

    origins: Tensor
    directions: Tensor
    viewdirs: Tensor


@dataclass
class Scene:
    images: Tensor  # (N, H, W, 3) float32 in [0, 1]
    poses: Tensor  # (N, 3, 4) float32 camera-to-world, OpenGL axes
    focal: float  # pixels, at the loaded resolution
    near: float
    far: float
    ndc: bool
    white_background: bool
    files: list[Path] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> Scene:
        """The scene with its images and poses on `device` (where its rays are made)."""
        return replace(self, images=self.images.to(device), poses=self.poses.to(device))

    def views(self, indices: list[int]) -> Scene:
        """The scene restricted to the views `indices` (a held-out split of its views)."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return replace(self, images=self.images[index], poses=self.poses[index],
                       files=[self.files[i] for i in indices] if self.files else [])

    def _rays(self, origins: Tensor, directions: Tensor) -> Rays:
        """World-space rays as the renderer reads them: warped to NDC if the scene is."""
        viewdirs = viewing_directions(directions)
        if self.ndc:
            origins, directions = ndc_rays(origins, directions, self.height, self.width,
                                           self.focal, NDC_NEAR)
        return Rays(origins, directions, viewdirs)

    def rays(self) -> Rays:
        """The rays of every pixel of every view, each (N, H, W, 3)."""
        return self._rays(*camera_rays(self.poses, self.height, self.width, self.focal))

    def view_rays(self, view: int) -> Rays:
        """The rays of every pixel of one view, each (H, W, 3)."""
        return self._rays(*camera_rays(self.poses[view], self.height, self.width, self.focal))

    def pixel_rays(self, views: Tensor, rows: Tensor, cols: Tensor) -> Rays:
        """The rays of single pixels (views[k], rows[k], cols[k]), each (R, 3)."""
        return self._rays(*pixel_rays(self.poses[views], rows, cols, self.height, self.width,
                                      self.focal))

    def render_settings(self, n_coarse: int = 64, n_fine: int = 128) -> RenderSettings:
        return RenderSettings(near=self.near, far=self.far, n_coarse=n_coarse, n_fine=n_fine,
                              white_background=self.white_background)


# ------------------------------------------------------------------------- images
def _check_split(split: str, splits: tuple[str, ...], layout: str) -> None:
    if split not in splits:
        raise ConfigError(f"unknown {layout} split {split!r}; choose one of {', '.join(splits)}")


def _check_downscale(downscale: int) -> None:
    if not isinstance(downscale, int) or isinstance(downscale, bool) or downscale < 1:
        raise ConfigError(f"downscale must be a positive integer, got {downscale!r}")


# What PIL raises for a file that is not a whole image: truncated, corrupt, not an image.
_BAD_IMAGE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _read_rgb(path: Path) -> np.ndarray:
    """An image as float32 RGB in [0, 1]; RGBA is composited onto white."""
    if not path.is_file():
        raise DatasetUnavailable(f"image {path} is missing")
    try:
        with Image.open(path) as image:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    except _BAD_IMAGE as err:
        raise SceneError(f"image {path} is not a readable image ({err}); replace or remove it") from None
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return rgb * alpha + (1.0 - alpha)


def _check_image(path: Path) -> None:
    """Refuse an image file that is not whole (truncated, corrupt), without decoding it:
    PIL's `verify` reads the file's structure and checksums."""
    try:
        with Image.open(path) as image:
            image.verify()
    except _BAD_IMAGE as err:
        raise SceneError(f"image {path} is not a readable image ({err or type(err).__name__}); "
                         "replace or remove it") from None


def _area_downscale(images: Tensor, downscale: int) -> Tensor:
    """(N, H, W, 3) -> (N, H // d, W // d, 3) by averaging over pixel areas."""
    if downscale == 1:
        return images
    size = (images.shape[1] // downscale, images.shape[2] // downscale)
    if min(size) < 1:
        raise ConfigError(f"downscale={downscale} leaves no pixel of {tuple(images.shape[1:3])} images")
    return F.interpolate(images.permute(0, 3, 1, 2), size=size, mode="area").permute(0, 2, 3, 1)


def _stack(files: list[Path]) -> Tensor:
    images = [_read_rgb(f) for f in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise SceneError(f"images of one scene differ in size {sorted(shapes)}: {files[0].parent}")
    return torch.from_numpy(np.stack(images))


# ------------------------------------------------------------------------- Blender
def _blender_frames(root: Path, split: str) -> tuple[float, np.ndarray, list[Path]]:
    """A split's transforms file: (camera_angle_x, 4x4 poses (N, 4, 4), image files)."""
    _check_split(split, BLENDER_SPLITS, "Blender")
    path = root / f"transforms_{split}.json"
    if not path.is_file():
        raise DatasetUnavailable(f"{path} is missing: a Blender scene folder holds "
                                 "transforms_train.json, transforms_val.json and transforms_test.json")
    try:
        meta = json.loads(path.read_text())
        angle = float(meta["camera_angle_x"])
        frames = meta["frames"]
        poses = np.array([f["transform_matrix"] for f in frames], dtype=np.float32)
        files = [root / f"{f['file_path']}.png" for f in frames]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise SceneError(f"{path} is not a Blender transforms file ({type(err).__name__}: {err})") from err
    if not files or poses.shape[1:] != (4, 4):
        raise SceneError(f"{path}: need at least one frame with a 4x4 transform_matrix")
    if not 0 < angle < np.pi:  # also NaN
        raise SceneError(f"{path}: camera_angle_x={angle} is not a field of view: it must lie "
                         f"strictly between 0 and pi (radians)")
    bad = np.flatnonzero(~np.isfinite(poses).all(axis=(1, 2)))
    if len(bad):
        raise SceneError(f"{path}: frame {bad[0]} ({frames[bad[0]].get('file_path')!r}) has a "
                         f"transform_matrix that is not finite (NaN or inf)")
    return angle, poses, files


def load_blender(root: str | Path, split: str = "train", *, downscale: int = 1) -> Scene:
    """A split of a Blender-synthetic scene folder (see the module docstring)."""
    _check_downscale(downscale)
    angle, poses, files = _blender_frames(Path(root), split)
    images = _area_downscale(_stack(files), downscale)
    focal = 0.5 * images.shape[2] / np.tan(0.5 * angle)
    return Scene(images, torch.from_numpy(poses[:, :3]), float(focal), BLENDER_NEAR, BLENDER_FAR,
                 ndc=False, white_background=True, files=files)


# --------------------------------------------------------------------------- LLFF
def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """NeRF's ``poses_avg``: the mean centre, looking along the normalised sum of the
    back axes, with the summed up axis made orthogonal to it. (N, 3, 4) -> (3, 4)."""
    back = _normalize(c2w[:, :, 2].sum(0))
    right = _normalize(np.cross(c2w[:, :, 1].sum(0), back))
    up = _normalize(np.cross(back, right))
    return np.stack([right, up, back, c2w[:, :, 3].mean(0)], axis=1)


def recenter_poses(c2w: np.ndarray) -> np.ndarray:
    """Express the poses in the frame of their average pose (which becomes the identity)."""
    homogeneous = np.tile(np.eye(4), (len(c2w), 1, 1))
    homogeneous[:, :3] = c2w
    average = np.eye(4)
    average[:3] = average_pose(c2w)
    return (np.linalg.inv(average) @ homogeneous)[:, :3]


def _llff_source(root: Path, downscale: int) -> tuple[list[Path], int]:
    """(image files, factor still to apply): those of ``images_<downscale>/``, else of the
    folder of the largest factor that divides `downscale` (``images/`` for factor 1),
    area-averaged by the rest (e.g. fern at 16: images_8/ halved)."""
    factors = [k for k in range(downscale, 0, -1) if downscale % k == 0]
    for k in factors:
        folder = root / ("images" if k == 1 else f"images_{k}")
        if folder.is_dir():
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise SceneError(f"{folder} holds no .png or .jpg image")
            return files, downscale // k
    raise DatasetUnavailable(f"{root / f'images_{downscale}'} is missing (and so are images/ and the "
                             f"images_<k>/ of the factors k dividing {downscale}, to downscale from): "
                             "an LLFF scene holds images_<factor>/")


def _llff_table(root: Path) -> np.ndarray:
    """poses_bounds.npy: per view a 3x5 pose (flattened) and the near/far bounds, (N, 17)."""
    path = root / "poses_bounds.npy"
    if not path.is_file():
        raise DatasetUnavailable(f"{path} is missing: an LLFF scene folder holds poses_bounds.npy "
                                 "and images_<factor>/")
    try:
        with open(path, "rb") as f:
            is_npy = f.read(6) == b"\x93NUMPY"
        table = np.load(path, allow_pickle=False).astype(np.float64) if is_npy else None
        why = None if is_npy else "it does not start with NumPy's .npy header"
    except (ValueError, TypeError, OSError, EOFError):  # Python objects, a cut-short file, text
        why = "it holds something other than numbers, or is cut short"
    if why:
        raise SceneError(f"{path} is not a NumPy array of numbers ({why}): an LLFF scene's "
                         "poses_bounds.npy holds an (N, 17) float array, as np.save writes it")
    if table.ndim != 2 or table.shape[1] != 17:
        raise SceneError(f"{path}: expected an (N, 17) array of 3x5 poses and 2 bounds, "
                         f"got shape {table.shape}")
    _check_llff_cameras(path, table)
    return table


def _check_llff_cameras(path: Path, table: np.ndarray) -> None:
    """Finite poses, a positive [height, width, focal] column and positive bounds (near
    below far) in every view, before anything trains on them."""
    poses, bounds = table[:, :15].reshape(-1, 3, 5), table[:, 15:]
    for view in range(len(table)):
        problem = ("a pose that is not finite (NaN or inf)" if not np.isfinite(table[view]).all() else
                   f"height, width and focal {poses[view, :, 4].tolist()}, not all > 0"
                   if not (poses[view, :, 4] > 0).all() else
                   f"bounds {bounds[view].tolist()}, not 0 < near <= far"
                   if not 0 < bounds[view, 0] <= bounds[view, 1] else None)
        if problem:
            raise SceneError(f"{path}: view {view} has {problem}")


def _llff_views(root: Path, downscale: int) -> tuple[np.ndarray, list[Path], int]:
    """(poses and bounds, image files, factor still to apply), checked to match."""
    table = _llff_table(root)
    files, scale = _llff_source(root, downscale)
    if len(files) != len(table):
        raise SceneError(f"{root / 'poses_bounds.npy'} has {len(table)} poses but {files[0].parent} "
                         f"holds {len(files)} images")
    return table, files, scale


def load_llff(root: str | Path, split: str = "train", *, downscale: int = 8, ndc: bool = True,
              holdout: int = LLFF_HOLDOUT) -> Scene:
    """A split of an LLFF scene folder (see the module docstring)."""
    _check_split(split, LLFF_SPLITS, "LLFF")
    _check_downscale(downscale)
    _check_holdout(holdout)
    table, files, scale = _llff_views(Path(root), downscale)
    _check_training_views(Path(root), len(table), holdout)
    images = _area_downscale(_stack(files), scale)
    poses, bounds = table[:, :15].reshape(-1, 3, 5), table[:, 15:]
    full_width = poses[0, 1, 4]  # the [H, W, focal] column is of the full-size originals
    focal = poses[0, 2, 4] * images.shape[2] / full_width
    c2w = poses[:, :, :4]
    c2w = np.concatenate([c2w[:, :, 1:2], -c2w[:, :, 0:1], c2w[:, :, 2:]], axis=2)  # -> [right, up, back]
    scale = 1.0 / (bounds.min() * LLFF_BOUND_FACTOR)
    c2w[:, :, 3] *= scale
    bounds = bounds * scale
    c2w = recenter_poses(c2w)
    held_out = np.arange(len(table)) % holdout == 0
    keep = held_out if split == "test" else ~held_out
    near, far = (0.0, 1.0) if ndc else (0.9 * bounds.min(), 1.0 * bounds.max())
    return Scene(images[torch.from_numpy(keep)], torch.from_numpy(c2w[keep]).float(), float(focal),
                 float(near), float(far), ndc=ndc, white_background=False,
                 files=[f for f, k in zip(files, keep) if k])


def _check_training_views(root: Path, views: int, holdout: int) -> None:
    """Every `holdout`-th view (0, holdout, ...) is a test view: one must be left to train on."""
    if views - len(range(0, views, holdout)) < 1:
        raise SceneError(f"{root / 'poses_bounds.npy'} has {views} view(s), and every {holdout}th view "
                         f"(0, {holdout}, ...) is held out for testing: no view is left to train on; an "
                         "LLFF scene needs at least 2 views")


def _check_holdout(holdout: int) -> None:
    if not isinstance(holdout, int) or isinstance(holdout, bool) or holdout < 2:
        raise ConfigError(f"holdout must be an integer >= 2 (every holdout-th view is a test view), "
                          f"got {holdout!r}")


# ------------------------------------------------------------------------- checks
def check_scene(layout: str, root: str | Path, splits: tuple[str, ...], *, downscale: int,
                **options) -> None:
    """Raise what loading `splits` of a ``"blender"`` or ``"llff"`` scene would raise about
    its files and options, without decoding an image: an unknown split, a missing or
    malformed transforms file or poses_bounds.npy, camera values out of range (a field
    of view outside (0, pi), a pose or bound that is not finite), an LLFF scene with no
    view left to train on, missing, truncated or corrupt images. Cheap enough to run
    before a training run builds anything."""
    root = Path(root)
    _check_downscale(downscale)
    if layout == "blender":
        for split in splits:
            _, _, files = _blender_frames(root, split)
            missing = [f for f in files if not f.is_file()]
            if missing:
                more = f" (and {len(missing) - 1} more of the {split} split)" if len(missing) > 1 else ""
                raise DatasetUnavailable(f"image {missing[0]} is missing{more}")
            for f in files:
                _check_image(f)
    elif layout == "llff":
        for split in splits:
            _check_split(split, LLFF_SPLITS, "LLFF")
        holdout = options.get("holdout", LLFF_HOLDOUT)
        _check_holdout(holdout)
        table, files, _ = _llff_views(root, downscale)
        _check_training_views(root, len(table), holdout)
        for f in files:
            _check_image(f)
    else:
        raise ConfigError(f"unknown scene layout {layout!r}; choose one of blender, llff")


def load_scene(root: str | Path, split: str = "train", **options) -> Scene:
    """Either layout, recognised by its files (``transforms_<split>.json`` or
    ``poses_bounds.npy``); ``options`` go to `load_blender` or `load_llff`."""
    root = Path(root)
    if (root / "poses_bounds.npy").is_file():
        return load_llff(root, split, **options)
    if any((root / f"transforms_{s}.json").is_file() for s in BLENDER_SPLITS):
        return load_blender(root, split, **options)
    raise DatasetUnavailable(f"{root} is neither a Blender scene (transforms_<split>.json) nor an "
                             "LLFF scene (poses_bounds.npy)")
