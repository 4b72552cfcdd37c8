"""scripts/device_check.sh up to its phases, on this machine: the fresh install of wcnorm
into a scratch folder, the check that every package it imports is there, and the phase
dispatch (an unknown phase fails, named). The phases themselves need a GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                    reason="the script installs wcnorm without build isolation: needs setuptools")
def test_device_check_installs_and_dispatches(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"), SITE=str(tmp_path / "site"))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "stale.txt").write_text("from an earlier run")
    run = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "nonsense"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "unknown phase 'nonsense'" in out and "== nonsense: failed" in out
    assert (tmp_path / "site" / "wcnorm" / "conf" / "train.yaml").is_file()  # configs installed with it
    assert not (tmp_path / "site" / "stale.txt").exists()  # a rerun starts from a clean folder
    assert "wcnorm" in (tmp_path / "out" / "device.txt").read_text()
