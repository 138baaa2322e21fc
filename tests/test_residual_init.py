"""Zero-initialised residual branches (models/residual_init.py): which layers are found, and that the blocks start
as the identity."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from gapvision.models.residual_init import residual_branch_norms, zero_init_residual


class Block(nn.Module):
    """``x + bn(conv(x))`` (identity shortcut) or, with ``project``, ``bn(conv(x)) + bn_p(conv_p(x))``."""

    def __init__(self, c: int, project: bool = False, inplace: bool = False):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.proj = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)) if project else None
        self.inplace = inplace

    def forward(self, x):
        out = self.bn(self.conv(x))
        shortcut = x if self.proj is None else self.proj(x)
        if self.inplace:
            out += shortcut
            return out
        return shortcut + out


def test_finds_the_norm_that_ends_each_identity_branch_and_not_projections():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        Block(8), Block(8, project=True), Block(8, inplace=True), nn.BatchNorm2d(8))
    found = residual_branch_norms(net, torch.randn(2, 3, 8, 8))
    # the stem's BN is a normalised tensor, but what is added to it is computed, not a block's input; the projected
    # block adds two computed tensors; the last BN is added to nothing
    assert found == [net[3].bn, net[5].bn]
    assert net.training  # the mode is restored


def test_a_relu_applied_in_place_after_the_norm_is_not_a_residual_branch():
    class PostAct(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            torch.relu_(y)  # y is no longer the norm's output
            return x + y

    assert residual_branch_norms(PostAct(), torch.randn(2, 4, 4, 4)) == []


def test_resnet18_identity_blocks_start_as_the_identity():
    net = torchvision.models.resnet18(num_classes=4)
    x = torch.randn(2, 3, 64, 64)
    identity_blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer
                       if b.downsample is None]
    assert zero_init_residual(net, x) == len(identity_blocks) == 5
    assert all(int(torch.count_nonzero(b.bn2.weight)) == 0 for b in identity_blocks)
    assert all(int(torch.count_nonzero(b.bn2.weight)) > 0 for b in (net.layer2[0], net.layer3[0], net.layer4[0]))
    net.eval()
    h = torch.relu(torch.randn(2, 64, 16, 16))
    with torch.no_grad():
        assert torch.allclose(net.layer1[0](h), h)  # relu(h + 0) on a non-negative input


def test_inverted_residuals_of_mobilenets_are_found():
    for build, attr in ((torchvision.models.mobilenet_v2, "conv"), (torchvision.models.mobilenet_v3_small, "block")):
        net = build(num_classes=4)
        blocks = [m for m in net.modules() if getattr(m, "use_res_connect", False)]
        found = residual_branch_norms(net, torch.randn(2, 3, 64, 64))
        last_norms = [[n for n in getattr(b, attr).modules() if isinstance(n, nn.BatchNorm2d)][-1] for b in blocks]
        assert len(found) == len(blocks) > 0 and all(any(f is n for n in last_norms) for f in found)


def test_networks_without_residual_additions_are_left_alone():
    net = torchvision.models.vgg11_bn(num_classes=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert zero_init_residual(net, torch.randn(2, 3, 64, 64)) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_timm_networks_are_found_the_same_way():
    timm = pytest.importorskip("timm", reason="timm is not installed")
    net = timm.create_model("resnet18", num_classes=4)
    identity_blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer
                       if b.downsample is None]
    assert residual_branch_norms(net, torch.randn(2, 3, 64, 64)) == [b.bn2 for b in identity_blocks]
