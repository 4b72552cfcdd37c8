"""ENorm on every model of the zoo: function invariance, the groups found, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wcnorm.methods.enorm import ENorm
from wcnorm.models import build_model

CNNS = ["resnet18", "resnet50", "densenet121", "googlenet", "enorm_fc", "enorm_fullconv"]
OPTIONS = {"enorm_fc": {"depth": 2}, "vit": {"dim": 32, "depth": 2, "heads": 4}}


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def build(name, act_norm, size=32, **kw):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, image_size=size, act_norm=act_norm,
                        **{**OPTIONS.get(name, {}), **kw})
    for m in model.modules():  # non-trivial norm parameters and statistics
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            m.weight.data = 0.5 + torch.rand_like(m.weight)
            m.bias.data = 0.3 * torch.randn_like(m.bias)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean = 0.2 * torch.randn_like(m.running_mean)
            m.running_var = 0.5 + torch.rand_like(m.running_var)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.data = 0.1 * torch.randn_like(m.bias)
    return model.double().eval()


def assert_invariant(model, enorm, size=16):
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        y0 = model(x)
        enorm.step()
        assert rel(model(x), y0) <= 1e-10
        enorm.step(9)
        assert rel(model(x), y0) <= 1e-10


# GroupNorm folds exactly like BatchNorm: checked on the cheaper models only
CASES = [(n, a, b) for n in CNNS for a, b in (("none", "ignore"), ("bn", "fold"), ("gn", "fold"))
         if a != "gn" or n in ("resnet18", "enorm_fc", "enorm_fullconv")]


@pytest.mark.parametrize("name, act_norm, bn", [c if c[0].startswith("enorm") else pytest.param(*c, marks=pytest.mark.slow)
                                                 for c in CASES])  # the CIFAR zoo in float64: seconds each
def test_zoo_invariance(name, act_norm, bn):
    model = build(name, act_norm)
    enorm = ENorm(model, c=1.1, bn=bn)
    assert enorm.num_units > 0
    size = 32 if name == "enorm_fc" else 16
    assert_invariant(model, enorm, size)


def test_zoo_fullconv_official_quirk():
    model = build("enorm_fullconv", "bn", size=28, official_quirk=True)
    enorm = ENorm(model, c=1.1, bn="fold", balance_last=False)
    assert_invariant(model, enorm, 28)


def test_zoo_vit_attention():
    model = build("vit", "ln")
    with pytest.raises(ValueError, match="attention=True"):
        ENorm(model)
    enorm = ENorm(model, attention=True, c=1.1)
    assert len(enorm.groups) == 2 * 2 and "attn.q rows" in enorm.describe()
    assert_invariant(model, enorm, 32)


def test_zoo_groups():
    # ResNet-18 without norm: one tied group per stage, one internal group per block
    enorm = ENorm(build("resnet18", "none"))
    assert [g.n for g in enorm.groups if len(g.incoming) > 1] == [64, 128, 256, 512]
    assert len(enorm.groups) == 4 + 8
    # the paper's FC net: every hidden layer; without the last one if balance_last=False
    assert ENorm(build("enorm_fc", "none")).num_units == 3 * 500
    assert ENorm(build("enorm_fc", "none"), balance_last=False).num_units == 2 * 500
    # fully convolutional net with BN (ignore): all 8 hidden layers
    assert len(ENorm(build("enorm_fullconv", "bn")).groups) == 8
