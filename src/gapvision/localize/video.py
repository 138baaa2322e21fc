"""Frames from video files and webcams. Animated GIF/WebP/PNG need only Pillow; other video formats and cameras
need OpenCV (opencv-python-headless, a gapvision dependency since box refinement uses it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from PIL import Image, ImageSequence

from ..data.images import open_lazily
from ..errors import DataError, GapvisionError

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".ogv"})
ANIMATED_EXTENSIONS = frozenset({".gif", ".webp", ".png", ".apng"})
_OPENCV_HINT = "pip install opencv-python-headless (a gapvision dependency)"


def is_video(path: str | Path) -> bool:
    """A video file, or an animated image (more than one frame)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return True
    if suffix in ANIMATED_EXTENSIONS and p.is_file():
        try:
            with open_lazily(p) as im:
                return int(getattr(im, "n_frames", 1)) > 1
        except DataError:  # unreadable or too large: reported by the image decoder later
            return False
    return False


def read_frames(path: str | Path, every: int = 1) -> Iterator[tuple[int, Image.Image, float | None]]:
    """``(frame index, RGB image, frames per second or None)`` for every ``every``-th frame."""
    p = Path(path)
    if every < 1:
        raise GapvisionError(f"--every must be at least 1 (got {every})")
    if p.suffix.lower() in ANIMATED_EXTENSIONS:
        yield from _animated_frames(p, every)
    else:
        yield from _opencv_frames(p, every)


def _animated_frames(path: Path, every: int) -> Iterator[tuple[int, Image.Image, float | None]]:
    with open_lazily(path) as im:  # the decompression-bomb limit of data/images.py applies to frames too
        for n, frame in enumerate(ImageSequence.Iterator(im)):
            if n % every == 0:
                ms = frame.info.get("duration") or im.info.get("duration")
                yield n, frame.convert("RGB"), (1000.0 / ms if ms else None)


def _opencv() -> Any:
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        return None
    return cv2


def _opencv_frames(path: Path, every: int) -> Iterator[tuple[int, Image.Image, float | None]]:
    cv2 = _opencv()
    if cv2 is None:
        raise GapvisionError(f"reading the video {path} needs OpenCV, which is not installed: {_OPENCV_HINT}, or "
                             "convert the video to an animated GIF")
    if not path.is_file():
        raise DataError(f"video {path} not found")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"OpenCV cannot decode the video {path}: convert it (e.g. to MP4/H.264 or GIF)")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or None
    try:
        n = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if n % every == 0:
                yield n, Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), fps
            n += 1
    finally:
        cap.release()


def camera_frames(index: int = 0, every: int = 1) -> Iterator[tuple[int, Image.Image]]:
    """Frames of webcam ``index`` until it stops delivering (Ctrl-C ends the stream)."""
    cv2 = _opencv()
    if cv2 is None:
        raise GapvisionError(f"--camera needs OpenCV, which is not installed: {_OPENCV_HINT}")
    try:  # OpenCV's own warnings about a missing device would repeat our message less clearly
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass
    cap = cv2.VideoCapture(int(index))
    if not cap.isOpened():
        raise GapvisionError(f"no camera {index}: OpenCV could not open it (no webcam attached, a wrong index, or no "
                             f"permission for /dev/video{index}): check the device or try another --camera index")
    try:
        n = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                if n == 0:
                    raise GapvisionError(f"camera {index} opened but delivered no frame (in use by another program?)")
                break
            if n % every == 0:
                yield n, Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            n += 1
    finally:
        cap.release()
