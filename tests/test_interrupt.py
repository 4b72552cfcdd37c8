"""Interruptions inside an epoch: SIGTERM / Ctrl-C and `trainer.checkpoint_every` save
the step they reached, and the same command resumes there to the uninterrupted result."""

from __future__ import annotations

import os
import signal

import pandas as pd
import pytest
import torch

from wcnorm.cli import main as cli_main
from wcnorm.errors import Interrupted
from wcnorm.outputs import load_checkpoint, run_dir_for
from wcnorm.training.train import train
from wcnorm.training.trainer import Trainer

# Three epochs of five batches, deterministic on CPU, with augmentation and dropout-free BN.
COMMON = ["model=enorm_fc", "norm=bn", "dataset.train_size=80", "dataset.test_size=32",
          "dataset.augment=true", "trainer.epochs=3", "trainer.deterministic=true",
          "trainer.limit_batches=null"]


def _metrics(run_dir):
    return pd.read_csv(run_dir / "metrics.csv")[["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc"]]


def _same_result(whole, part):
    pd.testing.assert_frame_equal(_metrics(whole), _metrics(part), rtol=1e-6)
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(part / "last.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    assert a["step"] == b["step"]


def _signal_at_step(monkeypatch, step: int, signum: int) -> None:
    original = Trainer.train_step

    def step_then_signal(self, *batch):
        out = original(self, *batch)
        if self.step == step:
            os.kill(os.getpid(), signum)  # as SLURM or a terminal would: to the process
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_and_the_rerun_resumes_to_the_same_result(
        cfg_factory, tmp_path, monkeypatch, signum):
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(cfg_factory(*COMMON, f"run_dir={whole}"))
    with monkeypatch.context() as m:
        _signal_at_step(m, 7, signum)  # epoch 2, after its second batch
        with pytest.raises(Interrupted, match=rf"{signal.Signals(signum).name} in epoch 2 after batch 2 "
                                              r"\(step 7\).*Run the same command again"):
            train(cfg_factory(*COMMON, f"run_dir={part}"))
    state = load_checkpoint(part / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 7)
    assert state["in_progress"]["epoch"] == 2 and state["in_progress"]["batch"] == 2
    assert len(pd.read_csv(part / "metrics.csv")) == 1  # only finished epochs are rows
    assert signal.getsignal(signal.SIGTERM) is not None  # the loop's handlers were removed again
    train(cfg_factory(*COMMON, f"run_dir={part}"))  # the same command
    _same_result(whole, part)
    assert load_checkpoint(part / "last.pt")["in_progress"] is None


def test_checkpoint_every_bounds_the_work_a_crash_loses(cfg_factory, tmp_path, monkeypatch):
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(cfg_factory(*COMMON, f"run_dir={whole}"))
    original = Trainer.train_step

    def crash_at_step_9(self, *batch):
        if self.step == 8:  # 9th step: epoch 2, batch 4; the last checkpoint was at step 8
            raise RuntimeError("the machine went away")
        return original(self, *batch)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", crash_at_step_9)
        with pytest.raises(RuntimeError, match="went away"):
            train(cfg_factory(*COMMON, f"run_dir={part}", "trainer.checkpoint_every=4"))
    state = load_checkpoint(part / "last.pt")
    assert state["step"] == 8 and state["in_progress"] == {**state["in_progress"], "epoch": 2, "batch": 3}
    train(cfg_factory(*COMMON, f"run_dir={part}", "trainer.checkpoint_every=4"))
    _same_result(whole, part)


def test_checkpoint_every_does_not_change_the_run(cfg_factory):
    a = cfg_factory(*COMMON)
    b = cfg_factory(*COMMON, "trainer.checkpoint_every=2")
    assert run_dir_for(a) == run_dir_for(b)  # a volatile key: the same run directory


def test_the_cli_says_how_to_resume(tmp_path, monkeypatch, capsys):
    _signal_at_step(monkeypatch, 2, signal.SIGTERM)
    args = [*COMMON, "trainer.device=cpu", "trainer.batch_size=16", "trainer.progress=false",
            "dataset=synthetic", f"run_dir={tmp_path / 'run'}"]
    with pytest.raises(SystemExit) as stopped:
        cli_main(["train", *args])
    said = "".join(capsys.readouterr())
    assert stopped.value.code != 0 and "SIGTERM" in said and "Run the same command again" in said
    assert "Traceback" not in said
