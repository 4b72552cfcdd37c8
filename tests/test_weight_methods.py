"""Weight-method machinery: layer selection, WS, WN, export, dispatch, description."""

import ast
import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from wcnorm.methods import (
    METHODS,
    apply_weight_method,
    describe_weight_method,
    remove_weight_methods,
    weight_method,
)
from wcnorm.methods.baselines import (
    WeightStandardization,
    weight_normalization,
    weight_standardization,
)
from wcnorm.methods.wc import WeightConditioning, weight_conditioning
from wcnorm.methods.weight_method import installed_methods, weight_layers


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


@pytest.mark.parametrize("method", METHODS)
def test_every_method_by_name_applies_and_describes_itself(method):
    d = describe_weight_method(apply_weight_method(cnn(), method, {}))
    assert d["method"] == method
    assert d["layers"] == ([] if method == "none" else ["0", "3"])


def test_wn_is_torch_weight_norm():
    """Same function, gradients and state-dict keys as torch's weight_norm(dim=0), so a
    checkpoint of either loads into the other."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ours = weight_normalization(cnn().double().eval())
    ref = cnn().double().eval()
    for i in (0, 3):
        parametrizations.weight_norm(ref[i], dim=0)
    ref.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    with torch.no_grad():
        ours[3].parametrizations.weight.original0.mul_(1.5)  # a gain away from ||V||
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), ref(x))
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref.get_parameter(name).grad)


def test_the_record_survives_deepcopy_and_goes_with_removal():
    m = apply_weight_method(cnn(), "ws", {"eps": 1e-4, "skip_stem": True})
    d = describe_weight_method(copy.deepcopy(m))
    assert d == describe_weight_method(m) and d["options"]["eps"] == 1e-4 and d["layers"] == ["3"]
    remove_weight_methods(m)
    assert describe_weight_method(m)["options"] == {}


def test_describe_methods_of_several_calls_or_by_hand():
    m = cnn()
    weight_conditioning(m[0], include_classifier=True)
    weight_standardization(m[3], include_classifier=True)
    d = describe_weight_method(m)
    assert (d["method"], d["options"], d["layers"]) == ("wc+ws", {}, ["0", "3"])
    m = cnn()
    parametrize.register_parametrization(m[3], "weight", WeightConditioning(side="column"))
    assert describe_weight_method(m)["method"] == "wc" and describe_weight_method(m)["options"] == {}
    assert [(i.label, i.tensor, i.parametrization.side) for i in installed_methods(m)] == [
        ("3", "weight", "column")]


def test_a_refused_call_leaves_the_model_untouched():
    m = cnn()
    weight_conditioning(m[3], include_classifier=True)
    with pytest.raises(ValueError, match="3 .* already has a weight method"):
        apply_weight_method(m, "ws", {})
    assert not parametrize.is_parametrized(m[0])  # nothing registered before the refusal

    class Double(nn.Module):
        def forward(self, W):
            return 2 * W

    m = apply_weight_method(cnn(), "wn", {})
    parametrize.register_parametrization(m[3], "weight", Double())
    with pytest.raises(ValueError, match="stacked with another parametrization"):
        remove_weight_methods(m)
    assert [i.label for i in installed_methods(m)] == ["0", "3"]  # nothing removed


def test_base_imports_nothing_of_wcnorm():
    tree = ast.parse(Path(weight_method.__file__).read_text())
    relative = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    absolute = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    absolute += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
    assert relative == [] and not [m for m in absolute if m.split(".")[0] == "wcnorm"]


# ------------------------------------------------------------------ one layer, PyTorch's style
LAYER_METHODS = [(weight_conditioning, WeightConditioning), (weight_standardization, WeightStandardization),
                 (weight_normalization, weight_method.WeightMethod)]


@pytest.mark.parametrize("apply, kind", LAYER_METHODS)
def test_a_single_layer_is_conditioned_like_torch_weight_norm(apply, kind):
    """A Conv/Linear given alone is a layer (even though, walked as a model, it would be
    its own classifier); name="weight" says the same explicitly."""
    for make in (lambda: nn.Linear(6, 4), lambda: nn.Conv2d(3, 5, 3)):
        for layer in (apply(make()), apply(make(), "weight"), apply(make(), name="weight")):
            assert parametrize.is_parametrized(layer, "weight")
            assert isinstance(layer.parametrizations.weight[0], kind)
            assert describe_weight_method(layer)["layers"] == [""]
    # walked as a model, the same layer is the classifier and is left alone
    model = apply(nn.Sequential(nn.Linear(6, 4)))
    assert not parametrize.is_parametrized(model[0])


def test_a_single_layer_has_the_methods_function():
    torch.manual_seed(0)
    layer = weight_conditioning(nn.Conv2d(3, 5, 3, groups=1).double(), side="row", p=2)
    rows = layer.weight.flatten(1)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)
    raw = layer.parametrizations.weight.original
    torch.testing.assert_close(layer.weight, raw / raw.flatten(1).norm(dim=1)[:, None, None, None])


def test_name_picks_one_tensor_of_any_module():
    class Bilinear(nn.Module):  # a custom module: a model when walked, a layer with name=
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3))
            self.scale = nn.Parameter(torch.ones(4))

    m = weight_conditioning(Bilinear(), name="weight")
    torch.testing.assert_close(m.weight.norm(dim=1), torch.ones(4))
    for bad in ("scale", "nope"):
        with pytest.raises(ValueError, match=f"no weight matrix '{bad}'.*'weight', 'scale'"):
            weight_conditioning(Bilinear(), name=bad)
    mha = weight_conditioning(nn.MultiheadAttention(8, 2))  # a layer: its packed input projection
    assert [i.label for i in installed_methods(mha)] == ["in_proj_weight"]


def test_a_layer_refuses_what_only_a_model_means_and_stacking():
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="skip_stem=True selects layers of a model"):
        weight_conditioning(layer, skip_stem=True)
    assert not parametrize.is_parametrized(layer)
    weight_conditioning(layer, include_classifier=True)  # harmless: a layer is always conditioned
    with pytest.raises(ValueError, match="already has a weight method"):
        weight_standardization(layer, "weight")
    assert len(layer.parametrizations.weight) == 1
    # options recorded for a layer are the method's own
    assert describe_weight_method(layer)["options"] == {"side": "row", "p": 2, "eps": 1e-08,
                                                          "detach": False, "iters": 3}
