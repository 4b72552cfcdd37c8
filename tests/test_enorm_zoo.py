"""ENorm on every model of the zoo: function invariance, the groups found, refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from wcnorm.methods import support, weight_method
from wcnorm.methods.enorm import ENorm
from wcnorm.methods.wc import WeightConditioning
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


# ----------------------------------------------------------- rules the torchvision zoo needs
def se_net(gate_rank_known=True):
    """conv-BN-ReLU, then a squeeze-and-excitation gate (torchvision's order: scale * x),
    then a conv reading the gated channels."""

    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool, self.fc1, self.relu = nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.ReLU()
            self.fc2, self.gate = nn.Conv2d(4, 8, 1), nn.Hardsigmoid()
            self.p = nn.Parameter(torch.randn(8, 1, 1))

        def forward(self, x):
            if not gate_rank_known:  # a gate made of a parameter: its rank is unknown to the trace
                return torch.sigmoid(self.p) * x
            return self.gate(self.fc2(self.relu(self.fc1(self.pool(x))))) * x

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), SE(), nn.Conv2d(8, 6, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)).double().eval()


def group_of(enorm, producer):
    return next(g for g in enorm.groups if any(s.name == producer for s in g.incoming))


def test_a_gate_passes_the_channels_it_multiplies():
    model = se_net()
    enorm = ENorm(model, bn="fold", c=1.1)
    # the BN's units (fold: gamma, beta) reach the gate's squeeze and, through the product, conv 4
    assert {s.name for s in group_of(enorm, "1").outgoing} == {"3.fc1", "4"}
    assert "Hardsigmoid (not positively homogeneous)" in enorm.excluded
    assert_invariant(model, enorm)
    # a gate whose rank the trace cannot know might broadcast the channel axis away: stopped
    enorm = ENorm(se_net(gate_rank_known=False), bn="fold")
    assert not any(s.name == "1" for g in enorm.groups for s in g.incoming)
    assert any(r.startswith("mul") for r in enorm.excluded)


def test_depthwise_convs_are_consumers_along_their_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, groups=8), nn.ReLU(),
                          nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(),
                          nn.Flatten(), nn.LazyLinear(2)).double()
    model(torch.randn(1, 3, 16, 16, dtype=torch.float64))  # materialize the lazy classifier
    enorm = ENorm(model.eval(), c=1.1)
    [out] = group_of(enorm, "0").outgoing  # depth multiplier 2: channel i reads rows 2i, 2i+1
    assert (out.name, out.dim, out.per_unit, out.bias) == ("2", 0, 2, None)
    assert [s.name for s in group_of(enorm, "2").outgoing] == ["4"]  # and it produces, as any conv
    # a grouped conv with 2 channels per group reads a block of rows x columns: no rule
    assert enorm.excluded["Conv2d 6 (grouped conv input, 2 channels per group: no rule)"] == 4
    assert_invariant(model, enorm)


@pytest.mark.parametrize("act", [nn.SiLU, nn.Hardswish, nn.ReLU6, nn.GELU])
def test_activations_that_are_not_positively_homogeneous_are_refused(act):
    with pytest.raises(ValueError, match=rf"4 x {act.__name__} \(not positively homogeneous\)"):
        ENorm(nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 2)))


def test_stochastic_depth_passes_like_dropout():
    from torchvision.ops import StochasticDepth

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.relu, self.b, self.drop = nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), StochasticDepth(0.2, "row")

        def forward(self, x):
            return x + self.drop(self.b(self.relu(self.a(x))))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), Block(), nn.ReLU(), nn.Linear(6, 2)).double().eval()
    enorm = ENorm(model, c=1.1)
    assert len(group_of(enorm, "0").incoming) == 2  # the stream: 0 and the block's b, tied
    x = torch.randn(3, 4, dtype=torch.float64)
    y0 = model(x)
    enorm.step(3)
    assert rel(model(x), y0) <= 1e-10


def test_a_model_fx_cannot_trace_is_refused_in_one_line_naming_the_layer():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x  # control flow on a tensor

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Branchy(), nn.Linear(4, 2))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError) as info:
        ENorm(model)
    message = str(info.value)
    assert "\n" not in message
    assert "could not be traced (in 2 (Branchy), test_enorm_zoo.py:" in message
    assert message.endswith("TraceError: symbolically traced variables cannot be used as inputs to control flow")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ------------------------------------------------------------------ the support matrix
TORCHVISION = {name: (params, size) for name, params, size in support.zoo()}


def test_the_zoo_is_read_from_torchvisions_metadata():
    assert TORCHVISION["resnet18"] == (11_689_512, 32) and TORCHVISION["inception_v3"][1] == 75
    assert "resnet101" not in TORCHVISION and "maxvit_t" in TORCHVISION  # 44.5 M out, 30.9 M in
    params = list(p for p, _ in TORCHVISION.values())
    assert params == sorted(params) and len(TORCHVISION) >= 40


def test_the_checks_report_what_goes_wrong(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    assert support.check_wc(model, x).status == "yes"
    assert support.check_enorm(copy.deepcopy(model), x).status == "yes"

    def rows_of_two(m):  # a "WC" whose rows are not unit-norm
        for layer in (m[0],):
            parametrize.register_parametrization(layer, "weight", WeightConditioning())
            parametrize.register_parametrization(layer, "weight", Double())
        return m

    monkeypatch.setattr(support, "weight_conditioning", rows_of_two)
    monkeypatch.setattr(support, "installed_methods", lambda m: [weight_method.Installed("0", m[0], "weight", None)])
    assert support.check_wc(model, x) == support.Outcome("fails", "0: rows 1.0e+00 from unit norm")

    monkeypatch.setattr(ENorm, "step", lambda self, cycles=1: model[2].weight.data.mul_(2))
    outcome = support.check_enorm(model, x)
    assert outcome.status == "fails" and outcome.detail.startswith("the function changed by")
    monkeypatch.setattr(ENorm, "step", lambda self, cycles=1: (model[0].weight.data.mul_(3), model[0].bias.data.mul_(3),
                                                               model[2].weight.data.div_(3)))
    outcome = support.check_enorm(model, x)
    assert outcome.status == "fails" and outcome.detail.startswith("the objective rose")


class Double(nn.Module):
    def forward(self, w):
        return 2 * w


def test_the_matrix_renders_one_row_per_model():
    rows = [support.Support("a", 1_500_000, 32, support.Outcome("yes", "3 layers"),
                            support.Outcome("yes", "5 of 9 units, objective x0.90", "SiLU: 4 units")),
            support.Support("b", 20_000_000, 75, support.Outcome("refused", "msg", "no Conv|Linear"),
                            support.Outcome("refused", "long message", "no unit: GELU: 9 units"))]
    assert support.render_markdown(rows).splitlines()[2:] == [
        "| a | 1.5 M | 32 | yes: 3 layers | yes: 5 of 9 units, objective x0.90 | SiLU: 4 units |",
        "| b | 20.0 M | 75 | refused | refused | WC: no Conv/Linear; no unit: GELU: 9 units |"]


def documented_support() -> dict[str, tuple[str, str]]:
    """docs/support.md's WC and ENorm columns, by model."""
    rows = {}
    for line in (Path(__file__).resolve().parent.parent / "docs" / "support.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in TORCHVISION:
            rows[cells[0]] = (cells[3].split(":")[0], cells[4].split(":")[0])
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_support(name):
    """Each method works or refuses before changing anything, in one line; as documented."""
    model = support.build(name)
    x = torch.randn(1, 3, TORCHVISION[name][1], TORCHVISION[name][1], dtype=torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    outcomes = {"WC": support.check_wc(model, x)}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # WC works on a copy
    outcomes["ENorm"] = support.check_enorm(model, x)
    for method, o in outcomes.items():
        assert o.status in ("yes", "refused"), f"{method} on {name}: {o.detail}"
        assert "\n" not in o.detail + o.reason and "Traceback" not in o.detail
    if outcomes["ENorm"].status == "refused":
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert outcomes["ENorm"].reason.startswith("no unit: ") or "could not be traced" in outcomes["ENorm"].reason
    assert documented_support().get(name) == (outcomes["WC"].status, outcomes["ENorm"].status), \
        "docs/support.md is out of date: python scripts/support_matrix.py"
