"""The one inference path: metrics.json, ``gapvision evaluate`` and ``predict`` agree exactly (a run with EMA and
flip TTA), and the Predictor's inputs (images, paths, tensors, batch sources) give the same logits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gapvision.cli import main
from gapvision.data.builtin import SHAPE_CLASSES, make_shapes
from gapvision.predictor import Predictor
from gapvision.runs import load_run
from gapvision.train import metrics as M
from gapvision.train.pipeline import make_batches

SPLITS = {"train": (160, 1), "val": (48, 2), "test": (48, 3)}  # images, seed


def _write_splits(root: Path, size: int = 32) -> Path:
    for split, (n, seed) in SPLITS.items():
        x, y = make_shapes(n, size, seed=seed)
        for i, (img, label) in enumerate(zip(x, y)):
            path = root / split / SHAPE_CLASSES[int(label)] / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
    return root


@pytest.fixture(scope="module")
def ema_tta_run(tmp_path_factory) -> Path:
    """The fast recipe (EMA 0.99, flip TTA, in-memory batches, channels-last, bf16 where native), two epochs."""
    root = tmp_path_factory.mktemp("agree")
    data = _write_splits(root / "data")
    out = root / "run"
    assert main(["train", "--data", str(data), "--recipe", "fast", "--epochs", "2", "--batch-size", "32",
                 "--workers", "0", "--quiet", "--out", str(out)]) == 0
    return out


def test_metrics_evaluate_and_predict_agree_exactly(ema_tta_run, capsys):
    run = load_run(ema_tta_run)
    train_cfg = run.config["train"]
    assert train_cfg["ema"] == 0.99 and train_cfg["tta"] == "flip"  # what this test is about
    metrics = run.metrics
    data = run.config["data"]["data"]
    for split in ("val", "test"):
        out = ema_tta_run / f"eval-{split}"
        assert main(["evaluate", str(ema_tta_run), "--data", data, "--split", split, "--out", str(out)]) == 0
        evaluated = json.loads((out / "metrics.json").read_text())
        assert evaluated["confusion_matrix"] == metrics[split]["confusion_matrix"], split
        assert evaluated["acc"] == metrics[split]["acc"] and evaluated["loss"] == metrics[split]["loss"], split

        capsys.readouterr()
        assert main(["predict", str(ema_tta_run), str(Path(data) / split), "--json", "--topk", "1"]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(records) == SPLITS[split][0]
        truth = np.array([run.classes.index(Path(r["image"]).parent.name) for r in records])
        preds = np.array([run.classes.index(r["top"][0]["label"]) for r in records])
        from_predict = M.summarize(truth, preds, run.classes)
        assert from_predict["confusion_matrix"] == metrics[split]["confusion_matrix"], split
        assert from_predict["acc"] == metrics[split]["acc"], split
    assert metrics["test_acc"] == metrics["test"]["acc"]
    assert metrics["best_val_acc"] == metrics["val"]["acc"]  # the per-epoch validation is the same computation
    assert 0.0 < metrics["test_acc"] < 1.0  # not a degenerate model, so disagreements would show


def test_predict_uses_the_runs_tta(ema_tta_run):
    run = load_run(ema_tta_run)
    image = next((Path(run.config["data"]["data"]) / "test").rglob("*.png"))
    x = run.predictor.batches([image]).__next__()
    plain = Predictor(load_run(ema_tta_run).model, run.preprocess, amp=run.config["train"]["amp"],
                      channels_last=run.config["train"]["channels_last"])
    flipped = 0.5 * (plain.logits(x) + plain.logits(x.flip(-1)))
    assert torch.equal(run.predict_logits([image]), flipped)
    assert run.predictor.tta == "flip"


def test_every_kind_of_input_gives_the_same_logits(ema_tta_run):
    run = load_run(ema_tta_run)
    pre = run.preprocess
    paths = sorted((Path(run.config["data"]["data"]) / "val").rglob("*.png"))[:5]
    p = run.predictor
    ref = p.logits(paths)
    assert ref.shape == (5, len(run.classes))
    pils = [Image.open(q).convert("RGB") for q in paths]
    arrays = [np.array(im) for im in pils]
    uint8 = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])
    from gapvision.data.imageset import ImageSet

    for other in (pils, arrays, uint8, [str(q) for q in paths]):
        assert torch.equal(p.logits(other), ref)
    # batches of 2 against the paths in batches of 2: oneDNN may pick another convolution algorithm for another batch
    # size (last-digit differences from the one batch of 5 on an AMD EPYC), so the reference has the same batches
    batches = make_batches(ImageSet([str(q) for q in paths], np.zeros(5, np.int64), run.classes), pre, 2)
    assert torch.equal(p.logits(batches), p.logits(paths, batch_size=2))
    assert torch.allclose(p.probs(paths).sum(1), torch.ones(5))
    assert p.features(paths).shape[:2] == (5, run.model.backbone.out_channels)
    maps = p.class_maps(uint8)
    assert maps.probs.shape[:2] == (5, len(run.classes))


def test_the_model_stays_where_the_predictor_put_it(ema_tta_run):
    run = load_run(ema_tta_run)
    device = run.predictor.device
    from gapvision.export import exported_module

    exported_module(run, fcn=False)
    assert run.device() == device and next(run.model.parameters()).device.type == device.type


def test_evaluate_split_of_a_plain_folder_is_the_runs_own_seeded_split(tmp_path, capsys):
    """A folder without split sub-folders: ``--split val`` is the validation split the run trained with (its
    ``--val-split`` and ``--seed``), so evaluate repeats metrics.json; without ``--split`` every image counts."""
    x, y = make_shapes(40, 16, seed=5)
    for i, (img, label) in enumerate(zip(x, y)):
        path = tmp_path / "data" / SHAPE_CLASSES[int(label)] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
    data, out = str(tmp_path / "data"), tmp_path / "run"
    assert main(["train", "--data", data, "--model", "gapcnn", "--epochs", "1", "--img-size", "16", "--val-split",
                 "0.3", "--seed", "3", "--workers", "0", "--quiet", "--out", str(out)]) == 0
    val = load_run(out).metrics["val"]
    assert main(["evaluate", str(out), "--data", data, "--split", "val", "--out", str(tmp_path / "ev")]) == 0
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert evaluated["images"] == val["images"] == 12 and evaluated["confusion_matrix"] == val["confusion_matrix"]
    assert evaluated["acc"] == val["acc"] and evaluated["split"] == "val"
    assert main(["evaluate", str(out), "--data", data, "--split", "train", "--out", str(tmp_path / "tr")]) == 0
    assert json.loads((tmp_path / "tr" / "metrics.json").read_text())["images"] == 28
    assert main(["evaluate", str(out), "--data", data, "--out", str(tmp_path / "all")]) == 0
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["images"] == 40
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", data, "--split", "test"]) == 2
    assert "has no test split" in capsys.readouterr().err
