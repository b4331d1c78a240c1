"""The engine: the public API that runs workflows (``Engine``).

An engine holds what its runs share, the way an HTTP client holds connections: one
provider (SDK client, connection pool) per provider configuration, made on first use and
reused by every run and batch; one request limiter per provider, so concurrent runs
respect ``provider.concurrency`` together; the run store, the response cache, a cost limit.
Each run (``flowgpt.engine.run``) schedules its steps, renders prompts, calls the
provider, validates and repairs replies, and accounts for every token and dollar.

There is one async core (``Engine.run``); ``Engine.run_sync`` wraps it.
"""

from __future__ import annotations

import asyncio
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
from types import TracebackType
from typing import Any

from flowgpt.accounting.budget import Budget
from flowgpt.engine.batch import run_rows
from flowgpt.engine.data import BatchRowResult, DataRow
from flowgpt.engine.events import EngineEvent
from flowgpt.engine.plan import Plan
from flowgpt.engine.run import Run, RunSettings
from flowgpt.errors import SpecError
from flowgpt.providers.base import Provider
from flowgpt.providers.factory import make_provider
from flowgpt.providers.limiter import RequestLimiter
from flowgpt.results import RunResult
from flowgpt.spec.inputs import resolve_inputs
from flowgpt.spec.loader import load_workflow
from flowgpt.spec.models import ProviderSpec, WorkflowSpec
from flowgpt.spec.workflow import Workflow
from flowgpt.store.run_store import RunStore, new_run_id
from flowgpt.tracing.base import BatchTrace, Tracing
from flowgpt.tracing.setup import make_tracing

__all__ = ["Engine"]


class Engine:
    """Runs workflows.

    ``Engine()`` sends requests where each workflow's ``provider:`` says (OpenAI by
    default, with the key from the environment); ``Engine(provider=MockProvider())`` sends
    every request to the given provider instead. The providers an engine makes are reused
    by all its runs; ``async with Engine() as engine:`` (or ``await engine.aclose()``)
    closes them, and ``run_sync`` closes them when its event loop ends. When a run fails,
    the error raised carries the partial result as ``error.result``.

    Tracing (OpenTelemetry spans and metrics, docs/tracing.md) is on when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, or
    with ``tracing=True``, or when a ``tracer_provider`` / ``meter_provider`` is given;
    ``tracing=False`` turns it off. It needs the otel extra.
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
        tracing: bool | None = None,
        tracer_provider: object | None = None,
        meter_provider: object | None = None,
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
        # Spans and metrics of every run (NO_TRACING, a no-op, when tracing is off).
        self.tracing: Tracing = make_tracing(
            tracing, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        # The providers this engine made, one per configuration (see provider_for).
        self._providers: dict[tuple[str, str], Provider] = {}
        # One request limiter per provider and event loop (asyncio primitives belong to a
        # loop), shared by every run this engine makes at once.
        self._limiters: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[int, tuple[Provider, RequestLimiter]]
        ] = weakref.WeakKeyDictionary()

    # -- what runs share ----------------------------------------------------------------

    def provider_for(self, spec: ProviderSpec, base_dir: Path | None = None) -> Provider:
        """The provider for a workflow's ``provider:`` (the engine's own when it was given
        one): made on first use, then reused by every run with the same configuration.
        ``base_dir`` is where a relative ``model_path`` starts (the workflow's folder)."""
        if self.provider is not None:
            return self.provider
        # `concurrency` is the limiter's business, not the provider's.
        key = (spec.model_dump_json(exclude={"concurrency"}), str(base_dir or ""))
        provider = self._providers.get(key)
        if provider is None:
            provider = self._providers[key] = make_provider(spec, base_dir)
        return provider

    def limiter(self, provider: Provider, concurrency: int) -> RequestLimiter:
        """The request limiter shared by every call to ``provider`` on this event loop;
        ``concurrency`` applies when it is made, unless the engine has its own."""
        loop = asyncio.get_running_loop()
        per_loop = self._limiters.setdefault(loop, {})
        entry = per_loop.get(id(provider))
        if entry is None or entry[0] is not provider:
            limiter = RequestLimiter(self.concurrency or concurrency, rpm=self.rpm, tpm=self.tpm)
            entry = per_loop[id(provider)] = (provider, limiter)
        return entry[1]

    async def aclose(self) -> None:
        """Close the providers this engine made (a given provider is the caller's)."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- runs ---------------------------------------------------------------------------

    def start(
        self,
        workflow: Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        inputs_from_cli: bool = False,
        run_id: str | None = None,
        resume: str | None = None,
        outer_budget: Budget | None = None,
        tracing: Tracing | None = None,
    ) -> Run:
        """A run of ``workflow`` ready to ``execute`` (inside an event loop).

        ``resume`` names an earlier run in the engine's store: its finished steps whose
        request is unchanged are reused at $0, and its inputs are used where none are
        given. ``outer_budget`` is a budget the run shares with others (a batch's);
        ``tracing`` traces the run elsewhere than the engine's tracing does (a batch row's)."""
        Plan.of(workflow)  # static errors are refused before anything runs
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
        resolved = resolve_inputs(workflow.spec, inputs or {}, from_cli=inputs_from_cli)
        provider = self.provider_for(workflow.spec.provider, workflow.base_dir)
        settings = RunSettings(
            provider=provider,
            limiter=self.limiter(provider, workflow.spec.provider.concurrency),
            model=self.model,
            max_cost_usd=self.max_cost_usd,
            on_event=self.on_event,
            store=self.store,
            cache=self.cache,
            tracing=tracing or self.tracing,
        )
        return Run(
            workflow,
            resolved,
            run_id or new_run_id(),
            settings,
            previous=previous,
            outer_budget=outer_budget,
            resumed_from=resume,
        )

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
        run = self.start(
            _as_workflow(workflow),
            inputs,
            inputs_from_cli=inputs_from_cli,
            run_id=run_id,
            resume=resume,
        )
        return run.outcome(await run.execute())

    def run_sync(
        self,
        workflow: Workflow | WorkflowSpec | str | Path,
        inputs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> RunResult:
        """``run`` for code that is not async. Its event loop ends with the call, so the
        providers' connections (which belong to that loop) are closed before it returns."""

        async def once() -> RunResult:
            try:
                return await self.run(workflow, inputs, **kwargs)
            finally:
                await self.aclose()

        return asyncio.run(once())

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
        wf = _as_workflow(workflow)
        Plan.of(wf)  # static errors before anything runs
        batch = self.tracing.start_batch(wf.spec.name)

        def start(row: DataRow, shared: Budget) -> Run:
            return self.start(
                wf,
                row.inputs,
                inputs_from_cli=row.from_text,
                outer_budget=shared,
                tracing=batch.row(row.number),
            )

        rows_run = run_rows(
            start,
            rows,
            concurrency=concurrency or self.concurrency or wf.spec.provider.concurrency,
            max_cost_usd=None if max_cost_usd is None else Decimal(str(max_cost_usd)),
            skip=skip,
            inputs_from_cli=inputs_from_cli,
        )
        return _traced(rows_run, batch) if self.tracing.enabled else rows_run


async def _traced(
    rows: AsyncIterator[BatchRowResult], batch: BatchTrace
) -> AsyncIterator[BatchRowResult]:
    """A batch's results as they come, each counted in the batch's span, which ends
    with the batch."""
    try:
        async for row in rows:
            batch.row_done(row.status == "ok", row.usage, row.cost_usd)
            yield row
    finally:
        close = getattr(rows, "aclose", None)
        try:
            if close is not None:  # stopped early: the batch's workers stop first
                await close()
        finally:
            batch.end()


def _as_workflow(workflow: Workflow | WorkflowSpec | str | Path) -> Workflow:
    if isinstance(workflow, Workflow):
        return workflow
    if isinstance(workflow, WorkflowSpec):
        return Workflow(spec=workflow)
    return load_workflow(workflow)
