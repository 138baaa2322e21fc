"""``to_fcn``: a fully-convolutional copy of a trained Classifier that outputs K class (logit) maps at any input size.

How each head becomes convolutional (f = the backbone's C x h x w map, W/b = the classifier's Linear weight/bias):

=========== =================================================== ===============================================
head        logit map at location (y, x)                        relation to the model's logits
=========== =================================================== ===============================================
gap         W f(y, x) + b        (1x1 conv, same weights)       spatial mean of the map == logits (exact)
avgmax      W (f(y, x) + max f) / 2 + b                         spatial mean == logits (exact)
catavgmax   W [f(y, x); max f] + b                              spatial mean == logits (exact)
conv        the head's own 1x1 conv (+ ReLU)                    spatial mean == logits (exact)
fc          k x k conv (first Linear) -> ReLU -> 1x1 conv        sliding window: exact at the training size (1x1)
gmp         W f(y, x) + b        (the per-location classifier)  logits == W (max f) + b; when one location holds
                                                                the max of every channel the map's value there
                                                                equals the logits; in general not a reduction
=========== =================================================== ===============================================

For avgmax/catavgmax the global-max term is the same at every location, so the map's spatial pattern is that of
the plain CAM ``W f(y, x)``; it only shifts each class map by a constant so that the mean stays exact.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.classifier import Classifier
from ..models.heads import Head

#: How a head's logits relate to its FCN map: "mean" (exact), "window" (fc: exact at the training size) or "none".
REDUCTION = {"gap": "mean", "avgmax": "mean", "catavgmax": "mean", "conv": "mean", "fc": "window", "gmp": "none"}


class PooledMapHead(nn.Module):
    """The Linear classifier of a pooled head applied at every location (a 1x1 conv with the same weights)."""

    def __init__(self, linear: nn.Linear, mix: str):
        super().__init__()
        self.linear = linear
        self.mix = mix  # "local" (gap, gmp), "avgmax" or "catavgmax"

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        w, b = self.linear.weight, self.linear.bias
        c = f.shape[1]
        local_w = w[:, :c] if self.mix == "catavgmax" else w
        out = F.conv2d(f, local_w[:, :, None, None])
        if self.mix == "local":
            return out if b is None else out + b[None, :, None, None]
        fmax = f.amax(dim=(2, 3))  # N x C
        if self.mix == "avgmax":
            out, glob = 0.5 * out, 0.5 * F.linear(fmax, w)
        else:
            glob = F.linear(fmax, w[:, c:])
        if b is not None:
            glob = glob + b
        return out + glob[:, :, None, None]


class FCN(nn.Module):
    """``backbone`` followed by a convolutional ``map_head``: ``forward(x)`` gives N x K x h' x w' logit maps.

    ``stride`` is the input pixels per map cell and ``offset`` = (y, x) the input pixel at the centre of map cell
    (0, 0), so cell (i, j) is centred on pixel (offset[0] + stride * i, offset[1] + stride * j). ``window`` is the
    feature cells one map cell sees (fc heads: the training-size map, else 1x1); ``reduction`` says how the maps
    relate to the model's logits (see the module docstring).
    """

    def __init__(self, backbone: nn.Module, map_head: nn.Module, kind: str, stride: int, window: tuple[int, int],
                 offset: tuple[float, float] | None = None):
        super().__init__()
        self.backbone = backbone
        self.map_head = map_head
        self.kind = kind
        self.stride = int(stride)
        self.window = window
        self.reduction = REDUCTION[kind]
        self.offset = offset if offset is not None else ((self.stride - 1) / 2, (self.stride - 1) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.backbone(x)
        if self.window != (1, 1) and (fmap.shape[-2] < self.window[0] or fmap.shape[-1] < self.window[1]):
            raise ConfigError(
                f"the fc head needs at least a {self.window[0]}x{self.window[1]} feature map (the training input size);"
                f" this input gives {fmap.shape[-2]}x{fmap.shape[-1]}: use a larger image or a smaller --scale"
            )
        return self.map_head(fmap)

    def logits(self, logit_map: torch.Tensor) -> torch.Tensor:
        """Image-level logits from the maps: the spatial mean (exact for gap/avgmax/catavgmax/conv, and for fc at
        the training size); for gmp the per-location maximum (an approximation, see the module docstring)."""
        return logit_map.amax(dim=(2, 3)) if self.reduction == "none" else logit_map.mean(dim=(2, 3))


def feature_offset(backbone: nn.Module, stride: int, in_channels: int, cells: int = 12) -> tuple[float, float]:
    """The input pixel (y, x) at the centre of feature cell (0, 0), measured once: the centroid of the input
    gradient of a central cell on a random image, minus ``stride`` times its index. Max-pooling nets centre cells
    at (stride - 1) / 2, nets with padded stride-2 convolutions (ResNet, MobileNet) near 0; assuming one for the
    other shifts every map by half a cell."""
    fallback = ((stride - 1) / 2, (stride - 1) / 2)
    try:
        device = next(backbone.parameters()).device
        size = stride * cells
        x = torch.randn(1, in_channels, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        x.requires_grad_(True)
        with torch.enable_grad():
            fmap = backbone(x)
            cy, cx = fmap.shape[-2] // 2, fmap.shape[-1] // 2
            (grad,) = torch.autograd.grad(fmap[0, :, cy, cx].sum(), x)
    except (RuntimeError, StopIteration):
        return fallback
    g = grad.abs().sum(dim=(0, 1)).double()
    total = float(g.sum())
    if not total > 0:
        return fallback
    pos = torch.arange(size, dtype=torch.float64, device=g.device)
    y = float((g.sum(dim=1) * pos).sum()) / total - stride * cy
    x_ = float((g.sum(dim=0) * pos).sum()) / total - stride * cx
    return (round(y, 2), round(x_, 2))


def to_fcn(model: nn.Module) -> FCN:
    """A fully-convolutional copy of ``model`` (a gapvision Classifier, in eval mode; the original is untouched)."""
    if not isinstance(model, Classifier) or not isinstance(getattr(model, "head", None), Head):
        raise ConfigError(
            f"to_fcn needs a gapvision Classifier (backbone + head), got {type(model).__name__}: build the network with "
            "gapvision.create_model(...) or `--model NAME --weights FILE`; any CNN still works with --method gradcam"
        )
    head: Head = model.head
    if head.kind not in REDUCTION:
        raise ConfigError(f"to_fcn does not know the head {head.kind!r}; supported: {', '.join(REDUCTION)}")
    backbone = copy.deepcopy(model.backbone).eval()
    classifier = copy.deepcopy(head.classifier).eval()
    window = (1, 1)
    if head.kind == "conv":
        map_head: nn.Module = classifier
    elif head.kind == "fc":
        window = head.pool.feature_size  # type: ignore[union-attr]
        map_head = _fc_as_conv(classifier, window)
    else:
        mix = {"avgmax": "avgmax", "catavgmax": "catavgmax"}.get(head.kind, "local")
        map_head = PooledMapHead(classifier, mix)  # type: ignore[arg-type]
    stride = int(getattr(model.backbone, "stride", 1))
    in_channels = int(getattr(model.config, "in_channels", 0) or _first_conv_in(backbone))
    oy, ox = feature_offset(backbone, stride, in_channels)
    # a window of k feature cells is centred (k - 1) / 2 cells after its first one
    offset = (oy + stride * (window[0] - 1) / 2, ox + stride * (window[1] - 1) / 2)
    return FCN(backbone, map_head, head.kind, stride, window, offset).eval()


def _first_conv_in(module: nn.Module) -> int:
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return int(conv.in_channels) if conv is not None else 3


def _fc_as_conv(mlp: nn.Sequential, window: tuple[int, int]) -> nn.Sequential:
    """Linear(C*h*w, H) -> ReLU -> Dropout -> Linear(H, K) as Conv2d(C, H, (h, w)) -> ReLU -> Conv2d(H, K, 1)."""
    first, last = mlp[0], mlp[-1]
    if not (isinstance(first, nn.Linear) and isinstance(last, nn.Linear)):
        raise ConfigError("to_fcn: this fc head is not Linear -> ReLU -> Linear and cannot be made convolutional")
    h, w = window
    hidden = first.out_features
    conv1 = nn.Conv2d(first.in_features // (h * w), hidden, (h, w), bias=first.bias is not None)
    conv2 = nn.Conv2d(hidden, last.out_features, 1, bias=last.bias is not None)
    with torch.no_grad():  # flatten order is C, h, w: the Linear's rows reshape to conv kernels directly
        conv1.weight.copy_(first.weight.view(hidden, -1, h, w))
        conv2.weight.copy_(last.weight[:, :, None, None])
        if first.bias is not None:
            conv1.bias.copy_(first.bias)  # type: ignore[union-attr]
        if last.bias is not None:
            conv2.bias.copy_(last.bias)  # type: ignore[union-attr]
    middle = [m for m in list(mlp)[1:-1] if not isinstance(m, nn.Dropout)]
    return nn.Sequential(conv1, *copy.deepcopy(middle), conv2).to(first.weight.device)
