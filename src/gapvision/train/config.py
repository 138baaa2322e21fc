"""All training hyperparameters in one readable dataclass (stored in config.json as ``train``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..choices import TTA_MODES
from ..errors import ConfigError
from .recipes import RECIPES as NAMED_RECIPES

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("none", "cosine", "onecycle", "step")
RECIPES = ("auto", *NAMED_RECIPES, "none")  # --recipe: auto, a named recipe of recipes.py, or none
CACHE_FEATURES = ("auto", "off")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float | str = 1e-3  # a number, "LOW:HIGH" (backbone:head) or "auto" (see parse_lr)
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd (Nesterov) and rmsprop
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # step schedule: decay every N epochs
    step_gamma: float = 0.1
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    patience: int = 0  # early stopping on validation accuracy; 0 = off
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (on for CUDA) | on | off
    channels_last: str = "auto"  # auto (on for CUDA) | on | off
    workers: int = -1  # DataLoader workers; -1 = auto
    quiet: bool = False
    tensorboard: bool = False  # per-epoch scalars in RUN_DIR/tensorboard (needs the tensorboard package)
    recipe: str = "auto"  # fast | none | auto (fast for images <= 64 px when no hyperparameter is set); train/recipes.py
    ema: float = 0.0  # decay per step of an exponential moving average of the weights, evaluated and saved; 0 = off
    tta: str = "off"  # test-time augmentation when evaluating: off | flip | crops (predictor.tta_logits)
    backbone_lr: float | None = None  # the backbone's lr (discriminative lr; ``lr="LOW:HIGH"`` sets it); None = lr
    freeze_epochs: int = 0  # first epochs with the backbone frozen (head only, on cached feature maps when possible)
    freeze_lr: float | None = None  # the lr of those head-only epochs; None = lr
    cache_features: str = "auto"  # auto | off: head-only epochs on feature maps computed once (compare/features.py)

    def __post_init__(self) -> None:
        for f in fields(self):  # the Python API takes any value: a number option given as text is one line
            value = getattr(self, f.name)
            if f.type in ("int", "float", "float | None", "int | None") and value is not None and \
                    (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{f.name}={value!r}: give a number (--{f.name.replace('_', '-')})")
        self.lr, low = parse_lr(self.lr)
        if low is not None:
            self.backbone_lr = low
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown --optimizer {self.optimizer!r}: choose {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown --schedule {self.schedule!r}: choose {', '.join(SCHEDULES)}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {self.batch_size})")
        for name in ("lr", "backbone_lr", "freeze_lr"):
            value = getattr(self, name)
            if value is not None and value != "auto" and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0 (got {value})")
        for name in ("weight_decay", "clip_grad", "patience", "freeze_epochs"):
            value = getattr(self, name)
            if not value >= 0:  # NaN too
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0 (got {value}); 0 turns it off")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be at least 0 and below 1 (got {self.label_smoothing}); "
                              "0 turns it off")
        if self.cache_features not in CACHE_FEATURES:
            raise ConfigError(f"--cache-features must be auto or off (got {self.cache_features!r})")
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown --recipe {self.recipe!r}: choose {', '.join(RECIPES)}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"--ema must be at least 0 and below 1 (got {self.ema}); 0 turns it off")
        if self.tta not in TTA_MODES:
            raise ConfigError(f"--tta must be {' or '.join(TTA_MODES)} (got {self.tta!r})")
        for name in ("amp", "channels_last"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise ConfigError(f"--{name.replace('_', '-')} must be auto, on or off")

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_of(self, part: str) -> float:
        """The base lr of ``part``: ``head`` or ``backbone`` (after the head-only epochs), or ``freeze`` (during)."""
        if part == "freeze":
            return float(self.freeze_lr if self.freeze_lr is not None else self.lr)
        if part == "backbone" and self.backbone_lr is not None:
            return float(self.backbone_lr)
        return float(self.lr)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def parse_lr(value: Any) -> tuple[Any, float | None]:
    """``--lr``: a number, ``LOW:HIGH`` (the backbone's and the head's lr) or ``auto`` (run the LR finder first).

    Returns (lr, backbone lr or None); ``auto`` stays ``"auto"`` until the pipeline resolves it.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), None
    text = str(value).strip().lower()
    if text == "auto":
        return "auto", None
    try:
        if ":" in text:
            low, high = (float(v) for v in text.split(":"))
            return high, low
        return float(text), None
    except ValueError:
        raise ConfigError(f"--lr must be a number, LOW:HIGH (backbone:head, e.g. 1e-4:1e-3) or auto (got {value!r})") \
            from None
