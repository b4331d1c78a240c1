"""The HTML of ``flowgpt ui``: Jinja2 templates shipped in ``flowgpt/ui/templates``, in an
environment that escapes every value it prints (autoescape on for every template, HTML and
the SVG inside it alike).

This is the UI's own Jinja environment, apart from :mod:`flowgpt.templating` on purpose:
that one renders workflow prompts in a sandbox, as plain text, from the workflow author's
templates; this one renders flowgpt's own page templates as HTML, where every value —
prompts, replies, errors, step ids — is untrusted text that must be escaped. Sharing one
environment would weaken either job.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jinja2

from flowgpt.money import format_usd

__all__ = ["render"]

_TEMPLATES = Path(__file__).resolve().parent / "templates"
_SELF = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _number(value: float, digits: int = 1) -> str:
    """Geometry for SVG attributes: a plain number, no exponent."""
    return f"{value:.{digits}f}"


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    autoescape=True,  # every template, whatever its name: all of them are HTML
    undefined=jinja2.StrictUndefined,  # a misspelt name is an error, never blank text
    trim_blocks=True,
    lstrip_blocks=True,
    # Compiled templates are kept (in a folder of the user's own, which Jinja checks), so
    # a later `flowgpt ui` answers its first request without compiling them again. Jinja
    # checks a template's source, not the settings above (autoescape is compiled in):
    # the cache files are named after this module's text, so a change here starts afresh.
    bytecode_cache=jinja2.FileSystemBytecodeCache(pattern=f"flowgpt-ui-{_SELF}-%s.cache"),
)
_env.filters["usd"] = format_usd
_env.filters["tokens"] = lambda n: f"{int(n):,}"
_env.filters["num"] = _number


def render(template: str, **context: Any) -> str:
    """The page ``template`` with ``context``, every value escaped."""
    return _env.get_template(template).render(**context)
