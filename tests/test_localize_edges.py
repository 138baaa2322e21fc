"""Localisation edges found by trying the CLI as a user would: images no larger than the network's stride (a flat
map), out-of-range options, the errors of a pretrained --model, a one-class VOC folder split as training would,
thin images through ``max_side``, and the class-mismatch error of a 1,000-class model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gapvision as gv
from gapvision.errors import DataError, GapvisionError
from gapvision.localize import Localizer
from gapvision.localize.cam import normalize_maps
from gapvision.localize.evaluate import annotated_images

from test_bad_inputs import _cli, _one_line_error, trained_run  # noqa: F401 (a fixture, shared)
from test_boxes_data import voc_folder, voc_xml  # noqa: F401 (a fixture, shared)


def test_a_flat_map_is_the_whole_image_not_nothing():
    maps = torch.stack([torch.full((3, 4), 2.5), torch.arange(12.0).view(3, 4)])[None]
    out = normalize_maps(maps)
    assert torch.equal(out[0, 0], torch.ones(3, 4))  # flat: no spatial preference -> everywhere
    assert out[0, 1].min() == 0 and out[0, 1].max() == 1


@pytest.mark.parametrize("method", ["cam", "gradcam", "fcn"])
def test_an_image_of_one_map_cell_gets_a_whole_image_box_scored_as_predict(trained_run, method):
    run = gv.load_run(trained_run)
    image = np.full((8, 8, 3), 120, np.uint8)  # one map cell for this network (a flat map)
    prob = max(t["prob"] for t in run.predict([image], topk=1)[0]["top"])
    loc = Localizer(run, method=method, refine="none", calibration=False)
    [res] = loc([image])
    best = max(res.detections, key=lambda d: d.score)
    assert best.score == pytest.approx(prob, abs=1e-4)
    assert best.box == pytest.approx((0.0, 0.0, 8.0, 8.0))


@pytest.mark.parametrize("option, value, needle", [
    ("--threshold", "1.5", "between 0 and 1"),
    ("--threshold", "-1", "between 0 and 1"),
    ("--nms-iou", "5", "--nms-iou must be above 0 and at most 1"),
    ("--min-score", "2", "--min-score is a probability"),
    ("--min-area", "-5", "--min-area must be at least 1"),
])
def test_out_of_range_localize_options_are_one_line(trained_run, tmp_path, capsys, option, value, needle):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (90, 120, 60)).save(image)
    rc, _, err = _cli(["localize", trained_run, image, "--out", tmp_path / "o", option, value], capsys)
    _one_line_error(rc, err, needle)


def test_methods_a_pretrained_model_cannot_have_say_so(trained_run):
    run = gv.load_run(trained_run)
    config = {k: v for k, v in run.config.items() if k != "data"}  # as `--model NAME --weights W --labels L` builds it
    bare = gv.Run(None, config, model=run.model)
    with pytest.raises(GapvisionError, match="a pretrained --model has none here"):
        Localizer(bare, method="ddt", calibration=False)
    with pytest.raises(GapvisionError, match="a pretrained --model has none: train a run"):
        Localizer(bare, method="fewshot", calibration=False)


def test_a_one_class_voc_folder_split_as_training_points_to_split_all(trained_run, tmp_path, write_image):
    root = tmp_path / "one"
    for i in range(3):
        write_image(root / "images" / "cat" / f"c{i}.png", size=(40, 30))
    (root / "annotations").mkdir()
    for i in range(3):
        (root / "annotations" / f"c{i}.xml").write_text(voc_xml(f"c{i}.png", [("cat", (2, 3, 20, 25))]))
    run = gv.load_run(trained_run)
    with pytest.raises(DataError, match="--split all uses every image"):
        annotated_images(run, str(root), "val")
    assert len(annotated_images(run, str(root), "all")) == 3


def test_the_class_mismatch_error_stays_one_short_line(trained_run, voc_folder):
    run = gv.load_run(trained_run)
    run.classes = [f"class{i}" for i in range(1000)]  # a 1,000-class ImageNet model's names
    with pytest.raises(DataError) as e:
        annotated_images(run, str(voc_folder), "all")
    message = str(e.value)
    assert "class0, class1" in message and "(1000 in all)" in message and "class999" not in message
    assert len(message) < 400 and "use a model trained on these classes" in message


def test_max_side_keeps_a_thin_image_usable(trained_run):
    loc = Localizer(gv.load_run(trained_run), max_side=64, refine="none", calibration=False)
    t, size = loc.prepare(np.zeros((20, 2000, 3), np.uint8))
    assert size == (2000, 20) and t.shape[-2] >= 20  # the short side is not shrunk below usefulness
    t, _ = loc.prepare(np.zeros((300, 400, 3), np.uint8))
    assert max(t.shape[-2:]) == 64  # an ordinary photo still shrinks to max_side


def test_calibrate_then_localise_images_in_one_command_and_evaluate_takes_no_images(trained_run, voc_folder,
                                                                                     tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    image = next((voc_folder / "images" / "cat").glob("*.png"))
    rc, _, err = _cli(["localize", run, image, "--evaluate", voc_folder], capsys)
    _one_line_error(rc, err, f"--evaluate {voc_folder} scores that data's annotated images", "a command of their own")
    rc, out, err = _cli(["localize", run, image, "--calibrate", voc_folder, "--split", "all", "--method", "cam",
                         "--json", "--out", tmp_path / "o"], capsys)
    assert rc == 0, err
    assert "calibrated on" in out and (run / "localize.json").is_file()
    record = json.loads(out.strip().splitlines()[-1])  # the image, localised with the new calibration
    assert record["image"] == str(image) and record["detections"]
    from gapvision.localize.evaluate import evaluate_localization

    m = evaluate_localization(gv.load_run(run), str(voc_folder), method="cam")
    assert set(m["ap50_per_class"]) <= {"cat", "dog"} and m["ap50_per_class"]
