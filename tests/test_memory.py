"""The in-memory path: decoding cache, identity with the streaming path, batch augmentation, the auto decision."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gapvision.data import memory
from gapvision.data.imageset import ImageSet
from gapvision.data.loaders import StreamingBatches
from gapvision.data.memory import BatchAugment, MemoryBatches, batch_augment, load_decoded, use_in_memory
from gapvision.data.sources import load_data
from gapvision.data.transforms import Preprocess, eval_transform, normalize
from gapvision.errors import ConfigError
from gapvision.train.pipeline import make_batches, train

PRE = Preprocess(3, 12, (0.3, 0.4, 0.5), (0.2, 0.25, 0.3))


@pytest.fixture
def files(tmp_path, write_image, monkeypatch):
    """Nine image files of different sizes in two classes; the cache in tmp_path; caching from 4 images on."""
    monkeypatch.setenv("GAPVISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(memory, "CACHE_MIN_IMAGES", 4)
    paths = [write_image(tmp_path / "d" / f"c{i % 2}" / f"{i}.png", size=(10 + i, 14 - i % 3), seed=i) for i in range(9)]
    return ImageSet(paths, [i % 2 for i in range(9)], ["c0", "c1"])


@pytest.fixture
def decodes(monkeypatch):
    """Counts calls of the decoder (a cache hit makes none)."""
    calls = []
    real = memory.decode_images
    monkeypatch.setattr(memory, "decode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_cache_miss_then_hit_then_rebuild_when_a_file_changes(files, decodes, write_image, tmp_path):
    first = load_decoded(files, PRE)
    assert first.shape == (9, 3, 12, 12) and first.dtype == torch.uint8 and len(decodes) == 1
    entries = list((tmp_path / "cache" / "memory").glob("*.safetensors"))
    assert len(entries) == 1
    assert torch.equal(load_decoded(files, PRE), first) and len(decodes) == 1  # hit: nothing decoded

    changed = files.items[4]
    stat = os.stat(changed)
    write_image(changed, size=(14, 12), seed=99)  # new pixels (and size)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = load_decoded(files, PRE)
    assert len(decodes) == 2  # the stale entry was not used
    assert not torch.equal(again[4], first[4]) and torch.equal(again[:4], first[:4])
    assert list((tmp_path / "cache" / "memory").glob("*.safetensors")) == entries  # rebuilt in place, no stale copy
    assert torch.equal(load_decoded(files, PRE), again) and len(decodes) == 2

    other = load_decoded(files, Preprocess(1, 8))  # another preprocessing is another entry
    assert other.shape == (9, 1, 8, 8) and len(decodes) == 3


def test_cache_entries_survive_damage_and_are_not_made_for_small_or_array_sets(files, decodes, tmp_path, monkeypatch):
    load_decoded(files, PRE)
    (entry,) = (tmp_path / "cache" / "memory").glob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    assert load_decoded(files, PRE).shape[0] == 9 and len(decodes) == 2  # a damaged entry is rebuilt
    arrays = ImageSet([np.full((5, 5, 3), i, np.uint8) for i in range(6)], [0, 1] * 3, ["a", "b"])
    assert memory.cache_identity(arrays, PRE) is None
    monkeypatch.setattr(memory, "CACHE_MIN_IMAGES", 100)
    load_decoded(files.subset([0, 1, 2]), PRE)
    assert len(list((tmp_path / "cache" / "memory").glob("*.safetensors"))) == 1


@pytest.mark.parametrize("source", ["files", "arrays"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_without_augmentation_equal_the_streaming_path(files, source, shuffle):
    images = files if source == "files" else load_data("builtin:shapes?n=40&size=20", val_split=0.2).train
    stream = StreamingBatches(images, eval_transform(PRE), 4, shuffle=shuffle, seed=7, workers=0)
    mem = MemoryBatches.from_images(images, PRE, 4, shuffle=shuffle, seed=7, workers=0)
    assert len(mem) == len(stream)
    for epoch in (0, 1):
        pairs = list(zip(stream.epoch(epoch), mem.epoch(epoch), strict=True))
        for (xs, ys), (xm, ym) in pairs:
            assert torch.equal(ys, ym) and torch.equal(xs, xm)


def test_batches_follow_a_ddp_sampler_like_the_streaming_path():
    from gapvision.distributed import GlobalBatchSampler, SamplerFactory

    images = load_data("builtin:shapes?n=40&size=16", val_split=0.2).train
    pre = Preprocess(3, 16)
    for rank in (0, 1):
        def shard(rank=rank):
            return SamplerFactory(lambda n, g: GlobalBatchSampler(n, 8, rank, 2, generator=g))
        stream = StreamingBatches(images, eval_transform(pre), 4, shuffle=True, seed=2, workers=0,
                                  sampler_factory=shard())
        mem = MemoryBatches.from_images(images, pre, 4, shuffle=True, seed=2, sampler_factory=shard())
        for (xs, ys), (xm, ym) in zip(stream.epoch(1), mem.epoch(1), strict=True):
            assert torch.equal(ys, ym) and torch.equal(xs, xm)


def _uint8_batch(n=6, s=10, seed=0):
    return torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_batch_augmentation_shapes_ranges_and_determinism():
    data = _uint8_batch(24, 16)
    pre = Preprocess(3, 16, (0.5, 0.4, 0.3), (0.2, 0.3, 0.25))
    aug = batch_augment("strong", 16)
    assert (aug.flip, aug.translate, aug.cutout) == ("alternate", 2, 4)

    def epoch(seed, e, bs=5):
        mb = MemoryBatches(data, np.arange(24) % 3, pre, bs, shuffle=True, seed=seed, augment=aug)
        return [b for b in mb.epoch(e)]

    batches = epoch(0, 0)
    assert [x.shape for x, _ in batches] == [(5, 3, 16, 16)] * 4 + [(4, 3, 16, 16)]
    x = torch.cat([b for b, _ in batches])
    lo = ((0 - torch.tensor(pre.mean)) / torch.tensor(pre.std)).view(1, 3, 1, 1)
    hi = ((1 - torch.tensor(pre.mean)) / torch.tensor(pre.std)).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and bool((x >= lo - 1e-5).all()) and bool((x <= hi + 1e-5).all())
    assert bool((x == 0).any())  # cutout squares hold the mean
    same = epoch(0, 0)
    assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(batches, same))
    assert not torch.equal(x, torch.cat([b for b, _ in epoch(1, 0)]))  # another seed
    assert not torch.equal(x, torch.cat([b for b, _ in epoch(0, 1)]))  # another epoch
    # an image's augmentation depends on (seed, epoch, image) only, not on the batch it lands in
    by_label = lambda bs: torch.cat([b for b, _ in epoch(0, 0, bs)])  # noqa: E731
    assert torch.equal(by_label(5), by_label(7))


def test_translation_reflects_and_alternating_flip_mirrors_every_other_epoch():
    data = _uint8_batch(8, 10, seed=3)
    idx = torch.arange(8)
    shift = torch.tensor([[2, -1], [-2, 2], [0, 0], [1, 1], [-1, -2], [2, 2], [0, -2], [-2, 0]])
    out = BatchAugment("none", translate=2).gather(data, idx, {"shift": shift})
    padded = F.pad(data.float(), (2, 2, 2, 2), mode="reflect")
    for i, (dy, dx) in enumerate(shift.tolist()):  # output pixel (r, c) = input (r + dy, c + dx), reflected
        assert torch.equal(out[i].float(), padded[i, :, 2 + dy: 12 + dy, 2 + dx: 12 + dx])

    flip = BatchAugment("alternate")
    even, odd = flip.draw(8, seed=5, epoch=2)["flip"], flip.draw(8, seed=5, epoch=3)["flip"]
    assert torch.equal(even, ~odd) and 0 < int(even.sum()) < 8
    assert torch.equal(flip.draw(8, seed=5, epoch=0)["flip"], even)
    x = flip.gather(data, idx, {"flip": even})
    for i in range(8):
        assert torch.equal(x[i], data[i].flip(-1) if even[i] else data[i])
    with pytest.raises(ConfigError):
        BatchAugment("sideways")


def test_cutout_sets_a_square_to_zero():
    aug = BatchAugment("none", cutout=4)
    x = torch.ones(2, 3, 12, 12)
    out = aug.erase(x, {"cutout": torch.tensor([[0.5, 0.5], [0.0, 1.0]])})
    assert int((out[0, 0] == 0).sum()) == 16 and bool((out[0, :, 4:8, 4:8] == 0).all())
    assert int((out[1, 0] == 0).sum()) == 4  # a corner square, clipped by the border
    assert bool((out[:, 0] == out[:, 2]).all())  # all channels alike


def test_in_memory_decision(monkeypatch):
    pre = Preprocess(3, 32)  # 3,072 bytes per image
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 4 * 3072 * 1000)
    assert use_in_memory("auto", 1000, pre) and not use_in_memory("auto", 1001, pre)
    assert use_in_memory("on", 10**9, pre) and not use_in_memory("off", 1, pre)
    with pytest.raises(ConfigError, match="--in-memory"):
        use_in_memory("sometimes", 1, pre)
    assert memory.available_memory() > 0


def test_make_batches_picks_the_path():
    images = load_data("builtin:shapes?n=40&size=16", val_split=0.2).train
    pre = Preprocess(3, 16)
    assert isinstance(make_batches(images, pre, 8, in_memory="on", train=True, augment="basic"), MemoryBatches)
    assert isinstance(make_batches(images, pre, 8, in_memory="off", workers=0), StreamingBatches)
    assert isinstance(make_batches(images, pre, 8), StreamingBatches)  # the default for other callers


def test_training_in_memory_without_augmentation_equals_streaming(tmp_path):
    opts = dict(model="fastnet_s", head="gap", epochs=2, img_size=16, batch_size=16, augment="none", workers=0,
                quiet=True, recipe="none", optimizer="sgd", lr=0.05, deterministic=True)
    runs = [train("builtin:shapes?n=64&size=16", out=tmp_path / mode, in_memory=mode, **opts) for mode in ("on", "off")]
    assert runs[0].config["data"]["in_memory"] == "on"
    for a, b in zip(runs[0].history, runs[1].history, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), Preprocess(3, 2)).shape == (1, 3, 2, 2)
