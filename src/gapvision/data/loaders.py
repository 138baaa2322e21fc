"""Batch sources for the trainer: anything with ``epoch(e) -> iterator of (x, y)`` and ``len()`` (batches per epoch).

``StreamingBatches`` decodes and augments per image in DataLoader workers. Each epoch's order and augmentation are a
function of (seed, epoch) alone, so a run resumed at an epoch boundary replays exactly what it would have done.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .imageset import ImageSet


class Batches(Protocol):
    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed that drives everything random in ``epoch`` (data order, augmentation, dropout)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2**63 - 1)


class TransformedDataset(Dataset):
    """``(transform(imageset.load(i)), label)``; the one map-style dataset of the streaming path."""

    def __init__(self, images: ImageSet, transform: Callable):
        self.images = images
        self.transform = transform
        self.seed: int | None = None  # set per epoch: image i's augmentation is then a function of (seed, i) alone
        self.params: dict[str, torch.Tensor] | None = None  # a batch augmentation's draw of the epoch (per image)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.images.load(i), int(self.images.labels[i])
        if self.params is not None:  # a batch augmentation, image by image: the in-memory path's pixels exactly
            return self.transform(img, {k: v[i: i + 1] for k, v in self.params.items()}), label
        if self.seed is None:
            return self.transform(img), label
        # Seed the (global) generator the transforms draw from, and restore it: the augmentation of an image does not
        # depend on worker count or on what else used the generator (dropout of another head, in a comparison).
        gen = torch.default_generator
        state = gen.get_state()
        try:
            gen.manual_seed((self.seed * 0x9E3779B97F4A7C15 + int(i) * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1))
            return self.transform(img), label
        finally:
            gen.set_state(state)


def default_workers(images: ImageSet, requested: int = -1) -> int:
    """-1 = auto: no worker processes for in-memory arrays, else up to 4 (never more than the CPU count)."""
    if requested >= 0:
        return requested
    in_memory = len(images) > 0 and not isinstance(images.items[0], (str, Path))
    return 0 if in_memory else min(4, os.cpu_count() or 1)


class StreamingBatches:
    """A DataLoader over an ImageSet, reseeded every epoch (``sampler_factory`` is the DDP hook). With ``augment`` (a
    :class:`~gapvision.data.memory.BatchAugment`) ``transform`` takes ``(image, its parameters)`` and each epoch's
    parameters are drawn as MemoryBatches draws them."""

    def __init__(
        self,
        images: ImageSet,
        transform: Callable,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        workers: int = -1,
        drop_last: bool = False,
        sampler_factory: Callable[[Dataset, torch.Generator], Sampler] | None = None,
        augment: Any = None,
    ):
        self.dataset = TransformedDataset(images, transform)
        self.augment = augment
        self.seed = seed
        self.generator = torch.Generator()
        sampler = sampler_factory(self.dataset, self.generator) if sampler_factory else None
        n_workers = default_workers(images, workers)
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=n_workers,
            drop_last=drop_last,
            generator=self.generator,
            pin_memory=torch.cuda.is_available(),
        )

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.generator.manual_seed(epoch_seed(self.seed, epoch))
        self.dataset.seed = epoch_seed(self.seed, epoch)
        if self.augment is not None:
            self.dataset.params = self.augment.draw(len(self.dataset), self.seed, epoch)
        sampler = self.loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        return iter(self.loader)
