"""Sweeps through Hydra launchers: run, skip what is finished, rerun only what is missing;
the cluster launcher configs; a clear message when a launcher's plugin is absent."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WCNORM, wcnorm
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from wcnorm import cli
from wcnorm.training.sweep import invalid_jobs, job_overrides

SMOKE = ["dataset=synthetic", "model=enorm_fc", "dataset.image_size=8", "dataset.train_size=64",
         "dataset.test_size=16", "trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=16",
         "diagnostics.conditioning=false", "out_dir=out"]


def _results(root: Path) -> dict[str, int]:
    """seedN -> mtime of its result.json"""
    return {p.parent.name.split("-")[0]: p.stat().st_mtime_ns for p in root.rglob("result.json")}


@pytest.mark.slow
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


@pytest.mark.slow
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


# ----------------------------------------------------------------------------- a bad job in a sweep


def _npz_files(folder: Path) -> None:
    """good.npz (8 px images) and garbage.npz (not an archive: fails when the job loads it)."""
    rng = np.random.default_rng(0)
    np.savez(folder / "good.npz", x_train=rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), y_train=np.arange(64) % 4,
             x_test=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), y_test=np.arange(16) % 4)
    (folder / "garbage.npz").write_bytes(b"not an archive")


# Four jobs: #0 invalid (epochs=0), #1 fails at run time (garbage data), #2 invalid, #3 trains.
# The bad ones come first: before, the first one's sys.exit ended the sweep there.
BAD_SWEEP = ["dataset=npz", "model=enorm_fc", "dataset.image_size=8", "trainer.device=cpu", "trainer.batch_size=16",
             "diagnostics.conditioning=false", "out_dir=out", "dataset.path=garbage.npz,good.npz", "trainer.epochs=0,1"]


def _check_bad_sweep(log: str, root: Path) -> None:
    [result] = root.rglob("result.json")  # the good job trained, after three bad ones
    assert "good.npz" in (result.parent / "config.yaml").read_text()
    # every invalid job listed before any job started, with its own overrides
    precheck, _, rest = log.partition("2 of 4 jobs of this sweep are invalid")
    assert rest and "Launching" not in precheck and rest.index("Launching") > rest.index("#2")
    assert "#0 dataset.path=garbage.npz trainer.epochs=0:" in rest and "#2 dataset.path=good.npz trainer.epochs=0:" in rest
    # the summary at the end: which failed, why, where their logs are
    summary = log[log.index("3 of 4 jobs failed"):]
    [sweep_dir] = (root / ".sweeps").iterdir()
    for num, job, why in [(0, "garbage.npz trainer.epochs=0", "trainer.epochs=0: must be a positive integer"),
                          (1, "garbage.npz trainer.epochs=1", "'garbage.npz': not an .npz archive"),
                          (2, "good.npz trainer.epochs=0", "trainer.epochs=0: must be a positive integer")]:
        entry = summary.split(f"  #{num} dataset.path={job}:\n")[1].split("log:")[0]
        assert why in entry, summary
        assert f"log: {(sweep_dir / str(num) / 'job.log').resolve()}" in summary
        assert why in (sweep_dir / str(num) / "job.log").read_text()
        assert json.loads((sweep_dir / str(num) / "job.json").read_text())["status"] == "failed"
    assert "#3" not in summary
    assert json.loads((sweep_dir / "3" / "job.json").read_text())["status"] == "finished"
    assert "epoch 1/1" in (sweep_dir / "3" / "job.log").read_text()
    assert "Traceback" not in log


@pytest.mark.slow
def test_a_bad_job_does_not_stop_a_sweep_and_is_reported(tmp_path):
    _npz_files(tmp_path)
    log = wcnorm("train", "-m", *BAD_SWEEP, cwd=tmp_path, status=1)
    _check_bad_sweep(log, tmp_path / "out")


@pytest.mark.slow
def test_a_bad_job_does_not_stop_a_parallel_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    _npz_files(tmp_path)
    log = wcnorm("train", "-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", *BAD_SWEEP,
                 cwd=tmp_path, status=1)
    _check_bad_sweep(log, tmp_path / "out")


@pytest.mark.slow
def test_a_sweep_that_cannot_be_composed_lists_every_bad_job_and_starts_none(tmp_path):
    log = wcnorm("train", "-m", *SMOKE, "model=enorm_fc,resnet1000", "trainer.epochs=1,0", cwd=tmp_path, status=1)
    assert "3 of 4 jobs of this sweep are invalid" in log and "no job starts" in log
    assert "#1 model=enorm_fc trainer.epochs=0:" in log
    assert "#2 model=resnet1000 trainer.epochs=1:" in log and "#3 model=resnet1000 trainer.epochs=0:" in log
    assert "Could not find 'model/resnet1000'" in log and "resnet18" in log
    assert not (tmp_path / "out").exists()


def _sweep(*overrides: str):
    """(jobs, invalid jobs) of `wcnorm train -m <overrides>`, from the sweep config Hydra makes."""
    with initialize_config_module(config_module="wcnorm.conf", version_base="1.3"):
        config = GlobalHydra.instance().hydra.compose_config("train", list(overrides), run_mode=RunMode.MULTIRUN)
        jobs = job_overrides(config)
        return jobs, invalid_jobs(config, jobs)


def test_the_jobs_are_those_the_basic_sweeper_launches_in_its_order():
    jobs, bad = _sweep("experiment=demo", "seed=0,1", "trainer.epochs=2")
    # the preset's hydra.sweeper.params first, then the command line: the job numbers Hydra gives
    assert [[o for o in job if o.split("=")[0] in ("norm", "seed")] for job in jobs] == [
        [f"norm={n}", f"seed={s}"] for n in ("bn", "bn_wc", "enorm") for s in (0, 1)]
    assert all("trainer.epochs=2" in job for job in jobs) and bad == []


def test_each_bad_job_is_named_with_all_its_problems():
    jobs, bad = _sweep(*SMOKE, "trainer.epochs=1,0", "trainer.batch_size=16,1", "+trainer.epoch=3")
    assert len(jobs) == 4 and [b.num for b in bad] == [0, 1, 2, 3]  # +trainer.epoch: every job
    [job3] = [b for b in bad if b.num == 3]
    assert any("trainer.epochs=0" in p for p in job3.problems) and any("batch_size=1" in p for p in job3.problems)
    assert any("did you mean trainer.epochs?" in p for p in job3.problems) and job3.composes


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_jobs_for_other_machines_are_not_judged_by_this_one():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    _, here = _sweep(*SMOKE, "trainer.device=cuda", "seed=0,1")
    assert [b.num for b in here] == [0, 1] and "CUDA is not available" in here[0].problems[0]
    _, cluster = _sweep("hydra/launcher=slurm", *SMOKE, "trainer.device=cuda", "seed=0,1")
    assert cluster == []  # the cluster's nodes have GPUs; this login node need not


# ----------------------------------------------------------------------------- a signal stops a sweep

# Jobs of several seconds each (128 steps an epoch, 6 epochs), so that the signal, sent
# once a job has checkpointed its first epoch, finds it still training on a fast, idle
# machine too (a parallel worker looks for the sweep's stop every 0.5 s).
LONG = [*SMOKE, "dataset.train_size=2048", "trainer.epochs=6"]


def _signal_a_sweep(tmp_path: Path, args: list[str], sig: signal.Signals, training: int,
                    group: bool = False) -> tuple[int, str]:
    """Start the sweep, wait until `training` jobs have checkpointed an epoch, signal the
    sweep's process (only it: as `kill` or a scheduler would; `group`: all its processes,
    as a terminal's Ctrl-C does), and let it end."""
    with open(tmp_path / "sweep.log", "w") as out:
        proc = subprocess.Popen([WCNORM, *args], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,  # the signal reaches the sweep alone, not this test
                                env={"PATH": str(Path(WCNORM).parent) + ":/usr/bin:/bin", "CI": "1",
                                     "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 240
        while len(list((tmp_path / "out").rglob("last.pt"))) < training:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()
            time.sleep(0.1)
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        status = proc.wait(timeout=240)
    return status, (tmp_path / "sweep.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("launcher, sig, group", [("basic", signal.SIGTERM, False), ("basic", signal.SIGINT, True),
                                                  ("local_parallel", signal.SIGTERM, False),
                                                  ("local_parallel", signal.SIGINT, True)])
def test_a_signal_stops_the_sweep_and_the_rerun_resumes_it(tmp_path, launcher, sig, group):
    """Before, a signal stopped only the job that was training: the sweep started every
    remaining job, and exited 0."""
    parallel = launcher == "local_parallel"
    if parallel:
        pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    args = ["train", "-m", *(["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"] if parallel else []),
            *LONG, "seed=0,1,2,3"]
    status, log = _signal_a_sweep(tmp_path, args, sig, training=1, group=group)
    assert status == 128 + sig.value, log
    assert f"sweep: stopped by {sig.name}" in log and "Run the same command again to resume" in log, log
    assert "all 4 jobs finished" not in log and "Traceback" not in log
    [sweep_dir] = (tmp_path / "out" / ".sweeps").iterdir()
    records = {int(p.parent.name): json.loads(p.read_text())["status"] for p in sweep_dir.glob("*/job.json")}
    assert "interrupted" in records.values(), records  # the job that was training saved its step
    assert "not started" in records.values(), records  # and at least one job never started
    runs = [p.parent for p in (tmp_path / "out").rglob("config.yaml")]
    stopped = [r for r in runs if not (r / "result.json").exists()]
    assert stopped and all((r / "last.pt").exists() for r in stopped)
    assert len(runs) < 4  # no job trained after the signal
    interrupted = {num for num, s in records.items() if s == "interrupted"}
    assert f"interrupted (checkpoint saved, resumes from it): #{min(interrupted)} seed=" in log

    again = wcnorm(*args, cwd=tmp_path)  # the same command: the sweep goes on where it stopped
    assert "all 4 jobs finished" in again
    assert again.count("resumed from") == len(stopped)
    assert len(list((tmp_path / "out").rglob("result.json"))) == 4
