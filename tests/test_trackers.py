"""Experiment trackers, offline: what TensorBoard, W&B and MLflow receive, read back with
each tracker's own reader; resume continues the same tracker run; other ranks write
nothing; a missing package is named before any work.

Most tests drive the trackers from `FakeTrainer`, which calls the callbacks in the
order `Trainer.fit` does; one test runs the real trainer once it calls the trackers' hooks.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from wcnorm.training import assemble as assemble_module
from wcnorm.training import trackers
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
from wcnorm.training.trainer import Callback


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


# ----------------------------------------------------------------------------- a fake loop


STEPS_PER_EPOCH = 4


class Crash(Exception):
    pass


class Render(Callback):
    """A task that leaves one picture per epoch, its grey level 10 x epoch."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_epoch_end(self, trainer, epoch: int) -> dict:
        folder = epoch_folder(self.run_dir, "renders", epoch)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 8, 3), 10 * epoch, dtype=np.uint8)).save(folder / "view0.png")
        return {"psnr": 20.0 + epoch}


class FakeTrainer:
    """What trackers read of `Trainer`, with its hook order: on_fit_start; on_step_end
    after every step; the epoch's row (with every callback's columns) appended, then
    on_epoch_logged; on_fit_end when fit returns or raises. `checkpoint` is what a
    resumed trainer starts from."""

    def __init__(self, callbacks, *, epochs: int, checkpoint=(0, 0, ()), is_main: bool = True, lr: float = 0.1):
        self.callbacks, self.epochs, self.is_main = list(callbacks), epochs, is_main
        self.step, self.epoch, history = checkpoint
        self.history = list(history)
        self.optimizer = SimpleNamespace(param_groups=[{"lr": lr}])

    @property
    def finished(self) -> bool:
        return self.epoch >= self.epochs

    @property
    def checkpoint(self):
        return self.epoch * STEPS_PER_EPOCH, self.epoch, list(self.history)

    def fit(self, *, stop_after: int | None = None, crash_in: int | None = None):
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            for epoch in range(self.epoch + 1, self.epochs + 1):
                for _ in range(STEPS_PER_EPOCH):
                    self.step += 1
                    self.last_loss = torch.tensor(1.0 / self.step)
                    for cb in self.callbacks:
                        cb.on_step_end(self)
                if epoch == crash_in:
                    raise Crash  # after the epoch's steps, before its row and checkpoint
                row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": 1.0 / epoch, "test_acc": 10.0 * epoch,
                       "enorm_objective": 5.0 - epoch}
                for cb in self.callbacks:
                    row.update(cb.on_epoch_end(self, epoch))
                row["epoch_time_s"] = 0.5
                self.epoch = epoch
                self.history.append(row)
                self._hook("on_epoch_logged", row)
                if epoch == stop_after:
                    break
        finally:
            self._hook("on_fit_end")

    def _hook(self, name: str, *args) -> None:
        # The two hooks trackers add to Callback's (no-ops on the others).
        for cb in self.callbacks:
            if hasattr(cb, name):
                getattr(cb, name)(self, *args)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return tmp_path / "runs" / "synthetic" / "enorm_fc" / "bn" / "seed0-0123abcd"


def session(cfg, run_dir, *, epochs=3, checkpoint=(0, 0, ()), lr=0.1, **fit) -> FakeTrainer:
    trainer = FakeTrainer([Render(run_dir), *build_trackers(cfg, run_dir, is_main=True)],
                          epochs=epochs, checkpoint=checkpoint, lr=lr)
    try:
        trainer.fit(**fit)
    except Crash:
        pass
    return trainer


def next_wandb_second(run_dir: Path) -> None:
    """W&B names its local folders to the second: let the next process get its own."""
    stamps = [p.name.split("-")[-2] for p in (run_dir / "wandb").glob("*run-*-*")]
    while time.strftime("%Y%m%d_%H%M%S") in stamps:
        time.sleep(0.05)


def interrupted_then_resumed(cfg, run_dir, **first):
    """Epochs 1-2 (then a stop, or a crash in epoch 3), then a resumed process to epoch 3."""
    first_session = session(cfg, run_dir, **first)
    return session(cfg, run_dir, checkpoint=first_session.checkpoint)


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
    FakeTrainer(build_trackers(cfg, run_dir, is_main=False), epochs=2, is_main=False).fit()
    assert not run_dir.exists() and not (Path(cfg.out_dir) / "mlruns").exists()
    (callback,) = build_trackers(cfg, run_dir, is_main=True)
    assert isinstance(callback, TrackerCallback)
    assert [type(t).__name__ for t in callback.trackers] == ["TensorBoard", "WandB", "MLflow"]


# ----------------------------------------------------------------------------- TensorBoard


def tensorboard_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


@needs("tensorboard")
def test_tensorboard_receives_rows_steps_config_and_pictures(cfg_factory, run_dir):
    cfg = cfg_factory("logger=[tensorboard]", "logger.every_n_steps=2")
    session(cfg, run_dir, epochs=2)
    acc = tensorboard_events(run_dir)
    assert scalars(acc, "test_acc") == {4: 10.0, 8: 20.0}  # at the step each epoch ended
    for column in ("epoch", "lr", "train_loss", "enorm_objective", "psnr", "epoch_time_s"):
        assert set(scalars(acc, column)) == {4, 8}, column
    assert scalars(acc, "step/train_loss") == pytest.approx({s: 1.0 / s for s in (2, 4, 6, 8)})
    assert set(scalars(acc, "step/lr")) == {2, 4, 6, 8}
    pictures = {e.step: np.asarray(Image.open(io.BytesIO(e.encoded_image_string))) for e in acc.Images("renders/view0")}
    assert set(pictures) == {4, 8} and pictures[8].shape == (6, 8, 3) and (pictures[8] == 20).all()

    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    contents = acc.PluginTagToContent("hparams").values()
    starts = [HParamsPluginData.FromString(c).session_start_info for c in contents]
    logged = next(s.hparams for s in starts if s.hparams)
    assert logged["optim.lr"].number_value == pytest.approx(cfg.optim.lr)
    assert logged["model.name"].string_value == cfg.model.name


@needs("tensorboard")
def test_tensorboard_resume_continues_and_hides_what_a_crash_left(cfg_factory, run_dir):
    cfg = cfg_factory("logger=[tensorboard]", "logger.every_n_steps=1")
    first = session(cfg, run_dir, crash_in=3)  # steps 9-12 logged, epoch 3 never checkpointed
    assert first.checkpoint[:2] == (8, 2)
    session(cfg, run_dir, checkpoint=first.checkpoint)
    acc = tensorboard_events(run_dir)
    assert scalars(acc, "test_acc") == {4: 10.0, 8: 20.0, 12: 30.0}
    assert [e.step for e in acc.Scalars("step/train_loss")] == list(range(1, 13))  # each step once


@needs("tensorboard")
def test_a_tracker_chosen_when_resuming_gets_the_epochs_before(cfg_factory, run_dir):
    first = session(cfg_factory(), run_dir, stop_after=2)  # csv only
    assert not (run_dir / "tensorboard").exists()
    session(cfg_factory("logger=[tensorboard]"), run_dir, checkpoint=first.checkpoint)
    assert scalars(tensorboard_events(run_dir), "test_acc") == {4: 10.0, 8: 20.0, 12: 30.0}


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


@needs("wandb")
def test_wandb_offline_run_continues_when_resumed(cfg_factory, run_dir):
    cfg = cfg_factory("logger=[wandb]", "logger.every_n_steps=2")
    first = session(cfg, run_dir, stop_after=2)
    next_wandb_second(run_dir)
    assert session(cfg, run_dir, checkpoint=first.checkpoint).finished
    ids, history = wandb_history(run_dir)
    assert ids == [run_key(run_dir)] * 2
    assert {s: float(v) for s, v in history["test_acc"].items()} == {4: 10.0, 8: 20.0, 12: 30.0}
    assert sorted(history["step/train_loss"]) == [2, 4, 6, 8, 10, 12]
    assert float(history["enorm_objective"][12]) == 2.0 and float(history["psnr"][12]) == 23.0
    pictures = {step: json.loads(path) for step, path in history["renders/view0/path"].items()}
    assert sorted(pictures) == [4, 8, 12]
    for step, path in pictures.items():  # W&B's copy of each PNG, in the offline folder of its process
        (copy,) = (run_dir / "wandb").glob(f"offline-run-*/files/{path}")
        assert (np.asarray(Image.open(copy)) == 10 * step // STEPS_PER_EPOCH).all()


@needs("wandb")
def test_wandb_records_the_config(cfg_factory, run_dir):
    session(cfg_factory("logger=[wandb]", "optim.lr=0.0123"), run_dir, epochs=1)
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    (run,) = [r.run for r in wandb_records(next(folder.glob("*.wandb"))) if r.WhichOneof("record_type") == "run"]
    config = {item.key: item.value_json for item in run.config.update}
    assert '"lr":0.0123' in config["optim"].replace(" ", "")
    assert run.display_name == "synthetic/enorm_fc/bn/seed0-0123abcd" and run.project == "wcnorm"


# ----------------------------------------------------------------------------- MLflow


@needs("mlflow")
def test_mlflow_file_store_run_continues_when_resumed(cfg_factory, run_dir):
    from mlflow.tracking import MlflowClient

    cfg = cfg_factory("logger=[mlflow]", "logger.every_n_steps=4")
    interrupted_then_resumed(cfg, run_dir, stop_after=2)
    assert (Path(cfg.out_dir) / "mlruns").is_dir()
    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("wcnorm")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "synthetic/enorm_fc/bn/seed0-0123abcd"
    assert run.data.tags["wcnorm.run_key"] == run_key(run_dir)
    assert float(run.data.params["optim.lr"]) == cfg.optim.lr
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_acc")}
    assert history == {4: 10.0, 8: 20.0, 12: 30.0}
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "step/train_loss")]
    assert sorted(steps) == [4, 8, 12]
    pictures = [p.path for epoch in (1, 2, 3) for p in client.list_artifacts(run.info.run_id, f"renders/epoch_00{epoch}")]
    assert pictures == ["renders/epoch_001/view0.png", "renders/epoch_002/view0.png", "renders/epoch_003/view0.png"]


@needs("mlflow")
def test_mlflow_marks_a_stopped_run_killed(cfg_factory, run_dir):
    from mlflow.tracking import MlflowClient

    cfg = cfg_factory("logger=[mlflow]")
    session(cfg, run_dir, stop_after=1)
    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("wcnorm").experiment_id])
    assert run.info.status == "KILLED"


# ----------------------------------------------------------------------------- starting over


@needs("tensorboard")
@needs("wandb")
@needs("mlflow")
def test_a_run_started_over_is_a_new_tracker_run(cfg_factory, run_dir):
    from mlflow.tracking import MlflowClient

    cfg = cfg_factory("logger=[tensorboard,wandb,mlflow]")
    session(cfg, run_dir, epochs=2, lr=0.1)
    # trainer.restart: last.pt is deleted, the trackers' files are not; the new start is
    # interrupted and resumed.
    next_wandb_second(run_dir)
    first = session(cfg, run_dir, epochs=2, lr=0.2, stop_after=1)
    next_wandb_second(run_dir)
    session(cfg, run_dir, epochs=2, lr=0.2, checkpoint=first.checkpoint)
    assert scalars(tensorboard_events(run_dir), "lr") == pytest.approx({4: 0.2, 8: 0.2})  # the first start: hidden
    ids, _ = wandb_history(run_dir)
    assert ids == [run_key(run_dir), f"{run_key(run_dir)}-1", f"{run_key(run_dir)}-1"]
    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    newest, oldest = client.search_runs([client.get_experiment_by_name("wcnorm").experiment_id],
                                        order_by=["attributes.start_time DESC"])
    assert newest.data.tags["wcnorm.run_key"] == oldest.data.tags["wcnorm.run_key"] == run_key(run_dir)
    assert [(m.step, m.value) for m in client.get_metric_history(newest.info.run_id, "lr")] == [(4, 0.2), (8, 0.2)]
    assert newest.info.status == "FINISHED"


# ----------------------------------------------------------------------------- the real loop


@needs("tensorboard")
@pytest.mark.skipif(not hasattr(Callback, "on_epoch_logged"),
                    reason="Trainer.fit does not call on_epoch_logged / on_fit_end yet")
def test_the_real_trainer_feeds_tensorboard(cfg_factory, tmp_path):
    cfg = cfg_factory("model=enorm_fc", "dataset.train_size=64", "dataset.test_size=32", "trainer.epochs=2",
                      "logger=[tensorboard]", "logger.every_n_steps=1")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = assemble_module.assemble(cfg, torch.device("cpu"), run_dir=run_dir)
    if not any(isinstance(cb, TrackerCallback) for cb in run.trainer.callbacks):
        run.trainer.callbacks += build_trackers(cfg, run_dir, is_main=True)
    history = run.trainer.fit()
    acc = tensorboard_events(run_dir)
    steps = run.trainer.step
    assert scalars(acc, "test_acc") == pytest.approx({steps // 2: history[0]["test_acc"], steps: history[1]["test_acc"]})
    assert scalars(acc, "kappa_eff_max") == pytest.approx({steps // 2: history[0]["kappa_eff_max"], steps: history[1]["kappa_eff_max"]})
    assert sorted(scalars(acc, "step/lr")) == list(range(1, steps + 1))
    assert sorted(scalars(acc, "step/train_loss")) == list(range(1, steps + 1))


@needs("tensorboard")
@pytest.mark.skipif(not hasattr(assemble_module, "build_trackers"), reason="assemble does not build trackers yet")
def test_assemble_adds_the_trackers_on_the_main_process(cfg_factory, tmp_path):
    cfg = cfg_factory("model=enorm_fc", "dataset.train_size=64", "dataset.test_size=32", "logger=[tensorboard]")
    run = assemble_module.assemble(cfg, torch.device("cpu"), run_dir=tmp_path / "run")
    assert sum(isinstance(cb, TrackerCallback) for cb in run.callbacks) == 1
    assert isinstance(run.callbacks[-1], TrackerCallback)  # last: it logs the row the others filled
