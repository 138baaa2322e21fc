"""Shared pytest fixtures (keep small and generic)."""
from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image


def _shared_path() -> Path:
    env = os.environ.get("GAPVISION_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """The third-party material folder (GAPVISION_SHARED or <repo>/../shared); skips the test when absent."""
    path = _shared_path()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set GAPVISION_SHARED to use it)")
    return path


@pytest.fixture
def copy_run() -> Callable[..., Path]:
    """copy_run(run_dir, dest, edit): a copy of a run directory whose config.json ``edit(config)`` changed in place."""

    def copy(run_dir, dest, edit: Callable[[dict], None]) -> Path:
        dest = Path(dest)
        shutil.copytree(run_dir, dest)
        cfg = json.loads((dest / "config.json").read_text())
        edit(cfg)
        (dest / "config.json").write_text(json.dumps(cfg))
        return dest

    return copy


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """write_image(path, size=(12, 10), mode="RGB", seed=0, **save_kwargs): a small random image file."""

    def write(path, size=(12, 10), mode="RGB", seed=0, **save_kwargs) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        w, h = size
        if mode == "L":
            arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
        else:
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr)
        if mode not in ("L", "RGB"):
            img = img.convert(mode)
        img.save(path, **save_kwargs)
        return path

    return write


@pytest.fixture
def make_image_folder(write_image) -> Callable[..., Path]:
    """make_image_folder(root, {"cat": 3, "dog": 4}, size=(12, 10), mode="RGB", ext=".png"): root/<class>/<i><ext>
    with distinct random images; returns root."""

    def make(root, counts: dict[str, int], size=(12, 10), mode="RGB", ext=".png") -> Path:
        root = Path(root)
        for cls, n in counts.items():
            for i in range(n):
                seed = zlib.crc32(f"{cls}/{i}".encode())
                write_image(root / cls / f"{i:03d}{ext}", size=size, mode=mode, seed=seed)
        root.mkdir(parents=True, exist_ok=True)
        return root

    return make
