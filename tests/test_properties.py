"""Property tests (hypothesis): manifest parsing, label mapping and the image decoder on arbitrary bytes.

Each property holds for every generated input; examples are kept few and small so the file stays fast.
"""
from __future__ import annotations

import csv
import io
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from gapvision.data import load_arrays, load_data, load_images
from gapvision.data.images import open_image
from gapvision.data.transforms import Preprocess, to_uint8
from gapvision.errors import DataError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Labels a person may type: any printable text, with the characters that break naive parsers drawn often
# (delimiters, quotes, spaces, non-ASCII, Unicode line separators); control characters are not labels.
TRICKY = ",;|\"' \u00e9\u00df\u4e2d\u3000\u2028\u2029\u00a0\ufeff\U0001f600"
CHARS = st.one_of(st.sampled_from(TRICKY), st.characters(blacklist_categories=("Cs", "Cc")))
LABEL = st.text(CHARS, min_size=1, max_size=10).filter(str.strip)
# File names: the same, minus the path separator, and without surrounding spaces (cells are stripped).
FILE_NAME = st.text(CHARS.filter(lambda c: c not in "/\\"), min_size=1, max_size=10).filter(
    lambda s: s == s.strip() and s not in (".", ".."))
DELIMITERS = st.sampled_from([(",", ".csv"), ("\t", ".tsv"), ("\t", ".csv"), (";", ".csv"), ("|", ".txt")])
QUOTING = st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
LINE_ENDS = st.sampled_from(["\n", "\r\n"])


def _png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png_bytes()


@contextmanager
def _fresh_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


# ------------------------------------------------------------------------------------------------ manifests
@SETTINGS
@given(rows=st.lists(st.tuples(FILE_NAME, LABEL), min_size=2, max_size=8, unique_by=lambda r: r[0].casefold()),
       delimiter=DELIMITERS, quoting=QUOTING, line_end=LINE_ENDS)
def test_manifest_round_trips_any_labels_file_names_delimiters_and_quoting(rows, delimiter, quoting, line_end):
    """Whatever the labels and file names (spaces, quotes, the delimiter itself, non-ASCII), a manifest written by
    a CSV writer reads back with every image under its own label and the classes sorted."""
    labels = [label.strip() for _, label in rows]
    assume(len(set(labels)) >= 2)
    delim, ext = delimiter
    with _fresh_dir() as root:
        for i, (name, _) in enumerate(rows):
            try:
                (root / f"{name}.png").write_bytes(PNG)
            except OSError:  # a name this file system refuses (too long in bytes...): not what is tested here
                assume(False)
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=delim, quoting=quoting, lineterminator=line_end)
        w.writerow(["file", "label"])
        w.writerows([(f"{name}.png", label) for name, label in rows])
        manifest = root / f"list{ext}"
        manifest.write_bytes(buf.getvalue().encode("utf-8"))  # line ends exactly as written

        splits = load_data(manifest, val_split=0)
        assert splits.classes == sorted(set(labels))
        got = {Path(splits.train.items[i]).name: splits.classes[int(splits.train.labels[i])]
               for i in range(len(splits.train))}
        assert got == {f"{name}.png": label for (name, _), label in zip(rows, labels)}


@SETTINGS
@given(labels=st.lists(LABEL, min_size=2, max_size=12), seed=st.integers(0, 2**16))
def test_label_mapping_is_sorted_stable_and_round_trips(labels, seed):
    """Classes are the sorted distinct labels whatever the input order, and classes[label_index] gives back each
    image's label; mapping onto a model's (shuffled, larger) class list keeps every name."""
    names = [label.strip() for label in labels]
    assume(len(set(names)) >= 2)
    x = np.zeros((len(labels), 2, 2), np.uint8)
    x[:, 0, 0] = np.arange(len(labels))  # pixel (0, 0) = original position

    splits = load_arrays(x, labels, val_split=0)
    assert splits.classes == sorted(set(names))
    back = [splits.classes[int(i)] for i in splits.train.labels]
    assert [back[int(np.asarray(splits.train.items[i])[0, 0])] for i in range(len(back))] == back
    assert sorted(back) == sorted(names)
    order = np.random.default_rng(seed).permutation(len(labels))
    shuffled = load_arrays(x[order], [labels[i] for i in order], val_split=0)
    assert shuffled.classes == splits.classes

    model_classes = list(np.random.default_rng(seed).permutation(sorted(set(names)) + ["<never used>"]))
    mapped = load_images((x, labels), classes=model_classes)
    assert mapped.classes == model_classes
    assert [model_classes[int(i)] for i in mapped.labels] == names


# ------------------------------------------------------------------------------------------------ image bytes
class Hang(Exception):
    pass


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the decoder takes longer than ``seconds`` (Unix only)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def alarm(signum, frame):
        raise Hang(f"decoding took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _encoded(fmt: str, mode: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


FORMAT_MODES = [("PNG", m) for m in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16")] + [
    ("TIFF", m) for m in ("RGB", "CMYK", "I;16", "I", "F", "LAB", "YCbCr")] + [
    ("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGBA"), ("PPM", "RGB"),
]


@st.composite
def image_bytes(draw) -> bytes:
    """Arbitrary bytes, or a valid small image of some format with bytes truncated, overwritten or inserted."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    fmt, mode = draw(st.sampled_from(FORMAT_MODES))
    size = (draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    data = bytearray(_encoded(fmt, mode, size, draw(st.integers(0, 100))))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
        if action == "truncate":
            del data[pos:]
        elif action == "overwrite":
            data[pos:pos + 1] = draw(st.binary(min_size=1, max_size=4))
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the corrupt files it is fed here
@SETTINGS
@given(data=image_bytes(), ext=st.sampled_from([".jpg", ".png", ".gif", ".bmp", ".tif", ".webp"]))
def test_decoder_gives_an_image_or_one_line_error_on_any_bytes(data, ext):
    """On any file content the decoder returns a usable image in a known mode or raises a one-line DataError that
    names the file; never another exception, never a hang."""
    with _fresh_dir() as root:
        path = root / f"sample{ext}"
        path.write_bytes(data)
        try:
            with _time_limit(20):
                img = open_image(path, max_pixels=4_000_000)
                for channels in (1, 3):
                    t = to_uint8(img, Preprocess(channels=channels, img_size=8))
                    assert tuple(t.shape) == (channels, 8, 8)
        except DataError as e:
            message = str(e)
            assert "\n" not in message and str(path) in message
            return
        assert img.mode in {"L", "LA", "P", "PA", "RGB", "RGBA"}
        assert np.asarray(img).shape[:2] == (img.size[1], img.size[0])


@pytest.mark.parametrize("fmt, mode", FORMAT_MODES)
def test_every_generated_format_decodes_when_intact(tmp_path, fmt, mode):
    """The seeds of the property above: each intact format/mode decodes (so the property tests real decoders)."""
    path = tmp_path / f"ok.{fmt.lower()}"
    path.write_bytes(_encoded(fmt, mode, (9, 7), seed=1))
    assert open_image(path).size == (9, 7)
