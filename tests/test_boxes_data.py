"""Box annotations as data: Pascal VOC folders and COCO JSON files, and their one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gapvision.data import load_data, load_images
from gapvision.data.boxes import load_coco, load_voc, read_voc
from gapvision.errors import DataError


def voc_xml(filename: str, objects: list[tuple[str, tuple[int, int, int, int]]], size=(40, 30)) -> str:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"</size>{objs}</annotation>")


@pytest.fixture
def voc_folder(tmp_path, write_image) -> Path:
    """root/images/{cat,dog}/<n>.png (40 x 30) with root/annotations/<n>.xml; cat/c2 has no annotation."""
    root = tmp_path / "voc"
    boxes = {"cat/c0": [("cat", (2, 3, 20, 25))], "cat/c1": [("cat", (0, 0, 40, 30)), ("cat", (5, 5, 9, 9))],
             "dog/d0": [("dog", (10, 10, 30, 28))], "dog/d1": [("dog", (1, 1, 39, 29))]}
    for rel in [*boxes, "cat/c2"]:
        write_image(root / "images" / f"{rel}.png", size=(40, 30))
    (root / "annotations").mkdir()
    for rel, objs in boxes.items():
        stem = rel.split("/")[1]
        (root / "annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", objs))
    return root


def test_voc_folder_with_class_folders_reads_boxes_in_image_pixels(voc_folder):
    imgs, notes = load_voc(voc_folder)
    assert imgs.classes == ["cat", "dog"] and len(imgs) == 5
    by_stem = {Path(p).stem: (int(l), b) for p, l, b in zip(imgs.items, imgs.labels, imgs.boxes)}
    assert by_stem["c1"] == (0, [(0, (0.0, 0.0, 40.0, 30.0)), (0, (5.0, 5.0, 9.0, 9.0))])
    assert by_stem["d0"] == (1, [(1, (10.0, 10.0, 30.0, 28.0))])
    assert by_stem["c2"] == (0, []) and "1 images have no annotation" in notes[0]


def test_voc_folder_is_a_data_source_and_splits_like_its_image_folder(voc_folder):
    imgs = load_images(str(voc_folder))
    assert imgs.boxes is not None and imgs.meta["annotations"] == "voc"
    # the same seeded validation split as the plain class-folder tree (so a run's val images can be found)
    a = load_data(str(voc_folder), val_split=0.4, seed=3)
    b = load_data(str(voc_folder / "images"), val_split=0.4, seed=3)
    assert list(a.val.items) == list(b.val.items) and a.val.boxes is not None and b.val.boxes is None


def test_flat_voc_folder_labels_each_image_by_its_largest_class(tmp_path, write_image):
    root = tmp_path / "flat"
    write_image(root / "JPEGImages" / "a.png", size=(40, 30))
    write_image(root / "JPEGImages" / "b.png", size=(40, 30))
    write_image(root / "JPEGImages" / "unlabelled.png", size=(40, 30))
    (root / "Annotations").mkdir()
    (root / "Annotations" / "a.xml").write_text(voc_xml("a.png", [("dog", (0, 0, 5, 5)), ("cat", (0, 0, 30, 20))]))
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.png", [("dog", (0, 0, 10, 10))]))
    imgs, notes = load_voc(root)
    assert imgs.classes == ["cat", "dog"] and imgs.labels.tolist() == [0, 1] and "1 images without" in notes[0]


@pytest.mark.parametrize("broken, message", [
    ("<annotation><object>", "not valid XML"),
    (voc_xml("c0.png", [("cat", (2, 3, 60, 25))]), "lies outside its 40x30 image"),
    (voc_xml("c0.png", [("cat", (20, 3, 10, 25))]), "is empty"),
    (voc_xml("c0.png", [("horse", (2, 3, 20, 25))]), "unknown class 'horse'"),
    ("<annotation><object><name>cat</name></object></annotation>", "lacks <name> or <bndbox>"),
])
def test_bad_voc_annotations_are_one_line_errors_naming_the_file(voc_folder, broken, message):
    (voc_folder / "annotations" / "c0.xml").write_text(broken)
    with pytest.raises(DataError, match=message) as e:
        load_voc(voc_folder)
    assert "c0.xml" in str(e.value) and "\n" not in str(e.value)


def test_voc_box_within_the_tolerance_is_clipped(voc_folder):
    (voc_folder / "annotations" / "c0.xml").write_text(voc_xml("c0.png", [("cat", (-1, 0, 41, 30))]))
    imgs, _ = load_voc(voc_folder)
    assert imgs.boxes[[Path(p).stem for p in imgs.items].index("c0")] == [(0, (0.0, 0.0, 40.0, 30.0))]


def test_voc_annotation_without_its_image_is_an_error(voc_folder):
    (voc_folder / "annotations" / "ghost.xml").write_text(voc_xml("ghost.png", [("cat", (1, 1, 5, 5))]))
    with pytest.raises(DataError, match=r"ghost\.xml: no image ghost"):
        load_voc(voc_folder)


def test_read_voc_returns_filename_and_objects(voc_folder):
    name, objs = read_voc(voc_folder / "annotations" / "c1.xml")
    assert name == "c1.png" and objs == [("cat", (0.0, 0.0, 40.0, 30.0)), ("cat", (5.0, 5.0, 9.0, 9.0))]


def coco_doc() -> dict:
    return {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                       {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
                       {"id": 3, "file_name": "none.png", "width": 40, "height": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 20]},
                            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [0, 0, 40, 30]},
                            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [1, 1, 4, 4]}],
            "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]}


@pytest.fixture
def coco_file(tmp_path, write_image) -> Path:
    for name in ("a", "b", "none"):
        write_image(tmp_path / "coco" / "images" / f"{name}.png", size=(40, 30))
    path = tmp_path / "coco" / "boxes.json"
    path.write_text(json.dumps(coco_doc()))
    return path


def test_coco_json_reads_xywh_boxes_as_corners(coco_file):
    imgs = load_images(str(coco_file))
    assert imgs.classes == ["cat", "dog"] and [Path(p).name for p in imgs.items] == ["a.png", "b.png"]
    assert imgs.boxes == [[(0, (2.0, 3.0, 12.0, 23.0))], [(1, (0.0, 0.0, 40.0, 30.0)), (0, (1.0, 1.0, 5.0, 5.0))]]
    assert imgs.labels.tolist() == [0, 1] and "ignored 1 images without annotations" in imgs.meta["notes"][0]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][0].update(category_id=5), "unknown category_id 5"),
    (lambda d: d["annotations"][0].update(bbox=[30, 3, 20, 20]), "lies outside its 40x30 image"),
    (lambda d: d["images"][0].update(file_name="missing.png"), "image missing.png not found"),
    (lambda d: d.pop("categories"), "not COCO detection JSON"),
    (lambda d: d["annotations"][0].update(image_id=99), "refers to no image"),
])
def test_bad_coco_files_are_one_line_errors_naming_the_file(coco_file, edit, message):
    doc = coco_doc()
    edit(doc)
    coco_file.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message) as e:
        load_coco(coco_file)
    assert "boxes.json" in str(e.value) and "\n" not in str(e.value)


def test_malformed_coco_json_names_the_file(coco_file):
    coco_file.write_text("{not json")
    with pytest.raises(DataError, match="boxes.json is not valid JSON"):
        load_images(str(coco_file))


@pytest.mark.shared
def test_boxes_dev_reads_with_its_truncated_jpeg_skipped(shared_dir):
    imgs = load_images(str(shared_dir / "data/boxes-dev"), skip_bad=True)
    assert imgs.classes == ["kangaroo", "raccoon"] and len(imgs) == 181
    assert all(objs and all(c == l for c, _ in objs) for objs, l in zip(imgs.boxes, imgs.labels))
    assert "00090.jpg" in imgs.meta["notes"][0]
