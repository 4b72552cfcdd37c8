"""Datasets and loaders: real loading code on data the tests make (and on the
shared real subsets when present)."""

import hashlib
import pickle
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torchvision
from conftest import compose_cfg
from omegaconf import OmegaConf

from wcnorm.data import ArraySplit, load_dataset, split_indices, synthetic_split
from wcnorm.errors import ConfigError, DatasetUnavailable
from wcnorm.loaders import (
    ArrayLoader,
    FolderLoader,
    epoch_generator,
    epoch_seed,
    make_loaders,
    make_val_loader,
    random_crop,
)


def dataset_cfg(name, **overrides):
    cfg = compose_cfg([f"dataset={name}"], smoke=False).dataset
    return OmegaConf.merge(cfg, overrides)


def test_digits_is_real_offline_and_split_once():
    d = load_dataset(dataset_cfg("digits"))
    assert d.train.x.dtype == torch.uint8 and d.train.x.shape[1:] == (3, 32, 32)
    assert len(d.train) + len(d.test) == 1797 and abs(len(d.test) - 360) <= 10
    assert set(d.test.y.tolist()) == set(range(10)) and d.num_classes == 10
    again = load_dataset(dataset_cfg("digits"))
    assert torch.equal(d.test.y, again.test.y) and torch.equal(d.test.x, again.test.x)


def test_synthetic_takes_any_shape():
    d = load_dataset(dataset_cfg("synthetic", image_size=48, in_channels=1, num_classes=7, train_size=20))
    assert d.train.x.shape == (20, 1, 48, 48) and int(d.train.y.max()) < 7


def test_synthetic_draws_train_then_test_from_seed_0():
    d = load_dataset(dataset_cfg("synthetic", image_size=8, train_size=6, test_size=3))
    g = torch.Generator().manual_seed(0)
    train, test = synthetic_split(6, 8, generator=g), synthetic_split(3, 8, generator=g)
    assert torch.equal(d.train.x, train.x) and torch.equal(d.train.y, train.y)
    assert torch.equal(d.test.x, test.x) and torch.equal(d.test.y, test.y)
    assert torch.equal(synthetic_split(6, 8).x, train.x)  # seed 0 by default


def _npz(path, n=12, size=8, **extra):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y_train=np.arange(n) % 3,
                  x_test=rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8), y_test=np.arange(4) % 3)
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


def test_npz_brings_your_own_arrays(tmp_path):
    arrays = _npz(tmp_path / "mine.npz", classes=np.array(["a", "b", "c"]))
    d = load_dataset(dataset_cfg("npz", path=str(tmp_path / "mine.npz"), image_size=8))
    assert d.classes == ["a", "b", "c"] and d.num_classes == 3
    assert torch.equal(d.train.x.permute(0, 2, 3, 1), torch.as_tensor(arrays["x_train"]))
    assert d.mean == pytest.approx(tuple((arrays["x_train"] / 255).mean(axis=(0, 1, 2))), rel=1e-5)


def test_npz_errors_are_specific(tmp_path):
    with pytest.raises(DatasetUnavailable, match="no file"):
        load_dataset(dataset_cfg("npz", path=str(tmp_path / "absent.npz")))
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="missing arrays"):
        load_dataset(dataset_cfg("npz", path=str(tmp_path / "partial.npz"), image_size=8))
    _npz(tmp_path / "wrong.npz")
    with pytest.raises(ConfigError, match="image_size=8"):
        load_dataset(dataset_cfg("npz", path=str(tmp_path / "wrong.npz"), image_size=32))


def _fake_cifar10(root, monkeypatch, n=10):
    """CIFAR-10's on-disk format, with torchvision's md5 table pointed at our files."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cls = torchvision.datasets.CIFAR10

    def dump(name, obj):
        (folder / name).write_bytes(pickle.dumps(obj))
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    def batch():
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n))}

    monkeypatch.setattr(cls, "train_list", [dump(f"data_batch_{i}", batch()) for i in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [dump("test_batch", batch())])
    name, md5 = dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    monkeypatch.setattr(cls, "meta", {"filename": name, "key": "label_names", "md5": md5})
    return folder


def test_cifar_loads_through_torchvision_with_its_md5_checks(tmp_path, monkeypatch):
    folder = _fake_cifar10(tmp_path, monkeypatch)
    d = load_dataset(dataset_cfg("cifar10", root=str(tmp_path), download=False))
    assert d.train.x.shape == (50, 3, 32, 32) and len(d.test) == 10 and d.classes[0] == "c0"
    (folder / "data_batch_3").write_bytes(b"corrupted")
    with pytest.raises(DatasetUnavailable, match="md5"):
        load_dataset(dataset_cfg("cifar10", root=str(tmp_path), download=False))


def test_missing_cifar_offline_says_where_and_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset(dataset_cfg("cifar100", root=str(tmp_path / "data"), download=True))
    text = str(err.value)
    assert str(tmp_path / "data") in text and "dataset.root" in text and "dataset=digits" in text
    assert "cifar-100-python" in text


def _image_folder(root, splits=("train", "val"), classes=("cat", "dog"), n=3, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_imagefolder_streams_through_a_dataloader(tmp_path):
    _image_folder(tmp_path)
    cfg = dataset_cfg("imagefolder", root=str(tmp_path), image_size=16)
    d = load_dataset(cfg)
    assert d.num_classes == 2 and not d.is_array
    trainer = compose_cfg(["trainer.batch_size=4", "trainer.num_workers=0"]).trainer
    train, test = make_loaders(d, cfg, trainer, device="cpu", seed=0, data_on_device=False)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.long
    assert sum(len(y) for _, y in test) == 6


def test_folder_loader_seeds_each_epoch_as_the_array_loader_does(tmp_path):
    _image_folder(tmp_path)
    d = load_dataset(dataset_cfg("imagefolder", root=str(tmp_path), image_size=16))
    loader = FolderLoader(d.train, 2, device="cpu", seed=3, num_workers=0)
    loader.set_epoch(2)
    assert loader.generator.initial_seed() == epoch_seed(3, 2) == epoch_generator(3, 2).initial_seed()
    order = [y.tolist() for _, y in loader]
    loader.set_epoch(2)
    assert [y.tolist() for _, y in loader] == order  # resumed at epoch 2: the same batches
    assert epoch_seed(3, 2) != epoch_seed(3, 3) and epoch_seed(3, 2) != epoch_seed(4, 2)


def test_imagefolder_without_a_val_split_is_refused_with_the_layout(tmp_path):
    _image_folder(tmp_path, splits=("train",))
    with pytest.raises(DatasetUnavailable, match="val/"):
        load_dataset(dataset_cfg("imagenet", root=str(tmp_path)))


# ----------------------------------------------------------------------------- loaders


def _split(n=10, size=6):
    x = torch.arange(n * 3 * size * size, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 3, size, size)
    return ArraySplit(x, torch.arange(n))


def test_random_crop_matches_a_padded_slice():
    x = torch.randint(0, 256, (3, 2, 5, 5), dtype=torch.uint8)
    dy, dx = torch.tensor([0, 2, 4]), torch.tensor([4, 1, 0])
    out = random_crop(x, 2, dy, dx)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(3):
        assert torch.equal(out[i], padded[i, :, dy[i] : dy[i] + 5, dx[i] : dx[i] + 5])


def test_an_epoch_is_a_function_of_seed_and_epoch():
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu", augment=True, pad=2)
    a, b = ArrayLoader(_split(), 4, seed=3, **kw), ArrayLoader(_split(), 4, seed=3, **kw)
    a.set_epoch(2), b.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(3)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in b]))
    assert sorted(torch.cat([y for _, y in a]).tolist()) == list(range(10))


def test_ranks_share_out_exactly_the_single_process_batches():
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu", augment=True, pad=2, seed=1)
    whole = list(ArrayLoader(_split(12), 4, **kw))
    ranks = [list(ArrayLoader(_split(12), 2, rank=r, world_size=2, **kw)) for r in (0, 1)]
    for b, (x, y) in enumerate(whole):
        xs = torch.cat([ranks[0][b][0], ranks[1][b][0]])
        ys = torch.cat([ranks[0][b][1], ranks[1][b][1]])
        order = torch.argsort(ys)
        assert torch.equal(ys[order], torch.sort(y).values)
        assert torch.equal(xs[order], x[torch.argsort(y)])


def test_loader_normalises_with_the_dataset_statistics():
    split = ArraySplit(torch.full((4, 3, 2, 2), 255, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    x, _ = next(iter(ArrayLoader(split, 4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), device="cpu", train=False)))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


# ----------------------------------------------------------------------------- shared real data


def test_shared_cifar10_partial_loads_as_npz(shared_data):
    d = load_dataset(dataset_cfg("npz", path=str(shared_data / "cifar10-partial.npz")))
    assert d.num_classes == 10 and d.classes[0] == "airplane" and len(d.train) > 5000
    assert d.mean == pytest.approx((0.494, 0.485, 0.448), abs=0.01)


def test_shared_imagenet_mini_loads_through_imagefolder(shared_data):
    cfg = dataset_cfg("imagefolder", root=str(shared_data / "imagenet-mini"), image_size=64)
    d = load_dataset(cfg)
    assert d.num_classes == 10 and len(d.train) == 1000 and len(d.test) == 500
    x, y = d.test[0]
    assert x.shape == (3, 64, 64) and 0 <= y < 10


def test_host_stored_data_is_delivered_on_the_training_device():
    """data_on_device=false keeps the uint8 images in host memory; the batches must still
    arrive on the training device (here the meta device stands in for a GPU)."""
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, augment=True, pad=2, seed=1)
    host = ArrayLoader(_split(), 4, device="meta", store_on_device=False, **kw)
    assert host.x.device.type == "cpu"
    batches = list(host)
    assert len(batches) == 3
    for x, y in batches:
        assert x.device.type == "meta" and y.device.type == "meta"
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 6, 6)
    # on one device the two storages give the same batches
    same = [ArrayLoader(_split(), 4, device="cpu", store_on_device=s, **kw) for s in (True, False)]
    for (xa, ya), (xb, yb) in zip(*same):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_make_loaders_passes_the_training_device_when_data_stays_on_the_host():
    d = load_dataset(dataset_cfg("synthetic", train_size=8, test_size=4, image_size=8))
    cfg = compose_cfg(["dataset=synthetic", "trainer.batch_size=4"])
    train, test = make_loaders(d, cfg.dataset, cfg.trainer, device="meta", seed=0, data_on_device=False)
    for loader in (train, test):
        assert loader.x.device.type == "cpu"
        x, y = next(iter(loader))
        assert x.device.type == "meta" and y.device.type == "meta"


# ----------------------------------------------------------------------------- validation split


def _rows(split) -> set[bytes]:
    """Each example as bytes (image and label): what set operations compare."""
    return {x.numpy().tobytes() + bytes([int(y)]) for x, y in zip(split.x, split.y)}


def test_split_indices_hold_out_an_exact_stratified_seeded_share():
    labels = torch.arange(1000) % 7
    kept, held = split_indices(labels, 0.2)
    assert len(held) == 200 and len(kept) == 800
    assert set(kept.tolist()).isdisjoint(held.tolist()) and set(kept.tolist()) | set(held.tolist()) == set(range(1000))
    per_class = torch.bincount(labels[held], minlength=7)
    expected = torch.bincount(labels, minlength=7) * 0.2
    assert (per_class - expected).abs().max() <= 1  # every class gives its share
    again = split_indices(labels, 0.2)
    assert torch.equal(kept, again[0]) and torch.equal(held, again[1])  # seeded: the same split twice


@pytest.mark.parametrize("fraction", [0.0001, 0.9999])
def test_a_split_that_leaves_a_side_empty_is_refused(fraction):
    with pytest.raises(ConfigError, match="val_split"):
        split_indices(torch.arange(100) % 2, fraction)


def test_digits_val_split_comes_out_of_training_and_never_the_test_set():
    whole = load_dataset(dataset_cfg("digits"))
    d = load_dataset(dataset_cfg("digits", val_split=0.25))
    assert len(d.val) == round(len(whole.train) * 0.25) and len(d.train) + len(d.val) == len(whole.train)
    assert _rows(d.train).isdisjoint(_rows(d.val)) and _rows(d.train) | _rows(d.val) == _rows(whole.train)
    assert torch.equal(d.test.x, whole.test.x) and torch.equal(d.test.y, whole.test.y)  # untouched
    assert whole.val is None
    again = load_dataset(dataset_cfg("digits", val_split=0.25))
    assert torch.equal(d.val.x, again.val.x) and torch.equal(d.val.y, again.val.y)  # the same split twice
    assert set(d.val.y.tolist()) == set(range(10))  # stratified: every class is validated
    # statistics from the images trained on
    assert d.mean == pytest.approx(tuple(d.train.x.float().div(255).mean(dim=(0, 2, 3)).tolist()), rel=1e-5)


def test_the_val_loader_evaluates_the_held_out_images_in_order_without_augmentation():
    d = load_dataset(dataset_cfg("synthetic", train_size=40, test_size=8, image_size=8, val_split=0.25, augment=True))
    cfg = compose_cfg(["dataset=synthetic", "trainer.batch_size=4", "trainer.limit_eval_batches=null"])
    kw = dict(device="cpu", data_on_device=False)
    val = make_val_loader(d, cfg.trainer, **kw)
    assert not val.train and not val.augment
    batches = list(val)
    assert sum(len(y) for _, y in batches) == len(d.val) == 10
    assert torch.equal(torch.cat([y for _, y in batches]), d.val.y)
    assert [y.tolist() for _, y in val] == [y.tolist() for _, y in batches]  # every epoch the same
    none = load_dataset(dataset_cfg("synthetic", train_size=40, test_size=8, image_size=8))
    assert none.val is None and make_val_loader(none, cfg.trainer, **kw) is None
    train, test = make_loaders(d, cfg.dataset, cfg.trainer, device="cpu", seed=0, data_on_device=False)
    assert len(train.y) == 30 and len(test.y) == 8  # make_loaders: training without the held-out part


def test_imagefolder_val_split_reads_training_images_with_the_eval_transform(tmp_path):
    _image_folder(tmp_path, n=10)
    whole = load_dataset(dataset_cfg("imagefolder", root=str(tmp_path), image_size=16))
    d = load_dataset(dataset_cfg("imagefolder", root=str(tmp_path), image_size=16, val_split=0.2))
    kept, held = set(d.train.indices), set(d.val.indices)
    assert len(held) == 4 and kept.isdisjoint(held) and kept | held == set(range(20))
    assert sorted(d.val.dataset.targets[i] for i in held) == [0, 0, 1, 1]  # stratified
    assert [s for s, _ in d.test.samples] == [s for s, _ in whole.test.samples]  # the test set untouched
    assert d.val.dataset.samples is d.train.dataset.samples  # one file list, read twice
    x1, _ = d.val[0]
    x2, _ = d.val[0]
    assert torch.equal(x1, x2)  # no random crop or flip on validation images
    assert d.classes == ["cat", "dog"] and d.num_classes == 2
    cfg = compose_cfg(["trainer.batch_size=2", "trainer.num_workers=0", "trainer.limit_eval_batches=null"])
    val = make_val_loader(d, cfg.trainer, device="cpu", data_on_device=False)
    assert sum(len(y) for _, y in val) == 4
    again = load_dataset(dataset_cfg("imagefolder", root=str(tmp_path), image_size=16, val_split=0.2))
    assert again.val.indices == d.val.indices  # seeded


def test_digits_are_read_without_importing_sklearn_and_equal_load_digits(monkeypatch):
    """The demo's data, read from the file scikit-learn ships, equals `load_digits()`; and
    when that file is not where it is expected, `load_digits()` is what gives them."""
    import importlib.util

    from sklearn.datasets import load_digits

    from wcnorm import data as data_module

    images, target = data_module.digits_arrays()
    d = load_digits()
    assert np.array_equal(images, d.images) and np.array_equal(target, d.target)
    assert images.dtype == d.images.dtype and target.dtype == d.target.dtype
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    images, target = data_module.digits_arrays()
    assert np.array_equal(images, d.images) and np.array_equal(target, d.target)
