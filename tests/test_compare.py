"""gapvision compare: the table against the runs, cached features against the streaming path, resumption, identical
data for every head, the CLI and the API."""
from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gapvision.cli import main
from gapvision.compare import api as compare_api
from gapvision.compare import compare
from gapvision.compare.api import parse_heads, parse_seeds
from gapvision.compare.features import cache_blocker
from gapvision.errors import ConfigError, Interrupted
from gapvision.models import create_model
from gapvision.runs import load_run, save_weights
from gapvision.train import trainer as trainer_mod

SMALL = "builtin:shapes?n=96&size=32"  # 96 train, 24 val, 24 test images
FAST = dict(img_size=32, batch_size=32, quiet=True, workers=0, lr=3e-3)
FROZEN = dict(epochs=2, freeze="backbone", augment="none", **FAST)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and fairer to a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A "pretrained" fastnet_s weights file: random convolutions with BatchNorm statistics measured on data-like
    input, so that the frozen backbone's maps vary from image to image (a fresh BN net's maps are nearly constant)."""
    torch.manual_seed(0)
    net = create_model("fastnet_s", "gap", 4, img_size=32)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the calibration batches
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net.features(torch.rand(64, 3, 32, 32) * 2 - 1)
    path = tmp_path_factory.mktemp("pre") / "fastnet_s.safetensors"
    save_weights(net, path)
    return str(path)


@pytest.fixture(scope="module")
def frozen(pretrained, tmp_path_factory):
    """fc, gap, gmp x seeds 0, 1 on the frozen "pretrained" backbone (cached features), 2 epochs."""
    out = tmp_path_factory.mktemp("cmp") / "frozen"
    return compare(SMALL, "fastnet_s", "fc,gap,gmp", "0,1", out=out, weights=pretrained, **FROZEN)


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# -- outputs ------------------------------------------------------------------------------------------------------
def test_summary_table_matches_the_runs(frozen):
    path = frozen.path
    for name in ("summary.csv", "summary.md", "val_acc.png", "val_loss.png", "report.md", "compare.json"):
        assert (path / name).stat().st_size > 0, name
    rows = read_csv(path / "summary.csv")
    assert [r["head"] for r in rows] == ["fc", "gap", "gmp"]
    for col in ("head", "head_params", "total_params", "best_val_acc_mean", "best_val_acc_std", "final_val_acc_mean",
                "best_val_loss_mean", "best_epoch_mean", "train_val_gap", "seconds"):
        assert col in rows[0], col
    for row in rows:
        ms = [json.loads((path / f"{row['head']}-s{s}" / "metrics.json").read_text()) for s in (0, 1)]
        best = [m["best_val_acc"] for m in ms]
        assert float(row["best_val_acc_mean"]) == pytest.approx(np.mean(best), abs=1e-4)
        assert float(row["best_val_acc_std"]) == pytest.approx(np.std(best, ddof=1), abs=1e-4)
        assert float(row["final_val_acc_mean"]) == pytest.approx(np.mean([m["final_val_acc"] for m in ms]), abs=1e-4)
        assert float(row["best_val_loss_mean"]) == pytest.approx(np.mean([m["best_val_loss"] for m in ms]), abs=1e-4)
        assert float(row["best_epoch_mean"]) == pytest.approx(np.mean([m["best_epoch"] for m in ms]), abs=1e-4)
        gap = np.mean([m["final_train_acc"] - m["final_val_acc"] for m in ms])
        assert float(row["train_val_gap"]) == pytest.approx(gap, abs=1e-4)
        assert float(row["seconds"]) == pytest.approx(np.mean([m["seconds"] for m in ms]), abs=1e-3)
        net = create_model("fastnet_s", row["head"], 4, img_size=32)
        assert int(row["head_params"]) == sum(p.numel() for p in net.head.parameters())
        assert int(row["total_params"]) == sum(p.numel() for p in net.parameters())
        assert 0 <= float(row["best_val_acc_mean"]) <= 1
    assert int(rows[0]["head_params"]) > 100 * int(rows[1]["head_params"])  # fc vs gap
    assert frozen.row("gap")["best_val_loss_mean"] != frozen.row("gmp")["best_val_loss_mean"]  # maps are not constant
    md = (path / "summary.md").read_text()
    assert "cached features" in md and "MiB" in md and "| gap |" in md
    report = (path / "report.md").read_text()
    assert report.startswith("# Can GAP replace the fully-connected layer?")
    assert f"Winner: {frozen.winner}" in report and "seed spread" in report
    assert frozen.features["path"] == "cached features" and frozen.features["peak_bytes"] > 0
    # every run is a normal run directory
    run = frozen.runs["gap"][1]
    assert run.config["seed"] == 1 and run.model_config.head == "gap"
    assert len(run.predict([np.zeros((32, 32, 3), np.uint8)])[0]["top"]) == 3


def test_verdict_reads_the_numbers():
    from gapvision.compare.summary import verdict

    def row(head, mean, std, params):
        return {"head": head, "best_val_acc_mean": mean, "best_val_acc_std": std, "head_params": params,
                "train_val_gap": 0.1, "status": "finished"}

    ctx = {"n_seeds": 3, "setup": "s"}
    win = verdict([row("fc", 0.60, 0.01, 3_000_000), row("gap", 0.65, 0.01, 12_810)], {}, ctx)
    assert "**Yes.** GAP beats FC by 5.0 points" in win and "234x fewer" in win
    tie = verdict([row("fc", 0.640, 0.02, 3_000_000), row("gap", 0.645, 0.02, 12_810)], {}, ctx)
    assert "within the seed spread" in tie and "no measurable cost" in tie
    lose = verdict([row("fc", 0.70, 0.005, 3_000_000), row("gap", 0.60, 0.005, 12_810)], {}, ctx)
    assert "**Not here.** FC beats GAP by 10.0 points" in lose and "Winner: fc" in lose
    one = verdict([row("fc", 0.6, 0.0, 30), row("gap", 0.7, 0.0, 10)], {}, {"n_seeds": 1, "setup": "s"})
    assert "one seed" in one and "GAP beats FC by 10.0 points" in one
    even = verdict([row("fc", 1.0, 0.0, 30), row("gap", 1.0, 0.0, 10)], {}, {"n_seeds": 1, "setup": "s"})
    assert "GAP matches FC (100.0 % each)" in even and "beats" not in even.split("\n\n")[1]
    assert "cannot rank them" in even and "cannot rank" not in one


# -- the fast path ------------------------------------------------------------------------------------------------
def assert_same_numbers(a, b, n_val: int = 24) -> None:
    """Two runs' histories and test accuracy agree up to float rounding (one image of accuracy at most)."""
    assert len(a.history) == len(b.history)
    for ra, rb in zip(a.history, b.history):
        for key in ("train_loss", "val_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-3, abs=1e-4), key
        assert abs(ra["val_acc"] - rb["val_acc"]) <= 1 / n_val + 1e-9
    assert a.metrics["test_acc"] == pytest.approx(b.metrics["test_acc"], abs=1 / n_val + 1e-9)


def test_cached_features_match_the_streaming_path(frozen, pretrained, tmp_path, record_batches):
    assert frozen.features["maps_computed"] == 2 * (96 + 24 + 24)  # once per image (shapes differ by seed), not head
    slow = compare(SMALL, "fastnet_s", "fc,gap", 0, out=tmp_path / "slow", features="stream", weights=pretrained,
                   **FROZEN)
    assert slow.features["path"] == "streaming"
    for head in ("fc", "gap"):
        assert_same_numbers(frozen.runs[head][0], slow.runs[head][0])
    # same batches in the same order: labels recorded from the streaming run vs the cached run of the same seed
    fast = compare(SMALL, "fastnet_s", "fc", 0, out=tmp_path / "fast", features="cache", weights=pretrained, **FROZEN)
    labels = [[(e, y) for e, y, _ in record_batches["fc", 0, p]["batches"]] for p in ("stream", "cache")]
    assert labels[0] == labels[1] and len(labels[0]) == 2 * 3
    assert_same_numbers(fast.runs["fc"][0], slow.runs["fc"][0])


def test_cached_augmented_views_match_the_streaming_path(pretrained, tmp_path):
    opts = dict(FROZEN, augment="basic", weights=pretrained)
    fast = compare(SMALL, "fastnet_s", "fc", 1, out=tmp_path / "fast", features="cache", **opts)
    slow = compare(SMALL, "fastnet_s", "fc", 1, out=tmp_path / "slow", features="stream", **opts)
    assert fast.features["maps_computed"] == 2 * 96 + 24 + 24  # one view per image and epoch
    assert "augmented view" in (fast.path / "summary.md").read_text()
    assert_same_numbers(fast.runs["fc"][0], slow.runs["fc"][0])


def test_cache_needs_a_frozen_dropout_free_backbone(tmp_path):
    with pytest.raises(ConfigError, match="backbone is trained"):
        compare(SMALL, "fastnet_s", "gap", 0, out=tmp_path / "x", features="cache", epochs=1, **FAST)
    gapcnn = create_model("gapcnn", "gap", 4, img_size=32, freeze="backbone")
    assert "dropout" in cache_blocker(gapcnn)
    assert cache_blocker(create_model("fastnet_s", "gap", 4, img_size=32, freeze="backbone")) is None


# -- identical data for every head --------------------------------------------------------------------------------
@pytest.fixture
def record_batches(monkeypatch):
    """Records, per (head, seed), the backbone weights at the start and every training batch (labels, input sums)."""
    seen: dict[tuple[str, int], dict] = {}
    real_fit, real_epoch = trainer_mod.Trainer.fit, trainer_mod.Trainer.train_epoch

    def key(trainer):
        net = getattr(trainer.net, "module", trainer.net)
        return net.head.kind, trainer.cfg.seed, "cache" if type(net).__name__ == "CachedClassifier" else "stream"

    def fit(self, train_b, val_b):
        backbone = getattr(self.net, "module", self.net).backbone
        seen[key(self)] = {"start": {k: v.clone() for k, v in backbone.state_dict().items()}, "batches": []}
        return real_fit(self, train_b, val_b)

    def train_epoch(self, batches, epoch):
        log = seen[key(self)]["batches"]

        class Recorder:
            def __len__(self):
                return len(batches)

            def epoch(self, e):
                for x, y in batches.epoch(e):
                    log.append((e, y.tolist(), x.double().sum(dim=tuple(range(1, x.ndim))).tolist()))
                    yield x, y

        return real_epoch(self, Recorder(), epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "fit", fit)
    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", train_epoch)
    return seen


def test_every_head_sees_identical_data_and_starting_backbone(tmp_path, record_batches):
    # From scratch, augmented, streaming: fc has dropout (it draws random numbers between batches), gap does not.
    compare(SMALL, "fastnet_s", "fc,gap", "0,1", out=tmp_path / "c", epochs=2, augment="basic", **FAST)
    for seed in (0, 1):
        fc, gap = record_batches["fc", seed, "stream"], record_batches["gap", seed, "stream"]
        assert len(fc["batches"]) == 2 * 3  # 2 epochs of 96 / 32 batches
        assert gap["batches"] == fc["batches"], seed  # labels and augmented pixels, batch by batch
        assert all(torch.equal(fc["start"][k], v) for k, v in gap["start"].items())
    s0, s1 = record_batches["gap", 0, "stream"], record_batches["gap", 1, "stream"]
    assert s0["batches"] != s1["batches"]  # seeds differ in order and augmentation
    assert not all(torch.equal(s0["start"][k], v) for k, v in s1["start"].items())  # and in initial weights


# -- resumption ---------------------------------------------------------------------------------------------------
@pytest.fixture
def spy(monkeypatch):
    """Counts which runs compare trains from scratch and which it resumes."""
    calls: dict[str, list[str]] = {"train": [], "resume": []}
    real_train, real_resume = compare_api.train, compare_api.resume

    def train_spy(data, model, head, *, out, **kw):
        calls["train"].append(Path(out).name)
        return real_train(data, model, head, out=out, **kw)

    def resume_spy(run_dir, **kw):
        calls["resume"].append(Path(run_dir).name)
        return real_resume(run_dir, **kw)

    monkeypatch.setattr(compare_api, "train", train_spy)
    monkeypatch.setattr(compare_api, "resume", resume_spy)
    return calls


RESUME_OPTS = dict(epochs=2, augment="none", deterministic=True, **FAST)


def test_killed_compare_continues_where_it_stopped(tmp_path, monkeypatch, spy):
    out = tmp_path / "c"
    real = trainer_mod.Trainer.train_epoch
    calls = {"n": 0}

    def killed(self, batches, epoch):  # the 4th epoch trained is gap's 2nd (fc: epochs 1-2, gap: epoch 1, then this)
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, batches, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", killed)
    with pytest.raises(Interrupted, match="run the same command again"):
        compare(SMALL, "fastnet_s", "fc,gap,gmp", 0, out=out, **RESUME_OPTS)
    assert spy["train"] == ["fc-s0", "gap-s0"]
    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", real)
    fc_mtime = (out / "fc-s0" / "model.safetensors").stat().st_mtime_ns
    spy["train"].clear()
    result = compare(SMALL, "fastnet_s", "fc,gap,gmp", 0, out=out, **RESUME_OPTS)
    assert spy == {"train": ["gmp-s0"], "resume": ["gap-s0"]}
    assert (out / "fc-s0" / "model.safetensors").stat().st_mtime_ns == fc_mtime
    assert [r.metrics["status"] for r in result.runs["gap"]] == ["finished"]
    # the resumed run equals an uninterrupted one
    ref = compare(SMALL, "fastnet_s", "gap", 0, out=tmp_path / "ref", **RESUME_OPTS)
    assert [r["val_loss"] for r in result.runs["gap"][0].history] == pytest.approx(
        [r["val_loss"] for r in ref.runs["gap"][0].history], abs=1e-6)


def test_deleted_or_damaged_runs_are_redone_alone(tmp_path, spy):
    out = tmp_path / "c"
    first = compare(SMALL, "fastnet_s", "fc,gap", 0, out=out, **RESUME_OPTS)
    before = read_csv(out / "summary.csv")
    shutil.rmtree(out / "gap-s0")  # deleted: trained again
    (out / "fc-s0" / "metrics.json").write_text('{"status": "fini')  # damaged metrics: resumed from its checkpoint
    spy["train"].clear()
    again = compare(SMALL, "fastnet_s", "fc,gap", 0, out=out, **RESUME_OPTS)
    assert spy == {"train": ["gap-s0"], "resume": ["fc-s0"]}
    assert read_csv(out / "summary.csv")[0]["best_val_acc_mean"] == before[0]["best_val_acc_mean"]
    assert again.row("gap")["best_val_loss_mean"] == pytest.approx(first.row("gap")["best_val_loss_mean"], abs=1e-6)
    # unreadable config.json: trained from scratch; a damaged checkpoint of a finished run: left alone
    (out / "gap-s0" / "config.json").write_text("{")
    (out / "fc-s0" / "checkpoint.pt").write_bytes(b"")
    spy["train"].clear()
    spy["resume"].clear()
    compare(SMALL, "fastnet_s", "fc,gap", 0, out=out, **RESUME_OPTS)
    assert spy == {"train": ["gap-s0"], "resume": []}


def test_rerun_with_other_settings_is_refused(tmp_path, spy):
    out = tmp_path / "c"
    compare(SMALL, "fastnet_s", "gap", 0, out=out, epochs=1, augment="none", **FAST)
    with pytest.raises(ConfigError, match="other settings.*epochs"):
        compare(SMALL, "fastnet_s", "gap", 0, out=out, epochs=2, augment="none", **FAST)
    spy["train"].clear()
    again = compare(SMALL, "fastnet_s", "gap", 0, out=out, epochs=1, augment="none", **{**FAST, "quiet": False})
    assert spy["train"] == [] and again.features["path"] == "streaming"  # nothing to do; how the runs were made


# -- CLI and API --------------------------------------------------------------------------------------------------
def test_cli_gives_the_api_numbers(frozen, pretrained, tmp_path, capsys):
    args = ["compare", "--data", SMALL, "--model", "fastnet_s", "--heads", "gmp,gap", "--seeds", "1", "--epochs", "2",
            "--weights", pretrained, "--freeze", "backbone", "--img-size", "32", "--batch-size", "32", "--lr", "0.003",
            "--no-augment", "--workers", "0", "--quiet", "--out", str(tmp_path / "cli")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| gap |" in printed and "cached features" in printed
    cli_rows = {r["head"]: r for r in read_csv(tmp_path / "cli" / "summary.csv")}
    assert list(cli_rows) == ["gmp", "gap"]
    for head in ("gmp", "gap"):  # the API's runs of the same head and seed (the frozen fixture)
        api = frozen.runs[head][1].metrics
        assert float(cli_rows[head]["best_val_loss_mean"]) == pytest.approx(api["best_val_loss"], abs=1e-4)
    assert main(args[:-2] + ["--heads", "gap,nope", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown head 'nope'" in capsys.readouterr().err


def test_argument_parsing():
    assert parse_heads("FC, gap,gap") == ["fc", "gap"]
    assert parse_seeds("0-2,5") == [0, 1, 2, 5] and parse_seeds(3) == [3] and parse_seeds([1, 1, 2]) == [1, 2]
    with pytest.raises(ConfigError):
        parse_seeds("a")
    with pytest.raises(ConfigError, match="seeds="):
        compare(SMALL, "fastnet_s", "gap", seed=1)


# -- the shared CIFAR-10 copy -------------------------------------------------------------------------------------
def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "compare_transfer.py"
    spec = importlib.util.spec_from_file_location("compare_transfer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.shared
@pytest.mark.slow
def test_quick_from_scratch_cifar(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GAPVISION_SHARED", str(shared_dir))
    root = _bench().extract_cifar(shared_dir)
    out = tmp_path / "c"
    assert main(["compare", "--data", str(root), "--model", "cifarcnn", "--quick", "--no-augment", "--workers", "0",
                 "--quiet", "--out", str(out)]) == 0
    assert "streaming" in (out / "summary.md").read_text()
    for head in ("fc", "gap", "gmp"):
        run = load_run(out / f"{head}-s0")
        assert run.config["train"]["epochs"] == 2 and run.metrics["val"]["images"] == 250
        assert run.preprocess.img_size == 32 and run.metrics["test"]["images"] == 250
        assert run.metrics["best_val_acc"] > 0.12  # 10 classes: chance is 0.1 (about 0.18 after these 2 epochs)
