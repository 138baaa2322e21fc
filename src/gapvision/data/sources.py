"""Turn a ``--data`` spec into labelled images: :func:`load_data` (train/val/test splits) and :func:`load_images`
(one set, for evaluate/predict). Validation and the clear errors for bad data live here, once.

Sources:
  * ``DIR`` -- one sub-folder per class; or ``DIR/train``, ``DIR/val`` and/or ``DIR/test`` each holding class folders.
  * ``DIR`` with ``annotations/*.xml`` (Pascal VOC) or ``FILE.json`` (COCO) -- images with ground-truth boxes
    (:mod:`.boxes`; ``ImageSet.boxes``), for localisation evaluation and calibration; they train as class folders.
  * ``FILE.csv`` / ``FILE.tsv`` -- a manifest with a header row: image path, label (first two columns by default).
  * ``builtin:shapes`` / ``builtin:digits`` / ``builtin:shapes-scenes`` -- offline procedural data (options after
    ``?``, e.g. ``builtin:shapes?n=2000&size=64``). shapes: 4 classes, ``n`` = 1600 train images of ``size`` = 64 px,
    ``val`` = n * val_split / (1 - val_split) (400) and ``test`` = n // 4 (400), each split drawn with its own seed
    derived from ``seed`` (a small CNN reaches ~99 % in a few epochs). digits: scikit-learn's 1797 digits at
    ``size`` = 32 px, a stratified ``test`` = 0.2 split, then val_split of the rest. shapes-scenes (load_images only):
    ``n`` = 200 scenes of ``size`` = 128 px with 1-3 objects each, the pixel scale of 64 px shapes (``seed=1``: other
    scenes, e.g. to calibrate on).
  * ``torchvision:NAME`` -- MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100, SVHN, FakeData.
  * ``(x, y)`` arrays from Python -- see :func:`load_arrays`.

Each prefix source is a function registered with :func:`register_source`; it returns named sets (``all``, or
``train``/``val``/``test``) that the common code checks, cleans and splits.
"""
from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError
from . import boxes, builtin
from .files import subdirs
from .images import IMAGE_EXTENSIONS, SKIP_BAD_HINT, image_files, is_grayscale, is_image_file, open_image
from .imageset import DataSplits, ImageSet
from .transforms import Preprocess, mean_std, preset_stats, to_uint8

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MANIFEST_EXTENSIONS = (".csv", ".tsv", ".txt")
SHAPES_DEFAULTS = {"n": 1600, "size": 64}  # + val = n * val_split / (1 - val_split) (400), test = n // 4 (400)
SCENES_DEFAULTS = {"n": 200, "size": 128, "min_objects": 1, "max_objects": 3, "seed": -1}  # seed -1: --seed
DIGITS_DEFAULTS = {"size": 32, "test": 0.2}
TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "KMNIST", "CIFAR10", "CIFAR100", "SVHN", "FakeData")


@dataclass
class LoadOptions:
    """The options every source may read (the keyword arguments of :func:`load_data`)."""

    val_split: float = 0.2
    seed: int = 0
    image_root: str | os.PathLike | None = None
    image_col: str | None = None
    label_col: str | None = None
    root: str | os.PathLike | None = None
    download: bool = False
    skip_bad: bool = False
    allow_outside_root: bool = False
    require_labels: bool = True  # False: a set without labels is acceptable (predict)
    check_files: bool = True  # the cheap up-front check for empty files (inspect turns it off to report them)


@dataclass
class Found:
    """What a source found: named sets sharing one class list (keys: ``all`` or ``train``/``val``/``test``)."""

    sets: dict[str, ImageSet]
    classes: list[str]
    notes: list[str] = field(default_factory=list)


SourceFn = Callable[[str, LoadOptions], Found]
_SOURCES: dict[str, SourceFn] = {}


def register_source(prefix: str) -> Callable[[SourceFn], SourceFn]:
    """Register ``fn(rest_of_spec, options) -> Found`` for specs written ``prefix:rest``."""

    def deco(fn: SourceFn) -> SourceFn:
        _SOURCES[prefix] = fn
        return fn

    return deco


# --------------------------------------------------------------------------------------------------- public API
def load_data(
    data: str | os.PathLike | tuple,
    *,
    val_split: float = 0.2,
    seed: int = 0,
    image_root: str | os.PathLike | None = None,
    image_col: str | None = None,
    label_col: str | None = None,
    root: str | os.PathLike | None = None,
    download: bool = False,
    skip_bad: bool = False,
    allow_outside_root: bool = False,
) -> DataSplits:
    """Load a data spec as train/val(/test) splits. A source without a val split gets a stratified one (seeded)."""
    opts = LoadOptions(val_split, seed, image_root, image_col, label_col, root, download, skip_bad, allow_outside_root)
    return load_with_options(data, opts)


def load_with_options(data: str | os.PathLike | tuple, opts: LoadOptions) -> DataSplits:
    """:func:`load_data` with the options as one object."""
    if isinstance(data, tuple):
        return load_arrays(*data, val_split=opts.val_split, seed=opts.seed)
    if not 0 <= opts.val_split < 1:
        raise ConfigError(f"--val-split must be at least 0 and below 1 (got {opts.val_split})")
    return _make_splits(_find(str(data), opts), opts, source=str(data))


def load_split(data: str | os.PathLike, split: str, *, classes: Sequence[str] | None = None,
               max_images: int | None = None, **options: Any) -> ImageSet:
    """The ``split`` (train, val or test) of ``data`` as :func:`load_data` makes it with ``options`` -- with a run's
    recorded ``val_split`` and ``seed`` (``Run.split_options``), the very images that run trained or validated on --
    its labels mapped onto ``classes`` when given; a one-line error when ``data`` has no such split."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"unknown --split {split!r}: choose train, val or test")
    splits = load_data(data, **options)
    if max_images:  # a run trained on a capped sample (compare --max-images): the same sample
        splits = limit_images(splits, int(max_images), int(options.get("seed", 0)))
    imgs = getattr(splits, split)
    if imgs is None:
        raise DataError(f"{data} has no {split} split (a folder without a test/ sub-folder has none): pass --split "
                        "train or --split val, or leave --split out (its test or val split, else every image)")
    return _map_to_classes(imgs, classes, str(data)) if classes is not None else imgs


def load_images(
    data: str | os.PathLike | tuple,
    *,
    split: str | Sequence[str] = "test",
    classes: Sequence[str] | None = None,
    seed: int = 0,
    image_root: str | os.PathLike | None = None,
    image_col: str | None = None,
    label_col: str | None = None,
    root: str | os.PathLike | None = None,
    download: bool = False,
    skip_bad: bool = False,
    allow_outside_root: bool = False,
    val_split: float | None = None,
) -> ImageSet:
    """Load one set of images (for evaluate/predict); ``val_split`` is accepted and ignored, so that one set of
    options serves both :func:`load_data` and this.

    A folder of class folders or a manifest gives all its images; a source with splits gives ``split`` (``test`` by
    default; a sequence: the first of them it has), named in ``meta["split"]`` (``all`` for every image). A single
    image file or a folder of loose images gives an unlabelled set (labels -1,
    ``meta["labeled"] = False``). With ``classes`` (a model's class list) labels are mapped onto those classes.
    """
    if isinstance(data, tuple):
        x, y, *names = data
        labels, class_list = _as_labels(y, names[0] if names else classes, len(x), "y")
        imgs = ImageSet(_as_uint8_images(x, "x"), labels, class_list, meta={"source": "arrays"})
        return _map_to_classes(imgs, classes, "arrays") if classes is not None else imgs
    opts = LoadOptions(0.0, seed, image_root, image_col, label_col, root, download, skip_bad, allow_outside_root,
                       require_labels=False)
    spec = str(data)
    found = _find(spec, opts)
    wanted = [split] if isinstance(split, str) else list(split)
    chosen = "all" if "all" in found.sets else next((s for s in wanted if s in found.sets), None)
    if chosen is None:
        has = ", ".join(found.sets)
        raise DataError(f"{spec} has no {' or '.join(map(repr, wanted))} split (it has: {has}): pass --split with one "
                        f"of {has}")
    imgs = found.sets[chosen]
    imgs.meta["split"] = chosen
    imgs = _drop_unreadable(imgs, opts, found.notes) if opts.skip_bad else imgs
    imgs.meta.setdefault("notes", []).extend(found.notes)
    imgs.meta["source"] = spec
    if classes is not None:
        if imgs.meta.get("labeled", True):
            imgs = _map_to_classes(imgs, classes, spec)
        else:
            imgs.classes = list(classes)
    return imgs


def load_arrays(
    x: Any,
    y: Any,
    classes: Sequence[str] | None = None,
    *,
    val_split: float = 0.2,
    seed: int = 0,
    x_test: Any = None,
    y_test: Any = None,
) -> DataSplits:
    """In-memory images: ``x`` is N x H x W or N x H x W x C (uint8, or float in [0, 1]; N x C x H x W tensors are
    accepted too), ``y`` class indices or label strings. Splits off a stratified val set; ``x_test``/``y_test``
    become the test split."""
    if not 0 <= val_split < 1:
        raise ConfigError(f"--val-split must be at least 0 and below 1 (got {val_split})")
    x_arr = _as_uint8_images(x, "x")
    labels, class_list = _as_labels(y, classes, len(x_arr), "y")
    sets = {"train": ImageSet(x_arr, labels, class_list)}
    if x_test is not None:
        xt = _as_uint8_images(x_test, "x_test")
        yt, _ = _as_labels(y_test, class_list, len(xt), "y_test")
        sets["test"] = ImageSet(xt, yt, class_list)
    found = Found(sets, class_list)
    return _make_splits(found, LoadOptions(val_split=val_split, seed=seed), source="arrays")


def stratified_split(
    labels: np.ndarray, classes: Sequence[str], fraction: float, seed: int, what: str = "validation"
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, held_out) with ``fraction`` of every class held out (at least one per class)."""
    labels = np.asarray(labels)
    if fraction <= 0:
        return np.arange(len(labels)), np.arange(0)
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c, name in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        if len(idx) < 2:
            raise DataError(
                f"class {name!r} has only {len(idx)} image; a {what} split needs at least 2 per class: "
                f"add images to it or pass --val-split 0"
            )
        n_held = min(max(int(round(len(idx) * fraction)), 1), len(idx) - 1)
        perm = rng.permutation(idx)
        held.append(perm[:n_held])
        keep.append(perm[n_held:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.arange(0)  # noqa: E731
    return cat(keep), cat(held)


def limit_images(splits: DataSplits, max_images: int, seed: int) -> DataSplits:
    """A stratified sample: at most ``max_images`` training images, and a quarter as many for val and test."""
    def cap(images, n):
        if images is None or len(images) <= n:
            return images
        _, pick = stratified_split(images.labels, splits.classes, n / len(images), seed, what="--max-images sample")
        return images.subset(pick)

    small = max(max_images // 4, 2 * len(splits.classes))
    return DataSplits(cap(splits.train, max_images), cap(splits.val, small), cap(splits.test, small),
                      list(splits.classes), splits.source, list(splits.notes))


def resolve_preprocess(
    splits: DataSplits | ImageSet,
    channels: int | str = "auto",
    img_size: int | None = None,
    normalize: str = "auto",
    sample: int = 256,
    seed: int = 0,
    max_size: int = 224,
) -> Preprocess:
    """Choose channels, image size and normalisation from a sample of the training images (deterministic).

    channels ``auto``: 1 when every sampled image is grey, else 3. img_size None: the source's own size, else the
    median longer side clamped to [32, ``max_size``] (the model's native size). normalize ``auto``: per-channel mean/std of the sampled images after
    :func:`to_uint8`; ``imagenet``/``half``/``caffe`` presets; ``none``: mean 0, std 1.
    """
    train = splits.train if isinstance(splits, DataSplits) else splits
    if len(train) == 0:
        raise DataError("no training images to choose preprocessing from")
    ch = _parse_channels(channels)
    if img_size is not None and (int(img_size) < 8):
        raise ConfigError(f"--img-size must be at least 8 (got {img_size})")
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[: max(1, sample)])
    cache: list[Image.Image] = []

    def images() -> list[Image.Image]:
        if not cache:
            cache.extend(train.load(int(i)) for i in pick)
        return cache

    if ch is None:
        ch = train.meta.get("channels") or (1 if all(is_grayscale(im) for im in images()) else 3)
    size = int(img_size) if img_size is not None else train.meta.get("img_size")
    if size is None:
        size = int(np.clip(np.median([max(im.size) for im in images()]), min(32, max_size), max_size))
    bgr = False
    if normalize == "auto":
        probe = Preprocess(channels=ch, img_size=size)
        mean, std = mean_std([to_uint8(im, probe) for im in images()])
    elif normalize == "none":
        mean, std = (0.0,) * ch, (1.0,) * ch
    else:
        mean, std, bgr = preset_stats(normalize, ch)
    return Preprocess(channels=ch, img_size=size, mean=mean, std=std, bgr=bgr)


# --------------------------------------------------------------------------------------------------- dispatch
def _find(spec: str, opts: LoadOptions) -> Found:
    path = Path(spec).expanduser()
    if path.is_dir():
        if boxes.find_annotation_dir(path) is not None:
            return _annotated(*boxes.load_voc(path))
        return _folder_source(path, opts)
    if path.is_file():
        if path.suffix.lower() in MANIFEST_EXTENSIONS:
            return _manifest_source(path, opts)
        if path.suffix.lower() == ".json":
            return _annotated(*boxes.load_coco(path, opts.image_root))
        if is_image_file(path) and not opts.require_labels:
            return Found({"all": _unlabeled([str(path)])}, [])
        raise DataError(f"{spec} is a file but not a .csv/.tsv manifest: pass a folder, a manifest or builtin:shapes")
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in _SOURCES:
        return _SOURCES[prefix](rest, opts)
    known = ", ".join(f"{p}:" for p in sorted(_SOURCES))
    if sep and len(prefix) > 1 and "/" not in prefix and "\\" not in prefix:
        raise DataError(f"unknown data source prefix {prefix + ':'!r} in {spec!r}: use a folder, a .csv/.tsv manifest, "
                        f"or one of {known}")
    raise DataError(f"data {spec} not found: pass a folder with one sub-folder per class, a .csv/.tsv manifest, "
                    f"or one of {known} (e.g. builtin:shapes)")


def _annotated(imgs: ImageSet, notes: list[str]) -> Found:
    """A VOC folder or COCO file (see :mod:`.boxes`): one set with ground-truth boxes."""
    return Found({"all": imgs}, list(imgs.classes), notes)


def _make_splits(found: Found, opts: LoadOptions, source: str) -> DataSplits:
    """Check, clean and split what a source found into DataSplits."""
    notes = list(found.notes)
    sets = {k: _drop_unreadable(s, opts, notes) if opts.skip_bad else s for k, s in found.sets.items()}
    if "all" in sets:
        sets["train"] = sets.pop("all")
    if "train" not in sets:
        raise DataError(f"{source} has no training images (found splits: {', '.join(sets) or 'none'}): add a train/ "
                        f"folder")
    classes = found.classes
    train = sets["train"]
    if len(train) == 0:
        raise DataError(f"no training images in {source}")
    present = sorted(set(train.labels.tolist()))
    if len(present) < 2:
        only = classes[present[0]] if present else "none"
        raise DataError(f"only one class ({only!r}) in {source}: a classifier needs at least 2 classes "
                        f"(one sub-folder or label per class)")
    for name in ("val", "test"):
        if name in sets and len(sets[name]):
            unseen = sorted(set(sets[name].labels.tolist()) - set(present))
            if unseen:
                raise DataError(f"{name} labels not in the training data of {source}: "
                                f"{', '.join(repr(classes[i]) for i in unseen)}: add training images for them or "
                                f"remove them from {name}")
    if "val" not in sets:
        keep, held = stratified_split(train.labels, classes, opts.val_split, opts.seed)
        sets["train"], sets["val"] = train.subset(keep), train.subset(held)
    return DataSplits(sets["train"], sets["val"], sets.get("test"), list(classes), source, notes)


def _drop_unreadable(imgs: ImageSet, opts: LoadOptions, notes: list[str]) -> ImageSet:
    """skip_bad: decode every file image; drop those that fail and add a note."""
    if isinstance(imgs.items, np.ndarray):
        return imgs
    paths = [i for i, item in enumerate(imgs.items) if isinstance(item, (str, Path))]
    if not paths:
        return imgs

    def readable(i: int) -> bool:
        try:
            open_image(imgs.items[i])
            return True
        except DataError:
            return False

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        ok = dict(zip(paths, pool.map(readable, paths)))
    bad = [i for i in paths if not ok[i]]
    if not bad:
        return imgs
    notes.append(f"skipped {_count(len(bad), 'unreadable image')} (first: {imgs.name(bad[0])})")
    bad_set = set(bad)
    kept = imgs.subset([i for i in range(len(imgs)) if i not in bad_set])
    if imgs.meta.get("labeled", True):
        lost = sorted(set(imgs.labels.tolist()) - set(kept.labels.tolist()))
        if lost:
            raise DataError(f"every image of class {imgs.classes[lost[0]]!r} is unreadable (first: "
                            f"{imgs.name(bad[0])}): fix the files or remove the class")
    return kept


def _map_to_classes(imgs: ImageSet, classes: Sequence[str], source: str) -> ImageSet:
    """Re-index labels onto ``classes`` (e.g. a trained model's); labels it does not know are an error."""
    classes = list(classes)
    if list(imgs.classes) == classes:
        return imgs
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({imgs.classes[l] for l in imgs.labels.tolist() if imgs.classes[l] not in index})
    if unknown:
        raise DataError(f"labels in {source} that the model does not know: {', '.join(map(repr, unknown))} "
                        f"(model classes: {', '.join(classes)})")
    out = imgs.subset(range(len(imgs)))
    out.labels = np.array([index[imgs.classes[l]] for l in imgs.labels.tolist()], dtype=np.int64)
    if out.boxes is not None:
        unknown = sorted({imgs.classes[k] for objs in out.boxes for k, _ in objs} - set(index))
        if unknown:
            raise DataError(f"boxes in {source} of classes the model does not know: {', '.join(map(repr, unknown))} "
                            f"(model classes: {', '.join(classes)})")
        out.boxes = [[(index[imgs.classes[k]], box) for k, box in objs] for objs in out.boxes]
    out.classes = classes
    return out


# --------------------------------------------------------------------------------------------------- helpers
def _unlabeled(paths: list[str]) -> ImageSet:
    return ImageSet(paths, np.full(len(paths), -1, dtype=np.int64), [], meta={"labeled": False})


def _from_label_names(
    split_items: dict[str, tuple[list[Any], list[str]]], source: str
) -> Found:
    """Named sets from (items, label strings); classes = sorted training labels; unseen val/test labels error."""
    base = "all" if "all" in split_items else "train"
    if base not in split_items:
        classes = sorted({l for _, labels in split_items.values() for l in labels})
    else:
        classes = sorted(set(split_items[base][1]))
    index = {c: i for i, c in enumerate(classes)}
    sets = {}
    for name, (items, labels) in split_items.items():
        unseen = sorted(set(labels) - set(index))
        if unseen:
            raise DataError(f"{name} labels not in the training data of {source}: {', '.join(map(repr, unseen))}: "
                            f"add training images for them or remove them from {name}")
        sets[name] = ImageSet(list(items), np.array([index[l] for l in labels], dtype=np.int64), list(classes))
    return Found(sets, classes)


def _check_not_empty_files(paths: list[str], opts: LoadOptions, notes: list[str]) -> list[str]:
    """The cheap up-front check: zero-byte files, and names that lead nowhere (a broken symbolic link, a file removed
    since the listing), are an error (or skipped with skip_bad)."""
    if not opts.check_files:
        return paths

    def size(p: str) -> int | None:
        try:
            return os.path.getsize(p)
        except OSError:
            return None

    sizes = {p: size(p) for p in paths}
    gone = [p for p, n in sizes.items() if n is None]
    empty = [p for p, n in sizes.items() if n == 0]
    if not gone and not empty:
        return paths
    for bad, what in ((gone, "leads to no file (a broken link, or removed)"), (empty, "is empty (0 bytes)")):
        if bad and not opts.skip_bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(f"image {bad[0]} {what}{more}: {SKIP_BAD_HINT}")
    if gone:
        notes.append(f"skipped {_count(len(gone), 'image name')} that lead{'s' * (len(gone) == 1)} to no file "
                     f"(first: {gone[0]})")
    if empty:
        notes.append(f"skipped {_count(len(empty), 'empty image file')} (first: {empty[0]})")
    drop = set(gone) | set(empty)
    return [p for p in paths if p not in drop]


def _count(n: int, noun: str) -> str:
    """``1 image``, ``2 images``: a count with its noun (the last word gets the plural s)."""
    return f"{n} {noun}{'s' * (n != 1)}"


def _parse_channels(channels: int | str) -> int | None:
    if channels in ("auto", None):
        return None
    try:
        ch = int(channels)
    except (TypeError, ValueError):
        ch = 0
    if ch not in (1, 3):
        raise ConfigError(f"--channels must be auto, 1 or 3 (got {channels!r})")
    return ch


def _as_uint8_images(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 4 and arr.shape[-1] not in (1, 3, 4) and arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)  # N x C x H x W -> N x H x W x C
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3, 4)):
        raise DataError(f"{what} must be N x H x W or N x H x W x C images (C = 1, 3 or 4), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(np.flatnonzero(~finite.reshape(len(arr), -1).all(axis=1))[0])
            raise DataError(f"{what} holds NaN or infinite values (first in image {bad}): fix or drop those images")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise DataError(f"float images in {what} must lie in [0, 1] (got {arr.min():.3g}..{arr.max():.3g}): "
                            f"scale them or pass uint8")
        return np.rint(arr * 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"integer images in {what} must lie in 0..255 (got {arr.min()}..{arr.max()}): scale "
                            f"them to uint8, or pass floats in [0, 1]")
        return np.ascontiguousarray(arr.astype(np.uint8) * (255 if arr.dtype == np.bool_ else 1))
    raise DataError(f"{what} must be uint8, integers in 0..255 or floats in [0, 1] (got {arr.dtype})")


def _as_labels(y: Any, classes: Sequence[str] | None, n: int, what: str) -> tuple[np.ndarray, list[str]]:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"{what} must hold one label per image ({n}), got shape {arr.shape}")
    if arr.dtype.kind in ("U", "S", "O"):
        names = [(v.decode() if isinstance(v, bytes) else str(v)).strip() for v in arr.tolist()]
        class_list = list(classes) if classes is not None else sorted(set(names))
        index = {c: i for i, c in enumerate(class_list)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise DataError(f"labels in {what} not among the classes: {', '.join(map(repr, unknown))}")
        return np.array([index[v] for v in names], dtype=np.int64), class_list
    if arr.dtype.kind not in "iu":
        raise DataError(f"{what} must hold integer class indices or label strings (got {arr.dtype})")
    arr = arr.astype(np.int64)
    if n and arr.min() < 0:
        raise DataError(f"{what} holds a negative class index ({arr.min()})")
    top = int(arr.max()) + 1 if n else 0
    class_list = [str(c) for c in classes] if classes is not None else [str(i) for i in range(top)]
    if top > len(class_list):
        raise DataError(f"{what} holds class index {top - 1} but only {len(class_list)} classes are named")
    return arr, class_list


def _parse_options(rest: str, defaults: dict, spec: str) -> tuple[str, dict]:
    """``name?k=v&k=v`` -> (name, options with the defaults' types); unknown keys are an error."""
    name, _, query = rest.partition("?")
    out = dict(defaults)
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in defaults:
            raise DataError(f"unknown option {key!r} in {spec!r}: choose from {', '.join(defaults) or 'none'}")
        kind = type(defaults[key]) if defaults[key] is not None else int
        try:
            out[key] = kind(value)
        except ValueError:
            what = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(kind.__name__,
                                                                                         kind.__name__)
            raise DataError(f"option {key}={value!r} in {spec!r} must be {what}") from None
    return name, out


def _derived_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------------- folders
_subdirs = subdirs  # the folder source's listing (data/files.py), shared with the box annotations (data/boxes.py)
_images_under = image_files


def _class_folders(path: Path, opts: LoadOptions, notes: list[str]) -> tuple[list[str], list[str]]:
    """(paths, labels) from ``path/<class>/...``; a class folder without images is an error; files of other types
    and symlinked folders, which the walker passes over, are counted in a note."""
    items: list[str] = []
    labels: list[str] = []
    passed_over: list[str] = []
    per_class = {d: _images_under(d, passed_over) for d in _subdirs(path)}
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    if not any(per_class.values()):
        raise DataError(f"no images found under {path} (looked for {extensions}): expected one sub-folder of "
                        f"images per class")
    for d, files in per_class.items():
        if not files:
            raise DataError(f"class folder {d} has no images ({extensions}): add images or remove the folder")
        files = _check_not_empty_files(files, opts, notes)
        items += files
        labels += [d.name] * len(files)
    if passed_over:
        folders = sum(p.endswith("/") for p in passed_over)
        files = len(passed_over) - folders
        what = ([f"{_count(files, 'file')} of other types"] if files else []) + \
            ([f"{_count(folders, 'symlinked folder')} (not entered)"] if folders else [])
        notes.append(f"ignored {' and '.join(what)} under {path} (first: {passed_over[0]}); images are {extensions}")
    return items, labels


def _folder_source(path: Path, opts: LoadOptions) -> Found:
    notes: list[str] = []
    subdirs = _subdirs(path)
    split_dirs = {SPLIT_DIRS[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_DIRS and _subdirs(d)}
    loose = [f for f in os.listdir(path) if is_image_file(f) and (path / f).is_file()]
    if split_dirs and "train" not in split_dirs and opts.require_labels:
        names = ", ".join(f"{d.name}/" for d in split_dirs.values())
        raise DataError(f"{path} has {names} but no train/ folder: add train/<class>/ images")
    if split_dirs:
        extra = [d.name for d in subdirs if d.name.lower() not in SPLIT_DIRS]
        if extra:
            notes.append(f"ignored folders beside the splits in {path}: {', '.join(extra)}")
        found = _from_label_names({k: _class_folders(d, opts, notes) for k, d in split_dirs.items()}, str(path))
    elif subdirs:
        items, labels = _class_folders(path, opts, notes)
        if loose:
            notes.append(f"ignored {_count(len(loose), 'image')} directly in {path} (not in a class folder)")
        found = _from_label_names({"all": (items, labels)}, str(path))
    elif loose and not opts.require_labels:
        files = _check_not_empty_files(sorted(str(path / f) for f in loose), opts, notes)
        found = Found({"all": _unlabeled(files)}, [])
    elif loose:
        raise DataError(f"{path} holds images but no class folders: put the images of each class in its own "
                        f"sub-folder ({path}/<class>/<image>), or list them in a .csv manifest")
    else:
        raise DataError(f"no images found under {path}: expected one sub-folder of images per class")
    found.notes = notes + found.notes
    return found


# --------------------------------------------------------------------------------------------------- manifests
def _read_manifest_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells)]) with the delimiter chosen by extension, or sniffed from the header."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"manifest {path} is not UTF-8 text ({e}): save it as UTF-8") from e
    first_line = text.replace("\r", "\n").split("\n", 1)[0]  # not splitlines(): labels may hold U+2028, U+0085...
    if not first_line.strip():
        raise DataError(f"manifest {path} is empty: it needs a header row (e.g. file_name,label) and one row per image")
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    if delim not in first_line:
        delim = next((d for d in ("\t", ",", ";", "|") if d in first_line), delim)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    header = [h.strip() for h in next(reader)]
    rows = [(reader.line_num, [c.strip() for c in row]) for row in reader if any(c.strip() for c in row)]
    return header, rows


#: header names that say which column holds the image path and which the label (compared case-insensitively);
#: without one of them the first column is the image and the next the label
IMAGE_COLUMN_NAMES = ("file_name", "filename", "file", "image", "image_path", "image_name", "img", "img_path",
                      "path", "filepath", "file_path")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "class_name", "category", "target", "expression", "y")


def _column(header: list[str], wanted: str | None, default: int | None, path: Path, what: str) -> int | None:
    if wanted is None:
        return default if default is not None and default < len(header) else None
    if wanted in header:
        return header.index(wanted)
    raise DataError(f"manifest {path} has no {what} column {wanted!r}: its columns are {', '.join(header)}")


def _named_column(header: list[str], names: Sequence[str], taken: int | None = None) -> int | None:
    """The first column whose header is one of ``names`` (case-insensitively), other than ``taken``."""
    lowered = [h.lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered and lowered.index(n) != taken), None)


def _default_columns(header: list[str], opts: LoadOptions, path: Path) -> tuple[int | None, int | None]:
    """(image column, label column): ``--image-col`` / ``--label-col`` when given, else the columns named like an
    image path and a label (:data:`IMAGE_COLUMN_NAMES`, :data:`LABEL_COLUMN_NAMES`), else the first column and the
    next free one."""
    named_img = _named_column(header, IMAGE_COLUMN_NAMES) if opts.image_col is None else None
    img_c = _column(header, opts.image_col, 0 if named_img is None else named_img, path, "image")
    named_lab = _named_column(header, LABEL_COLUMN_NAMES, img_c) if opts.label_col is None else None
    free = next((i for i in range(len(header)) if i != img_c), None)
    lab_c = _column(header, opts.label_col, free if named_lab is None else named_lab, path, "label")
    return img_c, lab_c


def _without_header(header: list[str], rows: list[tuple[int, list[str]]], opts: LoadOptions, path: Path,
                    notes: list[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A manifest whose first line already lists an image (its image cell ends in an image extension) has no header:
    that line is read as a row, the columns are called ``column1``, ``column2``..., and a note says so."""
    cell = header[0] if opts.image_col is None else None
    if cell is None or not is_image_file(cell.replace("\\", "/")):
        return header, rows
    notes.append(f"{path.name} has no header row: its first line is read as an image, in the first column, with "
                 f"its label in the second (a header row such as file_name,label names them)")
    return [f"column{i + 1}" for i in range(len(header))], [(1, header), *rows]


def _not_found_hint(rel: str) -> str:
    """What may be wrong with a manifest path that is not under the image folder."""
    if Path(rel).is_file():
        return f"; it is there from the current folder: pass --image-root {Path.cwd()}"
    return ""


def _guess_image_dir(manifest: Path, first: str) -> Path | None:
    """train_master.tsv listing 'x.jpg' with the images in train/: return that folder when the file is there."""
    candidate = manifest.parent / manifest.stem.split("_")[0]
    return candidate if (candidate / first).is_file() else None


def _manifest_source(path: Path, opts: LoadOptions) -> Found:
    notes: list[str] = []
    header, rows = _without_header(*_read_manifest_rows(path), opts, path, notes)
    img_c, lab_c = _default_columns(header, opts, path)
    if lab_c is None and opts.require_labels:
        raise DataError(f"manifest {path} has no label column (columns: {', '.join(header)}): add one, or pass "
                        f"--label-col")
    split_c = next((i for i, h in enumerate(header) if h.lower() == "split" and i not in (img_c, lab_c)), None)
    if not rows:
        raise DataError(f"manifest {path} has a header but no rows")
    for line, cells in rows:
        if len(cells) != len(header):
            raise DataError(f"manifest {path} row {line}: expected {len(header)} columns ({', '.join(header)}), "
                            f"got {len(cells)}: fix the row (quote values that contain the delimiter)")
        if not cells[img_c] or (lab_c is not None and not cells[lab_c]):
            raise DataError(f"manifest {path} row {line}: empty {'image path' if not cells[img_c] else 'label'}")

    data_root = Path(opts.image_root).expanduser() if opts.image_root else path.parent
    base = data_root
    first = rows[0][1][img_c]
    if opts.image_root is None and not (base / first).is_file():
        guessed = _guess_image_dir(path, first)
        if guessed is not None:
            base = guessed
            notes.append(f"images of {path.name} found in {guessed}/ (pass --image-root to set it explicitly)")
    root_abs = os.path.normpath(os.path.abspath(data_root))
    root_real = os.path.realpath(data_root)

    seen: dict[str, tuple[int, str]] = {}
    label_rows: dict[tuple[str, str], int] = {}  # (split, label) -> first row, for errors that name a row
    per_split: dict[str, tuple[list[str], list[str]]] = {}
    dup_rows, missing, backslashed = [], [], []
    for line, cells in rows:
        rel, label = cells[img_c], (cells[lab_c] if lab_c is not None else "")
        full = os.path.normpath(os.path.abspath(base / rel))
        if "\\" in rel and os.sep != "\\" and not os.path.isfile(full):  # a path written on Windows
            posix = os.path.normpath(os.path.abspath(base / rel.replace("\\", "/")))
            if os.path.isfile(posix):
                full = posix
                backslashed.append(line)
        if not opts.allow_outside_root and os.path.commonpath([root_abs, full]) != root_abs:
            raise DataError(f"manifest {path} row {line}: {rel!r} points outside the data folder {data_root}: move "
                            f"the image inside it, set --image-root, or pass --allow-outside-root")
        if not opts.allow_outside_root and os.path.commonpath([root_real, os.path.realpath(full)]) != root_real:
            raise DataError(f"manifest {path} row {line}: {rel!r} is a symbolic link to {os.path.realpath(full)}, "
                            f"outside the data folder {data_root}: copy the image inside it, or pass "
                            f"--allow-outside-root")
        if full in seen:
            first_line, first_label = seen[full]
            if first_label != label:
                raise DataError(f"manifest {path} rows {first_line} and {line}: {rel!r} is listed with two labels "
                                f"({first_label!r} and {label!r}): keep one")
            dup_rows.append(line)
            continue
        seen[full] = (line, label)
        if not os.path.isfile(full):
            if not opts.skip_bad:
                raise DataError(f"manifest {path} row {line}: image {rel!r} not found (looked in {base}): fix the "
                                f"path, set --image-root, or pass --skip-bad{_not_found_hint(rel)}")
            missing.append((line, rel))
            continue
        split = _split_name(cells[split_c], path, line) if split_c is not None else "all"
        items, labels = per_split.setdefault(split, ([], []))
        items.append(full)
        labels.append(label)
        label_rows.setdefault((split, label), line)
    if backslashed:
        notes.append(f"read the Windows paths (with \\) of {path.name} with / (first: row {backslashed[0]})")
    if dup_rows:
        notes.append(f"dropped {_count(len(dup_rows), 'duplicate row')} of {path.name} (first: row {dup_rows[0]})")
    if missing:
        notes.append(f"skipped {_count(len(missing), 'listed image')} that do{'es' * (len(missing) == 1)} not exist "
                     f"(first: row {missing[0][0]}, {missing[0][1]})")
    if not per_split:
        raise DataError(f"manifest {path}: none of the listed images exist (looked in {base})")
    for split, (items, labels) in list(per_split.items()):
        kept = _check_not_empty_files(items, opts, notes)
        if len(kept) != len(items):
            keep = set(kept)
            labels = [l for p, l in zip(items, labels) if p in keep]
        per_split[split] = (kept, labels)
    if lab_c is None:
        found = Found({"all": _unlabeled(per_split.pop("all", ([], []))[0])}, [])
    else:
        _check_labels_seen_in_training(per_split, label_rows, path)
        found = _from_label_names(per_split, str(path))
    found.notes = notes + found.notes
    return found


def _check_labels_seen_in_training(per_split: dict[str, tuple[list[str], list[str]]],
                                   label_rows: dict[tuple[str, str], int], path: Path) -> None:
    """A val/test row whose label no train row has is an error naming that row."""
    if "train" not in per_split:
        return
    trained = set(per_split["train"][1])
    unseen = [(line, split, label) for (split, label), line in label_rows.items()
              if split in ("val", "test") and label not in trained and label in per_split[split][1]]
    if unseen:
        line, split, label = min(unseen)
        raise DataError(f"manifest {path} row {line}: {split} label {label!r} is on no train row: add training "
                        f"images with that label, or remove the {split} rows that use it")


def _split_name(value: str, path: Path, line: int) -> str:
    key = value.strip().lower()
    if key not in SPLIT_DIRS:
        raise DataError(f"manifest {path} row {line}: split {value!r} is not one of train, val, test")
    return SPLIT_DIRS[key]


# --------------------------------------------------------------------------------------------------- builtin
@register_source("builtin")
def _builtin_source(rest: str, opts: LoadOptions) -> Found:
    name = rest.partition("?")[0]
    spec = f"builtin:{rest}"
    if name == "shapes":
        _, o = _parse_options(rest, {**SHAPES_DEFAULTS, "val": None, "test": None}, spec)
        n_val = o["val"] if o["val"] is not None else int(round(o["n"] * opts.val_split / (1 - opts.val_split)))
        n_test = o["test"] if o["test"] is not None else o["n"] // 4
        sizes = {"train": o["n"], "val": n_val, "test": n_test}
        sets = {}
        for k, (split, n) in enumerate(sizes.items()):
            x, y = builtin.make_shapes(n, o["size"], seed=_derived_seed(opts.seed, k))
            sets[split] = ImageSet(x, y, list(builtin.SHAPE_CLASSES), meta={"img_size": o["size"], "channels": 3})
        return Found(sets, list(builtin.SHAPE_CLASSES))
    if name == "digits":
        _, o = _parse_options(rest, DIGITS_DEFAULTS, spec)
        x, y = builtin.load_digits(o["size"])
        classes = [str(i) for i in range(10)]
        rest_idx, test_idx = stratified_split(y, classes, o["test"], _derived_seed(opts.seed, 3), "test")
        meta = {"img_size": o["size"], "channels": 1}
        sets = {"train": ImageSet(x[rest_idx], y[rest_idx], classes, meta=dict(meta)),
                "test": ImageSet(x[test_idx], y[test_idx], classes, meta=dict(meta))}
        return Found(sets, classes)
    if name in ("shapes-scenes", "scenes"):
        if opts.require_labels:
            raise DataError(f"{spec} is a localisation test set (several shapes per image): train on builtin:shapes "
                            f"and evaluate or localise on {spec}")
        _, o = _parse_options(rest, SCENES_DEFAULTS, spec)
        seed = o.pop("seed")
        scenes = load_scenes(seed=opts.seed if seed < 0 else seed, **o)
        return Found({"all": scenes}, list(builtin.SHAPE_CLASSES))
    raise DataError(f"unknown builtin data {spec!r}: choose builtin:shapes, builtin:digits or builtin:shapes-scenes")


def load_scenes(n: int = 200, size: int = 128, seed: int = 0, min_objects: int = 1, max_objects: int = 3) -> ImageSet:
    """Multi-shape scenes for localisation: ``boxes[i]`` = [(class_index, (x0, y0, x1, y1)), ...] (pixels, x1/y1
    exclusive); ``labels[i]`` = the class of the first object."""
    x, targets = builtin.make_scenes(n, size, seed, min_objects, max_objects)
    labels = np.array([t[0][0] for t in targets], dtype=np.int64)
    return ImageSet(x, labels, list(builtin.SHAPE_CLASSES), boxes=targets,
                    meta={"img_size": size, "channels": 3, "source": "builtin:shapes-scenes"})


# --------------------------------------------------------------------------------------------------- torchvision
class DatasetReader:
    """Reads item ``i`` of a torchvision dataset as a PIL image (picklable, for DataLoader workers)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __call__(self, i: int) -> Image.Image:
        return self.dataset[int(i)][0]


def _default_dataset_root() -> Path:
    return Path(os.environ.get("GAPVISION_DATA_ROOT", "~/.cache/gapvision/datasets")).expanduser()


@register_source("torchvision")
def _torchvision_source(rest: str, opts: LoadOptions) -> Found:
    import torchvision.datasets as tvd

    spec = f"torchvision:{rest}"
    name = rest.partition("?")[0]
    canonical = {n.lower(): n for n in TORCHVISION_DATASETS}.get(name.lower())
    if canonical is None:
        raise DataError(f"unsupported torchvision dataset {name!r}: choose {', '.join(TORCHVISION_DATASETS)}")
    if canonical == "FakeData":
        _, o = _parse_options(rest, {"n": 1000, "size": 32, "classes": 10, "channels": 3, "test": 200}, spec)
        shape = (o["channels"], o["size"], o["size"])
        train = tvd.FakeData(o["n"], shape, o["classes"], random_offset=_derived_seed(opts.seed, 0) % 10**8)
        test = tvd.FakeData(o["test"], shape, o["classes"], random_offset=_derived_seed(opts.seed, 1) % 10**8)
        classes = [str(i) for i in range(o["classes"])]
        return Found({"train": _reader_set(train, classes), "test": _reader_set(test, classes)}, classes)
    _parse_options(rest, {}, spec)
    root = Path(opts.root).expanduser() if opts.root else _default_dataset_root()
    cls = getattr(tvd, canonical)
    sets, classes = {}, None
    for split, train in (("train", True), ("test", False)):
        kwargs = {"split": split} if canonical == "SVHN" else {"train": train}
        try:
            ds = cls(str(root), download=opts.download, **kwargs)
        except RuntimeError as e:
            if opts.download:
                raise DataError(f"could not download torchvision dataset {canonical} to {root}: {e}") from e
            raise DataError(f"torchvision dataset {canonical} not found under {root}: pass --download (needs "
                            f"internet) or --root DIR where it was downloaded before") from e
        except OSError as e:
            raise DataError(f"could not get torchvision dataset {canonical} under {root}: {e}") from e
        classes = classes or [str(c) for c in getattr(ds, "classes", range(10))]
        sets[split] = _array_set(ds, classes) if hasattr(ds, "data") else _reader_set(ds, classes)
    return Found(sets, classes)


def _array_set(ds: Any, classes: list[str]) -> ImageSet:
    """The fast path: a dataset's in-memory ``.data`` (N x H x W, N x H x W x C, or SVHN's N x C x H x W)."""
    data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    if data.ndim == 4 and data.shape[1] in (1, 3) and data.shape[-1] not in (1, 3):
        data = data.transpose(0, 2, 3, 1)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels")
    labels = np.asarray(targets.numpy() if hasattr(targets, "numpy") else targets, dtype=np.int64)
    channels = 1 if data.ndim == 3 else data.shape[-1]
    return ImageSet(np.ascontiguousarray(data), labels, classes, meta={"channels": channels})


def _reader_set(ds: Any, classes: list[str]) -> ImageSet:
    labels = np.array([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)
    return ImageSet(list(range(len(ds))), labels, classes, reader=DatasetReader(ds))
