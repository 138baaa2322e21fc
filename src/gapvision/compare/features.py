"""The frozen-backbone fast path: compute the backbone's feature maps once and train every head on them.

When the backbone is frozen (``--freeze backbone``), each head of a comparison would run the same backbone on the
same images every epoch. Here the maps are computed once -- once per image without augmentation, once per image and
epoch (the augmented view the streaming path would draw) with it -- and kept in memory. The Trainer then fits a
:class:`CachedClassifier` (the same backbone and head modules, so the same state-dict keys and run directory, whose
forward is just the head) on batch sources that replay exactly the streaming path's batches: the same images in the
same order, because the order comes from the same :class:`StreamingBatches` machinery.

Maps are looked up by a fingerprint of (images, preprocessing, backbone weights...), computed when a batch source is
first iterated: after a resumed run has loaded its checkpoint, so a run can never train on another backbone's maps.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..data.imageset import DataSplits, ImageSet
from ..data.loaders import Batches, StreamingBatches
from ..data.transforms import Preprocess
from ..models.classifier import Classifier, feature_size
from ..train.config import TrainConfig
from ..data.batches import Feed, make_batches
from ..options import DataOptions
from ..devices import choose_device as resolve_device

MapBatch = tuple[torch.Tensor, torch.Tensor]  # feature maps and labels of one batch


def cache_blocker(net: Classifier) -> str | None:
    """Why cached maps could not stand in for running the backbone every step; None when they can."""
    if getattr(net, "freeze", "none") != "backbone":
        return "the backbone is trained (only --freeze backbone fixes its feature maps)"
    noisy = [name for name, m in net.backbone.named_modules()
             if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if noisy:
        return f"the frozen backbone has dropout ({noisy[0]}), so its maps change every step"
    return None


def map_bytes(net: Classifier, pre: Preprocess, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one image's feature map."""
    h, w = feature_size(net.backbone, pre.channels, pre.img_size)
    return net.backbone.out_channels * h * w * torch.tensor([], dtype=dtype).element_size()


class CachedClassifier(nn.Module):
    """A Classifier whose input is the backbone's feature map: ``forward(fmap) == head(fmap)``.

    It holds the very backbone and head modules of ``net``, so its state dict (checkpoints, model.safetensors) is the
    Classifier's, and a run trained this way loads and predicts like any other.
    """

    def __init__(self, net: Classifier):
        super().__init__()
        self.backbone = net.backbone
        self.head = net.head
        self.config = net.config
        self.freeze = getattr(net, "freeze", "backbone")

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(fmap)


class FeatureStore:
    """Feature maps of a comparison, kept in memory and shared by every head (and by seeds where images match).

    ``plain`` maps (one per image, no augmentation) live for the whole comparison; augmented ``views`` (one per image
    and epoch) belong to one seed and are dropped with :meth:`drop_views`.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, channels_last: bool = True):
        self.dtype = dtype
        self.channels_last = channels_last  # faster for depthwise/1x1 convs on CPU too; equal up to rounding
        self._plain: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._views: dict[tuple[str, int], list[MapBatch]] = {}
        self.maps_computed = 0
        self.seconds = 0.0
        self.peak_bytes = 0
        self.map_shape: tuple[int, ...] = ()

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        plain = sum(m.nbytes + y.nbytes for m, y in self._plain.values())
        views = sum(m.nbytes + y.nbytes for batches in self._views.values() for m, y in batches)
        return plain + views

    def drop_views(self) -> None:
        self._views.clear()

    def describe(self) -> dict:
        """Figures for the summary: how many maps, their shape, the peak memory and the time spent computing them."""
        return {"maps_computed": self.maps_computed, "map_shape": list(self.map_shape), "dtype": str(self.dtype),
                "peak_bytes": self.peak_bytes, "seconds": round(self.seconds, 2)}

    # -- computing maps ------------------------------------------------------------------------------------------
    def _extract(self, backbone: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = x.to(device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fmap = backbone(x)
        self.maps_computed += len(x)
        self.map_shape = tuple(fmap.shape[1:])
        return fmap.to("cpu", self.dtype).contiguous()

    def _run(self, backbone: nn.Module, batches: Batches, epoch: int, device: torch.device) -> list[MapBatch]:
        """The backbone (in eval mode) over every batch of ``batches.epoch(epoch)``."""
        t0 = time.perf_counter()
        was_training = backbone.training
        backbone.eval()
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        backbone.to(device=device, memory_format=layout)
        try:
            with torch.no_grad():  # not inference_mode: training uses these maps with autograd
                out = [(self._extract(backbone, x, device), y) for x, y in batches.epoch(epoch)]
        finally:
            backbone.to(memory_format=torch.contiguous_format)
            backbone.train(was_training)
        self.seconds += time.perf_counter() - t0
        return out

    def _track(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.nbytes)

    def plain(self, key: str, images: ImageSet, pre: Preprocess, backbone: nn.Module, *, batch_size: int, workers: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and labels of every image of ``images`` in order (no augmentation); ``key``: their fingerprint."""
        if key not in self._plain:
            parts = self._run(backbone, make_batches(images, pre, batch_size, workers=workers), 0, device)
            maps = torch.cat([m for m, _ in parts]) if parts else torch.zeros(0)
            labels = torch.cat([y for _, y in parts]) if parts else torch.zeros(0, dtype=torch.long)
            self._plain[key] = (maps, labels)
            self._track()
        return self._plain[key]

    def views(self, key: str, images: ImageSet, pre: Preprocess, backbone: nn.Module, epoch: int, *, augment: str,
              batch_size: int, seed: int, workers: int, device: torch.device, in_memory: str = "off") -> list[MapBatch]:
        """Maps of the augmented training batches of ``epoch``: exactly those the training pipeline would draw
        (streamed per image, or augmented per batch in memory: ``in_memory`` as in make_batches)."""
        if (key, epoch) not in self._views:
            stream = make_batches(images, pre, batch_size, train=True, augment=augment, seed=seed, workers=workers,
                                  in_memory=in_memory, device=device)
            self._views[key, epoch] = self._run(backbone, stream, epoch, device)
            self._track()
        return self._views[key, epoch]

    # -- the pipeline hook ---------------------------------------------------------------------------------------
    def sources(self, net: Classifier, splits: DataSplits, pre: Preprocess, augment: str,
                tcfg: TrainConfig, in_memory: str = "off") -> tuple["CachedBatches", "CachedBatches", "CachedBatches | None"]:
        """Train, val and test batch sources of cached maps for ``net``'s backbone (computed lazily)."""
        def source(images: ImageSet, train: bool) -> CachedBatches:
            return CachedBatches(self, images, pre, net.backbone, tcfg, augment=augment if train else "none",
                                 shuffle=train, in_memory=in_memory)

        test = source(splits.test, False) if splits.test is not None and len(splits.test) else None
        return source(splits.train, True), source(splits.val, False), test

    def feed(self, net: Classifier, splits: DataSplits, pre: Preprocess, dopts: DataOptions, tcfg: TrainConfig) -> Feed:
        """What ``pipeline.train``/``resume`` call (their ``feed=`` hook): the head-only network and cached batches."""
        train, val, test = self.sources(net, splits, pre, dopts.augment, tcfg, dopts.in_memory)
        return Feed(CachedClassifier(net), train, val, test)

    def warm(self, net: Classifier, splits: DataSplits, pre: Preprocess, augment: str, tcfg: TrainConfig,
             in_memory: str = "off") -> None:
        """Compute every map the runs of one seed will need, before they start (so no run's time includes it)."""
        for source in self.sources(net, splits, pre, augment, tcfg, in_memory):
            if source is not None:
                source.prepare(range(tcfg.epochs))


class CachedBatches:
    """A batch source of cached maps: ``epoch(e)`` yields (maps, labels) batches in the streaming path's order.

    Without augmentation the maps are computed once and served in the order of a StreamingBatches over image indices
    (same length, batch size and seed, hence the same permutation); with augmentation each epoch has its own views.
    """

    def __init__(self, store: FeatureStore, images: ImageSet, pre: Preprocess, backbone: nn.Module, tcfg: TrainConfig,
                 *, augment: str = "none", shuffle: bool = False, in_memory: str = "off"):
        self.store, self.images, self.pre, self.backbone = store, images, pre, backbone
        self.augment, self.in_memory = augment, in_memory
        self.batch_size, self.seed, self.workers = tcfg.batch_size, tcfg.seed, tcfg.workers
        self.device = resolve_device(tcfg.device)
        self.order = StreamingBatches(_index_set(images), _same, tcfg.batch_size, shuffle=shuffle, seed=tcfg.seed,
                                      workers=0)
        self._plain: tuple[torch.Tensor, torch.Tensor] | None = None
        self._key: str | None = None

    @property
    def key(self) -> str:
        """The fingerprint of these maps, taken on first use: the backbone is frozen while the run trains."""
        if self._key is None:
            extra = (self.augment, self.batch_size, self.seed, self.in_memory) if self.augment != "none" else ()
            self._key = fingerprint(self.images, self.pre, self.backbone, self.store.dtype, *extra)
        return self._key

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def prepare(self, epochs: range) -> None:
        """Compute (or find) the maps these epochs need."""
        if self.augment == "none":
            self._maps()
        else:
            for e in epochs:
                self._views(e)

    def _maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._plain is None:
            self._plain = self.store.plain(self.key, self.images, self.pre, self.backbone, batch_size=self.batch_size,
                                           workers=self.workers, device=self.device)
        return self._plain

    def _views(self, epoch: int) -> list[MapBatch]:
        return self.store.views(self.key, self.images, self.pre, self.backbone, epoch, augment=self.augment,
                                batch_size=self.batch_size, seed=self.seed, workers=self.workers, device=self.device,
                                in_memory=self.in_memory)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.augment != "none":
            for maps, labels in self._views(epoch):
                yield maps.float(), labels
            return
        maps, labels = self._maps()
        for idx, _ in self.order.epoch(epoch):
            yield maps[idx].float(), labels[idx]


def _same(x):  # the identity "transform" of the index set
    return x


def _index_set(images: ImageSet) -> ImageSet:
    """An ImageSet whose "images" are their own indices: batching it gives the order a StreamingBatches would use."""
    return ImageSet(list(range(len(images))), images.labels, list(images.classes), reader=int)


def fingerprint(images: ImageSet, pre: Preprocess, backbone: nn.Module, *extra: object) -> str:
    """A key for "the same maps": the images (paths or pixels) and labels, preprocessing, backbone weights, extras."""
    h = hashlib.sha1()
    items = images.items
    if isinstance(items, np.ndarray):
        h.update(np.ascontiguousarray(items).tobytes())
    else:
        for item in items:
            if isinstance(item, (str, Path)):
                h.update(str(item).encode() + b"\0")
            else:
                h.update(np.ascontiguousarray(np.asarray(item)).tobytes())
    h.update(np.asarray(images.labels).tobytes())
    h.update(str((len(images), images.meta.get("source"))).encode())
    h.update(json.dumps(pre.to_dict(), sort_keys=True).encode())
    for name, t in backbone.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else
                 t.detach().float().cpu().numpy().tobytes())
    h.update(repr(extra).encode())
    return h.hexdigest()
