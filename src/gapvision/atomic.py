"""Atomic file writes: write beside the target, fsync, then rename. A crash or a full disk leaves the old file intact."""
from __future__ import annotations

import errno
import functools
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import GapvisionError

TMP_SUFFIX = ".tmp"  # temporary files are named .<target name>.<random>.tmp beside their target


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux: /proc/self/status); elsewhere
    read once, on the first write, by setting and restoring it (os.umask can only be read that way)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _umask_once()


@functools.lru_cache(maxsize=1)
def _umask_once() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` atomically, else is removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; give the file the mode open() would
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk (ENOSPC, EDQUOT, EFBIG), no permission, a read-only file system...
        raise GapvisionError(f"could not write {path} ({e.strerror or e}); {_what_to_do(path, e)}") from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def make_folder(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and its parents); one line saying why when it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if path.exists() and not path.is_dir():
            raise GapvisionError(f"{path} is a file, not a folder: choose another output folder") from None
        raise GapvisionError(f"could not create the folder {path} ({e.strerror or e}); {_what_to_do(path, e)}") \
            from None
    return path


def _what_to_do(path: Path, e: OSError) -> str:
    """The advice for a failed write, by its cause."""
    if path.is_dir():
        return f"{path} is a folder: give the output a file name inside it or elsewhere"
    if e.errno in (errno.ENOTDIR, errno.EEXIST) or any(p.exists() and not p.is_dir() for p in path.parents):
        return "a part of that path is a file, not a folder: choose another output path"
    return (f"the previous {path.name}, if any, is untouched: free disk space or fix permissions and run the "
            "command again")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomic write through a function that writes to a given path (torch.save, savefig, safetensors...)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def savefig(fig: Any, path: str | os.PathLike, **kw: Any) -> None:
    """Save a matplotlib figure atomically (format from the target's suffix)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kw)
    write_bytes(path, buf.getvalue())


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed writer (``kill -9``, a power cut) left in ``folder``."""
    folder = Path(folder)
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
