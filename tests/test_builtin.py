"""Procedural shapes and scenes, and the bundled digits: deterministic, balanced, drawn as promised."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gapvision.data.builtin import SHAPE_CLASSES, draw_shape, load_digits, make_scenes, make_shapes


@pytest.mark.parametrize("cls, fraction", [("circle", np.pi / 4), ("square", 1.0), ("triangle", 0.5),
                                           ("cross", 5 / 9)])
def test_draw_shape_fills_the_expected_part_of_its_box(cls, fraction):
    canvas = Image.new("L", (80, 80), 0)
    draw_shape(canvas, cls, (10, 10, 70, 70), 255)
    mask = np.asarray(canvas) > 0
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (10, 10, 70, 70)  # x1/y1 exclusive
    assert mask.sum() / 60**2 == pytest.approx(fraction, abs=0.04)


def test_draw_shape_accepts_index_and_rejects_unknown():
    canvas = Image.new("L", (10, 10), 0)
    draw_shape(canvas, 1, (0, 0, 10, 10), 255)  # square
    assert np.asarray(canvas).min() == 255
    with pytest.raises(ValueError, match="hexagon"):
        draw_shape(canvas, "hexagon", (0, 0, 5, 5), 1)


def test_make_shapes_shape_balance_and_determinism():
    x, y = make_shapes(40, size=24, seed=3)
    assert x.shape == (40, 24, 24, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y, minlength=4).tolist() == [10, 10, 10, 10]
    x2, y2 = make_shapes(40, size=24, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = make_shapes(40, size=24, seed=4)
    assert not np.array_equal(x, x3)


def test_make_shapes_draws_a_contrasting_shape_of_the_right_size():
    x, y = make_shapes(24, size=64, seed=0)
    for img in x.astype(np.float64):
        # The background is smooth and covers most of the border; the shape is a large region far from its colour.
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        far = np.linalg.norm(img - np.median(border, axis=0), axis=2) > 70
        side = np.sqrt(far.sum())
        assert 0.2 * 64 <= side <= 0.75 * 64


def test_make_scenes_targets_are_valid_and_deterministic():
    size = 96
    x, targets = make_scenes(30, size=size, seed=1, min_objects=1, max_objects=3)
    assert x.shape == (30, size, size, 3) and len(targets) == 30
    counts = [len(t) for t in targets]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1
    for img, objects in zip(x.astype(np.float64), targets):
        for cls, (x0, y0, x1, y1) in objects:
            assert 0 <= cls < len(SHAPE_CLASSES)
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            assert x1 - x0 == y1 - y0
            assert 0.17 * size <= x1 - x0 <= 0.36 * size
            # the object's centre contrasts with the background in a ring just outside its box
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            centre = img[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(axis=0)
            ring = np.zeros((size, size), bool)
            ring[max(y0 - 3, 0):y1 + 3, max(x0 - 3, 0):x1 + 3] = True
            ring[y0:y1, x0:x1] = False
            if ring.any():
                assert np.linalg.norm(centre - np.median(img[ring], axis=0)) > 80
        for i, (_, a) in enumerate(objects):
            for _, b in objects[i + 1:]:
                iw = min(a[2], b[2]) - max(a[0], b[0])
                ih = min(a[3], b[3]) - max(a[1], b[1])
                inter = max(iw, 0) * max(ih, 0)
                assert inter <= 0.1 * min((a[2] - a[0]) ** 2, (b[2] - b[0]) ** 2) + 1e-9
    x2, t2 = make_scenes(30, size=size, seed=1)
    assert np.array_equal(x, x2) and t2 == targets


def test_scene_objects_match_single_shape_scale_in_pixels():
    # A model trained on 64 px shapes sees scene objects at 128 px of similar pixel size.
    _, targets = make_scenes(40, size=128, seed=0)
    sides = [b[2] - b[0] for t in targets for _, b in t]
    assert 0.3 * 64 - 1 <= min(sides) and max(sides) <= 0.7 * 64 + 1


def test_load_digits_upscaled():
    x, y = load_digits(size=16)
    assert x.shape == (1797, 16, 16) and x.dtype == np.uint8 and x.max() == 255
    assert sorted(set(y.tolist())) == list(range(10))
    small, _ = load_digits(size=8)
    assert small.shape == (1797, 8, 8)
