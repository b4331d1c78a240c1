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

import contextlib
import hashlib
from pathlib import Path
from typing import Any

import jinja2
import jinja2.bccache

from flowgpt.money import format_usd

__all__ = ["render"]

_TEMPLATES = Path(__file__).resolve().parent / "templates"
_SELF = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _number(value: float, digits: int = 1) -> str:
    """Geometry for SVG attributes: a plain number, no exponent."""
    return f"{value:.{digits}f}"


class _KeptTemplates(jinja2.FileSystemBytecodeCache):
    """Compiled templates kept between starts; a cache that cannot be written is no error
    (the templates are compiled again next time)."""

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    # Jinja checks a template's source, not the settings below (autoescape is compiled
    # in): the files are named after this module's text, so a change here starts afresh.
    try:  # a folder of the user's own under the temp folder, which Jinja checks
        return _KeptTemplates(pattern=f"flowgpt-ui-{_SELF}-%s.cache")
    except (OSError, RuntimeError):  # no safe folder: compile at every start
        return None


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    autoescape=True,  # every template, whatever its name: all of them are HTML
    undefined=jinja2.StrictUndefined,  # a misspelt name is an error, never blank text
    trim_blocks=True,
    lstrip_blocks=True,
    # Compiled templates are kept, so a later `flowgpt ui` answers its first request
    # without compiling them again (about 0.15 s).
    bytecode_cache=_bytecode_cache(),
)
_env.filters["usd"] = format_usd
_env.filters["tokens"] = lambda n: f"{int(n):,}"
_env.filters["num"] = _number


def render(template: str, **context: Any) -> str:
    """The page ``template`` with ``context``, every value escaped."""
    return _env.get_template(template).render(**context)
