"""Shared fixtures: the real Hydra config, composed as the CLI composes it, and the
installed `wcnorm` command, run as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Small, fast defaults for runs in tests: CPU, a couple of batches, no bars.
SMOKE = ["trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=16", "trainer.limit_batches=2",
         "trainer.limit_eval_batches=2", "trainer.progress=false", "dataset=synthetic"]

# One torch thread per test process when pytest-xdist runs several side by side (`make test`:
# one per core), two otherwise.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

WCNORM = shutil.which("wcnorm") or str(Path(sys.executable).parent / "wcnorm")


def cli_env(**extra: str) -> dict[str, str]:
    """A bare environment: the console script's folder and the system's on PATH, nothing
    of the test process's own (no PYTHONPATH), one thread per op, no progress bars."""
    return {"PATH": f"{Path(WCNORM).parent}:/usr/bin:/bin", "CI": "1", "OMP_NUM_THREADS": "1", **extra}


def wcnorm(*args: str, cwd, status: int | None = 0, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    """Run `wcnorm ARGS` from `cwd`; its stdout and stderr together. The test fails unless
    it exits with `status` (None: any)."""
    proc = subprocess.run([WCNORM, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=cli_env(**(env or {})))
    out = proc.stdout + proc.stderr
    if status is not None and proc.returncode != status:
        pytest.fail(f"wcnorm {' '.join(args)} exited {proc.returncode}, not {status}:\n{out}")
    return out


def compose_cfg(overrides: list[str] | tuple[str, ...] = (), *, smoke: bool = True,
                return_hydra_config: bool = False):
    with initialize_config_module(config_module="wcnorm.conf", version_base="1.3"):
        return compose("train", overrides=[*(SMOKE if smoke else []), *overrides],
                       return_hydra_config=return_hydra_config)


@pytest.fixture
def cfg_factory(tmp_path):
    """compose(overrides) with out_dir in a fresh temporary folder."""

    def make(*overrides: str, smoke: bool = True):
        return compose_cfg([f"out_dir={tmp_path / 'runs'}", *overrides], smoke=smoke)

    return make


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only the project's own checkout has it)")
    return SHARED_DATA
