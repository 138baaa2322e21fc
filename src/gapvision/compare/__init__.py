"""Compare heads on one backbone: ``gapvision.compare.compare(data, model, heads=..., seeds=..., out=...)``.

See api.py (the comparison), features.py (the frozen-backbone fast path) and summary.py (table, curves, verdict).
Names are imported on first use (``gapvision compare --help`` does not load torch).
"""
from .._lazy import lazy_package

lazy_package(__name__, {"CompareResult": ".api", "compare": ".api"})

__all__ = ["CompareResult", "compare"]
