"""The model zoo: shapes, training steps, parameter counts, norm handling, width, errors, fx."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from wcnorm.models import (
    MODELS,
    ModelConfigError,
    build_model,
    check_model,
    count_parameters,
    default_options,
    gn_groups,
    is_torchvision,
    supported_act_norms,
    swap_norm,
)
from wcnorm.models.enorm_nets import EnormFullConv
from wcnorm.models.imagenet import TorchvisionAttention
from wcnorm.models.layers import scaled
from wcnorm.models.vit import Attention
from wcnorm.modules import BATCH_NORMS, NORM_LAYERS

CIFAR_MODELS = [m for m in MODELS if not m.startswith("enorm")]
# smaller ViT where the size changes nothing being tested
SMALL = {"vit": {"depth": 2, "dim": 96, "heads": 4}}
CASES = [(m, n) for m in MODELS for n in supported_act_norms(m)]


def _build(name, size=32, act_norm=None, classes=10, **kw):
    act_norm = act_norm or supported_act_norms(name)[0]
    opts = {**(SMALL.get(name, {}) if size <= 64 else {}), **kw}
    return build_model(name, num_classes=classes, image_size=size, act_norm=act_norm, **opts)


def _convs_linears(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name,act_norm", [c if c[0] == "enorm_fc" else pytest.param(*c, marks=pytest.mark.slow)
                                           for c in CASES])  # a CIFAR-size training step: seconds each
def test_cifar_size_trains(name, act_norm):
    model = _build(name, 32, act_norm)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    out = model(x)
    assert out.shape == (2, 10)
    loss = F.cross_entropy(out, y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) for m in CIFAR_MODELS]
                         + ["enorm_fc", "enorm_fullconv"])  # the CIFAR zoo at 64 px: seconds each
def test_runs_at_64(name):
    assert not is_torchvision(name, 64)
    assert _build(name, 64)(torch.randn(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.parametrize("name,act_norm", [c for c in CASES if not c[0].startswith("enorm")])
def test_imagenet_size_forward(name, act_norm):
    assert is_torchvision(name, 224)
    model = _build(name, 224, act_norm, classes=1000).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.slow
def test_parameter_counts():
    assert abs(count_parameters(_build("resnet18")) - 11.17e6) / 11.17e6 < 0.01
    expected = {"resnet18": 11_689_512, "resnet50": 25_557_032, "densenet121": 7_978_856,
                "googlenet": 6_624_904, "vit": 86_567_656}
    for name, n in expected.items():
        assert count_parameters(_build(name, 224, classes=1000)) == n, name
        # GroupNorm has the same affine parameters as BatchNorm
        if name != "vit":
            assert count_parameters(_build(name, 224, "gn", classes=1000)) == n, name


@pytest.mark.parametrize("name,size", [(m, 32) for m in MODELS] + [(m, 224) for m in CIFAR_MODELS])
def test_act_norm_none(name, size):
    model = _build(name, size, "none", classes=10)
    assert not any(isinstance(m, NORM_LAYERS) for m in model.modules())
    layers = _convs_linears(model)
    if name.startswith("enorm"):  # the ENorm paper's nets never have biases
        assert all(m.bias is None for m in layers)
    else:
        assert all(m.bias is not None for m in layers)


@pytest.mark.parametrize("name", [m for m in MODELS if m != "vit"])
def test_bias_rule_and_group_norm(name):
    # with a norm, the CNN convs feeding it have no bias
    bn = _build(name, 32, "bn")
    assert all(m.bias is None for m in bn.modules() if isinstance(m, nn.Conv2d))
    gn = _build(name, 32, "gn")
    gns = [m for m in gn.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and not any(isinstance(m, BATCH_NORMS) for m in gn.modules())
    for m in gns:
        assert m.num_groups == gn_groups(m.num_channels) <= 32
        assert m.num_channels % m.num_groups == 0


def test_gn_groups():
    assert [gn_groups(c) for c in (1, 16, 24, 48, 64, 500, 208, 37)] == [1, 16, 24, 24, 32, 25, 26, 1]


# ------------------------------------------------------------------------------- width

# The models as they were before `width` existed (10 classes, 32 px): parameter count and a
# digest of the state dict's names and shapes, so that width 1 keeps old checkpoints loadable.
PUBLISHED = {
    ("resnet18", "bn"): (11_173_962, "168c968b00036010"), ("resnet18", "gn"): (11_173_962, "e6bfe4d29f11bce7"),
    ("resnet18", "none"): (11_169_162, "bf045acc1bd21812"),
    ("resnet34", "bn"): (21_282_122, "a1c33b2385117bcf"), ("resnet34", "none"): (21_273_610, "da155869293ac633"),
    ("resnet50", "bn"): (23_520_842, "46dd6d287539ca40"), ("resnet50", "gn"): (23_520_842, "41f0ff5014facac8"),
    ("densenet121", "bn"): (6_956_298, "28a83babf2a930b8"), ("densenet121", "none"): (6_883_018, "84e1727b6582610d"),
    ("googlenet", "bn"): (6_158_346, "ccb065bed9ab54c4"), ("googlenet", "gn"): (6_158_346, "2ce618069d3b72f9"),
    ("googlenet", "none"): (6_150_442, "3cc362df9de00c99"),
    ("vit", "ln"): (12_470_026, "ed23089c1cccfe16"), ("vit", "none"): (12_458_506, "3e37b9df9120c110"),
}
WIDTH_CASES = [(m, n) for m in CIFAR_MODELS for n in supported_act_norms(m)]


def _layout_digest(model):
    layout = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    return hashlib.sha256(repr(layout).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name,act_norm", list(PUBLISHED))
def test_width_one_is_the_published_model(name, act_norm):
    params, digest = PUBLISHED[name, act_norm]
    for width in (1, 1.0):
        model = build_model(name, num_classes=10, image_size=32, act_norm=act_norm, width=width)
        assert count_parameters(model) == params
        assert _layout_digest(model) == digest
    default = build_model(name, num_classes=10, image_size=32, act_norm=act_norm)
    assert {k: v.shape for k, v in default.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


def test_the_fullconv_net_has_a_width_and_width_one_is_the_published_net():
    published = {"bn": (2_616_576, "5ebef9810ce8ab79"), "none": (2_615_808, "6d741a58d17558b6")}
    for act_norm, (params, digest) in published.items():
        model = build_model("enorm_fullconv", num_classes=10, image_size=32, act_norm=act_norm)
        assert (count_parameters(model), _layout_digest(model)) == (params, digest)
    narrow = build_model("enorm_fullconv", num_classes=10, image_size=32, act_norm="bn", width=0.25)
    assert [c.out_channels for c in narrow.modules() if isinstance(c, nn.Conv2d)] == [32] * 3 + [64] * 3 + [80] * 2 + [10]
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ModelConfigError, match="width"):
        build_model("enorm_fullconv", num_classes=10, image_size=32, act_norm="bn", width=0)


def test_scaled_rounding():
    assert [scaled(64, w) for w in (1, 0.5, 0.25, 2, 0.3)] == [64, 32, 16, 128, 19]
    assert scaled(5, 0.5) == 2 and scaled(3, 0.5) == 2  # ties to even (Python's round)
    assert scaled(64, 1e-3) == 1  # never zero channels


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_width_scales_parameters_quadratically(name):
    full = count_parameters(_build(name, 32, width=1.0))
    half = count_parameters(_build(name, 32, width=0.5))
    # conv/linear weights scale as width^2; norms, biases and the input/output layers linearly
    assert 0.2 * full < half < 0.35 * full


@pytest.mark.parametrize("name,act_norm", WIDTH_CASES)
def test_narrow_models_run(name, act_norm):
    model = _build(name, 32, act_norm, width=0.25)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_groups == gn_groups(m.num_channels) and m.num_channels % m.num_groups == 0


@pytest.mark.parametrize("name,width,stem,features", [
    ("resnet18", 0.25, 16, 128), ("resnet50", 0.25, 16, 512), ("resnet18", 0.3, 19, 154),
    ("densenet121", 0.25, 16, 256), ("googlenet", 0.25, 48, 256), ("googlenet", 0.3, 58, 306),
])
def test_width_sets_channels(name, width, stem, features):
    """The stem's output and the classifier's input channels at a width."""
    model = _build(name, 32, "gn", width=width)
    layers = _convs_linears(model)
    assert layers[0].out_channels == stem and layers[-1].in_features == features
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("width,base,heads,dim", [
    (0.5, 384, 6, 192), (0.3, 384, 6, 114), (1e-3, 384, 6, 6), (0.3, 96, 6, 30), (2.0, 96, 4, 192),
])
def test_vit_width(width, base, heads, dim):
    """width scales the embedding dim to the nearest multiple of heads (>= one dim per head)."""
    model = _build("vit", 32, width=width, dim=base, heads=heads)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert model.pos_embed.shape[-1] == model.head.in_features == dim
    assert all(a.num_heads == heads and a.num_heads * a.head_dim == a.q.in_features == dim for a in attns)
    assert model.blocks[0].mlp.fc1.out_features == 4 * dim
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_swap_norm_torchvision_style():
    import torchvision

    model = swap_norm(torchvision.models.resnet18(weights=None), "none")
    assert not any(isinstance(m, NORM_LAYERS) for m in model.modules())
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_enorm_fc(depth):
    model = _build("enorm_fc", 32, "bn", depth=depth)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == depth + 2
    assert linears[0].in_features == 3 * 32 * 32 and linears[-1].out_features == 10
    assert all(m.bias is None for m in linears)
    assert all(m.out_features == 500 for m in linears[:-1])
    kids = list(model.children())
    bns = [i for i, m in enumerate(kids) if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == depth + 1  # after every hidden Linear, before its ReLU
    assert all(isinstance(kids[i - 1], nn.Linear) and isinstance(kids[i + 1], nn.ReLU) for i in bns)
    assert isinstance(kids[-1], nn.Linear)  # logits straight from the classifier
    gn = _build("enorm_fc", 32, "gn", depth=depth)
    assert sum(isinstance(m, nn.GroupNorm) for m in gn.modules()) == depth + 1
    # the input size follows in_channels * image_size**2
    fc = build_model("enorm_fc", num_classes=10, image_size=28, in_channels=1, act_norm="none")
    assert fc(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_enorm_fullconv():
    model = _build("enorm_fullconv", 32, "bn")
    kids = list(model.children())
    convs = [i for i, m in enumerate(kids) if isinstance(m, nn.Conv2d)]
    bns = [i for i, m in enumerate(kids) if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 9 and bns == [convs[2] + 1, convs[5] + 1]
    assert all(kids[i].bias is None for i in convs)
    assert [kids[i].out_channels for i in convs] == [128] * 3 + [256] * 3 + [320, 320, 10]
    assert not any(isinstance(m, nn.ReLU) for m in kids[convs[-1]:])  # logits, no ReLU
    assert sum(isinstance(m, nn.GroupNorm) for m in _build("enorm_fullconv", 32, "gn").modules()) == 2

    quirk = _build("enorm_fullconv", 28, "bn", official_quirk=True)
    assert quirk(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    assert isinstance(list(quirk.children())[-3], nn.ReLU)  # the official ReLU on the logits
    with pytest.raises(ModelConfigError, match="28"):
        check_model("enorm_fullconv", image_size=32, act_norm="bn", official_quirk=True)
    assert isinstance(quirk, EnormFullConv)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="resnet19", image_size=32, act_norm="bn"), "resnet18"),
    (dict(name="resnet18", image_size=32, act_norm="ln"), "'bn', 'gn', 'none'"),
    (dict(name="vit", image_size=32, act_norm="bn"), "'ln'"),
    (dict(name="vit", image_size=32, act_norm="ln", patch_size=5), "patch_size=5 does not divide"),
    (dict(name="vit", image_size=32, act_norm="ln", dim=100, heads=6), "divisible"),
    (dict(name="vit", image_size=200, act_norm="ln"), "multiple of 16"),
    (dict(name="vit", image_size=32, act_norm="ln", depht=3), "unknown option.*depth"),
    (dict(name="vit", image_size=32, act_norm="ln", depth="3"), "must be a int"),
    (dict(name="resnet18", image_size=32, act_norm="bn", depth=3), "valid options: width"),
    (dict(name="resnet18", image_size=32, act_norm="bn", width=0), "width=0 must be a finite number > 0"),
    (dict(name="densenet121", image_size=32, act_norm="gn", width=-0.5), "width=-0.5 must be"),
    (dict(name="googlenet", image_size=32, act_norm="bn", width=float("inf")), "finite number > 0"),
    (dict(name="vit", image_size=32, act_norm="ln", width=float("nan")), "finite number > 0"),
    (dict(name="resnet34", image_size=32, act_norm="bn", width="0.5"), "width='0.5' must be a number"),
    (dict(name="resnet50", image_size=32, act_norm="bn", width=True), "must be a number"),
    (dict(name="resnet18", image_size=224, act_norm="bn", width=0.5), "no width multiplier"),
    (dict(name="vit", image_size=224, act_norm="ln", width=2.0), "width must be 1"),
    (dict(name="densenet121", image_size=4, act_norm="bn"), ">= 8"),
    (dict(name="enorm_fc", image_size=32, act_norm="bn", depth=-1), "depth >= 0"),
])
def test_config_errors(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ModelConfigError, match=match):
        check_model(name, **kwargs)
    with pytest.raises(ModelConfigError):
        build_model(name, num_classes=10, **kwargs)
    assert issubclass(ModelConfigError, ValueError)


def test_build_args_validated():
    with pytest.raises(ModelConfigError, match="num_classes"):
        build_model("resnet18", num_classes=0, image_size=32)
    assert default_options("vit")["patch_size"] == 4
    assert default_options("vit", 224) == {"dropout": 0.0, "width": 1.0}
    for name in CIFAR_MODELS:
        assert default_options(name)["width"] == default_options(name, 224)["width"] == 1.0


@pytest.mark.parametrize("name", MODELS)
def test_fx_trace_and_stem_classifier(name):
    model = build_model(name, num_classes=7, image_size=32, in_channels=1,
                        act_norm=supported_act_norms(name)[0], **SMALL.get(name, {})).eval()
    layers = _convs_linears(model)
    stem, head = layers[0], layers[-1]
    assert stem.in_channels == 1 if isinstance(stem, nn.Conv2d) else stem.in_features == 32 * 32
    assert (head.out_channels if isinstance(head, nn.Conv2d) else head.out_features) == 7
    gm = fx.symbolic_trace(model)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))
    # CNNs use ReLU modules, never functional relu
    assert not any(n.op in ("call_function", "call_method") and "relu" in str(n.target) for n in gm.graph.nodes)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_imagenet_size_stem_classifier(name):
    model = build_model(name, num_classes=5, image_size=96 if name != "vit" else 224, in_channels=1,
                        act_norm=supported_act_norms(name)[0]).eval()
    layers = _convs_linears(model)
    assert layers[0].in_channels == 1 and layers[-1].out_features == 5


def test_vit_attention_modules():
    model = _build("vit", 32)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attns) == 2
    for a in attns:
        assert all(isinstance(getattr(a, n), nn.Linear) and getattr(a, n).bias is not None
                   for n in ("q", "k", "v", "proj"))
        assert a.num_heads * a.head_dim == a.q.in_features == 96
    big = _build("vit", 224, classes=1000)
    assert sum(isinstance(m, Attention) for m in big.modules()) == 12
    assert not any(isinstance(m, nn.MultiheadAttention) for m in big.modules())


def test_torchvision_attention_matches_mha():
    mha = nn.MultiheadAttention(64, 4, batch_first=True)
    nn.init.normal_(mha.in_proj_bias)
    attn = TorchvisionAttention.from_mha(mha).eval()
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, x, x, need_weights=False)[0], mha(x, x, x, need_weights=False)[0])
