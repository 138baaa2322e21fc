"""Scaling out with torchrun: real 2-process CPU jobs (gloo) against single-process results, plus the samplers."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from gapvision import cli, distributed
from gapvision.data.builtin import make_shapes
from gapvision.distributed import GlobalBatchSampler, ShardSampler, map_to_jsonl
from gapvision.errors import ConfigError
from gapvision.runs import load_checkpoint, load_run
from gapvision.train.pipeline import train

# cifarcnn has neither BatchNorm nor dropout, and augmentation is seeded per image: nothing depends on which process
# handles an image. 45 training images in global batches of 14: 14, 14, 14, 3 (the last split 2 + 1 across 2 ranks).
DATA = "builtin:shapes?n=45&size=16"
OPTS = dict(model="cifarcnn", head="gap", img_size=16, batch_size=14, augment="basic", workers=0,
            optimizer="sgd", lr=0.02, schedule="none", seed=3, quiet=True, amp="off")  # fp32: equal up to rounding
TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node N ARGS`` on CPU; fails the test with its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr[-4000:]}"
    return res


def as_cli(opts: dict) -> list[str]:
    out = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else [flag, str(v)]
    return out


# A torchrun entry point that records every file each rank creates, writes or renames under $PROBE_ROOT, then runs
# the CLI once per "::"-separated command in the same process group (so train and resume share one launch).
PROBE = textwrap.dedent("""
    import os, sys
    root = os.environ["PROBE_ROOT"]
    log = open(os.path.join(os.environ["PROBE_LOG"], "writes-rank%s.txt" % os.environ["RANK"]), "w")
    def under_root(p):
        return isinstance(p, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(p)).startswith(root)
    def hook(event, args):
        if event == "open" and under_root(args[0]):
            mode, flags = args[1], args[2] or 0
            if (mode and any(c in mode for c in "wax+")) or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                log.write("%s %s\\n" % (event, args[0])); log.flush()
        elif event in ("os.rename", "os.mkdir", "os.remove", "tempfile.mkstemp") and under_root(args[0]):
            log.write("%s %s\\n" % (event, args[0])); log.flush()
    sys.addaudithook(hook)
    from gapvision.cli import main
    argv = " ".join(sys.argv[1:]).split(" :: ")
    sys.exit(max(main(a.split()) for a in argv))
""")


def test_ddp_training_equals_single_process_and_resumes(tmp_path, monkeypatch):
    """Fresh DDP training (1 epoch), then a DDP resume to 2 epochs == 2 single-process epochs; rank 1 writes nothing."""
    single = train(DATA, out=tmp_path / "single", epochs=2, **OPTS)

    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "log").mkdir()
    monkeypatch.setenv("PROBE_ROOT", str((tmp_path / "ddp").resolve()))
    monkeypatch.setenv("PROBE_LOG", str(tmp_path / "log"))
    torchrun("probe.py", "train", "--data", DATA, "--out", "ddp", "--epochs", "1", *as_cli(OPTS),
             "::", "train", "--resume", "ddp", "--epochs", "2", cwd=tmp_path)
    rank0 = (tmp_path / "log" / "writes-rank0.txt").read_text()
    rank1 = (tmp_path / "log" / "writes-rank1.txt").read_text()
    for name in ("config.json", "checkpoint.pt", "model.safetensors", "metrics.json", "history.csv"):
        assert name in rank0, name
    assert rank1 == "", f"rank 1 wrote files:\n{rank1}"

    ddp = load_run(tmp_path / "ddp")
    assert ddp.config["world_size"] == 2 and single.config["world_size"] == 1
    assert ddp.metrics["status"] == "finished" and ddp.metrics["epochs_run"] == 2
    a = load_checkpoint(single.path / "checkpoint.pt")["model"]
    b = load_checkpoint(ddp.path / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    for r1, r2 in zip(single.history, ddp.history, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert r2[key] == pytest.approx(r1[key], abs=1e-4), (key, r1, r2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train("builtin:shapes?n=40&size=16", out=tmp_path_factory.mktemp("run") / "r", epochs=1,
                 **{**OPTS, "batch_size": 16})


def _write_shapes(folder: Path, names: list[str], seed: int) -> None:
    images, _ = make_shapes(len(names), 16, seed=seed)
    for name, im in zip(names, images):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / name)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sharded_predict_equals_unsharded_and_rerun_skips_done(tiny_run, tmp_path, capsys, monkeypatch):
    """A rerun of an earlier, partly done job: 2 processes compute only what is missing, exactly as one would."""
    monkeypatch.chdir(tmp_path)
    run = str(tiny_run.path)
    _write_shapes(tmp_path / "imgs", [f"{i:02d}.png" for i in range(7)] + [f"sub/{i:02d}.png" for i in range(3)], 1)
    _write_shapes(tmp_path / "more", ["a.png", "b.png"], 3)
    (tmp_path / "list.csv").write_text("image\nmore/b.png\nmore/a.png\n")
    assert cli.main(["predict", run, "imgs", "--json"]) == 0
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(plain) == 10

    # earlier: one process did imgs/sub (one record since edited by hand: it must be kept, not recomputed), and an
    # interrupted 4-process job left a shard with one record and a torn last line
    assert cli.main(["predict", run, "imgs/sub", "--output", "out.jsonl"]) == 0
    assert "3 records (3 computed now, 0 already done)" in capsys.readouterr().out
    done = _records(tmp_path / "out.jsonl")
    done[0]["top"] = [{"label": "kept", "prob": 1.0}]
    (tmp_path / "out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in done))
    parts = tmp_path / "out.jsonl.parts"
    parts.mkdir()
    (parts / "part-00003.jsonl").write_text(json.dumps({"image": "imgs/06.png", "top": [{"label": "from-part"}]})
                                            + '\n{"image": "imgs/05.p')

    res = torchrun("-m", "gapvision", "predict", run, "imgs", "list.csv", "--output", "out.jsonl", cwd=tmp_path)
    assert "12 records (8 computed now by 2 processes, 4 already done)" in res.stdout
    out = _records(tmp_path / "out.jsonl")
    names = distributed.expand_inputs(["imgs", "list.csv"])
    assert [r["image"] for r in out] == names == [r["image"] for r in plain] + [
        str(tmp_path / "more" / "b.png"), str(tmp_path / "more" / "a.png")]
    by_name = {r["image"]: r for r in out}
    assert by_name["imgs/sub/00.png"]["top"] == [{"label": "kept", "prob": 1.0}]
    assert by_name["imgs/06.png"]["top"] == [{"label": "from-part"}]
    computed = [r for r in plain if r["image"] not in ("imgs/sub/00.png", "imgs/06.png")]
    assert [by_name[r["image"]] for r in computed] == computed  # sharded == unsharded, record for record
    assert [by_name[n] for n in names[-2:]] == tiny_run.predict(names[-2:])
    assert not parts.exists()


def test_localize_output_matches_json_records(tiny_run, tmp_path, capsys, monkeypatch):
    """``localize --output`` goes through the same sharded writer as predict (one process here)."""
    monkeypatch.chdir(tmp_path)
    _write_shapes(tmp_path / "imgs", ["b.png", "a.png", "sub/c.png"], 4)
    opts = ["--scale", "4", "--min-score", "0"]
    assert cli.main(["localize", str(tiny_run.path), "imgs", "--json", *opts]) == 0
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cli.main(["localize", str(tiny_run.path), "imgs", "--output", "loc.jsonl", *opts]) == 0
    assert "3 records (3 computed now, 0 already done)" in capsys.readouterr().out
    assert _records(tmp_path / "loc.jsonl") == plain and [r["image"] for r in plain] == [
        "imgs/a.png", "imgs/b.png", "imgs/sub/c.png"]


# -- in-process: the index arithmetic behind the equivalence ---------------------------------------------------------
@pytest.mark.parametrize("world,batch", [(1, 4), (2, 4), (3, 6), (4, 8)])
@pytest.mark.parametrize("n", [1, 5, 8, 13, 24, 25])
def test_global_batch_slices_rebuild_the_single_process_batches(world, batch, n):
    g = torch.Generator()
    ranks = []
    for r in range(world):
        g.manual_seed(7)
        s = GlobalBatchSampler(n, batch, r, world, generator=g)
        idx = list(s)
        assert len(idx) == len(s)
        local = batch // world
        ranks.append(([idx[i: i + local] for i in range(0, len(idx), local)], s))
    steps = -(-n // batch)
    assert all(len(chunks) == steps for chunks, _ in ranks)  # every rank takes the same number of steps
    order = torch.randperm(n, generator=torch.Generator().manual_seed(7)).tolist()
    for k in range(steps):
        expected = order[k * batch: (k + 1) * batch]
        weights = [s.weight(k) for _, s in ranks]
        real = [chunks[k] for (chunks, _), w in zip(ranks, weights) if w > 0]
        assert sum(real, []) == expected
        assert sum(weights) == pytest.approx(1.0)
        assert all(w == pytest.approx(len(c[k]) / len(expected)) for (c, _), w in zip(ranks, weights) if w > 0)


def test_eval_shards_cover_every_image_once():
    for n, world in [(10, 3), (7, 2), (1, 2)]:
        shards = [list(ShardSampler(n, r, world)) for r in range(world)]
        if n >= world:
            assert sorted(sum(shards, [])) == list(range(n))
        else:
            assert all(s == list(range(n)) for s in shards)


def test_global_batch_must_divide_by_process_count():
    assert distributed.local_batch_size(64, 4) == 16
    with pytest.raises(ConfigError, match="--batch-size 30 .* divisible by the 4 processes"):
        distributed.local_batch_size(30, 4)


def test_map_to_jsonl_single_process_skips_done_and_orders(tmp_path):
    out = tmp_path / "o.jsonl"
    calls: list[list[str]] = []

    def fn(chunk: list[str]) -> list[dict]:
        calls.append(chunk)
        return [{"image": n, "len": len(n)} for n in chunk]

    res = map_to_jsonl(["b", "a", "ccc"], fn, out, batch_size=2)
    assert (res.computed, res.done_before) == (3, 0) and calls == [["b", "a"], ["ccc"]]
    res = map_to_jsonl(["dd", "ccc", "a"], fn, out)
    assert (res.computed, res.done_before) == (1, 2) and calls[-1] == ["dd"]
    assert [r["image"] for r in _records(out)] == ["dd", "ccc", "a"]  # "b" left the input, so left the output
