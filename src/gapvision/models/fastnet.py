"""``fastnet``: a small BatchNorm conv net for fast training on CPUs and small images (after airbench / ResNet-9).

A stem conv, then three blocks of conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU. Each block halves the
resolution (output stride 8), so 32 px inputs give a 4 x 4 map for a global-pooling head. No biases before BN.
``fastnet_w`` is airbench94's network: the stem is a frozen 2 x 2 patch-whitening convolution (models/whitening.py,
set from the training images) + GELU, so 32 px inputs give a 3 x 3 map.
"""
from __future__ import annotations

from torch import nn

from .whitening import PatchWhitening


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, pool: bool = False):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.BatchNorm2d(cout, momentum=0.2), nn.GELU()]
        super().__init__(*layers)


class FastBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(ConvBN(cin, cout, pool=True), ConvBN(cout, cout))


def fastnet_parts(widths: tuple[int, int, int, int] = (32, 64, 256, 256)) -> dict[str, nn.Module]:
    """The named parts of a fastnet: ``stem``, ``block1``..``block3``; widths = (stem, block1, block2, block3)."""
    w0, w1, w2, w3 = widths
    return {"stem": ConvBN(3, w0), "block1": FastBlock(w0, w1), "block2": FastBlock(w1, w2), "block3": FastBlock(w2, w3)}


def fastnet_w_parts(widths: tuple[int, int, int] = (64, 256, 256)) -> dict[str, nn.Module]:
    """The named parts of a whitened fastnet: ``stem`` (PatchWhitening 3 -> 24 channels, GELU), ``block1``..``block3``."""
    whiten = PatchWhitening(3, 2)
    w1, w2, w3 = widths
    return {"stem": nn.Sequential(whiten, nn.GELU()), "block1": FastBlock(whiten.out_channels, w1),
            "block2": FastBlock(w1, w2), "block3": FastBlock(w2, w3)}
