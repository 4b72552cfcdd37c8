"""BN + WC is BN: a per-channel normalization after a layer cancels a row-scaling weight
method exactly (methods.md section 1). The fact in float64, its detection from the
model's graph, and what the runner and the report do with it."""

from __future__ import annotations

import copy
import logging

import pandas as pd
import pytest
import torch
from fabricate import make_run
from torch import nn

from wcnorm.methods import apply_weight_method, cancelled_layers, describe_weight_method
from wcnorm.models import build_model
from wcnorm.report.claims import EQUIVALENT, SUPPORTED, Claim, evaluate_claims
from wcnorm.report.runs import load_runs
from wcnorm.report.table import build_table
from wcnorm.training.train import train

# --------------------------------------------------------------------------- the fact


def _bn_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "enorm_fc":
        model = build_model("enorm_fc", num_classes=10, image_size=8, act_norm="bn", depth=2, width=32)
    else:
        model = build_model("resnet18", num_classes=10, image_size=16, act_norm="bn", width=0.125)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = 1e-30  # BN's eps is the only thing between BN(D z) and BN(z)
    return model.double()


def _raw(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor by its layer's name, the raw weight under its plain name:
    the weights SGD moves, with or without a parametrization."""
    out = {}
    for name, p in model.named_parameters():
        name = name.replace(".parametrizations.weight.original1", ".weight")  # WN: the direction V
        name = name.replace(".parametrizations.weight.original", ".weight")  # WC, WS
        if not name.endswith("original0"):  # WN's gain: no counterpart in BN
            out[name] = p.detach().clone()
    return out


def _trajectory(model: nn.Module, x, y, steps: int = 10) -> list[dict[str, torch.Tensor]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    out = []
    for i in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
        out.append(_raw(model))
    return out


def _gap(a: list[dict], b: list[dict]) -> float:
    """Largest relative difference of any tensor at any step."""
    return max(((sa[k] - sb[k]).norm() / sa[k].norm().clamp_min(1e-300)).item()
               for sa, sb in zip(a, b) for k in sa)


VARIANTS = {  # method, options, cancelled by BN?
    "row WC, classifier skipped": ("wc", {}, True),
    "row WC p=1, classifier skipped": ("wc", {"p": 1}, True),
    "WN, classifier skipped": ("wn", {}, True),
    "row WC with the classifier": ("wc", {"include_classifier": True}, False),
    "column WC": ("wc", {"side": "column"}, False),
    "two-sided WC": ("wc", {"side": "both"}, False),
    "WS": ("ws", {}, False),
}


@pytest.mark.parametrize("model_name", ["enorm_fc", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_bn_cancels_row_scaling_methods_along_the_whole_trajectory(model_name):
    # Ten SGD steps with momentum and weight decay, float64, BN eps -> 0: BN + row WC
    # (any p) and BN + WN, classifier skipped, follow BN's raw weights exactly; a method
    # that acts somewhere (the classifier, columns, both sides, WS) leaves it.
    torch.manual_seed(1)
    shape = (3, 8, 8) if model_name == "enorm_fc" else (3, 16, 16)
    x = torch.randn(10, 16, *shape, dtype=torch.float64)
    y = torch.randint(0, 10, (10, 16))
    base = _bn_model(model_name)
    reference = _trajectory(copy.deepcopy(base), x, y)
    for label, (method, options, cancelled) in VARIANTS.items():
        model = apply_weight_method(copy.deepcopy(base), method, options)
        gap = _gap(reference, _trajectory(model, x, y))
        if cancelled:
            assert gap < 1e-7, f"{label}: {gap:.2e} away from BN"
        else:
            assert gap > 1e-4, f"{label}: follows BN ({gap:.2e})"


# ---------------------------------------------------------------------- detection


class _Graph(nn.Module):
    """Small graphs around one conv `c` and a BatchNorm `bn` (8 channels)."""

    def __init__(self, wiring: str, bias: bool = False, norm: nn.Module | None = None):
        super().__init__()
        self.wiring = wiring
        self.c = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.d = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = norm if norm is not None else nn.BatchNorm2d(8)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        z, w = self.c(x), self.d(x)
        if self.wiring == "direct":
            h = self.bn(z)
        elif self.wiring == "relu_pool":
            h = self.bn(self.pool(self.relu(z)))
        elif self.wiring == "residual":
            h = self.bn(z + w)
        elif self.wiring == "concat":
            h = self.bn2(torch.cat([z, w], 1))[:, :8]
        elif self.wiring == "also_out":  # the raw output escapes the normalization
            return self.head(self.bn(z).mean((2, 3))) + z.mean()
        else:
            raise ValueError(self.wiring)
        return self.head(h.mean((2, 3)) + self.bn(w).mean((2, 3)))


@pytest.mark.parametrize("wiring, bias, norm, cancelled", [
    ("direct", False, None, True),
    ("direct", True, None, True),  # BN removes a bias too
    ("relu_pool", False, None, True),  # relu(d z) = d relu(z), pooling per channel
    ("relu_pool", True, None, False),  # relu(d z + b) is not a scale of relu(z + b)
    ("residual", False, None, False),  # the sum mixes it with unscaled channels
    ("concat", False, None, True),  # DenseNet: each channel keeps its position
    ("also_out", False, None, False),
    ("direct", False, nn.GroupNorm(8, 8), True),  # one channel per group
    ("direct", False, nn.GroupNorm(2, 8), False),  # a group pools 4 channels
    ("direct", False, nn.InstanceNorm2d(8), True),
    ("direct", False, nn.LayerNorm([8, 6, 6]), False),
])
def test_cancelled_layers_reads_the_graph(wiring, bias, norm, cancelled):
    found = cancelled_layers(_Graph(wiring, bias, norm))
    assert ("c" in found) == cancelled
    assert "head" not in found


def test_the_project_models_cancel_all_but_their_classifier_under_bn():
    for name in ("resnet18", "resnet50", "densenet121", "googlenet"):
        model = build_model(name, num_classes=10, image_size=32, act_norm="bn", width=0.125)
        layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert sorted(cancelled_layers(model)) == sorted(layers[:-1]), name
    # The ENorm paper's conv net has BN after its 3rd and 6th convs only.
    fullconv = build_model("enorm_fullconv", num_classes=10, image_size=32, act_norm="bn")
    assert sorted(cancelled_layers(fullconv)) == ["conv3", "conv6"]
    # No per-channel normalization, nothing to cancel (and no trace needed).
    assert cancelled_layers(build_model("vit", num_classes=10, image_size=32, act_norm="ln")) == {}


def test_describe_weight_method_records_the_scope():
    model = build_model("enorm_fc", num_classes=10, image_size=8, act_norm="bn", depth=2, width=16)
    hidden = describe_weight_method(apply_weight_method(copy.deepcopy(model), "wc", {}))
    assert hidden["cancelled_layers"] == ["fc0", "fc1", "fc2"] and hidden["acting_layers"] == []
    assert hidden["cancelled_by"]["fc0"] == ["norm0"] and hidden["traced"]
    wide = describe_weight_method(apply_weight_method(copy.deepcopy(model), "wc", {"include_classifier": True}))
    assert wide["acting_layers"] == ["classifier"]
    for method, options in (("ws", {}), ("wc", {"side": "column"})):  # not row scalings
        record = describe_weight_method(apply_weight_method(copy.deepcopy(model), method, options))
        assert record["cancelled_layers"] == [] and len(record["acting_layers"]) == 3


def test_an_untraceable_model_is_reported_not_guessed():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.bn = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.c(x)) if x.sum() > 0 else x  # data-dependent control flow

    record = describe_weight_method(apply_weight_method(Branchy(), "wc", {"include_classifier": True}))
    assert not record["traced"] and "not traced" in record["note"]
    assert record["cancelled_layers"] == [] and record["acting_layers"] == ["c"]


@pytest.mark.slow
def test_a_run_says_when_its_method_is_cancelled_and_records_it(cfg_factory, caplog):
    fast = ["model=enorm_fc", "model.depth=1", "trainer.limit_batches=1", "trainer.limit_eval_batches=1"]
    with caplog.at_level(logging.INFO, logger="wcnorm"):
        hidden = train(cfg_factory(*fast, "norm=bn_wc_hidden"))
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "acts on no layer" in r.message]
    assert warned, "a method cancelled on every layer must be warned about before training"
    assert hidden["weight_method"]["acting_layers"] == []
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wcnorm"):
        default = train(cfg_factory(*fast, "norm=bn_wc"))
    assert default["weight_method"]["acting_layers"] == ["classifier"]
    assert any("acts only on: classifier" in r.message for r in caplog.records)


# ------------------------------------------------------------------------ the report

_HIDDEN = {"method": "wc", "num_layers": 2, "cancelled_layers": ["fc0", "fc1"], "acting_layers": [],
           "options": {"side": "row", "p": 2, "include_classifier": False}}
_WITH_CLASSIFIER = {"method": "wc", "num_layers": 3, "cancelled_layers": ["fc0", "fc1"],
                    "acting_layers": ["classifier"], "options": {"side": "row", "p": 2, "include_classifier": True}}
_NONE = {"method": "none", "num_layers": 0, "cancelled_layers": [], "acting_layers": [], "options": {}}
_WC_CFG = {"act": "bn", "weight": "wc", "wc": {"side": "row", "p": 2}}


def _grid(root, cells: dict[str, tuple[list[float], dict, dict]]):
    for norm, (accs, record, norm_cfg) in cells.items():
        cfg = {**norm_cfg, "wc": {**norm_cfg.get("wc", {}),
                                  "include_classifier": record["options"].get("include_classifier", False)}}
        for seed, acc in enumerate(accs):
            make_run(root, norm=norm, seed=seed, final_acc=acc, norm_cfg=cfg, weight_method=record)


CLAIM = Claim(id="x", paper="WC", text="BN + WC beats BN.", model="resnet18", dataset="cifar10",
              better="bn_wc_hidden", worse=("bn",))


def test_equivalent_methods_are_never_given_a_statistical_verdict(tmp_path):
    # Far apart, tight cells: a t-test would call the gap significant. The runs recorded
    # that WC acts on no layer: BN + WC is BN, and the verdict says so, with no p-value.
    _grid(tmp_path, {"bn_wc_hidden": ([95.0, 95.5, 96.0], _HIDDEN, _WC_CFG),
                     "bn": ([80.0, 80.5, 81.0], _NONE, {"act": "bn", "weight": "none"})})
    row = evaluate_claims(load_runs(tmp_path), [CLAIM]).iloc[0]
    assert row["verdict"] == EQUIVALENT
    (test,) = row["tests"]
    assert test.equivalent and pd.isna(test.p) and pd.isna(test.p_holm) and not test.significant
    assert "equivalent by construction" in row["note"] and "equal by construction" in row["comparisons"]


def test_a_method_that_acts_is_tested_and_old_runs_are_never_declared_equivalent(tmp_path):
    acting = tmp_path / "acting"
    _grid(acting, {"bn_wc_hidden": ([95.0, 95.5, 96.0], _WITH_CLASSIFIER, _WC_CFG),
                   "bn": ([80.0, 80.5, 81.0], _NONE, {"act": "bn", "weight": "none"})})
    assert evaluate_claims(load_runs(acting), [CLAIM]).iloc[0]["verdict"] == SUPPORTED
    # Runs without the record (made before it existed) are judged on their numbers.
    old = tmp_path / "old"
    for seed, (a, b) in enumerate(zip([95.0, 95.5, 96.0], [80.0, 80.5, 81.0])):
        make_run(old, norm="bn_wc_hidden", seed=seed, final_acc=a)
        make_run(old, norm="bn", seed=seed, final_acc=b)
    assert evaluate_claims(load_runs(old), [CLAIM]).iloc[0]["verdict"] == SUPPORTED


def test_tables_label_a_cancelled_method_and_name_the_wc_variant(tmp_path):
    _grid(tmp_path, {"bn_wc_hidden": ([90.0, 91.0], _HIDDEN, _WC_CFG),
                     "bn_wc": ([92.0, 93.0], _WITH_CLASSIFIER, _WC_CFG),
                     "bn": ([90.5, 91.5], _NONE, {"act": "bn", "weight": "none"})})
    table = build_table(load_runs(tmp_path))
    assert "BN + WC, classifier skipped (= BN)" in table.wide.columns
    assert "BN + WC" in table.wide.columns and "BN (= BN)" not in table.wide.columns
    variants = dict(zip(table.long["norm"], table.long["weight_variant"]))
    assert variants["bn_wc"] == "wc side=row, p=2, classifier included"
    assert variants["bn_wc_hidden"] == "wc side=row, p=2, classifier skipped, cancelled on every layer"
    assert table.provenance["equal_by_construction"] == {"bn_wc_hidden": "BN"}
    # Runs without the record (older ones, or no weight method) keep their plain labels.
    old = tmp_path / "old"
    for seed in (0, 1):
        make_run(old, norm="bn_wc", seed=seed, norm_cfg={"act": "bn"})
        make_run(old, norm="bn", seed=seed, norm_cfg={"act": "bn"},
                 weight_method={"method": "none", "num_layers": 0})
    assert list(build_table(load_runs(old)).wide.columns[-2:]) == ["BN", "BN + WC"]


def test_a_diverged_run_is_shown_and_counted_not_dropped(tmp_path):
    import json
    for seed, acc in enumerate([80.0, 81.0, 82.0]):
        make_run(tmp_path, norm="bn", seed=seed, final_acc=acc)
    for seed, acc in enumerate([70.0, 71.0]):
        make_run(tmp_path, norm="bn_ws", seed=seed, final_acc=acc)
    lost = make_run(tmp_path, norm="bn_ws", seed=2, finished=False)
    (lost / "result.json").write_text(json.dumps({"status": "diverged", "error": "loss nan"}))
    table = build_table(load_runs(tmp_path))
    assert "70.50 ± 0.71 (n=2/3, 1 diverged)" in table.wide.to_string()
    assert any("1 of them diverged" in u for u in table.provenance["unfinished"])
    claim = Claim(id="y", paper="WC", text="BN beats BN + WS.", model="resnet18", dataset="cifar10",
                  better="bn", worse=("bn_ws",))
    row = evaluate_claims(load_runs(tmp_path), [claim]).iloc[0]
    assert "bn_ws (1)" in row["note"] and "1 diverged" in row["numbers"]
