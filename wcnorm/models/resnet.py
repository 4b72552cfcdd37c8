"""CIFAR-size ResNet-18/34/50 (He et al. 2016), the widely used CIFAR variant.

3x3 stride-1 stem, no max-pool, four stages of 64/128/256/512 planes (x4 for the
bottleneck) with stride 2 from stage 2 on, identity shortcuts where shapes agree and
1x1-conv (+norm) projections where they do not, adaptive average pool, linear head.
The bottleneck strides in its 3x3 conv (the "v1.5" placement torchvision uses).
ResNet-18 with 10 classes has 11,173,962 parameters. Works at 32x32 and 64x64.

``width`` multiplies every stage's planes and the stem's channels (`layers.scaled`:
64 -> round(64 * width)); the bottleneck's expansion of 4 applies to the scaled planes.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import WIDTH, init_cnn, norm2d, scaled, use_bias

DEFAULTS = {"width": WIDTH}


def conv3x3(cin: int, cout: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)


def shortcut(cin: int, cout: int, stride: int, act_norm: str) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=use_bias(act_norm)), norm2d(act_norm, cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, act_norm: str):
        super().__init__()
        bias = use_bias(act_norm)
        self.conv1 = conv3x3(cin, planes, stride, bias)
        self.bn1 = norm2d(act_norm, planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, 1, bias)
        self.bn2 = norm2d(act_norm, planes)
        self.shortcut = shortcut(cin, planes, stride, act_norm)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, act_norm: str):
        super().__init__()
        bias, cout = use_bias(act_norm), planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=bias)
        self.bn1 = norm2d(act_norm, planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, stride, bias)
        self.bn2 = norm2d(act_norm, planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=bias)
        self.bn3 = norm2d(act_norm, cout)
        self.shortcut = shortcut(cin, cout, stride, act_norm)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block: type, layers: list[int], num_classes: int, in_channels: int = 3,
                 act_norm: str = "bn", width: float = WIDTH):
        super().__init__()
        stem = scaled(64, width)
        self.conv1 = conv3x3(in_channels, stem, 1, use_bias(act_norm))
        self.bn1 = norm2d(act_norm, stem)
        self.relu = nn.ReLU()
        cin, stages = stem, []
        for i, n in enumerate(layers):
            planes, stride = scaled(64 * 2**i, width), 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride if j == 0 else 1, act_norm))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_cnn(self, act_norm)
        if act_norm == "none":
            scale_residual_branches(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def scale_residual_branches(model: nn.Module) -> None:
    """Without normalization every residual block adds a branch as large as its input,
    so the stream's variance doubles per block (2^16 for ResNet-50). Scaling each
    branch's last conv by 1/sqrt(#blocks) keeps it bounded (about e), as Fixup's
    rescaling does; unlike Fixup's zero init it leaves every unit alive, which
    ENorm's balancing needs (a zero outgoing norm would zero the unit). Works on
    torchvision's ResNets too (same block names and conv names)."""
    blocks = [m for m in model.modules() if type(m).__name__ in ("BasicBlock", "Bottleneck")]
    with torch.no_grad():
        for b in blocks:
            (b.conv3 if hasattr(b, "conv3") else b.conv2).weight.mul_(len(blocks) ** -0.5)


ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3])}


def build(name: str, num_classes: int, in_channels: int, act_norm: str, width: float = WIDTH) -> ResNet:
    block, layers = ARCHS[name]
    return ResNet(block, layers, num_classes, in_channels, act_norm, width)
