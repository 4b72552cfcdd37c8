"""Weight conditioning (WC): W_eff = E(W) W, recomputed on every forward pass.

Saratchandran, Wang & Lucey, "Weight Conditioning for Smooth Optimization of Neural
Networks" (ECCV 2024). The preconditioner E is the row-equilibration matrix

    E(W) = diag(1 / max(||W_i||_p, eps)),

which by Van der Sluis' theorem is (near) optimal among diagonal left scalings for the
condition number of W: exactly optimal for kappa_inf with p = 1, within sqrt(n) of
optimal for kappa_2 with p = 2. A Linear weight (out x in) is used as is; a Conv
weight (C_out, C_in, *kernel) is viewed as the C_out x (C_in * prod(kernel)) matrix,
so a "row" is one output unit and a "column" one (input channel, kernel tap) pair.

Decisions of the project (docs/methods.md, section 1):

* WC is a ``torch.nn.utils.parametrize`` parametrization, so E is recomputed from the
  current raw weight on every forward and gradients flow *through* E (``detach=False``,
  the default). ``detach=True`` treats E as a constant in backward.
* There is **no learnable gain**: the paper's preconditioner is a pure scaling. Row WC
  with p = 2 is therefore weight normalization with its gain fixed at 1.
* Row WC before a per-channel normalization is **cancelled exactly**: BN(D W x) =
  BN(W x) for any positive diagonal D (up to BN's eps), so the loss is the same
  function of the raw weights with or without WC -- same gradients, same trajectory,
  same effective learning rate. With the classifier skipped, BN + WC *is* BN.
  :mod:`wcnorm.methods.cancellation` finds such layers from the model's graph; the
  BN presets (``bn_wc``, ``bn_e``) therefore condition the classifier too
  (``include_classifier``), as docs/methods.md decides. Column and both-sided WC
  change the function class and are not cancelled.
* The final classifier is left alone by default in the library call (the paper's
  schematic puts a preconditioner after each hidden layer's weights and none after
  the output layer); pass ``include_classifier=True`` where a BatchNorm would cancel
  everything else.
* A block whose equilibrated vectors have a single entry (one column per group with
  side="row", e.g. a Linear(1, n); one row per group with side="column", e.g. a
  depthwise conv) has an E(W) W that depends on the signs of W alone: a constant, so
  its gradient is zero and the layer is frozen. :func:`weight_conditioning` warns
  about such a layer.

The functions below are vectorised (norms along whole dimensions, ``clamp_min`` for
dead rows) and never synchronise with the host, since they run on every forward.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from .weight_method import WeightMethod, install

__all__ = [
    "row_equilibrate",
    "column_equilibrate",
    "ruiz_equilibrate",
    "WeightConditioning",
    "weight_conditioning",
    "frozen_by_conditioning",
    "SIDES",
    "P_VALUES",
    "parse_p",
]

SIDES = ("row", "column", "both")  # which side of W the diagonal scaling is applied on
P_VALUES = (1.0, 2.0, math.inf)  # the norms equilibrated; Van der Sluis covers these three


def parse_p(p) -> float:
    """Return p as a float in ``P_VALUES``; accepts "inf" (as written in a YAML config)."""
    if isinstance(p, str):
        p = p.strip().lower()
        p = math.inf if p in ("inf", "infinity", ".inf") else p
    try:
        p = float(p)
    except (TypeError, ValueError):
        p = None
    if p not in P_VALUES:
        raise ValueError(f"weight conditioning: p must be 1, 2 or inf, got {p!r}")
    return p


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"weight conditioning: side must be one of {SIDES}, got {side!r}")
    return side


def _grouped(W: Tensor, groups: int) -> Tensor:
    """View W (C_out, ...) as (groups, C_out // groups, fan_in): the diagonal blocks of
    the layer's true (block-diagonal) matrix. groups == 1 for Linear and ordinary convs."""
    if W.dim() < 2:
        raise ValueError(f"weight conditioning needs a weight with >= 2 dims, got shape {tuple(W.shape)}")
    return W.reshape(groups, W.shape[0] // groups, -1)


def _scalings(W: Tensor, side: str, p: float, eps: float, iters: int, groups: int = 1):
    """Diagonal factors (left, right), shaped to broadcast against the grouped view
    (groups, rows, cols), such that W_eff = left * W * right.

    ``both`` alternates a full row step and a full column step ``iters`` times
    (Sinkhorn-Knopp / Ruiz style). The row step comes first, so the result keeps the
    row method's invariance to any positive rescaling of the raw rows; the last step
    is a column step, so columns end exactly unit-norm and rows near-balanced. For a
    non-square matrix the row and column norms cannot all be 1 (sum of squares), but
    their max/min ratios converge to 1.
    """
    A = _grouped(W, groups)
    if side == "row":
        return 1.0 / torch.linalg.vector_norm(A, ord=p, dim=2, keepdim=True).clamp_min(eps), None
    if side == "column":
        return None, 1.0 / torch.linalg.vector_norm(A, ord=p, dim=1, keepdim=True).clamp_min(eps)
    left = 1.0 / torch.linalg.vector_norm(A, ord=p, dim=2, keepdim=True).clamp_min(eps)
    right = 1.0 / torch.linalg.vector_norm(left * A, ord=p, dim=1, keepdim=True).clamp_min(eps)
    for _ in range(iters - 1):
        left = left / torch.linalg.vector_norm(left * A * right, ord=p, dim=2, keepdim=True).clamp_min(eps)
        right = right / torch.linalg.vector_norm(left * A * right, ord=p, dim=1, keepdim=True).clamp_min(eps)
    return left, right


class _RowEquilibrate(torch.autograd.Function):
    """W_i / max(||W_i||_2, eps) for every row i, with the backward written out.

    The method's default runs on every forward of every layer, so its kernel count is
    its cost on a GPU: 3 tensor ops forward and 9 backward, against 5 and 16 for autograd
    through the generic formula. The gradient is the projection of G_i / n_i off the
    unit row: (G_i - W_eff_i <G_i, W_eff_i>) / n_i; a row at the eps floor has a
    constant scale, so there it is G_i / eps. Norms are taken over the weight's own dims,
    so a channels_last kernel stays channels_last. The backward is built from tensor
    ops on the input and output (the norm is recomputed, not saved), so double backward
    (Hessian-vector products) is exact too."""

    @staticmethod
    def forward(ctx, W: Tensor, eps: float) -> Tensor:
        out = _row_equilibrated(W, eps)
        ctx.save_for_backward(W, out)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, G: Tensor):
        W, out = ctx.saved_tensors
        return _row_equilibrate_grad(W, out, G, ctx.eps), None


def _row_equilibrated(W: Tensor, eps: float) -> Tensor:
    """W_i / max(||W_i||_2, eps) for every row i (dims 1.. of W)."""
    return W / torch.linalg.vector_norm(W, dim=tuple(range(1, W.ndim)), keepdim=True).clamp_min(eps)


def _row_equilibrate_grad(W: Tensor, out: Tensor, G: Tensor, eps: float) -> Tensor:
    """The gradient of W -> W_i / max(||W_i||, eps) at W (``out``: its value) for the
    output gradient G (see :class:`_RowEquilibrate`)."""
    dims = tuple(range(1, W.ndim))
    n = torch.linalg.vector_norm(W, dim=dims, keepdim=True)
    s = torch.where(n > eps, (G * out).sum(dims, keepdim=True), 0.0)
    return torch.addcmul(G, out, s, value=-1).div_(n.clamp_min(eps))


class _RowEquilibrateMany(torch.autograd.Function):
    """:class:`_RowEquilibrate` on several weights as one autograd node: the same ops on
    each weight, in the same order, so the values and gradients are bitwise equal. One
    call (one Python Function, one node in the backward) instead of one per layer is
    what a step of a network of many small layers saves (see
    :func:`wcnorm.methods.weight_method.effective_weights`). An output the forward never
    used gets no gradient (``None``), so its raw weight's ``.grad`` stays unset, as on the
    lazy path."""

    @staticmethod
    def forward(ctx, eps: float, *Ws: Tensor) -> tuple[Tensor, ...]:
        outs = tuple(_row_equilibrated(W, eps) for W in Ws)
        ctx.save_for_backward(*Ws, *outs)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return outs

    @staticmethod
    def backward(ctx, *Gs: Tensor | None):
        saved = ctx.saved_tensors
        Ws, outs = saved[:len(Gs)], saved[len(Gs):]
        return (None, *(None if G is None else _row_equilibrate_grad(W, out, G, ctx.eps)
                        for W, out, G in zip(Ws, outs, Gs)))


def _condition(W: Tensor, side: str, p: float, eps: float, iters: int, groups: int, detach: bool) -> Tensor:
    if side == "row" and p == 2.0 and not detach:  # the default: one fused function
        return _RowEquilibrate.apply(W, eps)
    left, right = _scalings(W.detach() if detach else W, side, p, eps, iters, groups)
    A = _grouped(W, groups)
    A = A if left is None else A * left
    A = A if right is None else A * right
    return A.reshape(W.shape)


def row_equilibrate(W: Tensor, p=2, eps: float = 1e-8) -> Tensor:
    """E(W) W with E = diag(1 / max(||W_i||_p, eps)): every row (output unit) unit-norm.

    W is out x in; a tensor with more dims (a conv kernel) is treated as the matrix
    with dims 1.. flattened. A zero row stays zero (the eps clamp).

    Example::

        >>> import torch
        >>> W = torch.tensor([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0]])
        >>> row_equilibrate(W)
        tensor([[0.6000, 0.8000],
                [0.0000, 1.0000],
                [0.0000, 0.0000]])
        >>> row_equilibrate(W, p="inf")[0]             # max-norm: the largest entry is 1
        tensor([0.7500, 1.0000])
    """
    return _condition(W, "row", parse_p(p), eps, 0, 1, detach=False)


def column_equilibrate(W: Tensor, p=2, eps: float = 1e-8, *, groups: int = 1) -> Tensor:
    """W diag(1 / max(||W^j||_p, eps)): every column unit-norm (right scaling).

    ``groups``: for a grouped conv, columns are equilibrated within each group's block.

    Example::

        >>> import torch
        >>> column_equilibrate(torch.tensor([[3.0, 1.0], [4.0, 0.0]]))
        tensor([[0.6000, 1.0000],
                [0.8000, 0.0000]])
    """
    return _condition(W, "column", parse_p(p), eps, 0, groups, detach=False)


def ruiz_equilibrate(W: Tensor, p=2, eps: float = 1e-8, iters: int = 3, *, groups: int = 1) -> Tensor:
    """Two-sided equilibration D_r W D_c by ``iters`` alternating row/column steps.

    The last step is a column step: columns end unit-norm, rows near it.

    Example::

        >>> import torch
        >>> W = torch.tensor([[1.0, 100.0], [0.01, 1.0]], dtype=torch.float64)
        >>> A = ruiz_equilibrate(W, iters=10)
        >>> torch.linalg.vector_norm(A, dim=0)           # columns
        tensor([1., 1.], dtype=torch.float64)
        >>> torch.linalg.vector_norm(A, dim=1).round(decimals=3)   # rows, near 1
        tensor([1., 1.], dtype=torch.float64)
    """
    if iters < 1:
        raise ValueError(f"weight conditioning: iters must be >= 1, got {iters}")
    return _condition(W, "both", parse_p(p), eps, iters, groups, detach=False)


def _block_shape(shape, groups: int) -> tuple[int, int]:
    """(rows, columns) of each diagonal block of a weight of this shape (see _grouped)."""
    return shape[0] // groups, math.prod(shape[1:])


def frozen_by_conditioning(shape, side: str, *, groups: int = 1) -> bool:
    """Whether WC on a weight of this shape depends on the signs of W alone: a
    constant, with zero gradient.

    Equilibrating a vector with a single entry leaves only its sign. The vectors are
    the rows of each group's block with side="row" (frozen with one column, fan_in 1),
    its columns with side="column" (frozen with one row per group, e.g. a depthwise
    conv), and both with side="both" (once a step of either kind has left only signs,
    the other step rescales them by constants).
    """
    rows, cols = _block_shape(shape, groups)
    return {"row": cols == 1, "column": rows == 1, "both": rows == 1 or cols == 1}[_check_side(side)]


class WeightConditioning(WeightMethod):
    """Parametrization W -> E(W) W for ``torch.nn.utils.parametrize``.

    Options: ``side`` ("row": the paper's left preconditioner; "column"; "both"),
    ``p`` (1, 2 or inf), ``eps`` (floor on a norm, so a dead row gives no inf/NaN),
    ``detach`` (E constant in backward), ``iters`` (side="both" only), ``groups``
    (set from a grouped conv by :func:`weight_conditioning`). No parameters: WC has no
    learnable gain.
    """

    method = "wc"

    def __init__(self, *, side: str = "row", p=2, eps: float = 1e-8, detach: bool = False,
                 iters: int = 3, groups: int = 1):
        super().__init__()
        self.side = _check_side(side)
        self.p = parse_p(p)
        if not eps > 0:
            raise ValueError(f"weight conditioning: eps must be > 0, got {eps}")
        if side == "both" and int(iters) < 1:
            raise ValueError(f"weight conditioning: iters must be >= 1, got {iters}")
        self.eps, self.detach, self.iters, self.groups = float(eps), bool(detach), int(iters), int(groups)

    @property
    def scales_rows(self) -> bool:
        """Row WC rescales each raw row by a positive factor (of any p): a per-channel
        normalization after the layer cancels it. Column and both-sided WC do not."""
        return self.side == "row"

    def forward(self, W: Tensor) -> Tensor:
        return _condition(W, self.side, self.p, self.eps, self.iters, self.groups, self.detach)

    def batch_key(self):
        """The default (rows, p = 2, E differentiated) batches by eps: one
        :class:`_RowEquilibrateMany` call for all such layers of a model."""
        return ("row", 2.0, self.eps) if (self.side, self.p, self.detach) == ("row", 2.0, False) else None

    @classmethod
    def forward_batch(cls, key, tensors):
        return _RowEquilibrateMany.apply(key[2], *tensors)

    def check(self, label: str, weight: Tensor) -> None:
        if frozen_by_conditioning(weight.shape, self.side, groups=self.groups):
            rows, cols = _block_shape(weight.shape, self.groups)
            warnings.warn(f"weight conditioning side={self.side} on {label or 'the root module'}: "
                          f"its blocks are {rows} x {cols}, so E(W) W depends on the signs of W "
                          "alone; the layer is frozen (zero gradient). Choose another side, or "
                          "leave the layer out (wcnorm_stem / wcnorm_classifier).",
                          stacklevel=4)  # check <- install <- weight_conditioning <- its caller

    def extra_repr(self) -> str:
        s = f"side={self.side}, p={self.p:g}, eps={self.eps:g}, detach={self.detach}"
        s += f", iters={self.iters}" if self.side == "both" else ""
        return s + (f", groups={self.groups}" if self.groups > 1 else "")


def weight_conditioning(model: nn.Module, name: str | None = None, *, side: str = "row", p=2,
                        eps: float = 1e-8, detach: bool = False, iters: int = 3,
                        include_classifier: bool = False, skip_stem: bool = False) -> nn.Module:
    """Register :class:`WeightConditioning` on one layer or on every layer of a model,
    in place; returns ``model``. The raw weights stay the trainable tensors
    (``parametrizations.weight.original``): build the optimizer afterwards.

    A layer is conditioned, a model is walked:

    * **one layer**, as ``torch.nn.utils.parametrizations.weight_norm`` does: when
      ``model`` is itself a Conv1d/2d/3d or Linear (its ``weight``; an
      ``nn.MultiheadAttention``: its input projections), or when ``name`` names the
      tensor to condition (any weight matrix of ``model``, e.g. ``name="weight"``).
      ``include_classifier`` changes nothing there; ``skip_stem=True`` is an error;
    * **a model**, otherwise: every Conv1d/2d/3d and Linear weight (attention
      projections included) of :func:`wcnorm.methods.weight_method.weight_layers` -- the
      classifier, the last Conv/Linear, is skipped unless ``include_classifier``; the
      stem, the first, is skipped with ``skip_stem``.

    The function changes (rows are rescaled to unit norm) unless a normalization layer
    follows. A layer WC would freeze (see :func:`frozen_by_conditioning`) is
    conditioned all the same, with a warning. Row WC on a layer that a per-channel
    normalization follows is cancelled by it exactly
    (:func:`wcnorm.methods.cancellation.cancelled_layers` lists such layers).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> layer = weight_conditioning(nn.Linear(20, 40), name="weight")
        >>> torch.linalg.vector_norm(layer.weight, dim=1).allclose(torch.ones(40))
        True
        >>> sorted(layer.parametrizations.keys())   # the raw weight is .original
        ['weight']
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
        ...                       nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
        >>> model = weight_conditioning(model)       # every layer but the classifier
        >>> [type(m).__name__ for m in model if hasattr(m, "parametrizations")]
        ['ParametrizedConv2d', 'ParametrizedConv2d']
        >>> model(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 10])
    """
    opts = dict(side=_check_side(side), p=parse_p(p), eps=eps, detach=detach, iters=iters)
    WeightConditioning(**opts)  # validate before touching the model
    return install(model, lambda layer: WeightConditioning(**opts, groups=getattr(layer, "groups", 1)),
                   opts, name=name, include_classifier=include_classifier, skip_stem=skip_stem)
