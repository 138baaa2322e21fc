"""Notebook displays: ``_repr_html_`` of Run, CompareResult, DataSplits and localisation results (pictures inlined
as base64 PNG/JPEG, so a saved notebook keeps them), and fastai's interpretation views ``run.show_results(n)`` and
``run.plot_top_losses(k)`` as matplotlib figures.

The classes only delegate here (one short method each); the pieces come from :mod:`gapvision.report`.
"""
from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data.splits_display import splits_html  # noqa: F401 (the DataSplits display lives beside DataSplits)
from .htmlparts import block as _block
from .htmlparts import esc, img_tag, table, thumbnail
from .htmlparts import inline_figure as _figure
from .localize.results import DISPLAY_LIMIT, LocalizeResults  # noqa: F401 (re-exported)
from .report import load_validation, plot_overlaid, sample_indices, validation_losses

if TYPE_CHECKING:
    from .compare.api import CompareResult
    from .runs import Run


class DisplayFigure(Figure):
    """A matplotlib Figure outside pyplot (no global state, not shown twice) that displays itself as a PNG."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)

    def png(self, dpi: int = 90) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()


# -- Run ----------------------------------------------------------------------------------------------------------
def run_html(run: "Run") -> str:
    """Headline metrics, the loss/accuracy curves and the validation confusion matrix."""
    from .plots import plot_confusion, plot_curves

    mc, m = run.model_config, run.metrics
    rows = [("model / head", f"{mc.model} / {mc.head}"), ("classes", len(run.classes)),
            ("status", m.get("status", "no metrics.json")), ("epochs", m.get("epochs_run")),
            ("best val acc", m.get("best_val_acc")), ("final val acc", m.get("final_val_acc")),
            ("test acc", m.get("test_acc")), ("seconds", m.get("seconds")), ("run directory", str(run.path))]
    history = run.history
    curves = _figure(lambda p: plot_curves(history, p, f"{mc.model} + {mc.head}"), "curves") if history else ""
    cm = m.get("confusion_matrix")
    confusion = _figure(lambda p: plot_confusion(cm, run.classes, p, "validation"), "confusion") if cm else ""
    metrics = table(None, [r for r in rows if r[1] is not None], "gv-metrics")
    return _block("run", f"Run: {mc.model} + {mc.head} head", metrics, curves, confusion)


def _validation_grid(val: Any, picks: Sequence[int], titles: Callable[[int], tuple[str, bool]],
                     suptitle: str) -> DisplayFigure:
    cols = min(len(picks), 4) or 1
    rows = max(1, math.ceil(len(picks) / cols))
    fig = DisplayFigure(figsize=(2.4 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, i in zip(axes.flat, picks):
        img = val.load(int(i))
        grey = img.mode in ("L", "1", "LA")
        ax.imshow(np.asarray(img.convert("L" if grey else "RGB")), cmap="gray" if grey else None)
        text, ok = titles(int(i))
        ax.set_title(text, fontsize=8, color="#1b7f3b" if ok else "#b00020")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def _validation(run: "Run", data: Any = None) -> Any:
    if data is None:
        return load_validation(run)
    from .data.sources import load_images

    return load_images(data, split="val", classes=run.classes)


def show_results(run: "Run", n: int = 9, data: Any = None) -> DisplayFigure:
    """``n`` validation images (a few of each class) titled ``predicted / true`` (green when right, red when wrong).
    ``data``: another labelled source (its ``val`` split, or the whole folder) instead of the run's own."""
    val = _validation(run, data)
    _, probs = validation_losses(run, val)
    picks = sample_indices(val.labels, len(run.classes), max(1, int(n)))
    c = run.classes

    def title(i: int) -> tuple[str, bool]:
        pred, true = int(probs[i].argmax()), int(val.labels[i])
        return f"{c[pred]} {probs[i, pred]:.2f}\ntrue: {c[true]}", pred == true

    return _validation_grid(val, picks, title, "predicted / true")


def plot_top_losses(run: "Run", k: int = 9, data: Any = None) -> DisplayFigure:
    """The ``k`` validation images with the highest loss, titled ``predicted / true / loss / true-class probability``
    (fastai's ``plot_top_losses``)."""
    val = _validation(run, data)
    losses, probs = validation_losses(run, val)
    picks = [int(i) for i in np.argsort(-losses, kind="stable")[: max(1, int(k))]]
    c = run.classes

    def title(i: int) -> tuple[str, bool]:
        pred, true = int(probs[i].argmax()), int(val.labels[i])
        return f"{c[pred]} / {c[true]}\nloss {losses[i]:.2f} p {probs[i, true]:.2f}", pred == true

    return _validation_grid(val, picks, title, "top losses: predicted / true / loss / probability of true")


# -- CompareResult, DataSplits --------------------------------------------------------------------------------------
COMPARE_COLUMNS = ("head", "head_params", "total_params", "best_val_acc_mean", "best_val_acc_std",
                   "final_val_acc_mean", "best_epoch_mean", "seconds")


def compare_html(result: "CompareResult") -> str:
    """The head table (winner first line) and every run's validation curves overlaid."""
    cols = [c for c in COMPARE_COLUMNS if any(c in r for r in result.rows)]
    rows = [[r.get(c) for c in cols] for r in result.rows]
    named = [(f"{head}-s{run.config.get('seed', '?')}", run) for head, runs in result.runs.items() for run in runs]
    curves = _figure(lambda p: plot_overlaid(named, p), "validation curves") if named else ""
    verdict = f"<p>best head: <b>{esc(result.winner)}</b></p>" if result.rows else ""
    return _block("compare", f"Compare: {', '.join(result.heads)} on seeds {', '.join(map(str, result.seeds))}",
                  verdict, table(cols, rows, "gv-heads"), curves)


# -- localisation results -------------------------------------------------------------------------------------------
def localize_html(results: "LocalizeResults") -> str:
    from .localize.render import draw_detections, heat_overlay

    tiles = []
    for image, loc in results.shown:
        boxed = thumbnail(draw_detections(image, loc.detections), 160)
        heat = ""
        if loc.classes and loc.classes[0]["class_index"] in loc.heat:
            top = loc.classes[0]
            heat = img_tag(heat_overlay(thumbnail(image, 160), loc.heat[top["class_index"]]), "heat map", jpeg=True)
        found = ", ".join(f"{d.label} {d.score:.2f}" for d in loc.detections) or "nothing above the threshold"
        tiles.append(f'<div class="gv-tile">{img_tag(boxed, "boxes", jpeg=True)}{heat}'
                     f"<b>{esc(found)}</b><br><small>{esc(loc.image)}</small></div>")
    bad = sum("error" in r for r in results)  # --skip-bad's records of files that did not decode
    more = len(results) - len(results.shown) - bad
    notes = [f"{more} more result(s) not shown"] * (more > 0) + [f"{bad} unreadable file(s) skipped"] * (bad > 0)
    tail = f"<p><small>{esc('; '.join(notes))}</small></p>" if notes else ""
    return _block("localize", f"Localisation: {len(results)} image(s)", f'<div class="gv-grid">{"".join(tiles)}</div>',
                  tail)

