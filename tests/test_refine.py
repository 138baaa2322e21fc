"""Box refinement by GrabCut (localize/refine.py): a coarse class map's box shrinks to the object, a box over two
objects splits, and a box with nothing to find stays as it was."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2", reason="box refinement needs OpenCV (opencv-python-headless)")

from gapvision.localize.boxes import box_iou  # noqa: E402
from gapvision.localize.refine import grabcut_boxes, refine_regions  # noqa: E402


def _blob(h: int, w: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((96, 96, 3), (90, 140, 110), dtype=np.float64)
    img += rng.normal(0, 6, img.shape)
    return img


def test_a_loose_map_box_shrinks_to_the_object():
    img = _scene()
    img[30:56, 20:50] = (210, 40, 40)  # the object: x 20..50, y 30..56
    img = np.clip(img, 0, 255).astype(np.uint8)
    heat = _blob(96, 96, 43, 35, 12)  # a blurred map over it, as a stride-8 class map is
    loose = (8.0, 18.0, 62.0, 68.0)
    out = grabcut_boxes(img, heat, loose)
    truth = (20.0, 30.0, 50.0, 56.0)
    assert float(box_iou([loose], [truth])[0, 0]) < 0.35
    assert len(out) == 1 and float(box_iou(out, [truth])[0, 0]) > 0.9


def test_one_map_box_over_two_objects_comes_apart():
    img = _scene(1)
    img[20:44, 10:34] = (30, 30, 200)
    img[50:76, 56:82] = (30, 30, 200)
    img = np.clip(img, 0, 255).astype(np.uint8)
    heat = np.maximum(_blob(96, 96, 32, 22, 9), _blob(96, 96, 63, 69, 9))
    out = grabcut_boxes(img, heat, (4.0, 14.0, 88.0, 82.0))
    truths = [(10.0, 20.0, 34.0, 44.0), (56.0, 50.0, 82.0, 76.0)]
    assert len(out) == 2
    assert (box_iou(out, truths).max(axis=0) > 0.85).all()


def test_plain_background_keeps_the_map_box():
    img = np.clip(_scene(2), 0, 255).astype(np.uint8)  # nothing but noise: no foreground to find
    heat = _blob(96, 96, 48, 48, 10)
    box = (30.0, 30.0, 66.0, 66.0)
    out = grabcut_boxes(img, heat, box)
    assert len(out) >= 1 and float(box_iou(out, [box]).max()) >= 0.3  # never a box far from the map's


def test_a_large_image_is_refined_on_a_shrunk_copy_in_its_own_pixels():
    img = np.kron(np.clip(_scene(3), 0, 255).astype(np.uint8), np.ones((8, 8, 1), dtype=np.uint8))  # 768 x 768
    img[240:448, 160:400] = (210, 40, 40)
    heat = _blob(768, 768, 344, 280, 96)
    out = [b for _, _, b in refine_regions(img, {0: heat}, [(0, 1.0, (64.0, 144.0, 496.0, 544.0))], max_side=192)]
    assert len(out) == 1 and float(box_iou(out, [(160.0, 240.0, 400.0, 448.0)])[0, 0]) > 0.9
