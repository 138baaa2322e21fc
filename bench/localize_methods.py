"""Which CAM method localises best? ``gapvision localize --evaluate`` for every ``--method`` with one model on the
same scenes, side by side: presence P/R/F1, box mean IoU, AP@0.5 and seconds per image.

    python bench/localize_methods.py                       # trains the `make demo` model into runs/bench-demo first
    python bench/localize_methods.py --run runs/demo --scenes 200 --methods fcn,cam,gradcam,layercam

The pytorch-grad-cam methods need ``pip install 'gapvision[cam]'``; the results go to
bench/results/localize_methods-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import gapvision as gv
from gapvision.localize import evaluate_scenes
from gapvision.localize.api import METHODS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a run trained on builtin:shapes (default: train the demo model)")
    p.add_argument("--scenes", type=int, default=100, help="builtin:shapes-scenes images (default 100)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.run:
        run = gv.load_run(a.run)
    else:
        from gapvision.demo import run_demo

        path = Path("runs/bench-demo")
        run = gv.load_run(path) if (path / "model.safetensors").exists() else run_demo(path, quiet=True)
    data = f"builtin:shapes-scenes?n={a.scenes}"
    out = Path(__file__).parent / "results" / f"localize_methods-{time.strftime('%Y%m%d-%H%M')}.json"
    rows: list[dict] = []
    print(f"{'method':<10} {'precision':>9} {'recall':>7} {'F1':>6} {'mean IoU':>9} {'AP@0.5':>7} {'s/image':>8}")
    for method in a.methods.split(","):
        start = time.perf_counter()
        m = evaluate_scenes(run, data, method=method)
        per_image = (time.perf_counter() - start) / m["images"]
        rows.append({"method": method, **{k: m[k] for k in ("presence_precision", "presence_recall", "presence_f1",
                                                            "mean_iou", "ap50", "images", "threshold")},
                     "seconds_per_image": round(per_image, 4)})
        print(f"{method:<10} {m['presence_precision']:>9.3f} {m['presence_recall']:>7.3f} {m['presence_f1']:>6.3f} "
              f"{m['mean_iou']:>9.3f} {m['ap50']:>7.3f} {per_image:>8.3f}", flush=True)
        out.write_text(json.dumps({"run": str(run.path), "data": data, "torch_threads": a.threads, "rows": rows},
                                  indent=1))  # after every method: a long method cut short keeps the others
    print(f"written to {out}")


if __name__ == "__main__":
    main()
