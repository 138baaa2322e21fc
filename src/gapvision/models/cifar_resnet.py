"""The CIFAR ResNets of He et al. 2016 (section 4.2): 3 stages of 16/32/64 channels, ``n`` basic blocks each,
option-A shortcuts (stride-2 subsampling of the identity plus zero-padded channels, no parameters), GAP, Linear.

Module names follow akamaster/pytorch_resnet_cifar10 (``conv1``, ``bn1``, ``layer1..3`` of blocks with ``conv1``,
``bn1``, ``conv2``, ``bn2``, ``shortcut``; its classifier is ``linear``), so its published checkpoints load by key.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` then zero channels on both sides up to ``planes``."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"subsample=2, pad_channels={self.pad}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        changes_shape = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = PadShortcut(planes) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def cifar_resnet_layers(depth: int) -> dict[str, nn.Module]:
    """The ResNet-``depth`` layers up to (not including) global pooling, in order:
    N x 3 x H x W -> N x 64 x H/4 x W/4. Kaiming-normal conv init as in the reference code."""
    n = blocks_for_depth(depth)
    layers: dict[str, nn.Module] = {
        "conv1": nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False),
        "bn1": nn.BatchNorm2d(16),
        "relu": nn.ReLU(inplace=True),
        "layer1": _stage(16, 16, n, stride=1),
        "layer2": _stage(16, 32, n, stride=2),
        "layer3": _stage(32, 64, n, stride=2),
    }
    for layer in layers.values():
        for m in layer.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
    return layers


def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_planes, planes, stride), *[BasicBlock(planes, planes) for _ in range(n - 1)])


def blocks_for_depth(depth: int) -> int:
    """ResNet-(6n+2): 20 -> 3, 32 -> 5, 44 -> 7, 56 -> 9, 110 -> 18."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (got {depth})")
    return (depth - 2) // 6
