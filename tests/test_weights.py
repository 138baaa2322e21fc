"""Reading weight files safely and loading them into Classifiers (gapvision and torchvision/original layouts)."""
from __future__ import annotations

import json
import os
import tarfile
import urllib.error
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from gapvision.data.transforms import Preprocess, normalize, preset_stats, to_uint8
from gapvision.errors import ConfigError, GapvisionError
from gapvision.models import create_model
from gapvision.models.weights import load_weights, read_state_dict

torch.set_num_threads(1)
SHARED = Path(os.environ.get("GAPVISION_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} not found (set GAPVISION_SHARED to the shared material folder)")
    return path


def torchvision_file(tmp_path: Path, name: str, **kwargs) -> tuple[torch.nn.Module, Path]:
    """A random torchvision model and its state_dict saved in the torchvision key layout."""
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return model, path


# --- reading ----------------------------------------------------------------------------------------------------


class CreatesAFile:
    """Unpickling this would call open(path, 'w'): code execution."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_refuses_pickle_that_runs_code_and_creates_nothing(tmp_path):
    marker = tmp_path / "pwned.txt"
    bad = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": CreatesAFile(marker)}, bad)
    with pytest.raises(GapvisionError, match="is not a plain tensor checkpoint; gapvision never unpickles code"):
        read_state_dict(bad)
    assert not marker.exists()


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_unwraps_checkpoints_and_strips_module_prefix(tmp_path, wrapper):
    t = torch.arange(3.0)
    path = tmp_path / "ckpt.th"
    torch.save({wrapper: {"module.conv1.weight": t}, "best_prec1": 91.7, "epoch": 3}, path)
    state = read_state_dict(path)
    assert list(state) == ["conv1.weight"] and torch.equal(state["conv1.weight"], t)


def test_reads_a_run_directory_and_names_missing_files(tmp_path):
    save_file({"backbone.w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    assert torch.equal(read_state_dict(tmp_path)["backbone.w"], torch.ones(2))
    with pytest.raises(ConfigError, match="without model.safetensors"):
        read_state_dict(tmp_path / "..")
    with pytest.raises(ConfigError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")


# --- loading ----------------------------------------------------------------------------------------------------


def test_gapvision_layout_round_trip(tmp_path):
    net = create_model("resnet20", "catavgmax", 4, img_size=32).eval()
    with torch.no_grad():  # give BN non-default statistics so that buffers are checked too
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    save_file(net.state_dict(), str(tmp_path / "model.safetensors"))
    fresh = create_model("resnet20", "catavgmax", 4, img_size=32).eval()
    report = load_weights(fresh, str(tmp_path))
    assert report.missing == [] and report.skipped == []
    via_create_model = create_model("resnet20", "catavgmax", 4, img_size=32, weights=str(tmp_path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x)) and torch.equal(via_create_model(x), net(x))


def test_new_head_is_kept_and_reported(tmp_path):
    save_file(create_model("gapcnn", "gap", 4, img_size=32).state_dict(), str(tmp_path / "model.safetensors"))
    report = load_weights(create_model("gapcnn", "gap", 7, img_size=32), str(tmp_path))
    assert report.missing == ["head.classifier.weight", "head.classifier.bias"]
    assert {k for k, _ in report.skipped} == set(report.missing)
    assert report.summary() == (
        f"loaded {len(report.loaded)} tensors from {tmp_path}; "
        "kept new: head.classifier.weight, head.classifier.bias (shape differs)"
    )


@pytest.mark.parametrize("name,head,kwargs", [
    ("shufflenet_v2_x1_0", "gap", {}),
    ("mobilenet_v2", "gap", {}),
    ("googlenet", "gap", {"aux_logits": False, "init_weights": False}),
    ("squeezenet1_1", "conv", {}),  # classifier.1 is a 1x1 conv followed by ReLU and averaging
    ("convnext_tiny", "gap", {}),  # pool, then LayerNorm2d: the backbone's ImageLayerNorm2d with the gap head
])
def test_torchvision_layout_reproduces_torchvision_logits(tmp_path, name, head, kwargs):
    tv, path = torchvision_file(tmp_path, name, **kwargs)
    net = create_model(name, head, 1000, img_size=64).eval()
    report = load_weights(net, str(path))
    assert report.missing == [] and report.skipped == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), tv(x))


def test_conv_classifier_maps_onto_a_linear_head(tmp_path):
    tv, path = torchvision_file(tmp_path, "squeezenet1_1")
    net = create_model("squeezenet1_1", "gap", 1000, img_size=32)
    report = load_weights(net, str(path))
    assert report.missing == [] and ("head.classifier.weight", "Linear <-> 1x1 conv") in report.adapted
    assert torch.equal(net.head.classifier.weight, tv.classifier[1].weight.flatten(1))


def test_old_densenet_key_names_load(tmp_path):
    tv = torchvision.models.densenet121(weights=None)
    old = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v for k, v in tv.state_dict().items()}
    assert any("norm.1" in k for k in old)
    torch.save(old, tmp_path / "densenet_old.pth")
    report = load_weights(create_model("densenet121", "gap", 1000, img_size=32), str(tmp_path / "densenet_old.pth"))
    assert report.missing == [] and report.skipped == []


def test_rgb_first_conv_is_summed_for_one_channel(tmp_path):
    rgb = create_model("resnet20", "gap", 10, img_size=32).eval()
    original = {f"module.{k.removeprefix('backbone.')}": v for k, v in rgb.state_dict().items() if k.startswith("backbone.")}
    original |= {"module.linear.weight": rgb.head.classifier.weight, "module.linear.bias": rgb.head.classifier.bias}
    torch.save({"state_dict": original}, tmp_path / "rgb.th")  # akamaster's layout
    gray = create_model("resnet20", "gap", 10, in_channels=1, img_size=32).eval()
    report = load_weights(gray, str(tmp_path / "rgb.th"))
    assert report.missing == [] and report.adapted == [("backbone.conv1.weight", "RGB summed to 1 channel")]
    assert "adapted: backbone.conv1.weight (RGB summed to 1 channel)" in report.summary()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # a gray image seen as RGB with equal channels gives the same logits
        torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)))


def test_weights_for_another_architecture_are_refused(tmp_path):
    _, path = torchvision_file(tmp_path, "mobilenet_v2")
    with pytest.raises(ConfigError, match="looks like weights for another architecture"):
        load_weights(create_model("gapcnn", "gap", 2, img_size=32), str(path))
    # efficientnet_b0 shares mobilenet_v2's first conv shapes; a handful of matches is not a fit
    with pytest.raises(ConfigError, match=r"only \d of its \d+ tensors fit model 'efficientnet_b0'"):
        load_weights(create_model("efficientnet_b0", "gap", 1000, img_size=32), str(path))


def test_torchvision_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the weights must be downloaded
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    net = create_model("squeezenet1_1", "conv", 1000, img_size=32)
    with pytest.raises(ConfigError, match="could not download torchvision weights for squeezenet1_1 .no internet.*--weights FILE"):
        load_weights(net, "torchvision:DEFAULT")
    with pytest.raises(ConfigError, match="torchvision:IMAGENET1K_V1"):
        load_weights(net, "torchvision:NOPE")
    with pytest.raises(ConfigError, match="no pretrained weights for 'gapcnn'"):
        load_weights(create_model("gapcnn", "gap", 2, img_size=32), "torchvision:DEFAULT")


# --- real pretrained weights from ../shared ---------------------------------------------------------------------


def predict(net: torch.nn.Module, image: Path, pre: Preprocess) -> torch.Tensor:
    x = normalize(to_uint8(Image.open(image), pre), pre).unsqueeze(0)
    with torch.no_grad():
        return net.eval()(x).softmax(1)[0]


def cifar10_test_images(per_class: int) -> tuple[list[Image.Image], list[str]]:
    images, labels, seen = [], [], defaultdict(int)
    with tarfile.open(shared("data/cifar10-jpg.tar.gz"), "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and parts[0] == "test" and seen[parts[1]] < per_class:
                seen[parts[1]] += 1
                images.append(Image.open(tar.extractfile(member)).convert("RGB"))  # type: ignore[arg-type]
                labels.append(parts[1])
    return images, labels


@pytest.mark.shared
def test_resnet20_cifar10_loads_completely_and_classifies():
    net = create_model("resnet20", "gap", 10, img_size=32)
    report = load_weights(net, str(shared("weights/resnet20-cifar10.th")))
    assert report.missing == [] and report.skipped == [] and len(report.loaded) == 97
    images, labels = cifar10_test_images(per_class=15)
    classes = sorted(set(labels))  # airplane ... truck: the CIFAR-10 class order
    mean, std, _ = preset_stats("imagenet", 3)
    pre = Preprocess(3, 32, mean, std)
    x = torch.stack([normalize(to_uint8(im, pre), pre) for im in images])
    with torch.no_grad():
        pred = net.eval()(x).argmax(1)
    accuracy = sum(classes[int(p)] == y for p, y in zip(pred, labels)) / len(labels)
    assert accuracy > 0.7  # about 81 % on this JPEG copy


@pytest.mark.shared
def test_mobilenet_v2_predicts_italian_greyhound_on_pets():
    net = create_model("mobilenet_v2", "gap", 1000, img_size=224)
    report = load_weights(net, str(shared("weights/mobilenet_v2-imagenet.pth")))
    assert report.missing == [] and report.skipped == []
    # gapvision's squash resize (antialiased bilinear) to 224 gives 0.675; a centre crop before it gives ~0.84-0.89
    probs = predict(net, shared("photos/pets.jpg"), Preprocess(3, 224, (0.5,) * 3, (0.5,) * 3))
    assert int(probs.argmax()) == 171 and 0.6 < float(probs[171]) < 0.75
    names = json.loads(shared("labels/imagenet_class_index.json").read_text())
    assert names["171"][1] == "Italian_greyhound"


@pytest.mark.shared
def test_squeezenet_caffe_weights_with_conv_head():
    net = create_model("squeezenet1_0", "conv", 1000, img_size=227)
    report = load_weights(net, str(shared("weights/squeezenet1_0-imagenet-caffe.pth")))
    assert report.missing == [] and report.skipped == []
    mean, std, bgr = preset_stats("caffe", 3)
    pre = Preprocess(3, 227, mean, std, bgr)
    assert int(predict(net, shared("photos/parrot.jpg"), pre).argmax()) == 88  # macaw
    assert int(predict(net, shared("photos/hot_dog.jpg"), pre).argmax()) == 934  # hotdog
