"""Optimisers and learning-rate schedules (a schedule is a pure function of the step, so resuming is exact)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on biases and normalisation parameters (1-D tensors)."""
    params = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, alpha=0.9, eps=1e-3)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimisation ``step`` (0-based)."""
    total = max(1, cfg.epochs * steps_per_epoch)
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


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
