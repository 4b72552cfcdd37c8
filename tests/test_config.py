"""The real Hydra config: every group choice composes and validates."""

from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf

from wcnorm.errors import ConfigError
from wcnorm.methods import METHODS
from wcnorm.methods.enorm import BN_MODES, ORDERS
from wcnorm.methods.wc import P_VALUES, SIDES, parse_p
from wcnorm.training.config import validate

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_defaults_compose_to_the_documented_keys():
    cfg = compose_cfg(smoke=False)
    absent = object()
    for key in ("seed", "trainer.epochs", "trainer.batch_size", "trainer.device",
                "optim.lr", "optim.weight_decay", "dataset.root", "out_dir"):
        value = OmegaConf.select(cfg, key, default=absent)
        assert value is not absent and value is not None, key
    assert OmegaConf.select(cfg, "trainer.limit_batches", default=absent) is None  # present; null: no cap
    assert (cfg.model.name, cfg.dataset.name, cfg.norm.name, cfg.optim.name) == ("resnet18", "cifar10", "bn", "sgd")
    validate(cfg)


@pytest.mark.parametrize("group", ["model", "dataset", "norm", "optim", "sched", "trainer"])
def test_every_choice_composes(group):
    assert options(group), group
    for choice in options(group):
        cfg = compose_cfg([f"{group}={choice}"], smoke=False)
        node = cfg[group]
        if "name" in node:
            assert node.name == choice


@pytest.mark.parametrize("norm", options("norm"))
def test_norm_presets_combine_an_activation_norm_and_a_weight_method(norm):
    cfg = compose_cfg([f"norm={norm}"], smoke=False)
    assert cfg.norm.act in ("bn", "gn", "ln", "none")
    assert cfg.norm.weight in ("none", "wc", "ws", "wn")
    assert set(cfg.norm.wc) >= {"side", "p", "detach", "eps", "include_classifier", "skip_stem"}
    model = "vit" if cfg.norm.act == "ln" else "resnet18"
    validate(compose_cfg([f"norm={norm}", f"model={model}"] + (["norm.enorm.attention=true"] if model == "vit" and cfg.norm.enorm.enabled else [])))


def test_bn_e_is_the_same_method_as_bn_wc():
    a, b = compose_cfg(["norm=bn_wc"]).norm, compose_cfg(["norm=bn_e"]).norm
    a.name = b.name = "x"
    assert a == b


def test_wc_options_override_from_the_command_line():
    cfg = compose_cfg(["norm=bn_wc", "norm.wc.side=both", "norm.wc.p=1"])
    assert (cfg.norm.wc.side, cfg.norm.wc.p) == ("both", 1)


@pytest.mark.parametrize("override, message", [
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("optim.lr=-0.1", "optim.lr"),
    ("trainer.limit_batches=-1", "limit_batches"),
    ("norm.wc.side=diagonal", "norm.wc.side"),
    ("norm.enorm.c=0", "norm.enorm.c"),
    ("norm.enorm.cuda_graph=maybe", "norm.enorm.cuda_graph"),
    ("norm.enorm.fused=maybe", "norm.enorm.fused"),
    ("trainer.device=tpu", "trainer.device"),
    ("dataset.val_split=1", "dataset.val_split=1: must be a fraction in"),
    ("dataset.val_split=-0.1", "dataset.val_split=-0.1"),
    ("dataset.val_split=half", "dataset.val_split='half'"),
    pytest.param("trainer.device=cuda", "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_invalid_values_are_rejected_with_the_key_named(override, message):
    extra = ["norm=enorm"] if "enorm" in override else []
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg([*extra, override]))


def test_the_choices_are_those_the_methods_define():
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(["norm=enorm", "norm.weight=bogus", "norm.wc.side=left", "norm.wc.p=3",
                              "norm.enorm.order=random", "norm.enorm.bn=drop"]))
    message = str(err.value)
    assert f"norm.weight='bogus': valid: {', '.join(METHODS)}" in message
    assert f"norm.wc.side='left': valid: {', '.join(SIDES)}" in message
    assert "norm.wc.p=3: valid: 1, 2, inf" in message
    assert f"norm.enorm.order='random': valid: {', '.join(ORDERS)}" in message
    assert f"norm.enorm.bn='drop': valid: {', '.join(BN_MODES)}" in message


@pytest.mark.parametrize("side", SIDES)
def test_every_wc_side_and_p_validates(side):
    for p in ("1", "2", "inf", "2.0"):
        cfg = compose_cfg(["norm=bn_wc", f"norm.wc.side={side}", f"norm.wc.p={p}"])
        validate(cfg)
        assert parse_p(cfg.norm.wc.p) in P_VALUES


@pytest.mark.parametrize("overrides, message", [
    (["model=vit", "norm=bn"], "vit"),
    (["model=resnet18", "norm=ln"], "resnet18"),
    (["model=vit", "norm=enorm"], "attention"),
    (["norm=bn_wc", "norm.enorm.enabled=true"], "cannot be combined"),
    (["model=vit", "dataset.image_size=30"], "vit"),
])
def test_unsupported_model_norm_pairs_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(overrides))


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(["trainer.epochs=0", "optim.lr=-1"]))
    assert "trainer.epochs" in str(err.value) and "optim.lr" in str(err.value)


@pytest.mark.parametrize("dataset, key", [("npz", "dataset.path"), ("imagefolder", "dataset.root")])
def test_a_required_setting_left_out_is_named(dataset, key):
    with pytest.raises(ConfigError, match=rf"{key} \(set {key}=\.\.\.\)"):
        validate(compose_cfg([f"dataset={dataset}"]))
