"""Weight conditioning: the definition, Van der Sluis numerically, invariances, layers."""

import copy
import math
import shutil
import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from wcnorm import models
from wcnorm.methods import remove_weight_methods
from wcnorm.methods.wc import (
    SIDES,
    WeightConditioning,
    column_equilibrate,
    frozen_by_conditioning,
    row_equilibrate,
    ruiz_equilibrate,
    weight_conditioning,
)

P = [1, 2, math.inf]


def badly_scaled(n, m, gen, spread=4.0):
    """Random n x m matrix whose rows are scaled by 10**U(-spread, spread)."""
    A = torch.randn(n, m, generator=gen, dtype=torch.float64)
    return A * 10 ** (spread * (2 * torch.rand(n, 1, generator=gen, dtype=torch.float64) - 1))


def kappa_2(A):
    s = torch.linalg.svdvals(A)
    return (s[0] / s[-1]).item()


def kappa_inf(A):
    inf = torch.linalg.matrix_norm
    return (inf(A, ord=math.inf) * inf(torch.linalg.inv(A), ord=math.inf)).item()


def mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


# ------------------------------------------------------------------ the definition
@pytest.mark.parametrize("p", P)
@pytest.mark.parametrize("shape", [(5, 7), (6, 3, 3, 3)])
def test_row_and_column_unit_norm(p, shape):
    W = torch.randn(*shape, dtype=torch.float64) * 3
    rows = torch.linalg.vector_norm(row_equilibrate(W, p=p).reshape(shape[0], -1), ord=p, dim=1)
    cols = torch.linalg.vector_norm(column_equilibrate(W, p=p).reshape(shape[0], -1), ord=p, dim=0)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    torch.testing.assert_close(cols, torch.ones_like(cols))


def test_zero_row_stays_finite():
    W = torch.randn(4, 5)
    W[1] = 0
    out = row_equilibrate(W)
    assert torch.isfinite(out).all() and (out[1] == 0).all()


def spreads(W):
    r = torch.linalg.vector_norm(W, dim=1)
    c = torch.linalg.vector_norm(W, dim=0)
    return (r.max() / r.min()).item(), (c.max() / c.min()).item()


@pytest.mark.parametrize("shape", [(12, 12), (16, 40)])
def test_both_balances_rows_and_columns(shape):
    gen = torch.Generator().manual_seed(0)
    W = badly_scaled(*shape, gen) * 10 ** (2 * torch.rand(1, shape[1], generator=gen, dtype=torch.float64))
    r1, c1 = spreads(ruiz_equilibrate(W, iters=1))
    r10, c10 = spreads(ruiz_equilibrate(W, iters=10))
    assert c1 == pytest.approx(1) and c10 == pytest.approx(1)  # ends on a column step
    assert r10 < r1 and r10 < 1.05  # rows near-balanced, better with more iterations
    assert spreads(W)[0] > 1e3


def test_validation():
    for bad in (3, 0, "two", None):
        with pytest.raises(ValueError, match="p must be"):
            WeightConditioning(p=bad)
    with pytest.raises(ValueError, match="side must be"):
        WeightConditioning(side="left")
    assert WeightConditioning(p="inf").p == math.inf
    with pytest.raises(ValueError, match="p must be"):
        weight_conditioning(mlp(), p=4)


# ------------------------------------------------------------- Van der Sluis, numerically
@pytest.mark.parametrize("scaled", [False, True])
def test_van_der_sluis(scaled):
    gen = torch.Generator().manual_seed(1)
    n, trials = 8, 2000
    for _ in range(5):
        A = badly_scaled(n, n, gen) if scaled else torch.randn(n, n, generator=gen, dtype=torch.float64)
        D = 10 ** (4 * torch.rand(trials, n, 1, generator=gen, dtype=torch.float64) - 2)
        DA = D * A
        # p = 1 row equilibration is optimal for kappa_inf among all diagonal left scalings
        best_inf = min(kappa_inf(M) for M in DA)
        assert kappa_inf(row_equilibrate(A, p=1)) <= best_inf * (1 + 1e-9)
        # p = 2 row equilibration is within sqrt(n) of the best diagonal scaling for kappa_2
        s = torch.linalg.svdvals(DA)
        best_2 = (s[:, 0] / s[:, -1]).min().item()
        k2 = kappa_2(row_equilibrate(A, p=2))
        assert k2 <= math.sqrt(n) * best_2
        if scaled:
            assert k2 < 1e-2 * kappa_2(A)


# ------------------------------------------------------------------ as a layer
@pytest.mark.parametrize("layer", [nn.Linear(6, 5), nn.Conv2d(3, 5, 3, padding=1)])
@pytest.mark.parametrize("side", ["row", "both"])
def test_forward_invariant_to_row_scaling(layer, side):
    layer = layer.double()
    x = torch.randn(2, 6) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 6, 6)
    x = x.double()
    parametrize.register_parametrization(layer, "weight", WeightConditioning(side=side))
    y = layer(x)
    with torch.no_grad():
        layer.parametrizations.weight.original[2] *= 37.0
        layer.parametrizations.weight.original[0] *= 0.01
    torch.testing.assert_close(layer(x), y)


@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 3, 3)])
def test_gradient_orthogonal_to_row(shape):
    torch.manual_seed(0)
    V = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    G = torch.randn(*shape, dtype=torch.float64)
    (WeightConditioning()(V) * G).sum().backward()
    g, v = V.grad.reshape(shape[0], -1), V.detach().reshape(shape[0], -1)
    assert g.abs().max() > 1e-3  # gradients do flow to the raw weight
    torch.testing.assert_close((g * v).sum(1), torch.zeros(shape[0], dtype=torch.float64), atol=1e-12, rtol=0)
    # with E detached, the radial component is not removed
    V.grad = None
    (WeightConditioning(detach=True)(V) * G).sum().backward()
    assert (V.grad.reshape(shape[0], -1) * v).sum(1).abs().max() > 1e-3


def _row_reference(W, eps=1e-8):
    """The definition through plain autograd: W_i / max(||W_i||_2, eps)."""
    n = torch.linalg.vector_norm(W.reshape(W.shape[0], -1), dim=1).clamp_min(eps)
    return W / n.view(-1, *[1] * (W.ndim - 1))


@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 3, 3)])
def test_fused_row_equilibration_matches_autograd_to_second_order(shape):
    """The default (row, p = 2) runs a hand-written backward: its value, gradient and
    Hessian-vector products equal autograd's through the definition, dead rows and rows
    below the eps floor included (float64, gradcheck and gradgradcheck)."""
    torch.manual_seed(0)
    W = torch.randn(*shape, dtype=torch.float64)
    W[1] = 0.0        # a dead row
    W[2] *= 1e-10     # a row below eps: its scale is the constant 1 / eps
    W.requires_grad_(True)
    G, V = torch.randn_like(W), torch.randn_like(W)
    fused = WeightConditioning()
    torch.testing.assert_close(fused(W), _row_reference(W), rtol=1e-14, atol=0)
    for f in (fused, _row_reference):
        (g,) = torch.autograd.grad((f(W) * G).sum(), W, create_graph=True)
        (hv,) = torch.autograd.grad((g * V).sum(), W)
        if f is fused:
            g_fused, hv_fused = g.detach(), hv
    torch.testing.assert_close(g_fused, g.detach(), rtol=1e-12, atol=1e-300)
    # autograd's second derivative of a norm at zero is 0/0; the fused one stays finite
    assert torch.isfinite(hv_fused).all() and not torch.isfinite(hv[1]).all()
    live = [i for i in range(shape[0]) if i != 1]
    torch.testing.assert_close(hv_fused[live], hv[live], rtol=1e-10, atol=1e-12 * hv[live].abs().max().item())
    # finite differences need every row away from the eps kink
    W0 = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fused, (W0,)) and torch.autograd.gradgradcheck(fused, (W0,))


def test_fused_row_equilibration_keeps_channels_last_and_launches_fewer_ops():
    from wcnorm.bench import OpCounter

    W = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = WeightConditioning()(W)
    assert out.is_contiguous(memory_format=torch.channels_last)
    counts = []
    for f in (WeightConditioning(), _row_reference):
        with OpCounter() as c:
            f(W).square().sum().backward()
        counts.append(c.ops)
    assert counts[0] < counts[1]


def test_row_p2_equals_weight_norm_with_unit_gain():
    torch.manual_seed(0)
    a, b = nn.Linear(6, 4).double(), nn.Conv2d(3, 4, 3).double()
    for layer, x in ((a, torch.randn(3, 6)), (b, torch.randn(2, 3, 5, 5))):
        wn = weight_norm(type(layer)(*_args(layer)).double(), dim=0)
        wc = type(layer)(*_args(layer)).double()
        with torch.no_grad():
            wn.parametrizations.weight.original1.copy_(layer.weight)
            wn.parametrizations.weight.original0.fill_(1.0)
            wc.weight.copy_(layer.weight)
            wn.bias.copy_(layer.bias)
            wc.bias.copy_(layer.bias)
        parametrize.register_parametrization(wc, "weight", WeightConditioning(p=2))
        torch.testing.assert_close(wc(x.double()), wn(x.double()))


def _args(layer):
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels, layer.kernel_size


def test_grouped_conv_columns_per_group():
    conv = nn.Conv2d(4, 6, 3, groups=2).double()
    weight_conditioning(conv, side="column", include_classifier=True)
    W = conv.weight.reshape(2, 3, -1)
    cols = torch.linalg.vector_norm(W, dim=1)
    torch.testing.assert_close(cols, torch.ones_like(cols))


# ------------------------------------------------------------------ which layers
def test_classifier_and_stem():
    m = weight_conditioning(cnn())
    assert parametrize.is_parametrized(m[0]) and parametrize.is_parametrized(m[2])
    assert not parametrize.is_parametrized(m[6])
    m = weight_conditioning(cnn(), include_classifier=True, skip_stem=True)
    assert not parametrize.is_parametrized(m[0]) and parametrize.is_parametrized(m[6])
    with pytest.raises(ValueError, match="already has a weight method"):
        weight_conditioning(m)


class Attention(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.q, self.k, self.v, self.proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        a = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 8**0.5, -1)
        return self.proj(a @ self.v(x))


class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.attn = Attention()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.attn(t)
        t = t + self.mha(t, t, t, need_weights=False)[0]
        return self.head(t.mean(1))


def test_attention_projections_included():
    m = weight_conditioning(TinyViT())
    for layer in (m.attn.q, m.attn.k, m.attn.v, m.attn.proj, m.patch, m.mha.out_proj):
        assert parametrize.is_parametrized(layer, "weight")
    assert parametrize.is_parametrized(m.mha, "in_proj_weight")
    assert not parametrize.is_parametrized(m.head)
    n = torch.linalg.vector_norm(m.mha.in_proj_weight, dim=1)
    torch.testing.assert_close(n, torch.ones_like(n))
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_torchvision_resnet18():
    m = weight_conditioning(torchvision.models.resnet18(weights=None, num_classes=10))
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert all(parametrize.is_parametrized(c) for c in convs) and len(convs) == 20
    assert not parametrize.is_parametrized(m.fc)
    m.eval()
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# ------------------------------------------------------------------ frozen layers
FROZEN = [("row", lambda: nn.Linear(1, 4)),                  # one column: fan_in 1
          ("column", lambda: nn.Conv2d(4, 4, 3, groups=4)),  # depthwise: one row per group
          ("both", lambda: nn.Conv2d(4, 4, 3, groups=4)),
          ("both", lambda: nn.Linear(1, 4)),
          ("row", lambda: nn.Conv1d(3, 6, 1, groups=3))]      # 2 x 1 blocks


@pytest.mark.parametrize("p", P)
@pytest.mark.parametrize("side, make", FROZEN)
def test_single_entry_vectors_freeze_the_layer_and_warn(side, make, p):
    layer = make().double()
    assert frozen_by_conditioning(layer.weight.shape, side, groups=getattr(layer, "groups", 1))
    with pytest.warns(UserWarning, match="frozen"):
        weight_conditioning(layer, side=side, p=p, include_classifier=True)
    raw = layer.parametrizations.weight.original
    wc = layer.parametrizations.weight[0]
    torch.testing.assert_close(layer.weight, wc(torch.sign(raw)), rtol=0, atol=1e-15)  # signs alone
    x = torch.randn(5, layer.weight.shape[1] * getattr(layer, "groups", 1), *[3] * (raw.dim() - 2),
                    dtype=torch.float64)
    layer(x).square().sum().backward()
    assert raw.grad is not None and raw.grad.abs().max() < 1e-12


@pytest.mark.parametrize("side", SIDES)
def test_layers_that_can_learn_are_not_warned(side):
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.Flatten(), nn.Linear(6, 8), nn.Linear(8, 2))
    assert not frozen_by_conditioning((6, 2, 3, 3), side, groups=2)
    assert frozen_by_conditioning((1, 5), "column") and not frozen_by_conditioning((1, 5), "row")
    assert frozen_by_conditioning((5, 1), "row") and not frozen_by_conditioning((5, 1), "column")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weight_conditioning(model, side=side)
    assert parametrize.is_parametrized(model[0]) and parametrize.is_parametrized(model[2])


def test_a_learning_layer_has_a_gradient():
    """The control for the frozen case: a depthwise conv with side=row has 1 x 9 rows."""
    layer = weight_conditioning(nn.Conv2d(4, 4, 3, groups=4).double(), include_classifier=True)
    layer(torch.randn(2, 4, 5, 5, dtype=torch.float64)).square().sum().backward()
    assert layer.parametrizations.weight.original.grad.abs().max() > 1e-3


# ------------------------------------------------------------------ save, export
def test_state_dict_and_export_round_trip():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    a = weight_conditioning(cnn(), side="both", p=1)
    b = weight_conditioning(cnn(), side="both", p=1)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x))
    y = a(x)
    remove_weight_methods(a)
    assert not any(parametrize.is_parametrized(mod) for mod in a.modules())
    assert all(type(p) is nn.Parameter for p in a.parameters())
    torch.testing.assert_close(a(x), y)
    cnn().load_state_dict(a.state_dict())  # plain keys again


# ------------------------------------------------------------------ precision, compile
def test_autocast_bfloat16_close_to_fp32():
    torch.manual_seed(0)
    m = weight_conditioning(cnn())
    x = torch.randn(2, 3, 8, 8)
    y = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = m(x)
    assert torch.isfinite(yb).all()
    torch.testing.assert_close(yb.float(), y, atol=5e-2, rtol=5e-2)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    m = weight_conditioning(mlp(), side="both")
    x = torch.randn(4, 6)
    if not any(map(shutil.which, ("cc", "gcc", "clang"))):
        pytest.skip("torch.compile needs a C compiler on CPU; none is installed")
    y = torch.compile(m)(x)
    torch.testing.assert_close(y, m(x), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ the model zoo
ZOO = [("resnet18", "bn"), ("resnet50", "bn"), ("densenet121", "bn"), ("googlenet", "bn"),
       ("vit", "ln"), ("enorm_fc", "none"), ("enorm_fullconv", "bn")]


@pytest.mark.parametrize("name,act_norm", [z if z[0] in ("resnet18", "enorm_fc", "enorm_fullconv")
                                           else pytest.param(*z, marks=pytest.mark.slow) for z in ZOO])
def test_model_zoo(name, act_norm):
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=10, image_size=32, act_norm=act_norm)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    weight_conditioning(model).eval()
    touched = [m for m in layers if parametrize.is_parametrized(m, "weight")]
    assert len(touched) == len(layers) - 1 and not parametrize.is_parametrized(layers[-1])
    if name == "vit":
        attn = next(m for m in model.modules() if type(m).__name__ == "Attention")
        assert all(parametrize.is_parametrized(getattr(attn, n)) for n in ("q", "k", "v", "proj"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (1, 10) and torch.isfinite(y).all()
        remove_weight_methods(model)
        torch.testing.assert_close(model(x), y, atol=1e-5, rtol=1e-4)


class _Task:
    """A task whose loss calls the network `calls` times per step (twice: as a NeRF's
    coarse and fine passes would call one shared network)."""

    def __init__(self, model, batch, calls):
        self.model, self.batch, self.calls = model, batch, calls
        self.train_loader = [batch]

    def loss(self, model, batch):
        x, y = batch
        loss = sum((model((k + 1) * x) - y).square().mean() for k in range(self.calls))
        return loss, torch.stack([loss.detach(), torch.ones((), dtype=loss.dtype)])

    def evaluate(self, model, *, autocast, reduce, epoch):
        return {"val": float(sum(model(x).sum() for x in self.batch[0].split(2)))}


def _calls(monkeypatch) -> list[int]:
    """How many times E(W) W is computed, one weight at a time or batched."""
    from wcnorm.methods import wc

    count, inner = [0], wc._row_equilibrated

    def counted(W, eps):
        count[0] += 1
        return inner(W, eps)

    monkeypatch.setattr(wc, "_row_equilibrated", counted)
    return count


@pytest.mark.parametrize("uses,batched", [(1, True), (2, True), (1, False)])
def test_a_training_step_computes_each_conditioned_weight_once_with_the_same_result(uses, batched, monkeypatch):
    """Trainer.train_step computes E(W) W once for the step, all weights together
    (effective_weights), or each at its layer's first call (batch_weights=False): one
    computation per weight however often the step calls the layer. The weights after
    each step equal, in float64, those of a step that recomputes E(W) W at every call:
    bitwise when each layer is called once per step (every wcnorm model: a NeRF's coarse
    and fine passes are two networks); to 1e-12 when called twice, where the cached
    weight's backward runs once on the summed gradient instead of once per call."""
    from wcnorm.training.trainer import Trainer

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    weight_conditioning(net, include_classifier=True)
    ref = copy.deepcopy(net)
    batch = (torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64))
    calls = _calls(monkeypatch)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (net, ref))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    trainer = Trainer(net, opt, sched, _Task(net, batch, uses), device="cpu", epochs=1)
    trainer.batch_weights = batched  # False: each weight at its layer's first call
    for _ in range(3):
        calls[0] = 0
        trainer.train_step(*batch)
        assert calls[0] == 3  # 3 conditioned layers, each once per step
        loss, _ = _Task(ref, batch, uses).loss(ref, batch)  # E(W) W recomputed at every call
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_opt.step()
        for a, b in zip(net.parameters(), ref.parameters()):
            if uses == 1:
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    calls[0] = 0
    trainer.evaluate(0)  # 4 chunks: still one computation per weight
    assert calls[0] == 3


# ------------------------------------------------------- one step's weights, all together
def _mixed_net() -> nn.Module:
    """Layers of every kind effective_weights meets: row WC with p = 2 at two eps (two
    batches), WC that cannot batch (p = inf), WS, WN (two raw tensors), a conv, and a
    conditioned layer the forward never calls."""
    from wcnorm.methods.baselines import weight_normalization, weight_standardization

    net = nn.ModuleDict({"conv": nn.Conv2d(2, 4, 3), "a": nn.Linear(16, 9), "b": nn.Linear(9, 8),
                         "inf": nn.Linear(8, 7), "ws": nn.Linear(7, 6), "wn": nn.Linear(6, 5),
                         "unused": nn.Linear(5, 5)}).double()
    for key in ("conv", "a", "unused"):
        weight_conditioning(net[key], name="weight")
    weight_conditioning(net["b"], name="weight", eps=1e-6)
    weight_conditioning(net["inf"], name="weight", p="inf")
    weight_standardization(net["ws"], name="weight")
    weight_normalization(net["wn"], name="weight")
    return net


def _mixed_loss(net, x):
    h = torch.relu(net["conv"](x)).flatten(1)
    for key in ("a", "b", "inf", "ws", "wn"):
        h = torch.tanh(net[key](h))
    return h.square().sum()


def test_effective_weights_equal_the_lazy_path_bitwise_in_float64():
    """Computing every effective weight on entry, row WC's in one autograd node per eps,
    gives bitwise the lazy path's loss and gradients (float64); a layer the forward
    does not call gets no gradient; the layers' own reads return the batched tensors."""
    from wcnorm.methods.weight_method import effective_weights

    torch.manual_seed(0)
    net = _mixed_net()
    ref = copy.deepcopy(net)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    with parametrize.cached():
        _mixed_loss(ref, x).backward()
    with effective_weights(net):
        loss = _mixed_loss(net, x)
        nodes = {k: type(net[k].weight.grad_fn).__name__ for k in ("conv", "a", "b", "unused")}
        assert net["a"].weight is net["a"].weight  # the cached tensor, not a recomputation
    loss.backward()
    assert nodes["conv"] == nodes["a"] == nodes["unused"] == nodes["b"] == "_RowEquilibrateManyBackward"
    with effective_weights(net):
        assert net["conv"].weight.grad_fn is net["a"].weight.grad_fn is not net["b"].weight.grad_fn
    for (name, a), (_, b) in zip(net.named_parameters(), ref.named_parameters()):
        if "unused" in name:
            assert a.grad is None and b.grad is None
        else:
            assert torch.equal(a.grad, b.grad), name


def test_effective_weights_keep_what_an_enclosing_cache_holds():
    from wcnorm.methods.weight_method import effective_weights

    net = _mixed_net()
    with parametrize.cached():
        outer = net["a"].weight
        with effective_weights(net):
            assert net["a"].weight is outer and net["b"].weight is not None
        assert net["a"].weight is outer


def test_batched_row_equilibration_matches_one_at_a_time_to_second_order():
    """_RowEquilibrateMany is _RowEquilibrate on each weight (float64): values, gradients
    and Hessian-vector products bitwise, dead rows and rows below eps included; gradcheck
    and gradgradcheck against finite differences."""
    from wcnorm.methods.wc import _RowEquilibrate, _RowEquilibrateMany

    torch.manual_seed(0)
    Ws = [torch.randn(*s, dtype=torch.float64) for s in ((5, 7), (4, 3, 3, 3), (6, 1))]
    Ws[0][1] = 0.0
    Ws[1][2] *= 1e-10
    Ws = [W.requires_grad_(True) for W in Ws]
    Gs, Vs = ([torch.randn_like(W) for W in Ws] for _ in range(2))

    def grads(outs):
        g = torch.autograd.grad(sum((o * G).sum() for o, G in zip(outs, Gs)), Ws, create_graph=True)
        return g, torch.autograd.grad(sum((a * V).sum() for a, V in zip(g, Vs)), Ws)

    many = _RowEquilibrateMany.apply(1e-8, *Ws)
    one = [_RowEquilibrate.apply(W, 1e-8) for W in Ws]
    for a, b in zip(many, one):
        assert torch.equal(a, b)
    for xs, ys in zip(grads(many), grads(one)):
        for a, b in zip(xs, ys):
            assert torch.equal(a, b)
    W0 = tuple(torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((3, 4), (2, 2, 3)))
    f = lambda *W: _RowEquilibrateMany.apply(1e-8, *W)  # noqa: E731
    assert torch.autograd.gradcheck(f, W0) and torch.autograd.gradgradcheck(f, W0)
