"""``--tensorboard``: the per-epoch history lands in TensorBoard event files; a clear error without the package."""
from __future__ import annotations

import sys

import pytest

import gapvision as gv
from gapvision.cli import main
from gapvision.errors import ConfigError

DATA = "builtin:shapes?n=80&size=32"
FAST = dict(img_size=32, batch_size=32, augment="none", quiet=True, workers=0, epochs=2)


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_training_writes_the_history_as_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    run = gv.train(DATA, "fastnet_s", "gap", out=tmp_path / "run", tensorboard=True, **FAST)
    logged = scalars(run.path / "tensorboard")
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"} <= set(logged)
    for tag, key in (("loss/val", "val_loss"), ("accuracy/train", "train_acc")):
        assert [s for s, _ in logged[tag]] == [1, 2]
        assert [v for _, v in logged[tag]] == pytest.approx([r[key] for r in run.history], rel=1e-5)
    assert run.config["train"]["tensorboard"] is True


def test_cli_flag(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    out = tmp_path / "cli"
    assert main(["train", "--data", DATA, "--model", "fastnet_s", "--epochs", "1", "--img-size", "32", "--quiet",
                 "--workers", "0", "--out", str(out), "--tensorboard"]) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_clear_error_without_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        gv.train(DATA, "fastnet_s", "gap", out=tmp_path / "run", tensorboard=True, **FAST)
    assert not (tmp_path / "run" / "history.csv").exists()  # refused before the first epoch
