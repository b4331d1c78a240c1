"""Which step a request to the provider is made for.

A provider sees only the request. One that wraps another, such as the cassette recorder
and player of ``flowgpt.testing``, reads ``current_step()`` to label what it records and to
name the step whose request changed. A run sets it around each call (``requesting_for``);
it is a context variable, so steps running at once each see their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["current_step", "requesting_for"]

_STEP: ContextVar[str | None] = ContextVar("flowgpt_request_step", default=None)


def current_step() -> str | None:
    """The step (``draft``, or ``sections[2]`` for an item of a for_each step) the request
    being made now is for; None outside a run."""
    return _STEP.get()


@contextmanager
def requesting_for(step: str) -> Iterator[None]:
    """Label the requests made inside the block as made for ``step``."""
    token = _STEP.set(step)
    try:
        yield
    finally:
        _STEP.reset(token)
