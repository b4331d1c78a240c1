"""What happens inside one provider call that its caller may want to record (a transport
retry, a 429 and the wait it asks for), without passing anything through the Provider
protocol: providers ``note`` it, and whoever makes the call (tracing) listens for the
duration of that call through a context variable. Nobody listening costs one lookup.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CallListener", "listen", "note", "stop_listening"]

# Called with an event name ("flowgpt.retry", "flowgpt.rate_limited") and its attributes.
CallListener = Callable[[str, Mapping[str, Any]], None]

_LISTENER: contextvars.ContextVar[CallListener | None] = contextvars.ContextVar(
    "flowgpt_call_listener", default=None
)


def note(event: str, **attributes: Any) -> None:
    """For providers: report ``event`` of the call in progress to its listener, if any."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(event, attributes)


def listen(listener: CallListener) -> contextvars.Token[CallListener | None]:
    """Hear what the calls made from this context (task) report, until ``stop_listening``."""
    return _LISTENER.set(listener)


def stop_listening(token: contextvars.Token[CallListener | None]) -> None:
    _LISTENER.reset(token)
