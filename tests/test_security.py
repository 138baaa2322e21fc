"""Nothing executed, nothing read from outside: hostile weight files and checkpoints are refused without running
their code, manifest paths stay inside the data root, and the web server (when installed) is careful with uploads.
"""
from __future__ import annotations

import ast
import inspect
import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gapvision as gv
from gapvision.cli import main
from gapvision.errors import GapvisionError

SRC = Path(gv.__file__).resolve().parent
TRAIN = ["train", "--model", "gapcnn", "--epochs", "1", "--img-size", "16", "--batch-size", "8", "--augment", "none",
         "--workers", "0", "--quiet"]
DATA = "builtin:shapes?n=16&size=16"


class CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: code execution that leaves a visible trace."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _evil_bytes(marker: Path, kind: str) -> bytes:
    """A file that would create ``marker`` when loaded with plain pickle / torch.load(weights_only=False)."""
    payload = {"state_dict": {"backbone.w": torch.zeros(1)}, "payload": CreatesAFile(marker)}
    if kind == "pickle":
        return pickle.dumps(payload, protocol=2)
    buf = io.BytesIO()
    torch.save(payload, buf, _use_new_zipfile_serialization=(kind == "torch-zip"))
    return buf.getvalue()


KINDS = ["torch-zip", "torch-legacy", "pickle"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_payload_is_live(tmp_path, kind):
    """The hostile files used below really do run code when loaded unsafely (so refusing them means something)."""
    marker = tmp_path / "pwned"
    data = _evil_bytes(marker, kind)
    if kind == "pickle":
        pickle.loads(data)
    else:
        torch.load(io.BytesIO(data), weights_only=False)
    assert marker.exists()


def _one_line_error(rc: int, err: str, *needles: str) -> None:
    line = err.strip()
    assert rc == 2 and line.startswith("error: ") and "\n" not in line and "Traceback" not in line, err
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("security") / "run"
    assert main([*TRAIN, "--epochs", "2", "--data", DATA, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("suffix, kind", [(".pth", k) for k in KINDS] + [(s, "torch-zip") for s in (".pt", ".bin",
                                                                                                    ".safetensors")])
def test_hostile_weights_file_is_refused_and_runs_nothing(tmp_path, capsys, suffix, kind):
    marker = tmp_path / "pwned"
    evil = tmp_path / f"evil{suffix}"
    evil.write_bytes(_evil_bytes(marker, kind))
    rc = main([*TRAIN, "--data", DATA, "--weights", str(evil), "--out", str(tmp_path / "r")])
    _one_line_error(rc, capsys.readouterr().err, str(evil))
    assert not marker.exists()
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    rc = main(["predict", "--model", "gapcnn", "--weights", str(evil), "--labels", str(labels), str(image)])
    _one_line_error(rc, capsys.readouterr().err, str(evil))
    assert not marker.exists()


def test_hostile_weights_message_says_why(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(_evil_bytes(marker, "torch-zip"))
    rc = main([*TRAIN, "--data", DATA, "--weights", str(evil), "--out", str(tmp_path / "r")])
    _one_line_error(rc, capsys.readouterr().err, "never unpickles code", "(it needs ", "open)")


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_checkpoint_on_resume_is_refused_and_runs_nothing(run_dir, tmp_path, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    marker = tmp_path / "pwned"
    (run / "checkpoint.pt").write_bytes(_evil_bytes(marker, kind))
    rc = main(["train", "--resume", str(run), "--epochs", "3", "--quiet"])
    _one_line_error(rc, capsys.readouterr().err, str(run / "checkpoint.pt"))
    assert not marker.exists()


def test_hostile_checkpoint_message(run_dir, tmp_path):
    from gapvision.runs import load_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(_evil_bytes(marker, "torch-zip"))
    with pytest.raises(GapvisionError, match="never unpickles code.*do not resume from it"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_pickle_disguised_as_a_runs_weights_is_refused(run_dir, tmp_path, capsys, kind):
    """model.safetensors is read by the safetensors parser, which has no code path to run: a pickle there is just
    a damaged file -- for predict, evaluate, and --weights RUN_DIR."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    marker = tmp_path / "pwned"
    (run / "model.safetensors").write_bytes(_evil_bytes(marker, kind))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    for argv in (["predict", str(run), str(image)], ["evaluate", str(run), "--data", DATA],
                 [*TRAIN, "--data", DATA, "--weights", str(run), "--out", str(tmp_path / "w")]):
        rc = main(argv)
        _one_line_error(rc, capsys.readouterr().err, "model.safetensors")
    assert not marker.exists()


def test_no_loader_in_the_package_can_unpickle_code():
    """Static guard for every loader, present and future: torch.load only with weights_only=True, and no pickle /
    np.load(allow_pickle=True) / yaml.load / torch.hub.load anywhere in gapvision."""
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg}
            where = f"{path.relative_to(SRC)}:{node.lineno}: {name}"
            if name.endswith("torch.load") and kwargs.get("weights_only") != "True":
                problems.append(f"{where} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load",
                        "torch.hub.load", "yaml.load", "yaml.unsafe_load", "marshal.loads"):
                problems.append(where)
            if name.endswith("np.load") and kwargs.get("allow_pickle") == "True":
                problems.append(f"{where} with allow_pickle=True")
    assert not problems, "loaders that may run code:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------- data root
def _image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def rooted(tmp_path) -> Path:
    """data/{a,b}/*.png inside tmp_path, and a secret image beside data/ (outside its root)."""
    for i in range(6):
        _image(tmp_path / "data" / "ab"[i % 2] / f"{i}.png", i)
    _image(tmp_path / "secret" / "s.png", 9)
    return tmp_path / "data"


@pytest.mark.parametrize("escape", ["../secret/s.png", "a/../../secret/s.png", "ABSOLUTE", "a/./../../secret/s.png"])
def test_manifest_paths_cannot_leave_the_data_root(rooted, capsys, escape):
    rel = str(rooted.parent / "secret" / "s.png") if escape == "ABSOLUTE" else escape
    rows = ["file,label"] + [f"{'ab'[i % 2]}/{i}.png,{'ab'[i % 2]}" for i in range(6)] + [f"{rel},a"]
    (rooted / "m.csv").write_text("\n".join(rows) + "\n")
    for cmd in ([*TRAIN, "--data"], ["inspect-data", "--out", str(rooted.parent / "grid.png"), "--data"]):
        rc = main([*cmd, str(rooted / "m.csv")])
        _one_line_error(rc, capsys.readouterr().err, "m.csv row 8", "outside the data folder", "--allow-outside-root")
    splits = gv.load_data(rooted / "m.csv", allow_outside_root=True, val_split=0)
    assert len(splits.train) == 7


def test_image_root_is_the_root_when_given(rooted, tmp_path):
    """With --image-root the root is that folder: a manifest elsewhere cannot climb out of it either."""
    listing = tmp_path / "lists" / "m.csv"
    listing.parent.mkdir()
    rows = ["file,label", "a/0.png,a", "b/1.png,b", "a/2.png,a", "b/3.png,b", "../secret/s.png,a"]
    listing.write_text("\n".join(rows) + "\n")
    with pytest.raises(GapvisionError, match=r"row 6: '\.\./secret/s\.png' points outside the data folder"):
        gv.load_data(listing, image_root=rooted)
    assert len(gv.load_data(listing, image_root=rooted, allow_outside_root=True, val_split=0).train) == 5


@pytest.mark.parametrize("link", ["file", "folder", "root-relative chain"])
def test_symlinks_cannot_leave_the_data_root(rooted, link):
    secret = rooted.parent / "secret"
    try:
        if link == "file":
            (rooted / "a" / "innocent.png").symlink_to(secret / "s.png")
            rel = "a/innocent.png"
        elif link == "folder":
            (rooted / "more").symlink_to(secret, target_is_directory=True)
            rel = "more/s.png"
        else:  # a link to a link that leaves the root
            (rooted / "hop.png").symlink_to(secret / "s.png")
            (rooted / "a" / "hop2.png").symlink_to(rooted / "hop.png")
            rel = "a/hop2.png"
    except (OSError, NotImplementedError) as e:
        pytest.skip(f"cannot create symbolic links here: {e}")
    rows = ["file,label"] + [f"{'ab'[i % 2]}/{i}.png,{'ab'[i % 2]}" for i in range(6)] + [f"{rel},a"]
    (rooted / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(GapvisionError, match=r"row 8: .* symbolic link to .*secret.*--allow-outside-root"):
        gv.load_data(rooted / "m.csv")
    assert len(gv.load_data(rooted / "m.csv", allow_outside_root=True, val_split=0).train) == 7


# --------------------------------------------------------------------------------------------- the web server
@pytest.fixture
def service(tmp_path):
    serve_app = pytest.importorskip("gapvision.serve.app", reason="gapvision.serve is not part of this checkout")
    from gapvision.models import create_model
    from gapvision.runs import Run

    net = create_model("gapcnn", "gap", 2, img_size=16).eval()
    config = {"classes": ["a", "b"], "preprocess": {"channels": 3, "img_size": 16}, "model": net.config.to_dict()}
    return serve_app.Service(Run(None, config, model=net), topk=2, max_upload_bytes=4096)


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def test_server_binds_to_localhost_by_default():
    runner = pytest.importorskip("gapvision.serve.runner", reason="gapvision.serve is not part of this checkout")
    assert inspect.signature(runner.serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(runner.BackgroundServer).parameters["host"].default == "127.0.0.1"
    assert runner.is_loopback("127.0.0.1") and runner.is_loopback("::1") and not runner.is_loopback("0.0.0.0")


def test_server_caps_uploads_and_checks_image_types(service, monkeypatch):
    from gapvision.data import images
    from gapvision.serve.app import HttpError

    assert service.decode(_png((8, 8)), "ok.png").size == (8, 8)
    cases = [
        (b"", "empty.png", 400),
        (b"x" * 5000, "big.png", 413),  # over max_upload_bytes, refused before decoding
        (b"#!/bin/sh\nrm -rf /\n", "script.png", 415),
        (b"GIF89a" + b"\0" * 30, "broken.gif", 415),
    ]
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 50 * 50)
    cases.append((_png((100, 100)), "bomb.png", 413))  # small file, too many pixels: a decompression bomb
    for data, name, status in cases:
        with pytest.raises(HttpError) as e:
            service.decode(data, name)
        assert e.value.status == status, (name, e.value.detail)
        assert "\n" not in e.value.detail
