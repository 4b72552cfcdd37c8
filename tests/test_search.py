"""The learning-rate search (`wcnorm train -m ... +search=lr`): one study per normalizer on
the validation split, trials that are ordinary runs (a rerun trains nothing), the table of
the best rates, what a diverged or failed trial counts as, the studies kept in Optuna's
storage, and the searches refused before their first trial."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import WCNORM, compose_cfg, wcnorm
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from wcnorm import cli
from wcnorm.errors import DivergedError
from wcnorm.outputs import run_dir_for, search_objective
from wcnorm.report.search_table import load_trials, search_tables, to_markdown
from wcnorm.report.search_table import main as search_main
from wcnorm.training.sweep import JobFailure, SweepCallback, job_failed

optuna = pytest.importorskip("optuna")
from optuna.distributions import FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from wcnorm.training.lr_search import (  # noqa: E402  (needs Optuna)
    SWEEPER,
    SpaceError,
    distribution,
    resume,
    split_sweep,
    trial_value,
    was_stopped,
)

TINY = ["dataset=synthetic", "model=enorm_fc", "dataset.image_size=8", "dataset.train_size=160",
        "dataset.test_size=16", "trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=16",
        "diagnostics.conditioning=false", "out_dir=out"]
# Two normalizers, two trials each, rates from a range where the tiny net cannot diverge.
SEARCH = ["train", "-m", "+search=lr", *TINY, "norm=bn,wc", "hydra.sweeper.n_trials=2",
          "optim.lr=tag(log,interval(0.001,0.01))"]


def _trials(root: Path) -> dict[Path, dict]:
    """run directory -> (norm, lr, val_split, objective, result.json mtime)"""
    found = {}
    for path in root.rglob("result.json"):
        result, cfg = json.loads(path.read_text()), yaml.safe_load((path.parent / "config.yaml").read_text())
        found[path.parent] = {"norm": cfg["norm"]["name"], "lr": cfg["optim"]["lr"],
                              "val_split": cfg["dataset"]["val_split"], "value": result.get(search_objective(result)),
                              "mtime": path.stat().st_mtime_ns}
    return found


@pytest.mark.slow
def test_a_search_tunes_each_normalizer_apart_and_a_rerun_trains_nothing(tmp_path):
    log = wcnorm(*SEARCH, cwd=tmp_path)
    trials = _trials(tmp_path / "out")
    assert sorted(t["norm"] for t in trials.values()) == ["bn", "bn", "wc", "wc"]
    assert all(0.001 <= t["lr"] <= 0.01 and t["val_split"] == 0.1 for t in trials.values())
    assert all(0 <= t["value"] <= 100 for t in trials.values())  # tuned on the validation split
    rates = {norm: sorted(t["lr"] for t in trials.values() if t["norm"] == norm) for norm in ("bn", "wc")}
    # Each normalizer has a study of its own, seeded alike: the same first proposals for both.
    assert len(set(rates["bn"])) == 2 and rates["bn"] == rates["wc"]
    assert "search: norm=bn: best optim.lr=" in log and "search: norm=wc: best optim.lr=" in log
    assert "sweep: all 4 jobs finished" in log

    # A trial is the plain run at its rate on that validation split: the same directory.
    some = next(iter(trials))
    lr = trials[some]["lr"]
    plain = compose_cfg([*TINY, f"norm={trials[some]['norm']}", f"optim.lr={lr}", "dataset.val_split=0.1"],
                        smoke=False)
    assert tmp_path / run_dir_for(plain) == some

    # The studies are kept (Optuna's storage): the same search again has all its trials and
    # launches none; one more trial per point adds one trial to each study, no more.
    assert (tmp_path / "out" / ".sweeps" / "studies.db").is_file()
    again = wcnorm(*SEARCH, cwd=tmp_path)
    assert "run directory" not in again and "epoch 1/1" not in again and "best optim.lr=" in again
    assert _trials(tmp_path / "out") == trials  # nothing trained or rewritten
    more = wcnorm(*[a.replace("n_trials=2", "n_trials=3") for a in SEARCH], cwd=tmp_path)
    assert more.count("epoch 1/1") == 2 and "trial" in more
    grown = _trials(tmp_path / "out")
    assert {k: v for k, v in grown.items() if k in trials} == trials and len(grown) == 6
    rates = {norm: sorted(t["lr"] for t in grown.values() if t["norm"] == norm) for norm in ("bn", "wc")}
    assert len(set(rates["bn"])) == 3  # a third rate, not one of the first two again
    for path in grown:  # leave the first search's four trials for the table below
        if path not in trials:
            shutil.rmtree(path)

    assert cli.main(["search", str(tmp_path / "out"), "--out", str(tmp_path / "res")]) == 0
    table = pd.read_csv(tmp_path / "res" / "search.csv")
    assert list(table["norm"]) == ["bn", "wc"] and list(table["trials"]) == [2, 2]
    for _, row in table.iterrows():
        mine = [t for t in trials.values() if t["norm"] == row["norm"]]
        best = max(t["value"] for t in mine)
        assert row["val_acc"] == pytest.approx(best, abs=0.01)
        assert any(t["value"] == best and row["optim.lr"] == pytest.approx(t["lr"], rel=1e-3) for t in mine)
        assert row["command"].startswith(f"wcnorm train -m model=enorm_fc dataset=synthetic norm={row['norm']} optim.lr=")
    assert len(pd.read_csv(tmp_path / "res" / "search_trials.csv")) == 4
    assert "optim.lr=" in (tmp_path / "res" / "search.md").read_text()


GRID = ["train", "-m", "+search=lr_grid", *TINY, "norm=bn,wc",
        "hydra.sweeper.sampler.search_space={optim.lr: [0.001, 0.003, 0.01]}", "hydra.sweeper.n_trials=3"]


@pytest.mark.slow
def test_a_grid_search_trains_every_rate_of_the_grid_once_for_every_normalizer(tmp_path):
    log = wcnorm(*GRID, cwd=tmp_path)
    trials = _trials(tmp_path / "out")
    rates = {norm: sorted(t["lr"] for t in trials.values() if t["norm"] == norm) for norm in ("bn", "wc")}
    assert rates == {"bn": [0.001, 0.003, 0.01], "wc": [0.001, 0.003, 0.01]}  # the same trials for each
    assert all(t["val_split"] == 0.1 for t in trials.values())
    assert "search: norm=bn: best optim.lr=" in log and "sweep: all 6 jobs finished" in log
    # a rerun trains nothing: the studies (named by their grid too) are found again
    again = wcnorm(*GRID, cwd=tmp_path)
    assert "epoch 1/1" not in again and _trials(tmp_path / "out") == trials


@pytest.mark.parametrize("overrides, searched, says", [
    (["hydra.sweeper.n_trials=7"], [], "n_trials=7: the grid has 6 settings"),
    (["hydra.sweeper.sampler.search_space={optim.lr: [0.5, 2.0]}", "hydra.sweeper.n_trials=2"], [],
     "the grid's 2.0 lie outside the searched interval"),
    ([], ["optim.weight_decay=tag(log,interval(1e-5,1e-3))"],
     "the grid sampler tries optim.lr, the search space is optim.lr, optim.weight_decay"),
])
def test_a_grid_that_does_not_fit_the_search_is_refused(overrides, searched, says):
    from hydra.utils import instantiate

    from wcnorm.training.lr_search import grid_problems, sampler_grid

    cfg = compose_cfg([*TINY, "+search=lr_grid", *overrides], smoke=False, return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    grid = sampler_grid(instantiate(sweeper.sampler))
    space, _ = split_sweep(OverridesParser.create().parse_overrides(
        [*(f"{k}={v}" for k, v in sweeper.params.items()), *searched]), OverridesParser.create())
    problems = grid_problems(grid, space, sweeper.n_trials)
    assert any(says in p for p in problems), problems


def test_the_grid_search_is_the_enorm_papers_grid_and_names_other_studies_than_tpe():
    from hydra.utils import instantiate

    from wcnorm.training.lr_search import sampler_grid, study_name

    cfg = compose_cfg([*TINY, "+search=lr_grid"], smoke=False, return_hydra_config=True)
    grid = sampler_grid(instantiate(cfg.hydra.sweeper.sampler))
    assert grid == {"optim.lr": [5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1]} and cfg.hydra.sweeper.n_trials == 6
    assert sampler_grid(optuna.samplers.TPESampler()) is None
    space, _ = split_sweep(OverridesParser.create().parse_overrides(["optim.lr=tag(log,interval(1e-4,1))"]),
                           OverridesParser.create())
    assert study_name(["norm=bn"], space, grid) != study_name(["norm=bn"], space)


def _trial_dir(root: Path, name: str, *, dataset="cifar10", norm="bn", lr=0.1, value=50.0, depth=None,
               val_split=0.1, finished=True, experiment="wc_resnet", metric="test_acc", batch_size=None) -> None:
    """A run directory as the trainer leaves it (only what the search table reads)."""
    d = root / name
    d.mkdir(parents=True)
    config = {"experiment": experiment, "budget": "short", "seed": 0, "out_dir": "runs/lr_search",
              "model": {"name": "resnet18", **({"depth": depth} if depth is not None else {})},
              "dataset": {"name": dataset, "num_classes": 100 if dataset == "cifar100" else 10, "val_split": val_split},
              "norm": {"name": norm, "weight": "wc" if norm.endswith("wc") else "none"},
              "optim": {"name": "sgd", "lr": lr, "weight_decay": 5e-4},
              "trainer": {"epochs": 15, **({"batch_size": batch_size} if batch_size is not None else {})}}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "metrics.csv").write_text("epoch,test_acc\n1,99.0\n")  # as result.json says
    if finished:
        objective = search_objective({"metric": metric})
        (d / "result.json").write_text(json.dumps({"status": "finished", "metric": metric, objective: value,
                                                   "wall_time_s": 30.0, "final_test_acc": 99.0, "config": config}))


def test_the_table_gives_each_grid_point_its_best_rate_and_the_command_for_the_preset(tmp_path):
    for dataset in ("cifar10", "cifar100"):
        for norm, best in (("bn", 0.05), ("bn_wc", 0.4)):
            for i, lr in enumerate((0.01, 0.05, 0.4, 0.9)):
                value = 80.0 if lr == best else 60.0 - i
                _trial_dir(tmp_path, f"{dataset}-{norm}-{i}", dataset=dataset, norm=norm, lr=lr, value=value)
    _trial_dir(tmp_path, "unfinished", norm="bn", lr=0.2, finished=False)  # diverged or running
    _trial_dir(tmp_path, "final-run", norm="bn", lr=0.05, value=99.0, val_split=0.0)  # not a trial
    _trial_dir(tmp_path, "tie", dataset="cifar100", norm="bn", lr=0.02, value=80.0)  # ties with 0.05: the lower rate
    _trial_dir(tmp_path, "other-preset", experiment="wc_vit", value=99.0)

    trials = load_trials(tmp_path, preset="wc_resnet")
    points, table = search_tables(trials)
    assert len(table) == 18 and "final-run" not in " ".join(table["run_dir"])
    assert list(zip(points["dataset"], points["norm"])) == [("cifar10", "bn"), ("cifar10", "bn_wc"),
                                                            ("cifar100", "bn"), ("cifar100", "bn_wc")]
    assert list(points["optim.lr"]) == [0.05, 0.4, 0.02, 0.4]
    # the search's cost: its trials' training time summed (17 finished trials of 30 s)
    assert table["wall_time_s"].sum() == 17 * 30.0
    assert "- cost: 8.5 minutes of training in all (17 trials timed, 30 s each" in to_markdown(
        points, table, [0.1], "wcnorm search")
    assert list(points["val_acc"]) == [80.0] * 4
    assert list(points["trials"]) == [5, 4, 5, 4] and list(points["finished"]) == [4, 4, 5, 4]
    # The preset's grid point at its rate: no validation split, no classes (they come with the dataset).
    assert points["command"][3] == ("wcnorm train -m experiment=wc_resnet budget=short model=resnet18 "
                                    "dataset=cifar100 norm=bn_wc optim.lr=0.4")


def test_a_point_the_grid_varies_below_a_group_is_named_in_the_command(tmp_path):
    for depth in (3, 5):
        for i, lr in enumerate((0.01, 0.1)):
            _trial_dir(tmp_path, f"d{depth}-{i}", depth=depth, lr=lr, value=50.0 + i * (depth - 4))
    points, _ = search_tables(load_trials(tmp_path))
    assert list(points["model.depth"]) == [3, 5] and list(points["optim.lr"]) == [0.01, 0.1]
    assert points["command"][1].endswith("norm=bn model.depth=5 optim.lr=0.1")


def test_a_search_run_in_parts_is_tabled_whole_with_the_earlier_parts_trials(tmp_path):
    # part one searched depths 3 and 5; its run directories are gone, its tables remain
    for norm in ("bn", "bn_wc"):  # two normalizers: their config keys differ
        for depth in (3, 5):
            for i, lr in enumerate((0.01, 0.1)):
                _trial_dir(tmp_path / "one", f"{norm}-d{depth}-{i}", norm=norm, depth=depth, lr=lr,
                           value=50.0 + i * (depth - 4) + (norm == "bn_wc"))
    assert search_main([str(tmp_path / "one"), "--out", str(tmp_path / "first")]) == 0
    # part two searches depths 5 (again) and 7
    for norm in ("bn", "bn_wc"):
        for depth in (5, 7):
            for i, lr in enumerate((0.01, 0.1)):
                _trial_dir(tmp_path / "two", f"{norm}-d{depth}-{i}", norm=norm, depth=depth, lr=lr,
                           value=60.0 - i * (depth - 4))
    prior = tmp_path / "first" / "search_trials.csv"
    assert search_main([str(tmp_path / "two"), "--out", str(tmp_path / "whole"), "--prior", str(prior)]) == 0
    points = pd.read_csv(tmp_path / "whole" / "search.csv")
    assert list(zip(points["model.depth"], points["norm"])) == [
        (3, "bn"), (3, "bn_wc"), (5, "bn"), (5, "bn_wc"), (7, "bn"), (7, "bn_wc")]
    assert list(points["optim.lr"]) == [0.01] * 6
    assert list(points["val_acc"]) == [50.0, 51.0, 60.0, 60.0, 60.0, 60.0]
    assert list(points["trials"]) == [2] * 6  # depth 5's part-one trials gave way to part two's
    assert points["command"][1].endswith("norm=bn_wc model.depth=3 optim.lr=0.01")
    trials = pd.read_csv(tmp_path / "whole" / "search_trials.csv")
    assert sorted(trials["run_dir"]) == sorted(f"{n}-d{d}-{i}" for n in ("bn", "bn_wc") for d in (3, 5, 7)
                                               for i in (0, 1))
    assert "- trials: 12 run directories, 12 finished" in (tmp_path / "whole" / "search.md").read_text()
    # a third part adds a rate at depth 7: the point keeps its other trials
    _trial_dir(tmp_path / "three", "bn-d7-2", norm="bn", depth=7, lr=0.5, value=70.0)
    assert search_main([str(tmp_path / "three"), "--out", str(tmp_path / "more"), "--prior",
                        str(tmp_path / "whole" / "search_trials.csv")]) == 0
    points = pd.read_csv(tmp_path / "more" / "search.csv").set_index(["model.depth", "norm"])
    assert points.loc[(7, "bn"), "trials"] == 3 and points.loc[(7, "bn"), "optim.lr"] == 0.5
    assert points.loc[(3, "bn_wc"), "trials"] == 2 and len(points) == 6
    # trials of another objective are not an earlier part of this search
    pd.read_csv(prior).rename(columns={"val_acc": "val_psnr"}).to_csv(tmp_path / "other.csv", index=False)
    assert search_main([str(tmp_path / "two"), "--out", str(tmp_path / "x"), "--prior", str(tmp_path / "other.csv")]) == 2


def test_a_narrowed_search_names_the_presets_swept_key_it_kept_one_value_of(tmp_path):
    """`-- trainer.batch_size=16` of enorm_resnet_small_batch's 4, 16, 64: the points, their
    rates and their commands still say batch 16, or a rate chosen at batch 16 would be
    taken for every batch size."""
    for norm in ("bn", "enorm"):
        for i, lr in enumerate((0.005, 0.05)):
            _trial_dir(tmp_path, f"{norm}-{i}", norm=norm, lr=lr, value=40.0 + i, batch_size=16,
                       experiment="enorm_resnet_small_batch")
    points, _ = search_tables(load_trials(tmp_path))
    assert list(points["trainer.batch_size"]) == [16, 16]
    assert points["command"][0].endswith("norm=bn trainer.batch_size=16 optim.lr=0.05")


def _ret(value) -> JobReturn:
    ret = JobReturn(status=JobStatus.COMPLETED)
    ret.return_value = value
    return ret


def test_the_objective_is_the_final_validation_value_of_the_runs_headline_metric():
    assert search_objective({"metric": "test_acc"}) == search_objective({}) == "final_val_acc"
    assert search_objective({"metric": "val_psnr"}) == "final_val_psnr"  # NeRF
    assert search_objective({"metric": "test_iou"}) == "final_val_iou"  # occupancy: never final_test_iou
    for metric, key, value in (("test_acc", "final_val_acc", 71.5), ("val_psnr", "final_val_psnr", 24.5),
                               ("test_iou", "final_val_iou", 0.875)):
        result = {"status": "finished", "metric": metric, key: value, "final_test_acc": 99.0,
                  "final_test_psnr": 99.0, "final_test_iou": 0.99}
        assert trial_value(_ret(result)) == (value, False)


def test_a_field_search_is_tabled_by_its_own_objective_and_mixed_objectives_are_refused(tmp_path):
    for norm, best in (("none", 5e-4), ("wc", 1e-3)):
        for lr in (5e-4, 1e-3, 5e-3):
            _trial_dir(tmp_path / "nerf", f"{norm}-{lr}", experiment="wc_nerf", dataset="blender", norm=norm,
                       lr=lr, value=25.0 if lr == best else 20.0, metric="val_psnr")
    points, table = search_tables(load_trials(tmp_path / "nerf"))
    assert list(points["optim.lr"]) == [5e-4, 1e-3] and list(points["val_psnr"]) == [25.0, 25.0]
    assert "val_acc" not in points and "val_psnr" in table
    assert "- value of a trial: the validation PSNR (dB) at the final epoch" in to_markdown(
        points, table, [0.1], "wcnorm search")
    _trial_dir(tmp_path / "nerf", "a-classifier", metric="test_acc")
    with pytest.raises(ValueError, match="different objectives .*give --preset"):
        load_trials(tmp_path / "nerf")
    assert len(load_trials(tmp_path / "nerf", preset="wc_nerf")) == 6


def test_a_diverged_trial_is_the_worst_value_and_a_failed_one_no_value():
    assert trial_value(_ret({"status": "finished", "final_val_acc": 71.5})) == (71.5, False)
    assert trial_value(_ret(job_failed(DivergedError("the training loss became nan")))) == (0.0, True)
    assert trial_value(_ret(JobFailure("dataset missing"))) == (None, False)
    assert trial_value(_ret({"status": "interrupted"})) == (None, False)
    # A trial that a signal stopped has no outcome: it is proposed again, not counted.
    assert was_stopped(_ret({"status": "interrupted"})) and was_stopped(_ret(JobFailure("x", interrupted=True)))
    assert not was_stopped(_ret(JobFailure("dataset missing"))) and not was_stopped(_ret({"status": "finished"}))
    with pytest.raises(RuntimeError):  # an exception that escaped the job is raised, as Hydra's sweepers do
        trial_value(JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("boom")))


@pytest.mark.parametrize("searched", [True, False])
def test_a_diverged_trial_does_not_fail_a_search_but_a_diverged_job_fails_a_sweep(tmp_path, caplog, searched):
    for num, status in enumerate(("finished", "diverged")):
        (tmp_path / str(num)).mkdir()
        (tmp_path / str(num) / "job.json").write_text(json.dumps(
            {"num": num, "overrides": [f"optim.lr={num}"], "status": status, "log": "job.log",
             "error": None if status == "finished" else "the training loss became nan"}))
    callback = SweepCallback()
    callback.jobs = None if searched else [["optim.lr=0"], ["optim.lr=1"]]  # None: not the basic sweeper
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    if searched:
        with caplog.at_level(logging.INFO, logger="wcnorm"):
            callback.on_multirun_end(config)
        assert "all 2 trials ended, 1 of them diverged" in caplog.text
    else:
        with pytest.raises(SystemExit):
            callback.on_multirun_end(config)


def test_search_lr_adds_nothing_to_a_run_but_the_validation_split_and_the_folder():
    searched = compose_cfg(["+search=lr"])
    plain = compose_cfg(["dataset.val_split=0.1", "out_dir=runs/lr_search"])
    assert OmegaConf.to_container(searched) == OmegaConf.to_container(plain)
    with initialize_config_module(config_module="wcnorm.conf", version_base="1.3"):
        sweeper = compose("train", overrides=["+search=lr"], return_hydra_config=True).hydra.sweeper
    assert sweeper._target_ == SWEEPER and sweeper.direction == "maximize"
    assert sweeper.params["optim.lr"].startswith("tag(log, interval(")
    assert sweeper.storage == "runs/lr_search/.sweeps/studies.db"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0


def test_hydra_finds_the_search_sweeper_by_its_plugin_scan():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    found = {f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Sweeper)}
    assert SWEEPER in found


def test_no_private_module_of_hydra_or_a_plugin_is_imported_and_nothing_is_planted():
    root = Path(__file__).resolve().parents[1]
    for path in [*(root / "wcnorm").rglob("*.py"), *(root / "hydra_plugins").rglob("*.py")]:
        text = path.read_text()
        assert not re.search(r"hydra\._internal|hydra_plugins\.\w+\._|from \._", text), path
        assert "sys.modules[" not in text, path  # no module planted


def test_a_search_without_optuna_says_what_to_install_and_one_without_m_refuses(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "experiment=demo", "+search=lr"]) == 2
    assert "add -m" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    assert cli.main(["train", "-m", "experiment=demo", "+search=lr"]) == 2
    err = capsys.readouterr().err
    assert "+search=lr" in err and "pip install 'wcnorm[search]'" in err and "pip install 'optuna>=5'" in err
    assert not list(tmp_path.iterdir())  # stopped before Hydra did anything


def test_the_sweep_splits_into_the_search_space_and_the_grid_of_the_first_seed():
    parser = OverridesParser.create()
    overrides = parser.parse_overrides(["norm=bn,bn_ws", "seed=range(2,5)", "optim.lr=tag(log,interval(1e-4,1))",
                                        "trainer.epochs=2", "norm=bn,bn_wc"])  # the command line's norm wins
    space, points = split_sweep(overrides, parser)
    assert {k: distribution(o) for k, o in space.items()} == {"optim.lr": FloatDistribution(1e-4, 1.0, log=True)}
    assert points == [["norm=bn", "seed=2", "trainer.epochs=2"], ["norm=bn_wc", "seed=2", "trainer.epochs=2"]]


@pytest.mark.parametrize("line, expected", [
    ("optim.lr=interval(0.01,0.5)", FloatDistribution(0.01, 0.5)),
    ("trainer.batch_size=tag(log,int,interval(16,256))", IntDistribution(16, 256, log=True)),
])
def test_an_interval_is_its_distribution(line, expected):
    assert distribution(OverridesParser.create().parse_overrides([line])[0]) == expected


@pytest.mark.parametrize("line, says", [
    ("optim.lr=tag(log,interval(0,1))", "must start above 0"),
    ("optim.lr=tag(log,interval(-1,1))", "must start above 0"),
    ("optim.lr=interval(0.5,0.1)", "is empty"),
])
def test_an_interval_that_is_no_space_is_refused(line, says):
    with pytest.raises(SpaceError, match=says):
        distribution(OverridesParser.create().parse_overrides([line])[0])


def test_a_stopped_trial_is_proposed_again_at_its_rate():
    """A trial that a signal (told as failed, no outcome) or a crash (left running) stopped
    is asked again with its parameters, so that its run resumes; once, and the trials with
    an outcome are kept as they are."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"optim.lr": FloatDistribution(1e-4, 1.0, log=True)}
    done = study.ask(space)
    done.set_user_attr("diverged", False)
    study.tell(done, 50.0)
    signalled, crashed = study.ask(space), study.ask(space)
    study.tell(signalled, state=TrialState.FAIL)  # no outcome attribute: stopped, not failed
    assert resume(study) == 2
    assert [t.state for t in study.trials[:3]] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert resume(study) == 0  # already proposed again: not twice
    again = [study.ask(space).params for _ in range(2)]
    assert again == [signalled.params, crashed.params]
    assert study.trials[0].value == 50.0


SMALL_SEARCH = ["train", "-m", "+search=lr", *TINY, "norm=bn", "hydra.sweeper.n_trials=1"]


@pytest.mark.slow
@pytest.mark.parametrize("extra, says", [
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0: must be a whole number >= 1"),
    (["optim.lr=tag(log,interval(0,1))"], "optim.lr: a log-scaled interval must start above 0"),
])
def test_a_search_that_cannot_work_is_refused_before_its_first_trial(tmp_path, extra, says):
    args = SMALL_SEARCH
    out = wcnorm(*args, *extra, cwd=tmp_path, status=1)
    assert "this search cannot start, so no trial starts" in out and says in out, out
    assert "run directory" not in out
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob("config.yaml"))


@pytest.mark.slow
def test_a_signal_stops_a_search_and_the_rerun_resumes_its_study(tmp_path):
    """The trial that was training resumes from its checkpoint at its rate, and the study
    keeps its trials: the rerun trains only what is missing."""
    args = ["train", "-m", "+search=lr", *TINY, "dataset.train_size=2048", "trainer.epochs=2", "norm=bn,wc",
            "hydra.sweeper.n_trials=2", "optim.lr=tag(log,interval(0.001,0.01))"]
    env = {"PATH": str(Path(WCNORM).parent) + ":/usr/bin:/bin", "CI": "1", "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "search.log", "w") as out:
        proc = subprocess.Popen([WCNORM, *args], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
        deadline = time.monotonic() + 240
        while not list((tmp_path / "out").rglob("last.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "search.log").read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=240) == 128 + signal.SIGTERM.value, (tmp_path / "search.log").read_text()
    log = (tmp_path / "search.log").read_text()
    assert "sweep: stopped by SIGTERM" in log and "not started" in log
    [stopped] = [p.parent for p in (tmp_path / "out").rglob("last.pt") if not (p.parent / "result.json").exists()]
    stopped_lr = yaml.safe_load((stopped / "config.yaml").read_text())["optim"]["lr"]

    again = wcnorm(*args, cwd=tmp_path)
    assert again.count("1 stopped trial(s) proposed again at their rates") == 2  # bn: interrupted, wc: not started
    assert again.count("resumed from") == 1 and str(stopped.name) in again
    trials = _trials(tmp_path / "out")
    assert len(trials) == 4 and all(t["value"] is not None for t in trials.values())
    assert trials[stopped]["lr"] == stopped_lr
    assert "already finished" not in again  # the finished trials were not launched again


@pytest.mark.slow
def test_a_search_whose_trials_stop_early_ends_instead_of_asking_forever(tmp_path):
    out = wcnorm(*SMALL_SEARCH, "hydra.sweeper.n_trials=3", "trainer.epochs=2", "trainer.stop_after=1", cwd=tmp_path)
    assert "1 trials stopped before their last epoch" in out and "run the same command again" in out
    assert len(list((tmp_path / "out").rglob("last.pt"))) == 1 and not list(tmp_path.rglob("result.json"))
