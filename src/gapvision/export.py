"""``export(run, format=...)``: a trained model as ONNX or TorchScript, checked against eager PyTorch.

The exported network takes ``image``, a float32 N x C x H x W batch already preprocessed as in training (mode, resize,
``(x / 255 - mean) / std``; the file's metadata says exactly how) and returns ``logits`` (N x K) or, with
``fcn=True``, ``class_maps`` (N x K x h x w logit maps of :func:`gapvision.localize.to_fcn`). The batch is always
dynamic; height and width are dynamic too for global-pooling heads (gap, gmp, avgmax, catavgmax, conv) and for every
FCN export, and fixed to the training size for ``fc`` heads.

ONNX files carry the class names and preprocessing in ``metadata_props`` (read them back with :func:`read_metadata`),
TorchScript files in the extra file ``gapvision.json``. After writing, :func:`check_parity` runs the file (onnxruntime
or ``torch.jit.load``) on random and real images and compares with eager PyTorch (max abs difference <= 1e-4).

ONNX uses torch's ``torch.export``-based exporter (needs ``onnxscript``, part of ``pip install gapvision[export]``);
``exporter="legacy"`` selects the older TorchScript-based one.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import __version__, atomic
from .data.images import SKIP_BAD_HINT
from .data.transforms import Preprocess, normalize, to_uint8
from .errors import ConfigError, DataError, GapvisionError
from .predictor import Predictor
from .runs import Run, load_run, to_pil

FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
EXPORTERS = ("auto", "dynamo", "legacy")
TS_METADATA = "gapvision.json"
#: localize methods whose maps the FCN export's class maps are (their calibration goes into its metadata)
FCN_MAP_METHODS = ("fcn", "cam")
PARITY_ATOL = 1e-4
OPSET = 17  # the legacy exporter's opset; the dynamo exporter picks its own (currently 20)


def export(run: Run | str | Path, format: str = "onnx", fcn: bool = False, out: str | Path | None = None, *,
           check: bool = True, images: Sequence[Any] | None = None, exporter: str = "auto") -> Path:
    """Write ``run``'s model as ONNX or TorchScript (default ``RUN_DIR/model.onnx`` / ``model.ts``, with ``fcn``
    ``model_fcn.onnx`` / ``model_fcn.ts``) and return the path.

    ``check`` runs :func:`check_parity` on random inputs and ``images`` (default: a few of the run's validation
    images; decoded before anything is written) and raises GapvisionError when the file disagrees with PyTorch.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown --format {format!r}: choose {', '.join(FORMATS)}")
    run = run if isinstance(run, Run) else load_run(run)
    path = Path(out) if out else default_path(run, format, fcn)
    check_suffix(path, format)
    if check:
        images = sample_images(run) if images is None else check_images(images)
    net = exported_module(run, fcn)
    meta = metadata(run, net, fcn)
    if format == "onnx":
        _export_onnx(net, run.preprocess, meta, path, resolve_exporter(exporter))
    else:
        _export_torchscript(net, run.preprocess, meta, path)
    if check:
        check_parity(path, run, fcn=fcn, images=images)
    return path


def default_path(run: Run, format: str, fcn: bool) -> Path:
    if run.path is None:
        raise ConfigError("this model has no run directory: give --out FILE")
    return run.path / f"model{'_fcn' if fcn else ''}{FORMATS[format]}"


def exported_module(run: Run, fcn: bool) -> nn.Module:
    """The eager module that gets exported: a CPU copy (eval mode, contiguous) of the Classifier or of its
    fully-convolutional form; the run's own model stays where its Predictor put it."""
    if fcn:
        from .localize import to_fcn

        net = to_fcn(run.model)
    else:
        net = copy.deepcopy(run.model)
    return net.to("cpu", memory_format=torch.contiguous_format).eval()


def check_suffix(path: Path, format: str) -> None:
    """Raise ConfigError when ``path`` ends in the other format's suffix (``.onnx`` for TorchScript, ``.ts`` for
    ONNX); other names (none, ``.pt``...) are taken as given."""
    named = {suffix: name for name, suffix in FORMATS.items()}.get(path.suffix.lower(), format)
    if named != format:
        raise ConfigError(f"--out {path} ends in {path.suffix}, the {named} suffix, but --format {format} writes "
                          f"{format}: name it {path.with_suffix(FORMATS[format]).name} or pass --format {named}")


def file_format(path: Path) -> str:
    """The format of an exported file by its content, whatever its name: TorchScript files are zip archives."""
    return "torchscript" if zipfile.is_zipfile(path) else "onnx"


def check_images(images: Sequence[Any]) -> list[Any]:
    """The parity check's real images decoded (paths through the project's decoder), or a one-line DataError that
    names the file that does not decode and says to leave it out of ``--check-images``."""
    decoded = []
    for im in images:
        try:
            decoded.append(to_pil(im))
        except DataError as e:
            raise DataError(str(e).replace(SKIP_BAD_HINT, "fix it or remove it from --check-images")) from None
    return decoded


def dynamic_size(run: Run, fcn: bool) -> bool:
    """Whether height and width may vary: global-pooling heads and FCN maps, not the fc head's flattened map."""
    return fcn or run.model_config.head != "fc"


def metadata(run: Run, net: nn.Module, fcn: bool) -> dict[str, str]:
    """String key/value pairs stored in the file: class names, preprocessing, model, output description."""
    pre = run.preprocess
    mean, std = list(pre.mean), list(pre.std)
    meta = {
        "producer": f"gapvision {__version__}",
        "classes": json.dumps(run.classes, ensure_ascii=False),
        "preprocess": json.dumps(pre.to_dict()),
        "preprocess_steps": (
            f"{'grayscale' if pre.channels == 1 else ('BGR' if pre.bgr else 'RGB')}; "
            + (f"central crop {pre.crop:g} of each side; " if pre.crop < 1 else "")
            + f"resize to {pre.img_size}x{pre.img_size}"
            + (" (or any size: height/width are dynamic)" if dynamic_size(run, fcn) else "")
            + f"; float32 in [0, 1] (pixel / 255); subtract mean {mean}; divide by std {std}; layout NCHW"
        ),
        "model": json.dumps(run.model_config.to_dict()),
        "input": "image",
        "output": "class_maps" if fcn else "logits",
        "dynamic_axes": "batch,height,width" if dynamic_size(run, fcn) else "batch",
    }
    if fcn:
        meta["stride"] = str(getattr(net, "stride", ""))
        meta["reduction"] = str(getattr(net, "reduction", ""))
        meta["output_description"] = ("N x K x h x w logit maps (softmax over K gives per-location class "
                                      "probabilities); image logits = spatial mean for gap/avgmax/catavgmax/conv heads")
        from .localize.calibrate import read_calibration

        saved = read_calibration(run)
        # the operating points chosen by `gapvision localize RUN --calibrate DATA` for the methods whose maps are
        # these class maps (fcn: their softmax, cam: the logit maps); gradcam, ddt, fewshot... need the network.
        # Not the calibration images' paths: they say nothing to a user of the file, and something of this machine
        usable = {k: {f: x for f, x in v.items() if f != "files"} for k, v in (saved or {}).get("methods", {}).items()
                  if k in FCN_MAP_METHODS}
        if usable:
            method = saved["method"] if saved["method"] in usable else next(iter(usable))  # type: ignore[index]
            meta["localize"] = json.dumps({**saved, "method": method, "methods": usable})
    else:
        meta["output_description"] = "N x K logits (softmax over K gives class probabilities)"
    return meta


def resolve_exporter(exporter: str) -> str:
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {exporter!r}: choose {', '.join(EXPORTERS)}")
    if exporter == "auto":
        return "dynamo" if importlib.util.find_spec("onnxscript") else "legacy"
    if exporter == "dynamo" and not importlib.util.find_spec("onnxscript"):
        raise ConfigError("the torch.export-based ONNX exporter needs onnxscript: pip install 'gapvision[export]'")
    return exporter


def _need(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the {module} package: pip install 'gapvision[export]'") from None


def _example(pre: Preprocess) -> torch.Tensor:
    return torch.randn(2, pre.channels, pre.img_size, pre.img_size)


def _export_onnx(net: nn.Module, pre: Preprocess, meta: dict[str, str], path: Path, exporter: str) -> None:
    onnx = _need("onnx", "ONNX export")
    output = meta["output"]
    dynamic_hw = "height" in meta["dynamic_axes"]
    captured = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                dim = torch.export.Dim
                shapes = {0: dim("batch")}
                if dynamic_hw:
                    shapes.update({2: dim("height"), 3: dim("width")})
                program = torch.onnx.export(net, (_example(pre),), dynamo=True, input_names=["image"],
                                            output_names=[output], dynamic_shapes=(shapes,), verbose=False)
                proto = program.model_proto
            else:
                axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
                out_axes = {0: "batch", 2: "map_height", 3: "map_width"} if output == "class_maps" else {0: "batch"}
                buf = io.BytesIO()
                torch.onnx.export(net, (_example(pre),), buf, dynamo=False, input_names=["image"],
                                  output_names=[output], dynamic_axes={"image": axes, output: out_axes},
                                  opset_version=OPSET)
                proto = onnx.load_from_string(buf.getvalue())
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - exporter failures are many kinds; report one line plus the way out
        other = "legacy" if exporter == "dynamo" else "dynamo"
        raise GapvisionError(f"ONNX export ({exporter} exporter) failed: {str(e).splitlines()[0] if str(e) else e!r}; "
                             f"try --exporter {other}") from e
    meta = {**meta, "exporter": exporter}
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"gapvision {meta['output']} model; metadata_props hold classes and preprocess"
    atomic.write_bytes(path, proto.SerializeToString())


def _export_torchscript(net: nn.Module, pre: Preprocess, meta: dict[str, str], path: Path) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated upstream but still the TorchScript format's writer
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(net, _example(pre), check_trace=False)
        extra = {TS_METADATA: json.dumps(meta, ensure_ascii=False)}
        atomic.write_with(path, lambda p: torch.jit.save(traced, str(p), _extra_files=extra))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported file (ONNX or TorchScript); JSON values (classes, preprocess, model) decoded."""
    path = Path(path)
    if not path.is_file():
        raise GapvisionError(f"{path}: no such file")
    if file_format(path) == "onnx":
        onnx = _need("onnx", "reading ONNX metadata")
        raw = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    else:
        extra = {TS_METADATA: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        raw = json.loads(extra[TS_METADATA] or "{}")
    out: dict[str, Any] = dict(raw)
    for key in ("classes", "preprocess", "model", "localize"):
        if key in out:
            out[key] = json.loads(out[key])
    return out


# -- parity ------------------------------------------------------------------------------------------------------
class _Runner:
    """Runs an exported file on a float32 batch: onnxruntime for ONNX, torch.jit for TorchScript (by content)."""

    def __init__(self, path: Path):
        self.path = path
        if file_format(path) == "onnx":
            ort = _need("onnxruntime", "the ONNX parity check")
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self.module = None
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        if self.module is None:
            return self.session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            return self.module(x).numpy()


def parity_inputs(run: Run, fcn: bool, images: Sequence[Any] = (),
                  max_side: int = 256) -> list[tuple[str, torch.Tensor]]:
    """Named input batches for the parity check: random batches (at other sizes too when the size is dynamic) and
    the real ``images`` resized to the training size and, when the size is dynamic, at (up to ``max_side``) native
    size."""
    pre = run.preprocess
    s, c = pre.img_size, pre.channels
    gen = torch.Generator().manual_seed(0)
    batches = [("random 1 image", torch.randn(1, c, s, s, generator=gen)),
               ("random batch of 3", torch.randn(3, c, s, s, generator=gen))]
    dynamic = dynamic_size(run, fcn)
    if dynamic:
        h, w = s + s // 2, s + s // 4
        batches.append((f"random batch of 2 at {w}x{h}", torch.randn(2, c, h, w, generator=gen)))
    pils = [to_pil(im) for im in images]
    if pils:
        x = torch.stack([normalize(to_uint8(im, pre), pre) for im in pils])
        batches.append((f"{len(pils)} real images at {s}x{s}", x))
    if dynamic:
        smallest = s if fcn and run.model_config.head == "fc" else 8
        for n, im in enumerate(pils):
            t = to_uint8(im, pre, resize=False)
            scale = min(1.0, max_side / max(t.shape[-2:]))
            if scale < 1:
                t = torch.nn.functional.interpolate(t[None].float(), scale_factor=scale, mode="bilinear",
                                                    antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
            if min(t.shape[-2:]) >= smallest:
                batches.append((f"real image {n} at {t.shape[-1]}x{t.shape[-2]}", normalize(t, pre)[None]))
    return batches


def check_parity(path: str | Path, run: Run | str | Path, fcn: bool = False, images: Sequence[Any] | None = None,
                 atol: float = PARITY_ATOL) -> dict:
    """Run the exported file and eager PyTorch on the same inputs (see :func:`parity_inputs`); return
    ``{"max_abs_diff", "atol", "checks": [{"input", "shape", "max_abs_diff"}...], "real_images"}`` or raise
    GapvisionError when any difference exceeds ``atol``. ``images`` default: a few of the run's validation images
    (none when the run's data cannot be loaded here)."""
    run = run if isinstance(run, Run) else load_run(run)
    images = sample_images(run) if images is None else check_images(images)
    reference = Predictor(exported_module(run, fcn), run.preprocess, device="cpu")  # eager fp32, no TTA: the graph
    runner = _Runner(Path(path))
    checks = []
    for name, x in parity_inputs(run, fcn, images):
        ref = reference.forward(x).numpy()
        got = runner(x)
        if got.shape != ref.shape:
            raise GapvisionError(f"{path}: output shape {list(got.shape)} differs from PyTorch's {list(ref.shape)} "
                                 f"on {name}")
        checks.append({"input": name, "shape": list(x.shape), "max_abs_diff": float(np.abs(got - ref).max())})
    worst = max(c["max_abs_diff"] for c in checks)
    result = {"max_abs_diff": worst, "atol": atol, "checks": checks, "real_images": len(images)}
    if not worst <= atol:
        bad = max(checks, key=lambda c: c["max_abs_diff"])
        raise GapvisionError(f"{path} disagrees with PyTorch: max abs difference {worst:.3g} > {atol:g} on "
                             f"{bad['input']}; the export is not faithful (try the other --exporter)")
    return result


def sample_images(run: Run, n: int = 4) -> list[Any]:
    """Up to ``n`` validation images of the run (PIL), or [] when the run's data is not available here."""
    from .report import load_validation

    try:
        val = load_validation(run)
    except GapvisionError:
        return []
    step = max(1, len(val) // n)
    return [val.load(i) for i in range(0, len(val), step)][:n]
