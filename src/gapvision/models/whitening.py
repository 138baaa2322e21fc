"""A frozen patch-whitening first layer (airbench, Jordan 2024; hlb-CIFAR10): the network's first convolution set
once from the training data and not trained.

The ``k x k`` patches of a sample of training images (C*k*k values each) have a covariance ``S = V diag(e) V^T``.
The layer's filters are the eigenvectors scaled by ``1/sqrt(e + eps)``, each once with each sign (2*C*k*k output
channels), so that its outputs are decorrelated, unit-variance patch components and the GELU after it passes either
half. Only the bias is trained. ``width`` keeps the output width of an RGB layer for grey input (the filters past
2*C*k*k are zero). Before :meth:`PatchWhitening.init_from_data` the filters are the identity basis
(every pixel of the patch, both signs), so an uninitialised layer is still a valid convolution.
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
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1)  # N x C x H' x W' x k x k
        flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
        cov = flat.T @ flat / len(flat)
        values, vectors = torch.linalg.eigh(cov)  # ascending
        values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
        filters = (vectors.T / torch.sqrt(values + self.eps)[:, None]).reshape(-1, c, k, k)
        self.weight.zero_()
        self.weight[: 2 * len(filters)] = torch.cat([filters, -filters]).to(self.weight)
        self.bias.zero_()

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, frozen weight"


def init_whitening(module: nn.Module, x: torch.Tensor) -> int:
    """Initialise every PatchWhitening in ``module`` from the batch ``x`` (they must be first layers: ``x`` is their
    input); returns how many there were."""
    layers = [m for m in module.modules() if isinstance(m, PatchWhitening)]
    for m in layers:
        m.init_from_data(x)
    return len(layers)
