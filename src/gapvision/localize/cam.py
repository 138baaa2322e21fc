"""Where the evidence for each class lies: exact class maps (one forward pass, all classes), CAM and Grad-CAM.

* :func:`class_maps` -- the FCN's logit maps and per-location probabilities (softmax over classes, or sigmoid for
  multi-label use) for every class at once; no backward pass.
* :func:`cam` -- Zhou et al.'s class activation maps. For a GAP model the CAM *is* the logit class map (plus the
  class bias, a constant per class); for avgmax/catavgmax it differs from it by a constant per class.
* :func:`grad_cam` -- Selvaraju et al.'s Grad-CAM for any CNN and any layer (default: the last feature map), batched
  over images, one backward pass per requested class rank. Own hooks (about 40 lines) rather than pytorch-grad-cam:
  that library computes one target per call, rescales every map to [0, 1] with OpenCV and would add OpenCV as a
  dependency, while we need raw, batched maps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .fcn import FCN


@dataclass
class ClassMaps:
    """Per-location class evidence for a batch (maps N x K x h x w, ``image_logits`` N x K).

    ``logits``: the FCN's logit maps; ``evidence``: the logits minus the background reference (equal to ``logits``
    without one); ``probs``: per-location probabilities.
    """

    logits: torch.Tensor
    evidence: torch.Tensor
    probs: torch.Tensor
    image_logits: torch.Tensor
    stride: int
    offset: tuple[float, float]


@torch.inference_mode()
def class_maps(fcn: FCN, x: torch.Tensor, multilabel: bool = False,
               reference: torch.Tensor | None = None, smooth: int = 1) -> ClassMaps:
    """All K class maps of ``x`` (N x C x H x W, normalised) in one forward pass.

    ``probs`` is the softmax over classes at each location, or a sigmoid per class with ``multilabel``. With a
    ``reference`` (K logits of "no object", see :func:`background_reference`) the softmax runs over the evidence
    ``logits - reference`` plus a background logit 0, so that plain background gets probability 1/(K+1) per class
    instead of whichever class the model uses as its default. ``image_logits`` are the model's logits recovered
    from the maps (exact for gap/avgmax/catavgmax/conv heads, see :mod:`.fcn`). ``smooth`` (odd) > 1 averages the logit
    maps over ``smooth`` x ``smooth`` cells first (the MATLAB recipe's k x k kernel): each location then speaks for
    a window, as the pooled classifier does for the whole image, which calms noisy maps (SqueezeNet's).
    """
    logits = fcn(x)
    image_logits = fcn.logits(logits)
    if smooth > 1:
        logits = F.avg_pool2d(logits, smooth, stride=1, padding=smooth // 2, count_include_pad=False)
    where = (fcn.stride, fcn.offset)
    if multilabel:
        return ClassMaps(logits, logits, torch.sigmoid(logits), image_logits, *where)
    if reference is None:
        return ClassMaps(logits, logits, torch.softmax(logits, dim=1), image_logits, *where)
    evidence = logits - reference.to(logits)[None, :, None, None]
    with_bg = torch.cat([evidence, torch.zeros_like(evidence[:, :1])], dim=1)
    return ClassMaps(logits, evidence, torch.softmax(with_bg, dim=1)[:, :-1], image_logits, *where)


@torch.inference_mode()
def background_reference(fcn: FCN, in_channels: int, size: int) -> torch.Tensor:
    """The logits (K) the model gives "nothing": the median over locations of the class maps of a blank image (the
    normalisation mean colour, i.e. zeros after normalising) of ``size`` x ``size`` pixels."""
    device = next(fcn.parameters()).device
    maps = fcn(torch.zeros(1, in_channels, size, size, device=device))
    return maps.flatten(2).median(dim=2).values[0]


def cam(fcn: FCN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class activation maps (N x K x h x w, the logit class maps) and the image logits (N x K)."""
    maps = class_maps(fcn, x)
    return maps.logits, maps.image_logits


def upsample(maps: torch.Tensor, size: tuple[int, int], stride: float | None = None,
             offset: tuple[float, float] | None = None) -> torch.Tensor:
    """Bilinear upsampling of N x k x h x w maps to ``size`` = (H, W) pixels.

    With ``stride`` and ``offset`` (see :class:`~gapvision.localize.fcn.FCN`) map cell (i, j) lands exactly on
    pixel (offset[0] + stride * i, offset[1] + stride * j), edges extended; without them cells are spread evenly
    over the image (cell centres at (i + 0.5) * H / h).
    """
    maps = maps.float()
    h, w = maps.shape[-2:]
    if stride is None or offset is None:
        if (h, w) == tuple(size):
            return maps
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    dev = maps.device
    gy = _grid_axis(size[0], h, stride, offset[0], dev)
    gx = _grid_axis(size[1], w, stride, offset[1], dev)
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)  # H x W x (x, y)
    n, k = maps.shape[:2]
    out = F.grid_sample(maps.reshape(n * k, 1, h, w), grid[None].expand(n * k, -1, -1, -1), mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.reshape(n, k, *size)


def _grid_axis(pixels: int, cells: int, stride: float, offset: float, device: torch.device) -> torch.Tensor:
    """Normalised sampling coordinates (align_corners=True convention) of pixels 0..pixels-1 along one axis."""
    u = (torch.arange(pixels, dtype=torch.float32, device=device) - offset) / stride  # in cell units
    return 2 * u / (cells - 1) - 1 if cells > 1 else torch.zeros_like(u)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale every map of N x k x h x w to [0, 1]. A flat map (e.g. one cell: an image no larger than the
    network's stride) says nothing about where the object is, so it becomes 1 everywhere: the whole image."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    flat = (hi - lo) <= 1e-12
    return torch.where(flat, torch.ones_like(maps), (maps - lo) / (hi - lo).clamp_min(1e-12))


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """``layer`` as a module: a dotted name (``backbone.stage3``), a module, or None for the last feature map (a
    gapvision Classifier's or FCN's backbone output, otherwise the network's last Conv2d)."""
    if isinstance(layer, nn.Module):
        return layer
    if layer:
        try:
            return model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_children()]
            raise ConfigError(f"--layer {layer!r} is not a module of this model (top-level modules: "
                              f"{', '.join(names)}; use a dotted name such as backbone.{names[0] if names else 'x'})"
                              ) from None
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no Conv2d layer: Grad-CAM needs a CNN or an explicit --layer")
    return convs[-1]


def grad_cam(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor, layer: str | nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps (N x k x h x w, ReLU'd, unnormalised) of ``classes`` (N x k class indices: the j-th map of
    image i explains class ``classes[i, j]``) at ``layer``, and the model's logits (N x K).

    ``model`` is any CNN returning logits. One backward pass per column of ``classes``, shared by the whole batch.
    """
    target = resolve_layer(model, layer)
    saved: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        saved.append(output)
        return output.clone()  # later in-place ops (ReLU(inplace=True)) must not change the saved activations

    handle = target.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
    finally:
        handle.remove()
    if not saved or not isinstance(saved[-1], torch.Tensor) or saved[-1].dim() != 4:
        raise ConfigError(f"Grad-CAM layer {type(target).__name__} gave no N x C x h x w feature map")
    acts = saved[-1]
    classes = classes.to(logits.device).long()
    maps = []
    for j in range(classes.shape[1]):
        score = logits.gather(1, classes[:, j : j + 1]).sum()
        (grads,) = torch.autograd.grad(score, acts, retain_graph=j + 1 < classes.shape[1])
        weights = grads.mean(dim=(2, 3), keepdim=True)
        maps.append(F.relu((weights * acts).sum(dim=1)))
    return torch.stack(maps, dim=1).detach(), logits.detach()
