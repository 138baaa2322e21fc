"""The CLI is a thin layer: same numbers as the API, one-line errors with exit code 2."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gapvision.cli import main

SMALL = "builtin:shapes?n=240&size=32"
COMMON = ["--img-size", "32", "--batch-size", "32", "--augment", "none", "--quiet", "--workers", "0"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--data", SMALL, "--model", "cifarcnn", "--head", "gap", "--epochs", "1", "--out", str(out),
                 "--seed", "5", *COMMON]) == 0
    return out


def test_cli_and_api_give_the_same_numbers(cli_run, tmp_path):
    import gapvision as gv

    api = gv.train(SMALL, "cifarcnn", "gap", out=tmp_path / "api", epochs=1, seed=5, img_size=32, batch_size=32,
                   augment="none", quiet=True, workers=0)
    cli = gv.load_run(cli_run)
    assert cli.history[0]["val_loss"] == pytest.approx(api.history[0]["val_loss"], abs=1e-6)
    assert cli.metrics["best_val_acc"] == api.metrics["best_val_acc"]


def test_predict_table_and_json(cli_run, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(img)
    assert main(["predict", str(cli_run), str(img), "--topk", "2"]) == 0
    assert "x.png" in capsys.readouterr().out
    assert main(["predict", str(cli_run), str(tmp_path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["image"].endswith("x.png") and len(rows[0]["top"]) == 3
    assert {"label", "prob"} <= set(rows[0]["top"][0])


def test_evaluate_command(cli_run, capsys):
    assert main(["evaluate", str(cli_run), "--data", SMALL, "--split", "val"]) == 0
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--data", SMALL, "--model", "nosuchnet"], "nosuchnet"),
        (["train", "--data", SMALL, "--head", "nohead"], "nohead"),
        (["train", "--data", "/no/such/folder"], "/no/such/folder"),
        (["predict", "/no/such/run", "x.jpg"], "/no/such/run"),
        (["train", "--data", "builtin:nothing"], "builtin:nothing"),
        (["train", "--resume", "/no/such/run"], "/no/such/run"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle, capsys):
    assert main(argv + ["--quiet"] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err and "Traceback" not in err


def test_summary_prints_table(capsys):
    assert main(["summary", "--model", "gapcnn", "--head", "gap", "--num-classes", "4", "--img-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "head params" in out.lower()


def test_summary_shows_the_stem_train_builds_from_scratch(capsys):
    assert main(["summary", "--model", "convnext_tiny", "--num-classes", "4"]) == 0
    pooled = capsys.readouterr().out
    assert main(["summary", "--model", "convnext_tiny", "--num-classes", "4", "--stem", "native"]) == 0
    native = capsys.readouterr().out
    def stem_row(out):  # the stem's row: the same parameters, 4x the mult-adds (the convolution at stride 2)
        row = next(line for line in out.splitlines() if ": 3-1 " in line).split()
        return int(row[-2].replace(",", "")), int(row[-1].replace(",", ""))

    assert stem_row(pooled)[0] == stem_row(native)[0] and 3.9 < stem_row(pooled)[1] / stem_row(native)[1] < 4.1
    assert main(["summary", "--model", "resnet18", "--stem", "pooled"]) == 2  # one line: resnet18 offers native
    assert "--stem pooled: resnet18 offers native" in capsys.readouterr().err


def test_tutorial_tsv_grayscale_manifest_trains_with_one_channel(tmp_path):
    """The tutorial format: train_master.tsv (file_name<TAB>expression) beside a train/ folder of grayscale JPEGs."""
    import gapvision as gv
    from gapvision.data.builtin import make_shapes

    x, y = make_shapes(48, size=32, seed=2)
    names = ["angry", "happy", "neutral", "sad"]
    (tmp_path / "train").mkdir()
    lines = ["file_name\texpression"]
    for i, (im, label) in enumerate(zip(x, y)):
        Image.fromarray(im).convert("L").save(tmp_path / "train" / f"train_{i:04d}.jpg")
        lines.append(f"train_{i:04d}.jpg\t{names[label]}")
    (tmp_path / "train_master.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "train_master.tsv"), "--model", "gapcnn", "--epochs", "1",
                 "--channels", "auto", "--out", str(out), *COMMON]) == 0
    run = gv.load_run(out)
    assert run.preprocess.channels == 1 and run.model_config.in_channels == 1
    assert run.classes == names


def test_predict_with_pretrained_imagenet_model(shared_dir, capsys):
    weights = shared_dir / "weights" / "mobilenet_v2-imagenet.pth"
    labels = shared_dir / "labels" / "imagenet_class_index.json"
    assert main(["predict", "--model", "mobilenet_v2", "--weights", str(weights), "--labels", str(labels),
                 "--normalize", "half", str(shared_dir / "photos" / "pets.jpg"), "--json"]) == 0
    top = json.loads(capsys.readouterr().out.splitlines()[0])["top"][0]
    assert top["label"] == "Italian_greyhound" and top["prob"] > 0.8  # shared/README: 0.87 (TF central crop 0.875)


def test_predict_on_every_shared_photo(cli_run, shared_dir, capsys):
    assert main(["predict", str(cli_run), str(shared_dir / "photos"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(list((shared_dir / "photos").glob("*.*g"))) + len(list((shared_dir / "photos").glob("*.bmp")))
