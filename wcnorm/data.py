"""Datasets and loaders.

Two kinds of data, two loaders:

* array datasets (CIFAR-10/100, npz, digits, synthetic) are small enough to live in
  memory as one uint8 NCHW tensor. `loaders.ArrayLoader` keeps that tensor on the training
  device and does shuffling, padded random crop, flip and normalisation per batch
  there: no DataLoader workers, no host round trips (the airbench recipe).
* image folders (ImageNet, any ImageFolder tree) stream through torchvision's
  `ImageFolder` and a `DataLoader` with workers and pinned memory.

Every random choice of an epoch (order, crops, flips) is drawn from a generator
seeded by (seed, epoch), so a resumed run sees exactly the batches an uninterrupted
run would have seen.

`dataset.val_split` holds a fraction of the TRAINING set out as a validation set
(stratified, the same examples for every run seed); the test set is never touched.
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from .errors import ConfigError, DatasetUnavailable, WcnormError

if TYPE_CHECKING:
    from torchvision import datasets

ARRAY_DATASETS = ("cifar10", "cifar100", "npz", "digits", "synthetic")
FOLDER_DATASETS = ("imagenet", "imagefolder")
DATASETS = ARRAY_DATASETS + FOLDER_DATASETS

OFFLINE_HINT = "To run offline right now, use `dataset=digits` (bundled, no download)."

# The validation split is drawn once from this seed, not from the run's: runs with
# different seeds (and different methods) are validated on the same examples.
VAL_SPLIT_SEED = 0


class UnreadableImage(WcnormError):
    """An image file of an ImageFolder tree that cannot be decoded (corrupt or truncated)."""


@dataclass
class ArraySplit:
    x: torch.Tensor  # uint8, N x C x H x W
    y: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataBundle:
    name: str
    num_classes: int
    image_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: ArraySplit | torch.utils.data.Dataset
    test: ArraySplit | torch.utils.data.Dataset
    classes: list[str] | None = None
    val: ArraySplit | torch.utils.data.Dataset | None = None  # held out of train (dataset.val_split)

    @property
    def is_array(self) -> bool:
        return isinstance(self.train, ArraySplit)


# ----------------------------------------------------------------------------- loading


def load_dataset(cfg) -> DataBundle:
    """Build the `DataBundle` described by a `dataset` config node."""
    name = cfg.name
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; valid: {', '.join(DATASETS)}")
    loader = {
        "cifar10": _load_cifar,
        "cifar100": _load_cifar,
        "npz": _load_npz,
        "digits": _load_digits,
        "synthetic": _load_synthetic,
        "imagenet": _load_folder,
        "imagefolder": _load_folder,
    }[name]
    return loader(cfg)


def _bundle(cfg, train: ArraySplit, test: ArraySplit, classes=None) -> DataBundle:
    """Finish an array dataset: check shapes, fill in class count and channel stats,
    hold out the validation split."""
    c, h, w = train.x.shape[1:]
    if h != w or h != cfg.image_size or c != cfg.in_channels:
        raise ConfigError(
            f"dataset '{cfg.name}' has images of shape {c}x{h}x{w}, but the config says "
            f"in_channels={cfg.in_channels}, image_size={cfg.image_size}: set "
            f"dataset.image_size={h} dataset.in_channels={c}"
        )
    num_classes = cfg.get("num_classes") or (len(classes) if classes is not None else None)
    num_classes = num_classes or int(max(train.y.max(), test.y.max())) + 1
    if int(max(train.y.max(), test.y.max())) >= num_classes or int(min(train.y.min(), test.y.min())) < 0:
        raise ConfigError(f"dataset '{cfg.name}': labels must lie in [0, {num_classes})")
    val = None
    if cfg.val_split:
        keep, held = split_indices(train.y, cfg.val_split, what=f"dataset '{cfg.name}'")
        train, val = ArraySplit(train.x[keep], train.y[keep]), ArraySplit(train.x[held], train.y[held])
    mean, std = cfg.get("mean"), cfg.get("std")
    if not (mean and std):  # the training images' channel statistics, where the config has none
        xf = train.x.float().div_(255)
        mean = mean or xf.mean(dim=(0, 2, 3)).tolist()
        std = std or xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return DataBundle(
        cfg.name, int(num_classes), h, c, tuple(mean), tuple(std), train, test,
        list(classes) if classes is not None else None, val,
    )


def split_indices(labels: torch.Tensor, fraction: float, *, what: str = "the dataset"):
    """(kept, held-out) indices: round(fraction * N) examples held out, stratified.

    The examples are put in a random order (seeded by VAL_SPLIT_SEED), grouped by
    class, and every (N / held)-th one is taken: each class gives its share to within
    one example, and the total is exact."""
    labels = torch.as_tensor(labels)
    n = len(labels)
    n_held = round(n * fraction)
    if not 0 < n_held < n:
        raise ConfigError(f"{what}: dataset.val_split={fraction} of its {n} training examples "
                          f"holds out {n_held}; choose a fraction that leaves at least one on each side")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    order = order[torch.sort(labels[order], stable=True).indices]
    held = order[(2 * torch.arange(n_held) + 1) * n // (2 * n_held)]  # centres of N / held strides
    mask = torch.zeros(n, dtype=torch.bool)
    mask[held] = True
    return (~mask).nonzero().squeeze(1), mask.nonzero().squeeze(1)


def _nhwc_split(x, y) -> ArraySplit:
    x = torch.as_tensor(np.ascontiguousarray(x))
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ConfigError(f"images must be uint8 N x H x W x C, got {x.dtype} {tuple(x.shape)}")
    return ArraySplit(x.permute(0, 3, 1, 2).contiguous(), torch.as_tensor(np.asarray(y), dtype=torch.long))


def _load_cifar(cfg) -> DataBundle:
    # torchvision here, not at the top: importing it takes seconds (docs/performance.md)
    from torchvision import datasets

    cls = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
    root = Path(cfg.root).expanduser()
    try:
        # torchvision verifies the archive's md5 and every batch file's md5.
        train = cls(str(root), train=True, download=bool(cfg.download))
        test = cls(str(root), train=False, download=bool(cfg.download))
    except Exception as err:  # offline download, missing or corrupt files
        archive = cls.filename
        raise DatasetUnavailable(
            f"{cfg.name.upper()} is not in '{root.resolve()}' (looked for {cls.base_folder}/, "
            f"md5-checked) and could not be {'downloaded' if cfg.download else 'loaded (download=false)'}: "
            f"{type(err).__name__}: {err}\n"
            f"Provide it: put {archive} from {cls.url.rsplit('/', 1)[0]}/ (or its extracted "
            f"{cls.base_folder}/ folder) into that directory, or point `dataset.root=/path` "
            f"(or the WCNORM_DATA variable) at a folder that has it.\n{OFFLINE_HINT}"
        ) from err
    return _bundle(cfg, _nhwc_split(train.data, train.targets), _nhwc_split(test.data, test.targets), train.classes)


NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
ZIP_MAGIC, NPY_MAGIC = b"PK\x03\x04", b"\x93NUMPY"  # an .npz is a zip archive of .npy files


def _load_npz(cfg) -> DataBundle:
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise DatasetUnavailable(f"npz dataset: no file '{path.resolve()}' (set dataset.path=...). {OFFLINE_HINT}")
    where = f"npz dataset '{path}'"
    with _open_npz(path, where) as z:
        missing = [k for k in NPZ_ARRAYS if k not in z]
        if missing:
            raise ConfigError(f"{where}: missing arrays {missing}; it has {list(z.keys())}")
        arrays = {k: _npz_array(z, k, where) for k in (*NPZ_ARRAYS, "classes") if k in z}
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    train, test = (_npz_split(arrays, part, where) for part in ("train", "test"))
    return _bundle(cfg, train, test, classes)


def _open_npz(path: Path, where: str):
    with path.open("rb") as f:
        magic = f.read(len(NPY_MAGIC))
    # np.load takes any other file for a pickle, and would answer with advice about
    # allow_pickle; a data file is never unpickled here, so say what the file is instead.
    if magic.startswith(NPY_MAGIC):
        raise ConfigError(f"{where}: this is a single .npy array, not an .npz archive; save the arrays "
                          f"with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    if not magic.startswith(ZIP_MAGIC):
        raise ConfigError(f"{where}: not an .npz archive (an .npz is a zip of arrays, made with np.savez); "
                          f"save the arrays with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{where}: the archive cannot be read ({type(err).__name__}); "
                          f"is it truncated or corrupt? save it again with np.savez") from err


def _npz_array(z, key: str, where: str) -> np.ndarray:
    try:
        return z[key]
    except ValueError as err:
        if "pickle" in str(err):  # an array of Python objects: reading it would mean unpickling
            raise ConfigError(f"{where}: '{key}' holds Python objects (dtype=object), which are never "
                              f"unpickled; save it as a numeric (or, for classes, string) array") from err
        raise ConfigError(f"{where}: '{key}' cannot be read ({type(err).__name__}: {err})") from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{where}: '{key}' cannot be read ({type(err).__name__}: {err}); "
                          f"is the archive truncated? save it again with np.savez") from err


def _npz_split(arrays: dict, part: str, where: str) -> ArraySplit:
    """One split of an npz dataset, checked: N x H x W x C uint8 images, N integer labels."""
    xk, yk = f"x_{part}", f"y_{part}"
    x, y = arrays[xk], arrays[yk]
    if x.ndim == 3:
        raise ConfigError(f"{where}: {xk} has shape {x.shape}, N x H x W without channels; wcnorm reads "
                          f"N x H x W x C: add the channel axis, {xk}[..., None]")
    if x.ndim != 4:
        raise ConfigError(f"{where}: {xk} has shape {x.shape}; images must be N x H x W x C")
    n, a, b, c = x.shape
    if a != b and b == c:  # square images stored channels first
        raise ConfigError(f"{where}: {xk} has shape {x.shape}, which is N x C x H x W (channels first); "
                          f"wcnorm reads N x H x W x C: transpose it, {xk}.transpose(0, 2, 3, 1)")
    if x.dtype != np.uint8:
        hint = f" (images in [0, 1]: ({xk} * 255).round().astype(np.uint8))" if x.dtype.kind == "f" else ""
        raise ConfigError(f"{where}: {xk} is {x.dtype}; images must be uint8 in 0..255{hint}")
    if y.ndim != 1:
        hint = f"; one-hot labels: {yk}.argmax(1)" if y.ndim == 2 else ""
        raise ConfigError(f"{where}: {yk} has shape {y.shape}; labels must be N class indices{hint}")
    if n != len(y):
        raise ConfigError(f"{where}: {xk} has {n} images but {yk} has {len(y)} labels")
    if n == 0:
        raise ConfigError(f"{where}: {xk} and {yk} are empty")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            raise ConfigError(f"{where}: {yk} holds labels that are not whole numbers ({y[bad[0]]:g} at "
                              f"index {bad[0]}, {len(bad)} in all); labels are class indices 0..K-1")
    elif y.dtype.kind not in "iub":
        raise ConfigError(f"{where}: {yk} is {y.dtype}; labels must be integer class indices")
    return _nhwc_split(x, y.astype(np.int64))


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 real 8x8 digit images (0..16) and labels, read from the file it
    ships as `load_digits` reads it, without importing `sklearn.datasets` (which imports
    pandas and scipy: seconds, before a demo's first step); `load_digits` itself where the
    file is not found."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def _load_digits(cfg) -> DataBundle:
    images, target = digits_arrays()
    x = torch.as_tensor(images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=cfg.image_size, mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, cfg.in_channels, -1, -1).contiguous()
    y = torch.as_tensor(target, dtype=torch.long)
    # A fixed stratified split, independent of the run's seed: the test set never moves.
    g = torch.Generator().manual_seed(0)
    test_mask = torch.zeros(len(y), dtype=torch.bool)
    for k in range(10):
        idx = (y == k).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        test_mask[idx[: round(len(idx) * cfg.test_fraction)]] = True
    return _bundle(cfg, ArraySplit(x[~test_mask], y[~test_mask]), ArraySplit(x[test_mask], y[test_mask]),
                   [str(k) for k in range(10)])


def synthetic_split(n: int, image_size: int, *, in_channels: int = 3, num_classes: int = 10,
                    generator: torch.Generator | None = None) -> ArraySplit:
    """`n` uniformly random uint8 images and labels (seed 0 unless a generator is given)."""
    g = generator or torch.Generator().manual_seed(0)
    shape = (n, in_channels, image_size, image_size)
    return ArraySplit(torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
                      torch.randint(0, num_classes, (n,), generator=g))


def _load_synthetic(cfg) -> DataBundle:
    g = torch.Generator().manual_seed(0)  # one generator: the test images follow the training ones
    split = dict(image_size=cfg.image_size, in_channels=cfg.in_channels, num_classes=cfg.num_classes, generator=g)
    return _bundle(cfg, synthetic_split(cfg.train_size, **split), synthetic_split(cfg.test_size, **split))


def _folder_split(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def read_image(path: str):
    """torchvision's image loader, naming the file when it cannot be decoded."""
    from torchvision import datasets

    try:
        return datasets.folder.default_loader(path)
    except (OSError, ValueError, SyntaxError) as err:  # what PIL raises for broken files
        raise UnreadableImage(f"cannot read the image '{path}' ({type(err).__name__}: {err}): the file "
                              f"is corrupt or truncated; replace or remove it") from err


def _image_folder(split_dir: Path, transform, name: str) -> datasets.ImageFolder:
    from torchvision import datasets

    try:
        return datasets.ImageFolder(str(split_dir), transform, loader=read_image)
    except FileNotFoundError as err:  # torchvision's words for a class folder without images
        empty = [d.name for d in sorted(split_dir.iterdir()) if d.is_dir() and not any(
            datasets.folder.has_file_allowed_extension(f, datasets.folder.IMG_EXTENSIONS)
            for _, _, files in os.walk(d, followlinks=True) for f in files)]
        found = (f"class folders without images: {', '.join(empty)}" if empty
                 else "no class folders (expected <class>/<image> inside)")
        raise ConfigError(
            f"{name}: '{split_dir}' has {found}; every class folder of train/ and "
            f"val/ (or test/) needs at least one image ({' '.join(datasets.folder.IMG_EXTENSIONS)})"
        ) from err


def _load_folder(cfg) -> DataBundle:
    from torchvision import transforms

    root = Path(cfg.root).expanduser()
    train_dir, test_dir = _folder_split(root, ("train",)), _folder_split(root, ("val", "test"))
    if train_dir is None or test_dir is None:
        raise DatasetUnavailable(
            f"{cfg.name}: expected an ImageFolder tree at '{root.resolve()}' with train/<class>/* "
            f"and val/<class>/* (or test/); {'it does not exist' if not root.exists() else 'a split is missing'}. "
            f"ImageNet cannot be downloaded automatically: get it from image-net.org, arrange "
            f"it in that layout and set `dataset.root=/path` (or WCNORM_IMAGENET). {OFFLINE_HINT}"
        )
    size = int(cfg.image_size)
    norm = transforms.Normalize(cfg.mean, cfg.std)
    aug = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] if cfg.augment else [
        transforms.Resize(size), transforms.CenterCrop(size)]
    # The classic eval transform: resize to 256/224 of the size, centre crop.
    evaluation = transforms.Compose([
        transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size), transforms.ToTensor(), norm])
    train = _image_folder(train_dir, transforms.Compose([*aug, transforms.ToTensor(), norm]), cfg.name)
    test = _image_folder(test_dir, evaluation, cfg.name)
    if train.classes != test.classes:
        raise ConfigError(f"{cfg.name}: train/ and {test_dir.name}/ have different class folders")
    n = cfg.get("num_classes") or len(train.classes)
    if n != len(train.classes):
        raise ConfigError(f"{cfg.name}: dataset.num_classes={n} but '{train_dir}' has {len(train.classes)} class folders")
    classes, val = train.classes, None
    if cfg.val_split:
        keep, held = split_indices(torch.as_tensor(train.targets), cfg.val_split, what=cfg.name)
        plain = copy.copy(train)  # the same file list, read with the eval transform: no augmentation
        plain.transform = evaluation
        train, val = Subset(train, keep.tolist()), Subset(plain, held.tolist())
    return DataBundle(cfg.name, n, size, 3, tuple(cfg.mean), tuple(cfg.std), train, test, classes, val)
