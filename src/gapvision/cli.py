"""Command-line interface: argument parsing only; every command calls the Python API.

Every command module has a ``register(sub)`` that adds its sub-parser with ``set_defaults(handler=...)``; this one
(train, evaluate, predict, inspect-data, summary, demo) and those listed in :data:`COMMAND_MODULES`. The shared
option groups are in options.py. Nothing here imports torch until a command runs (``gapvision --help`` stays fast).

User mistakes (GapvisionError) print one line ``error: ...`` and exit with code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Sequence

from .choices import STEMS
from .errors import GapvisionError, Interrupted
from .options import (OPTION_NAMES, add_data_args, add_model_args, add_preprocess_args, add_pretrained_args,
                      add_skip_bad_arg, add_train_args, collect, load_opts)

#: the modules whose ``register(sub)`` adds sub-commands, in the order ``--help`` lists them
COMMAND_MODULES = ("gapvision.cli", "gapvision.share", "gapvision.compare.cli", "gapvision.localize.cli")
__all__ = ["COMMAND_MODULES", "OPTION_NAMES", "add_data_args", "add_model_args", "add_preprocess_args",
           "add_pretrained_args", "add_train_args", "build_parser", "collect", "load_opts", "main"]


# -- commands ------------------------------------------------------------------------------------------------
def cmd_train(a: argparse.Namespace) -> None:
    from .train.pipeline import resume, train

    if a.resume:
        given = [k for k in collect(a) if k not in ("epochs", "quiet")]
        given += [k for k in ("data", "model", "head", "out") if getattr(a, k, None) is not None]
        if given:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in dict.fromkeys(given))
            raise GapvisionError(f"--resume goes on with {a.resume}'s own settings; {flags} cannot change them "
                                 "(only --epochs and --quiet can): drop them, or start a new run from its weights "
                                 f"with --weights {a.resume} --out NEW_DIR")
        resume(a.resume, epochs=a.epochs, quiet=a.quiet)
        return
    if not a.data:
        raise GapvisionError("train needs --data (or --resume RUN_DIR)")
    train(a.data, a.model, a.head, out=a.out, **collect(a))  # no --model: the recipe's or gapcnn (see recipes.py)


def cmd_lr_find(a: argparse.Namespace) -> None:
    from .train.pipeline import lr_find

    opts = {k: v for k, v in collect(a).items() if k != "lr"}
    res = lr_find(a.data, a.model, a.head, out=a.out, start_lr=a.start_lr, end_lr=a.end_lr, steps=a.steps, **opts)
    print(f"suggested lr {res.suggestion:.3g} ({len(res.lrs)} steps from {res.lrs[0]:.1e} to {res.lrs[-1]:.1e}, "
          f"{'head only' if res.phase == 'head' else 'whole network'})" + (f"; plot in {res.plot}" if res.plot else ""))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .train.pipeline import evaluate, print_notes

    res = evaluate(a.run, a.data, split=a.split, out=a.out, **load_opts(a))
    print_notes(res.get("notes", []))
    print(f"accuracy {res['acc']:.4f} on {res['images']} images ({a.data}, {res['split']}); macro F1 {res['macro_f1']:.4f}")
    if "out" in res:
        print(f"metrics and confusion matrix in {res['out']}")


def cmd_predict(a: argparse.Namespace) -> None:
    from .data.images import unreadable_note
    from .distributed import inference_inputs
    from .predict import format_table, open_predictor
    from .predictor import check_topk

    check_topk(a.topk)  # before --output's files exist
    run_dir, inputs = run_and_inputs(a)
    run = open_predictor(run_dir, model=a.model, weights=a.weights, labels=a.labels, normalize=a.normalize,
                         img_size=a.img_size, head=a.head, crop=a.crop)
    if a.output:  # shared across torchrun processes, merged in input order, resumable
        from .distributed import current, predict_to_jsonl

        res = predict_to_jsonl(run, inputs, a.output, topk=a.topk, skip_bad=bool(a.skip_bad))
        if current().is_main:
            print(res.summary())
            note = unreadable_note(res.records()) if a.skip_bad else None
            if note:
                print(note, file=sys.stderr)
        return
    images = inference_inputs(inputs)  # folders, files and manifests, as with --output
    if not images:
        raise GapvisionError("no images found in " + ", ".join(inputs))
    results = run.predict(images, topk=a.topk, skip_bad=bool(a.skip_bad))
    if a.json:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    else:
        print(format_table([r for r in results if "error" not in r]))
    note = unreadable_note(results)
    if note:
        print(note, file=sys.stderr)


def cmd_inspect(a: argparse.Namespace) -> None:
    from .data.inspect import format_inspection, inspect_data

    report = inspect_data(a.data, out_png=a.out, **load_opts(a))
    print(format_inspection(report))


def cmd_summary(a: argparse.Namespace) -> None:
    from .models import create_model, list_backbones
    from .models.summary import summarize

    if a.list:
        if a.list.lower().startswith("timm"):  # timm or timm:PATTERN (fnmatch, e.g. 'timm:*resnet*')
            from .models.timm_backbone import list_timm

            print("\n".join(list_timm(a.list.partition(":")[2] or "*")))
        else:
            print("\n".join(list_backbones()))
        return
    channels = int(a.channels or 3)
    net = create_model(a.model or "gapcnn", a.head or "gap", a.num_classes, in_channels=channels,
                       img_size=a.img_size, dropout=a.dropout or 0.0, hidden=a.hidden or 256, stem=a.stem)
    print(summarize(net, a.img_size, channels))


def cmd_demo(a: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(out=a.out, quiet=a.quiet)


def register(sub: Any) -> None:
    """The core sub-commands."""
    t = sub.add_parser("train", help="train a classifier; writes a run directory")
    add_data_args(t, required=False)
    add_preprocess_args(t)
    add_model_args(t)
    add_train_args(t)
    t.add_argument("--out", help="run directory (default runs/<time>-<model>-<head>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    t.set_defaults(handler=cmd_train)

    lf = sub.add_parser("lr-find", help="LR range test: loss against learning rate, a suggested lr and lr_find.png")
    add_data_args(lf)
    add_preprocess_args(lf)
    add_model_args(lf)
    add_train_args(lf)
    lf.add_argument("--out", help="folder for lr_find.png and lr_find.json")
    lf.add_argument("--start-lr", type=float, default=1e-7, help="first lr of the sweep (default 1e-7)")
    lf.add_argument("--end-lr", type=float, default=10.0, help="last lr of the sweep (default 10)")
    lf.add_argument("--steps", type=int, default=100, help="optimisation steps of the sweep (default 100)")
    lf.set_defaults(handler=cmd_lr_find)

    e = sub.add_parser("evaluate", help="metrics and confusion matrix of a run on another dataset or split")
    e.add_argument("run", metavar="RUN_DIR")
    add_data_args(e)
    e.add_argument("--split", choices=["train", "val", "test"], help="evaluate one split of --data as training makes "
                   "it: its own split folders, else the run's seeded --val-split (default: every image; a source with "
                   "splits: test)")
    e.add_argument("--out", help="folder for metrics.json and confusion.png (default RUN_DIR/evaluations/...)")
    e.set_defaults(handler=cmd_evaluate)

    pr = sub.add_parser("predict", help="top-k classes for images or folders")
    pr.add_argument("paths", nargs="+", metavar="[RUN_DIR] IMAGE_OR_DIR",
                    help="a run directory then images or folders (with --model: images or folders only)")
    pr.add_argument("--topk", type=int, default=3)
    pr.add_argument("--json", action="store_true", help="one JSON object per image")
    pr.add_argument("--output", metavar="FILE.jsonl", help="write the --json records to FILE in input order (folders "
                    "and .csv/.tsv manifests); under torchrun the processes share the images; a rerun skips those done")
    add_skip_bad_arg(pr)
    add_pretrained_args(pr)
    pr.set_defaults(handler=cmd_predict)

    i = sub.add_parser("inspect-data", help="class counts, sizes, modes, problems and a sample grid")
    add_data_args(i)
    i.add_argument("--out", default="samples.png", help="PNG grid of samples per class (default samples.png)")
    i.set_defaults(handler=cmd_inspect)

    s = sub.add_parser("summary", help="layer table with output shapes, parameters and mult-adds")
    s.add_argument("--model")
    s.add_argument("--head")
    s.add_argument("--num-classes", type=int, default=10)
    s.add_argument("--img-size", type=int, default=64)
    s.add_argument("--channels", choices=["1", "3"])
    s.add_argument("--dropout", type=float)
    s.add_argument("--hidden", type=int)
    s.add_argument("--stem", choices=list(STEMS), default="auto",
                   help="the first layer, as `train` builds it from scratch (auto: pooled for ConvNeXt; default auto)")
    s.add_argument("--list", nargs="?", const="builtin", metavar="timm[:PATTERN]",
                   help="list the built-in backbones; --list timm: every timm model (--model timm:NAME), "
                   "--list 'timm:*resnet*' those matching")
    s.set_defaults(handler=cmd_summary)

    d = sub.add_parser("demo", help="train a GAP model on built-in shapes (offline, about a minute)")
    d.add_argument("--out", help="run directory")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(handler=cmd_demo)


# -- parser ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="gapvision", description="Train, compare and explain CNN image classifiers.")
    p.add_argument("--version", action="version", version=f"gapvision {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def run_and_inputs(a: argparse.Namespace) -> tuple[str | None, list[str]]:
    """Split positional paths into (RUN_DIR, inputs); with --model there is no run directory."""
    if getattr(a, "model", None):
        return None, list(a.paths)
    if len(a.paths) < 2:
        raise GapvisionError(f"give a RUN_DIR and at least one image or folder (got {' '.join(a.paths)}), "
                             "or use --model/--weights/--labels")
    return a.paths[0], list(a.paths[1:])


def one_line(e: BaseException) -> str:
    """The last meaningful line of an error (DataLoader workers wrap messages in tracebacks)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[-1] if lines else type(e).__name__
    for prefix in ("gapvision.errors.DataError: ", "gapvision.errors.ConfigError: ", "gapvision.errors.GapvisionError: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        rc = args.handler(args)
    except Interrupted as e:  # Ctrl-C after the work was saved: say how to continue, exit like an interrupted shell
        print(one_line(e), file=sys.stderr)
        return 130
    except GapvisionError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if "DataError" in str(e) or "GapvisionError" in str(e):  # re-raised from a DataLoader worker
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        raise
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
