"""``--augment`` means one thing on both data paths: basic/strong give the same pixels streamed or in memory, so the
choice that ``--in-memory auto`` makes from the free memory does not change the model; the per-image torchvision
levels (jitter, trivial) always stream."""
from __future__ import annotations

import pytest
import torch

from gapvision.choices import AUGMENTS, BATCH_AUGMENTS, IMAGE_AUGMENTS
from gapvision.data.loaders import StreamingBatches
from gapvision.data.memory import MemoryBatches
from gapvision.data.sources import load_data
from gapvision.data.transforms import Preprocess
from gapvision.errors import ConfigError
from gapvision.train.pipeline import make_batches


@pytest.fixture(scope="module")
def images():
    return load_data("builtin:shapes?n=40&size=16", val_split=0.2).train


@pytest.mark.parametrize("augment", BATCH_AUGMENTS)
@pytest.mark.parametrize("workers", [0, 2])
def test_batch_augmentations_give_the_same_pixels_on_both_paths(images, augment, workers):
    pre = Preprocess(3, 16, (0.5, 0.4, 0.3), (0.2, 0.3, 0.25))
    mem = make_batches(images, pre, 7, train=True, augment=augment, seed=3, in_memory="on", workers=workers)
    stream = make_batches(images, pre, 7, train=True, augment=augment, seed=3, in_memory="off", workers=workers)
    assert isinstance(mem, MemoryBatches) and isinstance(stream, StreamingBatches)
    for epoch in (0, 1):
        a, b = list(mem.epoch(epoch)), list(stream.epoch(epoch))
        assert len(a) == len(b) == 6
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    plain = torch.cat([x for x, _ in make_batches(images, pre, 7, train=True, augment="none", seed=3).epoch(0)])
    assert not torch.equal(plain, torch.cat([x for x, _ in stream.epoch(0)]))  # it does augment


@pytest.mark.parametrize("augment", IMAGE_AUGMENTS)
def test_per_image_augmentations_stream_and_say_so_when_forced_into_memory(images, augment):
    pre = Preprocess(3, 16)
    assert isinstance(make_batches(images, pre, 8, train=True, augment=augment, in_memory="auto"), StreamingBatches)
    with pytest.raises(ConfigError, match=f"--augment {augment} runs torchvision's ops per image"):
        make_batches(images, pre, 8, train=True, augment=augment, in_memory="on")
    x, _ = next(iter(make_batches(images, pre, 8, train=True, augment=augment, workers=0).epoch(0)))
    assert x.shape == (8, 3, 16, 16)


def test_the_augment_names():
    assert AUGMENTS == ("none", *BATCH_AUGMENTS, *IMAGE_AUGMENTS)
    assert not set(BATCH_AUGMENTS) & set(IMAGE_AUGMENTS)
