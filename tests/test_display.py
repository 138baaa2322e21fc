"""Notebook displays: _repr_html_ of Run, CompareResult, DataSplits and localisation results, and the
show_results / plot_top_losses figures (their titles are the model's predictions and losses)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import gapvision as gv
from gapvision.compare.api import CompareResult
from gapvision.display import DISPLAY_LIMIT, DisplayFigure, LocalizeResults
from gapvision.report import load_validation, validation_losses

torch.set_num_threads(1)
DATA = "builtin:shapes?n=160&size=32"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return gv.train(DATA, "fastnet_s", "gap", out=tmp_path_factory.mktemp("display") / "run", img_size=32,
                    batch_size=32, augment="none", quiet=True, workers=0, epochs=2, optimizer="sgd", lr=0.05)


def images_in(html: str, kind: str = "png") -> int:
    return html.count(f"data:image/{kind};base64,")


def test_run_html_has_metrics_curves_and_confusion(run):
    html = run._repr_html_()
    assert 'class="gapvision-run"' in html and "fastnet_s + gap head" in html
    assert f"{run.metrics['best_val_acc']:.4f}" in html and images_in(html) == 2  # curves + confusion matrix
    bare = gv.runs.Run(None, {**run.config}, model=run.model)  # no directory: no metrics, no figures, no error
    assert "no metrics.json" in bare._repr_html_() and images_in(bare._repr_html_()) == 0


def test_show_results_titles_are_the_predictions(run):
    fig = run.show_results(6)
    assert isinstance(fig, DisplayFigure) and fig._repr_png_().startswith(b"\x89PNG")
    val = load_validation(run)
    _, probs = validation_losses(run, val)
    shown = [ax for ax in fig.axes if ax.get_title()]
    assert len(shown) == 6
    for ax in shown:
        pred, true = ax.get_title().split("\ntrue: ")
        right = pred.rsplit(" ", 1)[0] == true
        assert ax.title.get_color() == ("#1b7f3b" if right else "#b00020")
    preds = {run.classes[int(p)] for p in probs.argmax(1)}
    assert {ax.get_title().split(" ")[0] for ax in shown} <= preds


def test_plot_top_losses_shows_the_highest_losses_in_order(run):
    fig = run.plot_top_losses(4)
    losses, _ = validation_losses(run, load_validation(run))
    shown = [float(re.search(r"loss ([\d.]+)", ax.get_title()).group(1)) for ax in fig.axes if ax.get_title()]
    assert len(shown) == 4 and shown == sorted(shown, reverse=True)
    np.testing.assert_allclose(shown, np.sort(losses)[::-1][:4], atol=0.006)


def test_splits_html_counts_every_class_and_split():
    splits = gv.load_data(DATA)
    html = splits._repr_html_()
    assert 'class="gapvision-data"' in html and images_in(html, "jpeg") == 1
    for cls, n in splits.train.class_counts().items():
        m = splits.val.class_counts()[cls]
        assert f"<tr><td>{cls}</td><td>{n}</td><td>{m}</td>" in html
    assert f"<td>total</td><td>{len(splits.train)}</td><td>{len(splits.val)}</td>" in html


def test_compare_html_lists_heads_and_overlays_curves(run):
    rows = [{"head": "gap", "head_params": 516, "best_val_acc_mean": 0.75, "best_val_acc_std": 0.0},
            {"head": "fc", "head_params": 9000, "best_val_acc_mean": 0.5, "best_val_acc_std": 0.0}]
    res = CompareResult(Path("x"), ["gap", "fc"], [0, 1], rows, {"gap": [run], "fc": [run]}, {}, "")
    html = res._repr_html_()
    assert 'class="gapvision-compare"' in html and "best head: <b>gap</b>" in html
    assert "on seeds 0, 1" in html and "[0, 1]" not in html  # words, not a Python list
    assert "<td>9000</td>" in html and "<td>0.7500</td>" in html and images_in(html) == 1


def test_localize_results_are_the_plain_dicts_and_display_boxes(run, tmp_path):
    from gapvision.data.builtin import make_scenes

    scenes, _ = make_scenes(DISPLAY_LIMIT + 2, 64, seed=0)
    res = gv.localize(run, list(scenes), min_score=0.0, method="cam")
    assert isinstance(res, LocalizeResults) and isinstance(res, list) and len(res) == DISPLAY_LIMIT + 2
    assert json.loads(json.dumps(res)) == [dict(r) for r in res]
    html = res._repr_html_()
    assert 'class="gapvision-localize"' in html and html.count('class="gv-tile"') == DISPLAY_LIMIT
    assert "2 more result(s) not shown" in html and images_in(html, "jpeg") == 2 * DISPLAY_LIMIT
    first = res[0]["detections"][0]
    assert f"{first['label']} {first['score']:.2f}" in html
    # --skip-bad's record of a file that did not decode is counted as such, not as a result left out
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    few = gv.localize(run, [scenes[0], tmp_path / "cut.png"], method="cam", skip_bad=True)
    assert "error" in few[1] and few[1]["image"] == str(tmp_path / "cut.png")
    html = few._repr_html_()
    assert html.count('class="gv-tile"') == 1 and "1 unreadable file(s) skipped" in html and "not shown" not in html
