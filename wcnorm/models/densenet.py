"""CIFAR-size DenseNet-121 (Huang et al. 2017), the widely used CIFAR variant.

Growth rate 32, dense blocks of 6-12-24-16 layers, each layer a pre-activation
bottleneck norm-ReLU-conv1x1 (4*growth) -> norm-ReLU-conv3x3 (growth) whose output
is concatenated to its input; transitions norm-ReLU-conv1x1 (reduction 0.5) ->
avg-pool 2; a 3x3 stem conv to 2*growth channels (no max-pool); final norm-ReLU,
adaptive average pool, linear head. Needs images of at least 8x8 (three 2x pools).

``width`` multiplies the growth rate (`layers.scaled`: 32 -> round(32 * width)), and
with it the stem's 2*growth channels, the bottlenecks' 4*growth and, through the
concatenations, every block's and transition's channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import WIDTH, init_cnn, norm2d, scaled, use_bias

DEFAULTS = {"width": WIDTH}


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, act_norm: str, bn_size: int = 4):
        super().__init__()
        bias, width = use_bias(act_norm), bn_size * growth
        self.norm1 = norm2d(act_norm, cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=bias)
        self.norm2 = norm2d(act_norm, width)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, growth, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.norm1(x)))
        out = self.conv2(self.relu2(self.norm2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int, act_norm: str):
        super().__init__()
        self.norm = norm2d(act_norm, cin)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(cin, cout, 1, bias=use_bias(act_norm))
        self.pool = nn.AvgPool2d(2)


class DenseNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], growth: int, num_classes: int, in_channels: int = 3,
                 act_norm: str = "bn", reduction: float = 0.5):
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=use_bias(act_norm))
        stages = []
        for i, n in enumerate(blocks):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(c, growth, act_norm))
                c += growth
            stages.append(nn.Sequential(*layers))
            if i < len(blocks) - 1:  # no transition after the last block
                cout = math.floor(c * reduction)
                stages.append(Transition(c, cout, act_norm))
                c = cout
        self.features = nn.Sequential(*stages)
        self.norm = norm2d(act_norm, c)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        init_cnn(self, act_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm(self.features(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(name: str, num_classes: int, in_channels: int, act_norm: str, width: float = WIDTH) -> DenseNet:
    assert name == "densenet121"
    return DenseNet((6, 12, 24, 16), scaled(32, width), num_classes, in_channels, act_norm)
