"""What a run tells its tracer, as small protocols, and ``NO_TRACING``, the tracer that
does nothing (the default: a run then pays a few no-op method calls per step and request).

The engine holds one ``Tracing`` and calls it at the points that matter::

    trace = tracing.start_run(workflow, run_id, ...)      # the run's root span
    step = trace.step("outline")                          # a span per step,
    item = step.item(0)                                   # ... per for_each item
    with step.chat(request) as call:                      # a span per model request
        response = await provider.complete(request)
        call.answered(response, cost_usd)
    step.rejected(failures)                               # a repair follows
    step.end(result); trace.end(run_result, failure)

Each object is handed to the code that needs it (the run keeps its trace, a step passes
its own to its attempts), so spans nest as the work does, whatever task runs it.
Nothing here imports OpenTelemetry: ``flowgpt.tracing.otel`` implements these protocols
with it, and ``flowgpt.tracing.setup`` chooses between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol

from flowgpt.accounting.prices import ModelPrice
from flowgpt.providers.base import ChatRequest, ChatResponse
from flowgpt.results import RunResult, StepResult
from flowgpt.spec.workflow import Workflow
from flowgpt.usage import Usage

__all__ = [
    "NO_TRACING",
    "BatchTrace",
    "ChatTrace",
    "ContentCapture",
    "NoTracing",
    "PriceOf",
    "RunTrace",
    "StepTrace",
    "Tracing",
]

# The price a run uses for a model (None: unpriced), for the request spans' price source.
PriceOf = Callable[[str], "ModelPrice | None"]


@dataclass(frozen=True)
class ContentCapture:
    """Where message content goes: nowhere (the default), span attributes, span events."""

    spans: bool = False
    events: bool = False

    @property
    def any(self) -> bool:
        return self.spans or self.events


class ChatTrace(Protocol):
    """One model request, from the moment it is sent until its reply (or error) is in."""

    def __enter__(self) -> ChatTrace: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def answered(self, response: ChatResponse, cost_usd: Decimal | None) -> None:
        """The reply, and what it cost (None: unpriced)."""
        ...


class StepTrace(Protocol):
    """One step, or one item of a ``for_each`` step."""

    def item(self, index: int) -> StepTrace: ...

    def chat(self, request: ChatRequest) -> ChatTrace: ...

    def cache_hit(self) -> None:
        """An attempt was answered from the response cache (no request was sent)."""
        ...

    def rejected(self, failures: Sequence[str]) -> None:
        """The reply failed validation; the step asks again with the failures."""
        ...

    def failed(self, error: BaseException) -> None: ...

    def end(self, result: StepResult) -> None: ...


class RunTrace(Protocol):
    """One run of a workflow."""

    def step(self, step_id: str) -> StepTrace: ...

    def end(self, result: RunResult, failure: BaseException | None) -> None: ...


class BatchTrace(Protocol):
    """One batch: its rows' runs are traced by ``row(number)``."""

    def row(self, number: int) -> Tracing: ...

    def row_done(self, ok: bool, usage: Usage, cost_usd: Decimal | None) -> None: ...

    def event(self, name: str, attributes: Mapping[str, str | int]) -> None:
        """Something that happened to the batch as a whole (a Batch API batch submitted
        or ended)."""
        ...

    def end(self) -> None: ...


class Tracing(Protocol):
    """Where an engine's runs and batches are traced."""

    @property
    def enabled(self) -> bool: ...

    def start_run(
        self,
        workflow: Workflow,
        run_id: str,
        *,
        inputs: Collection[str],
        provider: str,
        base_url: str | None,
        price_of: PriceOf,
        resumed_from: str | None = None,
    ) -> RunTrace:
        """The run's root span starts now. ``inputs`` are the inputs' names (their values
        are never traced); ``base_url`` is where the provider sends requests."""
        ...

    def start_batch(self, workflow: str) -> BatchTrace: ...

    def flush(self) -> None:
        """Send what is still buffered (before a short-lived process exits)."""
        ...


class NoTracing:
    """Tracing off: every method does nothing and returns this same object."""

    enabled = False

    def start_run(self, *args: Any, **kwargs: Any) -> NoTracing:
        return self

    def start_batch(self, workflow: str) -> NoTracing:
        return self

    def row(self, number: int) -> NoTracing:
        return self

    def step(self, step_id: str) -> NoTracing:
        return self

    def item(self, index: int) -> NoTracing:
        return self

    def chat(self, request: ChatRequest) -> NoTracing:
        return self

    def __enter__(self) -> NoTracing:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def answered(self, response: ChatResponse, cost_usd: Decimal | None) -> None:
        return None

    def cache_hit(self) -> None:
        return None

    def rejected(self, failures: Sequence[str]) -> None:
        return None

    def failed(self, error: BaseException) -> None:
        return None

    def row_done(self, ok: bool, usage: Usage, cost_usd: Decimal | None) -> None:
        return None

    def event(self, name: str, attributes: Mapping[str, str | int]) -> None:
        return None

    def end(self, *args: Any) -> None:
        return None

    def flush(self) -> None:
        return None


NO_TRACING = NoTracing()
