"""``gapvision localize``: the sub-command (listed in ``gapvision.cli.COMMAND_MODULES``)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..choices import LIBRARY_CAM_METHODS as LIBRARY_METHODS
from ..choices import LOCALIZE_METHODS as METHODS
from ..errors import GapvisionError
from ..options import add_pretrained_args, add_skip_bad_arg


def register(sub: Any) -> None:
    """Add the ``localize`` sub-parser to ``sub`` (the CLI's sub-parsers) with its handler."""
    p = sub.add_parser(
        "localize", help="where is each class: class maps, boxes and heat-map grids for images, folders and videos",
        description="Per image: <stem>.json (classes and boxes in image pixels), <stem>_boxes.png and "
                    "<stem>_maps.png (a heat-map overlay per detected class) in --out.",
    )
    p.add_argument("paths", nargs="*", metavar="[RUN_DIR] IMAGE_OR_DIR",
                   help="a run directory then images, folders or video files (with --model: only the inputs)")
    p.add_argument("--out", help="output folder (without it, results are only printed)")
    p.add_argument("--method", choices=list(METHODS),
                   help="fcn: exact class maps, all classes in one pass (default, or the calibrated method); cam; "
                   "gradcam; ddt: the backbone descriptors' first principal component over the training images (whole objects, "
                   "the classifier's class); fewshot: an objectness map learned from the boxes of the --calibrate images "
                   "(calibrate with --method fewshot first; the best boxes on real photos); and through pytorch-grad-cam (pip install 'gapvision[cam]'): " + ", ".join(LIBRARY_METHODS))
    p.add_argument("--threshold", help="box extent: a fraction of each region's peak (50%%, default), otsu, or a "
                   "probability (fcn) / map value (cam, gradcam) such as 0.7")
    p.add_argument("--min-score", type=float, help="fcn: the probability a class region must reach (default 0.9); "
                   "cam/gradcam: the lowest class probability (default 0.2)")
    p.add_argument("--topk", type=int, default=5, help="at most K classes per image (default 5); fcn boxes only "
                   "classes the whole image ranks among its top K, at its own size or resized whole")
    p.add_argument("--background", choices=["blank", "none"], default="blank",
                   help="fcn: blank (default) measures evidence against a blank image, so plain background is no "
                   "class; none: plain softmax over the classes")
    p.add_argument("--smooth", type=int, default=1, metavar="K",
                   help="fcn: average the class maps over K x K cells first (odd K; helps noisy maps, e.g. SqueezeNet)")
    p.add_argument("--multilabel", action="store_true", help="sigmoid per class instead of a softmax over classes")
    p.add_argument("--min-area", type=int, help="ignore regions smaller than this many pixels of the network input "
                   "(default: one class-map cell)")
    p.add_argument("--nms-iou", type=float, default=0.5, help="per-class non-maximum suppression IoU (default 0.5)")
    p.add_argument("--max-side", type=int, help="shrink images whose longer side exceeds this many pixels")
    p.add_argument("--scale", type=float, help="resize factor before the network (match the training object size)")
    p.add_argument("--layer", help="gradcam and the library methods: the layer to explain (dotted module name; default the last feature map)")
    p.add_argument("--every", type=int, default=1, help="videos and camera: every N-th frame (default 1)")
    p.add_argument("--camera", type=int, metavar="N", help="stream webcam N (needs OpenCV)")
    p.add_argument("--frames", type=int, help="camera: stop after this many frames (default: until Ctrl-C)")
    p.add_argument("--evaluate", metavar="DATA", help="score localisation on images with boxes: builtin:shapes-scenes, "
                   "a Pascal VOC folder (annotations/*.xml) or a COCO .json; WSOL metrics beside the central-box and "
                   "full-image baselines (writes --out/evaluation.json)")
    p.add_argument("--calibrate", metavar="DATA", help="choose the map threshold, box rule and presence score on a few "
                   "annotated images of DATA (--split, default train) and save them in RUN_DIR/localize.json; later "
                   "localize/serve/export use them")
    p.add_argument("--split", help="with --evaluate/--calibrate: all, or train/val/test as the run split DATA "
                   "(its seeded --val-split); default: all for --evaluate, train for --calibrate")
    p.add_argument("--images", type=int, default=32, help="--calibrate: at most this many images (default 32)")
    p.add_argument("--calibration-images", action="store_true", help="--evaluate: score the image files the "
                   "calibration used too (by default they are left out: a held-out score)")
    p.add_argument("--fewshot-epochs", type=int, help="--calibrate --method fewshot: passes of fine-tuning the last "
                   "stage on the calibration boxes (default 4; 0: the linear objectness probe alone)")
    p.add_argument("--scales", help="multi-scale maps: factors of the training size, e.g. 1,1.5,2 (classes decided at "
                   "the training size, extent fused over the scales)")
    p.add_argument("--rule", choices=["all", "largest", "union"], help="multi-scale boxes: one per region (all), the "
                   "largest region, or one around all regions")
    p.add_argument("--refine", choices=["none", "grabcut"], help="box refinement: grabcut fits each map box to the "
                   "object's edges in the image (OpenCV's GrabCut seeded by the map; default: the run's calibration, "
                   "else grabcut)")
    p.add_argument("--no-calibration", action="store_true", help="ignore RUN_DIR/localize.json")
    p.add_argument("--no-render", action="store_true", help="write only the JSON files, no pictures")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--output", metavar="FILE.jsonl", help="write the --json records of still images to FILE in input "
                   "order (no pictures); under torchrun the processes share the images; a rerun skips those done")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    add_skip_bad_arg(p)
    add_pretrained_args(p)
    p.set_defaults(handler=cmd_localize)


def cmd_localize(a: argparse.Namespace) -> None:
    from ..data.images import unreadable_note
    from ..predict import open_predictor
    from .api import localize, stream_camera
    from .evaluate import calibrate, evaluate_localization
    from .multiscale import parse_scales

    if a.model:
        run_dir, images = None, list(a.paths)
    elif a.paths:
        run_dir, images = a.paths[0], list(a.paths[1:])
    else:
        raise GapvisionError("give a RUN_DIR (then images, --evaluate DATA or --camera N), or --model/--weights/--labels")
    run = open_predictor(run_dir, model=a.model, weights=a.weights, labels=a.labels, normalize=a.normalize,
                         img_size=a.img_size, head=a.head, crop=a.crop)
    options: dict[str, Any] = {
        "method": a.method, "threshold": a.threshold, "min_score": a.min_score, "topk": a.topk,
        "multilabel": a.multilabel, "background": a.background, "smooth": a.smooth, "min_area": a.min_area, "nms_iou": a.nms_iou,
        "max_side": a.max_side, "layer": a.layer, "device": a.device, "rule": a.rule, "refine": a.refine,
        "calibration": not a.no_calibration,
    }
    if a.scales:
        options["scales"] = parse_scales(a.scales)
    if a.evaluate and images:
        raise GapvisionError(f"--evaluate {a.evaluate} scores that data's annotated images; the images given as well "
                             f"({images[0]}{' ...' if len(images) > 1 else ''}) would be left out: localise them in "
                             "a command of their own")
    if a.calibrate:
        options.pop("calibration")
        e = calibrate(run, a.calibrate, split=a.split or "train", images=a.images, fewshot_epochs=a.fewshot_epochs,
                      **options)
        print(f"calibrated on {e['images']} images of {a.calibrate} ({e['split']}): threshold {e['threshold']:g}, "
              f"rule {e['rule']}, presence score {e['min_score']:g}, scales {','.join(f'{s:g}' for s in e['scales'])}"
              f" (single-box MaxBoxAcc {e['score']:.3f}); saved in {run.path}/localize.json")
        if a.method != "fewshot":
            print("tip: on photos of one kind of object, --method fewshot learns an objectness map from these same "
                  "boxes and boxes the objects best (README: localisation quality on real photos)")
        if not a.evaluate and not images:
            return  # else: the images given are localised next, with this calibration
    if a.evaluate:
        m = evaluate_localization(run, a.evaluate, a.out, split=a.split or "all", scale=a.scale,
                                  calibration_images=a.calibration_images, **options)
        print(format_evaluation(m))
        if m["calibration_left_out"]:
            n = m["calibration_left_out"]
            print(f"note: left out the {n} image{'s' * (n != 1)} the calibration used (its files, or exact copies of "
                  "them), for a held-out score (--calibration-images scores them too)")
        elif m["calibration_scored"]:
            print(f"note: {m['calibration_scored']} of the {m['images']} images scored were used by the calibration: "
                  "the figures are optimistic")
        elif a.calibrate and a.evaluate == a.calibrate:
            print(f"note: --evaluate scored images of {a.evaluate} that calibration may have seen (one --split for "
                  "both): for a held-out score run `--calibrate DATA --split train`, then `--evaluate DATA --split val`")
        if a.out:
            print(f"written to {a.out}/evaluation.json")
        return
    if a.camera is not None:
        for d in stream_camera(run, a.camera, a.out, frames=a.frames, every=a.every, scale=a.scale, **options):
            print(json.dumps(d) if a.json else _line(d), flush=True)
        return
    if not images:
        raise GapvisionError("localize needs images, folders or videos (or --evaluate DATA, or --camera N)")
    if a.output:  # shared across torchrun processes, merged in input order, resumable
        from ..distributed import current, localize_to_jsonl

        if a.out:
            raise GapvisionError("--output writes only the JSON records: drop --out (pictures are not sharded)")
        res = localize_to_jsonl(run, images, a.output, scale=a.scale, skip_bad=bool(a.skip_bad), **options)
        if current().is_main:
            print(res.summary())
            note = unreadable_note(res.records()) if a.skip_bad else None
            if note:
                print(note, file=sys.stderr)
        return
    results = localize(run, images, a.out, render=not a.no_render, every=a.every, scale=a.scale,
                       skip_bad=bool(a.skip_bad), **options)
    for d in results:
        if a.json or "error" not in d:
            print(json.dumps(d, ensure_ascii=False) if a.json else _line(d))
    if a.out and not a.json:
        print(f"{sum('error' not in d for d in results)} result(s) written to {a.out}")
    note = unreadable_note(results)
    if note:
        print(note, file=sys.stderr)


def format_evaluation(m: dict) -> str:
    """The metrics of :func:`~.evaluate.evaluate_localization` beside the baselines, as a few lines of text."""
    c, f = m["baseline_center"], m["baseline_full"]
    op = m["operating_point"]
    rows = [(name, m[key], c[key], f[key]) for name, key in
            (("top-1 loc", "top1_loc"), ("GT-known loc", "gt_known_loc"), ("MaxBoxAccV2", "maxboxacc_v2"))]
    lines = [f"{m['images']} images of {m['data']} ({m['split']}; {m['method']}, threshold {op['threshold']:g}, rule "
             f"{op['rule']}, scales {','.join(f'{s:g}' for s in m['scales'])}"
             f"{', calibrated' if m['calibrated'] else ''}):",
             f"  {'':14s} {'maps':>6s} {'centre 80%':>10s} {'full image':>10s}"]
    lines += [f"  {name:14s} {v:6.3f} {cv:10.3f} {fv:10.3f}" for name, v, cv, fv in rows]
    lines.append(f"  boxes: presence precision {m['presence_precision']:.3f} recall {m['presence_recall']:.3f} F1 "
                 f"{m['presence_f1']:.3f} | mean IoU {m['mean_iou']:.3f} AP@0.5 {m['ap50']:.3f}")
    return "\n".join(lines)


def _line(d: dict) -> str:
    name = d["image"] if len(d["image"]) <= 50 else "..." + d["image"][-47:]
    boxes = "; ".join(f"{x['label']} {x['score']:.2f} [{', '.join(f'{v:.0f}' for v in x['box'])}]"
                      for x in d["detections"])
    return f"{name}  {boxes or '(nothing above the threshold)'}"

