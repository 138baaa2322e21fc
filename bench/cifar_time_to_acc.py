"""Time to accuracy on CIFAR-10: the tutorial recipe against gapvision's fast recipe, on the same CPU and image tree.

    python bench/cifar_time_to_acc.py                   # the fast recipe, against the recorded tutorial curve
    python bench/cifar_time_to_acc.py --quick           # both live on 10,000 / 2,000 images, short (about 5 min)
    python bench/cifar_time_to_acc.py --record-tutorial # run (or continue) the full tutorial, recording each epoch
    python bench/cifar_time_to_acc.py --tutorial live   # run the full tutorial here too, then the fast recipe

(a) The tutorial recipe (shared/seeds/002, the CIFAR-10 PyTorch tutorial) written as it is there: torchvision
ImageFolder with ToTensor + Normalize(0.5, 0.5) and train-time RandomHorizontalFlip, ColorJitter(), RandomRotation(10);
batch 32, single-process DataLoader; its CNN (gapvision's ``cifarcnn`` features + flatten + Linear(2048, 10)); Adam
lr 1e-3, weight decay 5e-4; 15 epochs, the test split evaluated after each. (b) ``gapvision.train`` with
``recipe="fast"`` (train/recipes.py) on the same tree: train/ for training, test/ as the split evaluated after every
epoch.

Times are wall-clock seconds from the start of each recipe (reading the file list, decoding, building the model and
every evaluation included) to the end of each epoch's evaluation. The target is the tutorial's final accuracy; the
time to it is the end of the first epoch at or above it (no interpolation), and the ratio is tutorial / fast.

The full tutorial takes about 1.5 hours on 2 cores, so it is recorded once into bench/results/tutorial_cifar10.jsonl
(one JSON line per epoch, with the machine, thread count and load average) and reused; --record-tutorial continues an
unfinished recording from its last epoch (a checkpoint is kept in the cache folder). Data: the tarball
../shared/data/cifar10-jpg.tar.gz (or $GAPVISION_SHARED/data/...) is extracted once into $GAPVISION_CACHE (default
~/.cache/gapvision)/cifar10-jpg.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gapvision.train.trainer import EPOCH_TTA

from compare_transfer import cache_dir, extract_cifar  # the shared extraction of the CIFAR-10 tarball

RESULTS = Path(__file__).resolve().parent / "results"
TUTORIAL_RECORD = RESULTS / "tutorial_cifar10.jsonl"
TUTORIAL_EPOCHS = 15


# -- the machine -----------------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "host": platform.node()}


def load_average() -> float:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return float("nan")


def subset(images, per_class: int, seed: int = 0):
    """``per_class`` images of each class (all when 0), in their original order."""
    if not per_class:
        return images
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(images.labels == c))[:per_class]
                           for c in range(len(images.classes))])
    return images.subset(np.sort(keep))


# -- (a) the tutorial ------------------------------------------------------------------------------------------------
def tutorial_model() -> torch.nn.Module:
    """The tutorial's CNN: its ``features`` are gapvision's cifarcnn backbone, then flatten + Linear(4*4*128, 10)."""
    from gapvision.models.backbones import create_backbone

    return torch.nn.Sequential(create_backbone("cifarcnn"), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 128, 10))


def tutorial_loaders(root: Path, train_per_class: int = 0, test_per_class: int = 0):
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    val_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train_transform = transforms.Compose([
        transforms.RandomHorizontalFlip(), transforms.ColorJitter(), transforms.RandomRotation(10),
        transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,)),
    ])
    train_ds = datasets.ImageFolder(str(root / "train"), transform=train_transform)
    test_ds = datasets.ImageFolder(str(root / "test"), transform=val_transform)

    def cut(ds, per_class):
        if not per_class:
            return ds
        labels = np.array(ds.targets)
        rng = np.random.default_rng(0)
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
        return Subset(ds, np.sort(keep).tolist())

    return (DataLoader(cut(train_ds, train_per_class), batch_size=32, shuffle=True),
            DataLoader(cut(test_ds, test_per_class), batch_size=32, shuffle=False))


def run_tutorial(root: Path, epochs: int, record: Path | None, *, train_per_class: int = 0, test_per_class: int = 0,
                 checkpoint: Path | None = None) -> list[dict]:
    """Train as the tutorial does; one row per epoch (appended to ``record`` as it goes, resumable via
    ``checkpoint``)."""
    rows = read_record(record) if record is not None else []
    done = len(rows)
    torch.manual_seed(0)
    model = tutorial_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss()
    offset = rows[-1]["seconds"] if rows else 0.0
    if done and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        if state["epoch"] != done:
            raise SystemExit(f"{checkpoint} is from epoch {state['epoch']} but {record} has {done} epochs")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
    elif done:
        raise SystemExit(f"{record} has {done} epochs but no checkpoint {checkpoint} to continue from")
    t0 = time.perf_counter() - offset
    train_loader, test_loader = tutorial_loaders(root, train_per_class, test_per_class)
    for epoch in range(done, epochs):
        model.train()
        running_loss, correct, seen = 0.0, 0, 0
        for imgs, labels in train_loader:
            optimizer.zero_grad()
            output = model(imgs)
            loss = criterion(output, labels)
            loss.backward()
            running_loss += loss.item() * len(labels)
            correct += int((output.argmax(1) == labels).sum())
            seen += len(labels)
            optimizer.step()
        model.eval()
        test_correct, test_seen = 0, 0
        with torch.no_grad():
            for imgs, labels in test_loader:
                test_correct += int((model(imgs).argmax(1) == labels).sum())
                test_seen += len(labels)
        row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 1), "test_acc": test_correct / test_seen,
               "train_acc": correct / seen, "train_loss": running_loss / seen, "load_avg": load_average(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        rows.append(row)
        print(f"tutorial epoch {row['epoch']:>2}: test acc {row['test_acc']:.4f} at {row['seconds']:7.1f} s "
              f"(load average {row['load_avg']})", flush=True)
        if record is not None:
            if checkpoint is not None:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "rng": torch.get_rng_state()}, checkpoint)
            append_record(record, row)
    return rows


def read_record(path: Path) -> list[dict]:
    """The epoch rows of a tutorial recording (the first line describes the machine)."""
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if "epoch" in r]


def record_header(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[0]) if path.exists() else {}


def append_record(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        head = {"recipe": "tutorial (shared/seeds/002)", "machine": machine(),
                "note": "seconds: wall clock from the start, epochs and evaluations included; load_avg: 1-minute "
                        "load average of the machine when the epoch ended (shared machine)"}
        path.write_text(json.dumps(head) + "\n")
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


# -- (b) gapvision's fast recipe --------------------------------------------------------------------------------------
class _EpochClock(io.TextIOBase):
    """Stdout that stamps the Trainer's per-epoch lines with the time since ``t0`` and prints a short line for each
    (the rest of the output is dropped)."""

    LINE = re.compile(r"epoch\s+(\d+)/\d+ .*val loss \S+ acc (\S+)")

    def __init__(self, t0: float, out):
        self.t0, self.out, self.rows = t0, out, []

    def write(self, s: str) -> int:
        for line in s.splitlines():
            m = self.LINE.search(line)
            if m:
                self.rows.append({"epoch": int(m.group(1)), "seconds": round(time.perf_counter() - self.t0, 1),
                                  "test_acc": float(m.group(2)), "load_avg": load_average()})
                print(f"fast     epoch {m.group(1):>2}: test acc {float(m.group(2)):.4f} at "
                      f"{self.rows[-1]['seconds']:7.1f} s (load average {self.rows[-1]['load_avg']})",
                      file=self.out, flush=True)
        return len(s)


def run_fast(root: Path, *, train_per_class: int = 0, test_per_class: int = 0, seed: int = 0, recipe: str = "fast",
             **options) -> tuple[list[dict], dict]:
    """``gapvision.train`` with ``recipe`` (fast, fast90): train/ to train, test/ evaluated after every epoch."""
    import gapvision as gv
    from gapvision.data.imageset import DataSplits
    from gapvision.data.sources import load_data

    t0 = time.perf_counter()
    clock = _EpochClock(t0, sys.stdout)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(clock), \
            open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # no progress bars
        found = load_data(str(root), val_split=0.0, seed=seed)
        test = subset(found.test, test_per_class)
        splits = DataSplits(subset(found.train, train_per_class), test, None, found.classes, str(root))
        run = gv.train(str(root), splits=splits, out=Path(tmp) / "run", recipe=recipe, seed=seed, **options)
        config, metrics = run.config, run.metrics
    tta = config["train"]["tta"]
    if EPOCH_TTA.get(tta, tta) != tta:  # the epochs were validated with a cheaper TTA: add the final evaluation's
        final = {"epoch": clock.rows[-1]["epoch"], "seconds": round(time.perf_counter() - t0, 1),
                 "test_acc": float(metrics["val"]["acc"]), "load_avg": load_average(), "final": f"tta {tta}"}
        clock.rows.append(final)
        print(f"fast     final   : test acc {final['test_acc']:.4f} at {final['seconds']:7.1f} s (best epoch's weights, "
              f"tta {tta}; the epochs above: tta {EPOCH_TTA[tta]})", flush=True)
    return clock.rows, config


# -- comparison ------------------------------------------------------------------------------------------------------
def time_to(rows: list[dict], target: float) -> float | None:
    return next((r["seconds"] for r in rows if r["test_acc"] >= target - 1e-9), None)


def report(tutorial: list[dict], fast: list[dict], note: str) -> dict:
    target = tutorial[-1]["test_acc"]
    t_tut, t_fast = time_to(tutorial, target), time_to(fast, target)
    print(f"\n{'':8}{'tutorial':>26}    {'gapvision fast recipe':>26}")
    print(f"{'epoch':>6}  {'seconds':>10} {'test acc':>10}      {'seconds':>10} {'test acc':>10}")
    for i in range(max(len(tutorial), len(fast))):
        a = tutorial[i] if i < len(tutorial) else None
        b = fast[i] if i < len(fast) else None
        left = f"{a['seconds']:>10.1f} {a['test_acc']:>10.4f}" if a else " " * 21
        right = f"{b['seconds']:>10.1f} {b['test_acc']:>10.4f}" if b else ""
        label = "final" if b is not None and b.get("final") else str(i + 1)
        print(f"{label:>6}  {left}      {right}")
    print(f"\ntarget: the tutorial's accuracy after {len(tutorial)} epochs = {target:.4f} ({note})")
    print(f"tutorial reaches it after {t_tut:.0f} s")
    if t_fast is None:
        print(f"the fast recipe does not reach it (best {max(r['test_acc'] for r in fast):.4f})")
        ratio = None
    else:
        ratio = t_tut / t_fast
        print(f"the fast recipe reaches it after {t_fast:.0f} s: {ratio:.1f}x sooner (target >= 10x)")
    best = max(fast, key=lambda r: r["test_acc"])
    print(f"fast recipe: best test acc {best['test_acc']:.4f} after {best['seconds']:.0f} s; "
          f"final {fast[-1]['test_acc']:.4f} after {fast[-1]['seconds']:.0f} s")
    return {"target": target, "tutorial_seconds": t_tut, "fast_seconds": t_fast, "ratio": ratio}


BUDGET_SECONDS = 600  # the fast90 target: >= 90 % within this many seconds


def parse_sets(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs as train options (numbers parsed as such)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="both recipes live on 1,000 train / 200 test images per "
                   "class: the tutorial for 2 epochs, the fast recipe for 5 (unless --epochs)")
    p.add_argument("--tutorial", choices=["recorded", "live"], default="recorded",
                   help="recorded (default): reuse bench/results/tutorial_cifar10.jsonl; live: run it here")
    p.add_argument("--record-tutorial", action="store_true", help="run or continue the full tutorial recording, "
                   "then stop")
    p.add_argument("--epochs", type=int, help="fast recipe epochs (default: the recipe's)")
    p.add_argument("--model", help="fast recipe network (default: the recipe's)")
    p.add_argument("--recipe", choices=["fast", "fast90"], default="fast",
                   help="fast (the default recipe) or fast90 (the >= 90 %% in 600 s one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other train option for the recipe run, e.g. --set tta=flip (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write the comparison as JSON here (default: bench/results/ for full runs)")
    a = p.parse_args(argv)

    root = extract_cifar()
    ckpt = cache_dir() / "bench" / "tutorial_cifar10.ckpt"
    print(f"machine: {json.dumps(machine())}; load average now {load_average()}", flush=True)
    if a.record_tutorial:
        rows = run_tutorial(root, TUTORIAL_EPOCHS, TUTORIAL_RECORD, checkpoint=ckpt)
        print(f"{TUTORIAL_RECORD}: {len(rows)} of {TUTORIAL_EPOCHS} epochs recorded")
        return 0
    fast_opts = {k: v for k, v in (("epochs", a.epochs), ("model", a.model)) if v}
    fast_opts.update(parse_sets(a.set))
    fast_opts["recipe"] = a.recipe
    if a.quick:
        tutorial = run_tutorial(root, 2, None, train_per_class=1000, test_per_class=200)
        note = "quick: 10,000 training and 2,000 test images, 2 tutorial epochs, measured live"
        fast, config = run_fast(root, train_per_class=1000, test_per_class=200, seed=a.seed,
                                **{"epochs": 5, **fast_opts})
    else:
        if a.tutorial == "live":
            tutorial = run_tutorial(root, TUTORIAL_EPOCHS, None)
            note = "measured live in this run"
        else:
            tutorial = read_record(TUTORIAL_RECORD)
            if not tutorial:
                print(f"no tutorial recording in {TUTORIAL_RECORD}: record it with --record-tutorial (about 1.5 h "
                      f"on 2 cores) or run it here with --tutorial live", file=sys.stderr)
                return 2
            head = record_header(TUTORIAL_RECORD)
            done = "complete" if len(tutorial) >= TUTORIAL_EPOCHS else \
                f"PARTIAL: {len(tutorial)} of {TUTORIAL_EPOCHS} epochs; continue with --record-tutorial"
            note = f"recorded in {TUTORIAL_RECORD.name} on {head.get('machine', {}).get('cpu', '?')}, {done}"
        fast, config = run_fast(root, seed=a.seed, **fast_opts)
    summary = report(tutorial, fast, note)
    within = [r for r in fast if r["seconds"] <= BUDGET_SECONDS]
    summary["best_within_600s"] = max((r["test_acc"] for r in within), default=None)
    print(f"{a.recipe} recipe: best test accuracy within {BUDGET_SECONDS} s of the start (decode cache, model set-up "
          f"and every evaluation included): {summary['best_within_600s']}")
    result = {"note": note, "machine": machine(), "summary": summary, "tutorial": tutorial, "fast": fast,
              "fast_config": {k: config[k] for k in ("train", "model", "data", "recipe", "preprocess")}}
    save = Path(a.save) if a.save else (None if a.quick else RESULTS / f"cifar_time_to_acc-{time.strftime('%Y%m%d-%H%M')}.json")
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written {save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
