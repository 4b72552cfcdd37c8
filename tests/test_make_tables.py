"""scripts/make_tables.py: which runs a results folder is made of."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from fabricate import make_nerf_run  # tests/ is on sys.path under pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_tables.py"


def make_tables():
    spec = importlib.util.spec_from_file_location("make_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.filterwarnings("ignore:wcnorm. no test renders")  # the runs render nothing
def test_smoke_runs_never_mix_into_a_presets_results_unless_asked(tmp_path):
    runs = tmp_path / "runs"
    for norm in ("none", "wc"):
        for seed in (0, 1):
            make_nerf_run(runs / "cpu", norm=norm, seed=seed, budget="cpu", views=())
        make_nerf_run(runs / "smoke", norm=norm, seed=0, budget="smoke", test_psnr=8.0, views=())
    main = make_tables()
    assert main(["--runs", str(runs), "--out", str(tmp_path / "results")]) == 0
    table = pd.read_csv(tmp_path / "results" / "wc_nerf" / "runs.csv")
    assert set(table["budget"]) == {"cpu"} and len(table) == 4  # the real runs only
    assert main(["--runs", str(runs / "smoke"), "--out", str(tmp_path / "smoke"), "--budgets", "smoke"]) == 0
    table = pd.read_csv(tmp_path / "smoke" / "wc_nerf" / "runs.csv")
    assert set(table["budget"]) == {"smoke"} and len(table) == 2
    # a root of smoke runs alone, without asking for them: nothing to table, and it says so
    assert main(["--runs", str(runs / "smoke"), "--out", str(tmp_path / "none")]) == 1
