"""Diagnostics of the WC paper's central quantities: per-layer condition numbers of the
weight matrices, and the top Hessian eigenvalue of the loss (its "smoothness" claim).

Condition numbers are 2-norm ones, kappa = s_max / s_min, of a weight viewed as the
C_out x (C_in * prod(kernel)) matrix (a grouped conv as its block-diagonal matrix, so
its singular values are those of the per-group blocks), computed from the singular
values in float64 on the CPU: exact enough for kappa up to ~1e15, and safe on any
device the model lives on. s_min = 0 gives kappa = inf.
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .baselines import WeightNormalization
from .weight_method import installed_methods, weight_tensor_names

__all__ = ["condition_number", "condition_numbers", "summarize_conditioning", "hessian_top_eigenvalue"]


def condition_number(W: Tensor, *, groups: int = 1) -> float:
    """2-norm condition number s_max / s_min of W viewed as out x (dims 1.. flattened).

    Example::

        >>> import torch
        >>> condition_number(torch.diag(torch.tensor([10.0, 2.0, 1.0])))
        10.0
        >>> condition_number(torch.zeros(2, 2))
        inf
    """
    A = W.detach().to(device="cpu", dtype=torch.float64).reshape(groups, W.shape[0] // groups, -1)
    if A.shape[-2] < A.shape[-1]:
        A = A.mT  # same singular values; LAPACK is far faster on the tall side (50x for 512 x 4608)
    s = torch.linalg.svdvals(A)
    s_max, s_min = s.max().item(), s.min().item()
    return math.inf if s_min == 0.0 else s_max / s_min


def _row_norm_spread(W: Tensor) -> float:
    n = torch.linalg.vector_norm(W.detach().to("cpu", torch.float64).reshape(W.shape[0], -1), dim=1)
    lo, hi = n.min().item(), n.max().item()
    return math.inf if lo == 0.0 else hi / lo


def _raw(module: nn.Module, tensor: str) -> Tensor:
    """The trainable tensor under a parametrization: ``original``, or WN's direction V."""
    if not parametrize.is_parametrized(module, tensor):
        return getattr(module, tensor)
    plist = module.parametrizations[tensor]
    if any(isinstance(p, WeightNormalization) for p in plist):
        return plist.original1
    return plist.original


@torch.no_grad()
def condition_numbers(model: nn.Module, *, all_layers: bool = False) -> list[dict]:
    """One row per conditioned layer (WC/WS/WN installed; every Conv/Linear with
    ``all_layers=True``), in module order:
    ``{"layer", "shape", "kappa_eff", "kappa_raw", "row_norm_spread"}``.

    ``kappa_eff`` is of the effective weight the forward uses, ``kappa_raw`` of the
    trainable raw weight (WN: its direction V); ``row_norm_spread`` = max/min row
    2-norm of the raw weight, the quantity row equilibration removes. For a plain
    layer kappa_eff == kappa_raw.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from wcnorm.methods.wc import weight_conditioning
        >>> layer = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[100.0, 0.0], [0.0, 1.0]]))
        >>> [row] = condition_numbers(weight_conditioning(layer))   # rows 100 and 1 long
        >>> row["layer"], row["kappa_raw"], row["kappa_eff"], row["row_norm_spread"]
        ('', 100.0, 1.0, 100.0)
    """
    if all_layers:
        targets = [(name if t == "weight" else f"{name}.{t}".lstrip("."), m, t)
                   for name, m in model.named_modules() for t in weight_tensor_names(m)]
    else:
        targets = [(item.label, item.module, item.tensor) for item in installed_methods(model)]
    rows = []
    for label, module, tensor in targets:
        groups = getattr(module, "groups", 1)
        raw, eff = _raw(module, tensor), getattr(module, tensor)
        k_raw = condition_number(raw, groups=groups)
        k_eff = condition_number(eff, groups=groups) if eff is not raw else k_raw
        rows.append({"layer": label, "shape": list(eff.shape), "kappa_eff": k_eff,
                     "kappa_raw": k_raw, "row_norm_spread": _row_norm_spread(raw)})
    return rows


def summarize_conditioning(rows: list[dict]) -> dict:
    """Median and max over layers of kappa_eff and kappa_raw (``None`` when no rows).

    Example::

        >>> rows = [{"kappa_eff": 2.0, "kappa_raw": 9.0}, {"kappa_eff": 4.0, "kappa_raw": 3.0}]
        >>> summarize_conditioning(rows)
        {'num_layers': 2, 'kappa_eff_median': 3.0, 'kappa_eff_max': 4.0, 'kappa_raw_median': 6.0, 'kappa_raw_max': 9.0}
    """
    out: dict = {"num_layers": len(rows)}
    for key in ("kappa_eff", "kappa_raw"):
        vals = [float(r[key]) for r in rows]
        out[f"{key}_median"] = statistics.median(vals) if vals else None
        out[f"{key}_max"] = max(vals) if vals else None
    return out


def hessian_top_eigenvalue(model: nn.Module, loss_fn, inputs: Tensor, targets: Tensor, *,
                           iters: int = 20, tol: float = 1e-3, seed: int = 0) -> float:
    """Largest-magnitude eigenvalue of the Hessian of ``loss_fn(model(inputs), targets)``
    w.r.t. the trainable parameters, by power iteration on Hessian-vector products
    (double backprop) on this fixed batch. Stops after ``iters`` products or when the
    Rayleigh quotient changes by less than ``tol`` relative.

    The model runs in its current mode (train: BN uses batch statistics, which is the
    loss SGD sees); BN running statistics and other buffers are restored afterwards.

    Example: a quadratic loss 1/2 x^T A x in the weights of a Linear has Hessian A::

        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(2, 1, bias=False)
        >>> inputs = torch.tensor([[3.0, 0.0], [0.0, 1.0]])   # loss = 1/2 (9 w1^2 + w2^2)
        >>> loss = lambda out, target: 0.5 * out.square().sum()
        >>> round(hessian_top_eigenvalue(layer, loss, inputs, None, iters=100, tol=1e-9), 4)
        9.0
    """
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    try:
        grads = torch.autograd.grad(loss_fn(model(inputs), targets), params, create_graph=True,
                                    materialize_grads=True)
        gen = torch.Generator().manual_seed(seed)
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
        eig = None
        for _ in range(iters):
            norm = torch.sqrt(sum((x * x).sum() for x in v))
            v = [x / norm for x in v]
            live = [(g, x) for g, x in zip(grads, v) if g.requires_grad]  # a zero block: no graph
            hv = torch.autograd.grad([g for g, _ in live], params, grad_outputs=[x for _, x in live],
                                     retain_graph=True, materialize_grads=True)
            new = sum((x * h).sum() for x, h in zip(v, hv)).item()
            v = [h.detach() for h in hv]
            if eig is not None and abs(new - eig) <= tol * abs(new):
                return new
            eig = new
        return eig
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
