"""Which architectures WC and ENorm support: both methods tried on torchvision's
classification models, the support matrix of ``docs/support.md``.

Each model is built with random weights (``weights=None``: nothing is downloaded), in
float64 and eval mode, with its normalization layers given random affine parameters
and running statistics (so that folding them is not the identity), and run on one
random image of the smallest size it accepts (at least 32 x 32). Then

* **WC** (:func:`wcnorm.methods.wc.weight_conditioning`, the defaults) works when the
  forward pass runs and every conditioned weight has unit-norm rows;
* **ENorm** (:class:`wcnorm.methods.enorm.ENorm` with ``bn="fold"``, which balances
  the BN-free model or the BN-folded form of one with BatchNorm/GroupNorm) works when
  two cycles leave the function unchanged to 1e-10 (relative) and do not raise the
  objective. It may balance only part of the units: the others are named, with why.

A method may also *refuse* the model, before changing anything, with a one-line
message naming the layer or operation it cannot handle. Anything else -- an
exception from the method, a changed function, rows not unit-norm -- is a failure,
reported as such (the test suite requires there be none).
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .enorm import ENorm, find_unit_groups
from .wc import weight_conditioning
from .weight_method import installed_methods

__all__ = ["MAX_PARAMS", "Outcome", "Support", "zoo", "check_wc", "check_enorm", "support_row",
           "support_matrix", "render_markdown"]

MAX_PARAMS = 32_000_000  # "up to about 30 M": the next torchvision model has 39 M
MIN_SIZE = 32
TOL = 1e-10  # relative change of the function / distance of a row norm from 1, float64
# units ENorm leaves alone by design, not for want of a rule: not worth a line of the matrix
_BY_DESIGN = ("(bn='fold')", "model output", "no producer or no consumer")


@dataclass
class Outcome:
    """One method on one model: ``status`` "yes" (works), "refused" (before changing
    anything) or "fails" (neither: a defect); ``detail``: how much it touched (works),
    or the one-line message; ``reason``: what it left alone, and why."""

    status: str
    detail: str
    reason: str = ""

    @classmethod
    def failure(cls, e: BaseException) -> Outcome:
        return cls("fails", _one_line(f"{type(e).__name__}: {e}"))


@dataclass
class Support:
    """One row of the matrix."""

    model: str
    params: int
    size: int  # input height = width
    wc: Outcome
    enorm: Outcome


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def zoo(max_params: int = MAX_PARAMS) -> list[tuple[str, int, int]]:
    """torchvision's classification models of at most ``max_params`` parameters, smallest
    first, as (name, parameters, input size); read from the weights' metadata, so nothing
    is built or downloaded."""
    from torchvision import models

    out = []
    for name in models.list_models(module=models):
        meta = next(iter(models.get_model_weights(name))).meta
        if meta["num_params"] <= max_params:
            out.append((name, meta["num_params"], max(MIN_SIZE, *meta.get("min_size", (1, 1)))))
    return sorted(out, key=lambda row: (row[1], row[0]))


def build(name: str, seed: int = 0) -> nn.Module:
    """The model ``name`` of torchvision, random weights, float64, eval mode, with random
    norm-layer parameters and statistics."""
    from torchvision import models

    torch.manual_seed(seed)
    model = models.get_model(name, weights=None).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(0.5 + torch.rand_like(m.weight))
                m.bias.copy_(0.3 * torch.randn_like(m.bias))
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _output(y):
    return y if isinstance(y, torch.Tensor) else y[0]  # GoogLeNet/Inception in train mode: a tuple


@torch.no_grad()
def check_wc(model: nn.Module, x: torch.Tensor) -> Outcome:
    """WC (the defaults) on a copy of ``model``; see the module docstring."""
    model = copy.deepcopy(model)
    try:
        weight_conditioning(model)
    except ValueError as e:
        if installed_methods(model):
            return Outcome("fails", f"refused after conditioning some layers: {_one_line(e)}")
        return Outcome("refused", _one_line(e), _one_line(e))
    except Exception as e:  # noqa: BLE001 - reported in the matrix, never hidden
        return Outcome.failure(e)
    installed = installed_methods(model)
    try:
        y = _output(model(x))
    except Exception as e:  # noqa: BLE001
        return Outcome.failure(e)
    if not torch.isfinite(y).all():
        return Outcome("fails", "non-finite output")
    for item in installed:
        w = getattr(item.module, item.tensor)
        err = (torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1) - 1).abs().max().item()
        if not err <= TOL:
            return Outcome("fails", f"{item.label}: rows {err:.1e} from unit norm")
    return Outcome("yes", f"{len(installed)} layers")


def _reasons(excluded: Counter, top: int = 3) -> str:
    """The reasons units were left alone, by operation (not by layer), most units first;
    those by design (a BatchNorm's input with bn="fold", the output) left out."""
    units: Counter = Counter()
    layers: dict[str, list[str]] = {}
    for why, n in excluded.items():
        if why.endswith(_BY_DESIGN):
            continue
        m = re.fullmatch(r"(\S+) (\S+) (\(.*\))", why)  # "Conv2d layer4.0.conv2 (grouped conv input...)"
        kind = f"{m[1]} {m[3]}" if m else why
        units[kind] += n
        if m:
            layers.setdefault(kind, []).append(m[2])
    shown = []
    for kind, n in units.most_common(top):
        where = layers.get(kind, [])
        where = f", {len(where)} layers" if len(where) > 1 else f", {where[0]}" if where else ""
        shown.append(f"{kind}: {n} units{where}")
    return "; ".join(shown) + (f"; {len(units) - top} more" if len(units) > top else "")


@torch.no_grad()
def check_enorm(model: nn.Module, x: torch.Tensor, *, cycles: int = 2) -> Outcome:
    """ENorm with ``bn="fold"`` on ``model`` (rescaled in place when it works); see the
    module docstring."""
    try:
        enorm = ENorm(model, bn="fold")
    except ValueError as e:
        if str(e).startswith("ENorm found no balanceable hidden units"):  # why, by operation
            return Outcome("refused", _one_line(e), "no unit: " + _reasons(find_unit_groups(model, bn="fold").excluded))
        return Outcome("refused", _one_line(e), _one_line(e))
    except Exception as e:  # noqa: BLE001
        return Outcome.failure(e)
    try:
        y0, before = _output(model(x)), enorm.objective().item()
        enorm.step(cycles)
        change, after = _rel(_output(model(x)), y0), enorm.objective().item()
    except Exception as e:  # noqa: BLE001
        return Outcome.failure(e)
    if not change <= TOL:
        return Outcome("fails", f"the function changed by {change:.1e} (relative)")
    if not after <= before * (1 + 1e-12):
        return Outcome("fails", f"the objective rose from {before:.6g} to {after:.6g}")
    total = enorm.num_units + sum(enorm.excluded.values())
    return Outcome("yes", f"{enorm.num_units} of {total} units, objective x{after / before:.2f}",
                   _reasons(enorm.excluded))


def support_row(name: str, params: int | None = None, size: int | None = None) -> Support:
    """Both methods on the torchvision model ``name``."""
    if params is None or size is None:
        found = {n: (p, s) for n, p, s in zoo(math.inf)}
        if name not in found:
            raise ValueError(f"{name!r} is not a torchvision classification model")
        params, size = found[name]
    model = build(name)
    x = torch.randn(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    wc = check_wc(model, x)
    return Support(name, params, size, wc, check_enorm(model, x))


def support_matrix(names: Iterable[str] | None = None, *, max_params: int = MAX_PARAMS,
                   progress=None) -> list[Support]:
    """:func:`support_row` for each model of :func:`zoo` (or only ``names``)."""
    models = zoo(max_params)
    if names is not None:
        wanted = set(names)
        models = [m for m in models if m[0] in wanted]
    rows = []
    for name, params, size in models:
        rows.append(support_row(name, params, size))
        if progress is not None:
            progress(rows[-1])
    return rows


def _cell(o: Outcome) -> str:
    return o.status if o.status != "yes" else f"yes: {o.detail}"


def render_markdown(rows: list[Support]) -> str:
    """The matrix as a Markdown table: model, parameters, input size, WC, ENorm, reason
    (why a method refused, or which operations stopped the units ENorm left alone)."""
    lines = ["| model | parameters | input | WC | ENorm | reason |", "|---|---:|---:|---|---|---|"]
    for r in rows:
        reason = "; ".join(x for x in (r.wc.reason and f"WC: {r.wc.reason}", r.enorm.reason) if x)
        lines.append(f"| {r.model} | {r.params / 1e6:.1f} M | {r.size} | {_cell(r.wc)} | {_cell(r.enorm)} "
                     f"| {reason.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
