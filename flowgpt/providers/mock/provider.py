"""The mock provider: answers without a network, for ``--mock`` and for users' own tests.

Modelled on simonw/llm's mock model: replies are taken from a queue you fill, and once it is
empty the mock answers deterministically. Every request is recorded, and usage is counted
with the real tokenizer, so reports and budgets behave as in a real run::

    from flowgpt import Engine
    from flowgpt.providers.mock.provider import MockProvider, MockReply

    mock = MockProvider(['{"title": "Tea", "sections": ["a", "b", "c"]}', "A draft."])
    result = Engine(provider=mock).run_sync(wf, {"topic": "tea"})
    assert mock.requests[0].messages[-1]["content"].startswith("Plan an article")

A scripted reply is a ``str`` (the reply text), a :class:`MockReply` (text plus
finish_reason and/or usage), or an exception (an instance or a class), which is raised,
e.g. ``RateLimitError("slow down")``, to test failure paths. Scripted replies are used
verbatim, in the order ``complete`` is called.

Unscripted answers: a JSON step (``response_format`` of type ``json_schema`` or
``json_object``, or a prompt that explicitly asks for JSON) gets a small object valid
against its schema; any other step gets a few sentences derived from a hash of the
messages. Unscripted replies honour ``stop`` and are cut at ``max_tokens`` (finish_reason
``"length"``), like the API.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flowgpt.providers.base import ChatRequest, ChatResponse, OnText
from flowgpt.usage import Usage

__all__ = ["MockProvider", "MockReply", "ScriptedReply", "default_reply"]


@dataclass(frozen=True)
class MockReply:
    """A scripted reply with more than text.

    ``usage`` None means: count it with the real tokenizer, as for any mock reply.
    """

    text: str
    finish_reason: str = "stop"
    usage: Usage | None = None
    model: str | None = None  # the model the "API" reports; default: the requested one


ScriptedReply = str | MockReply | BaseException | type[BaseException]

_SENTENCES = (
    "This is a deterministic answer from flowgpt's mock provider.",
    "It stands in for a model reply so the workflow can run offline.",
    "The key points are stated briefly and in a sensible order.",
    "Each part builds on the one before it.",
    "Details are kept short so that token counts stay small.",
    "A real model would answer the prompt in full.",
    "The same prompt always gives the same text.",
    "No network call was made and nothing was billed.",
)

# Only an explicit request for JSON counts ("answer in JSON", "return a JSON object"),
# not a prompt that merely mentions JSON ("translate this JSON file").
_ASKS_FOR_JSON = re.compile(
    r"\b(?:as|in|with|only|valid|return|respond|reply|output)\s+(?:(?:a|an|one|valid|only|"
    r"strict|pure|the)\s+)*JSON\b|\bJSON\s+(?:object|only|format|response|reply)\b",
    re.IGNORECASE,
)

_STREAM_CHUNKS = 4


class MockProvider:
    """An offline provider with a reply queue and a record of every request.

    Safe to share between concurrent steps: the request is recorded and the next scripted
    reply taken atomically when ``complete`` is called, before any await.
    """

    name = "mock"
    model_is_label = False

    def __init__(
        self,
        replies: Iterable[ScriptedReply] | None = None,
        *,
        latency_s: float = 0.0,
    ) -> None:
        if latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        self.latency_s = latency_s
        self.requests: list[ChatRequest] = []
        self._queue: deque[ScriptedReply] = deque(replies or ())
        # a thread lock, not an asyncio one: users may share one mock across event loops
        self._lock = threading.Lock()

    def add_replies(self, *replies: ScriptedReply) -> None:
        """Queue more scripted replies (after those already queued)."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def remaining(self) -> int:
        """Scripted replies not used yet."""
        with self._lock:
            return len(self._queue)

    @property
    def last_request(self) -> ChatRequest | None:
        with self._lock:
            return self.requests[-1] if self.requests else None

    async def complete(
        self, request: ChatRequest, *, on_text: OnText | None = None
    ) -> ChatResponse:
        with self._lock:
            self.requests.append(request)
            scripted: ScriptedReply | None = self._queue.popleft() if self._queue else None
        if self.latency_s:
            await asyncio.sleep(self.latency_s)

        if isinstance(scripted, BaseException):
            raise scripted
        if isinstance(scripted, type) and issubclass(scripted, BaseException):
            raise _instantiate(scripted)
        model: str | None = None
        usage: Usage | None = None
        if scripted is None:
            text, finish_reason = default_reply(request)
        elif isinstance(scripted, MockReply):
            text, finish_reason = scripted.text, scripted.finish_reason
            usage, model = scripted.usage, scripted.model
        else:
            text, finish_reason = str(scripted), "stop"

        if usage is None:
            usage = _count_usage(request, text)
        if on_text is not None:
            for chunk in _chunks(text):
                on_text(chunk)
                await asyncio.sleep(0)  # let other streams interleave, as a network would
        return ChatResponse(
            text=text,
            usage=usage,
            finish_reason=finish_reason,
            model=model or request.model,
            extra={"mock": True},
        )

    def resolved_base_url(self) -> None:
        return None  # nothing is sent anywhere: prices follow the workflow's provider

    async def aclose(self) -> None:
        return None


def _instantiate(cls: type[BaseException]) -> BaseException:
    # flowgpt's errors (and most others) take a message; bare classes get a generic one
    try:
        return cls(f"{cls.__name__} scripted in MockProvider")
    except TypeError:
        return cls()


def _count_usage(request: ChatRequest, text: str) -> Usage:
    from flowgpt.accounting.tokens import count_text, count_tokens

    return Usage(
        prompt_tokens=count_tokens(request.messages, request.model),
        completion_tokens=count_text(text, request.model),
    )


def _chunks(text: str) -> list[str]:
    """A few pieces, split after whitespace, that join back to exactly ``text``."""
    words = [w for w in re.findall(r"\S*\s*", text) if w]
    if not words:
        return []
    size = -(-len(words) // _STREAM_CHUNKS)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


# ----------------------------------------------------------------- default replies


def default_reply(request: ChatRequest) -> tuple[str, str]:
    """The unscripted reply to ``request`` and its finish_reason (deterministic)."""
    wants_json, schema = _json_request(request)
    if wants_json:
        text = _json_text(schema, request)
    else:
        text = _prose(request)
        text = _apply_stop(text, request.stop)
    if request.max_tokens is not None:
        cut = _truncate(text, request.max_tokens, request.model)
        if cut != text:
            return cut, "length"
    return text, "stop"


def _json_request(request: ChatRequest) -> tuple[bool, Any]:
    fmt = request.response_format
    if fmt:
        kind = fmt.get("type")
        if kind == "json_schema":
            spec = fmt.get("json_schema") or {}
            return True, spec.get("schema") if isinstance(spec, Mapping) else None
        return kind == "json_object", None
    candidates = [m for m in request.messages if m["role"] == "system"]
    users = [m for m in request.messages if m["role"] == "user"]
    candidates += users[-1:]
    return any(_ASKS_FOR_JSON.search(str(m.get("content") or "")) for m in candidates), None


def _json_text(schema: Any, request: ChatRequest) -> str:
    from flowgpt.providers.mock.schema_example import SchemaExampleError, minimal_instance

    if schema is None or schema is True:
        value: Any = {"result": _sentences(request)[0]}
    else:
        try:
            value = minimal_instance(schema)
        except SchemaExampleError as exc:
            # the reply will fail validation, as a real model's would for this schema
            value = {} if exc.candidate is None else exc.candidate
    return json.dumps(value, ensure_ascii=False)


def _digest(request: ChatRequest) -> bytes:
    payload = json.dumps(
        [dict(m) for m in request.messages], sort_keys=True, ensure_ascii=False, default=str
    )
    return hashlib.sha256(payload.encode("utf-8")).digest()


def _topic(request: ChatRequest) -> str:
    users = [m for m in request.messages if m["role"] == "user"]
    source = (users or request.messages or [{"role": "user", "content": ""}])[-1]
    text = " ".join(str(source.get("content") or "").split())
    if len(text) > 80:
        text = text[:77].rstrip() + "..."
    return text


def _sentences(request: ChatRequest) -> list[str]:
    digest = _digest(request)
    topic = _topic(request)
    topic = topic.rstrip(".!?;:。！？；：")
    opening = f"Mock answer {digest.hex()[:8]}"
    opening += f' to "{topic}".' if topic else "."
    picked: list[str] = []
    for byte in digest[4:]:
        sentence = _SENTENCES[byte % len(_SENTENCES)]
        if sentence not in picked:
            picked.append(sentence)
        if len(picked) == 3:
            break
    return [opening, *picked]


def _prose(request: ChatRequest) -> str:
    return " ".join(_sentences(request))


def _apply_stop(text: str, stop: str | list[str] | None) -> str:
    if not stop:
        return text
    cut = len(text)
    for sequence in [stop] if isinstance(stop, str) else stop:
        at = text.find(sequence) if sequence else -1
        if at >= 0:
            cut = min(cut, at)
    return text[:cut]


def _truncate(text: str, max_tokens: int, model: str) -> str:
    """The longest prefix of ``text`` within ``max_tokens``, preferably at a word end."""
    from flowgpt.accounting.tokens import count_text

    if count_text(text, model) <= max_tokens:
        return text
    low, high = 0, len(text)  # invariant: text[:low] fits, text[:high] does not
    while high - low > 1:
        mid = (low + high) // 2
        if count_text(text[:mid], model) <= max_tokens:
            low = mid
        else:
            high = mid
    prefix = text[:low]
    space = prefix.rstrip().rfind(" ")
    if space > 0:
        prefix = prefix[:space]
    return prefix
