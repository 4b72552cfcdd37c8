"""Experiment trackers, offline: what TensorBoard, W&B and MLflow receive, read back with
each tracker's own reader; resume continues the same tracker run; other ranks write
nothing; a missing package is named before any work.

The trackers are fed by the real training loop (`assemble` and `Trainer`) on a tiny
model, and what each received is compared with the run's own metrics.csv rows.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wcnorm.training import trackers
from wcnorm.training.assemble import assemble
from wcnorm.training.trackers import (
    INSTALL,
    TrackerCallback,
    build_trackers,
    check_trackers,
    chosen_trackers,
    epoch_folder,
    epoch_images,
    hyperparameters,
    run_key,
)
from wcnorm.training.trainer import Callback, Trainer


def needs(package: str):
    return pytest.mark.skipif(find_spec(package) is None,
                              reason=f"{package} is not installed ({INSTALL})")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """W&B offline and quiet, its own folders in the test's; MLflow's file-store opt-in
    left to the code under test (and removed afterwards)."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                       "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true"}.items():
        monkeypatch.setenv(key, value)
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home" / key.lower()))
    had_opt_in = "MLFLOW_ALLOW_FILE_STORE" in os.environ
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    yield
    if not had_opt_in:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


# ----------------------------------------------------------------------------- the real loop, tiny


# Each session is the real `Trainer` (built by `assemble`, with the trackers it adds) on
# the ENorm paper's fully connected net and 8 x 8 synthetic images: 2 steps an epoch
# (`trainer.limit_batches=2`), a constant learning rate. A resumed session is a new
# Trainer that finds the run directory's last.pt, as a new process would.
STEPS_PER_EPOCH = 2
TINY = ["model=enorm_fc", "dataset.image_size=8", "dataset.train_size=32", "dataset.test_size=16",
        "sched=constant", f"trainer.limit_batches={STEPS_PER_EPOCH}"]


class Crash(Exception):
    pass


class Render(Callback):
    """A task's pictures and columns: one picture per epoch, its grey level 10 x epoch,
    and a `psnr` column of 20 + epoch; it can crash an epoch after its steps, before the
    epoch's row and checkpoint; it records every step's loss."""

    def __init__(self, run_dir: Path, crash_in: int | None = None):
        self.run_dir, self.crash_in, self.losses = run_dir, crash_in, {}

    def on_step_end(self, trainer) -> None:
        self.losses[trainer.step] = float(trainer.last_loss)

    def on_epoch_end(self, trainer, epoch: int) -> dict:
        if epoch == self.crash_in:
            raise Crash
        folder = epoch_folder(self.run_dir, "renders", epoch)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 8, 3), 10 * epoch, dtype=np.uint8)).save(folder / "view0.png")
        return {"psnr": 20.0 + epoch}


@pytest.fixture
def tiny(cfg_factory):
    """cfg_factory for the tiny runs: `tiny(epochs, *overrides)`."""
    return lambda epochs, *overrides: cfg_factory(*TINY, f"trainer.epochs={epochs}", *overrides)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return tmp_path / "runs" / "synthetic" / "enorm_fc" / "bn" / "seed0-0123abcd"


def session(cfg, run_dir: Path, *, crash_in: int | None = None) -> Trainer:
    """One process's share of a run: fit until done, `trainer.stop_after`, or a crash."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run = assemble(cfg, torch.device("cpu"), run_dir=run_dir)
    render = Render(run_dir, crash_in)
    run.trainer.callbacks.insert(0, render)
    try:
        run.trainer.fit()
    except Crash:
        pass
    run.trainer.losses = render.losses
    return run.trainer


def at_epoch_ends(history: list[dict], column: str) -> dict[int, float]:
    """{step an epoch ended at: that epoch's value of `column`}"""
    return {int(row["epoch"]) * STEPS_PER_EPOCH: row[column] for row in history}


def next_wandb_second(run_dir: Path) -> None:
    """W&B names its local folders to the second: let the next process get its own."""
    stamps = [p.name.split("-")[-2] for p in (run_dir / "wandb").glob("*run-*-*")]
    while time.strftime("%Y%m%d_%H%M%S") in stamps:
        time.sleep(0.05)


def stopped_then_resumed(tiny, run_dir, *overrides: str, epochs: int = 3, stop_after: int = 2) -> Trainer:
    """Epochs 1 to `stop_after` (`trainer.stop_after`), then a new process to the end."""
    session(tiny(epochs, *overrides, f"trainer.stop_after={stop_after}"), run_dir)
    next_wandb_second(run_dir)
    return session(tiny(epochs, *overrides), run_dir)


# ----------------------------------------------------------------------------- config


def test_the_logger_group_composes_several_trackers(cfg_factory):
    assert chosen_trackers(cfg_factory()) == []  # csv, the default: no tracker
    assert chosen_trackers(cfg_factory("logger=[tensorboard,wandb]")) == ["tensorboard", "wandb"]
    both = cfg_factory("+logger=mlflow")
    assert chosen_trackers(both) == ["mlflow"] and "csv" in both.logger
    cfg = cfg_factory("logger=[wandb,mlflow]", "logger.every_n_steps=7", "experiment=wc_fc")
    assert cfg.logger.every_n_steps == 7
    assert cfg.logger.wandb.mode == "offline" and cfg.logger.wandb.group == "wc_fc"
    assert cfg.logger.mlflow.tracking_uri == f"file:{cfg.out_dir}/mlruns"


def test_a_missing_tracker_package_is_named_with_its_install_command(cfg_factory, monkeypatch):
    cfg = cfg_factory("logger=[tensorboard,wandb,mlflow]")
    monkeypatch.setattr(trackers, "find_spec", lambda name: None)
    problems = check_trackers(cfg)
    assert len(problems) == 3
    for name, problem in zip(("tensorboard", "wandb", "mlflow"), problems):
        assert f"logger={name}" in problem and INSTALL in problem and f"pip install {name}" in problem
    assert check_trackers(cfg, this_machine=False) == []  # a job run elsewhere has its own packages
    assert check_trackers(cfg_factory()) == []  # csv needs nothing


def test_bad_logger_settings_are_reported(cfg_factory):
    problems = check_trackers(cfg_factory("logger=[wandb]", "logger.every_n_steps=0", "logger.wandb.mode=cloud"))
    assert any("logger.every_n_steps=0" in p for p in problems)
    assert any("logger.wandb.mode='cloud'" in p for p in problems)


def test_an_unknown_tracker_option_is_refused_with_the_valid_ones(cfg_factory):
    problems = check_trackers(cfg_factory("+logger.tensorboard.bogus=1"), this_machine=False)
    assert problems == ["logger.tensorboard: unknown option(s) ['bogus']; valid: flush_secs"]
    assert check_trackers(cfg_factory("logger=[tensorboard,wandb,mlflow]"), this_machine=False) == []


def test_an_unwritable_mlflow_store_is_refused_before_the_run(cfg_factory, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")  # a store below a file: no one can write it
    below_a_file = check_trackers(cfg_factory("logger=[mlflow]", f"logger.mlflow.tracking_uri=file:{tmp_path}/a_file/mlruns"))
    assert any(f"'{tmp_path / 'a_file'}' cannot be written" in p for p in below_a_file)
    assert not any("cannot be written" in p for p in check_trackers(
        cfg_factory("logger=[mlflow]", f"logger.mlflow.tracking_uri=file:{tmp_path}/new/mlruns")))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root writes anywhere: then only the case above applies
        problems = check_trackers(cfg_factory("logger=[mlflow]", f"logger.mlflow.tracking_uri=file:{locked}/mlruns"))
        assert any(f"'{locked}' cannot be written" in p for p in problems)
    locked.chmod(0o700)


def test_online_wandb_without_a_key_is_refused_before_the_run(cfg_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no login on record
    online = cfg_factory("logger=[wandb]", "logger.wandb.mode=online")
    assert any("needs a W&B API key" in p for p in check_trackers(online))
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password k3y\n")
    (tmp_path / "netrc").chmod(0o600)
    assert not any("API key" in p for p in check_trackers(online))
    assert not any("API key" in p for p in check_trackers(cfg_factory("logger=[wandb]")))  # offline


def test_the_tracker_run_id_follows_the_run_directory(tmp_path):
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    assert run_key(a) == run_key(tmp_path / "runs" / ".." / "runs" / "a") != run_key(b)
    assert len(run_key(a)) == 16 and run_key(a).isalnum()


def test_hyperparameters_are_flat_scalars():
    flat = hyperparameters({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "run_dir": None, "norm": {"wc": {"p": 3}}})
    assert flat == {"optim.lr": 0.1, "optim.betas": "[0.9, 0.99]", "run_dir": "null", "norm.wc.p": 3}


def test_pictures_are_found_by_epoch(tmp_path):
    for kind, name, epoch in [("renders", "r_0_pred", 1), ("renders", "r_0_pred", 2), ("renders", "r_0_gt", 2),
                              ("depth", "r_0", 2)]:
        folder = epoch_folder(tmp_path, kind, epoch)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.png").write_bytes(b"png")
    (tmp_path / "renders" / "test").mkdir()
    (tmp_path / "renders" / "test" / "r_0_pred.png").write_bytes(b"png")  # after the run: no epoch's
    assert epoch_images(tmp_path, 2) == {"depth/r_0": tmp_path / "depth/epoch_002/r_0.png",
                                         "renders/r_0_gt": tmp_path / "renders/epoch_002/r_0_gt.png",
                                         "renders/r_0_pred": tmp_path / "renders/epoch_002/r_0_pred.png"}
    assert epoch_images(tmp_path, 3) == {}


def test_only_the_main_process_logs(cfg_factory, run_dir):
    cfg = cfg_factory("logger=[tensorboard,wandb,mlflow]")
    assert build_trackers(cfg, run_dir, is_main=False) == []
    assert build_trackers(cfg, None, is_main=True) == []  # no run directory, nowhere to log
    assert build_trackers(cfg_factory(), run_dir, is_main=True) == []  # csv only
    (callback,) = build_trackers(cfg, run_dir, is_main=True)
    assert isinstance(callback, TrackerCallback)
    assert [type(t).__name__ for t in callback.trackers] == ["TensorBoard", "WandB", "MLflow"]


@needs("tensorboard")
def test_assemble_adds_the_trackers_last_on_the_main_process(tiny, tmp_path):
    run = assemble(tiny(1, "logger=[tensorboard]"), torch.device("cpu"), run_dir=tmp_path / "run")
    assert sum(isinstance(cb, TrackerCallback) for cb in run.trainer.callbacks) == 1
    assert isinstance(run.trainer.callbacks[-1], TrackerCallback)  # last: it logs the row the others filled
    assert not any(isinstance(cb, TrackerCallback) for cb in assemble(tiny(1), torch.device("cpu")).trainer.callbacks)


# ----------------------------------------------------------------------------- TensorBoard


def tensorboard_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


@needs("tensorboard")
def test_tensorboard_receives_rows_steps_config_and_pictures(tiny, run_dir):
    cfg = tiny(2, "logger=[tensorboard]", "logger.every_n_steps=2", "optim.lr=0.05")
    trainer = session(cfg, run_dir)
    acc = tensorboard_events(run_dir)
    assert trainer.finished and trainer.step == 4
    row = trainer.history[-1]
    assert {"test_acc", "train_loss", "kappa_eff_max", "psnr", "epoch_time_s"} <= set(row)
    for column in row:  # every column of metrics.csv, the methods' and the task's included
        assert scalars(acc, column) == pytest.approx(at_epoch_ends(trainer.history, column)), column
    assert scalars(acc, "step/train_loss") == pytest.approx({s: trainer.losses[s] for s in (2, 4)})
    assert scalars(acc, "step/lr") == pytest.approx({2: 0.05, 4: 0.05})
    pictures = {e.step: np.asarray(Image.open(io.BytesIO(e.encoded_image_string))) for e in acc.Images("renders/view0")}
    assert set(pictures) == {2, 4} and pictures[4].shape == (6, 8, 3) and (pictures[4] == 20).all()

    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    contents = acc.PluginTagToContent("hparams").values()
    starts = [HParamsPluginData.FromString(c).session_start_info for c in contents]
    logged = next(s.hparams for s in starts if s.hparams)
    assert logged["optim.lr"].number_value == pytest.approx(0.05)
    assert logged["model.name"].string_value == "enorm_fc"


@pytest.mark.slow
@needs("tensorboard")
def test_tensorboard_resume_continues_and_hides_what_a_crash_left(tiny, run_dir):
    cfg = tiny(3, "logger=[tensorboard]", "logger.every_n_steps=1")
    first = session(cfg, run_dir, crash_in=3)  # steps 5-6 logged, epoch 3 never checkpointed
    assert first.step == 6 and len(first.history) == 2 and sorted(first.losses) == list(range(1, 7))
    second = session(cfg, run_dir)
    assert second.finished and len(second.history) == 3
    acc = tensorboard_events(run_dir)
    assert scalars(acc, "test_acc") == pytest.approx(at_epoch_ends(second.history, "test_acc"))
    assert sorted(at_epoch_ends(second.history, "test_acc")) == [2, 4, 6]
    losses = scalars(acc, "step/train_loss")
    assert sorted(losses) == list(range(1, 7))  # each step once: the crashed steps 5-6 hidden
    assert losses == pytest.approx({**first.losses, **second.losses})  # 5-6: the resumed process's
    assert sorted(second.losses) == [5, 6]


@pytest.mark.slow
@needs("tensorboard")
def test_a_tracker_chosen_when_resuming_gets_the_epochs_before(tiny, run_dir):
    session(tiny(3, "trainer.stop_after=2"), run_dir)  # csv only
    assert not (run_dir / "tensorboard").exists()
    trainer = session(tiny(3, "logger=[tensorboard]"), run_dir)
    assert scalars(tensorboard_events(run_dir), "test_acc") == pytest.approx(at_epoch_ends(trainer.history, "test_acc"))
    assert len(trainer.history) == 3


# ----------------------------------------------------------------------------- W&B


def wandb_records(path: Path):
    """The protobuf records of a `.wandb` file: a 7-byte header, then LevelDB's log
    format (32 KiB blocks of chunks: crc32, length, type; full=1, first=2, middle=3, last=4)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(run_dir: Path):
    """(run ids, {key: {step: value}}) over the run's offline folders, oldest first."""
    ids, history = [], {}
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        for record in wandb_records(next(folder.glob("*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.append(record.run.run_id)
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                for key, value in items.items():
                    history.setdefault(key, {})[int(items["_step"])] = value
    return ids, history


@pytest.mark.slow
@needs("wandb")
def test_wandb_offline_run_continues_when_resumed(tiny, run_dir):
    trainer = stopped_then_resumed(tiny, run_dir, "logger=[wandb]", "logger.every_n_steps=2")
    assert trainer.finished
    ids, history = wandb_history(run_dir)
    assert ids == [run_key(run_dir)] * 2
    test_acc = {s: float(v) for s, v in history["test_acc"].items()}
    assert test_acc == pytest.approx(at_epoch_ends(trainer.history, "test_acc")) and sorted(test_acc) == [2, 4, 6]
    assert sorted(history["step/train_loss"]) == [2, 4, 6]
    assert float(history["psnr"][6]) == 23.0
    assert float(history["kappa_eff_max"][6]) == pytest.approx(trainer.history[-1]["kappa_eff_max"])
    pictures = {step: json.loads(path) for step, path in history["renders/view0/path"].items()}
    assert sorted(pictures) == [2, 4, 6]
    for step, path in pictures.items():  # W&B's copy of each PNG, in the offline folder of its process
        (copy,) = (run_dir / "wandb").glob(f"offline-run-*/files/{path}")
        assert (np.asarray(Image.open(copy)) == 10 * step // STEPS_PER_EPOCH).all()


@pytest.mark.slow
@needs("wandb")
def test_wandb_records_the_config(tiny, run_dir):
    session(tiny(1, "logger=[wandb]", "optim.lr=0.0123"), run_dir)
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    (run,) = [r.run for r in wandb_records(next(folder.glob("*.wandb"))) if r.WhichOneof("record_type") == "run"]
    config = {item.key: item.value_json for item in run.config.update}
    assert '"lr":0.0123' in config["optim"].replace(" ", "")
    assert run.display_name == "synthetic/enorm_fc/bn/seed0-0123abcd" and run.project == "wcnorm"


# ----------------------------------------------------------------------------- MLflow


@pytest.mark.slow
@needs("mlflow")
def test_mlflow_file_store_run_continues_when_resumed(tiny, run_dir):
    from mlflow.tracking import MlflowClient

    logger = ["logger=[mlflow]", "logger.every_n_steps=2"]
    trainer = stopped_then_resumed(tiny, run_dir, *logger)
    cfg = tiny(3, *logger)
    assert (Path(cfg.out_dir) / "mlruns").is_dir()
    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("wcnorm")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "synthetic/enorm_fc/bn/seed0-0123abcd"
    assert run.data.tags["wcnorm.run_key"] == run_key(run_dir)
    assert float(run.data.params["optim.lr"]) == cfg.optim.lr
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_acc")}
    assert history == pytest.approx(at_epoch_ends(trainer.history, "test_acc")) and sorted(history) == [2, 4, 6]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "step/train_loss")]
    assert sorted(steps) == [2, 4, 6]
    pictures = [p.path for epoch in (1, 2, 3) for p in client.list_artifacts(run.info.run_id, f"renders/epoch_00{epoch}")]
    assert pictures == ["renders/epoch_001/view0.png", "renders/epoch_002/view0.png", "renders/epoch_003/view0.png"]


@pytest.mark.slow
@needs("mlflow")
def test_mlflow_marks_a_stopped_run_killed(tiny, run_dir):
    from mlflow.tracking import MlflowClient

    cfg = tiny(3, "logger=[mlflow]", "trainer.stop_after=1")
    assert not session(cfg, run_dir).finished
    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("wcnorm").experiment_id])
    assert run.info.status == "KILLED"


# ----------------------------------------------------------------------------- starting over


@pytest.mark.slow
@needs("tensorboard")
@needs("wandb")
@needs("mlflow")
def test_a_run_started_over_is_a_new_tracker_run(tiny, run_dir):
    from mlflow.tracking import MlflowClient

    logger = "logger=[tensorboard,wandb,mlflow]"
    session(tiny(2, logger, "optim.lr=0.1"), run_dir)
    # trainer.restart: last.pt is deleted, the trackers' files are not; the new start is
    # stopped and resumed.
    (run_dir / "last.pt").unlink()
    next_wandb_second(run_dir)
    stopped_then_resumed(tiny, run_dir, logger, "optim.lr=0.2", epochs=2, stop_after=1)
    assert scalars(tensorboard_events(run_dir), "lr") == pytest.approx({2: 0.2, 4: 0.2})  # the first start: hidden
    ids, _ = wandb_history(run_dir)
    assert ids == [run_key(run_dir), f"{run_key(run_dir)}-1", f"{run_key(run_dir)}-1"]
    client = MlflowClient(tiny(2, logger).logger.mlflow.tracking_uri)
    newest, oldest = client.search_runs([client.get_experiment_by_name("wcnorm").experiment_id],
                                        order_by=["attributes.start_time DESC"])
    assert newest.data.tags["wcnorm.run_key"] == oldest.data.tags["wcnorm.run_key"] == run_key(run_dir)
    assert [(m.step, m.value) for m in client.get_metric_history(newest.info.run_id, "lr")] == [(2, 0.2), (4, 0.2)]
    assert newest.info.status == "FINISHED"
