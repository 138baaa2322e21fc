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
