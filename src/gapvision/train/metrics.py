"""Classification metrics from predictions: accuracy, confusion matrix, per-class precision/recall/F1."""
from __future__ import annotations

import numpy as np


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[i, j] = number of images of true class i predicted as j."""
    idx = np.asarray(targets, dtype=np.int64) * num_classes + np.asarray(preds, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class(cm: np.ndarray, classes: list[str]) -> list[dict]:
    tp = np.diag(cm).astype(float)
    pred = cm.sum(0).astype(float)
    true = cm.sum(1).astype(float)
    precision = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    recall = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return [
        {"class": c, "precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
         "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, true)
    ]


def summarize(targets: np.ndarray, preds: np.ndarray, classes: list[str], loss: float | None = None) -> dict:
    """The evaluation block written to metrics.json for one split. The macro F1 averages the classes that occur
    among the targets or the predictions (as scikit-learn's ``f1_score(average="macro")``): a class absent from
    both, e.g. from a set of one class's images, does not count as an F1 of 0."""
    cm = confusion_matrix(targets, preds, len(classes))
    acc = float((np.asarray(targets) == np.asarray(preds)).mean()) if len(targets) else 0.0
    rows = per_class(cm, classes)
    seen = [r["f1"] for r, n in zip(rows, cm.sum(axis=0) + cm.sum(axis=1)) if n > 0]
    out = {
        "acc": round(acc, 6),
        "images": int(len(targets)),
        "macro_f1": round(float(np.mean(seen)) if seen else 0.0, 4),
        "per_class": rows,
        "confusion_matrix": cm.tolist(),
    }
    if loss is not None:
        out["loss"] = round(float(loss), 6)
    return out
