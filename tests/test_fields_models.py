"""Field models: positional encoding, NeRF, the occupancy MLP, and which layers the
weight methods touch."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from wcnorm.fields.render import RenderSettings, render_rays
from wcnorm.methods import apply_weight_method
from wcnorm.methods.weight_method import weight_layers
from wcnorm.models.coordinate_mlps import (
    CoarseFineNeRF,
    GaussianActivation,
    NeRF,
    OccupancyMLP,
    PositionalEncoding,
    Sine,
    build,
    default_options,
)


def test_positional_encoding_frequencies():
    enc = PositionalEncoding(4, base=math.pi)
    x = torch.tensor([[0.1, -0.3, 0.7]], dtype=torch.float64)
    out = enc(x)
    assert out.shape == (1, 3 + 3 * 2 * 4) == (1, enc.out_features)
    torch.testing.assert_close(out[:, :3], x)  # the input itself comes first
    sines, cosines = out[:, 3:15].reshape(4, 3), out[:, 15:].reshape(4, 3)
    for k in range(4):
        torch.testing.assert_close(sines[k], torch.sin(2**k * math.pi * x[0]))
        torch.testing.assert_close(cosines[k], torch.cos(2**k * math.pi * x[0]))
    assert PositionalEncoding(10).out_features == 63
    assert PositionalEncoding(4).out_features == 27
    assert PositionalEncoding(8).out_features == 51
    assert PositionalEncoding(2, include_input=False).out_features == 12


def test_the_highest_frequency_has_the_expected_period():
    # sin(2^(L-1) b x) repeats after 2 / 2^(L-1) for b = pi: the finest detail it resolves
    enc = PositionalEncoding(8, base=math.pi)
    x = torch.tensor([[0.123, 0.0, 0.0]], dtype=torch.float64)
    shifted = x + torch.tensor([[2 / 2**7, 0.0, 0.0]], dtype=torch.float64)
    a, b = enc(x), enc(shifted)
    assert torch.allclose(a[0, 3 + 7 * 3], b[0, 3 + 7 * 3])  # k = 7, x coordinate
    assert not torch.allclose(a[0, 3 + 6 * 3], b[0, 3 + 6 * 3])  # k = 6 has moved by half a period


def test_nerf_paper_architecture():
    model = NeRF()
    assert [layer.in_features for layer in model.trunk] == [63, 256, 256, 256, 256, 256 + 63, 256, 256]
    assert len(model.trunk) == 8 and all(layer.out_features == 256 for layer in model.trunk)
    assert (model.sigma_head.in_features, model.sigma_head.out_features) == (256, 1)
    assert (model.view.in_features, model.view.out_features) == (256 + 27, 128)
    assert (model.rgb_head.in_features, model.rgb_head.out_features) == (128, 3)
    assert all(isinstance(a, nn.ReLU) for a in model.trunk_act)


def test_nerf_outputs_and_view_dependence():
    torch.manual_seed(0)
    model = NeRF(depth=4, width=32, skips=(1,), density_activation="softplus")
    points = torch.randn(50, 3)
    dirs = nn.functional.normalize(torch.randn(50, 3), dim=-1)
    rgb, sigma = model(points, dirs)
    assert rgb.shape == (50, 3) and sigma.shape == (50,)
    assert ((rgb > 0) & (rgb < 1)).all() and (sigma > 0).all()  # sigmoid; softplus > 0
    rgb2, sigma2 = model(points, -dirs)
    torch.testing.assert_close(sigma2, sigma)  # density does not depend on the view
    assert not torch.allclose(rgb2, rgb)  # colour does
    relu = NeRF(depth=2, width=16, skips=())
    assert (relu(points, dirs)[1] >= 0).all()


def test_gaussian_nerf_reads_raw_coordinates():
    model = NeRF(depth=6, width=64, skips=(3,), activation="gaussian")
    assert model.trunk[0].in_features == 3 and model.trunk[4].in_features == 64 + 3
    assert model.view.in_features == 64 + 3
    assert all(isinstance(a, GaussianActivation) for a in [*model.trunk_act, model.view_act])
    encoded = NeRF(depth=2, width=16, skips=(), activation="gaussian", encoding=True)
    assert encoded.trunk[0].in_features == 63
    rgb, sigma = model(torch.rand(7, 3), nn.functional.normalize(torch.randn(7, 3), dim=-1))
    assert rgb.shape == (7, 3) and sigma.shape == (7,)


def test_nerf_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown activation 'sine'"):
        NeRF(activation="sine")
    with pytest.raises(ValueError, match="skips"):
        NeRF(depth=4, skips=(3,))
    with pytest.raises(ValueError, match="density_activation"):
        NeRF(density_activation="exp")


def parametrized(model):
    return [n for n, m in model.named_modules() if parametrize.is_parametrized(m, "weight")]


def hidden_names(model):
    return [n for n, _ in weight_layers(model)]


def test_weight_methods_skip_nerf_heads():
    model = NeRF(depth=4, width=16, skips=(1,))
    assert hidden_names(model) == ["trunk.0", "trunk.1", "trunk.2", "trunk.3", "feature", "view"]
    assert [n for n, _ in weight_layers(model, include_classifier=True)] == [
        "trunk.0", "trunk.1", "trunk.2", "trunk.3", "sigma_head", "feature", "view", "rgb_head"]
    pair = CoarseFineNeRF(depth=2, width=8, skips=())
    assert hidden_names(pair) == [f"{net}.{layer}" for net in ("coarse", "fine")
                                  for layer in ("trunk.0", "trunk.1", "feature", "view")]


def test_weight_methods_skip_the_occupancy_logit():
    model = OccupancyMLP(depth=3, width=16)
    assert hidden_names(model) == ["hidden.0", "hidden.1", "hidden.2"]


@pytest.mark.parametrize("method", ["wc", "ws", "wn"])
def test_weight_methods_apply_to_field_models(method):
    torch.manual_seed(0)
    nerf = apply_weight_method(NeRF(depth=3, width=16, skips=(0,)), method)
    assert parametrized(nerf) == ["trunk.0", "trunk.1", "trunk.2", "feature", "view"]
    rgb, sigma = nerf(torch.rand(5, 3), nn.functional.normalize(torch.randn(5, 3), dim=-1))
    (rgb.sum() + sigma.sum()).backward()
    occupancy = apply_weight_method(OccupancyMLP(depth=2, width=16, activation="sine"), method)
    assert parametrized(occupancy) == ["hidden.0", "hidden.1"]
    assert occupancy(torch.rand(4, 3)).shape == (4,)


def test_occupancy_mlp_default_architecture():
    model = OccupancyMLP()
    assert isinstance(model.encode, PositionalEncoding) and model.encode.out_features == 51
    assert [(m.in_features, m.out_features) for m in [*model.hidden, model.out]] == [
        (51, 256), (256, 256), (256, 256), (256, 256), (256, 1)]
    logits = model(torch.rand(2, 5, 3) * 2 - 1)
    assert logits.shape == (2, 5)  # any leading shape, one logit per point


def test_siren_initialisation():
    torch.manual_seed(0)
    model = OccupancyMLP(depth=3, width=256, activation="sine")
    assert isinstance(model.encode, nn.Identity) and model.hidden[0].in_features == 3
    assert all(isinstance(a, Sine) and a.omega0 == 30.0 for a in model.acts)
    first = model.hidden[0].weight
    assert first.abs().max() <= 1 / 3 and first.abs().max() > 0.3  # U(-1/3, 1/3)
    bound = math.sqrt(6 / 256) / 30
    for layer in [*model.hidden[1:], model.out]:
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
    # SIREN's point: hidden pre-activations stay spread (about unit variance) through depth
    h = torch.rand(4096, 3) * 2 - 1
    for layer, act in zip(model.hidden, model.acts):
        pre = 30.0 * layer(h)
        h = act(layer(h))
    assert 0.4 < pre.std() < 2.0


def test_gaussian_occupancy_and_bad_activation():
    model = OccupancyMLP(depth=2, width=8, activation="gaussian", gaussian_sigma=0.05)
    assert isinstance(model.encode, nn.Identity) and model.acts[0].sigma == 0.05
    x = torch.tensor([[0.0, 0.0, 0.0]])
    torch.testing.assert_close(model.acts[0](torch.tensor([0.05])), torch.tensor([math.exp(-0.5)]))
    assert model(x).shape == (1,)
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        OccupancyMLP(activation="tanh")


def test_build_by_name():
    assert isinstance(build("nerf", depth=2, width=8, skips=()), CoarseFineNeRF)
    assert isinstance(build("nerf", coarse_fine=False, depth=2, width=8, skips=()), NeRF)
    assert isinstance(build("occupancy", width=8), OccupancyMLP)
    with pytest.raises(ValueError, match="unknown field model 'sdf'"):
        build("sdf")
    assert default_options("nerf")["skips"] == (4,) and default_options("nerf")["depth"] == 8
    assert default_options("occupancy") == {"depth": 4, "width": 256, "activation": "relu",
                                            "encoding": None, "freqs": 8, "omega0": 30.0,
                                            "gaussian_sigma": 0.1}


def test_a_nerf_renders_and_learns_a_batch_of_rays():
    torch.manual_seed(0)
    pair = CoarseFineNeRF(depth=2, width=32, skips=())
    rays_o = torch.zeros(32, 3) + torch.tensor([0.0, 0.0, 4.0])
    rays_d = nn.functional.normalize(torch.randn(32, 3) * 0.1 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    target = torch.tensor([0.2, 0.5, 0.8]).expand(32, 3)
    settings = RenderSettings(2.0, 6.0, n_coarse=16, n_fine=16)
    optimizer = torch.optim.Adam(pair.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        out = render_rays(pair.coarse, pair.fine, rays_o, rays_d, settings, perturb=True)
        loss = sum(nn.functional.mse_loss(r.rgb, target) for r in out.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
