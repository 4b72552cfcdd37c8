"""The public library surface: `import wcnorm` and its names."""

import torch
from torch import nn

import wcnorm


def test_every_public_name_resolves():
    for name in wcnorm.__all__:
        assert getattr(wcnorm, name) is not None, name


def test_the_two_methods_drop_into_a_plain_training_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    wc_model = wcnorm.weight_conditioning(nn.Sequential(*[m for m in model]))
    assert wcnorm.describe_weight_method(wc_model)["num_layers"] == 2
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    enorm = wcnorm.ENorm(plain, opt)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    before = enorm.objective()
    for _ in range(5):
        loss = nn.functional.cross_entropy(plain(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        enorm.step()
    assert torch.isfinite(loss) and enorm.imbalance()[1] < 1.0 and torch.isfinite(before)
