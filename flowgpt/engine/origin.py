"""Which step a request to the provider is made for.

A provider sees only the request. One that wraps another, such as the cassette recorder
and player of ``flowgpt.testing``, reads ``current_step()`` to label what it records and to
name the step whose request changed. A run sets it around each call; it is a context
variable, so steps running at once each see their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["REQUEST_STEP", "current_step", "requesting_for"]

# Set and reset directly around each call of a run (a context manager costs ~7x more,
# and this is on every request's path).
REQUEST_STEP: ContextVar[str | None] = ContextVar("flowgpt_request_step", default=None)


def current_step() -> str | None:
    """The step (``draft``, or ``sections[2]`` for an item of a for_each step) the request
    being made now is for; None outside a run."""
    return REQUEST_STEP.get()


@contextmanager
def requesting_for(step: str) -> Iterator[None]:
    """Label the requests made inside the block as made for ``step``."""
    token = REQUEST_STEP.set(step)
    try:
        yield
    finally:
        REQUEST_STEP.reset(token)
