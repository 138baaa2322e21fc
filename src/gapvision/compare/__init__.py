"""Compare heads on one backbone: ``gapvision.compare.compare(data, model, heads=..., seeds=..., out=...)``.

See api.py (the comparison), features.py (the frozen-backbone fast path) and summary.py (table, curves, verdict).
"""
from .api import CompareResult, compare

__all__ = ["CompareResult", "compare"]
