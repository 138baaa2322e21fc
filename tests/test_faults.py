"""Training faults in real processes: ``kill -9`` in the middle of an epoch then ``--resume``, Ctrl-C, a NaN loss and a
disk that fills up mid-write -- plus the in-process checks that every artefact writer is atomic.

The subprocess runs share one module fixture and run side by side (each single-threaded), so the file stays short:
phase 1 = the uninterrupted reference, the run killed with SIGKILL, the run stopped with SIGINT and the diverging run;
phase 2 = the two resumes and a resume under a file-size limit (the kernel fails its writes part-way, like a full
disk). The resumed runs must equal the reference bit for bit (``--deterministic``, CPU, same seed).
"""
from __future__ import annotations

import ast
import csv
import errno
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gapvision import atomic
from gapvision.cli import main
from gapvision.errors import GapvisionError
from gapvision.runs import RunWriter, load_checkpoint, save_weights

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and resource limits")

SRC = Path(atomic.__file__).resolve().parent
EPOCHS = 2  # killed/interrupted in epoch 2, resumed to the end (test_train checks longer resumes in-process)
# Streaming (per-image PIL augmentation, --augment jitter): an epoch lasts long enough for a signal sent when its
# progress bar shows to land inside it (60 steps: under load the watcher reads the output late, and 20 steps were
# sometimes over by then); the in-memory path runs these steps so fast that the signal could arrive
# after the epoch (so do bf16 autocast and channels-last, plain defaults where they are fast: fp32, NCHW here).
RUN = ["--data", "builtin:shapes?n=960&size=32", "--model", "fastnet_s", "--epochs", str(EPOCHS), "--img-size", "32",
       "--batch-size", "16", "--augment", "jitter", "--in-memory", "off", "--workers", "0", "--deterministic", "--seed",
       "3", "--lr", "0.003", "--amp", "off", "--channels-last", "off"]
# SGD at 0.05 for epoch 1, then the step schedule multiplies the rate by 1e8: epoch 2 diverges.
DIVERGING = ["--data", "builtin:shapes?n=160&size=32", "--model", "fastnet_s", "--epochs", str(EPOCHS), "--img-size",
             "32", "--batch-size", "16", "--augment", "none", "--workers", "0", "--optimizer", "sgd", "--lr", "0.05",
             "--schedule", "step", "--step-epochs", "1", "--step-gamma", "1e8", "--quiet"]
FILE_LIMIT = 64 * 1024  # bytes: config.json and history.csv fit, model.safetensors (~1 MB) and checkpoint.pt do not
MID_EPOCH_2 = re.compile(rb"epoch 2/%d:\s+(\d+)%%\|" % EPOCHS)  # the progress bar of epoch 2, e.g. "epoch 2/3:  35%|"
EPOCH_2_DONE = re.compile(rb"epoch\s+2/%d\s+train loss" % EPOCHS)  # epoch 2's summary line
TIMEOUT = 600


def _default_signals() -> None:
    """In the child before exec: SIGINT at its default and no signal blocked, as a shell starts a job (a Python that
    inherits SIGINT ignored -- from whatever ran earlier in the test process -- never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


class Job:
    """``python -m gapvision ARGS`` in the background, its output (stdout and stderr) collected as it comes."""

    def __init__(self, args: list[str], cwd: Path, file_limit: int | None = None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if file_limit is None:
            cmd = [sys.executable, "-m", "gapvision", *args]
        else:  # a disk that fills up: the kernel stops every write to a file at file_limit bytes (EFBIG)
            prelude = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                       f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_limit}, {file_limit})); "
                       "sys.argv = ['gapvision'] + sys.argv[1:]; runpy.run_module('gapvision', run_name='__main__')")
            cmd = [sys.executable, "-c", prelude, *args]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True,  # its own process group, like a terminal's job
                                     preexec_fn=_default_signals)
        self.output = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self.output += chunk

    def in_epoch_2(self) -> bool:
        """Epoch 2's progress bar, as last printed, shows a step done and the epoch is not over."""
        shown = MID_EPOCH_2.findall(self.output)
        return bool(shown) and 0 < int(shown[-1]) < 100 and not EPOCH_2_DONE.search(self.output)

    def wait(self) -> int:
        rc = self.proc.wait(timeout=TIMEOUT)
        self._reader.join(timeout=10)
        return rc

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    @property
    def last_line(self) -> str:
        return self.text.replace("\r", "\n").strip().splitlines()[-1]


def signal_mid_epoch_2(signals: dict[Job, int]) -> None:
    """Send each job its signal (to its process group, as Ctrl-C in a terminal does) as soon as it is inside epoch 2;
    the jobs are watched together, so one reaching epoch 2 late cannot let another finish unsignalled."""
    pending = dict(signals)
    deadline = time.monotonic() + TIMEOUT
    while pending and time.monotonic() < deadline:
        for job, sig in list(pending.items()):
            if job.in_epoch_2():
                os.killpg(job.proc.pid, sig)
                del pending[job]
            elif job.proc.poll() is not None:
                raise AssertionError(f"finished before it could be signalled in epoch 2:\n{job.text}")
        time.sleep(0.005)
    if pending:
        raise AssertionError("never saw epoch 2 in progress:\n" + "\n".join(job.text for job in pending))


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    # phase 1: four trainings side by side
    jobs = {"reference": Job(["train", *RUN, "--out", "reference"], root),
            "killed": Job(["train", *RUN, "--out", "killed"], root),
            "interrupted": Job(["train", *RUN, "--out", "interrupted"], root),
            "diverged": Job(["train", *DIVERGING, "--out", "diverged"], root)}
    signal_mid_epoch_2({jobs["killed"]: signal.SIGKILL, jobs["interrupted"]: signal.SIGINT})
    result: dict = {"root": root, "jobs": jobs, "rc": {name: job.wait() for name, job in jobs.items()}}
    assert result["rc"]["reference"] == 0, jobs["reference"].text
    result["after_kill"] = _snapshot(root / "killed")
    result["after_interrupt"] = _snapshot(root / "interrupted")
    shutil.copytree(root / "interrupted", root / "disk-full")
    # phase 2: resume both, and resume a copy with writes limited to FILE_LIMIT bytes per file
    resumes = {"killed": Job(["train", "--resume", "killed"], root),
               "interrupted": Job(["train", "--resume", "interrupted"], root),
               "disk-full": Job(["train", "--resume", "disk-full"], root, file_limit=FILE_LIMIT)}
    result["resumes"] = resumes
    result["resume_rc"] = {name: job.wait() for name, job in resumes.items()}
    return result


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m.pop("seconds")
    return m


def _assert_same_as_reference(run: Path, reference: Path) -> None:
    """Same best weights, same last-epoch weights (bit for bit), same history and metrics (times aside)."""
    for name in ("model.safetensors",):
        a, b = load_file(str(reference / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    last_a, last_b = load_checkpoint(reference / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    assert all(torch.equal(last_a["model"][k], last_b["model"][k]) for k in last_a["model"])
    assert _history(run) == _history(reference)
    assert _metrics(run) == _metrics(reference)
    assert not list(run.glob(".*.tmp"))


def _epochs_saved(snapshot: dict[str, bytes], run: Path) -> int:
    path = run.parent / f"{run.name}-check.pt"
    path.write_bytes(snapshot["checkpoint.pt"])
    return load_checkpoint(path)["state"]["epoch"]


# --------------------------------------------------------------------------------------------- real processes
@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(faults):
    root = faults["root"]
    assert faults["rc"]["killed"] == -signal.SIGKILL
    saved = faults["after_kill"]
    assert _epochs_saved(saved, root / "killed") == 1  # killed during epoch 2: epoch 1 is what survived
    assert len(saved["history.csv"].decode().strip().splitlines()) == 1 + 1  # header + epoch 1
    assert "metrics.json" not in saved  # nothing ran after the kill
    resume = faults["resumes"]["killed"]
    assert faults["resume_rc"]["killed"] == 0, resume.text
    assert "resuming killed after epoch 1" in resume.text
    _assert_same_as_reference(root / "killed", root / "reference")
    assert json.loads((root / "killed" / "metrics.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(faults):
    root = faults["root"]
    job = faults["jobs"]["interrupted"]
    assert faults["rc"]["interrupted"] == 130, job.text  # the shell convention for Ctrl-C
    assert job.last_line == "interrupted after epoch 1; the run is saved: continue with gapvision train --resume " \
                            "interrupted"
    assert "Traceback" not in job.text
    saved = faults["after_interrupt"]
    assert _epochs_saved(saved, root / "interrupted") == 1
    assert json.loads(saved["metrics.json"])["status"] == "interrupted"  # metrics of the best weights so far
    assert {"model.safetensors", "curves.png", "confusion.png"} <= set(saved)
    assert faults["resume_rc"]["interrupted"] == 0, faults["resumes"]["interrupted"].text
    _assert_same_as_reference(root / "interrupted", root / "reference")


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(faults):
    run = faults["root"] / "diverged"
    job = faults["jobs"]["diverged"]
    assert faults["rc"]["diverged"] == 2, job.text
    assert re.fullmatch(r"error: the training loss became (nan|inf|-inf) in epoch 2; stopped and kept the checkpoint "
                        r"of epoch 1: lower --lr \(now 0\.05\) or set --clip-grad", job.last_line), job.last_line
    assert "Traceback" not in job.text
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in load_file(str(run / "model.safetensors")).values())
    assert len(_history(run)) == 1 and math.isfinite(float(_history(run)[0]["train_loss"]))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["epochs_run"] == 1


@pytest.mark.slow
def test_disk_full_mid_write_leaves_the_previous_artefacts_intact(faults):
    """A resume whose writes the kernel cuts off at FILE_LIMIT bytes: the error names the file in one line, every
    artefact is the previous one byte for byte, no temporary file is left, and the run still resumes exactly
    (the same bytes resumed without the limit in test_ctrl_c_... equal the reference)."""
    run = faults["root"] / "disk-full"
    job = faults["resumes"]["disk-full"]
    assert faults["resume_rc"]["disk-full"] == 2, job.text
    line = job.last_line
    assert re.match(r"error: could not write disk-full/(model\.safetensors|checkpoint\.pt) "
                    r"\(File too large\); the previous \S+, if any, is untouched", line), line
    assert "--resume" in line and "Traceback" not in job.text
    after = _snapshot(run)
    before = faults["after_interrupt"]
    assert set(after) == set(before)  # no temporary file left behind
    for name, data in before.items():
        if name != "config.json":  # rewritten (identical settings) when the resume starts
            assert after[name] == data, name


def test_absurd_learning_rate_stops_in_epoch_1_with_nothing_to_resume(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["train", "--data", "builtin:shapes?n=32&size=16", "--model", "gapcnn", "--epochs", "2", "--img-size",
               "16", "--batch-size", "8", "--workers", "0", "--quiet", "--lr", "1e30", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert re.match(r"error: the training loss became (nan|inf) in epoch 1; .* lower --lr \(now 1e\+30\)", err), err
    assert not (out / "checkpoint.pt").exists() and not (out / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------- atomic writers
def _history_rows(v: float) -> list[dict]:
    return [{"epoch": 1, "train_loss": v, "train_acc": 0.5, "val_loss": v, "val_acc": 0.5, "lr": 0.1, "seconds": 1.0}]


def _write_artefact(folder: Path, name: str, v: float) -> None:
    """Write artefact ``name`` into ``folder`` with content that depends on ``v``, through the project's writers."""
    from gapvision.data.imageset import ImageSet
    from gapvision.data.inspect import write_sample_grid
    from gapvision.plots import plot_confusion, plot_curves

    writer = RunWriter(folder)
    if name == "config.json":
        writer.json(name, {"value": v})
    elif name == "history.csv":
        writer.history(_history_rows(v))
    elif name == "model.safetensors":
        net = torch.nn.Linear(64, 64)
        torch.nn.init.constant_(net.weight, v)
        save_weights(net, folder / name)
    elif name == "checkpoint.pt":
        writer.checkpoint({"model": {"w": torch.full((64, 64), v)}, "state": {"epoch": int(v)}})
    elif name == "curves.png":
        plot_curves(_history_rows(v) * 2, folder / name)
    elif name == "confusion.png":
        plot_confusion(np.array([[int(v), 1], [2, 3]]), ["a", "b"], folder / name)
    elif name == "samples.png":
        x = np.full((2, 8, 8, 3), int(v) % 256, np.uint8)
        write_sample_grid(ImageSet(x, np.array([0, 1]), ["a", "b"]), folder / name)


ARTEFACTS = ["config.json", "history.csv", "model.safetensors", "checkpoint.pt", "curves.png", "confusion.png",
             "samples.png"]


@pytest.mark.parametrize("name", ARTEFACTS)
def test_a_full_disk_mid_write_keeps_the_previous_file(tmp_path, monkeypatch, name):
    """ENOSPC after half the bytes are written: one clear error naming the file, the old file unchanged, no
    temporary file left."""
    _write_artefact(tmp_path, name, 1.0)
    before = (tmp_path / name).read_bytes()
    real_write = Path.write_bytes

    def half_then_full(self: Path, data: bytes) -> int:
        real_write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(GapvisionError) as e:
        _write_artefact(tmp_path, name, 7.0)
    monkeypatch.undo()
    message = str(e.value)
    assert "\n" not in message and str(tmp_path / name) in message and "No space left on device" in message
    assert (tmp_path / name).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    _write_artefact(tmp_path, name, 7.0)  # space again: the write goes through
    assert (tmp_path / name).read_bytes() != before


def test_a_full_disk_during_training_keeps_the_last_epoch_and_resumes(tmp_path, monkeypatch, capsys):
    """Through the CLI: the disk fills while epoch 2's checkpoint is written; the error is one line, epoch 1's
    files are intact, and ``--resume`` later finishes the run."""
    out = tmp_path / "r"
    argv = ["train", "--data", "builtin:shapes?n=32&size=16", "--model", "gapcnn", "--epochs", "2", "--img-size",
            "16", "--batch-size", "8", "--workers", "0", "--quiet", "--out", str(out)]
    real_write = atomic.write_bytes
    writes = {"checkpoint.pt": 0}

    def enospc_on_second_checkpoint(path, data: bytes) -> None:  # a third of the bytes, then the disk is full
        if Path(path).name == "checkpoint.pt":
            writes["checkpoint.pt"] += 1
            if writes["checkpoint.pt"] == 2:
                with atomic.atomic_path(path) as tmp:
                    with open(tmp, "wb") as f:
                        f.write(data[: len(data) // 3])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data)

    monkeypatch.setattr(atomic, "write_bytes", enospc_on_second_checkpoint)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: could not write {out / 'checkpoint.pt'} (No space left on device)"), err
    assert "\n" not in err
    assert load_checkpoint(out / "checkpoint.pt")["state"]["epoch"] == 1
    assert len(_history(out)) == 1 and not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert len(_history(out)) == 2 and json.loads((out / "metrics.json").read_text())["status"] == "finished"


def test_stale_temporary_files_are_removed_when_a_run_is_reopened(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"kept")
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")  # what a kill -9 during a write leaves
    RunWriter(tmp_path)
    assert not stale.exists() and (tmp_path / "checkpoint.pt").read_bytes() == b"kept"


def test_atomic_files_get_the_usual_permissions(tmp_path):
    """mkstemp creates 0600 files; artefacts must be readable like any file the user writes (umask applies)."""
    atomic.write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask


# Writes that are not artefacts, each with its reason.
NOT_ARTEFACTS = {
    ("distributed.py", "open"): "append-only shards that cut a torn last line when reopened",
    ("localize/api.py", "open"): "append-only camera log, one JSON line per frame",
    ("serve/app.py", "write_bytes"): "an upload copied into a private temporary folder for the decoder",
}
WRITE_METHODS = {"savefig", "write_text", "write_bytes", "save_file", "save", "dump", "savez", "savez_compressed",
                 "to_csv", "to_json"}


def test_every_artefact_is_written_atomically():
    """Static guard: outside atomic.py, files are written only through gapvision.atomic. Allowed: writer callbacks
    passed to atomic.write_with (lambdas), writes into in-memory buffers, and the listed non-artefacts."""
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel == "atomic.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _writes_a_file(node) and (rel, _name(node)) not in NOT_ARTEFACTS \
                    and not _inside_lambda(node, parents) and not _writes_to_memory(node):
                problems.append(f"{rel}:{node.lineno}: {ast.unparse(node)[:100]}")
    assert not problems, "non-atomic writes (use gapvision.atomic):\n" + "\n".join(problems)


def _name(node: ast.Call) -> str:
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def _writes_a_file(node: ast.Call) -> bool:
    name = _name(node)
    owner = ast.unparse(node.func.value) if isinstance(node.func, ast.Attribute) else ""
    if owner == "atomic":
        return False
    if name == "open":
        mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
        return isinstance(mode, ast.Constant) and bool(set(str(mode.value)) & set("wax+"))
    if owner == "shutil":
        return name in ("copy", "copyfile", "copy2", "copytree", "move")
    if not owner:  # plain functions: to_csv(rows) builds a string, safetensors' save() returns bytes
        return name == "save_file"
    return name in WRITE_METHODS or (name == "export" and owner.endswith("onnx"))


def _inside_lambda(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Lambda):
            return True
    return False


def _writes_to_memory(node: ast.Call) -> bool:
    """``image.save(buf, ...)``, ``torch.onnx.export(net, args, buf)``, the dynamo exporter (returns a program)."""
    names = [ast.unparse(a) for a in node.args] + [ast.unparse(k.value) for k in node.keywords]
    return any(n in ("buf", "buffer") or n.startswith("io.BytesIO") for n in names) or (
        _name(node) == "export" and any(k.arg == "dynamo" and ast.unparse(k.value) == "True" for k in node.keywords))
