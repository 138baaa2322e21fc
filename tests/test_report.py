"""The HTML report: self-contained (every image inlined), the sections' contents, the worst mistakes really being
the highest validation losses, the data-gone case, the compare-directory report and the CLI."""
from __future__ import annotations

import csv
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

import gapvision as gv
from gapvision.cli import main
from gapvision.report import load_validation, report

DATA = "builtin:shapes?n=120&size=32"
FAST = dict(img_size=32, batch_size=32, augment="none", quiet=True, workers=0, epochs=2, optimizer="sgd", lr=0.05)


class Page(HTMLParser):
    """Collects the <img> sources, link targets, section ids and the text of every element with a class."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.sections: list[str] = []
        self.classes: dict[str, int] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("href", "src"):
            if key in a and tag != "img":
                self.links.append(a[key])
        if tag == "section" and "id" in a:
            self.sections.append(a["id"])
        for c in (a.get("class") or "").split():
            self.classes[c] = self.classes.get(c, 0) + 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return gv.train(DATA, "fastnet_s", "gap", out=tmp_path_factory.mktemp("report") / "run", **FAST)


@pytest.fixture(scope="module")
def html_text(run) -> str:
    path = report(run.path)
    assert path == run.path / "report.html"
    return path.read_text()


def test_report_is_self_contained(html_text):
    page = Page(html_text)
    assert page.images and all(src.startswith("data:image/") and ";base64," in src for src in page.images)
    assert page.links == []  # no stylesheet, script or other file to fetch
    assert not re.search(r"(src|href)=\"(https?:|/|file:)", html_text)


def test_report_has_every_section(html_text, run):
    page = Page(html_text)
    assert page.sections == ["summary", "curves", "confusion", "per-class", "mistakes", "class-maps"]
    for cls in run.classes:
        assert f"<td>{cls}</td>" in html_text  # per-class metrics rows
    assert f"<td>{run.metrics['best_val_acc']:.4f}</td>" in html_text
    assert page.classes["figure"] == 2  # curves, confusion matrix
    assert page.classes["classmap"] == 8  # two per class (4 classes, 24 validation images)
    assert "stride 8" in html_text


def test_worst_mistakes_are_the_highest_validation_losses(html_text, run):
    val = load_validation(run)
    logits = run.predict_logits([val.load(i) for i in range(len(val))])
    losses = torch.nn.functional.cross_entropy(logits, torch.as_tensor(val.labels), reduction="none").numpy()
    shown = [float(x) for x in re.findall(r"loss (\d+\.\d+)<br>", html_text)]
    assert len(shown) == 12 and Page(html_text).classes["mistake"] == 12
    assert shown == sorted(shown, reverse=True)
    assert shown == pytest.approx(np.sort(losses)[::-1][:12].tolist(), abs=2e-3)
    wrong = int((logits.argmax(1).numpy() != val.labels).sum())
    assert f"{wrong} of {len(val)} validation images misclassified" in html_text


def test_report_says_when_the_data_is_gone(run, tmp_path, copy_run):
    moved = copy_run(run.path, tmp_path / "moved", lambda cfg: cfg["data"].update(data=str(tmp_path / "deleted-images")))
    text = report(moved).read_text()
    assert text.count("Not available: the run&#x27;s data") == 2 and "deleted-images" in text
    page = Page(text)
    assert "mistake" not in page.classes and page.classes["figure"] == 2  # curves and confusion still there


def make_compare_dir(run, root: Path, copy_run) -> Path:
    """A compare directory as `gapvision compare` writes it: summary.csv and one run folder per head."""
    rows = []
    for head, shift in (("gap", 0.0), ("gmp", -0.1)):
        copy_run(run.path, root / head / "seed0", lambda cfg, head=head: cfg["model"].update(head=head))
        rows.append({"head": head, "runs": 1, "best_val_acc": round(run.metrics["best_val_acc"] + shift, 4)})
    with open(root / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_compare_report_has_head_table_and_overlaid_curves(run, tmp_path, copy_run):
    root = make_compare_dir(run, tmp_path / "cmp", copy_run)
    text = report(root).read_text()
    page = Page(text)
    assert page.sections == ["summary", "curves", "runs"]
    assert "<th>head</th><th>runs</th><th>best_val_acc</th>" in text
    assert "<td>gap</td>" in text and "<td>gmp</td>" in text
    assert "<td>gap/seed0</td>" in text and "<td>gmp/seed0</td>" in text
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")


def test_report_of_a_real_comparison(tmp_path):
    compare = pytest.importorskip("gapvision.compare", reason="gapvision.compare is not available").compare
    res = compare(DATA, "fastnet_s", heads="gap,gmp", seeds=0, out=tmp_path / "cmp", **{**FAST, "epochs": 1})
    text = report(res.path).read_text()
    page = Page(text)
    assert page.sections[:3] == ["summary", "curves", "runs"]
    with open(res.path / "summary.csv", newline="") as f:
        header = next(csv.reader(f))
    assert "".join(f"<th>{h}</th>" for h in header) in text
    assert "<td>gap-s0</td>" in text and "<td>gmp-s0</td>" in text
    figures = sorted(p.name for p in res.path.glob("*.png"))
    assert len(page.images) == 1 + len(figures) and all(src.startswith("data:image/png") for src in page.images)


def test_cli_report(run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run.path), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
