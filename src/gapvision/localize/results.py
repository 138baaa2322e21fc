"""What :func:`gapvision.localize.localize` returns: a list of JSON-ready dicts that, in a notebook, shows its first
images with their boxes (the display itself is display.py's)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from PIL import Image

if TYPE_CHECKING:
    from .api import Localization

#: most localisation results kept with their images for display (a big folder must not pile up in memory)
DISPLAY_LIMIT = 12


class LocalizeResults(list):
    """The list of JSON-ready dicts, which in a notebook displays the first :data:`DISPLAY_LIMIT` images with their
    boxes and the top class's heat map."""

    def __init__(self, items: Sequence[dict] = ()):
        super().__init__(items)
        self.shown: list[tuple[Image.Image, "Localization"]] = []

    def keep(self, image: Image.Image, loc: "Localization") -> None:
        """Remember ``image`` and its result for display (up to DISPLAY_LIMIT)."""
        if len(self.shown) < DISPLAY_LIMIT:
            self.shown.append((image, loc))

    def _repr_html_(self) -> str:
        from ..display import localize_html

        return localize_html(self)
