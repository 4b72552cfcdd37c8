"""The paper presets (conf/experiment/) and the budget group (conf/budget/).

Every preset composes at every budget, every point of its sweep grid is a valid
override of the real config, the budget numbers reach the config and the sweeper,
and one grid point per preset trains at `budget=smoke` on synthetic data. At
`budget=cpu`, with the data scripts/run_cpu_budget.sh adds, the CNN and ViT presets
run their grids on the real subsets in ../shared/data, or refuse with their reason.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import wcnorm
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from wcnorm import presets
from wcnorm.data import load_dataset
from wcnorm.errors import ConfigError
from wcnorm.outputs import config_digest
from wcnorm.training.config import validate
from wcnorm.training.train import train

EXPERIMENTS = files("wcnorm.conf") / "experiment"
PRESETS = sorted(p.name[:-5] for p in EXPERIMENTS.iterdir()
                 if p.name.endswith(".yaml") and p.name != "demo.yaml")
BUDGETS = ("smoke", "short", "paper")
REQUIRED = {"wc_googlenet_c100", "wc_resnet", "wc_googlenet", "wc_densenet", "wc_vit",
            "wc_vit_imagenet", "enorm_fc", "enorm_fullconv", "enorm_resnet_small_batch",
            "enorm_resnet_imagenet_small_batch"}


@functools.cache
def _compose(name: str, overrides: tuple[str, ...]):
    with initialize_config_module(config_module="wcnorm.conf", version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}", *overrides], return_hydra_config=True)


def compose_preset(name: str, *overrides: str):
    """The config `wcnorm train experiment=NAME OVERRIDES` runs, with its hydra node
    (a fresh copy: composing is the slow part of these tests, so it is cached)."""
    return copy.deepcopy(_compose(name, overrides))


def grid(cfg, *command: str) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of `hydra.sweeper.params` (seed included)
    and the command line `wcnorm train -m COMMAND`, whose keys replace the params' own:
    the product of every parameter's values, in the order the parameters are listed."""
    assert cfg.hydra.sweeper._target_.endswith(".BasicSweeper")  # the sweeper whose expansion this is
    params = {k: f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()}
    params |= {o.split("=", 1)[0]: o for o in command}
    axes = []
    for o in OverridesParser.create().parse_overrides(list(params.values())):
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        axes.append([f"{key}={v}" for v in values])
    return [list(job) for job in itertools.product(*axes)]


def without_seed(jobs: list[list[str]]) -> list[list[str]]:
    out = []
    for job in jobs:
        point = [o for o in job if not o.startswith("seed=")]
        if point not in out:
            out.append(point)
    return out


def task(cfg):
    """The job config without the hydra node, as `train` receives it."""
    cfg = cfg.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# ----------------------------------------------------------------------------- composition


def test_every_paper_preset_exists_and_is_global():
    assert REQUIRED <= set(PRESETS)
    for name in PRESETS:
        text = (EXPERIMENTS / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_defaults_to_the_paper_budget(name):
    cfg = compose_preset(name)
    assert cfg.experiment == name and cfg.out_dir == f"runs/{name}"
    assert cfg.budget == "paper"
    assert cfg.trainer.epochs == cfg.protocol.paper.epochs
    seeds = sorted({int(o.split("=")[1]) for job in grid(cfg) for o in job if o.startswith("seed=")})
    assert seeds == list(range(cfg.protocol.paper.seeds))


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_and_validates_at_every_budget(name, budget):
    cfg = compose_preset(name, f"budget={budget}")
    validate(task(cfg))
    assert cfg.budget == budget
    jobs = grid(cfg)
    seeds = sorted({o for job in jobs for o in job if o.startswith("seed=")})
    t = cfg.trainer
    if budget == "smoke":
        assert seeds == ["seed=0"]
        assert (t.epochs, t.limit_batches, t.limit_eval_batches, t.device) == (1, 2, 2, "cpu")
    else:
        p = cfg.protocol[budget]
        assert seeds == [f"seed={s}" for s in range(p.seeds)]
        assert t.epochs == p.epochs
        assert t.limit_batches == p.get("limit_batches")
        assert t.limit_eval_batches == p.get("limit_eval_batches")
    # The budget leaves the grid itself alone: the same points at every budget.
    assert without_seed(jobs) == without_seed(grid(compose_preset(name)))


def sweep_values(cfg) -> list[str]:
    """Every value of every sweep parameter but the seed, as single overrides."""
    return sorted({o for job in grid(cfg) for o in job if not o.startswith("seed=")})


# Every preset's whole grid composed is seconds a preset: one stays in the quick loop.
QUICK_PRESET = "wc_variants"


@pytest.mark.parametrize("name", [p if p == QUICK_PRESET else pytest.param(p, marks=pytest.mark.slow)
                                  for p in PRESETS])
def test_every_sweep_value_is_a_valid_override_of_the_real_config(name):
    """One composed config per sweep value (the full products are large; each value is
    an override of the real config, and composing all of them is what fails if one is
    not). The grid's points are the product, counted here."""
    cfg = compose_preset(name)
    values = sweep_values(cfg)
    assert values, f"{name} defines no sweep"
    keys = {o.split("=", 1)[0] for o in values}
    assert len(without_seed(grid(cfg))) == math.prod(
        sum(o.startswith(f"{k}=") for o in values) for k in keys)
    for o in values:
        job = compose_preset(name, o)
        validate(task(job))
        key, value = o.split("=", 1)
        got = OmegaConf.select(job, f"{key}.name" if key in ("model", "dataset", "norm") else key)
        assert str(got) == value, (name, o, got)


def test_a_command_line_override_beats_the_budget_and_the_preset():
    cfg = compose_preset("enorm_fc", "budget=smoke", "trainer.epochs=3", "optim.lr=0.02")
    assert (cfg.trainer.epochs, cfg.optim.lr, cfg.budget) == (3, 0.02, "smoke")


# ----------------------------------------------------------------------------- learning rates


# The ENorm authors' initial learning rates (methods.md section 2); GN and WN + BN
# are unknown and set to 0.1 by the preset.
ENORM_FC_LR = [
    ("none", 1, 0.1), ("none", 7, 0.1), ("none", 9, 0.05), ("none", 19, 0.05),
    ("bn", 1, 0.1), ("bn", 19, 0.1),
    ("enorm", 1, 0.05), ("enorm", 15, 0.05), ("enorm", 17, 0.01), ("enorm", 19, 0.01),
    ("bn_enorm", 3, 0.1), ("bn_enorm", 19, 0.1),
    ("gn", 5, 0.1), ("bn_wn", 11, 0.1),
]


@pytest.mark.parametrize("norm,depth,lr", ENORM_FC_LR)
def test_enorm_fc_uses_the_authors_lr_per_method_and_depth(norm, depth, lr):
    cfg = compose_preset("enorm_fc", f"norm={norm}", f"model.depth={depth}")
    assert cfg.optim.lr == lr
    assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.sched.name) == (0.0, 1e-3, "linear")
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.norm.enorm.c) == (256, 60, 1.2)


def test_enorm_fc_lr_holds_at_every_grid_point():
    """The lookup depends only on norm.name and model.depth: set them on one composed
    config and read the interpolated lr for all 60 (method, depth) points."""
    cfg = compose_preset("enorm_fc")
    points = without_seed(grid(cfg))
    assert len(points) == 60
    for point in points:
        job = dict(o.split("=", 1) for o in point)
        n, d = job["norm"], int(job["model.depth"])
        cfg.norm.name, cfg.model.depth = n, d
        expected = {"none": 0.1 if d <= 7 else 0.05, "enorm": 0.05 if d <= 15 else 0.01}.get(n, 0.1)
        assert cfg.optim.lr == expected, point


@pytest.mark.parametrize("name,base", [("enorm_resnet_small_batch", 128),
                                       ("enorm_resnet_imagenet_small_batch", 256)])
def test_small_batch_lr_scales_linearly_with_the_batch(name, base):
    cfg = compose_preset(name)
    batches = [int(o.split("=")[1]) for o in sweep_values(cfg) if o.startswith("trainer.batch_size=")]
    assert min(batches) <= 8 and max(batches) == 64
    for b in batches:
        cfg.trainer.batch_size = b
        assert cfg.optim.lr == pytest.approx(0.1 * b / base)
    assert compose_preset(name, f"trainer.batch_size={batches[0]}").optim.lr == pytest.approx(
        0.1 * batches[0] / base)
    cfg.trainer.batch_size = 24  # not in the table: no silent fallback
    assert cfg.optim.lr is None


# ----------------------------------------------------------------------------- the sweeper


@pytest.mark.slow
def test_the_real_sweeper_expands_the_budget_seeds(tmp_path):
    """`hydra.sweeper.params.seed` is an interpolation of the preset's protocol: the
    real `wcnorm train -m` must resolve it (2 seeds here) and record the budget."""
    args = ["train", "-m", "experiment=enorm_fc", "budget=short", "protocol.short.seeds=2",
            "model.depth=1", "norm=bn", "dataset=synthetic", "dataset.train_size=32",
            "dataset.test_size=16", "trainer.epochs=1", "trainer.batch_size=16",
            "trainer.limit_batches=1", "trainer.device=cpu", "out_dir=out"]
    wcnorm(*args, cwd=tmp_path)
    results = sorted((tmp_path / "out").rglob("result.json"))
    assert [r.parent.name.split("-")[0] for r in results] == ["seed0", "seed1"]
    for r in results:
        res = json.loads(r.read_text())
        assert res["config"]["budget"] == "short" and res["config"]["experiment"] == "enorm_fc"
        assert yaml.safe_load((r.parent / "config.yaml").read_text())["budget"] == "short"


# ----------------------------------------------------------------------------- smoke runs


def synthetic_for(cfg) -> list[str]:
    """`dataset=synthetic` shaped like the preset's dataset (few, small images)."""
    d = cfg.dataset
    size = d.image_size
    classes = d.num_classes or 10
    return ["dataset=synthetic", f"dataset.image_size={size}", f"dataset.num_classes={classes}",
            f"dataset.train_size={64 if size <= 64 else 8}", f"dataset.test_size={32 if size <= 64 else 4}"]


def first_point(cfg) -> list[str]:
    return [o for o in without_seed(grid(cfg))[0] if not o.startswith("dataset=")]


FIELD_PRESETS = ("wc_nerf", "wc_shape")  # neural fields: real scenes and shapes, no image stand-in


@pytest.mark.slow
@pytest.mark.parametrize("name", FIELD_PRESETS)
def test_one_grid_point_of_every_field_preset_runs_at_smoke_budget(name, tmp_path, shared_data):
    base = compose_preset(name, "budget=smoke")
    overrides = ["budget=smoke", *first_point(base), f"out_dir={tmp_path}"]
    result = train(task(compose_preset(name, *overrides)))
    assert result["status"] == "finished", result
    run = Path(result["run_dir"])
    assert result["metric"] in ("val_psnr", "test_iou") and f"final_{result['metric']}" in result
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["budget"] == "smoke" and saved["experiment"] == name


@pytest.mark.slow
@pytest.mark.parametrize("name", [p for p in PRESETS if p not in FIELD_PRESETS])
def test_one_grid_point_of_every_preset_runs_at_smoke_budget(name, tmp_path):
    base = compose_preset(name, "budget=smoke")
    point = first_point(base)
    # Leaner than the smoke budget itself (whose numbers the composition test checks):
    # one training and one test batch of at most 8, so the whole file stays fast.
    overrides = ["budget=smoke", *point, *synthetic_for(base), f"out_dir={tmp_path}",
                 "trainer.limit_batches=1", "trainer.limit_eval_batches=1", "trainer.eval_batch_size=8"]
    if not any(o.startswith("trainer.batch_size=") for o in point):
        overrides.append("trainer.batch_size=8")
    if base.dataset.image_size > 64:
        # torchvision's ImageNet-size models at 224 px on the CPU: the smallest batch and
        # no per-layer SVDs (a minute for ViT-B/16's 148 matrices).
        overrides += ["trainer.batch_size=2", "trainer.eval_batch_size=2", "diagnostics.conditioning=false"]
    cfg = task(compose_preset(name, *overrides))
    result = train(cfg)
    assert result["status"] == "finished", result
    run = Path(result["run_dir"])
    assert json.loads((run / "result.json").read_text())["config"]["budget"] == "smoke"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["budget"] == "smoke" and saved["experiment"] == name


# ----------------------------------------------------------------------------- budget=cpu

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
# The presets with a CPU budget (conf/budget/cpu.yaml) on a real subset, each with the
# dataset of its grid that the subset stands in for, as the preset declares it
# (`protocol.cpu.stand_in`, which scripts/run_cpu_budget.sh adds).
CPU_PRESETS = {name: stand_in["replaces"] for name in PRESETS
               if (stand_in := presets.stand_in(name, "cpu"))}
# The presets that refuse it, with words their stated reason must contain.
CPU_REFUSED = {"wc_googlenet_c100": "486 CIFAR-100 training images", "wc_vit_imagenet": "ViT-B/16"}
# Each subset's (train, test, classes) counts.
SUBSET_SIZES = {"cifar10": (5170, 1017, 10), "imagenet": (1000, 500, 10)}


def stand_in_location(name: str) -> tuple[str, str]:
    """The dataset group that loads a preset's CPU subset, and its file or folder in the
    shared data folder, as declared."""
    spec = presets.stand_in(name, "cpu")
    return spec["dataset"], spec.get("path") or spec["root"]


STUB = """#!/usr/bin/env bash
echo "$OMP_NUM_THREADS | $*" >> "$STUB_LOG"
[[ " $* " != *" experiment=${FAIL:-none} "* ]]
"""


def run_script(tmp_path, *presets, **env):
    """scripts/run_cpu_budget.sh with a stand-in `wcnorm` that records its arguments:
    (the finished process, one line per call: `OMP_NUM_THREADS | arguments`)."""
    (tmp_path / "wcnorm").write_text(STUB)
    (tmp_path / "wcnorm").chmod(0o755)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    env = {"PATH": "/usr/bin:/bin", "BIN": str(tmp_path), "PYTHON": sys.executable,
           "STUB_LOG": str(log), **env}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_cpu_budget.sh"), *presets],
                          capture_output=True, text=True, timeout=60, env=env)
    return proc, log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def cpu_command(tmp_path_factory) -> dict[str, list[str]]:
    """The overrides the script gives `wcnorm train -m` for each preset (one job at a time)."""
    proc, calls = run_script(tmp_path_factory.mktemp("script"), *CPU_PRESETS, *CPU_REFUSED, JOBS="1")
    assert proc.returncode == 0, proc.stderr
    commands = [call.split(" | ", 1)[1].split() for call in calls]
    assert all(c[:2] == ["train", "-m"] for c in commands)
    return {c[2].removeprefix("experiment="): c[2:] for c in commands}


def data_location(d) -> str:
    return d.path if d.name == "npz" else d.root


def test_every_preset_has_a_cpu_budget_or_refuses_it():
    assert REQUIRED <= set(CPU_PRESETS) | set(CPU_REFUSED)
    for name in REQUIRED:
        assert "cpu" in compose_preset(name).protocol, name


@pytest.mark.parametrize("name", sorted(CPU_PRESETS))
def test_every_cpu_preset_composes_on_the_real_data_with_three_seeds(name, cpu_command):
    command = cpu_command[name]
    assert command[:2] == [f"experiment={name}", "budget=cpu"]
    cfg = compose_preset(name, *command[1:])
    validate(task(cfg))
    p, t = cfg.protocol.cpu, cfg.trainer
    assert cfg.budget == "cpu" and (t.epochs, t.device) == (p.epochs, "cpu")
    assert (t.limit_batches, t.limit_eval_batches) == (p.get("limit_batches"), p.get("limit_eval_batches"))
    jobs = grid(cfg, *command[1:])
    assert p.seeds >= 3 and sorted({o for job in jobs for o in job if o.startswith("seed=")}) == [
        f"seed={s}" for s in range(p.seeds)]
    # The subset in ../shared/data from the repository root, for every job.
    group, location = stand_in_location(name)
    assert cfg.dataset.name == group and all(f"dataset={group}" in job for job in jobs)
    assert (REPO / data_location(cfg.dataset)).resolve() == (SHARED / location).resolve()
    if "width" in cfg.model:  # every model but the FC net, which has no width option
        assert cfg.model.width == p.width < 1
    else:
        assert "width" not in p


def cpu_points(name: str, command: list[str]) -> list[tuple[str, ...]]:
    """The grid's points at budget=cpu: each job without its seed and the overrides that
    every job shares (budget, data, out_dir)."""
    jobs = grid(compose_preset(name, *command[1:]), *command[1:])
    shared = {o.split("=", 1)[0] for o in command}
    return sorted({tuple(o for o in job if o.split("=", 1)[0] not in shared | {"seed"}) for job in jobs})


# The grid keys a `protocol.cpu` may narrow to fewer values, with the sweep key each narrows.
NARROWED = {"batch_sizes": "trainer.batch_size", "depths": "model.depth"}


def presets_points_on_its_subset(name: str) -> list[tuple[str, ...]]:
    """The preset's own grid (budget=paper) on the dataset its subset stands in for, on
    the batch sizes (`protocol.cpu.batch_sizes`) and depths (`depths`) the budget keeps."""
    cpu = compose_preset(name, "budget=cpu").protocol.cpu
    kept = {key: str(cpu[narrow]).split(",") for narrow, key in NARROWED.items() if narrow in cpu}
    keep = set()
    for point in without_seed(grid(compose_preset(name))):
        job = dict(o.split("=", 1) for o in point)
        if job.get("dataset", CPU_PRESETS[name]) != CPU_PRESETS[name]:
            continue
        if any(job[key] not in values for key, values in kept.items()):
            continue
        keep.add(tuple(o for o in point if not o.startswith("dataset=")))
    return sorted(keep)


@pytest.mark.parametrize("name", sorted(CPU_PRESETS))
def test_the_cpu_grid_is_the_presets_grid_on_its_subset(name, cpu_command):
    points = cpu_points(name, cpu_command[name])
    assert points == presets_points_on_its_subset(name)
    # The same normalizations and models as the preset's: only datasets and batch sizes shrink.
    paper = sweep_values(compose_preset(name))
    for key in ("norm=", "model="):
        assert {o for point in points for o in point if o.startswith(key)} == {o for o in paper if o.startswith(key)}


def grid_values(name: str, key: str) -> set[str]:
    """The values `key` takes in the preset's own grid (budget=paper)."""
    return {o.split("=", 1)[1] for point in without_seed(grid(compose_preset(name)))
            for o in point if o.startswith(f"{key}=")}


@pytest.mark.parametrize("name", sorted(CPU_PRESETS))
def test_what_a_cpu_grid_leaves_out_is_declared_for_its_tables(name):
    # `wcnorm report` writes each declared point's rows, every cell "no cpu budget".
    cpu = compose_preset(name, "budget=cpu").protocol.cpu
    declared = cpu.get("not_run") or {}
    datasets = grid_values(name, "dataset") - {CPU_PRESETS[name]}
    assert {k.removeprefix("dataset=") for k in declared if k.startswith("dataset=")} == datasets
    if "batch_sizes" in cpu:
        sizes = grid_values(name, "trainer.batch_size") - set(str(cpu.batch_sizes).split(","))
        assert sizes and "batch_size=" + ",".join(sorted(sizes, key=int)) in declared
    assert all(len(reason) > 20 for reason in declared.values())  # a reason, not a flag


def test_the_small_batch_cpu_grid_keeps_small_and_large_batches(cpu_command):
    points = cpu_points("enorm_resnet_small_batch", cpu_command["enorm_resnet_small_batch"])
    batches = sorted({int(o.split("=")[1]) for point in points for o in point if o.startswith("trainer.batch_size=")})
    assert len(batches) >= 2 and batches[0] <= 4 and batches[-1] == 64  # BN's small-batch regime and its usual one


@pytest.mark.parametrize("name", ["enorm_fc", "wc_fc"])
def test_the_fc_cpu_grids_keep_shallow_and_deep_nets(name, cpu_command):
    points = cpu_points(name, cpu_command[name])
    depths = sorted({int(o.split("=")[1]) for point in points for o in point if o.startswith("model.depth=")})
    assert depths == [1, 3, 7, 15]  # the same depths in both studies, the paper's deepest nets left out


@pytest.mark.parametrize("name", sorted(CPU_REFUSED))
def test_a_preset_without_a_cpu_budget_refuses_it_with_its_reason(name, cpu_command):
    assert cpu_command[name] == [f"experiment={name}", "budget=cpu", f"out_dir=runs/cpu/{name}"]  # no subset
    cfg = compose_preset(name, "budget=cpu")
    reason = cfg.protocol.cpu.epochs
    assert isinstance(reason, str) and reason.startswith("none: ") and CPU_REFUSED[name] in reason
    assert len(grid(cfg)) >= 1  # a sweep has jobs, and each one fails with the reason
    with pytest.raises(ConfigError, match=re.escape(reason)):
        validate(task(cfg))


@pytest.mark.shared_data
@pytest.mark.parametrize("subset", sorted(SUBSET_SIZES))
def test_the_cpu_subsets_are_the_real_data(subset, shared_data, cpu_command, monkeypatch):
    monkeypatch.chdir(REPO)  # the script's paths are relative to the repository root
    name = next(n for n, d in CPU_PRESETS.items() if d == subset)
    d = load_dataset(compose_preset(name, *cpu_command[name][1:]).dataset)
    assert (len(d.train), len(d.test), d.num_classes) == SUBSET_SIZES[subset]


@pytest.mark.slow
@pytest.mark.shared_data
def test_one_cpu_budget_run_trains_on_the_cifar10_subset(shared_data, cpu_command, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    command = cpu_command["wc_resnet"][1:]
    point = cpu_points("wc_resnet", cpu_command["wc_resnet"])[0]
    cfg = task(compose_preset("wc_resnet", *command, *point, f"out_dir={tmp_path}", "trainer.epochs=1",
                              "trainer.limit_batches=1", "trainer.limit_eval_batches=1"))
    result = train(cfg)
    assert result["status"] == "finished", result
    saved = yaml.safe_load((Path(result["run_dir"]) / "config.yaml").read_text())
    assert saved["budget"] == "cpu" and Path(saved["dataset"]["path"]).name == "cifar10-partial.npz"


# ----------------------------------------------------------------------------- scripts/run_cpu_budget.sh


def test_the_cpu_script_runs_each_presets_sweep_two_at_a_time_on_its_subset(tmp_path):
    proc, calls = run_script(tmp_path, "wc_vit", "enorm_resnet_imagenet_small_batch", "wc_nerf")
    assert proc.returncode == 0, proc.stderr
    two = "hydra/launcher=local_parallel hydra.launcher.n_jobs=2"
    assert calls == [
        "1 | train -m experiment=wc_vit budget=cpu out_dir=runs/cpu/wc_vit dataset=npz "
        f"dataset.path=../shared/data/cifar10-partial.npz {two}",
        "1 | train -m experiment=enorm_resnet_imagenet_small_batch budget=cpu "
        "out_dir=runs/cpu/enorm_resnet_imagenet_small_batch dataset=imagefolder "
        f"dataset.root=../shared/data/imagenet-mini dataset.image_size=64 {two}",
        f"1 | train -m experiment=wc_nerf budget=cpu out_dir=runs/cpu/wc_nerf {two}",  # its own data
    ]


def test_the_cpu_script_takes_the_data_folder_output_and_jobs(tmp_path):
    proc, calls = run_script(tmp_path, "wc_vit", DATA="/data/subsets", OUT="elsewhere", JOBS="1")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["1 | train -m experiment=wc_vit budget=cpu out_dir=elsewhere/wc_vit dataset=npz "
                     "dataset.path=/data/subsets/cifar10-partial.npz"]


@pytest.mark.slow  # the script in a subprocess, several presets
def test_the_cpu_script_runs_every_preset_and_fails_if_one_failed(tmp_path):
    proc, calls = run_script(tmp_path, "wc_nerf", "wc_vit", FAIL="wc_nerf")
    assert proc.returncode == 1 and "failed: wc_nerf" in proc.stderr
    assert [c.split("experiment=")[1].split()[0] for c in calls] == ["wc_nerf", "wc_vit"]
    # a name that is no preset: said, nothing trained for it, the others run
    proc, calls = run_script(tmp_path, "nosuch", "wc_vit")
    assert proc.returncode == 1 and "no preset 'nosuch'" in proc.stderr and "failed: nosuch" in proc.stderr
    assert [c.split("experiment=")[1].split()[0] for c in calls] == ["wc_vit"]
    assert run_script(tmp_path)[0].returncode == 2  # no preset: usage


@pytest.mark.slow  # the script in a subprocess, several presets
def test_the_cpu_script_runs_the_tuned_protocol_search_table_then_the_rates_not_yet_trained(tmp_path):
    # The stand-in `wcnorm search` writes a search.csv: BN at the shared grid's rate (its
    # runs are in the shared runs.csv, so not trained again), BN + WC at another rate.
    results = tmp_path / "res"
    (results / "wc_fc").mkdir(parents=True)
    pd.DataFrame({"experiment": "wc_fc", "budget": "cpu", "model": "enorm_fc", "dataset": "npz",
                  "norm": ["bn"], "seed": 0, "depth": 3, "lr": 0.1}).to_csv(results / "wc_fc" / "runs.csv", index=False)
    search = pd.DataFrame({"experiment": "wc_fc", "budget": "cpu", "model": "enorm_fc", "dataset": "npz",
                           "norm": ["bn", "bn_wc"], "model.depth": 3, "optim.lr": [0.1, 0.005]})
    search["command"] = [f"wcnorm train -m experiment=wc_fc budget=cpu model=enorm_fc dataset=npz norm={n} "
                         f"model.depth=3 optim.lr={lr}" for n, lr in zip(search["norm"], search["optim.lr"])]
    search.to_csv(tmp_path / "search.csv", index=False)
    # an earlier part searched and trained BN + GN at 0.05: its trials are tabled again, its runs not retrained
    (results / "wc_fc" / "tuned").mkdir()
    (results / "wc_fc" / "tuned" / "search_trials.csv").write_text("norm,optim.lr,val_acc\nbn_gn,0.05,40.0\n")
    pd.DataFrame({"experiment": "wc_fc", "budget": "cpu", "model": "enorm_fc", "dataset": "npz", "norm": ["bn_gn"],
                  "seed": 0, "depth": 3, "lr": 0.05}).to_csv(results / "wc_fc" / "tuned" / "runs.csv", index=False)
    search = pd.concat([search, search.iloc[[1]].assign(
        norm="bn_gn", **{"optim.lr": 0.05}, command="wcnorm train -m experiment=wc_fc norm=bn_gn optim.lr=0.05")])
    search.to_csv(tmp_path / "search.csv", index=False)
    stub = STUB.replace('[[ " $* "', 'if [ "$1" = search ]; then mkdir -p "$6" && cp "$SEARCH_CSV" "$6/search.csv"; fi\n[[ " $* "')
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "wcnorm").write_text(stub)
    (tmp_path / "bin" / "wcnorm").chmod(0o755)
    log = tmp_path / "calls.log"
    env = {"PATH": "/usr/bin:/bin", "BIN": str(tmp_path / "bin"), "PYTHON": sys.executable, "STUB_LOG": str(log),
           "SEARCH_CSV": str(tmp_path / "search.csv"), "PROTOCOL": "tuned", "RESULTS": str(results),
           "OUT": str(tmp_path / "runs"), "TUNED_OUT": str(tmp_path / "tuned"), "JOBS": "1"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_cpu_budget.sh"), "wc_fc", "--", "norm=bn,bn_wc"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    data = "dataset=npz dataset.path=../shared/data/cifar10-partial.npz"
    assert [c.split(" | ", 1)[1] for c in log.read_text().splitlines()] == [
        f"train -m experiment=wc_fc budget=cpu +search=lr_grid out_dir={tmp_path}/runs/lr_grid/wc_fc {data} norm=bn,bn_wc",
        f"search {tmp_path}/runs/lr_grid/wc_fc --preset wc_fc --out {results}/wc_fc/tuned "
        f"--prior {results}/wc_fc/tuned/search_trials.csv",
        "train -m experiment=wc_fc budget=cpu model=enorm_fc dataset=npz norm=bn_wc model.depth=3 optim.lr=0.005 "
        f"out_dir={tmp_path}/tuned/wc_fc {data}"]
    assert "--tuned" in proc.stdout and "--prior" in proc.stdout


def test_the_cpu_stand_ins_are_declared_in_the_presets():
    # The CNN and ViT presets of CIFAR-10 and the ImageNet small-batch study; the
    # neural-field presets (their own real data) and the refused ones declare none.
    assert set(CPU_PRESETS.values()) == set(SUBSET_SIZES)
    assert {"wc_resnet", "wc_variants", "enorm_fc", "wc_fc"} <= {n for n, d in CPU_PRESETS.items() if d == "cifar10"}
    assert [n for n, d in CPU_PRESETS.items() if d == "imagenet"] == ["enorm_resnet_imagenet_small_batch"]
    assert not set(CPU_PRESETS) & (set(FIELD_PRESETS) | set(CPU_REFUSED))
    assert presets.stand_in_overrides("enorm_resnet_imagenet_small_batch", "cpu", "/d") == [
        "dataset=imagefolder", "dataset.root=/d/imagenet-mini", "dataset.image_size=64"]
    assert presets.stand_in_overrides("wc_nerf", "cpu", "/d") == []
    with pytest.raises(ValueError, match="no preset 'nosuch'"):
        presets.stand_in("nosuch", "cpu")


def test_declaring_a_stand_in_renames_no_run():
    # `protocol` is a lookup table outside a run's identity: the declaration added to
    # protocol.cpu leaves every run directory's name as it was.
    cfg = task(compose_preset("wc_resnet", "budget=cpu", "dataset=npz", "dataset.path=x.npz"))
    before = config_digest(cfg)
    with open_dict(cfg):
        del cfg.protocol.cpu.stand_in
    assert config_digest(cfg) == before
    with open_dict(cfg):
        cfg.protocol.cpu.stand_in = {"replaces": "cifar100", "dataset": "npz", "path": "y.npz"}
    assert config_digest(cfg) == before
    with open_dict(cfg):
        cfg.trainer.epochs = 11  # what does name a run still does
    assert config_digest(cfg) != before


@pytest.mark.parametrize("name", ["wc_nerf", "wc_shape"])
def test_the_field_presets_run_their_whole_grid_on_their_own_data_at_the_cpu_budget(name):
    cfg = compose_preset(name, "budget=cpu")
    validate(task(cfg))
    p, t = cfg.protocol.cpu, cfg.trainer
    assert (t.epochs, t.device, cfg.size) == (p.epochs, "cpu", cfg.sizes.cpu)  # the CPU network and sampling
    jobs = grid(cfg)
    assert p.seeds >= 3 and sorted({o for job in jobs for o in job if o.startswith("seed=")}) == [
        f"seed={s}" for s in range(p.seeds)]
    # every point of the preset's grid, on the preset's own scenes or shapes
    assert without_seed(jobs) == without_seed(grid(compose_preset(name)))
    assert cfg.dataset.name == compose_preset(name).dataset.name


def test_a_presets_swept_keys_are_the_keys_its_grid_points_name():
    assert presets.swept_keys("enorm_fc") == ("model.depth",)
    assert presets.swept_keys("enorm_resnet_small_batch") == ("trainer.batch_size",)
    assert presets.swept_keys("wc_shape") == ("dataset.shape",)
    assert presets.swept_keys("wc_resnet") == ()  # model, dataset and norm are groups: named apart
    with pytest.raises(ValueError, match="no preset 'nosuch'"):
        presets.swept_keys("nosuch")
