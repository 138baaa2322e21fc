"""``--method fewshot``: an objectness map learned from the boxes of the calibration images (the few-shot baseline of
Choe et al. 2020, "Evaluating WSOL methods right", which beats the weakly-supervised methods once a few annotated
images exist -- and the WSOL protocol needs those images anyway, to choose the threshold).

``gapvision localize RUN --calibrate DATA --method fewshot`` fits, on the calibration images at each calibration
scale, a logistic regression that tells the map cells inside a ground-truth box (of any class) from the others. Its
inputs are the backbone's descriptors at each cell: the final feature map and the feature map at the end of the
stage before it (:func:`tapped_stage`: the input of the module that brings it to the final resolution), average-pooled
onto the final grid. The final map alone says what the classifier looks at; the earlier stage adds
what the object looks like at a finer scale. The map of a class is the regression's logit at each cell -- the same
objectness map for every class the classifier decides is present (images with objects of one class, as in WSOL;
for scenes with several classes use ``fcn``).

Then, as Choe et al.'s baseline trains the network itself on the few annotated images, the layers from the tapped
module on and the regression (as a 1 x 1 convolution) are fine-tuned together on the same cells (per-cell binary
cross-entropy, :data:`FINE_TUNE_EPOCHS` passes over every image and scale, horizontal flips, normalisation
statistics fixed). The classifier is untouched: its class decision comes from the run's own network; the maps from
a copy with the tuned layers, which goes on from the tap's input that the run's network computed on its way
(:func:`run_from`: the layers before the tap run once; MobileNetV2's tuned layers are about a third of its work).
``fine_tune_epochs=0`` keeps the linear probe alone.

The weights (a vector of the descriptor width, folded with the standardisation) and the tuned layers' tensors are
kept in ``RUN_DIR/fewshot.safetensors``; the calibration's threshold, rule and scales in ``localize.json`` as for
any method. Measured on ``../shared/data/boxes-dev`` (``bench/localize_quality.py``): see the README's table.
"""
from __future__ import annotations

import contextlib
import copy
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
#: passes of the fine-tuning over every calibration image and scale, and the tuned layers' AdamW lr (the objectness
#: layer takes 10x). On boxes-dev (32 calibration photos, MobileNetV2) it lifted validation GT-known loc from 0.69-0.83
#: to 0.86 for each of three calibration samples (README: localisation quality on real photos)
FINE_TUNE_EPOCHS = 4
FINE_TUNE_LR = 3e-5
STAGE_PREFIX = "stage."  # the tuned layers' tensors in fewshot.safetensors: "stage.<module>.<name>"


@dataclass
class Objectness:
    """A linear objectness score of the descriptors (:meth:`descriptors`) at each map cell: ``weight . d + bias``."""

    weight: torch.Tensor  # D
    bias: float
    tap: str | None  # the backbone module whose input joins the final map (None: the final map alone)
    images: int = 0
    about: dict = field(default_factory=dict)
    stage: dict[str, torch.Tensor] = field(default_factory=dict)  # backbone tensors of the tuned layers, by name
    _tuned: tuple[int, nn.Module] | None = field(default=None, repr=False)

    def descriptors(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, descriptors)`` of a batch: the backbone's final map (for the classifier's head) and the
        descriptors the objectness is a function of (N x D x h x w; from the tuned layers when there are some)."""
        if not self.stage:
            return tapped_features(net, x, self.tap)
        tuned = self.tuned(net)
        feats, tap_input = features_and_tap_input(net, x, self.tap)
        # the layers before the tap are the run's own: the tuned copy goes on from the tap's input they gave
        rest = (run_from(tuned.backbone, self.tap, tap_input.to(feats.dtype)) if self.tap and tap_input is not None
                else None)
        if rest is None:
            return feats, tapped_features(tuned, x, self.tap)[1]
        return feats, _joined(rest, tap_input)

    def tuned(self, net: nn.Module) -> nn.Module:
        """A copy of ``net`` with the tuned layers' tensors (made once per network)."""
        if self._tuned is None or self._tuned[0] != id(net):
            self._tuned = (id(net), with_stage(net, self.stage))
        return self._tuned[1]

    def maps(self, descriptors: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """N x D x h x w descriptors, N x k classes -> N x k x h x w objectness logits (the same map for each)."""
        w = self.weight.to(descriptors.device, torch.float32)
        m = torch.einsum("nchw,c->nhw", descriptors.float(), w) + self.bias
        return m[:, None].expand(-1, classes.shape[1], -1, -1)


def forward_order(net: nn.Module, channels: int, img_size: int) -> tuple[list[tuple[str, tuple[int, ...]]],
                                                                          dict[str, tuple[int, ...]], tuple[int, ...]]:
    """One forward pass of a blank image through ``net.backbone``: the modules (names in the backbone) in the order
    they start with their input's spatial size, each one's output size, and the final map's size."""
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
    return started, shapes, final


def tapped_stage(net: nn.Module, channels: int, img_size: int) -> tuple[str | None, list[str]]:
    """The tap: the name (in ``net.backbone``) of the module that takes the stage before the last to the final
    resolution, i.e. the first module a forward pass starts whose input is finer than the final feature map (at most
    twice as fine) and whose output has the final size (ResNets' ``layer4``, MobileNetV2's first stride-2 block of
    the last stage; its input is the end of that earlier stage); and the modules that the pass starts from it on
    (the tap, what it contains, what follows: the layers the fine-tuning trains). ``(None, [])`` when the backbone
    has no such module."""
    started, shapes, final = forward_order(net, channels, img_size)
    h, w = final
    names = [n for n, _ in started]
    for name, (ih, iw) in started:
        if h < ih <= 2 * h + 1 and w < iw <= 2 * w + 1 and shapes.get(name) == final:
            return name, list(dict.fromkeys(names[names.index(name):]))
    return None, []


def stage_tensors(net: nn.Module, modules: Sequence[str]) -> dict[str, torch.Tensor]:
    """The parameters and buffers that ``modules`` (backbone names) own directly, keyed ``<module>.<name>``."""
    found = dict(net.backbone.named_modules())  # type: ignore[attr-defined]
    out = {}
    for name in modules:
        m = found[name]
        for key, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            out[f"{name}.{key}"] = t.detach().clone().cpu().contiguous()
    return out


def with_stage(net: nn.Module, stage: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``net`` (in eval mode) whose backbone tensors named in ``stage`` are replaced by them."""
    tuned = copy.deepcopy(net).eval()
    state = tuned.backbone.state_dict()  # type: ignore[attr-defined]
    unknown = sorted(k for k in stage if k not in state or state[k].shape != stage[k].shape)
    if unknown:
        raise GapvisionError(f"{FEWSHOT_FILE} holds layers this model lacks ({unknown[0]}...): calibrate --method "
                             "fewshot again")
    tuned.backbone.load_state_dict(stage, strict=False)  # type: ignore[attr-defined]
    return tuned


def tapped_features(net: nn.Module, x: torch.Tensor, tap: str | None,
                    grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's final map of ``x`` and, joined to it along the channels, the input of the ``tap`` module
    pooled onto the final grid (``grad``: keep the graph, for the fine-tuning)."""
    feats, caught = features_and_tap_input(net, x, tap, grad)
    return feats, _joined(feats, caught)


def features_and_tap_input(net: nn.Module, x: torch.Tensor, tap: str | None,
                           grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The backbone's final map of ``x`` and the input of its ``tap`` module (float32; None without a tap)."""
    caught: list[torch.Tensor] = []
    handle = None
    if tap:
        module = dict(net.backbone.named_modules()).get(tap)  # type: ignore[attr-defined]
        if module is None:
            raise GapvisionError(f"{FEWSHOT_FILE} names the layer {tap!r}, which this model lacks: calibrate "
                                 "--method fewshot again")
        handle = module.register_forward_pre_hook(lambda _m, args: caught.append(args[0].float().clone()))
    try:
        with contextlib.nullcontext() if grad else torch.inference_mode():
            feats = net.features(x)  # type: ignore[operator]
    finally:
        if handle is not None:
            handle.remove()
    return feats, (caught[0] if caught else None)


def _joined(feats: torch.Tensor, tap_input: torch.Tensor | None) -> torch.Tensor:
    """The descriptors: the final map with the tap's input average-pooled onto its grid, along the channels."""
    desc = feats.float()
    if tap_input is None:
        return desc
    return torch.cat([desc, F.adaptive_avg_pool2d(tap_input, tuple(feats.shape[-2:]))], dim=1)


def run_from(backbone: nn.Module, tap: str, x: torch.Tensor) -> torch.Tensor | None:
    """The final map of ``backbone`` when its ``tap`` module receives ``x``: the tap and what follows it, without
    the layers before. Only where the way there is a chain (a :class:`~..models.backbones.Backbone` running its
    parts in order, ``nn.Sequential`` containers down to the tap); None otherwise (the caller runs the whole
    backbone)."""
    from ..models.backbones import Backbone

    if type(backbone).forward is not Backbone.forward:  # e.g. timm's wrapper runs its own forward
        return None
    path = tap.split(".")
    parts = list(backbone.parts)  # type: ignore[attr-defined]
    if path[0] not in parts:
        return None

    def chain(module: nn.Module, rest: list[str], h: torch.Tensor) -> torch.Tensor | None:
        if not rest:
            return module(h)
        if type(module) is not nn.Sequential or rest[0] not in module._modules:
            return None
        names = list(module._modules)
        out = chain(module._modules[rest[0]], rest[1:], h)  # type: ignore[arg-type]
        for name in names[names.index(rest[0]) + 1:] if out is not None else ():
            out = module._modules[name](out)  # type: ignore[misc]
        return out

    with torch.inference_mode():
        h = chain(backbone._modules[path[0]], path[1:], x)  # type: ignore[arg-type]
        for key in parts[parts.index(path[0]) + 1:] if h is not None else ():
            h = backbone._modules[key](h)  # type: ignore[misc]
    return h


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
                   data: str = "", fine_tune_epochs: int = FINE_TUNE_EPOCHS, lr: float = FINE_TUNE_LR,
                   seed: int = 0) -> Objectness:
    """Fit the objectness on ``images`` (each seen as the classifier sees it, at each of ``scales`` x the training
    size) with ``boxes[i]`` = the boxes of image i in its own pixels (every object, whatever its class): the
    logistic regression, then ``fine_tune_epochs`` of fine-tuning from the tapped module on (see the module
    docstring; none when the backbone has no tapped module). ``net`` itself is left unchanged."""
    from sklearn.linear_model import LogisticRegression

    tap, modules = tapped_stage(net, pre.channels, pre.img_size)
    views, rows, labels = [], [], []
    for im, objs in zip(images, boxes):
        pil = to_pil(im)
        base = to_uint8(pil, pre)
        for s in scales:  # the views class_heat maps at inference
            view = scaled_view(base[None], s)
            _, d = tapped_features(net, normalize(view.to(device), pre), tap)
            inside = cell_labels(pil.size, objs, tuple(d.shape[-2:]))
            views.append((view, torch.from_numpy(inside).float()))
            rows.append(d[0].flatten(1).T.cpu().numpy())
            labels.append(inside.ravel())
    x_all, y_all = np.concatenate(rows).astype(np.float64), np.concatenate(labels)
    if y_all.all() or not y_all.any():
        what = "every" if y_all.all() else "no"
        raise DataError(f"the boxes of {data or 'the calibration images'} cover {what} map cell, so there is no "
                        "object/background contrast to learn: calibrate --method fewshot on images whose boxes "
                        "cover part of the image")
    mean, std = x_all.mean(axis=0), x_all.std(axis=0) + 1e-6
    clf = LogisticRegression(C=regularisation, max_iter=3000).fit((x_all - mean) / std, y_all)
    weight = torch.tensor(clf.coef_[0] / std, dtype=torch.float32)
    bias = float(clf.intercept_[0] - (mean * weight.double().numpy()).sum())
    about: dict[str, Any] = {"cells": int(len(y_all)), "object_share": round(float(y_all.mean()), 4),
                             "regularisation": regularisation, "scales": [float(s) for s in scales]}
    stage: dict[str, torch.Tensor] = {}
    if tap and fine_tune_epochs > 0:
        weight, bias, stage, loss = fine_tune(net, pre, views, tap, modules, weight, bias, fine_tune_epochs, lr,
                                              device, seed)
        about["fine_tune"] = {"epochs": fine_tune_epochs, "lr": lr, "modules": len(modules),
                              "tensors": len(stage), "last_epoch_loss": round(loss, 4)}
    return Objectness(weight, bias, tap, len(images), about, stage)


def fine_tune(net: nn.Module, pre: Preprocess, views: Sequence[tuple[torch.Tensor, torch.Tensor]], tap: str,
              modules: Sequence[str], weight: torch.Tensor, bias: float, epochs: int, lr: float,
              device: torch.device, seed: int = 0) -> tuple[torch.Tensor, float, dict[str, torch.Tensor], float]:
    """Train ``modules`` of a copy of ``net`` and the objectness (a 1 x 1 convolution started at ``weight``,
    ``bias``) on ``views`` (uint8 input, h x w cell labels), one view a step, each pass in a seeded order with
    random horizontal flips; normalisation statistics fixed (eval mode). Returns the objectness, the tuned
    modules' tensors and the last pass's mean loss."""
    tuned = with_stage(net, {})  # the copy that trains; ``net`` stays as it is
    found = dict(tuned.backbone.named_modules())  # type: ignore[attr-defined]
    params = list({id(p): p for n in modules for p in found[n].parameters(recurse=False)}.values())
    for p in tuned.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    layer = nn.Conv2d(weight.numel(), 1, 1).to(device)
    with torch.no_grad():
        layer.weight.copy_(weight.view(1, -1, 1, 1))
        layer.bias.fill_(bias)
    opt = torch.optim.AdamW([{"params": params, "lr": lr}, {"params": layer.parameters(), "lr": 10 * lr}],
                            weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    loss_sum = 0.0
    for _ in range(epochs):
        loss_sum = 0.0
        for j in torch.randperm(len(views), generator=g).tolist():
            view, inside = views[j]
            if bool(torch.rand((), generator=g) < 0.5):
                view, inside = view.flip(-1), inside.flip(-1)
            _, d = tapped_features(tuned, normalize(view.to(device), pre), tap, grad=True)
            loss = F.binary_cross_entropy_with_logits(layer(d)[0, 0], inside.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
    return (layer.weight.detach().flatten().cpu().clone(), float(layer.bias.detach()[0]),
            stage_tensors(tuned, modules), loss_sum / max(1, len(views)))


def save_objectness(run: Run, obj: Objectness) -> Path:
    """Write ``RUN_DIR/fewshot.safetensors`` atomically (weights and tuned layers as tensors, the rest as
    metadata)."""
    if run.path is None:
        raise GapvisionError("--method fewshot is kept in a run directory: localise with a run directory (from "
                             "`gapvision train`), not a bare --model")
    path = Path(run.path) / FEWSHOT_FILE
    tensors = {"weight": obj.weight.contiguous(), "bias": torch.tensor([obj.bias]),
               **{STAGE_PREFIX + k: v.contiguous() for k, v in obj.stage.items()}}
    meta = {"tap": obj.tap or "", "images": str(obj.images), "about": json.dumps(obj.about)}
    atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def load_objectness(run: Run) -> Objectness:
    """The run's fitted objectness; a one-line error saying how to fit it when there is none."""
    path = Path(run.path) / FEWSHOT_FILE if getattr(run, "path", None) else None
    if path is None:
        raise GapvisionError("--method fewshot is learned into a run directory, and a pretrained --model has none: "
                             "train a run on your images (`gapvision train`), then `gapvision localize RUN_DIR "
                             "--calibrate DATA --method fewshot`")
    if not path.is_file():
        where = run.path
        raise GapvisionError(f"--method fewshot learns from annotated images first: run `gapvision localize {where} "
                             "--calibrate DATA --method fewshot` (DATA: a VOC folder or COCO file with boxes)")
    from safetensors import safe_open

    try:
        t = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        stage = {k[len(STAGE_PREFIX):]: v for k, v in t.items() if k.startswith(STAGE_PREFIX)}
        return Objectness(t["weight"], float(t["bias"][0]), meta.get("tap") or None, int(meta.get("images", 0)),
                          json.loads(meta.get("about", "{}")), stage)
    except Exception as e:  # noqa: BLE001 -- any damage reads as one line
        raise GapvisionError(f"{path} is damaged ({e}): calibrate --method fewshot again") from None
