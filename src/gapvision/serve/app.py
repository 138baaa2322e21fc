"""The web app: ``create_app(run)`` -> a FastAPI application.

Routes:
  * ``GET /`` -- a page to upload or drop an image; shows the top-k classes, the class-map overlays and the boxes.
  * ``POST /predict`` -- multipart field ``file``: ``{"image", "top": [{"label", "prob"}...]}``, the JSON of
    ``gapvision predict --json``. Query ``topk`` (default: the app's).
  * ``POST /localize`` -- multipart field ``file``: ``{"image", "size", "map_size", "stride", "classes",
    "detections"}``, the JSON file of ``gapvision localize``. With ``?render=1`` a ``renders`` entry is added:
    ``{"boxes": data URI, "maps": [{"label", "class_index", "score", "overlay": data URI}...]}`` (what the page shows).
  * ``GET /health`` -- ``{"status": "ok", "model", "head", "classes", "localize", "max_upload_bytes"}``.

Uploads are capped (``max_upload_bytes``, 413 beyond it, checked while the body streams in) and decoded with the
project's one image decoder (:func:`gapvision.data.images.open_image`): an empty upload is a 400, a file that is not a
readable image a 415, each with a one-line ``detail``.
"""
from __future__ import annotations

import base64
import importlib.util
import io
import tempfile
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import ConfigError, DataError, GapvisionError
from ..predictor import check_topk
from ..runs import Run, load_run

try:  # optional dependency: create_app says what to install when it is missing
    from fastapi import Request
except ImportError:  # pragma: no cover
    Request = Any  # type: ignore[misc,assignment]

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
ENVELOPE_BYTES = 64 * 1024  # multipart boundaries and headers around the file
DRAIN_BYTES = 64 * 1024 * 1024  # an oversized body is read and dropped up to this much before the 413 goes out
RENDER_SIDE = 800  # longest side of the images the page shows
OVERLAY_SIDE = 360
FORMATS_HINT = "upload a JPEG, PNG, BMP, GIF, TIFF or WebP image"


def _fastapi() -> Any:
    try:
        import fastapi
    except ImportError:
        fastapi = None
    if fastapi is None or not (importlib.util.find_spec("python_multipart") or importlib.util.find_spec("multipart")):
        raise ConfigError("gapvision serve needs fastapi, uvicorn and python-multipart: "
                          "pip install 'gapvision[serve]'") from None
    return fastapi


class UploadTooLarge(Exception):
    """The request body passed the upload limit."""


class UploadLimit:
    """ASGI middleware: answers 413 when a POST body is larger than ``max_bytes`` (plus the multipart envelope),
    from the Content-Length header when there is one, else while the body streams in."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.limit = int(max_bytes) + ENVELOPE_BYTES
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._reject(receive, send)
            return
        received = 0
        started = body_done = False

        async def counted() -> dict:
            nonlocal received, body_done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.limit:
                    raise UploadTooLarge
            return message

        async def watch(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except UploadTooLarge:
            if not started:
                await self._reject(None if body_done else receive, send)

    async def _reject(self, receive: Any, send: Any) -> None:
        """Read and drop the rest of the body (up to DRAIN_BYTES, so that the client, still sending, sees the answer
        rather than a broken pipe), then answer 413."""
        import json

        drained = 0
        while receive is not None and drained <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
            drained += len(message.get("body", b""))
        body = json.dumps({"detail": too_large_message(self.max_bytes)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def too_large_message(max_bytes: int) -> str:
    return f"the upload is larger than the limit of {max_bytes / 1024 / 1024:.3g} MB: send a smaller image"


def data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def shrink(image: Image.Image, side: int) -> Image.Image:
    im = image.convert("RGB")
    if max(im.size) > side:
        im.thumbnail((side, side), Image.BILINEAR)
    return im


class Service:
    """The model behind the app: decodes uploads, predicts and localises (one request at a time on the model)."""

    def __init__(self, run: Run, topk: int = 5, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 localize_options: dict | None = None):
        self.run = run
        self.topk = int(topk)
        self.max_upload_bytes = int(max_upload_bytes)
        self.localize_options = {"topk": self.topk, **(localize_options or {})}
        self.lock = threading.Lock()
        self._localizer: Any = None
        self._localize_error: str | None = None
        run.predictor  # noqa: B018 - load the weights now, so that a broken run fails at start, not on the first request

    def decode(self, data: bytes, filename: str) -> Image.Image:
        """Upload bytes -> PIL image through the project's decoder; HTTP-style errors as (status, message)."""
        if not data:
            raise HttpError(400, f"{filename}: the upload is empty; {FORMATS_HINT}")
        if len(data) > self.max_upload_bytes:
            raise HttpError(413, too_large_message(self.max_upload_bytes))
        from ..data.images import ImageDamaged, ImageTooLarge, open_image

        with tempfile.TemporaryDirectory(prefix="gapvision-upload-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            try:
                return open_image(path)
            except DataError as e:
                if isinstance(e, ImageTooLarge):  # a decompression bomb: too many pixels, not a bad type
                    raise HttpError(413, f"{filename}: the image has too many pixels; send a smaller image") from None
                if isinstance(e, ImageDamaged):  # a real image whose data stops or breaks (an interrupted copy)
                    raise HttpError(415, f"{filename} is a damaged image that does not decode ({e.reason}); send the "
                                         "whole file again") from None
                raise HttpError(415, f"{filename} is not an image that can be read; {FORMATS_HINT}") from None

    def predict(self, image: Image.Image, name: str, topk: int | None = None) -> dict:
        with self.lock:
            (result,) = self.run.predict([image], topk=topk or self.topk)
        result["image"] = name
        return result

    def localizer(self) -> Any:
        """The Localizer (built on first use); HttpError 422 when this model cannot give class maps."""
        if self._localizer is None and self._localize_error is None:
            try:
                from ..localize import Localizer

                self._localizer = Localizer(self.run, **self.localize_options)
            except ImportError:
                self._localize_error = "class maps need gapvision.localize, which is not installed"
            except GapvisionError as e:
                self._localize_error = f"class maps are not available for this model: {e}"
        if self._localizer is None:
            raise HttpError(422, self._localize_error or "class maps are not available")
        return self._localizer

    def localize(self, image: Image.Image, name: str, render: bool = False) -> dict:
        loc = self.localizer()
        try:
            with self.lock:
                (res,) = loc([image], [name])
        except GapvisionError as e:  # e.g. an image smaller than an fc head's window
            raise HttpError(422, str(e)) from None
        out = res.to_dict()
        if render:
            out["renders"] = self.render(image, res)
        return out

    def render(self, image: Image.Image, res: Any) -> dict:
        from ..localize.render import draw_detections, heat_overlay

        base = shrink(image, OVERLAY_SIDE)
        maps = [{"label": c["label"], "class_index": c["class_index"], "score": c["score"],
                 "overlay": data_uri(heat_overlay(base, res.heat[c["class_index"]]), "JPEG")}
                for c in res.classes if c["class_index"] in res.heat]
        return {"boxes": data_uri(shrink(draw_detections(image, res.detections), RENDER_SIDE)), "maps": maps}

    def health(self) -> dict:
        mc = self.run.model_config
        try:
            self.localizer()
            can_localize = True
        except HttpError:
            can_localize = False
        return {"status": "ok", "model": mc.model, "head": mc.head, "classes": len(self.run.classes),
                "localize": can_localize, "max_upload_bytes": self.max_upload_bytes}


class HttpError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def create_app(run: Run | str | Path, *, topk: int = 5, max_upload_mb: float = 10,
               localize_options: dict | None = None) -> Any:
    """The FastAPI app for ``run`` (a Run or a run directory); see the module docstring for the routes.

    ``localize_options`` go to :class:`gapvision.localize.Localizer` (method, threshold, min_score, max_side...).
    """
    fastapi = _fastapi()
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    from .page import render_page

    run = run if isinstance(run, Run) else load_run(run)
    if max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive (got {max_upload_mb})")
    check_topk(topk)
    service = Service(run, topk, int(max_upload_mb * 1024 * 1024), localize_options)
    app = fastapi.FastAPI(title="gapvision", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_middleware(UploadLimit, max_bytes=service.max_upload_bytes)

    @app.exception_handler(HttpError)
    async def http_error(_request: Any, exc: HttpError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    async def upload(request: Request) -> tuple[Image.Image, str]:
        try:
            form = await request.form(max_files=1, max_fields=10)
        except UploadTooLarge:
            raise
        except Exception as e:  # noqa: BLE001 - malformed multipart bodies
            raise HttpError(400, f"could not read the form ({e}): POST multipart/form-data with the image in the "
                                 "field 'file'") from None
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise HttpError(400, "no file: POST multipart/form-data with the image in the field 'file'")
        name = Path(part.filename or "upload").name or "upload"
        data = await part.read(service.max_upload_bytes + 1)
        await form.close()
        return await run_in_threadpool(service.decode, data, name), name

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return render_page(run, service.max_upload_bytes)

    @app.get("/health")
    def health() -> dict:
        return service.health()

    @app.post("/predict")
    async def predict(request: Request, topk: int | None = None) -> dict:
        image, name = await upload(request)
        if topk is not None and topk < 1:
            raise HttpError(400, f"topk must be at least 1 (got {topk})")
        return await run_in_threadpool(service.predict, image, name, topk)

    @app.post("/localize")
    async def localize(request: Request, render: bool = False) -> dict:
        image, name = await upload(request)
        return await run_in_threadpool(service.localize, image, name, render)

    return app
