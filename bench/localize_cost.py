"""Cost of exact class maps for all classes vs one classification forward pass, at 1024 x 768.

    python bench/localize_cost.py                                   # mobilenet_v2 (1000 classes), random weights
    python bench/localize_cost.py --model fastnet_s --classes 4     # the demo-sized model
    python bench/localize_cost.py --run runs/demo --threads 2

Three timings on the same input, interleaved per repeat so that load from other processes hits all alike:
  * forward   -- ``model(x)``: backbone + global pooling + classifier, the classification pass at that size;
  * maps      -- ``class_maps(fcn, x)``: the K logit maps, the background reference subtracted and per-location
                 probabilities for every class (what ``gapvision localize --method fcn`` computes per image);
  * localize  -- the whole per-image pipeline after decoding: class maps, candidate selection, upsampling of the
                 candidates, regions, boxes and NMS.
  * multiscale -- ``Localizer(run, scales=(1, 1.5, 2))`` on the 1024 x 768 picture: the class decision at the
                 training size, the maps at 1, 1.5 and 2 times it fused, boxes (what a calibrated run does by default).
  * default   -- ``Localizer(run)`` on the picture: the run's calibrated settings when it has a localize.json,
                 else the native-resolution fcn pipeline (with its resizing and decoding-free input), boxes refined
                 by GrabCut (the default ``--refine``): give ``--weights`` and ``--image`` so that there are real
                 objects to refine.
It prints the median of each and the ratios to ``forward`` (targets: maps/forward <= 1.5, default and multiscale
<= 3). Latency does not depend on the weights' values, so no download or training is needed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

from gapvision.data.transforms import Preprocess, normalize
from gapvision.localize import Localizer, class_maps
from gapvision.localize.multiscale import DEFAULT_SCALES
from gapvision.models import create_model
from gapvision.runs import Run, load_run


def build_run(a: argparse.Namespace) -> Run:
    if a.run:
        return load_run(a.run)
    if a.weights:
        from gapvision.predict import open_predictor

        return open_predictor(None, model=a.model, weights=a.weights, labels=a.labels, normalize=a.normalize)
    net = create_model(a.model, "gap", a.classes, img_size=a.img_size).eval()
    pre = Preprocess(channels=3, img_size=a.img_size)
    config = {"classes": [f"c{i}" for i in range(a.classes)], "preprocess": pre.to_dict(), "model": net.config.to_dict()}
    return Run(None, config, model=net)


def timed(fn) -> float:  # noqa: ANN001
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a run directory (default: --model with random weights)")
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--img-size", type=int, default=224, help="training size of --model (for the blank reference)")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--weights", help="pretrained weights for --model (with --labels, --normalize), so that the "
                   "maps find real objects and the boxes are refined as they would be")
    p.add_argument("--labels", help="class names for --weights")
    p.add_argument("--normalize", help="the normalisation of --weights (e.g. half)")
    p.add_argument("--image", help="a photo, resized to --width x --height (default: random pixels)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    run = build_run(a)
    loc = Localizer(run, method="fcn")
    net = run.model.to(loc.device).eval()
    x = torch.randn(1, run.preprocess.channels, a.height, a.width, device=loc.device)
    if a.image:
        picture = Image.open(a.image).convert("RGB" if run.preprocess.channels == 3 else "L").resize((a.width, a.height))
        image = loc.prepare(picture)[0]
        x = normalize(image[None].to(loc.device), run.preprocess)
    else:
        image = (torch.rand(run.preprocess.channels, a.height, a.width) * 255).to(torch.uint8)
        picture = Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy())
    multi = Localizer(run, method="cam", scales=DEFAULT_SCALES, calibration=False)
    default = Localizer(run)

    def forward() -> None:
        with torch.inference_mode():
            net(x)

    def maps() -> None:
        class_maps(loc.fcn, x, reference=loc.reference)  # type: ignore[arg-type]

    def pipeline() -> None:
        with torch.inference_mode():
            loc._run_batch([(image, (a.width, a.height), "bench")])

    def multiscale() -> None:
        multi([picture])

    def calibrated_default() -> None:
        default([picture])

    runs = {"forward": forward, "maps": maps, "localize": pipeline, "multiscale": multiscale,
            "default": calibrated_default}
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.repeats):
        for k, fn in runs.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    name = run.path or (f"{a.model} ({a.weights}) on {a.image or 'random pixels'}" if a.weights
                        else f"{a.model} ({a.classes} classes, random weights)")
    print(f"{name} at {a.width}x{a.height} on {loc.device}, {torch.get_num_threads()} threads, "
          f"median of {a.repeats}:")
    for k, v in med.items():
        print(f"  {k:<9} {v * 1000:8.1f} ms   {v / med['forward']:.2f}x forward")
    found = default([picture])[0]
    print(f"default localize: {len(found.detections)} box(es), refine {default.refine}, "
          f"{', '.join(c['label'] for c in found.classes[:3])}")
    print(f"class maps / forward = {med['maps'] / med['forward']:.2f} (target <= 1.5); default localize / forward = "
          f"{med['default'] / med['forward']:.2f}, multi-scale {med['multiscale'] / med['forward']:.2f} (target <= 3)"
          + (" [calibrated]" if default.calibration else " [not calibrated]"))


if __name__ == "__main__":
    main()
