"""Running the app with uvicorn: in the foreground (``gapvision serve``) or in a background thread (tests,
notebooks)."""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
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


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` as uvicorn would bind it (port 0: a free one), so that a bad ``--host`` or
    ``--port``, or a port in use, is a one-line ConfigError before anything is announced."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535 (got {port}); 0 picks a free port")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait for TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = e.strerror or str(e)
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port} is already in use on {host}: stop the program that holds it or choose "
                              "another --port (0 picks a free one)") from None
        if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"--host {host} is not an address of this machine ({why}): use 127.0.0.1 (this "
                              "machine only), 0.0.0.0 (every network) or one of its own addresses") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({why}): check --host and --port") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The address to open in a browser for a server listening on ``sock`` (any-address: this machine's)."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def serve(run: Run | str | Path, host: str = "127.0.0.1", port: int = 8000, *, topk: int = 5,
          max_upload_mb: float = 10, localize_options: dict | None = None, log_level: str = "info") -> None:
    """Serve ``run`` until Ctrl-C. Binds 127.0.0.1 (this machine only) unless ``host`` says otherwise; port 0 picks a
    free port (the announced address has the real one)."""
    uvicorn = _uvicorn()
    with listening_socket(host, port) as sock:
        app = create_app(run, topk=topk, max_upload_mb=max_upload_mb, localize_options=localize_options)
        if not is_loopback(host):
            print(f"note: listening on {host}: other machines on the network can use this model (no authentication)")
        print(f"serving on {url_of(sock)}  (Ctrl-C stops)", flush=True)
        config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level=log_level)
        with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C is the way to stop
            uvicorn.Server(config).run(sockets=[sock])


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
