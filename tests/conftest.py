"""Shared fixtures: the real Hydra config, composed as the CLI composes it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Small, fast defaults for runs in tests: CPU, a couple of batches, no bars.
SMOKE = ["trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=16", "trainer.limit_batches=2",
         "trainer.limit_eval_batches=2", "trainer.progress=false", "dataset=synthetic"]

torch.set_num_threads(min(2, os.cpu_count() or 1))


def compose_cfg(overrides: list[str] | tuple[str, ...] = (), *, smoke: bool = True):
    with initialize_config_module(config_module="wcnorm.conf", version_base="1.3"):
        return compose("train", overrides=[*(SMOKE if smoke else []), *overrides])


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
