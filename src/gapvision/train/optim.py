"""Optimisers and learning-rate schedules (a schedule is a pure function of the step, so resuming is exact).

Parameters fall into groups by part (``backbone``/``head``, each with its own base lr: discriminative learning rates)
and by weight decay (none on biases, normalisation parameters and per-channel scales such as ConvNeXt's layer
scale: tensors with at most one dimension larger than 1). With ``freeze_epochs`` training has two phases,
the head alone and then everything; each phase has its own optimiser and its own run of the schedule.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

HEAD_PHASE, FULL_PHASE = "head", "all"


def param_groups(net: nn.Module, cfg: TrainConfig, phase: str = FULL_PHASE) -> list[dict]:
    """Trainable parameters as optimiser groups carrying their ``base_lr`` (the schedule scales it)."""
    net = getattr(net, "module", net)
    parts = [("backbone", net.backbone), ("head", net.head)] if hasattr(net, "backbone") and hasattr(net, "head") \
        else [("head", net)]
    seen: set[int] = set()
    groups = []
    for part, module in parts:
        params = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        lr = cfg.lr_of("freeze" if phase == HEAD_PHASE else part)
        for decay in (True, False):
            chosen = [p for p in params if decays(p) == decay]
            if chosen:
                groups.append({"params": chosen, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": lr,
                               "base_lr": lr, "part": part})
    return groups


def decays(p: torch.Tensor) -> bool:
    """Whether weight decay applies to ``p``: a weight matrix or kernel (at least two dimensions larger than 1), not a
    bias, normalisation parameter or per-channel scale (torchvision's C x 1 x 1 ConvNeXt layer scale included)."""
    return sum(n > 1 for n in p.shape) > 1


def build_optimizer(net: nn.Module, cfg: TrainConfig, phase: str = FULL_PHASE) -> torch.optim.Optimizer:
    """The optimiser of ``phase`` over the parameters that train in it; weight decay only where :func:`decays`."""
    groups = param_groups(net, cfg, phase)
    if not groups:  # everything frozen: an optimiser with nothing to do keeps the loop uniform
        groups = [{"params": [], "lr": cfg.lr, "base_lr": cfg.lr, "part": "none"}]
    lr = groups[0]["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=cfg.momentum, alpha=0.9, eps=1e-3)
    return torch.optim.AdamW(groups, lr=lr)


def phase_of(cfg: TrainConfig, epoch: int) -> str:
    """``head`` during the first ``freeze_epochs`` epochs, ``all`` afterwards."""
    return HEAD_PHASE if epoch < cfg.freeze_epochs else FULL_PHASE


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimisation ``step`` (0-based); each phase runs its own schedule."""
    head_epochs = min(cfg.freeze_epochs, cfg.epochs)
    epochs = cfg.epochs
    if head_epochs:
        if step < head_epochs * steps_per_epoch:
            epochs = head_epochs
        else:
            step -= head_epochs * steps_per_epoch
            epochs = cfg.epochs - head_epochs
    total = max(1, epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        warm = warm or int(0.25 * total)
    if warm and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "none":
        return 1.0
    if cfg.schedule == "step":
        return cfg.step_gamma ** (step // max(1, cfg.step_epochs * steps_per_epoch))
    progress = min(1.0, (step - warm) / max(1, total - warm))
    if cfg.schedule == "onecycle":  # linear decay to zero after the warm-up ramp
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def set_lr(opt: torch.optim.Optimizer, factor: float) -> None:
    """Every group's lr = its ``base_lr`` x ``factor``."""
    for g in opt.param_groups:
        g["lr"] = g.get("base_lr", g["lr"]) * factor
