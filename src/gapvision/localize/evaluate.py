"""How well does a classifier localise? Scores on scenes with ground-truth boxes (``builtin:shapes-scenes``):
presence precision/recall/F1, mean IoU of matched boxes and AP@0.5."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .. import atomic
from ..errors import DataError
from .api import Localizer, as_run
from .boxes import Box, Detection, box_iou

Truth = tuple[int, Box]  # class index, box


def score_detections(detections: Sequence[Sequence[Detection]], present: Sequence[Sequence[int]],
                     truths: Sequence[Sequence[Truth]], iou: float = 0.5) -> dict[str, Any]:
    """Scores of predictions against ground truth, image by image.

    * presence: the predicted classes (``present[i]``) against the classes in ``truths[i]``, counted over all
      images (micro precision, recall, F1);
    * ``mean_iou``: boxes of the same class are matched one-to-one per image to maximise the total IoU (pairs
      that do not overlap stay unmatched); the mean IoU of the matched pairs;
    * ``ap50``: VOC-style average precision at IoU ``iou`` (all-point interpolation), averaged over the classes
      that occur in the ground truth.
    """
    tp = fp = fn = 0
    ious: list[float] = []
    per_class: dict[int, list[tuple[float, bool]]] = {}
    gt_count: dict[int, int] = {}
    n_pred = 0
    for dets, pres, gts in zip(detections, present, truths):
        truth_classes = {c for c, _ in gts}
        pred_classes = set(pres)
        tp += len(pred_classes & truth_classes)
        fp += len(pred_classes - truth_classes)
        fn += len(truth_classes - pred_classes)
        n_pred += len(dets)
        for c in truth_classes | {d.class_index for d in dets}:
            g = [b for k, b in gts if k == c]
            d = sorted((x for x in dets if x.class_index == c), key=lambda x: -x.score)
            gt_count[c] = gt_count.get(c, 0) + len(g)
            m = box_iou([x.box for x in d], g)
            if m.size:
                rows, cols = linear_sum_assignment(-m)
                ious.extend(float(m[r, k]) for r, k in zip(rows, cols) if m[r, k] > 0)
            per_class.setdefault(c, []).extend(_greedy_hits(m, [x.score for x in d], iou))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    aps = {c: _average_precision(per_class.get(c, []), n) for c, n in sorted(gt_count.items()) if n > 0}
    return {
        "presence_precision": round(precision, 4), "presence_recall": round(recall, 4), "presence_f1": round(f1, 4),
        "mean_iou": round(float(np.mean(ious)), 4) if ious else 0.0,
        "ap50": round(float(np.mean(list(aps.values()))), 4) if aps else 0.0,
        "images": len(truths), "boxes_true": int(sum(gt_count.values())), "boxes_predicted": n_pred,
        "boxes_matched": len(ious), "ap50_per_class": {int(c): round(v, 4) for c, v in aps.items()},
    }


def _greedy_hits(iou: np.ndarray, scores: Sequence[float], thr: float) -> list[tuple[float, bool]]:
    """VOC matching: detections in score order take the best still-free ground truth with IoU >= ``thr``."""
    taken = np.zeros(iou.shape[1], dtype=bool)
    hits = []
    for r, s in enumerate(scores):
        ok = False
        if iou.shape[1]:
            cand = np.where(~taken, iou[r], -1.0)
            k = int(np.argmax(cand))
            if cand[k] >= thr:
                taken[k] = ok = True
        hits.append((float(s), ok))
    return hits


def _average_precision(hits: list[tuple[float, bool]], n_true: int) -> float:
    if not hits:
        return 0.0
    hits = sorted(hits, key=lambda h: -h[0])
    tp = np.cumsum([h[1] for h in hits])
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / n_true
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def evaluate_scenes(run_or_model: Any, data: str = "builtin:shapes-scenes", out: str | Path | None = None, *,
                    scale: float | None = None, iou: float = 0.5, batch_size: int = 32, **options: Any) -> dict:
    """Localise the scenes of ``data`` (a source with ground-truth boxes) and score the result.

    ``scale`` resizes the scenes before the network. By default a shapes-scenes image of side S is scaled by
    ``2 * img_size / S`` (``img_size``: the model's training size), the size at which its objects (18-35 % of the
    side) are as large in pixels as the training shapes (30-70 % of the side). Returns the metrics of
    :func:`score_detections` plus ``scale``, ``method`` and ``threshold``; with ``out`` also writes
    ``out/evaluation.json``. ``options`` go to :class:`~gapvision.localize.api.Localizer`.
    """
    from ..data.sources import load_images

    run = as_run(run_or_model)
    scenes = load_images(data)
    if scenes.boxes is None:
        raise DataError(f"{data} has no ground-truth boxes: evaluate localisation on builtin:shapes-scenes")
    index = {c: i for i, c in enumerate(run.classes)}
    missing = sorted({scenes.classes[c] for objs in scenes.boxes for c, _ in objs} - set(index))
    if missing:
        raise DataError(f"the model's classes ({', '.join(run.classes)}) lack {', '.join(missing)} found in {data}: "
                        "evaluate a model trained on builtin:shapes")
    truths = [[(index[scenes.classes[c]], tuple(float(v) for v in box)) for c, box in objs] for objs in scenes.boxes]
    if scale is None:
        side = scenes.meta.get("img_size")
        scale = 2 * run.preprocess.img_size / side if side else 1.0
    loc = Localizer(run, scale=scale, **options)
    results = []
    for start in range(0, len(scenes), batch_size):
        idx = range(start, min(start + batch_size, len(scenes)))
        results.extend(loc([scenes.load(i) for i in idx], [scenes.name(i) for i in idx], batch_size=batch_size))
    metrics = score_detections([r.detections for r in results], [[c["class_index"] for c in r.classes]
                                                                 for r in results], truths, iou)
    metrics.update({"data": str(data), "scale": round(float(scale), 4), "method": loc.method,
                    "threshold": str(loc.threshold), "min_score": loc.min_score,
                    "classes": list(run.classes)})
    if out is not None:
        atomic.write_json(Path(out) / "evaluation.json", metrics)
    return metrics
