"""timm backbones: ``timm:NAME`` for any timm model whose ``forward_features`` gives a feature map.

Token models (ViT, DeiT, EVA...) are created with ``dynamic_img_size=True`` where they accept it, and their patch
tokens are laid out on the patch grid (class/register tokens dropped), so they too give N x C x h x w.

The model is created offline (``pretrained=False``), its classifier is removed (``reset_classifier(0, '')``) and our
head sits on ``forward_features``. The backbone registers the timm model's own children, so its state-dict keys are
timm's (``conv1.0.weight``, ``layer1.0.conv1.weight``...): a timm checkpoint loads with ``--weights FILE`` like a
torchvision one, and timm's classifier (``fc``, ``classifier``, ``head.fc``) goes to our head when it sits directly on
the pooled features. Modules that ``forward_features`` never calls (timm's ``forward_head`` part: ``conv_head``...)
are dropped, except the LayerNorm of the pooled features (``head.norm``: ConvNeXt...), which stays, under its own key,
as an ImageLayerNorm2d on the map (so a checkpoint's logits are timm's for the gap head). The preprocessing the pretrained weights expect (mean, std, input size,
interpolation, crop) comes from the model's pretrained config (:func:`data_config`).
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import replace
from functools import lru_cache
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..data.transforms import INTERPOLATIONS, Preprocess
from ..errors import ConfigError
from ..optional import require
from .backbones import Backbone, ImageLayerNorm2d, register_backbone_prefix

PREFIX = "timm"


def _timm() -> Any:
    return require("timm", "timm backbones (--model timm:NAME)")


class TimmBackbone(Backbone):
    """A timm model's ``forward_features`` as a :class:`Backbone` (N x C x h x w; NHWC outputs are permuted).

    ``data_config``: timm's resolved data config (input_size, interpolation, mean, std, crop_pct).
    """

    def __init__(self, name: str, model: nn.Module, used: Iterable[str], tv_head: tuple[str, ...],
                 data_config: Mapping[str, Any], head_norm: nn.Module | None = None):
        parts = {k: m for k, m in model.named_children() if k in set(used)}
        if head_norm is not None:  # timm's pooled-feature norm, kept under its own key (head.norm.*)
            parts["head"] = nn.ModuleDict({"norm": head_norm})
        info = getattr(model, "feature_info", None) or [{}]
        stride = int(info[-1].get("reduction", 32)) if isinstance(info[-1], Mapping) else 32
        super().__init__(name, parts, out_channels=int(model.num_features), stride=stride, tv_head=tv_head)
        object.__setattr__(self, "timm_model", model)  # not a submodule: its children are registered here
        for key, p in model._parameters.items():  # direct parameters (e.g. a token or position embedding)
            if p is not None:
                self.register_parameter(key, p)
        for key, b in model._buffers.items():
            if b is not None:
                self.register_buffer(key, b, persistent=key not in model._non_persistent_buffers_set)
        self.nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
        self.data_config = dict(data_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            f = self.timm_model.forward_features(x)
        except AssertionError as e:  # timm checks fixed input sizes with assertions
            raise RuntimeError(str(e)) from None
        if f.dim() == 4 and self.nhwc:
            f = f.permute(0, 3, 1, 2)
        elif f.dim() == 3:  # tokens (ViT, DeiT, Mixer...): the patch tokens laid out on their grid
            f = self._token_map(f, tuple(x.shape[-2:]))
        if f.dim() != 4:
            raise ConfigError(f"timm model {self.name!r} gives {f.dim()}-d features, not a C x h x w map")
        if isinstance(getattr(self, "head", None), nn.ModuleDict):
            f = self.head["norm"](f)
        return f

    def _token_map(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """N x T x C tokens -> N x C x h x w: prefix tokens (class, register) dropped, the rest on the patch grid."""
        patches = tokens[:, int(getattr(self.timm_model, "num_prefix_tokens", 0) or 0):]
        embed = getattr(self.timm_model, "patch_embed", None) or getattr(self.timm_model, "stem", None)
        if hasattr(embed, "dynamic_feat_size"):
            grid = tuple(embed.dynamic_feat_size(size))
        else:
            grid = tuple(getattr(embed, "grid_size", None) or ())
        if len(grid) != 2 or grid[0] * grid[1] != patches.shape[1]:
            raise ConfigError(f"timm model {self.name!r} gives {patches.shape[1]} tokens that do not lie on a patch "
                              "grid: pick a convolutional or ViT-style timm model")
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)

    def train(self, mode: bool = True) -> "TimmBackbone":
        super().train(mode)
        self.timm_model.training = mode
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> "TimmBackbone":  # .to(), .float()...: keep timm's views
        super()._apply(fn, recurse)
        for store in ("_parameters", "_buffers"):
            mine, theirs = getattr(self, store), getattr(self.timm_model, store)
            theirs.update({k: mine[k] for k in theirs if k in mine})
        return self


def timm_backbone(model_name: str, in_channels: int = 3) -> TimmBackbone:
    """Build ``timm:model_name`` with random weights (nothing downloaded) for ``in_channels`` input channels."""
    timm = _timm()
    try:
        try:  # ViT-style models then take any input size (position embeddings interpolated); others refuse the option
            model = timm.create_model(model_name, pretrained=False, in_chans=in_channels, dynamic_img_size=True)
        except TypeError:
            model = timm.create_model(model_name, pretrained=False, in_chans=in_channels)
    except RuntimeError as e:
        if "Unknown model" not in str(e):
            raise
        close = difflib.get_close_matches(model_name, timm.list_models(), n=4, cutoff=0.6)
        hint = (f"did you mean {', '.join('timm:' + c for c in close)}?" if close
                else "see gapvision summary --list timm")
        raise ConfigError(f"unknown timm model {model_name!r}: {hint}") from None
    if not hasattr(model, "forward_features") or not hasattr(model, "reset_classifier"):
        raise ConfigError(f"timm model {model_name!r} has no forward_features/reset_classifier: it cannot take a head")
    classifier = model.get_classifier()
    clf_key = next((k for k, m in model.named_modules() if m is classifier and k), "")
    width = int(model.num_features)
    mappable = isinstance(classifier, nn.Linear) and classifier.in_features == width and bool(clf_key)
    config = data_config(model_name)
    head_norm = _pooled_norm(model, width)
    model.reset_classifier(0, "")
    used = _called_children(model, in_channels, config)
    if "head" in used:
        head_norm = None
    for key, child in list(model.named_children()):
        if key not in used:
            setattr(model, key, nn.Identity())  # never called by forward_features: dropped from the backbone
    return TimmBackbone(f"{PREFIX}:{model_name}", model, used, (clf_key,) if mappable else (), config, head_norm)


def _pooled_norm(model: nn.Module, width: int) -> nn.Module | None:
    """timm's LayerNorm of the pooled features (``head.norm`` of its NormMlpClassifierHead: ConvNeXt, ...) as an
    :class:`~.backbones.ImageLayerNorm2d` on the map (the pooled result is the same, the class maps stay exact);
    None when the model has no such norm."""
    norm = getattr(getattr(model, "head", None), "norm", None)
    if isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (width,):
        return ImageLayerNorm2d.like(norm)
    return None


def _called_children(model: nn.Module, in_channels: int, config: Mapping[str, Any]) -> set[str]:
    """Names of the top-level children that ``forward_features`` calls (one dry run, 64 px or the config's size)."""
    called: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda _m, _i, key=k: called.add(key)) for k, m in model.named_children()]
    was_training = model.training
    model.eval()
    try:
        for size in (64, int(config.get("input_size", (3, 224, 224))[-1])):
            try:
                with torch.no_grad():
                    model.forward_features(torch.zeros(1, in_channels, size, size))
                break
            except (RuntimeError, AssertionError):
                called.clear()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return called or {k for k, _ in model.named_children()}


@lru_cache(maxsize=None)
def _data_config(model_name: str) -> tuple[tuple[str, Any], ...]:
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(model_name)
    resolved = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    return tuple(resolved.items())


def data_config(model_name: str) -> dict[str, Any]:
    """timm's data config of ``model_name`` (``timm:`` optional): input_size, interpolation, mean, std, crop_pct."""
    return dict(_data_config(model_name.removeprefix(f"{PREFIX}:")))


def is_timm(model: str | None) -> bool:
    return bool(model) and str(model).lower().startswith(f"{PREFIX}:")


def list_timm(pattern: str = "*") -> list[str]:
    """``timm:NAME`` for every timm model matching ``pattern`` (fnmatch, e.g. ``*resnet*``)."""
    return [f"{PREFIX}:{n}" for n in _timm().list_models() if fnmatch.fnmatch(n, pattern)]


def pretrained_preprocess(pre: Preprocess, model: str | None, given: Mapping[str, Any], *,
                          crop: bool = False) -> Preprocess:
    """``pre`` with what a timm model's pretrained weights expect, where the user did not set it (``given``: the
    user's options): ``img_size`` (unless given), ``mean``/``std`` (unless ``normalize`` given), the resize
    ``interpolation`` and, with ``crop`` (inference), the central crop. Unchanged for other backbones."""
    if not is_timm(model):
        return pre
    cfg = data_config(str(model))
    out: dict[str, Any] = {"interpolation": str(cfg.get("interpolation") or "bilinear")}
    if out["interpolation"] not in INTERPOLATIONS:
        out["interpolation"] = "bicubic"
    if crop:
        out["crop"] = float(cfg.get("crop_pct") or 1.0)
    if given.get("img_size") is None:
        out["img_size"] = int(cfg["input_size"][-1])
    if given.get("normalize") is None:
        mean, std = tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"])
        out["mean"], out["std"] = ((sum(mean) / 3,), (sum(std) / 3,)) if pre.channels == 1 else (mean, std)
    return replace(pre, **out)


register_backbone_prefix(PREFIX)(timm_backbone)
