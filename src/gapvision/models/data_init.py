"""Data-dependent initialisation of networks without normalisation layers (after Krähenbühl et al. 2016,
"Data-dependent initializations of convolutional neural networks", and LSUV, Mishkin & Matas 2016).

A plain ReLU conv net (gapcnn, cifarcnn, VGG without ``_bn``) started from Kaiming-normal weights stays on the
plateau at chance on builtin:shapes for hundreds of steps whatever the lr: its features have a large common mode
(every image gives nearly the same pooled vector). Going through the convolutions in order, each one is measured on a
batch of training images and rescaled, channel by channel, by the statistics of what its ReLU passes on:
``z <- (z - mean(relu z)) / std(relu z)``. Every channel then has a comparable scale and a negative offset, so that
about a third of its units are active on the data rather than a half (or all, or none, for channels whose mean is far
from zero) -- the start BatchNorm would give a network, folded into the weights once. Standardising the convolution's
output itself (zero mean, unit variance before the ReLU) was measured too and stays on the plateau like Kaiming.
Measured on builtin:shapes at 64 px, batch 16, AdamW 1e-3, Dropout2d in place (``python bench/no_bn_defaults.py``):
gapcnn's validation accuracy leaves chance within 300-400 steps (0.885 after 400, 0.993 after 500) where the Kaiming
start is still at 0.25 after 600.

Only spatial convolutions (larger than 1 x 1) are rescaled; 1 x 1 ones keep the builder's weights. SqueezeNet, whose
Fire modules are mostly 1 x 1 (a squeeze to 16-64 channels, then 1 x 1 and 3 x 3 expansions side by side), stays at
chance when every convolution is rescaled and learns when only its spatial ones are (validation accuracy after 2
epochs, ``gapvision train --data builtin:shapes --model squeezenet1_0 --epochs 2 --img-size 64 --seed S``, whitened
first convolution, seeds 0 / 1 / 2: SqueezeNet 1.0 0.395 / 0.253 / 0.258 before, 0.863 / 0.880 / 0.887 after;
1.1 0.360 / 0.282 / 0.310 before, 0.568 / 0.367 / 0.720 after); gapcnn, cifarcnn and VGG have only spatial
convolutions.
"""
from __future__ import annotations

import torch
from torch import nn


class _Reached(Exception):
    """Raised by a hook on the module where a forward pass stops, with that module and its input or output: the
    rest of the forward is not needed."""

    def __init__(self, module: nn.Module, tensor: torch.Tensor):
        super().__init__()
        self.module, self.tensor = module, tensor


def _raise_input(module: nn.Module, inputs: tuple) -> None:
    raise _Reached(module, inputs[0])


def _raise_output(module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
    raise _Reached(module, out)


def run_until(module: nn.Module, x: torch.Tensor, stops: list[nn.Module],
              at: str = "output") -> tuple[nn.Module, torch.Tensor] | None:
    """Run ``module`` on ``x`` until its forward pass reaches the first of ``stops`` and return that module with its
    input (``at="input"``, before it runs) or its output; None when the pass reaches none of them. The module's mode
    is the caller's; the hooks are removed."""
    hooks = [m.register_forward_pre_hook(_raise_input) if at == "input" else m.register_forward_hook(_raise_output)
             for m in stops]
    try:
        module(x)
        return None
    except _Reached as reached:
        return reached.module, reached.tensor
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def data_dependent_init(module: nn.Module, x: torch.Tensor, eps: float = 1e-6) -> int:
    """Rescale each spatial (larger than 1 x 1) ``nn.Conv2d`` of ``module`` in forward order, channel by channel:
    ``z <- (z - m) / s`` with ``m``, ``s`` the mean and standard deviation of ``relu(z)`` over the batch ``x`` (run
    through ``module`` in eval mode up to that convolution, with the earlier ones already set). A channel that is
    never active keeps its scale; a convolution without bias is only scaled. Returns the number of convolutions set
    (on the forward path or not); the module's mode is restored."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    was_training = module.training
    module.eval()
    try:
        for conv in convs:
            reached = run_until(module, x, [conv])
            if reached is None:
                continue  # not on the forward path (an unused branch): left as it is
            active = reached[1].float().clamp_min(0)  # what the ReLU after it passes on
            mu, sigma = active.mean(dim=(0, 2, 3)), active.std(dim=(0, 2, 3))
            gain = torch.where(sigma > eps, 1.0 / sigma, torch.ones_like(sigma))
            conv.weight.mul_(gain.view(-1, 1, 1, 1).to(conv.weight.dtype))
            if conv.bias is not None:
                conv.bias.copy_(((conv.bias - mu) * gain).to(conv.bias.dtype))
    finally:
        module.train(was_training)
    return len(convs)
