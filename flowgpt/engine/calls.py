"""Which call of a run a request is (``CallSite``), for providers that need to know.

A run sets ``CALL_SITE`` before each request it sends: the step (``"draft"``, or
``"tags[2]"`` for item 2 of a ``for_each`` step) and the attempt (0 for the first ask, 1
and up for repairs). The Batch API runner reads it to give each line of a batch file its
``custom_id``; every other provider ignores it. A context variable, so concurrent steps and
items each see their own.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

__all__ = ["CALL_SITE", "CallSite"]


@dataclass(frozen=True)
class CallSite:
    """One call of a run: the step (``step[i]`` for a for_each item) and the attempt."""

    step: str
    attempt: int


CALL_SITE: contextvars.ContextVar[CallSite | None] = contextvars.ContextVar(
    "flowgpt_call_site", default=None
)
