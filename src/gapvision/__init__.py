"""gapvision: from a folder of images to a trained, explained CNN classifier with a selectable head.

The Python API mirrors the CLI::

    import gapvision as gv
    splits = gv.load_data("builtin:shapes")
    net = gv.create_model("resnet20", head="gap", num_classes=10)
    run = gv.train("path/to/images", model="cifarcnn", head="gap", epochs=5)
    run = gv.load_run("runs/...")
    run.predict(["photo.jpg"])
"""
__version__ = "0.1.0"

from .data import inspect_data, load_arrays, load_data, load_images  # noqa: E402
from .errors import ConfigError, DataError, GapvisionError  # noqa: E402
from .models import create_model  # noqa: E402
from .models.summary import summarize  # noqa: E402
from .runs import Run, load_run  # noqa: E402
from .train.pipeline import evaluate, resume, train  # noqa: E402
from .compare import compare  # noqa: E402  (the function; gapvision.compare.* modules stay importable)
from .export import export  # noqa: E402
from .localize import localize, to_fcn  # noqa: E402
from .localize import calibrate as calibrate_localization, evaluate_localization  # noqa: E402
from .report import report  # noqa: E402

__all__ = [
    "ConfigError", "DataError", "GapvisionError", "Run", "calibrate_localization", "compare", "create_model",
    "evaluate", "evaluate_localization", "export",
    "inspect_data", "load_arrays", "load_data", "load_images", "load_run", "localize", "report", "resume", "summarize",
    "to_fcn", "train", "__version__",
]
