"""End-to-end training through the pipeline: run directory contents, heads, checkpoints, resume, evaluate."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gapvision as gv
from gapvision.models.heads import HEADS
from gapvision.train import trainer as trainer_mod
from gapvision.train.pipeline import resume, train

SMALL = "builtin:shapes?n=240&size=32"
FAST = dict(img_size=32, batch_size=32, augment="none", quiet=True, workers=0)


def test_train_writes_complete_run_directory(tmp_path):
    run = train(SMALL, "fastnet_s", "gap", out=tmp_path / "r", epochs=3, lr=3e-3, seed=1, **FAST)
    for name in ("config.json", "history.csv", "metrics.json", "model.safetensors", "checkpoint.pt", "curves.png",
                 "confusion.png"):
        assert (run.path / name).stat().st_size > 0, name
    with open(run.path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(0.0 <= float(r["val_acc"]) <= 1.0 for r in rows)
    m = json.loads((run.path / "metrics.json").read_text())
    for key in ("best_val_acc", "final_val_acc", "classes", "confusion_matrix", "test_acc", "per_class"):
        assert key in m, key
    assert m["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == m["val"]["images"]
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg["seed"] == 1 and cfg["classes"] == m["classes"] and cfg["world_size"] == 1
    assert cfg["model"]["model"] == "fastnet_s" and cfg["model"]["head"] == "gap"


def test_training_learns_shapes(tmp_path):
    run = train("builtin:shapes?n=600&size=48", "fastnet_s", "gap", out=tmp_path / "r", epochs=4, optimizer="sgd", lr=0.05,
                **{**FAST, "img_size": 48})
    assert run.metrics["best_val_acc"] > 0.6  # chance is 0.25


@pytest.mark.parametrize("head", HEADS)
def test_every_head_trains_and_round_trips(tmp_path, head):
    run = train(SMALL, "cifarcnn", head, out=tmp_path / head, epochs=1, **FAST)
    loaded = gv.load_run(run.path)
    x = torch.randn(2, 3, 32, 32)
    fresh = gv.create_model("cifarcnn", head, 4, img_size=32)
    fresh.load_state_dict(load_file(str(run.path / "model.safetensors")))
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), fresh(x))
    preds = loaded.predict([np.zeros((40, 50, 3), np.uint8)], topk=2)
    assert preds[0]["image"] == "#0" and len(preds[0]["top"]) == 2
    assert abs(sum(t["prob"] for t in loaded.predict([np.zeros((9, 9), np.uint8)], topk=4)[0]["top"]) - 1) < 1e-4


def test_resume_after_interrupt_equals_uninterrupted(tmp_path, monkeypatch):
    opts = dict(epochs=3, lr=2e-3, seed=3, deterministic=True, **FAST)
    full = train(SMALL, "fastnet_s", "gap", out=tmp_path / "full", **opts)

    real = trainer_mod.Trainer.train_epoch

    def interrupted(self, batches, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, batches, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", interrupted)
    with pytest.raises(gv.GapvisionError, match="--resume"):
        train(SMALL, "fastnet_s", "gap", out=tmp_path / "cut", **opts)
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", real)
    resumed = resume(tmp_path / "cut")
    a, b = load_file(str(full.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["final_val_acc"] == full.metrics["final_val_acc"]
    assert [r["val_loss"] for r in resumed.history] == pytest.approx([r["val_loss"] for r in full.history], abs=1e-6)


def test_existing_run_is_not_overwritten(tmp_path):
    train(SMALL, "cifarcnn", "gap", out=tmp_path / "r", epochs=1, **FAST)
    with pytest.raises(gv.GapvisionError, match="--resume"):
        train(SMALL, "cifarcnn", "gap", out=tmp_path / "r", epochs=1, **FAST)


def test_evaluate_on_another_split(tmp_path):
    run = train(SMALL, "cifarcnn", "gap", out=tmp_path / "r", epochs=1, **FAST)
    res = gv.evaluate(run, SMALL, split="test")
    assert res["images"] == len(gv.load_data(SMALL).test)
    assert (run.path / "evaluations").is_dir()
    assert abs(res["acc"] - run.metrics["test_acc"]) < 1e-9


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path, monkeypatch):
    real = trainer_mod.Trainer.train_epoch

    def poisoned(self, batches, epoch):
        if epoch == 1:
            with torch.no_grad():
                for p in self.net.parameters():
                    p.fill_(float("nan"))
        return real(self, batches, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", poisoned)
    with pytest.raises(gv.GapvisionError, match="lower --lr"):
        train(SMALL, "cifarcnn", "gap", out=tmp_path / "r", epochs=3, **FAST)
    state = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["status"] == "diverged"


def test_unknown_option_is_a_clear_error():
    with pytest.raises(gv.ConfigError, match="unknown option"):
        train(SMALL, "fastnet_s", "gap", epochz=3)


def test_from_scratch_runs_raise_bn_momentum_and_pretrained_ones_keep_theirs(tmp_path):
    from gapvision.train.pipeline import SCRATCH_BN_MOMENTUM, prepare_run

    run = train(SMALL, "mobilenet_v3_small", "gap", out=tmp_path / "r", epochs=1, **FAST)
    assert run.config["model"]["bn_momentum"] == SCRATCH_BN_MOMENTUM == 0.1
    assert min(m.momentum for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d)) == 0.1
    prep = prepare_run(SMALL, {"model": "mobilenet_v3_small", "weights": str(run.path), "quiet": True, **FAST})
    assert prep.net.config.bn_momentum is None  # pretrained: the builder's momenta (0.01 for MobileNetV3)
    assert min(m.momentum for m in prep.net.modules() if isinstance(m, torch.nn.BatchNorm2d)) == 0.01


def test_weight_decay_spares_biases_norms_and_per_channel_scales():
    from torch import nn

    from gapvision.train.config import TrainConfig
    from gapvision.train.optim import param_groups

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 7, groups=8))
            self.backbone.layer_scale = nn.Parameter(torch.full((8, 1, 1), 1e-6))  # torchvision ConvNeXt's shape
            self.head = nn.Linear(8, 4)

    net = Net()
    groups = param_groups(net, TrainConfig(weight_decay=0.05))
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    spared = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    b = net.backbone
    assert decayed == {id(b[0].weight), id(b[2].weight), id(net.head.weight)}  # the depthwise 8 x 1 x 7 x 7 too
    assert id(b.layer_scale) in spared and id(b[1].weight) in spared and id(net.head.bias) in spared
