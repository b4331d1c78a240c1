"""A chat recorded in the run store as it goes (``ChatRecorder``), so ``flowgpt runs
list/show`` show it.

The run starts with the first turn; every turn is recorded the moment it ends, as a step
``turn-1``, ``turn-2``, ..., a failed one too, with its error; ``finish`` records how the
chat ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from flowgpt.accounting.prices import ModelPrice
from flowgpt.accounting.tokens import is_exact_for
from flowgpt.chat.turn import ChatTurn
from flowgpt.providers.base import Message
from flowgpt.results import AttemptResult, StepResult
from flowgpt.spec.workflow import Workflow
from flowgpt.store.run_store import RunStore, new_run_id
from flowgpt.usage import Usage

__all__ = ["ChatRecorder"]


class ChatRecorder:
    """Records one chat as a run named ``name`` in ``store``; ``provider`` and
    ``endpoint`` say who answered and where its requests went."""

    def __init__(
        self,
        store: RunStore,
        *,
        name: str,
        run_id: str | None = None,
        workflow: Workflow | None = None,
        inputs: Mapping[str, Any] | None = None,
        provider: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.run_id = run_id or new_run_id()
        self.workflow = workflow
        self.inputs: dict[str, Any] = dict(inputs or {})
        self.provider = provider  # who answers ("openai", "mock", ...) and where requests go
        self.endpoint = endpoint
        self.started = False  # the run exists in the store (from the first turn on)

    def _start(self) -> None:
        if self.started:
            return
        wf = self.workflow
        self.store.start_run(
            self.run_id,
            workflow_name=self.name,
            workflow_text=wf.source if wf is not None else None,
            workflow_path=str(wf.path) if wf is not None and wf.path else None,
            inputs=self.inputs,
            provider=self.provider,
            endpoint=self.endpoint,
        )
        self.started = True

    def record(self, turn: ChatTurn, price: ModelPrice | None) -> None:
        """An answered turn."""
        self._start()
        step = StepResult(
            id=f"turn-{turn.number}",
            model=turn.model,
            status="ok",
            output=turn.text,
            text=turn.text,
            messages=[dict(m) for m in turn.messages],
            attempts=[
                AttemptResult(
                    text=turn.text,
                    usage=turn.usage,
                    cost_usd=turn.cost_usd,
                    latency_s=turn.latency_s,
                    finish_reason=turn.finish_reason,
                    retries=turn.retries,
                )
            ],
            latency_s=turn.latency_s,
            exact_tokens=is_exact_for(turn.model),
        )
        self.store.record_step(self.run_id, step, fingerprint=None, price=price)

    def record_failure(
        self, number: int, model: str, messages: list[Message], error: str, latency_s: float
    ) -> None:
        """A turn that failed (nothing was billed for it)."""
        self._start()
        step = StepResult(
            id=f"turn-{number}",
            model=model,
            status="failed",
            messages=[dict(m) for m in messages],
            latency_s=latency_s,
            error=error,
        )
        self.store.record_step(self.run_id, step, fingerprint=None, price=None)

    def finish(
        self,
        status: str,
        error: str | None,
        *,
        turns: int,
        usage: Usage,
        cost_usd: Decimal | None,
        latency_s: float,
    ) -> None:
        """How the chat ended; nothing when no turn was recorded."""
        if not self.started:
            return
        self.store.finish_run(
            self.run_id,
            status=status,
            error=error,
            outputs={"turns": turns},
            cost_usd=cost_usd,
            usage=usage,
            latency_s=latency_s,
        )
