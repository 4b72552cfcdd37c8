"""Weight-method machinery: layer selection, WS, WN, export, dispatch, description."""

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from wcnorm.methods.wc import WeightConditioning
from wcnorm.methods.weight_methods import (
    WeightStandardization,
    apply_weight_method,
    describe_weight_method,
    remove_weight_methods,
    weight_layers,
    weight_normalization,
    weight_standardization,
)


def cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_weight_layers_rule():
    m = cnn()
    assert [n for n, _ in weight_layers(m)] == ["0", "3"]
    assert [n for n, _ in weight_layers(m, include_classifier=True)] == ["0", "3", "8"]
    assert [n for n, _ in weight_layers(m, skip_stem=True)] == ["3"]


def test_weight_layers_override():
    m = cnn()
    m.wcnorm_classifier = "3"  # e.g. a head defined before the body
    assert [n for n, _ in weight_layers(m)] == ["0", "8"]
    m.wcnorm_classifier = None
    assert [n for n, _ in weight_layers(m)] == ["0", "3", "8"]
    m.wcnorm_stem = ["0", "3"]
    assert [n for n, _ in weight_layers(m, skip_stem=True)] == ["8"]
    m.wcnorm_stem = "nope"
    with pytest.raises(ValueError, match="names no weight layer"):
        weight_layers(m, skip_stem=True)


def test_ws_zero_mean_unit_std():
    m = weight_standardization(cnn())
    for i in (0, 3):
        W = m[i].weight.reshape(8, -1).double()
        torch.testing.assert_close(W.mean(1), torch.zeros(8, dtype=torch.float64), atol=1e-6, rtol=0)
        torch.testing.assert_close(W.std(1, correction=0), torch.ones(8, dtype=torch.float64), atol=1e-3, rtol=0)
        assert isinstance(m[i].parametrizations.weight[0], WeightStandardization)


def test_wn_learnable_gain_and_function_preserved():
    torch.manual_seed(0)
    m, x = cnn().eval(), torch.randn(2, 3, 8, 8)
    y = m(x)
    weight_normalization(m)
    g = m[0].parametrizations.weight.original0
    assert isinstance(g, nn.Parameter) and g.requires_grad and g.shape == (8, 1, 1, 1)
    torch.testing.assert_close(m(x), y)
    m(x).sum().backward()
    assert g.grad is not None and g.grad.abs().sum() > 0


@pytest.mark.parametrize("method,options", [("wc", {}), ("wc", {"side": "both", "p": "inf"}),
                                            ("ws", {"eps": 1e-4}), ("wn", {})])
def test_save_load_and_export_round_trip(method, options):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    a = apply_weight_method(cnn(), method, options)
    a(x)  # move BN statistics away from their init
    a.eval()
    b = apply_weight_method(cnn(), method, options).eval()
    b.load_state_dict(a.state_dict())
    y = a(x)
    torch.testing.assert_close(b(x), y)
    remove_weight_methods(a)
    assert not any(parametrize.is_parametrized(mod) for mod in a.modules())
    torch.testing.assert_close(a(x), y)
    plain = cnn().eval()
    plain.load_state_dict(a.state_dict())
    torch.testing.assert_close(plain(x), y)
    assert describe_weight_method(a)["method"] == "none"


def test_remove_leaves_foreign_parametrizations():
    class Double(nn.Module):
        def forward(self, W):
            return 2 * W

    m = apply_weight_method(cnn(), "wc", {})
    parametrize.register_parametrization(m[8], "weight", Double())
    remove_weight_methods(m)
    assert parametrize.is_parametrized(m[8]) and not parametrize.is_parametrized(m[0])


def test_apply_weight_method_dispatch_and_errors():
    m = apply_weight_method(cnn(), "none", {"include_classifier": False})
    assert not any(parametrize.is_parametrized(mod) for mod in m.modules())
    with pytest.raises(ValueError, match="valid choices: none, wc, ws, wn"):
        apply_weight_method(cnn(), "bn", {})
    with pytest.raises(ValueError, match="unknown options"):
        apply_weight_method(cnn(), "ws", {"side": "row"})
    m = apply_weight_method(cnn(), "WC", {"side": "column", "p": 1, "detach": True})
    wc = m[0].parametrizations.weight[0]
    assert isinstance(wc, WeightConditioning) and (wc.side, wc.p, wc.detach) == ("column", 1.0, True)


def test_describe_weight_method():
    m = apply_weight_method(cnn(), "wc", {"p": float("inf"), "skip_stem": True})
    d = describe_weight_method(m)
    assert d["method"] == "wc" and d["num_layers"] == 1 and d["layers"] == ["3"]
    assert d["untouched_layers"] == ["0", "8"]
    assert d["options"] == {"side": "row", "p": "inf", "eps": 1e-8, "detach": False, "iters": 3,
                            "include_classifier": False, "skip_stem": True}
    json.dumps(d, allow_nan=False)
    assert describe_weight_method(cnn())["method"] == "none"
    d = describe_weight_method(weight_normalization(cnn(), include_classifier=True))
    assert d["method"] == "wn" and d["layers"] == ["0", "3", "8"] and d["untouched_layers"] == []
