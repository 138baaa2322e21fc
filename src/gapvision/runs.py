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

import contextlib
import csv
import io
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from . import atomic
from .data.images import to_pil  # noqa: F401 - re-exported: callers open images through runs.to_pil too
from .data.transforms import Preprocess
from .devices import choose_device
from .errors import ConfigError, GapvisionError
from .models.classifier import Classifier, ModelConfig, create_model
from .predictor import Predictor, image_name, inference_options  # noqa: F401 - image_name re-exported
from .runformat import FORMAT_VERSION, HISTORY_COLUMNS, WEIGHTS, read_config  # noqa: F401 - FORMAT_VERSION re-exported


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
            atomic.make_folder(self.path)
            atomic.remove_stale_temporaries(self.path)  # left by a writer that was killed mid-write

    @contextlib.contextmanager
    def _resumable(self) -> Iterator[None]:
        """A failed write says how training goes on when the run has a checkpoint to resume from."""
        try:
            yield
        except GapvisionError as e:
            if not (self.path / "checkpoint.pt").exists():
                raise
            raise GapvisionError(f"{e} (training continues from its last saved epoch with --resume {self.path})") \
                from None

    def json(self, name: str, obj: Any) -> None:
        if self.enabled:
            with self._resumable():
                atomic.write_json(self.path / name, obj)

    def history(self, rows: list[dict]) -> None:
        if not self.enabled:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(HISTORY_COLUMNS), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        with self._resumable():
            atomic.write_text(self.path / "history.csv", buf.getvalue())

    def model(self, net: torch.nn.Module, name: str = "model.safetensors") -> None:
        if self.enabled:
            with self._resumable():
                save_weights(net, self.path / name)

    def checkpoint(self, state: dict) -> None:
        if self.enabled:
            buf = io.BytesIO()  # serialise first: a full disk then fails in one plain OSError, never half-way in C++
            torch.save(state, buf)
            with self._resumable():
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
        reason = next(iter(str(e).splitlines()), "") or type(e).__name__
        raise GapvisionError(f"cannot load checkpoint {path} ({reason}): it is damaged, so the run cannot resume; its "
                             "best weights (model.safetensors) still predict, and `gapvision train --weights RUN_DIR` "
                             "starts a new run from them") from None


class Run:
    """A trained model with its classes and preprocessing; usually read from a run directory by :func:`load_run`.

    ``run.predictor`` is the run's one :class:`~gapvision.predictor.Predictor` (its device, TTA, AMP and batch size
    from config.json); every command that runs the model goes through it.
    """

    def __init__(self, path: Path | None, config: dict, model: Classifier | None = None):
        self.path = path
        self.config = config
        where = f"{path / 'config.json'}" if path is not None else "the run's config"
        try:
            self.classes: list[str] = [str(c) for c in config["classes"]]
            self.preprocess = Preprocess.from_dict(config["preprocess"])
            self.model_config = ModelConfig.from_dict(config["model"])
            sizes = (self.preprocess.channels, self.preprocess.img_size, self.model_config.num_classes)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
                raise ValueError(f"channels, img_size and num_classes must be positive integers, got {sizes}")
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise GapvisionError(f"{where} is damaged ({type(e).__name__}: {e}): restore it or train again") from None
        if path is not None and len(self.classes) != self.model_config.num_classes:  # a run directory's config
            raise GapvisionError(f"{where} lists {len(self.classes)} classes but its model has "
                                 f"{self.model_config.num_classes} outputs: the run is damaged; restore config.json")
        self._model = model
        self._predictor: Predictor | None = None

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

    def split_options(self) -> dict[str, Any]:
        """How this run split its data (``val_split``, ``seed`` and any ``max_images`` from config.json): with
        :func:`gapvision.data.sources.load_split` they give back its own train and validation images."""
        data = self.config.get("data") if isinstance(self.config.get("data"), dict) else {}
        options = {"val_split": float(data.get("val_split", 0.2)), "seed": int(self.config.get("seed", 0))}
        if self.config.get("max_images"):  # compare --max-images: the capped sample it trained and validated on
            options["max_images"] = int(self.config["max_images"])
        return options

    @property
    def model(self) -> Classifier:
        """The trained Classifier in eval mode (built and loaded on first use; it lives where the predictor put it)."""
        if self._model is None:
            try:
                net = create_model(**{k: v for k, v in self.model_config.to_dict().items()})
            except ConfigError as e:  # e.g. an unknown model name: the settings came from the run's config.json
                if self.path is None:
                    raise
                raise ConfigError(f"{self.path / 'config.json'}: {e}") from None
            weights = self.path / WEIGHTS if self.path else None
            if weights is None or not weights.exists():
                why = ("it was removed after training: restore it, or train again"
                       if (self.path / "checkpoint.pt").exists() else "training did not finish an epoch")
                raise GapvisionError(f"{self.path} has no model.safetensors ({why})")
            load_run_weights(net, weights)
            self._model = net.eval()
        return self._model

    @property
    def predictor(self) -> Predictor:
        """The run's Predictor (built on first use, on ``--device auto``)."""
        return self._predictor or self.use_device("auto")

    def use_device(self, device: str | torch.device | None) -> Predictor:
        """The run's Predictor on ``device`` (None: keep the current one); the model moves there with it."""
        if device is None and self._predictor is not None:
            return self._predictor
        if self._predictor is None or self._predictor.device != choose_device(device):
            self._predictor = Predictor(self.model, self.preprocess, self.classes, device=device,
                                        **inference_options(self.config.get("train")))
        return self._predictor

    @property
    def history(self) -> list[dict]:
        p = self.path / "history.csv" if self.path else None
        if p is None or not p.exists():
            return []
        try:
            with open(p, newline="") as f:
                return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                        for row in csv.DictReader(f)]
        except (ValueError, TypeError, csv.Error) as e:
            raise GapvisionError(f"{p} is damaged ({e}): remove it to go on without the curves") from None

    @property
    def metrics(self) -> dict:
        p = self.path / "metrics.json" if self.path else None
        if p is None or not p.exists():
            return {}
        try:
            metrics = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise GapvisionError(f"{p} is not valid JSON ({e.msg} at line {e.lineno}): remove it, or run "
                                 "`gapvision evaluate` for fresh figures") from None
        if not isinstance(metrics, dict):
            raise GapvisionError(f"{p} holds a JSON {type(metrics).__name__}, not the run's metrics: remove it")
        return metrics

    def device(self) -> torch.device:
        return self.predictor.device

    def predict_logits(self, images: Sequence[Any], batch_size: int | None = None) -> torch.Tensor:
        """Logits (CPU) for a list of images (paths, PIL images or uint8 arrays), each resized to the training size."""
        return self.predictor.logits(images, batch_size=batch_size)

    def predict(self, images: Sequence[Any] | Any, topk: int = 3, batch_size: int | None = None,
                skip_bad: bool = False) -> list[dict]:
        """``[{"image": name, "top": [{"label": ..., "prob": ...}, ...]}, ...]`` for each image (``skip_bad``: an
        undecodable image file gets ``{"image": name, "error": why}`` instead of stopping the batch)."""
        return self.predictor.predict(images, topk=topk, batch_size=batch_size, skip_bad=skip_bad)


def load_run(path: str | Path) -> Run:
    """Read a run directory written by ``gapvision train``."""
    if not isinstance(path, (str, os.PathLike)):
        raise GapvisionError(f"load_run takes the path of a run directory (got {type(path).__name__} {path!r})")
    path = Path(path)
    return Run(path, read_config(path))


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files of ``paths``: folders walked by the one walker's rules (data/files.py), files kept as given."""
    from .data.files import expand_inputs
    from .data.images import IMAGE_EXTENSIONS

    return expand_inputs(paths, IMAGE_EXTENSIONS)
