"""Why networks without BatchNorm start from a data-dependent initialisation: gapcnn on builtin:shapes with the
builder's Kaiming-normal start and with models/data_init.py's, side by side, validation accuracy every 100 steps.

    python bench/no_bn_defaults.py                          # gapcnn, 64 px, batch 16, AdamW 1e-3, 600 steps
    python bench/no_bn_defaults.py --model cifarcnn --size 32 --steps 300
    python bench/no_bn_defaults.py --configs data:adamw:1e-3,kaiming:sgd:0.01 --seeds 0,1

Each row is ``INIT:OPTIMIZER:LR`` for one seed; the network is built by ``gapvision.create_model`` and, for
``data``, started by ``data_dependent_init`` on 64 training images, as ``gapvision train`` does. The loop is a bare
PyTorch loop over the pipeline's in-memory batches (no augmentation, constant lr, bf16 autocast where the CPU has
it), one torch thread per run. Results go to bench/results/no_bn_defaults-*.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(model: str, size: int, steps: int, init: str, optimizer: str, lr: float, batch: int, every: int,
        seed: int) -> list[tuple]:
    import torch
    import torch.nn.functional as F

    from gapvision.data.batches import make_batches
    from gapvision.data.sources import load_data, resolve_preprocess
    from gapvision.models.classifier import create_model
    from gapvision.models.data_init import data_dependent_init
    from gapvision.train.recipes import native_bf16

    torch.manual_seed(seed)
    splits = load_data(f"builtin:shapes?n=1600&size={size}", seed=0)
    pre = resolve_preprocess(splits)
    train = make_batches(splits.train, pre, batch, train=True, augment="none", in_memory="on", seed=seed)
    val = make_batches(splits.val, pre, 200, in_memory="on")
    net = create_model(model, "gap", len(splits.classes), img_size=size)
    if init == "data":
        sample = make_batches(splits.train.subset(list(range(64))), pre, 64, in_memory="on")
        data_dependent_init(net.backbone, next(iter(sample.epoch(0)))[0])
    opt = (torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True) if optimizer == "sgd"
           else torch.optim.AdamW(net.parameters(), lr=lr))
    bf16 = native_bf16("cpu")
    rows, step, t0, losses = [], 0, time.perf_counter(), []
    while step < steps:
        for x, y in train.epoch(step):
            net.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % every == 0:
                net.eval()
                with torch.no_grad():
                    right = sum(int((net(xv).argmax(1) == yv).sum()) for xv, yv in val.epoch(0))
                rows.append((step, round(sum(losses[-every:]) / every, 3), round(right / len(splits.val), 4),
                             round(time.perf_counter() - t0, 1)))
                print(f"{model} {init} {optimizer} {lr:g} seed {seed}: step {step:5d}  loss {rows[-1][1]:.3f}  "
                      f"val acc {rows[-1][2]:.3f}  {rows[-1][3]:.0f} s", flush=True)
            if step >= steps:
                break
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gapcnn")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--configs", default="kaiming:adamw:1e-3,data:adamw:1e-3")
    p.add_argument("--seeds", default="0")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    results = {}
    for spec in a.configs.split(","):
        init, opt, lr = spec.split(":")
        for seed in (int(s) for s in a.seeds.split(",")):
            results[f"{spec} seed {seed}"] = run(a.model, a.size, a.steps, init, opt, float(lr), a.batch_size,
                                                 a.every, seed)
    out = REPO / "bench" / "results" / f"no_bn_defaults-{time.strftime('%Y%m%d-%H%M')}.json"
    out.write_text(json.dumps({"model": a.model, "size": a.size, "batch_size": a.batch_size,
                               "rows": {k: [list(r) for r in v] for k, v in results.items()}}, indent=1))
    first = next(iter(results.values()))
    print(f"\n| {a.model}, {a.size} px, batch {a.batch_size}: init, optimiser, lr | "
          + " | ".join(f"step {r[0]}" for r in first) + " |")
    print("|---|" + "---|" * len(first))
    for spec, rows in results.items():
        print(f"| {spec} | " + " | ".join(f"{r[2]:.3f}" for r in rows) + " |")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
