"""Every data source, the stratified split, every bad-input error, resolve_preprocess and inspect_data."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image

from gapvision.data import (
    DataSplits,
    ImageSet,
    format_inspection,
    inspect_data,
    load_arrays,
    load_data,
    load_images,
    load_scenes,
    resolve_preprocess,
)
from gapvision.data.sources import stratified_split
from gapvision.errors import ConfigError, DataError


def _names(imgs: ImageSet) -> list[str]:
    return [imgs.name(i).replace("\\", "/") for i in range(len(imgs))]


# ------------------------------------------------------------------------------------------------ folders
def test_class_folders_are_split_stratified_and_seeded(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", {"b_dogs": 8, "a_cats": 4})
    (root / "a_cats" / ".hidden.png").write_bytes(b"x")
    (root / "a_cats" / "notes.txt").write_text("ignored")
    (root / "__MACOSX").mkdir()
    (root / ".git").mkdir()
    splits = load_data(root, val_split=0.25, seed=1)
    assert isinstance(splits, DataSplits) and splits.test is None
    assert splits.classes == ["a_cats", "b_dogs"]
    assert splits.val.class_counts() == {"a_cats": 1, "b_dogs": 2}
    assert splits.train.class_counts() == {"a_cats": 3, "b_dogs": 6}
    assert not set(_names(splits.train)) & set(_names(splits.val))
    assert all(n.endswith(".png") and "/." not in n for n in _names(splits.train) + _names(splits.val))
    assert _names(load_data(root, val_split=0.25, seed=1).val) == _names(splits.val)
    other_seeds = {tuple(_names(load_data(root, val_split=0.25, seed=s).val)) for s in range(2, 6)}
    assert len(other_seeds | {tuple(_names(splits.val))}) > 1
    assert splits.train.load(0).size == (12, 10)


def test_val_split_zero_gives_an_empty_val(tmp_path, make_image_folder):
    splits = load_data(make_image_folder(tmp_path / "d", {"a": 1, "b": 2}), val_split=0)
    assert len(splits.train) == 3 and len(splits.val) == 0


def test_train_val_test_folders_are_used_as_is(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "d" / "train", {"x": 3, "y": 3})
    make_image_folder(tmp_path / "d" / "val", {"x": 1, "y": 1})
    make_image_folder(tmp_path / "d" / "test", {"x": 2, "y": 1})
    splits = load_data(tmp_path / "d")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 3)
    assert splits.classes == ["x", "y"]
    assert all("/test/" in n for n in _names(splits.test))


def test_train_and_test_folders_get_a_val_split_of_train(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "d" / "train", {"x": 5, "y": 5})
    make_image_folder(tmp_path / "d" / "test", {"x": 2, "y": 2})
    splits = load_data(tmp_path / "d", val_split=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 4)
    assert all("/train/" in n for n in _names(splits.val))


def test_stratified_split_keeps_class_proportions():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    keep, held = stratified_split(labels, ["a", "b", "c"], 0.2, seed=0)
    assert np.bincount(labels[held]).tolist() == [10, 6, 4]
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(100))


@pytest.mark.parametrize("make, message", [
    (lambda root, mk: root.mkdir(), "no images found under"),
    (lambda root, mk: ((root / "a").mkdir(parents=True), (root / "b").mkdir()), "no images found under"),
    (lambda root, mk: (mk(root, {"a": 2, "b": 2}), (root / "c").mkdir()), r"class folder .*/c has no images"),
    (lambda root, mk: mk(root, {"only": 4}), r"only one class \('only'\)"),
    (lambda root, mk: mk(root, {"a": 5, "rare": 1}), r"class 'rare' has only 1 image.*--val-split 0"),
    (lambda root, mk: (mk(root / "train", {"a": 2, "b": 2}), mk(root / "val", {"a": 1, "zebra": 1})),
     r"val labels not in the training data.*'zebra'"),
    (lambda root, mk: (mk(root / "val", {"a": 2, "b": 2}), mk(root / "test", {"a": 1, "b": 1})),
     r"no train/ folder"),
])
def test_folder_errors(tmp_path, make_image_folder, make, message):
    root = tmp_path / "d"
    make(root, make_image_folder)
    with pytest.raises(DataError, match=message):
        load_data(root)


def test_loose_images_without_class_folders(tmp_path, write_image):
    write_image(tmp_path / "d" / "a.png")
    with pytest.raises(DataError, match="no class folders"):
        load_data(tmp_path / "d")
    unlabeled = load_images(tmp_path / "d")
    assert len(unlabeled) == 1 and unlabeled.labels.tolist() == [-1] and unlabeled.meta["labeled"] is False


def test_unknown_prefix_and_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"unknown data source prefix 'kaggle:'.*builtin:"):
        load_data("kaggle:cats")
    with pytest.raises(DataError, match=r"data .*nothing-here not found"):
        load_data(str(tmp_path / "nothing-here"))
    with pytest.raises(ConfigError, match="--val-split"):
        load_data("builtin:shapes?n=8", val_split=1.0)


def test_zero_byte_file_is_an_early_error_or_skipped(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", {"a": 3, "b": 3})
    (root / "a" / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"a/zero\.png is empty.*--skip-bad"):
        load_data(root)
    splits = load_data(root, skip_bad=True)
    assert len(splits.train) + len(splits.val) == 6
    assert any("zero.png" in n for n in splits.notes)


def test_a_class_whose_images_are_all_unreadable(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", {"a": 3})
    for i in range(2):
        (root / "b" / f"{i}.jpg").parent.mkdir(exist_ok=True)
        (root / "b" / f"{i}.jpg").write_text("junk")
    with pytest.raises(DataError, match=r"every image of class 'b' is unreadable \(first: .*b/0\.jpg\)"):
        load_data(root, skip_bad=True)


def test_corrupt_file_fails_when_read_or_is_skipped(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", {"a": 3, "b": 3})
    bad = root / "b" / "bad.jpg"
    bad.write_text("not an image")
    splits = load_data(root, val_split=0)  # no decoding up front
    i = _names(splits.train).index(str(bad).replace("\\", "/"))
    with pytest.raises(DataError, match=r"bad\.jpg is not an image"):
        splits.train.load(i)
    skipped = load_data(root, skip_bad=True, val_split=0)
    assert len(skipped.train) == 6
    assert skipped.notes == [f"skipped 1 unreadable image (first: {bad})"]


# ------------------------------------------------------------------------------------------------ manifests
def _grey_jpegs(folder, names, write_image):
    for i, n in enumerate(names):
        write_image(folder / n, size=(16, 16), mode="L", seed=i)


def test_tutorial_tsv_with_images_in_train_folder(tmp_path, write_image):
    names = [f"train_{i:04d}.jpg" for i in range(8)]
    _grey_jpegs(tmp_path / "train", names, write_image)
    labels = ["sad", "happy", " angry", "très heureux"] * 2
    rows = "".join(f"{n}\t{l}\n" for n, l in zip(names, labels))
    (tmp_path / "train_master.tsv").write_text("file_name\texpression\n" + rows, encoding="utf-8")
    splits = load_data(tmp_path / "train_master.tsv", val_split=0.5)
    assert splits.classes == ["angry", "happy", "sad", "très heureux"]
    assert any("train" in n and "--image-root" in n for n in splits.notes)
    assert len(splits.train) == len(splits.val) == 4
    assert resolve_preprocess(splits).channels == 1


def test_csv_with_named_columns_image_root_and_errors(tmp_path, write_image):
    for i in range(4):
        write_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    csv = tmp_path / "meta" / "list.csv"
    csv.parent.mkdir()
    csv.write_text("id,label,path\n" + "".join(f"{i},{'ab'[i % 2]},{i}.png\n" for i in range(4)))
    splits = load_data(csv, image_col="path", label_col="label", image_root=tmp_path / "imgs", val_split=0)
    assert splits.classes == ["a", "b"] and len(splits.train) == 4
    with pytest.raises(DataError, match=r"no image column 'file'.*id, label, path"):
        load_data(csv, image_col="file", label_col="label", image_root=tmp_path / "imgs")


def test_csv_delimiter_is_sniffed(tmp_path, write_image):
    for i in range(4):
        write_image(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "semi.csv").write_text("f;y\n" + "".join(f"{i}.png;{'ab'[i % 2]}\n" for i in range(4)))
    assert load_data(tmp_path / "semi.csv", val_split=0).classes == ["a", "b"]
    (tmp_path / "tabs.csv").write_text("f\ty\n" + "".join(f"{i}.png\t{'ab'[i % 2]}\n" for i in range(4)))
    assert len(load_data(tmp_path / "tabs.csv", val_split=0).train) == 4


def test_manifest_split_column(tmp_path, write_image):
    for i in range(6):
        write_image(tmp_path / f"{i}.png", seed=i)
    rows = ["0.png,a,train", "1.png,b,train", "2.png,a,train", "3.png,b,train", "4.png,a,test", "5.png,b,val"]
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    splits = load_data(tmp_path / "m.csv")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 1, 1)


def _manifest(tmp_path, write_image, rows: list[str], files=("a.png", "b.png", "c.png", "d.png")):
    for i, f in enumerate(files):
        write_image(tmp_path / f, seed=i)
    path = tmp_path / "m.csv"
    path.write_text("file,label\n" + "\n".join(rows) + "\n")
    return path


def test_manifest_duplicates(tmp_path, write_image):
    m = _manifest(tmp_path, write_image, ["a.png,x", "b.png,y", "a.png,x", "c.png,x", "d.png,y"])
    splits = load_data(m, val_split=0)
    assert len(splits.train) == 4 and any("dropped 1 duplicate row" in n and "row 4" in n for n in splits.notes)
    m = _manifest(tmp_path, write_image, ["a.png,x", "b.png,y", "./a.png,y"])
    with pytest.raises(DataError, match=r"rows 2 and 4: '\./a\.png' is listed with two labels \('x' and 'y'\)"):
        load_data(m)


def test_manifest_paths_outside_the_data_folder(tmp_path, write_image):
    inner = tmp_path / "inner"
    inner.mkdir()
    write_image(tmp_path / "outside.png")
    rows = ["a.png,x", "b.png,y", "../outside.png,x", "c.png,y"]
    m = _manifest(inner, write_image, rows)
    with pytest.raises(DataError, match=r"row 4: '\.\./outside\.png' points outside .*--allow-outside-root"):
        load_data(m)
    assert len(load_data(m, allow_outside_root=True, val_split=0).train) == 4
    m = _manifest(inner, write_image, ["a.png,x", f"{tmp_path / 'outside.png'},y"])
    with pytest.raises(DataError, match="row 3: .*outside"):
        load_data(m)


def test_manifest_missing_file_and_bad_rows(tmp_path, write_image):
    m = _manifest(tmp_path, write_image, ["a.png,x", "b.png,y", "gone.png,x", "c.png,y", "d.png,x"])
    with pytest.raises(DataError, match=r"row 4: image 'gone\.png' not found.*--skip-bad"):
        load_data(m)
    splits = load_data(m, skip_bad=True, val_split=0)
    assert len(splits.train) == 4 and any("row 4, gone.png" in n for n in splits.notes)
    m = _manifest(tmp_path, write_image, ["a.png,x", "b.png,y,extra"])
    with pytest.raises(DataError, match=r"m\.csv row 3: expected 2 columns"):
        load_data(m)
    m = _manifest(tmp_path, write_image, ["a.png,x", "b.png"])
    with pytest.raises(DataError, match=r"row 3: expected 2 columns .* got 1"):
        load_data(m)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv is empty"):
        load_data(tmp_path / "empty.csv")
    (tmp_path / "one.csv").write_text("file\na.png\n")
    with pytest.raises(DataError, match="no label column"):
        load_data(tmp_path / "one.csv")
    assert len(load_images(tmp_path / "one.csv")) == 1  # fine for predict


# ------------------------------------------------------------------------------------------------ builtin
def test_builtin_shapes_sizes_and_determinism():
    splits = load_data("builtin:shapes?n=40&size=16", seed=5)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 10)
    assert splits.train.items.shape == (40, 16, 16, 3)
    assert splits.train.class_counts() == {"circle": 10, "square": 10, "triangle": 10, "cross": 10}
    again = load_data("builtin:shapes?n=40&size=16", seed=5)
    assert np.array_equal(splits.train.items, again.train.items)
    assert not np.array_equal(splits.train.items[:10], splits.val.items)  # splits use different seeds
    assert not np.array_equal(splits.train.items, load_data("builtin:shapes?n=40&size=16", seed=6).train.items)
    assert resolve_preprocess(splits).img_size == 16
    with pytest.raises(DataError, match=r"unknown option 'colour'.*n, size"):
        load_data("builtin:shapes?colour=red")
    with pytest.raises(DataError, match="unknown builtin data"):
        load_data("builtin:cats")


def test_builtin_digits():
    splits = load_data("builtin:digits?size=16", val_split=0.2)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert len(splits.test) == pytest.approx(0.2 * 1797, abs=10)
    assert splits.classes == [str(i) for i in range(10)]
    assert splits.train.items.shape[1:] == (16, 16)
    assert splits.train.load(0).mode == "L"
    pre = resolve_preprocess(splits)
    assert (pre.channels, pre.img_size) == (1, 16)


def test_builtin_scenes():
    scenes = load_scenes(n=6, size=64, seed=2)
    assert len(scenes) == 6 and len(scenes.boxes) == 6
    assert scenes.labels.tolist() == [t[0][0] for t in scenes.boxes]
    via_spec = load_images("builtin:shapes-scenes?n=6&size=64")
    assert via_spec.items.shape == (6, 64, 64, 3) and via_spec.boxes is not None
    assert np.array_equal(via_spec.items, load_scenes(n=6, size=64, seed=0).items)
    assert via_spec.subset([1, 2]).boxes == via_spec.boxes[1:3]
    with pytest.raises(DataError, match="train on builtin:shapes"):
        load_data("builtin:shapes-scenes")


# ------------------------------------------------------------------------------------------------ torchvision
def test_torchvision_fakedata():
    splits = load_data("torchvision:FakeData?n=40&test=12&size=8&classes=2", seed=0)
    assert (len(splits.train) + len(splits.val), len(splits.test)) == (40, 12)
    img = splits.train.load(0)
    assert img.size == (8, 8) and img.mode == "RGB"
    assert set(splits.train.labels.tolist()) == {0, 1}


def _write_idx(path, arr: np.ndarray) -> None:
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
                     + arr.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_raw_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 6)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 2)
    splits = load_data("torchvision:mnist", root=tmp_path, val_split=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 6)
    assert splits.train.items.shape == (16, 28, 28)  # the in-memory fast path
    pre = resolve_preprocess(splits)
    assert (pre.channels, pre.img_size) == (1, 32)
    assert load_images("torchvision:MNIST", root=tmp_path).labels.tolist() == [0, 1, 0, 1, 0, 1]
    with pytest.raises(DataError, match=r"torchvision dataset CIFAR10 not found under .*--download"):
        load_data("torchvision:CIFAR10", root=tmp_path)
    with pytest.raises(DataError, match="unsupported torchvision dataset 'ImageNet'"):
        load_data("torchvision:ImageNet", root=tmp_path)


# ------------------------------------------------------------------------------------------------ arrays
def test_load_arrays():
    x = np.random.default_rng(0).integers(0, 256, (20, 6, 5), dtype=np.uint8)
    y = np.arange(20) % 2
    splits = load_arrays(x, y, classes=["no", "yes"], val_split=0.2)
    assert splits.classes == ["no", "yes"] and (len(splits.train), len(splits.val)) == (16, 4)
    assert splits.train.load(0).size == (5, 6)
    floats = load_data((np.zeros((6, 4, 4, 3)) + 0.5, np.array(["cat", "dog"] * 3)), val_split=0)
    assert floats.classes == ["cat", "dog"] and floats.train.items.dtype == np.uint8
    assert floats.train.items[0, 0, 0, 0] == 128
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        load_arrays(np.full((4, 3, 3), 2.0), [0, 1, 0, 1])
    with pytest.raises(DataError, match="shape"):
        load_arrays(np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(DataError, match="index 2 but only 2 classes"):
        load_arrays(x[:3], [0, 1, 2], classes=["a", "b"])


# ------------------------------------------------------------------------------------------------ load_images
def test_load_images_maps_labels_to_a_models_classes(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "d" / "train", {"a": 2, "b": 2})
    make_image_folder(tmp_path / "d" / "test", {"b": 1, "a": 2})
    test = load_images(tmp_path / "d", classes=["b", "a", "c"])
    assert test.classes == ["b", "a", "c"] and sorted(test.labels.tolist()) == [0, 1, 1]
    assert len(load_images(tmp_path / "d", split="train")) == 4
    with pytest.raises(DataError, match="no 'val' split"):
        load_images(tmp_path / "d", split="val")
    with pytest.raises(DataError, match="does not know: 'b'"):
        load_images(tmp_path / "d", classes=["a", "z"])
    single = load_images(next((tmp_path / "d" / "test" / "a").iterdir()), classes=["a", "b"])
    assert len(single) == 1 and single.meta["labeled"] is False and single.classes == ["a", "b"]
    arrays = load_images((np.zeros((3, 4, 4), np.uint8), np.array(["b", "b", "b"])), classes=["a", "b"])
    assert arrays.labels.tolist() == [1, 1, 1] and arrays.classes == ["a", "b"]


# ------------------------------------------------------------------------------------------------ preprocess
def test_resolve_preprocess_channels_size_and_normalisation(tmp_path, make_image_folder, write_image):
    grey = make_image_folder(tmp_path / "grey", {"a": 3, "b": 3}, mode="L")
    rgb = make_image_folder(tmp_path / "rgb", {"a": 3, "b": 3})
    grey_as_rgb = tmp_path / "grey_rgb"
    for cls in "ab":
        for i in range(3):
            write_image(grey_as_rgb / cls / f"{i}.png", size=(300, 100), mode="L", seed=i).parent
            Image.open(grey_as_rgb / cls / f"{i}.png").convert("RGB").save(grey_as_rgb / cls / f"{i}.png")
    pre = resolve_preprocess(load_data(grey))
    assert pre.channels == 1 and len(pre.mean) == 1 and pre.img_size == 32  # 12 px clamped up to 32
    assert 0.3 < pre.mean[0] < 0.7 and pre.std[0] > 0.2
    assert resolve_preprocess(load_data(rgb)).channels == 3
    pre = resolve_preprocess(load_data(grey_as_rgb))
    assert pre.channels == 1 and pre.img_size == 224  # 300 px clamped down to 224
    pre = resolve_preprocess(load_data(rgb), channels="1", img_size=20, normalize="imagenet")
    assert (pre.channels, pre.img_size) == (1, 20) and pre.mean[0] == pytest.approx(0.449, abs=1e-3)
    assert resolve_preprocess(load_data(rgb), normalize="caffe").bgr is True
    assert resolve_preprocess(load_data(rgb)) == resolve_preprocess(load_data(rgb))
    with pytest.raises(ConfigError, match="--channels"):
        resolve_preprocess(load_data(rgb), channels=2)


# ------------------------------------------------------------------------------------------------ inspect
def test_inspect_data_reports_problems_and_writes_a_grid(tmp_path, make_image_folder, write_image):
    root = make_image_folder(tmp_path / "d", {"big": 10, "small": 2}, size=(20, 20))
    (root / "big" / "zero.png").write_bytes(b"")
    cut = root / "big" / "cut.png"
    cut.write_bytes((root / "big" / "000.png").read_bytes()[:200])
    write_image(root / "small" / "tiny.png", size=(8, 8))
    (root / "small" / "copy.png").write_bytes((root / "small" / "000.png").read_bytes())
    png = tmp_path / "out" / "samples.png"
    report = inspect_data(root, png, val_split=0)
    train = report["splits"]["train"]
    assert train["images"] == 16 and train["class_counts"] == {"big": 12, "small": 4}
    assert sorted(u["name"].rsplit("/", 1)[-1] for u in train["unreadable"]) == ["cut.png", "zero.png"]
    assert train["size"] == {"min": [8, 8], "median": [20, 20], "max": [20, 20]} and train["modes"] == {"RGB": 14}
    problems = "\n".join(report["problems"])
    assert "2 unreadable" in problems and "tiny.png" in problems and "copy.png" in problems
    assert "imbalance" not in problems
    with Image.open(png) as im:
        assert im.size[0] > 200 and im.size[1] > 100
    text = format_inspection(report)
    assert "problems:" in text and "samples:" in text and "big" in text


def test_inspect_reports_imbalance_and_duplicates_in_arrays():
    x = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    y = np.array([0] * 20 + [1] * 4)
    x[23] = x[0]  # the same picture in two classes
    report = inspect_data((x, y), val_split=0)
    problems = "\n".join(report["problems"])
    assert "heavy class imbalance: '0' has 20 images, '1' only 4" in problems
    assert "1 duplicate image(s) (first: #23 == #0)" in problems and "smaller than 16 px" in problems


def test_inspect_reports_images_shared_between_splits(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "d" / "train", {"a": 3, "b": 3}, size=(20, 20))
    make_image_folder(tmp_path / "d" / "test", {"a": 1, "b": 1}, size=(20, 20))  # same seeds: same pictures
    report = inspect_data(tmp_path / "d", val_split=0)
    assert any(p.startswith("test: 2 image(s) also in train") for p in report["problems"])
    clean = inspect_data(tmp_path / "d" / "train", val_split=0)
    assert clean["problems"] == [] and "no problems found" in format_inspection(clean)


# ------------------------------------------------------------------------------------------------ real data
@pytest.mark.shared
def test_real_cifar_jpeg_tree(tmp_path, shared_dir):
    """A few real CIFAR-10 JPEGs per class, in the train/<class>/ test/<class>/ layout of the shared tarball."""
    import tarfile

    wanted: dict[tuple[str, str], int] = {}
    with tarfile.open(shared_dir / "data" / "cifar10-jpg.tar.gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and wanted.get((parts[0], parts[1]), 0) < 3:
                wanted[(parts[0], parts[1])] = wanted.get((parts[0], parts[1]), 0) + 1
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extract(member, tmp_path, **kwargs)
            if len(wanted) == 20 and min(wanted.values()) == 3:
                break
    splits = load_data(tmp_path, val_split=0.34)
    assert len(splits.classes) == 10 and "airplane" in splits.classes
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 10, 30)
    pre = resolve_preprocess(splits)
    assert (pre.channels, pre.img_size) == (3, 32)
