"""Training throughput with 1 vs N torchrun processes on the same CPU cores, measured side by side (interleaved).

    python bench/ddp_scaling.py                                    # 1 vs 2 processes, fastnet_s, 32 px shapes
    python bench/ddp_scaling.py --procs 1,2,4 --n 4096 --epochs 4 --rounds 3

Each configuration is a real ``torchrun --nproc_per_node N -m gapvision train`` job with the same global batch; with
C cores (``--cores``, default: the largest N) a job of N processes gives each process C/N threads, so every job uses
the same cores; 1 process x 1 thread is measured too (the per-core reference). Throughput = training images / epoch wall time (from the run's history.csv; an epoch includes its
sharded validation pass), median over the epochs after the first (warm-up) and over ``--rounds`` interleaved rounds,
so load from other programs hits every configuration alike. The speed-up of each N against 1 process is printed.
"""
from __future__ import annotations

import argparse
import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(nproc: int, a: argparse.Namespace, out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "gapvision", "train",
            "--data", f"builtin:shapes?n={a.n}&size={a.img_size}", "--model", a.model, "--head", "gap",
            "--img-size", str(a.img_size), "--batch-size", str(a.batch_size), "--epochs", str(a.epochs),
            "--optimizer", "sgd", "--lr", "0.05", "--device", "cpu", "--workers", "0", "--quiet", "--out", str(out)]


def epoch_rates(nproc: int, threads: int, a: argparse.Namespace, workdir: Path) -> list[float]:
    """Training images per second of each epoch after the first, for one job of ``nproc`` x ``threads``."""
    out = workdir / f"p{nproc}-{time.monotonic_ns()}"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    cmd = train_command(nproc, a, out)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    with open(out / "history.csv") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    return [a.n / s for s in seconds[1:]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", default="1,2", help="comma-separated process counts (default 1,2)")
    p.add_argument("--cores", type=int, help="CPU cores every job shares out (default: the largest process count)")
    p.add_argument("--model", default="fastnet_s")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--n", type=int, default=1024, help="training images (builtin:shapes)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per job; the first is warm-up (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the configurations (default 2)")
    a = p.parse_args(argv)
    procs = [int(x) for x in a.procs.split(",")]
    a.cores = a.cores or max(procs)
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is warm-up)")

    configs = [(n, max(1, a.cores // n)) for n in procs]
    configs += [(1, 1)] if (1, 1) not in configs else []
    rates: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for n, t in configs:
                rates[n, t] += epoch_rates(n, t, a, Path(tmp))
                print(f"round {r + 1}/{a.rounds}: {n} process(es) x {t} thread(s): "
                      f"{statistics.median(rates[n, t]):.0f} images/s so far", file=sys.stderr)

    print(f"{a.model} at {a.img_size} px, {a.n} images, global batch {a.batch_size}, {a.cores} cores "
          f"(os.cpu_count {os.cpu_count()}), median of {a.rounds} rounds x {a.epochs - 1} epochs")
    base, one = statistics.median(rates[configs[0]]), statistics.median(rates[1, 1])
    print(f"{'processes':>9}  {'threads each':>12}  {'images/s':>9}  {'vs ' + 'x'.join(map(str, configs[0])):>7}"
          f"  {'vs 1x1':>7}")
    for n, t in configs:
        med = statistics.median(rates[n, t])
        print(f"{n:>9}  {t:>12}  {med:>9.0f}  {med / base:>6.2f}x  {med / one:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
