"""Look at a data set before training: counts, sizes, modes, problems (unreadable, tiny, imbalanced, duplicated)
and a PNG grid of samples per class."""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..plots import GRID_MAX_CLASSES, GRID_PER_CLASS, write_sample_grid  # noqa: F401 (re-exported)
from .files import file_digest
from .imageset import ImageSet
from .sources import LoadOptions, load_with_options

TINY_PX = 16  # images whose shorter side is below this are reported
IMBALANCE_RATIO = 5.0  # largest / smallest class count at or above this is reported


def inspect_data(data: Any, out_png: str | os.PathLike | None = None, *, sample: int | None = None,
                 **load_opts: Any) -> dict:
    """Load ``data`` (options as :func:`~gapvision.data.sources.load_data`) and report per split: class counts,
    image sizes, modes and problems. Every image is decoded unless ``sample`` caps the number checked per split.
    Writes a sample grid to ``out_png`` when given."""
    splits = load_with_options(data, replace(LoadOptions(**load_opts), check_files=False))
    report: dict[str, Any] = {
        "source": splits.source or "arrays",
        "classes": list(splits.classes),
        "notes": list(splits.notes),
        "splits": {},
        "problems": [],
        "png": None,
    }
    report["problems"] += _class_name_problems(list(splits.classes))
    first_seen: dict[str, tuple[str, str, str | None]] = {}  # content hash -> (split, name, label)
    for name, imgs in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if imgs is None:
            continue
        info = _inspect_set(imgs, sample, seed=load_opts.get("seed", 0))
        report["splits"][name] = info
        report["problems"] += [f"{name}: {p}" for p in _set_problems(info)]
        report["problems"] += _duplicate_problems(name, info.pop("_hashes"), first_seen)
    if out_png is not None:
        report["png"] = str(write_sample_grid(splits.train, out_png))
    return report


def _scan_one(imgs: ImageSet, i: int) -> dict:
    """Decode image ``i``: its size, mode and content hash, or the error."""
    try:
        item = imgs.items[i]
        img = imgs.load(i)
        if isinstance(item, (str, Path)):
            digest = file_digest(item)
        else:
            digest = hashlib.md5(np.asarray(img).tobytes() + str(img.size).encode()).hexdigest()
        return {"size": img.size, "mode": img.mode, "hash": digest}
    except DataError as e:
        return {"error": str(e)}
    except Exception as e:  # a custom reader failing; report it rather than stop the inspection
        return {"error": f"{imgs.name(i)}: {type(e).__name__}: {e}"}


def _inspect_set(imgs: ImageSet, sample: int | None, seed: int) -> dict:
    idx = np.arange(len(imgs))
    if sample is not None and sample < len(imgs):
        idx = np.sort(np.random.default_rng(seed).permutation(len(imgs))[:sample])
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        scans = list(pool.map(lambda i: _scan_one(imgs, int(i)), idx))
    ok = [(int(i), s) for i, s in zip(idx, scans) if "error" not in s]
    sizes = np.array([s["size"] for _, s in ok], dtype=np.int64).reshape(-1, 2)
    info: dict[str, Any] = {
        "images": len(imgs),
        "checked": len(idx),
        "class_counts": imgs.class_counts(),
        "size": {k: [int(v) for v in f(sizes, axis=0)] for k, f in
                 (("min", np.min), ("median", np.median), ("max", np.max))} if len(ok) else None,
        "modes": dict(Counter(s["mode"] for _, s in ok).most_common()),
        "unreadable": [{"name": imgs.name(int(i)), "error": s["error"]} for i, s in zip(idx, scans) if "error" in s],
        "tiny": [{"name": imgs.name(i), "size": list(s["size"])} for i, s in ok if min(s["size"]) < TINY_PX],
        "_hashes": [(imgs.name(i), s["hash"], _label_name(imgs, i)) for i, s in ok],
    }
    return info


def _label_name(imgs: ImageSet, i: int) -> str | None:
    k = int(imgs.labels[i])
    return imgs.classes[k] if 0 <= k < len(imgs.classes) else None


def _class_name_problems(classes: list[str]) -> list[str]:
    """Class names that differ only in case or surrounding spaces (``Cat`` and ``cat``): one class split in two."""
    by_key: dict[str, list[str]] = {}
    for c in classes:
        by_key.setdefault(c.strip().casefold(), []).append(c)
    return [f"classes {' and '.join(map(repr, names))} differ only in case or spaces: if they are one class, give "
            "them one name (rename the folder, or fix the labels)" for names in by_key.values() if len(names) > 1]


def _set_problems(info: dict) -> list[str]:
    problems = []
    if info["unreadable"]:
        first = info["unreadable"][0]
        problems.append(f"{len(info['unreadable'])} unreadable image(s) (first: {first['error']})")
    if info["tiny"]:
        first = info["tiny"][0]
        problems.append(f"{len(info['tiny'])} image(s) smaller than {TINY_PX} px (first: {first['name']}, "
                        f"{first['size'][0]}x{first['size'][1]})")
    counts = {c: n for c, n in info["class_counts"].items()}
    if info["images"] and len(counts) >= 2:
        big = max(counts, key=counts.get)
        small = min(counts, key=counts.get)
        if counts[small] == 0:
            problems.append(f"class {small!r} has no images")
        elif counts[big] / counts[small] >= IMBALANCE_RATIO:
            problems.append(f"heavy class imbalance: {big!r} has {counts[big]} images, {small!r} only "
                            f"{counts[small]} ({counts[big] / counts[small]:.0f}x): collect more {small!r} images")
    return problems


def _duplicate_problems(split: str, hashes: list[tuple[str, str, str | None]],
                        first_seen: dict[str, tuple[str, str, str | None]]) -> list[str]:
    within, across, conflicts = [], [], []
    for name, digest, label in hashes:
        if digest in first_seen:
            other_split, other, other_label = first_seen[digest]
            (within if other_split == split else across).append((name, other, other_split))
            if label != other_label and label is not None and other_label is not None:
                conflicts.append((name, label, other, other_label))
        else:
            first_seen[digest] = (split, name, label)
    problems = []
    if conflicts:
        name, label, other, other_label = conflicts[0]
        problems.append(f"{split}: {len(conflicts)} image(s) labelled two ways (first: {name} as {label!r} == "
                        f"{other} as {other_label!r}): keep the copy with the right label")
    if within:
        name, other, _ = within[0]
        problems.append(f"{split}: {len(within)} duplicate image(s) (first: {name} == {other})")
    if across:
        name, other, other_split = across[0]
        problems.append(f"{split}: {len(across)} image(s) also in {other_split} (first: {name} == {other}); "
                        f"overlap between splits inflates {split} scores")
    return problems


def format_inspection(report: dict) -> str:
    """The report as terminal text."""
    classes = report["classes"]
    shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    lines = [f"data: {report['source']}  ({len(classes)} classes: {shown})"]
    lines += [f"note: {n}" for n in report["notes"]]
    lines.append(f"{'split':<6} {'images':>7}  {'size min / median / max (WxH)':<34} modes")
    for name, info in report["splits"].items():
        size = info["size"]
        size_txt = " / ".join(f"{w}x{h}" for w, h in (size["min"], size["median"], size["max"])) if size else "-"
        checked = "" if info["checked"] == info["images"] else f" ({info['checked']} checked)"
        modes = ", ".join(f"{m} {n}" for m, n in info["modes"].items()) or "-"
        lines.append(f"{name:<6} {info['images']:>7}  {size_txt:<34} {modes}{checked}")
    names = list(report["splits"])
    width = max([len(c) for c in classes[:GRID_MAX_CLASSES]] + [5])
    lines.append("")
    lines.append(f"{'class':<{width}} " + " ".join(f"{n:>7}" for n in names))
    for c in classes[:GRID_MAX_CLASSES]:
        lines.append(f"{c:<{width}} " + " ".join(f"{report['splits'][n]['class_counts'].get(c, 0):>7}" for n in names))
    if len(classes) > GRID_MAX_CLASSES:
        lines.append(f"... and {len(classes) - GRID_MAX_CLASSES} more classes")
    lines.append("")
    if report["problems"]:
        lines.append("problems:")
        lines += [f"  - {p}" for p in report["problems"]]
    else:
        lines.append("no problems found")
    if report.get("png"):
        lines.append(f"samples: {report['png']}")
    return "\n".join(lines)
