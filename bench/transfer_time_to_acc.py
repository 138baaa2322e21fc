"""Fine-tuning pretrained weights by default: three ways side by side in one run, on two data sets.

    python bench/transfer_time_to_acc.py                  # boxes-dev and the CIFAR-10 subset, all three rows
    python bench/transfer_time_to_acc.py --data boxes     # one data set

Rows (MobileNetV2 with ../shared/weights/mobilenet_v2-imagenet.pth, whose BatchNorm is folded; GAP head; --normalize
half, what those weights expect; nothing else set unless named):
  (a) plain defaults  -- ``--recipe none --freeze none``: what gapvision did before the transfer recipe (AdamW 1e-3 on
      the whole network, BatchNorm statistics re-estimated);
  (b) linear probe    -- ``--recipe none --freeze backbone``: the frozen backbone, only the head trains;
  (c) transfer recipe -- no options: the default for pretrained weights (train/recipes.py ``TRANSFER``).
Data: ../shared/data/boxes-dev/images (2 classes, 181 readable photos, the run's seeded 80/20 split; the truncated
JPEG skipped) and a CIFAR-10 subset from ../shared/data (100 training images per class from train/, 50 validation
images per class from test/) upscaled to 96 px. Accuracy after each epoch and the seconds of training (the run's
epoch times: data decoding before the first epoch excluded), written to bench/results/transfer_time_to_acc-*.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_transfer import cifar_manifest, extract_cifar, shared_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROWS = {
    "plain defaults": {"recipe": "none", "freeze": "none"},
    "linear probe": {"recipe": "none", "freeze": "backbone"},
    "transfer recipe": {},
}


def datasets(which: str) -> dict[str, dict]:
    shared = shared_dir()
    out = {}
    if which in ("all", "boxes"):
        out["boxes-dev"] = {"data": str(shared / "data" / "boxes-dev" / "images"), "skip_bad": True}
    if which in ("all", "cifar"):
        root = extract_cifar()
        out["cifar10-subset-96px"] = {"data": str(cifar_manifest(root, 100, 50)), "img_size": 96}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=["all", "boxes", "cifar"], default="all")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every row (default: the transfer recipe's)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import torch

    import gapvision as gv
    from gapvision.train.recipes import TRANSFER

    torch.set_num_threads(a.threads)
    epochs = a.epochs or TRANSFER["epochs"]
    weights = str(shared_dir() / "weights" / "mobilenet_v2-imagenet.pth")
    results: dict = {"epochs": epochs, "torch": torch.__version__, "threads": a.threads, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for dname, dopts in datasets(a.data).items():
            for row, ropts in ROWS.items():
                opts = {"model": "mobilenet_v2", "weights": weights, "head": "gap", "normalize": "half",
                        "epochs": epochs, "quiet": True, **dopts, **ropts}
                t0 = time.perf_counter()
                run = gv.train(out=Path(tmp) / f"{dname}-{row.replace(' ', '_')}", **opts)
                wall = time.perf_counter() - t0
                accs = [round(r["val_acc"], 4) for r in run.history]
                secs = round(sum(r["seconds"] for r in run.history), 1)
                results["rows"][f"{dname} / {row}"] = {"val_acc": accs, "train_seconds": secs,
                                                       "wall_seconds": round(wall, 1),
                                                       "warnings": run.metrics.get("warnings", [])}
                print(f"{dname:22s} {row:16s} val acc per epoch {' '.join(f'{x:.3f}' for x in accs)}   "
                      f"{secs:6.1f} s training ({wall:.0f} s wall)", flush=True)
    out = REPO / "bench" / "results" / f"transfer_time_to_acc-{time.strftime('%Y%m%d-%H%M')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
