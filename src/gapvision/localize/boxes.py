"""From heat maps to boxes: thresholds (absolute, fraction of the max, Otsu), connected components, one box per
component with a score, per-class non-maximum suppression and the ranking of the classes present."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torchvision.ops import batched_nms

from ..errors import ConfigError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels; x1/y1 exclusive


@dataclass(frozen=True)
class Threshold:
    """``abs``: a fixed value (a probability for class maps); ``rel``: a fraction of the map's maximum; ``otsu``:
    Otsu's threshold of the map's values (``value`` unused)."""

    mode: str = "abs"
    value: float = 0.5

    @classmethod
    def parse(cls, spec: "str | float | Threshold") -> "Threshold":
        """``0.5`` (absolute), ``50%`` or ``rel:0.5`` (of the max), ``otsu``."""
        if isinstance(spec, Threshold):
            return spec
        if isinstance(spec, (int, float)):
            return cls._checked("abs", float(spec))
        text = str(spec).strip().lower()
        try:
            if text == "otsu":
                return cls("otsu", 0.0)
            if text.endswith("%"):
                return cls._checked("rel", float(text[:-1]) / 100)
            if text.startswith(("rel:", "abs:")):
                return cls._checked(text[:3], float(text[4:]))
            return cls._checked("abs", float(text))
        except ValueError:
            pass
        raise ConfigError(f"--threshold {spec!r}: give a probability (0.5), a fraction of each map's max (50% or "
                          "rel:0.5) or otsu")

    @classmethod
    def _checked(cls, mode: str, value: float) -> "Threshold":
        if not 0.0 <= value <= 1.0 and mode == "rel":
            raise ConfigError(f"--threshold: a fraction of the max must be between 0% and 100% (got {value:.0%})")
        if not 0.0 <= value <= 1.0:  # the maps are probabilities or scaled to [0, 1]: beyond, every map cuts alike
            raise ConfigError(f"--threshold {value:g}: a map value must be between 0 and 1 (or a fraction of the "
                              "max such as 50%, or otsu)")
        return cls(mode, value)

    def level(self, heat: np.ndarray) -> float:
        """The cut-off for one map."""
        if self.mode == "abs":
            return self.value
        if self.mode == "rel":
            return self.value * float(heat.max())
        return otsu_threshold(heat)

    def __str__(self) -> str:
        return {"abs": f"{self.value:g}", "rel": f"{self.value:.0%}", "otsu": "otsu"}[self.mode]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of the values' histogram."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = (w0 * w1 * (m0 - m1) ** 2)[:-1]
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))  # a plateau over empty bins: take its middle
    return float(edges[int(best[0] + best[-1]) // 2 + 1])


@dataclass
class Detection:
    """One box of one class, in image pixels."""

    class_index: int
    label: str
    score: float
    box: Box

    def to_dict(self, ndigits: int = 1) -> dict:
        return {"label": self.label, "class_index": int(self.class_index), "score": round(float(self.score), 6),
                "box": [round(float(v), ndigits) for v in self.box]}


def component_boxes(heat: np.ndarray, level: float, min_area: int = 1) -> list[tuple[float, Box]]:
    """``(peak value, box)`` for every 8-connected region of ``heat`` (H x W) above ``level``, largest peak first.

    Boxes are (x0, y0, x1, y1) with exclusive x1/y1, in the map's pixels; regions smaller than ``min_area`` pixels
    are dropped.
    """
    heat = np.asarray(heat)
    return region_boxes(heat > level, heat, None, None, min_area)


def region_boxes(mask: np.ndarray, score_map: np.ndarray, extent_map: np.ndarray | None = None,
                 threshold: Threshold | None = None, min_area: int = 1) -> list[tuple[float, Box]]:
    """One ``(score, box)`` per 8-connected region of ``mask`` (H x W bool), best first.

    The score is the region's peak of ``score_map``. The box encloses the whole region, or, with ``extent_map`` and
    ``threshold``, the part of the region where ``extent_map`` passes the threshold computed from the region's own
    values (``rel``: a fraction of the region's peak; ``otsu``: Otsu's cut of its values; ``abs``: the value).
    """
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        region = labels[sl] == k
        if int(region.sum()) < min_area:
            continue
        score = float(score_map[sl][region].max())
        if extent_map is not None and threshold is not None:
            values = extent_map[sl]
            core = region & (values >= threshold.level(values[region]))
            region = core if core.any() else region
        ys, xs = np.nonzero(region)
        y0, x0 = sl[0].start, sl[1].start
        out.append((score, (float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1),
                            float(y0 + ys.max() + 1))))
    return sorted(out, key=lambda t: -t[0])


def nms_per_class(dets: Sequence[Detection], iou: float = 0.5, across_classes: bool = False) -> list[Detection]:
    """Non-maximum suppression within each class (torchvision.ops.batched_nms; ``across_classes``: over all boxes
    whatever their class, for maps that are the same for every class); result sorted by score."""
    if not dets:
        return []
    boxes = torch.tensor([d.box for d in dets], dtype=torch.float32)
    scores = torch.tensor([d.score for d in dets], dtype=torch.float32)
    idx = torch.tensor([0 if across_classes else d.class_index for d in dets], dtype=torch.int64)
    keep = batched_nms(boxes, scores, idx, iou)
    return [dets[int(i)] for i in keep]


def rank_classes(dets: Sequence[Detection], topk: int | None = None) -> list[dict]:
    """The classes present, best first: ``[{"label", "class_index", "score"}]`` with each class's best box score."""
    best: dict[int, Detection] = {}
    for d in dets:
        if d.class_index not in best or d.score > best[d.class_index].score:
            best[d.class_index] = d
    ranked = sorted(best.values(), key=lambda d: -d.score)[: topk or None]
    return [{"label": d.label, "class_index": int(d.class_index), "score": round(float(d.score), 6)} for d in ranked]


def box_iou(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """IoU matrix (len(a) x len(b)) of boxes with exclusive x1/y1."""
    from torchvision.ops import box_iou as tv_box_iou

    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return tv_box_iou(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).numpy()
