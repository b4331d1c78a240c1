"""The HTML of ``flowgpt ui``: the page templates shipped in ``flowgpt/ui/templates``,
rendered by :class:`flowgpt.templating.html.HtmlTemplates`, which escapes every value it
prints (prompts, replies and errors are untrusted text)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowgpt.money import format_usd
from flowgpt.templating.html import HtmlTemplates

__all__ = ["render"]


def _number(value: float, digits: int = 1) -> str:
    """Geometry for SVG attributes: a plain number, no exponent."""
    return f"{value:.{digits}f}"


_PAGES = HtmlTemplates(
    Path(__file__).resolve().parent / "templates",
    {"usd": format_usd, "tokens": lambda n: f"{int(n):,}", "num": _number},
)


def render(template: str, **context: Any) -> str:
    """The page ``template`` with ``context``, every value escaped."""
    return _PAGES.render(template, **context)
