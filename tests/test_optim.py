"""Optimizers and per-step schedules."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from wcnorm.training.optim import build_optimizer, build_scheduler, param_groups


def lrs(sched: dict, epochs=4, steps=10, lr=1.0):
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, OmegaConf.create(dict(name="sgd", lr=lr, momentum=0.9, nesterov=False, weight_decay=0.0)))
    s = build_scheduler(opt, OmegaConf.create(sched), steps_per_epoch=steps, epochs=epochs)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    return out


def test_cosine_starts_at_the_base_lr_and_ends_near_zero():
    lr = lrs({"name": "cosine", "warmup_epochs": 0})
    assert lr[0] == 1.0 and lr[-1] < 0.01 and all(a >= b for a, b in zip(lr, lr[1:]))
    assert lr[20] == pytest.approx(0.5)  # half way


def test_linear_decays_to_zero():
    lr = lrs({"name": "linear", "warmup_epochs": 0})
    assert lr[0] == 1.0 and lr[20] == pytest.approx(0.5) and lr[-1] == pytest.approx(1 / 40)


@pytest.mark.parametrize("milestones", [[0.5, 0.75], [2, 3]])
def test_step_schedule_by_fraction_or_epoch(milestones):
    lr = lrs({"name": "step", "warmup_epochs": 0, "milestones": milestones, "gamma": 0.1})
    assert lr[19] == 1.0 and lr[20] == pytest.approx(0.1) and lr[30] == pytest.approx(0.01)


def test_warmup_ramps_linearly():
    lr = lrs({"name": "cosine", "warmup_epochs": 1})
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[:10] == sorted(lr[:10])


def test_norm_and_bias_parameters_can_skip_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 5e-4, True)
    assert {p.ndim for p in decay["params"]} == {2, 4} and decay["weight_decay"] == 5e-4
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    assert len(param_groups(model, 5e-4, False)) == 1


def test_a_norm_layers_parameters_are_exempt_whatever_their_shape():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Unflatten(1, (2, 2)), nn.LayerNorm((2, 2)))
    decay, no_decay = param_groups(model, 5e-4, True)
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 4)]
    assert [tuple(p.shape) for p in no_decay["params"]] == [(2, 2), (2, 2)]  # LayerNorm's gain and bias


def test_adamw_and_nesterov_build():
    model = nn.Linear(2, 2)
    adamw = build_optimizer(model, OmegaConf.create(dict(name="adamw", lr=1e-3, betas=[0.9, 0.99], weight_decay=0.05)))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.99)
    sgd = build_optimizer(model, OmegaConf.create(dict(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0)))
    assert sgd.defaults["nesterov"]
