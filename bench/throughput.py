"""Training throughput of gapvision's Trainer against a bare PyTorch loop, and the arithmetic rate it reaches.

    python bench/throughput.py                          # the fast recipe's model and batch, 32 px, 3 rounds
    python bench/throughput.py --model fastnet_s --batch-size 256 --rounds 5
    python bench/throughput.py --amp off --channels-last off         # fp32, NCHW

Both loops train the same network (same initial weights) with the same optimiser (Nesterov SGD, the recipe's lr,
weight decay and label smoothing), autocast and memory format, on the same in-memory batches (MemoryBatches over a
uint8 tensor of ``--images`` random 32 px images, with the recipe's flip + translate augmentation). The bare loop is
the textbook four lines (forward, loss, backward, step); the Trainer adds its schedule, statistics, progress bar and
divergence checks, and the recipe's weight average unless ``--no-ema``. Each round times one epoch of each, in
alternating order, so load from other programs hits both alike; the ratio of the two rates is computed per round and
its median printed (target >= 0.95).

GFLOP/s = (forward + backward FLOPs per image, counted by torch.utils.flop_counter) x images/s, against the peak of a
large fp32 matrix multiply measured on the same threads (and the bf16 one when autocast is on).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from gapvision.data.memory import MemoryBatches, batch_augment
from gapvision.data.transforms import Preprocess
from gapvision.models import create_model
from gapvision.train.config import TrainConfig
from gapvision.train.optim import build_optimizer
from gapvision.train.recipes import FAST, recipe_values
from gapvision.train.trainer import Trainer


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=FAST["model"])
    p.add_argument("--head", default=FAST["head"])
    p.add_argument("--batch-size", type=int, default=FAST["batch_size"])
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--images", type=int, default=4096, help="images per epoch (default 4096)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--amp", choices=["on", "off", "recipe"], default="recipe", help="bf16 autocast (recipe: where native)")
    p.add_argument("--channels-last", choices=["on", "off"], default=FAST["channels_last"])
    p.add_argument("--no-ema", action="store_true", help="leave the recipe's weight average out of the Trainer")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    return p.parse_args(argv)


def bare_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, batches: MemoryBatches, epoch: int, cfg: TrainConfig,
               amp: bool, channels_last: bool) -> None:
    """The textbook loop, with the same arithmetic settings as the Trainer."""
    net.train()
    for x, y in batches.epoch(epoch):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(x).float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def flops_per_image(net: torch.nn.Module, img_size: int) -> float:
    """Forward + backward FLOPs of one training image."""
    probe = copy.deepcopy(net).float().train()
    x = torch.randn(2, 3, img_size, img_size)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(probe(x), torch.tensor([0, 1])).backward()
    return counter.get_total_flops() / 2


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` n x n matrix multiplies."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    recipe = recipe_values("fast", n_train=10**9, device="cpu", batch_size=a.batch_size)
    amp = recipe["amp"] == "on" if a.amp == "recipe" else a.amp == "on"
    cl = a.channels_last == "on"
    cfg = TrainConfig(epochs=a.rounds * 2 + 2, batch_size=a.batch_size, optimizer="sgd", lr=recipe["lr"],
                      momentum=recipe["momentum"], weight_decay=recipe["weight_decay"], schedule="none",
                      label_smoothing=recipe["label_smoothing"], ema=0.0 if a.no_ema else recipe["ema"],
                      amp="on" if amp else "off", channels_last=a.channels_last, device="cpu", quiet=True)
    pre = Preprocess(3, a.img_size)
    data = torch.randint(0, 256, (a.images, 3, a.img_size, a.img_size), dtype=torch.uint8)
    labels = torch.randint(0, 10, (a.images,))
    batches = MemoryBatches(data, labels.numpy(), pre, a.batch_size, shuffle=True,
                            augment=batch_augment("basic", a.img_size))

    torch.manual_seed(0)
    net = create_model(a.model, a.head, 10, img_size=a.img_size)
    bare_net = copy.deepcopy(net)
    if cl:
        bare_net = bare_net.to(memory_format=torch.channels_last)
    bare_opt = build_optimizer(bare_net, cfg)
    trainer = Trainer(net, cfg)
    flops = flops_per_image(net, a.img_size)

    print(f"{a.model} + {a.head}, batch {a.batch_size}, {a.img_size} px, {a.images} in-memory images per epoch, "
          f"autocast {'bf16' if amp else 'off'}, channels_last {a.channels_last}, weight average "
          f"{'off' if a.no_ema else cfg.ema}, {torch.get_num_threads()} threads; {flops / 1e6:.0f} MFLOP per image "
          "(forward + backward)", flush=True)
    bare_epoch(bare_net, bare_opt, batches, 0, cfg, amp, cl)  # warm-up: oneDNN picks its kernels
    trainer.train_epoch(batches, 0)
    rates: dict[str, list[float]] = {"bare": [], "trainer": []}
    for r in range(a.rounds):
        order = ("bare", "trainer") if r % 2 == 0 else ("trainer", "bare")
        for which in order:
            t = _timed(lambda: bare_epoch(bare_net, bare_opt, batches, r + 1, cfg, amp, cl) if which == "bare"
                       else trainer.train_epoch(batches, r + 1))
            rates[which].append(a.images / t)
        print(f"round {r + 1}: bare {rates['bare'][-1]:7.0f} img/s   trainer {rates['trainer'][-1]:7.0f} img/s   "
              f"ratio {rates['trainer'][-1] / rates['bare'][-1]:.3f}", flush=True)
    ratios = [t / b for t, b in zip(rates["trainer"], rates["bare"])]
    bare, mine = statistics.median(rates["bare"]), statistics.median(rates["trainer"])
    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16) if amp else None
    print(f"\nbare loop        {bare:8.0f} img/s  {bare * flops / 1e9:7.1f} GFLOP/s")
    print(f"gapvision Trainer {mine:7.0f} img/s  {mine * flops / 1e9:7.1f} GFLOP/s")
    print(f"ratio (median of per-round ratios) {statistics.median(ratios):.3f}  (target >= 0.95)")
    print(f"fp32 matmul peak {peak32:7.1f} GFLOP/s: the Trainer reaches {mine * flops / 1e9 / peak32:.0%} of it"
          + (f"; bf16 matmul peak {peak16:.1f} GFLOP/s ({mine * flops / 1e9 / peak16:.0%})" if peak16 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
