"""The tutorial's small grayscale manifest, trained with no option: the plain defaults beside the settings of old.

    python bench/tutorial_manifest.py                  # 30 images per class, 7 classes, 256 px grey, as the tutorial
    python bench/tutorial_manifest.py --per-class 60 --skip-old

The tutorial's data (a ``train_master.tsv`` of ``file_name<TAB>expression`` rows, about 210 face images of 256 px in
7 classes) is not redistributable; this builds one of the same shape from the CIFAR-10 copy in ../shared (the first
7 classes, ``--per-class`` training images each, converted to grey and enlarged to 256 px with bicubic resampling,
saved as PNG in a temporary ``train/`` folder beside the manifest). Then, one after the other on the same split:

- ``defaults``: ``gapvision.train("…/train_master.tsv")``, nothing else set -- what a new user runs;
- ``old settings``: what the defaults resolved to when the transfer-learning issue was filed (gapcnn at 224 px,
  batch 64, the builder's Kaiming-normal start, ``--epochs 10``), given explicitly.

Printed and written to bench/results/tutorial_manifest-*.json: the resolved settings, optimiser steps, validation
accuracy after each epoch beside the majority-class share, and seconds.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_transfer import extract_cifar  # noqa: E402  (the shared extraction of the CIFAR-10 tarball)

CLASSES = 7
SIZE = 256
OLD = {"model": "gapcnn", "img_size": 224, "batch_size": 64, "init": "default", "epochs": 10}


def build_manifest(cifar: Path, folder: Path, per_class: int) -> Path:
    """``folder/train_master.tsv`` (file_name<TAB>expression) over ``folder/train/*.png``: grey, SIZE px."""
    from PIL import Image

    classes = sorted(p.name for p in (cifar / "train").iterdir() if p.is_dir())[:CLASSES]
    (folder / "train").mkdir(parents=True)
    rows = []
    for label in classes:
        for src in sorted((cifar / "train" / label).glob("*.jpg"))[:per_class]:
            name = f"{label}_{src.stem}.png"
            with Image.open(src) as im:
                im.convert("L").resize((SIZE, SIZE), Image.BICUBIC).save(folder / "train" / name)
            rows.append((name, label))
    manifest = folder / "train_master.tsv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["file_name", "expression"])
        w.writerows(rows)
    return manifest


def run_one(gv, manifest: Path, out: Path, options: dict) -> dict:
    """Train on ``manifest`` with ``options`` and return what was resolved and measured."""
    t0 = time.perf_counter()
    run = gv.train(str(manifest), out=out, quiet=True, **options)
    wall = time.perf_counter() - t0
    c = run.config
    counts = run.metrics.get("confusion_matrix") or []
    n_val = sum(sum(r) for r in counts)
    majority = max(sum(r) for r in counts) / n_val if n_val else None
    n_train = len(manifest.read_text().splitlines()) - 1 - n_val  # the rows not in the validation split
    steps = -(-n_train // c["train"]["batch_size"])
    return {"options": options, "model": c["model"]["model"], "img_size": c["preprocess"]["img_size"],
            "channels": c["preprocess"]["channels"], "batch_size": c["train"]["batch_size"],
            "epochs": c["train"]["epochs"], "lr": c["train"]["lr"], "init": c["model_options"]["init"],
            "from_defaults": c["recipe"]["from_defaults"], "n_train": n_train, "n_val": n_val,
            "steps_per_epoch": steps,
            "val_acc": [round(r["val_acc"], 4) for r in run.history],
            "train_loss": [round(r["train_loss"], 4) for r in run.history],
            "seconds_per_epoch": round(sum(r["seconds"] for r in run.history) / len(run.history), 1),
            "wall_seconds": round(wall, 1), "majority_share": majority,
            "best_val_acc": run.metrics.get("best_val_acc"), "warnings": run.metrics.get("warnings", [])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=30, help="training images per class (the tutorial: about 30)")
    p.add_argument("--skip-old", action="store_true", help="only the defaults")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import torch

    import gapvision as gv
    from gapvision import atomic

    torch.set_num_threads(a.threads)
    out = REPO / "bench" / "results" / f"tutorial_manifest-{time.strftime('%Y%m%d-%H%M')}.json"
    results: dict = {"data": f"CIFAR-10 train, first {CLASSES} classes x {a.per_class}, grey, {SIZE} px PNG",
                     "torch": torch.__version__, "threads": a.threads, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = build_manifest(extract_cifar(), Path(tmp) / "faces", a.per_class)
        plans = {"defaults": {}} if a.skip_old else {"defaults": {}, "old settings": OLD}
        for name, options in plans.items():
            r = results["runs"][name] = run_one(gv, manifest, Path(tmp) / name.replace(" ", "-"), options)
            atomic.write_json(out, results)
            accs = " ".join(f"{x:.2f}" for x in r["val_acc"])
            print(f"{name:13s} {r['model']} {r['img_size']} px x{r['channels']}, batch {r['batch_size']}, "
                  f"{r['epochs']} epochs of {r['steps_per_epoch']} steps, init {r['init']}: val acc {accs} "
                  f"(best {r['best_val_acc']:.3f}, majority {r['majority_share']:.3f}), {r['seconds_per_epoch']} s "
                  f"an epoch, {r['wall_seconds']} s in all{'; ' + '; '.join(r['warnings']) if r['warnings'] else ''}",
                  flush=True)
    print(json.dumps({k: {"best_val_acc": v["best_val_acc"], "final": v["val_acc"][-1]}
                      for k, v in results["runs"].items()}))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
