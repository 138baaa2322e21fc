"""Model summary: torchinfo's layer table (output shapes, parameters, mult-adds) plus the backbone/head split."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from torchinfo import summary as torchinfo_summary
from torchinfo.enums import Units
from torchinfo.model_statistics import ModelStatistics

from .classifier import count_params, feature_size

if TYPE_CHECKING:
    from .classifier import Classifier

COLUMNS = ("output_size", "num_params", "mult_adds")
_UNITS = re.compile(r"\(Units\.(\w+)\)")


def _fix_units(table: str) -> str:
    """torchinfo 1.8 prints 'Total mult-adds (Units.MEGABYTES)' on Python >= 3.11; show its unit ('M')."""
    return _UNITS.sub(lambda m: f"({Units[m.group(1)].value})", table)


def _statistics(model: "Classifier", img_size: int, channels: int, depth: int) -> ModelStatistics:
    device = next(model.parameters()).device
    return torchinfo_summary(
        model, input_size=(1, channels, img_size, img_size), depth=depth, col_names=COLUMNS,
        device=device, mode="eval", verbose=0,
    )


def _input(model: "Classifier", img_size: int | None, channels: int | None) -> tuple[int, int]:
    cfg = model.config
    img_size = img_size or (cfg.img_size if cfg else 64)
    channels = channels or (cfg.in_channels if cfg else model.backbone.in_channels)
    return int(img_size), int(channels)


def _stats(model: "Classifier", img_size: int, channels: int, info: ModelStatistics) -> dict[str, Any]:
    backbone, head = count_params(model.backbone), count_params(model.head)
    total = backbone + head
    c = model.backbone.out_channels
    h, w = feature_size(model.backbone, channels, img_size)
    return {
        "model": model.backbone.name,
        "head": model.head.kind,
        "input": [channels, img_size, img_size],
        "feature_map": [c, h, w],
        "stride": model.backbone.stride,
        "backbone_params": backbone,
        "head_params": head,
        "total_params": total,
        "trainable_params": count_params(model, trainable_only=True),
        "head_fraction": head / total if total else 0.0,
        "mult_adds": int(info.total_mult_adds),
    }


def summary_stats(model: "Classifier", img_size: int | None = None, channels: int | None = None) -> dict[str, Any]:
    """Parameter counts (backbone, head, total, trainable), head fraction, mult-adds and the feature-map shape."""
    img_size, channels = _input(model, img_size, channels)
    return _stats(model, img_size, channels, _statistics(model, img_size, channels, depth=1))


def summarize(model: "Classifier", img_size: int | None = None, channels: int | None = None, depth: int = 3) -> str:
    """torchinfo's layer table for a ``channels`` x ``img_size`` x ``img_size`` input, then the backbone/head split.

    ``img_size`` and ``channels`` default to the model's config.
    """
    img_size, channels = _input(model, img_size, channels)
    info = _statistics(model, img_size, channels, depth)
    s = _stats(model, img_size, channels, info)
    c, h, w = s["feature_map"]
    lines = [
        _fix_units(str(info)),
        f"feature map: {c} x {h} x {w} (stride {s['stride']}) for a {channels} x {img_size} x {img_size} input",
        f"backbone params: {s['backbone_params']:,}",
        f"head params: {s['head_params']:,} ({100 * s['head_fraction']:.2f}% of total, head {s['head']!r})",
        f"total params: {s['total_params']:,} (trainable {s['trainable_params']:,})",
    ]
    return "\n".join(lines)

