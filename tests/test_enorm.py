"""ENorm: graph analysis, function invariance, convergence, ties, optimizer state, numerics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.densenet import DenseNet
from torchvision.models.resnet import BasicBlock, Bottleneck

from wcnorm.methods.enorm import ENorm, balance_cycle, find_unit_groups


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def strip_bn(model: nn.Module) -> nn.Module:
    """BatchNorm2d -> Identity, and every conv gets a (random) bias: a BN-free ReLU net."""
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(mod, name, nn.Identity())
            elif isinstance(child, nn.Conv2d) and child.bias is None:
                child.bias = nn.Parameter(0.1 * torch.randn(child.out_channels))
    return model


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN parameters and running statistics (so that eval mode is not ~identity)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n)
            m.bias.data = 0.3 * torch.randn(n)
            m.running_mean = 0.2 * torch.randn(n)
            m.running_var = 0.5 + torch.rand(n)
    return model


def mlp(bias=True):
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16, bias=bias), nn.ReLU(), nn.Linear(16, 16, bias=bias),
                         nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 12, bias=bias), nn.ReLU(),
                         nn.Linear(12, 5, bias=bias))


class SmallCNN(nn.Module):
    """Functional ops, concatenation, a residual tie across a concatenation, flatten by view."""

    def __init__(self, bn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 12, 1)
        self.conv4 = nn.Conv2d(12, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(12) if bn else nn.Identity()
        self.fc1 = nn.Linear(16 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        y = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.cat([F.avg_pool2d(x, 2), y], 1)  # 8 channels of conv1, 8 of conv2
        x = F.relu(x + self.conv4(torch.relu(self.bn(self.conv3(x)))))  # ties conv1, conv2, conv4
        x = x.view(x.size(0), -1)  # 16 channels x 16 positions
        return self.fc2(F.relu(self.fc1(x)) * 0.5)


class GapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(F.leaky_relu(self.fc(F.relu(self.conv(x)).mean((2, 3))), 0.1))


class Repeat(nn.Module):
    """A channel read twice by one consumer (its columns are not one contiguous block)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(8, 6, 1), nn.Linear(6, 2)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        return self.fc(2 * F.relu(self.conv2(torch.cat([h, h], 1))).mean((2, 3)))


def tv_resnet18():
    return strip_bn(torchvision.models.resnet18(weights=None, num_classes=10))


def tiny_resnet(block=BasicBlock):
    """torchvision's blocks at width 8/16: identity and 1x1 projection shortcuts, no BN."""
    layers, cin = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()], 8
    for planes, stride in ((8, 1), (16, 2)):
        for i in range(2):
            s, cout = (stride if i == 0 else 1), planes * block.expansion
            down = nn.Conv2d(cin, cout, 1, s) if (s != 1 or cin != cout) else None
            layers.append(block(cin, planes, s, down, norm_layer=nn.Identity))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 5)]
    return strip_bn(nn.Sequential(*layers))


def tv_densenet():
    return strip_bn(DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                             num_classes=10))


def tv_googlenet():
    return strip_bn(torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True))


MODELS = {
    "mlp": (mlp, (2, 3, 2, 2)),
    "small_cnn": (SmallCNN, (2, 3, 8, 8)),
    "gapnet": (GapNet, (2, 3, 6, 6)),
    "repeat": (Repeat, (2, 3, 6, 6)),
    "tiny_resnet_basic": (tiny_resnet, (2, 3, 8, 8)),
    "tiny_resnet_bottleneck": (lambda: tiny_resnet(Bottleneck), (2, 3, 8, 8)),
    "tv_resnet18": (tv_resnet18, (2, 3, 32, 32)),
    "tv_densenet": (tv_densenet, (2, 3, 32, 32)),
    "tv_googlenet": (tv_googlenet, (2, 3, 32, 32)),
}


def build(name, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    make, shape = MODELS[name]
    return make().to(dtype).eval(), torch.randn(shape, dtype=dtype)


CASES = [(n, "sequential") for n in MODELS] + [(n, "jacobi") for n in MODELS if not n.startswith("tv_")]
HEAVY = ("tv_resnet18", "tv_googlenet")  # seconds each in float64: `slow`


@pytest.mark.parametrize("name, order", [pytest.param(*c, marks=pytest.mark.slow) if c[0] in HEAVY else c for c in CASES])
def test_function_invariance(name, order):
    model, x = build(name)
    enorm = ENorm(model, c=1.2, order=order, bias_in_norm=(name == "small_cnn"))
    with torch.no_grad():
        y0 = model(x)
        w0 = [p.clone() for p in model.parameters()]
        enorm.step()
        assert rel(model(x), y0) <= 1e-10
        enorm.step(cycles=9)
        assert rel(model(x), y0) <= 1e-10
    assert any((p - q).abs().max() > 1e-3 for p, q in zip(model.parameters(), w0))


def test_function_invariance_float32():
    model, x = build("small_cnn", dtype=torch.float32)
    enorm = ENorm(model, c=1.1)
    with torch.no_grad():
        y0 = model(x)
        enorm.step(10)
        assert rel(model(x), y0) <= 1e-5


@pytest.mark.slow
def test_bn_fold_eval_invariance():
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(weights=None, num_classes=10)).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    conv_before_bn = model.layer1[0].conv1.weight.clone()
    enorm = ENorm(model, bn="fold", c=1.1)
    with torch.no_grad():
        y0 = model(x)
        enorm.step(10)
        assert rel(model(x), y0) <= 1e-10
    # the conv before a BN is not rescaled as a producer (its columns still are, as a consumer)
    ratio = model.layer1[0].conv1.weight / conv_before_bn
    assert torch.allclose(ratio, ratio[:1], rtol=1e-12)  # same factor per column for every row
    assert "BatchNorm2d input (bn='fold')" in enorm.describe()


def test_bn_ignore_leaves_bn_alone():
    model, x = build("small_cnn")
    model = SmallCNN(bn=True).double()
    randomize_bn(model)
    bn = [p.clone() for p in model.bn.parameters()]
    stats = model.bn.running_mean.clone(), model.bn.running_var.clone()
    before = {n: p.clone() for n, p in model.named_parameters()}
    ENorm(model, bn="ignore", c=1.2).step(3)
    assert all(torch.equal(p, q) for p, q in zip(model.bn.parameters(), bn))
    assert torch.equal(model.bn.running_mean, stats[0]) and torch.equal(model.bn.running_var, stats[1])
    after = dict(model.named_parameters())
    # conv3 (the producer before the BN) rows and conv4 (the consumer after it) columns changed
    r3 = after["conv3.weight"] / before["conv3.weight"]
    assert (r3 - 1).abs().max() > 1e-3
    assert (after["conv4.weight"] - before["conv4.weight"]).abs().max() > 1e-3
    groups = find_unit_groups(model, bn="ignore").groups
    assert any(p.name == "conv3" and p.incoming for g in groups for p in g.incoming)


class _GroupNormNet(nn.Module):
    """conv1 -> GroupNorm -> conv2 -> conv3 -> fc: conv1's channels feed a GroupNorm."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 6, 1)
        self.gn = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.gn(self.conv1(x)))))
        return self.fc(F.relu(self.conv3(h)).mean((2, 3)))


@pytest.mark.parametrize("train_mode", [False, True])
def test_bn_ignore_stops_at_group_norm(train_mode):
    """GroupNorm pools statistics over the channels of a group, so unlike BatchNorm it does not
    cancel a per-channel scale of its input: with bn='ignore' the channels feeding it are left
    alone, and ENorm keeps the function (in train mode too: GroupNorm keeps no statistics)."""
    torch.manual_seed(0)
    model = _GroupNormNet().double().train(train_mode)
    with torch.no_grad():
        model.gn.weight.uniform_(0.5, 1.5)
        model.gn.bias.normal_(0, 0.3)
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    before = {n: p.clone() for n, p in model.named_parameters()}
    enorm = ENorm(model, bn="ignore", c=1.2)
    with torch.no_grad():
        y0 = model(x)
        enorm.step(10)
        assert rel(model(x), y0) <= 1e-10
    after = dict(model.named_parameters())
    for name in ("conv1.weight", "conv1.bias", "gn.weight", "gn.bias"):
        assert torch.equal(after[name], before[name]), name
    assert (after["conv2.weight"] / before["conv2.weight"] - 1).abs().max() > 1e-3  # the rest is balanced
    assert enorm.num_units == 8 + 6
    assert enorm.excluded["GroupNorm input (bn='ignore': it does not cancel a per-channel scale)"] == 8
    # with bn='fold' the GroupNorm's gamma and beta produce its output channels instead
    assert ENorm(_GroupNormNet(), bn="fold").num_units == 8 + 8 + 6


def _chain_ratios(model):
    """r / l of every hidden unit of a Linear chain (bias not counted)."""
    lins = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [lins[k + 1].weight.norm(dim=0) / lins[k].weight.norm(dim=1) for k in range(len(lins) - 1)]


def _objective_trace(enorm, cycles: int) -> torch.Tensor:
    """The objective before and after each of `cycles` cycles."""
    objs = [enorm.objective()]
    for _ in range(cycles):
        enorm.step()
        objs.append(enorm.objective())
    return torch.stack(objs)


@pytest.mark.parametrize("c", [1.0, 1.2])
def test_sequential_monotone_and_fixed_point(c):
    model, x = build("mlp")
    enorm = ENorm(model, c=c)
    objs = _objective_trace(enorm, 300)
    assert (objs[1:] <= objs[:-1] * (1 + 1e-12)).all()
    assert objs[-1] < objs[0]
    for ratio in _chain_ratios(model):
        assert torch.allclose(ratio, torch.full_like(ratio, c), rtol=1e-7)
    mean, worst = enorm.imbalance()
    assert worst < 1e-7 and mean <= worst
    # the objective at the fixed point is the c-weighted norm: sum_k c^(-2k) ||W_k||^2
    lins = [m for m in model.modules() if isinstance(m, nn.Linear)]
    expect = sum(c ** (-2 * k) * m.weight.square().sum() for k, m in enumerate(lins))
    assert torch.allclose(enorm.objective(), expect)


@pytest.mark.parametrize("name", ["mlp", "tiny_resnet_bottleneck"])
def test_jacobi_reaches_the_same_fixed_point(name):
    seq, _ = build(name)
    jac = copy.deepcopy(seq)
    ENorm(seq, c=1.2).step(200)
    ENorm(jac, c=1.2, order="jacobi").step(400)
    for p, q in zip(seq.parameters(), jac.parameters()):
        assert torch.allclose(p, q, rtol=1e-8, atol=1e-10 * p.abs().max().item())


@pytest.mark.parametrize("name, bias_in_norm", [("tiny_resnet_basic", False),
                                                ("tiny_resnet_bottleneck", False),
                                                ("tv_densenet", False), ("small_cnn", True)])
def test_dag_monotone_and_balanced(name, bias_in_norm):
    # ties and skips mix depths: each slice is c-weighted by its depth (see ENorm), so the
    # update stays an exact minimiser and the fixed point has weighted r / l = c
    model, x = build(name)
    enorm = ENorm(model, c=1.2, bias_in_norm=bias_in_norm)
    with torch.no_grad():
        y0 = model(x)
    objs = _objective_trace(enorm, 100)
    assert (objs[1:] <= objs[:-1] * (1 + 1e-12)).all()
    assert enorm.imbalance()[1] < 1e-6
    with torch.no_grad():
        assert rel(model(x), y0) <= 1e-10


@pytest.mark.parametrize("order", ["sequential", "jacobi"])
def test_tied_units_share_one_factor(order):
    model, _ = build("tv_resnet18")
    biases = {n: p.clone() for n, p in model.named_parameters() if n.endswith("bias")}
    enorm = ENorm(model, order=order)
    enorm.step()
    factor = {n: p / biases[n] for n, p in model.named_parameters() if n in biases}
    stem = factor["conv1.bias"]
    assert (stem - 1).abs().max() > 1e-3
    for b in ("layer1.0.conv2", "layer1.1.conv2"):  # identity shortcuts: one stream
        assert torch.allclose(factor[f"{b}.bias"], stem, rtol=1e-12)
    for stage in ("layer2", "layer3", "layer4"):  # projection shortcut + identity block
        f = factor[f"{stage}.0.conv2.bias"]
        assert torch.allclose(factor[f"{stage}.0.downsample.0.bias"], f, rtol=1e-12)
        assert torch.allclose(factor[f"{stage}.1.conv2.bias"], f, rtol=1e-12)
    text = enorm.describe()
    assert "tied: each unit has 3 producers" in text and "layer1.1.conv2 rows" in text


def _run(model, opt, x, steps):
    for _ in range(steps):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw_amsgrad"])
def test_optimizer_state_rescaled(kind):
    model, x = build("small_cnn")

    def make(m):
        if kind == "sgd":
            return torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9)
        if kind == "adam":
            return torch.optim.Adam(m.parameters(), lr=0.0)
        return torch.optim.AdamW(m.parameters(), lr=0.0, weight_decay=0.0, amsgrad=True)

    opt = make(model)
    enorm = ENorm(model, opt, c=1.2)
    _run(model, opt, x, 3)
    enorm.step(2)
    _run(model, opt, x, 2)
    # reference: the same 5 steps, all with gradients taken at the rescaled weights
    ref = copy.deepcopy(model)
    ref_opt = make(ref)
    _run(ref, ref_opt, x, 5)
    keys = {"sgd": ["momentum_buffer"], "adam": ["exp_avg", "exp_avg_sq"],
            "adamw_amsgrad": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]}[kind]
    for p, q in zip(model.parameters(), ref.parameters()):
        for k in keys:
            a, b = opt.state[p][k], ref_opt.state[q][k]
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12 * b.abs().max()), (k, p.shape)


def test_unsupported_optimizer_refused():
    model, _ = build("mlp")
    with pytest.raises(TypeError, match="Adagrad"):
        ENorm(model, torch.optim.Adagrad(model.parameters()))
    ENorm(model, None)  # no state handling


def test_dead_unit_stays_finite():
    model, x = build("mlp")
    with torch.no_grad():
        model[1].weight[3] = 0
        model[1].bias[3] = 0
        model[3].weight[:, 5] = 0  # a unit with no outgoing weights
    enorm = ENorm(model, c=1.2)
    with torch.no_grad():
        y0 = model(x)
        enorm.step(20)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert rel(model(x), y0) <= 1e-10
    mean, worst = enorm.imbalance()
    assert torch.isfinite(mean) and torch.isfinite(worst)
    assert torch.isfinite(enorm.objective())


def test_describe_and_nothing_balanceable():
    model, _ = build("small_cnn")
    text = ENorm(model).describe()
    assert "4 unit groups" in text and "conv4 rows" in text and "fc1 columns" in text
    assert "tied: each unit has 2 producers" in text and "model output" in text
    with pytest.raises(ValueError, match="no balanceable hidden units.*GELU"):
        ENorm(nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)))
    with pytest.raises(ValueError, match="no balanceable"):
        ENorm(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)))
    with pytest.raises(ValueError, match="could not be traced"):
        ENorm(_Untraceable())


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x


def test_graph_rules():
    # balance_last=False leaves the classifier and the units feeding it alone
    model, _ = build("mlp")
    head = model[-1].weight.clone()
    enorm = ENorm(model, balance_last=False)
    enorm.step(3)
    assert torch.equal(model[-1].weight, head)
    assert enorm.num_units == 16 + 16
    # an addition with something untracked (a parameter) stops its units; sigmoid stops too
    found = find_unit_groups(_Stops())
    assert [g.n for g in found.groups] == [4] and found.num_units == 4
    assert any("add" in r for r in found.excluded) and any("sigmoid" in r for r in found.excluded)
    # a conv applied twice both produces and consumes its channels: not balanced
    found = find_unit_groups(_Shared())
    assert found.groups == [] and any("both produces and consumes" in r for r in found.excluded)


class _Stops(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 6), nn.Linear(6, 2)
        self.shift = nn.Parameter(torch.zeros(5))

    def forward(self, x):
        x = F.relu(self.b(F.relu(self.a(x))) + self.shift)
        return self.d(torch.sigmoid(self.c(x)))


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.relu(self.conv(F.relu(self.conv(x)))).mean((2, 3)))


def test_wrappers_are_unwrapped():
    model, x = build("small_cnn")
    for wrapped in (nn.DataParallel(model), torch.compile(model)):
        enorm = ENorm(wrapped)
        assert {id(p.param) for g in enorm.groups for p in g.incoming} <= {id(p) for p in model.parameters()}


def test_attention_check_refuses_non_invariant():
    class QKNorm(nn.Module):  # a q/k LayerNorm breaks the q/k rescale
        def __init__(self):
            super().__init__()
            self.num_heads, self.head_dim = 2, 4
            self.q, self.k, self.v, self.proj = (nn.Linear(8, 8) for _ in range(4))
            self.norm = nn.LayerNorm(4)

        def forward(self, x):
            B, N, _ = x.shape
            q, k, v = (t(x).view(B, N, 2, 4).transpose(1, 2) for t in (self.q, self.k, self.v))
            out = F.scaled_dot_product_attention(self.norm(q), self.norm(k), v)
            return self.proj(out.transpose(1, 2).flatten(2))

    with pytest.raises(ValueError, match="not invariant"):
        ENorm(nn.Sequential(nn.Linear(8, 8), QKNorm()), attention=True)


def test_training_smoke():
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 5, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)
    enorm = ENorm(model, opt, c=1.1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        enorm.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0] and enorm.imbalance()[1] < 0.5


class _Broadcast(nn.Module):
    """(N, C) + (N, C, H, W) aligns C with W: not a channel tie."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.fc((self.b(h) + h.mean((2, 3))).mean((2, 3)))


class _RawWeight(nn.Module):
    """A weight also read directly (get_attr) cannot be rescaled."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.b(F.relu(self.a(x))))
        return self.c(h) + self.a.weight.sum()


def test_index_path():
    model, _ = build("repeat")
    enorm = ENorm(model)
    assert [p.index is not None for g in enorm.groups for p in g.outgoing] == [True, False]
    assert enorm.num_units == 4 + 6


def test_conservative_cases():
    found = find_unit_groups(_Broadcast())
    assert not any(p.name == "b" for g in found.groups for p in g.incoming)
    assert any("add" in r for r in found.excluded)
    found = find_unit_groups(_RawWeight())
    assert [[p.name for p in g.incoming] for g in found.groups] == [["b"]]
    assert any("used outside its layer" in r for r in found.excluded)
    # a parametrized weight is recomputed on every forward: not rescalable in place
    model = mlp()
    torch.nn.utils.parametrize.register_parametrization(model[3], "weight", _Double())
    groups = find_unit_groups(model).groups
    assert all(p.param is not model[3].parametrizations.weight.original for g in groups
               for p in (*g.incoming, *g.outgoing))
    assert [g.n for g in groups] == [12]


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


# ----------------------------------------------------------------------------- the packed cycle


def _indices(p):
    """(index along the piece's dim, unit) pairs, written out one by one."""
    if p.start is None:
        return list(zip(p.index.tolist(), p.units.tolist()))
    return [(p.start + i, p.first_unit + i // p.per_unit) for i in range(p.n)]


def _textbook_cycle(enorm, opt):
    """One ENorm cycle the slow, obvious way: unit by unit, index by index, group by group
    (sequential) or all factors first (jacobi); momentum divided by the weight's factor."""

    def factors(g):
        l2, r2 = [0.0] * g.n, [0.0] * g.n
        for p in (*g.incoming, *g.outgoing):
            for tensor in (p.param, p.bias if enorm.bias_in_norm else None):
                if tensor is None:
                    continue
                dim = p.dim if tensor.ndim > 1 else 0
                for j, u in _indices(p):
                    sq = p.c_weight(enorm.c) * tensor.select(dim, j).square().sum().item()
                    (l2 if p.incoming else r2)[u] += sq
        return [(r2u**0.5 / (enorm.c * l2u**0.5)) ** 0.5 for l2u, r2u in zip(l2, r2)]  # sqrt(r / (c l))

    def apply(g, d):
        for p in (*g.incoming, *g.outgoing):
            for tensor in (p.param, p.bias):
                if tensor is None:
                    continue
                dim = p.dim if tensor.ndim > 1 else 0
                buf = opt.state[tensor]["momentum_buffer"]
                for j, u in _indices(p):
                    f = d[u] if p.incoming else 1 / d[u]
                    tensor.select(dim, j).mul_(f)
                    buf.select(dim, j).div_(f)

    with torch.no_grad():
        if enorm.order == "jacobi":
            for g, d in [(g, factors(g)) for g in enorm.groups]:
                apply(g, d)
        else:
            for g in enorm.groups:
                apply(g, factors(g))


@pytest.mark.parametrize("name, order, c, bias_in_norm", [
    ("small_cnn", "sequential", 1.2, False), ("small_cnn", "jacobi", 1.0, True),
    ("repeat", "sequential", 1.1, True), ("tiny_resnet_basic", "jacobi", 1.2, False),
    ("tiny_resnet_bottleneck", "sequential", 1.0, False), ("tiny_resnet_basic", "sequential", 1.2, True),
    ("tv_densenet", "sequential", 1.2, False)])
def test_packed_cycle_equals_the_textbook_loop(name, order, c, bias_in_norm):
    """The cycle's waves (one cat, one gather and row sum, one gather, _foreach_ updates) compute
    exactly the per-unit update d = sqrt(r / (c l)), weights, biases and momentum alike."""
    model, x = build(name)
    for p in model.parameters():  # far from balanced, so that every factor matters
        p.data.mul_(torch.exp(0.5 * torch.randn_like(p)))
    ref = copy.deepcopy(model)
    opts = [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in (model, ref)]
    for m, opt in zip((model, ref), opts):
        m(x).square().mean().backward()
        opt.step()
    kw = dict(c=c, order=order, bias_in_norm=bias_in_norm)
    packed, slow = ENorm(model, opts[0], **kw), ENorm(ref, opts[1], **kw)
    for _ in range(2):
        packed.step()
        _textbook_cycle(slow, opts[1])
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14), n
        a, b = opts[0].state[p]["momentum_buffer"], opts[1].state[q]["momentum_buffer"]
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14 * b.abs().max()), n
    if name == "repeat":  # the scattered-index path was taken
        assert any(p.start is None for g in packed.groups for p in g.outgoing)


class _DispatchedOps(TorchDispatchMode):
    """The aten ops dispatched inside the block, with their arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func.overloadpacket.__name__, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


# ops that accumulate through atomics on CUDA: their sums depend on the order threads land in
_SCATTER_ADDS = {"index_add", "index_add_", "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_",
                 "index_reduce", "index_reduce_", "put", "put_", "embedding_bag"}


@pytest.mark.parametrize("name, order", [("small_cnn", "sequential"), ("repeat", "jacobi"),
                                         ("tv_densenet", "sequential")])
def test_cycle_is_deterministic(name, order):
    """DDP ranks must compute the same factors to the last bit: a cycle sums per unit with a
    gather and a row sum, never with an accumulating scatter (atomics on CUDA)."""
    model, _ = build(name, dtype=torch.float32)
    ref = copy.deepcopy(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, ref)]
    for m, opt in zip((model, ref), opts):
        for p in m.parameters():
            opt.state[p]["momentum_buffer"] = torch.ones_like(p)
    enorm = ENorm(model, opts[0], c=1.2, order=order, bias_in_norm=True)
    with _DispatchedOps() as ops:
        enorm.step(2)
    names = [n for n, _, _ in ops.calls]
    assert "sum" in names and not _SCATTER_ADDS & set(names)
    assert not any(kw.get("accumulate") or (len(args) > 3 and args[3])
                   for n, args, kw in ops.calls if n in ("index_put", "index_put_", "_index_put_impl_"))
    ENorm(ref, opts[1], c=1.2, order=order, bias_in_norm=True).step(2)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q) and torch.equal(opts[0].state[p]["momentum_buffer"],
                                                 opts[1].state[q]["momentum_buffer"])


@pytest.mark.parametrize("name, order", [("tiny_resnet_bottleneck", "sequential"), ("tv_densenet", "jacobi")])
def test_balance_cycle_is_enorm_step(name, order):
    """One implementation of the cycle: `balance_cycle` on the analysis' groups (c-weights
    included, c != 1 in a DAG) does exactly what `ENorm.step` does."""
    model, _ = build(name)
    ref = copy.deepcopy(model)
    ENorm(model, c=1.2, order=order).step(3)
    groups = find_unit_groups(ref).groups
    assert any(s.depth_shift != 0 for g in groups for s in g.slices)  # the weights matter here
    with torch.no_grad():
        for _ in range(3):
            balance_cycle(groups, c=1.2, order=order)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_packed_cycle_follows_the_model_to_another_dtype():
    """Index tensors are rebuilt when the weights change device or dtype."""
    model, x = build("small_cnn", dtype=torch.float32)
    enorm = ENorm(model)
    enorm.step()
    model.double()
    enorm.step(50)
    assert enorm.imbalance()[1] < 1e-6


def test_cuda_graph_option_is_plain_eager_off_the_gpu():
    """cuda_graph=True on CPU weights runs the same eager cycle (the graph is GPU only;
    tests/test_cuda.py checks the replay against eager on a GPU)."""
    model, _ = build("small_cnn")
    ref = copy.deepcopy(model)
    graphed, eager = ENorm(model, c=1.2, cuda_graph=True), ENorm(ref, c=1.2)
    graphed.step(3)
    eager.step(3)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    assert graphed.graph is not None and graphed.graph.captures == 0
    assert "cuda_graph=True" in graphed.describe()


def test_cycle_graph_warms_up_captures_replays_and_recaptures(monkeypatch):
    """CycleGraph's bookkeeping with CUDA stubbed out: `warmup` eager cycles, one capture,
    replays while the tensors stay put, and the same again after one is reallocated."""
    import contextlib

    from wcnorm.methods.enorm.cudagraph import CycleGraph

    log, ptr = [], [1000]

    class FakeGraph:
        def replay(self):
            log.append("replay")

    @contextlib.contextmanager
    def capture(graph, **kw):
        log.append("capture")
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    devices = []  # the graph works on the weights' device, whatever the current one is
    monkeypatch.setattr(torch.cuda, "device", lambda d: (devices.append(d), contextlib.nullcontext())[1])
    monkeypatch.setattr(CycleGraph, "_on_side_stream", lambda self, fn, device: (log.append("eager"), fn()))
    tensor = type("T", (), {"data_ptr": lambda self: ptr[0], "device": torch.device("cuda", 1)})()
    graph = CycleGraph(lambda: log.append("cycle"), lambda: [tensor], warmup=2,
                       prepare=lambda: log.append("prepare"))
    for _ in range(4):
        graph()
    assert log == ["prepare", "eager", "cycle", "eager", "cycle", "capture", "cycle", "replay", "replay"]
    log.clear()
    ptr[0] = 2000  # e.g. the optimizer state was loaded from a checkpoint
    for _ in range(3):
        graph()
    assert log == ["prepare", "eager", "cycle", "eager", "cycle", "capture", "cycle", "replay"]
    assert graph.captures == 2 and devices == [torch.device("cuda", 1)] * 7
    with pytest.raises(ValueError, match="warmup"):
        CycleGraph(lambda: None, lambda: [tensor], warmup=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_levels_batch_only_groups_that_commute(name):
    """Sequential waves: within a level no two groups share a weight, and two groups that
    share one keep their order, so a cycle is Gauss-Seidel exactly (the textbook test
    above checks the numbers); a ResNet's projection blocks put several groups in one."""
    from wcnorm.methods.enorm.cycle import levels

    model, _ = build(name)
    groups = ENorm(model).groups
    lv = levels(groups)
    assert sorted(map(id, groups)) == sorted(id(g) for level in lv for g in level)  # each group once
    where = {id(g): k for k, level in enumerate(lv) for g in level}
    weights = [{id(p.param) for p in (*g.incoming, *g.outgoing)} for g in groups]
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            if weights[i] & weights[j]:
                assert where[id(groups[i])] < where[id(groups[j])]
    if name == "tv_resnet18":
        assert [len(level) for level in lv] == [1, 3, 1, 2, 1, 2, 1, 1]
