"""The transfer-learning target of ``gapvision compare``: fc, gap and gmp heads x 3 seeds on a frozen pretrained
MobileNetV2, 2,000 CIFAR-10 training images at 96 px, 10 epochs -- in at most 5 minutes on 2 CPU cores, GAP >= 60 %.

    python bench/compare_transfer.py                 # the target: prints the time, the table and the verdict
    python bench/compare_transfer.py --ratio         # + the slow path on 1 seed x 1 epoch beside the fast path
    python bench/compare_transfer.py --epochs 2 --seeds 0 --ratio     # a short check

Data: ../shared/data/cifar10-jpg.tar.gz (or $GAPVISION_SHARED/...) is extracted once into $GAPVISION_CACHE (default
~/.cache/gapvision)/cifar10-jpg; a manifest then lists 200 training images per class from train/ (the 2,000) and
100 validation images per class from test/ (1,000), so every seed sees the same split. The weights are
../shared/weights/mobilenet_v2-imagenet.pth (mean = std = 0.5, BatchNorm folded: the frozen backbone keeps it in eval
mode). Without augmentation (the default here, a linear probe's setting) each image's feature map is computed once
for all heads and seeds.

--ratio times both paths side by side on the same short setting (the three heads, 1 seed, --ratio-epochs 10, 500
training and 200 validation images): the streaming path runs the backbone on every batch of every head and epoch,
the cached path once per image. The ratio grows with epochs, heads and seeds (the streaming cost is linear in each,
the cached one is not): at the target's 10 epochs x 3 seeds it is far larger than on this short setting.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def shared_dir() -> Path:
    """The third-party material folder: $GAPVISION_SHARED or <repo>/../shared."""
    env = os.environ.get("GAPVISION_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def cache_dir() -> Path:
    return Path(os.environ.get("GAPVISION_CACHE") or Path.home() / ".cache" / "gapvision")


def extract_cifar(shared: Path | None = None, cache: Path | None = None) -> Path:
    """The CIFAR-10 jpg tree (train/<class>/*.jpg, test/<class>/*.jpg), extracted once; returns its folder."""
    shared = shared or shared_dir()
    target = (cache or cache_dir()) / "cifar10-jpg"
    if (target / ".complete").exists():
        return target
    tarball = shared / "data" / "cifar10-jpg.tar.gz"
    if not tarball.is_file():
        raise FileNotFoundError(f"{tarball} not found: set GAPVISION_SHARED to the shared folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cifar10-jpg.", dir=target.parent))
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
    if target.exists():  # a partial earlier extraction
        shutil.rmtree(target)
    tmp.rename(target)
    (target / ".complete").touch()
    return target


def cifar_manifest(root: Path, train_per_class: int = 200, val_per_class: int = 100, seed: int = 0) -> Path:
    """A manifest (image,label,split) of a fixed, class-balanced subset: train/ images for training, test/ for val."""
    out = root / f"subset-{train_per_class}x10-{val_per_class}x10-s{seed}.csv"  # paths relative to root
    if out.exists():
        return out
    rng = random.Random(seed)
    rows = []
    for split, folder, n in (("train", "train", train_per_class), ("val", "test", val_per_class)):
        for cls in CIFAR_CLASSES:
            files = sorted(p.name for p in (root / folder / cls).glob("*.jpg"))
            rows += [(f"{folder}/{cls}/{name}", cls, split) for name in sorted(rng.sample(files, n))]
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "split"])
        w.writerows(rows)
    tmp.rename(out)
    return out


def target_options(a: argparse.Namespace) -> dict:
    return dict(model="mobilenet_v2", weights=str(shared_dir() / "weights" / "mobilenet_v2-imagenet.pth"),
                freeze="backbone", img_size=96, normalize="half", augment="none", epochs=a.epochs,
                batch_size=a.batch_size, lr=a.lr, workers=a.workers, quiet=not a.verbose)


def run(manifest: Path, heads: str, seeds: str, out: Path, features: str, a: argparse.Namespace):
    from gapvision.compare import compare

    opts = target_options(a)
    t0 = time.perf_counter()
    result = compare(str(manifest), heads=heads, seeds=seeds, out=out, features=features, **opts)
    return result, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--heads", default="fc,gap,gmp")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for decoding the jpgs (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the target's 2 cores)")
    p.add_argument("--ratio", action="store_true", help="also time the slow path beside the fast one (short setting)")
    p.add_argument("--ratio-epochs", type=int, default=10, help="epochs of the --ratio setting (default 10)")
    p.add_argument("--out", help="output folder (default: a temporary one, removed)")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    a.root = extract_cifar()
    manifest = cifar_manifest(a.root)
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="compare-transfer-"))
    try:
        result, seconds = run(manifest, a.heads, a.seeds, work / "target", "auto", a)
        print((result.path / "summary.md").read_text())
        gap = result.row("gap")["best_val_acc_mean"] if "gap" in result.heads else float("nan")
        print(f"target: {len(result.heads)} heads x {len(result.seeds)} seeds, {a.epochs} epochs: {seconds:.1f} s "
              f"(goal <= 300 s on 2 cores), GAP best val acc {gap:.4f} (goal >= 0.60)")
        print(result.report.splitlines()[2])
        if a.ratio:
            short = argparse.Namespace(**{**vars(a), "epochs": a.ratio_epochs})
            small = cifar_manifest(a.root, 50, 20)
            first = a.seeds.split(",")[0]
            fast, t_fast = run(small, a.heads, first, work / "ratio-cached", "cache", short)
            slow, t_slow = run(small, a.heads, first, work / "ratio-stream", "stream", short)
            print(f"side by side, {len(fast.heads)} heads x 1 seed x {a.ratio_epochs} epochs on 500 + 200 images: "
                  f"streaming {t_slow:.1f} s, cached "
                  f"{t_fast:.1f} s (of which feature maps {fast.features.get('seconds', 0):.1f} s): "
                  f"{t_slow / t_fast:.1f}x faster")
            for h in fast.heads:
                print(f"  {h}: best val acc cached {fast.row(h)['best_val_acc_mean']:.4f} vs streaming "
                      f"{slow.row(h)['best_val_acc_mean']:.4f}")
    finally:
        if not a.out:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
