"""Which call of a run a request is (``CallSite``), for providers that need to know.

A provider sees only the request. A run sets ``CALL_SITE`` around each request it sends:
the step (``"draft"``, or ``"tags[2]"`` for item 2 of a ``for_each`` step) and the attempt
(0 for the first ask, 1 and up for repairs). The Batch API runner reads it to give each
line of a batch file its ``custom_id``; the cassette recorder and player of
``flowgpt.testing`` to label what they record and to name the step whose request changed;
every other provider ignores it. A context variable, so concurrent steps and items each
see their own.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["CALL_SITE", "CallSite", "calling_for", "current_call"]


@dataclass(frozen=True)
class CallSite:
    """One call of a run: the step (``step[i]`` for a for_each item) and the attempt."""

    step: str
    attempt: int


CALL_SITE: contextvars.ContextVar[CallSite | None] = contextvars.ContextVar(
    "flowgpt_call_site", default=None
)


def current_call() -> CallSite | None:
    """The call being made now; None outside a run's call."""
    return CALL_SITE.get()


@contextmanager
def calling_for(step: str, attempt: int = 0) -> Iterator[None]:
    """Label the requests made inside the block as made for ``step`` (a run sets and
    resets the variable directly instead: a context manager costs several times more, and
    that is on every request's path)."""
    token = CALL_SITE.set(CallSite(step, attempt))
    try:
        yield
    finally:
        CALL_SITE.reset(token)
