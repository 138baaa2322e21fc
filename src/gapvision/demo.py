"""``gapvision demo``: train a GAP classifier on procedurally drawn shapes, fully offline, in about a minute."""
from __future__ import annotations

from pathlib import Path

from .runs import Run, default_run_dir

# Per-image augmentation (flip, small rotation, colour jitter; the streaming path): the class maps of the result
# localise shapes in multi-object scenes far better (presence F1 0.99 vs 0.84, `gapvision localize --evaluate`)
# than without augmentation or with the in-memory flip + translate.
DEMO = dict(data="builtin:shapes?n=1200&size=64", model="fastnet_s", head="gap", epochs=6, batch_size=64,
            optimizer="sgd", lr=0.05, augment="basic", in_memory="off", img_size=64)


def run_demo(out: str | Path | None = None, quiet: bool = False) -> Run:
    from .train.pipeline import train

    opts = dict(DEMO)
    run = train(opts.pop("data"), opts.pop("model"), opts.pop("head"), out=out or default_run_dir("demo", "gap"), quiet=quiet, **opts)
    m = run.metrics
    print(f"demo: {m['classes']} | best val acc {m['best_val_acc']:.3f}"
          + (f" | test acc {m['test_acc']:.3f}" if "test_acc" in m else "") + f" | {m['seconds']:.0f}s of training")
    print(f"run directory: {run.path}  (curves.png, confusion.png, metrics.json, model.safetensors)")
    print(f"next: gapvision predict {run.path} IMAGE   or   gapvision localize {run.path} IMAGE --out maps/")
    return run
