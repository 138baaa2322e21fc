"""``report(path)``: one self-contained HTML file (``report.html``, every image embedded as base64) about a run or
a comparison.

A run directory gives: a summary, the loss/accuracy curves, the confusion matrix, per-class metrics, a grid of the
worst mistakes (the highest validation losses, recomputed from the run's data) and sample class maps. A compare
directory (``summary.csv`` + one folder per run) gives the head table and the runs' validation curves overlaid.
When the run's data cannot be loaded here (moved, deleted, in-memory arrays) the report says so in place of the
sections that need it.
"""
from __future__ import annotations

import csv
import time
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from . import __version__, atomic
from .data.imageset import ImageSet
from .errors import GapvisionError
from .htmlparts import THUMB, data_uri, esc, figure_png, fmt, img_tag, note, section, table, thumbnail  # noqa: F401
from .runs import Run, load_run

WORST = 12  # images in the worst-mistakes grid
MAP_SAMPLES = 8  # images with class maps

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.3rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #ddd;padding:.25rem .6rem;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:.6rem}.tile{width:{thumb}px;font-size:.75rem;line-height:1.25}
.tile img{width:{thumb}px;height:{thumb}px;object-fit:contain;background:#eee;display:block}
.bad{color:#b00020}.ok{color:#1b7f3b}.facts td{text-align:left}
.note{background:#fff6d6;border:1px solid #e8d48a;padding:.5rem .8rem}
img.figure{max-width:100%}pre{white-space:pre-wrap;background:#f7f7f7;padding:.6rem}small{color:#666}
""".replace("{thumb}", str(THUMB))


def report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` into ``path`` (a run directory or a compare directory) and return its path."""
    path = Path(path)
    if (path / "config.json").exists():
        title, body = run_sections(load_run(path))
    elif (path / "summary.csv").exists():
        title, body = compare_sections(path)
    else:
        raise GapvisionError(f"{path} is neither a run directory (config.json) nor a compare directory (summary.csv)")
    target = Path(out) if out else path / "report.html"
    atomic.write_text(target, page(title, body))
    return target


def page(title: str, sections: Sequence[str]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{CSS}</style></head>"
            f"<body><h1>{esc(title)}</h1><p><small>gapvision {__version__} report, {stamp}</small></p>\n"
            + "\n".join(sections) + "\n</body></html>\n")


# -- run report ---------------------------------------------------------------------------------------------------
def run_sections(run: Run) -> tuple[str, list[str]]:
    cfg = run.config
    mc = run.model_config
    metrics = run.metrics
    out = [summary_section(run, metrics)]
    history = run.history
    if history:
        from .plots import plot_curves

        png = figure_png(lambda p: plot_curves(history, p, f"{mc.model} + {mc.head} head"))
        out.append(section("Training curves", img_tag(png, "loss and accuracy per epoch", "figure"), "curves"))
    else:
        out.append(section("Training curves", note("history.csv is missing: no finished epoch"), "curves"))
    out.append(confusion_section(run, metrics))
    out.append(per_class_section(metrics))
    try:
        val = load_validation(run)
        error = None
    except GapvisionError as e:
        val, error = None, str(e)
    if val is None:
        msg = f"Not available: {error}"
        out.append(section("Worst mistakes (highest validation losses)", note(msg), "mistakes"))
        out.append(section("Sample class maps", note(msg), "class-maps"))
    else:
        out.append(mistakes_section(run, val))
        out.append(class_maps_section(run, val))
    title = f"{mc.model} + {mc.head} head on {cfg.get('data', {}).get('data', '?')}"
    return title, out


def summary_section(run: Run, metrics: dict) -> str:
    cfg, mc = run.config, run.model_config
    train = cfg.get("train", {})
    rows = [
        ("run directory", str(run.path)),
        ("data", cfg.get("data", {}).get("data")),
        ("classes", f"{len(run.classes)}: {', '.join(run.classes[:20])}{' ...' if len(run.classes) > 20 else ''}"),
        ("model / head", f"{mc.model} / {mc.head}"),
        ("input", f"{mc.in_channels} x {mc.img_size} x {mc.img_size}"),
        ("optimizer", f"{train.get('optimizer')} lr {train.get('lr')}, {train.get('schedule')} schedule, "
                      f"batch {train.get('batch_size')}, seed {cfg.get('seed')}"),
        ("status", metrics.get("status", "no metrics.json")),
        ("epochs run (best)", f"{metrics.get('epochs_run', '?')} ({metrics.get('best_epoch', '?')})"),
        ("best validation accuracy", metrics.get("best_val_acc")),
        ("final validation accuracy", metrics.get("final_val_acc")),
        ("test accuracy", metrics.get("test_acc", "no test split")),
        ("training time (s)", metrics.get("seconds")),
    ]
    return section("Summary", table(None, rows, "facts"), "summary")


def confusion_section(run: Run, metrics: dict) -> str:
    cm = metrics.get("confusion_matrix")
    if cm is None:
        return section("Confusion matrix", note("metrics.json is missing: the run did not finish"), "confusion")
    from .plots import plot_confusion

    png = figure_png(lambda p: plot_confusion(cm, run.classes, p, "validation"))
    return section("Confusion matrix (validation)", img_tag(png, "confusion matrix", "figure"), "confusion")


def per_class_section(metrics: dict) -> str:
    blocks = []
    for split in ("val", "test"):
        rows = metrics.get(split, {}).get("per_class")
        if rows:
            body = [(r["class"], r["precision"], r["recall"], r["f1"], r["support"]) for r in rows]
            acc = metrics[split].get("acc")
            blocks.append(f"<h3>{'validation' if split == 'val' else 'test'} (accuracy {fmt(acc)}, macro F1 "
                          f"{fmt(metrics[split].get('macro_f1'))})</h3>"
                          + table(("class", "precision", "recall", "F1", "images"), body, f"per-class {split}"))
    return section("Per-class metrics", "".join(blocks) or note("metrics.json has no per-class metrics"), "per-class")


def load_validation(run: Run) -> ImageSet:
    """The run's validation split, rebuilt from config.json through the training pipeline (same seed, same split);
    GapvisionError with the reason when the data is not available here."""
    from .train.pipeline import DataOptions, prepare_data

    data = dict(run.config.get("data") or {})
    source = data.get("data")
    if source in (None, "<arrays>"):
        raise GapvisionError("the run was trained on in-memory arrays, which are not stored in the run directory")
    names = {f.name for f in fields(DataOptions)}
    try:
        splits, _ = prepare_data(DataOptions(**{k: v for k, v in data.items() if k in names}),
                                 int(run.config.get("seed", 0)), preprocess=run.preprocess)
    except Exception as e:  # noqa: BLE001 - missing folders, unreadable manifests...: all mean "data gone"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GapvisionError(f"the run's data {source} cannot be loaded here ({first})") from None
    own = run.split_options()
    if "max_images" in own:  # compare --max-images: the capped sample the run validated on
        from .data.sources import limit_images

        splits = limit_images(splits, own["max_images"], own["seed"])
    if list(splits.classes) != list(run.classes):
        raise GapvisionError(f"the data at {source} now has classes {splits.classes}, not the run's {run.classes}")
    if not len(splits.val):
        raise GapvisionError(f"the run's data {source} has no validation images")
    return splits.val


def validation_losses(run: Run, val: ImageSet, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-image cross-entropy loss and class probabilities (N x K) of the run's model on ``val`` (its Predictor)."""
    from .train.pipeline import make_batches

    predictor = run.predictor
    res = predictor.evaluate(make_batches(val, run.preprocess, batch_size or predictor.batch_size, workers=0),
                             keep_probs=True)
    probs = res.probs if res.probs is not None else np.zeros((0, len(run.classes)))
    p_true = probs[np.arange(len(res.targets)), res.targets]
    return -np.log(np.clip(p_true, 1e-12, 1.0)), probs


def mistakes_section(run: Run, val: ImageSet, k: int = WORST) -> str:
    losses, probs = validation_losses(run, val)
    order = np.argsort(-losses, kind="stable")[:k]
    wrong = int((probs.argmax(1) != val.labels).sum())
    tiles = []
    for i in order:
        true, pred = int(val.labels[i]), int(probs[i].argmax())
        ok = true == pred
        caption = (f"<b class=\"{'ok' if ok else 'bad'}\">{esc(run.classes[pred])}</b> {probs[i, pred]:.2f}<br>"
                   f"true: {esc(run.classes[true])} ({probs[i, true]:.2f})<br>loss {losses[i]:.3f}<br>"
                   f"<small>{esc(Path(val.name(int(i))).name)}</small>")
        tiles.append(f'<div class="tile mistake">{img_tag(thumbnail(val.load(int(i))), val.name(int(i)), jpeg=True)}'
                     f"{caption}</div>")
    intro = (f"<p>{wrong} of {len(val)} validation images misclassified. The {len(order)} images with the highest "
             "loss: predicted class (probability), true class (its probability), loss.</p>")
    return section("Worst mistakes (highest validation losses)", intro + f'<div class="grid">{"".join(tiles)}</div>',
                   "mistakes")


def class_maps_section(run: Run, val: ImageSet, n: int = MAP_SAMPLES) -> str:
    """One validation image per class (up to ``n``) with the predicted class's map from the FCN model."""
    try:
        from .localize import upsample
        from .localize.render import heat_overlay

        fcn = run.predictor.fcn
    except (ImportError, GapvisionError) as e:
        return section("Sample class maps", note(f"class maps are not available for this model: {e}"), "class-maps")
    from .data.transforms import to_uint8

    picks = sample_indices(val.labels, len(run.classes), n)
    pils = [val.load(i) for i in picks]
    seen = torch.stack([to_uint8(im, run.preprocess) for im in pils])  # what the network sees, at training size
    maps = run.predictor.class_maps(seen)
    probs = upsample(maps.probs, tuple(seen.shape[-2:])).cpu()
    image_probs = maps.image_logits.softmax(1).cpu()
    tiles = []
    for j, i in enumerate(picks):
        pred = int(image_probs[j].argmax())
        shown = seen[j].flip(0) if run.preprocess.bgr else seen[j]
        base = Image.fromarray(shown.permute(1, 2, 0).squeeze(-1).numpy())
        over = heat_overlay(thumbnail(base), probs[j, pred].numpy(), vmax=1.0)
        tiles.append(f'<div class="tile classmap">{img_tag(over, "class map", jpeg=True)}'
                     f"map of <b>{esc(run.classes[pred])}</b> {float(image_probs[j, pred]):.2f}<br>"
                     f"true: {esc(run.classes[int(val.labels[i])])}</div>")
    intro = (f"<p>Per-location probability of the predicted class (softmax over classes, scale 0-1), from the "
             f"fully-convolutional copy of the model (stride {fcn.stride}, map {maps.probs.shape[-1]}x"
             f"{maps.probs.shape[-2]} at the training size). <code>gapvision localize</code> computes these at any "
             "image size.</p>")
    return section("Sample class maps", intro + f'<div class="grid">{"".join(tiles)}</div>', "class-maps")


def sample_indices(labels: np.ndarray, num_classes: int, n: int) -> list[int]:
    """The first image of each class (classes in order), then more in turn, up to ``n``."""
    per_class = [list(np.flatnonzero(labels == c)) for c in range(num_classes)]
    out: list[int] = []
    depth = 0
    while len(out) < n and any(len(p) > depth for p in per_class):
        out.extend(int(p[depth]) for p in per_class if len(p) > depth and len(out) < n)
        depth += 1
    return out


# -- compare report ------------------------------------------------------------------------------------------------
def compare_sections(path: Path) -> tuple[str, list[str]]:
    with open(path / "summary.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    out = []
    if rows:
        out.append(section("Heads compared", table(rows[0], rows[1:], "summary"), "summary"))
    else:
        out.append(section("Heads compared", note("summary.csv is empty"), "summary"))
    runs = compare_runs(path)
    if runs:
        png = figure_png(lambda p: plot_overlaid(runs, p))
        out.append(section("Validation curves, all runs", img_tag(png, "overlaid validation curves", "figure"),
                           "curves"))
        out.append(section("Runs", table(("run", "model", "head", "best val acc", "epochs"), [
            (name, r.model_config.model, r.model_config.head, r.metrics.get("best_val_acc"), len(r.history))
            for name, r in runs]), "runs"))
    else:
        out.append(section("Validation curves, all runs", note("no run folders with history.csv found"), "curves"))
    findings = path / "report.md"
    if findings.exists():
        out.append(section("Findings (report.md)", f"<pre>{esc(findings.read_text(encoding='utf-8'))}</pre>",
                           "findings"))
    figures = sorted(p for p in path.glob("*.png"))
    if figures:
        out.append(section("Figures", "".join(f"<p>{esc(p.name)}<br>{img_tag(p.read_bytes(), p.name, 'figure')}</p>"
                                               for p in figures), "figures"))
    return f"Comparison: {path.name}", out


def compare_runs(path: Path) -> list[tuple[str, Run]]:
    """The run folders under a compare directory (any depth), named by their relative path."""
    found = []
    for cfg in sorted(path.rglob("config.json")):
        folder = cfg.parent
        if (folder / "history.csv").exists():
            try:
                found.append((str(folder.relative_to(path)), load_run(folder)))
            except GapvisionError:
                continue
    return found


def plot_overlaid(runs: Sequence[tuple[str, Run]], path: Path) -> None:
    """Validation accuracy and loss per epoch, one line per run, colour by head."""
    import matplotlib
    from matplotlib.lines import Line2D

    from .plots import new_figure, save_figure

    heads = sorted({r.model_config.head for _, r in runs})
    colours = {h: matplotlib.colormaps["tab10"](i % 10) for i, h in enumerate(heads)}
    fig = new_figure(figsize=(11, 4.2))
    a, b = fig.subplots(1, 2)
    for name, r in runs:
        hist = r.history
        ep = [h["epoch"] for h in hist]
        c = colours[r.model_config.head]
        a.plot(ep, [h["val_acc"] for h in hist], "-", color=c, alpha=0.8, label=name)
        b.plot(ep, [h["val_loss"] for h in hist], "-", color=c, alpha=0.8, label=name)
    a.set(xlabel="epoch", ylabel="validation accuracy", ylim=(0, 1.02))
    b.set(xlabel="epoch", ylabel="validation loss")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[h], label=h) for h in heads]
    a.legend(handles=handles, title="head")
    save_figure(fig, path)
