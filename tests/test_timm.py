"""timm backbones (``timm:NAME``): built offline, timm's key layout through --weights, the pretrained config's
preprocessing, and the doors that must work on them (train, compare, to_fcn, localize, export, summary --list)."""
from __future__ import annotations

import sys

import pytest
import torch

import gapvision as gv
from gapvision.cli import main
from gapvision.data.transforms import Preprocess
from gapvision.errors import ConfigError, GapvisionError
from gapvision.localize import localize, to_fcn
from gapvision.models import create_backbone, create_model
from gapvision.models import timm_backbone as tb

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'gapvision[timm]')")
torch.set_num_threads(1)

DATA = "builtin:shapes?n=120&size=32"
FAST = dict(img_size=32, batch_size=32, augment="none", quiet=True, workers=0, epochs=1, optimizer="sgd", lr=0.05)
# tiny timm models: a ResNet, an EfficientNet (conv_head inside forward_features), a ConvNeXt (classifier head.fc
# after a LayerNorm that forward_features never calls) and MambaOut (NHWC features, MLP head)
SMALL = ("test_resnet", "test_efficientnet", "test_convnext", "test_mambaout", "resnet10t", "mobilenetv3_small_050")


def timm_model(name: str, num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=num_classes).eval()


@pytest.mark.parametrize("name", SMALL)
def test_backbone_is_timms_forward_features(name):
    ref = timm_model(name, 10)
    net = create_model(f"timm:{name}", "gap", 4, img_size=64).eval()
    missing, unexpected = net.backbone.load_state_dict(
        {k: v for k, v in ref.state_dict().items() if k in net.backbone.state_dict()}, strict=False)
    assert not missing
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = ref.forward_features(x)
        if feats.shape[-1] == net.backbone.out_channels and feats.shape[1] != net.backbone.out_channels:
            feats = feats.permute(0, 3, 1, 2)  # NHWC
        if name in ("test_convnext", "test_mambaout"):  # timm's LayerNorm of the pooled features stays, on the map
            feats = net.backbone.head["norm"](feats)  # (ImageLayerNorm2d: the same once pooled)
        torch.testing.assert_close(net.backbone(x), feats)
        assert net(x).shape == (2, 4)
    assert net.backbone.name == f"timm:{name}" and net.backbone.stride == 32
    # timm's classifier is gone: our head replaces it, no parameter is left unused by forward
    out = net(x).sum()
    out.backward()
    unused = [k for k, p in net.named_parameters() if p.grad is None]
    assert unused == []


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_timm_state_dict_through_weights_gives_timms_logits(name, tmp_path):
    """A timm checkpoint (timm's keys, its classifier on pooled features) loads into a gap head: same logits. Its
    ``head.*`` keys (ConvNeXt: head.norm, head.fc) do not make it look like gapvision's own layout, and ConvNeXt's
    LayerNorm of the pooled features is kept."""
    ref = timm_model(name, 5, seed=1)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    net = create_model(f"timm:{name}", "gap", 5, img_size=64, weights=str(path)).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), atol=1e-5, rtol=1e-4)
    # another class count: the backbone loads, the head is kept new and the report says so
    from gapvision.models.weights import load_weights

    report = load_weights(create_model(f"timm:{name}", "gap", 3, img_size=64), str(path))
    assert "head.classifier.weight" in report.missing and "shape differs" in report.summary()
    assert not [k for k in report.missing if k.startswith("backbone.")]


def test_a_classifier_behind_conv_head_is_kept_new(tmp_path):
    """MobileNetV3's classifier follows conv_head (forward_head, not forward_features): both are left out."""
    ref = timm_model("mobilenetv3_small_050", 1000)
    torch.save(ref.state_dict(), tmp_path / "m.pth")
    from gapvision.models.weights import load_weights

    net = create_model("timm:mobilenetv3_small_050", "gap", 1000, img_size=64)
    report = load_weights(net, str(tmp_path / "m.pth"))
    ignored = {k for k, why in report.skipped if why == "not in the model"}
    assert {"conv_head.weight", "classifier.weight"} <= ignored
    assert [k for k in report.missing] == ["head.classifier.weight", "head.classifier.bias"]
    torch.testing.assert_close(net.backbone.state_dict()["blocks.0.0.conv_dw.weight"],
                               ref.state_dict()["blocks.0.0.conv_dw.weight"])


def test_weights_into_a_grayscale_model_sum_the_first_conv(tmp_path):
    ref = timm_model("test_resnet", 5)
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    net = create_model("timm:test_resnet", "gap", 5, in_channels=1, img_size=64, weights=str(path))
    first = net.backbone.first_conv
    torch.testing.assert_close(net.backbone.get_parameter(first), ref.get_parameter(first).sum(dim=1, keepdim=True))


def test_pretrained_config_gives_the_preprocessing():
    cfg = tb.data_config("timm:test_resnet")
    assert cfg["input_size"] == (3, 160, 160) and cfg["mean"] == (0.5, 0.5, 0.5)
    base = Preprocess(channels=3, img_size=32)
    pre = tb.pretrained_preprocess(base, "timm:test_efficientnet", {}, crop=True)
    assert pre.img_size == 160 and pre.interpolation == "bicubic" and pre.mean == (0.485, 0.456, 0.406)
    assert pre.crop == tb.data_config("test_efficientnet")["crop_pct"]
    kept = tb.pretrained_preprocess(base, "timm:test_efficientnet", {"img_size": 32, "normalize": "auto"})
    assert (kept.img_size, kept.mean, kept.crop) == (32, base.mean, 1.0) and kept.interpolation == "bicubic"
    assert tb.pretrained_preprocess(base, "resnet18", {}) is base


def test_train_uses_timm_stats_unless_normalize_is_given(tmp_path):
    run = gv.train(DATA, "timm:test_efficientnet", "gap", out=tmp_path / "r", **FAST)
    assert run.preprocess.mean == (0.485, 0.456, 0.406) and run.preprocess.interpolation == "bicubic"
    assert run.preprocess.img_size == 32 and run.config["model"]["model"] == "timm:test_efficientnet"
    again = gv.load_run(run.path)  # rebuilt offline from config.json + model.safetensors
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), run.model(x))
    own = gv.train(DATA, "timm:test_efficientnet", "gap", out=tmp_path / "own", normalize="half", **FAST)
    assert own.preprocess.mean == (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    return gv.train(DATA, "timm:test_resnet", "gap", out=tmp_path_factory.mktemp("timm") / "gap", **FAST)


def test_to_fcn_and_localize_on_a_timm_model(timm_run, tmp_path):
    fcn = to_fcn(timm_run.model)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(fcn(x).mean(dim=(2, 3)), timm_run.model(x), atol=1e-5, rtol=1e-4)
    from gapvision.data.builtin import make_scenes

    images, _ = make_scenes(2, 64, seed=0)
    for method in ("fcn", "gradcam"):
        res = localize(timm_run, list(images), out=tmp_path / method, method=method, min_score=0.0)
        assert len(res) == 2 and all(r["classes"] for r in res) and (tmp_path / method / "image0.json").exists()


def test_export_onnx_of_a_timm_model(timm_run):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'gapvision[export]')")
    from gapvision.export import export

    path = export(timm_run, "onnx")
    import onnxruntime as ort

    x = torch.randn(2, 3, 32, 32)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), timm_run.model(x), atol=1e-4, rtol=1e-3)


def test_compare_two_heads_on_a_timm_backbone(tmp_path):
    res = gv.compare(DATA, "timm:test_resnet", heads="gap,gmp", seeds=(0,), out=tmp_path / "cmp", **FAST)
    assert {r["head"] for r in res.rows} == {"gap", "gmp"}
    assert all(run.config["model"]["model"] == "timm:test_resnet" for runs in res.runs.values() for run in runs)


def test_cli_train_predict_and_list(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--data", DATA, "--model", "timm:test_resnet", "--img-size", "32", "--epochs", "1",
                 "--batch-size", "32", "--augment", "none", "--quiet", "--workers", "0", "--out", str(out)]) == 0
    assert gv.load_run(out).config["preprocess"]["mean"] == [0.5, 0.5, 0.5]  # test_resnet's pretrained config
    capsys.readouterr()
    assert main(["summary", "--list", "timm"]) == 0
    listed = capsys.readouterr().out.split()
    assert "timm:resnet10t" in listed and "timm:efficientnet_b0" in listed and len(listed) > 500
    assert main(["summary", "--list", "timm:mobilenetv3_small*"]) == 0
    assert capsys.readouterr().out.split() == [f"timm:{n}" for n in timm.list_models("mobilenetv3_small*")]
    assert main(["summary", "--model", "timm:test_resnet", "--img-size", "64"]) == 0
    assert "feature map: 96 x 2 x 2 (stride 32)" in capsys.readouterr().out


def test_predict_with_a_pretrained_timm_checkpoint(tmp_path, write_image):
    ref = timm_model("test_resnet", 3, seed=2)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    from gapvision.predict import pretrained_run

    run = pretrained_run("timm:test_resnet", str(tmp_path / "w.pth"), str(tmp_path / "labels.txt"))
    cfg = tb.data_config("test_resnet")
    assert run.preprocess.img_size == 160 and run.preprocess.crop == cfg["crop_pct"]
    assert run.preprocess.interpolation == cfg["interpolation"] and run.preprocess.mean == cfg["mean"]
    img = write_image(tmp_path / "x.png", size=(50, 40))
    from gapvision.data.transforms import eval_transform
    from gapvision.runs import to_pil

    x = eval_transform(run.preprocess)(to_pil(img))[None]
    with torch.no_grad():
        expected = ref(x).softmax(1)[0]
    top = run.predict([img], topk=1)[0]["top"][0]
    assert top["label"] == "abc"[int(expected.argmax())]
    assert top["prob"] == pytest.approx(float(expected.max()), abs=1e-4)


def test_unknown_models_name_close_matches():
    with pytest.raises(ConfigError, match="timm:resnet10t"):
        create_backbone("timm:resnet10x")


def test_vit_tokens_become_a_patch_grid_at_any_size():
    """test_vit: 1 class token + 16 x 16 px patches; the patch tokens laid out h x w, the class token dropped."""
    torch.manual_seed(0)
    net = create_model("timm:test_vit", "gap", 3, img_size=64).eval()
    vit = net.backbone.timm_model
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens = vit.forward_features(x)
        fmap = net.backbone(x)
    assert tokens.shape == (2, 1 + 4 * 6, 64) and fmap.shape == (2, 64, 4, 6) and net.backbone.stride == 16
    torch.testing.assert_close(fmap[:, :, 1, 2], tokens[:, 1 + 1 * 6 + 2])
    fcn = to_fcn(net)
    with torch.no_grad():
        torch.testing.assert_close(fcn(x).mean(dim=(2, 3)), net(x), atol=1e-5, rtol=1e-4)


def test_missing_timm_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    tb._data_config.cache_clear()
    with pytest.raises(GapvisionError, match=r"pip install 'gapvision\[timm\]'") as e:
        create_model("timm:resnet10t", "gap", 2)
    assert "\n" not in str(e.value)
    assert main(["summary", "--list", "timm"]) == 2
    assert capsys.readouterr().err.strip().endswith("pip install 'gapvision[timm]'")
    tb._data_config.cache_clear()
