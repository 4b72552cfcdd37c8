"""The paper presets (conf/experiment/) and the budget group (conf/budget/).

Every preset composes at every budget, every point of its sweep grid is a valid
override of the real config, the budget numbers reach the config and the sweeper,
and one grid point per preset trains at `budget=smoke` on synthetic data.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from wcnorm.training.config import validate
from wcnorm.training.train import train

EXPERIMENTS = files("wcnorm.conf") / "experiment"
PRESETS = sorted(p.name[:-5] for p in EXPERIMENTS.iterdir()
                 if p.name.endswith(".yaml") and p.name != "demo.yaml")
BUDGETS = ("smoke", "short", "paper")
REQUIRED = {"wc_googlenet_c100", "wc_resnet", "wc_googlenet", "wc_densenet", "wc_vit",
            "wc_vit_imagenet", "enorm_fc", "enorm_fullconv", "enorm_resnet_small_batch",
            "enorm_resnet_imagenet_small_batch"}
WCNORM = shutil.which("wcnorm") or str(Path(sys.executable).parent / "wcnorm")


@functools.cache
def _compose(name: str, overrides: tuple[str, ...]):
    with initialize_config_module(config_module="wcnorm.conf", version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}", *overrides], return_hydra_config=True)


def compose_preset(name: str, *overrides: str):
    """The config `wcnorm train experiment=NAME OVERRIDES` runs, with its hydra node
    (a fresh copy: composing is the slow part of these tests, so it is cached)."""
    return copy.deepcopy(_compose(name, overrides))


def grid(cfg) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of `hydra.sweeper.params` (seed included):
    the product of every parameter's values, in the order the parameters are listed."""
    assert cfg.hydra.sweeper._target_.endswith(".BasicSweeper")  # the sweeper whose expansion this is
    axes = []
    for o in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]):
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


@pytest.mark.parametrize("name", PRESETS)
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


def test_the_real_sweeper_expands_the_budget_seeds(tmp_path):
    """`hydra.sweeper.params.seed` is an interpolation of the preset's protocol: the
    real `wcnorm train -m` must resolve it (2 seeds here) and record the budget."""
    args = ["train", "-m", "experiment=enorm_fc", "budget=short", "protocol.short.seeds=2",
            "model.depth=1", "norm=bn", "dataset=synthetic", "dataset.train_size=32",
            "dataset.test_size=16", "trainer.epochs=1", "trainer.batch_size=16",
            "trainer.limit_batches=1", "trainer.device=cpu", "out_dir=out"]
    proc = subprocess.run([WCNORM, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PATH": str(Path(WCNORM).parent) + ":/usr/bin:/bin", "CI": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
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
