"""results/ exact: a preset folder's tables and claims rebuild from its runs.csv alone."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fabricate import (  # tests/ is on sys.path under pytest
    make_fc_grid,
    make_nerf_grid,
    make_run,
    make_shape_grid,
)
from scipy import stats

from wcnorm.report import pipeline
from wcnorm.report.catalogue import ALIASES, CLAIMS
from wcnorm.report.runs import RunReadError, read_runs_csv
from wcnorm.report.table import write_table

# Numbers with more digits than any fixed format keeps.
ODD = (0.123456789, -0.314159265, 0.271828182)


def _configure(run_dir: Path, **keys) -> None:
    """Set dotted config keys of a fabricated run (config.yaml and result.json alike)."""
    for name in ("config.yaml", "result.json"):
        f = run_dir / name
        if not f.is_file():
            continue
        doc = yaml.safe_load(f.read_text()) if name.endswith("yaml") else json.loads(f.read_text())
        cfg = doc if name.endswith("yaml") else doc["config"]
        for key, value in keys.items():
            *path, last = key.split(".")
            node = cfg
            for part in path:
                node = node.setdefault(part, {})
            node[last] = value
        f.write_text(yaml.safe_dump(doc) if name.endswith("yaml") else json.dumps(doc))


ENORM = {"norm.enorm.enabled": True, "norm.enorm.order": "jacobi",
         "norm.enorm.balance_last": False, "norm.enorm.c": 1.2, "norm.enorm.cycles": 1,
         "norm.enorm.every": 1}


def _grid(root: Path) -> Path:
    """Six presets, as the CPU grids are run: real-subset data files, ENorm settings,
    batch sizes with their scaled rates, unfinished runs, and numbers of many digits."""
    # GoogLeNet on a CIFAR-10 subset file: the accuracy and the training-loss claims.
    for i, norm in enumerate(("bn", "bn_ws", "bn_wn", "bn_e")):
        for seed in range(3):
            run = make_run(root, model="googlenet", dataset="npz", norm=norm, seed=seed,
                           experiment="wc_googlenet", budget="cpu",
                           final_acc=47 + i / 3 + ODD[seed], loss_scale=1 + (i + seed) / 7)
            _configure(run, **{"dataset.path": "../data/cifar10-partial.npz"})
    # The FC net: the ENorm order (enorm_fc, ENorm in the official code's cycle) and
    # the weight normalizations (wc_fc), both with BN and BN + WN.
    make_fc_grid(root, {(p, m): acc + p / 3 for p in (1, 3) for m, acc in
                        (("bn_enorm", 60.1), ("enorm", 50.2), ("bn", 40.3), ("none", 30.4),
                         ("bn_wn", 45.5))}, seeds=(0, 1, 2))
    for run in root.glob("enorm_fc/*enorm*/seed*"):
        _configure(run, **ENORM)
    make_run(root, model="enorm_fc", norm="bn", depth=3, seed=3, experiment="enorm_fc",
             finished=False)
    for p in (1, 3):
        for norm, acc in (("bn", 41.7), ("bn_ws", 44.1), ("bn_wn", 43.9), ("bn_wc", 45.3)):
            for seed in range(3):
                make_run(root, model="enorm_fc", norm=norm, depth=p, seed=seed,
                         experiment="wc_fc", final_acc=acc + ODD[seed] * p)
    # ResNet-18 at small batches, lr = 0.1 x B / 128 (0.003125 at batch 4).
    for b in (4, 16):
        for i, norm in enumerate(("bn", "gn", "enorm", "bn_enorm")):
            for seed in range(3):
                run = make_run(root, norm=norm, seed=seed, batch_size=b, lr=0.1 * b / 128,
                               experiment="enorm_resnet_small_batch", budget="short",
                               final_acc=70 - 3 * i + b / 5 + ODD[seed], tag=f"_b{b}")
                if "enorm" in norm:
                    _configure(run, **ENORM)
    # Shapes: Chamfer distances of order 1e-3, which four decimals would round away.
    make_shape_grid(root)
    # NeRF: PSNR per scene, SSIM (the long table's validation SSIM too).
    make_nerf_grid(root, views=())
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exact")
    module = pipeline
    runs = _grid(tmp / "runs")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "wcnorm. no test renders")  # NeRF runs render nothing
        assert module.main([str(runs), "--out", str(tmp / "results")]) == 0
    return module, tmp / "results"


PRESETS = ("wc_googlenet", "enorm_fc", "wc_fc", "enorm_resnet_small_batch", "wc_shape", "wc_nerf")
REBUILT = ("table.csv", "table_best_epoch.csv", "table_long.csv", "table.md", "provenance.json",
           "claims.csv", "claims_comparisons.csv", "claims.md")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_table_and_claim_rebuilds_from_runs_csv_alone(report, preset, tmp_path):
    module, results = report
    out = results / preset
    rows = read_runs_csv(out / "runs.csv")
    command = json.loads((out / "provenance.json").read_text())["command"]
    write_table(module.tabulate(preset, rows, command), tmp_path)
    module.write_claims(module.judge(rows), tmp_path / "claims.csv")
    for name in REBUILT:
        assert (tmp_path / name).read_text() == (out / name).read_text(), f"{preset}/{name}"


def _claim_runs(rows: pd.DataFrame, claim, norm: str, level) -> np.ndarray:
    """A claim's cell, chosen from runs.csv by hand: its model, dataset (a subset file
    counts as the dataset its name begins with), preset, method and level."""
    label = rows["dataset_file"].astype("string").fillna("").map(lambda f: Path(f).stem if f.endswith(".npz") else f)
    dataset = rows["dataset"].where(~rows["dataset"].isin(["npz", "imagefolder"]),
                                    label.str.extract(r"^(cifar100|cifar10|imagenet)")[0])
    keep = ((rows["model"] == claim.model) & rows["norm"].isin(ALIASES.get(norm, (norm,)))
            & (rows["status"] == "finished"))
    if claim.dataset:
        keep &= dataset == claim.dataset
    if claim.experiment:
        keep &= rows["experiment"] == claim.experiment
    if claim.per:
        keep &= rows[claim.per].astype(str) == str(level)
    return rows.loc[keep, claim.metric].dropna().to_numpy(float)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_welch_test_recomputes_from_runs_csv_with_scipy(report, preset):
    _, results = report
    rows = pd.read_csv(results / preset / "runs.csv")
    tests = pd.read_csv(results / preset / "claims_comparisons.csv")
    claims = {c.id: c for c in CLAIMS}
    tested = tests[tests["p"].notna()]
    assert len(tested) >= 2, f"{preset}: the grid should test claims"
    for r in tested.itertuples(index=False):
        c = claims[r.claim_id]
        level = r.level if c.per else None
        if c.per in ("depth", "batch_size"):
            level = int(float(level))
        a = _claim_runs(rows, c, r.better.split("|")[0], level)
        b = _claim_runs(rows, c, r.worse.split("|")[0], level)
        w = stats.ttest_ind(a, b, equal_var=False)
        assert (len(a), len(b)) == (r.n_better, r.n_worse), r
        assert (a.mean() - b.mean(), w.statistic, w.df, w.pvalue) == pytest.approx(
            (r.diff, r.t, r.df, r.p), rel=1e-5, abs=1e-12), r  # %.6g in the CSV


def test_runs_csv_keeps_every_digit_and_every_claim_input(report):
    _, results = report
    shapes = pd.read_csv(results / "wc_shape" / "runs.csv")
    # 3e-3 x 1.05 = 0.00315: four decimals wrote 0.0032.
    wn = shapes[(shapes["shape"] == "armadillo") & (shapes["norm"] == "wn") & (shapes["seed"] == 1)]
    assert wn["final_test_chamfer"].item() == 3e-3 * 1.05
    googlenet = pd.read_csv(results / "wc_googlenet" / "runs.csv")
    assert googlenet.loc[googlenet["seed"] == 0, "final_test_acc"].iloc[0] == 47 + ODD[0]
    # The training-loss claim's input: the mean of metrics.csv's train_loss (fabricate:
    # 2 x 0.6^epoch x scale over epochs 1..4).
    bn = googlenet[(googlenet["norm"] == "bn") & (googlenet["seed"] == 0)]
    assert bn["mean_train_loss"].item() == pytest.approx(np.mean(2.0 * 0.6 ** np.arange(1, 5)),
                                                         rel=1e-15)
    small = pd.read_csv(results / "enorm_resnet_small_batch" / "runs.csv")
    assert set(small["lr"]) == {0.1 * 4 / 128, 0.1 * 16 / 128}  # 0.003125, not 0.0031
    # The ENorm settings the tables name, beside the runs that used them.
    fc = pd.read_csv(results / "enorm_fc" / "runs.csv")
    assert set(fc.loc[fc["norm"] == "enorm", "cfg.norm.enorm.order"]) == {"jacobi"}
    # Every column a claim reads is a column of runs.csv.
    used = {c.metric for c in CLAIMS} | {c.per for c in CLAIMS if c.per}
    columns = set().union(*(pd.read_csv(results / p / "runs.csv", nrows=0).columns for p in PRESETS))
    assert used <= columns, used - columns


def test_a_file_that_is_not_a_runs_table_is_refused(tmp_path):
    (tmp_path / "runs.csv").write_text("model,norm\nresnet18,bn\n")
    with pytest.raises(RunReadError, match="not a runs table: no column run_dir"):
        read_runs_csv(tmp_path / "runs.csv")
