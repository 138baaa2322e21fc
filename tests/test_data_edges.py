"""Data-input edges found by trying the CLI as a user would: files the walker passes over, broken links, manifests
without a header or with named columns or Windows paths, evaluation notes and splits, ``--val-split 0``, labelling
mistakes inspect-data reports, array inputs, outputs that cannot be written. End to end through the CLI where a
user meets them; the helpers are those of test_bad_inputs.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import gapvision as gv
from gapvision import atomic
from gapvision.data.sources import load_data, load_images
from gapvision.errors import DataError, GapvisionError
from gapvision.train import metrics as M

from test_bad_inputs import ROWS, TRAIN, _cli, _folder, _manifest, _one_line_error, _pixels
from test_bad_inputs import manifest_data, trained_run  # noqa: F401 (fixtures, shared)


# --------------------------------------------------------------------------------------------- folders
def test_a_broken_link_is_a_one_line_error_or_a_counted_skip(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"cat": 4, "dog": 4})
    os.symlink(tmp_path / "gone.png", data / "cat" / "dangling.png")
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", data, "--out", tmp_path / "bad"], capsys)
    _one_line_error(rc, err, "dangling.png", "leads to no file", "--skip-bad")

    rc, _, err = _cli([*TRAIN, "--quiet", "--data", data, "--skip-bad", "--out", tmp_path / "ok"], capsys)
    assert rc == 0, err
    assert "skipped 1 image name that leads to no file" in err and "dangling.png" in err
    assert gv.load_run(tmp_path / "ok").metrics["val"]["images"] == 2  # a quarter of the 8 real images


def test_other_image_types_are_read_and_what_the_walker_passes_over_is_counted(tmp_path):
    data = _folder(tmp_path / "d", {"cat": 3, "dog": 3})
    _pixels(1).save(data / "cat" / "photo.jfif", format="JPEG")
    _pixels(2).save(data / "dog" / "scan.tga")
    (data / "dog" / "notes.txt").write_text("not an image")
    (data / "dog" / ".DS_Store").write_bytes(b"\0")  # hidden: skipped silently, as documented
    _folder(tmp_path / "elsewhere", {"more": 2})
    os.symlink(tmp_path / "elsewhere" / "more", data / "cat" / "linked", target_is_directory=True)

    splits = load_data(data, val_split=0)
    names = sorted(Path(p).name for p in splits.train.items)
    assert "photo.jfif" in names and "scan.tga" in names and len(names) == 8
    [note] = [n for n in splits.notes if n.startswith("ignored")]
    assert note.startswith(f"ignored 1 file of other types and 1 symlinked folder (not entered) under {data}")
    assert "notes.txt" in note or "linked/" in note


# --------------------------------------------------------------------------------------------- manifests
def test_a_manifest_without_a_header_keeps_its_first_row_and_says_so(manifest_data, tmp_path, capsys):
    m = _manifest(manifest_data, ROWS)  # no "file,label" line
    splits = load_data(m, val_split=0)
    assert len(splits.train) == 8 and splits.train.class_counts() == {"cat": 4, "dog": 4}
    assert any("list.csv has no header row" in n for n in splits.notes)
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", m, "--out", tmp_path / "r"], capsys)
    assert rc == 0 and "has no header row" in err


@pytest.mark.parametrize("header, row", [
    ("label,file", lambda f, c: f"{c},{f}"),
    ("id,File_Name,Class", lambda f, c: f"7,{f},{c}"),
    ("file_name\texpression", lambda f, c: f"{f}\t{c}"),  # the tutorial's train_master.tsv
])
def test_manifest_columns_are_found_by_their_names(manifest_data, header, row):
    name = "list.tsv" if "\t" in header else "list.csv"
    lines = [header] + [row(*r.split(",")) for r in ROWS]
    splits = load_data(_manifest(manifest_data, lines, name), val_split=0)
    assert splits.classes == ["cat", "dog"]
    assert sorted(Path(p).name for p in splits.train.items) == sorted(Path(r.split(",")[0]).name for r in ROWS)


def test_windows_paths_in_a_manifest_are_read(manifest_data):
    m = _manifest(manifest_data, ["file,label", *(r.replace("/", "\\") for r in ROWS)])
    splits = load_data(m, val_split=0)
    assert len(splits.train) == 8
    assert any("Windows paths" in n and "row 2" in n for n in splits.notes)


def test_a_path_relative_to_the_current_folder_gets_the_image_root_hint(manifest_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sub = tmp_path / "lists"
    sub.mkdir()
    m = _manifest(sub, ["file,label", *(f"d/{r}" for r in ROWS)])
    with pytest.raises(DataError, match=r"row 2: image 'd/cat/000.png' not found .* pass --image-root "):
        load_data(m)
    assert len(load_data(m, image_root=tmp_path, val_split=0).train) == 8


# --------------------------------------------------------------------------------------------- evaluate
def test_evaluate_counts_what_it_skipped(trained_run, tmp_path, capsys):
    data = _folder(tmp_path / "e", {"cat": 3, "dog": 3})
    (data / "dog" / "broken.png").write_text("not an image")
    rc, out, err = _cli(["evaluate", trained_run, "--data", data, "--skip-bad"], capsys)
    assert rc == 0, err
    assert "on 6 images" in out
    assert "note: skipped 1 unreadable image" in err and "broken.png" in err
    assert any("broken.png" in n for n in gv.evaluate(trained_run, data, skip_bad=True, out=tmp_path / "o")["notes"])


def test_evaluate_without_split_on_train_and_val_folders_scores_val_and_says_so(trained_run, tmp_path, capsys):
    root = tmp_path / "tv"
    _folder(root / "train", {"cat": 3, "dog": 3})
    _folder(root / "val", {"cat": 2, "dog": 1})
    rc, out, err = _cli(["evaluate", trained_run, "--data", root], capsys)
    assert rc == 0, err
    assert f"on 3 images ({root}, val)" in out
    assert "has no test split: evaluated its val split" in err
    rc, _, err = _cli(["evaluate", trained_run, "--data", root, "--split", "test"], capsys)
    _one_line_error(rc, err, "has no test split", "--split train or --split val")


def test_macro_f1_counts_only_the_classes_that_occur():
    # a set of one class's images, all right: F1 1 for that class; the absent class is not an F1 of 0
    assert M.summarize(np.array([0, 0, 0]), np.array([0, 0, 0]), ["cat", "dog"])["macro_f1"] == 1.0
    # a predicted class with no images still counts (precision 0), as scikit-learn's macro F1
    assert M.summarize(np.array([0, 0]), np.array([0, 1]), ["cat", "dog", "eel"])["macro_f1"] == pytest.approx(
        np.mean([2 / 3, 0.0]), abs=1e-4)


# --------------------------------------------------------------------------------------------- --val-split 0
def test_val_split_zero_trains_without_fake_validation_figures(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"cat": 4, "dog": 4})
    argv = [a if a != "0.25" else "0" for a in TRAIN]
    rc, out, err = _cli([*argv, "--epochs", "2", "--data", data, "--out", tmp_path / "r"], capsys)
    assert rc == 0, err
    assert "no val" in out and "val loss 0.0000" not in out
    m = gv.load_run(tmp_path / "r").metrics
    assert m["best_val_acc"] is None and m["final_val_acc"] is None and m["final_val_loss"] is None
    assert m["best_epoch"] == 2 and any("no validation images" in w for w in m["warnings"])
    rc, _, err = _cli(["evaluate", tmp_path / "r", "--data", data, "--split", "val"], capsys)
    _one_line_error(rc, err, "has no val images to evaluate", "--val-split 0")
    rc, _, err = _cli(["compare", "--data", data, "--val-split", "0", "--epochs", "1", "--img-size", "16",
                       "--out", tmp_path / "c"], capsys)
    _one_line_error(rc, err, "gives no validation images", "--val-split 0")


# --------------------------------------------------------------------------------------------- inspect-data
def test_inspect_data_reports_classes_that_differ_in_case_and_images_labelled_two_ways(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"Cat": 2, "cat": 2, "dog": 2})
    (data / "dog" / "copy.png").write_bytes((data / "cat" / "000.png").read_bytes())
    rc, out, err = _cli(["inspect-data", "--data", data, "--val-split", "0", "--out", tmp_path / "s.png"], capsys)
    assert rc == 0, err
    assert "classes 'Cat' and 'cat' differ only in case" in out
    assert "1 image(s) labelled two ways" in out and "as 'dog'" in out and "as 'cat'" in out


# --------------------------------------------------------------------------------------------- arrays
def test_arrays_of_integers_are_images_and_nan_is_an_error():
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3))  # int64
    imgs = load_images((x, np.array([0, 1] * 3)))
    assert np.array_equal(np.asarray(imgs.load(0)), x[0].astype(np.uint8))
    with pytest.raises(DataError, match="0..255"):
        load_images((x + 1, np.zeros(6, dtype=int)))
    bad = np.full((4, 8, 8), 0.5)
    bad[2, 3, 3] = np.nan
    with pytest.raises(DataError, match="NaN or infinite values .*image 2"):
        load_images((bad, np.zeros(4, dtype=int)))


# --------------------------------------------------------------------------------------------- outputs, predict
def test_writing_over_a_folder_says_so(tmp_path):
    (tmp_path / "out.png").mkdir()
    with pytest.raises(GapvisionError, match="out.png is a folder: give the output a file name"):
        atomic.write_bytes(tmp_path / "out.png", b"x")
    (tmp_path / "file").write_text("")
    with pytest.raises(GapvisionError, match="a part of that path is a file, not a folder"):
        atomic.write_bytes(tmp_path / "file" / "x.json", b"x")


def test_predict_reads_a_manifest_with_and_without_output(trained_run, manifest_data, tmp_path, capsys):
    m = _manifest(manifest_data, ["file,label", *ROWS])
    rc, out, err = _cli(["predict", trained_run, m, "--json"], capsys)
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["image"]).name for r in records] == [Path(r.split(",")[0]).name for r in ROWS]
    rc, out, err = _cli(["predict", trained_run, m, "--output", tmp_path / "p.jsonl"], capsys)
    assert rc == 0, err
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 8


def test_the_predict_table_aligns_wide_characters():
    from gapvision.predict import display_width, format_table

    rows = [{"image": name, "top": [{"label": "cat", "prob": 0.9}]} for name in ("猫の写真.png", "dog.png", "é.png")]
    lines = format_table(rows).splitlines()
    assert display_width("猫") == 2 and display_width("e\u0301") == 1
    assert len({display_width(line.split("  cat")[0]) for line in lines}) == 1  # the class column starts alike
    long = format_table([{"image": "写" * 40, "top": []}])
    assert long.startswith("...") and display_width(long.rstrip()) <= 60
