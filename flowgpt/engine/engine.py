"""The engine: the public API that runs workflows (``Engine``). It holds what every run
shares (the provider, request limiters, the run store, a cost limit) and starts runs;
each run schedules its steps, renders their prompts, calls the provider, validates and
repairs replies, and accounts for every token and dollar (``flowgpt.engine.run``).

There is one async core (``Engine.run``); ``Engine.run_sync`` wraps it.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Mapping,
)
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowgpt.accounting.budget import Budget
from flowgpt.engine.events import EngineEvent
from flowgpt.engine.plan import _Plan
from flowgpt.engine.run import _Run
from flowgpt.errors import SpecError
from flowgpt.providers.base import Provider
from flowgpt.providers.limiter import RequestLimiter
from flowgpt.results import RunResult
from flowgpt.spec.inputs import resolve_inputs
from flowgpt.spec.models import WorkflowSpec
from flowgpt.spec.workflow import Workflow

if TYPE_CHECKING:
    from flowgpt.engine.batch import BatchRowResult, DataRow
    from flowgpt.store.run_store import RunStore

__all__ = ["Engine", "EngineEvent"]


def _new_run_id() -> str:
    # Sortable by time; the random part tells apart runs started in the same second.
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{random.getrandbits(24):06x}"


class Engine:
    """Runs workflows.

    ``Engine()`` sends requests to OpenAI (or the workflow's ``provider.base_url``) with the
    key from the environment; ``Engine(provider=MockProvider())`` runs offline. When a run
    fails, the error raised carries the partial result as ``error.result``.
    """

    def __init__(
        self,
        provider: Provider | None = None,
        *,
        model: str | None = None,
        max_cost_usd: Decimal | float | str | None = None,
        on_event: Callable[[EngineEvent], None] | None = None,
        store: RunStore | None = None,
        cache: bool = False,
        concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
    ) -> None:
        self.provider = provider
        # Request limits for everything this engine runs at once; `concurrency` overrides
        # the workflow's `provider.concurrency`. rpm/tpm: requests/tokens per minute.
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.store = store  # where runs are recorded (needed for resume and the cache)
        self.cache = cache  # answer identical deterministic requests from the store
        # A cost limit for every run, on top of the workflow's `budget:` (the lower wins).
        self.max_cost_usd = None if max_cost_usd is None else Decimal(str(max_cost_usd))
        self.model = model  # overrides every step's model
        self.on_event = on_event
        # One request limiter per provider and event loop, shared by every run this engine
        # makes at once (so concurrent runs respect `provider.concurrency` together).
        self._limiters: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Provider, RequestLimiter]
        ] = weakref.WeakKeyDictionary()

    def limiter(self, provider: Provider, concurrency: int) -> RequestLimiter:
        """The request limiter shared by every call to ``provider`` on this event loop."""
        loop = asyncio.get_running_loop()
        per_loop = self._limiters.get(loop)
        if per_loop is None:
            per_loop = self._limiters[loop] = weakref.WeakKeyDictionary()
        limiter = per_loop.get(provider)
        if limiter is None:
            limiter = per_loop[provider] = RequestLimiter(
                self.concurrency or concurrency, rpm=self.rpm, tpm=self.tpm
            )
        return limiter

    def _provider_for(
        self, spec: WorkflowSpec, base_dir: Path | None = None
    ) -> tuple[Provider, bool]:
        """The provider for a run, and whether the run owns it (and must close it).

        ``base_dir``: where a relative ``provider.model_path`` starts (the workflow's
        folder); None means the current folder.
        """
        if self.provider is not None:
            return self.provider, False
        p = spec.provider
        if p.type == "local":
            from flowgpt.providers.local import LocalProvider

            return LocalProvider(p.model_path, n_ctx=p.n_ctx, base_dir=base_dir), True
        from flowgpt.providers.openai import OpenAIProvider

        provider = OpenAIProvider(
            base_url=p.base_url,
            api_key_env=p.api_key_env,
            timeout_s=p.timeout_s,
            max_retries=p.max_retries,
        )
        return provider, True

    async def run(
        self,
        workflow: Workflow | WorkflowSpec | str | Path,
        inputs: Mapping[str, Any] | None = None,
        *,
        inputs_from_cli: bool = False,
        run_id: str | None = None,
        resume: str | None = None,
    ) -> RunResult:
        """Run a workflow and return its result; raises a FlowgptError when it fails.

        ``resume`` names an earlier run (in the engine's store): its finished steps whose
        request is unchanged are reused at $0, and its inputs are used if none are given.
        """
        wf = _as_workflow(workflow)
        _Plan.of(wf)  # static errors are refused before anything runs
        if self.provider is not None:  # the common case: no provider to make or close
            provider, owned = self.provider, False
        else:
            provider, owned = self._provider_for(wf.spec, wf.base_dir)
        try:
            state, resume = self._start(
                wf, inputs, provider, inputs_from_cli=inputs_from_cli, run_id=run_id, resume=resume
            )
            return state.outcome(await state.execute(resumed_from=resume))
        finally:
            if owned:
                await provider.aclose()

    def _start(
        self,
        wf: Workflow,
        inputs: Mapping[str, Any] | None,
        provider: Provider,
        *,
        inputs_from_cli: bool = False,
        run_id: str | None = None,
        resume: str | None = None,
        outer_budget: Budget | None = None,
    ) -> tuple[_Run, str | None]:
        """A run ready to ``execute``, and the full id of the run it resumes (if any).

        Callers await ``execute`` themselves rather than through a helper coroutine: every
        coroutine level is crossed again each time a request suspends and resumes."""
        previous = None
        if resume is not None:
            if self.store is None:
                raise SpecError(
                    "resuming needs the run store", hint="drop --no-store to use --resume"
                )
            resume = self.store.resolve_run_id(resume)
            previous = self.store.finished_steps(resume)
            # The original inputs, with any given now taken instead.
            inputs = {**self.store.load_run(resume).inputs, **(inputs or {})}
        resolved = resolve_inputs(wf.spec, inputs or {}, from_cli=inputs_from_cli)
        state = _Run(self, wf, resolved, provider, run_id or _new_run_id(), previous, outer_budget)
        return state, resume

    def run_batch(
        self,
        workflow: Workflow | WorkflowSpec | str | Path,
        rows: Iterable[Mapping[str, Any] | DataRow] | AsyncIterable[Mapping[str, Any] | DataRow],
        *,
        concurrency: int | None = None,
        max_cost_usd: Decimal | float | str | None = None,
        skip: Collection[int] = (),
        inputs_from_cli: bool = False,
    ) -> AsyncIterator[BatchRowResult]:
        """Run a workflow once per row of inputs; an async iterator of each row's result
        (a ``BatchRowResult``), in the order rows finish.

        Rows run ``concurrency`` at a time (default: the engine's, else the workflow's
        ``provider.concurrency``) under one request limiter for the whole batch.
        ``max_cost_usd`` is one budget shared by every row: once it refuses a call, no new
        row is started. A failed row does not stop the others. ``skip`` names rows (by
        1-based number) to leave out, e.g. the ones an earlier run already finished.
        """
        from flowgpt.engine.batch import run_rows

        return run_rows(
            self,
            _as_workflow(workflow),
            rows,
            concurrency=concurrency,
            max_cost_usd=None if max_cost_usd is None else Decimal(str(max_cost_usd)),
            skip=skip,
            inputs_from_cli=inputs_from_cli,
        )

    def run_sync(
        self,
        workflow: Workflow | WorkflowSpec | str | Path,
        inputs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> RunResult:
        """``run`` for code that is not async."""
        return asyncio.run(self.run(workflow, inputs, **kwargs))


def _as_workflow(workflow: Workflow | WorkflowSpec | str | Path) -> Workflow:
    if isinstance(workflow, Workflow):
        return workflow
    if isinstance(workflow, WorkflowSpec):
        return Workflow(spec=workflow)
    from flowgpt.spec.loader import load_workflow

    return load_workflow(workflow)
