"""Sub-commands that take a trained model to where people work: ``export`` (ONNX/TorchScript), ``serve`` (a web
page and JSON API) and ``report`` (one self-contained HTML file); listed in ``gapvision.cli.COMMAND_MODULES``."""
from __future__ import annotations

import argparse
from typing import Any

from .options import add_pretrained_args


def cmd_export(a: argparse.Namespace) -> None:
    from .export import check_images, check_parity, export
    from .runs import list_images

    images = check_images(list_images(a.check_images)) if a.check_images and not a.no_check else None
    path = export(a.run, a.format, fcn=a.fcn, out=a.out, check=False, exporter=a.exporter)
    print(f"wrote {path}")
    if a.no_check:
        return
    res = check_parity(path, a.run, fcn=a.fcn, images=images)
    real = f"{res['real_images']} real images" if res["real_images"] else "no real images (the run's data is not here)"
    print(f"parity with PyTorch: max abs difference {res['max_abs_diff']:.2g} <= {res['atol']:g} over "
          f"{len(res['checks'])} input batches (random, {real})")


def cmd_serve(a: argparse.Namespace) -> None:
    from .predict import open_predictor
    from .serve import serve

    run = open_predictor(a.run, model=a.model, weights=a.weights, labels=a.labels, normalize=a.normalize,
                         img_size=a.img_size, head=a.head, crop=a.crop)
    options: dict[str, Any] = {k: v for k, v in (("method", a.method), ("threshold", a.threshold),
                                                 ("min_score", a.min_score), ("max_side", a.max_side)) if v is not None}
    serve(run, a.host, a.port, topk=a.topk, max_upload_mb=a.max_upload_mb, localize_options=options)


def cmd_report(a: argparse.Namespace) -> None:
    from .report import report

    print(f"wrote {report(a.path, a.out)}")


def register(sub: Any) -> None:
    e = sub.add_parser("export", help="write the model as ONNX or TorchScript and check it against PyTorch")
    e.add_argument("run", metavar="RUN_DIR")
    e.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    e.add_argument("--fcn", action="store_true", help="export the fully-convolutional model (class maps at any size)")
    e.add_argument("--out", help="output file (default RUN_DIR/model.onnx or model.ts; model_fcn.* with --fcn)")
    e.add_argument("--exporter", choices=["auto", "dynamo", "legacy"], default="auto",
                   help="ONNX exporter: torch.export-based (dynamo, needs onnxscript; auto picks it when installed) "
                        "or the older TorchScript-based one (legacy)")
    e.add_argument("--check-images", nargs="+", metavar="IMAGE_OR_DIR",
                   help="real images for the parity check (default: a few of the run's validation images)")
    e.add_argument("--no-check", action="store_true", help="skip the parity check")
    e.set_defaults(handler=cmd_export)

    s = sub.add_parser("serve", help="a web page and JSON API (/predict, /localize, /health) to try the model")
    s.add_argument("run", metavar="RUN_DIR", nargs="?", help="a run directory (or use --model/--weights/--labels)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    s.add_argument("--max-upload-mb", type=float, default=10, help="largest accepted upload (default 10 MB)")
    g = s.add_argument_group("class maps (as in gapvision localize)")
    g.add_argument("--method", choices=["fcn", "cam", "gradcam"])
    g.add_argument("--threshold", help="0.5 (probability), 50%% (of each map's max) or otsu")
    g.add_argument("--min-score", type=float)
    g.add_argument("--max-side", type=int, default=1024, help="shrink larger images to this side first (default 1024)")
    add_pretrained_args(s)
    s.set_defaults(handler=cmd_serve)

    r = sub.add_parser("report", help="one self-contained HTML report of a run or a compare directory")
    r.add_argument("path", metavar="RUN_DIR|COMPARE_DIR")
    r.add_argument("--out", help="output file (default PATH/report.html)")
    r.set_defaults(handler=cmd_report)
