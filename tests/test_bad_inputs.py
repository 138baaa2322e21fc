"""Every bad input of issue 6, end to end through the CLI: a one-line ``error: ...`` naming the file, row or option
(exit code 2), or a counted skip with ``--skip-bad``, or -- for odd but valid images -- a model that trains.

The decoding rules themselves are tested in test_images.py and the sources in test_data_sources.py; here each case
goes through ``gapvision train/predict/evaluate`` as a user would meet it.
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gapvision as gv
from gapvision.cli import main
from gapvision.data import images

TRAIN = ["train", "--model", "gapcnn", "--epochs", "1", "--img-size", "16", "--batch-size", "8", "--augment", "none",
         "--workers", "0", "--val-split", "0.25"]


def _pixels(seed: int, size=(12, 10), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return img if mode == "RGB" else img.convert(mode)


def _folder(root: Path, counts: dict[str, int], ext: str = ".png", size=(12, 10)) -> Path:
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _pixels(zlib.crc32(f"{cls}/{i}".encode()), size).save(root / cls / f"{i:03d}{ext}")
    return root


def _manifest(root: Path, lines: list[str], name: str = "list.csv") -> Path:
    path = root / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str, *needles: str) -> str:
    """Exit code 2 and exactly one line ``error: ...`` containing every needle (no traceback)."""
    line = err.strip()
    assert rc == 2, err
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line, err
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


# --------------------------------------------------------------------------------------------- unreadable files
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BROKEN_FILES = {
    "zero-byte jpeg": ("zero.jpg", lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "truncated jpeg": ("cut.jpg", lambda p: (_pixels(1, (64, 64)).save(p, quality=90), _truncate(p)), "cut.jpg"),
    "text file named .jpg": ("notes.jpg", lambda p: p.write_text("not a picture\n"), "is not an image"),
    "decompression bomb": ("bomb.png", lambda p: _pixels(2, (200, 100)).save(p), "decompression bomb"),
}


@pytest.mark.parametrize("case", list(BROKEN_FILES))
def test_unreadable_image_is_one_line_error_or_counted_skip(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 10_000)  # 200 x 100 is the "bomb"; the others are 12 x 10
    name, make, message = BROKEN_FILES[case]
    data = _folder(tmp_path / "d", {"cat": 4, "dog": 4})
    make(data / "dog" / name)

    rc, _, err = _cli([*TRAIN, "--quiet", "--data", data, "--out", tmp_path / "bad"], capsys)
    _one_line_error(rc, err, name, message, "--skip-bad")

    rc, out, err = _cli([*TRAIN, "--quiet", "--data", data, "--skip-bad", "--out", tmp_path / "ok"], capsys)
    assert rc == 0, err
    assert "skipped 1" in err and name in err  # the skip is counted and named, on stderr even with --quiet
    notes = json.loads((tmp_path / "ok" / "config.json").read_text())["data_notes"]
    assert any("skipped 1" in n and name in n for n in notes)
    assert gv.load_run(tmp_path / "ok").metrics["val"]["images"] == 2  # a quarter of the 8 readable images


def test_predict_on_a_broken_image_names_it(trained_run, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    _pixels(0, (40, 40)).save(bad)
    _truncate(bad)
    rc, _, err = _cli(["predict", trained_run, bad], capsys)
    _one_line_error(rc, err, "broken.png", "--skip-bad")


@pytest.mark.parametrize("command", ["predict", "localize"])
def test_skip_bad_goes_on_past_a_broken_image_and_records_it(command, trained_run, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        _pixels(10 + i, (40, 30)).save(folder / f"{i}-ok.png")
    (folder / "1-cut.png").write_bytes((folder / "1-ok.png").read_bytes()[:200])  # sorts between the good ones
    names = sorted(str(p) for p in folder.iterdir())
    cut = str(folder / "1-cut.png")

    rc, _, err = _cli([command, trained_run, folder], capsys)  # the default stops at it, pointing to --skip-bad
    _one_line_error(rc, err, "1-cut.png", "--skip-bad")

    rc, out, err = _cli([command, trained_run, folder, "--skip-bad", "--json"], capsys)
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == names  # in input order, the broken one in its place
    (broken,) = [r for r in records if "error" in r]
    assert broken["image"] == cut and "1-cut.png" in broken["error"] and "--skip-bad" not in broken["error"]
    assert err.strip().startswith("note: skipped 1 unreadable image (first: ") and "1-cut.png" in err
    good = [folder / f"{i}-ok.png" for i in range(3)]
    if command == "predict":  # the same answers as without the broken file
        alone = gv.load_run(trained_run).predict(good)
        assert [r for r in records if "error" not in r] == alone
    else:
        assert all("detections" in r for r in records if "error" not in r)
        rc, out, err = _cli([command, trained_run, folder, "--skip-bad", "--out", tmp_path / "maps"], capsys)
        assert rc == 0 and "3 result(s) written" in out and "skipped 1" in err
        assert sorted(p.name for p in (tmp_path / "maps").glob("*.json")) == ["0-ok.json", "1-ok.json", "2-ok.json"]

    table = [] if command == "localize" else ["--topk", "1"]
    rc, out, err = _cli([command, trained_run, folder, "--skip-bad", *table], capsys)
    assert rc == 0 and len(out.strip().splitlines()) == 3
    assert "1-cut.png" not in out and "skipped 1" in err

    jsonl = tmp_path / f"{command}.jsonl"
    for rerun in (False, True):  # --output: the broken image's record counts as done, so a rerun computes nothing
        rc, out, err = _cli([command, trained_run, folder, "--skip-bad", "--output", jsonl], capsys)
        assert rc == 0, err
        assert ("0 computed now, 4 already done" in out) == rerun and "skipped 1" in err
        lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
        assert [r["image"] for r in lines] == names and [r["image"] for r in lines if "error" in r] == [cut]


# --------------------------------------------------------------------------------------------- odd but valid images
def _odd_images(folder: Path) -> list[str]:
    """16-bit PNG, CMYK JPEG, palette PNG with transparency, EXIF-rotated JPEG, animated GIF, grey JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 65536, (10, 12), dtype=np.uint16)).save(folder / "deep16.png")
    Image.new("CMYK", (12, 10), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    pal = Image.new("P", (12, 10), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((3, 3), 1)
    pal.save(folder / "palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    _pixels(3, (20, 10)).save(folder / "rotated.jpg", exif=exif)
    frames = [Image.new("RGB", (12, 10), c) for c in [(255, 0, 0), (0, 255, 0)]]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    _pixels(4, mode="L").save(folder / "grey.jpg")
    return sorted(p.name for p in folder.iterdir())


def test_odd_but_valid_images_train_and_predict(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"cat": 4, "dog": 4})
    odd = _odd_images(data / "odd")
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", data, "--out", tmp_path / "r"], capsys)
    assert rc == 0, err
    run = gv.load_run(tmp_path / "r")
    assert run.classes == ["cat", "dog", "odd"] and run.preprocess.channels == 3
    rc, out, err = _cli(["predict", tmp_path / "r", data / "odd", "--json"], capsys)
    assert rc == 0, err
    assert sorted(Path(json.loads(line)["image"]).name for line in out.splitlines()) == odd


def test_grayscale_images_in_an_rgb_set_and_rgb_images_for_a_grey_model(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"cat": 4, "dog": 4})
    for i in range(2):
        _pixels(10 + i, mode="L").save(data / "dog" / f"grey{i}.png")
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", data, "--out", tmp_path / "rgb"], capsys)
    assert rc == 0, err
    assert gv.load_run(tmp_path / "rgb").preprocess.channels == 3  # one colour image is enough for RGB
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", data, "--channels", "1", "--out", tmp_path / "grey"], capsys)
    assert rc == 0, err
    for run in ("rgb", "grey"):
        rc, out, err = _cli(["predict", tmp_path / run, data / "dog" / "grey0.png", data / "cat" / "000.png",
                             "--json"], capsys)
        assert rc == 0 and len(out.splitlines()) == 2, err


def test_images_smaller_than_the_network_takes(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"cat": 4, "dog": 4}, size=(3, 2))
    rc, _, err = _cli([*TRAIN[:5], "--quiet", "--workers", "0", "--data", data, "--out", tmp_path / "r"], capsys)
    assert rc == 0, err
    assert gv.load_run(tmp_path / "r").preprocess.img_size == 32  # tiny images are scaled up to at least 32 px
    squeeze = [*TRAIN, "--quiet", "--data", data, "--model", "squeezenet1_1", "--out", tmp_path / "s", "--img-size"]
    rc, _, err = _cli([*squeeze, "8"], capsys)
    line = _one_line_error(rc, err, "--img-size 8 is too small for squeezenet1_1", "or larger")
    suggested = line.split("use --img-size ")[1].split()[0]
    assert _cli([*squeeze, suggested], capsys)[0] == 0  # the suggested size works
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", data, "--img-size", "4", "--out", tmp_path / "t"], capsys)
    _one_line_error(rc, err, "--img-size must be at least 8")


# --------------------------------------------------------------------------------------------- class folders
def test_empty_class_folder_and_single_class(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"cat": 4, "dog": 4})
    (data / "empty").mkdir()
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", data], capsys)
    _one_line_error(rc, err, str(data / "empty"), "has no images", "remove the folder")
    single = _folder(tmp_path / "one", {"cat": 4})
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", single], capsys)
    _one_line_error(rc, err, "only one class ('cat')", "at least 2 classes")


@pytest.mark.filterwarnings("ignore:Glyph:UserWarning")  # the plot font may lack the CJK glyph; the run does not care
def test_labels_with_spaces_and_non_ascii(tmp_path, capsys):
    names = ["big cat", "très heureux", "猫"]
    data = _folder(tmp_path / "d", {n: 4 for n in names})
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", data, "--out", tmp_path / "r"], capsys)
    assert rc == 0, err
    assert gv.load_run(tmp_path / "r").classes == sorted(names)
    rc, out, err = _cli(["predict", tmp_path / "r", data / "猫" / "000.png", "--json", "--topk", "3"], capsys)
    assert rc == 0 and {t["label"] for t in json.loads(out)["top"]} == set(names)
    # the same labels in a manifest, with a space-padded cell and a quoted comma
    rows = ["file,label"] + [f'"{n}/{i:03d}.png", {n} ' for n in names[:2] for i in range(4)]
    rows += [f'"猫/{i:03d}.png","猫, the cat"' for i in range(4)]
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", _manifest(data, rows), "--out", tmp_path / "m"], capsys)
    assert rc == 0, err
    assert gv.load_run(tmp_path / "m").classes == ["big cat", "très heureux", "猫, the cat"]


# --------------------------------------------------------------------------------------------- manifests
@pytest.fixture
def manifest_data(tmp_path) -> Path:
    return _folder(tmp_path / "d", {"cat": 4, "dog": 4})


ROWS = [f"{c}/{i:03d}.png,{c}" for c in ("cat", "dog") for i in range(4)]


@pytest.mark.parametrize("rows, needles", [
    (["file,label", *ROWS[:3], "cat/003.png", *ROWS[4:]], ["list.csv row 5", "expected 2 columns", "got 1"]),
    (["file,label", *ROWS[:6], "dog/002.png,dog,extra", ROWS[7]], ["list.csv row 8", "expected 2 columns", "got 3"]),
    (["file,label", *ROWS[:2], "cat/002.png,", *ROWS[3:]], ["list.csv row 4", "empty label"]),
    (["file,label", *ROWS, "cat/000.png,dog"], ["list.csv rows 2 and 10", "two labels ('cat' and 'dog')"]),
    (["file,label", *ROWS, "cat/nope.png,cat"], ["list.csv row 10", "'cat/nope.png' not found", "--skip-bad"]),
    (["file,label", *ROWS, "../outside.png,cat"],
     ["list.csv row 10", "outside the data folder", "--allow-outside-root"]),
    (["file,label,split", *(r + ",train" for r in ROWS), "cat/004.png,cat,later"], ["row 10", "split 'later'"]),
])
def test_manifest_errors_name_the_row(manifest_data, rows, needles, tmp_path, capsys):
    _pixels(9).save(tmp_path / "outside.png")
    _pixels(8).save(manifest_data / "cat" / "004.png")
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", _manifest(manifest_data, rows)], capsys)
    _one_line_error(rc, err, *needles)


def test_manifest_missing_columns(manifest_data, capsys):
    m = _manifest(manifest_data, ["file", *(r.split(",")[0] for r in ROWS)])
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", m], capsys)
    _one_line_error(rc, err, "list.csv has no label column", "--label-col")
    m = _manifest(manifest_data, ["file,label", *ROWS])
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", m, "--label-col", "species"], capsys)
    _one_line_error(rc, err, "no label column 'species'", "file, label")


def test_duplicated_rows_are_dropped_and_counted(manifest_data, tmp_path, capsys):
    m = _manifest(manifest_data, ["file,label", *ROWS, ROWS[0], "./" + ROWS[1]])
    rc, out, err = _cli([*TRAIN, "--data", m, "--out", tmp_path / "r"], capsys)
    assert rc == 0, err
    assert "dropped 2 duplicate rows of list.csv (first: row 10)" in err
    assert gv.load_run(tmp_path / "r").metrics["val"]["images"] == 2  # 8 distinct images, not 10


def test_missing_listed_images_are_skipped_and_counted(manifest_data, tmp_path, capsys):
    m = _manifest(manifest_data, ["file,label", *ROWS, "cat/gone.png,cat"])
    rc, out, err = _cli([*TRAIN, "--data", m, "--skip-bad", "--out", tmp_path / "r"], capsys)
    assert rc == 0, err
    assert "skipped 1 listed image that does not exist (first: row 10, cat/gone.png)" in err


def test_validation_label_unseen_in_training_names_the_row(manifest_data, tmp_path, capsys):
    rows = ["file,label,split", *(r + ",train" for r in ROWS[:3] + ROWS[4:7]), ROWS[3] + ",val",
            "dog/003.png,zebra,val"]
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", _manifest(manifest_data, rows)], capsys)
    _one_line_error(rc, err, "list.csv row 9", "val label 'zebra' is on no train row")
    folders = tmp_path / "splits"
    _folder(folders / "train", {"cat": 3, "dog": 3})
    _folder(folders / "val", {"cat": 1, "zebra": 1})
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", folders], capsys)
    _one_line_error(rc, err, "val labels not in the training data", "'zebra'")


def test_paths_escaping_the_data_root(manifest_data, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _pixels(7).save(outside / "secret.png")
    m = _manifest(manifest_data, ["file,label", *ROWS, f"{outside / 'secret.png'},cat"])
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", m], capsys)
    _one_line_error(rc, err, "row 10", "points outside the data folder", "--allow-outside-root")
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", m, "--allow-outside-root", "--out", tmp_path / "r"], capsys)
    assert rc == 0, err


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links on this platform")
def test_symlink_escaping_the_data_root(manifest_data, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _pixels(7).save(outside / "secret.png")
    try:
        (manifest_data / "cat" / "link.png").symlink_to(outside / "secret.png")
        (manifest_data / "linked-dir").symlink_to(outside, target_is_directory=True)
    except OSError as e:
        pytest.skip(f"cannot create symbolic links here: {e}")
    for rel, row in (("cat/link.png", 10), ("linked-dir/secret.png", 10)):
        m = _manifest(manifest_data, ["file,label", *ROWS, f"{rel},cat"])
        rc, _, err = _cli([*TRAIN, "--quiet", "--data", m], capsys)
        _one_line_error(rc, err, f"row {row}", "symbolic link", "outside the data folder", "--allow-outside-root")
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", m, "--allow-outside-root", "--out", tmp_path / "r"], capsys)
    assert rc == 0, err
    (manifest_data / "inside.png").symlink_to(manifest_data / "cat" / "000.png")  # a link within the root is fine
    m = _manifest(manifest_data, ["file,label", *ROWS, "inside.png,dog"])
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", m, "--out", tmp_path / "r2"], capsys)
    assert rc == 0, err


# --------------------------------------------------------------------------------------------- run directories
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    data = _folder(root / "d", {"cat": 4, "dog": 4})
    out = root / "run"
    assert main([*TRAIN, "--quiet", "--data", str(data), "--out", str(out)]) == 0
    return out


def test_run_directory_from_a_newer_format_version(trained_run, tmp_path, capsys):
    import shutil

    newer = tmp_path / "newer"
    shutil.copytree(trained_run, newer)
    config = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    data = gv.load_run(trained_run).config["data"]["data"]
    image = next(Path(data).rglob("*.png"))
    for argv in (["predict", newer, image], ["evaluate", newer, "--data", data], ["train", "--resume", newer],
                 [*TRAIN, "--quiet", "--data", data, "--weights", newer, "--out", tmp_path / "w"]):
        rc, _, err = _cli(argv, capsys)
        _one_line_error(rc, err, str(newer), "newer gapvision (run format 99", "upgrade gapvision")


def test_damaged_run_files_are_one_line_errors(trained_run, tmp_path, capsys):
    import shutil

    image = next(Path(gv.load_run(trained_run).config["data"]["data"]).rglob("*.png"))
    for name, damage, needle in (
        ("config.json", b"{", "is not valid JSON"),
        ("model.safetensors", b"garbage", "does not hold this run's weights"),
    ):
        run = tmp_path / name
        shutil.copytree(trained_run, run)
        (run / name).write_bytes(damage)
        rc, _, err = _cli(["predict", run, image], capsys)
        _one_line_error(rc, err, str(run / name), needle)
