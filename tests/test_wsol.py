"""WSOL metrics on hand-made maps with known answers, calibration through the run directory, the never-empty rule
and multi-scale fusion."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gapvision.localize import Localizer, localize
from gapvision.localize.calibrate import CALIBRATION_FILE, read_calibration
from gapvision.localize.evaluate import calibrate, evaluate_localization
from gapvision.localize.multiscale import class_heat, parse_scales
from gapvision.localize.wsol import (Sample, baseline_scores, choose_operating_point, heat_boxes, loc_accuracy,
                                     max_box_acc)
from gapvision.errors import ConfigError, GapvisionError
from gapvision.runs import Run

from test_localize import COLOUR_CLASSES, COLOUR_PRE, colour_model


def nested(inner_value: float, ring_value: float) -> np.ndarray:
    """40 x 40 map: 0 outside, ``ring_value`` on the 20 x 20 square at 10-30, ``inner_value`` on 15-25."""
    m = np.zeros((40, 40), np.float32)
    m[10:30, 10:30] = ring_value
    m[15:25, 15:25] = inner_value
    return m


def two_blobs() -> np.ndarray:
    """A small blob at the peak (1.0, x/y 2-6) and a larger one at 0.8 (x/y 20-36)."""
    m = np.zeros((40, 40), np.float32)
    m[2:6, 2:6] = 1.0
    m[20:36, 20:36] = 0.8
    return m


def test_box_rules_on_two_regions():
    m = two_blobs()
    assert heat_boxes(m, 0.5, "all") == [(1.0, (2.0, 2.0, 6.0, 6.0)), (pytest.approx(0.8), (20.0, 20.0, 36.0, 36.0))]
    assert [b for _, b in heat_boxes(m, 0.5, "largest")] == [(20.0, 20.0, 36.0, 36.0)]
    assert [b for _, b in heat_boxes(m, 0.5, "union")] == [(2.0, 2.0, 36.0, 36.0)]
    assert [b for _, b in heat_boxes(m, 0.9, "largest")] == [(2.0, 2.0, 6.0, 6.0)]
    # boxes in the pixels of the image the map covers (here 80 x 20)
    assert [b for _, b in heat_boxes(m, 0.5, "largest", size=(80, 20))] == [(40.0, 10.0, 72.0, 18.0)]
    with pytest.raises(ConfigError, match="unknown box rule"):
        heat_boxes(m, 0.5, "biggest")


def test_maxboxacc_v2_takes_the_best_threshold_per_iou_level():
    # image A is right (IoU 1) for thresholds in (0, 0.5]: its object is the 20 x 20 square; image B for (0.5, 1):
    # its object is the 10 x 10 core. Elsewhere each gets IoU 0.25 (the square vs its core, or the 40 x 40 image).
    a = Sample(nested(1.0, 0.5), 0, 0, [(10, 10, 30, 30)], (40, 40))
    b = Sample(nested(1.0, 0.5), 0, 0, [(15, 15, 25, 25)], (40, 40))
    m = max_box_acc([a, b])
    assert m["boxacc"] == {"0.3": 0.5, "0.5": 0.5, "0.7": 0.5} and m["maxboxacc_v2"] == 0.5
    assert max_box_acc([a])["maxboxacc_v2"] == 1.0 and max_box_acc([a])["best_threshold"]["0.5"] == 0.01
    assert max_box_acc([b])["best_threshold"]["0.7"] == 0.51
    # a fixed threshold cannot do what the sweep does: 0.3 suits A only
    assert loc_accuracy([a, b], 0.3, "largest")["gt_known_loc"] == 0.5


def test_maxboxacc_v2_matches_over_all_regions_and_loc_uses_the_first_box():
    s = Sample(two_blobs(), 1, 1, [(20, 20, 36, 36)], (40, 40))
    assert max_box_acc([s])["maxboxacc_v2"] == 1.0  # the 0.8 region is a candidate beside the peak region
    assert loc_accuracy([s], 0.5, "all")["gt_known_loc"] == 0.0  # first box: the peak region, IoU 0
    assert loc_accuracy([s], 0.5, "largest")["gt_known_loc"] == 1.0
    op = choose_operating_point([s])
    assert op["rule"] == "largest" and op["score"] == 1.0 and 0 < op["threshold"] <= 0.8
    assert op["scores"]["all"] < 1.0


def test_top1_needs_the_right_class_and_several_ground_truth_boxes_count():
    m = nested(1.0, 1.0)
    right = Sample(m, 0, 0, [(0, 0, 5, 5), (10, 10, 30, 30)], (40, 40))  # the second box matches
    wrong = Sample(m, 0, 2, [(10, 10, 30, 30)], (40, 40))  # the box is right, the class is not
    r = loc_accuracy([right, wrong], 0.5, "largest")
    assert r["gt_known_loc"] == 1.0 and r["top1_loc"] == 0.5 and r["top1_cls"] == 0.5 and r["gt_known_iou"] == 1.0


def test_baselines_have_known_answers():
    centre = Sample(np.zeros((10, 10)), 0, 0, [(10, 10, 90, 90)], (100, 100))  # the central 80 % itself
    corner = Sample(np.zeros((10, 10)), 0, 1, [(0, 0, 50, 50)], (100, 100))
    c = baseline_scores([centre, corner], "center")
    assert c["gt_known_loc"] == 0.5 and c["top1_loc"] == 0.5
    assert c["mean_iou"] == pytest.approx((1 + 1600 / (6400 + 2500 - 1600)) / 2, abs=1e-4)
    f = baseline_scores([centre], "full")  # IoU 0.64: counts at 0.3 and 0.5, not at 0.7
    assert f["gt_known_loc"] == 1.0 and f["maxboxacc_v2"] == pytest.approx(2 / 3, abs=1e-4)


# -- the colour model: maps known exactly --------------------------------------------------------------------
def square_image(colour: int, box: tuple[int, int, int, int], size=(50, 40)) -> np.ndarray:
    img = np.zeros((size[1], size[0], 3), np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1, colour] = 255
    return img


def test_multiscale_fusion_is_the_mean_of_the_per_scale_maps_and_boxes_the_object():
    loc = Localizer(_colour_run(None), method="cam", calibration=False)
    img = square_image(0, (10, 8, 30, 28))
    (one,), (two,), (both,) = (class_heat(loc, [img], scales=s) for s in ((1.0,), (2.0,), (1.0, 2.0)))
    assert one.top == 0 and one.size == (50, 40) and both.heat[0].shape == (32, 32)
    mean = (one.heat[0] + two.heat[0]) / 2
    np.testing.assert_allclose(both.heat[0], (mean - mean.min()) / (mean.max() - mean.min()), atol=1e-5)
    (found,) = localize(_colour_run(None), [img], method="cam", scales=(1.0, 2.0), threshold=0.5, calibration=False)
    assert found["detections"][0]["label"] == "red"
    assert found["detections"][0]["box"] == pytest.approx([10, 8, 30, 28], abs=1.6)
    with pytest.raises(ConfigError, match="--scales"):
        parse_scales("1,x")


@pytest.mark.parametrize("method", ["fcn", "cam", "gradcam"])
def test_the_confident_class_always_gets_a_box(method):
    img = square_image(1, (5, 5, 45, 35))
    for opts in ({"min_score": 1.0}, {"scales": (1.0,), "threshold": 1.0}):
        (res,) = localize(_colour_run(None), [img], method=method, calibration=False, **opts)
        assert [d["label"] for d in res["detections"]][:1] == ["green"], (opts, res)


def _colour_run(path: Path | None) -> Run:
    cfg = {"classes": COLOUR_CLASSES, "preprocess": COLOUR_PRE.to_dict(), "model": colour_model().config.to_dict(),
           "seed": 0, "data": {"val_split": 0.5}}
    return Run(path, cfg, model=colour_model())


@pytest.fixture
def colour_voc(tmp_path) -> Path:
    """12 images (6 red, 6 green squares of random size and place) with VOC boxes."""
    rng = np.random.default_rng(0)
    root = tmp_path / "colours"
    (root / "annotations").mkdir(parents=True)
    for i in range(12):
        colour = i % 2
        w, h = rng.integers(8, 30, 2)
        x0, y0 = rng.integers(0, 50 - w), rng.integers(0, 40 - h)
        box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        folder = root / "images" / COLOUR_CLASSES[colour]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(square_image(colour, box)).save(folder / f"im{i}.png")
        (root / "annotations" / f"im{i}.xml").write_text(
            f"<annotation><object><name>{COLOUR_CLASSES[colour]}</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}"
            f"</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>")
    return root


def test_calibration_round_trip_through_the_run_directory(tmp_path, colour_voc):
    run = _colour_run(tmp_path / "run")
    (tmp_path / "run").mkdir()
    entry = calibrate(run, str(colour_voc), split="train", images=4, method="cam", scales=(1.0, 2.0))
    saved = json.loads((tmp_path / "run" / CALIBRATION_FILE).read_text())
    assert saved["method"] == "cam" and saved["methods"]["cam"] == entry and entry["images"] == 4
    assert entry["split"] == "train" and entry["scales"] == [1.0, 2.0] and 0 < entry["threshold"] < 0.95
    assert entry["score"] >= 0.9
    loc = Localizer(run)  # no options: the calibrated method, threshold, rule and scales
    assert loc.method == "cam" and loc.scales == (1.0, 2.0) and loc.rule == entry["rule"]
    assert loc.threshold.value == entry["threshold"] and loc.min_score == entry["min_score"]
    # box refinement: both measured on the calibration images, the one with the better AP@0.5 kept and used
    assert set(entry["refine_scores"]) == {"none", "grabcut"} and loc.refine == entry["refine"]
    best = max(entry["refine_scores"].values(), key=lambda v: (v["ap50"], v["mean_iou"]))
    assert entry["refine_scores"][entry["refine"]] == best
    assert Localizer(run, refine="none").refine == "none"  # an explicit option still wins
    assert Localizer(run, calibration=False).scales is None
    after = evaluate_localization(run, str(colour_voc), split="val", out=tmp_path / "ev")
    assert after["calibrated"] and after["images"] == 6 and after["method"] == "cam"
    assert after["operating_point"] == {"threshold": entry["threshold"], "rule": entry["rule"]}
    assert after["gt_known_loc"] == 1.0 and after["top1_loc"] == 1.0
    assert after["maxboxacc_v2"] >= after["baseline_center"]["maxboxacc_v2"]
    written = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert {"top1_loc", "gt_known_loc", "maxboxacc_v2", "baseline_center", "baseline_full", "presence_f1",
            "ap50", "mean_iou"} <= set(written)
    # serve's Localizer and the FCN export's metadata see the same calibration
    from gapvision.export import metadata
    from gapvision.localize import to_fcn
    from gapvision.serve.app import Service

    assert Service(run).localizer().calibration == entry
    exported = {k: v for k, v in entry.items() if k != "files"}  # not the calibration images' paths
    assert json.loads(metadata(run, to_fcn(run.model), fcn=True)["localize"])["methods"]["cam"] == exported
    assert "localize" not in metadata(run, run.model, fcn=False)
    (tmp_path / "run" / CALIBRATION_FILE).write_text("{broken")
    with pytest.raises(GapvisionError, match="localize.json is damaged"):
        read_calibration(run)


def test_ddt_maps_project_on_each_class_principal_direction():
    from gapvision.localize.ddt import fit_classes

    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    obj = torch.tensor([3.0, 0.0, 0.0, 1.0])  # class 0's objects; the background is small noise
    per_image = []
    for _ in range(6):
        d = 0.1 * torch.randn(20, 4, generator=gen)
        d[:5] += obj
        per_image.append(d)
    pca = fit_classes(per_image, [0] * 6, 2)
    assert float(pca.direction[0] @ obj) / float(obj.norm()) > 0.99  # along the objects, signed towards them
    assert float(pca.direction[1].abs().sum()) == 0.0 and pca.images == 6  # no training image of class 1
    f = torch.zeros(1, 4, 3, 3)
    f[0, :, 1, 1] = obj
    m = pca.maps(f, torch.tensor([[0, 1]]))
    assert m.shape == (1, 2, 3, 3) and float(m[0, 0].argmax()) == 4 and float(m[0, 0, 1, 1]) > 0 > float(m[0, 0, 0, 0])
    assert float(m[0, 1].abs().max()) == 0.0


def test_ddt_fits_on_the_run_training_split_keeps_it_and_boxes_the_object(tmp_path, colour_voc):
    from gapvision.localize.ddt import DDT_FILE, descriptor_pca

    (tmp_path / "run").mkdir()
    cfg = {"classes": COLOUR_CLASSES, "preprocess": COLOUR_PRE.to_dict(), "model": colour_model().config.to_dict(),
           "seed": 0, "data": {"data": str(colour_voc / "images"), "val_split": 0.5}}
    run = Run(tmp_path / "run", cfg, model=colour_model())
    loc = Localizer(run, method="ddt", calibration=False)
    assert (tmp_path / "run" / DDT_FILE).is_file() and loc.fitted.images == 6  # the train half of 12 images
    again = descriptor_pca(run, loc.net, loc.device)  # read back from the run directory, not fitted again
    assert again.images == 6 and bool((again.direction == loc.fitted.direction).all())
    img = square_image(0, (10, 8, 30, 28))
    for opts in ({}, {"scales": (1.0, 2.0)}):
        (found,) = localize(run, [img], method="ddt", calibration=False, threshold=0.5, **opts)
        assert found["detections"][0]["label"] == "red", opts
        assert found["detections"][0]["box"] == pytest.approx([10, 8, 30, 28], abs=1.6), opts
    scores = evaluate_localization(run, str(colour_voc), split="val", method="ddt", scales=(1.0,))
    assert scores["method"] == "ddt" and scores["gt_known_loc"] == 1.0 and scores["maxboxacc_v2"] == 1.0
    arrays = Run(None, {**cfg, "data": {"data": "<arrays>"}}, model=colour_model())
    with pytest.raises(GapvisionError, match="in-memory arrays"):
        Localizer(arrays, method="ddt", calibration=False)


def test_evaluation_leaves_out_the_images_calibration_used(tmp_path, colour_voc, capsys, monkeypatch):
    run = _colour_run(tmp_path / "run")
    (tmp_path / "run").mkdir()
    entry = calibrate(run, str(colour_voc), split="train", images=4, method="cam", scales=(1.0,))
    files = entry["files"]
    assert len(files) == 4 and all(Path(f).is_absolute() and Path(f).is_file() for f in files)
    every = evaluate_localization(run, str(colour_voc), split="all")  # 12 images, 4 of them calibration's
    assert every["images"] == 8 and every["calibration_left_out"] == 4 and every["calibration_scored"] == 0
    both = evaluate_localization(run, str(colour_voc), split="all", calibration_images=True)
    assert both["images"] == 12 and both["calibration_left_out"] == 0 and both["calibration_scored"] == 4
    held_out = evaluate_localization(run, str(colour_voc), split="val")  # calibration drew from the train split
    assert held_out["images"] == 6 and held_out["calibration_left_out"] == 0 and held_out["calibration_scored"] == 0
    calibrate(run, str(colour_voc), split="val", images=None, method="cam", scales=(1.0,))
    alone = evaluate_localization(run, str(colour_voc), split="val")  # nothing else to score: scored, and said so
    assert alone["images"] == 6 and alone["calibration_scored"] == 6
    import gapvision.predict
    from gapvision.cli import main

    monkeypatch.setattr(gapvision.predict, "open_predictor", lambda *a, **k: run)  # the colour model is no builtin
    calibrate(run, str(colour_voc), split="train", images=4, method="cam", scales=(1.0,))
    assert main(["localize", str(tmp_path / "run"), "--evaluate", str(colour_voc)]) == 0
    assert "note: left out the 4 images the calibration used" in capsys.readouterr().out
    assert main(["localize", str(tmp_path / "run"), "--evaluate", str(colour_voc), "--calibration-images"]) == 0
    assert "note: 4 of the 12 images scored were used by the calibration" in capsys.readouterr().out
    # an exact copy of a calibration image under another name is no held-out image either
    import shutil

    first = Path(files[0])
    shutil.copy(first, first.with_name("copy-of-" + first.name))
    shutil.copy(colour_voc / "annotations" / f"{first.stem}.xml", colour_voc / "annotations" / f"copy-of-{first.stem}.xml")
    again = evaluate_localization(run, str(colour_voc), split="all")  # 13 images, 4 calibration's and 1 copy
    assert again["images"] == 8 and again["calibration_left_out"] == 5


def test_fewshot_needs_calibration_then_learns_objectness_from_the_boxes(tmp_path, colour_voc):
    from gapvision.localize.fewshot import FEWSHOT_FILE, load_objectness

    run = _colour_run(tmp_path / "run")
    (tmp_path / "run").mkdir()
    with pytest.raises(GapvisionError, match="--calibrate DATA --method fewshot"):
        Localizer(run, method="fewshot", calibration=False)
    entry = calibrate(run, str(colour_voc), split="train", images=6, method="fewshot", scales=(1.0, 2.0))
    assert (tmp_path / "run" / FEWSHOT_FILE).is_file()
    assert entry["fewshot"]["images"] == 6 and 0 < entry["fewshot"]["object_share"] < 1
    obj = load_objectness(run)
    assert obj.tap is None and obj.weight.shape == (3,)  # a one-layer backbone: its final map alone
    assert float(obj.weight[0]) > 0 and float(obj.weight[1]) > 0  # red and green squares are the objects
    loc = Localizer(run)  # the calibrated method, read back from the run directory
    assert loc.method == "fewshot" and loc.fitted is not None
    img = square_image(1, (12, 6, 40, 30))
    (found,) = localize(run, [img], refine="none")
    assert found["detections"][0]["label"] == "green"
    assert found["detections"][0]["box"] == pytest.approx([12, 6, 40, 30], abs=2.0)
    scores = evaluate_localization(run, str(colour_voc), split="val")
    assert scores["method"] == "fewshot" and scores["calibrated"] and scores["gt_known_loc"] == 1.0
    assert scores["maxboxacc_v2"] > scores["baseline_center"]["maxboxacc_v2"]
    from gapvision.export import metadata
    from gapvision.localize import to_fcn

    assert "localize" not in metadata(run, to_fcn(run.model), fcn=True)  # its maps are not the exported class maps
    cam = calibrate(run, str(colour_voc), split="train", images=4, method="cam", scales=(1.0,))
    assert json.loads(metadata(run, to_fcn(run.model), fcn=True)["localize"]) == {
        "format_version": 1, "method": "cam", "methods": {"cam": {k: v for k, v in cam.items() if k != "files"}}}
    (tmp_path / "run" / FEWSHOT_FILE).write_bytes(b"broken")
    with pytest.raises(GapvisionError, match="damaged"):
        load_objectness(run)


def test_fewshot_cell_labels_and_the_stage_it_taps():
    torch = pytest.importorskip("torch")
    from gapvision.localize.fewshot import cell_labels, tapped_features, tapped_stage
    from gapvision.models import create_model

    # a 4 x 2 grid over a 40 x 20 image: cell centres at x 5, 15, 25, 35 and y 5, 15
    inside = cell_labels((40, 20), [(0, 0, 20, 10), (30, 10, 40, 20)], (2, 4))
    assert inside.tolist() == [[True, True, False, False], [False, False, False, True]]
    net = create_model("resnet18", head="gap", num_classes=2).eval()
    # the tap's input: layer3's 4 x 4 map, pooled onto layer4's 2 x 2; the layers fine-tuning trains: layer4 and
    # what it contains, in order
    tap, tuned = tapped_stage(net, 3, 64)
    assert tap == "layer4" and tuned[:3] == ["layer4", "layer4.0", "layer4.0.conv1"]
    assert all(n.startswith("layer4") for n in tuned) and "layer4.1.bn2" in tuned
    feats, desc = tapped_features(net, torch.zeros(2, 3, 64, 64), "layer4")
    assert feats.shape == (2, 512, 2, 2) and desc.shape == (2, 512 + 256, 2, 2)
    assert tapped_stage(create_model("mobilenet_v2", head="gap", num_classes=2).eval(), 3, 64)[0] == "features.14"


def test_fewshot_fine_tunes_only_the_tapped_stage_on_a_copy_and_keeps_it_in_the_run(tmp_path):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from gapvision.data.transforms import Preprocess, normalize, to_uint8
    from gapvision.localize.fewshot import (cell_labels, fit_objectness, load_objectness, save_objectness,
                                            tapped_features)
    from gapvision.localize.multiscale import scaled_view
    from gapvision.models import create_model
    from gapvision.runs import to_pil

    torch.manual_seed(0)
    net = create_model("resnet18", head="gap", num_classes=2).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pre = Preprocess(img_size=64)
    rng = np.random.default_rng(0)
    images, boxes = [], []
    for i in range(6):
        x0, y0 = (int(v) for v in rng.integers(0, 30, 2))
        images.append(square_image(i % 3, (x0, y0, x0 + 30, y0 + 30), size=(64, 64)))
        boxes.append([(x0, y0, x0 + 30, y0 + 30)])
    probe = fit_objectness(net, pre, images, boxes, (1.0, 2.0), torch.device("cpu"), fine_tune_epochs=0)
    tuned = fit_objectness(net, pre, images, boxes, (1.0, 2.0), torch.device("cpu"), fine_tune_epochs=5, lr=3e-3)
    assert probe.stage == {} and "fine_tune" not in probe.about and tuned.about["fine_tune"]["epochs"] == 5
    assert tuned.tap == "layer4" and tuned.stage and all(k.startswith("layer4.") for k in tuned.stage)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the classifier is untouched
    changed = [k for k, v in tuned.stage.items() if not torch.equal(v, before["backbone." + k])]
    assert any(".conv" in k for k in changed)

    def loss(obj):  # the per-cell cross-entropy on the fitted views
        total = 0.0
        for im, objs in zip(images, boxes):
            for s in (1.0, 2.0):
                x = normalize(scaled_view(to_uint8(to_pil(im), pre)[None], s), pre)
                feats, d = obj.descriptors(net, x)
                assert torch.equal(feats, tapped_features(net, x, None)[0])  # the class decision: the run's own net
                m = obj.maps(d, torch.zeros(1, 1, dtype=torch.long))[0, 0]
                y = torch.from_numpy(cell_labels((64, 64), objs, tuple(m.shape))).float()
                total += float(F.binary_cross_entropy_with_logits(m, y))
        return total
    assert loss(tuned) < 0.8 * loss(probe)
    run = _colour_run(tmp_path)
    save_objectness(run, tuned)
    again = load_objectness(run)
    assert again.about == tuned.about and set(again.stage) == set(tuned.stage)
    x = normalize(to_uint8(to_pil(images[0]), pre)[None], pre)
    assert torch.allclose(again.descriptors(net, x)[1], tuned.descriptors(net, x)[1])
    other = create_model("mobilenet_v2", head="gap", num_classes=2).eval()
    with pytest.raises(GapvisionError, match="calibrate --method fewshot again"):
        again.descriptors(other, torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "densenet121"])
def test_fewshot_maps_reuse_the_run_nets_layers_before_the_tap(arch):
    torch = pytest.importorskip("torch")
    from gapvision.localize import fewshot
    from gapvision.localize.fewshot import Objectness, run_from, tapped_features, tapped_stage
    from gapvision.models import create_model

    torch.manual_seed(0)
    net = create_model(arch, head="gap", num_classes=2).eval()
    tap, modules = tapped_stage(net, 3, 64)
    # a "tuned" stage: every tensor of the tapped layers changed, as fine-tuning does
    stage = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in fewshot.stage_tensors(net, modules).items()}
    x = torch.randn(2, 3, 64, 64)
    obj = Objectness(torch.randn(1), 0.0, tap, stage=stage)
    tuned = obj.tuned(net)
    full = tapped_features(tuned, x, tap)[1]  # the whole tuned copy, image to descriptors
    calls = []
    first = net.backbone.get_submodule(net.backbone.first_conv.rsplit(".", 1)[0])
    tuned_first = tuned.backbone.get_submodule(tuned.backbone.first_conv.rsplit(".", 1)[0])
    handles = [m.register_forward_hook(lambda m, i, o, w=w: calls.append(w)) for m, w in ((first, "run"),
                                                                                         (tuned_first, "copy"))]
    feats, shared = obj.descriptors(net, x)
    for h in handles:
        h.remove()
    assert calls == ["run"]  # the tuned copy starts at the tap: its first convolution never runs
    assert torch.equal(feats, net.features(x)) and not torch.allclose(shared[:, :net.backbone.out_channels],
                                                                     feats)
    assert torch.equal(shared, full)  # the same operations on the same tensors
    assert run_from(tuned.backbone, "no.such.layer", x) is None

    class OwnForward(type(tuned.backbone)):  # a backbone with a forward of its own (timm's): the whole copy runs
        def forward(self, x):
            return super().forward(x)

    tuned.backbone.__class__ = OwnForward
    assert run_from(tuned.backbone, tap, x) is None
    assert torch.allclose(obj.descriptors(net, x)[1], full, atol=1e-5, rtol=1e-4)


def test_presence_score_is_the_middle_of_the_scores_that_tie():
    from gapvision.localize.calibrate import choose_presence
    from gapvision.localize.multiscale import ClassHeat

    # one class per image; the runner-up reaches 0.3 at most, a second true class is at 0.6
    heats = [ClassHeat(np.array(p), {}, (8, 8)) for p in ([0.7, 0.3], [0.8, 0.2], [0.4, 0.6])]
    assert choose_presence(heats, [{0}, {0}, {1}], grid=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]) == 0.6
    # a scene with both classes (0.45 and 0.55) makes 0.4 the one best score: no tie, no middle to take
    both = heats + [ClassHeat(np.array([0.45, 0.55]), {}, (8, 8))]
    assert choose_presence(both, [{0}, {0}, {1}, {0, 1}], grid=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]) == 0.4


def test_a_class_agnostic_map_boxes_a_region_once():
    from gapvision.localize.api import CLASS_AGNOSTIC
    from gapvision.localize.boxes import Detection, nms_per_class

    dets = [Detection(0, "red", 0.6, (0, 0, 10, 10)), Detection(1, "green", 0.3, (0, 0, 10, 10)),
            Detection(1, "green", 0.5, (20, 20, 30, 30))]
    assert [d.score for d in nms_per_class(dets)] == [0.6, 0.5, 0.3]  # per class: all three stay
    assert [(d.label, d.score) for d in nms_per_class(dets, across_classes=True)] == [("red", 0.6), ("green", 0.5)]
    assert "fewshot" in CLASS_AGNOSTIC and "fcn" not in CLASS_AGNOSTIC
