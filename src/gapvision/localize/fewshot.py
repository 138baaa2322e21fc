"""``--method fewshot``: an objectness map learned from the boxes of the calibration images (the few-shot baseline of
Choe et al. 2020, "Evaluating WSOL methods right", which beats the weakly-supervised methods once a few annotated
images exist -- and the WSOL protocol needs those images anyway, to choose the threshold).

``gapvision localize RUN --calibrate DATA --method fewshot`` fits, on the calibration images at each calibration
scale, a logistic regression that tells the map cells inside a ground-truth box (of any class) from the others. Its
inputs are the backbone's descriptors at each cell: the final feature map and the feature map at the end of the
stage before it (:func:`tap_module`: the input of the module that brings it to the final resolution), average-pooled
onto the final grid. The final map alone says what the classifier looks at; the earlier stage adds
what the object looks like at a finer scale. The map of a class is the regression's logit at each cell -- the same
objectness map for every class the classifier decides is present (images with objects of one class, as in WSOL;
for scenes with several classes use ``fcn``).

The weights (a vector of the descriptor width, folded with the standardisation) are kept in
``RUN_DIR/fewshot.safetensors``; the calibration's threshold, rule and scales in ``localize.json`` as for any
method. Measured on ``../shared/data/boxes-dev`` (``bench/localize_quality.py``): see the README's table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .. import atomic
from ..data.transforms import Preprocess, normalize, to_uint8
from ..errors import DataError, GapvisionError
from ..runs import Run, to_pil
from .multiscale import scaled_view

FEWSHOT_FILE = "fewshot.safetensors"
#: inverse L2 strength of the logistic regression (scikit-learn's C) on standardised descriptors; on boxes-dev
#: (32 calibration photos, MobileNetV2) 1e-3 gave validation MaxBoxAccV2 0.79 against 0.69 at 1e-2 and 0.61 at 1
REGULARISATION = 1e-3


@dataclass
class Objectness:
    """A linear objectness score of the descriptors (:meth:`descriptors`) at each map cell: ``weight . d + bias``."""

    weight: torch.Tensor  # D
    bias: float
    tap: str | None  # the backbone module whose input joins the final map (None: the final map alone)
    images: int = 0
    about: dict = field(default_factory=dict)

    def descriptors(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, descriptors)`` of a batch: the backbone's final map (for the classifier's head) and the
        descriptors the objectness is a function of (N x D x h x w)."""
        return tapped_features(net, x, self.tap)

    def maps(self, descriptors: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """N x D x h x w descriptors, N x k classes -> N x k x h x w objectness logits (the same map for each)."""
        w = self.weight.to(descriptors.device, torch.float32)
        m = torch.einsum("nchw,c->nhw", descriptors.float(), w) + self.bias
        return m[:, None].expand(-1, classes.shape[1], -1, -1)


def tap_module(net: nn.Module, channels: int, img_size: int) -> str | None:
    """The name (in ``net.backbone``) of the module that takes the stage before the last to the final resolution:
    the first module a forward pass starts whose input is finer than the final feature map (at most twice as fine)
    and whose output has the final size (ResNets' ``layer4``, MobileNetV2's first stride-2 block of the last
    stage). Its input is the end of that earlier stage. None when the backbone has no such module."""
    backbone = net.backbone  # type: ignore[attr-defined]
    started: list[tuple[str, tuple[int, ...]]] = []
    shapes: dict[str, tuple[int, ...]] = {}

    def before(name: str):
        def record(_m: nn.Module, args: Any) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
                started.append((name, tuple(args[0].shape[-2:])))
        return record

    def after(name: str):
        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                shapes[name] = tuple(out.shape[-2:])
        return record

    modules = [(n, m) for n, m in backbone.named_modules() if n]
    handles = [m.register_forward_pre_hook(before(n)) for n, m in modules]
    handles += [m.register_forward_hook(after(n)) for n, m in modules]
    try:
        p = next(net.parameters(), None)
        x = torch.zeros(1, channels, img_size, img_size, device=p.device if p is not None else None)
        with torch.inference_mode():
            final = tuple(backbone(x).shape[-2:])
    finally:
        for h in handles:
            h.remove()
    h, w = final
    for name, (ih, iw) in started:
        if h < ih <= 2 * h + 1 and w < iw <= 2 * w + 1 and shapes.get(name) == final:
            return name
    return None


def tapped_features(net: nn.Module, x: torch.Tensor, tap: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's final map of ``x`` and, joined to it along the channels, the input of the ``tap`` module
    pooled onto the final grid."""
    caught: list[torch.Tensor] = []
    handle = None
    if tap:
        module = dict(net.backbone.named_modules()).get(tap)  # type: ignore[attr-defined]
        if module is None:
            raise GapvisionError(f"{FEWSHOT_FILE} names the layer {tap!r}, which this model lacks: calibrate "
                                 "--method fewshot again")
        handle = module.register_forward_pre_hook(lambda _m, args: caught.append(args[0].float().clone()))
    try:
        with torch.inference_mode():
            feats = net.features(x)  # type: ignore[operator]
    finally:
        if handle is not None:
            handle.remove()
    desc = feats.float()
    if caught:
        desc = torch.cat([desc, F.adaptive_avg_pool2d(caught[0], tuple(feats.shape[-2:]))], dim=1)
    return feats, desc


def cell_labels(size: tuple[int, int], boxes: Sequence[Any], grid: tuple[int, int]) -> np.ndarray:
    """h x w booleans: the cells of a ``grid`` laid over an image of ``size`` (w, h) whose centres lie in a box."""
    (w, h), (gh, gw) = size, grid
    ys = (np.arange(gh) + 0.5) / gh * h
    xs = (np.arange(gw) + 0.5) / gw * w
    inside = np.zeros((gh, gw), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside |= ((ys[:, None] >= y0) & (ys[:, None] < y1)) & ((xs[None] >= x0) & (xs[None] < x1))
    return inside


def fit_objectness(net: nn.Module, pre: Preprocess, images: Sequence[Any], boxes: Sequence[Sequence[Any]],
                   scales: Sequence[float], device: torch.device, regularisation: float = REGULARISATION,
                   data: str = "") -> Objectness:
    """Fit the objectness on ``images`` (each seen as the classifier sees it, at each of ``scales`` x the training
    size) with ``boxes[i]`` = the boxes of image i in its own pixels (every object, whatever its class)."""
    from sklearn.linear_model import LogisticRegression

    tap = tap_module(net, pre.channels, pre.img_size)
    rows, labels = [], []
    for im, objs in zip(images, boxes):
        pil = to_pil(im)
        base = to_uint8(pil, pre)
        for s in scales:  # the views class_heat maps at inference
            _, d = tapped_features(net, normalize(scaled_view(base[None], s).to(device), pre), tap)
            rows.append(d[0].flatten(1).T.cpu().numpy())
            labels.append(cell_labels(pil.size, objs, tuple(d.shape[-2:])).ravel())
    x_all, y_all = np.concatenate(rows).astype(np.float64), np.concatenate(labels)
    if y_all.all() or not y_all.any():
        what = "every" if y_all.all() else "no"
        raise DataError(f"the boxes of {data or 'the calibration images'} cover {what} map cell, so there is no "
                        "object/background contrast to learn: calibrate --method fewshot on images whose boxes "
                        "cover part of the image")
    mean, std = x_all.mean(axis=0), x_all.std(axis=0) + 1e-6
    clf = LogisticRegression(C=regularisation, max_iter=3000).fit((x_all - mean) / std, y_all)
    weight = clf.coef_[0] / std
    bias = float(clf.intercept_[0] - (mean * weight).sum())
    about = {"cells": int(len(y_all)), "object_share": round(float(y_all.mean()), 4),
             "regularisation": regularisation, "scales": [float(s) for s in scales]}
    return Objectness(torch.tensor(weight, dtype=torch.float32), bias, tap, len(images), about)


def save_objectness(run: Run, obj: Objectness) -> Path:
    """Write ``RUN_DIR/fewshot.safetensors`` atomically (weights as tensors, the rest as metadata)."""
    if run.path is None:
        raise GapvisionError("--method fewshot is kept in a run directory: localise with a run directory (from "
                             "`gapvision train`), not a bare --model")
    path = Path(run.path) / FEWSHOT_FILE
    tensors = {"weight": obj.weight.contiguous(), "bias": torch.tensor([obj.bias])}
    meta = {"tap": obj.tap or "", "images": str(obj.images), "about": json.dumps(obj.about)}
    atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def load_objectness(run: Run) -> Objectness:
    """The run's fitted objectness; a one-line error saying how to fit it when there is none."""
    path = Path(run.path) / FEWSHOT_FILE if getattr(run, "path", None) else None
    if path is None or not path.is_file():
        where = run.path if getattr(run, "path", None) else "RUN_DIR"
        raise GapvisionError(f"--method fewshot learns from annotated images first: run `gapvision localize {where} "
                             "--calibrate DATA --method fewshot` (DATA: a VOC folder or COCO file with boxes)")
    from safetensors import safe_open

    try:
        t = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return Objectness(t["weight"], float(t["bias"][0]), meta.get("tap") or None, int(meta.get("images", 0)),
                          json.loads(meta.get("about", "{}")))
    except Exception as e:  # noqa: BLE001 -- any damage reads as one line
        raise GapvisionError(f"{path} is damaged ({e}): calibrate --method fewshot again") from None
