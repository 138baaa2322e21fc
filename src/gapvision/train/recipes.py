"""Training recipes: a named set of option values, written as one readable dict (in the manner of airbench's ``hyp``).

``--recipe fast`` fills every option the user did not set from :data:`FAST`; ``--recipe auto`` (the default) does so
only for small images (<= :data:`AUTO_MAX_SIZE` px) when the user named no model and set none of the optimisation
hyperparameters (:data:`HYPERPARAMETERS`); ``--recipe none`` leaves the plain defaults. Options the user gives always
win. The resolved values are what config.json records (``train``, ``model``, ``data``), and ``config["recipe"]`` says
which ones came from the recipe.

The fast recipe applies, in our own code, what the CIFAR-10 speed records (Page's ResNet-9/DAWNBench, hlb-CIFAR10,
airbench, FFCV) found: a small BatchNorm conv net with a global-pooling head, Nesterov SGD with a short linear warm-up
and a linear decay, label smoothing, an exponential moving average of the weights, alternating flip + 2 px translation
done on whole batches in memory, flip test-time augmentation, bf16 autocast and channels-last where the hardware has
them. What was measured here (on the shared JPEG CIFAR-10 copy) and what was taken as published:
bench/results/recipe_log.md.
"""
from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

FAST: dict[str, Any] = {
    # network: see models/fastnet.py
    "model": "fastnet_s",  # 21 s an epoch on 2 cores; fastnet (wider) gains ~5 points at 4x the time
    "head": "gap",
    # data: decoded once into memory, augmented per batch (alternating flip + translate by img_size/16 px)
    "in_memory": "auto",
    "augment": "basic",
    # optimisation, for a batch of 512 images (lr scales linearly with the batch size)
    "batch_size": 512,
    "epochs": 10,
    "optimizer": "sgd",  # Nesterov momentum
    "lr": 0.4,
    "momentum": 0.9,
    "weight_decay": 5e-4,  # not on biases and BatchNorm parameters
    "schedule": "onecycle",  # linear warm-up, then linear decay to zero
    "warmup_epochs": 1.0,
    "label_smoothing": 0.2,
    "ema": 0.99,  # weight average, evaluated and saved
    # evaluation
    "tta": "flip",
    # arithmetic: bf16 autocast where the CPU (AVX512-BF16/AMX) or GPU runs it natively, channels-last memory
    "amp": "native",
    "channels_last": "on",
}
RECIPES = {"fast": FAST}
AUTO_MAX_SIZE = 64
HYPERPARAMETERS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs", "label_smoothing")
MIN_STEPS = 300  # small data sets: enough epochs for at least this many optimisation steps


def choose_recipe(options: dict[str, Any], img_size: int) -> str:
    """The recipe that applies to ``options`` (the user's, None for unset) at ``img_size``: fast or none."""
    name = options.get("recipe") or "auto"
    if name == "auto":
        given = [k for k in HYPERPARAMETERS if options.get(k) is not None]
        return "fast" if img_size <= AUTO_MAX_SIZE and options.get("model") is None and not given else "none"
    if name != "none" and name not in RECIPES:
        raise ConfigError(f"unknown --recipe {name!r}: choose auto, none, {', '.join(RECIPES)}")
    return name


def recipe_values(name: str, n_train: int, device: str = "auto", batch_size: int | None = None) -> dict[str, Any]:
    """The option values of recipe ``name`` for ``n_train`` training images on ``device``.

    The batch (512 for CIFAR-size data; ``batch_size`` if the user set it) shrinks for small data sets to the power of
    two nearest n_train / 16 (at least 16); the learning rate follows it linearly, and the epochs grow so that training
    takes at least MIN_STEPS steps.
    """
    values = dict(RECIPES[name])
    bs = batch_size or values["batch_size"]
    if batch_size is None and n_train < 16 * bs:
        bs = max(16, 2 ** round(math.log2(max(1, n_train) / 16)))
    values["lr"] = values["lr"] * bs / values["batch_size"]
    values["batch_size"] = bs
    values["epochs"] = max(values["epochs"], math.ceil(MIN_STEPS / max(1, math.ceil(n_train / bs))))
    if values.get("amp") == "native":
        values["amp"] = "on" if native_bf16(device) else "off"
    return values


def apply_recipe(options: dict[str, Any], *, img_size: int, n_train: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` (the user's; None = unset) completed by the recipe that applies, and a note for config.json:
    ``{"name": ..., "from_recipe": [option names filled by the recipe]}``."""
    name = choose_recipe(options, img_size)
    given = {k: v for k, v in options.items() if v is not None}
    if name == "none":
        return {**given, "recipe": "none"}, {"name": "none", "from_recipe": []}
    values = recipe_values(name, n_train, str(given.get("device", "auto")), given.get("batch_size"))
    filled = {k: v for k, v in values.items() if k not in given}
    return {**filled, **given, "recipe": name}, {"name": name, "from_recipe": sorted(filled)}


def native_bf16(device: str = "auto") -> bool:
    """Whether bf16 autocast is fast here: a CUDA GPU with bf16, or a CPU with AVX512-BF16 / AMX (oneDNN)."""
    import torch  # here, so that config.py can read the recipe names without importing torch

    from ..devices import uses_cuda

    if uses_cuda(device):
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
