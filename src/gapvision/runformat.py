"""The run-directory format: its version, file names and the checks that a folder holds a readable run.

Torch-free and model-free, so that any layer (models/weights.py reading ``--weights RUN_DIR``, the CLI, runs.py)
can check a run without importing the code that builds models.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import GapvisionError

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
REQUIRED_KEYS = ("classes", "preprocess", "model")


def read_config(path: str | Path) -> dict:
    """``config.json`` of run directory ``path``, checked: present, valid JSON, not from a newer format, with the
    entries needed to rebuild the model; one-line GapvisionError otherwise."""
    path = Path(path)
    cfg_path = path / CONFIG
    if not cfg_path.exists():
        raise GapvisionError(f"{path} is not a gapvision run directory (no config.json): pass the folder `train` wrote")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise GapvisionError(f"{cfg_path} is not valid JSON ({e.msg} at line {e.lineno}); the run is damaged") from None
    if not isinstance(config, dict):
        raise GapvisionError(f"{cfg_path} holds a JSON {type(config).__name__}, not the run's settings; the run is "
                             "damaged or not from gapvision")
    try:
        version = int(config.get("format_version", 0))
    except (TypeError, ValueError):
        raise GapvisionError(f"{cfg_path}: format_version {config.get('format_version')!r} is not a number; the run "
                             "is damaged") from None
    if version > FORMAT_VERSION:
        raise GapvisionError(
            f"{path} was written by a newer gapvision (run format {version}, this one reads up to {FORMAT_VERSION}): "
            "upgrade gapvision (pip install -U gapvision)"
        )
    for key in REQUIRED_KEYS:
        if key not in config:
            raise GapvisionError(f"{cfg_path} lacks the {key!r} entry; the run is damaged or not from gapvision")
    return config
