"""The two networks of the ENorm paper's CIFAR-10 experiments (Stock et al. 2019).

`EnormFC`: flatten, Linear(in -> 500), `depth` x Linear(500 -> 500), Linear(500 ->
classes); ReLU after every hidden layer, the norm (if any) between each hidden
Linear and its ReLU, as in the official code. No biases anywhere, whatever the
act_norm: the paper's networks have none (balancing then only touches weights).

`EnormFullConv` (Gitman & Ginsburg 2017): 3x[3x3 conv 128] - maxpool 3/2/1 -
3x[3x3 conv 256] - maxpool 3/2/1 - 3x3 conv 320 - 1x1 conv 320 - 1x1 conv classes,
no biases, ReLU after every conv but the last, the norm only after the 3rd and
6th conv, global average pool. ``official_quirk=True`` reproduces the official
code instead: the last conv has padding 1, a ReLU is applied to the logits, and
an AvgPool2d(5) reads the top-left 5x5 of the 9x9 map (28x28 inputs only).
``width`` multiplies its hidden channels (128, 256, 320), as for the CIFAR CNNs.

Both use Kaiming-normal (fan_in, ReLU gain) initialisation, as the paper.
"""

from __future__ import annotations

from torch import nn

from .layers import norm1d, norm2d, scaled

FC_DEFAULTS = {"depth": 1, "width": 500}
FULLCONV_DEFAULTS = {"official_quirk": False, "width": 1.0}
QUIRK_IMAGE_SIZE = 28


def _kaiming(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return model


class EnormFC(nn.Sequential):
    def __init__(self, in_features: int, num_classes: int, depth: int = 1, width: int = 500,
                 act_norm: str = "none"):
        super().__init__()
        self.flatten = nn.Flatten()
        for i in range(depth + 1):  # the input layer plus `depth` intermediary layers
            self.add_module(f"fc{i}", nn.Linear(in_features if i == 0 else width, width, bias=False))
            self.add_module(f"norm{i}", norm1d(act_norm, width))
            self.add_module(f"relu{i}", nn.ReLU())
        self.classifier = nn.Linear(width, num_classes, bias=False)
        _kaiming(self)


class EnormFullConv(nn.Sequential):
    def __init__(self, num_classes: int, in_channels: int = 3, act_norm: str = "none",
                 official_quirk: bool = False, width: float = 1.0):
        super().__init__()
        # the hidden channels, times the width multiplier (1: the published net)
        c1, c2, c3 = (scaled(c, width) for c in (128, 256, 320))
        # (cin, cout, kernel, padding, norm after?)
        convs = [(in_channels, c1, 3, 1, False), (c1, c1, 3, 1, False), (c1, c1, 3, 1, True),
                 (c1, c2, 3, 1, False), (c2, c2, 3, 1, False), (c2, c2, 3, 1, True),
                 (c2, c3, 3, 1, False), (c3, c3, 1, 0, False),
                 (c3, num_classes, 1, 1 if official_quirk else 0, False)]
        for i, (cin, cout, k, pad, normed) in enumerate(convs, 1):
            self.add_module(f"conv{i}", nn.Conv2d(cin, cout, k, padding=pad, bias=False))
            if normed:
                self.add_module(f"norm{i}", norm2d(act_norm, cout))
            if i < len(convs) or official_quirk:
                self.add_module(f"relu{i}", nn.ReLU())
            if i in (3, 6):
                self.add_module(f"pool{i // 3}", nn.MaxPool2d(3, 2, 1))
        self.avgpool = nn.AvgPool2d(5) if official_quirk else nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        _kaiming(self)


def build(name: str, num_classes: int, in_channels: int, act_norm: str, image_size: int,
          **options) -> nn.Module:
    if name == "enorm_fc":
        opts = {**FC_DEFAULTS, **options}
        return EnormFC(in_channels * image_size**2, num_classes, opts["depth"], opts["width"], act_norm)
    assert name == "enorm_fullconv"
    opts = {**FULLCONV_DEFAULTS, **options}
    return EnormFullConv(num_classes, in_channels, act_norm, opts["official_quirk"], opts["width"])

