"""The attributes of flowgpt's spans and metric points, built from what a run knows:
plain values in the shapes the GenAI conventions ask for (no OpenTelemetry here)."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from flowgpt.errors import FlowgptError, ProviderError, redact
from flowgpt.providers.base import ChatRequest, ChatResponse, Message
from flowgpt.results import StepResult
from flowgpt.spec.workflow import Workflow
from flowgpt.usage import Usage

__all__ = [
    "digest",
    "error_attributes",
    "input_messages",
    "output_messages",
    "request_settings",
    "server",
    "totals",
    "verdict",
    "version",
]


def request_settings(request: ChatRequest) -> dict[str, Any]:
    """The request's settings that are set, as gen_ai.request.* (``stop`` as a list of
    sequences; ``response_format`` as the output type)."""
    attributes: dict[str, Any] = {}
    for name, value in request.params().items():
        if name == "stop":
            stop = [value] if isinstance(value, str) else list(value)
            attributes["gen_ai.request.stop_sequences"] = stop
        elif name == "response_format":
            attributes["gen_ai.output.type"] = "json"
        else:
            attributes[f"gen_ai.request.{name}"] = value
    return attributes


def verdict(result: StepResult) -> str | None:
    """Whether the step's last reply (each item's, for a for_each step) passed its output
    contract; None when nothing was asked."""
    parts = result.items or [result]
    lasts = [p.attempts[-1] for p in parts if p.attempts]
    if not lasts:
        return None
    return "failed" if any(a.failures for a in lasts) else "passed"


def input_messages(messages: Sequence[Message]) -> str:
    """The conventions' input-messages JSON (role, text parts, name), keys redacted."""
    shaped = []
    for m in messages:
        message: dict[str, Any] = {
            "role": m["role"],
            "parts": [{"type": "text", "content": redact(m["content"])}],
        }
        if "name" in m:
            message["name"] = m["name"]
        shaped.append(message)
    return json.dumps(shaped, ensure_ascii=False)


def output_messages(response: ChatResponse) -> str:
    message = {
        "role": "assistant",
        "parts": [{"type": "text", "content": redact(response.text)}],
        "finish_reason": response.finish_reason or "",
    }
    return json.dumps([message], ensure_ascii=False)


def error_attributes(error: BaseException) -> tuple[str, str, dict[str, Any]]:
    """An error's class (``error.type``), its message with keys redacted (the status),
    and what else a failed request says (retries, the HTTP status)."""
    message = error.message if isinstance(error, FlowgptError) else redact(str(error))
    attributes: dict[str, Any] = {"error.type": type(error).__name__}
    if isinstance(error, ProviderError):
        attributes["flowgpt.retries"] = error.retries
        if error.status is not None:
            attributes["http.response.status_code"] = error.status
    return type(error).__name__, message, attributes


def totals(usage: Usage, cost_usd: Decimal | None) -> dict[str, Any]:
    """flowgpt's totals for a run, step or batch (not gen_ai.usage.*: backends add those
    up over the request spans, which would count them twice)."""
    totals: dict[str, Any] = {
        "flowgpt.usage.input_tokens": usage.prompt_tokens,
        "flowgpt.usage.output_tokens": usage.completion_tokens,
    }
    if usage.cached_tokens:
        totals["flowgpt.usage.cached_tokens"] = usage.cached_tokens
    if usage.reasoning_tokens:
        totals["flowgpt.usage.reasoning_tokens"] = usage.reasoning_tokens
    if cost_usd is None:
        totals["flowgpt.unpriced"] = True  # never a made-up $0
    else:
        totals["flowgpt.cost_usd"] = float(cost_usd)
    return totals


@functools.lru_cache(maxsize=64)
def server(base_url: str | None) -> Mapping[str, str | int]:
    """server.address and server.port of an HTTP base URL (nothing for in-process ones)."""
    if base_url is None or not base_url.startswith(("http://", "https://")):
        return {}
    try:
        parts = urlsplit(base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return {}
    if not parts.hostname:
        return {}
    return {"server.address": parts.hostname, "server.port": port}


def digest(workflow: Workflow) -> str:
    """sha256 of the workflow file as written (of its spec when it was made in Python),
    worked out once per workflow."""
    digest = workflow.cache.get("trace_digest")
    if digest is None:
        text = workflow.source if workflow.source is not None else workflow.spec.model_dump_json()
        digest = workflow.cache["trace_digest"] = (
            "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
        )
    return str(digest)


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flowgpt")
    except PackageNotFoundError:
        return "0"
