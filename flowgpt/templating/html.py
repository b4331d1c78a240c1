"""HTML pages from a folder of Jinja templates (``flowgpt ui``): an environment of their
own, apart from the prompt sandbox on purpose. The sandbox renders the workflow author's
prompts as plain text; this renders flowgpt's own page templates as HTML, where every
value printed — prompts, replies, errors, step ids — is untrusted text, escaped
(autoescape on for every template, HTML and the SVG inside it alike). The two share the
library, not an environment: sharing one would weaken either job.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.bccache

__all__ = ["HtmlTemplates"]

_SELF = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


class _KeptTemplates(jinja2.FileSystemBytecodeCache):
    """Compiled templates kept between starts; a cache that cannot be written is no error
    (the templates are compiled again next time)."""

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _bytecode_cache(folder: Path) -> jinja2.BytecodeCache | None:
    # Jinja checks a template's source, not the settings below (autoescape is compiled
    # in): the files are named after this module's text and the folder, so a change here
    # starts afresh.
    tag = hashlib.sha256(f"{_SELF}:{folder}".encode()).hexdigest()[:16]
    try:  # a folder of the user's own under the temp folder, which Jinja checks
        return _KeptTemplates(pattern=f"flowgpt-html-{tag}-%s.cache")
    except (OSError, RuntimeError):  # no safe folder: compile at every start
        return None


class HtmlTemplates:
    """The templates in ``folder``, rendered to HTML with every value escaped; a name the
    template uses that the context lacks is an error, never blank text. ``filters`` are
    the templates' own (``{{ cost | usd }}``)."""

    def __init__(self, folder: Path, filters: Mapping[str, Callable[..., Any]]) -> None:
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(folder),
            autoescape=True,  # every template, whatever its name: all of them are HTML
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            # Compiled templates are kept, so a later start answers its first request
            # without compiling them again (about 0.15 s).
            bytecode_cache=_bytecode_cache(folder),
        )
        self._env.filters.update(filters)

    def render(self, template: str, **context: Any) -> str:
        """The page ``template`` with ``context``, every value escaped."""
        return self._env.get_template(template).render(**context)
