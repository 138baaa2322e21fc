"""Why networks without BatchNorm get Nesterov SGD at 0.01 by default: gapcnn on builtin:shapes (32 px, batch 16)
with each optimiser side by side, validation accuracy every 250 steps.

    python bench/no_bn_defaults.py                      # gapcnn, SGD 0.01 vs AdamW 3e-4 vs AdamW 1e-3, 1000 steps
    python bench/no_bn_defaults.py --model cifarcnn --steps 500

The network is built by ``gapvision.create_model`` (so with its Kaiming-normal initialisation); the loop is a bare
PyTorch loop over the pipeline's in-memory batches (no augmentation, no schedule), one torch thread per run.
"""
from __future__ import annotations

import argparse
import time


def run(model: str, size: int, steps: int, optimizer: str, lr: float, batch: int, every: int) -> list[tuple]:
    import torch
    import torch.nn.functional as F

    from gapvision.data.batches import make_batches
    from gapvision.data.sources import load_data, resolve_preprocess
    from gapvision.models.classifier import create_model

    torch.manual_seed(0)
    splits = load_data(f"builtin:shapes?n=1600&size={size}", seed=0)
    pre = resolve_preprocess(splits)
    train = make_batches(splits.train, pre, batch, train=True, augment="none", in_memory="on")
    val = make_batches(splits.val, pre, 128, in_memory="on")
    net = create_model(model, "gap", len(splits.classes), img_size=size)
    opt = (torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True) if optimizer == "sgd"
           else torch.optim.AdamW(net.parameters(), lr=lr))
    rows, step, t0, losses = [], 0, time.perf_counter(), []
    while step < steps:
        for x, y in train.epoch(step):
            net.train()
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
                rows.append((step, sum(losses[-50:]) / min(50, len(losses)), right / len(splits.val),
                             time.perf_counter() - t0))
                print(f"{model} {optimizer} {lr:g}: step {step:5d}  loss {rows[-1][1]:.3f}  val acc {rows[-1][2]:.3f}"
                      f"  {rows[-1][3]:.0f} s", flush=True)
            if step >= steps:
                break
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gapcnn")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--configs", default="sgd:0.01,adamw:3e-4,adamw:1e-3")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    results = {}
    for spec in a.configs.split(","):
        opt, lr = spec.split(":")
        results[spec] = run(a.model, a.size, a.steps, opt, float(lr), a.batch_size, a.every)
    print("\n| optimiser | " + " | ".join(f"step {r[0]}" for r in next(iter(results.values()))) + " |")
    print("|---|" + "---|" * len(next(iter(results.values()))))
    for spec, rows in results.items():
        print(f"| {spec} | " + " | ".join(f"{r[2]:.3f}" for r in rows) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
