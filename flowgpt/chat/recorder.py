"""A chat recorded in the run store as it goes, so ``flowgpt runs list/show`` show it.

The run starts with the first turn (``start_run``); every turn is recorded the moment it
ends, as a step ``turn-1``, ``turn-2``, ..., a failed one too, with its error. How the
chat ended is :meth:`flowgpt.chat.ChatSession.finish`.

:class:`_ChatRecorder` is that part of :class:`flowgpt.chat.ChatSession`, which sets the
attributes it reads.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from flowgpt.results import AttemptResult, StepResult

if TYPE_CHECKING:
    from flowgpt.accounting.prices import ModelPrice
    from flowgpt.chat.session import ChatTurn
    from flowgpt.errors import FlowgptError
    from flowgpt.providers.base import Message
    from flowgpt.spec.workflow import Workflow
    from flowgpt.store.run_store import RunStore


def _new_run_id() -> str:
    # The engine's format: sortable by time, a random part for runs started in one second.
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{random.getrandbits(24):06x}"


class _ChatRecorder:
    """Records a session's turns as a run (the base of :class:`flowgpt.chat.ChatSession`,
    whose ``__init__`` sets these)."""

    store: RunStore | None
    name: str
    workflow: Workflow | None
    inputs: dict[str, Any]
    _model: str
    _run_id: str | None
    _run_started: bool

    if TYPE_CHECKING:

        def _price(self) -> ModelPrice | None: ...  # ChatSession's

    def _ensure_run(self) -> str | None:
        if self.store is None:
            return None
        if self._run_id is None:
            self._run_id = _new_run_id()
        if not self._run_started:
            wf = self.workflow
            self.store.start_run(
                self._run_id,
                workflow_name=self.name,
                workflow_text=wf.source if wf is not None else None,
                workflow_path=str(wf.path) if wf is not None and wf.path else None,
                inputs=self.inputs,
            )
            self._run_started = True
        return self._run_id

    def _record(self, turn: ChatTurn) -> None:
        run_id = self._ensure_run()
        if run_id is None or self.store is None:
            return
        from flowgpt.accounting.tokens import is_exact_for

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
        self.store.record_step(run_id, step, fingerprint=None, price=self._price())

    def _record_failure(
        self, number: int, messages: list[Message], error: FlowgptError, latency: float
    ) -> None:
        run_id = self._ensure_run()
        if run_id is None or self.store is None:
            return
        step = StepResult(
            id=f"turn-{number}",
            model=self._model,
            status="failed",
            messages=[dict(m) for m in messages],
            latency_s=latency,
            error=error.message,
        )
        self.store.record_step(run_id, step, fingerprint=None, price=None)
