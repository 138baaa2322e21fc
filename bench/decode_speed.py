"""The first (cold) decode of the CIFAR-10 copy's 60,000 JPEGs into the in-memory uint8 tensor, side by side.

    python bench/decode_speed.py              # all 60,000 images
    python bench/decode_speed.py --limit 8000

Rows: Pillow for every file (``open_image`` + ``to_uint8``, the path before the JPEG lane) and the decode that
``--in-memory`` uses now (``data/memory.decode_images``: torchvision's libjpeg-turbo for plain RGB JPEGs, Pillow for
the rest), each with 1 and 2 threads and the default (``auto``); seconds, images/s, and the share of a cold first run that decoding takes, for
the fast and fast90 recipes' training times given (``--train-seconds``, default: the latest
bench/results/cifar_time_to_acc-*.json of each recipe). The page cache is warmed first (one read of every file), so
the rows compare decoding, not the disk. Results go to bench/results/decode_speed-*.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from compare_transfer import extract_cifar

RESULTS = Path(__file__).resolve().parent / "results"


def latest_run_seconds(recipe: str) -> float | None:
    """Wall seconds of the newest full cifar_time_to_acc result of ``recipe`` run as it is (its model and epochs;
    the last epoch's clock)."""
    from gapvision.train.recipes import RECIPES

    for path in sorted(RESULTS.glob("cifar_time_to_acc-*.json"), reverse=True):
        config = json.loads(path.read_text()).get("fast_config", {})
        train = config.get("train", {})
        if train.get("recipe") == recipe and train.get("epochs") == RECIPES[recipe]["epochs"] and \
                config.get("model", {}).get("model") == RECIPES[recipe]["model"]:
            return json.loads(path.read_text())["fast"][-1]["seconds"]
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=0, help="decode only this many images (0: all)")
    a = p.parse_args(argv)
    import torch

    import numpy as np

    from gapvision.data import memory
    from gapvision.data.imageset import ImageSet
    from gapvision.data.sources import load_data
    from gapvision.data.transforms import Preprocess

    torch.set_num_threads(2)
    root = extract_cifar()
    found = load_data(str(root), val_split=0.0)  # train/ and test/: every file of the copy
    images = ImageSet(list(found.train.items) + list(found.test.items),
                      np.concatenate([found.train.labels, found.test.labels]), found.classes)
    if a.limit:
        images = images.subset(range(a.limit))
    for item in images.items:  # warm the page cache
        Path(item).read_bytes()
    pre = Preprocess(3, 32)
    rows = []
    lane = memory.read_rgb_jpeg
    for name, use_lane in (("Pillow for every file", False), ("decode_images (JPEG lane)", True)):
        memory.read_rgb_jpeg = lane if use_lane else (lambda _p: None)
        for threads in (1, 2, -1):
            t0 = time.perf_counter()
            memory.decode_images(images, pre, workers=threads)
            dt = time.perf_counter() - t0
            rows.append({"decoder": name, "threads": threads if threads > 0 else "auto", "images": len(images), "seconds": round(dt, 2),
                         "images_per_s": round(len(images) / dt)})
            print(f"{name:28} {threads if threads > 0 else 'auto'} thread(s): {dt:6.2f} s, {len(images) / dt:8.0f} img/s", flush=True)
    memory.read_rgb_jpeg = lane
    default = next(r["seconds"] for r in rows if r["decoder"].startswith("decode_images") and r["threads"] == "auto")
    shares = {}
    for recipe in ("fast", "fast90"):
        train_s = latest_run_seconds(recipe)
        if train_s:
            shares[recipe] = round(default / (default + train_s), 3)
            print(f"cold first run of the {recipe} recipe: {default:.1f} s decoding + {train_s:.0f} s training "
                  f"-> decoding is {100 * shares[recipe]:.1f} % of it")
    out = RESULTS / f"decode_speed-{time.strftime('%Y%m%d-%H%M')}.json"
    out.write_text(json.dumps({"rows": rows, "cold_run_decode_share": shares}, indent=1) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
