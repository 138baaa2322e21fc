"""Try a model in a browser: ``create_app(run)`` (FastAPI) and ``serve(run)`` (uvicorn, 127.0.0.1 by default).

    from gapvision.serve import serve
    serve("runs/demo", port=8000)        # then open http://127.0.0.1:8000/
"""
from .app import MAX_UPLOAD_BYTES, create_app
from .runner import BackgroundServer, serve

__all__ = ["MAX_UPLOAD_BYTES", "BackgroundServer", "create_app", "serve"]
