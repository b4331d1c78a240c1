"""The state of one run, and the synchronous work each of its calls needs: the events it
reports, the messages and the request (with the response_format fallbacks), the context
window and budget check before paying, prices, and the store's resume and response cache.

Executing the run (scheduling its steps, calling, validating, repairing) is ``flowgpt.engine.run``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from flowgpt import templating
from flowgpt.accounting.budget import Budget, Reservation
from flowgpt.accounting.prices import ModelPrice, cost_of, resolve_price, worst_case_cost
from flowgpt.accounting.tokens import context_window, count_text, count_tokens
from flowgpt.engine.plan import _Plan
from flowgpt.errors import (
    BadRequestError,
    BudgetExceededError,
    ContextWindowError,
    FlowgptError,
    SpecError,
)
from flowgpt.providers.base import ChatRequest, ChatResponse, Message, Provider
from flowgpt.results import RunResult, StepResult
from flowgpt.spec.models import StepSpec
from flowgpt.spec.output import validate_reply
from flowgpt.spec.workflow import Workflow

if TYPE_CHECKING:
    from flowgpt.engine.engine import Engine

from flowgpt.engine.events import EngineEvent, EventKind

_NO_PREVIOUS: Mapping[str, tuple[str | None, StepResult]] = MappingProxyType({})


class _RunState:
    """The state of one run of one workflow (executed by its subclass ``run._Run``)."""

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
        from flowgpt.store.fingerprint import request_fingerprint

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
