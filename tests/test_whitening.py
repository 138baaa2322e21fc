"""The fast90 pieces: the frozen patch-whitening layer (models/whitening.py), the fastnet_w backbone, the multi-crop
test-time augmentation and the fast90 recipe."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from gapvision.models import create_model
from gapvision.models.backbones import create_backbone
from gapvision.models.whitening import PatchWhitening, init_whitening, whiten_first_conv, whitened_patch_filters
from gapvision.predictor import tta_logits
from gapvision.train.pipeline import train
from gapvision.train.recipes import FAST90, choose_recipe, recipe_values


def _correlated(n: int = 64, size: int = 12, seed: int = 0) -> torch.Tensor:
    """Images whose neighbouring pixels and channels are strongly correlated (smooth, grey-ish)."""
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.randn(n, 1, size + 3, size + 3, generator=g), 4, stride=1)
    return base.expand(n, 3, size, size) + 0.1 * torch.randn(n, 3, size, size, generator=g)


def test_whitening_decorrelates_the_patches_of_its_data():
    x = _correlated()
    layer = PatchWhitening(3, 2, eps=0.0)
    assert layer.out_channels == 24 and layer(x).shape == (64, 24, 11, 11)
    init_whitening(layer, x)
    z = layer(x)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)  # the positive half: one output per component
    cov = z.T @ z / len(z)
    assert torch.allclose(cov, torch.eye(12), atol=1e-3)  # decorrelated, unit variance
    assert torch.equal(layer(x)[:, 12:], -layer(x)[:, :12])  # each filter once with each sign (bias 0)
    raw = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    assert (raw.T @ raw / len(raw) - torch.eye(12)).abs().max() > 0.3  # the input was far from white


def test_whiten_first_conv_sets_the_first_conv_reached_to_whitened_components_and_leaves_the_rest():
    torch.manual_seed(0)
    later = torch.nn.Conv2d(8, 4, 3)
    first = torch.nn.Conv2d(3, 8, 2, stride=2, padding=1)  # d = 12 inputs, 8 filters: m = 4 components, both signs
    net = torch.nn.Sequential()
    net.add_module("b", torch.nn.Sequential(torch.nn.BatchNorm2d(8), torch.nn.ReLU(), later))
    net = torch.nn.Sequential(first, net.b)  # `later` was created first: the forward order is what counts
    before_later, before_bias = later.weight.clone(), first.bias.clone()
    x = _correlated()
    net.train()
    assert whiten_first_conv(net, x, eps=0.0) and net.training  # mode restored
    assert torch.equal(later.weight, before_later) and torch.equal(first.bias, before_bias)
    assert first.weight.requires_grad  # trained afterwards, not frozen
    w = first.weight.flatten(1)
    assert torch.equal(w[4:], -w[:4])
    cols = F.unfold(x, 2, stride=2)  # the patches the conv sees at its stride (no padding)
    flat = cols.transpose(1, 2).reshape(-1, 12)
    z = flat @ w[:4].T
    assert torch.allclose(z.T @ z / len(z), torch.eye(4), atol=1e-3)  # decorrelated, unit variance on the data
    assert torch.allclose(w[:4], whitened_patch_filters(x, (2, 2), (2, 2), eps=0.0)[:4])


def test_whiten_first_conv_leaves_a_grouped_or_missing_first_conv_alone():
    grouped = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, groups=2), torch.nn.Conv2d(8, 4, 1))
    before = [p.clone() for p in grouped.parameters()]
    assert not whiten_first_conv(grouped, torch.randn(4, 4, 8, 8))
    assert all(torch.equal(a, b) for a, b in zip(before, grouped.parameters()))
    assert not whiten_first_conv(torch.nn.Sequential(torch.nn.Flatten()), torch.randn(2, 3, 4, 4))


def test_whitening_weight_is_a_frozen_buffer_saved_with_the_model():
    layer = PatchWhitening(3, 2)
    assert [n for n, _ in layer.named_parameters()] == ["bias"]  # the optimiser never sees the filters
    init_whitening(layer, _correlated())
    again = PatchWhitening(3, 2)
    again.load_state_dict(layer.state_dict())
    assert torch.equal(again.weight, layer.weight)


def test_fastnet_w_is_airbench94s_network_and_learns_a_tiny_problem_deterministically():
    backbone = create_backbone("fastnet_w")
    assert backbone.in_channels == 3 and backbone.out_channels == 256
    assert backbone(torch.zeros(2, 3, 32, 32)).shape == (2, 256, 3, 3)
    grey = create_backbone("fastnet_w", in_channels=1)  # 8 whitening filters, the rest zero: the same width
    assert grey.in_channels == 1 and grey(torch.zeros(2, 1, 32, 32)).shape == (2, 256, 3, 3)
    init_whitening(grey, _correlated()[:, :1])
    assert grey.stem[0].weight[8:].abs().sum() == 0 and grey.stem[0].weight[:8].abs().sum() > 0

    def fit(seed: int) -> list[float]:
        torch.manual_seed(seed)
        net = create_model("fastnet_w", "gap", 2, in_channels=3, img_size=16)
        x = _correlated(32, 16, seed=1)
        y = (x.mean((1, 2, 3)) > 0).long()
        init_whitening(net.backbone, x)
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
        losses = []
        for _ in range(8):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    a, b = fit(0), fit(0)
    assert a == b  # the same seed, the same steps
    assert a[-1] < 0.5 * a[0]


class _Probe(torch.nn.Module):
    """Logits that record which input they were given: the mean of the top-left pixel and of the right column."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, 0, 0], x[:, 0, :, -1].mean(1)], 1)


def test_crops_tta_averages_flip_over_the_image_and_its_one_pixel_shifts():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    net = _Probe()

    def flip_mean(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (net(v) + net(v.flip(-1)))

    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    expected = 0.5 * flip_mean(x) + 0.25 * (flip_mean(padded[..., :5, :5]) + flip_mean(padded[..., 2:, 2:]))
    assert torch.allclose(tta_logits(net, x, "crops"), expected)
    assert torch.allclose(tta_logits(net, x, "flip"), flip_mean(x))
    assert not torch.allclose(tta_logits(net, x, "crops"), flip_mean(x))  # the shifts do change the probe's logits


def test_fast90_recipe_is_selectable_and_resolves_like_fast():
    assert choose_recipe({"recipe": "fast90"}, 32) == "fast90"
    values = recipe_values("fast90", 50_000, device="cpu")
    assert values["model"] == "fastnet_w" and values["tta"] == "crops" and values["batch_size"] == FAST90["batch_size"]
    small = recipe_values("fast90", 800, device="cpu")
    assert small["batch_size"] < FAST90["batch_size"]
    assert small["lr"] == pytest.approx(FAST90["lr"] * small["batch_size"] / FAST90["batch_size"])


def test_training_fastnet_w_sets_its_whitening_from_the_train_split(tmp_path):
    run = train("builtin:shapes?n=64&size=16", recipe="fast90", epochs=1, workers=0, quiet=True, out=tmp_path / "r")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model_options"]["init"] == "whiten" and config["train"]["tta"] == "crops"
    w = run.model.backbone.stem[0].weight
    d = w.shape[0] // 2
    assert not torch.equal(w[:d].flatten(1), torch.eye(d))  # no longer the identity basis it is built with



def test_crops_tta_runs_validate_epochs_with_flip_and_the_final_evaluation_with_crops(tmp_path, monkeypatch):
    from gapvision.predictor import Predictor

    seen: list[str] = []
    real_init = Predictor.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("tta", "off"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "__init__", spy)
    run = train("builtin:shapes?n=64&size=16", recipe="fast90", epochs=2, workers=0, quiet=True, out=tmp_path / "r")
    assert seen == ["flip", "flip", "crops"]  # epoch 1, epoch 2, then pipeline.finish's evaluation (metrics.json)
    assert len(run.history) == 2 and 0 <= run.metrics["val"]["acc"] <= 1
