"""Packages whose public names are imported on first use (PEP 562), so that ``import gapvision`` and
``gapvision --help`` do not load torch.

``lazy_package(__name__, {"name": ".submodule", ...})`` turns the calling package into a :class:`LazyPackage`.
Some exports share their name with a submodule (``gapvision.compare`` the function and ``gapvision/compare/`` the
package; ``gapvision.localize.cam``): importing that submodule must not replace the export, as it would on a plain
module, so the export keeps the name; the submodule stays importable (``from gapvision.compare.api import ...``).
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class LazyPackage(types.ModuleType):
    """A package module with lazily imported exports (see the module docstring)."""

    _lazy_exports: dict[str, str]

    def __getattr__(self, name: str) -> Any:
        exports = self.__dict__.get("_lazy_exports", {})
        if name not in exports:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], self.__name__), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if (name in self.__dict__.get("_lazy_exports", {}) and isinstance(value, types.ModuleType)
                and value.__name__ == f"{self.__name__}.{name}"):
            return  # the import system binding submodule `name`: keep the export of that name
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(self.__dict__.get("_lazy_exports", {})))


def lazy_package(name: str, exports: dict[str, str]) -> None:
    """Make package ``name`` (call with ``__name__``) resolve ``exports`` (attribute -> relative module) lazily."""
    module = sys.modules[name]
    module.__class__ = LazyPackage
    module.__dict__["_lazy_exports"] = dict(exports)
