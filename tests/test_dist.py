"""DDP on the CPU (gloo): two processes train what one process trains with the same global batch.

One pair of processes (torch.multiprocessing.spawn, in-process runner) trains a few small
configs, records every rank's parameter checksums after every optimizer step, and leaves
a run interrupted after its first epoch, which `torchrun -m wcnorm train` then resumes
the way a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp
from conftest import compose_cfg

from wcnorm.errors import ConfigError, WcnormError
from wcnorm.outputs import load_checkpoint, run_dir_for, run_lock
from wcnorm.training import dist
from wcnorm.training.train import train
from wcnorm.training.trainer import Trainer

WORLD = 2
# 64 examples of 3 x 8 x 8, global batch 16: 4 steps per epoch, 8 examples per rank and step.
COMMON = ["model=enorm_fc", "dataset=synthetic", "dataset.image_size=8", "dataset.train_size=64",
          "dataset.test_size=32", "trainer.device=cpu", "trainer.epochs=2", "trainer.batch_size=16",
          "trainer.progress=false", "optim.lr=0.02", "diagnostics.conditioning=false"]
STEPS = 2 * 4
NORMS = ["none", "wc", "enorm"]
# BatchNorm normalizes per process on the CPU (SyncBatchNorm needs CUDA): weights must still agree.
CONFIGS = {norm: [f"norm={norm}"] for norm in NORMS} | {"bn_sync": ["norm=bn", "trainer.sync_bn=true"]}


def _cfg(name: str, out_dir: Path, *extra: str):
    return compose_cfg([*COMMON, *CONFIGS[name], f"out_dir={out_dir}", *extra], smoke=False)


def _worker(rank: int, out: Path) -> None:
    """One rank: train every config, checking the replicas after every optimizer step."""
    torch.set_num_threads(1)
    # The runner picks the group up from the environment; here the test makes the group: met
    # through a file (no port to pick, so no port to collide), with a short timeout, so a bug
    # that desynchronises the ranks fails instead of hanging.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    td.init_process_group("gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=WORLD,
                          timeout=timedelta(seconds=60))
    record = {"gap": {}, "state_gap": {}, "state_size": {}, "steps": {}}
    current = [None]
    step = Trainer.train_step

    def checked_step(self, *batch):
        loss_correct = step(self, *batch)  # the optimizer step, then ENorm's cycle (a callback)
        weights = dist.gather(dist.param_checksums(self.model))
        state = dist.gather(dist.state_checksums(self.optimizer, torch.device("cpu")))
        name = current[0]
        record["gap"][name] = max(record["gap"].get(name, 0.0), (weights - weights[0]).abs().max().item())
        record["state_gap"][name] = max(record["state_gap"].get(name, 0.0), (state - state[0]).abs().max().item())
        record["state_size"][name] = state.shape[1]
        record["steps"][name] = record["steps"].get(name, 0) + 1
        return loss_correct

    Trainer.train_step = checked_step
    for name in CONFIGS:
        current[0] = name
        record[name] = train(_cfg(name, out))["final_train_loss"]
    # Interrupted after epoch 1 under DDP; torchrun resumes it below.
    current[0] = "resume"
    assert train(_cfg("enorm", out / "resume", "trainer.stop_after=1"))["status"] == "interrupted"
    # A second launch of a finished run: every rank gets rank 0's verdict and skips.
    record["again"] = train(_cfg("none", out))["status"]
    # Rank 0 cannot take the run lock: every rank fails, none waits forever.
    cfg = _cfg("none", out, "seed=7")
    run_dir = run_dir_for(cfg)
    with run_lock(run_dir) if rank == 0 else dist.nullcontext():
        td.barrier()
        try:
            train(cfg)
        except WcnormError as err:
            record["lock_error"] = str(err)
    # 67 examples over 2 ranks: each takes 33 (the odd one is left out), so both take
    # the same number of steps and neither waits for the other.
    record["uneven"] = train(_cfg("none", out, "dataset.train_size=67"))["status"]
    record["repair"] = _repair_drifted_state(rank)
    td.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(record))


def _repair_drifted_state(rank: int) -> dict:
    """Rank 1's momentum drifts off rank 0's; the end-of-epoch replica check must find it and
    copy rank 0's state over (the weights agree, so only the state can show the drift)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    if rank == 1:
        opt.state[model.weight]["momentum_buffer"].add_(1e-3)
    replica = SimpleNamespace(model=model, optimizer=opt, device=torch.device("cpu"))

    def state_gap() -> float:
        sums = dist.gather(dist.state_checksums(opt, replica.device))
        return (sums - sums[0]).abs().max().item()

    before = state_gap()
    dist.ReplicaCheck().on_epoch_end(replica, 1)
    return {"before": before, "after": state_gap(), "momentum": opt.state[model.weight]["momentum_buffer"].tolist()}


def _spawn(out: Path, timeout: float = 240) -> None:
    out.mkdir(parents=True)
    ctx = mp.spawn(_worker, args=(out,), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the DDP processes did not finish in time")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{ddp, single}: run roots, and each rank's record from the DDP processes."""
    root = tmp_path_factory.mktemp("dist")
    _spawn(root / "ddp")
    for name in CONFIGS:
        train(_cfg(name, root / "single"))
    records = [json.loads((root / "ddp" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return {"ddp": root / "ddp", "single": root / "single", "records": records}


def _metrics(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run_dir_for(_cfg(name, root)) / "metrics.csv")


@pytest.mark.slow
@pytest.mark.parametrize("name", NORMS)
def test_two_processes_follow_the_single_process_trajectory(runs, name):
    ddp, single = _metrics(runs["ddp"], name), _metrics(runs["single"], name)
    # Same config, same identity: the number of processes does not change the run directory name.
    assert run_dir_for(_cfg(name, runs["ddp"])).name == run_dir_for(_cfg(name, runs["single"])).name
    assert ddp.epoch.tolist() == [1, 2]
    for col in ("train_loss", "train_acc", "test_loss", "test_acc"):
        pd.testing.assert_series_equal(ddp[col], single[col], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameters_stay_identical_across_ranks_after_every_step(runs, name):
    for rec in runs["records"]:
        assert rec["steps"][name] == STEPS
        assert rec["gap"][name] == 0.0  # bitwise: same all-reduced gradients, same ENorm factors
        # the momentum buffers too (ENorm rescales them with the weights)
        assert rec["state_size"][name] > 0 and rec["state_gap"][name] == 0.0
    assert runs["records"][0][name] == runs["records"][1][name]  # the same (reduced) final loss


@pytest.mark.slow
def test_the_replica_check_repairs_drifted_optimizer_state(runs):
    r0, r1 = (rec["repair"] for rec in runs["records"])
    assert r0["before"] == r1["before"] > 0  # the drift is seen, on every rank
    assert r0["after"] == r1["after"] == 0.0
    assert r1["momentum"] == r0["momentum"]  # rank 0's state won


@pytest.mark.slow
def test_rank_0_decides_for_everyone(runs):
    r0, r1 = runs["records"]
    assert r0["again"] == r1["again"] == "finished"  # a finished run is skipped on every rank
    assert "another process is training" in r0["lock_error"]
    assert r1["lock_error"].startswith("rank 0 failed") and "another process is training" in r1["lock_error"]
    assert r0["uneven"] == r1["uneven"] == "finished"
    # Only rank 0 writes: the files of one run, no stray ones.
    run = run_dir_for(_cfg("wc", runs["ddp"]))
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.csv", "result.json", "last.pt"}
    assert not list(run.glob("*.tmp"))


@pytest.mark.slow
def test_torchrun_resumes_an_interrupted_ddp_run_to_the_uninterrupted_result(runs):
    """The run stopped after epoch 1 under DDP (in `runs`); the user's command resumes it."""
    [run] = [p.parent for p in (runs["ddp"] / "resume").rglob("last.pt")]
    assert not (run / "result.json").exists() and load_checkpoint(run / "last.pt")["epoch"] == 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "-m", "wcnorm", "train", *COMMON, *CONFIGS["enorm"], f"out_dir={runs['ddp'] / 'resume'}"]
    proc = subprocess.run(cmd, env={**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "resumed from" in log and "at epoch 1" in log and "finished: final test_acc" in log
    cols = ["train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics.csv")[cols], _metrics(runs["ddp"], "enorm")[cols],
                                  rtol=1e-6)
    assert json.loads((run / "result.json").read_text())["status"] == "finished"


def test_the_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="global batch"):
        dist.init(compose_cfg(["trainer.batch_size=16"]).trainer)


def test_one_process_is_a_no_op():
    ctx = dist.init(compose_cfg().trainer)
    assert (ctx.rank, ctx.world_size, ctx.all_reduce) == (0, 1, None)
    assert ctx.on_main(lambda: 42) == 42
    model = torch.nn.Linear(2, 2)
    assert ctx.wrap(model) is model


def test_each_parallel_job_holds_a_gpu_of_its_own(tmp_path):
    with dist.gpu_slot(["a", "b"], tmp_path) as first, dist.gpu_slot(["a", "b"], tmp_path) as second:
        assert (first, second) == (0, 1)
    with dist.gpu_slot(["a", "b"], tmp_path) as again:
        assert again == 0  # released when the job ends
