"""A run directory names nothing outside itself: what result.json names (``renders``,
``mesh``, ``mesh_picture``) and what lies in the folder (a symlink) is read, plotted
and copied into a report only where it resolves inside the run directory."""

import json
import os

import matplotlib.image as mpimg
import numpy as np
import pytest
from fabricate import make_nerf_run, make_shape_run  # tests/ is on sys.path under pytest

from wcnorm.report.plot import copy_pictures, gallery_rows
from wcnorm.report.runs import load_runs


@pytest.fixture
def private_png(tmp_path):
    """A picture elsewhere on the disk that no report may pick up."""
    path = tmp_path / "private" / "secret.png"
    path.parent.mkdir()
    mpimg.imsave(path, np.random.default_rng(0).random((8, 8, 3)))
    return path


def _rename(run_dir, **named):
    result = json.loads((run_dir / "result.json").read_text())
    result.update(named)
    (run_dir / "result.json").write_text(json.dumps(result))


def _copied_bytes(root):
    return {p.read_bytes() for p in root.rglob("*.png")}


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_a_run_directory_names_nothing_outside_itself(tmp_path, private_png, how):
    runs = tmp_path / "runs"
    honest = make_shape_run(runs, shape="bunny", norm="wc")
    hostile = make_shape_run(runs, shape="armadillo", norm="wc")
    (hostile / "mesh.png").unlink()
    if how == "absolute":
        _rename(hostile, mesh_picture=str(private_png), mesh=str(private_png.with_suffix(".obj")))
    elif how == "dotdot":
        _rename(hostile, mesh_picture=os.path.relpath(private_png, hostile))
    else:
        (hostile / "mesh.png").symlink_to(private_png)
    with pytest.warns(UserWarning, match=f"{hostile}.*outside the run directory"):
        runs_df = load_runs(runs)
        files = copy_pictures(runs_df, tmp_path / "out")
    # the report goes on with the other run; nothing from outside is copied
    assert [f.relative_to(tmp_path / "out").as_posix() for f in files] == ["meshes/bunny/wc.png"]
    assert private_png.read_bytes() not in _copied_bytes(tmp_path / "out")
    assert (tmp_path / "out/meshes/bunny/wc.png").read_bytes() == (honest / "mesh.png").read_bytes()
    rows = {r.name: r for r in gallery_rows(runs_df, "shape")[1]}
    assert rows["armadillo"].pictures["wc"] is None  # wcnorm plot opens nothing outside either


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlinked_file", "symlinked_folder"])
def test_a_nerf_runs_renders_are_read_only_inside_it(tmp_path, private_png, how):
    runs = tmp_path / "runs"
    make_nerf_run(runs, scene="lego", norm="wc")
    hostile = make_nerf_run(runs, scene="fern", norm="wc")
    outside = private_png.parent
    mpimg.imsave(outside / "r_0_pred.png", mpimg.imread(private_png))
    if how == "absolute":
        _rename(hostile, renders=str(outside))
    elif how == "dotdot":
        _rename(hostile, renders=os.path.relpath(outside, hostile))
    elif how == "symlinked_file":
        target = hostile / "renders" / "test" / "r_0_pred.png"
        target.unlink()
        target.symlink_to(outside / "r_0_pred.png")
    else:
        for png in (hostile / "renders" / "test").iterdir():
            png.unlink()
        (hostile / "renders" / "test").rmdir()
        (hostile / "renders" / "test").symlink_to(outside)
    with pytest.warns(UserWarning, match=f"{hostile}.*outside the run directory"):
        files = copy_pictures(load_runs(runs), tmp_path / "out")
    assert any("renders/lego/wc" in f.as_posix() for f in files)
    assert private_png.read_bytes() not in _copied_bytes(tmp_path / "out")
    assert (outside / "r_0_pred.png").read_bytes() not in _copied_bytes(tmp_path / "out")
