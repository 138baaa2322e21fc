"""Finding files: the one folder walker behind every door (training sources, predict, localize, export's
``--check-images``, sharded inference).

The rules, everywhere:

* a folder is searched recursively; symlinked folders are not entered (symlinked files are kept; a caller that
  asks for them gets the folders and files it passed over, to say so);
* hidden entries are skipped: any file or folder whose name starts with ``.`` (``.DS_Store``, ``._photo.jpg``
  resource forks, ``.git/``, ``.ipynb_checkpoints/``) and macOS archive folders named ``__MACOSX``;
* a file is kept when its extension, compared case-insensitively, is one of the given ``extensions``;
* the files found are sorted by their path string (``str``), so the order is the same on every machine;
* a path given explicitly (not found by walking) is kept as given, whatever its name, and a path that does not
  exist is a one-line error.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Collection, Iterable

from ..errors import GapvisionError

HIDDEN_FOLDERS = frozenset({"__MACOSX"})


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is skipped when walking (see the module docstring)."""
    return name.startswith(".") or name in HIDDEN_FOLDERS


def has_extension(name: str, extensions: Collection[str]) -> bool:
    """A visible name whose (lower-cased) extension is in ``extensions``."""
    return not is_hidden(name) and os.path.splitext(name)[1].lower() in extensions


def walk(root: str | os.PathLike, extensions: Collection[str], passed_over: list[str] | None = None) -> list[str]:
    """Files under ``root`` with one of ``extensions``, by the rules of the module docstring. ``passed_over``, when
    given, receives the visible files of other extensions and the symlinked folders (with a trailing ``/``)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        found.extend(os.path.join(dirpath, f) for f in filenames if has_extension(f, extensions))
        if passed_over is not None:
            passed_over.extend(os.path.join(dirpath, f) for f in filenames
                               if not is_hidden(f) and not has_extension(f, extensions))
            passed_over.extend(os.path.join(dirpath, d) + "/" for d in dirnames
                               if os.path.islink(os.path.join(dirpath, d)))
    if passed_over is not None:
        passed_over.sort()
    return sorted(found)


def expand_inputs(paths: Iterable[str | os.PathLike], extensions: Collection[str]) -> list[Path]:
    """Command-line inputs -> files: each folder walked (:func:`walk`), each file kept as given, in the order given."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(Path(f) for f in walk(p, extensions))
        elif p.exists():
            out.append(p)
        else:
            raise GapvisionError(f"{p}: no such file or folder")
    return out


def subdirs(path: Path) -> list[Path]:
    """The sub-folders of ``path`` that are not hidden, sorted by name (the class folders of a folder source)."""
    return sorted((p for p in Path(path).iterdir() if p.is_dir() and not is_hidden(p.name)), key=lambda p: p.name)


def file_digest(path: str | os.PathLike) -> str:
    """The MD5 of a file's bytes: how exact copies are found (inspect-data's duplicates; evaluation leaving out
    copies of the images calibration learned from)."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()
