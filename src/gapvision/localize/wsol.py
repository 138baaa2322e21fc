"""The weakly-supervised localisation metrics of Choe et al. 2020 ("Evaluating weakly supervised object localization
methods right", clovaai/wsolevaluation), with the trivial baselines measured on the same images.

Per image a :class:`Sample`: the [0, 1] map of the true class, the true and the predicted class, and the true
class's ground-truth boxes in image pixels (top-1 localisation uses the true class's map when the class is right).

* **MaxBoxAccV2** (:func:`max_box_acc`): for each threshold t of a sweep over [0, 1) (step 0.01) every connected
  region of ``map >= t`` gives a box; an image counts at IoU level d when its best box (over all regions and all
  ground-truth boxes) has IoU >= d. BoxAcc(d) is the best fraction over the sweep; MaxBoxAccV2 the mean of
  BoxAcc(0.3), BoxAcc(0.5) and BoxAcc(0.7). The sweep runs on the map area-averaged to 64 px a side
  (:func:`sweep_map`); wsolevaluation uses 224 px maps and ``map > t`` where this uses ``map >= t``.
* **GT-known localisation** (CorLoc) and **top-1 localisation** (:func:`loc_accuracy`) at one operating point
  (threshold t, box rule): the first box of the true class's map (GT-known), or of the predicted class's map with
  the class right (top-1), has IoU >= 0.5 with a ground-truth box of the class.
* **Baselines** (:func:`baseline_scores`): the whole image, or its central 80 %, as the box of every image.

Box rules (:func:`heat_boxes`): ``all`` (a box per region, highest peak first), ``largest`` (the largest region
only), ``union`` (one box around every region).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import ConfigError
from .boxes import Box, box_iou

IOU_LEVELS = (0.3, 0.5, 0.7)
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.0, 1.0, 0.01))
RULES = ("all", "largest", "union")
BASELINES = {"full": 1.0, "center": 0.8}  # the box's side as a fraction of the image's, centred
SWEEP_SIDE = 64  # maps are area-averaged to at most this many pixels a side for the threshold sweep


@dataclass
class Sample:
    """One evaluated image: maps on a grid covering the image, classes and the true class's boxes (image pixels)."""

    heat_true: np.ndarray
    true: int
    pred: int
    gt: list[Box]
    size: tuple[int, int]  # image width, height


def unit_range(heat: np.ndarray) -> np.ndarray:
    """``heat`` min-max scaled to [0, 1] (float32; a flat map becomes 0)."""
    heat = np.asarray(heat, dtype=np.float32)
    lo, hi = float(heat.min()), float(heat.max())
    return (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)


def heat_boxes(heat: np.ndarray, threshold: float, rule: str = "all", size: tuple[int, int] | None = None,
               min_area: int = 1) -> list[tuple[float, Box]]:
    """``(peak, box)`` of the regions of ``heat >= threshold`` by ``rule`` (see the module docstring); boxes in the
    pixels of an image of ``size`` = (w, h) that the map covers (default: the map's own pixels), exclusive x1/y1."""
    if rule not in RULES:
        raise ConfigError(f"unknown box rule {rule!r}: choose {', '.join(RULES)}")
    heat = np.asarray(heat, dtype=np.float32)
    labels, n = ndimage.label(heat >= threshold, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    slices = ndimage.find_objects(labels)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    peaks = ndimage.maximum(heat, labels, index=np.arange(1, n + 1))
    keep = [k for k in range(n) if areas[k] >= min_area] or [int(np.argmax(areas))]
    h, w = heat.shape
    sx, sy = (size[0] / w, size[1] / h) if size else (1.0, 1.0)

    def box(sl: tuple[slice, slice]) -> Box:
        return (sl[1].start * sx, sl[0].start * sy, sl[1].stop * sx, sl[0].stop * sy)

    if rule == "largest":
        k = max(keep, key=lambda k: areas[k])
        return [(float(peaks[k]), box(slices[k]))]
    if rule == "union":
        y0, x0 = min(slices[k][0].start for k in keep), min(slices[k][1].start for k in keep)
        y1, x1 = max(slices[k][0].stop for k in keep), max(slices[k][1].stop for k in keep)
        return [(float(max(peaks[k] for k in keep)), box((slice(y0, y1), slice(x0, x1))))]
    return sorted(((float(peaks[k]), box(slices[k])) for k in keep), key=lambda t: -t[0])


def best_iou(boxes: Sequence[Box], gt: Sequence[Box]) -> float:
    """The largest IoU between any of ``boxes`` and any of ``gt`` (0 when either is empty)."""
    m = box_iou(list(boxes), list(gt))
    return float(m.max()) if m.size else 0.0


def sweep_map(heat: np.ndarray, side: int = SWEEP_SIDE) -> np.ndarray:
    """``heat`` area-averaged to at most ``side`` pixels a side and scaled back to [0, 1] (a box on it is then
    within 1/``side`` of the image side of the full-resolution box; the sweep gets about 10x cheaper)."""
    h, w = heat.shape
    if max(h, w) <= side:
        return np.asarray(heat, dtype=np.float32)
    import torch
    import torch.nn.functional as F

    size = (max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w))))
    small = F.interpolate(torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None], size=size, mode="area")
    return unit_range(small[0, 0].numpy())


def iou_curve(samples: Sequence[Sample], thresholds: Sequence[float] = THRESHOLDS, rule: str = "all",
              first_only: bool = False) -> np.ndarray:
    """N x T: per image and threshold the best IoU of the boxes of its true class's map (see :func:`sweep_map`)
    against its ground truth; ``first_only``: only the rule's first box counts."""
    out = np.zeros((len(samples), len(thresholds)))
    for i, s in enumerate(samples):
        heat = sweep_map(s.heat_true)
        for j, t in enumerate(thresholds):
            found = [b for _, b in heat_boxes(heat, t, rule, s.size)]
            out[i, j] = best_iou(found[:1] if first_only else found, s.gt)
    return out


def box_acc(curve: np.ndarray, levels: Sequence[float] = IOU_LEVELS) -> np.ndarray:
    """len(levels) x T: the fraction of images whose IoU reaches each level, per threshold."""
    return np.stack([(curve >= d).mean(axis=0) for d in levels]) if len(curve) else np.zeros((len(levels), 0))


def max_box_acc(samples: Sequence[Sample], thresholds: Sequence[float] = THRESHOLDS,
                levels: Sequence[float] = IOU_LEVELS) -> dict:
    """MaxBoxAccV2 (multi-region, best threshold per IoU level): ``{"maxboxacc_v2", "boxacc": {level: acc},
    "best_threshold": {level: t}}``."""
    if not samples:
        return {"maxboxacc_v2": 0.0, "boxacc": {}, "best_threshold": {}}
    acc = box_acc(iou_curve(samples, thresholds, "all"), levels)
    best = acc.argmax(axis=1)
    return {"maxboxacc_v2": round(float(acc.max(axis=1).mean()), 4),
            "boxacc": {f"{d:g}": round(float(acc[i].max()), 4) for i, d in enumerate(levels)},
            "best_threshold": {f"{d:g}": float(thresholds[b]) for d, b in zip(levels, best)}}


def loc_accuracy(samples: Sequence[Sample], threshold: float, rule: str = "largest", iou: float = 0.5) -> dict:
    """``top1_loc`` (class right and first box IoU >= ``iou``), ``gt_known_loc`` (first box of the true class's map
    IoU >= ``iou``), the mean IoU of those first boxes (``gt_known_iou``) and the class accuracy, at one operating
    point."""
    if not samples:
        return {"top1_loc": 0.0, "gt_known_loc": 0.0, "gt_known_iou": 0.0, "top1_cls": 0.0}
    known = iou_curve(samples, [threshold], rule, first_only=True)[:, 0]
    right = np.array([s.pred == s.true for s in samples])
    top1 = np.where(right, known, 0.0)  # a right class uses the true class's map
    return {"top1_loc": round(float((top1 >= iou).mean()), 4), "gt_known_loc": round(float((known >= iou).mean()), 4),
            "gt_known_iou": round(float(known.mean()), 4), "top1_cls": round(float(right.mean()), 4)}


def baseline_box(size: tuple[int, int], kind: str) -> Box:
    """The ``full`` image or its ``center`` 80 % as a box."""
    f = BASELINES[kind]
    w, h = size
    return ((1 - f) / 2 * w, (1 - f) / 2 * h, (1 + f) / 2 * w, (1 + f) / 2 * h)


def baseline_scores(samples: Sequence[Sample], kind: str, levels: Sequence[float] = IOU_LEVELS) -> dict:
    """The metrics of one fixed box per image (no threshold to sweep): top-1 loc (with the classifier's class),
    GT-known loc, the mean over IoU levels of the fraction reaching each (comparable to MaxBoxAccV2), mean IoU."""
    if not samples:
        return {"top1_loc": 0.0, "gt_known_loc": 0.0, "maxboxacc_v2": 0.0, "mean_iou": 0.0}
    ious = np.array([best_iou([baseline_box(s.size, kind)], s.gt) for s in samples])
    right = np.array([s.pred == s.true for s in samples])
    return {"top1_loc": round(float(((ious >= 0.5) & right).mean()), 4),
            "gt_known_loc": round(float((ious >= 0.5).mean()), 4),
            "maxboxacc_v2": round(float(np.mean([(ious >= d).mean() for d in levels])), 4),
            "mean_iou": round(float(ious.mean()), 4)}


def choose_operating_point(samples: Sequence[Sample], thresholds: Sequence[float] = THRESHOLDS,
                           rules: Sequence[str] = RULES, levels: Sequence[float] = IOU_LEVELS) -> dict:
    """The (rule, threshold) whose first box scores best on ``samples``: the mean over IoU levels of the fraction
    of images reaching each (the single-box, single-threshold form of MaxBoxAccV2); ties go to the lower threshold
    and the earlier rule. ``{"rule", "threshold", "score", "scores": {rule: best score}}``."""
    if not samples:
        raise ConfigError("calibration needs at least one image with ground-truth boxes")
    best: tuple[float, str, float] | None = None
    per_rule = {}
    for rule in rules:
        acc = box_acc(iou_curve(samples, thresholds, rule, first_only=True), levels).mean(axis=0)
        j = int(np.argmax(acc))
        per_rule[rule] = round(float(acc[j]), 4)
        if best is None or acc[j] > best[0] + 1e-12:
            best = (float(acc[j]), rule, float(thresholds[j]))
    assert best is not None
    return {"rule": best[1], "threshold": best[2], "score": round(best[0], 4), "scores": per_rule}


def wsol_scores(samples: Sequence[Sample], threshold: float, rule: str) -> dict:
    """Every metric of this module on ``samples`` at the operating point, with both baselines beside them."""
    loc = loc_accuracy(samples, threshold, rule)
    return {**loc, **max_box_acc(samples), "operating_point": {"threshold": threshold, "rule": rule},
            "baseline_center": baseline_scores(samples, "center"), "baseline_full": baseline_scores(samples, "full")}
