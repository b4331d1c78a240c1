"""What a run reports as it goes (``EngineEvent``), for progress displays and logs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flowgpt.providers.rate_limits import RateLimitHold
from flowgpt.results import StepResult

__all__ = ["EngineEvent", "EventKind"]

EventKind = Literal[
    "run_started",
    "step_started",
    "step_finished",
    "step_skipped",
    "step_failed",
    "attempt_rejected",
    "warning",
    "rate_limited",
    "run_finished",
]


@dataclass(frozen=True)
class EngineEvent:
    """Progress of a run, for displays and logs."""

    kind: EventKind
    step: str | None = None
    result: StepResult | None = None
    message: str | None = None
    hold: RateLimitHold | None = None  # rate_limited: the limit, the model, the wait
