"""``--calibrate DATA``: the operating point of the class maps chosen on a few annotated images, kept in the run.

The WSOL protocol's small fully-annotated validation set (Choe et al. 2020): on those images the map threshold
and the box rule that maximise the single-box form of MaxBoxAccV2 (:func:`.wsol.choose_operating_point`) and the
presence score that maximises presence F1 (the middle of tied scores) are chosen and written to
``RUN_DIR/localize.json`` (atomically)::

    {"format_version": 1, "method": "cam", "methods": {"cam": {"threshold": 0.3, "rule": "largest",
     "scales": [1.0, 1.5, 2.0], "min_score": 0.5, "score": 0.81, "images": 20, "data": "...", "split": "train",
     "refine": "grabcut", "refine_scores": {"none": {"ap50": 0.4, "mean_iou": 0.5}, "grabcut": {...}}}}}

``refine`` (box refinement, :mod:`.refine`) is the one whose boxes score the higher AP@0.5 on the same images.

``method`` is the last calibrated one; :class:`~gapvision.localize.api.Localizer` (``localize``, ``serve``) uses the
entry of its method by default, and the FCN export copies the file into its metadata.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import atomic
from ..errors import GapvisionError
from ..runs import Run
from .multiscale import DEFAULT_SCALES, ClassHeat
from .wsol import Sample, choose_operating_point

CALIBRATION_FILE = "localize.json"
FORMAT_VERSION = 1
PRESENCE_GRID = tuple(round(s, 2) for s in np.arange(0.05, 1.0, 0.05))


def read_calibration(run: Run | str | Path | None) -> dict | None:
    """The run's ``localize.json`` (None when the run has none); a damaged file is a one-line error."""
    folder = run.path if isinstance(run, Run) else (Path(run) if run is not None else None)
    if folder is None or not (Path(folder) / CALIBRATION_FILE).is_file():
        return None
    path = Path(folder) / CALIBRATION_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if int(doc.get("format_version", 0)) > FORMAT_VERSION or not isinstance(doc.get("methods"), dict):
            raise ValueError("unknown format")
    except (json.JSONDecodeError, ValueError, AttributeError) as e:
        raise GapvisionError(f"{path} is damaged ({e}): delete it or run `gapvision localize RUN --calibrate DATA` "
                             "again") from None
    return doc


def calibrated(run: Run, method: str | None = None) -> tuple[str, dict] | None:
    """(method, settings) the run was calibrated with for ``method`` (default: the last calibrated method)."""
    doc = read_calibration(run)
    if doc is None:
        return None
    name = method or doc.get("method")
    entry = doc["methods"].get(name) if name else None
    return (name, entry) if entry else None


def choose_presence(heats: Sequence[ClassHeat], truths: Sequence[set[int]], grid: Sequence[float] = PRESENCE_GRID
                    ) -> float:
    """The class probability that maximises presence F1 (predicted: the top-1 class and every class at or above
    the score) over the images; of several that tie, the middle one (the widest margin on both sides: on images
    with one class each, every score above the largest runner-up probability ties, and the lowest of them would
    admit the next image's runner-up)."""
    scores = []
    for s in grid:
        tp = fp = fn = 0
        for h, truth in zip(heats, truths):
            pred = {h.top} | {int(k) for k in np.flatnonzero(h.probs >= s)}
            tp, fp, fn = tp + len(pred & truth), fp + len(pred - truth), fn + len(truth - pred)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    best = max(scores)
    ties = [float(s) for s, f1 in zip(grid, scores) if f1 >= best - 1e-12]
    return ties[(len(ties) - 1) // 2]


def calibration_entry(samples: Sequence[Sample], heats: Sequence[ClassHeat], truths: Sequence[set[int]],
                      scales: Sequence[float] = DEFAULT_SCALES, **about: Any) -> dict:
    """The settings to save for one method: operating point, presence score, scales and what they came from."""
    op = choose_operating_point(samples)
    return {"threshold": op["threshold"], "rule": op["rule"], "scales": [float(s) for s in scales],
            "min_score": choose_presence(heats, truths), "score": op["score"], "rule_scores": op["scores"],
            "images": len(samples), **about}


def save_calibration(run: Run, method: str, entry: dict) -> Path:
    """Add ``entry`` for ``method`` to ``RUN_DIR/localize.json`` (atomic write) and make it the default method."""
    if run.path is None:
        raise GapvisionError("calibration is saved in a run directory: localise with a run directory (from "
                             "`gapvision train`), not a bare --model")
    doc = read_calibration(run) or {"format_version": FORMAT_VERSION, "methods": {}}
    doc["methods"][method] = entry
    doc["method"] = method
    path = Path(run.path) / CALIBRATION_FILE
    atomic.write_json(path, doc)
    return path
