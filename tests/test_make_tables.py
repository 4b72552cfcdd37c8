"""`wcnorm report`: which runs a results folder is made of."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fabricate import make_nerf_run, make_run  # tests/ is on sys.path under pytest

from wcnorm.cli import main as wcnorm
from wcnorm.report import plot
from wcnorm.report.pipeline import main as report

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.filterwarnings("ignore:wcnorm. no test renders")  # the runs render nothing
def test_smoke_runs_never_mix_into_a_presets_results_unless_asked(tmp_path):
    runs = tmp_path / "runs"
    for norm in ("none", "wc"):
        for seed in (0, 1):
            make_nerf_run(runs / "cpu", norm=norm, seed=seed, budget="cpu", views=())
        make_nerf_run(runs / "smoke", norm=norm, seed=0, budget="smoke", test_psnr=8.0, views=())
    main = report
    assert main([str(runs), "--out", str(tmp_path / "results")]) == 0
    table = pd.read_csv(tmp_path / "results" / "wc_nerf" / "runs.csv")
    assert set(table["budget"]) == {"cpu"} and len(table) == 4  # the real runs only
    assert main([str(runs / "smoke"), "--out", str(tmp_path / "smoke"), "--budgets", "smoke"]) == 0
    table = pd.read_csv(tmp_path / "smoke" / "wc_nerf" / "runs.csv")
    assert set(table["budget"]) == {"smoke"} and len(table) == 2
    # a root of smoke runs alone, without asking for them: nothing to table, and it says so
    assert main([str(runs / "smoke"), "--out", str(tmp_path / "none")]) == 1


def test_a_presets_table_marks_the_points_its_budget_leaves_out(tmp_path):
    # wc_resnet at budget=cpu declares its CIFAR-100 points not run (protocol.cpu.not_run).
    runs = tmp_path / "runs"
    for norm in ("bn", "bn_wc"):
        for seed in (0, 1):
            make_run(runs, model="resnet18", norm=norm, seed=seed, experiment="wc_resnet",
                     budget="cpu", final_acc=50.0 + seed)
    assert report([str(runs), "--out", str(tmp_path / "results")]) == 0
    out = tmp_path / "results" / "wc_resnet"
    table = pd.read_csv(out / "table.csv").set_index(["model", "dataset"])
    assert table.loc[("resnet18", "cifar100"), "BN + WC"] == "no cpu budget"
    assert table.loc[("resnet18", "cifar10"), "BN + WC"] == "50.50 ± 0.71 (n=2)"
    assert "486 training images" in (out / "table.md").read_text()
    # the same runs at another budget: the preset declares nothing left out there
    for f in runs.rglob("config.yaml"):
        f.write_text(f.read_text().replace("budget: cpu", "budget: short"))
    assert report([str(runs), "--out", str(tmp_path / "short")]) == 0
    table = pd.read_csv(tmp_path / "short" / "wc_resnet" / "table.csv")
    assert list(table["dataset"]) == ["cifar10"]


def test_left_out_batch_sizes_are_marked_while_one_batch_size_has_runs(tmp_path):
    # enorm_resnet_small_batch at budget=cpu, only its batch-4 points finished so far.
    runs = tmp_path / "runs"
    for norm in ("bn", "enorm"):
        for seed in (0, 1):
            make_run(runs, norm=norm, seed=seed, batch_size=4, budget="cpu",
                     experiment="enorm_resnet_small_batch")
    assert report([str(runs), "--out", str(tmp_path / "results")]) == 0
    table = pd.read_csv(tmp_path / "results" / "enorm_resnet_small_batch" / "table.csv")
    rows = table.set_index("batch_size")
    assert sorted(rows.index) == [2, 4, 8, 32]
    assert rows.loc[2, "ENorm"] == "no cpu budget" and rows.loc[4, "ENorm"].endswith("(n=2)")


def _stored_in(run_dir: Path, **dataset) -> None:
    """Give a fabricated run's config the dataset keys a real one records."""
    f = run_dir / "config.yaml"
    config = yaml.safe_load(f.read_text())
    config["dataset"].update(dataset)
    f.write_text(yaml.safe_dump(config))


def test_image_folder_runs_are_named_after_their_folder_and_count_as_its_dataset(tmp_path):
    # The ImageNet small-batch study at budget=cpu runs on a real ImageNet subset
    # (`dataset=imagefolder dataset.root=.../imagenet-mini`).
    runs = tmp_path / "runs"
    for norm in ("bn", "gn", "enorm"):
        for seed in (0, 1):
            run = make_run(runs, dataset="imagefolder", norm=norm, seed=seed, batch_size=8, budget="cpu",
                           experiment="enorm_resnet_imagenet_small_batch", final_acc=40.0 + seed)
            _stored_in(run, root="../data/imagenet-mini")
    assert report([str(runs), "--out", str(tmp_path / "results")]) == 0
    out = tmp_path / "results" / "enorm_resnet_imagenet_small_batch"
    assert set(pd.read_csv(out / "table.csv")["dataset"]) == {"imagenet-mini"}
    assert set(pd.read_csv(out / "runs.csv")["dataset_file"]) == {"imagenet-mini"}
    claims = pd.read_csv(out / "claims.csv").set_index("claim_id")
    claim = claims.loc["enorm_small_batch_resnet18_imagenet"]
    assert claim["finished_runs"] == 6
    assert "dataset=imagefolder (imagenet-mini/, real imagenet images) counted as imagenet" in claim["note"]
    assert claims.loc["enorm_small_batch_resnet18_cifar10", "finished_runs"] == 0

    for f in runs.rglob("config.yaml"):  # a folder of other images counts as no named dataset
        f.write_text(f.read_text().replace("imagenet-mini", "flowers"))
    assert report([str(runs), "--out", str(tmp_path / "flowers")]) == 0
    out = tmp_path / "flowers" / "enorm_resnet_imagenet_small_batch"
    assert set(pd.read_csv(out / "table.csv")["dataset"]) == {"flowers"}
    assert pd.read_csv(out / "claims.csv")["finished_runs"].sum() == 0


def test_a_partial_rerun_carries_the_runs_it_did_not_redo_from_the_earlier_runs_csv(tmp_path):
    # A grid tabled once; then BN + WC alone is rerun (its defaults changed). The new
    # table takes BN + WC from the new run directories and BN and BN + WS from the earlier
    # runs.csv, each with its own commit; the old BN + WC rows are gone, not duplicated.
    old, new = tmp_path / "old", tmp_path / "new"
    for norm, acc in (("bn", 50.0), ("bn_ws", 52.0), ("bn_wc", 49.0)):
        for seed in (0, 1, 2):
            make_run(old, model="resnet18", norm=norm, seed=seed, experiment="wc_resnet",
                     budget="cpu", final_acc=acc + seed, commit="old1234")
    for seed in (0, 1, 2):
        make_run(new, model="resnet18", norm="bn_wc", seed=seed, experiment="wc_resnet",
                 budget="cpu", final_acc=60.0 + seed, commit="new5678")
    main = report
    out = tmp_path / "results"
    assert main([str(old), "--out", str(out)]) == 0
    prior = out / "wc_resnet" / "runs.csv"
    assert main([str(new), "--out", str(out), "--presets", "wc_resnet",
                 "--prior", str(prior)]) == 0
    runs = pd.read_csv(prior)
    assert len(runs) == 9 and runs.groupby("norm")["git_commit"].unique().map(list).to_dict() == {
        "bn": ["old1234"], "bn_ws": ["old1234"], "bn_wc": ["new5678"]}
    table = pd.read_csv(out / "wc_resnet" / "table.csv").set_index(["model", "dataset"])
    assert table.loc[("resnet18", "cifar10"), "BN + WC"] == "61.00 ± 1.00 (n=3)"
    assert table.loc[("resnet18", "cifar10"), "BN"] == "51.00 ± 1.00 (n=3)"
    # --prior belongs to one preset
    with pytest.raises(SystemExit):
        main([str(new), "--out", str(out), "--prior", str(prior)])


def test_a_searchs_trials_are_never_results(tmp_path, capsys):
    # A trial holds a validation split out of the training set: it chooses a rate, and
    # no door of the report counts it, even in the folder of the preset's own runs.
    runs = tmp_path / "runs"
    for seed in (0, 1):
        make_run(runs, norm="bn", seed=seed, experiment="wc_resnet", budget="cpu", final_acc=50.0)
    trial = make_run(runs, norm="bn", seed=0, experiment="wc_resnet", budget="cpu", lr=0.5, tag="_trial",
                     final_acc=1.0)
    config = yaml.safe_load((trial / "config.yaml").read_text())
    config["dataset"]["val_split"] = 0.1
    (trial / "config.yaml").write_text(yaml.safe_dump(config))
    assert report([str(runs), "--out", str(tmp_path / "results")]) == 0
    assert "1 run(s) with a validation split left out" in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "results" / "wc_resnet" / "table.csv").set_index(["model", "dataset"])
    assert table.loc[("resnet18", "cifar10"), "BN"] == "50.00 ± 0.00 (n=2)"
    assert len(pd.read_csv(tmp_path / "results" / "wc_resnet" / "runs.csv")) == 2


def test_the_tuned_protocol_tables_only_the_runs_at_each_points_searched_rate(tmp_path):
    # The shared-rate grid at lr 0.1; a search chose 0.1 for BN and 0.05 for BN + WS and
    # BN + WC; those two were trained at 0.05 (and BN + WC once more at 0.01, a stray
    # run). The tuned folder takes BN from the shared grid (the same rate), the others
    # at 0.05, and nothing at another rate; the shared folder is left as it was.
    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "results"
    for norm in ("bn", "bn_ws", "bn_wc"):
        for seed in (0, 1, 2):
            make_run(old, norm=norm, seed=seed, experiment="wc_resnet", budget="cpu", final_acc=50.0 + seed)
            make_run(new, norm=norm, seed=seed, experiment="wc_resnet", budget="cpu", lr=0.05, tag="_lr05",
                     final_acc=55.0 + seed, commit="new5678")
    make_run(new, norm="bn_wc", seed=0, experiment="wc_resnet", budget="cpu", lr=0.01, tag="_lr01", final_acc=1.0)
    assert report([str(old), "--out", str(out)]) == 0
    shared = (out / "wc_resnet" / "table.csv").read_text()
    search = tmp_path / "search.csv"
    pd.DataFrame({"experiment": "wc_resnet", "budget": "cpu", "model": "resnet18", "dataset": "cifar10",
                  "norm": ["bn", "bn_ws", "bn_wc"], "optim.lr": [0.1, 0.05, 0.05], "val_acc": 40.0}).to_csv(
        search, index=False)
    assert report([str(new), "--out", str(out), "--presets", "wc_resnet", "--tuned", str(search),
                   "--prior", str(out / "wc_resnet" / "runs.csv")]) == 0
    tuned = out / "wc_resnet" / "tuned"
    runs = pd.read_csv(tuned / "runs.csv")
    assert runs.groupby("norm")["lr"].unique().map(list).to_dict() == {
        "bn": [0.1], "bn_ws": [0.05], "bn_wc": [0.05]} and len(runs) == 9
    table = pd.read_csv(tuned / "table.csv").set_index(["model", "dataset"])
    assert table.loc[("resnet18", "cifar10"), "BN"] == "51.00 ± 1.00 (n=3) at lr 0.1"
    assert table.loc[("resnet18", "cifar10"), "BN + WC"] == "56.00 ± 1.00 (n=3) at lr 0.05"
    assert (tuned / "claims.csv").is_file() and (out / "wc_resnet" / "table.csv").read_text() == shared
    # a search.csv of another preset names no rate to train at
    other = tmp_path / "other.csv"
    pd.read_csv(search).assign(experiment="enorm_fc").to_csv(other, index=False)
    assert report([str(new), "--out", str(out), "--presets", "wc_resnet", "--tuned", str(other)]) == 1


def test_a_tuned_folder_grown_in_parts_carries_both_earlier_runs_csv_files(tmp_path):
    # Part one trained BN + WC at its searched 0.05 (BN's rate is the shared grid's 0.1);
    # its run directories are gone. Part two trains BN + WS at its 0.05: the tuned table
    # takes BN from the shared runs.csv, BN + WC from the tuned one, each run once.
    old, one, two, out = (tmp_path / n for n in ("old", "one", "two", "results"))
    for seed in (0, 1, 2):
        for norm in ("bn", "bn_ws", "bn_wc"):
            make_run(old, norm=norm, seed=seed, experiment="wc_resnet", budget="cpu", final_acc=50.0 + seed)
        make_run(one, norm="bn_wc", seed=seed, experiment="wc_resnet", budget="cpu", lr=0.05, tag="_lr05",
                 final_acc=56.0 + seed)
        make_run(two, norm="bn_ws", seed=seed, experiment="wc_resnet", budget="cpu", lr=0.05, tag="_lr05",
                 final_acc=57.0 + seed)
    assert report([str(old), "--out", str(out)]) == 0
    shared, tuned = out / "wc_resnet" / "runs.csv", out / "wc_resnet" / "tuned" / "runs.csv"
    search = tmp_path / "search.csv"
    pd.DataFrame({"experiment": "wc_resnet", "budget": "cpu", "model": "resnet18", "dataset": "cifar10",
                  "norm": ["bn", "bn_ws", "bn_wc"], "optim.lr": [0.1, 0.05, 0.05], "val_acc": 40.0}).to_csv(
        search, index=False)
    common = ["--out", str(out), "--presets", "wc_resnet", "--tuned", str(search), "--prior", str(shared)]
    assert report([str(one), *common]) == 0
    assert report([str(two), *common, "--prior", str(tuned)]) == 0
    runs = pd.read_csv(tuned)
    assert len(runs) == 9 and runs["run_dir"].is_unique
    assert runs.groupby("norm")["final_test_acc"].mean().to_dict() == {"bn": 51.0, "bn_wc": 57.0, "bn_ws": 58.0}
    with pytest.raises(SystemExit):  # every --prior file must exist
        report([str(two), *common, "--prior", str(tmp_path / "missing.csv")])
    # a search that chose the shared rate everywhere: the tuned folder is the shared runs,
    # from --prior alone (no run directory of the preset here, so no figure: the earlier
    # parts' figures, of runs the tables no longer hold, are removed)
    drawn = list(tuned.parent.glob("*.png"))
    pd.read_csv(search).assign(**{"optim.lr": 0.1}).to_csv(search, index=False)
    make_run(tmp_path / "other", norm="bn", experiment="wc_vit", budget="cpu")
    assert report([str(tmp_path / "other"), *common]) == 0
    assert sorted(pd.read_csv(tuned)["run_dir"]) == sorted(pd.read_csv(shared)["run_dir"])
    assert drawn and not list(tuned.parent.glob("*.png"))
    assert (out / "wc_resnet" / "tuned" / "claims.csv").is_file()


def test_the_tuned_protocol_tables_a_field_preset_by_its_searched_rates(tmp_path):
    # wc_nerf: the shared grid at the recipe's 5e-4; a search (on held-out training views,
    # val_psnr) chose 5e-4 for the plain MLP and 1e-3 for WC, which was trained at it.
    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "results"
    for norm in ("none", "wc"):
        for seed in (0, 1, 2):
            make_nerf_run(old, norm=norm, seed=seed, test_psnr=20.0 + seed)
            make_nerf_run(new, norm=norm, seed=seed, test_psnr=22.0 + seed, lr=1e-3)
    assert report([str(old), "--out", str(out)]) == 0
    search = tmp_path / "search.csv"
    pd.DataFrame({"experiment": "wc_nerf", "budget": "short", "model": "nerf", "dataset": "blender",
                  "norm": ["none", "wc"], "optim.lr": [5e-4, 1e-3], "val_psnr": 21.0}).to_csv(search, index=False)
    assert report([str(new), "--out", str(out), "--presets", "wc_nerf", "--tuned", str(search),
                   "--prior", str(out / "wc_nerf" / "runs.csv")]) == 0
    runs = pd.read_csv(out / "wc_nerf" / "tuned" / "runs.csv")
    assert runs.groupby("norm")["lr"].unique().map(list).to_dict() == {"none": [5e-4], "wc": [1e-3]}
    assert sorted(runs.loc[runs.norm == "wc", "final_test_psnr"]) == [22.0, 23.0, 24.0]
    table = (out / "wc_nerf" / "tuned" / "table.md").read_text()
    assert "at lr 0.001" in table and "at lr 0.0005" in table
    assert (out / "wc_nerf" / "tuned" / "claims.csv").is_file()


def test_every_door_judges_the_same_runs_alike(tmp_path, monkeypatch):
    # Runs on a CIFAR-10 subset file and on an ImageNet subset folder: `wcnorm report`
    # (a results folder) and `wcnorm table` (one preset's table and claims) label them
    # after their file or folder, count them as CIFAR-10 / ImageNet, and judge alike.
    runs = tmp_path / "runs"
    for i, norm in enumerate(("bn", "bn_ws", "bn_wc")):
        for seed in (0, 1, 2):
            run = make_run(runs, model="resnet18", dataset="npz", norm=norm, seed=seed,
                           experiment="wc_resnet", budget="cpu", final_acc=50.0 + 2 * i + seed / 3)
            _stored_in(run, path="../data/cifar10-partial.npz")
    for i, norm in enumerate(("bn", "gn", "enorm", "bn_enorm")):
        for seed in (0, 1):
            run = make_run(runs, dataset="imagefolder", norm=norm, seed=seed, batch_size=8, budget="cpu",
                           experiment="enorm_resnet_imagenet_small_batch", final_acc=40.0 - i + seed)
            _stored_in(run, root="../data/imagenet-mini")
    assert wcnorm(["report", str(runs), "--out", str(tmp_path / "results")]) == 0
    verdict = ["claim_id", "verdict", "numbers", "comparisons", "finished_runs", "note"]
    for preset, judged in (("wc_resnet", "wc2_resnet18_cifar10"),
                           ("enorm_resnet_imagenet_small_batch", "enorm_small_batch_resnet18_imagenet")):
        out = tmp_path / "table" / preset
        assert wcnorm(["table", str(runs), "--out", str(out), "--preset", preset]) == 0
        by_report = pd.read_csv(tmp_path / "results" / preset / "claims.csv")[verdict]
        by_table = pd.read_csv(out / "claims.csv")[verdict]
        pd.testing.assert_frame_equal(by_table, by_report)
        claim = by_table.set_index("claim_id").loc[judged]
        assert claim["finished_runs"] > 0 and claim["verdict"] != "not enough runs", claim
        assert set(pd.read_csv(out / "table.csv")["dataset"]) == set(
            pd.read_csv(tmp_path / "results" / preset / "table.csv")["dataset"])
    assert set(pd.read_csv(tmp_path / "table" / "wc_resnet" / "table.csv")["dataset"]) == {
        "cifar10-partial", "cifar100"}  # the CIFAR-100 points: "no cpu budget"
    # `wcnorm plot` draws the runs under the same labels (its curves' panel titles)
    drawn = []
    draw = plot.plot_curves
    monkeypatch.setattr(plot, "plot_curves", lambda curves, *a: drawn.append(curves) or draw(curves, *a))
    assert wcnorm(["plot", str(runs), "--out", str(tmp_path / "plots")]) == 0
    assert set(drawn[0]["dataset"]) == {"cifar10-partial", "imagenet-mini"}
    assert (tmp_path / "plots" / "curves_wc_resnet.png").is_file()


def test_the_earlier_script_is_the_report_under_its_old_arguments():
    # results/*/README.md quote `python scripts/make_tables.py --runs RUNS ...`
    spec = importlib.util.spec_from_file_location("make_tables", SCRIPTS / "make_tables.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main is report
    assert script.report_argv(["--runs", "runs/cpu", "--out", "results", "--presets", "wc_fc"]) == [
        "runs/cpu", "--out", "results", "--presets", "wc_fc"]
    assert script.report_argv(["--runs=r", "--budgets", "smoke"]) == ["r", "--budgets", "smoke"]
    assert script.report_argv(["--out", "x"]) == ["--out", "x"]  # the default runs folder
