"""Boxes that fit the object: a class map's box refined by GrabCut on the image's own pixels (OpenCV).

A class map is coarse (one cell per ``stride`` pixels, blurred by the receptive field) and marks the part that tells
the classes apart; the image knows where the object's edges are. :func:`grabcut_boxes` seeds OpenCV's GrabCut
(Rother et al. 2004, ``cv2.grabCut`` with a mask) from the map's box: outside the box grown by ``margin`` is
background, the map's core inside the box (``heat`` at or above ``core`` of its peak there) is probably foreground,
the rest of the grown box probably background. The foreground GrabCut settles on gives the refined box(es): one per
connected part of it that overlaps the core (two objects of a class that one map region joined come apart). When
GrabCut finds no foreground, or one far from the map's box (IoU below ``min_iou``), the map's box stays.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import ConfigError
from .boxes import Box, box_iou

REFINES = ("none", "grabcut")
MAX_SIDE = 256  # GrabCut runs on images shrunk to at most this many pixels a side


def require_opencv() -> None:
    """A one-line error when OpenCV (for GrabCut) is not installed."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise ConfigError("--refine grabcut needs OpenCV: pip install opencv-python-headless (a gapvision "
                          "dependency), or pass --refine none") from None


def grabcut_boxes(image: np.ndarray, heat: np.ndarray, box: Box, *, margin: float = 0.25, core: float = 0.5,
                  iterations: int = 4, min_iou: float = 0.2, min_part: float = 0.25) -> list[Box]:
    """The refined box(es) of one map box (see the module docstring).

    ``image``: H x W x 3 uint8 RGB (or H x W grey), the pixels ``box`` (x0, y0, x1, y1, exclusive) and ``heat``
    (H x W, any range) refer to. Parts of the foreground smaller than ``min_part`` of the largest are dropped.
    GrabCut's cost grows with the pixels: :func:`refine_regions` shrinks large images first.
    """
    h, w = heat.shape
    import cv2

    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = max(1.0, x1 - x0), max(1.0, y1 - y0)
    gx0, gy0 = max(0, int(np.floor(x0 - margin * bw))), max(0, int(np.floor(y0 - margin * bh)))
    gx1, gy1 = min(w, int(np.ceil(x1 + margin * bw))), min(h, int(np.ceil(y1 + margin * bh)))
    pad = max(2, round(0.5 * max(bw, bh)))  # some sure background around the grown box for the colour models
    cx0, cy0, cx1, cy1 = max(0, gx0 - pad), max(0, gy0 - pad), min(w, gx1 + pad), min(h, gy1 + pad)
    crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1])
    if crop.ndim == 2:
        crop = crop[:, :, None]
    if crop.shape[2] != 3:
        crop = np.repeat(crop[:, :, :1], 3, axis=2)  # grey
    crop = np.ascontiguousarray(crop[:, :, ::-1])  # OpenCV's BGR
    mask = np.full(crop.shape[:2], cv2.GC_BGD, dtype=np.uint8)
    mask[gy0 - cy0:gy1 - cy0, gx0 - cx0:gx1 - cx0] = cv2.GC_PR_BGD
    bx0, by0 = int(round(x0)) - cx0, int(round(y0)) - cy0
    bx1, by1 = int(round(x1)) - cx0, int(round(y1)) - cy0
    inner = heat[cy0:cy1, cx0:cx1][max(0, by0):by1, max(0, bx0):bx1]
    if inner.size == 0 or (mask == cv2.GC_BGD).all():
        return [box]
    lo = float(heat[cy0:cy1, cx0:cx1].min())
    seed = (inner - lo) >= core * (float(inner.max()) - lo)
    mask[max(0, by0):by1, max(0, bx0):bx1][seed] = cv2.GC_PR_FGD
    seeded = np.zeros(crop.shape[:2], dtype=bool)
    seeded[max(0, by0):by1, max(0, bx0):bx1] = seed
    cv2.setRNGSeed(0)  # GrabCut's k-means start draws from OpenCV's global generator: the same box every time
    try:
        cv2.grabCut(crop, mask, None, np.zeros((1, 65)), np.zeros((1, 65)), iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return [box]
    fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return [box]
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    touching = set(np.unique(labels[seeded & fg]).tolist()) - {0}
    parts = [k for k in range(1, n + 1) if k in touching and sizes[k - 1] >= min_part * sizes.max()]
    out: list[Box] = []
    for k in parts or [int(np.argmax(sizes)) + 1]:
        ys, xs = np.nonzero(labels == k)
        out.append((float(cx0 + xs.min()), float(cy0 + ys.min()), float(cx0 + xs.max() + 1),
                    float(cy0 + ys.max() + 1)))
    whole = (min(b[0] for b in out), min(b[1] for b in out), max(b[2] for b in out), max(b[3] for b in out))
    if float(box_iou([whole], [box])[0, 0]) < min_iou:
        return [box]
    return out


def refine_regions(image: np.ndarray, heat: dict[int, np.ndarray], regions: list[tuple[int, float, Box]],
                   max_side: int = MAX_SIDE) -> list[tuple[int, float, Box]]:
    """``(class, score, box)`` regions of one image with each box refined by :func:`grabcut_boxes`; a class without
    a map keeps its box. ``image``: H x W (x C) uint8, the pixels of the boxes; ``heat[class]``: maps on any grid
    that covers the whole image. Both are brought to the image's size, shrunk once to at most ``max_side`` pixels a
    side; the boxes come back in ``image``'s pixels."""
    h, w = image.shape[:2]
    f = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    if f < 1:
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image.squeeze())).resize(size, Image.BILINEAR))
    maps = {k: m if m.shape == (size[1], size[0]) else
            np.asarray(Image.fromarray(np.asarray(m, dtype=np.float32)).resize(size, Image.BILINEAR))
            for k, m in heat.items()}
    sx, sy = w / size[0], h / size[1]
    out: list[tuple[int, float, Box]] = []
    for k, score, b in group_regions(regions, set(maps)):
        if k not in maps:
            out.append((k, score, b))
            continue
        found = grabcut_boxes(image, maps[k], (b[0] / sx, b[1] / sy, b[2] / sx, b[3] / sy))
        out.extend((k, score, (min(w, r[0] * sx), min(h, r[1] * sy), min(w, r[2] * sx), min(h, r[3] * sy)))
                   for r in found)
    return out


def group_regions(regions: list[tuple[int, float, Box]], classes: set[int], margin: float = 1.0
                  ) -> list[tuple[int, float, Box]]:
    """Regions of each class in ``classes`` whose boxes, grown by ``margin`` of their size, overlap, joined into
    one box (best score): the parts of one object that a class map shows as separate peaks are refined together,
    and GrabCut's connected parts then tell one object from several. Other regions are returned as they are."""
    out = [r for r in regions if r[0] not in classes]
    for k in sorted(classes):
        mine = [(s, b) for c, s, b in regions if c == k]
        i = 0
        while i < len(mine):
            j = next((j for j in range(i + 1, len(mine))
                      if _touch(_grow(mine[i][1], margin), _grow(mine[j][1], margin))), None)
            if j is None:
                i += 1
                continue
            (s, a), (t, b) = mine[i], mine.pop(j)
            mine[i] = (max(s, t), (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])))
            i = 0  # the grown union may now touch a box checked before
        out.extend((k, s, b) for s, b in mine)
    return out


def _grow(b: Box, margin: float) -> Box:
    dx, dy = margin * (b[2] - b[0]), margin * (b[3] - b[1])
    return (b[0] - dx, b[1] - dy, b[2] + dx, b[3] + dy)


def _touch(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def refine_on_image(image: Image.Image, heat: dict[int, np.ndarray],
                    regions: list[tuple[int, float, Box]]) -> list[tuple[int, float, Box]]:
    """:func:`refine_regions` for a PIL image (the multi-scale path: boxes in its own pixels, maps on a grid that
    covers it)."""
    return refine_regions(np.asarray(image.convert("RGB")), heat, regions)
