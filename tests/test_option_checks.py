"""Options and files a user can get wrong in export, lr-find, train, serve and predict: each a one-line ``error: ...``
(exit code 2) that names the option or file, found before anything is written or announced."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import TRAIN, _cli, _folder, _one_line_error, trained_run  # noqa: F401 (trained_run: fixture)

import gapvision as gv
from gapvision.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("option-checks") / "d", {"cat": 4, "dog": 4})


# --------------------------------------------------------------------------------------------- export
@pytest.fixture
def export_deps():
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'gapvision[export]')")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'gapvision[export]')")


@pytest.mark.parametrize("name, fmt, other", [("x.onnx", "torchscript", "onnx"), ("x.ts", "onnx", "torchscript")])
def test_export_out_suffix_of_the_other_format(trained_run, tmp_path, capsys, export_deps, name, fmt, other):
    out = tmp_path / name
    rc, _, err = _cli(["export", trained_run, "--out", out, "--format", fmt], capsys)
    _one_line_error(rc, err, f"--out {out}", f"--format {fmt}", f"--format {other}")
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_out_without_suffix_is_checked_as_the_format_written(trained_run, tmp_path, capsys, export_deps, fmt):
    from gapvision.export import read_metadata

    out = tmp_path / "afile"
    rc, printed, err = _cli(["export", trained_run, "--out", out, "--format", fmt], capsys)
    assert rc == 0 and "parity with PyTorch" in printed, err
    assert read_metadata(out)["classes"] == ["cat", "dog"]


def test_export_check_image_that_does_not_decode(trained_run, tmp_path, capsys, export_deps):
    bad = tmp_path / "notimg.png"
    bad.write_text("not a picture\n")
    rc, _, err = _cli(["export", trained_run, "--out", tmp_path / "m.onnx", "--check-images", bad], capsys)
    line = _one_line_error(rc, err, str(bad), "--check-images")
    assert "--skip-bad" not in line
    # the API decodes them before it writes the model (the CLI's order is share.cmd_export's)
    with pytest.raises(DataError, match="--check-images"):
        gv.export(trained_run, out=tmp_path / "api.onnx", images=[bad])
    assert not (tmp_path / "api.onnx").exists()


# --------------------------------------------------------------------------------------------- lr-find
@pytest.mark.parametrize("steps", [0, -5, 2])
def test_lr_find_too_few_steps(data, capsys, steps):
    rc, _, err = _cli(["lr-find", "--data", data, "--model", "gapcnn", "--img-size", "16", "--batch-size", "8",
                       "--workers", "0", "--steps", steps], capsys)
    _one_line_error(rc, err, f"--steps must be at least 3 (got {steps})")


# --------------------------------------------------------------------------------------------- train
@pytest.mark.parametrize("option, value, needle", [
    ("--label-smoothing", "1.5", "at least 0 and below 1"),
    ("--weight-decay", "-1", ">= 0"),
    ("--clip-grad", "-1", ">= 0"),
    ("--patience", "-1", ">= 0"),
    ("--dropout", "2", "at least 0 and below 1"),
])
def test_train_option_out_of_range(data, tmp_path, capsys, option, value, needle):
    out = tmp_path / "run"
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", data, "--out", out, option, value], capsys)
    _one_line_error(rc, err, option, needle)
    assert not (out / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------- serve
@pytest.fixture
def no_uvicorn_loop(monkeypatch) -> list[int]:
    """uvicorn's Server.run replaced by a stub that records the port of the socket it was given and returns."""
    uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install 'gapvision[serve]')")
    pytest.importorskip("fastapi", reason="fastapi is not installed (pip install 'gapvision[serve]')")
    ports: list[int] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: ports.append(sockets[0].getsockname()[1]))
    return ports


def _serve_error(argv: list, capsys, *needles: str) -> None:
    rc, printed, err = _cli(["serve", *argv], capsys)
    _one_line_error(rc, err, *needles)
    assert "serving on" not in printed


def test_serve_port_out_of_range(trained_run, capsys, no_uvicorn_loop):
    _serve_error([trained_run, "--port", "99999"], capsys, "--port must be between 0 and 65535 (got 99999)")


def test_serve_port_in_use(trained_run, capsys, no_uvicorn_loop):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _serve_error([trained_run, "--port", port], capsys, f"--port {port} is already in use")
    assert not no_uvicorn_loop


def test_serve_host_that_is_not_an_address(trained_run, capsys, no_uvicorn_loop):
    _serve_error([trained_run, "--host", "999.1.1.1"], capsys, "--host 999.1.1.1")


def test_serve_topk_below_one(trained_run, capsys, no_uvicorn_loop):
    _serve_error([trained_run, "--topk", "0", "--port", "0"], capsys, "--topk must be a whole number of at least 1 (got 0)")


def test_serve_port_zero_announces_the_real_port(trained_run, capsys, no_uvicorn_loop):
    rc, printed, err = _cli(["serve", trained_run, "--port", "0"], capsys)
    assert rc == 0, err
    (port,) = no_uvicorn_loop
    assert port > 0 and f"serving on http://127.0.0.1:{port}/" in printed


# --------------------------------------------------------------------------------------------- predict
@pytest.mark.parametrize("topk", [0, -1])
def test_predict_topk_below_one(trained_run, data, capsys, topk):
    rc, _, err = _cli(["predict", trained_run, data / "cat" / "000.png", "--topk", topk], capsys)
    _one_line_error(rc, err, f"--topk must be a whole number of at least 1 (got {topk})")
    with pytest.raises(ConfigError, match="--topk"):
        gv.load_run(trained_run).predict([data / "cat" / "000.png"], topk=topk)


def test_api_values_of_the_wrong_type_are_one_line_errors(trained_run):
    import gapvision as gv
    from gapvision.errors import ConfigError, GapvisionError

    with pytest.raises(ConfigError, match=r"epochs='two': give a number \(--epochs\)"):
        gv.train("builtin:shapes?n=16&size=16", epochs="two")
    with pytest.raises(ConfigError, match="--topk must be a whole number of at least 1 \\(got 'a'\\)"):
        gv.load_run(trained_run).predict([np.zeros((16, 16, 3), np.uint8)], topk="a")
    with pytest.raises(GapvisionError, match="load_run takes the path of a run directory \\(got int 5\\)"):
        gv.load_run(5)
