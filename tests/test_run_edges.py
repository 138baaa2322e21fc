"""Run-directory edges found by trying the CLI as a user would: options that --resume cannot change, a finished run
resumed, a folder that already holds a run, output paths that are files, damaged config/metrics/history/checkpoint
files, a JSONL --output that is some other file. Each is a one-line error (or an honest no-op) and no work is lost."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import gapvision as gv
from gapvision import atomic
from gapvision.errors import ConfigError, GapvisionError
from gapvision.runs import RunWriter

from test_bad_inputs import TRAIN, _cli, _folder, _one_line_error, trained_run  # noqa: F401 (a fixture, shared)


def _copy(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def _image(run: Path) -> Path:
    return next(Path(json.loads((run / "config.json").read_text())["data"]["data"]).rglob("*.png"))


def test_resume_refuses_options_it_cannot_apply(trained_run, capsys):
    before = (trained_run / "config.json").read_text()
    rc, _, err = _cli(["train", "--resume", trained_run, "--lr", "0.5", "--data", "builtin:digits"], capsys)
    _one_line_error(rc, err, "--lr, --data cannot change them", f"--weights {trained_run}")
    assert (trained_run / "config.json").read_text() == before


def test_resuming_a_finished_run_changes_nothing_and_fewer_epochs_is_an_error(trained_run, capsys):
    before = {n: (trained_run / n).read_bytes() for n in ("config.json", "metrics.json", "model.safetensors")}
    rc, out, err = _cli(["train", "--resume", trained_run], capsys)
    assert rc == 0, err
    assert "has finished its 1 epoch: nothing to resume" in out
    rc, _, err = _cli(["train", "--resume", trained_run, "--epochs", "0"], capsys)
    _one_line_error(rc, err, "has already trained 1 epoch:", "--epochs 0")
    assert {n: (trained_run / n).read_bytes() for n in before} == before


def test_a_folder_holding_a_finished_run_is_not_overwritten(trained_run, tmp_path, capsys):
    run = _copy(trained_run, tmp_path / "kept")
    (run / "checkpoint.pt").unlink()  # removed to save space: the run is still there
    weights = (run / "model.safetensors").read_bytes()
    rc, _, err = _cli([*TRAIN, "--quiet", "--data", "builtin:shapes?n=16&size=16", "--out", run], capsys)
    _one_line_error(rc, err, f"{run} already holds a run (model.safetensors, metrics.json)", "pick another --out")
    assert (run / "model.safetensors").read_bytes() == weights


def test_an_output_folder_that_is_a_file_is_one_line(trained_run, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for argv in ([*TRAIN, "--quiet", "--data", "builtin:shapes?n=16&size=16", "--out", afile],
                 [*TRAIN, "--quiet", "--data", "builtin:shapes?n=16&size=16", "--out", afile / "sub"],
                 ["evaluate", trained_run, "--data", _image(trained_run).parent.parent, "--out", afile]):
        rc, _, err = _cli(argv, capsys)
        _one_line_error(rc, err, str(afile))
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("damage, needles", [
    (lambda c: [1, 2, 3], ["holds a JSON list"]),
    (lambda c: {**c, "format_version": "x"}, ["format_version 'x' is not a number"]),
    (lambda c: {**c, "preprocess": {**c["preprocess"], "img_size": "big"}}, ["is damaged", "img_size"]),
    (lambda c: {**c, "classes": c["classes"][:1]}, ["lists 1 classes but its model has 2 outputs"]),
])
def test_a_damaged_config_is_one_line_in_every_command(trained_run, tmp_path, capsys, damage, needles):
    run = _copy(trained_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(damage(config)))
    for argv in (["predict", run, _image(trained_run)], ["export", run, "--out", tmp_path / "m.onnx"],
                 ["report", run, "--out", tmp_path / "r.html"]):
        rc, _, err = _cli(argv, capsys)
        _one_line_error(rc, err, *needles)


def test_an_empty_checkpoint_says_what_still_works(trained_run, tmp_path, capsys):
    run = _copy(trained_run, tmp_path / "run")
    (run / "checkpoint.pt").write_bytes(b"")
    rc, _, err = _cli(["train", "--resume", run], capsys)
    _one_line_error(rc, err, "cannot load checkpoint", "model.safetensors) still predict", "--weights RUN_DIR")


@pytest.mark.parametrize("name, damage, needle", [
    ("metrics.json", "{bad", "is not valid JSON"),
    ("metrics.json", "[]", "holds a JSON list"),
    ("history.csv", "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n1,x,0,0,0,0,0\n", "is damaged"),
])
def test_damaged_metrics_or_history_are_one_line_in_report(trained_run, tmp_path, capsys, name, damage, needle):
    run = _copy(trained_run, tmp_path / "run")
    (run / name).write_text(damage)
    rc, _, err = _cli(["report", run, "--out", tmp_path / "r.html"], capsys)
    _one_line_error(rc, err, str(run / name), needle)


def test_predict_output_never_overwrites_another_file(trained_run, tmp_path, capsys):
    page = tmp_path / "report.html"
    page.write_text("<html>\n<body>my report</body>\n</html>\n")
    rc, _, err = _cli(["predict", trained_run, _image(trained_run), "--output", page], capsys)
    _one_line_error(rc, err, str(page), "is not this command's JSONL output", "choose another --output")
    assert page.read_text().startswith("<html>")


def test_a_failed_write_offers_resume_only_when_there_is_a_checkpoint(tmp_path, monkeypatch):
    def full(path, data):
        raise GapvisionError(f"could not write {path} (No space left on device); free disk space")

    writer = RunWriter(tmp_path / "fresh")
    monkeypatch.setattr(atomic, "write_bytes", full)
    with pytest.raises(GapvisionError) as e:
        writer.json("config.json", {})
    assert "--resume" not in str(e.value)
    (tmp_path / "fresh" / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(GapvisionError, match=r"training continues from its last saved epoch with --resume"):
        writer.json("config.json", {})


def test_an_unknown_model_in_a_runs_config_names_the_file(trained_run, tmp_path, capsys):
    run = _copy(trained_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "model": {**config["model"], "model": "nonsense"}}))
    rc, _, err = _cli(["predict", run, _image(trained_run)], capsys)
    _one_line_error(rc, err, str(run / "config.json"), "nonsense")


def test_compare_reports_heads_that_diverged_and_continues_after_an_early_interrupt(tmp_path, capsys):
    data = "builtin:shapes?n=48&size=16"
    argv = ["compare", "--data", data, "--model", "gapcnn", "--heads", "fc,gap", "--epochs", "1", "--img-size", "16",
            "--batch-size", "16", "--workers", "0", "--quiet"]
    rc, out, err = _cli([*argv, "--lr", "1e9", "--optimizer", "sgd", "--out", tmp_path / "div"], capsys)
    assert rc == 0, err
    report = (tmp_path / "div" / "report.md").read_text()
    assert "**Cannot answer yet**: fc, gap produced no figures" in report and "nan points" not in report
    # a run interrupted in its first epoch leaves only config.json: the same command trains it again
    (tmp_path / "c" / "gap-s0").mkdir(parents=True)
    shutil.copy(tmp_path / "div" / "gap-s0" / "config.json", tmp_path / "c" / "gap-s0" / "config.json")
    rc, out, err = _cli([*argv, "--out", tmp_path / "c"], capsys)
    assert rc == 0, err
    assert (tmp_path / "c" / "gap-s0" / "metrics.json").is_file()
    rc, _, err = _cli([*argv, "--epochs", "2", "--out", tmp_path / "c"], capsys)
    _one_line_error(rc, err, "holds a comparison with other settings (epochs 1 -> 2)")
    res = gv.compare(data, "gapcnn", "fc,gap", 0, out=tmp_path / "c", epochs=1, img_size=16, batch_size=16, workers=0,
                     quiet=True)
    assert res.row("gap")["head"] == "gap"
    with pytest.raises(ConfigError, match="head 'gmp' was not compared: the heads are fc, gap"):
        res.row("gmp")


def test_a_compare_run_with_max_images_is_evaluated_and_reported_on_its_own_sample(tmp_path, capsys):
    from gapvision.report import load_validation

    data = "builtin:shapes?n=80&size=16"
    rc, _, err = _cli(["compare", "--data", data, "--model", "gapcnn", "--heads", "gap", "--epochs", "1",
                       "--img-size", "16", "--batch-size", "16", "--workers", "0", "--max-images", "24", "--quiet",
                       "--out", tmp_path / "c"], capsys)
    assert rc == 0, err
    run = gv.load_run(tmp_path / "c" / "gap-s0")
    assert run.config["max_images"] == 24
    own = run.metrics["val"]
    again = gv.evaluate(run, data, split="val", out=tmp_path / "e")
    assert again["images"] == own["images"] < 20 and again["confusion_matrix"] == own["confusion_matrix"]
    assert len(load_validation(run)) == own["images"]


def test_compare_says_a_data_note_once_per_seed_not_once_per_head(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"cat": 6, "dog": 6})
    (data / "dog" / "broken.png").write_text("not an image")
    rc, _, err = _cli(["compare", "--data", data, "--model", "gapcnn", "--heads", "fc,gap,gmp", "--epochs", "1",
                       "--img-size", "16", "--batch-size", "8", "--workers", "0", "--skip-bad", "--quiet",
                       "--out", tmp_path / "c"], capsys)
    assert rc == 0, err
    assert err.count("skipped 1 unreadable image") == 1 and "broken.png" in err
