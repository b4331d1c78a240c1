"""The request a step sends: its messages rendered from the run's context, the model
settings and ``response_format`` of its plan, and the ways a JSON request is asked again
less strictly when an endpoint refuses structured outputs.

Pure functions of the plan and the context: nothing here calls a model or keeps state.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection
from typing import Any

from flowgpt import templating
from flowgpt.engine.plan import StepPlan
from flowgpt.errors import BadRequestError, SpecError
from flowgpt.providers.base import ChatRequest, Message
from flowgpt.results import StepResult

__all__ = [
    "asks_for_the_word_json",
    "build_messages",
    "downgrade_format",
    "refused_format",
    "step_request",
]


def build_messages(
    plan: StepPlan, ctx: dict[str, Any], history: StepResult | None = None
) -> list[Message]:
    """The step's messages: ``history``'s conversation and reply (for ``history:``), its
    system prompt, few-shot ``messages:`` and prompt, each rendered with ``ctx``."""
    step = plan.step
    messages: list[Message] = []
    if history is not None:
        messages = [Message(**m) for m in history.messages]  # type: ignore[typeddict-item]
        messages.append(Message(role="assistant", content=history.text or ""))
    if plan.system is not None:
        message = Message(role="system", content=templating.render(plan.system, ctx, step=step.id))
        if messages and messages[0]["role"] == "system":
            messages[0] = message  # the step's own system prompt replaces the inherited one
        else:
            messages.insert(0, message)
    for m in step.messages or []:
        entry = Message(role=m.role, content=templating.render(m.content, ctx, step=step.id))
        if m.name:
            entry["name"] = m.name
        messages.append(entry)
    if plan.prompt is not None:
        messages.append(
            Message(role="user", content=templating.render(plan.prompt, ctx, step=step.id))
        )
    return messages


def step_request(
    plan: StepPlan,
    messages: list[Message],
    model: str | None,
    refused: Collection[str] = (),
) -> ChatRequest:
    """The step's request; ``refused`` are response_format types the endpoint refused
    earlier in the run, which are not asked for again."""
    if model is None:
        raise SpecError(
            f"step `{plan.step.id}` has no model",
            hint="set `defaults.model` or the step's `model` (or the engine's `model`)",
            code="no_model",
        )
    request = ChatRequest(
        model=model, messages=messages, response_format=plan.response_format, **plan.settings
    )
    while request.response_format is not None and request.response_format["type"] in refused:
        request = downgrade_format(request)
    return request


def asks_for_the_word_json(error: BadRequestError) -> bool:
    """OpenAI's 400 for json_object mode when no message says "JSON": the endpoint accepts
    response_format; it is the prompt that must change."""
    return "must contain the word 'json'" in error.message.lower()


def refused_format(request: ChatRequest, error: BadRequestError) -> str | None:
    """The response_format type ``error`` says the endpoint does not accept, or None when
    the request asked for none or the error is about something else."""
    kind = (request.response_format or {}).get("type")
    text = error.message.lower()
    if kind is None or not ("response_format" in text or "json_schema" in text):
        return None
    if asks_for_the_word_json(error):
        return None
    return str(kind)


def downgrade_format(request: ChatRequest) -> ChatRequest:
    """The same request asking for JSON one way less strictly: json_schema, then
    json_object, then instructions in the prompt only. Validation still checks the reply."""
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
