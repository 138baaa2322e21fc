"""Decoding image files: the one place that touches image bytes.

:func:`open_image` returns a fully decoded PIL image in one of the modes ``L``, ``LA``, ``P``, ``PA``, ``RGB`` or
``RGBA`` (EXIF orientation applied, first frame of animations, 16-bit scaled to 8-bit, CMYK as RGB) or raises a
one-line :class:`~gapvision.errors.DataError` that names the file and says what to do. :func:`read_rgb_jpeg` is its
fast lane for bulk decoding: the same pixels for plain RGB JPEGs, None for anything it does not handle.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from .files import has_extension

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".webp", ".avif", ".tif", ".tiff",
     ".tga", ".jp2", ".j2k", ".ppm", ".pgm", ".pbm", ".pnm"}
)

#: Largest image (width x height) accepted; bigger files are treated as decompression bombs. Pillow's default
#: (about 89 megapixels); override with the environment variable GAPVISION_MAX_IMAGE_PIXELS or
#: :func:`set_max_image_pixels`.
MAX_IMAGE_PIXELS: int = int(os.environ.get("GAPVISION_MAX_IMAGE_PIXELS", 89_478_485))

_JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
_KEEP_MODES = {"L", "LA", "P", "PA", "RGB", "RGBA"}
_GRAY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
SKIP_BAD_HINT = "fix or remove it, or pass --skip-bad"


class ImageTooLarge(DataError):
    """An image with more pixels than the limit (a decompression bomb, or a genuinely huge photo)."""


class ImageDamaged(DataError):
    """A file that opens as an image but does not decode (truncated or corrupt data); ``reason`` says what failed."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def set_max_image_pixels(n: int) -> None:
    """Change the decompression-bomb limit (also moves Pillow's own hard limit, which is twice its setting)."""
    global MAX_IMAGE_PIXELS
    MAX_IMAGE_PIXELS = int(n)
    Image.MAX_IMAGE_PIXELS = max(int(n), Image.MAX_IMAGE_PIXELS or 0)


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a non-hidden file whose extension is one of :data:`IMAGE_EXTENSIONS`."""
    return has_extension(os.path.basename(os.fspath(path)), IMAGE_EXTENSIONS)


def open_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file completely and normalise its mode (see the module docstring).

    Raises DataError for a missing, empty, truncated, corrupt or non-image file and for images larger than
    ``max_pixels`` (default :data:`MAX_IMAGE_PIXELS`).
    """
    with open_lazily(path, max_pixels=max_pixels) as im:
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        im.load()
        img = ImageOps.exif_transpose(im)  # a copy, detached from the file
    return _normalise_mode(img)


def read_rgb_jpeg(path: str | os.PathLike) -> "torch.Tensor | None":
    """The uint8 3 x H x W pixels of a JPEG file that holds a plain colour image (Pillow mode RGB, no EXIF rotation,
    within the pixel limit), decoded by torchvision's libjpeg-turbo: the same values as
    ``open_image(path).convert("RGB")`` (tests/test_images.py) at about three times the speed on small images (the
    in-memory decode of a file set). None for every other file -- other formats, grey or CMYK JPEGs, rotated, too
    large, truncated or unreadable ones -- for which the caller uses :func:`open_image` and its one-line errors."""
    p = os.fspath(path)
    if not has_extension(os.path.basename(p), _JPEG_EXTENSIONS):
        return None
    try:
        # the header only (format, mode, size, EXIF), opened directly: open_lazily's file checks and warning filter
        # cost this lane a sixth of its speed (bench/decode_speed.py), and every file it declines goes through them
        with Image.open(p) as im:
            w, h = im.size
            plain = im.format == "JPEG" and im.mode == "RGB" and w * h <= MAX_IMAGE_PIXELS and \
                ("exif" not in im.info or im.getexif().get(0x0112, 1) == 1)
        if not plain:
            return None
        with warnings.catch_warnings():  # torchvision >= 0.29 announces that TorchCodec will take these over
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg, read_file

        t = decode_jpeg(read_file(p), mode=ImageReadMode.RGB)
    except Exception:  # open_image says what is wrong with the file
        return None
    return t if t.shape == (3, h, w) else None


@contextmanager
def open_lazily(path: str | os.PathLike, *, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """The file opened by Pillow but not decoded yet (frames of animations, ``n_frames``), after the checks of
    :func:`open_image`: missing, empty, unidentifiable and over-``max_pixels`` files are a one-line DataError, and so
    are decoding errors raised inside the ``with`` block."""
    path = Path(path)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    if not path.is_file():
        raise DataError(f"image {path} not found: fix the path or remove it from the data")
    if path.stat().st_size == 0:
        raise DataError(f"image {path} is empty (0 bytes): {SKIP_BAD_HINT}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked below
            with Image.open(path) as im:
                w, h = im.size
                if w * h > limit:
                    raise _bomb(path, w, h, limit)
                yield im
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image {path} is too large ({e}): {SKIP_BAD_HINT}, or raise GAPVISION_MAX_IMAGE_PIXELS") \
            from e
    except UnidentifiedImageError as e:
        raise DataError(f"{path} is not an image Pillow can read: {SKIP_BAD_HINT}") from e
    except Exception as e:  # truncated or corrupt data: Pillow raises OSError, SyntaxError, ValueError, EOFError...
        reason = f"{type(e).__name__}: {e}"
        raise ImageDamaged(f"image {path} is unreadable ({reason}): {SKIP_BAD_HINT}", reason) from e


def to_pil(im: "str | os.PathLike | Image.Image | np.ndarray") -> Image.Image:
    """A path (through :func:`open_image`), PIL image or uint8 H x W (x C) array -> PIL image."""
    if isinstance(im, Image.Image):
        return im
    if isinstance(im, (str, os.PathLike)):
        return open_image(im)
    arr = np.asarray(im)
    return Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def records_of_readable(items: Sequence[Any], names: Sequence[str],
                        fn: Callable[[list[Image.Image], list[str]], list[dict]]) -> list[dict]:
    """Batch inference's ``--skip-bad``: ``fn(images, names)`` (one record per image) on the ``items`` that decode
    (paths through :func:`open_image`; PIL images and arrays as given), and in the place of each path that does not,
    the record ``{"image": name, "error": why}`` (one line, without advice), so that one bad file neither stops the
    batch nor goes missing from the output."""
    decoded: list[Image.Image | str] = []
    for im in items:
        try:
            decoded.append(to_pil(im))
        except DataError as e:
            decoded.append(str(e).removesuffix(f": {SKIP_BAD_HINT}"))
    good = [i for i, im in enumerate(decoded) if not isinstance(im, str)]
    done = iter(fn([decoded[i] for i in good], [names[i] for i in good]) if good else [])  # type: ignore[misc]
    return [{"image": names[i], "error": im} if isinstance(im, str) else next(done) for i, im in enumerate(decoded)]


def unreadable_note(records: Sequence[dict]) -> str | None:
    """One line about the records :func:`records_of_readable` gave for files that did not decode (None: there are
    none)."""
    bad = [r for r in records if "error" in r]
    if not bad:
        return None
    return f"note: skipped {len(bad)} unreadable image{'s' * (len(bad) > 1)} (first: {bad[0]['error']})"


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as :func:`open_image` returns it (EXIF rotation applied), from its header
    only; a DataError naming the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"image {path} not found: fix the path or remove it from the data") from None
    except Exception as e:  # noqa: BLE001 - any failure here is a bad file, reported in one line
        raise DataError(f"image {path} is unreadable ({type(e).__name__}: {e}): {SKIP_BAD_HINT}") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _bomb(path: Path, w: int, h: int, limit: int) -> DataError:
    return ImageTooLarge(
        f"image {path} is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} (decompression bomb?): "
        f"{SKIP_BAD_HINT}, or raise GAPVISION_MAX_IMAGE_PIXELS if it is genuine"
    )


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Map every Pillow mode onto L/LA/P/PA/RGB/RGBA; 16/32-bit and float grey are scaled (not clipped) to 8-bit."""
    mode = img.mode
    if mode in _KEEP_MODES:
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(img), mode), mode="L")
    if mode == "1":
        return img.convert("L")
    if mode in ("La", "RGBa"):
        return img.convert("LA" if mode == "La" else "RGBA")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit or float grey image to 0..255 by its value range, not by clipping."""
    a = arr.astype(np.float64)
    if mode.startswith("I;16"):
        scale_max = 65535.0
    elif mode == "F" and a.size and a.min() >= 0 and a.max() <= 1.0:
        scale_max = 1.0
    else:
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0 and hi <= 255:
            scale_max = 255.0
        elif lo >= 0 and hi <= 65535:
            scale_max = 65535.0
        else:  # unusual range (negative or > 16 bits): stretch min..max
            a = a - lo
            scale_max = max(hi - lo, 1e-12)
    return np.clip(np.rint(a * (255.0 / scale_max)), 0, 255).astype(np.uint8)


def is_grayscale(img: Image.Image, tolerance: int = 6) -> bool:
    """True for grey modes, or colour images whose channels are (nearly) equal on a small thumbnail."""
    if img.mode in _GRAY_MODES:
        return True
    thumb = img.copy()
    thumb.thumbnail((32, 32))
    rgb = np.asarray(thumb.convert("RGB"), dtype=np.int16)
    spread = np.abs(rgb[..., 0] - rgb[..., 1]).max(initial=0), np.abs(rgb[..., 1] - rgb[..., 2]).max(initial=0)
    return max(spread) <= tolerance


def image_files(path: str | os.PathLike, passed_over: list[str] | None = None) -> list[str]:
    """Image files under ``path`` by the one walker's rules (data/files.py); ``passed_over`` receives the other
    files and the symlinked folders it did not enter."""
    from .files import walk

    return walk(Path(path), IMAGE_EXTENSIONS, passed_over)
