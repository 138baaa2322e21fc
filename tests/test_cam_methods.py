"""CAM methods through pytorch-grad-cam (--method gradcam++|scorecam|layercam|eigencam|xgradcam): the same map
format as our own CAM/Grad-CAM, Grad-CAM == CAM up to scale on a GAP network, and the localize/evaluate path."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

import gapvision as gv
from gapvision.cli import main
from gapvision.errors import GapvisionError
from gapvision.localize import cam, grad_cam, localize, normalize_maps, to_fcn
from gapvision.localize.gradcam_lib import LIBRARY_METHODS, library_cam
from gapvision.models import create_model

pytest.importorskip("pytorch_grad_cam", reason="grad-cam is not installed (pip install 'gapvision[cam]')")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def gap_net():
    torch.manual_seed(0)
    return create_model("fastnet_s", "gap", 4, img_size=64).eval()


def test_library_gradcam_is_cam_up_to_scale_on_a_gap_network(gap_net):
    """For a GAP head, d logit_k / d f = W_k / (h w) everywhere, so Grad-CAM = ReLU(W_k f) / (h w): the CAM without
    its bias, up to scale. After min-max scaling the library's maps equal the CAM's where the CAM is positive."""
    torch.manual_seed(1)
    x = torch.randn(3, 3, 64, 64)
    classes = torch.tensor([[0, 2], [1, 3], [3, 0]])
    lib, logits = library_cam(gap_net, x, classes, "GradCAM")
    with torch.no_grad():
        torch.testing.assert_close(logits, gap_net(x))
    cam_maps, _ = cam(to_fcn(gap_net), x)
    bias = gap_net.head.classifier.bias
    picked = torch.stack([cam_maps[i, classes[i]] - bias[classes[i], None, None] for i in range(3)])
    expected = normalize_maps(F.relu(picked))
    assert lib.shape == expected.shape == (3, 2, 8, 8)
    torch.testing.assert_close(lib, expected, atol=1e-4, rtol=1e-3)
    ours, _ = grad_cam(gap_net, x, classes)
    torch.testing.assert_close(lib, normalize_maps(ours), atol=1e-4, rtol=1e-3)
    flat_lib, flat_cam = lib.flatten(2), picked.flatten(2)
    assert torch.equal(flat_lib.argmax(-1), flat_cam.argmax(-1))  # same peak location as CAM
    for a, b in zip(flat_lib.reshape(-1, 64), flat_cam.reshape(-1, 64)):
        keep = b > 0
        assert torch.corrcoef(torch.stack([a[keep], b[keep]]))[0, 1] > 0.999


@pytest.mark.parametrize("method", list(LIBRARY_METHODS))
def test_every_library_method_gives_maps_in_our_format(gap_net, method):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64)
    classes = torch.tensor([[0, 1], [2, 3]])
    maps, logits = library_cam(gap_net, x, classes, method, batch_size=128)
    assert maps.shape == (2, 2, 8, 8) and maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1 + 1e-6 and logits.shape == (2, 4)
    assert all(p.grad is None for p in gap_net.parameters()) and not gap_net.training
    torch.testing.assert_close(normalize_maps(maps), maps, atol=1e-5, rtol=1e-4)  # already scaled, one per map
    if method == "eigencam":  # class-agnostic: one map per image
        torch.testing.assert_close(maps[:, 0], maps[:, 1])
    elif method == "scorecam":  # softmax over near-equal channel scores of an untrained net: close, not equal
        assert not torch.equal(maps[:, 0], maps[:, 1])
    else:
        assert not torch.allclose(maps[:, 0], maps[:, 1], atol=1e-3)
    # batching over images and classes gives what one image and one class at a time gives
    one, _ = library_cam(gap_net, x[1:], classes[1:, 1:], method, batch_size=128)
    torch.testing.assert_close(one[0, 0], maps[1, 1], atol=1e-4, rtol=1e-3)


def test_frozen_backbone_still_gets_gradient_maps():
    torch.manual_seed(0)
    net = create_model("fastnet_s", "gap", 3, img_size=32, freeze="backbone").eval()
    maps, _ = library_cam(net, torch.randn(1, 3, 32, 32), torch.tensor([[1]]), "gradcam++")
    assert maps.shape == (1, 1, 4, 4) and float(maps.max()) > 0


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    return gv.train("builtin:shapes?n=160&size=32", "fastnet_s", "gap", out=tmp_path_factory.mktemp("cm") / "run",
                    img_size=32, batch_size=32, augment="none", quiet=True, workers=0, epochs=2, optimizer="sgd",
                    lr=0.05)


@pytest.mark.parametrize("method", ["layercam", "scorecam"])
def test_localize_with_a_library_method_writes_the_usual_json(shapes_run, tmp_path, method):
    from gapvision.data.builtin import make_scenes

    images, _ = make_scenes(2, 64, seed=3)
    res = localize(shapes_run, list(images), out=tmp_path, method=method, min_score=0.0, topk=2)
    assert len(res) == 2
    for r in res:
        assert r["map_size"] == [8, 8] and r["stride"] == 8 and len(r["classes"]) >= 1
        assert all(set(d) >= {"label", "class_index", "score", "box"} for d in r["detections"])
    on_disk = json.loads((tmp_path / "image0.json").read_text())
    assert on_disk == json.loads(json.dumps(res[0]))
    assert (tmp_path / "image0_maps.png").stat().st_size > 0


def test_cli_evaluate_with_a_library_method(shapes_run, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["localize", str(shapes_run.path), "--method", "xgradcam", "--evaluate",
                 "builtin:shapes-scenes?n=6&size=64", "--out", str(out)]) == 0
    m = json.loads((out / "evaluation.json").read_text())
    assert m["method"] == "xgradcam" and 0 <= m["presence_f1"] <= 1 and "mean_iou" in m
    assert "; xgradcam, " in capsys.readouterr().out  # the printed header names the method (and the split before it)


def test_missing_grad_cam_names_the_extra(gap_net, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(GapvisionError, match=r"pip install 'gapvision\[cam\]'"):
        library_cam(gap_net, torch.randn(1, 3, 64, 64), torch.tensor([[0]]), "scorecam")
