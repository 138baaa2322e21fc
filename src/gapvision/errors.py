"""User-facing errors: one line that names the file, row or option and says what to do (CLI exit code 2)."""
from __future__ import annotations


class GapvisionError(Exception):
    """A mistake in the user's input or setup. The CLI prints ``error: <message>`` and exits with code 2."""


class DataError(GapvisionError):
    """Bad data: an unreadable image, a malformed manifest, a split that cannot be made."""


class ConfigError(GapvisionError):
    """An unknown or inconsistent option (model, head, size, weights...)."""


class Interrupted(GapvisionError):
    """The user stopped a command (Ctrl-C) after its work was saved; the CLI prints the message and exits with 130."""
