"""Freed memory kept for reuse on the CPU (training.allocator): the page faults a step
no longer takes, the same results either way, and a bad WCNORM_MALLOC refused."""

from __future__ import annotations

import platform
import subprocess
import sys

import pandas as pd
import pytest
from conftest import cli_env, wcnorm

from wcnorm.errors import ConfigError
from wcnorm.training.allocator import ENV, keep_freed_memory, malloc_choice

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Page faults per step of a small MLP's training step, after a warm-up, in a fresh process.
FAULTS = """
import resource, torch
from torch import nn
from wcnorm.training.allocator import keep_freed_memory
keep_freed_memory()
torch.manual_seed(0); torch.set_num_threads(1)
net = nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))
x = torch.randn(4096, 3)
def step():
    net.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
for _ in range(30):
    step()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 20)
"""


def test_the_choice_is_keep_unless_the_environment_says_system(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert malloc_choice() == "keep"
    monkeypatch.setenv(ENV, " System ")
    assert malloc_choice() == "system" and keep_freed_memory() is False  # nothing set
    monkeypatch.setenv(ENV, "jemalloc")
    with pytest.raises(ConfigError, match="WCNORM_MALLOC='jemalloc': choose keep .* or system"):
        keep_freed_memory()


def _faults_per_step(choice: str) -> float:
    proc = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, timeout=300,
                          env=cli_env(**{ENV: choice, "OMP_NUM_THREADS": "1"}))
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip())


@pytest.mark.slow  # two fresh processes: the setting is the process's, for good
@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_a_step_takes_no_page_faults_once_freed_memory_is_kept():
    kept, system = _faults_per_step("keep"), _faults_per_step("system")
    assert kept < 5 and system > 50, (kept, system)


@pytest.mark.slow  # wcnorm train in subprocesses
def test_training_gives_the_same_results_with_either_allocator_and_a_bad_choice_stops_it(tmp_path):
    tiny = ["train", "dataset=synthetic", "model=enorm_fc", "norm=bn_wc", "dataset.image_size=8",
            "dataset.train_size=160", "dataset.test_size=32", "trainer.device=cpu", "trainer.epochs=2",
            "trainer.batch_size=16", "diagnostics.conditioning=false"]
    for choice in ("keep", "system"):
        wcnorm(*tiny, f"out_dir={choice}", cwd=tmp_path, env={ENV: choice})
    keep, system = (pd.read_csv(next((tmp_path / c).rglob("metrics.csv"))) for c in ("keep", "system"))
    for column in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert keep[column].tolist() == system[column].tolist(), column  # bit for bit
    out = wcnorm(*tiny, "out_dir=bad", cwd=tmp_path, env={ENV: "tcmalloc"}, status=None)
    assert "WCNORM_MALLOC='tcmalloc'" in out and not list((tmp_path / "bad").rglob("config.yaml"))
