"""A frozen patch-whitening first layer (airbench, Jordan 2024; hlb-CIFAR10): the network's first convolution set
once from the training data and not trained.

The ``k x k`` patches of a sample of training images (C*k*k values each) have a covariance ``S = V diag(e) V^T``.
The layer's filters are the eigenvectors scaled by ``1/sqrt(e + eps)``, each once with each sign (2*C*k*k output
channels), so that its outputs are decorrelated, unit-variance patch components and the GELU after it passes either
half. Only the bias is trained. ``width`` keeps the output width of an RGB layer for grey input (the filters past
2*C*k*k are zero). Before :meth:`PatchWhitening.init_from_data` the filters are the identity basis
(every pixel of the patch, both signs), so an uninitialised layer is still a valid convolution.

:func:`whiten_first_conv` gives any network trained from scratch the same start without freezing it: its first
convolution's filters set to the leading whitened patch components, each with both signs, and then trained. On
builtin:shapes (random colours and sizes; 1,600 training images, 2 epochs of 100 steps at 64 px) that takes
ResNet-18 from 0.320 to 1.000 validation accuracy and GoogLeNet from 0.355 to 0.998 (``python bench/backbones.py``,
``--init default`` beside the default start): with Kaiming-normal filters their 7x7 stems spend the first few hundred
steps at chance before edge detectors that ignore the colour emerge.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchWhitening(nn.Module):
    """``k x k`` convolution (no padding, stride 1) from ``in_channels`` to ``2 * in_channels * k * k`` channels whose
    weight is a buffer (saved in the state dict, never trained) and whose bias is a parameter; ``width`` output
    channels if given (at least that)."""

    def __init__(self, in_channels: int = 3, kernel_size: int = 2, eps: float = 5e-4, width: int | None = None):
        super().__init__()
        self.in_channels, self.kernel_size, self.eps = in_channels, kernel_size, eps
        d = in_channels * kernel_size * kernel_size
        width = max(2 * d, width or 0)
        basis = torch.eye(d).view(d, in_channels, kernel_size, kernel_size)
        weight = torch.zeros(width, in_channels, kernel_size, kernel_size)
        weight[: 2 * d] = torch.cat([basis, -basis])
        self.register_buffer("weight", weight)
        self.bias = nn.Parameter(torch.zeros(width))

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Set the filters from the patches of the normalised N x C x H x W batch ``x`` (bias reset to 0)."""
        k, c = self.kernel_size, self.in_channels
        filters = whitened_patch_filters(x, (k, k), (1, 1), self.eps).reshape(-1, c, k, k)
        self.weight.zero_()
        self.weight[: 2 * len(filters)] = torch.cat([filters, -filters]).to(self.weight)
        self.bias.zero_()

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, frozen weight"


def whitened_patch_filters(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
                           eps: float = 5e-4) -> torch.Tensor:
    """The eigenvectors of the second-moment matrix of the ``kernel_size`` patches of ``x`` (N x C x H x W, taken
    every ``stride``), largest first, each scaled by ``1/sqrt(eigenvalue + eps)``: a (C*kh*kw) x (C*kh*kw) matrix
    whose rows are flattened filters giving decorrelated, unit-variance outputs on ``x``."""
    cols = F.unfold(x.float(), kernel_size, stride=stride)  # N x C*kh*kw x L
    flat = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    cov = flat.T @ flat / len(flat)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    return vectors.T / torch.sqrt(values + eps)[:, None]


@torch.no_grad()
def whiten_first_conv(module: nn.Module, x: torch.Tensor, eps: float = 5e-4) -> bool:
    """Set the first ``nn.Conv2d`` that ``module``'s forward pass reaches on the batch ``x`` from the patches of its
    input: with ``n`` filters over ``d`` = C*kh*kw inputs, the first ``2m`` (``m = min(n // 2, d)``) become the ``m``
    leading whitened patch components (:func:`whitened_patch_filters`), each once with each sign; the others and the
    bias keep the builder's values, and all stay trainable. False (nothing changed) when the module has no
    convolution on its path or its first one is grouped. The module's mode is restored."""
    from .data_init import run_until

    was_training = module.training
    module.eval()
    try:
        reached = run_until(module, x, [m for m in module.modules() if isinstance(m, nn.Conv2d)], at="input")
    finally:
        module.train(was_training)
    if reached is None or reached[0].groups != 1:
        return False
    conv, inp = reached
    filters = whitened_patch_filters(inp, conv.kernel_size, conv.stride, eps)
    m = min(conv.out_channels // 2, len(filters))
    weight = conv.weight.detach().reshape(conv.out_channels, -1).clone()
    weight[: 2 * m] = torch.cat([filters[:m], -filters[:m]]).to(weight)
    conv.weight.copy_(weight.view(conv.weight.shape))
    return True


def init_whitening(module: nn.Module, x: torch.Tensor) -> int:
    """Initialise every PatchWhitening in ``module`` from the batch ``x`` (they must be first layers: ``x`` is their
    input); returns how many there were."""
    layers = [m for m in module.modules() if isinstance(m, PatchWhitening)]
    for m in layers:
        m.init_from_data(x)
    return len(layers)
