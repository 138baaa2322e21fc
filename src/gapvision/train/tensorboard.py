"""``--tensorboard``: per-epoch scalars for TensorBoard, written by the Trainer's ``on_epoch`` hook into
``RUN_DIR/tensorboard`` (view with ``tensorboard --logdir RUN_DIR``).

Optional dependency: ``pip install tensorboard``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: history column -> TensorBoard tag
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train", "val_acc": "accuracy/val",
        "lr": "lr", "seconds": "time/epoch_seconds"}


class TensorBoardLogger:
    """An ``on_epoch(trainer, row)`` callback writing the epoch's history row as scalars (step = epoch number)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard "
                              "(or pip install 'gapvision[tensorboard]')") from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def __call__(self, trainer: Any, row: dict) -> None:
        step = int(row["epoch"])
        for key, tag in TAGS.items():
            if key in row:
                self.writer.add_scalar(tag, float(row[key]), step)
        self.writer.flush()
        if step >= trainer.cfg.epochs or trainer.state.stopped_early:
            self.close()

    def close(self) -> None:
        self.writer.close()
