"""``localize(run_or_model, images, out=...)``: which classes are in each image and where, as JSON-ready dicts,
with heat-map grids and box images written to ``out``.

Methods:
  * ``fcn`` (default) -- exact class maps from the fully-convolutional model, all classes in one forward pass. The
    class evidence at each location is the logit map minus what the model says about a blank image (so plain
    background, which a classifier without a background class still assigns to some class, belongs to none); the
    per-location probabilities are a softmax over the classes plus a background logit 0 (``background="none"``:
    the plain softmax of the MATLAB recipe; ``multilabel``: a sigmoid per class). A class region is where the class
    is the most likely one with probability >= ``min_score``; its box covers the part of the region that passes
    ``threshold`` (default: evidence >= 50 % of the region's peak), its score is the region's peak probability.
    Several classes, and several objects of one class, per image fall out directly.
  * ``cam`` -- the classes the image-level prediction ranks highest (probability >= ``min_score``), each with its
    class activation map scaled to [0, 1]; a box's score is the class probability times the region's peak.
  * ``gradcam`` -- like ``cam`` with Grad-CAM maps at ``layer`` (default: the last feature map); works for any CNN.
  * ``ddt`` -- like ``cam``, with each class's map the backbone descriptors projected on the first principal
    component of that class's training descriptors (Deep Descriptor Transforming; see :mod:`.ddt`), which covers
    whole objects where class maps mark the parts that tell the classes apart.
  * ``fewshot`` -- like ``ddt``, with one objectness map learned from the boxes of the calibration images
    (``--calibrate DATA --method fewshot``; see :mod:`.fewshot`): the best boxes on real photos when a few
    annotated images exist.
  * ``gradcam++``, ``scorecam``, ``layercam``, ``eigencam``, ``xgradcam`` -- like ``gradcam``, with the maps of
    pytorch-grad-cam (``pip install 'gapvision[cam]'``, see :mod:`.gradcam_lib`).

Boxes are in the original image's pixels (x0, y0, x1, y1; x1/y1 exclusive) whatever ``scale``/``max_side`` did to
the network input.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from .. import atomic
from ..choices import LOCALIZE_METHODS
from ..data.images import records_of_readable
from ..data.transforms import Preprocess, fit_uint8, normalize, to_uint8
from ..errors import ConfigError, GapvisionError
from ..runs import Run, load_run, to_pil
from .boxes import Detection, Threshold, component_boxes, nms_per_class, rank_classes, region_boxes
from .cam import background_reference, class_maps, normalize_maps, upsample
from .gradcam_lib import LIBRARY_METHODS, explain
from .multiscale import class_heat, parse_scales
from .refine import REFINES, refine_on_image, refine_regions, require_opencv
from .results import LocalizeResults
from .video import is_video, read_frames
from .wsol import RULES, heat_boxes, unit_range

METHODS = LOCALIZE_METHODS
DEFAULT_THRESHOLD = {"fcn": "50%", "cam": "50%", "gradcam": "50%", "ddt": "50%", "fewshot": "50%", **{m: "50%" for m in LIBRARY_METHODS}}
BACKGROUNDS = ("blank", "none")
DEFAULT_MIN_SCORE = {"fcn": 0.9, "cam": 0.2, "gradcam": 0.2, "ddt": 0.2, "fewshot": 0.2, **{m: 0.2 for m in LIBRARY_METHODS}}
#: methods whose map is the same for every class: a box of a less probable class on the same region is dropped
#: (non-maximum suppression across classes)
CLASS_AGNOSTIC = ("fewshot",)
MULTISCALE_MIN_SCORE = 0.5  # class probability at the training size (multi-scale path, uncalibrated)
DEFAULT_RULE = "largest"  # box rule of the multi-scale path and the never-empty fallback (uncalibrated)
#: box refinement: grabcut (localize/refine.py) fits each map box to the object in the image. On the `make demo`
#: model's shapes scenes it lifts the matched boxes' mean IoU from 0.46 to 0.96 (AP@0.5 0.33 -> 0.93), and a map
#: box's extent at 35 % of its region's peak is the better seed for it (50 %: AP@0.5 0.90); bench/localize_quality.py
DEFAULT_REFINE = "grabcut"
REFINED_THRESHOLD = "35%"  # the default box extent when boxes are refined
CONFIDENT = 0.5  # a top-1 class at least this probable always gets a box


class DescriptorMaps(Protocol):
    """What ``ddt`` and ``fewshot`` learned: the backbone's features and per-cell descriptors of a batch, then maps
    of the chosen classes from the descriptors (:class:`.ddt.DescriptorPCA`, :class:`.fewshot.Objectness`)."""

    def descriptors(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def maps(self, descriptors: torch.Tensor, classes: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Localization:
    """The answer for one image: classes present, boxes (original image pixels) and the heat maps behind them."""

    image: str
    size: tuple[int, int]  # original width, height
    map_size: tuple[int, int]  # class map width, height
    stride: float  # original-image pixels per map cell
    classes: list[dict]
    detections: list[Detection]
    heat: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # class -> map at network-input size
    frame: int | None = None

    def to_dict(self) -> dict:
        d = {"image": self.image, "size": list(self.size), "map_size": list(self.map_size), "stride": self.stride,
             "classes": self.classes, "detections": [det.to_dict() for det in self.detections]}
        if self.frame is not None:
            d["frame"] = self.frame
        return d


def as_run(obj: Run | str | Path | nn.Module, classes: Sequence[str] | None = None,
           preprocess: Preprocess | None = None) -> Run:
    """A Run from a run directory, a Run, or a model (with ``classes`` and ``preprocess``, defaults: "0".."K-1" and
    the model's training size with mean = std = 0.5)."""
    if isinstance(obj, Run):
        return obj
    if isinstance(obj, (str, Path)):
        return load_run(obj)
    if isinstance(obj, nn.Module):
        cfg = getattr(obj, "config", None)
        mcfg = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else {}
        num = int(mcfg.get("num_classes", 0)) or (len(classes) if classes else 0)
        names = list(classes) if classes is not None else [str(i) for i in range(num)]
        pre = preprocess or Preprocess(channels=int(mcfg.get("in_channels", 3)), img_size=int(mcfg.get("img_size", 224)))
        return Run(None, {"classes": names, "preprocess": pre.to_dict(), "model": mcfg}, model=obj.eval())
    raise ConfigError(f"localize needs a run directory, a Run or a model, not {type(obj).__name__}")


@dataclass
class _Found:
    """One image's raw result at network-input size: regions (class, score, box), heat maps, class-map size."""

    regions: list[tuple[int, float, tuple[float, float, float, float]]]
    heat: dict[int, np.ndarray]
    map_hw: tuple[int, int]


class Localizer:
    """Localises classes in images with one trained model; see the module docstring for the methods.

    ``min_score``: for fcn the probability a region must reach (default 0.9), for cam/gradcam the lowest class
    probability (default 0.2). ``threshold``: how far a box extends -- fcn: within each region, ``50%`` (default:
    where the class evidence is at least half the region's peak), ``otsu`` (Otsu's cut of the region's evidence) or
    ``0.7`` (where the probability is at least 0.7); cam/gradcam: the cut of the [0, 1] map (``50%`` default,
    ``otsu``, or a value). ``background``: ``blank`` (fcn, default) measures class evidence against what the model
    says about a blank image, so plain background belongs to no class; ``none`` keeps the plain softmax over the
    classes (the MATLAB recipe). ``smooth``: average the fcn logit maps over k x k cells first (noisy maps). ``topk``: at most this many classes per image; ``scale``: resize factor applied
    before the network (object sizes should match the training images'); ``max_side``: shrink larger images so that
    their longer side is at most this; ``min_area``: regions smaller than this many network-input pixels are noise
    (default: one class-map cell, stride x stride).

    ``scales`` (factors of the training size, e.g. ``(1, 1.5, 2)``) switches to multi-scale maps
    (:mod:`.multiscale`): the classes decided at the training size (the top-1 class always, others at or above
    ``min_score``), each boxed on its fused [0, 1] map by ``rule`` (``all``, ``largest``, ``union``) at
    ``threshold``. A run calibrated with ``--calibrate`` (``localize.json``) uses its saved method, scales, rule,
    threshold and presence score for what is not given (``calibration=False`` ignores the file). Whatever the
    settings, the class the classifier is confident about gets at least one box.
    """

    def __init__(self, run: Run, *, method: str | None = None, threshold: str | float | Threshold | None = None,
                 topk: int = 5, min_score: float | None = None, multilabel: bool = False, nms_iou: float = 0.5,
                 scale: float | None = None, max_side: int | None = None, layer: str | None = None,
                 background: str = "blank", smooth: int = 1, min_area: int | None = None,
                 device: str | torch.device | None = None, scales: str | Sequence[float] | None = None,
                 rule: str | None = None, calibration: bool = True, refine: str | None = None):
        from .calibrate import calibrated

        saved = calibrated(run, method) if calibration else None
        method = method or (saved[0] if saved else "fcn")
        entry = saved[1] if saved and saved[0] == method else {}
        self.calibration = entry or None
        if entry:
            threshold = entry["threshold"] if threshold is None else threshold
            min_score = entry["min_score"] if min_score is None else min_score
            rule = rule or entry["rule"]
            scales = scales if scales is not None else entry["scales"]
        if method not in METHODS:
            raise ConfigError(f"unknown --method {method!r}: choose {', '.join(METHODS)}")
        if background not in BACKGROUNDS:
            raise ConfigError(f"unknown --background {background!r}: choose {', '.join(BACKGROUNDS)}")
        if smooth < 1 or smooth % 2 == 0:
            raise ConfigError(f"--smooth must be an odd number of map cells, 1, 3, 5... (got {smooth})")
        if topk < 1:
            raise ConfigError(f"--topk must be at least 1 (got {topk})")
        if scale is not None and scale <= 0:
            raise ConfigError(f"--scale must be positive (got {scale})")
        if max_side is not None and max_side < 8:
            raise ConfigError(f"--max-side must be at least 8 pixels (got {max_side})")
        if not 0 < nms_iou <= 1:
            raise ConfigError(f"--nms-iou must be above 0 and at most 1 (got {nms_iou:g}; 1 keeps overlapping boxes)")
        if min_score is not None and not 0 <= min_score <= 1:
            raise ConfigError(f"--min-score is a probability: between 0 and 1 (got {min_score:g})")
        if min_area is not None and min_area < 1:
            raise ConfigError(f"--min-area must be at least 1 pixel (got {min_area})")
        self.run, self.method, self.topk, self.multilabel = run, method, int(topk), bool(multilabel)
        self.smooth = int(smooth)
        if rule is not None and rule not in RULES:
            raise ConfigError(f"unknown --rule {rule!r}: choose {', '.join(RULES)}")
        self.scales = parse_scales(scales) if scales is not None else None
        self.rule = rule or DEFAULT_RULE
        refine = refine or entry.get("refine") or DEFAULT_REFINE
        if refine not in REFINES:
            raise ConfigError(f"unknown --refine {refine!r}: choose {', '.join(REFINES)}")
        if refine == "grabcut":
            require_opencv()
        self.refine = refine
        default = REFINED_THRESHOLD if self.refine != "none" else DEFAULT_THRESHOLD[method]
        self.threshold = Threshold.parse(threshold if threshold is not None else default)
        if min_score is None:
            min_score = MULTISCALE_MIN_SCORE if self.scales else DEFAULT_MIN_SCORE[method]
        self.min_score = float(min_score)
        self.nms_iou, self.scale, self.max_side, self.layer, self.min_area = nms_iou, scale, max_side, layer, min_area
        self.classes = list(run.classes)
        self.pre = run.preprocess
        predictor = run.use_device(device)  # the run's one model placement (devices.choose_device)
        self.device = predictor.device
        gradients = method not in ("fcn", "cam")  # gradcam, ddt and pytorch-grad-cam's methods: the plain network
        self.fcn = None if gradients else predictor.fcn
        self.net = predictor.net if gradients else None
        self.fitted: DescriptorMaps | None = None  # ddt / fewshot: what they learned (descriptors -> maps)
        if method == "ddt":
            from .ddt import descriptor_pca

            self.fitted = descriptor_pca(run, self.net, self.device)
        elif method == "fewshot":
            from .fewshot import load_objectness

            self.fitted = load_objectness(run)
        self.reference = None
        if method == "fcn" and background == "blank" and not multilabel:
            self.reference = background_reference(self.fcn, self.pre.channels, self.pre.img_size)  # type: ignore[arg-type]

    # -- input ---------------------------------------------------------------------------------------------------
    def prepare(self, image: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """An image (path, PIL image or uint8 array) -> uint8 C x H x W network input (mode converted, rescaled by
        ``scale``/``max_side``, aspect ratio kept) and the original (width, height)."""
        t = to_uint8(to_pil(image), self.pre, resize=False)
        h, w = int(t.shape[-2]), int(t.shape[-1])
        s = float(self.scale or 1.0)
        if self.max_side:  # shrink, but never the short side below a quarter of the training size (a thin image)
            floor = min(1.0, max(32, self.pre.img_size // 4) / min(h, w))
            s = min(s, max(self.max_side / max(h, w), floor))
        if s != 1.0:
            t = TF.resize(t, [max(1, round(h * s)), max(1, round(w * s))], antialias=True)
        return t, (w, h)

    # -- the work ------------------------------------------------------------------------------------------------
    def view_probs(self, view: torch.Tensor) -> torch.Tensor:
        """N x K class probabilities (CPU) of the normalised training views ``view`` (N x C x S x S: each image
        cropped and resized as in training): the decision ``predict`` makes, where the classifier is calibrated."""
        with torch.inference_mode():
            logits = self.fcn.logits(self.fcn(view)) if self.fcn is not None else self.net(view)  # type: ignore[misc]
        return self._probs(logits.float()).cpu()

    def __call__(self, images: Sequence[Any], names: Sequence[str] | None = None,
                 batch_size: int = 16) -> list[Localization]:
        """Localise ``images``; consecutive images of the same input size are batched."""
        names = list(names) if names is not None else [_name(im, i) for i, im in enumerate(images)]
        if self.scales:
            return localize_multiscale(self, images, names, batch_size)
        out: list[Localization] = []
        pending: list[tuple[torch.Tensor, tuple[int, int], str]] = []
        for im, name in zip(images, names):
            t, size = self.prepare(im)
            if pending and (t.shape != pending[0][0].shape or len(pending) >= batch_size):
                out.extend(self._run_batch(pending))
                pending = []
            pending.append((t, size, name))
        if pending:
            out.extend(self._run_batch(pending))
        return out

    def _run_batch(self, items: list[tuple[torch.Tensor, tuple[int, int], str]]) -> list[Localization]:
        x = normalize(torch.stack([t for t, _, _ in items]).to(self.device), self.pre)
        # the class decision also as the classifier saw its training images (resized whole): at a photo's own size
        # GAP averages over much background, and a class predict gives 0.94 can fall to 0.06 (coffee.png, ImageNet)
        decided = self.view_probs(normalize(torch.stack([fit_uint8(t, self.pre) for t, _, _ in items]).to(self.device),
                                            self.pre))
        try:
            found = self._fcn_regions(x, decided) if self.method == "fcn" else self._ranked_regions(x, decided)
        except RuntimeError as e:
            if "size" in str(e).lower() or "kernel" in str(e).lower():
                raise ConfigError(f"image {items[0][2]} ({x.shape[-1]}x{x.shape[-2]} after scaling) is too small for "
                                  f"this model: use a larger image (gapvision localize: or --scale 2)") from None
            raise
        h_in, w_in = x.shape[-2:]
        results = []
        for (t, size, name), f in zip(items, found):
            sx, sy = size[0] / w_in, size[1] / h_in
            regions = f.regions
            if self.refine == "grabcut":
                regions = refine_regions(t.permute(1, 2, 0).numpy(), f.heat, regions)
            dets = [Detection(k, self._label(k), score, _rescale(box, sx, sy, size)) for k, score, box in regions]
            dets = nms_per_class(dets, self.nms_iou, self.method in CLASS_AGNOSTIC)
            ranked = rank_classes(dets, self.topk)
            keep = {c["class_index"] for c in ranked}
            dets = [d for d in dets if d.class_index in keep]
            stride = _stride(self.fcn.stride if self.fcn is not None else w_in / f.map_hw[1], sx)
            results.append(Localization(name, size, (f.map_hw[1], f.map_hw[0]), stride, ranked, dets,
                                        {k: v for k, v in f.heat.items() if k in keep}))
        return results

    def _fcn_regions(self, x: torch.Tensor, decided: torch.Tensor) -> list[_Found]:
        """fcn: regions where a class is the most likely one (softmax) with probability >= ``min_score``, of classes
        the whole image ranks among its ``topk`` (:meth:`_plausible`); each box covers the part of its region that
        passes ``threshold``. ``decided``: the training views' probabilities, which can name the confident class
        (:meth:`_with_confident`)."""
        maps = class_maps(self.fcn, x, self.multilabel, self.reference, self.smooth)  # type: ignore[arg-type]
        probs, evidence = maps.probs.float(), maps.evidence.float()
        native = self._probs(maps.image_logits.float())
        image = self._with_confident(native, decided)
        size = tuple(x.shape[-2:])
        out = []
        for i in range(x.shape[0]):
            top = self._confident(image[i])
            peaks = probs[i].amax(dim=(1, 2))
            cand = self._candidates(torch.where(self._plausible(native[i], decided[i]), peaks, 0.0), top)
            if not cand:
                out.append(_Found([], {}, tuple(probs.shape[-2:])))
                continue
            where = (maps.stride, maps.offset)
            p = upsample(probs[i, cand][None], size, *where)[0].cpu().numpy()
            e = upsample(evidence[i, cand][None], size, *where)[0].cpu().numpy()
            margin = _margin(evidence[i], cand, self.reference is not None)
            leads = upsample(margin[None], size, *where)[0].cpu().numpy() > 0
            regions = []
            for j, k in enumerate(cand):
                mask = (p[j] >= self.min_score) & (leads[j] if not self.multilabel else True)
                extent = p[j] if self.threshold.mode == "abs" else e[j]
                regions += [(k, s, b) for s, b in region_boxes(mask, p[j], extent, self.threshold,
                                                               self._min_area(maps.stride))]
            if top is not None and top not in {k for k, _, _ in regions}:  # never "nothing" for a confident class
                regions += self._fallback_boxes(top, float(image[i, top]), e[cand.index(top)])
            out.append(_Found(regions, {k: p[j] for j, k in enumerate(cand)}, tuple(probs.shape[-2:])))
        return out

    def method_maps(self, x: torch.Tensor, chosen: torch.Tensor | None = None,
                    decided: torch.Tensor | None = None) -> tuple:
        """``(probs, chosen, maps, where)`` for a batch ``x``: the image-level class probabilities (N x K; None when
        ``chosen`` is given and the method would need an extra pass for them), the classes mapped (``chosen``, N x k;
        default: the ``topk`` most probable), the method's raw maps of them (N x k x h x w: fcn the per-location
        probabilities, cam the logit maps, ddt the descriptor projections, the others their gradient maps) and where
        the map cells lie (``(stride, offset)`` for fcn/cam; ``(None, None)``: spread evenly over the input). With
        ``decided`` (the training views' probabilities) the probabilities are :meth:`_with_confident`. The one place
        that turns a method into maps, for the single-scale (:meth:`_ranked_regions`) and multi-scale paths."""
        where: tuple = (None, None)
        probs = feats = full = None
        if self.method in ("fcn", "cam"):
            cm = class_maps(self.fcn, x, self.multilabel, self.reference if self.method == "fcn" else None)  # type: ignore
            probs, full, where = self._probs(cm.image_logits), cm.probs if self.method == "fcn" else cm.logits, \
                (cm.stride, cm.offset)
        elif self.method in ("ddt", "fewshot"):
            fitted = self.fitted
            feats, desc = fitted.descriptors(self.net, x)  # type: ignore[union-attr]
            with torch.inference_mode():
                probs = self._probs(self.net.head(feats))  # type: ignore[union-attr]
        elif chosen is None:
            with torch.inference_mode():
                probs = self._probs(self.net(x))  # type: ignore[misc]
        if decided is not None and probs is not None:
            probs = self._with_confident(probs, decided)
        if chosen is None:
            chosen = probs.topk(min(self.topk, probs.shape[1]), dim=1).indices  # type: ignore[union-attr]
        if full is not None:
            maps = full.gather(1, chosen.to(full.device)[:, :, None, None].expand(-1, -1, *full.shape[-2:]))
        elif feats is not None:
            maps = fitted.maps(desc, chosen)  # type: ignore[union-attr]
        else:
            maps, _ = explain(self.net, x, chosen, self.method, self.layer)  # type: ignore[arg-type]
        return probs, chosen, maps, where

    def _ranked_regions(self, x: torch.Tensor, decided: torch.Tensor) -> list[_Found]:
        """cam/gradcam/ddt/...: the top classes of the image-level prediction (with the training view's confident
        class, :meth:`_with_confident`), each with its map scaled to [0, 1]."""
        probs, chosen, fmaps, where = self.method_maps(x, decided=decided)
        heat = upsample(normalize_maps(fmaps.float()), tuple(x.shape[-2:]), *where).cpu().numpy()
        out = []
        for i in range(x.shape[0]):
            regions, shown = [], {}
            for j, k in enumerate(int(c) for c in chosen[i]):
                prob = float(probs[i, k])
                if prob < self.min_score and not (j == 0 and prob >= CONFIDENT):  # the confident class stays
                    continue
                shown[k] = heat[i, j]
                level = self.threshold.level(heat[i, j])
                cell = x.shape[-1] / fmaps.shape[-1]
                found = [(k, prob * s, b) for s, b in component_boxes(heat[i, j], level, self._min_area(cell))]
                regions += found or self._fallback_boxes(k, prob, heat[i, j])
            out.append(_Found(regions, shown, tuple(fmaps.shape[-2:])))
        return out

    def _min_area(self, stride: float) -> int:
        return int(self.min_area) if self.min_area is not None else max(1, int(stride * stride))

    def _candidates(self, peaks: torch.Tensor, top: int | None = None) -> list[int]:
        """Classes whose map peaks at or above ``min_score``, best first, at most ``topk``; with ``top`` that class
        too (the never-empty rule)."""
        order = torch.argsort(peaks, descending=True)[: self.topk]
        found = [int(k) for k in order if float(peaks[k]) >= self.min_score]
        return found if top is None or top in found else found[: self.topk - 1] + [top]

    def _confident(self, probs: torch.Tensor) -> int | None:
        """The top-1 class of the K probabilities ``probs`` when it reaches CONFIDENT."""
        k = int(probs.argmax())
        return k if float(probs[k]) >= CONFIDENT else None

    def _plausible(self, native: torch.Tensor, decided: torch.Tensor) -> torch.Tensor:
        """K booleans: the classes among the ``topk`` most probable for the whole image, at its own size
        (``native``) or resized whole (``decided``). A texture can win the per-location softmax of a 1000-class
        model where the image as a whole says otherwise (pets.jpg, ImageNet MobileNetV2: "racket" 0.98 on the
        fence, ranked 33rd and 57th; the dogs' breeds rank 1st to 6th); with K <= topk every class is plausible."""
        k = min(self.topk, native.shape[-1])
        keep = torch.zeros(native.shape[-1], dtype=torch.bool, device=native.device)
        keep[native.topk(k).indices] = True
        keep[decided.to(native.device).topk(k).indices] = True
        return keep

    def _with_confident(self, native: torch.Tensor, decided: torch.Tensor) -> torch.Tensor:
        """The image-level probabilities ``native`` (N x K: GAP over the image at the size it is mapped at, right
        where objects keep their training size in pixels, as in scenes of small objects), with the class the
        training view is confident about (``decided``: the image resized whole, as photos are in training and in
        ``predict``) raised to its probability there: a class ``predict`` is sure of always counts, however much
        background the whole photo adds to GAP (coffee.png with ImageNet MobileNetV2: espresso 0.94 resized, 0.06
        at 600 x 400)."""
        out = native.float().clone()
        decided = decided.to(out.device, torch.float32)
        for i in range(out.shape[0]):
            top = self._confident(decided[i])
            if top is not None:
                out[i, top] = torch.maximum(out[i, top], decided[i, top])
        return out

    def _fallback_boxes(self, k: int, score: float, heat: np.ndarray) -> list[tuple[int, float, tuple]]:
        """The box(es) of class ``k``'s [0, 1] map at the threshold by the rule, ignoring the minimum area: a class
        the classifier is confident about always gets a box."""
        heat = unit_range(heat) if float(np.ptp(heat)) > 0 else np.ones_like(heat)  # flat: the whole image
        level = min(self.threshold.level(heat), float(heat.max()))
        return [(k, score * s, b) for s, b in heat_boxes(heat, level, self.rule)]

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    def _label(self, k: int) -> str:
        return self.classes[k] if k < len(self.classes) else str(k)


def _margin(evidence: torch.Tensor, classes: list[int], background: bool) -> torch.Tensor:
    """For each class in ``classes`` (k x h x w): its evidence minus the best other class's (and the background's
    0 when ``background``); positive where the class is the most likely one."""
    full = torch.cat([evidence, torch.zeros_like(evidence[:1])]) if background else evidence
    top2 = full.topk(min(2, full.shape[0]), dim=0).values
    mine = full[classes]
    best_other = torch.where(mine >= top2[0], top2[-1], top2[0])
    return mine - best_other if full.shape[0] > 1 else torch.ones_like(mine)


def _name(im: Any, i: int) -> str:
    return str(im) if isinstance(im, (str, Path)) else f"#{i}"


def _rescale(box: tuple[float, float, float, float], sx: float, sy: float, size: tuple[int, int]):
    x0, y0, x1, y1 = box
    w, h = size
    return (max(0.0, x0 * sx), max(0.0, y0 * sy), min(float(w), x1 * sx), min(float(h), y1 * sy))


def _stride(stride: float, sx: float) -> float | int:
    s = round(float(stride) * sx, 4)
    return int(s) if s == int(s) else s


# -- files in, files out ------------------------------------------------------------------------------------------
def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files and folders (recursively: images and videos, by the rules of data/files.py) -> a list of files."""
    from ..data import files
    from ..data.images import IMAGE_EXTENSIONS
    from .video import VIDEO_EXTENSIONS

    return files.expand_inputs(paths, IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)


class OutputWriter:
    """Writes ``<stem>.json``, ``<stem>_boxes.png`` and ``<stem>_maps.png`` per image into ``out``."""

    def __init__(self, out: str | Path, render: bool = True):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.render = render
        self._stems: set[str] = set()

    def stem(self, name: str) -> str:
        base = Path(name).stem if not name.startswith("#") else f"image{name[1:]}"
        stem, n = base, 1
        while stem in self._stems:
            n += 1
            stem = f"{base}-{n}"
        self._stems.add(stem)
        return stem

    def write(self, loc: Localization, image: Image.Image) -> str:
        stem = self.stem(loc.image)
        atomic.write_json(self.out / f"{stem}.json", loc.to_dict())
        if self.render:
            from .render import draw_detections, heatmap_grid

            boxes = draw_detections(image, loc.detections)
            atomic.write_with(self.out / f"{stem}_boxes.png", lambda p: boxes.save(p, format="PNG"))
            panels = [(f"{c['label']} {c['score']:.2f}", loc.heat[c["class_index"]]) for c in loc.classes
                      if c["class_index"] in loc.heat]
            heatmap_grid(image, panels, self.out / f"{stem}_maps.png")
        return stem


def localize(run_or_model: Run | str | Path | nn.Module, images: Any, out: str | Path | None = None, *,
             classes: Sequence[str] | None = None, preprocess: Preprocess | None = None, render: bool = True,
             every: int = 1, batch_size: int = 16, skip_bad: bool = False, **options: Any) -> list[dict]:
    """Localise the classes of ``run_or_model`` in ``images`` and return one JSON-ready dict per image (per frame
    for videos): ``{"image", "size", "map_size", "stride", "classes", "detections"}``, boxes in image pixels.

    ``images``: paths (images, folders, video files), PIL images or uint8 arrays. With ``out`` every image gets
    ``<stem>.json``, ``<stem>_boxes.png`` and ``<stem>_maps.png``; a video gets ``<stem>.json`` (all frames) and
    ``<stem>_boxes.gif``. ``options`` go to :class:`Localizer` (method, threshold, topk, min_score, multilabel,
    nms_iou, scale, max_side, layer, device); ``every`` keeps every n-th video frame. ``skip_bad``: an image file
    that does not decode gets ``{"image": name, "error": why}`` (and no files) instead of stopping the batch.
    """
    loc = Localizer(as_run(run_or_model, classes, preprocess), **options)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if any(isinstance(i, (str, Path)) for i in items):
        items = [p for i in items for p in (expand_inputs([i]) if isinstance(i, (str, Path)) else [i])]
        if not items:
            raise GapvisionError("no images found in " + ", ".join(map(str, images if isinstance(images, (list, tuple))
                                                                         else [images])))
    writer = OutputWriter(out, render) if out is not None else None
    results = LocalizeResults()  # a list of dicts that displays its first images with boxes in a notebook
    pending: list[tuple[int, Any]] = []

    def run_batch(pils: list[Image.Image], names: list[str]) -> list[dict]:
        out = []
        for res, pil in zip(loc(pils, names, batch_size), pils):
            if writer is not None:
                writer.write(res, pil)
            results.keep(pil, res)
            out.append(res.to_dict())
        return out

    def flush() -> None:
        items, names = [im for _, im in pending], [_name(im, i) for i, im in pending]
        results.extend(records_of_readable(items, names, run_batch) if skip_bad
                       else run_batch([to_pil(im) for im in items], names))
        pending.clear()

    for i, im in enumerate(items):
        if isinstance(im, Path) and is_video(im):
            flush()
            results.extend(localize_video(loc, im, writer, every=every, batch_size=batch_size))
            continue
        pending.append((i, im))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results


def localize_video(loc: Localizer, path: Path, writer: OutputWriter | None = None, *, every: int = 1,
                   batch_size: int = 16) -> list[dict]:
    """Localise every ``every``-th frame of a video file; with a writer, save ``<stem>.json`` (all frames) and an
    animated ``<stem>_boxes.gif``."""
    from .render import draw_detections

    frames: list[dict] = []
    boxed: list[Image.Image] = []
    fps = None
    for chunk, fps in _chunks(read_frames(path, every), batch_size):
        results = loc([im for _, im in chunk], [f"{path}#{n}" for n, _ in chunk], batch_size=batch_size)
        for (n, im), res in zip(chunk, results):
            res.frame = n
            frames.append(res.to_dict())
            if writer is not None and writer.render:
                boxed.append(draw_detections(im, res.detections))
    if writer is not None:
        stem = writer.stem(str(path))
        atomic.write_json(writer.out / f"{stem}.json", {"video": str(path), "fps": fps, "every": every,
                                                        "frames": frames})
        if boxed:
            duration = int(1000 * every / fps) if fps else 100
            atomic.write_with(writer.out / f"{stem}_boxes.gif", lambda p: boxed[0].save(
                p, format="GIF", save_all=True, append_images=boxed[1:], duration=duration, loop=0))
    return frames


def _chunks(frames: Iterator[tuple[int, Image.Image, float | None]], size: int):
    chunk: list[tuple[int, Image.Image]] = []
    fps = None
    for n, im, fps in frames:
        chunk.append((n, im))
        if len(chunk) == size:
            yield chunk, fps
            chunk = []
    if chunk:
        yield chunk, fps


def stream_camera(run_or_model: Run | str | Path | nn.Module, index: int = 0, out: str | Path | None = None, *,
                  frames: int | None = None, every: int = 1, **options: Any) -> Iterator[dict]:
    """Localise webcam ``index`` frame by frame (needs OpenCV); yields one dict per processed frame. With ``out``,
    ``camera_boxes.png`` always shows the latest frame and ``camera.jsonl`` collects the results."""
    from .render import draw_detections
    from .video import camera_frames

    loc = Localizer(as_run(run_or_model), **options)
    log = None
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        log = open(Path(out) / "camera.jsonl", "a", encoding="utf-8")
    try:
        for count, (n, im) in enumerate(camera_frames(index, every)):
            (res,) = loc([im], [f"camera:{index}#{n}"])
            res.frame = n
            d = res.to_dict()
            if out is not None and log is not None:
                log.write(json.dumps(d) + "\n")
                log.flush()
                atomic.write_with(Path(out) / "camera_boxes.png",
                                  lambda p, im=im, res=res: draw_detections(im, res.detections).save(p, format="PNG"))
            yield d
            if frames is not None and count + 1 >= frames:
                break
    finally:
        if log is not None:
            log.close()


def localize_multiscale(loc: "Localizer", images: Sequence[Any], names: Sequence[str],
                        batch_size: int = 16) -> list:
    """The Localizer's multi-scale path: classes decided at the training size (the top-1 class always, others at or
    above ``loc.min_score``, at most ``loc.topk``), boxes from each class's fused map by ``loc.rule`` at
    ``loc.threshold``; a box's score is the class probability times its region's peak."""
    def pick(probs: np.ndarray) -> list[int]:
        order = np.argsort(-probs)[: loc.topk]
        return [int(k) for j, k in enumerate(order) if j == 0 or probs[k] >= loc.min_score]

    results = []
    for start in range(0, len(images), batch_size):
        chunk = [to_pil(im) for im in images[start : start + batch_size]]
        found = class_heat(loc, chunk, pick, loc.scales, batch_size)
        for pil, name, h in zip(chunk, names[start : start + len(chunk)], found):
            regions = []
            for k, heat in h.heat.items():
                level = min(loc.threshold.level(heat), 1.0)
                regions += [(k, float(h.probs[k]) * s, b) for s, b in heat_boxes(heat, level, loc.rule, h.size)]
            if loc.refine == "grabcut":
                regions = refine_on_image(pil, h.heat, regions)
            dets = [Detection(k, loc._label(k), s, b) for k, s, b in regions]
            dets = nms_per_class(dets, loc.nms_iou, loc.method in CLASS_AGNOSTIC)
            grid = next(iter(h.heat.values())).shape
            results.append(Localization(name, h.size, (grid[1], grid[0]), round(h.size[0] / grid[1], 4),
                                        rank_classes(dets, loc.topk), dets, dict(h.heat)))
    return results
