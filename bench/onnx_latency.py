"""onnxruntime vs eager PyTorch latency for one image and for a batch, measured side by side (interleaved).

    python bench/onnx_latency.py                                  # fastnet_s + gap, 64 px, untrained weights
    python bench/onnx_latency.py --run runs/demo --batch 64       # a trained run
    python bench/onnx_latency.py --model resnet20 --img-size 32 --threads 2 --fcn

Both engines use the same number of CPU threads (``--threads``). Each repeat times PyTorch and onnxruntime one
after the other on the same input, so load from other processes hits both alike; the ratio of the medians is printed
(> 1: onnxruntime is faster). Latency does not depend on the weights, so no training is needed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gapvision.data.transforms import Preprocess
from gapvision.export import check_parity, export, exported_module
from gapvision.models import create_model
from gapvision.runs import Run, load_run


def build_run(a: argparse.Namespace) -> Run:
    if a.run:
        return load_run(a.run)
    net = create_model(a.model, a.head, a.classes, in_channels=3, img_size=a.img_size).eval()
    pre = Preprocess(channels=3, img_size=a.img_size)
    config = {"classes": [f"class{i}" for i in range(a.classes)], "preprocess": pre.to_dict(),
              "model": net.config.to_dict()}  # type: ignore[union-attr]
    return Run(None, config, model=net)


def timed(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a run directory (default: an untrained --model/--head)")
    p.add_argument("--model", default="fastnet_s")
    p.add_argument("--head", default="gap")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for both engines (default 1)")
    p.add_argument("--fcn", action="store_true", help="the class-map (FCN) model instead of the classifier")
    a = p.parse_args(argv)

    import onnxruntime as ort

    torch.set_num_threads(a.threads)
    run = build_run(a)
    net = exported_module(run, a.fcn)
    with tempfile.TemporaryDirectory() as tmp:
        path = export(run, "onnx", fcn=a.fcn, out=Path(tmp) / "model.onnx", check=False)
        parity = check_parity(path, run, fcn=a.fcn, images=[])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def eager(x: torch.Tensor) -> None:
        with torch.inference_mode():
            net(x)

    def onnx(x: torch.Tensor) -> None:
        session.run(None, {"image": x.numpy()})

    s = run.preprocess.img_size
    mc = run.model_config
    print(f"{mc.model} + {mc.head}{' (FCN)' if a.fcn else ''}, {s}x{s}, {a.threads} thread(s), torch "
          f"{torch.__version__}, onnxruntime {ort.__version__}; parity max abs diff {parity['max_abs_diff']:.2g}")
    print(f"{'batch':>6} {'pytorch ms':>11} {'onnxrt ms':>10} {'ratio':>6}  (median of {a.repeats}; ratio = "
          "pytorch / onnxruntime)")
    for n in (1, a.batch):
        x = torch.randn(n, run.preprocess.channels, s, s)
        for _ in range(a.warmup):
            eager(x)
            onnx(x)
        pt, ox = [], []
        for _ in range(a.repeats):
            pt.append(timed(eager, x))
            ox.append(timed(onnx, x))
        mp, mo = statistics.median(pt), statistics.median(ox)
        print(f"{n:>6} {1000 * mp:>11.2f} {1000 * mo:>10.2f} {mp / mo:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
