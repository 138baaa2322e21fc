"""Command-line interface: argument parsing only; every command calls the Python API.

User mistakes (GapvisionError) print one line ``error: ...`` and exit with code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from .errors import GapvisionError, Interrupted

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(name: str) -> Callable:
    def deco(fn: Callable[[argparse.Namespace], int | None]) -> Callable:
        COMMANDS[name] = fn
        return fn

    return deco


# -- shared option groups (one definition each, reused by every command that needs them) -------------------------
def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, help="DIR (a folder per class), FILE.csv/.tsv, builtin:shapes, "
                   "builtin:digits or torchvision:NAME")
    g.add_argument("--val-split", type=float, help="validation fraction when the data has no val/ split (default 0.2)")
    g.add_argument("--image-root", help="folder that manifest paths are relative to")
    g.add_argument("--image-col", help="manifest column with the image path (default: the first)")
    g.add_argument("--label-col", help="manifest column with the label (default: the second)")
    g.add_argument("--root", help="torchvision datasets: the folder holding the data")
    g.add_argument("--download", action="store_true", default=None, help="torchvision datasets: download (needs internet)")
    g.add_argument("--skip-bad", action="store_true", default=None, help="skip unreadable images and report how many")
    g.add_argument("--allow-outside-root", action="store_true", default=None,
                   help="let manifest paths point outside the manifest's folder")


def add_preprocess_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocessing")
    g.add_argument("--channels", choices=["1", "3", "auto"], help="1 (grayscale), 3 (RGB) or auto (default)")
    g.add_argument("--img-size", type=int, help="square input size (default: from the data)")
    g.add_argument("--normalize", choices=["auto", "imagenet", "half", "caffe"],
                   help="auto: train-split statistics (default); imagenet; half: mean 0.5 std 0.5; caffe: BGR 0-255")
    g.add_argument("--augment", choices=["none", "basic", "strong"], help="train-time augmentation (default basic)")
    g.add_argument("--in-memory", choices=["auto", "on", "off"],
                   help="decode every image once into memory and augment whole batches (auto: when the decoded set "
                        "fits in a quarter of the free memory; default)")


def add_model_args(p: argparse.ArgumentParser, head: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="backbone name (gapcnn, cifarcnn, resnet20, resnet18, mobilenet_v2..., or "
                   "timm:NAME; see `gapvision summary --list` and `--list timm`)")
    if head:
        g.add_argument("--head", help="gap, gmp, avgmax, catavgmax, fc or conv (default gap)")
    g.add_argument("--dropout", type=float, help="dropout before the classifier")
    g.add_argument("--hidden", type=int, help="hidden width of the fc head (default 256)")
    g.add_argument("--weights", help="pretrained weights: FILE (.pth/.safetensors), a run directory, or torchvision:DEFAULT")
    g.add_argument("--freeze", choices=["none", "backbone", "bn"], help="freeze the backbone, or only BatchNorm statistics")


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="images per step (default 64); under torchrun the global batch, "
                   "split evenly across the processes")
    g.add_argument("--optimizer", choices=["adam", "adamw", "sgd", "rmsprop"])
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--schedule", choices=["none", "cosine", "onecycle", "step"])
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--step-epochs", type=int, help="step schedule: decay every N epochs")
    g.add_argument("--step-gamma", type=float)
    g.add_argument("--clip-grad", type=float, help="max gradient norm (0 = off)")
    g.add_argument("--patience", type=int, help="early stopping after N epochs without a better val accuracy")
    g.add_argument("--seed", type=int, help="random seed (default 0), recorded in the run")
    g.add_argument("--deterministic", action="store_true", default=None)
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--amp", choices=["auto", "on", "off"], help="mixed precision (auto: on for CUDA)")
    g.add_argument("--channels-last", choices=["auto", "on", "off"])
    g.add_argument("--workers", type=int, help="DataLoader worker processes (default: auto)")
    g.add_argument("--quiet", action="store_true", default=None, help="no progress bars or per-epoch lines")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help="write TensorBoard scalars to RUN_DIR/tensorboard (needs the tensorboard package)")
    g.add_argument("--recipe", choices=["auto", "fast", "none"],
                   help="fast: the fast small-image recipe fills every option you do not set; auto (default): fast for "
                        "images <= 64 px when --model and the optimiser options are not given; none: plain defaults")
    g.add_argument("--ema", type=float, help="evaluate and save a moving average of the weights (decay per step, "
                   "e.g. 0.99; 0 = off)")
    g.add_argument("--tta", choices=["off", "flip"], help="test-time augmentation when evaluating (flip: average "
                   "with the mirrored image)")


OPTION_NAMES = (
    "val_split", "image_root", "image_col", "label_col", "root", "download", "skip_bad", "allow_outside_root",
    "channels", "img_size", "normalize", "augment", "dropout", "hidden", "weights", "freeze", "epochs", "batch_size",
    "optimizer", "lr", "weight_decay", "momentum", "label_smoothing", "schedule", "warmup_epochs", "step_epochs",
    "step_gamma", "clip_grad", "patience", "seed", "deterministic", "device", "amp", "channels_last", "workers", "quiet",
    "tensorboard", "in_memory", "recipe", "ema", "tta",
)


def collect(args: argparse.Namespace, names: Sequence[str] = OPTION_NAMES) -> dict[str, Any]:
    """The options the user actually gave (None = not given, so API defaults apply)."""
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def load_opts(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("val_split", "image_root", "image_col", "label_col", "root", "download", "skip_bad", "allow_outside_root")
    return collect(args, keys)


# -- commands ------------------------------------------------------------------------------------------------
@command("train")
def cmd_train(a: argparse.Namespace) -> None:
    from .train.pipeline import resume, train

    if a.resume:
        resume(a.resume, epochs=a.epochs, quiet=a.quiet)
        return
    if not a.data:
        raise GapvisionError("train needs --data (or --resume RUN_DIR)")
    train(a.data, a.model, a.head, out=a.out, **collect(a))  # no --model: the recipe's or gapcnn (see recipes.py)


@command("evaluate")
def cmd_evaluate(a: argparse.Namespace) -> None:
    from .train.pipeline import evaluate

    res = evaluate(a.run, a.data, split=a.split, out=a.out, **load_opts(a))
    print(f"accuracy {res['acc']:.4f} on {res['images']} images ({a.data}, {res['split']}); macro F1 {res['macro_f1']:.4f}")
    if "out" in res:
        print(f"metrics and confusion matrix in {res['out']}")


@command("predict")
def cmd_predict(a: argparse.Namespace) -> None:
    from .predict import format_table, open_predictor
    from .runs import list_images

    run_dir, inputs = run_and_inputs(a)
    run = open_predictor(run_dir, model=a.model, weights=a.weights, labels=a.labels, normalize=a.normalize,
                         img_size=a.img_size, head=a.head, crop=a.crop)
    if a.output:  # shared across torchrun processes, merged in input order, resumable
        from .distributed import current, predict_to_jsonl

        res = predict_to_jsonl(run, inputs, a.output, topk=a.topk)
        if current().is_main:
            print(res.summary())
        return
    images = list_images(inputs)
    if not images:
        raise GapvisionError("no images found in " + ", ".join(inputs))
    results = run.predict(images, topk=a.topk)
    if a.json:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    else:
        print(format_table(results))


@command("inspect-data")
def cmd_inspect(a: argparse.Namespace) -> None:
    from .data.inspect import format_inspection, inspect_data

    report = inspect_data(a.data, out_png=a.out, **load_opts(a))
    print(format_inspection(report))


@command("summary")
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
                       img_size=a.img_size, dropout=a.dropout or 0.0, hidden=a.hidden or 256)
    print(summarize(net, a.img_size, channels))


@command("demo")
def cmd_demo(a: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(out=a.out, quiet=a.quiet)


# -- parser ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="gapvision", description="Train, compare and explain CNN image classifiers.")
    p.add_argument("--version", action="version", version=f"gapvision {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a classifier; writes a run directory")
    add_data_args(t, required=False)
    add_preprocess_args(t)
    add_model_args(t)
    add_train_args(t)
    t.add_argument("--out", help="run directory (default runs/<time>-<model>-<head>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")

    e = sub.add_parser("evaluate", help="metrics and confusion matrix of a run on another dataset or split")
    e.add_argument("run", metavar="RUN_DIR")
    add_data_args(e)
    e.add_argument("--split", choices=["train", "val", "test"], help="evaluate one split of --data (default: all images)")
    e.add_argument("--out", help="folder for metrics.json and confusion.png (default RUN_DIR/evaluations/...)")

    pr = sub.add_parser("predict", help="top-k classes for images or folders")
    pr.add_argument("paths", nargs="+", metavar="[RUN_DIR] IMAGE_OR_DIR",
                    help="a run directory then images or folders (with --model: images or folders only)")
    pr.add_argument("--topk", type=int, default=3)
    pr.add_argument("--json", action="store_true", help="one JSON object per image")
    pr.add_argument("--output", metavar="FILE.jsonl", help="write the --json records to FILE in input order (folders "
                    "and .csv/.tsv manifests); under torchrun the processes share the images; a rerun skips those done")
    add_pretrained_args(pr)

    i = sub.add_parser("inspect-data", help="class counts, sizes, modes, problems and a sample grid")
    add_data_args(i)
    i.add_argument("--out", default="samples.png", help="PNG grid of samples per class (default samples.png)")

    s = sub.add_parser("summary", help="layer table with output shapes, parameters and mult-adds")
    s.add_argument("--model")
    s.add_argument("--head")
    s.add_argument("--num-classes", type=int, default=10)
    s.add_argument("--img-size", type=int, default=64)
    s.add_argument("--channels", choices=["1", "3"])
    s.add_argument("--dropout", type=float)
    s.add_argument("--hidden", type=int)
    s.add_argument("--list", nargs="?", const="builtin", metavar="timm[:PATTERN]",
                   help="list the built-in backbones; --list timm: every timm model (--model timm:NAME), "
                   "--list 'timm:*resnet*' those matching")

    d = sub.add_parser("demo", help="train a GAP model on built-in shapes (offline, about a minute)")
    d.add_argument("--out", help="run directory")
    d.add_argument("--quiet", action="store_true")

    for extend in EXTENSIONS:
        extend(sub)
    return p


def run_and_inputs(a: argparse.Namespace) -> tuple[str | None, list[str]]:
    """Split positional paths into (RUN_DIR, inputs); with --model there is no run directory."""
    if getattr(a, "model", None):
        return None, list(a.paths)
    if len(a.paths) < 2:
        raise GapvisionError(f"give a RUN_DIR and at least one image or folder (got {' '.join(a.paths)}), "
                             "or use --model/--weights/--labels")
    return a.paths[0], list(a.paths[1:])


def add_pretrained_args(p: argparse.ArgumentParser) -> None:
    """Options that build a predictor from a backbone + weights + labels instead of a run directory."""
    g = p.add_argument_group("pretrained model instead of a run")
    g.add_argument("--model", help="backbone name, e.g. mobilenet_v2")
    g.add_argument("--head", help="head kind (default: the backbone's own, e.g. gap; conv for squeezenet)")
    g.add_argument("--weights", help="weights file for --model")
    g.add_argument("--labels", help="class names: ImageNet JSON index or a text file with one label per line")
    g.add_argument("--normalize", choices=["imagenet", "half", "caffe"], help="preprocessing of --weights")
    g.add_argument("--img-size", type=int, help="input size for --model (default 224)")
    g.add_argument("--crop", type=float, help="central fraction kept before resizing, for --model (default 0.875)")


# Other modules (compare, localize, export, serve, report) register their sub-commands here.
EXTENSIONS: list[Callable[[Any], None]] = []


def one_line(e: BaseException) -> str:
    """The last meaningful line of an error (DataLoader workers wrap messages in tracebacks)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[-1] if lines else type(e).__name__
    for prefix in ("gapvision.errors.DataError: ", "gapvision.errors.ConfigError: ", "gapvision.errors.GapvisionError: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def main(argv: Sequence[str] | None = None) -> int:
    from . import extensions  # noqa: F401  (registers optional sub-commands)

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        rc = COMMANDS[args.command](args)
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
