"""The engine: the public API that runs workflows (``Engine``).

An engine holds what its runs share, the way an HTTP client holds connections: one
provider (SDK client, connection pool) per provider configuration, made on first use and
reused by every run and batch; one request limiter per account (base URL and key), which
paces each model family to the account's rate limits, so concurrent runs respect
``provider.concurrency`` and the limits together; the run store, the response cache, a
cost limit.
Each run (``flowgpt.engine.run``) schedules its steps, renders prompts, calls the
provider, validates and repairs replies, and accounts for every token and dollar.

There is one async core (``Engine.run``); ``Engine.run_sync`` wraps it.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Hashable,
    Iterable,
    Mapping,
)
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from flowgpt.accounting.budget import Budget
from flowgpt.accounting.prices import is_local_url
from flowgpt.engine.batch import run_rows
from flowgpt.engine.data import BatchRowResult, DataRow
from flowgpt.engine.events import EngineEvent
from flowgpt.engine.plan import Plan
from flowgpt.engine.run import Run, RunSettings
from flowgpt.errors import SpecError
from flowgpt.money import usd_limit
from flowgpt.providers.base import Provider
from flowgpt.providers.factory import batch_api_of, make_provider
from flowgpt.providers.limiter import RequestLimiter
from flowgpt.providers.rate_limits import RateLimitHold, RateLimitStats
from flowgpt.results import RunResult
from flowgpt.spec.inputs import resolve_inputs
from flowgpt.spec.loader import load_workflow
from flowgpt.spec.models import ProviderSpec, WorkflowSpec
from flowgpt.spec.urls import base_url_problem
from flowgpt.spec.workflow import Workflow
from flowgpt.store.run_store import RunStore, new_run_id
from flowgpt.tracing.base import BatchTrace, Tracing
from flowgpt.tracing.setup import make_tracing

if TYPE_CHECKING:
    # The Batch API runner is loaded by the calls that use it, not by every run.
    from flowgpt.engine.batch_api import BatchAPIRun, BatchAPIStatus
    from flowgpt.providers.batches import BatchInfo

__all__ = ["Engine"]

# Batch API rows wait for batches, not for a place in flight: their limiter never holds one.
_NO_LIMIT = 2**31


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
        self.max_cost_usd = usd_limit(max_cost_usd)
        self.model = model  # overrides every step's model
        self.on_event = on_event
        # Spans and metrics of every run (NO_TRACING, a no-op, when tracing is off).
        self.tracing: Tracing = make_tracing(
            tracing, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        # The providers this engine made, one per configuration (see provider_for).
        self._providers: dict[tuple[str, str], Provider] = {}
        # One request limiter per account and event loop (asyncio primitives belong to a
        # loop), shared by every run this engine makes at once.
        self._limiters: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[Hashable, tuple[Provider, RequestLimiter]]
        ] = weakref.WeakKeyDictionary()
        # 429s waited out, and the seconds requests were held for them, by all its runs.
        self.rate_limits = RateLimitStats()

    # -- what runs share ----------------------------------------------------------------

    def provider_for(self, spec: ProviderSpec, base_dir: Path | None = None) -> Provider:
        """The provider for a workflow's ``provider:`` (the engine's own when it was given
        one): made on first use, then reused by every run with the same configuration.
        ``base_dir`` is where a relative ``model_path`` starts (the workflow's folder)."""
        if self.provider is not None:
            return self.provider
        return self._provider_by_key((_configuration(spec), str(base_dir or "")), spec, base_dir)

    def _provider_of(self, workflow: Workflow) -> Provider:
        """``provider_for`` a workflow's own ``provider:``, its configuration written out
        once per workflow (kept with it, the spec being frozen), not for every run."""
        if self.provider is not None:
            return self.provider
        spec, base_dir = workflow.spec.provider, workflow.base_dir
        configuration = workflow.cache.get("provider_configuration")
        if configuration is None:
            configuration = workflow.cache["provider_configuration"] = _configuration(spec)
        return self._provider_by_key((configuration, str(base_dir)), spec, base_dir)

    def _provider_by_key(
        self, key: tuple[str, str], spec: ProviderSpec, base_dir: Path | None
    ) -> Provider:
        provider = self._providers.get(key)
        if provider is None:
            provider = self._providers[key] = make_provider(spec, base_dir)
        return provider

    def limiter(
        self, provider: Provider, concurrency: int, account: Hashable | None = None
    ) -> RequestLimiter:
        """The request limiter shared by every call on this event loop to one account
        (``account``, e.g. the base URL and the key's variable; None: ``provider``'s own).
        It keeps each model family's rate limits; ``concurrency`` applies when it is made,
        unless the engine has its own."""
        loop = asyncio.get_running_loop()
        per_loop = self._limiters.setdefault(loop, {})
        key: Hashable = ("provider", id(provider)) if account is None else ("account", account)
        entry = per_loop.get(key)
        if entry is None or (account is None and entry[0] is not provider):
            limiter = RequestLimiter(
                self.concurrency or concurrency,
                rpm=self.rpm,
                tpm=self.tpm,
                stats=self.rate_limits,
                on_hold=self._on_hold,
            )
            entry = per_loop[key] = (provider, limiter)
        return entry[1]

    def _on_hold(self, hold: RateLimitHold) -> None:
        if self.on_event is not None:
            self.on_event(EngineEvent("rate_limited", message=str(hold), hold=hold))

    def rate_limit_holds(self) -> list[RateLimitHold]:
        """What holds this engine's requests back now: a 429 being waited out, or pacing
        below a rate limit, per model family (empty when nothing does)."""
        return [
            hold
            for per_loop in list(self._limiters.values())
            for _, limiter in list(per_loop.values())
            for hold in limiter.holds()
        ]

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
        batch: str | None = None,
        batch_row: int | None = None,
        resume_inputs: bool = True,
        tracing: Tracing | None = None,
    ) -> Run:
        """A run of ``workflow`` ready to ``execute`` (inside an event loop).

        ``resume`` names an earlier run in the engine's store: its finished steps whose
        request is unchanged are reused at $0, and (unless ``resume_inputs`` is false) its
        inputs are used where none are given. ``outer_budget`` is a budget the run shares
        with others (a batch's); ``batch`` and ``batch_row`` name the batch and row the
        run is, for the store; ``tracing`` traces the run elsewhere than the engine's
        tracing does (a batch row's)."""
        Plan.of(workflow)  # static errors are refused before anything runs
        previous = None
        if resume is not None:
            if self.store is None:
                raise SpecError(
                    "resuming needs the run store",
                    hint="give the engine a store: Engine(store=RunStore())",
                    code="no_store",
                )
            resume = self.store.resolve_run_id(resume)
            previous = self.store.finished_steps(resume)
            if resume_inputs:
                # The original inputs, with any given now taken instead.
                inputs = {**self.store.load_run(resume).inputs, **(inputs or {})}
        resolved = resolve_inputs(workflow.spec, inputs or {}, from_cli=inputs_from_cli)
        spec = workflow.spec.provider
        provider = self._provider_of(workflow)
        # Where an HTTP provider sends (the workflow's URL was checked when it was loaded;
        # OPENAI_BASE_URL is checked here).
        where = provider.resolved_base_url()
        if where is not None:
            problem = _url_problem(where)
            if problem is not None:
                raise SpecError(
                    f"the API base URL cannot be used: {problem}",
                    hint="check OPENAI_BASE_URL (or provider.base_url); write it like "
                    "https://host:8000/v1",
                )
        # Rate limits belong to the account: configurations that differ only in, say,
        # timeout_s share one limiter.
        account = None if self.provider is not None else (where, spec.api_key_env)
        settings = RunSettings(
            provider=provider,
            limiter=self.limiter(provider, spec.concurrency, account),
            model=self.model,
            max_cost_usd=self.max_cost_usd,
            on_event=self.on_event,
            store=self.store,
            cache=self.cache,
            batch=batch,
            batch_row=batch_row,
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
        batch: str | None = None,
    ) -> AsyncIterator[BatchRowResult]:
        """Run a workflow once per row of inputs; an async iterator of each row's result
        (a ``BatchRowResult``), in the order rows finish.

        Rows run ``concurrency`` at a time (default: the engine's, else the workflow's
        ``provider.concurrency``) under one request limiter for the whole batch.
        ``max_cost_usd`` is one budget shared by every row: once it refuses a call, no new
        row is started. A failed row does not stop the others. ``skip`` names rows (by
        1-based number) to leave out, e.g. the ones an earlier run already finished.
        ``batch`` names the batch in the run store (``flowgpt batch`` uses its output
        file): each row's run is recorded as that batch's row, and a row run again (after
        a crash, a failure or a budget stop) resumes from its latest run there, so no step
        it finished is paid again.
        """
        wf = _as_workflow(workflow)
        Plan.of(wf)  # static errors before anything runs
        store = self.store
        batch_span = self.tracing.start_batch(wf.spec.name)

        def start(row: DataRow, shared: Budget) -> Run:
            earlier = None
            if store is not None and batch is not None:
                earlier = store.latest_batch_run(batch, row.number, wf.spec.name)
            return self.start(
                wf,
                row.inputs,
                inputs_from_cli=row.from_text,
                outer_budget=shared,
                batch=batch,
                batch_row=row.number,
                resume=earlier,
                resume_inputs=False,  # a row's inputs are its row's, as the data says now
                tracing=batch_span.row(row.number),
            )

        rows_run = run_rows(
            start,
            rows,
            concurrency=concurrency or self.concurrency or wf.spec.provider.concurrency,
            max_cost_usd=usd_limit(max_cost_usd),
            skip=skip,
            inputs_from_cli=inputs_from_cli,
        )
        return _traced(rows_run, batch_span) if self.tracing.enabled else rows_run

    def run_batch_api(
        self,
        workflow: Workflow | WorkflowSpec | str | Path,
        rows: Iterable[Mapping[str, Any] | DataRow] | AsyncIterable[Mapping[str, Any] | DataRow],
        *,
        job: str,
        batch: str | None = None,
        wait: bool = True,
        max_cost_usd: Decimal | float | str | None = None,
        skip: Collection[int] = (),
        inputs_from_cli: bool = False,
        poll_interval_s: float | None = None,
        on_status: Callable[[BatchAPIStatus], None] | None = None,
        rows_at_once: int | None = None,
    ) -> BatchAPIRun:
        """Run a workflow once per row through the provider's Batch API (OpenAI's: half
        the price, answers within 24 h), stage by stage; ``async for`` the result gives
        each row's ``BatchRowResult`` as it finishes.

        ``job`` names the job in the engine's run store (which it needs): the same job
        run again continues where it stopped, without sending or paying for a request
        twice. Each row's run is recorded in the store as a row of ``batch`` (default: the
        job's name; ``flowgpt batch`` uses its output file), and a row run again goes on
        from its latest run there, as ``run_batch``'s rows do. ``wait=False`` submits the
        current stage and returns. ``max_cost_usd`` is one budget for every row, at Batch
        API rates: a stage whose worst case could pass it is not submitted.
        ``poll_interval_s``: how often to look at batches in flight (default: after 2 s,
        then 1.5 times longer each time, up to a minute).
        ``rows_at_once`` bounds memory: rows beyond it start as others finish (in later
        rounds, so with more waiting); default 50,000 (``batch_api.ROWS_AT_ONCE``).
        """
        from flowgpt.engine.batch_api import BatchAPIRun

        wf = _as_workflow(workflow)
        Plan.of(wf)  # static errors before anything runs
        if self.store is None:
            raise SpecError(
                "the Batch API needs the run store: it records every batch and answer",
                hint="drop --no-store (or give Engine a RunStore) to use --batch-api",
            )
        provider = self.provider_for(wf.spec.provider, wf.base_dir)
        api = batch_api_of(provider)
        limiter = RequestLimiter(_NO_LIMIT)
        batch_span = self.tracing.start_batch(wf.spec.name)

        store, rows_of = self.store, batch or job

        def start(row: DataRow, shared: Budget, via: Provider) -> Run:
            settings = RunSettings(
                provider=via,
                limiter=limiter,
                model=self.model,
                max_cost_usd=self.max_cost_usd,
                on_event=self.on_event,
                batch_rates=True,
                store=store,
                batch=rows_of,
                batch_row=row.number,
                tracing=batch_span.row(row.number),
            )
            inputs = resolve_inputs(wf.spec, row.inputs, from_cli=row.from_text)
            # A row stopped earlier (a crash, a failure, a budget stop) goes on from its
            # latest run, as run_batch's rows do: its finished steps are reused at $0
            # (and not counted twice in the store), the rest asked through batches.
            earlier = store.latest_batch_run(rows_of, row.number, wf.spec.name)
            previous = None if earlier is None else store.finished_steps(earlier)
            return Run(
                wf,
                inputs,
                new_run_id(),
                settings,
                previous=previous,
                outer_budget=shared,
                resumed_from=earlier,
            )

        return BatchAPIRun(
            workflow=wf,
            rows=rows,
            start=start,
            provider=provider,
            api=api,
            store_path=self.store.path,
            job=job,
            wait=wait,
            poll_interval_s=poll_interval_s,
            max_cost_usd=usd_limit(max_cost_usd),
            skip=skip,
            inputs_from_cli=inputs_from_cli,
            on_status=on_status,
            rows_at_once=rows_at_once,
            trace=batch_span,
        )

    async def cancel_batch_api(
        self, workflow: Workflow | WorkflowSpec | str | Path, *, job: str
    ) -> list[BatchInfo]:
        """Cancel the batches in flight of a ``run_batch_api`` job; what each is now.
        Answers received before the cancel are kept (and paid); running the job again
        continues it, sending the cancelled requests again."""
        from flowgpt.engine.batch_api import cancel_batches

        wf = _as_workflow(workflow)
        if self.store is None:
            raise SpecError("cancelling Batch API batches needs the run store")
        api = batch_api_of(self.provider_for(wf.spec.provider, wf.base_dir))
        return await cancel_batches(api, self.store.path, job)


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


def _configuration(spec: ProviderSpec) -> str:
    """What makes providers differ (a provider per configuration and folder): not
    `concurrency`, which is the limiter's business."""
    return spec.model_dump_json(exclude={"concurrency"})


@functools.lru_cache(maxsize=64)
def _url_problem(where: str) -> str | None:
    """What makes a provider's base URL unusable (None for the in-process local model's
    "local:..."); the same few URLs are asked about for every run."""
    return None if is_local_url(where) else base_url_problem(where)


def _as_workflow(workflow: Workflow | WorkflowSpec | str | Path) -> Workflow:
    if isinstance(workflow, Workflow):
        return workflow
    if isinstance(workflow, WorkflowSpec):
        return Workflow(spec=workflow)
    return load_workflow(workflow)
