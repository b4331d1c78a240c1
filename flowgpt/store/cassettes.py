"""Cassettes: the requests a workflow's test cases made and the replies they got, kept in a
YAML file beside the tests so people can review and diff them, and ``flowgpt test`` can
replay them offline.

A request is found by its canonical form, the same fingerprint the response cache uses
(``request_fingerprint``) without where the request went: model, messages and every
setting that is set. The fingerprint is worked out from the request written in the file
when the file is read, so the file holds nothing opaque: what you read is what matches.

Nothing secret is written: requests hold no API key or header, text that looks like a key
is redacted, and the endpoint is written without user info or query.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from flowgpt.errors import Diagnostic, SpecError, redact
from flowgpt.providers.base import (
    REQUEST_SETTINGS,
    ChatRequest,
    ChatResponse,
    Message,
    endpoint_of,
)
from flowgpt.spec.loader import dump_data, load_data
from flowgpt.store.fingerprint import request_fingerprint
from flowgpt.usage import Usage

__all__ = [
    "CASSETTE_VERSION",
    "CaseTiming",
    "Cassette",
    "Interaction",
    "Refusal",
    "cassette_key",
    "load_cassette",
    "merge_interactions",
    "save_cassette",
]

CASSETTE_VERSION = 1


def cassette_key(request: ChatRequest) -> str:
    """The key a request is recorded and found under: the response cache's fingerprint
    without the endpoint, so a cassette recorded against one endpoint replays anywhere."""
    return request_fingerprint(request, base_url=None)


@dataclass(frozen=True)
class Refusal:
    """The endpoint refused the request (a 400, e.g. a ``response_format`` it does not
    support); replayed as the same error, so the run asks again as it did."""

    message: str
    status: int | None = 400


@dataclass(frozen=True)
class Interaction:
    """One request and its reply (or the endpoint's refusal); ``step`` and ``case`` say
    who made it (for people, and to show what changed when a request is not found)."""

    request: ChatRequest
    response: ChatResponse | Refusal
    step: str | None = None
    case: str | None = None

    @property
    def key(self) -> str:
        return cassette_key(self.request)


@dataclass(frozen=True)
class CaseTiming:
    """How long a case took when it was recorded, in seconds (a replay takes no time, so
    latency limits are checked against these)."""

    latency_s: float
    steps: dict[str, float] = field(default_factory=dict)


@dataclass
class Cassette:
    """What a test file's cases sent and got back, and what they were recorded with."""

    interactions: list[Interaction] = field(default_factory=list)
    provider: str | None = None  # the provider that answered ("openai", "mock", ...)
    endpoint: str | None = None  # where its requests went; prices follow it on replay
    timings: dict[str, CaseTiming] = field(default_factory=dict)  # by case name
    _index: dict[str, Interaction] | None = field(default=None, repr=False, compare=False)

    def find(self, request: ChatRequest) -> Interaction | None:
        """The recorded interaction with this request, or None."""
        if self._index is None:
            self._index = {}
            for interaction in self.interactions:
                self._index.setdefault(interaction.key, interaction)
        return self._index.get(cassette_key(request))


# -- writing -----------------------------------------------------------------------------


def _public_endpoint(url: str | None) -> str | None:
    """The endpoint without user info, query or fragment; a local model's file path is
    left out too (it names a folder on the recording machine)."""
    if url is None:
        return None
    if url == "local" or url.startswith("local:"):
        return "local"
    try:
        return endpoint_of(url)
    except ValueError:  # not a URL at all (e.g. a broken IPv6 host): nothing to show
        return None


def _request_data(request: ChatRequest) -> dict[str, Any]:
    data: dict[str, Any] = {"model": request.model}
    data.update(request.params())
    messages = []
    for message in request.messages:
        entry: dict[str, Any] = {"role": message["role"]}
        if "name" in message:
            entry["name"] = message["name"]
        entry["content"] = redact(message["content"])
        messages.append(entry)
    data["messages"] = messages
    return data


def _response_data(response: ChatResponse) -> dict[str, Any]:
    # Cached and reasoning tokens only when there are some: most replies have none.
    usage = {
        k: v
        for k, v in response.usage.to_dict().items()
        if v or k in ("prompt_tokens", "completion_tokens")
    }
    data: dict[str, Any] = {}
    if response.model is not None:
        data["model"] = response.model
    if response.finish_reason is not None:
        data["finish_reason"] = response.finish_reason
    data["usage"] = usage
    data["text"] = redact(response.text)
    return data


def save_cassette(cassette: Cassette, path: str | Path, *, comment: str = "") -> None:
    """Write ``cassette`` to ``path`` (YAML), interactions in the order given; ``comment``
    lines head the file (how it was made, how to re-record it)."""
    data: dict[str, Any] = {
        "version": CASSETTE_VERSION,
        "recorded_with": {
            "provider": cassette.provider,
            "endpoint": _public_endpoint(cassette.endpoint),
        },
    }
    if cassette.timings:
        data["cases"] = {
            name: {
                "latency_s": round(timing.latency_s, 3),
                "steps": {step: round(s, 3) for step, s in timing.steps.items()},
            }
            for name, timing in cassette.timings.items()
        }
    entries = []
    for interaction in cassette.interactions:
        entry: dict[str, Any] = {}
        if interaction.case is not None:
            entry["case"] = interaction.case
        if interaction.step is not None:
            entry["step"] = interaction.step
        entry["request"] = _request_data(interaction.request)
        if isinstance(interaction.response, Refusal):
            refusal = interaction.response
            entry["refused"] = {"status": refusal.status, "message": redact(refusal.message)}
        else:
            entry["response"] = _response_data(interaction.response)
        entries.append(entry)
    data["interactions"] = entries
    head = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    Path(path).write_text(head + dump_data(data), encoding="utf-8")


# -- reading -----------------------------------------------------------------------------


class _Bad(Exception):
    """A part of the file that is not a cassette's."""


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _Bad(f"{what} must be a mapping")
    return cast("Mapping[str, Any]", value)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{what} must be text")
    return value


def _request_of(data: Mapping[str, Any], what: str) -> ChatRequest:
    unknown = set(data) - {"model", "messages", *REQUEST_SETTINGS}
    if unknown:
        raise _Bad(f"{what} has unknown keys: {', '.join(sorted(map(str, unknown)))}")
    messages_data = data.get("messages")
    if not isinstance(messages_data, list):
        raise _Bad(f"{what}.messages must be a list")
    messages: list[Message] = []
    for i, item in enumerate(messages_data):
        entry = _mapping(item, f"{what}.messages[{i}]")
        message = Message(
            role=_text(entry.get("role"), f"{what}.messages[{i}].role"),
            content=_text(entry.get("content"), f"{what}.messages[{i}].content"),
        )
        if "name" in entry:
            message["name"] = _text(entry["name"], f"{what}.messages[{i}].name")
        messages.append(message)
    params = {key: data[key] for key in REQUEST_SETTINGS if data.get(key) is not None}
    return ChatRequest(model=_text(data.get("model"), f"{what}.model"), messages=messages, **params)


def _response_of(data: Mapping[str, Any], what: str) -> ChatResponse:
    usage = _mapping(data.get("usage", {}), f"{what}.usage")
    try:
        counted = Usage.from_dict(dict(usage))
    except (TypeError, ValueError):
        raise _Bad(f"{what}.usage must hold token counts") from None
    model, finish = data.get("model"), data.get("finish_reason")
    return ChatResponse(
        text=_text(data.get("text"), f"{what}.text"),
        usage=counted,
        finish_reason=None if finish is None else str(finish),
        model=None if model is None else str(model),
        extra={"cassette": True},
    )


def _cassette_of(data: Any) -> Cassette:
    top = _mapping(data, "the top level")
    if top.get("version") != CASSETTE_VERSION:
        raise _Bad(f"unsupported cassette version {top.get('version')!r}")
    recorded = _mapping(top.get("recorded_with") or {}, "recorded_with")
    timings: dict[str, CaseTiming] = {}
    for name, timing in _mapping(top.get("cases") or {}, "cases").items():
        entry = _mapping(timing, f"cases.{name}")
        steps = _mapping(entry.get("steps") or {}, f"cases.{name}.steps")
        try:
            timings[str(name)] = CaseTiming(
                float(entry.get("latency_s") or 0), {str(k): float(v) for k, v in steps.items()}
            )
        except (TypeError, ValueError):
            raise _Bad(f"cases.{name}: latencies must be numbers") from None
    interactions = []
    listed = top.get("interactions") or []
    if not isinstance(listed, list):
        raise _Bad("interactions must be a list")
    for i, item in enumerate(listed):
        what = f"interactions[{i}]"
        entry = _mapping(item, what)
        step, case = entry.get("step"), entry.get("case")
        response: ChatResponse | Refusal
        if "refused" in entry:
            refused = _mapping(entry["refused"], f"{what}.refused")
            status = refused.get("status")
            response = Refusal(
                _text(refused.get("message"), f"{what}.refused.message"),
                status if isinstance(status, int) else None,
            )
        else:
            response = _response_of(_mapping(entry.get("response"), f"{what}.response"), what)
        interactions.append(
            Interaction(
                request=_request_of(_mapping(entry.get("request"), f"{what}.request"), what),
                response=response,
                step=None if step is None else str(step),
                case=None if case is None else str(case),
            )
        )
    provider, endpoint = recorded.get("provider"), recorded.get("endpoint")
    return Cassette(
        interactions=interactions,
        provider=None if provider is None else str(provider),
        endpoint=None if endpoint is None else str(endpoint),
        timings=timings,
    )


def load_cassette(path: str | Path, *, record_hint: str | None = None) -> Cassette:
    """Read a cassette. A missing or unreadable one is a SpecError (exit 2) whose hint is
    ``record_hint`` (the command that records it)."""
    file = str(path)
    hint = record_hint or "record it again with `flowgpt test WORKFLOW --record`"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            f"{file}: no cassette to replay",
            diagnostics=[
                Diagnostic("no cassette to replay: nothing was recorded", file, hint=hint)
            ],
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8"
        raise SpecError(
            f"{file}: cannot read the cassette",
            diagnostics=[Diagnostic(f"cannot read the cassette: {reason}", file, hint=hint)],
        ) from None
    try:
        return _cassette_of(load_data(text, path=file))
    except SpecError as exc:
        diagnostics = [replace(d, hint=hint) for d in exc.diagnostics]
        raise SpecError(exc.message, diagnostics=diagnostics) from None
    except _Bad as exc:
        raise SpecError(
            f"{file}: not a cassette",
            diagnostics=[Diagnostic(f"this is not a flowgpt cassette: {exc}", file, hint=hint)],
        ) from None


def merge_interactions(*groups: Iterable[Interaction]) -> list[Interaction]:
    """The interactions of all groups, each request once (the first one given wins)."""
    seen: set[str] = set()
    merged = []
    for group in groups:
        for interaction in group:
            if interaction.key not in seen:
                seen.add(interaction.key)
                merged.append(interaction)
    return merged
