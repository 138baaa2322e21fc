"""``python -m gapvision`` (also what ``torchrun -m gapvision`` runs)."""
import sys

from .cli import main

sys.exit(main())
