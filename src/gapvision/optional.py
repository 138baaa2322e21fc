"""Optional dependencies: import them on first use, or stop with one line naming the extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import GapvisionError

#: import name -> (pip distribution, gapvision extra that installs it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "timm": ("timm", "timm"),
    "pytorch_grad_cam": ("grad-cam", "cam"),
}


def require(module: str, feature: str) -> ModuleType:
    """``import module`` or raise GapvisionError("<feature> needs <dist>: pip install 'gapvision[<extra>]'")."""
    dist, extra = OPTIONAL[module]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise GapvisionError(f"{feature} needs the {dist} package, which is not installed: "
                             f"pip install 'gapvision[{extra}]'") from None
