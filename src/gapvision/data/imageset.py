"""ImageSet: a list of images (file paths or in-memory arrays) with integer labels, and the train/val/test splits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image


def _read_item(item: Any) -> Image.Image:
    """Turn one item (a path, a uint8 array HxW / HxWxC, or a PIL image) into a PIL image."""
    from .images import open_image

    if isinstance(item, (str, Path)):
        return open_image(item)
    if isinstance(item, Image.Image):
        return item
    arr = np.asarray(item)
    if arr.dtype != np.uint8:
        raise TypeError(f"in-memory images must be uint8 arrays, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(arr)


@dataclass
class ImageSet:
    """Images with labels. ``items[i]`` is a file path or a uint8 array; ``labels[i]`` indexes ``classes``.

    ``reader`` (optional) replaces the default item reader, e.g. for a torchvision dataset whose items are indices.
    """

    items: Sequence[Any]
    labels: np.ndarray
    classes: list[str]
    reader: Callable[[Any], Image.Image] | None = None
    names: Sequence[str] | None = None  # display names for error messages (defaults to str(path) or "#i")
    boxes: list | None = None  # optional ground-truth boxes per image (multi-object scenes)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.items) != len(self.labels):
            raise ValueError("items and labels differ in length")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> Image.Image:
        """Decode image ``i`` (any mode; callers convert)."""
        item = self.items[i]
        return self.reader(item) if self.reader is not None else _read_item(item)

    def name(self, i: int) -> str:
        """A human name for image ``i``: its path, or ``#i`` for in-memory images."""
        if self.names is not None:
            return str(self.names[i])
        item = self.items[i]
        return str(item) if isinstance(item, (str, Path)) else f"#{i}"

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageSet":
        idx = [int(i) for i in indices]
        return ImageSet(
            items=[self.items[i] for i in idx] if not isinstance(self.items, np.ndarray) else self.items[idx],
            labels=self.labels[idx],
            classes=list(self.classes),
            reader=self.reader,
            names=[self.names[i] for i in idx] if self.names is not None else None,
            boxes=[self.boxes[i] for i in idx] if self.boxes is not None else None,
            meta=dict(self.meta),
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


@dataclass
class DataSplits:
    """The splits one ``--data`` spec yields. ``test`` is None when the source has no test split."""

    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    classes: list[str]
    source: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. "skipped 3 unreadable images"

    def _repr_html_(self) -> str:  # notebooks: class counts per split and a sample grid (display.py)
        from .splits_display import splits_html

        return splits_html(self)
