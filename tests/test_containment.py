"""A shared run directory is data, and only its own: it names nothing outside itself
(what result.json names, ``renders``, ``mesh``, ``mesh_picture``, and what lies in the
folder, a symlink, is read, plotted and copied into a report only where it resolves
inside the run directory), and an edit to its text files cannot make it another
config's run (identity comes from what the run recorded when it trained).

docs/guarantees.md cites these tests by name."""

import errno
import json
import os
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from fabricate import make_nerf_run, make_run, make_shape_run  # tests/ is on sys.path under pytest
from omegaconf import OmegaConf
from test_rundir import FAST, _count_steps, _image_folder, _pinned

from wcnorm import outputs
from wcnorm.errors import ConfigError, DatasetUnavailable, DiskFull, RunMismatchError, WcnormError
from wcnorm.outputs import RUN_FILES, RUN_FOLDERS, load_checkpoint, run_dir_for
from wcnorm.report.plot import copy_pictures, gallery_rows
from wcnorm.report.runs import load_runs
from wcnorm.training.train import train


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


# ----------------------------------------------------------------------------- identity that a text edit cannot fake


def _edit_config(run_dir, key, value):
    cfg = OmegaConf.load(run_dir / "config.yaml")
    OmegaConf.update(cfg, key, value)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))


def test_an_edited_config_yaml_does_not_make_a_finished_run_another_configs(cfg_factory, monkeypatch, caplog):
    two = train(cfg_factory(*FAST, "trainer.epochs=2"))
    two_dir = run_dir_for(cfg_factory(*FAST, "trainer.epochs=2"))
    _edit_config(two_dir, "trainer.epochs", 4)  # now reads like the 4-epoch run's
    steps = _count_steps(monkeypatch)
    four = train(cfg_factory(*FAST, "trainer.epochs=4"))
    assert four["status"] == "finished" and four["epochs"] == 4 and len(steps) == 4 * 2  # trained, all 4 epochs
    assert two_dir.is_dir() and two_dir != run_dir_for(cfg_factory(*FAST, "trainer.epochs=4"))
    assert two["epochs"] == 2


def test_an_edited_config_yaml_does_not_let_another_config_resume_a_pinned_run(cfg_factory, tmp_path):
    run = tmp_path / "run"
    train(_pinned(cfg_factory, run, "trainer.epochs=2", "optim.lr=0.1", "trainer.stop_after=1"))
    before = (run / "last.pt").read_bytes()
    _edit_config(run, "optim.lr", 0.5)
    with pytest.raises(RunMismatchError, match=r"last\.pt' belongs to another config"):
        train(_pinned(cfg_factory, run, "trainer.epochs=2", "optim.lr=0.5"))
    assert (run / "last.pt").read_bytes() == before
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


@pytest.mark.parametrize("edit", [{"final_test_acc": 99.0}, {"epochs": 6}, {"final_train_loss": "low"}])
def test_a_result_edited_by_hand_is_named_and_left_out_of_the_report(tmp_path, edit):
    runs = tmp_path / "runs"
    make_run(runs, norm="bn", seed=0, final_acc=90.0)
    edited = make_run(runs, norm="bn", seed=1, final_acc=91.0)
    _rename(edited, **edit)
    key = next(iter(edit))
    with pytest.warns(UserWarning, match=f"{edited}: result.json and metrics.csv disagree on {key}"):
        df = load_runs(runs)
    assert list(df["seed"]) == [0] and df.attrs["skipped"] == [str(edited.resolve())]


# ----------------------------------------------------------------------------- a folder that is not a run


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("restart", [False, True], ids=["train", "restart"])
def test_a_folder_that_holds_no_run_is_refused_and_left_whole(cfg_factory, tmp_path, monkeypatch, restart):
    mine = tmp_path / "my_results"
    (mine / "renders").mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv", "mesh.obj", "mesh.png", "renders/view.png", "notes.txt"):
        (mine / name).write_text(f"my own {name}")
    before = _snapshot(mine)
    monkeypatch.setattr("wcnorm.training.train._assemble", lambda *a: pytest.fail("started the work"))
    with pytest.raises(RunMismatchError, match=r"my_results' holds files .* but no wcnorm run.*new or empty folder"):
        train(_pinned(cfg_factory, mine, *(["trainer.restart=true"] if restart else [])))
    assert _snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == sorted(
        ["config.yaml", "metrics.csv", "mesh.obj", "mesh.png", "renders", "notes.txt"])


def test_an_empty_folder_pinned_as_run_dir_is_used(cfg_factory, tmp_path):
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / ".DS_Store").write_text("hidden files do not make a folder someone's")
    assert train(_pinned(cfg_factory, tmp_path / "fresh"))["status"] == "finished"


def test_the_docs_list_exactly_what_restart_deletes():
    guarantees = (Path(__file__).parents[1] / "docs" / "guarantees.md").read_text()
    bullet = guarantees[guarantees.index("**`trainer.restart=true` trains from scratch**"):]
    bullet = bullet[:bullet.index("test_restart_trains_from_scratch")]
    listed = set(re.findall(r"`([\w.]+/?)`", bullet)) - {"trainer.restart=true"}
    assert listed == {*RUN_FILES, *(f"{folder}/" for folder in RUN_FOLDERS)}


# ----------------------------------------------------------------------------- temporaries


def test_only_the_runs_own_temporaries_are_removed(cfg_factory, tmp_path):
    run = tmp_path / "run"
    train(_pinned(cfg_factory, run, "trainer.epochs=2", "trainer.stop_after=1"))
    theirs = [run / ".last.pt.k3j2x9ab.tmp", run / ".result.json.q1w2e3r4.tmp"]
    users = [run / ".draft.tmp", run / ".notes.txt.a1b2c3d4.tmp", run / ".last.pt.tmp"]
    for p in theirs + users:
        p.write_bytes(b"half a file")
    train(_pinned(cfg_factory, run, "trainer.epochs=2"))
    assert not any(p.exists() for p in theirs) and all(p.read_bytes() == b"half a file" for p in users)


# ----------------------------------------------------------------------------- a result rewritten from last.pt


@pytest.mark.parametrize("norm", ["bn_wc", "bn"])
def test_a_result_rewritten_from_the_final_checkpoint_equals_the_original(cfg_factory, tmp_path, monkeypatch, norm):
    run = tmp_path / "run"
    cfg = _pinned(cfg_factory, run, f"norm={norm}", "trainer.epochs=2")
    original = json.loads(train(cfg) and (run / "result.json").read_text())
    (run / "result.json").unlink()  # a crash between the last checkpoint and result.json
    steps = _count_steps(monkeypatch)
    train(cfg)
    rewritten = json.loads((run / "result.json").read_text())
    assert steps == []
    assert original["conditioning"]["end"]["num_layers"] > 0
    # equal but for when it was written
    assert {k: v for k, v in rewritten.items() if k != "date"} == {k: v for k, v in original.items() if k != "date"}


# ----------------------------------------------------------------------------- one config, two data folders


def _folder_cfg(cfg_factory, root, *extra):
    return cfg_factory("dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=8", "model=enorm_fc",
                       "norm=bn", "trainer.num_workers=0", "trainer.batch_size=4", *extra)


def test_one_config_on_two_image_folders_gets_two_runs(cfg_factory, tmp_path, monkeypatch):
    _image_folder(tmp_path / "a")
    _image_folder(tmp_path / "b", n=3)
    first = train(_folder_cfg(cfg_factory, tmp_path / "a"))
    second = train(_folder_cfg(cfg_factory, tmp_path / "b"))
    assert first["run_dir"] != second["run_dir"] and second["identity"]["data"]["files"] == 12
    steps = _count_steps(monkeypatch)  # each is found again, finished
    assert train(_folder_cfg(cfg_factory, tmp_path / "a"))["run_dir"] == first["run_dir"]
    assert train(_folder_cfg(cfg_factory, tmp_path / "b"))["run_dir"] == second["run_dir"]
    assert steps == []


def test_a_missing_or_malformed_folder_gets_its_own_error(cfg_factory, tmp_path):
    _image_folder(tmp_path / "a")
    train(_folder_cfg(cfg_factory, tmp_path / "a"))
    with pytest.raises(DatasetUnavailable, match=r"'.*absent' does not exist; check dataset\.root"):
        train(_folder_cfg(cfg_factory, tmp_path / "absent"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(Exception) as err:
        train(_folder_cfg(cfg_factory, tmp_path / "empty"))
    assert "other data" not in str(err.value) and "empty" in str(err.value)


# ----------------------------------------------------------------------------- the disk


def test_a_full_disk_is_one_message_and_loses_nothing(cfg_factory, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(_pinned(cfg_factory, run, "trainer.epochs=2", "trainer.stop_after=1"))
    before = {name: (run / name).read_bytes() for name in ("last.pt", "metrics.csv", "config.yaml")}

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as disk:
        disk.setattr(outputs.os, "fsync", full)
        with pytest.raises(DiskFull, match=r"no space left on the device to write '.*config\.yaml'.*nothing written "
                                            r"before is lost.*rerun the same command"):
            train(_pinned(cfg_factory, run, "trainer.epochs=2"))
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not list(run.glob(".*.tmp"))
    assert train(_pinned(cfg_factory, run, "trainer.epochs=2"))["epochs"] == 2  # space again: it resumes


def test_a_path_component_over_the_file_systems_limit_is_refused_before_anything(cfg_factory, tmp_path):
    long = tmp_path / ("x" * 300) / "run"
    with pytest.raises(ConfigError, match=r"component 300 bytes long .* over this file system's limit of \d+: shorten"):
        train(_pinned(cfg_factory, long))
    with pytest.raises(ConfigError, match="over this file system's limit"):
        train(cfg_factory(*FAST, f"out_dir={tmp_path / ('y' * 300)}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_end_of_run_measurement_out_of_memory_loses_no_training(cfg_factory, tmp_path, monkeypatch):
    from wcnorm.tasks.task import Task

    run = tmp_path / "run"

    def too_big(self, model, run_dir):
        raise MemoryError("Unable to allocate 108 GiB")

    with monkeypatch.context() as machine:
        machine.setattr(Task, "finish", too_big)
        with pytest.raises(WcnormError, match=r"training finished and '.*last\.pt' holds it.*rerun the same command: "
                                              r"it trains no step"):
            train(_pinned(cfg_factory, run, "trainer.epochs=2"))
    assert load_checkpoint(run / "last.pt")["epoch"] == 2 and not (run / "result.json").exists()
    steps = _count_steps(monkeypatch)
    assert train(_pinned(cfg_factory, run, "trainer.epochs=2"))["status"] == "finished" and steps == []
