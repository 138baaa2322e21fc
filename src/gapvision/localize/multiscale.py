"""Class maps that cover the object: the class decision at the training size, the extent fused over several scales.

:func:`class_heat` views each image as the classifier was trained to see it (resized to ``img_size`` x ``img_size``)
and takes the class probabilities there; then it computes the class maps of the same view at a few sizes
(``scales`` x ``img_size``, 1 = the training size), scales each map to [0, 1] per image (min-max), upsamples them
to one grid and averages them. Larger views give finer maps (more cells per object), the training size gives the
map of the view the classifier knows; the average keeps what both agree on. The maps are those of the method:

* ``cam``: the class logit maps of the fully-convolutional model (Zhou et al.'s CAM for GAP heads);
* ``fcn``: the per-location class probabilities of the fully-convolutional model (softmax over the classes and,
  with the blank-image reference, a background logit 0): a class's map is low where another class wins;
* ``gradcam``: Grad-CAM at the Localizer's layer;
* ``ddt``: the descriptors' projection on the first principal component of the class's training descriptors
  (see :mod:`.ddt`);
* ``fewshot``: the objectness learned from the calibration images' boxes (see :mod:`.fewshot`).

The maps are exact per scale (fcn: spatial mean == logits); only how they become boxes changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..data.transforms import normalize, to_uint8
from ..errors import ConfigError
from ..runs import to_pil
from .cam import normalize_maps, upsample

if TYPE_CHECKING:
    from .api import Localizer

DEFAULT_SCALES = (1.0, 1.5, 2.0)


@dataclass
class ClassHeat:
    """One image: image-level class probabilities (K, at the training size) and, per requested class, a map in
    [0, 1] (H x W grid covering the whole image; pixel (i, j) of the grid is image pixel ((i+0.5) * h / H, ...))."""

    probs: np.ndarray
    heat: dict[int, np.ndarray]
    size: tuple[int, int]  # original width, height

    @property
    def top(self) -> int:
        return int(np.argmax(self.probs))


def parse_scales(spec: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"1,1.5,2"`` (or a sequence) -> sorted positive factors of the training size, which must include 1."""
    if spec is None:
        return DEFAULT_SCALES
    try:
        values = [float(v) for v in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError:
        raise ConfigError(f"--scales {spec!r}: give factors of the training size, e.g. 1,1.5,2") from None
    if not values or min(values) <= 0:
        raise ConfigError(f"--scales {spec!r}: factors must be positive, e.g. 1,1.5,2")
    return tuple(sorted(set(values)))


Pick = Callable[[np.ndarray], Sequence[int]]


def class_heat(loc: "Localizer", images: Sequence[Any], classes: Sequence[Sequence[int]] | Pick | None = None,
               scales: Sequence[float] = DEFAULT_SCALES, batch_size: int = 16) -> list[ClassHeat]:
    """Probabilities at the training size and fused [0, 1] maps (see the module docstring) for ``images``.

    ``classes[i]``: the classes whose maps image i needs, or a function of its K probabilities that returns them
    (default: its top-1 class); the top-1 class is always included. The grid is ``img_size`` pixels square.
    """
    out: list[ClassHeat] = []
    for start in range(0, len(images), batch_size):
        chunk = [to_pil(im) for im in images[start : start + batch_size]]
        wanted = classes if classes is None or callable(classes) else classes[start : start + len(chunk)]
        out.extend(_heat_batch(loc, chunk, wanted, tuple(scales)))
    return out


def _heat_batch(loc: "Localizer", pils: list, wanted: Sequence[Sequence[int]] | Pick | None,
                scales: tuple[float, ...]) -> list[ClassHeat]:
    pre = loc.pre
    base = torch.stack([to_uint8(im, pre) for im in pils])  # the training view, N x C x S x S uint8
    side = pre.img_size
    grid = (side, side)
    x = normalize(base.to(loc.device), pre)
    probs = loc.view_probs(x)
    top = probs.argmax(dim=1)
    asked = [() if wanted is None else (wanted(probs[i].numpy()) if callable(wanted) else wanted[i])
             for i in range(len(pils))]
    need = [[int(top[i])] + sorted({int(k) for k in asked[i]} - {int(top[i])}) for i in range(len(pils))]
    width = max(len(n) for n in need)
    chosen = torch.tensor([n + [n[0]] * (width - len(n)) for n in need])  # N x k, padded with a repeat
    fused = torch.zeros(len(pils), width, *grid)
    for s in scales:
        view = scaled_view(base, s)
        xs = x if view is base else normalize(view.to(loc.device), pre)
        fused += _scale_maps(loc, xs, chosen, grid)
    fused = normalize_maps(fused).numpy()
    return [ClassHeat(probs[i].numpy(), {k: fused[i, j] for j, k in enumerate(need[i])}, pils[i].size)
            for i in range(len(pils))]


def scaled_view(base: torch.Tensor, scale: float) -> torch.Tensor:
    """The uint8 training views ``base`` (N x C x S x S) resized to ``scale`` x S a side (``base`` itself when
    that is S): the input of each scale, here and where fewshot learns from the same views."""
    side = base.shape[-1]
    size = round(side * scale)
    return base if size == side else TF.resize(base, [size, size], antialias=True)


def _scale_maps(loc: "Localizer", x: torch.Tensor, chosen: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The method's maps of ``chosen`` (N x k) classes at this input, each scaled to [0, 1], on ``grid``."""
    scale = grid[0] / x.shape[-1]
    _, _, maps, (stride, offset) = loc.method_maps(x, chosen)
    where: tuple = (None, None)  # a plain resize, except for the fcn/cam maps' known stride and offset
    if stride is not None:
        where = (stride * scale, (offset[0] * scale + (scale - 1) / 2, offset[1] * scale + (scale - 1) / 2))
    return upsample(normalize_maps(maps.float()), grid, *where).cpu()
