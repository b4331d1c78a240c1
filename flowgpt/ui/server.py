"""Serving ``flowgpt ui`` with uvicorn, on 127.0.0.1 only.

The listening socket is made here, bound to 127.0.0.1 (never all interfaces: the store
holds prompts and replies), and handed to uvicorn; so the address is known, and
connections queue, before uvicorn starts, and ``port=0`` picks a free port.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from flowgpt.errors import SpecError
from flowgpt.store import RunStore
from flowgpt.ui._address import DEFAULT_PORT, HOST
from flowgpt.ui.app import create_app

__all__ = ["DEFAULT_PORT", "HOST", "bind", "serve"]


def bind(port: int = DEFAULT_PORT) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:``port`` (0: a free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise SpecError(
            f"cannot listen on {HOST}:{port}: {exc.strerror or exc}",
            hint="pick another port with --port N (--port 0 takes any free one)",
        ) from None
    return sock


def serve(
    store: RunStore | str | os.PathLike[str] | None = None,
    *,
    port: int = DEFAULT_PORT,
    on_ready: Callable[[str, Path], None] | None = None,
) -> None:
    """Serve the UI over ``store`` (a RunStore, a path, or None: the default store) on
    http://127.0.0.1:``port``/ until Ctrl-C (then it returns) or SIGTERM.

    ``on_ready(url, store_path)`` is called once the socket listens, before requests are
    served (they wait in the queue meanwhile): print the address, open a browser."""
    runs = store if isinstance(store, RunStore) else RunStore(store)
    sock = bind(port)
    try:
        app = create_app(runs)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=2,  # a browser's idle keep-alive must not hold Ctrl-C
        )
        url = f"http://{HOST}:{sock.getsockname()[1]}/"
        if on_ready is not None:
            on_ready(url, runs.path)
        # Ctrl-C is how a server is stopped: uvicorn has shut down by then; return.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if runs is not store:
            runs.close()
