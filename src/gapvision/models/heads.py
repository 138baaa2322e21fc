"""Classifier heads as small layers, in the manner of timm's ``SelectAdaptivePool2d`` + ``create_classifier``.

A head turns a backbone's C x h x w feature map into class logits. It is a pooling layer followed by a classifier:

=========== ===================================== ==================================================
kind        pool                                  classifier
=========== ===================================== ==================================================
gap         global average                        Linear(C, K)
gmp         global max                            Linear(C, K)
avgmax      (avg + max) / 2                       Linear(C, K)
catavgmax   concat(avg, max)                      Linear(2C, K)
fc          flatten C*h*w (tied to the input size) Linear(C*h*w, hidden), ReLU, Dropout, Linear(hidden, K)
conv        none: 1x1 conv to K class maps first  Conv2d(C, K, 1) [, ReLU], then global average
=========== ===================================== ==================================================
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

HEADS = ("gap", "gmp", "avgmax", "catavgmax", "fc", "conv")


class GlobalPool(nn.Module):
    """Global pooling of a N x C x h x w map to N x C' (C' = 2C for catavgmax)."""

    def __init__(self, kind: str):
        super().__init__()
        if kind not in ("avg", "max", "avgmax", "catavgmax"):
            raise ConfigError(f"unknown pooling {kind!r}")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return x.mean(dim=(2, 3))
        mx = x.amax(dim=(2, 3))
        if self.kind == "max":
            return mx
        avg = x.mean(dim=(2, 3))
        return 0.5 * (avg + mx) if self.kind == "avgmax" else torch.cat([avg, mx], dim=1)

    def feature_mult(self) -> int:
        return 2 if self.kind == "catavgmax" else 1

    def extra_repr(self) -> str:
        return self.kind


class FlattenPool(nn.Module):
    """Flatten C x h x w; checks the map size so a wrong input size gives a clear error, not a shape mismatch."""

    def __init__(self, feature_size: tuple[int, int]):
        super().__init__()
        self.feature_size = (int(feature_size[0]), int(feature_size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.feature_size:
            raise ConfigError(
                f"the fc head was built for a {self.feature_size[0]}x{self.feature_size[1]} feature map (the training "
                f"input size) but got {x.shape[-2]}x{x.shape[-1]}: resize inputs to the training size, or use a "
                "global-pooling head (gap/gmp/avgmax) that takes any size"
            )
        return x.flatten(1)

    def extra_repr(self) -> str:
        return f"feature_size={self.feature_size}"


class Head(nn.Module):
    """``pool`` (N x C x h x w -> N x F), optional ``drop``, then ``classifier`` (N x F -> N x K).

    For ``conv`` heads the order is the other way round: ``classifier`` is a 1x1 conv giving K class maps, and
    ``pool`` averages them. ``kind`` is kept so that tools (localize, export) know which transformation applies.
    """

    def __init__(self, kind: str, pool: nn.Module, classifier: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.kind = kind
        self.pool = pool
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = classifier

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv":
            return self.pool(self.classifier(self.drop(fmap)))
        return self.classifier(self.drop(self.pool(fmap)))


def create_head(
    kind: str,
    in_channels: int,
    num_classes: int,
    *,
    dropout: float = 0.0,
    feature_size: tuple[int, int] | None = None,
    hidden: int = 256,
    conv_relu: bool = False,
) -> Head:
    """Build a head of ``kind`` for a backbone with ``in_channels`` output channels.

    ``feature_size`` (h, w) is required for ``fc``; ``hidden`` sets its hidden width; ``conv_relu`` adds a ReLU after
    the 1x1 conv (SqueezeNet's classifier).
    """
    if kind not in HEADS:
        raise ConfigError(f"unknown head {kind!r}: choose one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1 (got {num_classes})")
    if kind in ("gap", "gmp", "avgmax", "catavgmax"):
        pool = GlobalPool({"gap": "avg", "gmp": "max"}.get(kind, kind))
        return Head(kind, pool, nn.Linear(in_channels * pool.feature_mult(), num_classes), dropout)
    if kind == "fc":
        if feature_size is None:
            raise ConfigError("the fc head needs the feature-map size (build it through create_model with img_size)")
        h, w = feature_size
        mlp = nn.Sequential(
            nn.Linear(in_channels * h * w, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(hidden, num_classes)
        )
        return Head(kind, FlattenPool((h, w)), mlp, dropout)
    conv: nn.Module = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    if conv_relu:
        conv = nn.Sequential(conv, nn.ReLU(inplace=False))
    return Head(kind, GlobalPool("avg"), conv, dropout)


def head_linear(head: Head) -> nn.Module:
    """The layer that maps pooled features (or the feature map, for conv heads) to the first output."""
    c = head.classifier
    return c[0] if isinstance(c, nn.Sequential) else c
