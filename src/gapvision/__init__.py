"""gapvision: from a folder of images to a trained, explained CNN classifier with a selectable head.

The Python API mirrors the CLI::

    import gapvision as gv
    splits = gv.load_data("builtin:shapes")
    net = gv.create_model("resnet20", head="gap", num_classes=10)
    run = gv.train("path/to/images", model="cifarcnn", head="gap", epochs=5)
    run = gv.load_run("runs/...")
    run.predict(["photo.jpg"])

The names below are imported on first use: ``import gapvision`` itself does not load torch.
"""
__version__ = "0.1.0"

from ._lazy import lazy_package
from .errors import ConfigError, DataError, GapvisionError

lazy_package(__name__, {
    "inspect_data": ".data", "load_arrays": ".data", "load_data": ".data", "load_images": ".data",
    "create_model": ".models", "summarize": ".models.summary",
    "Run": ".runs", "load_run": ".runs", "Predictor": ".predictor",
    "evaluate": ".train.pipeline", "resume": ".train.pipeline", "train": ".train.pipeline",
    "lr_find": ".train.pipeline",
    "compare": ".compare", "export": ".export", "localize": ".localize", "to_fcn": ".localize", "report": ".report",
    "evaluate_localization": ".localize", "calibrate_localization": ".localize",
})

__all__ = [
    "ConfigError", "DataError", "GapvisionError", "Predictor", "Run", "calibrate_localization", "compare",
    "create_model", "evaluate", "evaluate_localization", "export",
    "inspect_data", "load_arrays", "load_data", "load_images", "load_run", "localize", "lr_find", "report", "resume",
    "summarize",
    "to_fcn", "train", "__version__",
]
