"""Weight files: read them safely (tensors only, never code) and load what matches into a Classifier.

Two key layouts are understood:

* gapvision: ``backbone.*`` / ``head.*`` (a run directory's ``model.safetensors``) -- loaded as is;
* torchvision / original: the source model's own keys. Backbones keep the source module names, so these load by
  prefixing ``backbone.``; the source's final classifier layer (``Backbone.tv_head``) goes to the head's first
  classifier layer (a Linear, or the 1x1 conv of a ``conv`` head).

Shapes that differ (a new head, another class count) are skipped and reported; a 3-channel first conv loaded into a
1-channel model is summed over RGB, as timm and fastai do.
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..errors import ConfigError, GapvisionError
from ..runformat import WEIGHTS as RUN_WEIGHTS, read_config
from .heads import head_linear

if TYPE_CHECKING:
    from .classifier import Classifier

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
STRIP_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
TORCHVISION_PREFIX = "torchvision:"
# Old torchvision DenseNet checkpoints name layers 'norm.1', 'conv.2'... (torchvision renames them the same way).
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
_COUNTER = "num_batches_tracked"


@dataclass
class LoadReport:
    """What ``load_weights`` did: model keys loaded, (key, reason) skipped, model keys left as initialised."""

    loaded: list[str]
    skipped: list[tuple[str, str]]
    missing: list[str]
    source: str = ""
    adapted: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. ``loaded 260 tensors from X; kept new: head.classifier.weight, ... (shape differs)``."""
        parts = [f"loaded {len(self.loaded)} tensors from {self.source or 'weights'}"]
        if self.adapted:
            parts.append("adapted: " + _names([f"{k} ({how})" for k, how in self.adapted]))
        shape_differs = {k for k, reason in self.skipped if reason.startswith("shape differs")}
        for label, keys in (
            ("shape differs", [k for k in self.missing if k in shape_differs]),
            ("not in file", [k for k in self.missing if k not in shape_differs]),
        ):
            if keys:
                parts.append(f"kept new: {_names(keys)} ({label})")
        ignored = [k for k, reason in self.skipped if reason == "not in the model"]
        if ignored:
            parts.append(f"ignored from file: {_names(ignored)} (not in the model)")
        return "; ".join(parts)


def _names(keys: list[str], limit: int = 4) -> str:
    more = f", +{len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# --- reading ----------------------------------------------------------------------------------------------------


def run_stem(source: str | None) -> str | None:
    """The stem (config.json's ``model.stem``) of a gapvision run directory given as ``--weights``: its weights were
    trained with it. None for a file, a torchvision name or no weights; ``native`` for a run saved before stems."""
    p = Path(source) if source else None
    if p is None or not p.is_dir() or not (p / "config.json").is_file():
        return None
    return str(read_config(p)["model"].get("stem", "native"))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth/.pt/.th/.bin file, or of a gapvision run directory's model.safetensors.

    Torch files are read with ``weights_only=True``: a pickle that needs any code is refused. Wrappers
    ``{'state_dict'|'model'|'model_state_dict': ...}`` are unwrapped and ``module.`` prefixes stripped.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / RUN_WEIGHTS).is_file():
            raise ConfigError(f"{p} is a directory without {RUN_WEIGHTS}: pass a gapvision run directory or a file")
        if (p / "config.json").is_file():
            read_config(p)  # refuses a run written in a newer format, or a damaged config.json
        p = p / RUN_WEIGHTS
    if not p.is_file():
        raise ConfigError(f"weights file {p} not found")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except (SafetensorError, OSError) as e:
            raise GapvisionError(f"{p} is not a readable safetensors file ({e})") from None
    else:
        obj = _torch_load(p)
    return clean_state_dict(obj, str(p))


def _torch_load(p: Path) -> Any:
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needed = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise GapvisionError(
            f"{p} is not a plain tensor checkpoint; gapvision never unpickles code"
            + (f" (it needs {needed.group(1)})" if needed else "")
            + ": save model.state_dict() (or a .safetensors file) instead of a whole pickled object"
        ) from None
    except Exception as e:  # any other failure means the file is not a torch checkpoint (or is damaged)
        raise GapvisionError(f"could not read weights {p}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def clean_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Unwrap common checkpoint wrappers, keep the tensors, strip ``module.``/``_orig_mod.`` prefixes."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise GapvisionError(f"{source} holds a {type(obj).__name__}, not a state_dict of tensors")
    state = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            for prefix in STRIP_PREFIXES:
                key = key.removeprefix(prefix)
            state[key] = value
    if not state:
        raise GapvisionError(f"{source} contains no tensors")
    return state


def torchvision_state_dict(model_name: str, source: str) -> dict[str, torch.Tensor]:
    """``torchvision:DEFAULT`` / ``torchvision:IMAGENET1K_V1``... for ``model_name`` (downloaded by torch.hub)."""
    import torchvision

    tag = source[len(TORCHVISION_PREFIX):] or "DEFAULT"
    try:
        enum = torchvision.models.get_model_weights(model_name)
    except (ValueError, KeyError):
        raise ConfigError(f"torchvision has no pretrained weights for {model_name!r}: pass --weights FILE") from None
    if tag not in enum.__members__:
        raise ConfigError(f"unknown {source!r} for {model_name}: choose torchvision:{', torchvision:'.join(enum.__members__)}")
    try:
        obj = enum[tag].get_state_dict(progress=False, check_hash=True, weights_only=True)
    except OSError as e:  # urllib's URLError/HTTPError are OSErrors
        raise ConfigError(
            f"could not download torchvision weights for {model_name} (no internet?): download the file elsewhere and "
            f"pass --weights FILE ({e})"
        ) from None
    return clean_state_dict(obj, source)


# --- loading ----------------------------------------------------------------------------------------------------


def adapt_first_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first conv's weight for ``in_channels`` inputs: unchanged, or RGB summed into one channel."""
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] == 3 and in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ValueError(f"cannot adapt a {weight.shape[1]}-channel first conv to {in_channels} channels")


def load_weights(model: "Classifier", source: str) -> LoadReport:
    """Load the tensors of ``source`` (file, run directory or ``torchvision:TAG``) that fit ``model``.

    Raises ConfigError when (almost) nothing fits: the file is for another architecture.
    """
    backbone = model.backbone
    if source.startswith(TORCHVISION_PREFIX):
        state = torchvision_state_dict(backbone.name, source)
    else:
        state = read_state_dict(source)
    target = model.state_dict()
    report = LoadReport([], [], [], source=source)
    new: dict[str, torch.Tensor] = {}
    for src_key, dst_key in _model_keys(state, model).items():
        if dst_key not in target:
            if not src_key.endswith(_COUNTER):
                report.skipped.append((src_key, "not in the model"))
            continue
        tensor, how = _fit(state[src_key], target[dst_key], dst_key, model)
        if tensor is None:
            shapes = f"file {_shape(state[src_key])}, model {_shape(target[dst_key])}"
            report.skipped.append((dst_key, f"shape differs ({shapes})"))
            continue
        new[dst_key] = tensor
        report.loaded.append(dst_key)
        if how:
            report.adapted.append((dst_key, how))
    report.missing = [k for k in target if k not in new and not k.endswith(_COUNTER)]
    _check_fits(report, state, target, backbone.name)
    model.load_state_dict(new, strict=False)
    return report


def _model_keys(state: Mapping[str, torch.Tensor], model: "Classifier") -> dict[str, str]:
    """Source key -> model key, for the gapvision or the torchvision/original layout."""
    if any(k.startswith("backbone.") for k in state):  # not "head.": timm's own layout has head.* modules too
        return {k: k for k in state}
    backbone = model.backbone
    head_layer = _head_layer_key(model)
    keys = {}
    for src_key in state:
        key = _DENSENET_OLD_KEY.sub(r"\1\2", src_key)
        key = _replace_prefix(key, backbone.tv_rename)
        mapped = _replace_prefix(key, {p: head_layer for p in backbone.tv_head})
        keys[src_key] = mapped if mapped != key else f"backbone.{key}"
    return keys


def _replace_prefix(key: str, renames: Mapping[str, str]) -> str:
    for old, new in renames.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    return key


def _head_layer_key(model: "Classifier") -> str:
    layer = head_linear(model.head)
    return next(f"head.{name}" for name, m in model.head.named_modules() if m is layer)


def _fit(
    tensor: torch.Tensor, ref: torch.Tensor, key: str, model: "Classifier"
) -> tuple[torch.Tensor | None, str]:
    """``tensor`` shaped like ``ref`` (and how it was adapted), or None when it does not fit."""
    if tensor.shape == ref.shape:
        return tensor, ""
    if key == f"backbone.{model.backbone.first_conv}" and tensor.ndim == 4 and tensor.shape[1] == 3 and ref.shape[1] == 1:
        if tensor.shape[0] == ref.shape[0] and tensor.shape[2:] == ref.shape[2:]:
            return adapt_first_conv_weight(tensor, 1), "RGB summed to 1 channel"
    if key.startswith(_head_layer_key(model) + ".") and tensor.numel() == ref.numel() and tensor.shape[:1] == ref.shape[:1]:
        return tensor.reshape(ref.shape), "Linear <-> 1x1 conv"  # K x C vs K x C x 1 x 1
    return None, ""


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def _check_fits(report: LoadReport, state: Mapping, target: Mapping, model_name: str) -> None:
    """Refuse a file of which (almost) nothing fits: under half of its tensors and under half of the model's."""
    loaded = [k for k in report.loaded if not k.endswith(_COUNTER)]
    in_file = [k for k in state if not k.endswith(_COUNTER)]
    in_model = [k for k in target if not k.endswith(_COUNTER)]
    if loaded and (2 * len(loaded) >= len(in_file) or 2 * len(loaded) >= len(in_model)):
        return
    examples = "; ".join(f"{k}: {r}" for k, r in report.skipped[:2])
    raise ConfigError(
        f"{report.source} looks like weights for another architecture: only {len(loaded)} of its {len(in_file)} "
        f"tensors fit model {model_name!r} (e.g. {examples}); pick the matching --model or other --weights"
    )


def batchnorm_is_folded(module: torch.nn.Module, tol: float = 1e-3) -> bool:
    """Whether every BatchNorm layer of ``module`` is an identity (weight 1, bias 0, running mean 0, running var 1):
    the mark of weights whose BatchNorm was folded into the convolutions (e.g. converted from TFLite). Such layers
    must keep their statistics fixed when fine-tuning. False when there is no BatchNorm layer."""
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return False
    for m in bns:
        tensors = [(m.running_mean, 0.0), (m.running_var, 1.0)]
        if m.affine:
            tensors += [(m.weight, 1.0), (m.bias, 0.0)]
        for t, value in tensors:
            if t is None or not torch.allclose(t.detach().float(), torch.full_like(t.detach().float(), value), atol=tol):
                return False
    return True
