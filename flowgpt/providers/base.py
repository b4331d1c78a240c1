"""The small protocol every provider implements, and the request/response it speaks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, runtime_checkable

from typing_extensions import NotRequired

from flowgpt.usage import Usage

__all__ = ["ChatRequest", "ChatResponse", "Message", "Provider"]


class Message(TypedDict):
    role: str
    content: str
    name: NotRequired[str]


@dataclass(frozen=True)
class ChatRequest:
    """One Chat Completions request, provider-neutral.

    Settings left as None are not sent, so the API's own defaults apply.
    """

    model: str
    messages: list[Message]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # e.g. {"type": "json_schema", "json_schema": {...}} or {"type": "json_object"}
    response_format: dict[str, Any] | None = None

    def params(self) -> dict[str, Any]:
        """The settings that are set, as Chat Completions keyword arguments."""
        keys = (
            "temperature",
            "top_p",
            "max_tokens",
            "seed",
            "stop",
            "presence_penalty",
            "frequency_penalty",
            "response_format",
        )
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass(frozen=True)
class ChatResponse:
    """What a provider returns for one request."""

    text: str
    usage: Usage
    finish_reason: str | None = None
    model: str | None = None  # as reported by the API
    retries: int = 0  # transport retries the provider took (429/5xx/connection)
    extra: dict[str, Any] = field(default_factory=dict)


# Called with each piece of text as it streams in.
OnText = Callable[[str], None]


@runtime_checkable
class Provider(Protocol):
    """Sends one chat request and returns the reply.

    Implementations translate their own errors into ``flowgpt.errors.ProviderError``
    subclasses, so the engine never sees an SDK exception. When ``on_text`` is given the
    provider streams and calls it with each piece of text; the returned response is the
    same as without streaming (full text, exact usage).
    """

    name: str

    async def complete(
        self, request: ChatRequest, *, on_text: OnText | None = None
    ) -> ChatResponse: ...

    async def aclose(self) -> None: ...
