"""The runner end to end, in process: outputs, resume, skip, divergence."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from wcnorm.errors import DivergedError
from wcnorm.methods import describe_weight_method
from wcnorm.methods.enorm import ENorm
from wcnorm.outputs import METRIC_COLUMNS, load_checkpoint, run_dir_for, run_identity
from wcnorm.training.assemble import assemble
from wcnorm.training.callbacks import ConditioningCallback, ENormCallback
from wcnorm.training.train import train
from wcnorm.training.trainer import Trainer

FAST = ["model=enorm_fc", "norm=bn", "dataset.train_size=96", "dataset.test_size=32"]


@pytest.mark.slow
def test_a_run_writes_the_output_contract(cfg_factory):
    cfg = cfg_factory(*FAST, "trainer.epochs=2")
    result = train(cfg)
    run = run_dir_for(cfg)
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.csv", "result.json", "last.pt", "conditioning.csv"}
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns[: len(METRIC_COLUMNS)]) == METRIC_COLUMNS
    assert metrics.epoch.tolist() == [1, 2]
    on_disk = json.loads((run / "result.json").read_text())
    for key in ("final_test_acc", "best_test_acc", "best_epoch", "best_note", "wall_time_s", "num_params",
                "torch_version", "cuda_version", "device_name", "git_commit", "config"):
        assert key in on_disk, key
    assert on_disk["final_test_acc"] == pytest.approx(metrics.test_acc.iloc[-1])
    assert on_disk["best_test_acc"] == metrics.test_acc.max()
    assert on_disk["config"]["model"]["name"] == "enorm_fc" and result["status"] == "finished"
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    # Both record whose run this is: the config (whose digest names the directory) and the data.
    identity = run_identity(cfg)
    assert on_disk["identity"] == load_checkpoint(run / "last.pt")["identity"] == identity
    assert run.name.endswith(identity["config_sha1"][:8]) and identity["data"] == {"builtin": "synthetic"}


def test_run_directories_are_readable_and_distinct(cfg_factory):
    a, b = cfg_factory(*FAST, "seed=1"), cfg_factory(*FAST, "seed=1", "optim.lr=0.05")
    pa, pb = run_dir_for(a), run_dir_for(b)
    assert pa != pb and pa.parent == pb.parent
    assert pa.parts[-4:-1] == ("synthetic", "enorm_fc-d1", "bn") and pa.name.startswith("seed1-")
    # Where and how visibly a run happens is not part of its identity.
    assert run_dir_for(cfg_factory(*FAST, "seed=1", "trainer.stop_after=1", "trainer.progress=true")) == pa


def _history(run):
    return pd.read_csv(run / "metrics.csv")[["train_loss", "train_acc", "test_loss", "test_acc"]]


@pytest.mark.parametrize("model", ["enorm_fc", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(cfg_factory, tmp_path, model):
    common = [f"model={model}", "dataset.train_size=64", "dataset.test_size=32", "dataset.augment=true",
              "trainer.epochs=2", "trainer.deterministic=true", "trainer.limit_batches=3"]
    whole = cfg_factory(*common, f"run_dir={tmp_path / 'whole'}")
    train(whole)
    part = cfg_factory(*common, f"run_dir={tmp_path / 'part'}", "trainer.stop_after=1")
    assert train(part)["status"] == "interrupted"
    assert not (tmp_path / "part" / "result.json").exists()
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    train(cfg_factory(*common, f"run_dir={tmp_path / 'part'}"))  # the same command, resumed
    pd.testing.assert_frame_equal(_history(tmp_path / "whole"), _history(tmp_path / "part"), rtol=1e-6)
    a = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_a_finished_run_is_not_retrained(cfg_factory, monkeypatch):
    cfg = cfg_factory(*FAST)
    first = train(cfg)
    import wcnorm.training.train as runner

    monkeypatch.setattr(runner, "_train", lambda *a: pytest.fail("retrained a finished run"))
    assert train(cfg)["final_test_acc"] == first["final_test_acc"]


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(cfg_factory, monkeypatch):
    cfg = cfg_factory(*FAST, "trainer.epochs=3")
    original = Trainer.train_step

    def nan_from_epoch_2(self, *batch):  # the loss turns NaN once epoch 1 is done
        loss, sums = original(self, *batch)
        if self.epoch >= 1:
            sums = sums.clone()
            sums[0] = float("nan")
        return loss, sums

    monkeypatch.setattr(Trainer, "train_step", nan_from_epoch_2)
    with pytest.raises(DivergedError, match=r"nan in epoch 2.*Last good checkpoint: .*last.pt.*\(epoch 1\)"):
        train(cfg)
    run = run_dir_for(cfg)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert len(pd.read_csv(run / "metrics.csv")) == 1
    # The divergence is a result, recorded: a rerun reports it again instead of training
    # anew (the loss would not turn NaN now: the patch is gone).
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "diverged" and "nan in epoch 2" in record["error"]
    monkeypatch.undo()
    with pytest.raises(DivergedError, match="recorded in .*result.json.*trainer.restart=true"):
        train(cfg)
    assert len(pd.read_csv(run / "metrics.csv")) == 1
    assert train(cfg_factory(*FAST, "trainer.epochs=3", "trainer.restart=true"))["status"] == "finished"


def test_weight_method_and_enorm_runs_record_what_ran(cfg_factory):
    wc = train(cfg_factory(*FAST, "norm=bn_wc"))
    assert wc["weight_method"]["method"] == "wc" and wc["conditioning"]["end"]
    en = train(cfg_factory(*FAST, "norm=enorm"))
    assert en["enorm"] and en["config"]["norm"]["enorm"]["enabled"]


def test_bf16_autocast_and_label_smoothing_run_on_cpu(cfg_factory):
    result = train(cfg_factory(*FAST, "trainer.amp=bf16", "trainer.label_smoothing=0.1", "optim=adamw",
                               "sched=cosine", "sched.warmup_epochs=0.5"))
    assert result["status"] == "finished" and result["final_train_loss"] > 0


@pytest.mark.slow
def test_compiled_training_matches_eager_with_wc_and_enorm(cfg_factory, tmp_path):
    """torch.compile works with WC's parametrizations and ENorm's in-place updates."""
    for norm in ("bn_wc", "enorm"):
        common = [*FAST, f"norm={norm}", "trainer.limit_batches=3", "trainer.deterministic=true"]
        eager = train(cfg_factory(*common, f"run_dir={tmp_path / norm / 'eager'}"))
        compiled = train(cfg_factory(*common, "trainer.compile=true", f"run_dir={tmp_path / norm / 'compiled'}"))
        assert compiled["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-3)
        assert compiled["final_test_loss"] == pytest.approx(eager["final_test_loss"], rel=1e-3)


@pytest.mark.slow  # builds two runs
def test_the_effective_weights_are_batched_in_eager_runs_and_traced_in_compiled_ones(cfg_factory):
    """Eager, a step computes every WC weight before the forward (effective_weights);
    compiled, the parametrizations stay lazy, inside the graph the compiler fuses."""
    for compile_ in (False, True):
        run = assemble(cfg_factory(*FAST, "norm=bn_wc", f"trainer.compile={str(compile_).lower()}"),
                       torch.device("cpu"))
        assert run.trainer.batch_weights is not compile_


@pytest.mark.slow  # trains several runs
def test_the_fast_path_switches_work_on_cpu_too(cfg_factory):
    """channels_last, device-resident data and the no-sync step loop (sync every step)."""
    result = train(cfg_factory("model=resnet18", "norm=bn_wc", "dataset.augment=true", "trainer.channels_last=true",
                               "trainer.data_on_device=true", "dataset.train_size=48", "dataset.test_size=16"))
    assert result["status"] == "finished" and result["images_per_s"] > 0


@pytest.mark.slow  # trains several runs
def test_hessian_diagnostic_and_grad_clip_reach_the_outputs(cfg_factory):
    cfg = cfg_factory(*FAST, "norm=bn_wc", "trainer.epochs=2", "trainer.grad_clip=1.0", "diagnostics.hessian=true",
                      "diagnostics.hessian_iters=5", "diagnostics.hessian_batch=16", "diagnostics.every=2")
    train(cfg)
    metrics = pd.read_csv(run_dir_for(cfg) / "metrics.csv")
    # snapshots at the `every` epochs and the last one only
    assert metrics.hessian_top_eig.notna().tolist() == [False, True]
    assert metrics.hessian_top_eig.iloc[-1] > 0


def test_assemble_builds_what_the_config_names(cfg_factory):
    cpu = torch.device("cpu")
    run = assemble(cfg_factory(*FAST, "norm=enorm", "norm.enorm.order=jacobi", "norm.enorm.every=3"), cpu)
    assert isinstance(run.enorm, ENorm) and run.enorm.options["order"] == "jacobi"
    assert [type(cb) for cb in run.trainer.callbacks] == [ENormCallback, ConditioningCallback]
    assert run.trainer.callbacks[0].every == 3 and run.trainer.callbacks[1] is run.conditioning
    assert run.trainer.model is run.model and run.trainer.train_loader is run.train_loader
    # the optimizer holds exactly the model's tensors, which ENorm rescales in place
    held = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in run.model.parameters()} and run.enorm.optimizer is run.optimizer
    wc = assemble(cfg_factory(*FAST, "norm=bn_wc", "diagnostics.conditioning=false", "optim.lr=0.05",
                              "trainer.limit_batches=null"), cpu)
    assert wc.enorm is None and wc.conditioning is None and wc.trainer.callbacks == []
    assert wc.weight_method == "wc" and describe_weight_method(wc.model)["method"] == "wc"
    assert wc.optimizer.param_groups[0]["lr"] == 0.05 and len(wc.train_loader) == 96 // 16


def test_assemble_is_a_function_of_the_config(cfg_factory):
    """Seeded inside: two assemblies of one config start from the same weights."""
    cfg = cfg_factory(*FAST, "seed=3")
    a, b = (assemble(cfg, torch.device("cpu")).model.state_dict() for _ in range(2))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    other = assemble(cfg_factory(*FAST, "seed=4"), torch.device("cpu")).model.state_dict()
    assert not all(torch.equal(a[k], other[k]) for k in a)


@pytest.mark.slow  # trains several runs
def test_a_validation_split_is_scored_beside_the_test_set(cfg_factory):
    result = train(cfg_factory(*FAST, "dataset.val_split=0.25"))
    rows = pd.read_csv(Path(result["run_dir"]) / "metrics.csv")
    assert {"val_loss", "val_acc", "test_loss", "test_acc"} <= set(rows.columns)
    assert 0 <= result["final_val_acc"] <= 100 and "final_test_acc" in result
    without = train(cfg_factory(*FAST))
    assert "final_val_acc" not in without
    assert "val_acc" not in pd.read_csv(Path(without["run_dir"]) / "metrics.csv").columns
