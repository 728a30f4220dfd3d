"""``kql serve``: an interactive occlusion explorer in the browser. ``explorer`` holds the
server's state and computes, ``runs`` is one heatmap's request and stages, ``app`` speaks HTTP,
``security`` decides who may talk to it and how much. Starlette on uvicorn; the page is plain
HTML/JS/CSS in ``static/``."""

from __future__ import annotations

import logging
import secrets
import signal
import sys
from typing import Any

from compiler.errors import InvalidInputError
from krypton_ql.apps.serve.security import is_loopback

log = logging.getLogger(__name__)


def url(host: str, port: int, token: str | None) -> str:
    """The address to open (an IPv6 host in brackets, the token in the query)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(explorer: Any, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          announce: Any = None) -> None:  # fmt: skip
    """Serve ``explorer`` until interrupted. A host other than loopback needs a token (one is
    made when none is given) and is warned about; ``announce(url)`` is told the address."""
    import uvicorn

    from krypton_ql.apps.serve.app import create_app

    if not 0 <= port < 65536:
        raise InvalidInputError(f"--port must be 0–65535, got {port}")
    if not is_loopback(host):
        token = token or secrets.token_urlsafe(24)
        print(
            f"kql serve: warning: listening on {host}, reachable from other machines; every "
            "request needs the token in the URL below",
            file=sys.stderr,
        )
    import threading

    from krypton_ql.apps.serve.explorer import Compute

    app = create_app(explorer, token, host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets)
        bound = port
        for server_ in getattr(server, "servers", []):
            for sock in server_.sockets:
                bound = sock.getsockname()[1]
        (announce or _print)(url(host, bound, token))

    server.startup = startup  # type: ignore[method-assign]  # announce the bound port
    # HTTP in a thread, the occlusion work in this (the main) thread: torch is slower in a
    # second thread (explorer.Compute).
    compute = explorer.compute = Compute(own_thread=False)
    stopped = threading.Event()

    def http() -> None:
        try:
            server.run()
        finally:
            stopped.set()

    thread = threading.Thread(target=http, name="kql-http", daemon=True)
    thread.start()
    # SIGTERM stops the server as Ctrl-C does, so that it removes its uploads folder.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        compute.run_forever(stopped)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.should_exit = True
        thread.join(timeout=10)
        explorer.close()
    if server.started is False and not stopped.is_set():
        raise InvalidInputError(f"kql serve could not listen on {host}:{port}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _print(address: str) -> None:
    print(f"kql serve: open {address}  (Ctrl-C stops)", flush=True)
