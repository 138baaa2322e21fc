"""The notebook display of a :class:`DataSplits`: images per class and split, and a grid of training samples.
Beside the data layer (it uses only htmlparts and plots), so ``DataSplits._repr_html_`` imports nothing above it."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..htmlparts import block as _block
from ..htmlparts import esc, inline_figure as _figure, table
from ..plots import write_sample_grid

if TYPE_CHECKING:
    from .imageset import DataSplits


def splits_html(splits: DataSplits, per_class: int = 6) -> str:
    """Images per class and split, and a grid of training samples (one row per class)."""
    parts = [("train", splits.train), ("val", splits.val)]
    if splits.test is not None:
        parts.append(("test", splits.test))
    counts = {name: s.class_counts() for name, s in parts}
    rows = [[c] + [counts[name].get(c, 0) for name, _ in parts] for c in splits.classes]
    rows.append(["total"] + [len(s) for _, s in parts])
    grid = _figure(lambda p: write_sample_grid(splits.train, p, per_class=per_class), "samples",
                   jpeg=True) if len(splits.train) else ""
    notes = "".join(f"<p><small>note: {esc(n)}</small></p>" for n in splits.notes)
    return _block("data", f"Data: {splits.source or 'images'} ({len(splits.classes)} classes)",
                  table(["class"] + [name for name, _ in parts], rows, "gv-counts"), notes, grid)
