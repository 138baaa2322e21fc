"""Backbones, heads on backbones, freezing and the model summary."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gapvision.errors import ConfigError
from gapvision.models import HEADS, create_backbone, create_model, list_backbones
from gapvision.models.cifar_resnet import BasicBlock
from gapvision.models.classifier import apply_freeze_mode
from gapvision.models.summary import summarize, summary_stats

torch.set_num_threads(1)
MIN_SIZE = {"inception_v3": 75}  # the smallest input each backbone accepts, when above 32


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_forwards_with_declared_channels(name):
    size = MIN_SIZE.get(name, 32)
    for channels in (3, 1):
        backbone = create_backbone(name, in_channels=channels).eval()
        with torch.no_grad():
            fmap = backbone(torch.randn(2, channels, size, size))
        assert fmap.ndim == 4 and fmap.shape[:2] == (2, backbone.out_channels)
        assert backbone.in_channels == channels
        assert backbone.get_submodule(backbone.first_conv.rsplit('.', 1)[0]).weight.shape[1] == channels
    assert backbone.default_head in HEADS and backbone.name == name


@pytest.mark.parametrize("name,size,cells", [("gapcnn", 64, 8), ("resnet20", 32, 8), ("resnet18", 64, 2)])
def test_stride_is_input_pixels_per_feature_cell(name, size, cells):
    backbone = create_backbone(name).eval()
    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, size, size)).shape[-1] == cells == size // backbone.stride


def test_unknown_backbone_names_close_matches():
    with pytest.raises(ConfigError, match="resnet18"):
        create_backbone("resnet19")
    with pytest.raises(ConfigError, match="gapcnn"):
        create_backbone("no-such-net")  # no close match: the list of all names


def test_one_channel_first_conv_keeps_its_other_parameters():
    rgb, gray = create_backbone("resnet18"), create_backbone("resnet18", in_channels=1)
    for attr in ("out_channels", "kernel_size", "stride", "padding", "dilation"):
        assert getattr(gray.conv1, attr) == getattr(rgb.conv1, attr)
    assert gray.conv1.in_channels == 1 and gray.conv1.bias is None


def test_torchvision_module_names_are_kept():
    keys = create_backbone("resnet18").state_dict()
    assert "conv1.weight" in keys and "layer4.1.bn2.running_var" in keys
    assert "features.18.0.weight" in create_backbone("mobilenet_v2").state_dict()
    assert "norm.weight" in create_backbone("convnext_tiny").state_dict()  # classifier.0 LayerNorm2d, kept


def test_cifar_resnets_match_the_published_sizes():
    """He et al. 2016 / akamaster: ResNet-20 0.27M and ResNet-56 0.85M parameters (10 classes)."""
    counts = {d: sum(p.numel() for p in create_model(f"resnet{d}", "gap", 10, img_size=32).parameters()) for d in (20, 56)}
    assert {d: round(n / 1e6, 2) for d, n in counts.items()} == {20: 0.27, 56: 0.85}


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = BasicBlock(16, 32, stride=2)
    x = torch.randn(1, 16, 8, 8)
    expected = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    assert torch.equal(block.shortcut(x), expected)
    assert not list(block.shortcut.parameters())


def test_cifarcnn_fc_head_sees_4x4x128_on_32px():
    net = create_model("cifarcnn", "fc", 10, img_size=32, hidden=64)
    assert net.head.classifier[0].in_features == 4 * 4 * 128


@pytest.mark.parametrize("model", ["gapcnn", "resnet20", "mobilenet_v3_small"])
@pytest.mark.parametrize("head", HEADS)
def test_every_head_on_backbones(model, head):
    net = create_model(model, head, 5, img_size=32, hidden=16).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (2, 5)
        assert torch.equal(out, net.head(net.backbone(x)))
        assert torch.equal(net.features(x), net.backbone(x))


def test_squeezenet_default_conv_head_has_relu():
    backbone = create_backbone("squeezenet1_1")
    assert backbone.default_head == "conv" and backbone.conv_head_relu
    net = create_model("squeezenet1_1", "conv", 4, img_size=32)
    assert isinstance(net.head.classifier, nn.Sequential) and isinstance(net.head.classifier[1], nn.ReLU)


def test_fc_head_refuses_another_input_size():
    net = create_model("gapcnn", "fc", 3, img_size=32, hidden=16).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
        with pytest.raises(ConfigError, match="fc head was built for a 4x4"):
            net(torch.zeros(1, 3, 48, 48))


def test_too_small_input_is_a_config_error():
    with pytest.raises(ConfigError, match="img-size"):
        create_model("inception_v3", "gap", 2, img_size=32)


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def _train_step(net: nn.Module) -> None:
    net.train()
    apply_freeze_mode(net)
    net(torch.randn(4, 3, 32, 32)).sum().backward()


def test_freeze_backbone_stops_grads_and_bn_updates():
    net = create_model("resnet20", "gap", 3, img_size=32, freeze="backbone")
    before = _bn_stats(net)
    _train_step(net)
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.head.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(net)))


def test_freeze_bn_keeps_statistics_but_trains_weights():
    net = create_model("resnet20", "gap", 3, img_size=32, freeze="bn")
    before = _bn_stats(net)
    _train_step(net)
    assert all(p.grad is not None for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(net)))


def test_no_freeze_updates_bn_statistics():
    net = create_model("resnet20", "gap", 3, img_size=32)
    before = _bn_stats(net)
    _train_step(net)
    assert not torch.equal(before[0], _bn_stats(net)[0])


def test_summarize_prints_table_and_head_share():
    net = create_model("gapcnn", "gap", 5, img_size=32)
    text = summarize(net, 32, 3)
    assert "Output Shape" in text and "Mult-Adds" in text and "[1, 256, 4, 4]" in text
    assert "Total mult-adds (M):" in text
    assert "head params: 1,285" in text and "backbone params:" in text and "total params:" in text
    stats = summary_stats(net, 32, 3)
    assert stats["head_params"] == 256 * 5 + 5
    assert stats["backbone_params"] + stats["head_params"] == stats["total_params"] == sum(p.numel() for p in net.parameters())
    assert stats["feature_map"] == [256, 4, 4] and stats["mult_adds"] > 0
    assert net.training  # summarize runs in eval mode and restores the mode


def _momenta(net: nn.Module) -> list[float]:
    return [m.momentum for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_bn_momentum_raises_only_the_lower_momenta_and_is_rebuilt_from_the_config():
    built = _momenta(create_model("mnasnet1_0", "gap", 3, img_size=32))
    assert built and max(built) < 0.01  # torchvision's MNASNet: 3e-4, made for long ImageNet runs
    net = create_model("mnasnet1_0", "gap", 3, img_size=32, bn_momentum=0.1)
    assert set(_momenta(net)) == {0.1} and net.config.bn_momentum == 0.1
    again = create_model(**net.config.to_dict())  # how a run directory (load, resume) rebuilds it
    assert set(_momenta(again)) == {0.1}
    assert set(_momenta(create_model("fastnet_s", "gap", 3, img_size=32, bn_momentum=0.1))) == {0.2}  # higher: kept
