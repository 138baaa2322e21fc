"""Localisation quality: WSOL metrics of fcn, cam and gradcam beside the central-box and full-image baselines.

    python bench/localize_quality.py                       # both parts, training what is missing into --work
    python bench/localize_quality.py --boxes-run RUN       # boxes-dev with a run trained on boxes-dev/images
    python bench/localize_quality.py --part scenes --demo-run runs/demo
    python bench/localize_quality.py --part boxes --methods fewshot,ddt --calibration-seed 1   # another calibration sample
    python bench/localize_quality.py --part boxes --methods fewshot --fewshot-epochs 0     # fewshot's linear probe alone

* **boxes-dev** (``../shared/data/boxes-dev``, VOC boxes): a GAP MobileNetV2 fine-tuned on ``boxes-dev/images``
  (``--boxes-run``, or trained here with :data:`BOXES_TRAIN`); its seeded validation split is the held-out set
  (``--split val``). Per method: the uncalibrated default, then ``--calibrate`` on ``--calibrate-images`` images of
  the train split, then the evaluation on the validation split, and a second one on the rest of the train split (the
  images calibration did not use, which evaluation leaves out by itself: 113 photos the classifier trained on but
  whose boxes nobody used; a larger, if less strictly held-out, sample than the 36 validation photos).
  ``fewshot`` learns its objectness map from the same calibration images' boxes (no uncalibrated row).
* **shapes scenes** (``builtin:shapes-scenes``, 200 images with 1-3 shapes): the ``make demo`` model (``--demo-run``,
  or :func:`gapvision.demo.run_demo` here); calibrated on 40 other scenes (``seed=1``).

Writes ``bench/results/localize_quality-<time>.json`` and prints one table per part.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from gapvision import atomic
from gapvision.localize.calibrate import CALIBRATION_FILE
from gapvision.localize.evaluate import calibrate, evaluate_localization

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GAPVISION_SHARED", ROOT.parent / "shared"))
BOXES = SHARED / "data" / "boxes-dev"
#: the default for pretrained weights: the transfer recipe (BatchNorm statistics fixed); --explicit-train gives the
#: earlier explicit 5-epoch command (freeze bn, AdamW 1e-3) that the recorded results/localize_quality-* used
BOXES_TRAIN = dict(model="mobilenet_v2", head="gap", weights=str(SHARED / "weights" / "mobilenet_v2-imagenet.pth"),
                   normalize="half", skip_bad=True, quiet=True)
BOXES_TRAIN_EXPLICIT = dict(BOXES_TRAIN, freeze="bn", epochs=5, recipe="none")
SCENES = "builtin:shapes-scenes"
SCENES_CALIBRATION = "builtin:shapes-scenes?n=40&seed=1"
METHODS = ("fcn", "cam", "gradcam", "ddt", "fewshot")
#: methods that learn from the calibration images' boxes, so they have no uncalibrated form
LEARNED = ("fewshot",)
#: with --library-methods: pytorch-grad-cam's (scorecam left out: about 40 s an image here)
LIBRARY = ("gradcam++", "layercam", "xgradcam", "eigencam")
KEYS = ("top1_loc", "gt_known_loc", "maxboxacc_v2", "presence_f1", "ap50", "mean_iou")


def boxes_run(a: argparse.Namespace) -> Path:
    if a.boxes_run:
        return Path(a.boxes_run)
    out = Path(a.work) / "boxes-dev-gap"
    if not (out / "metrics.json").exists():  # a finished run (an interrupted one has weights but no metrics)
        from gapvision.train.pipeline import train

        opts = dict(BOXES_TRAIN_EXPLICIT if a.explicit_train else BOXES_TRAIN)
        train(str(BOXES / "images"), opts.pop("model"), opts.pop("head"), out=out, **opts)
    return out


def demo_run(a: argparse.Namespace) -> Path:
    if a.demo_run:
        return Path(a.demo_run)
    out = Path(a.work) / "demo"
    if not (out / "metrics.json").exists():  # a finished run (an interrupted one has weights but no metrics)
        from gapvision.demo import run_demo

        run_demo(out, quiet=True)
    return out


def measure(run: Path, data: str, split: str, calib_data: str, calib_split: str, images: int,
            methods: tuple[str, ...] = METHODS, seed: int = 0, fewshot_epochs: int | None = None,
            also: str | None = None) -> dict:
    """Per method: uncalibrated, then calibrated (on a scratch copy of the run, so the run itself is untouched);
    ``also``: a second split of ``data`` scored calibrated too (less the images calibration used)."""
    scratch = run.parent / f".{run.name}-bench"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(run, scratch, ignore=shutil.ignore_patterns(CALIBRATION_FILE, "checkpoint.pt", "*.onnx"))
    rows = {}
    try:
        for method in methods:
            t = time.perf_counter()
            before = None if method in LEARNED else evaluate_localization(str(scratch), data, split=split,
                                                                          method=method, calibration=False)
            entry = calibrate(str(scratch), calib_data, split=calib_split, images=images, method=method, seed=seed,
                              fewshot_epochs=fewshot_epochs)
            after = evaluate_localization(str(scratch), data, split=split, method=method)
            rows[method] = {"uncalibrated": before, "calibration": entry, "calibrated": after,
                            "seconds": round(time.perf_counter() - t, 1)}
            print(f"  {method}: {_row(after)}  (uncalibrated: {_row(before) if before else 'learned at calibration'})",
                  flush=True)
            if also:
                rows[method]["also"] = evaluate_localization(str(scratch), data, split=also, method=method)
                print(f"  {method} on {also} less calibration's images: {_row(rows[method]['also'])}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    first = next(iter(rows.values()))["calibrated"]
    return {"data": data, "split": split, "images": first["images"], "methods": rows,
            "baseline_center": first["baseline_center"], "baseline_full": first["baseline_full"]}


def _row(m: dict) -> str:
    return " ".join(f"{k} {m[k]:.3f}" for k in KEYS)


def table(part: dict, key: str = "calibrated") -> str:
    """A markdown table: one row per method (calibrated; ``key="also"``: on the second split), then the baselines."""
    lines = ["| method | top-1 loc | GT-known loc | MaxBoxAccV2 | presence F1 | AP@0.5 | mean IoU |", "|---" * 7 + "|"]
    for method, r in part["methods"].items():
        m = r[key]
        lines.append(f"| {method} (calibrated: {r['calibration']['rule']}, {r['calibration']['threshold']:g}) | "
                     + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |")
    for name in ("center", "full"):
        b = next(iter(part["methods"].values()))[key][f"baseline_{name}"]
        lines.append(f"| {'central 80 % box' if name == 'center' else 'full-image box'} | {b['top1_loc']:.3f} | "
                     f"{b['gt_known_loc']:.3f} | {b['maxboxacc_v2']:.3f} | | | {b['mean_iou']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "boxes", "scenes"], default="all")
    p.add_argument("--boxes-run", help="a run trained on boxes-dev/images (default: train one into --work)")
    p.add_argument("--demo-run", help="the `make demo` run (default: train one into --work)")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-localize"), help="where missing runs are trained")
    p.add_argument("--calibrate-images", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--library-methods", action="store_true",
                   help="add pytorch-grad-cam's methods (" + ", ".join(LIBRARY) + ") to fcn, cam and gradcam")
    p.add_argument("--explicit-train", action="store_true",
                   help="train boxes-dev with the earlier explicit command (freeze bn, 5 epochs) instead of the "
                        "transfer recipe")
    p.add_argument("--methods", help="comma-separated methods instead of " + ",".join(METHODS))
    p.add_argument("--calibration-seed", type=int, default=0, help="seed of the calibration images' sample")
    p.add_argument("--fewshot-epochs", type=int, help="fewshot's fine-tuning passes (default: the library's; 0: the "
                   "linear probe alone)")
    a = p.parse_args()
    methods = tuple(a.methods.split(",")) if a.methods else METHODS + (LIBRARY if a.library_methods else ())
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    result: dict = {"created": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = ROOT / "bench" / "results" / f"localize_quality-{time.strftime('%Y%m%d-%H%M%S')}.json"
    if a.part in ("all", "boxes"):
        if not BOXES.is_dir():
            raise SystemExit(f"{BOXES} not found (set GAPVISION_SHARED)")
        run = boxes_run(a)
        print(f"boxes-dev, run {run}: calibrate on {a.calibrate_images} train images, evaluate on the val split")
        result["boxes_dev"] = {"run": str(run), "calibration_seed": a.calibration_seed,
                               **measure(run, str(BOXES), "val", str(BOXES), "train", a.calibrate_images, methods,
                                         a.calibration_seed, a.fewshot_epochs, also="train")}
        print(table(result["boxes_dev"]))
        print(f"\nthe same on the train split less the {a.calibrate_images} calibration images "
              f"({next(iter(result['boxes_dev']['methods'].values()))['also']['images']} photos the classifier "
              "trained on, whose boxes nobody used):")
        print(table(result["boxes_dev"], "also"))
        atomic.write_json(path, result)  # each part is kept as soon as it is measured
    if a.part in ("all", "scenes"):
        run = demo_run(a)
        print(f"shapes scenes, run {run}: calibrate on {SCENES_CALIBRATION}, evaluate on {SCENES}")
        result["shapes_scenes"] = {"run": str(run), **measure(run, SCENES, "all", SCENES_CALIBRATION, "all", 40,
                                                              methods, fewshot_epochs=a.fewshot_epochs)}
        print(table(result["shapes_scenes"]))
    atomic.write_json(path, result)
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
