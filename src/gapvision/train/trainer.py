"""The training loop (there is one): epochs of optimisation and evaluation, checkpoints, early stopping, resume.

The Trainer knows nothing about files or datasets: it takes batch sources (``epoch(e)`` / ``len``) and reports to an
optional RunWriter. Everything random in epoch ``e`` is seeded from (seed, e), so resuming at an epoch boundary is exact.
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.loaders import Batches, epoch_seed
from ..devices import choose_device, resolve_precision
from ..errors import GapvisionError
from ..models.classifier import apply_freeze_mode, has_batchnorm, set_freeze
from ..predictor import EvalResult, Predictor  # noqa: F401 - EvalResult: what evaluate returns
from ..runs import RunWriter
from .config import TrainConfig
from .optim import FULL_PHASE, HEAD_PHASE, build_optimizer, lr_factor, phase_of, set_lr

NOT_LEARNING_EPOCHS = 3  # epochs in a row at the majority share before a run is said not to learn
#: ... and not before this share of the planned epochs: the plain defaults give a small set up to 40 short epochs (10
#: steps of 16 on boxes-dev), and gapcnn's validation accuracy there, like that of the 7-class grey manifest of
#: bench/tutorial_manifest.py, sat at the majority share for the first 3 epochs of a run that then learnt
NOT_LEARNING_SHARE = 0.2
NOT_LEARNING_MARGIN = 0.05  # "at the majority share": validation accuracy within this of it
NOT_LEARNING_LOSS = 0.9  # ... while the training loss stays above this fraction of the first epoch's
NOT_LEARNING_PRIOR = 0.95  # ... or above this fraction of the loss of predicting the class shares
#: the per-epoch validation's test-time augmentation for a run's --tta (missing: the run's own): multi-crop TTA costs
#: 6 forward passes against flip's 2, so the epochs are validated with flip (for the curve, best epoch and early
#: stopping) and the final evaluation (metrics.json, pipeline.finish) with the crops
EPOCH_TTA = {"crops": "flip"}


def stuck_at_chance(history: list[dict], targets: np.ndarray, planned_epochs: int = 0) -> str | None:
    """Why the run is not learning, or None: validation accuracy at the majority class's share (within
    NOT_LEARNING_MARGIN, or two binomial standard errors on a small set) for the last NOT_LEARNING_EPOCHS epochs
    (and not before NOT_LEARNING_SHARE of the ``planned_epochs``),
    while the training loss barely moved (above NOT_LEARNING_LOSS of the first epoch's) or is still at least the loss
    of predicting the class shares (their entropy: a first epoch whose loss rose above that start looks like a
    move down afterwards, yet nothing was learnt). ``targets``: the validation labels."""
    targets = np.asarray(targets, dtype=np.int64)
    if len(history) < max(NOT_LEARNING_EPOCHS, math.ceil(NOT_LEARNING_SHARE * planned_epochs)) or not len(targets):
        return None
    shares = np.bincount(targets) / len(targets)
    seen = shares[shares > 0]
    majority, prior_loss = float(shares.max()), float(-(seen * np.log(seen)).sum())
    recent = history[-NOT_LEARNING_EPOCHS:]
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    margin = max(NOT_LEARNING_MARGIN, 1 / math.sqrt(len(targets)))
    if not all(abs(r["val_acc"] - majority) <= margin for r in recent):
        return None
    if last > NOT_LEARNING_LOSS * first:
        loss = f"the training loss barely moved ({first:.3f} -> {last:.3f})"
    elif last >= NOT_LEARNING_PRIOR * prior_loss:
        loss = f"the training loss ({last:.3f}) is still that of guessing the class shares ({prior_loss:.3f})"
    else:
        return None
    return (f"validation accuracy {recent[-1]['val_acc']:.3f} after {len(history)} epochs is the majority class's "
            f"share ({majority:.3f}) and {loss}")


class TrainingDiverged(GapvisionError):
    """The loss became NaN or infinite."""


@dataclass
class TrainState:
    """Progress that a checkpoint must carry for an exact resume."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # said once each, kept in metrics.json


resolve_device = choose_device  # the one device choice (devices.py), under the name training code knows


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.benchmark = not on
    torch.backends.cudnn.deterministic = on


class WeightAverage:
    """An exponential moving average of a network's weights and float buffers (as in hlb-CIFAR10 and airbench): every
    ``every`` steps ``average += (1 - d ** every) * (live - average)`` with ``d = min(decay, (1 + step) / (10 + step))``,
    so early steps are not averaged in for long. ``net`` is the averaged copy, evaluated and saved."""

    def __init__(self, source: nn.Module, decay: float, every: int = 5):
        self.decay, self.every = decay, every
        self.net = copy.deepcopy(source).eval().requires_grad_(False)
        self._live = [t.detach() for t in source.state_dict(keep_vars=True).values() if t.is_floating_point()]
        self._avg = [t.detach() for t in self.net.state_dict(keep_vars=True).values() if t.is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step % self.every == 0:
            d = min(self.decay, (1 + step) / (10 + step)) ** self.every
            torch._foreach_lerp_(self._avg, self._live, 1.0 - d)


class Trainer:
    """Fits ``net`` with ``cfg``; ``writer`` (optional) receives checkpoints, the best model and the history.

    ``reduce`` (optional) sums metric tensors across processes (the DDP hook); ``on_epoch`` is called after each epoch.
    """

    def __init__(
        self,
        net: nn.Module,
        cfg: TrainConfig,
        *,
        writer: RunWriter | None = None,
        device: torch.device | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_epoch: Callable[["Trainer", dict], None] | None = None,
        log: Callable[[str], None] = print,
    ):
        self.cfg = cfg
        self.device = device or choose_device(cfg.device)
        self.precision = resolve_precision(self.device, cfg.amp, cfg.channels_last)
        self.amp, self.amp_dtype, self.channels_last = (self.precision.amp, self.precision.dtype,
                                                        self.precision.channels_last)
        self.net = net.to(self.device)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.base_freeze = getattr(net, "freeze", "none")  # --freeze after the head-only epochs
        self.phase = ""
        self.enter_phase(phase_of(cfg, 0))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.writer = writer
        self.reduce = reduce
        self.on_epoch = on_epoch
        self.log = (lambda s: None) if cfg.quiet else log
        self.state = TrainState()
        self.ema = WeightAverage(self.net, cfg.ema) if cfg.ema > 0 else None
        self.carry_seconds = 0.0  # work done for the next epoch before it starts (cached feature maps), counted in it

    # -- phases ----------------------------------------------------------------------------------------------
    def enter_phase(self, phase: str) -> None:
        """``head``: the backbone frozen, only the head trains (``freeze_lr``); ``all``: ``--freeze`` as given, the
        backbone at ``backbone_lr`` and the head at ``lr``. Each phase starts with a fresh optimiser."""
        inner = getattr(self.net, "module", self.net)
        if hasattr(inner, "backbone") and self.cfg.freeze_epochs:
            set_freeze(inner, "backbone" if phase == HEAD_PHASE else self.base_freeze)
        self.optimizer = build_optimizer(self.net, self.cfg, phase)
        self.phase = phase

    # -- batches ---------------------------------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.precision.place(x, self.device), y.to(self.device, non_blocking=True)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return self.precision.autocast()

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.reduce(t) if self.reduce is not None else t

    # -- one epoch -------------------------------------------------------------------------------------------
    def train_epoch(self, batches: Batches, epoch: int) -> tuple[float, float]:
        cfg = self.cfg
        net = self.net
        net.train()
        apply_freeze_mode(getattr(net, "module", net))
        torch.manual_seed(epoch_seed(cfg.seed, epoch) + 1)  # dropout etc.
        steps = len(batches)
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, count
        with tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=cfg.quiet,
                  mininterval=0.5, dynamic_ncols=True) as bar:  # closed (line cleared) on Ctrl-C too
            for i, (x, y) in enumerate(batches.epoch(epoch)):
                x, y = self._to_device(x, y)
                set_lr(self.optimizer, lr_factor(cfg, self.state.step, steps))
                with self._autocast():
                    logits = net(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if cfg.clip_grad > 0:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.state.step += 1
                if self.ema is not None:
                    self.ema.update(self.state.step)
                with torch.no_grad():
                    stats += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                          torch.tensor(len(y), dtype=torch.float64, device=self.device)])
                if i % 50 == 49 and not math.isfinite(float(stats[0])):
                    break
                bar.update(1)
        stats = self._sum(stats)
        loss_sum, correct, count = (float(v) for v in stats)
        if not math.isfinite(loss_sum):
            raise TrainingDiverged(
                f"the training loss became {loss_sum} in epoch {epoch + 1}; stopped and kept the checkpoint of epoch "
                f"{epoch}: lower --lr (now {cfg.lr}) or set --clip-grad"
            )
        return loss_sum / max(count, 1), correct / max(count, 1)

    def evaluate(self, batches: Batches, keep_probs: bool = False, net: nn.Module | None = None,
                 tta: str | None = None) -> EvalResult:
        """Loss, accuracy and predictions of ``net`` (default: the trained one) over ``batches``, through the same
        :class:`~gapvision.predictor.Predictor` arithmetic as every later evaluation (TTA, AMP, channels-last);
        ``tta`` overrides the run's."""
        return self.predictor(self.net if net is None else net, tta).evaluate(batches, keep_probs=keep_probs,
                                                                               reduce=self.reduce)

    def predictor(self, net: nn.Module, tta: str | None = None) -> Predictor:
        """A Predictor of ``net`` with this run's inference settings (``tta``: another TTA) on the training device."""
        cfg = self.cfg
        return Predictor(net, tta=tta or cfg.tta, amp=cfg.amp, channels_last=cfg.channels_last,
                         batch_size=cfg.batch_size, device=self.device)

    # -- the loop --------------------------------------------------------------------------------------------
    def fit(self, train: Batches, val: Batches, until: int | None = None) -> TrainState:
        """Train from ``self.state.epoch`` to ``until`` (default ``cfg.epochs``) or an early stop. Ctrl-C leaves the
        last checkpoint."""
        cfg, st = self.cfg, self.state
        for epoch in range(st.epoch, min(until or cfg.epochs, cfg.epochs)):
            if phase_of(cfg, epoch) != self.phase:
                self.enter_phase(phase_of(cfg, epoch))
            t0 = time.perf_counter()
            train_loss, train_acc = self.train_epoch(train, epoch)
            ev = self.evaluate(val, net=self.eval_net, tta=EPOCH_TTA.get(cfg.tta))
            validated = len(ev.targets) > 0  # --val-split 0: no validation images, the last epoch is kept
            row = {
                "epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": ev.loss if validated else math.nan, "val_acc": ev.acc if validated else math.nan,
                "lr": max(g["lr"] for g in self.optimizer.param_groups),
                "seconds": time.perf_counter() - t0 + self.carry_seconds,
            }
            self.carry_seconds = 0.0
            st.history.append(row)
            if validated:
                self.check_learning(ev)
            st.epoch = epoch + 1
            improved = ev.acc > st.best_val_acc if validated else True
            if improved:
                st.best_val_acc, st.best_epoch, st.bad_epochs = ev.acc, epoch + 1, 0
                if self.writer is not None:
                    self.writer.model(self.eval_net)
            else:
                st.bad_epochs += 1
            st.stopped_early = bool(cfg.patience and st.bad_epochs >= cfg.patience and st.epoch < cfg.epochs)
            self.save_checkpoint()
            val_text = f"val loss {ev.loss:.4f} acc {ev.acc:.4f}{'  *' if improved else ''}" if validated else "no val"
            self.log(f"epoch {epoch + 1:>3}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                     f"{val_text}  {row['seconds']:.1f}s")
            if self.on_epoch is not None:
                self.on_epoch(self, row)
            if st.stopped_early:
                self.log(f"early stopping: no better validation accuracy for {cfg.patience} epochs")
                break
        return st

    def check_learning(self, ev: EvalResult) -> None:
        """Warn once (a line, and ``state.warnings``) when :func:`stuck_at_chance` says the run is not learning;
        training goes on."""
        st = self.state
        if any("not learning" in w for w in st.warnings):
            return
        found = stuck_at_chance(st.history, ev.targets, self.cfg.epochs)
        if found:
            message = f"not learning: {found}; try {'; '.join(self.learning_hints())}"
            st.warnings.append(message)
            self.log(f"warning: {message}")

    def learning_hints(self) -> list[str]:
        """What to try when the run does not learn, given this network and configuration."""
        cfg = self.cfg
        inner = getattr(self.net, "module", self.net)
        hints = []
        if has_batchnorm(inner) and getattr(inner, "freeze", "none") == "none":
            hints.append("--freeze bn (keep the BatchNorm statistics of pretrained weights)")
        lr = cfg.lr_of("head")
        hints.append(f"a lower or higher --lr (now {lr:g}: e.g. {lr / 10:g} or {lr * 10:g})")
        hints.append("`gapvision lr-find` (or --lr auto) to pick one")
        hints.append(f"more --epochs (now {cfg.epochs})")
        return hints

    @property
    def eval_net(self) -> nn.Module:
        """The network that is evaluated and saved each epoch: the weight average with ``ema``, else the trained one."""
        return self.ema.net if self.ema is not None else self.net

    # -- checkpoints -----------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        net = getattr(self.net, "module", self.net)
        return {
            "model": net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": asdict(self.state),
            "phase": self.phase,
            "rng": {"torch": torch.get_rng_state()},
            **({"ema": self.ema.net.state_dict()} if self.ema is not None else {}),
        }

    def save_checkpoint(self) -> None:
        if self.writer is not None:
            self.writer.checkpoint(self.checkpoint_state())  # first: history.csv never lists an unsaved epoch
            self.writer.history(self.state.history)

    def load_checkpoint(self, ckpt: dict) -> None:
        net = getattr(self.net, "module", self.net)
        net.load_state_dict(ckpt["model"])
        self.state = TrainState(**ckpt["state"])
        phase = phase_of(self.cfg, self.state.epoch)
        if phase != self.phase:
            self.enter_phase(phase)
        if ckpt.get("phase", FULL_PHASE if not self.cfg.freeze_epochs else phase) == phase:
            self.optimizer.load_state_dict(ckpt["optimizer"])  # else: at the phase boundary, a fresh optimiser
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if "rng" in ckpt:
            torch.set_rng_state(ckpt["rng"]["torch"])
        if self.ema is not None:
            self.ema.net.load_state_dict(ckpt.get("ema", net.state_dict()))

