"""Batch sources of one split (the streaming or the in-memory path) and the ``Feed`` a run may train on instead.

``make_batches`` is the one place that chooses between ``StreamingBatches`` (loaders.py) and ``MemoryBatches``
(memory.py); the training pipeline, compare's feature cache, the LR finder and every evaluation call it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..choices import IMAGE_AUGMENTS
from .imageset import ImageSet
from .loaders import Batches, StreamingBatches
from .memory import AugmentedImage, MemoryBatches, batch_augment, use_in_memory
from .transforms import Preprocess, eval_transform, train_transform


def make_batches(
    images: ImageSet, pre: Preprocess, batch_size: int, *, train: bool = False, augment: str = "none", seed: int = 0,
    workers: int = -1, sampler_factory: Any = None, in_memory: str = "off", device: torch.device | str | None = None,
    log: Callable[[str], None] | None = None,
) -> Batches:
    """Batches of one split: shuffled and augmented for training, in order and plain otherwise.

    ``sampler_factory`` (DDP: this rank's share, see distributed.py) picks the images; then ``batch_size`` is per rank.
    ``in_memory`` (auto/on/off) chooses the in-memory path (decoded once, resident on ``device``, batch augmentation).
    """
    per_image = train and augment in IMAGE_AUGMENTS  # torchvision's per-image ops: the streaming path only
    if per_image and in_memory == "on":
        batch_augment(augment, pre.img_size)  # the one-line error that says what to use instead
    if not per_image and use_in_memory(in_memory, len(images), pre, device or "cpu"):
        return MemoryBatches.from_images(images, pre, batch_size, workers=workers, log=log, shuffle=train, seed=seed,
                                         augment=batch_augment(augment, pre.img_size) if train else None,
                                         device=device, sampler_factory=sampler_factory)
    batch_aug = batch_augment(augment, pre.img_size) if train and not per_image else None
    if batch_aug is not None:  # the same pixels as the in-memory path, image by image
        return StreamingBatches(images, AugmentedImage(pre, batch_aug), batch_size, shuffle=True, seed=seed,
                                workers=workers, sampler_factory=sampler_factory, augment=batch_aug)
    tf = train_transform(pre, augment) if per_image else eval_transform(pre)
    return StreamingBatches(images, tf, batch_size, shuffle=train, seed=seed, workers=workers,
                            sampler_factory=sampler_factory)


@dataclass
class Feed:
    """What a run's Trainer fits and evaluates instead of the defaults (the ``feed=`` hook of train/resume): a
    network with the Classifier's state-dict keys and its train/val/test batch sources (compare's cached features).
    """

    net: nn.Module
    train: Batches
    val: Batches
    test: Batches | None = None
