"""gapvision: from a folder of images to a trained, explained CNN classifier with a selectable head."""
__version__ = "0.1.0"
