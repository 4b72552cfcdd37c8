"""Scene loaders: Blender and LLFF layouts written here, and the shared lego and fern."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from wcnorm.errors import ConfigError, DatasetUnavailable
from wcnorm.fields.scenes import (
    BLENDER_FAR,
    BLENDER_NEAR,
    LLFF_BOUND_FACTOR,
    SceneError,
    average_pose,
    check_scene,
    load_blender,
    load_llff,
    load_scene,
)

ANGLE = 0.7


def write_blender(root, splits=("train", "val", "test"), n=2, size=(6, 8)):
    """A Blender scene of RGBA images: pixel colour (r, g, b) = (frame / 10, 0.2, 0.6),
    alpha 1 on the left half, 0 on the right."""
    h, w = size
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for k in range(n):
            rgba = np.zeros((h, w, 4), np.uint8)
            rgba[..., 0], rgba[..., 1], rgba[..., 2] = 25 * k, 51, 153
            rgba[:, : w // 2, 3] = 255
            Image.fromarray(rgba, "RGBA").save(root / split / f"r_{k}.png")
            pose = np.eye(4)
            pose[:3, 3] = [0.0, 0.0, 4.0 + k]
            frames.append({"file_path": f"./{split}/r_{k}", "transform_matrix": pose.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": ANGLE,
                                                                    "frames": frames}))
    return root


def test_blender_images_are_composited_on_white(tmp_path):
    scene = load_blender(write_blender(tmp_path), "val")
    assert scene.images.shape == (2, 6, 8, 3) and scene.poses.shape == (2, 3, 4)
    torch.testing.assert_close(scene.images[1, :, :4], torch.tensor([25, 51, 153]).expand(6, 4, 3) / 255)
    torch.testing.assert_close(scene.images[1, :, 4:], torch.ones(6, 4, 3))  # transparent -> white
    assert scene.focal == pytest.approx(0.5 * 8 / math.tan(0.5 * ANGLE))
    assert (scene.near, scene.far) == (BLENDER_NEAR, BLENDER_FAR) == (2.0, 6.0)
    assert scene.white_background and not scene.ndc
    torch.testing.assert_close(scene.poses[1, :, 3], torch.tensor([0.0, 0.0, 5.0]))
    assert [f.name for f in scene.files] == ["r_0.png", "r_1.png"]


def test_blender_downscale_averages_areas_and_scales_the_focal(tmp_path):
    full = load_blender(write_blender(tmp_path), "train")
    half = load_blender(tmp_path, "train", downscale=2)
    assert half.images.shape == (2, 3, 4, 3)
    assert half.focal == pytest.approx(full.focal / 2)
    torch.testing.assert_close(half.images, full.images.reshape(2, 3, 2, 4, 2, 3).mean(dim=(2, 4)))


def test_blender_rays_of_a_scene(tmp_path):
    scene = load_blender(write_blender(tmp_path, size=(5, 7)), "train")
    rays = scene.rays()
    assert rays.origins.shape == (2, 5, 7, 3)
    torch.testing.assert_close(rays.viewdirs[:, 2, 3], torch.tensor([[0, 0, -1.0]] * 2))
    settings = scene.render_settings(n_coarse=32, n_fine=0)
    assert (settings.near, settings.far, settings.white_background) == (2.0, 6.0, True)


def test_blender_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetUnavailable, match="transforms_train.json is missing"):
        load_blender(tmp_path, "train")
    write_blender(tmp_path, splits=("train",))
    with pytest.raises(ConfigError, match="unknown Blender split 'dev'; choose one of train, val, test"):
        load_blender(tmp_path, "dev")
    with pytest.raises(DatasetUnavailable, match="transforms_val.json"):
        load_blender(tmp_path, "val")
    (tmp_path / "train" / "r_1.png").unlink()
    with pytest.raises(DatasetUnavailable, match=r"r_1\.png is missing"):
        load_blender(tmp_path, "train")
    (tmp_path / "transforms_test.json").write_text('{"frames": []}')
    with pytest.raises(SceneError, match=r"transforms_test\.json is not a Blender transforms file"):
        load_blender(tmp_path, "test")
    with pytest.raises(ConfigError, match="downscale"):
        load_blender(tmp_path, "train", downscale=0)


# --------------------------------------------------------------------------- LLFF
def rotation_about_y(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def write_llff(root, n=10, size=(6, 8), factor=4, folder=None):
    """An LLFF scene of `n` cameras sharing one orientation R (OpenGL axes), at known
    centres; images_<factor> of size `size`; originals 4x larger than that."""
    rotation = rotation_about_y(0.3)
    centres = np.stack([np.linspace(-1, 1, n), np.linspace(0.5, -0.5, n), np.full(n, 2.0)], axis=1)
    h, w = size
    rows = []
    for k in range(n):
        right, up, back = rotation.T
        llff = np.stack([-up, right, back, centres[k], [h * factor, w * factor, 10.0 * factor]], axis=1)
        rows.append(np.concatenate([llff.ravel(), [2.0 + 0.1 * k, 8.0]]))
    np.save(root / "poses_bounds.npy", np.array(rows))
    images = root / (folder or f"images_{factor}")
    images.mkdir(parents=True)
    scale = 1 if folder is None else factor
    for k in range(n):
        pixels = np.full((h * scale, w * scale, 3), 10 * k, np.uint8)
        Image.fromarray(pixels).save(images / f"img{k:03d}.png")
    return rotation, centres


def test_llff_axes_scale_recentring_and_held_out_views(tmp_path):
    rotation, centres = write_llff(tmp_path)
    train = load_llff(tmp_path, "train", downscale=4)
    test = load_llff(tmp_path, "test", downscale=4)
    assert [f.name for f in test.files] == ["img000.png", "img008.png"]  # every 8th view
    assert len(train.files) == 8 and "img008.png" not in [f.name for f in train.files]
    assert train.images.shape == (8, 6, 8, 3)
    torch.testing.assert_close(test.images[1], torch.full((6, 8, 3), 80 / 255))
    assert train.focal == pytest.approx(10.0)  # the originals' focal over the factor
    # one shared orientation: the average pose is it, so recentring makes it the identity
    eye = torch.eye(3).expand(8, 3, 3)
    torch.testing.assert_close(train.poses[:, :, :3], eye)
    scale = 1 / (2.0 * LLFF_BOUND_FACTOR)  # the nearest bound becomes 1 / 0.75
    expected = (centres - centres.mean(0)) @ rotation * scale  # R^T (c - mean) per row
    torch.testing.assert_close(test.poses[:, :, 3], torch.from_numpy(expected[[0, 8]]).float())
    assert (train.near, train.far, train.ndc, train.white_background) == (0.0, 1.0, True, False)
    world = load_llff(tmp_path, "train", downscale=4, ndc=False)
    assert world.near == pytest.approx(0.9 / LLFF_BOUND_FACTOR)
    assert world.far == pytest.approx(8.0 * scale)
    rays = train.rays()
    torch.testing.assert_close(rays.origins[..., 2], torch.full((8, 6, 8), -1.0))  # the NDC near plane
    # pixel (3, 4) of a 6 x 8 image: half a pixel right of and below the axis, focal 10
    expected_dir = torch.nn.functional.normalize(torch.tensor([0.05, -0.05, -1.0]), dim=0)
    torch.testing.assert_close(rays.viewdirs[:, 3, 4], expected_dir.expand(8, 3))


def test_llff_reads_the_originals_when_the_factor_folder_is_absent(tmp_path):
    write_llff(tmp_path, folder="images")
    scene = load_llff(tmp_path, "test", downscale=4)
    assert scene.images.shape == (2, 6, 8, 3) and scene.focal == pytest.approx(10.0)
    torch.testing.assert_close(scene.images[1], torch.full((6, 8, 3), 80 / 255))


def test_llff_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetUnavailable, match="poses_bounds.npy is missing"):
        load_llff(tmp_path)
    write_llff(tmp_path)
    with pytest.raises(ConfigError, match="unknown LLFF split 'val'; choose one of train, test"):
        load_llff(tmp_path, "val", downscale=4)
    with pytest.raises(DatasetUnavailable, match="images_2 is missing"):
        load_llff(tmp_path, downscale=2)
    (tmp_path / "images_4" / "img009.png").unlink()
    with pytest.raises(SceneError, match="10 poses but .*images_4 holds 9 images"):
        load_llff(tmp_path, downscale=4)


def test_load_scene_recognises_the_layout(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "l").mkdir()
    write_blender(tmp_path / "b")
    write_llff(tmp_path / "l")
    assert load_scene(tmp_path / "b", "test").white_background
    assert load_scene(tmp_path / "l", "test", downscale=4).ndc
    with pytest.raises(DatasetUnavailable, match="neither a Blender scene"):
        load_scene(tmp_path)


# ---------------------------------------------------------------- the shared scenes
@pytest.mark.shared_data
def test_shared_lego(shared_data):
    root = shared_data / "nerf" / "lego"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    train = load_blender(root, "train")
    assert train.images.shape == (100, 100, 100, 3)
    assert train.focal == pytest.approx(138.89, abs=0.01)
    assert train.images.min() >= 0 and train.images.max() <= 1
    torch.testing.assert_close(train.images[:, 0, 0], torch.ones(100, 3))  # background corners
    assert train.images.mean() < 0.95  # the model is in view
    rays = train.rays()
    # cameras on a sphere of radius ~4 around the model, each looking at its centre
    radius = rays.origins[:, 50, 50].norm(dim=-1)
    assert ((radius > 3.9) & (radius < 4.2)).all()
    centre_ray = rays.viewdirs[:, 50, 50]
    miss = torch.linalg.cross(-rays.origins[:, 50, 50], centre_ray).norm(dim=-1)
    assert miss.max() < 0.1  # the central ray passes next to the origin
    val = load_blender(root, "val", downscale=2)
    assert val.images.shape == (20, 50, 50, 3) and val.focal == pytest.approx(69.44, abs=0.01)


@pytest.mark.shared_data
def test_shared_fern(shared_data):
    root = shared_data / "nerf" / "fern"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    train, test = load_llff(root, "train"), load_llff(root, "test")
    assert train.images.shape == (17, 378, 504, 3) and test.images.shape == (3, 378, 504, 3)
    assert [f.name for f in test.files] == ["image000.png", "image008.png", "image016.png"]
    assert train.focal == pytest.approx(3260.5263 / 8, rel=1e-4)
    poses = torch.cat([train.poses, test.poses]).double()
    rotations = poses[:, :, :3]
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(20, 3, 3),
                               atol=1e-5, rtol=0)
    assert torch.allclose(torch.det(rotations), torch.ones(20, dtype=torch.float64), atol=1e-5)
    np.testing.assert_allclose(average_pose(poses.numpy()), np.eye(4)[:3], atol=1e-5)
    assert (rotations[:, 2, 2] > 0.9).all()  # every camera looks roughly down -z
    assert poses[:, :, 3].norm(dim=-1).max() < 1.0  # camera centres close to the origin


# --------------------------------------------------------------------------- refused before training
@pytest.mark.parametrize("angle", [0.0, -0.5, math.pi, float("nan")])
def test_a_blender_field_of_view_out_of_range_is_refused(tmp_path, angle):
    write_blender(tmp_path)
    meta = json.loads((tmp_path / "transforms_val.json").read_text())
    meta["camera_angle_x"] = angle
    (tmp_path / "transforms_val.json").write_text(json.dumps(meta))
    with pytest.raises(SceneError, match=r"transforms_val\.json: camera_angle_x=.* strictly between 0 and pi"):
        check_scene("blender", tmp_path, ("train", "val"), downscale=1)


def test_a_blender_pose_that_is_not_finite_names_the_file_and_frame(tmp_path):
    write_blender(tmp_path)
    meta = json.loads((tmp_path / "transforms_train.json").read_text())
    meta["frames"][1]["transform_matrix"][0][3] = float("nan")
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(SceneError, match=r"transforms_train\.json: frame 1 \('\./train/r_1'\) has a "
                                         r"transform_matrix that is not finite"):
        check_scene("blender", tmp_path, ("train",), downscale=1)


def _spoil_llff(root, view, column, value):
    table = np.load(root / "poses_bounds.npy")
    table[view, column] = value
    np.save(root / "poses_bounds.npy", table)


@pytest.mark.parametrize("column, value, problem", [
    (3, float("nan"), "a pose that is not finite"),
    (14, 0.0, "height, width and focal"),  # the focal
    (15, -1.0, "bounds"),  # near
])
def test_an_llff_camera_out_of_range_names_the_file_and_view(tmp_path, column, value, problem):
    write_llff(tmp_path)
    _spoil_llff(tmp_path, 3, column, value)
    with pytest.raises(SceneError, match=rf"poses_bounds\.npy: view 3 has {problem}"):
        check_scene("llff", tmp_path, ("train", "test"), downscale=4)


def test_an_llff_table_of_random_bytes_is_named_and_explained(tmp_path):
    write_llff(tmp_path)
    (tmp_path / "poses_bounds.npy").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(SceneError, match=r"poses_bounds\.npy is not a NumPy array of numbers") as err:
        check_scene("llff", tmp_path, ("train", "test"), downscale=4)
    assert "allow_pickle" not in str(err.value)


def test_an_llff_scene_with_one_view_is_refused(tmp_path):
    write_llff(tmp_path, n=1)
    with pytest.raises(SceneError, match=r"has 1 view\(s\).*no view is left to train on"):
        check_scene("llff", tmp_path, ("train", "test"), downscale=4)
    with pytest.raises(SceneError, match="no view is left to train on"):
        load_llff(tmp_path, "train", downscale=4)


@pytest.mark.parametrize("layout", ["blender", "llff"])
def test_a_truncated_image_in_a_scene_is_named_before_training(tmp_path, layout):
    if layout == "blender":
        write_blender(tmp_path, size=(32, 32))
        image, splits = tmp_path / "test" / "r_1.png", ("train", "val", "test")
    else:
        write_llff(tmp_path, size=(32, 32))
        image, splits = tmp_path / "images_4" / "img005.png", ("train", "test")
    image.write_bytes(image.read_bytes()[:-30])  # cut short, as by a failed copy
    with pytest.raises(SceneError, match=rf"image .*{image.name} is not a readable image"):
        check_scene(layout, tmp_path, splits, downscale=1 if layout == "blender" else 4)
