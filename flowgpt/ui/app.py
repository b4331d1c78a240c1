"""The web app of ``flowgpt ui`` (Starlette): read-only pages over one run store.

``/`` the runs page (filters in the query string), ``/runs/RUN_ID`` one run, ``/static/``
the stylesheet and icon shipped in the package. Only GET and HEAD are served; nothing
writes to the store.

Safety, since replies and prompts are untrusted text: every value is escaped by the
templates (:mod:`flowgpt.ui._render`); every response carries a Content-Security-Policy
that allows no script at all and nothing from another origin, so even markup that got
through could run nothing and fetch nothing; and requests whose ``Host`` is not
127.0.0.1 or localhost are refused (400), so a web page elsewhere cannot reach the store
through DNS rebinding. The server binds 127.0.0.1 only (:mod:`flowgpt.ui.server`).
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowgpt.errors import FlowgptError
from flowgpt.store import RunStore, StoreError
from flowgpt.ui._pages import run_page, runs_page
from flowgpt.ui._render import render

__all__ = ["ALLOWED_HOSTS", "CONTENT_SECURITY_POLICY", "create_app"]

ALLOWED_HOSTS = ("127.0.0.1", "localhost")

# No script from anywhere, inline or not; styles, images and the icon from this server
# only; forms submit here only; never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-resource-policy": "same-origin",
}

_STATIC = Path(__file__).resolve().parent / "static"


class _SecurityHeaders:
    """Adds the headers above to every response (pages, files and errors alike); pages
    are not cached, as runs change while they run."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers[name] = value
                if not scope["path"].startswith("/static/"):
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error_page(store: RunStore, status: int, title: str, message: str) -> HTMLResponse:
    html = render("error.html", store_path=str(store.path), title=title, message=message)
    return HTMLResponse(html, status_code=status)


def create_app(store: RunStore | str | os.PathLike[str] | None = None) -> Starlette:
    """The ASGI app of ``flowgpt ui`` over a run store (a RunStore, a path, or None for
    the default store). Serve it with any ASGI server on 127.0.0.1, or mount it in an app
    of your own; it only reads the store."""
    runs = store if isinstance(store, RunStore) else RunStore(store)

    async def runs_endpoint(request: Request) -> Response:
        query = dict(request.query_params)
        page = await run_in_threadpool(runs_page, runs, query)
        return HTMLResponse(render("runs.html", store_path=str(runs.path), page=page))

    async def run_endpoint(request: Request) -> Response:
        run_id = str(request.path_params["run_id"])
        try:
            page = await run_in_threadpool(run_page, runs, run_id)
        except StoreError as exc:
            return _error_page(runs, 404, "No such run", exc.message)
        return HTMLResponse(render("run.html", store_path=str(runs.path), page=page))

    # Each handler is registered for one type of exception (Starlette's signature names
    # any Exception).
    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _error_page(runs, 404, "Not found", f"nothing at {request.url.path}")
        return _error_page(
            runs, exc.status_code, "Cannot do that", "this page only reads the store"
        )

    async def flowgpt_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FlowgptError)
        return _error_page(runs, 400, "Cannot show this", exc.message)

    return Starlette(
        routes=[
            Route("/", runs_endpoint, methods=["GET"]),
            Route("/runs/{run_id:str}", run_endpoint, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=_STATIC), name="static"),
        ],
        middleware=[
            Middleware(_SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(ALLOWED_HOSTS)),
        ],
        exception_handlers={HTTPException: not_found, FlowgptError: flowgpt_error},
    )
