"""ENorm(fused=True): a chain's sequential cycle, each weight visited once, against the
packed waves (the reference), in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wcnorm.methods.enorm import ENorm
from wcnorm.methods.enorm.fused import chain_links
from wcnorm.models.enorm_nets import EnormFC, EnormFullConv

TOL = dict(rtol=1e-12, atol=1e-12)  # the order of operations differs (see fused.py)


def _mlp(bias: bool) -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16, bias=bias), nn.ReLU(), nn.Linear(16, 12, bias=bias), nn.ReLU(),
                         nn.Linear(12, 9, bias=bias), nn.ReLU(), nn.Linear(9, 4, bias=bias))


def _conv_flatten() -> nn.Module:
    """A conv stack read by a Linear through a flatten: 16 columns per unit at the end."""
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5 * 16, 7), nn.ReLU(), nn.Linear(7, 3))


CHAINS = {
    "enorm_fc": (lambda: EnormFC(20, 5, depth=3, width=16), (6, 20)),
    "mlp_bias": (lambda: _mlp(True), (6, 8)),
    "mlp": (lambda: _mlp(False), (6, 8)),
    "conv_flatten": (_conv_flatten, (6, 3, 8, 8)),
    "fullconv": (lambda: EnormFullConv(4, width=0.05), (2, 3, 16, 16)),
}


def _pair(name, optimizer: str, seed: int = 0):
    """(model, optimizer) twice, identical, float64, after one optimizer step (so the
    optimizer has state to rescale)."""
    build, shape = CHAINS[name]
    torch.manual_seed(seed)
    model = build().double()
    x = torch.randn(shape, dtype=torch.float64)
    out = []
    for m in (model, copy.deepcopy(model)):
        opt = (torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
               if optimizer == "sgd" else torch.optim.AdamW(m.parameters(), lr=1e-2))
        m(x).square().mean().backward()
        opt.step()
        out.append((m, opt))
    return out


def _state(model, opt) -> list[torch.Tensor]:
    bufs = [v for p in model.parameters() for v in opt.state[p].values() if torch.is_tensor(v) and v.ndim]
    return [p.detach() for p in model.parameters()] + bufs


@pytest.mark.parametrize("name", sorted(CHAINS))
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("bias_in_norm", [False, True])
def test_fused_cycle_equals_the_packed_waves_to_rounding(name, optimizer, bias_in_norm):
    (m1, o1), (m2, o2) = _pair(name, optimizer)
    fused = ENorm(m1, o1, c=1.2, bias_in_norm=bias_in_norm, fused=True)
    ref = ENorm(m2, o2, c=1.2, bias_in_norm=bias_in_norm)
    assert fused.fused and not ref.fused
    before = ref.objective()
    for _ in range(4):
        fused.step()
        ref.step()
        for a, b in zip(_state(m1, o1), _state(m2, o2)):
            torch.testing.assert_close(a, b, **TOL)
    assert ref.objective() < before  # the cycles did something
    moved = [not torch.equal(a, b) for a, b in zip(_state(m1, o1), _state(*_pair(name, optimizer)[0]))]
    assert any(moved)


def test_fused_cycle_keeps_the_function_of_a_chain():
    (m, o), _ = _pair("mlp_bias", "sgd")
    x = torch.randn(5, 8, dtype=torch.float64)
    y = m(x)
    e = ENorm(m, o, c=1.0, fused=True)
    e.step(3)
    torch.testing.assert_close(m(x), y, rtol=1e-12, atol=1e-12)
    assert e.imbalance()[1] < 0.5  # converging to balance


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.relu(h + self.c(torch.relu(self.b(h))))  # a tie: not a chain
        return self.out(h)


@pytest.mark.parametrize("case", ["residual", "jacobi"])
def test_fused_falls_back_to_the_packed_waves_off_a_chain(case):
    torch.manual_seed(0)
    model = _Residual().double() if case == "residual" else _mlp(True).double()
    ref_model = copy.deepcopy(model)
    order = "jacobi" if case == "jacobi" else "sequential"
    e, ref = ENorm(model, c=1.2, order=order, fused=True), ENorm(ref_model, c=1.2, order=order)
    assert not e.fused
    e.step(2)
    ref.step(2)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)  # the same code: bitwise


def test_chain_links_read_a_chain_only():
    torch.manual_seed(0)
    assert chain_links(ENorm(_mlp(True)).groups) is not None
    assert chain_links(ENorm(_Residual()).groups) is None
    # balance_last=False leaves the classifier out: still a chain, one group shorter
    links = chain_links(ENorm(_mlp(False), balance_last=False).groups)
    assert links is not None and len(links) == 2


def test_the_runner_passes_the_option(tmp_path):
    from conftest import compose_cfg

    from wcnorm.training.assemble import assemble

    cfg = compose_cfg(["model=enorm_fc", "norm=enorm", "norm.enorm.fused=true", "++model.depth=2",
                       "++model.width=32"])
    run = assemble(cfg, torch.device("cpu"))
    assert run.enorm.fused and run.enorm.options["fused"]
