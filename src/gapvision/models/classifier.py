"""Classifier = Backbone + Head, and ``create_model``: the one way every command builds a network."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..choices import FREEZE
from ..errors import ConfigError
from .backbones import Backbone, create_backbone
from .heads import Head, create_head


@dataclass
class ModelConfig:
    """Everything needed to rebuild a Classifier (stored in config.json as ``model``)."""

    model: str = "gapcnn"
    head: str = "gap"
    num_classes: int = 2
    in_channels: int = 3
    img_size: int = 64
    dropout: float = 0.0
    hidden: int = 256
    bn_momentum: float | None = None  # the least BatchNorm momentum (None: the builder's), see create_model
    stem: str = "native"  # the backbone's first layer (Backbone.set_stem); runs saved before it: native

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class Classifier(nn.Module):
    """``forward(x) == head(backbone(x))``; ``features(x)`` is the backbone's C x h x w map."""

    def __init__(self, backbone: Backbone, head: Head, config: ModelConfig | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def feature_size(backbone: nn.Module, in_channels: int, img_size: int, name: str = "this backbone") -> tuple[int, int]:
    """The backbone's output map size for a square ``img_size`` input (one dry run on zeros)."""
    try:
        return _dry_run(backbone, in_channels, img_size)
    except RuntimeError as e:  # e.g. too small an input for this backbone
        smallest = next((s for s in _TRY_SIZES if s > img_size and _accepts(backbone, in_channels, s)), None)
        fix = f"use --img-size {smallest} or larger" if smallest else "use a larger --img-size"
        raise ConfigError(f"--img-size {img_size} is too small for {name} ({str(e).splitlines()[0]}): {fix} (smaller "
                          f"images are scaled up to it)") from None


_TRY_SIZES = (16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 299)


def _dry_run(backbone: nn.Module, in_channels: int, img_size: int) -> tuple[int, int]:
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            device = next(backbone.parameters()).device
            out = backbone(torch.zeros(1, in_channels, img_size, img_size, device=device))
    finally:
        backbone.train(was_training)
    return int(out.shape[-2]), int(out.shape[-1])


def _accepts(backbone: nn.Module, in_channels: int, img_size: int) -> bool:
    try:
        _dry_run(backbone, in_channels, img_size)
        return True
    except RuntimeError:
        return False


def create_model(
    model: str = "gapcnn",
    head: str = "gap",
    num_classes: int = 2,
    *,
    in_channels: int = 3,
    img_size: int = 64,
    dropout: float = 0.0,
    hidden: int = 256,
    weights: str | None = None,
    freeze: str = "none",
    bn_momentum: float | None = None,
    stem: str = "native",
    verbose: bool = False,
) -> Classifier:
    """Build ``model`` (a backbone name) with a ``head`` for ``num_classes`` classes.

    ``weights`` (a .pth/.safetensors file, a gapvision run directory or ``torchvision:DEFAULT``) are loaded where
    names and shapes match; ``freeze`` is ``none``, ``backbone`` or ``bn`` (BatchNorm statistics fixed);
    ``bn_momentum``: BatchNorm layers with a lower momentum get this one (:func:`raise_bn_momentum`); ``stem``:
    the backbone's first layer (``native``, ``pooled`` where offered: :meth:`Backbone.set_stem`; ``auto``: the stem
    of a run directory given as ``weights``, pooled from scratch where offered, else native), recorded resolved in
    ``net.config``.
    """
    backbone = create_backbone(model, in_channels=in_channels)
    if stem == "auto":  # a run's own stem with its weights, the pooled one from scratch where offered, else native
        from .weights import run_stem

        stem = run_stem(weights) or ("pooled" if not weights and "pooled" in backbone.stems else "native")
    backbone.set_stem(stem)
    cfg = ModelConfig(model, head, int(num_classes), int(in_channels), int(img_size), float(dropout), int(hidden),
                      None if bn_momentum is None else float(bn_momentum), stem)
    if bn_momentum is not None:
        raise_bn_momentum(backbone, float(bn_momentum))
    fsize = feature_size(backbone, in_channels, img_size, name=model)
    h = create_head(
        head,
        backbone.out_channels,
        num_classes,
        dropout=dropout,
        feature_size=fsize,
        hidden=hidden,
        conv_relu=getattr(backbone, "conv_head_relu", False),
    )
    net = Classifier(backbone, h, cfg)
    if weights:
        from .weights import load_weights

        report = load_weights(net, weights)
        if verbose:
            print(report.summary())
    set_freeze(net, freeze)
    return net


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` has BatchNorm layers (of any dimension)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def raise_bn_momentum(module: nn.Module, least: float) -> int:
    """Give every BatchNorm layer of ``module`` whose running-statistics momentum is below ``least`` that momentum;
    returns how many changed. Some builders set momenta made for long ImageNet runs (torchvision's MNASNet 3e-4,
    MobileNetV3 1e-2): trained from scratch for a few hundred steps, their running statistics stay
    far from the batch statistics and evaluation sits at chance while training accuracy climbs."""
    changed = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None and m.momentum < least:
            m.momentum = least
            changed += 1
    return changed


def set_freeze(net: Classifier, freeze: str) -> None:
    """Apply ``--freeze``: ``backbone`` stops gradients and BN updates in the backbone; ``bn`` fixes BN statistics."""
    if freeze not in FREEZE:
        raise ConfigError(f"unknown --freeze {freeze!r}: choose {', '.join(FREEZE)}")
    net.freeze = freeze  # type: ignore[assignment]
    for p in net.backbone.parameters():
        p.requires_grad_(freeze != "backbone")


def apply_freeze_mode(net: nn.Module) -> None:
    """Call after ``net.train()``: puts frozen BatchNorm layers back in eval mode so their statistics stay fixed."""
    freeze = getattr(net, "freeze", "none")
    if freeze == "none":
        return
    target: nn.Module = net.backbone if freeze == "backbone" else net  # type: ignore[assignment]
    for m in target.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def model_info(net: Classifier) -> dict[str, Any]:
    return {
        "head_params": count_params(net.head),
        "backbone_params": count_params(net.backbone),
        "total_params": count_params(net),
        "trainable_params": count_params(net, trainable_only=True),
    }
