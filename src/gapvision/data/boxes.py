"""Box annotations as data: Pascal VOC XML folders and COCO JSON files -> an :class:`ImageSet` with ``boxes``.

* **VOC folder**: ``DIR/annotations/<stem>.xml`` (``Annotations/`` too) beside the images, which are class folders
  (``DIR/images/<class>/<stem>.jpg`` or ``DIR/<class>/<stem>.jpg``) or one flat folder (``DIR/images/``,
  ``DIR/JPEGImages/`` or ``DIR`` itself). An image is found by its annotation's stem (else its ``<filename>``).
  With class folders the folder is the image's label; in a flat folder it is the class covering most of the image.
* **COCO JSON**: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "category_id", "bbox":
  [x, y, w, h]}], "categories": [{"id", "name"}]}``, read with the standard library; image files relative to
  ``image_root``, else the JSON's folder (or its ``images/`` sub-folder).

``boxes[i]`` is ``[(class_index, (x0, y0, x1, y1)), ...]`` in pixels of the original image (after EXIF rotation),
the same layout as ``builtin:shapes-scenes``. Bad files stop with one line naming the file: a missing image, a box
outside its image (beyond a tolerance of 2 px + 1 % of the side; boxes within it are clipped), an unknown class,
malformed XML/JSON.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from .files import subdirs as _subdirs
from .images import image_files as _images_under
from .images import image_size, is_image_file
from .imageset import ImageSet

Box = tuple[float, float, float, float]
ANNOTATION_DIRS = ("annotations", "Annotations")
IMAGE_DIRS = ("images", "JPEGImages", "Images")
_TOLERANCE = (2.0, 0.01)  # pixels, fraction of the side


def find_annotation_dir(path: Path) -> Path | None:
    """The VOC annotation folder of ``path`` (``annotations/`` or ``Annotations/`` holding .xml files), if any."""
    for name in ANNOTATION_DIRS:
        d = path / name
        if d.is_dir() and any(f.suffix.lower() == ".xml" for f in d.iterdir()):
            return d
    return None


def read_voc(path: str | os.PathLike) -> tuple[str | None, list[tuple[str, Box]]]:
    """One VOC XML file -> (``<filename>`` or None, [(class name, (xmin, ymin, xmax, ymax)), ...]) as written."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path} is not valid XML ({e}): fix or remove the annotation file") from None
    if root.tag != "annotation":
        raise DataError(f"{path} is not a Pascal VOC annotation (root element <{root.tag}>, expected <annotation>)")
    objects = []
    for n, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise DataError(f"{path}: object {n} lacks <name> or <bndbox>: fix or remove the annotation file")
        try:
            coords = tuple(float(box.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise DataError(f"{path}: object {n} ({name}) needs numeric <xmin>, <ymin>, <xmax>, <ymax>") from None
        objects.append((name, coords))
    filename = (root.findtext("filename") or "").strip() or None
    return filename, objects  # type: ignore[return-value]


def checked_box(box: Sequence[float], size: tuple[int, int], where: str) -> Box:
    """``box`` clipped to an image of ``size`` = (w, h); a DataError naming ``where`` when it is empty or lies
    outside the image by more than the tolerance."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = size
    tol_x, tol_y = _TOLERANCE[0] + _TOLERANCE[1] * w, _TOLERANCE[0] + _TOLERANCE[1] * h
    if not (x1 > x0 and y1 > y0):
        raise DataError(f"{where}: box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is empty (needs x0 < x1, y0 < y1): fix it")
    if x0 < -tol_x or y0 < -tol_y or x1 > w + tol_x or y1 > h + tol_y:
        raise DataError(f"{where}: box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies outside its {w}x{h} image: fix the box "
                        "or the image")
    return (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))


def load_voc(path: str | os.PathLike, classes: Sequence[str] | None = None) -> tuple[ImageSet, list[str]]:
    """A VOC folder (see the module docstring) -> (ImageSet with ``boxes``, notes).

    The images are listed in the same order as the folder source lists the class folders (class folders sorted,
    files sorted), so a seeded validation split of ``DIR`` equals the one of ``DIR/images``. ``classes`` fixes the
    class list (else: the class folders, or the sorted object names of a flat folder).
    """
    root = Path(path)
    ann_dir = find_annotation_dir(root)
    if ann_dir is None:
        raise DataError(f"{root} has no annotations/ folder of VOC .xml files")
    img_root = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root)
    folders = [d for d in _subdirs(img_root) if d != ann_dir and _images_under(d)]
    flat = not folders
    if flat:
        files = sorted(str(img_root / f) for f in os.listdir(img_root) if is_image_file(f))
        folder_of = {f: None for f in files}
    else:
        folder_of = {f: d.name for d in folders for f in _images_under(d)}
        files = list(folder_of)
    if not files:
        raise DataError(f"no images found beside {ann_dir}: put them in {root}/images/ (class folders or flat)")
    by_stem: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for f in files:
        by_stem.setdefault(Path(f).stem, f)
        by_name.setdefault(Path(f).name, f)
    objects: dict[str, list[tuple[str, Box]]] = {}
    origin: dict[str, str] = {}
    for xml in sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml"):
        filename, objs = read_voc(xml)
        image = by_stem.get(xml.stem) or (by_name.get(Path(filename).name) if filename else None)
        if image is None:
            raise DataError(f"{xml}: no image {xml.stem}.* (or {filename}) under {img_root}: add the image or remove "
                            "the annotation")
        objects[image], origin[image] = objs, str(xml)
    if classes is None:
        classes = sorted(d.name for d in folders) if not flat else sorted({n for o in objects.values() for n, _ in o})
    notes = []
    if flat:
        unannotated = [f for f in files if f not in objects]
        if unannotated:
            notes.append(f"ignored {len(unannotated)} images without an annotation (first: {unannotated[0]})")
        files = [f for f in files if f in objects]
    elif len(objects) < len(files):
        notes.append(f"{len(files) - len(objects)} images have no annotation (no boxes to score)")
    return _image_set(files, objects, folder_of, list(classes), origin, "voc"), notes


def load_coco(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
              classes: Sequence[str] | None = None) -> tuple[ImageSet, list[str]]:
    """A COCO JSON file (see the module docstring) -> (ImageSet with ``boxes``, notes); images without annotations
    are left out (a note says how many)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}): fix the annotation file") from None
    try:
        cats = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        images = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
        anns = [(int(a["image_id"]), int(a["category_id"]), [float(v) for v in a["bbox"]]) for a in doc["annotations"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is not COCO detection JSON (missing or bad {e}): it needs images (id, file_name), "
                        "annotations (image_id, category_id, bbox) and categories (id, name)") from None
    roots = [Path(image_root)] if image_root else [path.parent, path.parent / "images"]
    objects: dict[str, list[tuple[str, Box]]] = defaultdict(list)
    for n, (image_id, cat, bbox) in enumerate(anns):
        where = f"{path}: annotation {n} (image_id {image_id})"
        if image_id not in images:
            raise DataError(f"{where} refers to no image of the file: fix image_id")
        if cat not in cats:
            raise DataError(f"{where}: unknown category_id {cat} (categories: {', '.join(map(str, sorted(cats)))})")
        if len(bbox) != 4:
            raise DataError(f"{where}: bbox must be [x, y, width, height]")
        file = next((r / images[image_id] for r in roots if (r / images[image_id]).is_file()), None)
        if file is None:
            raise DataError(f"{path}: image {images[image_id]} not found under {' or '.join(map(str, roots))}: add "
                            "it there, or keep the images beside the JSON or in its images/ folder (train and the "
                            "Python API also take --image-root / image_root=)")
        x, y, w, h = bbox
        objects[str(file)].append((cats[cat], (x, y, x + w, y + h)))
    if classes is None:
        classes = [cats[k] for k in sorted(cats)]
    files = sorted(objects)
    notes = [f"ignored {len(images) - len(files)} images without annotations"] if len(files) < len(images) else []
    return _image_set(files, objects, {f: None for f in files}, list(classes), {f: str(path) for f in files},
                      "coco"), notes


def _image_set(files: list[str], objects: dict[str, list[tuple[str, Box]]], folder_of: dict[str, str | None],
               classes: list[str], origin: dict[str, str], kind: str) -> ImageSet:
    """Check every box against its image and class list; the label is the class folder, else the class with the
    largest box area."""
    index = {c: i for i, c in enumerate(classes)}
    labels, boxes = [], []
    for f in files:
        objs = objects.get(f, [])
        where = origin.get(f, f)
        size = image_size(f) if objs else None
        checked = []
        for name, box in objs:
            if name not in index:
                raise DataError(f"{where}: unknown class {name!r} (classes: {', '.join(classes)}): fix the name or "
                                "add the class")
            checked.append((index[name], checked_box(box, size, f"{where} ({Path(f).name})")))  # type: ignore[arg-type]
        folder = folder_of.get(f)
        if folder is not None:
            if folder not in index:
                raise DataError(f"class folder {folder!r} of {f} is not one of the classes {', '.join(classes)}")
            labels.append(index[folder])
        else:
            area = np.zeros(len(classes))
            for k, (x0, y0, x1, y1) in checked:
                area[k] += (x1 - x0) * (y1 - y0)
            labels.append(int(area.argmax()))
        boxes.append(checked)
    return ImageSet(files, np.array(labels, dtype=np.int64), classes, boxes=boxes,
                    meta={"annotations": kind})
