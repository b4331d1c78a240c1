"""``flowgpt ui``: the run store in a local web page — runs, steps, prompts and money.

    from flowgpt.ui import create_app, serve

    serve("runs.sqlite3", port=8765)     # http://127.0.0.1:8765/ until Ctrl-C
    app = create_app("runs.sqlite3")     # or the ASGI app, to serve or mount yourself

Read-only, bound to 127.0.0.1, every asset shipped in the package. Needs the ui extra
(``pip install 'flowgpt[ui]'``: Starlette and uvicorn); the exports load on first use, and
say what to install when it is missing.

The package: ``app`` (the Starlette app, its routes and security headers), ``server``
(uvicorn on a socket bound to 127.0.0.1), ``_pages`` (what each page shows, read from
the store), ``_charts`` (the step graph and charts as geometry), ``_render`` (the
templates, every value escaped), ``templates/`` and ``static/``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from flowgpt.errors import SpecError

if TYPE_CHECKING:
    from flowgpt.ui.app import create_app
    from flowgpt.ui.server import serve

__all__ = ["INSTALL_HINT", "create_app", "missing_packages", "serve"]

INSTALL_HINT = "install the ui extra: pip install 'flowgpt[ui]'"

_EXPORTS = {
    "create_app": "flowgpt.ui.app",
    "serve": "flowgpt.ui.server",
}
_NEEDS = ("starlette", "uvicorn", "jinja2")


def missing_packages() -> list[str]:
    """The packages ``flowgpt ui`` needs that are not installed (found without importing)."""
    return [name for name in _NEEDS if importlib.util.find_spec(name) is None]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowgpt.ui' has no attribute {name!r}")
    missing = missing_packages()
    if missing:
        raise SpecError(
            f"flowgpt ui needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed",
            hint=INSTALL_HINT,
        )
    return getattr(importlib.import_module(module), name)
