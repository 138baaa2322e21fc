"""Predictors: a run directory, or a pretrained backbone + weights + labels (ImageNet models) wrapped as a Run."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from .data.transforms import Preprocess, preset_stats
from .errors import ConfigError, GapvisionError
from .runs import Run, load_run


def read_labels(path: str | Path) -> list[str]:
    """Class names from a Keras-style ImageNet JSON index ({"0": ["n01440764", "tench"], ...}), a JSON list, or a
    text file with one label per line."""
    p = Path(path)
    if not p.exists():
        raise GapvisionError(f"--labels {p}: no such file")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise GapvisionError(f"--labels {p}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(obj, list):
            return [str(x) for x in obj]
        if isinstance(obj, dict):
            items = sorted(obj.items(), key=lambda kv: int(kv[0]))
            return [v[-1] if isinstance(v, list) else str(v) for _, v in items]
        raise GapvisionError(f"--labels {p}: expected a list or an index object")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def pretrained_run(model: str, weights: str | None, labels: str | None, normalize: str | None = None,
                   img_size: int | None = None, head: str | None = None, crop: float | None = None) -> Run:
    """A Run (no directory) around a pretrained backbone whose own classifier is loaded as the head.

    Unset ``normalize``/``img_size``/``crop``: a timm model's pretrained config, else imagenet, 224 (caffe: 227), 0.875.
    """
    from .models import create_backbone, create_model
    from .models.timm_backbone import pretrained_preprocess

    if not labels:
        raise ConfigError("--model needs --labels (an ImageNet JSON index or a text file with one label per line)")
    classes = read_labels(labels)
    head = head or getattr(create_backbone(model), "default_head", "gap")
    mean, std, bgr = preset_stats(normalize or "imagenet", 3)
    pre = Preprocess(channels=3, img_size=int(img_size or (227 if normalize == "caffe" else 224)), mean=mean, std=std,
                     bgr=bgr, crop=0.875 if crop is None else crop)
    pre = pretrained_preprocess(pre, model, {"img_size": img_size, "normalize": normalize}, crop=crop is None)
    net = create_model(model, head, len(classes), in_channels=3, img_size=pre.img_size, weights=weights).eval()
    config = {"classes": classes, "preprocess": pre.to_dict(), "model": net.config.to_dict(),  # type: ignore[union-attr]
              "model_options": {"weights": weights}}
    return Run(None, config, model=net)


def open_predictor(run_dir: str | None, *, model: str | None = None, weights: str | None = None,
                   labels: str | None = None, normalize: str | None = None, img_size: int | None = None,
                   head: str | None = None, crop: float | None = None) -> Run:
    """A run directory, or ``--model/--weights/--labels/--normalize`` for a pretrained network."""
    if model:
        return pretrained_run(model, weights, labels, normalize, img_size, head, crop)
    if not run_dir:
        raise GapvisionError("give a RUN_DIR, or --model with --weights and --labels")
    return load_run(run_dir)


def display_width(text: str) -> int:
    """Terminal columns of ``text``: East Asian wide and full-width characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _fit(name: str, width: int) -> str:
    """``name`` padded to ``width`` columns, or cut at the front to ``...`` + its end."""
    if display_width(name) > width:
        while display_width(name) > width - 3:
            name = name[1:]
        name = "..." + name
    return name + " " * (width - display_width(name))


def format_table(results: list[dict]) -> str:
    """A plain table: one line per image with its top classes and probabilities (names aligned in columns, wide
    characters counted as two)."""
    width = min(max((display_width(str(r["image"])) for r in results), default=5), 60)
    lines = []
    for r in results:
        tops = "  ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"])
        lines.append(f"{_fit(str(r['image']), width)}  {tops}")
    return "\n".join(lines)
