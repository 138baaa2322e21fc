"""The in-memory fast path: every image decoded once into one uint8 N x C x S x S tensor, augmented a batch at a time.

Decoding goes through :func:`~gapvision.data.transforms.to_uint8`, the first step of the streaming path too, so batches
without augmentation are identical to :class:`~gapvision.data.loaders.StreamingBatches` batches (same order, same
values). Decoded file sets are cached on disk (``$GAPVISION_CACHE/memory``, default ``~/.cache/gapvision/memory``) as
safetensors, keyed by the file list, sizes, modification times and the :class:`Preprocess`; a changed file rebuilds
the entry. :class:`MemoryBatches` keeps the tensor on the training device (on CUDA the whole set lives on the GPU) and
augments whole batches with tensor ops (:class:`BatchAugment`: flip, translate with reflection, cutout). Each image's
augmentation in epoch ``e`` is a function of (seed, e, image index) alone, as on the streaming path.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..atomic import write_with
from ..choices import AUGMENTS, BATCH_AUGMENTS, IMAGE_AUGMENTS, IN_MEMORY_MODES
from ..errors import ConfigError
from .imageset import ImageSet
from .loaders import epoch_seed
from .images import read_rgb_jpeg
from .transforms import Preprocess, fit_uint8, normalize, to_uint8

RAM_FRACTION = 0.25  # auto: a split is kept in memory when its decoded size is at most this share of free memory
SMALL_DECODE = 64  # px: decoded sets this small are decoded by one thread
CACHE_MIN_IMAGES = 1024  # smaller file sets decode in about a second: not worth a cache entry
CACHE_FORMAT = "1"


# -- deciding --------------------------------------------------------------------------------------------------------
def decoded_nbytes(n: int, pre: Preprocess) -> int:
    """Bytes of ``n`` decoded images (uint8, C x S x S each)."""
    return int(n) * pre.channels * pre.img_size * pre.img_size


def available_memory(device: torch.device | str = "cpu") -> int:
    """Free memory in bytes: the GPU's for a CUDA device, else the system's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**31  # unknown: assume 2 GiB


def use_in_memory(mode: str, n: int, pre: Preprocess, device: torch.device | str = "cpu",
                  fraction: float = RAM_FRACTION) -> bool:
    """``on``/``off`` as given; ``auto``: when ``n`` decoded images take at most ``fraction`` of the free memory."""
    if mode not in IN_MEMORY_MODES:
        raise ConfigError(f"--in-memory must be auto, on or off (got {mode!r})")
    if mode != "auto":
        return mode == "on"
    return decoded_nbytes(n, pre) <= fraction * available_memory(device)


# -- decoding and the cache ------------------------------------------------------------------------------------------
def decode_images(images: ImageSet, pre: Preprocess, workers: int = -1) -> torch.Tensor:
    """Every image of ``images`` through :func:`to_uint8`, stacked: uint8 N x C x S x S. Threads decode chunks in
    parallel (Pillow and the resize release the GIL; no copies between processes); ``workers`` = threads, -1 = auto
    (one for outputs of at most SMALL_DECODE px). Plain RGB JPEGs take :func:`~gapvision.data.images.read_rgb_jpeg`."""
    out = torch.empty((len(images), pre.channels, pre.img_size, pre.img_size), dtype=torch.uint8)

    jpeg_lane = images.reader is None and pre.channels == 3 and not pre.bgr  # RGB JPEG files: read_rgb_jpeg

    def decode(chunk: range) -> None:
        for i in chunk:
            item = images.items[i]
            t = read_rgb_jpeg(item) if jpeg_lane and isinstance(item, (str, Path)) else None
            out[i] = fit_uint8(t, pre) if t is not None else to_uint8(images.load(i), pre)

    chunks = [range(i, min(i + 256, len(images))) for i in range(0, len(images), 256)]
    # auto: one thread for small outputs (small files: Python's share dominates and threads only contend for the
    # GIL, 2 to 2.4x slower with 2 on CIFAR-10's 32 px JPEGs: bench/decode_speed.py); threads for the resize of photos
    threads = (1 if pre.img_size <= SMALL_DECODE else min(4, os.cpu_count() or 1)) if workers < 0 else max(1, workers)
    if threads == 1 or len(chunks) == 1:
        for c in chunks:
            decode(c)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(decode, chunks))  # list(): re-raises the first error (a DataError naming the file)
    return out


def cache_dir() -> Path:
    """Where decoded sets are cached: ``$GAPVISION_CACHE/memory`` (default ``~/.cache/gapvision/memory``)."""
    root = os.environ.get("GAPVISION_CACHE") or Path.home() / ".cache" / "gapvision"
    return Path(root).expanduser() / "memory"


def cache_identity(images: ImageSet, pre: Preprocess) -> tuple[str, str] | None:
    """(entry name, stamp) of a set of image files: the name hashes the file list and the preprocessing, the stamp
    their sizes and modification times. None for sets that are not plain files (arrays, custom readers)."""
    if images.reader is not None or not len(images) or not all(isinstance(p, (str, Path)) for p in images.items):
        return None
    paths = [os.path.abspath(os.fspath(p)) for p in images.items]
    ident = hashlib.sha256(json.dumps([CACHE_FORMAT, pre.to_dict(), paths]).encode()).hexdigest()
    stamp = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        stamp.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
    return ident[:40], stamp.hexdigest()


def load_decoded(images: ImageSet, pre: Preprocess, *, workers: int = -1, cache: bool | str | Path = True,
                 log: Callable[[str], None] | None = None) -> torch.Tensor:
    """The decoded uint8 N x C x S x S tensor of ``images``: from the cache when its entry is current, else decoded
    (and cached when ``cache`` is true or a folder, for file sets of at least CACHE_MIN_IMAGES images)."""
    ident = cache_identity(images, pre) if cache and len(images) >= CACHE_MIN_IMAGES else None
    if ident is None:
        return decode_images(images, pre, workers)
    folder = Path(cache) if isinstance(cache, (str, Path)) else cache_dir()
    path = folder / f"{ident[0]}.safetensors"
    shape = [len(images), pre.channels, pre.img_size, pre.img_size]
    hit = _read_entry(path, ident[1], shape)
    if hit is not None:
        if log:
            log(f"in-memory: {len(images)} decoded images from the cache {path}")
        return hit
    data = decode_images(images, pre, workers)
    try:
        from safetensors.torch import save_file

        write_with(path, lambda tmp: save_file({"images": data}, str(tmp), metadata={"stamp": ident[1]}))
        if log:
            log(f"in-memory: decoded {len(images)} images ({data.numel() / 2**20:.0f} MiB), cached in {path}")
    except Exception as e:  # a read-only or full cache folder only costs the next run a decode
        if log:
            log(f"in-memory: decoded {len(images)} images; could not cache them in {folder} ({e})")
    return data


def _read_entry(path: Path, stamp: str, shape: list[int]) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("stamp") != stamp:
                return None
            data = f.get_tensor("images")
    except Exception:  # a damaged entry is rebuilt
        return None
    return data if list(data.shape) == shape and data.dtype == torch.uint8 else None


# -- batch augmentation ----------------------------------------------------------------------------------------------
@dataclass
class BatchAugment:
    """Augmentation of whole batches as tensor ops.

    ``flip``: ``alternate`` flips each image in every other epoch (a random half in even epochs, the other half in odd
    ones, after airbench), ``random`` flips a random half each epoch, ``none``. ``translate``: random shifts of up to
    that many pixels, the border filled by reflection. ``cutout``: a square of that side set to the mean (0 after
    normalisation). Only pixels of the image or the mean come out, so value ranges are preserved.
    """

    flip: str = "alternate"
    translate: int = 0
    cutout: int = 0

    def __post_init__(self) -> None:
        if self.flip not in ("alternate", "random", "none"):
            raise ConfigError(f"flip must be alternate, random or none (got {self.flip!r})")

    def draw(self, n: int, seed: int, epoch: int) -> dict[str, torch.Tensor]:
        """The parameters of every image (index 0..n-1) in ``epoch``: a function of (seed, epoch) alone."""
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch) + 2)
        params: dict[str, torch.Tensor] = {}
        if self.flip == "alternate":
            base = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(epoch_seed(seed, -1)))
            params["flip"] = (base ^ (epoch & 1)).bool()
        elif self.flip == "random":
            params["flip"] = torch.randint(0, 2, (n,), generator=g).bool()
        if self.translate:
            params["shift"] = torch.randint(-self.translate, self.translate + 1, (n, 2), generator=g)
        if self.cutout:
            params["cutout"] = torch.rand((n, 2), generator=g)
        return params

    def gather(self, data: torch.Tensor, idx: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flipped and shifted images ``idx`` of the uint8 N x C x S x S ``data`` in one gather (channels-last
        strides); ``params`` are this batch's rows of :meth:`draw`, on ``data``'s device."""
        s = data.shape[-1]
        ar = torch.arange(s, device=data.device)
        rows, cols = ar.expand(len(idx), s), ar.expand(len(idx), s)
        if "shift" in params:
            rows = _reflect(rows + params["shift"][:, :1], s)
            cols = _reflect(cols + params["shift"][:, 1:], s)
        if "flip" in params:
            cols = torch.where(params["flip"][:, None], s - 1 - cols, cols)
        out = data[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # B x S x S x C
        return out.permute(0, 3, 1, 2)

    def apply(self, data: torch.Tensor, idx: torch.Tensor, params: dict[str, torch.Tensor], scale: torch.Tensor,
              shift: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` of ``data`` augmented and normalised (``x * scale + shift``): what both data paths serve."""
        return self.erase(self.gather(data, idx, params).float().mul_(scale).add_(shift), params)

    def erase(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cutout on a normalised batch (the square becomes 0, the mean)."""
        if not self.cutout:
            return x
        s = x.shape[-1]
        half = self.cutout / 2
        centre = params["cutout"] * s  # B x 2, anywhere in the image (the square may be clipped by the border)
        ar = torch.arange(s, device=x.device, dtype=centre.dtype) + 0.5
        inside_r = (ar[None, :] - centre[:, :1]).abs() < half
        inside_c = (ar[None, :] - centre[:, 1:]).abs() < half
        keep = ~(inside_r[:, :, None] & inside_c[:, None, :])
        return x * keep[:, None].to(x.dtype)


def _reflect(q: torch.Tensor, s: int) -> torch.Tensor:
    """Reflection ("reflect" padding, no repeated edge) of positions ``q`` into 0..s-1."""
    period = 2 * (s - 1) if s > 1 else 1
    q = q.remainder(period)
    return torch.where(q >= s, period - q, q)


def batch_augment(level: str, img_size: int) -> BatchAugment | None:
    """``--augment`` as tensor ops, the same on both data paths: none; basic = alternating flip + translate by S/16
    (2 px at 32 px); strong = alternating flip + translate by S/8 + cutout of S/4. The per-image torchvision levels
    (jitter, trivial) have no batch form."""
    if level == "none":
        return None
    if level == "basic":
        return BatchAugment("alternate", translate=max(1, img_size // 16))
    if level == "strong":
        return BatchAugment("alternate", translate=max(1, img_size // 8), cutout=max(1, img_size // 4))
    if level in IMAGE_AUGMENTS:
        raise ConfigError(f"--augment {level} runs torchvision's ops per image, on the streaming path: use "
                          f"--in-memory auto or off with it, or --augment {' or '.join(BATCH_AUGMENTS)} in memory")
    raise ConfigError(f"unknown --augment {level!r}: choose {', '.join(AUGMENTS)}")


def scale_shift(pre: Preprocess, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``normalize`` as one multiply-add on 0-255 values: ``x * scale + shift`` (1 x C x 1 x 1 each)."""
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


class AugmentedImage:
    """A BatchAugment for the streaming path: ``(PIL image, its rows of BatchAugment.draw)`` -> the normalised tensor
    MemoryBatches gives that image in that epoch (the same pixels). Picklable for DataLoader workers."""

    def __init__(self, pre: Preprocess, augment: BatchAugment):
        self.pre, self.augment = pre, augment
        self.scale, self.shift = scale_shift(pre)

    def __call__(self, img: Any, params: dict[str, torch.Tensor]) -> torch.Tensor:
        t = to_uint8(img, self.pre)[None]
        return self.augment.apply(t, torch.zeros(1, dtype=torch.int64), params, self.scale, self.shift)[0]


# -- the batch source ------------------------------------------------------------------------------------------------
class _Sized:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class MemoryBatches:
    """Batches from a decoded uint8 tensor on ``device``: ``epoch(e)`` yields normalised (x, y) in the order the
    streaming path would use for the same seed (and ``sampler_factory``, the DDP hook), augmented by ``augment``."""

    def __init__(
        self,
        data: torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        pre: Preprocess,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: BatchAugment | None = None,
        device: torch.device | str | None = None,
        sampler_factory: Callable | None = None,
    ):
        if data.dtype != torch.uint8 or data.ndim != 4:
            raise ValueError("MemoryBatches needs a uint8 N x C x H x W tensor")
        self.device = torch.device(device) if device is not None else data.device
        self.data = data.to(self.device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(self.device)
        self.pre = pre
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.generator = torch.Generator()
        self.sampler = sampler_factory(_Sized(len(data)), self.generator) if sampler_factory else None
        self._scale, self._shift = scale_shift(pre, self.device)

    @classmethod
    def from_images(cls, images: ImageSet, pre: Preprocess, batch_size: int, *, workers: int = -1,
                    cache: bool | str | Path = True, log: Callable[[str], None] | None = None,
                    **kwargs) -> "MemoryBatches":
        """Decode (or load from the cache) ``images`` and serve them; ``kwargs`` as for the constructor."""
        return cls(load_decoded(images, pre, workers=workers, cache=cache, log=log), images.labels, pre, batch_size,
                   **kwargs)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.data)  # type: ignore[arg-type]
        return -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The image indices of ``epoch`` in the order StreamingBatches would draw them."""
        self.generator.manual_seed(epoch_seed(self.seed, epoch))
        if self.sampler is not None:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the DataLoader's base seed
            return torch.tensor(list(self.sampler), dtype=torch.int64)
        if not self.shuffle:
            return torch.arange(len(self.data))
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the DataLoader's base seed
        return torch.randperm(len(self.data), generator=self.generator)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(epoch)
        params = self.augment.draw(len(self.data), self.seed, epoch) if self.augment is not None else {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            yield self.batch(idx.to(self.device), {k: v[idx].to(self.device) for k, v in params.items()})

    def batch(self, idx: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx`` (augmented with their ``params``), normalised, and their labels."""
        if self.augment is None:
            x = normalize(self.data[idx], self.pre)
        else:
            x = self.augment.apply(self.data, idx, params, self._scale, self._shift)
        return x, self.labels[idx]
