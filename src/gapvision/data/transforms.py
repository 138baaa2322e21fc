"""Train/eval presets, in the spirit of torchvision's reference ``presets.py``.

Every image goes through the same first step, :func:`to_uint8`: convert to the model's mode (L or RGB, BGR for
Caffe models), resize to ``img_size`` x ``img_size`` and return a uint8 C x H x W tensor. The streaming path then
augments per image (torchvision.transforms.v2) and normalises; the in-memory fast path stores the uint8 tensors and
augments whole batches.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from ..choices import AUGMENTS, IMAGE_AUGMENTS, NORMALIZE_MODES  # noqa: F401 - NORMALIZE_MODES: presets + auto
from ..errors import ConfigError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
NORMALIZE_PRESETS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), False),
    # Caffe models: BGR order, 0-255 pixel values minus the mean, no std (std 1/255 on 0-1 values).
    "caffe": ((104 / 255, 117 / 255, 123 / 255), (1 / 255, 1 / 255, 1 / 255), True),
}


@dataclass
class Preprocess:
    """Everything needed to turn an image file into a model input. Stored in every run's config.json."""

    channels: int = 3
    img_size: int = 64
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    bgr: bool = False
    crop: float = 1.0  # central fraction of each side kept before the resize (0.875 = the usual ImageNet eval crop)
    interpolation: str = "bilinear"  # of the resize: bilinear, bicubic or nearest (timm models' pretrained configs)

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)[: self.channels] if len(self.mean) >= self.channels else tuple(self.mean)
        self.std = tuple(float(s) for s in self.std)[: self.channels] if len(self.std) >= self.channels else tuple(self.std)
        if not 0.1 <= float(self.crop) <= 1.0:
            raise ConfigError(f"--crop must be between 0.1 and 1 (got {self.crop})")
        if self.channels not in (1, 3):
            raise ConfigError(f"--channels must be 1 or 3 (got {self.channels})")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"unknown interpolation {self.interpolation!r}: choose {', '.join(INTERPOLATIONS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**{k: d[k] for k in ("channels", "img_size", "mean", "std", "bgr", "crop", "interpolation")
                     if k in d})


def preset_stats(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """Mean, std and BGR flag of a named normalisation preset, cut to ``channels``."""
    if name not in NORMALIZE_PRESETS:
        raise ConfigError(f"unknown --normalize {name!r}: choose auto, {', '.join(NORMALIZE_PRESETS)}")
    mean, std, bgr = NORMALIZE_PRESETS[name]
    if channels == 1:
        return (sum(mean) / 3,), (sum(std) / 3,), False
    return mean, std, bgr


def convert_mode(img: Image.Image, channels: int, bgr: bool = False) -> Image.Image:
    """Convert any PIL image to 'L' (channels=1) or 'RGB' (channels=3); BGR swaps channels for Caffe models."""
    mode = "L" if channels == 1 else "RGB"
    if img.mode != mode:
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Composite transparency onto white rather than letting it turn black.
            rgba = img.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(bg, rgba)
        img = img.convert(mode)
    if bgr and channels == 3:
        r, g, b = img.split()
        img = Image.merge("RGB", (b, g, r))
    return img


def to_uint8(img: Image.Image, pre: Preprocess, resize: bool = True) -> torch.Tensor:
    """The shared first step: mode conversion and (optionally) a central crop and square resize to ``pre.img_size``;
    uint8 C x H x W. With ``resize=False`` (class maps at native resolution) the image keeps its size and is not cropped.
    """
    return fit_uint8(TF.pil_to_tensor(convert_mode(img, pre.channels, pre.bgr)), pre, resize)


def fit_uint8(t: torch.Tensor, pre: Preprocess, resize: bool = True) -> torch.Tensor:
    """The geometric part of :func:`to_uint8` on a uint8 C x H x W tensor already in ``pre``'s channels."""
    if resize and pre.crop < 1.0:
        h, w = t.shape[-2:]
        t = TF.center_crop(t, [max(1, round(h * pre.crop)), max(1, round(w * pre.crop))])
    if resize and (t.shape[-1] != pre.img_size or t.shape[-2] != pre.img_size):
        t = TF.resize(t, [pre.img_size, pre.img_size], interpolation=InterpolationMode(pre.interpolation),
                      antialias=True)
    return t


def normalize(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 (or 0-1 float) tensor [..., C, H, W] -> normalised float32."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


def augmentation(level: str, img_size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision's per-image augmentation on uint8 tensors (train split, streaming path): ``jitter`` = flip, small
    rotation, colour jitter; ``trivial`` = random-resized crop, flip, affine, TrivialAugment. None for ``none``; the
    batch augmentations (basic, strong) are :func:`gapvision.data.memory.batch_augment`."""
    if level not in AUGMENTS:
        raise ConfigError(f"unknown --augment {level!r}: choose {', '.join(AUGMENTS)}")
    if level == "none":
        return None
    if level not in IMAGE_AUGMENTS:
        raise ConfigError(f"--augment {level} is a batch augmentation: build it with data.memory.batch_augment")
    ops: list = [v2.RandomHorizontalFlip(), v2.RandomRotation(10)]
    # ColorJitter() with no arguments does nothing; these values actually jitter.
    jitter = v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05)
    if level == "trivial":
        ops = [
            v2.RandomResizedCrop(img_size, scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1)),
            v2.TrivialAugmentWide(),
        ]
    else:
        ops.append(jitter)
    return v2.Compose(ops)


class ImageTransform:
    """PIL image -> normalised float tensor, with optional per-image augmentation. Picklable for DataLoader workers."""

    def __init__(self, pre: Preprocess, augment: str = "none"):
        self.pre = pre
        self.augment = augmentation(augment, pre.img_size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        t = to_uint8(img, self.pre)
        if self.augment is not None:
            if t.shape[0] == 1 and isinstance(self.augment, v2.Compose):
                t = self._augment_gray(t)
            else:
                t = self.augment(t)
        return normalize(t, self.pre)

    def _augment_gray(self, t: torch.Tensor) -> torch.Tensor:
        # Colour ops need 3 channels: augment a replicated RGB copy and take its first channel back.
        out = self.augment(t.expand(3, -1, -1).contiguous())
        return out[:1]


def eval_transform(pre: Preprocess) -> ImageTransform:
    return ImageTransform(pre, "none")


def train_transform(pre: Preprocess, augment: str = "jitter") -> ImageTransform:
    return ImageTransform(pre, augment)


def mean_std(images: Sequence[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 C x H x W tensors (for ``--normalize auto``)."""
    x = torch.stack([im.float().div(255) for im in images])
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
