"""The option schema: the user-facing option groups (DataOptions, ModelOptions here; TrainConfig in train/config.py)
and the CLI flags built from them.

A flag's name, type, default and choices come from its dataclass field (``--img-size`` is ``DataOptions.img_size``;
its ``(default ...)`` text is the field's default; its choices are the tuple the code validates against, from
choices.py or train/config.py); only the help sentence is written here. The parser passes None for every flag not
given, so the dataclass defaults are the only defaults. Torch-free: ``gapvision --help`` imports this, not torch.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from .choices import (AUGMENTS, CHANNELS, FREEZE, IN_MEMORY_MODES, INITS, NORMALIZE_MODES, STEMS, SWITCHES,
                      TTA_MODES)
from .errors import ConfigError
from .train.config import CACHE_FEATURES, OPTIMIZERS, RECIPES, SCHEDULES, TrainConfig

LOAD = {"load": True}  # metadata of the DataOptions fields that are keyword arguments of load_data / load_images


@dataclass
class DataOptions:
    """Where the images come from and how they are prepared (stored in config.json as ``data``)."""

    data: Any = "builtin:shapes"
    val_split: float = field(default=0.2, metadata=LOAD)
    image_root: str | None = field(default=None, metadata=LOAD)
    image_col: str | None = field(default=None, metadata=LOAD)
    label_col: str | None = field(default=None, metadata=LOAD)
    root: str | None = field(default=None, metadata=LOAD)
    download: bool = field(default=False, metadata=LOAD)
    skip_bad: bool = field(default=False, metadata=LOAD)
    allow_outside_root: bool = field(default=False, metadata=LOAD)
    channels: Any = "auto"
    img_size: int | None = None
    normalize: str = "auto"
    augment: str = "basic"
    in_memory: str = "auto"  # auto | on | off: decode every image once into memory, augment whole batches (memory.py)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not isinstance(d["data"], (str, Path)):
            d["data"] = "<arrays>"  # in-memory data from the Python API: pass it again to resume
        return d

    def load_kwargs(self) -> dict:
        return {k: getattr(self, k) for k in LOAD_OPTIONS}


@dataclass
class ModelOptions:
    """How the network is built; ``weights``/``freeze`` matter only when training starts."""

    model: str = "gapcnn"
    head: str = "gap"
    dropout: float = 0.0
    hidden: int = 256
    weights: str | None = None
    freeze: str = "none"
    init: str = "auto"
    stem: str = "auto"

    def __post_init__(self) -> None:
        if not 0 <= float(self.dropout) < 1:
            raise ConfigError(f"--dropout must be at least 0 and below 1 (got {self.dropout}); 0 turns it off")


GROUPS = (DataOptions, ModelOptions, TrainConfig)
LOAD_OPTIONS = tuple(f.name for f in fields(DataOptions) if f.metadata.get("load"))
POSITIONAL = ("data", "model", "head")  # given as --data/--model/--head but passed to train() by name
#: every option a training command takes (the fields of the three groups), in declaration order
OPTION_NAMES = tuple(f.name for g in GROUPS for f in fields(g) if f.name not in POSITIONAL)
#: the allowed values of each option that has a fixed set (the flags' choices; the dataclasses/consumers check them)
CHOICES: dict[str, tuple[str, ...]] = {
    "channels": CHANNELS, "normalize": NORMALIZE_MODES, "augment": AUGMENTS, "in_memory": IN_MEMORY_MODES,
    "freeze": FREEZE, "init": INITS, "stem": STEMS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "amp": SWITCHES,
    "channels_last": SWITCHES,
    "recipe": RECIPES, "tta": TTA_MODES, "cache_features": CACHE_FEATURES,
}
TYPES = {"int": int, "float": float, "int | None": int, "float | None": float}


def schema_field(name: str) -> Any:
    """The dataclass field behind option ``name``."""
    for g in GROUPS:
        for f in fields(g):
            if f.name == name:
                return f
    raise KeyError(name)


def add_option(group: Any, name: str, help: str = "", *, default_text: str | None = None, **kw: Any) -> None:
    """Add ``--name`` for the dataclass field ``name``: its type, choices and ``(default ...)`` from the schema."""
    f = schema_field(name)
    default = f.default if f.default is not MISSING else None
    flag = "--" + name.replace("_", "-")
    if f.type == "bool":
        kw.setdefault("action", "store_true")
    else:
        kw.setdefault("type", TYPES.get(str(f.type), str))
        if name in CHOICES:
            kw.setdefault("choices", list(CHOICES[name]))
    shown = default_text if default_text is not None else (None if default in (None, False) else str(default))
    text = f"{help} (default {shown})" if shown and help else (help or (f"default {shown}" if shown else None))
    group.add_argument(flag, dest=name, default=None, help=text, **kw)


# -- the option groups of the CLI (one definition each, reused by every command that needs them) --------------
#: the help sentence of each flag (a pair: help and how its default reads, where the field's value would mislead)
DATA_HELP: dict[str, str | tuple[str, str]] = {
    "val_split": "validation fraction when the data has no val/ split",
    "image_root": "folder that manifest paths are relative to",
    "image_col": ("manifest column with the image path", "the first"),
    "label_col": ("manifest column with the label", "the second"),
    "root": "torchvision datasets: the folder holding the data",
    "download": "torchvision datasets: download (needs internet)",
    "skip_bad": "skip unreadable images and report how many",
    "allow_outside_root": "let manifest paths point outside the manifest's folder",
}
PREPROCESS_HELP: dict[str, str | tuple[str, str]] = {
    "channels": "1 (grayscale), 3 (RGB) or auto (1 when every sampled image is grayscale)",
    "img_size": ("square input size", "from the data"),
    "normalize": "auto: train-split statistics; imagenet; half: mean 0.5 std 0.5; caffe: BGR 0-255",
    "augment": "train-time augmentation, the same streamed or in memory: basic = flip + translation by 1/16 of the "
               "side, strong = + 1/8 and cutout; per image, streaming only: jitter = flip, rotation, colour jitter, "
               "trivial = resized crop, flip, affine, TrivialAugment",
    "in_memory": "decode every image once into memory and augment whole batches (auto: when the decoded set fits in "
                 "a quarter of the free memory)",
}
MODEL_HELP: dict[str, str | tuple[str, str]] = {
    "dropout": "dropout before the classifier",
    "hidden": "hidden width of the fc head",
    "weights": "pretrained weights: FILE (.pth/.safetensors), a run directory, or torchvision:DEFAULT",
    "freeze": "freeze the backbone, or only BatchNorm statistics",
    "init": "starting weights without --weights, from a batch of training images: whiten = the first conv set to "
            "whitened patch components, residual = each residual branch's last normalisation scaled to 0, data = "
            "each conv rescaled by the mean and std of its ReLU output, auto = whiten, then residual for networks "
            "with normalisation layers and data for those without, default = the builder's",
    "stem": "the first layer of backbones that offer another one (ConvNeXt): pooled = the 4x4 patchify convolution "
            "made overlapping (stride 2) and followed by a 3x3 max pool, same output size, same weight shapes; auto "
            "= pooled from scratch, native (the builder's) with --weights FILE, the run's own with --weights RUN_DIR",
}
TRAIN_HELP: dict[str, str | tuple[str, str]] = {
    "epochs": "", "batch_size": "images per step; under torchrun the global batch, split evenly across the processes",
    "optimizer": "",
    "lr": "a number, LOW:HIGH (the backbone's and the head's, e.g. 1e-4:1e-3) or auto (the LR finder's suggestion)",
    "weight_decay": "", "momentum": "sgd (Nesterov) and rmsprop",
    "label_smoothing": "the share of each target spread evenly over all classes, in [0, 1) (0 = one-hot targets)",
    "schedule": "",
    "warmup_epochs": "epochs of linear learning-rate warm-up at the start (onecycle without it: a quarter of the run)",
    "step_epochs": "step schedule: decay every N epochs", "step_gamma": "",
    "clip_grad": "max gradient norm (0 = off)",
    "patience": "early stopping after N epochs without a better val accuracy (0 = off)",
    "seed": "random seed, recorded in the run",
    "deterministic": "deterministic algorithms: the same weights bit for bit on a rerun or resume (CPU), slower",
    "device": "auto, cpu, cuda, cuda:N",
    "amp": "mixed precision (auto: on for CUDA)", "channels_last": "channels-last memory format (auto: on for CUDA)",
    "workers": ("DataLoader worker processes", "auto"), "quiet": "no progress bars or per-epoch lines",
    "tensorboard": "write TensorBoard scalars to RUN_DIR/tensorboard (needs the tensorboard package)",
    "recipe": "a named recipe fills every option you do not set (fast: small images; fast90: the same with "
              "airbench94's network and multi-crop TTA, for accuracy; transfer: fine-tuning pretrained weights); "
              "auto: transfer when --weights is given, fast for images <= 64 px without --model, "
              "both only when no optimiser option is given; none: plain defaults",
    "ema": "evaluate and save a moving average of the weights (decay per step, e.g. 0.99; 0 = off)",
    "tta": "test-time augmentation wherever the run is evaluated or predicts (flip: average with the mirrored image; "
           "crops: flip, and the same on the image shifted by one pixel both ways, after airbench; the epochs of a "
           "crops run are validated with flip, its final evaluation with the crops)",
    "backbone_lr": ("the backbone's learning rate (discriminative lr)", "--lr"),
    "freeze_epochs": "first epochs with the backbone frozen, training the head only (transfer recipe: 1)",
    "freeze_lr": ("learning rate of the head-only epochs", "--lr"),
    "cache_features": "head-only epochs on feature maps computed once (auto) or by the frozen backbone every step",
}


def add_options(group: Any, helps: dict[str, str | tuple[str, str]]) -> None:
    """:func:`add_option` for every entry of ``helps``."""
    for name, text in helps.items():
        help_text, shown = text if isinstance(text, tuple) else (text, None)
        add_option(group, name, help_text, default_text=shown)


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, help="DIR (a folder per class), FILE.csv/.tsv, builtin:shapes, "
                   "builtin:digits or torchvision:NAME")
    add_options(g, DATA_HELP)


def add_preprocess_args(p: argparse.ArgumentParser) -> None:
    add_options(p.add_argument_group("preprocessing"), PREPROCESS_HELP)


def add_model_args(p: argparse.ArgumentParser, head: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="backbone name (gapcnn, cifarcnn, resnet20, resnet18, mobilenet_v2..., or timm:NAME; "
                   "see `gapvision summary --list`)")
    if head:
        g.add_argument("--head", help="gap, gmp, avgmax, catavgmax, fc or conv (default gap)")
    add_options(g, MODEL_HELP)


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_options(p.add_argument_group("training"), TRAIN_HELP)


def add_skip_bad_arg(p: argparse.ArgumentParser) -> None:
    """``--skip-bad`` (the data option) for the commands that run a model over image files: predict, localize."""
    add_option(p, "skip_bad", "go on past image files that do not decode: each gets a record {\"image\", \"error\"} "
               "(--json, --output) and one note says how many (default: stop at the first, naming it)")


def add_pretrained_args(p: argparse.ArgumentParser) -> None:
    """Options that build a predictor from a backbone + weights + labels instead of a run directory."""
    g = p.add_argument_group("pretrained model instead of a run")
    g.add_argument("--model", help="backbone name, e.g. mobilenet_v2")
    g.add_argument("--head", help="head kind (default: the backbone's own, e.g. gap; conv for squeezenet)")
    g.add_argument("--weights", help="weights file for --model")
    g.add_argument("--labels", help="class names: ImageNet JSON index or a text file with one label per line")
    g.add_argument("--normalize", choices=[m for m in NORMALIZE_MODES if m != "auto"], help="preprocessing of --weights")
    g.add_argument("--img-size", type=int, help="input size for --model (default 224)")
    g.add_argument("--crop", type=float, help="central fraction kept before resizing, for --model (default 0.875)")


def collect(args: argparse.Namespace, names: Sequence[str] = OPTION_NAMES) -> dict[str, Any]:
    """The options the user actually gave (None = not given, so API defaults apply)."""
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def load_opts(args: argparse.Namespace) -> dict[str, Any]:
    """The data-loading options the user gave (the keyword arguments of load_data / load_images)."""
    return collect(args, LOAD_OPTIONS)
