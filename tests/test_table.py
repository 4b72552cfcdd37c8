"""`wcnorm table` on fabricated run directories (no training)."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fabricate import (
    make_fc_grid,
    make_nerf_grid,
    make_nerf_run,
    make_run,
    make_shape_grid,
    make_shape_run,
    make_wc_grid,
)  # tests/ is on sys.path under pytest

from wcnorm.report.runs import find_runs, load_conditioning, load_curves, load_runs
from wcnorm.report.table import BEST_METRIC, build_table, main, to_markdown, write_table

GOLDEN = Path(__file__).parent / "golden"
FC_METHODS = ("none", "bn", "enorm", "bn_enorm")


def _load(root):
    with pytest.warns(UserWarning, match="unreadable run directory"):
        return load_runs(root)


@pytest.fixture
def wc_root(tmp_path):
    return make_wc_grid(tmp_path / "runs")


@pytest.fixture
def wc_df(wc_root):
    return _load(wc_root)


def _check_golden(produced: Path, name: str):
    golden = GOLDEN / name
    if os.environ.get("WCNORM_UPDATE_GOLDEN"):
        golden.write_text(produced.read_text())
    assert produced.read_text() == golden.read_text(), f"{name} differs from its golden file"


def test_load_runs_counts_unfinished_and_skips_junk(wc_root, wc_df):
    assert len(find_runs(wc_root)) == 15  # 13 finished + 1 unfinished + 1 junk
    assert len(wc_df) == 14 and wc_df["finished"].sum() == 13
    assert wc_df.attrs["skipped"] and "junk" in wc_df.attrs["skipped"][0]
    unfinished = wc_df[~wc_df["finished"]].iloc[0]
    assert pd.isna(unfinished["final_test_acc"]) and unfinished["epochs_done"] == 2
    assert wc_df["depth"].isna().all() and wc_df["seed"].dtype == "Int64"


def test_load_curves_and_conditioning_keep_extra_columns(wc_root):
    with pytest.warns(UserWarning):
        curves, cond = load_curves(wc_root), load_conditioning(wc_root)
    assert {"enorm_objective", "model", "norm", "seed", "finished"} <= set(curves.columns)
    assert len(curves) == 13 * 4 + 2  # 4 epochs per finished run, 2 for the unfinished one
    assert set(cond["norm"]) == {"bn_wc"} and cond["epoch"].min() == 0


def test_wc_table_matches_golden(wc_df, tmp_path):
    result = build_table(wc_df)
    files = write_table(result, tmp_path / "out")
    assert [f.name for f in files] == ["table.csv", "table_best_epoch.csv", "table_long.csv",
                                       "table.md", "provenance.json"]
    for name in ("table.csv", "table_best_epoch.csv", "table_long.csv"):
        _check_golden(tmp_path / "out" / name, f"wc_{name}")
    assert result.provenance["enorm_variants"] == {}  # no ENorm run, no ENorm column


def test_missing_cell_and_missing_seed_are_shown(wc_df):
    result = build_table(wc_df)
    wide = result.wide.set_index(["model", "dataset"])
    assert wide.loc[("googlenet", "cifar100"), "BN + WC"] == "missing"
    assert wide.loc[("resnet18", "cifar10"), "BN + WS"] == "89.50 ± 0.71 (n=2/3)"
    assert wide.loc[("resnet18", "cifar10"), "BN + WC"] == "93.00 ± 1.00 (n=3)"
    missing = result.provenance["missing"]
    assert missing == result.missing
    assert "googlenet/cifar100/bn_wc: missing, no finished run" in missing
    assert "seeds found 2/3 for resnet18/cifar10/bn_ws (missing seed 2)" in missing
    assert result.provenance["cells"] == {"expected": 6, "ok": 3, "incomplete": 2, "missing": 1}


def _cpu_grid(root, batch_sizes=(128,)) -> pd.DataFrame:
    """BN and BN + WC on ResNet-18 and ResNet-50, CIFAR-10 only, at budget=cpu."""
    for model in ("resnet18", "resnet50"):
        for norm, acc in (("bn", 50.0), ("bn_wc", 52.0)):
            for b in batch_sizes:
                for seed in (0, 1):
                    make_run(root, model=model, norm=norm, seed=seed, final_acc=acc + seed,
                             experiment="wc_resnet", budget="cpu", batch_size=b, tag=f"_b{b}")
    return load_runs(root)


def test_grid_points_the_budget_leaves_out_are_marked_not_dropped(tmp_path):
    reason = "the CIFAR-100 subset has 486 training images"
    result = build_table(_cpu_grid(tmp_path), not_run={"dataset=cifar100": reason})
    wide = result.wide.set_index(["model", "dataset"])
    assert list(wide.index) == [("resnet18", "cifar10"), ("resnet18", "cifar100"),
                                ("resnet50", "cifar10"), ("resnet50", "cifar100")]
    for model in ("resnet18", "resnet50"):
        assert list(wide.loc[(model, "cifar100"), ["BN", "BN + WC"]]) == ["no cpu budget"] * 2
        assert wide.loc[(model, "cifar10"), "BN + WC"] == "52.50 ± 0.71 (n=2)"
    best = result.best.set_index(["model", "dataset"])
    assert best.loc[("resnet50", "cifar100"), "BN"] == "no cpu budget"
    long = result.long.set_index(["model", "dataset", "norm"])
    assert long.loc[("resnet18", "cifar100", "bn"), ["status", "n"]].tolist() == ["not run", 0]
    p = result.provenance
    assert p["not_run"] == [f"dataset=cifar100: {reason}"] and p["missing"] == []
    assert p["cells"] == {"expected": 8, "ok": 4, "incomplete": 0, "missing": 0, "not run": 4}
    md = to_markdown(result)
    assert "4 not run at this budget" in md and f"- dataset=cifar100: {reason}" in md


def test_left_out_batch_sizes_get_rows_and_points_with_runs_stay(tmp_path):
    df = _cpu_grid(tmp_path, batch_sizes=(4, 64))
    result = build_table(df, split_by=["batch_size"],
                         not_run={"batch_size=2,4,8": "too slow on a CPU"})
    long = result.long.set_index(["model", "dataset", "batch_size", "norm"])
    assert sorted(long.index.get_level_values("batch_size").unique()) == [2, 4, 8, 64]
    assert long.loc[("resnet18", "cifar10", 4, "bn"), "status"] == "ok"  # it has runs
    assert long.loc[("resnet18", "cifar10", 8, "bn"), "status"] == "not run"
    assert (long["status"] == "not run").sum() == 2 * 2 * 2  # 2 models x 2 sizes x 2 norms


def test_a_left_out_point_must_name_a_row_key(tmp_path):
    with pytest.raises(ValueError, match="row keys"):
        build_table(_cpu_grid(tmp_path), not_run={"optim.lr=0.1": "no"})


def test_unfinished_runs_counted_not_averaged(wc_df):
    result = build_table(wc_df)
    row = result.long.set_index(["model", "dataset", "norm"]).loc[
        ("googlenet", "cifar100", "bn_ws")]
    # The unfinished seed-2 run logged 0 % accuracies; the mean must not see them.
    assert (row["n"], row["n_unfinished"], row["mean"], row["seeds"]) == (2, 1, 61.0, "0 1")
    assert result.provenance["runs"] == {"dirs": 14, "finished": 13, "unfinished": 1,
                                         "skipped_unreadable": 1}
    assert any("1 unfinished" in u for u in result.provenance["unfinished"])


def test_expected_seeds_option(wc_df):
    result = build_table(wc_df, expected_seeds=4)
    assert "seeds found 3/4 for resnet18/cifar10/bn" in result.missing
    assert (result.long["status"] != "ok").all()


def test_best_epoch_table_is_labelled(wc_df):
    best = build_table(wc_df).best
    assert (best["metric"] == BEST_METRIC).all()
    assert "not used for selection" in BEST_METRIC
    assert best.set_index(["model", "dataset"]).loc[("resnet18", "cifar10"), "BN"] \
        == "91.50 ± 1.00 (n=3)"


def test_enorm_fc_layout_rows_are_depths(tmp_path):
    accs = {(d, m): 50 + 2 * i for d in (1, 3, 5) for i, m in enumerate(FC_METHODS)}
    del accs[(5, "enorm")]
    df = load_runs(make_fc_grid(tmp_path, accs))
    result = build_table(df)
    assert result.layout == "enorm_fc"
    assert list(result.wide.columns) == ["metric", "depth", "Baseline", "BN", "ENorm",
                                         "ENorm + BN"]
    assert list(result.wide["depth"]) == [1, 3, 5]
    wide = result.wide.set_index("depth")
    assert wide.loc[1, "ENorm + BN"] == "56.00 ± 0.71 (n=2)"
    assert wide.loc[5, "ENorm"] == "missing"
    assert "depth=5/enorm: missing, no finished run" in result.missing


def _with_enorm(run_dir, **settings):
    """Give a fabricated run the `norm.enorm` node of a real run's config.yaml."""
    path = run_dir / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["norm"]["enorm"] = {"enabled": True, "c": 1.0, "every": 1, "cycles": 1, "order": "sequential",
                            "balance_last": True, "bn": "ignore", **settings}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


OFFICIAL = "order=jacobi, balance_last=false, c=1.2, cycles=1, every=1 (official code)"
DEFAULT = "order=sequential, balance_last=true, c=1, cycles=1, every=1 (wcnorm default)"


def test_enorm_runs_name_their_variant(tmp_path):
    for seed in (0, 1):
        _with_enorm(make_run(tmp_path, norm="bn", seed=seed), enabled=False)  # the node, ENorm off
        _with_enorm(make_run(tmp_path, norm="enorm", seed=seed), order="jacobi", balance_last=False, c=1.2)
        _with_enorm(make_run(tmp_path, norm="bn_enorm", seed=seed))
    _with_enorm(make_run(tmp_path, norm="bn_enorm", seed=2), cycles=2, every=5)
    result = build_table(load_runs(tmp_path))
    variant = result.long.set_index("norm")["enorm_variant"]
    assert variant["enorm"] == OFFICIAL and variant["bn"] == ""
    # a cell pooling two variants shows both
    assert variant["bn_enorm"] == DEFAULT + ";" + DEFAULT.replace("cycles=1, every=1", "cycles=2, every=5")
    assert result.provenance["enorm_variants"]["enorm"] == [OFFICIAL]
    assert set(result.provenance["enorm_variants"]) == {"enorm", "bn_enorm"}
    out = tmp_path / "table"
    write_table(result, out)
    assert f"- ENorm in ENorm: {OFFICIAL}" in (out / "table.md").read_text()
    assert json.loads((out / "provenance.json").read_text())["enorm_variants"]["enorm"] == [OFFICIAL]
    on_disk = pd.read_csv(out / "table_long.csv", keep_default_na=False).set_index("norm")
    assert on_disk.loc["enorm", "enorm_variant"] == OFFICIAL
    long = build_table(load_runs(tmp_path), layout="long").wide.set_index("norm")
    assert long.loc["enorm", "enorm_variant"] == OFFICIAL


def test_long_layout_and_split_by(tmp_path):
    for bs, acc in ((2, 60.0), (64, 70.0)):
        for seed in (0, 1):
            make_run(tmp_path, norm="gn", seed=seed, batch_size=bs, final_acc=acc + seed,
                     experiment="small_batch", tag=f"_bs{bs}")
    df = load_runs(tmp_path)
    pooled = build_table(df)
    assert pooled.provenance["mixed_settings"] == [
        "resnet18/cifar10/gn pools runs that differ in trainer.batch_size (2, 64)"]
    split = build_table(df, layout="long", split_by=["batch_size"])
    assert list(split.long["mean"]) == [60.5, 70.5]
    assert list(split.wide["batch_size"]) == [2, 64]
    assert list(split.wide["n"]) == [2, 2]


def test_adhoc_runs_expect_only_their_cells(tmp_path):
    make_run(tmp_path, model="resnet18", norm="bn", experiment=None)
    make_run(tmp_path, model="vit", norm="ln", experiment=None)
    result = build_table(load_runs(tmp_path))
    assert result.missing == []
    assert result.wide.set_index("model").loc["vit", "BN"] == ""


def test_cli_writes_table_provenance_and_claims(wc_root, tmp_path):
    out = tmp_path / "table"
    with pytest.warns(UserWarning):
        assert main([str(wc_root), "--out", str(out), "--expected-seeds", "3"]) == 0
    for name in ("table.csv", "table_best_epoch.csv", "table_long.csv", "table.md",
                 "provenance.json", "claims.csv"):
        assert (out / name).stat().st_size > 0, name
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["command"].startswith("wcnorm table ") and prov["seeds_expected"] == 3
    assert prov["budgets"] == ["short"] and prov["device_names"] == ["Fake GPU"]
    assert prov["git_commits"] == ["abc1234"] and prov["date_range"][0].startswith("2024-10-01")
    md = (out / "table.md").read_text()
    assert "best epoch (not used for selection)" in md
    assert "- googlenet/cifar100/bn_wc: missing" in md and "| resnet18 | cifar10 |" in md
    claims = pd.read_csv(out / "claims.csv")
    # (wc2_* claims count only runs of the wc_resnet preset; these runs are wc_test's)
    assert claims.set_index("claim_id").loc["wc_vs_weight_norms_resnet18_cifar10", "verdict"] == "supported"


def test_cli_unknown_preset_fails(wc_root, tmp_path, capsys):
    with pytest.warns(UserWarning):
        assert main([str(wc_root), "--out", str(tmp_path), "--preset", "nope"]) == 1
    assert "no run directories" in capsys.readouterr().err


# --- neural fields -------------------------------------------------------------------------

PSNR = "test PSNR (dB), the test views rendered after the last epoch"
SSIM = "test SSIM, the test views rendered after the last epoch"


@pytest.fixture
def nerf_df(tmp_path):
    return load_runs(make_nerf_grid(tmp_path / "nerf", views=()))  # tables need no renders


@pytest.fixture
def shape_df(tmp_path):
    return load_runs(make_shape_grid(tmp_path / "shape", mesh_picture=False))


def test_load_runs_reads_field_runs(tmp_path, nerf_df, shape_df):
    lego = nerf_df[(nerf_df["scene"] == "lego") & (nerf_df["norm"] == "wc")].sort_values("seed")
    assert set(nerf_df["task"]) == {"nerf"} and nerf_df["shape"].isna().all()
    assert list(lego["final_test_psnr"]) == [33.0, 33.5, 34.0]
    assert list(lego["best_val_psnr"]) == [32.0, 32.5, 33.0] and set(lego["metric"]) == {"val_psnr"}
    assert set(nerf_df.groupby("scene")["dataset"].first().items()) == {("lego", "blender"),
                                                                        ("fern", "llff")}
    # The unfinished run logged nothing that may enter a mean.
    unfinished = nerf_df[~nerf_df["finished"]].iloc[0]
    assert pd.isna(unfinished["final_test_psnr"]) and unfinished["epochs_done"] == 3
    assert set(shape_df["task"]) == {"shape"} and set(shape_df["shape"]) == {"armadillo", "bunny"}
    bunny_ws = shape_df.set_index(["shape", "norm", "seed"]).loc[("bunny", "ws", 1)]
    assert pd.isna(bunny_ws["final_test_chamfer"]) and bunny_ws["mesh"] == "mesh.obj"
    # Without dataset.scene / dataset.shape the name comes from the data folder or file.
    run = make_nerf_run(tmp_path / "bare", scene="ship", scene_key=False)
    assert load_runs(run).loc[0, "scene"] == "ship"
    cfg_path = make_shape_run(tmp_path / "bare", shape="lucy") / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    del cfg["dataset"]["shape"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert load_runs(cfg_path.parent).loc[0, "shape"] == "lucy"
    # Classification runs are untouched: their task, no scene or shape.
    cls = load_runs(make_run(tmp_path / "cls"))
    assert cls.loc[0, "task"] == "classification" and cls[["scene", "shape"]].isna().all().all()


def test_nerf_table_rows_scenes_blocks_metrics(nerf_df, tmp_path):
    result = build_table(nerf_df)
    assert (result.layout, result.task) == ("nerf", "nerf")
    assert list(result.wide.columns) == ["metric", "scene", "Baseline", "WS", "WN", "WC"]
    assert list(result.wide["metric"]) == [PSNR, PSNR, SSIM, SSIM]
    wide = result.wide.set_index(["metric", "scene"])
    assert wide.loc[(PSNR, "lego"), "WC"] == "33.50 ± 0.50 (n=3)"
    assert wide.loc[(PSNR, "lego"), "WS"] == "31.00 ± 0.71 (n=2/3)"
    assert wide.loc[(SSIM, "lego"), "WC"] == "0.8375 ± 0.0125 (n=3)"
    # WS never ran on fern: the cell is named missing, in both blocks, not dropped.
    assert wide.loc[(PSNR, "fern"), "WS"] == wide.loc[(SSIM, "fern"), "WS"] == "missing"
    assert "fern/ws: missing, no finished run" in result.missing
    assert "seeds found 2/3 for lego/ws (missing seed 2)" in result.missing
    assert any("lego/ws: 1 unfinished" in u for u in result.provenance["unfinished"])
    # The best-epoch table: the validation PSNR of the best epoch, marked as such.
    assert result.best["metric"].str.contains("not used for selection").all()
    assert result.best.set_index("scene").loc["lego", "WC"] == "32.50 ± 0.50 (n=3)"
    # The long table holds every metric, the validation ones too.
    long = result.long.set_index(["scene", "norm"])
    assert long.loc[("lego", "wc"), "mean"] == 33.5
    assert long.loc[("lego", "wc"), ["val_psnr_mean", "val_psnr_n"]].tolist() == [32.5, 3]
    assert long.loc[("fern", "wn"), "val_ssim_mean"] == pytest.approx(24.5 / 40)
    assert result.provenance["task"] == "nerf" and result.provenance["row_keys"] == ["scene"]
    write_table(result, tmp_path / "out")
    md = (tmp_path / "out" / "table.md").read_text()
    assert "## NeRF: test PSNR and SSIM, nerf layout" in md
    assert md.index("### Test PSNR") < md.index("### Test SSIM") < md.index("### Best-epoch")
    assert "| lego | 30.50 ± 0.50 (n=3) | 31.00 ± 0.71 (n=2/3) |" in md


def test_shape_table_chamfer_lower_is_better(shape_df):
    result = build_table(shape_df)
    assert result.layout == "shape"
    blocks = list(dict.fromkeys(result.wide["metric"]))
    assert blocks[0].startswith("test IoU") and "Chamfer" in blocks[1]
    assert blocks[1].endswith("lower is better")
    better = {m["column"]: m["better"] for m in result.provenance["metrics"]}
    assert better["final_test_chamfer"] == "lower" and better["final_test_iou"] == "higher"
    wide = result.wide.set_index(["metric", "shape"])
    assert wide.loc[(blocks[0], "armadillo"), "WC"] == "0.9520 ± 0.0020 (n=3)"
    assert wide.loc[(blocks[1], "armadillo"), "WC"] == "1.05e-03 ± 5.00e-05 (n=3)"
    # One run reports no Chamfer distance: that block's cell says so, and the list names it.
    assert wide.loc[(blocks[1], "bunny"), "WS"].endswith("(n=2/3)")
    assert wide.loc[(blocks[0], "bunny"), "WS"].endswith("(n=3)")
    assert "test_chamfer found in 2 of 3 finished runs of bunny/ws" in result.missing
    assert result.long.set_index(["shape", "norm"]).loc[("bunny", "ws"), "test_chamfer_n"] == 2


def test_field_long_layout_and_refusals(nerf_df, shape_df, wc_df):
    long = build_table(nerf_df, layout="long").wide
    assert list(long.columns[:2]) == ["scene", "norm"] and PSNR in long and SSIM in long
    with pytest.raises(ValueError, match="does not suit nerf runs"):
        build_table(nerf_df, layout="wc")
    with pytest.raises(ValueError, match="several tasks"):
        build_table(pd.concat([nerf_df, shape_df], ignore_index=True))
    with pytest.raises(ValueError, match="does not suit classification runs"):
        build_table(wc_df, layout="shape")


def test_cli_field_tables(tmp_path, capsys):
    root = make_shape_grid(tmp_path / "runs" / "shape", mesh_picture=False)
    make_nerf_grid(tmp_path / "runs" / "nerf", views=())
    out = tmp_path / "table"
    assert main([str(root), "--out", str(out)]) == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["layout"] == "shape" and prov["command"].startswith("wcnorm table ")
    assert (out / "claims.csv").stat().st_size > 0
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "mixed")]) == 1
    assert "several tasks" in capsys.readouterr().err
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "nerf"),
                 "--preset", "wc_nerf"]) == 0


def test_infinite_chamfer_is_shown_not_hidden(tmp_path):
    for seed, cd in enumerate((float("inf"), 1e-3, 1.1e-3)):
        make_shape_run(tmp_path, norm="wc", seed=seed, chamfer=cd, mesh_picture=False)
    result = build_table(load_runs(tmp_path))
    chamfer = result.wide[result.wide["metric"].str.startswith("Chamfer")].iloc[0]
    assert chamfer["WC"] == "inf (n=3)"
    assert result.missing == ["test_chamfer infinite in 1 of 3 finished runs of armadillo/wc: "
                              "its mean is infinite"]
