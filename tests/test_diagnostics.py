"""Diagnostics: condition numbers and the top Hessian eigenvalue."""

import math

import pytest
import torch
from torch import nn

from wcnorm.methods.baselines import weight_normalization
from wcnorm.methods.diagnostics import (
    condition_number,
    condition_numbers,
    hessian_top_eigenvalue,
    summarize_conditioning,
)
from wcnorm.methods.wc import weight_conditioning


def with_singular_values(s, m, gen):
    n = len(s)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(m, n, generator=gen, dtype=torch.float64))
    return U @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ V.T


def test_known_condition_number():
    gen = torch.Generator().manual_seed(0)
    W = with_singular_values([50.0, 3.0, 1.0, 0.5], 12, gen)
    assert condition_number(W) == pytest.approx(100.0, rel=1e-10)
    assert condition_number(W.reshape(4, 3, 2, 2).float()) == pytest.approx(100.0, rel=1e-4)
    assert condition_number(torch.zeros(3, 4)) == math.inf


def test_grouped_conv_is_block_diagonal():
    # blocks [[1], [2]] and [[3], [4]]: singular values sqrt(5) and 5 (as a flat 4 x 1 matrix: 1)
    conv = nn.Conv2d(2, 4, 1, groups=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1))
    assert condition_numbers(conv, all_layers=True)[0]["kappa_eff"] == pytest.approx(5**0.5)


def test_wc_lowers_kappa_on_badly_scaled_rows():
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Conv1d(16, 16, 1), nn.Linear(16, 2))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(10 ** (6 * torch.rand(16, *[1] * (layer.weight.dim() - 1), generator=gen) - 3))
    assert condition_numbers(model) == []  # nothing conditioned yet
    plain = condition_numbers(model, all_layers=True)
    assert [r["layer"] for r in plain] == ["0", "2", "3"]
    assert all(r["kappa_eff"] == r["kappa_raw"] for r in plain)
    weight_conditioning(model)
    rows = condition_numbers(model)
    assert [r["layer"] for r in rows] == ["0", "2"] and rows[1]["shape"] == [16, 16, 1]
    for r, before in zip(rows, plain):
        assert r["kappa_raw"] == pytest.approx(before["kappa_raw"])
        assert r["kappa_eff"] < 0.01 * r["kappa_raw"]
        assert r["row_norm_spread"] > 100
    assert len(condition_numbers(model, all_layers=True)) == 3


def test_wn_raw_is_direction():
    model = weight_normalization(nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2)))
    (r,) = condition_numbers(model)
    assert r["kappa_eff"] == pytest.approx(r["kappa_raw"], rel=1e-5)  # g = ||V|| at init


def test_summarize_conditioning():
    rows = [{"kappa_eff": e, "kappa_raw": r} for e, r in [(1.0, 10.0), (3.0, 30.0), (2.0, 40.0), (9.0, 5.0)]]
    assert summarize_conditioning(rows) == {"num_layers": 4, "kappa_eff_median": 2.5, "kappa_eff_max": 9.0,
                                            "kappa_raw_median": 20.0, "kappa_raw_max": 40.0}
    assert summarize_conditioning([])["kappa_eff_median"] is None


def test_hessian_top_eigenvalue_quadratic():
    """Linear layer without bias, MSE loss: L = 1/(N k) sum ||W x - y||^2, so the Hessian
    is block-diagonal with one block 2/(N k) X^T X per output; top eigenvalue known."""
    gen = torch.Generator().manual_seed(0)
    N, d, k = 64, 6, 3
    X = torch.randn(N, d, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 3.0, d, dtype=torch.float64)
    Y = torch.randn(N, k, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, k, bias=False).double()
    expected = torch.linalg.eigvalsh(2.0 / (N * k) * X.T @ X)[-1].item()
    got = hessian_top_eigenvalue(model, nn.MSELoss(), X, Y, iters=200, tol=1e-10)
    assert got == pytest.approx(expected, rel=1e-6)


def test_hessian_restores_bn_buffers_and_runs_with_wc():
    torch.manual_seed(0)
    model = weight_conditioning(nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)))
    before = model[1].running_mean.clone()
    lam = hessian_top_eigenvalue(model, nn.CrossEntropyLoss(), torch.randn(16, 5), torch.randint(0, 3, (16,)))
    assert math.isfinite(lam)
    torch.testing.assert_close(model[1].running_mean, before)
