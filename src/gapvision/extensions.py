"""Imports the modules that add sub-commands to the CLI (each appends to ``cli.EXTENSIONS`` on import)."""
import importlib

for _name in ("share", "compare.cli", "localize.cli"):  # filled in as commands are added, e.g. "compare", "localize.cli"
    importlib.import_module(f"gapvision.{_name}")
