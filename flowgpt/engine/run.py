"""One run of one workflow: its steps scheduled as soon as what they need has finished,
each step's calls made within the request limit (the context window and the budget checked
before paying), replies validated and repaired, results recorded in the store the moment
they finish (so ``--resume`` and the response cache work), and the workflow's outputs.

A run takes what it shares with other runs from its engine as one small object,
``RunSettings``; the request each step sends is built by ``flowgpt.engine.requests``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, cast

from flowgpt import templating
from flowgpt.accounting.budget import Budget, Reservation
from flowgpt.accounting.prices import (
    ModelPrice,
    cost_of,
    is_local_url,
    is_openai_url,
    resolve_price,
    worst_case_cost,
)
from flowgpt.accounting.tokens import context_window, count_text, count_tokens, truncate_text
from flowgpt.engine.calls import CALL_SITE, CallSite
from flowgpt.engine.events import EngineEvent, EventKind
from flowgpt.engine.plan import Plan
from flowgpt.engine.requests import (
    asks_for_the_word_json,
    build_messages,
    downgrade_format,
    refused_format,
    step_request,
)
from flowgpt.errors import (
    BadRequestError,
    BudgetExceededError,
    ContextWindowError,
    FlowgptError,
    OutputValidationError,
    TemplateError,
)
from flowgpt.money import format_usd
from flowgpt.providers.base import ChatRequest, ChatResponse, Message, Provider, endpoint_of
from flowgpt.providers.limiter import RequestLimiter
from flowgpt.results import AttemptResult, RunResult, StepResult
from flowgpt.spec.models import StepSpec
from flowgpt.spec.output import FEEDBACK_MAX_TOKENS, repair_message, validate_reply
from flowgpt.spec.workflow import Workflow
from flowgpt.store.fingerprint import request_fingerprint
from flowgpt.store.run_store import RunStore
from flowgpt.tracing.base import NO_TRACING, RunTrace, StepTrace, Tracing

__all__ = ["Run", "RunSettings"]

_FINISHED = frozenset({"ok", "failed", "skipped", "reused", "cached"})
# step id -> (the request fingerprint it had, its result): the run being resumed
Previous = Mapping[str, tuple[str | None, StepResult]]
_NO_PREVIOUS: Previous = MappingProxyType({})


@dataclass(frozen=True)
class RunSettings:
    """What a run takes from the engine that starts it."""

    provider: Provider
    limiter: RequestLimiter  # shared by every run sending to the same provider
    model: str | None = None  # overrides every step's model
    max_cost_usd: Decimal | None = None  # on top of the workflow's `budget:` (the lower wins)
    on_event: Callable[[EngineEvent], None] | None = None
    store: RunStore | None = None
    cache: bool = False  # answer identical deterministic requests from the store
    batch: str | None = None  # the batch this run is a row of (recorded with the run)
    batch_row: int | None = None
    batch_rates: bool = False  # priced at Batch API rates (the calls go through batches)
    tracing: Tracing = NO_TRACING  # spans of the run, its steps and requests


class Run:
    """One run of one workflow: ``Engine`` makes it, callers ``execute`` it, then take its
    ``outcome``."""

    def __init__(
        self,
        workflow: Workflow,
        inputs: dict[str, Any],
        run_id: str,
        settings: RunSettings,
        *,
        previous: Previous | None = None,
        outer_budget: Budget | None = None,
        resumed_from: str | None = None,
    ) -> None:
        self.workflow = workflow
        self.spec = workflow.spec
        self.inputs = inputs
        self.settings = settings
        self.provider = settings.provider
        self.limiter = settings.limiter
        self.store = settings.store
        self.plan = Plan.of(workflow)
        limits = self.spec.budget
        max_cost = limits.max_cost_usd if limits else None
        if settings.max_cost_usd is not None:
            max_cost = (
                settings.max_cost_usd if max_cost is None else min(max_cost, settings.max_cost_usd)
            )
        self.budget = Budget(max_cost, limits.max_tokens if limits else None, outer=outer_budget)
        # Prices follow where requests really go: OPENAI_BASE_URL pointing at a local
        # server makes "gpt-4o" unpriced, not billed at OpenAI's rate.
        self.price_base_url = self.provider.resolved_base_url() or self.spec.provider.price_base_url
        self.prices: dict[str, ModelPrice | None] = {}  # model -> its price (price_of)
        self.results: dict[str, StepResult] = {
            s.id: StepResult(id=s.id, model=self._model(s)) for s in self.spec.steps
        }
        # What templates see as `steps.<id>`, filled as each step finishes.
        self.views: dict[str, dict[str, Any]] = {}
        self.previous: Previous = previous or _NO_PREVIOUS
        self.resumed_from = resumed_from  # the run whose finished steps are reused
        self.fingerprints: dict[str, str] = {}
        # response_format types the endpoint refused (then not sent again this run).
        self.refused_formats: frozenset[str] = frozenset()
        self.failure: FlowgptError | None = None
        self.trace: RunTrace = NO_TRACING  # the run's span, from execute() on
        self.tasks: list[asyncio.Future[None]] = []  # steps running in tasks of their own
        self.result = RunResult(
            workflow=self.spec.name, inputs=inputs, steps=self.results, run_id=run_id
        )

    # -- helpers -----------------------------------------------------------------------

    def emit(self, kind: EventKind, step: str | None = None, **kw: Any) -> None:
        if self.settings.on_event is not None:
            self.settings.on_event(EngineEvent(kind, step, **kw))

    def _model(self, step: StepSpec) -> str | None:
        return self.settings.model or self.plan.steps[step.id].model

    def context(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        ctx: dict[str, Any] = {"inputs": self.inputs, "steps": dict(self.views)}
        if extra:
            ctx.update(extra)
        return ctx

    def messages_for(self, step: StepSpec, ctx: dict[str, Any]) -> list[Message]:
        history = self.results[step.history] if step.history is not None else None
        return build_messages(self.plan.steps[step.id], ctx, history)

    def request_for(self, step: StepSpec, messages: list[Message]) -> ChatRequest:
        return step_request(
            self.plan.steps[step.id], messages, self._model(step), self.refused_formats
        )

    def format_fallback(
        self, step: StepSpec, request: ChatRequest, error: BadRequestError
    ) -> ChatRequest | None:
        """When an endpoint refuses structured outputs, ask for less (see
        ``downgrade_format``); None when the error is about something else."""
        if asks_for_the_word_json(error):
            raise BadRequestError(
                f"step `{step.id}`: the API refused JSON mode because no message says "
                '"JSON" (OpenAI requires the word with response_format json_object)',
                hint='say it in the step\'s prompt or system prompt, e.g. "Reply with JSON.", '
                "or give `output:` a schema (structured outputs need no such word)",
                status=error.status,
                retries=error.retries,
            ) from None
        kind = refused_format(request, error)
        if kind is None:
            return None
        self.refused_formats = self.refused_formats | {kind}
        downgraded = downgrade_format(request)
        now = (downgraded.response_format or {}).get("type", "instructions in the prompt")
        self.emit(
            "warning",
            step.id,
            message=f"step `{step.id}`: the endpoint does not accept response_format "
            f"{kind}; asking with {now} instead",
        )
        return downgraded

    # -- before and after a call: the context window, the budget, prices ---------------

    def preflight(self, step: StepSpec, request: ChatRequest) -> Reservation | None:
        """Before paying: refuse a call that cannot fit the model's context window, and
        reserve its worst case in the budget (None when the run has no budget)."""
        override = self.spec.pricing.get(request.model)
        window = context_window(request.model, override.context_window if override else None)
        max_tokens = request.max_tokens
        prompt_tokens: int | None = None
        if window is not None:
            # A token is at least one byte and a character at most four, so when even
            # four bytes per character fit, the exact count (a tokenizer pass) is not needed.
            upper = 3 + sum(
                4 + 4 * (len(m["content"]) + len(m["role"]) + len(m.get("name", "")))
                for m in request.messages
            )
            if upper + (max_tokens or 0) > window:
                prompt_tokens = count_tokens(request.messages, request.model)
                needed = prompt_tokens + (max_tokens or 0)
                if needed > window:
                    raise ContextWindowError(
                        f"step `{step.id}`: {prompt_tokens:,} prompt tokens + max_tokens "
                        f"{max_tokens or 0:,} = {needed:,} do not fit {request.model}'s "
                        f"context window of {window:,} tokens",
                        hint="shorten the prompt or the inputs, lower max_tokens, "
                        "or use a model with a larger window",
                        step=step.id,
                    )
        if not self.budget.active:
            return None
        if prompt_tokens is None:
            prompt_tokens = count_tokens(request.messages, request.model)
        if request.response_format is not None:
            # Structured-output schemas are billed as prompt tokens too: bound them.
            prompt_tokens += count_text(json.dumps(request.response_format), request.model)
        if max_tokens is None:
            if window is None:
                raise BudgetExceededError(
                    f"step `{step.id}`: without max_tokens the worst case of a call to "
                    f"{request.model} is unknown, so the budget cannot be enforced",
                    hint="set `max_tokens` in `defaults` or on the step",
                    step=step.id,
                )
            max_tokens = max(window - prompt_tokens, 0)
        price = self.price_of(request.model)
        return self.budget.reserve(
            step.id,
            request.model,
            prompt_tokens + max_tokens,
            worst_case_cost(prompt_tokens, max_tokens, price),
        )

    def cost(self, request: ChatRequest, response: ChatResponse) -> Decimal | None:
        return cost_of(
            response.usage,
            request.model,
            base_url=self.price_base_url,
            overrides=self.spec.pricing,
            prices=self.spec.provider.prices,
            batch=self.settings.batch_rates,
        )

    # -- the store: resume and the response cache ---------------------------------------

    def fingerprint(self, request: ChatRequest) -> str:
        return request_fingerprint(
            request, base_url=self.price_base_url, provider=self.provider.name
        )

    def price_of(self, model: str | None) -> ModelPrice | None:
        if model is None:
            return None
        if model not in self.prices:  # asked for by every step: looked up once a run
            self.prices[model] = resolve_price(
                model,
                base_url=self.price_base_url,
                overrides=self.spec.pricing,
                prices=self.spec.provider.prices,
                batch=self.settings.batch_rates,
            )
        return self.prices[model]

    def price_note(self) -> str | None:
        """Says where prices came from when they are not the endpoint's own: OpenAI's list
        prices for requests that went to another host (a relay, a proxy, a local server)."""
        endpoint = _relay(self.provider.resolved_base_url())
        if endpoint is None:
            return None
        listed = any(
            (price := self.price_of(r.model)) is not None and price.source == "genai-prices"
            for r in self.results.values()
            if r.attempts or r.items
        )
        if not listed:
            return None
        return (
            f"prices are OpenAI's list prices; requests went to {endpoint} "
            "(set provider.prices: pricing to use only this workflow's pricing:)"
        )

    def reuse(self, step: StepSpec, result: StepResult) -> bool:
        """Take a step's result from the run being resumed when its request is unchanged."""
        earlier = self.previous.get(step.id)
        if earlier is None or earlier[0] != self.fingerprints.get(step.id):
            return False
        old = earlier[1]
        if not validate_reply(old.text or "", step.output, old.finish_reason).ok:
            return False  # the step's checks changed since, and the old reply fails them
        result.status = "reused"
        result.output, result.text, result.model = old.output, old.text, old.model
        result.exact_tokens = old.exact_tokens
        # What it cost the first time is what reusing it saved.
        result.saved_usd = old.saved_usd if old.status in ("reused", "cached") else old.cost_usd
        return True

    def use_cache(self, step: StepSpec) -> bool:
        if self.store is None:
            return False
        asked = step.cache if step.cache is not None else self.spec.defaults.cache
        if asked is not None:
            return asked
        # --cache alone caches only deterministic steps: a step sampled with temperature > 0
        # is meant to vary, so it is cached only when it asks for it.
        temperature = step.setting("temperature", self.spec.defaults)
        return self.settings.cache and (temperature is None or temperature == 0)

    # -- one step ----------------------------------------------------------------------

    async def attempt_loop(
        self, step: StepSpec, messages: list[Message], result: StepResult, trace: StepTrace
    ) -> None:
        spec = step.output
        retries = spec.retries if spec is not None else 0
        conversation = messages  # never changed in place: a repair builds a new list
        failures: list[str] = []
        for _ in range(retries + 1):
            request = self.request_for(step, conversation)
            cache_key = self.fingerprint(request) if self.use_cache(step) else None
            hit = self.store.cache_get(cache_key) if cache_key and self.store else None
            while hit is None:
                reservation = self.preflight(step, request)
                try:
                    # The call, inline (every request passes here: one coroutine fewer).
                    async with self.limiter.slot(request):
                        with trace.chat(request) as call:
                            started = time.perf_counter()
                            # Which call this is, for providers that label what they send.
                            site = CALL_SITE.set(CallSite(result.id, len(result.attempts)))
                            try:
                                response = await self.provider.complete(request)
                            finally:
                                CALL_SITE.reset(site)
                            latency = time.perf_counter() - started
                            cost = self.cost(request, response)
                            call.answered(response, cost)
                    break
                except BadRequestError as exc:
                    if reservation is not None:
                        self.budget.settle(reservation, 0, Decimal(0))
                    fallback = self.format_fallback(step, request, exc)
                    if fallback is None:
                        raise
                    request = fallback
                except BaseException:
                    if reservation is not None:
                        # A call that failed was not billed.
                        self.budget.settle(reservation, 0, Decimal(0))
                    raise
            if hit is not None:
                response, latency, cost = hit, 0.0, Decimal(0)
                worth = self.cost(request, hit)
                if worth is not None:
                    result.saved_usd = (result.saved_usd or Decimal(0)) + worth
                trace.cache_hit()
            else:
                if reservation is not None:
                    self.budget.settle(reservation, response.usage.total_tokens, cost)
            verdict = validate_reply(response.text, spec, response.finish_reason)
            if verdict.ok and cache_key and hit is None and self.store is not None:
                self.store.cache_put(cache_key, response)
            result.attempts.append(
                AttemptResult(
                    text=response.text,
                    usage=response.usage,
                    cost_usd=cost,
                    latency_s=latency,
                    finish_reason=response.finish_reason,
                    retries=response.retries,
                    failures=verdict.failures,
                    cached=hit is not None,
                )
            )
            result.text = response.text
            if self.provider.model_is_label and response.model:
                # The step's `model` only labels the call: show the model that answered.
                result.model = response.model
            if verdict.ok:
                result.output = verdict.output
                if response.finish_reason == "length":
                    self.emit(
                        "warning",
                        step.id,
                        message=f"step `{step.id}`: the reply was cut off at max_tokens "
                        f"({request.max_tokens}); raise max_tokens for a complete answer",
                    )
                return
            failures = verdict.failures
            trace.rejected(failures)
            if response.finish_reason == "length" and spec is not None and spec.is_json:
                # JSON cut off at max_tokens is incomplete, and asking again with the same
                # limit is cut off again: a repair cannot help (a text reply that breaks
                # its checks may well come back shorter, so it is re-asked).
                raise OutputValidationError(
                    f"step `{step.id}`: the reply was cut off at max_tokens "
                    f"({request.max_tokens}) and failed validation (cost "
                    f"{format_usd(result.cost_usd)}):",
                    step=step.id,
                    failures=failures,
                    last_output=result.text or "",
                    attempts=len(result.attempts),
                    usage=result.usage,
                    cost_usd=result.cost_usd,
                    hint=f"raise max_tokens (now {request.max_tokens}) on the step or in "
                    "`defaults`, or ask for a shorter reply",
                )
            self.emit("attempt_rejected", step.id, message="; ".join(failures))
            conversation = [
                *conversation,
                Message(role="assistant", content=response.text),
                Message(
                    role="user",
                    # Capped in tokens, so a retry's prompt has a known bound (estimates).
                    content=truncate_text(
                        repair_message(failures, spec), FEEDBACK_MAX_TOKENS, request.model
                    ),
                ),
            ]
        attempts = len(result.attempts)
        raise OutputValidationError(
            f"step `{step.id}`: the reply failed validation on all {attempts} attempt"
            f"{'s' * (attempts != 1)} (cost {format_usd(result.cost_usd)}):",
            step=step.id,
            failures=failures,
            last_output=result.text or "",
            attempts=attempts,
            usage=result.usage,
            cost_usd=result.cost_usd,
            hint="loosen the schema or checks, raise `output.retries`, "
            "or make the prompt say exactly what shape is wanted",
        )

    async def run_step(self, step: StepSpec) -> None:
        result = self.results[step.id]
        trace = self.trace.step(step.id)
        try:
            ctx = self.context()
            if step.when is not None and not templating.evaluate(step.when, ctx, step=step.id):
                result.status = "skipped"
                self.emit("step_skipped", step.id, result=result)
                return
            self.emit("step_started", step.id)
            started = time.perf_counter()
            if step.for_each is not None:
                try:
                    await self.run_items(step, ctx, result, trace)
                finally:
                    result.latency_s = time.perf_counter() - started
                result.status = "ok"
                self.emit("step_finished", step.id, result=result)
                return
            messages = self.messages_for(step, ctx)
            # The request's own messages, not a copy (nothing changes them in place: a
            # repair or a format fallback builds a new list); a batch would otherwise hold
            # two of each for every row in flight.
            result.messages = cast("list[dict[str, Any]]", messages)
            if self.store is not None:
                self.fingerprints[step.id] = self.fingerprint(self.request_for(step, messages))
                if self.reuse(step, result):
                    self.emit("step_finished", step.id, result=result)
                    return
            try:
                await self.attempt_loop(step, messages, result, trace)
            finally:
                result.latency_s = time.perf_counter() - started
            cached = bool(result.attempts) and all(a.cached for a in result.attempts)
            result.status = "cached" if cached else "ok"
            self.emit("step_finished", step.id, result=result)
        except FlowgptError as exc:
            result.status = "failed"
            result.error = exc.message
            if self.failure is None:
                self.failure = exc
            trace.failed(exc)
            self.emit("step_failed", step.id, result=result, message=exc.message)
        finally:
            trace.end(result)
            self.views[step.id] = result.template_view()
            # A step cut off by Ctrl-C in flight has no result to keep.
            if self.store is not None and result.status in _FINISHED:
                # Stored the moment it finishes: a crash after this cannot lose it.
                self.store.record_step(
                    self.result.run_id or "",
                    result,
                    fingerprint=self.fingerprints.get(step.id),
                    price=self.price_of(result.model),
                )

    async def run_items(
        self, step: StepSpec, ctx: dict[str, Any], result: StepResult, trace: StepTrace
    ) -> None:
        """A for_each step: one call per item, all at once within the request limit; the
        output is the list of the items' outputs, in item order."""
        items = templating.evaluate(step.for_each or "", ctx, step=step.id, where="for_each")
        if items is None:
            raise TemplateError(
                f"step `{step.id}`: `for_each` gave null (a skipped step's output?)",
                hint="guard the step with `when:` so it only runs when the list exists",
                step=step.id,
            )
        if not isinstance(items, (list, tuple)):
            raise TemplateError(
                f"step `{step.id}`: `for_each` must give a list, not {type(items).__name__}",
                hint="point it at a list, e.g. `for_each: steps.outline.output.sections`",
                step=step.id,
            )
        name = step.as_ or "item"
        result.items = [
            StepResult(id=f"{step.id}[{i}]", model=result.model) for i in range(len(items))
        ]

        async def one(index: int, sub: StepResult, item: Any) -> None:
            messages = self.messages_for(step, {**ctx, name: item})
            sub.messages = [dict(m) for m in messages]
            item_trace = trace.item(index)
            started = time.perf_counter()
            try:
                await self.attempt_loop(step, messages, sub, item_trace)
                sub.status = "ok"
            except FlowgptError as exc:
                sub.status, sub.error = "failed", exc.message
                item_trace.failed(exc)
                raise
            finally:
                sub.latency_s = time.perf_counter() - started
                item_trace.end(sub)

        outcomes = await asyncio.gather(
            *(
                one(i, sub, item)
                for i, (sub, item) in enumerate(zip(result.items, items, strict=True))
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # the first failing item, after every item has finished
        result.output = [sub.output for sub in result.items]

    async def run_chain(self, step_id: str, waiting: dict[str, set[str]]) -> None:
        """Run a step, then whatever it unblocks: the first such step in this same task
        (a linear chain never leaves its task), the others in new tasks."""
        current: str | None = step_id
        while current is not None:
            await self.run_step(self.plan.steps[current].step)
            ready = []
            for other in self.plan.steps[current].dependents:
                needs = waiting[other]
                needs.discard(current)
                if not needs:
                    ready.append(other)
            if self.failure is not None:
                return  # a step failed: nothing new is started
            current = ready[0] if ready else None
            for other in ready[1:]:
                self.tasks.append(asyncio.ensure_future(self.run_chain(other, waiting)))

    def compute_outputs(self) -> dict[str, Any]:
        ctx = self.context()
        outputs: dict[str, Any] = {}
        for name, source, expression in self.plan.outputs:
            if expression is not None:
                # `{{ steps.x.output.n }}` keeps its type (a number stays a number).
                outputs[name] = templating.evaluate(expression, ctx, step=f"outputs.{name}")
            else:
                outputs[name] = templating.render(source, ctx, step=f"outputs.{name}")
        return outputs

    async def execute(self) -> RunResult:
        started = time.perf_counter()
        run_id = self.result.run_id or ""
        self.trace = self.settings.tracing.start_run(
            self.workflow,
            run_id,
            inputs=self.inputs.keys(),
            provider=self.provider.name,
            base_url=self.provider.resolved_base_url(),
            price_of=self.price_of,
            resumed_from=self.resumed_from,
        )
        if self.store is not None:
            self.store.start_run(
                run_id,
                workflow_name=self.spec.name,
                workflow_text=self.workflow.source,
                workflow_path=str(self.workflow.path) if self.workflow.path else None,
                inputs=self.inputs,
                steps=self.results.values(),
                resumed_from=self.resumed_from,
                provider=self.provider.name,
                endpoint=endpoint_of(self.provider.resolved_base_url()),
                batch=self.settings.batch,
                batch_row=self.settings.batch_row,
            )
        self.emit("run_started", message=run_id)
        # Every step runs as soon as the steps it needs have finished: the first root's
        # chain in this task, any other root's in a task of its own. (Inline rather than a
        # method: each coroutine level is crossed again whenever a request suspends.)
        waiting = {sid: set(p.deps) for sid, p in self.plan.steps.items()}
        roots = [sid for sid, needs in waiting.items() if not needs]
        self.tasks = [asyncio.ensure_future(self.run_chain(sid, waiting)) for sid in roots[1:]]
        try:
            try:
                if roots:
                    await self.run_chain(roots[0], waiting)
                while self.tasks:
                    await self.tasks.pop()
            finally:
                for task in self.tasks:
                    task.cancel()
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Ctrl-C: finished steps are already stored; mark the run so --resume can go on.
            self.result.status = "interrupted"
            self.result.error = "interrupted"
            self.result.latency_s = time.perf_counter() - started
            self.finish()
            raise
        if self.failure is None:
            try:
                self.result.outputs = self.compute_outputs()
            except FlowgptError as exc:
                self.failure = exc
        self.result.latency_s = time.perf_counter() - started
        self.result.price_note = self.price_note()
        if self.failure is not None:
            self.result.status = "failed"
            self.result.error = self.failure.message
        else:
            self.result.status = "ok"
        self.finish()
        self.emit("run_finished", message=self.result.status)
        return self.result

    def outcome(self, result: RunResult) -> RunResult:
        """The result of ``execute``; raises the run's failure (carrying it) if it failed."""
        if self.failure is not None:
            self.failure.result = result
            raise self.failure
        return result

    def finish(self) -> None:
        self.trace.end(self.result, self.failure)
        if self.store is None:
            return
        r = self.result
        self.store.finish_run(
            r.run_id or "",
            status=r.status,
            error=r.error,
            outputs=r.outputs,
            cost_usd=r.cost_usd,
            usage=r.usage,
            latency_s=r.latency_s,
        )


@functools.lru_cache(maxsize=64)
def _relay(base_url: str | None) -> str | None:
    """Where requests go when that is neither OpenAI nor the in-process model (a relay, a
    proxy, a local server): the endpoint to name under the cost table; else None. The same
    few URLs are asked about for every run."""
    endpoint = endpoint_of(base_url)
    if endpoint is None or is_openai_url(endpoint) or is_local_url(endpoint):
        return None
    return endpoint
