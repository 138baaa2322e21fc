"""Offline procedural data: coloured shapes on noisy backgrounds (one per image, or several per scene) and
scikit-learn's bundled 8x8 digits. Everything is deterministic in ``seed`` and needs no download.

Shapes and scenes share one drawing routine, so a model trained on :func:`make_shapes` at ``size`` pixels sees the
same objects, at the same scale in pixels, in :func:`make_scenes` at ``2 * size`` pixels (shapes cover 30-70 % of
the side, scene objects 18-35 %).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; x1 and y1 are exclusive

_NOISE_STD = 12.0
_MIN_CONTRAST = 140.0  # Euclidean RGB distance between a shape's colour and its background


def draw_shape(canvas: Image.Image | ImageDraw.ImageDraw, cls: int | str, box: Sequence[float], colour) -> None:
    """Draw one shape of class ``cls`` (index or name) filling ``box`` = (x0, y0, x1, y1), x1/y1 exclusive."""
    draw = canvas if isinstance(canvas, ImageDraw.ImageDraw) else ImageDraw.Draw(canvas)
    name = SHAPE_CLASSES[cls] if isinstance(cls, (int, np.integer)) else cls
    x0, y0, x1, y1 = (float(v) for v in box)
    x1, y1 = x1 - 1, y1 - 1  # PIL's coordinates are inclusive
    fill = colour if isinstance(colour, (int, str)) else tuple(int(c) for c in colour)
    if name == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif name == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif name == "triangle":
        draw.polygon([(x0, y1), ((x0 + x1) / 2, y0), (x1, y1)], fill=fill)
    elif name == "cross":
        t = (x1 - x0) / 3  # bar thickness: a plus sign made of two bars a third of the side wide
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.rectangle((cx - t / 2, y0, cx + t / 2, y1), fill=fill)
        draw.rectangle((x0, cy - t / 2, x1, cy + t / 2), fill=fill)
    else:
        raise ValueError(f"unknown shape {cls!r}: choose {', '.join(SHAPE_CLASSES)}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random base colour with a gentle linear gradient (float H x W x 3); noise is added after drawing."""
    base = rng.uniform(0, 255, size=3)
    ramp = np.linspace(-1, 1, size)
    direction = rng.uniform(-20, 20, size=(2, 3))
    bg = base + ramp[:, None, None] * direction[0] + ramp[None, :, None] * direction[1]
    return bg


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour at least _MIN_CONTRAST away from the background's mean colour (best of a few draws)."""
    mean = background.reshape(-1, 3).mean(axis=0)
    best, best_d = None, -1.0
    for _ in range(20):
        c = rng.uniform(0, 255, size=3)
        d = float(np.linalg.norm(c - mean))
        if d >= _MIN_CONTRAST:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _paint(rng: np.random.Generator, canvas: np.ndarray, objects: list[tuple[int, Box]]) -> np.ndarray:
    """Paint the objects onto a float canvas, add pixel noise and return uint8 H x W x 3."""
    h, w = canvas.shape[:2]
    for cls, box in objects:
        mask = Image.new("L", (w, h), 0)
        draw_shape(mask, cls, box, 255)
        m = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
        x0, y0, x1, y1 = box
        colour = _contrasting_colour(rng, canvas[y0:y1, x0:x1])
        canvas = canvas * (1 - m) + colour * m
    canvas = canvas + rng.normal(0, _NOISE_STD, size=canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _random_box(rng: np.random.Generator, size: int, lo: float, hi: float) -> Box:
    side = int(round(rng.uniform(lo, hi) * size))
    side = max(4, min(side, size))
    x0 = int(rng.integers(0, size - side + 1))
    y0 = int(rng.integers(0, size - side + 1))
    return (x0, y0, x0 + side, y0 + side)


def make_shapes(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 N x size x size x 3) with one shape each, and their labels (balanced classes)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPE_CLASSES)).astype(np.int64)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, cls in enumerate(labels):
        box = _random_box(rng, size, 0.30, 0.70)
        images[i] = _paint(rng, _background(rng, size), [(int(cls), box)])
    return images, labels


def _overlap(a: Box, b: Box) -> float:
    """Intersection area over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def make_scenes(
    n: int, size: int = 128, seed: int = 0, min_objects: int = 1, max_objects: int = 3, max_overlap: float = 0.1
) -> tuple[np.ndarray, list[list[tuple[int, Box]]]]:
    """``n`` scenes (uint8 N x size x size x 3) with ``min_objects``..``max_objects`` shapes each.

    ``targets[i]`` lists ``(class_index, (x0, y0, x1, y1))`` per object (pixels, x1/y1 exclusive). Objects look
    like :func:`make_shapes` objects, are 18-35 % of the side and overlap at most ``max_overlap`` of the smaller one.
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError("need 1 <= min_objects <= max_objects")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    targets: list[list[tuple[int, Box]]] = []
    for i in range(n):
        want = int(rng.integers(min_objects, max_objects + 1))
        objects: list[tuple[int, Box]] = []
        for _ in range(50 * want):
            if len(objects) == want:
                break
            box = _random_box(rng, size, 0.18, 0.35)
            if all(_overlap(box, b) <= max_overlap for _, b in objects):
                objects.append((int(rng.integers(len(SHAPE_CLASSES))), box))
        images[i] = _paint(rng, _background(rng, size), objects)
        targets.append(objects)
    return images, targets


def load_digits(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (1797 images, 8x8, values 0..16) as uint8 N x size x size grey, and labels."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    small = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    if size == small.shape[1]:
        return small, d.target.astype(np.int64)
    images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in small])
    return images, d.target.astype(np.int64)
