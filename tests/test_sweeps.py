"""Sweeps through Hydra launchers: run, skip what is finished, rerun only what is missing;
the cluster launcher configs; a clear message when a launcher's plugin is absent."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from wcnorm import cli

WCNORM = shutil.which("wcnorm") or str(Path(sys.executable).parent / "wcnorm")
SMOKE = ["dataset=synthetic", "model=enorm_fc", "dataset.image_size=8", "dataset.train_size=64",
         "dataset.test_size=16", "trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=16",
         "diagnostics.conditioning=false", "out_dir=out"]


def wcnorm(*args, cwd) -> str:
    proc = subprocess.run([WCNORM, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": str(Path(WCNORM).parent) + ":/usr/bin:/bin", "CI": "1", "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"wcnorm {' '.join(args)} failed ({proc.returncode}):\n{out}"
    return out


def _results(root: Path) -> dict[str, int]:
    """seedN -> mtime of its result.json"""
    return {p.parent.name.split("-")[0]: p.stat().st_mtime_ns for p in root.rglob("result.json")}


def test_a_parallel_sweep_runs_skips_and_reruns_only_what_is_missing(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = ["train", "-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", *SMOKE, "seed=0,1"]
    wcnorm(*sweep, cwd=tmp_path)
    first = _results(tmp_path / "out")
    assert set(first) == {"seed0", "seed1"}

    log = wcnorm(*sweep, cwd=tmp_path)  # the same sweep again: both runs are finished
    assert log.count("already finished") == 2
    assert _results(tmp_path / "out") == first  # untouched

    [seed1] = (tmp_path / "out").rglob("seed1-*/result.json")
    seed1.unlink()
    log = wcnorm(*sweep, cwd=tmp_path)
    again = _results(tmp_path / "out")
    [skipped] = [line for line in log.splitlines() if "already finished" in line]
    assert "/seed0-" in skipped
    assert again["seed0"] == first["seed0"] and again["seed1"] > first["seed1"]


def test_a_submitit_job_with_two_tasks_trains_one_run_with_ddp(tmp_path):
    """What `hydra/launcher=slurm hydra.launcher.tasks_per_node=2` does on a cluster, on this machine."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    wcnorm("train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
           "hydra.launcher.timeout_min=5", *SMOKE, "trainer.epochs=2", "norm=wc", cwd=tmp_path)
    [result] = (tmp_path / "out").rglob("result.json")
    logs = sorted((tmp_path / "out" / ".sweeps").rglob("*_log.out"))
    assert len(logs) == 2  # one per task, next to the sweep's files
    rank0, rank1 = (p.read_text() for p in logs)
    assert "global_rank=0(2)" in rank0 and "global_rank=1(2)" in rank1
    assert "epoch 2/2" in rank0 and "epoch" not in rank1.replace("Starting with", "")  # rank 0 reports


def _hydra_cfg(*overrides: str):
    with initialize_config_module(config_module="wcnorm.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True).hydra


def test_the_slurm_launcher_extends_submitit_and_requeues():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    h = _hydra_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=proj",
                   "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4",
                   "+hydra.launcher.additional_parameters.mail-type=END")
    launcher = h.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.account, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", "proj", 4, 4)
    assert launcher.max_num_timeout > 0  # timeouts and preemptions requeue; the run resumes from last.pt
    assert launcher.additional_parameters == {"mail-type": "END"}
    for key in ("cpus_per_task", "mem_gb", "timeout_min", "signal_delay_s", "setup", "qos", "constraint"):
        assert key in launcher
    assert launcher.submitit_folder.startswith(h.sweep.dir + "/")  # logs next to the sweep


def test_the_local_parallel_launcher_is_joblib():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    h = _hydra_cfg("hydra/launcher=local_parallel", "hydra.launcher.n_jobs=8")
    assert h.launcher._target_.endswith("JoblibLauncher") and h.launcher.n_jobs == 8
    assert h.runtime.choices["hydra/launcher"] == "local_parallel"  # what turns on one GPU per job


@pytest.mark.parametrize("launcher, package", [("slurm", "hydra-submitit-launcher"),
                                                ("submitit_local", "hydra-submitit-launcher"),
                                                ("local_parallel", "hydra-joblib-launcher")])
def test_a_launcher_without_its_plugin_says_what_to_install(monkeypatch, capsys, tmp_path, launcher, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.") else real(name, *a))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "-m", f"hydra/launcher={launcher}", "seed=0,1"]) == 2
    err = capsys.readouterr().err
    assert f"hydra/launcher={launcher}" in err and "pip install 'wcnorm[cluster]'" in err and f"pip install {package}" in err
    assert not list(tmp_path.iterdir())  # stopped before Hydra did anything


def test_launchers_that_need_no_plugin_pass_the_check():
    assert cli.missing_launcher_plugin(["hydra/launcher=basic", "seed=0,1"]) is None
    assert cli.missing_launcher_plugin(["model=resnet18"]) is None
