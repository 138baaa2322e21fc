"""Data: sources -> ImageSet/DataSplits, image decoding, preprocessing presets, built-in procedural data."""
from .builtin import SHAPE_CLASSES, load_digits, make_scenes, make_shapes
from .images import IMAGE_EXTENSIONS, is_grayscale, open_image
from .imageset import DataSplits, ImageSet
from .inspect import format_inspection, inspect_data
from .sources import load_arrays, load_data, load_images, load_scenes, register_source, resolve_preprocess
from .transforms import Preprocess

__all__ = [
    "DataSplits",
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "Preprocess",
    "SHAPE_CLASSES",
    "format_inspection",
    "inspect_data",
    "is_grayscale",
    "load_arrays",
    "load_data",
    "load_digits",
    "load_images",
    "load_scenes",
    "make_scenes",
    "make_shapes",
    "open_image",
    "register_source",
    "resolve_preprocess",
]
