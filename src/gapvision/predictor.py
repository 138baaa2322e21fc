"""The one inference path: a network in eval mode on one device, its preprocessing, the run's test-time augmentation
(TTA), arithmetic (AMP, channels-last) and batch size.

Every door that runs a trained model goes through a :class:`Predictor`: ``Run.predict`` (predict, serve, the sharded
``--output`` under torchrun), ``evaluate``, the metrics written at the end of training, the per-epoch validation of
the Trainer, report, localize and export's parity check. So the numbers agree everywhere: ``metrics.json``,
``gapvision evaluate`` and the argmax of ``predict`` are the same computation on the same pixels.

Inputs: a path, a PIL image, a uint8 H x W (x C) array, or a list of them (decoded, mode-converted, resized as in
training); a uint8 tensor (C x H x W or N x C x H x W, normalised here); a float tensor (already normalised
network input); or a batch source (anything with ``epoch(e)`` yielding ``(x, y)``, e.g. ``make_batches``).
This module imports no CLI and no run-directory code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .choices import TTA_MODES
from .data.images import records_of_readable, to_pil
from .data.transforms import Preprocess, eval_transform, normalize
from .devices import choose_device, resolve_precision
from .errors import ConfigError

DEFAULT_BATCH_SIZE = 64


@dataclass
class EvalResult:
    """Mean loss, accuracy and per-image targets/predictions (and probabilities when asked) over a batch source."""

    loss: float
    acc: float
    targets: np.ndarray
    preds: np.ndarray
    probs: np.ndarray | None = None


def inference_options(train: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Predictor options of a run's training config (``config.json`` ``train``): TTA, AMP, channels-last and the
    batch size, so that inference repeats the arithmetic the run's own evaluation used."""
    t = dict(train or {})
    return {"tta": t.get("tta", "off"), "amp": t.get("amp", "off"), "channels_last": t.get("channels_last", "off"),
            "batch_size": int(t.get("batch_size") or DEFAULT_BATCH_SIZE)}


def tta_logits(net: nn.Module, x: torch.Tensor, tta: str = "off") -> torch.Tensor:
    """Float32 logits of ``net`` on the batch ``x`` with test-time augmentation ``tta`` (see choices.TTA_MODES)."""
    logits = net(x).float()
    if tta == "off":
        return logits
    logits = 0.5 * (logits + net(x.flip(-1)).float())
    if tta == "crops":
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
        logits = 0.5 * logits + 0.25 * sum(tta_logits(net, s.contiguous(memory_format=_format(x)), "flip")
                                           for s in shifted)
    return logits


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


class Predictor:
    """``net`` (moved once to ``device``, eval mode) with ``preprocess``, ``classes``, ``tta`` (off|flip|crops: see
    :func:`tta_logits`), ``amp``/``channels_last`` (auto|on|off, as in training) and ``batch_size``."""

    def __init__(self, net: nn.Module, preprocess: Preprocess | None = None, classes: Sequence[str] | None = None, *,
                 tta: str = "off", amp: str = "off", channels_last: str = "off",
                 batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device | None = "auto"):
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be {' or '.join(TTA_MODES)} (got {tta!r})")
        self.device = choose_device(device)
        self.precision = resolve_precision(self.device, amp, channels_last)
        self.net = place(net, self.device, self.precision.channels_last).eval()
        self.preprocess = preprocess
        self.classes = list(classes) if classes is not None else None
        self.tta = tta
        self.batch_size = max(1, int(batch_size))
        self._fcn: nn.Module | None = None

    def __repr__(self) -> str:
        return f"Predictor(device={self.device}, tta={self.tta}, amp={self.precision.amp}, batch={self.batch_size})"

    # -- the forward pass ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits (on this device) of a normalised N x C x H x W batch, with the TTA, under the AMP setting."""
        x = self.precision.place(x, self.device)
        with torch.inference_mode(), self.precision.autocast():
            return tta_logits(self.net, x, self.tta)

    def batches(self, inputs: Any, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        """Normalised network-input batches (at most ``batch_size`` images, default the Predictor's) of ``inputs``
        (see the module docstring)."""
        bs = int(batch_size or self.batch_size)
        if hasattr(inputs, "epoch"):
            for x, _ in inputs.epoch(0):
                yield x
            return
        if isinstance(inputs, torch.Tensor):
            x = inputs if inputs.ndim == 4 else inputs[None]
            if x.dtype == torch.uint8:
                x = normalize(x, self._pre())
            for i in range(0, len(x), bs):
                yield x[i: i + bs]
            return
        items = as_list(inputs)
        tf = eval_transform(self._pre())
        for i in range(0, len(items), bs):
            yield torch.stack([tf(to_pil(im)) for im in items[i: i + bs]])

    def logits(self, inputs: Any, batch_size: int | None = None) -> torch.Tensor:
        """N x K float32 logits on the CPU."""
        out = [self.forward(x).cpu() for x in self.batches(inputs, batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes or ()))

    def probs(self, inputs: Any, batch_size: int | None = None) -> torch.Tensor:
        """N x K class probabilities (softmax of :meth:`logits`) on the CPU."""
        return self.logits(inputs, batch_size).softmax(dim=1)

    def features(self, inputs: Any) -> torch.Tensor:
        """The backbone's N x C x h x w feature maps (no TTA) on the CPU."""
        out = []
        for x in self.batches(inputs):
            x = self.precision.place(x, self.device)
            with torch.inference_mode(), self.precision.autocast():
                out.append(self.net.features(x).float().cpu())  # type: ignore[operator]
        return torch.cat(out)

    @property
    def fcn(self) -> nn.Module:
        """The fully-convolutional copy of the network (:func:`gapvision.localize.to_fcn`), on this device."""
        if self._fcn is None:
            from .localize.fcn import to_fcn

            self._fcn = to_fcn(self.net).to(self.device).eval()
        return self._fcn

    def class_maps(self, inputs: Any, **options: Any) -> Any:
        """:class:`gapvision.localize.ClassMaps` of every class, one FCN pass per batch (``options`` as for
        :func:`gapvision.localize.class_maps`); tensors on this device."""
        from .localize.cam import ClassMaps, class_maps

        parts = [class_maps(self.fcn, x.to(self.device), **options) for x in self.batches(inputs)]  # type: ignore[arg-type]
        if len(parts) == 1:
            return parts[0]
        cat = {k: torch.cat([getattr(p, k) for p in parts]) for k in ("logits", "evidence", "probs", "image_logits")}
        return ClassMaps(**cat, stride=parts[0].stride, offset=parts[0].offset)

    # -- labelled data ---------------------------------------------------------------------------------------------
    def evaluate(self, batches: Any, *, keep_probs: bool = False, reduce: Any = None) -> EvalResult:
        """Loss, accuracy and predictions over a labelled batch source; ``reduce`` sums the totals across processes
        (the Trainer's DDP hook)."""
        loss_sum, targets, preds, probs = 0.0, [], [], []
        for x, y in batches.epoch(0):
            logits = self.forward(x)
            y = y.to(self.device, non_blocking=True)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            targets.append(y.cpu())
            preds.append(logits.argmax(1).cpu())
            if keep_probs:
                probs.append(logits.softmax(1).cpu())
        t = torch.cat(targets).numpy() if targets else np.zeros(0, np.int64)
        p = torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)
        totals = torch.tensor([loss_sum, float((t == p).sum()), float(len(t))], dtype=torch.float64, device=self.device)
        if reduce is not None:
            totals = reduce(totals)
        loss_sum, correct, count = (float(v) for v in totals)
        return EvalResult(loss_sum / max(count, 1), correct / max(count, 1), t, p,
                          torch.cat(probs).numpy() if probs else None)

    # -- named answers ---------------------------------------------------------------------------------------------
    def predict(self, images: Any, topk: int = 3, batch_size: int | None = None,
                skip_bad: bool = False) -> list[dict]:
        """``[{"image": name, "top": [{"label": ..., "prob": ...}, ...]}, ...]`` for each image. ``skip_bad``: an
        image file that does not decode gets ``{"image": name, "error": why}`` instead of stopping the batch."""
        check_topk(topk)
        items = as_list(images)
        names = [image_name(im, n) for n, im in enumerate(items)]
        if not skip_bad:
            return self._top(items, names, topk, batch_size)
        step = int(batch_size or self.batch_size)  # decoded a batch at a time: a folder need not fit in memory
        return [rec for i in range(0, len(items), step) for rec in records_of_readable(
            items[i: i + step], names[i: i + step], lambda ims, ns: self._top(ims, ns, topk, step))]

    def _top(self, items: list[Any], names: list[str], topk: int, batch_size: int | None) -> list[dict]:
        probs = self.probs(items, batch_size)
        classes = self.classes or [str(i) for i in range(probs.shape[1])]
        k = max(1, min(topk, len(classes)))
        top_p, top_i = probs.topk(k, dim=1)
        return [{"image": name, "top": [{"label": classes[int(j)], "prob": round(float(p), 6)} for p, j in zip(ps, js)]}
                for name, ps, js in zip(names, top_p, top_i)]

    def _pre(self) -> Preprocess:
        if self.preprocess is None:
            raise ValueError("this Predictor has no preprocessing: pass normalised tensors or a batch source")
        return self.preprocess


def check_topk(topk: int) -> None:
    """``--topk`` is a count of classes: at least 1 (more than there are classes gives them all)."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ConfigError(f"--topk must be a whole number of at least 1 (got {topk!r})")


def place(net: nn.Module, device: torch.device, channels_last: bool = False) -> nn.Module:
    """``net`` on ``device`` (in the channels-last format if asked), touched only when it is not there yet: a
    network whose tensors others hold views of (the Trainer's weight average) keeps them."""
    tensors = [*net.parameters(), *net.buffers()]
    if any(t.device != device for t in tensors):
        net = net.to(device)
    if channels_last and any(t.ndim == 4 and not t.is_contiguous(memory_format=torch.channels_last) for t in tensors):
        net = net.to(memory_format=torch.channels_last)
    return net


def as_list(images: Any) -> list[Any]:
    """One image (path, PIL image, array) or a sequence of them -> a list."""
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        return [images]
    return list(images)


def image_name(im: Any, index: int) -> str:
    """How an input is named in results: its path, else ``#index``."""
    return str(im) if isinstance(im, (str, Path)) else f"#{index}"
