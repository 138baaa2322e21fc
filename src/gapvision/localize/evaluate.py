"""How well does a classifier localise? Scores on images with ground-truth boxes (``builtin:shapes-scenes``, Pascal
VOC folders, COCO files): the WSOL metrics of :mod:`.wsol` (top-1 loc, GT-known loc, MaxBoxAccV2) beside the
central-box and full-image baselines, and presence precision/recall/F1, mean IoU of matched boxes and AP@0.5; and
the calibration of the operating point (:func:`calibrate`, saved by :mod:`.calibrate`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .. import atomic
from ..data.files import file_digest
from ..data.imageset import ImageSet
from ..errors import ConfigError, DataError
from ..runs import Run
from .api import Localizer, as_run
from .boxes import Box, Detection, box_iou
from .calibrate import calibration_entry, save_calibration
from .refine import REFINES
from .multiscale import DEFAULT_SCALES, ClassHeat, class_heat
from .wsol import Sample, wsol_scores

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


SPLITS = ("all", "train", "val", "test")
DEFAULT_OPERATING = {"threshold": 0.2, "rule": "largest"}  # uncalibrated: Zhou et al.'s 20 % of the max, largest region


def annotated_images(run: Run, data: str, split: str = "all", skip_bad: bool = True) -> ImageSet:
    """The images of ``data`` with ground-truth boxes, labels and boxes on the run's classes.

    ``split``: ``all`` (every image), or ``train``/``val``/``test`` as the run split this data when it trained
    (the same seeded ``--val-split``, recorded in its config.json), so that a run is evaluated on images it did not
    train on. Unreadable images are skipped (with a note) unless ``skip_bad`` is False.
    """
    from ..data.sources import load_images, load_split

    if split not in SPLITS:
        raise ConfigError(f"unknown --split {split!r}: choose {', '.join(SPLITS)}")
    if split == "all":
        imgs = load_images(data, skip_bad=skip_bad)
    else:
        try:
            imgs = load_split(data, split, skip_bad=skip_bad, **run.split_options())
        except DataError as e:  # e.g. a folder of one class: it cannot be split as training would
            raise DataError(f"{e} (--split {split} splits {data} as training would; --split all uses every "
                            "image)") from None
    if imgs.boxes is None:
        raise DataError(f"{data} has no ground-truth boxes: evaluate localisation on builtin:shapes-scenes, a Pascal "
                        "VOC folder (annotations/*.xml) or a COCO .json file")
    names = {imgs.classes[c] for objs in imgs.boxes for c, _ in objs} | {imgs.classes[c] for c in imgs.labels}
    missing = sorted(names - set(run.classes))
    if missing:
        shown = ", ".join(run.classes[:8]) + (f", ... ({len(run.classes)} in all)" if len(run.classes) > 8 else "")
        raise DataError(f"the model's classes ({shown}) lack {', '.join(missing[:8])}"
                        f"{f' and {len(missing) - 8} more' if len(missing) > 8 else ''} found in {data}: use a model "
                        "trained on these classes")
    from ..data.sources import _map_to_classes

    imgs = _map_to_classes(imgs, run.classes, str(data))
    keep = [i for i in range(len(imgs)) if any(c == imgs.labels[i] for c, _ in imgs.boxes[i])]
    return imgs.subset(keep)


def truth_boxes(imgs: ImageSet) -> list[list[Truth]]:
    """The ground-truth ``(class, box)`` pairs of every image of ``imgs``, boxes as float tuples."""
    return [[(c, tuple(float(v) for v in box)) for c, box in objs] for objs in imgs.boxes]  # type: ignore[union-attr]


def wsol_samples(loc: Localizer, imgs: ImageSet, scales: Sequence[float] | None = None,
                 batch_size: int = 16, pictures: Sequence[Any] | None = None) -> tuple[list[Sample], list[ClassHeat]]:
    """One :class:`~.wsol.Sample` per image (its label's fused map and boxes; the predicted class at the training
    size) and the :class:`~.multiscale.ClassHeat` behind it. ``pictures``: the images already loaded (else each
    batch is read from ``imgs``)."""
    scales = tuple(scales or loc.scales or DEFAULT_SCALES)
    samples: list[Sample] = []
    heats: list[ClassHeat] = []
    for start in range(0, len(imgs), batch_size):
        idx = list(range(start, min(start + batch_size, len(imgs))))
        batch = [pictures[i] if pictures is not None else imgs.load(i) for i in idx]
        found = class_heat(loc, batch, [[int(imgs.labels[i])] for i in idx], scales)
        for i, h in zip(idx, found):
            k = int(imgs.labels[i])
            samples.append(Sample(h.heat[k], k, h.top, [b for c, b in imgs.boxes[i] if c == k], h.size))
        heats.extend(found)
    return samples, heats


def calibration_files(imgs: ImageSet) -> list[str]:
    """The files of ``imgs`` as absolute paths (none for images held in memory: no name finds them again)."""
    names = [imgs.name(i) for i in range(len(imgs))]
    return [] if any(n.startswith("#") for n in names) else [str(Path(n).resolve()) for n in names]


def _without_calibration_images(imgs: ImageSet, entry: dict | None, leave_out: bool) -> tuple[ImageSet, int, int]:
    """``imgs`` less the files the calibration ``entry`` used, and exact copies of them under other names (the same
    bytes: boxes-dev's raccoon-74.jpg is raccoon-52.jpg): (the rest, how many were left out, how many were scored
    anyway: all of them when every image is a calibration image, or when not ``leave_out``)."""
    used = set(entry.get("files", [])) if entry else set()
    found = calibration_files(imgs) if used else []
    copies = {file_digest(f) for f in used if Path(f).is_file()} if found else set()
    keep = ([i for i, f in enumerate(found) if f not in used and not (Path(f).is_file() and file_digest(f) in copies)]
            if found else list(range(len(imgs))))
    if not leave_out or not keep:
        return imgs, 0, len(imgs) - len(keep)
    return imgs.subset(keep), len(imgs) - len(keep), 0


def evaluate_localization(run_or_model: Any, data: str = "builtin:shapes-scenes", out: str | Path | None = None, *,
                          split: str = "all", scale: float | None = None, scales: Sequence[float] | None = None,
                          operating: dict | None = None, iou: float = 0.5, batch_size: int = 32,
                          calibration_images: bool = False, **options: Any) -> dict:
    """Score localisation on ``data`` (builtin:shapes-scenes, a VOC folder or a COCO file; ``split`` as in
    :func:`annotated_images`). The image files the run's calibration of this method used (fitted on, for
    ``fewshot``) are left out, so the score is a held-out one (``calibration_left_out``: how many), unless
    ``calibration_images`` or every image is one (``calibration_scored``: how many were scored).

    WSOL metrics (:mod:`.wsol`) on the method's fused multi-scale maps -- ``top1_loc``, ``gt_known_loc``,
    ``maxboxacc_v2`` (with ``boxacc`` per IoU level) at the operating point (``operating`` = {"threshold", "rule"},
    default: the run's calibration, else :data:`DEFAULT_OPERATING`) -- beside ``baseline_center`` and
    ``baseline_full`` on the same images; and the Localizer's detections scored by :func:`score_detections`
    (presence P/R/F1, mean IoU, AP@0.5). ``scale``: resize factor of the detection pass (shapes scenes: by default
    the size at which their objects are as large as the training shapes). With ``out``: ``out/evaluation.json``.
    """
    run = as_run(run_or_model)
    imgs = annotated_images(run, data, split)
    if len(imgs) == 0:
        raise DataError(f"no image of {data} ({split}) has a ground-truth box of its own class")
    if scale is None:
        side = imgs.meta.get("img_size")
        scale = 2 * run.preprocess.img_size / side if side else None
    loc = Localizer(run, scale=scale, scales=scales, **options)
    imgs, left_out, seen = _without_calibration_images(imgs, loc.calibration, not calibration_images)
    point = dict(operating or (loc.calibration and {k: loc.calibration[k] for k in ("threshold", "rule")})
                 or DEFAULT_OPERATING)
    samples, _ = wsol_samples(loc, imgs, scales, batch_size)
    metrics = wsol_scores(samples, float(point["threshold"]), str(point["rule"]))
    results = []
    for start in range(0, len(imgs), batch_size):
        idx = range(start, min(start + batch_size, len(imgs)))
        results.extend(loc([imgs.load(i) for i in idx], [imgs.name(i) for i in idx], batch_size=batch_size))
    truths = truth_boxes(imgs)
    metrics.update(score_detections([r.detections for r in results], [[c["class_index"] for c in r.classes]
                                                                      for r in results], truths, iou))
    metrics["ap50_per_class"] = {run.classes[c]: v for c, v in metrics["ap50_per_class"].items()}  # by name
    metrics.update({"data": str(data), "split": split, "scale": round(float(scale or 1.0), 4), "method": loc.method,
                    "threshold": str(loc.threshold), "min_score": loc.min_score, "classes": list(run.classes),
                    "scales": list(scales or loc.scales or DEFAULT_SCALES), "calibrated": loc.calibration is not None,
                    "calibration_left_out": left_out, "calibration_scored": seen, "notes": imgs.meta.get("notes", [])})
    if out is not None:
        atomic.write_json(Path(out) / "evaluation.json", metrics)
    return metrics


def evaluate_scenes(run_or_model: Any, data: str = "builtin:shapes-scenes", out: str | Path | None = None, *,
                    scale: float | None = None, iou: float = 0.5, batch_size: int = 32, **options: Any) -> dict:
    """:func:`evaluate_localization` (kept under its first name)."""
    return evaluate_localization(run_or_model, data, out, scale=scale, iou=iou, batch_size=batch_size, **options)


def calibrate(run_or_model: Any, data: str, *, split: str = "train", images: int | None = 32,
              method: str | None = None, scales: Sequence[float] | None = None, seed: int = 0,
              batch_size: int = 16, fewshot_epochs: int | None = None, **options: Any) -> dict:
    """Choose the operating point (map threshold, box rule) and presence score on ``images`` annotated images of
    ``data`` (a seeded sample of ``split``; None: all of them) and save them in the run's ``localize.json``
    (:mod:`.calibrate`). ``method="fewshot"`` first learns its objectness map from the same images' boxes
    (:mod:`.fewshot`, kept in ``RUN_DIR/fewshot.safetensors``; ``fewshot_epochs``: its fine-tuning passes, default
    :data:`~.fewshot.FINE_TUNE_EPOCHS`, 0 for the linear probe alone). Returns the saved entry."""
    if fewshot_epochs is not None and fewshot_epochs < 0:
        raise ConfigError(f"--fewshot-epochs {fewshot_epochs}: give 0 (the linear probe alone) or more")
    if images is not None and images < 1:
        raise ConfigError(f"--images {images}: calibrate on at least 1 image (default 32; the WSOL protocol uses a few "
                          "dozen)")
    run = as_run(run_or_model)
    imgs = annotated_images(run, data, split)
    if images is not None and len(imgs) > images:
        imgs = imgs.subset(np.sort(np.random.default_rng(seed).permutation(len(imgs))[:images]))
    if len(imgs) == 0:
        raise DataError(f"no annotated images of {data} ({split}) to calibrate on")
    refine = options.pop("refine", None)
    pictures, boxes = [imgs.load(i) for i in range(len(imgs))], truth_boxes(imgs)
    fitted = {}
    if method == "fewshot":  # the objectness is learned from these images' boxes first (every object counts)
        from .fewshot import FINE_TUNE_EPOCHS, fit_objectness, save_objectness

        predictor = run.use_device(options.get("device"))
        obj = fit_objectness(predictor.net, run.preprocess, pictures, [[b for _, b in objs] for objs in boxes],
                             tuple(scales or DEFAULT_SCALES), predictor.device, data=str(data),
                             fine_tune_epochs=FINE_TUNE_EPOCHS if fewshot_epochs is None else fewshot_epochs,
                             seed=seed)
        save_objectness(run, obj)
        fitted = {"fewshot": {**obj.about, "tap": obj.tap, "images": obj.images}}
    loc = Localizer(run, method=method, scales=scales, calibration=False, **options)
    samples, heats = wsol_samples(loc, imgs, scales, batch_size, pictures)
    truths = [{int(c) for c, _ in objs} for objs in imgs.boxes]  # type: ignore[union-attr]
    entry = calibration_entry(samples, heats, truths, tuple(scales or DEFAULT_SCALES), data=str(data), split=split,
                              files=calibration_files(imgs), **fitted)
    # box refinement: each option's boxes at the chosen operating point, the one with the better AP@0.5 kept
    settings = {k: entry[k] for k in ("threshold", "min_score", "rule", "scales")}
    rest = {k: v for k, v in options.items() if k not in settings}
    scores = entry["refine_scores"] = {}
    for r in ((refine,) if refine else REFINES):
        found = Localizer(run, method=loc.method, calibration=False, refine=r, **settings, **rest)(
            pictures, batch_size=batch_size)
        m = score_detections([f.detections for f in found], [[c["class_index"] for c in f.classes] for f in found],
                             boxes)
        scores[r] = {"ap50": m["ap50"], "mean_iou": m["mean_iou"]}
    entry["refine"] = max(scores, key=lambda r: (scores[r]["ap50"], scores[r]["mean_iou"]))
    save_calibration(run, loc.method, entry)
    return entry


calibrate_localization = calibrate  # its name at the top level: gapvision.calibrate_localization
