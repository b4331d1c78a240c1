"""The engine: schedules a workflow's steps, renders their prompts, calls the provider,
validates and repairs replies, and accounts for every token and dollar.

There is one async core (``Engine.run``); ``Engine.run_sync`` wraps it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
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
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

from flowgpt import templating
from flowgpt.analysis import check_runnable
from flowgpt.budget import Budget, Reservation
from flowgpt.errors import (
    BadRequestError,
    BudgetExceededError,
    ContextWindowError,
    FlowgptError,
    OutputValidationError,
    SpecError,
    TemplateError,
)
from flowgpt.graph import step_dependencies
from flowgpt.inputs import resolve_inputs
from flowgpt.pricing import ModelPrice, cost_of, format_usd, resolve_price, worst_case_cost
from flowgpt.providers.base import ChatRequest, ChatResponse, Message, Provider
from flowgpt.ratelimit import RequestLimiter
from flowgpt.results import AttemptResult, RunResult, StepResult
from flowgpt.spec import MODEL_SETTING_NAMES, StepSpec, WorkflowSpec
from flowgpt.tokens import context_window, count_text, count_tokens, truncate_text
from flowgpt.validation import (
    FEEDBACK_MAX_TOKENS,
    repair_message,
    response_format_for,
    validate_reply,
)
from flowgpt.workflow import Workflow

if TYPE_CHECKING:
    from flowgpt.batch import BatchRowResult, DataRow
    from flowgpt.store import RunStore

__all__ = ["Engine", "EngineEvent"]

EventKind = Literal[
    "run_started",
    "step_started",
    "step_finished",
    "step_skipped",
    "step_failed",
    "attempt_rejected",
    "warning",
    "run_finished",
]


@dataclass(frozen=True)
class EngineEvent:
    """Progress of a run, for displays and logs."""

    kind: EventKind
    step: str | None = None
    result: StepResult | None = None
    message: str | None = None


def _new_run_id() -> str:
    # Sortable by time; the random part tells apart runs started in the same second.
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{random.getrandbits(24):06x}"


@dataclass(frozen=True)
class _StepPlan:
    """What can be worked out about a step once per workflow, not once per call."""

    step: StepSpec
    deps: frozenset[str]
    dependents: tuple[str, ...]
    model: str | None  # the step's or the defaults' (an engine's `model` overrides it)
    system: str | None
    prompt: str | None
    settings: dict[str, Any]  # model settings other than `model`, defaults applied
    response_format: dict[str, Any] | None


class _Plan:
    """A workflow checked and prepared for running; cached on the Workflow object."""

    def __init__(self, workflow: Workflow) -> None:
        check_runnable(workflow)
        spec = workflow.spec
        deps = step_dependencies(workflow)
        dependents: dict[str, list[str]] = {s.id: [] for s in spec.steps}
        for sid, needs in deps.items():
            for dep in needs:
                dependents[dep].append(sid)
        self.steps: dict[str, _StepPlan] = {}
        for step in spec.steps:
            system = workflow.template(step, "system")
            prompt = workflow.template(step, "prompt")
            self.steps[step.id] = _StepPlan(
                step=step,
                deps=frozenset(deps[step.id]),
                dependents=tuple(dependents[step.id]),
                model=step.setting("model", spec.defaults),
                system=system.text if system else None,
                prompt=prompt.text if prompt else None,
                settings={
                    name: step.setting(name, spec.defaults)
                    for name in MODEL_SETTING_NAMES
                    if name != "model" and step.setting(name, spec.defaults) is not None
                },
                response_format=response_format_for(step.id, step.output),
            )
        # (name, template, the expression when the template is exactly one `{{ expr }}`)
        self.outputs: tuple[tuple[str, str, str | None], ...] = tuple(
            (name, source, templating.single_expression(source))
            for name, source in spec.outputs.items()
        )

    @classmethod
    def of(cls, workflow: Workflow) -> _Plan:
        plan = workflow.cache.get("engine.plan")
        if not isinstance(plan, cls):
            plan = workflow.cache["engine.plan"] = cls(workflow)
        return plan


_FINISHED = frozenset({"ok", "failed", "skipped", "reused", "cached"})
_NO_PREVIOUS: Mapping[str, tuple[str | None, StepResult]] = MappingProxyType({})


class _Run:
    """The state of one run of one workflow."""

    tasks: list[asyncio.Future[None]]  # steps running in tasks of their own (execute)

    def __init__(
        self,
        engine: Engine,
        workflow: Workflow,
        inputs: dict[str, Any],
        provider: Provider,
        run_id: str,
        previous: dict[str, tuple[str | None, StepResult]] | None = None,
        outer_budget: Budget | None = None,
    ) -> None:
        self.engine = engine
        self.workflow = workflow
        self.spec = workflow.spec
        self.inputs = inputs
        self.provider = provider
        self.plan = _Plan.of(workflow)
        self.limiter = engine.limiter(provider, self.spec.provider.concurrency)
        limits = self.spec.budget
        max_cost = limits.max_cost_usd if limits else None
        if engine.max_cost_usd is not None:
            max_cost = (
                engine.max_cost_usd if max_cost is None else min(max_cost, engine.max_cost_usd)
            )
        self.budget = Budget(max_cost, limits.max_tokens if limits else None, outer=outer_budget)
        # Prices follow where requests really go: OPENAI_BASE_URL pointing at a local
        # server makes "gpt-4o" unpriced, not billed at OpenAI's rate.
        resolver = getattr(provider, "resolved_base_url", None)
        self.price_base_url: str | None = (
            resolver() if callable(resolver) else self.spec.provider.price_base_url
        )
        self.results: dict[str, StepResult] = {
            s.id: StepResult(id=s.id, model=self._model(s)) for s in self.spec.steps
        }
        # What templates see as `steps.<id>`, filled as each step finishes.
        self.views: dict[str, dict[str, Any]] = {}
        self.store = engine.store
        self.previous: Mapping[str, tuple[str | None, StepResult]] = previous or _NO_PREVIOUS
        self.fingerprints: dict[str, str] = {}
        # response_format types the endpoint refused (then not sent again this run).
        self.refused_formats: frozenset[str] = frozenset()
        self.failure: FlowgptError | None = None
        self.result = RunResult(
            workflow=self.spec.name, inputs=inputs, steps=self.results, run_id=run_id
        )

    # -- helpers -----------------------------------------------------------------------

    def emit(self, kind: EventKind, step: str | None = None, **kw: Any) -> None:
        if self.engine.on_event is not None:
            self.engine.on_event(EngineEvent(kind, step, **kw))

    def _model(self, step: StepSpec) -> str | None:
        return self.engine.model or self.plan.steps[step.id].model

    def context(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        ctx: dict[str, Any] = {"inputs": self.inputs, "steps": dict(self.views)}
        if extra:
            ctx.update(extra)
        return ctx

    def render(self, step: StepSpec, source: str, ctx: dict[str, Any]) -> str:
        return templating.render(source, ctx, step=step.id)

    def build_messages(self, step: StepSpec, ctx: dict[str, Any]) -> list[Message]:
        messages: list[Message] = []
        if step.history is not None:
            earlier = self.results[step.history]
            messages = [Message(**m) for m in earlier.messages]  # type: ignore[typeddict-item]
            messages.append(Message(role="assistant", content=earlier.text or ""))
        plan = self.plan.steps[step.id]
        if plan.system is not None:
            message = Message(role="system", content=self.render(step, plan.system, ctx))
            if messages and messages[0]["role"] == "system":
                messages[0] = message  # the step's own system prompt replaces the inherited one
            else:
                messages.insert(0, message)
        for m in step.messages or []:
            entry = Message(role=m.role, content=self.render(step, m.content, ctx))
            if m.name:
                entry["name"] = m.name
            messages.append(entry)
        if plan.prompt is not None:
            messages.append(Message(role="user", content=self.render(step, plan.prompt, ctx)))
        return messages

    def request_for(self, step: StepSpec, messages: list[Message]) -> ChatRequest:
        model = self._model(step)
        if model is None:
            raise SpecError(
                f"step `{step.id}` has no model",
                hint="set `defaults.model` or the step's `model`, or pass --model",
            )
        plan = self.plan.steps[step.id]
        request = ChatRequest(
            model=model,
            messages=messages,
            response_format=plan.response_format,
            **plan.settings,
        )
        while request.response_format is not None and (
            request.response_format["type"] in self.refused_formats
        ):
            request = _downgrade_format(request)
        return request

    def format_fallback(
        self, step: StepSpec, request: ChatRequest, error: BadRequestError
    ) -> ChatRequest | None:
        """When an endpoint refuses structured outputs, ask for less: json_schema, then
        json_object, then instructions only. Validation still checks the reply."""
        kind = (request.response_format or {}).get("type")
        text = error.message.lower()
        if kind is None or not ("response_format" in text or "json_schema" in text):
            return None
        self.refused_formats = self.refused_formats | {kind}
        downgraded = _downgrade_format(request)
        now = (downgraded.response_format or {}).get("type", "instructions in the prompt")
        self.emit(
            "warning",
            step.id,
            message=f"step `{step.id}`: the endpoint does not accept response_format "
            f"{kind}; asking with {now} instead",
        )
        return downgraded

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
        price = resolve_price(
            request.model, base_url=self.price_base_url, overrides=self.spec.pricing
        )
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
        )

    # -- the store: resume and the response cache ---------------------------------------

    def fingerprint(self, request: ChatRequest) -> str:
        from flowgpt.store import request_fingerprint

        return request_fingerprint(
            request, base_url=self.price_base_url, provider=self.provider.name
        )

    def price_of(self, model: str | None) -> ModelPrice | None:
        if model is None:
            return None
        return resolve_price(model, base_url=self.price_base_url, overrides=self.spec.pricing)

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
        return self.engine.cache and (temperature is None or temperature == 0)

    # -- one step ----------------------------------------------------------------------

    async def attempt_loop(
        self, step: StepSpec, messages: list[Message], result: StepResult
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
                    tokens = 0
                    if self.limiter.counts_tokens:
                        # What tokens-per-minute limits count: the prompt plus the most it
                        # may reply.
                        tokens = count_tokens(request.messages, request.model) + (
                            request.max_tokens or 0
                        )
                    async with self.limiter.slot(tokens):
                        started = time.perf_counter()
                        response = await self.provider.complete(request)
                        latency = time.perf_counter() - started
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
            cost: Decimal | None
            if hit is not None:
                response, latency, cost = hit, 0.0, Decimal(0)
                worth = self.cost(request, hit)
                if worth is not None:
                    result.saved_usd = (result.saved_usd or Decimal(0)) + worth
            else:
                cost = self.cost(request, response)
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
            if self.provider.name == "local" and response.model:
                # The step's `model` only labels a local run: show the model that answered.
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
                    await self.run_items(step, ctx, result)
                finally:
                    result.latency_s = time.perf_counter() - started
                result.status = "ok"
                self.emit("step_finished", step.id, result=result)
                return
            messages = self.build_messages(step, ctx)
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
                await self.attempt_loop(step, messages, result)
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
            self.emit("step_failed", step.id, result=result, message=exc.message)
        finally:
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

    async def run_items(self, step: StepSpec, ctx: dict[str, Any], result: StepResult) -> None:
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

        async def one(sub: StepResult, item: Any) -> None:
            messages = self.build_messages(step, {**ctx, name: item})
            sub.messages = [dict(m) for m in messages]
            started = time.perf_counter()
            try:
                await self.attempt_loop(step, messages, sub)
                sub.status = "ok"
            except FlowgptError as exc:
                sub.status, sub.error = "failed", exc.message
                raise
            finally:
                sub.latency_s = time.perf_counter() - started

        outcomes = await asyncio.gather(
            *(one(sub, item) for sub, item in zip(result.items, items, strict=True)),
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

    async def execute(self, resumed_from: str | None = None) -> RunResult:
        started = time.perf_counter()
        run_id = self.result.run_id or ""
        if self.store is not None:
            self.store.start_run(
                run_id,
                workflow_name=self.spec.name,
                workflow_text=self.workflow.source,
                workflow_path=str(self.workflow.path) if self.workflow.path else None,
                inputs=self.inputs,
                steps=self.results.values(),
                resumed_from=resumed_from,
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
        from flowgpt.batch import run_rows

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


def _downgrade_format(request: ChatRequest) -> ChatRequest:
    """The same request asking for JSON one way less strictly."""
    fmt = request.response_format or {}
    messages = list(request.messages)
    if fmt.get("type") == "json_schema":
        schema = json.dumps(fmt["json_schema"]["schema"], ensure_ascii=False)
        note = f"Reply with JSON only, matching this JSON Schema:\n{schema}"
        # llama.cpp's servers constrain json_object to a "schema" given beside it; others
        # ignore the key or refuse it (then the next downgrade drops response_format).
        new_format: dict[str, Any] | None = {
            "type": "json_object",
            "schema": fmt["json_schema"]["schema"],
        }
    else:
        note = "Reply with a JSON object only."
        new_format = None
    last = dict(messages[-1])
    last["content"] = f"{last['content']}\n\n{note}"
    messages[-1] = Message(**last)  # type: ignore[typeddict-item]
    return dataclasses.replace(request, messages=messages, response_format=new_format)


def _as_workflow(workflow: Workflow | WorkflowSpec | str | Path) -> Workflow:
    if isinstance(workflow, Workflow):
        return workflow
    if isinstance(workflow, WorkflowSpec):
        return Workflow(spec=workflow)
    from flowgpt.loader import load_workflow

    return load_workflow(workflow)
