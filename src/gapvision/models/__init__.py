"""Backbones, heads and the Classifier that joins them."""
from .backbones import Backbone, create_backbone, list_backbones
from .classifier import Classifier, ModelConfig, create_model, model_info
from .heads import HEADS, Head, create_head

__all__ = [
    "Backbone", "create_backbone", "list_backbones", "Classifier", "ModelConfig", "create_model", "model_info",
    "HEADS", "Head", "create_head",
]

from .summary import summarize, summary_stats  # noqa: E402
from .timm_backbone import list_timm  # noqa: E402  (importing it registers the timm: prefix)
from .weights import load_weights, read_state_dict  # noqa: E402

__all__ += ["summarize", "summary_stats", "list_timm", "load_weights", "read_state_dict"]
