"""The fast recipe (defaults vs the user's options, what config.json records) and the EMA / TTA hooks of the Trainer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from gapvision.cli import main
from gapvision.data.memory import MemoryBatches
from gapvision.data.transforms import Preprocess
from gapvision.train import recipes
from gapvision.train.config import TrainConfig
from gapvision.train.pipeline import train
from gapvision.train.recipes import FAST, apply_recipe, choose_recipe, recipe_values
from gapvision.train.trainer import Trainer, WeightAverage

TINY = "builtin:shapes?n=48&size=16"
QUICK = dict(epochs=1, img_size=16, workers=0, quiet=True)


def test_auto_applies_the_fast_recipe_only_to_small_images_without_model_or_hyperparameters():
    assert choose_recipe({}, 32) == "fast" and choose_recipe({"model": None, "epochs": 3}, 64) == "fast"
    assert choose_recipe({}, 96) == "none"  # large images
    assert choose_recipe({"model": "resnet20"}, 32) == "none"  # the user chose a network
    for key in recipes.HYPERPARAMETERS:  # the user set an optimisation hyperparameter
        assert choose_recipe({key: FAST.get(key, 0.1)}, 32) == "none", key
    assert choose_recipe({"recipe": "none"}, 32) == "none"
    assert choose_recipe({"recipe": "fast", "model": "resnet20", "lr": 0.1}, 224) == "fast"


def test_explicit_options_always_win_and_the_note_lists_what_the_recipe_filled():
    opts, note = apply_recipe({"recipe": "fast", "model": "resnet20", "epochs": 3, "lr": 0.01, "head": None},
                              img_size=32, n_train=50_000)
    assert opts["model"] == "resnet20" and opts["epochs"] == 3 and opts["lr"] == 0.01 and opts["head"] == "gap"
    assert opts["optimizer"] == "sgd" and opts["tta"] == "flip" and opts["recipe"] == "fast"
    assert note == {"name": "fast", "from_recipe": sorted(set(FAST) - {"model", "epochs", "lr"})}
    opts, note = apply_recipe({"lr": 0.1, "model": None}, img_size=32, n_train=100)
    # no recipe: the user's options, and the plain defaults that follow from the data (a small set: a smaller batch
    # and the epochs for PLAIN_STEPS steps, at most PLAIN_MAX_EPOCHS) and the hardware (channels-last)
    assert opts == {"lr": 0.1, "recipe": "none", "batch_size": 16, "epochs": recipes.PLAIN_MAX_EPOCHS,
                    "channels_last": "on"} and note["from_recipe"] == []
    assert note["from_defaults"] == ["batch_size", "channels_last", "epochs"]


def test_plain_defaults_give_small_sets_enough_steps_and_bf16_where_it_is_fast():
    shapes = recipes.plain_values(1600, 64, 10)  # builtin:shapes: batch 16, 100 steps an epoch
    assert shapes["batch_size"] == 16 and shapes["epochs"] * 100 == recipes.PLAIN_STEPS and "amp" not in shapes
    assert "batch_size" not in recipes.plain_values(50_000, 64, 10)  # mid-sized data: TrainConfig's batch, epochs
    assert "epochs" not in recipes.plain_values(50_000, 64, 10)
    assert recipes.plain_values(1600, 64, 10, bf16=True)["amp"] == "on"
    assert "lr" not in shapes  # TrainConfig's lr ...
    deep = recipes.plain_values(1600, 64, 10, deep_no_norm=True)
    assert deep["lr"] == recipes.PLAIN_DEEP_NO_NORM_LR  # ... not VGG-16's, nor a MobileNet's
    assert recipes.plain_values(1600, 64, 10, grouped_norm=True)["lr"] == recipes.PLAIN_GROUPED_LR
    plain = recipes.plain_values(1600, 64, 10, grouped_norm=True, grouped_no_residual=True)  # ShuffleNetV2
    assert (plain["backbone_lr"], plain["lr"]) == (recipes.PLAIN_GROUPED_NO_RESIDUAL_LR,
                                                   recipes.PLAIN_GROUPED_NO_RESIDUAL_HEAD_LR)
    assert not {"lr", "backbone_lr"} & recipes.plain_values(1600, 64, 10, {"lr": 1e-3}, grouped_norm=True,
                                                            grouped_no_residual=True).keys()  # the user's lr stays
    half = recipes.plain_values(1600, 64, 10, {"backbone_lr": 1e-3}, grouped_norm=True, grouped_no_residual=True)
    assert half["lr"] == recipes.PLAIN_GROUPED_LR and "backbone_lr" not in half  # no half of the rule
    assert "lr" not in recipes.plain_values(1600, 64, 10, {"lr": 1e-3}, deep_no_norm=True)  # the user's lr stays
    assert recipes.plain_values(1600, 64, 10, {"amp": "off", "epochs": 2}, bf16=True) == {"batch_size": 16,
                                                                                           "channels_last": "on"}


def test_recipe_scales_batch_lr_and_epochs_to_the_data(monkeypatch):
    big = recipe_values("fast", 50_000, device="cpu")
    assert big["batch_size"] == FAST["batch_size"] and big["lr"] == FAST["lr"] and big["epochs"] == FAST["epochs"]
    small = recipe_values("fast", 1200, device="cpu")
    assert small["batch_size"] == 64 and small["lr"] == pytest.approx(FAST["lr"] * 64 / FAST["batch_size"])
    assert small["epochs"] * -(-1200 // 64) >= recipes.MIN_STEPS
    mine = recipe_values("fast", 1200, device="cpu", batch_size=200)  # the user's batch: lr follows it
    assert mine["batch_size"] == 200 and mine["lr"] == pytest.approx(FAST["lr"] * 200 / FAST["batch_size"])
    monkeypatch.setattr(recipes, "native_bf16", lambda device="auto": False)
    assert recipe_values("fast", 1200)["amp"] == "off"
    monkeypatch.setattr(recipes, "native_bf16", lambda device="auto": True)
    assert recipe_values("fast", 1200)["amp"] == "on"


def test_train_records_the_resolved_recipe_in_config(tmp_path):
    run = train(TINY, out=tmp_path / "fast", batch_size=16, amp="off", **QUICK)
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg["recipe"]["name"] == "fast" and "batch_size" not in cfg["recipe"]["from_recipe"]
    assert cfg["model"]["model"] == FAST["model"] and cfg["model"]["head"] == FAST["head"]
    t = cfg["train"]
    assert (t["recipe"], t["epochs"], t["batch_size"], t["amp"]) == ("fast", 1, 16, "off")  # the user's values
    assert (t["optimizer"], t["schedule"], t["ema"], t["tta"]) == ("sgd", FAST["schedule"], FAST["ema"], "flip")
    assert t["lr"] == pytest.approx(FAST["lr"] * 16 / FAST["batch_size"])
    assert cfg["data"]["augment"] == FAST["augment"] and cfg["data"]["in_memory"] == "auto"
    assert cfg["model_options"]["init"] == "default"  # the recipe's fastnet has BatchNorm: no data-dependent start

    plain = train(TINY, out=tmp_path / "plain", optimizer="adam", **QUICK)  # a hyperparameter: no recipe
    cfg = json.loads((plain.path / "config.json").read_text())
    assert cfg["recipe"]["name"] == "none" and cfg["recipe"]["from_recipe"] == [] and cfg["train"]["recipe"] == "none"
    bf16 = ["amp"] if recipes.native_bf16("cpu") else []  # bf16 autocast where the CPU runs it natively
    assert cfg["recipe"]["from_defaults"] == sorted(["batch_size", "channels_last", *bf16])  # a small set: its batch
    assert cfg["model_options"]["init"] == "whiten+data"  # gapcnn has no BatchNorm: whitened, then data-dependent
    assert cfg["model"]["model"] == "gapcnn" and cfg["train"]["ema"] == 0.0 and cfg["train"]["tta"] == "off"


def test_cli_recipe_option_and_user_values(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--data", TINY, "--recipe", "fast", "--model", "fastnet_s", "--epochs", "1", "--img-size",
                 "16", "--lr", "0.01", "--ema", "0", "--tta", "off", "--in-memory", "on", "--workers", "0", "--quiet",
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["model"] == "fastnet_s" and cfg["train"]["lr"] == 0.01 and cfg["train"]["ema"] == 0.0
    assert cfg["train"]["tta"] == "off" and cfg["data"]["in_memory"] == "on" and cfg["train"]["optimizer"] == "sgd"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", TINY, "--recipe", "slow"])
    assert exit_.value.code == 2 and "--recipe" in capsys.readouterr().err


def test_weight_average_follows_the_formula():
    net = nn.Linear(3, 2)
    ema = WeightAverage(net, decay=0.9, every=2)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(1)  # not a multiple of every: nothing happens
    assert torch.equal(ema.net.weight, start)
    ema.update(2)
    d = min(0.9, 3 / 12) ** 2
    torch.testing.assert_close(ema.net.weight, start + (1 - d) * 1.0)
    assert not ema.net.weight.requires_grad and not ema.net.training


def test_ema_weights_are_evaluated_saved_and_resumed(tmp_path):
    opts = dict(model="fastnet_s", head="gap", epochs=2, img_size=16, batch_size=16, workers=0, quiet=True,
                recipe="none", optimizer="sgd", lr=0.05, ema=0.9, augment="none", seed=1)
    run = train(TINY, out=tmp_path / "r", **opts)
    ckpt = torch.load(run.path / "checkpoint.pt", weights_only=True)
    saved = load_file(str(run.path / "model.safetensors"))
    if run.metrics["best_epoch"] == 2:
        for k, v in ckpt["ema"].items():  # the saved model is the average, not the live weights
            torch.testing.assert_close(saved[k], v)
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"] if k.endswith("weight"))
    trainer = Trainer(run.model, TrainConfig(**{k: v for k, v in opts.items() if k in TrainConfig.__dataclass_fields__}))
    trainer.load_checkpoint(ckpt)
    for k, v in trainer.ema.net.state_dict().items():
        torch.testing.assert_close(v, ckpt["ema"][k])


class _Tilted(nn.Module):
    """Logits that depend on the left/right balance of the image (mirroring swaps the two classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # the Trainer's optimiser needs a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        left, right = x[..., : w // 2].mean((1, 2, 3)), x[..., w // 2:].mean((1, 2, 3))
        return torch.stack([10 * (left - right), 10 * (right - left) + 0.1], 1)


def test_flip_tta_averages_the_logits_of_the_mirrored_image():
    data = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batches = MemoryBatches(data, np.array([0, 1, 0, 1, 1, 0]), Preprocess(3, 8), 4)
    plain = Trainer(_Tilted(), TrainConfig(quiet=True, device="cpu")).evaluate(batches)
    tta = Trainer(_Tilted(), TrainConfig(quiet=True, device="cpu", tta="flip")).evaluate(batches)
    assert len(set(plain.preds.tolist())) == 2  # without TTA the net depends on the image
    assert tta.preds.tolist() == [1] * 6  # averaged with the mirror only the constant 0.1 remains
    assert tta.loss == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.tensor([[0.0, 0.1]]).expand(6, 2), torch.tensor([0, 1, 0, 1, 1, 0]))), abs=1e-5)
