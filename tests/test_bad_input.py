"""Bad input fails fast and says what is wrong, naming the file or the key: npz arrays
and image folders that cannot be trained on, keys added with `+` that nothing reads,
a BatchNorm batch of one."""

import numpy as np
import pytest
from conftest import compose_cfg
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict

from wcnorm.data import UnreadableImage, load_dataset
from wcnorm.errors import ConfigError
from wcnorm.loaders import FolderLoader
from wcnorm.training.config import validate


def dataset_cfg(name, **overrides):
    return OmegaConf.merge(compose_cfg([f"dataset={name}"], smoke=False).dataset, overrides)


# ----------------------------------------------------------------------------- npz


def _arrays(n=12, size=8):
    rng = np.random.default_rng(0)
    return dict(x_train=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y_train=np.arange(n) % 3,
                x_test=rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8), y_test=np.arange(4) % 3)


def _load_npz(path, **arrays):
    np.savez(path, **{**_arrays(), **arrays})
    return load_dataset(dataset_cfg("npz", path=str(path), image_size=8))


def _refused(path, **arrays) -> str:
    with pytest.raises(ConfigError) as err:
        _load_npz(path, **arrays)
    message = str(err.value)
    assert str(path) in message  # every message names the file
    return message


def test_npz_x_and_y_of_different_lengths_are_refused(tmp_path):
    message = _refused(tmp_path / "d.npz", y_train=np.arange(11) % 3)
    assert "x_train has 12 images but y_train has 11 labels" in message


def test_empty_npz_arrays_are_refused(tmp_path):
    message = _refused(tmp_path / "d.npz", x_test=np.zeros((0, 8, 8, 3), np.uint8), y_test=np.zeros(0, np.int64))
    assert "x_test and y_test are empty" in message


def test_npz_float_labels_must_be_whole_numbers(tmp_path):
    y = (np.arange(12) % 3).astype(np.float32)
    d = _load_npz(tmp_path / "whole.npz", y_train=y)  # 0.0, 1.0, 2.0: class indices stored as floats
    assert d.train.y.tolist() == (np.arange(12) % 3).tolist() and d.num_classes == 3
    y[5] = 1.5
    message = _refused(tmp_path / "frac.npz", y_train=y)
    assert "y_train holds labels that are not whole numbers" in message and "1.5 at index 5" in message


def test_npz_one_hot_labels_are_refused_with_the_fix(tmp_path):
    message = _refused(tmp_path / "d.npz", y_train=np.eye(3)[np.arange(12) % 3])
    assert "y_train.argmax(1)" in message


def test_a_file_that_is_not_an_npz_is_refused_without_pickle_advice(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x80\x04 these are not arrays" * 10)  # starts like a pickle
    with pytest.raises(ConfigError) as err:
        load_dataset(dataset_cfg("npz", path=str(garbage), image_size=8))
    message = str(err.value)
    assert str(garbage) in message and "not an .npz archive" in message and "np.savez" in message
    assert "pickle" not in message


def test_a_single_npy_array_is_told_apart(tmp_path):
    npy = tmp_path / "x.npz"
    with npy.open("wb") as f:
        np.save(f, np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="single .npy array, not an .npz archive") as err:
        load_dataset(dataset_cfg("npz", path=str(npy), image_size=8))
    assert "pickle" not in str(err.value)


def test_a_truncated_npz_is_refused_with_its_name(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez(path, **_arrays(n=200))
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ConfigError) as err:
        load_dataset(dataset_cfg("npz", path=str(path), image_size=8))
    assert str(path) in str(err.value) and "pickle" not in str(err.value)


def test_npz_object_arrays_are_never_unpickled(tmp_path):
    labels = np.empty(12, dtype=object)
    labels[:] = [int(k) for k in np.arange(12) % 3]
    message = _refused(tmp_path / "d.npz", y_train=labels)
    assert "'y_train' holds Python objects" in message and "allow_pickle" not in message


def test_channels_first_images_are_recognised_and_the_message_says_to_transpose(tmp_path):
    x = np.zeros((12, 3, 8, 8), np.uint8)
    message = _refused(tmp_path / "nchw.npz", x_train=x)
    assert "N x C x H x W" in message and "x_train.transpose(0, 2, 3, 1)" in message
    assert "image_size=3" not in message and "in_channels=8" not in message


def test_grayscale_images_without_a_channel_axis_get_the_fix(tmp_path):
    message = _refused(tmp_path / "gray.npz", x_train=np.zeros((12, 8, 8), np.uint8))
    assert "x_train[..., None]" in message


def test_float_images_are_refused_with_the_conversion(tmp_path):
    message = _refused(tmp_path / "float.npz", x_train=np.zeros((12, 8, 8, 3), np.float32))
    assert "x_train is float32" in message and "astype(np.uint8)" in message


# ----------------------------------------------------------------------------- image folders


def _image_folder(root, classes=("cat", "dog"), n=3, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.jpg")


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_image_fails_with_its_file_name(tmp_path, workers, damage):
    _image_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200] if damage == "truncated" else b"not an image")
    d = load_dataset(dataset_cfg("imagefolder", root=str(tmp_path), image_size=16))
    loader = FolderLoader(d.train, 2, device="cpu", num_workers=workers)
    with pytest.raises(UnreadableImage) as err:
        list(loader)
    message = str(err.value)
    assert message.startswith(f"cannot read the image '{bad}'") and "corrupt or truncated" in message
    assert "Traceback" not in message  # a worker's traceback is not part of the message


def test_an_empty_class_folder_gets_our_message(tmp_path):
    _image_folder(tmp_path)
    (tmp_path / "val" / "bird").mkdir()
    (tmp_path / "val" / "bird" / "notes.txt").write_text("no images here")
    (tmp_path / "train" / "bird").mkdir()
    with pytest.raises(ConfigError) as err:
        load_dataset(dataset_cfg("imagefolder", root=str(tmp_path), image_size=16))
    message = str(err.value)
    assert f"'{tmp_path / 'train'}' has class folders without images: bird" in message
    assert "Found no valid file" not in message  # torchvision's words are replaced


# ----------------------------------------------------------------------------- config


def _composed(*overrides):
    """The config and its `hydra` node (overrides, group choices), as a job gets them."""
    with initialize_config_module(config_module="wcnorm.conf", version_base="1.3"):
        cfg = compose("train", overrides=["trainer.device=cpu", *overrides], return_hydra_config=True)
    hydra = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, hydra


@pytest.mark.parametrize("added, closest", [("+trainer.epoch=3", "trainer.epochs"),
                                            ("+diagnostic.every=2", "diagnostics.every"),
                                            ("+optim.learning_rate=0.1", None)])
def test_an_added_key_that_nothing_reads_is_refused_with_the_closest_key(added, closest):
    cfg, hydra = _composed(added)
    with pytest.raises(ConfigError) as err:
        validate(cfg, hydra)
    message = str(err.value)
    assert added.split("=")[0] in message and "+model.<option>" in message
    if closest:
        assert f"did you mean {closest}?" in message
    validate(*_composed())  # the same config without it is fine


def test_model_options_and_config_groups_may_still_be_added():
    validate(*_composed("model=vit", "norm=ln_wc", "+model.depth=2", "+model.heads=2"))
    validate(*_composed("+budget=smoke"))  # a config group, not a key
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['depthh'\]; valid options"):
        validate(*_composed("model=vit", "norm=ln", "+model.depthh=2"))  # the model names its options


@pytest.mark.parametrize("norm, refused", [("bn", True), ("bn_wc", True), ("gn", False), ("none", False)])
def test_a_batch_of_one_is_refused_with_batchnorm_only(norm, refused):
    cfg = compose_cfg([f"norm={norm}", "trainer.batch_size=1"])
    if refused:
        with pytest.raises(ConfigError, match="trainer.batch_size=1 with BatchNorm") as err:
            validate(cfg)
        assert "norm=gn" in str(err.value)
    else:
        validate(cfg)


def test_a_validation_split_that_leaves_one_training_example_is_refused_before_the_run(cfg_factory, tmp_path):
    from wcnorm.training.train import train

    cfg = cfg_factory("dataset.train_size=4", "dataset.val_split=0.75", "model=enorm_fc", "norm=none",
                      "dataset.image_size=8")
    with pytest.raises(ConfigError, match=r"has 1 example\(s\), after dataset.val_split=0.75 held out the rest, "
                                          r"which makes no training batch"):
        train(cfg)
    assert not (tmp_path / "runs").exists()  # nothing written


# ----------------------------------------------------------------------------- neural-field data


def _sphere_obj(path, nan_vertex=None):
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.6)
    vertices = sphere.vertices.copy()
    if nan_vertex is not None:
        vertices[nan_vertex, 1] = np.nan
    lines = [f"v {float(x)!r} {float(y)!r} {float(z)!r}" for x, y, z in vertices] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in sphere.faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_mesh_vertex_that_is_not_finite_is_named_not_called_a_hole(tmp_path):
    from wcnorm.fields.shapes import MeshError, load_mesh

    load_mesh(_sphere_obj(tmp_path / "good.obj"))  # the sphere itself is fine
    with pytest.raises(MeshError, match=r"bad\.obj: vertex 7 \(of 162\) is not finite") as err:
        load_mesh(_sphere_obj(tmp_path / "bad.obj", nan_vertex=7))
    assert "watertight" not in str(err.value)


def test_a_surface_grid_too_large_for_the_machine_is_refused_before_training(tmp_path):
    from wcnorm.tasks.field_common import field_config_problems

    def problems(res):
        cfg = compose_cfg(["model=occupancy", "dataset=mesh", "norm=none", f"dataset.path={_sphere_obj(tmp_path / 's.obj')}",
                           f"dataset.mc_resolution={res}"], smoke=False)
        return [p for p in field_config_problems(cfg) if "mc_resolution" in p]

    assert problems(64) == []
    (refused,) = problems(3000)
    assert "dataset.mc_resolution=3000: extracting the surface on a 3000^3 grid needs at least 201 GiB" in refused
    assert "choose dataset.mc_resolution=" in refused
