"""Backbones: a registry name -> builder of a :class:`Backbone`, whose forward gives the C x h x w feature map.

Torchvision models are wrapped, not rewritten: the backbone keeps the source model's module names (``conv1``,
``layer1``... for ResNets, ``features`` for MobileNet/VGG/EfficientNet/SqueezeNet/DenseNet/ConvNeXt), so a
torchvision (or original) state_dict loads by prefixing its keys with ``backbone.``. The source model's final
classifier layer is named by ``tv_head`` so that weight loading can map it onto a head (see ``weights.py``).
The tutorial networks (``gapcnn``, ``cifarcnn``) and the CIFAR ResNets are defined here and in ``cifar_resnet.py``.
"""
from __future__ import annotations

import difflib
from collections import OrderedDict
from functools import partial
from typing import Callable, Mapping, Sequence, Union

import torch
from torch import nn

from ..errors import ConfigError
from .cifar_resnet import cifar_resnet_layers
from .fastnet import fastnet_parts, fastnet_w_parts
from .whitening import PatchWhitening

BackboneBuilder = Callable[[], "Backbone"]
_REGISTRY: dict[str, BackboneBuilder] = {}
# "prefix:NAME" families resolved by name (timm:resnet10t): prefix -> builder(NAME, in_channels)
PrefixBuilder = Callable[[str, int], "Backbone"]
_PREFIXES: dict[str, PrefixBuilder] = {}


class Backbone(nn.Module):
    """A feature extractor: ``forward(x)`` runs ``parts`` in order and returns N x ``out_channels`` x h x w.

    Attributes:
        name: the registry name.
        out_channels: channels of the feature map.
        stride: nominal input pixels per feature cell (32 for ImageNet nets).
        tv_head: key prefixes of the source model's final classifier layer in the torchvision/original key layout
            (``("fc",)`` for ResNet); empty when it cannot be mapped onto a gapvision head.
        tv_rename: source key prefix -> backbone key prefix, for source layers kept under another name.
        tv_normalize: the input normalisation the source model's pretrained weights expect (``imagenet``/``half``).
        conv_head_relu: the source classifier is conv1x1 + ReLU + average (SqueezeNet).
        default_head: the head that matches the source model (``gap``, or ``conv`` for SqueezeNet).
        first_conv: state-dict key of the first conv's weight (adapted for 1-channel input).
        native_size: the input side the architecture (and its pretrained weights) was made for; the default input
            size is at most this.
        stems: other first layers the backbone can take (name -> function that swaps it in; see :meth:`set_stem`).
    """

    def __init__(
        self,
        name: str,
        parts: Mapping[str, nn.Module],
        *,
        out_channels: int,
        stride: int,
        tv_head: tuple[str, ...] = (),
        tv_rename: Mapping[str, str] | None = None,
        tv_normalize: str = "imagenet",
        conv_head_relu: bool = False,
        default_head: str = "gap",
        native_size: int = 224,
        stems: Mapping[str, Callable[["Backbone"], None]] | None = None,
    ):
        super().__init__()
        for key, module in parts.items():
            self.add_module(key, module)
        self.parts = tuple(parts)
        self.name = name
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.tv_head = tuple(tv_head)
        self.tv_rename = dict(tv_rename or {})
        self.tv_normalize = tv_normalize
        self.conv_head_relu = conv_head_relu
        self.default_head = default_head
        self.native_size = int(native_size)
        self.stems = dict(stems or {})
        self.first_conv = _first_conv_key(self)

    def set_stem(self, stem: str) -> None:
        """Swap in the first layer ``stem`` (``native``: the builder's, left as it is)."""
        if stem == "native":
            return
        if stem not in self.stems:
            offered = ", ".join(["native", *self.stems])
            raise ConfigError(f"--stem {stem}: {self.name} offers {offered}")
        self.stems[stem](self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for key in self.parts:
            x = self._modules[key](x)  # type: ignore[misc]
        return x

    @property
    def in_channels(self) -> int:
        return int(self.get_submodule(self.first_conv.rsplit(".", 1)[0]).in_channels)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_channels={self.out_channels}, stride={self.stride}"


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator: register ``builder() -> Backbone`` (3-channel input) under ``name``."""

    def decorate(builder: BackboneBuilder) -> BackboneBuilder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorate


def register_backbone_prefix(prefix: str) -> Callable[[PrefixBuilder], PrefixBuilder]:
    """Decorator: ``prefix:NAME`` models are built by ``builder(NAME, in_channels) -> Backbone`` (see timm_backbone)."""

    def decorate(builder: PrefixBuilder) -> PrefixBuilder:
        _PREFIXES[prefix] = builder
        return builder

    return decorate


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, in_channels: int = 3) -> Backbone:
    """Build the backbone ``name`` (random init, nothing downloaded) for ``in_channels`` (1 or 3) input channels."""
    key = name.strip().lower()
    prefix, sep, rest = name.strip().partition(":")
    if sep and prefix.lower() in _PREFIXES:
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3 (got {in_channels})")
        return _PREFIXES[prefix.lower()](rest, in_channels)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(list_backbones())} or timm:NAME"
        raise ConfigError(f"unknown model {name!r}: {hint}")
    if in_channels not in (1, 3):
        raise ConfigError(f"in_channels must be 1 or 3 (got {in_channels})")
    backbone = _REGISTRY[key]()
    if in_channels != backbone.in_channels:
        replace_first_conv(backbone, in_channels)
    return backbone


def replace_first_conv(backbone: Backbone, in_channels: int) -> None:
    """Swap the first conv for one taking ``in_channels`` inputs, same other parameters; RGB weights are summed."""
    from .weights import adapt_first_conv_weight

    path = backbone.first_conv.rsplit(".", 1)[0]
    old = backbone.get_submodule(path)
    if isinstance(old, PatchWhitening):  # set from the data later; keeps its output width
        _set_submodule(backbone, path, PatchWhitening(in_channels, old.kernel_size, old.eps, width=old.out_channels))
        return
    if not isinstance(old, nn.Conv2d) or old.groups != 1:
        raise ConfigError(f"cannot adapt the first layer of {backbone.name} to {in_channels} input channels: "
                          f"use --channels 3 or another --model")
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
        bias=old.bias is not None, padding_mode=old.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_first_conv_weight(old.weight, in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)  # type: ignore[union-attr]
    _set_submodule(backbone, path, new)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, child, module)


def _first_conv_key(module: nn.Module) -> str:
    for key, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, PatchWhitening)):
            return f"{key}.weight"
    raise ValueError("a backbone needs a Conv2d")


def native_input(name: str) -> tuple[int, str]:
    """The native input side of backbone ``name`` and the normalisation its pretrained weights expect."""
    backbone = probe_backbone(name)
    return backbone.native_size, backbone.tv_normalize


def probe_backbone(name: str) -> Backbone:
    """Backbone ``name`` built only to read its attributes: the global random state is left as it was, so the
    network that training builds next starts from the same weights as if nothing had been probed."""
    with torch.random.fork_rng(devices=[]):
        return create_backbone(name)


def init_without_bn(backbone: Backbone) -> Backbone:
    """The initialisation of a ReLU network without normalisation layers (see bench/backbones.py): Kaiming-normal
    convs (fan-in, so the signal keeps its scale through the depth: tests/test_transfer.py) with zero biases."""
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return backbone


# --- tutorial networks ------------------------------------------------------------------------------------------


def _conv_relu(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2), nn.ReLU(inplace=True)]


@register_backbone("gapcnn")
def gapcnn() -> Backbone:
    """The GAP tutorial CNN: 3 stages of two 3x3 convs (64/128/256) + ReLU, 2x2 max-pool, Dropout2d(0.3)."""
    stages, cin = {}, 3
    for i, width in enumerate((64, 128, 256), start=1):
        layers = _conv_relu(cin, width) + _conv_relu(width, width) + [nn.MaxPool2d(2), nn.Dropout2d(0.3)]
        stages[f"stage{i}"], cin = nn.Sequential(*layers), width
    return init_without_bn(Backbone("gapcnn", stages, out_channels=256, stride=8, native_size=128))


@register_backbone("cifarcnn")
def cifarcnn() -> Backbone:
    """The CIFAR tutorial CNN (``features`` as in the tutorial): on 32 px input its map is 128 x 4 x 4."""
    features = nn.Sequential(
        *_conv_relu(3, 64, 5), nn.MaxPool2d(2),
        *_conv_relu(64, 128), nn.MaxPool2d(2),
        *_conv_relu(128, 256), nn.MaxPool2d(2),
        *_conv_relu(256, 128),
    )
    return init_without_bn(Backbone("cifarcnn", {"features": features}, out_channels=128, stride=8, native_size=32))


def _fastnet(name: str, widths: tuple[int, int, int, int]) -> Backbone:
    return Backbone(name, fastnet_parts(widths), out_channels=widths[-1], stride=8, native_size=64)


register_backbone("fastnet")(partial(_fastnet, "fastnet", (32, 64, 256, 256)))
register_backbone("fastnet_m")(partial(_fastnet, "fastnet_m", (32, 64, 128, 256)))
register_backbone("fastnet_s")(partial(_fastnet, "fastnet_s", (16, 32, 64, 128)))


@register_backbone("fastnet_w")
def fastnet_w() -> Backbone:
    """airbench94's network (whitening stem, blocks of 64/256/256): 3 x 3 maps at 32 px."""
    return Backbone("fastnet_w", fastnet_w_parts(), out_channels=256, stride=8, native_size=64)


def _cifar_resnet(depth: int) -> Backbone:
    return Backbone(f"resnet{depth}", cifar_resnet_layers(depth), out_channels=64, stride=4, tv_head=("linear",),
                    native_size=32)


register_backbone("resnet20")(partial(_cifar_resnet, 20))
register_backbone("resnet56")(partial(_cifar_resnet, 56))


# --- torchvision ------------------------------------------------------------------------------------------------

# A part is a module name of the torchvision model, or (new name, function of the model giving the module).
Part = Union[str, tuple[str, Callable[[nn.Module], nn.Module]]]
_RESNET: tuple[Part, ...] = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_GOOGLENET: tuple[Part, ...] = (
    "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
    "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4", "inception5a", "inception5b",
)
_INCEPTION: tuple[Part, ...] = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
)


class ImageLayerNorm2d(nn.LayerNorm):
    """A LayerNorm over the channels whose statistics are those of the image's spatially averaged feature vector:
    every location ``f`` becomes ``(f - mean(v)) / sqrt(var(v) + eps) * weight + bias`` with ``v`` the mean of the map.

    The spatial mean of the result is the LayerNorm of the pooled vector, so a global-average head on it gives the
    logits of torchvision's ConvNeXt (pool, then LayerNorm2d, then Linear) exactly, while the map stays a map whose
    class maps average to the logits (localize's exact FCN). A LayerNorm subclass: same parameters and keys."""

    @classmethod
    def like(cls, norm: nn.Module) -> "ImageLayerNorm2d":
        """A new layer with ``norm``'s shape, eps and affine parameters."""
        out = cls(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine)  # type: ignore[arg-type]
        if norm.elementwise_affine:
            out.load_state_dict(norm.state_dict())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.mean(dim=(2, 3), keepdim=True)  # N x C x 1 x 1
        mean = v.mean(dim=1, keepdim=True)
        var = v.var(dim=1, keepdim=True, unbiased=False)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return y


def pooled_patchify_stem(features: nn.Sequential) -> None:
    """ConvNeXt's stem (a k x k convolution with stride k, then a LayerNorm) made overlapping: stride k/2 with
    padding k/4, then a 3 x 3 max pool with stride 2, then the LayerNorm; same output size, same tensor names and
    shapes (pretrained weights still load). From scratch on small data the patchify stem stays linear and aligned to
    its grid, and ConvNeXt-T stays at chance on builtin:shapes in 200 steps whatever the optimiser, normalisation or
    augmentation; the pool gives it a rectified, shift-tolerant first feature (bench/convnext_scratch.py)."""
    conv, norm = features[0][0], features[0][1]
    k = conv.kernel_size[0]
    pooled = nn.Conv2d(conv.in_channels, conv.out_channels, k, stride=k // 2, padding=k // 4, bias=conv.bias is not None)
    nn.init.trunc_normal_(pooled.weight, std=0.02)  # torchvision's ConvNeXt initialisation
    if pooled.bias is not None:
        nn.init.zeros_(pooled.bias)
    features[0] = nn.Sequential(OrderedDict([("0", pooled), ("pool", nn.MaxPool2d(3, 2, 1)), ("1", norm)]))


def _spec(parts: Sequence[Part], head: str | None, width_from: str, **extra) -> dict:
    """``head``: the source classifier layer (mappable onto a gapvision head) or None; ``width_from``: a layer whose
    input width is the feature map's channel count."""
    return {"parts": tuple(parts), "tv_head": (head,) if head else (), "width_from": width_from, **extra}


_TORCHVISION: dict[str, dict] = {
    **{n: _spec(_RESNET, "fc", "fc") for n in ("resnet18", "resnet34", "resnet50")},
    # The pretrained GoogLeNet/Inception expect transform_input, i.e. inputs normalised with mean = std = 0.5.
    "googlenet": _spec(_GOOGLENET, "fc", "fc", tv_normalize="half"),
    "inception_v3": _spec(_INCEPTION, "fc", "fc", tv_normalize="half", native_size=299),
    "mobilenet_v2": _spec(("features",), "classifier.1", "classifier.1"),
    "mobilenet_v3_small": _spec(("features",), None, "classifier.0"),  # 2-layer MLP classifier: not mappable
    "mobilenet_v3_large": _spec(("features",), None, "classifier.0"),
    "efficientnet_b0": _spec(("features",), "classifier.1", "classifier.1"),
    # ConvNeXt's classifier starts with a LayerNorm2d of the pooled features; it stays in the backbone as ``norm``,
    # an ImageLayerNorm2d (each location normalised with the pooled vector's statistics): gap == torchvision's logits.
    "convnext_tiny": _spec(
        ("features", ("norm", lambda m: ImageLayerNorm2d.like(m.classifier[0]))), "classifier.2", "classifier.2",
        tv_rename={"classifier.0": "norm"}, stems={"pooled": lambda b: pooled_patchify_stem(b.features)},
    ),
    "densenet121": _spec(("features", ("relu", lambda m: nn.ReLU(inplace=False))), "classifier", "classifier"),
    "shufflenet_v2_x1_0": _spec(("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"), "fc", "fc"),
    **{
        n: _spec(("features",), "classifier.1", "classifier.1", stride=16, conv_head_relu=True, default_head="conv")
        for n in ("squeezenet1_0", "squeezenet1_1")
    },
    "regnet_y_400mf": _spec(("stem", "trunk_output"), "fc", "fc"),
    "mnasnet1_0": _spec(("layers",), "classifier.1", "classifier.1"),
}


def _torchvision_backbone(name: str) -> Backbone:
    import torchvision

    spec = dict(_TORCHVISION[name])
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    parts: dict[str, nn.Module] = {}
    for part in spec.pop("parts"):
        key, module = (part, model.get_submodule(part)) if isinstance(part, str) else (part[0], part[1](model))
        parts[key] = module
    width_layer = model.get_submodule(spec.pop("width_from"))
    width = getattr(width_layer, "in_features", None) or width_layer.in_channels
    return Backbone(name, parts, out_channels=width, stride=spec.pop("stride", 32), **spec)


for _name in _TORCHVISION:
    register_backbone(_name)(partial(_torchvision_backbone, _name))


def _vgg(name: str) -> Backbone:
    """VGG's ``features`` only: its 3-layer classifier (100M+ parameters) is never built."""
    from torchvision.models.vgg import cfgs, make_layers

    cfg = cfgs[{"vgg11": "A", "vgg16": "D", "vgg19": "E"}[name.removesuffix("_bn")]]
    features = make_layers(cfg, batch_norm=name.endswith("_bn"))
    for m in features.modules():  # torchvision's VGG initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    width = [c for c in cfg if isinstance(c, int)][-1]
    backbone = Backbone(name, {"features": features}, out_channels=width, stride=32)
    return backbone if name.endswith("_bn") else init_without_bn(backbone)


for _name in ("vgg11", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn", "vgg19_bn"):
    register_backbone(_name)(partial(_vgg, _name))

