"""Training speed of one network in each arithmetic and memory format, side by side: fp32 NCHW, fp32 channels-last,
bf16 autocast NCHW and bf16 channels-last (the plain defaults' choice: channels-last always, bf16 where the hardware
runs it natively and the network has no grouped convolutions, train/recipes.py ``plain_values``).

    python bench/precision_speed.py                                  # gapcnn, resnet18, mobilenet_v2 at 64 px
    python bench/precision_speed.py --models gapcnn --batch-sizes 16 --seconds 8

Each cell is the images/s of full training steps (forward, loss, backward, AdamW step) on random 64 px images, timed
for ``--seconds`` after two warm-up steps; the four formats of a row run one after the other, so load from other
programs hits them alike. Results go to bench/results/precision_speed-*.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORMATS = (("fp32", False, False), ("fp32 + channels-last", False, True), ("bf16", True, False),
           ("bf16 + channels-last", True, True))


def rate(name: str, batch: int, bf16: bool, channels_last: bool, seconds: float, size: int) -> float:
    import torch
    import torch.nn.functional as F

    from gapvision.models.classifier import create_model

    net = create_model(name, "gap", 4, img_size=size)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 4, (batch,))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="gapcnn,resnet18,mobilenet_v2")
    p.add_argument("--batch-sizes", default="16,64")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    rows = []
    for name in a.models.split(","):
        for batch in (int(b) for b in a.batch_sizes.split(",")):
            cells = {label: round(rate(name, batch, bf16, cl, a.seconds, a.size), 1) for label, bf16, cl in FORMATS}
            rows.append({"model": name, "batch_size": batch, "images_per_s": cells})
            print(f"{name:14s} batch {batch:3d}  " + "  ".join(f"{k} {v:7.1f}" for k, v in cells.items()), flush=True)
    out = REPO / "bench" / "results" / f"precision_speed-{time.strftime('%Y%m%d-%H%M')}.json"
    out.write_text(json.dumps({"size": a.size, "threads": a.threads, "torch": torch.__version__, "rows": rows},
                              indent=1))
    print("\n| model | batch | " + " | ".join(label for label, _, _ in FORMATS) + " (images/s) |")
    print("|---|---|" + "---|" * len(FORMATS))
    for r in rows:
        print(f"| {r['model']} | {r['batch_size']} | " + " | ".join(str(v) for v in r["images_per_s"].values()) + " |")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
