"""CAM methods from pytorch-grad-cam (``pip install 'gapvision[cam]'``), as maps in :mod:`.cam`'s format.

``--method gradcam++|scorecam|layercam|eigencam|xgradcam`` go through the maintained library; our own ``fcn``,
``cam`` and ``gradcam`` stay (exact, one pass, no extra dependency). :func:`library_cam` returns what
:func:`.cam.grad_cam` returns -- N x k maps at the layer's resolution (the j-th map of image i explains class
``classes[i, j]``) and the N x K logits -- so the maps flow into the same boxes, JSON and ``--evaluate`` path.

Batched over images *and* classes: the N images are repeated k times and explained in one library call (one
forward and one backward pass for the gradient methods) with one target per copy. The library's maps are kept at
the layer's resolution (its resize to the input is turned off) and come min-max scaled to [0, 1] per map, which
:func:`.cam.normalize_maps` leaves unchanged. EigenCAM is class-agnostic (the first principal component of the
activations): every class of an image gets the same map.
"""
from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn

from ..choices import LIBRARY_CAM_METHODS
from ..errors import ConfigError
from ..optional import require
from .cam import grad_cam, resolve_layer

#: --method name -> pytorch_grad_cam class name
LIBRARY_METHODS: dict[str, str] = LIBRARY_CAM_METHODS  # pytorch-grad-cam's methods by our name


def library_cam(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, method: str,
                layer: str | nn.Module | None = None, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (N x k x h x w, each in [0, 1]) of ``classes`` (N x k indices) at ``layer`` by pytorch-grad-cam's
    ``method`` (a key of :data:`LIBRARY_METHODS`, or ``GradCAM`` by its class name), and the logits (N x K).

    ``batch_size``: ScoreCAM's masked images per forward pass.
    """
    lib = require("pytorch_grad_cam", f"--method {method}")
    name = LIBRARY_METHODS.get(method, method)
    if not hasattr(lib, name):
        raise ConfigError(f"unknown CAM method {method!r}: choose {', '.join(LIBRARY_METHODS)}")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    target = resolve_layer(model, layer)
    was_training = model.training
    n, k = classes.shape
    explainer = getattr(lib, name)(model=model, target_layers=[target])
    explainer.compute_input_gradient = True  # gradients reach the layer even when the backbone is frozen
    if hasattr(explainer, "batch_size"):
        explainer.batch_size = batch_size
    store = explainer.activations_and_grads  # keep the maps at the layer's resolution (the library resizes to this)
    explainer.get_target_width_height = lambda _x: tuple(int(d) for d in store.activations[-1].shape[:-3:-1])
    targets = [ClassifierOutputTarget(int(c)) for c in classes.reshape(-1).tolist()]
    quiet = nullcontext()
    if name == "ScoreCAM":  # it draws a tqdm bar per image and class
        quiet = mock.patch("pytorch_grad_cam.score_cam.tqdm", SimpleNamespace(tqdm=lambda it, **_: it))
    try:
        with torch.enable_grad(), quiet:
            maps: Any = explainer(input_tensor=x.detach().repeat_interleave(k, dim=0), targets=targets)
        logits = explainer.outputs.detach()[::k]
    finally:
        explainer.activations_and_grads.release()
        model.zero_grad(set_to_none=True)  # the library's backward() leaves gradients in the model
        model.train(was_training)
    out = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).to(x.device)
    if out.dim() != 3:
        raise ConfigError(f"{name} at {type(target).__name__} gave no N x h x w maps")
    return out.reshape(n, k, *out.shape[-2:]), logits


def explain(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, method: str = "gradcam",
            layer: str | nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient-style maps of ``classes`` by ``method``: our Grad-CAM (``gradcam``) or a pytorch-grad-cam method."""
    if method == "gradcam":
        return grad_cam(model, x, classes, layer)
    return library_cam(model, x, classes, method, layer)
