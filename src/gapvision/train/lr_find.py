"""The learning-rate range test (Smith 2015; fastai's ``lr_find``): train a copy of the network for a short sweep of
exponentially growing learning rates, record the smoothed loss, and suggest the lr where the loss falls fastest for
longest (fastai's "valley" rule). The network, the data and the random state are left as they were.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loaders import Batches
from ..errors import ConfigError, GapvisionError
from ..models.classifier import apply_freeze_mode, set_freeze
from .config import TrainConfig
from .optim import HEAD_PHASE, build_optimizer, phase_of, set_lr

START_LR, END_LR, STEPS = 1e-7, 10.0, 100
SMOOTHING = 0.98  # exponential moving average of the loss (debiased), as in fastai
STOP_FACTOR = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
MIN_STEPS = 3  # the fewest points the valley rule can read a suggestion from


@dataclass
class LRFindResult:
    """The sweep (``lrs`` and smoothed ``losses``), the ``suggestion`` and where the plot went."""

    lrs: list[float]
    losses: list[float]
    suggestion: float
    phase: str = "all"  # which parameters were swept: ``head`` (backbone frozen) or ``all``
    plot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"suggestion": self.suggestion, "phase": self.phase, "steps": len(self.lrs),
                "lr_range": [self.lrs[0], self.lrs[-1]] if self.lrs else [], "plot": self.plot}


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's "valley" suggestion: the longest stretch over which the loss keeps decreasing, and an lr two thirds
    of the way down it (where it is steep but still well away from the blow-up)."""
    n = len(losses)
    if n < MIN_STEPS:
        raise GapvisionError(f"the LR sweep stopped after fewer than {MIN_STEPS} steps: the loss blew up at once; "
                             "lower the start of the sweep or check the data")
    run = [1] * n  # length of the longest decreasing subsequence ending at i
    best_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[best_end]:
            best_end = i
    start = best_end - run[best_end]
    third = (best_end - start) / 3
    return float(lrs[max(0, min(n - 1, start + int(third) + int(third / 2)))])


def check_sweep(start_lr: float, end_lr: float, steps: int) -> None:
    """Raise ConfigError, before any data is loaded, for a sweep that cannot give a suggestion."""
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"the LR sweep needs 0 < --start-lr < --end-lr (got {start_lr:g} and {end_lr:g})")
    if steps < MIN_STEPS:
        raise ConfigError(f"--steps must be at least {MIN_STEPS} (got {steps}); the default is {STEPS}")


def sweep(net: nn.Module, batches: Batches, cfg: TrainConfig, *, start_lr: float = START_LR, end_lr: float = END_LR,
          steps: int = STEPS, device: torch.device | str = "cpu") -> LRFindResult:
    """The range test on a copy of ``net`` with the optimiser ``cfg`` trains it with (the parameters of its first
    phase; discriminative lrs keep their ratio to the swept head lr)."""
    check_sweep(start_lr, end_lr, steps)
    rng = torch.get_rng_state()
    phase = phase_of(cfg, 0)
    work = copy.deepcopy(net).to(device)
    if phase == HEAD_PHASE:
        set_freeze(work, "backbone")
    ratio = float(cfg.backbone_lr / cfg.lr) if isinstance(cfg.lr, float) and cfg.backbone_lr else 1.0
    opt = build_optimizer(work, replace(cfg, lr=1.0, freeze_lr=1.0, backbone_lr=ratio), phase)  # base lrs = ratios
    mult = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    avg, best, step = 0.0, math.inf, 0
    try:
        while step < steps:
            for x, y in batches.epoch(step):
                lr = start_lr * mult ** step
                work.train()
                apply_freeze_mode(work)
                set_lr(opt, lr)
                loss = F.cross_entropy(work(x.to(device)).float(), y.to(device), label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = float(loss.detach())
                step += 1
                if not math.isfinite(value):
                    break
                avg = SMOOTHING * avg + (1 - SMOOTHING) * value
                smooth = avg / (1 - SMOOTHING ** step)
                lrs.append(lr)
                losses.append(smooth)
                best = min(best, smooth)
                if step >= steps or (step > 10 and smooth > STOP_FACTOR * best):
                    break
            else:
                continue
            break
    finally:
        torch.set_rng_state(rng)
    return LRFindResult(lrs, losses, valley(lrs, losses), phase)


def plot_lr_find(result: LRFindResult, path: str | Path) -> None:
    """Loss against lr (log scale) with the suggestion marked; written atomically."""
    from matplotlib.figure import Figure

    from .. import atomic

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses)
    ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggested lr {result.suggestion:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)",
           title=f"LR range test ({'head only' if result.phase == HEAD_PHASE else 'whole network'})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic.savefig(fig, path, dpi=100)


def apply_suggestion(cfg: TrainConfig, lr: float) -> TrainConfig:
    """``cfg`` with the swept lr in place: the lr of the first phase; after head-only epochs the head continues at half
    of it and the backbone at a tenth of that (fastai's ``fine_tune``); discriminative ratios are kept."""
    if phase_of(cfg, 0) == HEAD_PHASE:
        head = lr / 2
        return replace(cfg, freeze_lr=lr, lr=head, backbone_lr=head / 10 if cfg.backbone_lr is not None else None)
    ratio = cfg.backbone_lr / lr if cfg.backbone_lr is not None and isinstance(cfg.lr, float) else None
    return replace(cfg, lr=lr, backbone_lr=lr * ratio if ratio else cfg.backbone_lr)
