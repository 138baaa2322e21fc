"""Pictures of a localisation: a grid of heat-map overlays (one panel per detected class, like the MATLAB figure)
and the image with labelled boxes (torchvision.utils.draw_bounding_boxes)."""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .. import atomic
from .boxes import Detection

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
           "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075")
PANEL_SIDE = 384  # longest side of one grid panel, in pixels


def class_colour(class_index: int) -> str:
    return PALETTE[int(class_index) % len(PALETTE)]


@lru_cache(maxsize=1)
def _font_path() -> str | None:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return str(path) if path.exists() else None


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    path = _font_path()
    return ImageFont.truetype(path, size) if path else ImageFont.load_default()


@lru_cache(maxsize=4)
def _colormap(name: str) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def heat_overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet",
                 vmax: float | None = None) -> Image.Image:
    """``image`` (any mode) blended with ``heat`` (h x w, resized to the image; scaled by ``vmax`` or its max)."""
    rgb = image.convert("RGB")
    top = float(vmax if vmax is not None else max(float(np.max(heat)), 1e-12))
    idx = np.clip(np.asarray(heat, dtype=np.float32) / top * 255, 0, 255).astype(np.uint8)
    coloured = Image.fromarray(_colormap(cmap)[idx]).resize(rgb.size, Image.BILINEAR)
    return Image.blend(rgb, coloured, alpha)


def heatmap_grid(image: Image.Image, panels: Sequence[tuple[str, np.ndarray]], path: str | Path,
                 vmax: float | None = None) -> Path:
    """Save a grid: the image, then one overlay per ``(title, heat)`` panel. Returns the path."""
    scale = PANEL_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = image.convert("RGB").resize(size, Image.BILINEAR)
    tiles = [("input", base)] + [(title, heat_overlay(base, heat, vmax=vmax)) for title, heat in panels]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    font = _font(max(10, size[0] // 22))
    caption = int(font.size * 1.6) if hasattr(font, "size") else 16
    pad = 6
    grid = Image.new("RGB", (cols * (size[0] + pad) + pad, rows * (size[1] + caption + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for k, (title, tile) in enumerate(tiles):
        x = pad + (k % cols) * (size[0] + pad)
        y = pad + (k // cols) * (size[1] + caption + pad)
        draw.text((x, y), title, fill="black", font=font)
        grid.paste(tile, (x, y + caption))
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    atomic.write_with(path, lambda p: grid.save(p, format=fmt))
    return path


def draw_detections(image: Image.Image, dets: Sequence[Detection]) -> Image.Image:
    """``image`` with one labelled box per detection (``label score``), coloured by class."""
    from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
    from torchvision.utils import draw_bounding_boxes

    rgb = pil_to_tensor(image.convert("RGB"))
    if not dets:
        return image.convert("RGB")
    boxes = torch.tensor([d.box for d in dets], dtype=torch.float32)
    side = max(image.size)
    out = draw_bounding_boxes(
        rgb, boxes, labels=[f"{d.label} {d.score:.2f}" for d in dets], colors=[class_colour(d.class_index) for d in dets],
        width=max(1, side // 200), font=_font_path(), font_size=max(10, side // 40),
    )
    return to_pil_image(out)
