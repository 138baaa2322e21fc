"""open_image: every odd file a user may have, decoded or refused with a message naming the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, features

from gapvision.data import images
from gapvision.data.images import IMAGE_EXTENSIONS, is_grayscale, is_image_file, open_image
from gapvision.data.transforms import convert_mode
from gapvision.errors import DataError


def test_plain_jpeg_is_decoded_and_detached_from_the_file(tmp_path, write_image):
    path = write_image(tmp_path / "a.jpg", size=(20, 10))
    img = open_image(path)
    path.unlink()  # fully loaded: pixels stay readable without the file
    assert img.mode == "RGB" and img.size == (20, 10)
    assert np.asarray(img).shape == (10, 20, 3)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        open_image(tmp_path / "nope.png")


def test_zero_byte_jpeg(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg is empty .*--skip-bad"):
        open_image(path)


def test_truncated_jpeg(tmp_path, write_image):
    path = write_image(tmp_path / "cut.jpg", size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg.*(fix or remove it, or pass --skip-bad)"):
        open_image(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(DataError, match=r"notes\.jpg is not an image"):
        open_image(path)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    img = open_image(path)
    assert img.mode == "L"
    # clipping would give [0, 255, 255, 255]; scaling keeps the ordering over the whole range
    assert np.asarray(img).tolist() == [[0, 4, 128, 255]]


def test_32bit_integer_image_with_8bit_values_is_kept(tmp_path):
    arr = np.array([[0, 7, 200, 255]], dtype=np.int32)
    path = tmp_path / "int.tif"
    Image.fromarray(arr).save(path)
    assert np.asarray(open_image(path)).tolist() == [[0, 7, 200, 255]]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    img = open_image(path)
    assert img.mode == "RGB"
    r, g, b = np.asarray(img)[8, 8].tolist()
    assert r > 200 and g < 60 and b < 60


def test_palette_png_with_transparency_composites_on_white(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))  # index 0 black (transparent), 1 red
    img.putpixel((0, 0), 1)
    path = tmp_path / "pal.png"
    img.save(path, transparency=0)
    opened = open_image(path)
    assert opened.mode == "P" and "transparency" in opened.info
    rgb = np.asarray(convert_mode(opened, 3))
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert rgb[3, 3].tolist() == [255, 255, 255]  # transparent -> white, not black


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0)  # left half red
    arr[:, 10:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    img = open_image(path)
    assert img.size == (10, 20)  # width and height swapped
    top, bottom = np.asarray(img)[2, 5], np.asarray(img)[17, 5]
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(path).n_frames == 3
    rgb = np.asarray(convert_mode(open_image(path), 3))
    assert rgb[4, 4].tolist() == [255, 0, 0]


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(250, 0, 0), (0, 250, 0)]]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    r, g, _ = np.asarray(convert_mode(open_image(path), 3))[4, 4].tolist()
    assert r > 200 and g < 50


def test_decompression_bomb_by_our_limit(tmp_path, write_image, monkeypatch):
    path = write_image(tmp_path / "big.png", size=(100, 100))
    with pytest.raises(DataError, match=r"big\.png is 100x100 = 10,000 pixels, over the limit of 1,000"):
        open_image(path, max_pixels=1000)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 5000)
    with pytest.raises(DataError, match="decompression bomb"):
        open_image(path)
    assert open_image(path, max_pixels=10_000).size == (100, 100)


def test_decompression_bomb_by_pillows_hard_limit(tmp_path, write_image, monkeypatch):
    path = write_image(tmp_path / "huge.png", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises above twice this
    with pytest.raises(DataError, match=r"huge\.png is too large"):
        open_image(path, max_pixels=10**12)


def test_one_bit_image_becomes_L(tmp_path):
    path = tmp_path / "bw.png"
    Image.new("1", (4, 4), 1).save(path)
    img = open_image(path)
    assert img.mode == "L" and np.asarray(img).max() == 255


def test_is_grayscale():
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    assert is_grayscale(grey)
    assert is_grayscale(grey.convert("RGB"))  # colour mode, equal channels
    assert is_grayscale(Image.new("I;16", (4, 4)))
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[..., 0] = 200
    assert not is_grayscale(Image.fromarray(colour))


def test_grey_jpeg_saved_as_rgb_counts_as_grey(tmp_path):
    arr = np.repeat(np.linspace(0, 255, 32 * 32).reshape(32, 32, 1), 3, axis=2).astype(np.uint8)
    path = tmp_path / "grey.jpg"
    Image.fromarray(arr).save(path, quality=70)
    assert open_image(path).mode == "RGB"
    assert is_grayscale(open_image(path))


def test_image_extensions():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif"} <= IMAGE_EXTENSIONS
    assert is_image_file("a/B.JPG") and not is_image_file("a/.hidden.png") and not is_image_file("notes.txt")


@pytest.mark.shared
def test_real_photos_open(shared_dir):
    photos = sorted(p for p in (shared_dir / "photos").iterdir() if is_image_file(p))
    assert len(photos) >= 5
    for p in photos:
        img = open_image(p)
        assert img.mode in ("L", "RGB", "RGBA", "P") and min(img.size) >= 32, p
    assert not is_grayscale(open_image(shared_dir / "photos" / "parrot.jpg"))


def _jpeg(path, rng, mode="RGB", size=(23, 17), **save):
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, quality=80, **save)
    return path


def test_jpeg_fast_lane_gives_open_images_pixels_and_declines_what_it_does_not_handle(tmp_path):
    import torch

    from gapvision.data.images import read_rgb_jpeg

    rng = np.random.default_rng(0)
    plain = _jpeg(tmp_path / "a.jpg", rng)
    fast = read_rgb_jpeg(plain)
    assert fast is not None and fast.dtype == torch.uint8 and fast.shape == (3, 17, 23)
    assert np.array_equal(fast.permute(1, 2, 0).numpy(), np.asarray(open_image(plain).convert("RGB")))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: open_image applies it, the fast lane leaves it to open_image
    assert read_rgb_jpeg(_jpeg(tmp_path / "rot.jpg", rng, exif=exif)) is None
    assert read_rgb_jpeg(_jpeg(tmp_path / "grey.jpg", rng, mode="L")) is None
    assert read_rgb_jpeg(_jpeg(tmp_path / "cmyk.jpg", rng, mode="CMYK")) is None
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(plain.read_bytes()[:200])
    assert read_rgb_jpeg(truncated) is None
    png = tmp_path / "b.png"
    Image.open(plain).save(png)
    assert read_rgb_jpeg(png) is None


def test_jpeg_fast_lane_matches_open_image_on_real_photos(shared_dir):
    from gapvision.data.images import read_rgb_jpeg

    photos = sorted((shared_dir / "data" / "boxes-dev" / "images").glob("*/*.jpg"))[::9] + \
        sorted((shared_dir / "photos").glob("*.jpg"))
    checked = 0
    for path in photos:
        fast = read_rgb_jpeg(path)
        if fast is None:
            continue
        assert np.array_equal(fast.permute(1, 2, 0).numpy(), np.asarray(open_image(path).convert("RGB"))), path
        checked += 1
    assert checked >= 15
