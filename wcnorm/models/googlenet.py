"""CIFAR-size GoogLeNet (Inception v1, Szegedy et al. 2015), the widely used CIFAR variant.

A 3x3 conv stem to 192 channels (no 7x7 conv, no early pools), inception modules
a3, b3, max-pool, a4..e4, max-pool, a5, b5, global average pool, linear head; no
auxiliary heads. As in that variant, the "5x5" branch is two stacked 3x3 convs.
Every conv is conv -> norm -> ReLU. Needs images of at least 8x8.

``width`` multiplies the stem's and every branch's channels (`layers.scaled`, per
branch); each module's input is the concatenation of the previous one's branches.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import WIDTH, ConvNormAct, init_cnn, scaled

DEFAULTS = {"width": WIDTH}


class Inception(nn.Module):
    def __init__(self, cin: int, n1: int, n3r: int, n3: int, n5r: int, n5: int, pool: int,
                 act_norm: str):
        super().__init__()
        self.b1 = ConvNormAct(cin, n1, 1, act_norm)
        self.b2 = nn.Sequential(ConvNormAct(cin, n3r, 1, act_norm), ConvNormAct(n3r, n3, 3, act_norm))
        self.b3 = nn.Sequential(ConvNormAct(cin, n5r, 1, act_norm), ConvNormAct(n5r, n5, 3, act_norm),
                                ConvNormAct(n5, n5, 3, act_norm))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvNormAct(cin, pool, 1, act_norm))
        self.out_channels = n1 + n3 + n5 + pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


STEM = 192
# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), as in the Inception v1 paper; each
# module's input is the previous module's output (the stem's 192 for a3, then 256, 480, ...)
CFG = {
    "a3": (64, 96, 128, 16, 32, 32), "b3": (128, 128, 192, 32, 96, 64),
    "a4": (192, 96, 208, 16, 48, 64), "b4": (160, 112, 224, 24, 64, 64),
    "c4": (128, 128, 256, 24, 64, 64), "d4": (112, 144, 288, 32, 64, 64),
    "e4": (256, 160, 320, 32, 128, 128), "a5": (256, 160, 320, 32, 128, 128),
    "b5": (384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, act_norm: str = "bn",
                 width: float = WIDTH):
        super().__init__()
        stem = c = scaled(STEM, width)
        inc = {}
        for k, branches in CFG.items():
            inc[k] = Inception(c, *(scaled(n, width) for n in branches), act_norm)
            c = inc[k].out_channels
        self.stem = ConvNormAct(in_channels, stem, 3, act_norm)
        self.stage3 = nn.Sequential(inc["a3"], inc["b3"], nn.MaxPool2d(3, 2, 1))
        self.stage4 = nn.Sequential(*(inc[k] for k in ("a4", "b4", "c4", "d4", "e4")),
                                    nn.MaxPool2d(3, 2, 1))
        self.stage5 = nn.Sequential(inc["a5"], inc["b5"])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        init_cnn(self, act_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage5(self.stage4(self.stage3(self.stem(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(name: str, num_classes: int, in_channels: int, act_norm: str, width: float = WIDTH) -> GoogLeNet:
    assert name == "googlenet"
    return GoogLeNet(num_classes, in_channels, act_norm, width)
