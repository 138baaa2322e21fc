"""Training recipes: a named set of option values, written as one readable dict (in the manner of airbench's ``hyp``).

``--recipe fast`` fills every option the user did not set from :data:`FAST`, ``--recipe transfer`` from
:data:`TRANSFER`; ``--recipe auto`` (the default) picks transfer when pretrained weights are given and fast for small
images (<= :data:`AUTO_MAX_SIZE` px) when the user named no model, in both cases only when the user set none of the
optimisation hyperparameters (:data:`HYPERPARAMETERS`); ``--recipe none`` leaves the plain defaults. Options the user gives always
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
    # the builder's start: the whitened first conv of --init auto is ahead after epochs 1-3 but not at the end on
    # CIFAR-10 (0.8562 against 0.8605 after 10 epochs: bench/cifar_time_to_acc.py with --set init=whiten, one seed;
    # bench/results/cifar_time_to_acc-20261204-1848-init-*.json)
    "init": "default",
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
# Fine-tuning pretrained weights, after fastai's ``fine_tune`` and the Keras transfer-learning guide: one epoch of the
# new head alone (backbone frozen, on cached feature maps), then the whole network with discriminative learning rates
# (the backbone at a tenth of the head's), a one-cycle schedule in each phase, and BatchNorm statistics kept fixed.
# The input size and normalisation come from the weights (the backbone's native size and ``tv_normalize``) unless
# set. Measured on ../shared/data/boxes-dev: bench/transfer_time_to_acc.py.
TRANSFER: dict[str, Any] = {
    "head": "gap",
    "freeze": "bn",  # BatchNorm statistics fixed (mandatory for weights whose BatchNorm is folded)
    "freeze_epochs": 1,  # head only, backbone frozen: trained on cached feature maps
    "freeze_lr": 2e-3,  # the head-only phase's lr (fastai's base_lr)
    "epochs": 3,  # in all, the head-only epochs included
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 1e-3,  # the head's lr once the backbone is unfrozen
    "backbone_lr": 1e-4,  # the backbone's (discriminative lr: --lr LOW:HIGH sets both)
    "weight_decay": 0.01,
    "schedule": "onecycle",
    "warmup_epochs": 0.0,  # one-cycle's own quarter of each phase
    "label_smoothing": 0.1,
    "augment": "basic",
    "in_memory": "auto",
    "ema": 0.0,
    "tta": "off",
    # channels-last: the boxes-dev transfer run trains in 12.8 s against 13.7 s in NCHW, the same accuracies (MobileNetV2
    # runs fp32 here, and channels-last trains it 1.8x faster: bench/precision_speed.py); bf16 stays off (it is slower
    # for grouped convolutions and risks the pretrained features)
    "channels_last": "on",
}
# The fast recipe for a higher accuracy (>= 90 % on the shared JPEG CIFAR-10 copy in 10 minutes on 2 cores): the
# airbench94 network (frozen patch-whitening stem, blocks of 64/256/256) and multi-crop test-time augmentation.
# Batch 256 at lr 0.2 (the same lr per image): 89.7 % in 511 s against 89.5 % in 564 s at 512 / 0.4 (bench/results/
# cifar_time_to_acc-20261202-1249-fast90-bs256.json and -1209-fast90.json, one seed each).
# 11 epochs: 90.1 % in 568 s (cifar_time_to_acc-20261202-1300-fast90-11ep.json).
FAST90: dict[str, Any] = {**FAST, "model": "fastnet_w", "epochs": 11, "tta": "crops", "batch_size": 256, "lr": 0.2}
RECIPES = {"fast": FAST, "fast90": FAST90, "transfer": TRANSFER}
SGD_RECIPES = ("fast", "fast90")  # lr linear in the batch size, enough steps on small sets
AUTO_MAX_SIZE = 64
HYPERPARAMETERS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs", "label_smoothing",
                   "backbone_lr", "freeze_lr")
MIN_STEPS = 300  # small data sets: enough epochs for at least this many optimisation steps (fast recipe)
#: the plain defaults on a small set: a batch that gives about PLAIN_STEPS_PER_EPOCH steps an epoch (builtin:shapes'
#: 1600 images: 16) and the epochs for PLAIN_STEPS steps in all: gapcnn (Dropout2d, data-dependent start) reaches 0.885
#: validation accuracy on builtin:shapes at 64 px after 400 steps of 16 and 0.993 after 500 (bench/no_bn_defaults.py)
PLAIN_STEPS_PER_EPOCH = 100
PLAIN_STEPS = 600
PLAIN_MAX_EPOCHS = 40
#: a network without normalisation layers and more spatial (larger than 1 x 1) convolutions than this trains at
#: PLAIN_DEEP_NO_NORM_LR: builtin:shapes, 2 epochs, whitened + data-dependent start, validation accuracy VGG-19 0.25
#: at the usual 1e-3 and 0.65 at 3e-4, VGG-16 0.78 and 0.82 (bench/backbones.py beside --lr 3e-4:
#: bench/results/backbones-20261204-1858.json, -1927-lr0.0003.json); gapcnn (6 convs) 0.93 at 1e-3 but 0.70 at
#: 3e-4, and the SqueezeNets (9 spatial convs among their 1 x 1 ones) 0.395 / 0.360 at 1e-3 but 0.378 / 0.250 at
#: 3e-4 (-2037-lr0.0003.json)
PLAIN_DEEP_NO_NORM_CONVS = 10
PLAIN_DEEP_NO_NORM_LR = 3e-4
#: a network with grouped (depthwise) convolutions and normalisation layers trains at PLAIN_GROUPED_LR: builtin:shapes,
#: whitened start, validation accuracy after 2 epochs at 1e-3 / 3e-3 (bench/backbones.py beside --lr 3e-3:
#: bench/results/backbones-20261204-1858.json, -2030-lr0.003.json): MobileNetV2 0.398 / 0.502, EfficientNet-B0
#: 0.472 / 0.555, MNASNet 0.485 / 0.657, RegNetY-400MF 0.370 / 0.472, ShuffleNetV2 0.385 / 0.412, but MobileNetV3-small
#: 0.422 / 0.378 and -large 0.552 / 0.497; MobileNetV2 after the default 6 epochs 0.708 / 0.973
PLAIN_GROUPED_LR = 3e-3
#: ... unless none of its residual branches ends in a normalisation layer (``grouped_no_residual``: nothing that
#: models/residual_init.py can start as the identity; ShuffleNetV2's concatenations): its backbone then trains at
#: PLAIN_GROUPED_NO_RESIDUAL_LR and its head at PLAIN_GROUPED_NO_RESIDUAL_HEAD_LR (``--lr 1e-2:3e-4``).
#: builtin:shapes, 2 epochs, whitened start, ShuffleNetV2 validation accuracy at seeds 0 / 1 / 2: 0.427 / 0.417 /
#: 0.435 at 3e-3, 0.593 / 0.575 / 0.585 at 1e-2:3e-4 (0.545 at 1e-2:1e-3, 0.463 at 1e-2:3e-3, 0.372 at 1e-2, 0.415 at
#: 3e-3:3e-4, 0.448 at 6e-3:3e-4, 0.482 at 2e-2:3e-4 with seed 0). ConvNeXt (LayerNorm, not BatchNorm: no grouped
#: rule) trains at the default 1e-3, see plain_values
PLAIN_GROUPED_NO_RESIDUAL_LR = 1e-2
PLAIN_GROUPED_NO_RESIDUAL_HEAD_LR = 3e-4

def choose_recipe(options: dict[str, Any], img_size: int) -> str:
    """The recipe that applies to ``options`` (the user's, None for unset) at ``img_size``: transfer, fast or none.

    auto: ``transfer`` when pretrained ``weights`` are given, ``fast`` for images <= AUTO_MAX_SIZE px without a
    ``model``; in both cases only when no optimisation hyperparameter is set. Otherwise ``none``.
    """
    name = options.get("recipe") or "auto"
    if name == "auto":
        if any(options.get(k) is not None and options.get(k) != "auto" for k in HYPERPARAMETERS):  # --lr auto: not set
            return "none"
        if options.get("weights"):
            return "transfer"
        return "fast" if img_size <= AUTO_MAX_SIZE and options.get("model") is None else "none"
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
    if name in SGD_RECIPES:  # SGD: the lr follows the batch linearly, and small sets get enough steps
        values["lr"] = values["lr"] * bs / values["batch_size"]
        values["epochs"] = max(values["epochs"], math.ceil(MIN_STEPS / max(1, math.ceil(n_train / bs))))
    values["batch_size"] = bs
    if values.get("amp") == "native":
        values["amp"] = "on" if native_bf16(device) else "off"
    return values


def apply_recipe(options: dict[str, Any], *, img_size: int, n_train: int, base: dict[str, Any] | None = None,
                 bf16: bool = False, deep_no_norm: bool = False, grouped_norm: bool = False,
                 grouped_no_residual: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` (the user's; None = unset) completed by the recipe that applies, and a note for config.json:
    ``{"name": ..., "from_recipe": [option names filled by the recipe]}``; without a recipe the plain defaults that
    depend on the data (:func:`plain_values`, listed as ``from_defaults``). ``base``: TrainConfig's defaults
    (batch_size, epochs); ``bf16``: whether bf16 autocast is fast for this network here, ``deep_no_norm``: whether
    it is deep and has no normalisation layers, ``grouped_norm``: it has grouped convolutions and normalisation
    layers, ``grouped_no_residual``: and no residual branch that ends in a normalisation layer (plain defaults
    only)."""
    name = choose_recipe(options, img_size)
    given = {k: v for k, v in options.items() if v is not None}
    if name == "none":
        base = base or {}
        defaults = plain_values(n_train, base.get("batch_size", 64), base.get("epochs", 10), given, bf16,
                                deep_no_norm, grouped_norm, grouped_no_residual)
        return {**defaults, **given, "recipe": "none"}, {"name": "none", "from_recipe": [],
                                                         "from_defaults": sorted(defaults)}
    values = recipe_values(name, n_train, str(given.get("device", "auto")), given.get("batch_size"))
    filled = {k: v for k, v in values.items() if k not in given}
    return {**filled, **given, "recipe": name}, {"name": name, "from_recipe": sorted(filled)}


def plain_values(n_train: int, base_batch: int = 64, base_epochs: int = 10, given: dict[str, Any] | None = None,
                 bf16: bool = False, deep_no_norm: bool = False, grouped_norm: bool = False,
                 grouped_no_residual: bool = False) -> dict[str, Any]:
    """The plain defaults that follow from the data and the network (TrainConfig's own, ``base_batch`` and
    ``base_epochs``, are for mid-sized data):

    * a small training set gets a smaller batch (the power of two nearest n_train / PLAIN_STEPS_PER_EPOCH, 16 to
      ``base_batch``) and the epochs for PLAIN_STEPS optimisation steps (at most PLAIN_MAX_EPOCHS);
    * channels-last memory, and bf16 autocast where it is fast (``bf16``: the hardware runs bf16 natively and the
      network has no grouped convolutions, which oneDNN runs slower in bf16: bench/precision_speed.py).

    * a deep network without normalisation layers (``deep_no_norm``: more than PLAIN_DEEP_NO_NORM_CONVS
      spatial convolutions, VGG-16/19) the lower PLAIN_DEEP_NO_NORM_LR; a shallower one trains with the same
      optimiser as the others once its start is data-dependent (models/data_init.py);
    * a network with grouped convolutions and BatchNorm layers (``grouped_norm``: MobileNets, EfficientNet,
      MNASNet, ShuffleNet, RegNet) the higher PLAIN_GROUPED_LR; if none of its residual branches ends in a
      normalisation layer (``grouped_no_residual``: ShuffleNetV2) the backbone PLAIN_GROUPED_NO_RESIDUAL_LR
      and the head PLAIN_GROUPED_NO_RESIDUAL_HEAD_LR (neither when the user set ``lr`` or ``backbone_lr``).
      ConvNeXt (LayerNorm) keeps the default 1e-3: with its pooled stem 0.635 after 2 epochs against 0.335 at
      3e-3 and 0.300 at 1e-2:3e-4 (builtin:shapes, 64 px, seed 0).

    Only what the user did not set (``given``) is returned."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    values: dict[str, Any] = {"channels_last": "on"}
    bs = int(min(base_batch, max(16, 2 ** round(math.log2(max(1, n_train) / PLAIN_STEPS_PER_EPOCH)))))
    if bs != base_batch:  # a small set: the batch and the epochs for PLAIN_STEPS steps
        values["batch_size"] = bs
        values["epochs"] = min(PLAIN_MAX_EPOCHS, math.ceil(PLAIN_STEPS / max(1, math.ceil(n_train / bs))))
    if bf16:
        values["amp"] = "on"
    if deep_no_norm:
        values["lr"] = PLAIN_DEEP_NO_NORM_LR
    elif grouped_norm and grouped_no_residual and not {"lr", "backbone_lr"} & given.keys():
        values["lr"], values["backbone_lr"] = PLAIN_GROUPED_NO_RESIDUAL_HEAD_LR, PLAIN_GROUPED_NO_RESIDUAL_LR
    elif grouped_norm:
        values["lr"] = PLAIN_GROUPED_LR
    return {k: v for k, v in values.items() if k not in given}


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
