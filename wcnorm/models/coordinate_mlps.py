"""Coordinate MLPs for neural fields: NeRF's radiance field and an occupancy network.

`NeRF` (Mildenhall et al., ECCV 2020): a point x and a unit viewing direction d are
positionally encoded (10 and 4 frequencies, the input kept: 63 and 27 features) and
fed to a trunk of `depth` x `width` layers that re-reads the encoded point after the
layers listed in `skips` (the paper's skip into the 5th layer's activation: skips=(4,),
0-based); a linear *density head* reads the trunk; a linear feature layer, the
encoded direction appended, one hidden layer of width/2 and the *RGB head* (sigmoid)
give the view-dependent colour. The density is ReLU(raw) as in the paper's code
(``density_activation="softplus"`` is smooth instead). With ``activation="gaussian"``
(Gaussian-activated NeRF) every hidden activation is exp(-x^2 / (2 sigma^2)) and the
inputs are not encoded by default.

`OccupancyMLP`: a point in [-1, 1]^3 -> `depth` hidden layers of `width` -> one logit
(inside if > 0). ReLU on an 8-frequency encoding (51 features) by default; ``sine``
(SIREN: sin(omega0 x), omega0 = 30, with SIREN's initialisation) and ``gaussian``
activations read the raw coordinates by default.

The encoding is [x, sin(2^k b x), cos(2^k b x)] for k = 0..L-1, with base b = pi (the
NeRF paper's formula) for the occupancy MLP; `NeRF` uses b = 1, as the NeRF code whose
scores the paper reports (its frequencies have no pi).

Like the CNNs of the zoo, activations are modules (one per position), so they can be
hooked. Each model names its output layers in ``wcnorm_classifier`` (qualified module
names on the root), which the weight methods skip by default
(`weight_layers` of `wcnorm.methods`): the occupancy logit layer, NeRF's
density and RGB heads. Every forward is batched: no loop over points.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["FIELD_MODELS", "ACTIVATIONS", "PositionalEncoding", "Sine", "GaussianActivation",
           "NeRF", "CoarseFineNeRF", "OccupancyMLP", "default_options", "build"]

FIELD_MODELS = ("nerf", "occupancy")
ACTIVATIONS = {"nerf": ("relu", "gaussian"), "occupancy": ("relu", "sine", "gaussian")}
DENSITY_ACTIVATIONS = ("relu", "softplus")
NERF_PE_BASE = 1.0  # the NeRF code's frequencies 2^k (no pi)
OCCUPANCY_PE_BASE = math.pi  # the formula [x, sin(2^k pi x), cos(2^k pi x)]


class PositionalEncoding(nn.Module):
    """x (..., d) -> [x, sin(2^k base x), cos(2^k base x)]_{k < n_freqs}, (..., d (1 + 2 L))."""

    def __init__(self, n_freqs: int, *, in_features: int = 3, base: float = math.pi,
                 include_input: bool = True):
        super().__init__()
        self.n_freqs, self.base = n_freqs, base
        self.in_features, self.include_input = in_features, include_input
        self.out_features = in_features * ((1 if include_input else 0) + 2 * n_freqs)

    def forward(self, x: Tensor) -> Tensor:
        # built in the input's dtype (not a float32 buffer), so float64 inputs stay exact
        freqs = self.base * 2.0 ** torch.arange(self.n_freqs, dtype=x.dtype, device=x.device)
        angles = (x[..., None, :] * freqs[:, None]).flatten(-2)  # (..., L d)
        parts = [x] if self.include_input else []
        return torch.cat([*parts, torch.sin(angles), torch.cos(angles)], dim=-1)

    def extra_repr(self) -> str:
        return f"n_freqs={self.n_freqs}, base={self.base:g}, include_input={self.include_input}"


class Sine(nn.Module):
    """SIREN's activation sin(omega0 x)."""

    def __init__(self, omega0: float = 30.0):
        super().__init__()
        self.omega0 = omega0

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.omega0 * x)

    def extra_repr(self) -> str:
        return f"omega0={self.omega0}"


class GaussianActivation(nn.Module):
    """exp(-x^2 / (2 sigma^2)) (Ramasinghe & Lucey, "Beyond periodicity", 2022)."""

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(-0.5 * (x / self.sigma) ** 2)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def _activation(name: str, *, omega0: float = 30.0, gaussian_sigma: float = 0.1) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "sine":
        return Sine(omega0)
    return GaussianActivation(gaussian_sigma)


def _check(model: str, activation: str, depth: int, width: int) -> None:
    if activation not in ACTIVATIONS[model]:
        raise ValueError(f"{model}: unknown activation {activation!r}; choose one of "
                         f"{ACTIVATIONS[model]}")
    if depth < 1 or width < 2:
        raise ValueError(f"{model}: need depth >= 1 and width >= 2, got depth={depth}, width={width}")


def _encoder(encode: bool, n_freqs: int, base: float) -> nn.Module:
    return PositionalEncoding(n_freqs, base=base) if encode else nn.Identity()


def _width(encoder: nn.Module) -> int:
    return encoder.out_features if isinstance(encoder, PositionalEncoding) else 3


class NeRF(nn.Module):
    """NeRF's MLP: ``forward(points (N, 3), viewdirs (N, 3)) -> (rgb (N, 3), sigma (N,))``."""

    def __init__(self, depth: int = 8, width: int = 256, skips: Iterable[int] = (4,),
                 activation: str = "relu", encoding: bool | None = None, position_freqs: int = 10,
                 direction_freqs: int = 4, gaussian_sigma: float = 0.1,
                 density_activation: str = "relu"):
        super().__init__()
        _check("nerf", activation, depth, width)
        if density_activation not in DENSITY_ACTIVATIONS:
            raise ValueError(f"nerf: unknown density_activation {density_activation!r}; choose one "
                             f"of {DENSITY_ACTIVATIONS}")
        self.skips = tuple(sorted(int(s) for s in skips))
        if any(not 0 <= s < depth - 1 for s in self.skips):
            raise ValueError(f"nerf: skips {self.skips} must index trunk layers 0..{depth - 2} "
                             "(the input is re-read by the layer after each)")
        encode = activation == "relu" if encoding is None else encoding
        self.encode_position = _encoder(encode, position_freqs, NERF_PE_BASE)
        self.encode_direction = _encoder(encode, direction_freqs, NERF_PE_BASE)
        in_pos, in_dir = _width(self.encode_position), _width(self.encode_direction)

        def act() -> nn.Module:
            return _activation(activation, gaussian_sigma=gaussian_sigma)

        self.trunk = nn.ModuleList(
            nn.Linear(in_pos if i == 0 else width + (in_pos if i - 1 in self.skips else 0), width)
            for i in range(depth))
        self.trunk_act = nn.ModuleList(act() for _ in range(depth))
        self.sigma_head = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.view = nn.Linear(width + in_dir, width // 2)
        self.view_act = act()
        self.rgb_head = nn.Linear(width // 2, 3)
        self.density = nn.ReLU() if density_activation == "relu" else nn.Softplus()
        self.wcnorm_classifier = ["sigma_head", "rgb_head"]

    def forward(self, points: Tensor, viewdirs: Tensor) -> tuple[Tensor, Tensor]:
        x = self.encode_position(points)
        h = x
        for i, (layer, act) in enumerate(zip(self.trunk, self.trunk_act)):
            h = act(layer(h))
            if i in self.skips:
                h = torch.cat([h, x], dim=-1)
        sigma = self.density(self.sigma_head(h)).squeeze(-1)
        h = torch.cat([self.feature(h), self.encode_direction(viewdirs)], dim=-1)
        rgb = torch.sigmoid(self.rgb_head(self.view_act(self.view(h))))
        return rgb, sigma


class CoarseFineNeRF(nn.Module):
    """NeRF's two networks, trained together (hierarchical sampling): ``coarse`` and
    ``fine``, each a `NeRF` with the same options; one root for the weight methods."""

    def __init__(self, **options):
        super().__init__()
        self.coarse = NeRF(**options)
        self.fine = NeRF(**options)
        self.wcnorm_classifier = [f"{net}.{head}" for net in ("coarse", "fine")
                                  for head in self.coarse.wcnorm_classifier]


class OccupancyMLP(nn.Module):
    """``forward(points (..., 3)) -> logits (...)``: inside the shape where > 0."""

    def __init__(self, depth: int = 4, width: int = 256, activation: str = "relu",
                 encoding: bool | None = None, freqs: int = 8, omega0: float = 30.0,
                 gaussian_sigma: float = 0.1):
        super().__init__()
        _check("occupancy", activation, depth, width)
        encode = activation == "relu" if encoding is None else encoding
        self.encode = _encoder(encode, freqs, OCCUPANCY_PE_BASE)
        sizes = [_width(self.encode)] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.acts = nn.ModuleList(_activation(activation, omega0=omega0, gaussian_sigma=gaussian_sigma)
                                  for _ in range(depth))
        self.out = nn.Linear(width, 1)
        self.wcnorm_classifier = ["out"]
        if activation == "sine":
            self._siren_init(omega0)

    @torch.no_grad()
    def _siren_init(self, omega0: float) -> None:
        """SIREN (Sitzmann et al. 2020): U(-1/n, 1/n) for the first layer, U(-sqrt(6/n)/omega0,
        sqrt(6/n)/omega0) after, n the fan-in, so pre-activations stay ~ arcsine-distributed."""
        for i, layer in enumerate([*self.hidden, self.out]):
            n = layer.in_features
            bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n) / omega0
            layer.weight.uniform_(-bound, bound)

    def forward(self, points: Tensor) -> Tensor:
        h = self.encode(points)
        for layer, act in zip(self.hidden, self.acts):
            h = act(layer(h))
        return self.out(h).squeeze(-1)


def _model_class(name: str) -> type[nn.Module]:
    if name not in FIELD_MODELS:
        raise ValueError(f"unknown field model {name!r}; choose one of {FIELD_MODELS}")
    return NeRF if name == "nerf" else OccupancyMLP


def default_options(name: str) -> dict:
    """A field model's options and their defaults (read from its signature: defined once)."""
    parameters = inspect.signature(_model_class(name)).parameters
    return {key: p.default for key, p in parameters.items()}


def build(name: str, *, coarse_fine: bool = True, **options) -> nn.Module:
    """A field model by name: ``"nerf"`` (a `CoarseFineNeRF`, or a single `NeRF` with
    ``coarse_fine=False``, for renderers without a fine pass) or ``"occupancy"`` (an
    `OccupancyMLP`); ``options`` are the model's keyword arguments."""
    model = _model_class(name)
    if model is NeRF and coarse_fine:
        return CoarseFineNeRF(**options)
    return model(**options)
