"""Figures written into run directories: loss/accuracy curves, the confusion matrix, sample grids.

Every figure is a :class:`matplotlib.figure.Figure` on its own Agg canvas (:func:`new_figure`): nothing here selects
a global backend or touches pyplot, so a notebook user's matplotlib settings stay as they were.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import atomic
from .errors import DataError

if TYPE_CHECKING:
    from .data.imageset import ImageSet


def new_figure(**kw: Any) -> Any:
    """A matplotlib Figure drawn by the Agg renderer (``kw`` as for Figure: figsize...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path) -> None:
    """Lay out and write ``fig`` atomically at 100 dpi."""
    fig.tight_layout()
    atomic.savefig(fig, path, dpi=100)


def plot_curves(history: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Two panels: loss and accuracy per epoch, train vs validation."""
    if not history:
        return
    ep = [r["epoch"] for r in history]
    fig = new_figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    a.plot(ep, [r["train_loss"] for r in history], "o-", label="train")
    a.plot(ep, [r["val_loss"] for r in history], "o-", label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.plot(ep, [r["train_acc"] for r in history], "o-", label="train")
    b.plot(ep, [r["val_acc"] for r in history], "o-", label="validation")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_confusion(cm: np.ndarray | list, classes: Sequence[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix with counts; large class counts drop the per-cell text."""
    cm = np.asarray(cm)
    k = len(classes)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = min(14, 3 + 0.5 * k)
    fig = new_figure(figsize=(size, size * 0.9))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path)


GRID_PER_CLASS = 8  # sample grids: images per class (columns)
GRID_MAX_CLASSES = 30  # ... and classes (rows) at most


def write_sample_grid(imgs: "ImageSet", out_png: str | os.PathLike, per_class: int = GRID_PER_CLASS,
                      max_classes: int = GRID_MAX_CLASSES) -> Path:
    """A PNG with up to ``per_class`` readable samples (columns) for each class (rows)."""
    classes = list(imgs.classes)[:max_classes]
    rows = max(1, len(classes))
    fig = new_figure(figsize=(1.3 * per_class + 1.2, 1.3 * rows + 0.3))
    axes = fig.subplots(rows, per_class, squeeze=False)
    for r, cls in enumerate(classes):
        shown = 0
        for i in np.flatnonzero(imgs.labels == r):
            if shown == per_class:
                break
            try:
                img = imgs.load(int(i))
            except DataError:
                continue
            grey = img.mode in ("L", "1", "LA")
            axes[r][shown].imshow(np.asarray(img.convert("L" if grey else "RGB")), cmap="gray" if grey else None,
                                  vmin=0, vmax=255)
            shown += 1
        axes[r][0].set_ylabel(f"{cls}\n({int((imgs.labels == r).sum())})", rotation=0, ha="right", va="center",
                              fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    out = Path(out_png)
    atomic.savefig(fig, out, dpi=80)
    return out
