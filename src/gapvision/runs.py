"""The run directory: what training writes (atomically) and everything that reads a trained model back.

A run directory is enough to rebuild the exact model and preprocessing::

    config.json        data options, preprocess, model config, train config, classes, seed, world_size
    history.csv        epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds
    metrics.json       best/final validation figures, test figures, per-class metrics, confusion matrix
    model.safetensors  the best weights (by validation accuracy)
    checkpoint.pt      resumable state of the last finished epoch (loads with weights_only=True)
    curves.png, confusion.png
"""
from __future__ import annotations

import csv
import io
import json
import pickle
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from . import atomic
from .data.transforms import Preprocess, eval_transform
from .errors import GapvisionError
from .models.classifier import Classifier, ModelConfig, create_model

FORMAT_VERSION = 1
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def default_run_dir(model: str, head: str, base: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(base) / f"{stamp}-{model}-{head}"
    n = 1
    while path.exists():
        n += 1
        path = Path(base) / f"{stamp}-{model}-{head}-{n}"
    return path


class RunWriter:
    """Writes a run directory's artefacts, each one atomically."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled  # False on non-zero DDP ranks: nothing is written
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic.remove_stale_temporaries(self.path)  # left by a writer that was killed mid-write

    def json(self, name: str, obj: Any) -> None:
        if self.enabled:
            atomic.write_json(self.path / name, obj)

    def history(self, rows: list[dict]) -> None:
        if not self.enabled:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(HISTORY_COLUMNS), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        atomic.write_text(self.path / "history.csv", buf.getvalue())

    def model(self, net: torch.nn.Module, name: str = "model.safetensors") -> None:
        if self.enabled:
            save_weights(net, self.path / name)

    def checkpoint(self, state: dict) -> None:
        if self.enabled:
            buf = io.BytesIO()  # serialise first: a full disk then fails in one plain OSError, never half-way in C++
            torch.save(state, buf)
            atomic.write_bytes(self.path / "checkpoint.pt", buf.getvalue())


def save_weights(net: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(net).state_dict().items()}
    atomic.write_bytes(path, save(state, metadata=metadata or {"format": "gapvision"}))


def load_run_weights(net: torch.nn.Module, path: str | Path) -> None:
    """Load a run's model.safetensors into ``net``; a damaged file or another model's weights is one clear error."""
    from safetensors.torch import load_file

    try:
        _unwrap(net).load_state_dict(load_file(str(path)))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, RuntimeError (keys/shapes): all a damaged run
        raise GapvisionError(f"{path} does not hold this run's weights ({' '.join(str(e).split())[:160]}): the run is "
                             f"damaged; restore the file or train again") from None


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    return getattr(net, "module", net)  # DDP / compiled wrappers


def load_checkpoint(path: str | Path) -> dict:
    """Load checkpoint.pt without executing code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise GapvisionError(f"{path} holds pickled code, not just tensors, and gapvision never unpickles code: the "
                             f"checkpoint was tampered with or is not gapvision's; do not resume from it") from None
    except Exception as e:  # noqa: BLE001 - any failure here is a bad file, reported in one line
        raise GapvisionError(f"cannot load checkpoint {path}: {str(e).splitlines()[0]}") from None


class Run:
    """A trained model with its classes and preprocessing; usually read from a run directory by :func:`load_run`."""

    def __init__(self, path: Path | None, config: dict, model: Classifier | None = None):
        self.path = path
        self.config = config
        self.classes: list[str] = list(config["classes"])
        self.preprocess = Preprocess.from_dict(config["preprocess"])
        self.model_config = ModelConfig.from_dict(config["model"])
        self._model = model

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, model={self.model_config.model}, head={self.model_config.head})"

    def _repr_html_(self) -> str:  # notebooks: headline metrics, curves, confusion matrix (display.py)
        from .display import run_html

        return run_html(self)

    def show_results(self, n: int = 9, data: Any = None) -> Any:
        """A matplotlib figure of ``n`` validation images titled predicted / true (see :mod:`gapvision.display`)."""
        from .display import show_results

        return show_results(self, n, data)

    def plot_top_losses(self, k: int = 9, data: Any = None) -> Any:
        """A matplotlib figure of the ``k`` validation images with the highest loss (fastai's view)."""
        from .display import plot_top_losses

        return plot_top_losses(self, k, data)

    @property
    def model(self) -> Classifier:
        """The trained Classifier in eval mode (built and loaded on first use)."""
        if self._model is None:
            net = create_model(**{k: v for k, v in self.model_config.to_dict().items()})
            weights = self.path / "model.safetensors" if self.path else None
            if weights is None or not weights.exists():
                raise GapvisionError(f"{self.path} has no model.safetensors yet (training did not finish an epoch)")
            load_run_weights(net, weights)
            self._model = net.eval()
        return self._model

    @property
    def history(self) -> list[dict]:
        p = self.path / "history.csv" if self.path else None
        if p is None or not p.exists():
            return []
        with open(p, newline="") as f:
            return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]

    @property
    def metrics(self) -> dict:
        p = self.path / "metrics.json" if self.path else None
        return json.loads(p.read_text()) if p is not None and p.exists() else {}

    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def predict_logits(self, images: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
        """Logits for a list of images (paths, PIL images or uint8 arrays), each resized to the training size."""
        tf = eval_transform(self.preprocess)
        out = []
        net = self.model
        dev = self.device()
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = torch.stack([tf(to_pil(im)) for im in images[i : i + batch_size]]).to(dev)
                out.append(net(x).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def predict(self, images: Sequence[Any] | Any, topk: int = 3, batch_size: int = 32) -> list[dict]:
        """``[{"image": name, "top": [{"label": ..., "prob": ...}, ...]}, ...]`` for each image."""
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        probs = self.predict_logits(images, batch_size).softmax(dim=1)
        k = max(1, min(topk, len(self.classes)))
        top_p, top_i = probs.topk(k, dim=1)
        return [
            {
                "image": image_name(im, n),
                "top": [{"label": self.classes[int(j)], "prob": round(float(p), 6)} for p, j in zip(ps, js)],
            }
            for n, (im, ps, js) in enumerate(zip(images, top_p, top_i))
        ]


def image_name(im: Any, index: int) -> str:
    return str(im) if isinstance(im, (str, Path)) else f"#{index}"


def to_pil(im: Any) -> Image.Image:
    """A path, PIL image or uint8 array -> PIL image (paths go through the one image decoder)."""
    if isinstance(im, Image.Image):
        return im
    if isinstance(im, (str, Path)):
        from .data.images import open_image

        return open_image(im)
    arr = np.asarray(im)
    return Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def load_run(path: str | Path) -> Run:
    """Read a run directory written by ``gapvision train``."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise GapvisionError(f"{path} is not a gapvision run directory (no config.json): pass the folder `train` wrote")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise GapvisionError(f"{cfg_path} is not valid JSON ({e.msg} at line {e.lineno}); the run is damaged") from None
    version = int(config.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise GapvisionError(
            f"{path} was written by a newer gapvision (run format {version}, this one reads up to {FORMAT_VERSION}): "
            "upgrade gapvision (pip install -U gapvision)"
        )
    for key in ("classes", "preprocess", "model"):
        if key not in config:
            raise GapvisionError(f"{cfg_path} lacks the {key!r} entry; the run is damaged or not from gapvision")
    return Run(path, config)


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively, sorted) into image files; files are kept as given."""
    from .data.images import IMAGE_EXTENSIONS

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise GapvisionError(f"{p}: no such file or folder")
    return out
