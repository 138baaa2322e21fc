"""The web app on a real uvicorn server (127.0.0.1, a free port): JSON endpoints equal to the CLI/API output, upload
size and type checks, and the page driven end to end by a headless chromium (Playwright)."""
from __future__ import annotations

import http.client
import io
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gapvision as gv
import gapvision.extensions  # noqa: F401  (registers the serve command for build_parser)
from gapvision.cli import build_parser, main

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install 'gapvision[serve]')")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install 'gapvision[serve]')")

from gapvision.serve import BackgroundServer, create_app  # noqa: E402

DATA = "builtin:shapes?n=120&size=32"
FAST = dict(img_size=32, batch_size=32, augment="none", quiet=True, workers=0, epochs=2, optimizer="sgd", lr=0.05)
LIMIT_MB = 0.25
LOCALIZE = {"min_score": 0.0, "threshold": "50%"}  # the tiny test model is unsure: show its best guesses
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return gv.train(DATA, "fastnet_s", "gap", out=tmp_path_factory.mktemp("serve") / "run", **FAST)


@pytest.fixture(scope="module")
def url(run):
    with BackgroundServer(create_app(run, topk=3, max_upload_mb=LIMIT_MB, localize_options=LOCALIZE)) as base:
        yield base


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A 96 x 64 picture with a circle on the left and a square on the right."""
    arr = np.full((64, 96, 3), 60, np.uint8)
    yy, xx = np.mgrid[:64, :96]
    arr[(yy - 32) ** 2 + (xx - 24) ** 2 < 14 ** 2] = (230, 200, 40)
    arr[20:46, 58:84] = (40, 180, 230)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(arr).save(path)
    return path


def post(url: str, data: bytes, filename: str = "x.png", field: str = "file", ctype: str = "image/png"):
    """POST one multipart file; (status, JSON body)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(text)
        except json.JSONDecodeError:  # e.g. a plain-text 500: show it in the assertion
            return e.code, {"detail": text}


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("content-type", ""), r.read()


def test_health_and_loopback_binding(url, run):
    assert url.startswith("http://127.0.0.1:")
    status, _, body = get(url + "/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["localize"] is True
    assert health["classes"] == len(run.classes) and health["max_upload_bytes"] == int(LIMIT_MB * 1024 * 1024)
    assert build_parser().parse_args(["serve", "RUN"]).host == "127.0.0.1"


def test_predict_equals_the_cli_json(url, run, scene, capsys):
    status, got = post(url + "/predict?topk=3", scene.read_bytes(), filename="scene.png")
    assert main(["predict", str(run.path), str(scene), "--json", "--topk", "3"]) == 0
    cli = json.loads(capsys.readouterr().out.splitlines()[0])
    assert status == 200 and got["image"] == "scene.png"
    assert [t["label"] for t in got["top"]] == [t["label"] for t in cli["top"]]
    assert [t["prob"] for t in got["top"]] == pytest.approx([t["prob"] for t in cli["top"]], abs=1e-6)


def test_localize_equals_the_localize_json(url, run, scene):
    from gapvision.localize import localize

    status, got = post(url + "/localize", scene.read_bytes(), filename="scene.png")
    assert status == 200
    expected = localize(run, [scene], topk=3, **LOCALIZE)[0]
    assert set(got) == {"image", "size", "map_size", "stride", "classes", "detections"}
    assert got["image"] == "scene.png" and got["size"] == [96, 64] and got["map_size"] == expected["map_size"]
    assert {k: got[k] for k in ("classes", "detections")} == {k: expected[k] for k in ("classes", "detections")}
    status, rendered = post(url + "/localize?render=1", scene.read_bytes())
    assert rendered["renders"]["boxes"].startswith("data:image/png;base64,")
    assert [m["label"] for m in rendered["renders"]["maps"]] == [c["label"] for c in rendered["classes"]]


def _cut_jpeg() -> bytes:
    """A real JPEG whose data stops half way (an interrupted copy)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize("data, filename, status, needle", [
    (b"this is not an image", "notes.txt", 415, "notes.txt is not an image"),
    (_cut_jpeg(), "cut.jpg", 415, "cut.jpg is a damaged image that does not decode (OSError: image file is truncated"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "broken.png", 415, "broken.png is not an image"),
    (b"", "empty.png", 400, "empty"),
])
def test_bad_uploads_are_refused_with_a_clear_message(url, data, filename, status, needle):
    code, body = post(url + "/predict", data, filename=filename)
    assert code == status and needle in body["detail"]


def test_missing_file_field(url, scene):
    code, body = post(url + "/predict", scene.read_bytes(), field="image")
    assert code == 400 and "field 'file'" in body["detail"]


def test_upload_size_is_capped(url):
    big = b"\0" * int(LIMIT_MB * 1024 * 1024 * 2)
    code, body = post(url + "/predict", big, filename="big.png")
    assert code == 413 and "limit" in body["detail"]
    # no Content-Length (chunked): cut off while streaming
    host, port = url[len("http://"):].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    boundary = "b0undary"
    chunks = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.png\"\r\n\r\n".encode()]
    chunks += [b"\0" * 65536] * 12
    conn.request("POST", "/predict", body=iter(chunks), encode_chunked=True,
                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.loads(resp.read())["detail"]
    conn.close()


def test_the_page_is_self_contained(url):
    status, ctype, body = get(url + "/")
    page = body.decode()
    assert status == 200 and ctype.startswith("text/html")
    assert 'id="file"' in page and "http://" not in page and "https://" not in page


def test_invalid_upload_limit_is_a_config_error(run):
    from gapvision.errors import ConfigError

    with pytest.raises(ConfigError, match="max-upload-mb"):
        create_app(run, max_upload_mb=0)


# -- the page in a real browser -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: `make test` installs Debian's chromium with apt-get when run as root")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def test_browser_upload_shows_classes_maps_and_boxes(browser, url, scene):
    page = browser.new_page()
    page.goto(url + "/")
    page.wait_for_selector("body[data-state=ready]")
    page.set_input_files("#file", str(scene))
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    _, expected = post(url + "/predict?topk=3", scene.read_bytes())
    items = page.locator("#topk li")
    assert items.count() == 3
    assert [items.nth(i).get_attribute("data-label") for i in range(3)] == [t["label"] for t in expected["top"]]
    assert expected["top"][0]["label"] in items.nth(0).inner_text()
    boxes = page.locator("#boxes img")
    assert boxes.count() == 1 and boxes.evaluate("img => img.complete && img.naturalWidth") > 0
    _, loc = post(url + "/localize", scene.read_bytes())
    figures = page.locator("#maps figure")
    assert figures.count() == len(loc["classes"]) >= 1
    assert figures.nth(0).locator("img").evaluate("img => img.complete && img.naturalWidth") > 0
    assert page.locator("#error").inner_text() == ""
    page.close()


def test_browser_shows_the_error_for_a_non_image(browser, url, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    page = browser.new_page()
    page.goto(url + "/")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("body[data-state=error]", timeout=30_000)
    assert "notes.txt is not an image" in page.locator("#error").inner_text()
    page.close()


def test_uploaded_bytes_decode_like_files(url, run):
    """A JPEG with EXIF rotation goes through the same decoder as files on disk (rotated before predicting)."""
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    status, got = post(url + "/localize", buf.getvalue(), filename="rot.jpg", ctype="image/jpeg")
    assert status == 200 and got["size"] == [40, 80]  # width, height after the EXIF rotation
