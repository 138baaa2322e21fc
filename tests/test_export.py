"""ONNX / TorchScript export: parity with eager PyTorch (random and real images, several sizes), dynamic axes, the
metadata, the parity check catching a broken file, and the CLI."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import gapvision as gv
from gapvision.cli import main
from gapvision.data.transforms import normalize, to_uint8
from gapvision.errors import GapvisionError
from gapvision.export import check_parity, export, read_metadata

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'gapvision[export]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'gapvision[export]')")

DATA = "builtin:shapes?n=120&size=32"
FAST = dict(img_size=32, batch_size=32, augment="none", quiet=True, workers=0, epochs=1, optimizer="sgd", lr=0.05)
ATOL = 1e-4


@pytest.fixture(scope="module")
def gap_run(tmp_path_factory):
    return gv.train(DATA, "fastnet_s", "gap", out=tmp_path_factory.mktemp("export") / "gap", **FAST)


@pytest.fixture(scope="module")
def fc_run(tmp_path_factory):
    return gv.train(DATA, "fastnet_s", "fc", out=tmp_path_factory.mktemp("export") / "fc", hidden=32, **FAST)


@pytest.fixture(scope="module")
def gap_onnx(gap_run):
    return export(gap_run, "onnx")


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def eager(net, x):
    with torch.no_grad():
        return net(x).numpy()


def test_onnx_matches_pytorch_at_any_batch_and_size(gap_run, gap_onnx):
    assert gap_onnx == gap_run.path / "model.onnx"
    model = onnx.load(str(gap_onnx))
    assert dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(model.graph.output[0])[0] == "batch" and dims(model.graph.output[0])[1] == 4
    sess = session(gap_onnx)
    for shape in [(1, 3, 32, 32), (5, 3, 32, 32), (2, 3, 56, 40), (1, 3, 97, 131)]:
        x = torch.randn(*shape)
        got = sess.run(None, {"image": x.numpy()})[0]
        assert got.shape == (shape[0], 4)
        assert np.abs(got - eager(gap_run.model, x)).max() <= ATOL, shape


def test_parity_check_uses_random_and_real_images(gap_run, gap_onnx):
    res = check_parity(gap_onnx, gap_run)
    assert res["max_abs_diff"] <= ATOL and res["real_images"] >= 1  # the run's own validation images
    names = [c["input"] for c in res["checks"]]
    assert any(n.startswith("random") for n in names) and any("real" in n for n in names)
    assert any(c["shape"][-2:] != [32, 32] for c in res["checks"])  # a size other than the training size


def test_parity_check_catches_a_wrong_file(gap_run, gap_onnx, tmp_path):
    model = onnx.load(str(gap_onnx))
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))  # the largest weight tensor
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(GapvisionError, match="disagrees with PyTorch"):
        check_parity(broken, gap_run)


def test_metadata_holds_classes_and_preprocessing_enough_to_classify(gap_run, gap_onnx, shared_dir):
    meta = read_metadata(gap_onnx)
    assert meta["classes"] == gap_run.classes
    assert meta["preprocess"] == gap_run.preprocess.to_dict()
    assert meta["output"] == "logits" and meta["dynamic_axes"] == "batch,height,width"
    assert "subtract mean" in meta["preprocess_steps"]
    # A consumer that knows only the ONNX file: resize, scale, normalise with the metadata -> same top class.
    from PIL import Image

    img = Image.open(shared_dir / "photos" / "chelsea.png").convert("RGB")
    pre = meta["preprocess"]
    x = np.asarray(img.resize((pre["img_size"], pre["img_size"]), Image.BILINEAR), np.float32) / 255
    x = ((x - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)).transpose(2, 0, 1)[None]
    probs = torch.from_numpy(session(gap_onnx).run(None, {"image": x})[0]).softmax(1)[0]
    expected = gap_run.predict([img], topk=1)[0]["top"][0]
    assert meta["classes"][int(probs.argmax())] == expected["label"]
    assert float(probs.max()) == pytest.approx(expected["prob"], abs=0.02)  # resize kernels differ slightly


def test_parity_on_real_photos_at_native_size(gap_run, gap_onnx, shared_dir):
    photos = [shared_dir / "photos" / n for n in ("chelsea.png", "coffee.png", "pets.jpg")]
    res = check_parity(gap_onnx, gap_run, images=photos)
    assert res["real_images"] == 3 and res["max_abs_diff"] <= ATOL
    native = [c for c in res["checks"] if c["input"].startswith("real image")]
    assert len(native) == 3 and all(max(c["shape"][-2:]) == 256 for c in native)


def test_fcn_export_gives_class_maps_at_any_size(gap_run):
    from gapvision.localize import to_fcn

    path = export(gap_run, "onnx", fcn=True, check=False)  # compared below
    assert path.name == "model_fcn.onnx"
    meta = read_metadata(path)
    assert meta["output"] == "class_maps" and meta["stride"] == "8"
    fcn = to_fcn(gap_run.model)
    sess = session(path)
    for shape in [(1, 3, 32, 32), (3, 3, 64, 48)]:
        x = torch.randn(*shape)
        maps = sess.run(None, {"image": x.numpy()})[0]
        assert maps.shape == (shape[0], 4, shape[2] // 8, shape[3] // 8)
        assert np.abs(maps - eager(fcn, x)).max() <= ATOL
        # GAP: the spatial mean of the class maps is the classifier's logits
        assert np.abs(maps.mean(axis=(2, 3)) - eager(gap_run.model, x)).max() <= ATOL


def test_fc_head_has_fixed_size_but_its_fcn_is_dynamic(fc_run, tmp_path):
    path = export(fc_run, "onnx", out=tmp_path / "fc.onnx", check=False)
    assert dims(onnx.load(str(path)).graph.input[0]) == ["batch", 3, 32, 32]
    assert read_metadata(path)["dynamic_axes"] == "batch"
    res = check_parity(path, fc_run)
    assert res["max_abs_diff"] <= ATOL and all(c["shape"][-2:] == [32, 32] for c in res["checks"])
    fcn_path = export(fc_run, "onnx", fcn=True, out=tmp_path / "fc_fcn.onnx", check=False)
    assert dims(onnx.load(str(fcn_path)).graph.input[0]) == ["batch", 3, "height", "width"]
    x = torch.randn(2, 3, 48, 40)
    from gapvision.localize import to_fcn

    got = session(fcn_path).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - eager(to_fcn(fc_run.model), x)).max() <= ATOL


def test_legacy_exporter_also_matches(gap_run, tmp_path):
    path = export(gap_run, "onnx", out=tmp_path / "legacy.onnx", exporter="legacy", check=False)
    assert read_metadata(path)["exporter"] == "legacy"
    x = torch.randn(2, 3, 40, 48)
    assert np.abs(session(path).run(None, {"image": x.numpy()})[0] - eager(gap_run.model, x)).max() <= ATOL


def test_torchscript_export_round_trips_with_metadata(gap_run, tmp_path):
    path = export(gap_run, "torchscript", out=tmp_path / "m.ts", check=False)
    meta = read_metadata(path)
    assert meta["classes"] == gap_run.classes and meta["preprocess"]["img_size"] == 32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, the format still wanted
        loaded = torch.jit.load(str(path))
    photo = np.random.default_rng(0).integers(0, 256, (45, 70, 3), np.uint8)
    from PIL import Image

    x = normalize(to_uint8(Image.fromarray(photo), gap_run.preprocess, resize=False), gap_run.preprocess)[None]
    assert np.abs(eager(loaded, x) - eager(gap_run.model, x)).max() <= ATOL


def test_export_works_without_the_runs_data(gap_run, tmp_path, copy_run):
    moved = copy_run(gap_run.path, tmp_path / "moved", lambda cfg: cfg["data"].update(data=str(tmp_path / "deleted-folder")))
    path = export(moved, "torchscript", check=False)
    assert path == moved / "model.ts" and check_parity(path, moved)["real_images"] == 0


def test_cli_export(gap_run, tmp_path, capsys):
    out = tmp_path / "cli.ts"
    assert main(["export", str(gap_run.path), "--format", "torchscript", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "parity with PyTorch: max abs difference" in text and out.exists()
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "not a gapvision run directory" in capsys.readouterr().err
    assert main(["export", str(gap_run.path), "--format", "torchscript", "--fcn", "--out", str(tmp_path / "f.ts"),
                 "--no-check"]) == 0
    assert read_metadata(tmp_path / "f.ts")["output"] == "class_maps"
