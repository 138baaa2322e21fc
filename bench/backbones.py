"""Every registered backbone trained with the defaults for 2 epochs on builtin:shapes at 64 px.

    python bench/backbones.py                       # all of `gapvision summary --list`
    python bench/backbones.py --models gapcnn,cifarcnn,vgg11 --epochs 6
    python bench/backbones.py --epochs default      # the epochs the plain defaults choose (6 on builtin:shapes)
    python bench/backbones.py --models mnasnet1_0,mobilenet_v3_small --epochs 6 --builder-bn-momentum
    python bench/backbones.py --inits auto          # only the default start (not beside --init default)

Each row is ``gapvision.train("builtin:shapes", model=NAME, epochs=2)`` and nothing else (the plain defaults, since a
model is named; random initialisation, nothing downloaded), run once with each of ``--inits`` one after the other
(by default ``auto``, the default start: the first convolution whitened, see models/whitening.py, beside
``default``, the builders' initialisation): validation accuracy after each epoch and seconds per epoch. Chance is
0.25 (4 balanced classes); the target is to beat twice chance. A backbone whose smallest input is larger than 64 px
(inception_v3) runs at its smallest accepted size, and the row says so. Results go to bench/results/backbones-*.json;
the README's table is printed at the end. ``--builder-bn-momentum`` keeps the BatchNorm momenta the builders set (a
from-scratch run otherwise raises them to at least 0.1: ``gapvision.train.pipeline.SCRATCH_BN_MOMENTUM``), to see
what that default does.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = "builtin:shapes"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated backbone names (default: every registered one)")
    p.add_argument("--epochs", default="2", help="epochs of each run, or 'default': what the plain defaults choose")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inits", default="auto,default", help="comma-separated --init values, each model run with each")
    p.add_argument("--lr", type=float, help="a learning rate for every run (default: the plain defaults' choice)")
    p.add_argument("--builder-bn-momentum", action="store_true",
                   help="keep the builders' BatchNorm momenta (MNASNet 3e-4, MobileNetV3 1e-2) instead of >= 0.1")
    p.add_argument("--table", nargs="+", metavar="JSON",
                   help="only print the README table of these result files (rows of a later file replace those of an "
                        "earlier one for the same model and init)")
    a = p.parse_args(argv)
    if a.table:
        return table_of(a.table)
    import torch

    import gapvision as gv
    from gapvision import atomic
    from gapvision.errors import ConfigError
    from gapvision.models import list_backbones

    if a.builder_bn_momentum:
        import importlib

        importlib.import_module("gapvision.train.pipeline").SCRATCH_BN_MOMENTUM = None
    epochs = None if a.epochs == "default" else int(a.epochs)
    torch.set_num_threads(a.threads)
    names = a.models.split(",") if a.models else [n for n in list_backbones() if ":" not in n]
    inits = a.inits.split(",")
    rows: list[dict] = []
    tag = (("-builder-bn" if a.builder_bn_momentum else "") + ("-default-epochs" if epochs is None else "")
           + (f"-lr{a.lr:g}" if a.lr is not None else ""))
    out = REPO / "bench" / "results" / f"backbones-{time.strftime('%Y%m%d-%H%M%S')}{tag}.json"

    def save() -> None:  # after every row, so that a long run stopped early keeps what it measured
        atomic.write_json(out, {"data": DATA, "epochs": epochs or "default", "torch": torch.__version__,
                                "rows": rows, "threads": a.threads, "inits": inits, "lr": a.lr or "default",
                                "bn_momentum": "builder" if a.builder_bn_momentum else "at least 0.1 from scratch"})

    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for init in inits:
                rows.append(train_one(gv, ConfigError, name, init, epochs, Path(tmp), a.lr))
                save()
                r = rows[-1]
                if "error" not in r:
                    accs = " ".join(f"{x:.3f}" for x in r["val_acc"])
                    print(f"{name:20s} {init:8s} {r['img_size']:4d} px  val acc {accs}"
                          f"  train acc {' '.join(f'{x:.3f}' for x in r['train_acc'])}  {r['seconds_per_epoch']:7.1f} "
                          f"s/epoch  {'ok' if r['beats_twice_chance'] else 'BELOW 2x chance'}", flush=True)
    print_table(rows, names, inits, epochs)
    print(f"written {out}")
    return 0


def table_of(files: list[str]) -> int:
    """Print the table of the rows in ``files``, merged (a later file's row replaces an earlier one's), with the file
    each row comes from."""
    import json

    merged: dict[tuple[str, str], dict] = {}
    inits: list[str] = []
    epochs = set()
    for f in files:
        d = json.loads(Path(f).read_text())
        epochs.add(d["epochs"])
        for r in d["rows"]:
            merged[(r["model"], r["init"])] = {**r, "file": Path(f).name}
            inits += [r["init"]] if r["init"] not in inits else []
    if len(epochs) != 1:
        raise SystemExit(f"the files were run for different epochs: {sorted(map(str, epochs))}")
    (e,) = epochs
    names = sorted({m for m, _ in merged})
    print_table(list(merged.values()), names, inits, None if e == "default" else int(e))
    for name in names:
        print(f"{name}: " + ", ".join(f"--init {i} from {merged[(name, i)]['file']}" for i in inits
                                      if (name, i) in merged))
    return 0


def print_table(rows: list[dict], names: list[str], inits: list[str], epochs: int | None) -> None:
    """The README's table of ``rows`` (one per model and init), in the order of ``names``."""
    shown = "each epoch" if epochs is None else "epoch " + " / ".join(str(i + 1) for i in range(epochs))
    print(f"\n| backbone | input | start, lr | {' | '.join(f'val acc after {shown}, --init {i}' for i in inits)} | "
          f"{' | '.join(f'train acc, --init {i}' for i in inits)} | s / epoch |\n|---|---|---|"
          + "---|" * (2 * len(inits) + 1))
    for name in names:
        mine = {r["init"]: r for r in rows if r["model"] == name}
        ok = [r for r in mine.values() if "error" not in r]
        if not ok:
            print(f"| {name} | - | {next(iter(mine.values()))['error']} |")
            continue

        def cell(init: str, key: str) -> str:
            r = mine.get(init, {"error": "-"})
            text = " / ".join(f"{x:.3f}" for x in r[key]) if "error" not in r else r["error"]
            return f"**{text}**" if key == "val_acc" and r.get("beats_twice_chance") else text

        start = ", ".join(f"{r['started_as']}{' (' + r['stem'] + ' stem)' if r.get('stem', 'native') != 'native' else ''} "
                          f"{lr_text(r)}" for r in ok)
        print(f"| {name} | {ok[0]['img_size']} | {start} | {' | '.join(cell(i, 'val_acc') for i in inits)} | "
              f"{' | '.join(cell(i, 'train_acc') for i in inits)} | {ok[0]['seconds_per_epoch']} |")


def lr_text(row: dict) -> str:
    """The lr of a row: ``BACKBONE:HEAD`` where the backbone had its own (the --lr syntax), else the one lr."""
    return f"{row['backbone_lr']:g}:{row['lr']:g}" if row.get("backbone_lr") is not None else f"{row['lr']:g}"


def train_one(gv, config_error: type, name: str, init: str, epochs: int | None, tmp: Path,
              lr: float | None = None) -> dict:
    """One default run of ``name`` with ``--init init`` (and ``--lr lr`` if given): its row (at the smallest
    accepted size from 64 px)."""
    extra = {"lr": lr} if lr is not None else {}
    for size in (64, 96, 128, 160):
        try:
            t0 = time.perf_counter()
            run = gv.train(DATA, model=name, epochs=epochs, img_size=size, init=init, quiet=True,
                           out=tmp / f"{name}-{init}-{size}", **extra)
            break
        except config_error as e:  # too small an input for this backbone: the next size
            if "too small" not in str(e):
                raise
    else:
        return {"model": name, "init": init, "error": "no accepted input size up to 160 px"}
    wall = time.perf_counter() - t0
    accs = [round(r["val_acc"], 4) for r in run.history]
    row = {"model": name, "init": init, "started_as": run.config["model_options"]["init"],
           "stem": run.config["model"].get("stem", "native"), "img_size": size,
           "val_acc": accs, "train_acc": [round(r["train_acc"], 4) for r in run.history],
           "seconds_per_epoch": round(sum(r["seconds"] for r in run.history) / len(run.history), 1),
           "wall_seconds": round(wall, 1), "beats_twice_chance": accs[-1] > 0.5,
           "lr": run.config["train"]["lr"], "backbone_lr": run.config["train"]["backbone_lr"],
           "batch_size": run.config["train"]["batch_size"],
           "epochs": run.config["train"]["epochs"], "warnings": run.metrics.get("warnings", [])}
    if size != 64:
        row["note"] = f"smallest accepted input {size} px"
    return row


if __name__ == "__main__":
    raise SystemExit(main())
