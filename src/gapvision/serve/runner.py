"""Running the app with uvicorn: in the foreground (``gapvision serve``) or in a background thread (tests,
notebooks)."""
from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runs import Run
from .app import create_app


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("gapvision serve needs fastapi, uvicorn and python-multipart: "
                          "pip install 'gapvision[serve]'") from None
    return uvicorn


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run: Run | str | Path, host: str = "127.0.0.1", port: int = 8000, *, topk: int = 5,
          max_upload_mb: float = 10, localize_options: dict | None = None, log_level: str = "info") -> None:
    """Serve ``run`` until Ctrl-C. Binds 127.0.0.1 (this machine only) unless ``host`` says otherwise."""
    uvicorn = _uvicorn()
    app = create_app(run, topk=topk, max_upload_mb=max_upload_mb, localize_options=localize_options)
    if not is_loopback(host):
        print(f"note: listening on {host}: other machines on the network can use this model (no authentication)")
    print(f"serving on http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` runs uvicorn in a thread on 127.0.0.1 and a free port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        uvicorn = _uvicorn()
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.timeout = timeout
        self.url = ""

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.timeout)
