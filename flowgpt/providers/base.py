"""The small protocol every provider implements, and the request/response it speaks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from typing_extensions import NotRequired

from flowgpt.usage import Usage

__all__ = [
    "REQUEST_SETTINGS",
    "ChatRequest",
    "ChatResponse",
    "Message",
    "Provider",
    "endpoint_of",
]


class Message(TypedDict):
    role: str
    content: str
    name: NotRequired[str]


# A ChatRequest's settings besides model and messages, in the order they are written.
REQUEST_SETTINGS = (
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
)


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
        return {k: getattr(self, k) for k in REQUEST_SETTINGS if getattr(self, k) is not None}


@dataclass(frozen=True)
class ChatResponse:
    """What a provider returns for one request."""

    text: str
    usage: Usage
    finish_reason: str | None = None
    model: str | None = None  # as reported by the API
    retries: int = 0  # error retries the provider took (5xx/connection; not 429s waited out)
    extra: dict[str, Any] = field(default_factory=dict)


def endpoint_of(base_url: str | None) -> str | None:
    """Where requests go, fit to show and store: a base URL without user:password, query
    or fragment (credentials belong in environment variables, never in records)."""
    if base_url is None:
        return None
    parts = urlsplit(base_url.strip())
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:  # a port out of range: the URL is refused where it is used
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) or None


# Called with each piece of text as it streams in.
OnText = Callable[[str], None]


@runtime_checkable
class Provider(Protocol):
    """Sends one chat request and returns the reply: everything the engine uses of a
    provider is declared here.

    Implementations translate their own errors into ``flowgpt.errors.ProviderError``
    subclasses, so the engine never sees an SDK exception. When ``on_text`` is given the
    provider streams and calls it with each piece of text; the returned response is the
    same as without streaming (full text, exact usage).

    ``name`` labels the provider in reports and cache keys ("openai", "local", "mock").
    ``model_is_label``: True when the request's ``model`` only labels the call and the
    provider answers with a model of its own (the in-process local model), so results show
    the model that answered.
    """

    name: str
    model_is_label: bool

    def resolved_base_url(self) -> str | None:
        """Where requests go (a base URL, or ``"local:<model file>"``): prices and cache
        keys follow it. None when the provider sends nothing anywhere (the mock), so
        prices follow the workflow's ``provider:`` as a real run's would."""
        ...

    async def complete(
        self, request: ChatRequest, *, on_text: OnText | None = None
    ) -> ChatResponse: ...

    async def aclose(self) -> None: ...
