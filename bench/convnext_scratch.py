"""ConvNeXt-T from scratch on builtin:shapes with torchvision's own recipe, beside ResNet-18 in the same loop and
gapvision's default convnext_tiny: does ConvNeXt-T fail bench/backbones.py because of gapvision's defaults or because
of the architecture at this budget (200 steps of batch 16 at 64 px)?

    python bench/convnext_scratch.py            # the six default rows, 200 steps, 1 thread: about 9 minutes
    python bench/convnext_scratch.py --models convnext_tiny:1e-3,resnet18:1e-3 --steps 400 --seed 1
    python bench/convnext_scratch.py --models convnext_tiny:1e-3:whiten --size 128        # upsampled input
    python bench/convnext_scratch.py --models convnext_tiny:1e-3:whiten --batch-size 64   # 4x the images, same steps
    python bench/convnext_scratch.py --models convnext_tiny:1e-3:pooled,convnext_tiny:1e-3:whiten:pooled  # --stem pooled

Each row of ``--models`` is ``ARCH:LR``, ``ARCH:LR:whiten``, ``ARCH:LR:pooled`` or ``ARCH:LR:whiten:pooled``, ``ARCH`` a torchvision builder (``convnext_tiny``,
``resnet18``...) built with ``num_classes=4`` and trained by the plain loop below with ConvNeXt's paper recipe, not
gapvision's: AdamW (weight decay 0.05), ``--warmup`` steps of linear warm-up then cosine to 0, stochastic depth 0.1 for
ConvNeXt, fp32, no augmentation (the paper's mixup/RandAugment/EMA only matter over hundreds of epochs). ``:whiten``
adds the one piece of gapvision's default start that ResNet-18 needs to learn this set in 200 steps: the first
convolution set to whitened patch components (models/whitening.py's ``whiten_first_conv``, on the 64 training images
gapvision.train uses). ``:pooled`` first swaps in the stem that gapvision's convnext_tiny takes from scratch
(``--stem pooled``: the patchify convolution at stride 2, then a 3 x 3 max pool). The images are the bench's: ``builtin:shapes`` loaded, normalised and batched by gapvision's
own data code (seed 0: 1600 train, 400 val images; ``--size`` resizes them there). The row ``gapvision`` is
bench/backbones.py's convnext_tiny row itself (``gapvision.train("builtin:shapes", model="convnext_tiny",
epochs=STEPS // 100)``: 64 px, batch 16, every default; ``--size``/``--batch-size`` do not apply to it). Chance is
0.25; the bench's target is 0.50 validation accuracy. Results go to bench/results/convnext_scratch-*.json.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = "builtin:shapes"
DEFAULT_MODELS = ("convnext_tiny:1e-3,convnext_tiny:4e-3,convnext_tiny:1e-3:whiten,resnet18:1e-3,resnet18:1e-3:whiten,"
                  "gapvision")


def warmup_cosine(warmup: int, steps: int):
    """The lr factor at step t: linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``steps``."""
    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, steps - warmup)))
    return factor


def vanilla(arch: str, lr: float, steps: int, batch: int, size: int, seed: int, warmup: int, wd: float,
            every: int, whiten: bool = False, pooled: bool = False) -> dict:
    """``arch`` from torchvision trained for ``steps`` steps by a bare AdamW loop: its row (train loss/acc every
    ``every`` steps, final validation accuracy). ``whiten``: its first convolution set by gapvision's
    ``whiten_first_conv`` first (the one piece of gapvision's default start that ResNet-18 needs here); ``pooled``:
    ConvNeXt's stem made overlapping and max-pooled first (gapvision's ``--stem pooled``, models/backbones.py)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torchvision

    from gapvision.data.batches import make_batches
    from gapvision.data.sources import load_data, resolve_preprocess

    splits = load_data(DATA, seed=0)
    pre = resolve_preprocess(splits, img_size=size)
    train = make_batches(splits.train, pre, batch, train=True, augment="none", in_memory="on", seed=seed, workers=1)
    val = make_batches(splits.val, pre, 100, in_memory="on", workers=1)
    torch.manual_seed(seed)
    extra = {"stochastic_depth_prob": 0.1} if arch.startswith("convnext") else {}
    net = getattr(torchvision.models, arch)(num_classes=len(splits.classes), **extra)
    if pooled:  # gapvision's --stem pooled, before the start (which then whitens the pooled stem's convolution)
        from gapvision.models.backbones import pooled_patchify_stem

        pooled_patchify_stem(net.features)
    if whiten:  # gapvision's default start of the first convolution, from the same 64 images as gapvision.train's
        from gapvision.models.whitening import whiten_first_conv
        from gapvision.train.pipeline import INIT_IMAGES

        pick = np.sort(np.random.default_rng(0).permutation(len(splits.train))[:INIT_IMAGES])
        x0, _ = next(iter(make_batches(splits.train.subset(pick), pre, len(pick), workers=0).epoch(0)))
        with torch.no_grad():
            assert whiten_first_conv(net, x0), f"{arch}: no first convolution to whiten"
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, steps))
    log: list[dict] = []
    step, loss_sum, right, seen, t0 = 0, 0.0, 0, 0, time.perf_counter()
    epoch = 0
    while step < steps:
        for x, y in train.epoch(epoch):
            net.train()
            out = net(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(y)
            right += int((out.argmax(1) == y).sum())
            seen += len(y)
            step += 1
            if step % every == 0:
                log.append({"step": step, "train_loss": round(loss_sum / seen, 4), "train_acc": round(right / seen, 4),
                            "seconds": round(time.perf_counter() - t0, 1)})
                print(f"  {arch} lr {lr:g}{' whitened' if whiten else ''}: step {step:4d}  "
                      f"train loss {log[-1]['train_loss']:.3f}  acc {log[-1]['train_acc']:.3f}  "
                      f"{log[-1]['seconds']:.0f} s", flush=True)
                loss_sum, right, seen = 0.0, 0, 0
            if step >= steps:
                break
        epoch += 1
    net.eval()
    first = make_batches(splits.train.subset(list(range(len(splits.val)))), pre, 100, in_memory="on", workers=1)
    with torch.no_grad():  # and as many training images, in eval mode: fitted but not learnt, or not even fitted
        correct = sum(int((net(xv).argmax(1) == yv).sum()) for xv, yv in val.epoch(0))
        fitted = sum(int((net(xt).argmax(1) == yt).sum()) for xt, yt in first.epoch(0))
    seconds = time.perf_counter() - t0
    return {"row": f"{arch}:{lr:g}" + (":whiten" if whiten else "") + (":pooled" if pooled else ""),
            "recipe": f"torchvision {arch}, AdamW {lr:g} wd {wd:g}, {warmup} warm-up + cosine"
            + (", stochastic depth 0.1" if extra else "") + (", first conv whitened" if whiten else "") + (", pooled stem" if pooled else ""),
            "img_size": pre.img_size, "batch_size": batch, "steps": steps, "log": log,
            "val_acc": round(correct / len(splits.val), 4), "seconds": round(seconds, 1),
            "train_images_acc": round(fitted / len(splits.val), 4)}


def gapvision_default(steps: int) -> dict:
    """bench/backbones.py's convnext_tiny row (``--init auto``, the default start) for ``steps // 100`` epochs."""
    import gapvision as gv
    from gapvision.errors import ConfigError

    sys.path.insert(0, str(REPO / "bench"))
    from backbones import train_one

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        r = train_one(gv, ConfigError, "convnext_tiny", "auto", max(1, steps // 100), Path(tmp))
    log = [{"step": 100 * (i + 1), "train_acc": a, "val_acc": v} for i, (a, v) in enumerate(zip(r["train_acc"],
                                                                                                 r["val_acc"]))]
    for e in log:
        print(f"  gapvision convnext_tiny: step {e['step']:4d}  train acc (epoch) {e['train_acc']:.3f}  "
              f"val acc {e['val_acc']:.3f}", flush=True)
    return {"row": "gapvision", "recipe": f"gapvision.train defaults (started as {r['started_as']}, lr {r['lr']:g})",
            "img_size": r["img_size"], "batch_size": r["batch_size"], "steps": 100 * r["epochs"], "log": log,
            "val_acc": r["val_acc"][-1], "seconds": round(time.perf_counter() - t0, 1), "bench_row": r}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated ARCH:LR rows and/or 'gapvision'")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="the network's initialisation and batch order (data: seed 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="input size (the 64 px images resized by gapvision)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--every", type=int, default=50, help="log the training loss/accuracy every this many steps")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from gapvision import atomic

    torch.set_num_threads(1)
    tag = (f"-{a.size}px" if a.size != 64 else "") + (f"-bs{a.batch_size}" if a.batch_size != 16 else "")
    out = REPO / "bench" / "results" / f"convnext_scratch-{time.strftime('%Y%m%d-%H%M%S')}{tag}.json"
    rows: list[dict] = []
    for spec in a.models.split(","):
        print(f"{spec}:", flush=True)
        if spec == "gapvision":
            rows.append(gapvision_default(a.steps))
        else:
            arch, lr, *start = spec.split(":")
            if start not in ([], ["whiten"], ["pooled"], ["whiten", "pooled"]):
                p.error(f"{spec}: a row is ARCH:LR, ARCH:LR:whiten, ARCH:LR:pooled, ARCH:LR:whiten:pooled or gapvision")
            rows.append(vanilla(arch, float(lr), a.steps, a.batch_size, a.size, a.seed, a.warmup, a.wd, a.every,
                                whiten="whiten" in start, pooled="pooled" in start))
        atomic.write_json(out, {"data": DATA, "torch": torch.__version__, "threads": 1, "seed": a.seed,
                                "args": vars(a), "rows": rows})
        r = rows[-1]
        print(f"{spec}: val acc {r['val_acc']:.3f}  (eval mode on 400 training images: "
              f"{r.get('train_images_acc', '-')})  {r['seconds']:.0f} s", flush=True)
    print(f"\n| row | recipe | input, batch, steps | train acc per {a.every} steps | val acc | "
          "eval-mode acc, 400 training images | s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        acc = " / ".join(f"{e['train_acc']:.3f}" for e in r["log"])
        acc += " (per epoch)" if r["row"] == "gapvision" else ""
        val = f"**{r['val_acc']:.3f}**" if r["val_acc"] >= 0.5 else f"{r['val_acc']:.3f}"
        print(f"| {r['row']} | {r['recipe']} | {r['img_size']} px, {r['batch_size']}, {r['steps']} | {acc} | {val} | "
              f"{r.get('train_images_acc', '-')} | {r['seconds']:.0f} |")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
