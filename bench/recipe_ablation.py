"""The fast recipe's choices switched off or changed one at a time, 2 seeds each, in one run on the CIFAR-10 copy.

    python bench/recipe_ablation.py                                  # the full recipe: 50,000 images, 10 epochs
    python bench/recipe_ablation.py --per-class 1000 --epochs 4      # a proxy (10,000 images), about 10 minutes
    python bench/recipe_ablation.py --recipe fast90 --only ema,tta

Every row is ``gapvision.train`` with the recipe (train/recipes.py) and one option changed (``--recipe fast`` and
the option, exactly as a user would write it), trained on train/ and evaluated on the test images after the last
epoch; accuracy and wall seconds (training + evaluation, the decode cache warmed by an untimed 1-epoch run first)
per seed and their mean. The first row is the recipe as it is. Results go to bench/results/recipe_ablation-*.json,
rewritten after every finished row (``"complete": false`` until the last), and a Markdown table is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from cifar_time_to_acc import load_average, machine, subset
from compare_transfer import extract_cifar

RESULTS = Path(__file__).resolve().parent / "results"

#: name -> (what it tests, the options that change it); every value here is one a user can pass on the command line
VARIANTS: dict[str, tuple[str, dict]] = {
    "recipe": ("the recipe as it is", {}),
    "ema": ("no weight average (--ema 0)", {"ema": 0.0}),
    "label_smoothing": ("no label smoothing (--label-smoothing 0)", {"label_smoothing": 0.0}),
    "tta": ("no test-time augmentation (--tta off)", {"tta": "off"}),
    "tta_crops": ("multi-crop TTA (--tta crops)", {"tta": "crops"}),
    "batch_256": ("batch 256, lr halved (--batch-size 256 --lr 0.2)", {"batch_size": 256, "lr": 0.2}),
    "lr_half": ("lr halved (--lr 0.2)", {"lr": 0.2}),
    "lr_double": ("lr doubled (--lr 0.8)", {"lr": 0.8}),
    "whitening": ("the whitened network (--model fastnet_w)", {"model": "fastnet_w"}),
    "optimizer": ("AdamW lr 2e-3 instead of Nesterov SGD (--optimizer adamw --lr 2e-3)",
                  {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05}),
    "bf16": ("no bf16 autocast (--amp off)", {"amp": "off"}),
    "channels_last": ("NCHW memory (--channels-last off)", {"channels_last": "off"}),
}


def cifar_splits(root: Path, per_class: int):
    """train/ (``per_class`` images of each class, all when 0) to train, test/ to evaluate: read once per run."""
    from gapvision.data.imageset import DataSplits
    from gapvision.data.sources import load_data

    found = load_data(str(root), val_split=0.0, seed=0)
    return DataSplits(subset(found.train, per_class), found.test, None, found.classes, str(root))


def run_one(root: Path, splits, recipe: str, options: dict, seed: int, epochs: int | None) -> dict:
    import gapvision as gv

    opts = dict(options)
    if epochs:
        opts.setdefault("epochs", epochs)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        t0 = time.perf_counter()
        run = gv.train(str(root), splits=splits, out=Path(tmp) / "run", recipe=recipe, seed=seed, quiet=True, **opts)
        seconds = time.perf_counter() - t0
        acc = run.history[-1]["val_acc"]  # read before the run folder goes
    return {"seed": seed, "test_acc": round(acc, 4), "seconds": round(seconds, 1), "load_avg": load_average()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="fast", choices=["fast", "fast90"])
    p.add_argument("--per-class", type=int, default=0, help="training images per class (0: all 5,000)")
    p.add_argument("--epochs", type=int, help="epochs (default: the recipe's)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--only", help="comma-separated variant names (default: all; 'recipe' is always run)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    root = extract_cifar()
    splits = cifar_splits(root, a.per_class)
    names = ["recipe"] + [n for n in (a.only.split(",") if a.only else VARIANTS) if n != "recipe"]
    out = RESULTS / f"recipe_ablation-{time.strftime('%Y%m%d-%H%M')}.json"
    run_one(root, splits, a.recipe, {"epochs": 1}, 0, None)  # untimed: decodes into the cache, warms the kernels
    rows = []

    def save(complete: bool) -> None:
        from gapvision.atomic import write_text

        write_text(out, json.dumps({"recipe": a.recipe, "per_class": a.per_class, "epochs": a.epochs, "seeds": a.seeds,
                                    "machine": machine(), "complete": complete, "rows": rows}, indent=1) + "\n")

    for name in names:
        what, options = VARIANTS[name]
        runs = [run_one(root, splits, a.recipe, options, seed, a.epochs) for seed in range(a.seeds)]
        acc = sum(r["test_acc"] for r in runs) / len(runs)
        sec = sum(r["seconds"] for r in runs) / len(runs)
        rows.append({"variant": name, "what": what, "options": options, "runs": runs,
                     "mean_test_acc": round(acc, 4), "mean_seconds": round(sec, 1)})
        print(f"{name:16} {what:70} acc {acc:.4f}  {sec:6.1f} s  "
              f"({', '.join(str(r['test_acc']) for r in runs)})", flush=True)
        save(False)
    base = rows[0]
    print(f"\n| change to the {a.recipe} recipe | test acc (mean of {a.seeds} seeds) | vs recipe | seconds | vs recipe |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {100 * r['mean_test_acc']:.1f} % | {100 * (r['mean_test_acc'] - base['mean_test_acc']):+.1f} "
              f"| {r['mean_seconds']:.0f} | {r['mean_seconds'] / base['mean_seconds']:.2f}x |")
    save(True)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
