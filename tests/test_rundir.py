"""A run directory a user can trust: checkpoints never run code, every unreadable file
gets one clear message, files get the umask's permissions, a directory holds the run
of one config on one dataset, restarting is explicit and honest, interrupted writes
leave nothing behind, and nothing is written before the data is known to load.

docs/guarantees.md cites these tests by name."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import wcnorm.training.train as runner
from wcnorm import outputs
from wcnorm.errors import (
    CheckpointError,
    ConfigError,
    DatasetUnavailable,
    RunMismatchError,
    WcnormError,
)
from wcnorm.outputs import (
    MESH_FILE,
    MESH_PICTURE,
    RENDERS,
    RUN_FILES,
    atomic_write_text,
    config_digest,
    data_fingerprint,
    discard_run,
    listing_fingerprint,
    load_checkpoint,
    path_fingerprint,
    run_dir_for,
    run_identity,
    run_lock,
    save_checkpoint,
)
from wcnorm.training.train import train
from wcnorm.training.trainer import Trainer

FAST = ["model=enorm_fc", "norm=bn", "dataset.train_size=96", "dataset.test_size=32", "dataset.image_size=8"]
STEPS_PER_EPOCH = 2  # conftest's smoke settings: trainer.limit_batches=2


def _pinned(cfg_factory, run: Path, *overrides: str):
    return cfg_factory(*FAST, f"run_dir={run}", *overrides)


def _count_steps(monkeypatch) -> list[int]:
    """The epoch counter at every optimizer step from now on."""
    steps, original = [], Trainer.train_step

    def counted(self, *batch):
        steps.append(self.epoch)
        return original(self, *batch)

    monkeypatch.setattr(Trainer, "train_step", counted)
    return steps


# ----------------------------------------------------------------------------- checkpoints never run code


class _RunsCode:
    """Unpickled by plain `pickle`, this creates the file `marker`: a stand-in for any code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(path: Path, marker: Path) -> None:
    torch.save({"epoch": 1, "model": _RunsCode(marker)}, path)


def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(cfg_factory, tmp_path):
    # The planted file is live: loading it the ordinary way runs its code.
    _plant(tmp_path / "control.pt", tmp_path / "control-ran")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert (tmp_path / "control-ran").exists()

    run = tmp_path / "run"
    run.mkdir()
    _plant(run / "last.pt", tmp_path / "ran")
    cfg = _pinned(cfg_factory, run)
    with pytest.raises(CheckpointError, match=rf"'{re.escape(str(run / 'last.pt'))}' is not a readable wcnorm "
                                              r"checkpoint.*Move it aside"):
        train(cfg)
    assert not (tmp_path / "ran").exists()
    assert {p.name for p in run.iterdir()} == {"last.pt", ".lock"}  # refused before config.yaml was written

    (run / "last.pt").rename(run / "last.pt.bad")  # what the message says to do
    assert train(cfg)["status"] == "finished"  # the same command now trains
    assert not (tmp_path / "ran").exists()


def _truncated_checkpoint(path: Path) -> None:
    save_checkpoint(path, {"epoch": 1, "weights": torch.zeros(4096)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("spoil", [
    lambda p: p.write_bytes(b"not a checkpoint at all\n" * 40),
    lambda p: p.write_bytes(b""),
    _truncated_checkpoint,
], ids=["garbage", "empty", "truncated"])
def test_an_unreadable_checkpoint_gets_one_clear_message(cfg_factory, tmp_path, spoil):
    run = tmp_path / "run"
    run.mkdir()
    spoil(run / "last.pt")
    with pytest.raises(CheckpointError) as err:
        train(_pinned(cfg_factory, run))
    msg = str(err.value)
    assert msg.startswith(f"'{run / 'last.pt'}' is not a readable wcnorm checkpoint")
    assert f"mv '{run / 'last.pt'}' '{run / 'last.pt'}.bad'" in msg and "\n" not in msg


@pytest.mark.slow
def test_the_cli_reports_a_bad_checkpoint_without_a_traceback(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"garbage")
    cmd = [sys.executable, "-m", "wcnorm", "train", "dataset=synthetic", "model=enorm_fc", "dataset.image_size=8",
           "trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=16", "trainer.limit_batches=2",
           f"run_dir={run}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "is not a readable wcnorm checkpoint" in out and "Move it aside" in out
    assert "Traceback" not in out


# ----------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_run_files_get_the_permissions_the_umask_gives(cfg_factory, tmp_path, umask, mode):
    run = tmp_path / "run"
    old = os.umask(umask)
    try:
        train(_pinned(cfg_factory, run))
    finally:
        os.umask(old)
    for name in ("config.yaml", "metrics.csv", "result.json", "last.pt", "conditioning.csv"):
        assert stat.S_IMODE((run / name).stat().st_mode) == mode, name
    assert stat.S_IMODE(run.stat().st_mode) == 0o777 & ~umask


# ----------------------------------------------------------------------------- one run per directory


def test_where_and_how_a_run_happens_is_not_part_of_its_identity(cfg_factory):
    base = config_digest(cfg_factory("dataset=cifar10"))
    for volatile in ("dataset.root=/elsewhere", "dataset.download=false", "trainer.num_workers=0",
                     "trainer.restart=true", "trainer.stop_after=3", "trainer.progress=true", "out_dir=/other",
                     "run_dir=/pinned", "logger=[csv,tensorboard]"):
        assert config_digest(cfg_factory("dataset=cifar10", volatile)) == base, volatile
    for computed in ("trainer.device=cuda", "trainer.epochs=5", "dataset.augment=false", "optim.lr=0.01", "seed=1",
                     "trainer.amp=bf16", "trainer.limit_eval_batches=1"):
        assert config_digest(cfg_factory("dataset=cifar10", computed)) != base, computed


def test_a_presets_lookup_tables_name_a_run_only_through_what_it_takes_from_them(cfg_factory):
    # enorm_fc at budget=cpu, BN at depth 3: its epochs come from protocol.cpu, its rate
    # from lr_table.bn; other budgets' numbers and other methods' rates are not its own.
    point = ("experiment=enorm_fc", "budget=cpu", "norm=bn", "model.depth=3", "dataset=synthetic")
    base = config_digest(cfg_factory(*point, smoke=False))
    for elsewhere in ("protocol.paper.epochs=61", "protocol.short.seeds=2", "lr_table.enorm.default=0.5",
                      "+protocol.cpu.note=anything"):
        assert config_digest(cfg_factory(*point, elsewhere, smoke=False)) == base, elsewhere
    for own in ("protocol.cpu.epochs=11", "lr_table.bn.default=0.05"):
        assert config_digest(cfg_factory(*point, own, smoke=False)) != base, own


def test_a_pinned_run_dir_refuses_another_configs_checkpoint(cfg_factory, tmp_path):
    run = tmp_path / "run"
    mine = ["trainer.epochs=2"]
    train(_pinned(cfg_factory, run, *mine, "trainer.stop_after=1"))
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "last.pt", "metrics.csv")}
    other = _pinned(cfg_factory, run, *mine, "optim.lr=0.05")
    with pytest.raises(RunMismatchError, match=r"last\.pt' belongs to another config.*config\.yaml.*"
                                               r"trainer\.restart=true"):
        train(other)
    assert {name: (run / name).read_bytes() for name in before} == before  # its files untouched
    assert train(_pinned(cfg_factory, run, *mine))["status"] == "finished"  # its own command resumes it


def test_a_pinned_run_dir_refuses_another_configs_result(cfg_factory, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(_pinned(cfg_factory, run))
    monkeypatch.setattr(runner, "_train", lambda *a: pytest.fail("trained over another config's run"))
    with pytest.raises(RunMismatchError, match=r"result\.json' belongs to another config"):
        train(_pinned(cfg_factory, run, "seed=5"))


def test_configs_whose_short_hashes_collide_are_kept_apart(cfg_factory, monkeypatch):
    monkeypatch.setattr(outputs, "config_hash", lambda cfg: "c0111de5")  # 8 hex digits can collide
    first, other = cfg_factory(*FAST), cfg_factory(*FAST, "optim.lr=0.05")
    assert run_dir_for(first) == run_dir_for(other)
    train(first)
    with pytest.raises(RunMismatchError, match="belongs to another config"):
        train(other)


def test_restart_replaces_another_configs_run_when_asked(cfg_factory, tmp_path):
    run = tmp_path / "run"
    train(_pinned(cfg_factory, run))
    other = _pinned(cfg_factory, run, "seed=5", "trainer.restart=true")
    result = train(other)
    assert result["identity"] == run_identity(other)
    assert "seed: 5" in (run / "config.yaml").read_text()


def _npz(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), y_train=np.arange(64) % 4,
             x_test=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), y_test=np.arange(16) % 4)


def test_a_changed_data_file_at_the_same_path_is_refused(cfg_factory, tmp_path):
    data, run = tmp_path / "mine.npz", tmp_path / "run"
    _npz(data, seed=0)
    original = data.read_bytes()

    def cfg(*extra):
        return cfg_factory("dataset=npz", f"dataset.path={data}", "dataset.image_size=8", "model=enorm_fc",
                           "norm=bn", "trainer.epochs=2", f"run_dir={run}", *extra)

    train(cfg("trainer.stop_after=1"))
    _npz(data, seed=1)  # other images under the same name
    with pytest.raises(RunMismatchError, match=r"last\.pt' was trained on other data.*sha256"):
        train(cfg())
    data.write_bytes(original)  # the data is back: the run resumes
    assert train(cfg())["status"] == "finished"
    _npz(data, seed=1)
    with pytest.raises(RunMismatchError, match=r"result\.json' was trained on other data"):
        train(cfg())


def test_data_files_are_identified_by_content_or_by_size_and_mtime(tmp_path, monkeypatch):
    f = tmp_path / "big.npz"
    f.write_bytes(b"x" * 100)
    by_content = path_fingerprint(f)
    assert by_content == {"bytes": 100, "sha256": hashlib.sha256(b"x" * 100).hexdigest()}
    os.utime(f, ns=(1, 1))
    assert path_fingerprint(f) == by_content  # a copy (new mtime) holds the same data
    monkeypatch.setattr(outputs, "CONTENT_HASH_LIMIT", 10)  # above it: size and mtime, without reading
    assert path_fingerprint(f) == {"bytes": 100, "mtime_ns": 1}
    os.utime(f, ns=(2, 2))
    assert path_fingerprint(f) == {"bytes": 100, "mtime_ns": 2}
    assert path_fingerprint(tmp_path / "absent.npz") == {"missing": str(tmp_path / "absent.npz")}


def test_what_identifies_each_kind_of_dataset(cfg_factory, tmp_path):
    _image_folder(tmp_path / "images")
    _npz(tmp_path / "mine.npz", seed=0)
    (tmp_path / "scene" / "train").mkdir(parents=True)
    (tmp_path / "scene" / "train" / "r_0.png").write_bytes(b"")

    def fingerprint(*overrides):
        return data_fingerprint(cfg_factory(*overrides).dataset)

    # checksummed when they load, bundled, generated: the name (and the config) say it all
    assert fingerprint("dataset=cifar10", f"dataset.root={tmp_path}") == {"builtin": "cifar10"}
    assert fingerprint("dataset=digits") == {"builtin": "digits"}
    assert fingerprint("dataset=synthetic") == {"builtin": "synthetic"}
    # files and folders the user provides: their content, or their listing
    assert fingerprint("dataset=npz", f"dataset.path={tmp_path / 'mine.npz'}") == path_fingerprint(tmp_path / "mine.npz")
    assert fingerprint("dataset=imagefolder", f"dataset.root={tmp_path / 'images'}")["files"] == 16
    assert fingerprint("dataset=blender", f"dataset.root={tmp_path / 'scene'}")["files"] == 1
    assert "sha256" in fingerprint("dataset=mesh", f"dataset.path={tmp_path / 'mine.npz'}")


def _image_folder(root: Path, n: int = 4, size: int = 8) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_a_folder_is_identified_by_its_listing(tmp_path):
    _image_folder(tmp_path / "a")
    fp = listing_fingerprint(tmp_path / "a")
    assert fp["files"] == 16
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "train" / ".DS_Store").write_bytes(b"")
    assert listing_fingerprint(tmp_path / "b") == fp  # copied elsewhere, plus a hidden file: the same data
    (tmp_path / "b" / "train" / "dog" / "3.png").rename(tmp_path / "b" / "train" / "cat" / "9.png")
    assert listing_fingerprint(tmp_path / "b") != fp  # a relabelled image
    (tmp_path / "b" / "train" / "cat" / "9.png").unlink()
    assert listing_fingerprint(tmp_path / "b")["files"] == 15


def test_a_copied_image_folder_resumes_and_a_changed_one_gets_its_own_run(cfg_factory, tmp_path, monkeypatch):
    _image_folder(tmp_path / "data")

    def cfg(root, *extra):
        return cfg_factory("dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=8", "model=enorm_fc",
                           "norm=bn", "trainer.num_workers=0", "trainer.epochs=2", "trainer.batch_size=4", *extra)

    train(cfg(tmp_path / "data", "trainer.stop_after=1"))
    shutil.copytree(tmp_path / "data", tmp_path / "staged")  # e.g. onto a node's local disk
    assert run_dir_for(cfg(tmp_path / "staged")) == run_dir_for(cfg(tmp_path / "data"))
    (tmp_path / "staged" / "train" / "cat" / "extra.png").write_bytes((tmp_path / "data" / "train" / "cat" /
                                                                       "0.png").read_bytes())
    other = train(cfg(tmp_path / "staged"))  # other data: a run of its own, beside the first
    assert other["status"] == "finished" and other["run_dir"] != str(run_dir_for(cfg(tmp_path / "data")))
    assert load_checkpoint(run_dir_for(cfg(tmp_path / "data")) / "last.pt")["epoch"] == 1  # left alone
    (tmp_path / "staged" / "train" / "cat" / "extra.png").unlink()
    steps = _count_steps(monkeypatch)
    result = train(cfg(tmp_path / "staged"))
    assert result["status"] == "finished" and result["epochs"] == 2 and len(steps) == STEPS_PER_EPOCH  # resumed
    assert result["run_dir"] == str(run_dir_for(cfg(tmp_path / "data")))


def test_files_from_before_identities_are_taken_with_a_warning(cfg_factory, tmp_path, caplog, monkeypatch):
    run = tmp_path / "run"
    cfg = _pinned(cfg_factory, run, "trainer.epochs=2")
    train(_pinned(cfg_factory, run, "trainer.epochs=2", "trainer.stop_after=1"))
    state = load_checkpoint(run / "last.pt")
    del state["identity"]
    save_checkpoint(run / "last.pt", state)
    with caplog.at_level(logging.WARNING, logger="wcnorm"):
        result = train(cfg)
    assert f"'{run / 'last.pt'}' records no config or data identity" in caplog.text
    assert result["status"] == "finished" and result["epochs"] == 2
    assert load_checkpoint(run / "last.pt")["identity"] == run_identity(cfg)  # recorded from now on

    on_disk = json.loads((run / "result.json").read_text())
    del on_disk["identity"]
    (run / "result.json").write_text(json.dumps(on_disk))
    caplog.clear()
    monkeypatch.setattr(runner, "_train", lambda *a: pytest.fail("retrained a finished run"))
    with caplog.at_level(logging.WARNING, logger="wcnorm"):
        assert train(cfg)["final_test_acc"] == result["final_test_acc"]
    assert f"'{run / 'result.json'}' records no config or data identity" in caplog.text


@pytest.mark.parametrize("interrupted", [False, True], ids=["finished", "interrupted"])
def test_a_run_named_under_older_identity_rules_is_found_and_renamed(cfg_factory, monkeypatch, caplog, interrupted):
    cfg = cfg_factory(*FAST, "trainer.epochs=2")
    with monkeypatch.context() as older:  # rules under which dataset.val_split=0 named a run too
        older.setattr(outputs, "NEUTRAL_DEFAULTS", {})
        former = run_dir_for(cfg)
        train(cfg_factory(*FAST, "trainer.epochs=2", *(["trainer.stop_after=1"] if interrupted else [])))
    now = run_dir_for(cfg)
    assert now != former and former.is_dir() and not now.exists()
    steps = _count_steps(monkeypatch)
    with caplog.at_level(logging.INFO, logger="wcnorm"):
        result = train(cfg)
    assert f"found this run under its former name '{former.name}'" in caplog.text
    assert not former.exists() and (now / "config.yaml").is_file()
    assert steps == ([1] * STEPS_PER_EPOCH if interrupted else [])  # resumed, or skipped as finished
    assert result["status"] == "finished" and result["epochs"] == 2
    assert load_checkpoint(now / "last.pt")["epoch"] == 2


def test_a_run_of_another_config_beside_it_is_not_taken_for_this_one(cfg_factory):
    other = cfg_factory(*FAST, "optim.lr=0.05")
    train(other)
    cfg = cfg_factory(*FAST)
    assert outputs.former_run_dir(run_dir_for(cfg), run_identity(cfg)["config_sha1"]) is None
    (run_dir_for(other) / "config.yaml").write_text("{not: [yaml")  # an unreadable neighbour is passed over
    assert outputs.former_run_dir(run_dir_for(cfg), run_identity(cfg)["config_sha1"]) is None
    assert train(cfg)["identity"] == run_identity(cfg) and run_dir_for(other).is_dir()


# ----------------------------------------------------------------------------- retraining, honestly


def test_a_finished_run_says_what_retrains_it(cfg_factory, tmp_path, caplog):
    cfg = _pinned(cfg_factory, tmp_path / "run")
    train(cfg)
    with caplog.at_level(logging.INFO, logger="wcnorm"):
        train(cfg)
    assert "already finished" in caplog.text and "rerun with trainer.restart=true" in caplog.text


def test_deleting_result_json_rewrites_it_from_last_pt_without_training(cfg_factory, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = _pinned(cfg_factory, run)
    first = train(cfg)
    (run / "result.json").unlink()
    steps = _count_steps(monkeypatch)
    again = train(cfg)
    assert steps == []  # nothing was trained: the message must not promise that this retrains
    assert again["final_test_acc"] == first["final_test_acc"] and (run / "result.json").exists()


@pytest.mark.parametrize("interrupted", [False, True], ids=["finished", "interrupted"])
def test_restart_trains_from_scratch(cfg_factory, tmp_path, monkeypatch, caplog, interrupted):
    run = tmp_path / "run"
    train(_pinned(cfg_factory, run, "trainer.epochs=2", *(["trainer.stop_after=1"] if interrupted else [])))
    steps = _count_steps(monkeypatch)
    with caplog.at_level(logging.INFO, logger="wcnorm"):
        result = train(_pinned(cfg_factory, run, "trainer.epochs=2", "trainer.restart=true"))
    assert steps == [0] * STEPS_PER_EPOCH + [1] * STEPS_PER_EPOCH  # both epochs, from the first step
    assert "resumed from" not in caplog.text and "trainer.restart: deleted" in caplog.text
    assert result["status"] == "finished" and load_checkpoint(run / "last.pt")["epoch"] == 2
    assert (run / "metrics.csv").read_text().count("\n") == 1 + 2  # header and the new run's two epochs


# ----------------------------------------------------------------------------- unreadable results


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe\x00"], ids=["garbage", "list", "binary"])
def test_a_corrupt_result_json_is_named_with_what_to_do(cfg_factory, tmp_path, content):
    run = tmp_path / "run"
    cfg = _pinned(cfg_factory, run)
    first = train(cfg)
    (run / "result.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"'{re.escape(str(run / 'result.json'))}' is not a readable wcnorm "
                                              r"result.*Move it aside.*trainer\.restart=true"):
        train(cfg)
    (run / "result.json").rename(run / "result.json.bad")  # as the message says: then it is written again
    assert train(cfg)["final_test_acc"] == first["final_test_acc"]
    (run / "result.json").write_bytes(content)  # the message's other way out
    assert train(_pinned(cfg_factory, run, "trainer.restart=true"))["status"] == "finished"


# ----------------------------------------------------------------------------- interrupted writes


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "epoch\n1\n")

    def killed(*args):
        raise KeyboardInterrupt  # the process stops after the new bytes are written, before the rename

    monkeypatch.setattr(outputs.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "epoch\n" + "2\n" * 10_000)
    assert target.read_text() == "epoch\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # and its temporary file is gone


def test_leftovers_of_interrupted_writes_are_removed_once_the_lock_is_held(cfg_factory, tmp_path):
    run = tmp_path / "run"
    train(_pinned(cfg_factory, run, "trainer.epochs=2", "trainer.stop_after=1"))
    leftovers = [run / ".last.pt.k3j2x9.tmp", run / ".metrics.csv.a81bq0.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a file")
    (run / "notes.tmp").write_text("mine")  # not the atomic writes' pattern: kept
    with run_lock(run):  # another process trains here: its temporaries may be in use
        with pytest.raises(WcnormError, match="another process is training"):
            train(_pinned(cfg_factory, run, "trainer.epochs=2"))
        assert all(p.exists() for p in leftovers)
    assert train(_pinned(cfg_factory, run, "trainer.epochs=2"))["status"] == "finished"
    assert not any(p.exists() for p in leftovers) and (run / "notes.tmp").exists()


# ----------------------------------------------------------------------------- data first


def test_a_data_problem_leaves_no_run_directory(cfg_factory, tmp_path):
    npz = ["dataset=npz", "model=enorm_fc", "norm=bn"]
    with pytest.raises(DatasetUnavailable, match="absent.npz"):
        train(cfg_factory(*npz, f"dataset.path={tmp_path / 'absent.npz'}"))
    _npz(tmp_path / "small.npz", seed=0)  # 8x8 images, but the config says 32x32
    with pytest.raises(ConfigError, match="image_size"):
        train(cfg_factory(*npz, f"dataset.path={tmp_path / 'small.npz'}", "dataset.image_size=32"))
    assert not (tmp_path / "runs").exists()


def test_new_options_at_their_neutral_value_keep_existing_run_directories():
    # Recorded with wcnorm before model.width, dataset.val_split, trainer.checkpoint_every,
    # trainer.restart and the logger group existed: those runs must still resume.
    from conftest import compose_cfg

    # (bn_wc as it then was: its classifier skipped, the default until WC before BN was
    # found cancelled; today's bn_wc conditions the classifier, another run)
    old_bn_wc = ["model=resnet18", "norm=bn_wc", "norm.wc.include_classifier=false"]
    cfg = compose_cfg(old_bn_wc, smoke=False)
    assert run_dir_for(cfg).name == "seed0-937510ac"
    assert run_dir_for(compose_cfg(["model=resnet18", "norm=bn_wc"], smoke=False)).name != "seed0-937510ac"
    wider = compose_cfg([*old_bn_wc, "model.width=0.5"], smoke=False)
    assert run_dir_for(wider).name != "seed0-937510ac"
    # a bool option at its neutral value (norm.enorm.fused=false) is left out; true names another run
    enorm = compose_cfg(["model=enorm_fc", "norm=enorm"], smoke=False)
    fused = compose_cfg(["model=enorm_fc", "norm=enorm", "norm.enorm.fused=true"], smoke=False)
    assert "fused" not in outputs.config_identity(enorm)["norm"]["enorm"]
    assert run_dir_for(fused).name != run_dir_for(enorm).name


def test_restart_deletes_what_the_run_wrote_and_only_that(tmp_path):
    run = tmp_path / "run"
    (run / RENDERS / "epoch_001").mkdir(parents=True)
    (run / RENDERS / "epoch_001" / "r_0_pred.png").write_bytes(b"png")
    for name in (*RUN_FILES, "notes.txt"):
        (run / name).write_text("x")
    gone = discard_run(run)
    assert sorted(p.name for p in gone) == sorted((*RUN_FILES, RENDERS))
    # a field's renders and mesh go too: they would show the discarded run's result
    assert {MESH_FILE, MESH_PICTURE} <= set(RUN_FILES)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # what the user put there stays
