"""The openai provider, through the real SDK, against the fake server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from flowgpt.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionError,
    MalformedResponseError,
    ModelNotFoundError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
)
from flowgpt.providers.base import ChatRequest, Message, Provider
from flowgpt.providers.openai import OpenAIProvider, uses_max_completion_tokens
from flowgpt.usage import Usage
from tests.support.fake_openai import FakeOpenAI, Fault, Reply

pytestmark = pytest.mark.timeout(30)

# Not "sk-"-shaped on purpose: errors.redact cannot hide a leak, only the provider's own
# scrubbing of the literal key can.
KEY = "fgt-secret-9f8e7d6c5b4a3210"
ENV = "OPENAI_API_KEY"

MakeProvider = Callable[..., OpenAIProvider]


def request(text: str = "Say hi", model: str = "gpt-4o-mini", **settings: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[{"role": "user", "content": text}], **settings)


def assert_no_key(*things: object) -> None:
    for thing in things:
        for shown in (str(thing), repr(thing)):
            assert KEY not in shown
    for thing in things:
        if isinstance(thing, ProviderError):
            assert KEY not in thing.format()


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ENV, KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return KEY


@pytest.fixture
async def make_provider(fake_openai: FakeOpenAI, key: str) -> AsyncIterator[MakeProvider]:
    made: list[OpenAIProvider] = []

    def make(**kwargs: Any) -> OpenAIProvider:
        kwargs.setdefault("timeout_s", 5)
        provider = OpenAIProvider(fake_openai.base_url, **kwargs)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


# -- replies -------------------------------------------------------------------------------


async def test_plain_reply_maps_exact_usage(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.queue(
        Reply(
            "Hello there.",
            prompt_tokens=120,
            completion_tokens=30,
            cached_tokens=64,
            reasoning_tokens=12,
            finish_reason="length",
        )
    )
    provider = make_provider()
    assert isinstance(provider, Provider)
    assert provider.name == "openai"

    response = await provider.complete(request())

    assert response.text == "Hello there."
    assert response.usage == Usage(
        prompt_tokens=120, completion_tokens=30, cached_tokens=64, reasoning_tokens=12
    )
    assert response.finish_reason == "length"
    assert response.model == "gpt-4o-mini"
    assert response.retries == 0
    assert "usage_missing" not in response.extra


async def test_request_body_carries_messages_and_settings(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    messages: list[Message] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Example question", "name": "alice"},
        {"role": "assistant", "content": "Example answer"},
        {"role": "user", "content": "Real question"},
    ]
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }
    chat = ChatRequest(
        model="gpt-4o-mini",
        messages=messages,
        temperature=0.3,
        top_p=0.9,
        max_tokens=256,
        seed=7,
        stop=["\n\n", "END"],
        presence_penalty=0.1,
        frequency_penalty=0.2,
        response_format=response_format,
    )
    await make_provider().complete(chat)

    (sent,) = fake_openai.chat_requests
    body = sent.body
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == messages
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 256
    assert "max_completion_tokens" not in body
    assert body["seed"] == 7
    assert body["stop"] == ["\n\n", "END"]
    assert body["presence_penalty"] == 0.1
    assert body["frequency_penalty"] == 0.2
    assert body["response_format"] == response_format
    assert "stream" not in body
    assert sent.api_key == KEY  # the key from the environment, as a bearer token


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("model", ["gpt-4.1-mini", "o4-mini"])
async def test_the_body_sent_is_exactly_the_request(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, model: str, stream: bool
):
    # What reaches the server through chat.completions.create(): the request's model,
    # messages and settings, max_tokens spelled for the model, and for a stream the
    # usage chunk asked for; nothing else.
    messages: list[Message] = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Name a colour", "name": "bob"},
    ]
    chat = ChatRequest(
        model=model,
        messages=messages,
        temperature=0.0,
        max_tokens=64,
        seed=0,
        stop="END",
        response_format={"type": "json_object"},
    )
    await make_provider().complete(chat, on_text=(lambda _: None) if stream else None)

    (sent,) = fake_openai.chat_requests
    limit = "max_completion_tokens" if uses_max_completion_tokens(model) else "max_tokens"
    expected: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": 0.0,
        limit: 64,
        "seed": 0,
        "stop": "END",
        "response_format": {"type": "json_object"},
    }
    if stream:
        expected |= {"stream": True, "stream_options": {"include_usage": True}}
    assert sent.body == expected
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.api_key == KEY
    # A plain AsyncOpenAI sends it: the SDK's own user agent, not a subclass's.
    assert sent.headers["user-agent"] == f"AsyncOpenAI/Python {openai.__version__}"


async def test_unset_settings_are_not_sent(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    await make_provider().complete(request())
    body = fake_openai.chat_requests[0].body
    assert set(body) == {"model", "messages"}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("o1", True),
        ("o3-mini", True),
        ("o4-mini-2025-04-16", True),
        ("gpt-5", True),
        ("gpt-5-mini", True),
        ("openai/gpt-5-nano", True),
        ("ft:o4-mini:acme::abc123", True),
        ("gpt-4o-mini", False),
        ("gpt-4.1", False),
        ("llama3.1:8b", False),
        ("omni-model", False),
    ],
)
def test_which_models_get_max_completion_tokens(model: str, expected: bool):
    assert uses_max_completion_tokens(model) is expected


async def test_reasoning_models_get_max_completion_tokens(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    await make_provider().complete(request(model="o4-mini", max_tokens=500))
    body = fake_openai.chat_requests[0].body
    assert body["max_completion_tokens"] == 500
    assert "max_tokens" not in body


async def test_streaming_gives_the_same_response(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    reply = Reply(
        "One two three four.",
        prompt_tokens=40,
        completion_tokens=9,
        cached_tokens=16,
        reasoning_tokens=3,
        chunks=["One ", "two ", "three ", "four."],
    )
    fake_openai.queue(reply, reply)
    provider = make_provider()
    plain = await provider.complete(request())
    pieces: list[str] = []
    streamed = await provider.complete(request(), on_text=pieces.append)

    assert pieces == ["One ", "two ", "three ", "four."]
    assert streamed.text == plain.text == "One two three four."
    assert streamed.usage == plain.usage == Usage(40, 9, 16, 3)
    assert streamed.finish_reason == plain.finish_reason == "stop"
    assert streamed.model == plain.model
    assert streamed.retries == 0
    body = fake_openai.chat_requests[1].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_missing_usage_is_flagged_not_invented(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.queue(Reply("no usage here", usage=False), Reply("nor here", usage=False))
    provider = make_provider()
    plain = await provider.complete(request())
    streamed = await provider.complete(request(), on_text=lambda _: None)
    for response in (plain, streamed):
        assert response.usage == Usage()
        assert response.extra["usage_missing"] is True


# -- errors that must not be retried -------------------------------------------------------


async def test_401_fails_at_once_naming_the_variable(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.queue(Fault.unauthorized("Incorrect API key provided: {raw_key}."))
    provider = make_provider(max_retries=3)

    with pytest.raises(AuthenticationError) as caught:
        await provider.complete(request())

    err = caught.value
    assert err.status == 401
    assert err.retries == 0
    assert len(fake_openai.chat_requests) == 1
    assert ENV in err.message
    # The library names no command-line flag; the command line adds --mock for this code.
    assert "--mock" not in (err.hint or "") and err.code == "no_key"
    assert "Incorrect API key provided" in err.message  # the API's words, key scrubbed
    assert_no_key(err, provider)
    assert err.__cause__ is None and err.__suppress_context__


async def test_no_key_fails_before_any_request(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("MY_TEAM_KEY", raising=False)
    provider = make_provider(api_key_env="MY_TEAM_KEY")

    with pytest.raises(AuthenticationError) as caught:
        await provider.complete(request())

    assert "MY_TEAM_KEY" in caught.value.message
    assert "--mock" not in (caught.value.hint or "") and caught.value.code == "no_key"
    assert fake_openai.requests == []


async def test_key_and_base_url_can_come_from_a_given_environ(fake_openai: FakeOpenAI):
    environ = {"TEAM_KEY": KEY, "OPENAI_BASE_URL": fake_openai.base_url}
    provider = OpenAIProvider(api_key_env="TEAM_KEY", environ=environ)
    try:
        response = await provider.complete(request("hello"))
    finally:
        await provider.aclose()
    assert response.text == "Echo: hello"
    assert fake_openai.chat_requests[0].api_key == KEY


async def test_a_changed_key_is_used_by_the_next_call(fake_openai: FakeOpenAI):
    # A long-lived engine (a server embedding flowgpt) whose key is rotated in its
    # environment must send the new key at once, not the one its cached client holds.
    environ = {"TEAM_KEY": KEY, "OPENAI_BASE_URL": fake_openai.base_url}
    provider = OpenAIProvider(api_key_env="TEAM_KEY", environ=environ)
    try:
        await provider.complete(request("one"))
        environ["TEAM_KEY"] = "sk-rotated-key"
        await provider.complete(request("two"))
        environ["TEAM_KEY"] = KEY
        await provider.complete(request("three"))
    finally:
        await provider.aclose()
    keys = [r.api_key for r in fake_openai.chat_requests]
    assert keys == [KEY, "sk-rotated-key", KEY]


async def test_403_is_an_authentication_error(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.queue(Fault.forbidden())
    with pytest.raises(AuthenticationError) as caught:
        await make_provider().complete(request(model="gpt-4o"))
    assert caught.value.status == 403
    assert "gpt-4o" in caught.value.message
    assert ENV in caught.value.message
    assert len(fake_openai.chat_requests) == 1


async def test_404_names_the_model(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.queue(Fault.model_not_found())
    with pytest.raises(ModelNotFoundError) as caught:
        await make_provider().complete(request(model="gpt-9-imaginary"))
    assert caught.value.status == 404
    assert "gpt-9-imaginary" in caught.value.message
    assert "base_url" in (caught.value.hint or "")
    assert len(fake_openai.chat_requests) == 1


@pytest.mark.parametrize("status", [400, 422])
async def test_bad_request_carries_the_api_message(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, status: int
):
    message = "Invalid 'temperature': decimal above maximum value."
    fake_openai.queue(Fault.status_error(status, message, param="temperature"))
    with pytest.raises(BadRequestError) as caught:
        await make_provider().complete(request(temperature=9))
    assert caught.value.status == status
    assert message in caught.value.message
    assert len(fake_openai.chat_requests) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_insufficient_quota_is_not_retried(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, stream: bool
):
    fake_openai.queue(Fault.quota_exceeded(), times=5)
    provider = make_provider(max_retries=4)
    with pytest.raises(QuotaExceededError) as caught:
        await provider.complete(request(), on_text=(lambda _: None) if stream else None)
    assert caught.value.status == 429
    assert caught.value.retries == 0
    assert "retrying cannot help" in (caught.value.hint or "")
    assert len(fake_openai.chat_requests) == 1


# -- retried errors ------------------------------------------------------------------------


async def test_429_retry_after_seconds_is_honoured(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.queue(Fault.rate_limited(retry_after_s=1), Reply("finally"))
    # No error retries at all: a rate limit is waited out outside max_retries.
    response = await make_provider(max_retries=0).complete(request())

    assert response.text == "finally"
    assert response.retries == 0
    first, second = fake_openai.chat_requests
    assert first.completed is not None
    assert second.arrived - first.completed >= 0.98


async def test_429_retry_after_ms_is_honoured(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.queue(Fault.rate_limited(retry_after_ms=300), Reply("ok"))
    response = await make_provider(max_retries=0).complete(request())
    assert response.retries == 0
    first, second = fake_openai.chat_requests
    assert first.completed is not None
    assert second.arrived - first.completed >= 0.29


async def test_without_a_server_wait_the_sdk_backs_off_on_its_own(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    # The other faults ask for a short retry-after-ms (tests/support/fake_openai.py); with
    # no header the SDK's own backoff applies: 0.5 s less up to 25 % jitter at first.
    fake_openai.queue(Fault.unavailable(retry_after_ms=None), Reply("back"))
    response = await make_provider().complete(request())
    assert (response.text, response.retries) == ("back", 1)
    first, second = fake_openai.chat_requests
    assert isinstance(first.reply, Fault) and not first.reply.headers  # no server wait
    assert first.completed is not None
    assert second.arrived - first.completed >= 0.36


async def test_429_forever_is_a_rate_limit_error_at_the_wait_cap(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.responder = lambda body: Fault.rate_limited(retry_after_ms=100)
    started = time.monotonic()
    with pytest.raises(RateLimitError) as caught:
        await make_provider(max_retries=1, max_rate_limit_wait_s=0.5).complete(request())
    elapsed = time.monotonic() - started
    assert (caught.value.retries, caught.value.status) == (0, 429)
    # The waits went on past max_retries, until the next would pass the cap: at least
    # four requests, so at least three waits of at least the 0.1 s asked (the floor of
    # later waits grows: 0.2 s for the fourth, which passes the cap).
    assert 4 <= len(fake_openai.chat_requests) <= 6
    assert 0.3 <= elapsed < 1.5
    message = caught.value.message
    assert "the RPM limit (requests per minute, 3) of gpt-4o-mini was still reached" in message
    assert "provider.max_rate_limit_wait_s: 0.5 s" in message
    assert "max_rate_limit_wait_s" in (caught.value.hint or "")


async def test_503_then_success(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.queue(Fault.unavailable(), Reply("back"))
    response = await make_provider().complete(request())
    assert response.text == "back"
    assert response.retries == 1
    assert len(fake_openai.chat_requests) == 2


async def test_503_forever_is_a_server_error_after_max_retries(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.responder = lambda body: Fault.unavailable()
    with pytest.raises(ServerError) as caught:
        await make_provider(max_retries=3).complete(request())
    err = caught.value
    assert err.status == 503
    assert err.retries == 3
    assert "after 3 retries" in err.message
    assert "overloaded" in err.message
    assert len(fake_openai.chat_requests) == 4
    assert_no_key(err)


async def test_timeout_is_a_connection_error(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.queue(Fault.timeout(hang_s=3), times=2)
    with pytest.raises(ConnectionError) as caught:
        await make_provider(timeout_s=0.2, max_retries=1).complete(request())
    assert caught.value.retries == 1
    assert "0.2 s" in caught.value.message
    assert len(fake_openai.chat_requests) == 2


async def test_dropped_connection_is_retried(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.queue(Fault.drop(), Fault.drop(partial=False), Reply("survived"))
    response = await make_provider(max_retries=2).complete(request())
    assert response.text == "survived"
    assert response.retries == 2


async def test_dropped_connection_forever_is_a_connection_error(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.responder = lambda body: Fault.drop()
    with pytest.raises(ConnectionError) as caught:
        await make_provider(max_retries=1).complete(request())
    assert caught.value.retries == 1
    assert fake_openai.base_url in caught.value.message
    assert len(fake_openai.chat_requests) == 2


async def test_unreachable_endpoint_is_a_connection_error(key: str):
    with FakeOpenAI() as server:  # learn a free port, then close it
        base_url = server.base_url
    provider = OpenAIProvider(base_url, max_retries=1, timeout_s=2)  # the SDK's backoff: ~0.5 s
    try:
        with pytest.raises(ConnectionError) as caught:
            await provider.complete(request())
    finally:
        await provider.aclose()
    assert caught.value.retries == 1
    assert f"Could not reach {base_url} after 1 retry" in caught.value.message


# -- replies that cannot be read -----------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault.malformed(),  # not JSON
        Fault.no_choices(),  # JSON, but not a completion
        Fault.malformed(b"<html>502 Bad Gateway</html>", content_type="text/html"),
    ],
    ids=["not-json", "no-choices", "html"],
)
async def test_malformed_body_is_retried_once_then_fails(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, fault: Fault
):
    fake_openai.queue(fault, times=3)
    with pytest.raises(MalformedResponseError) as caught:
        await make_provider(max_retries=3).complete(request())
    assert caught.value.retries == 1
    assert "/v1" in (caught.value.hint or "")
    assert len(fake_openai.chat_requests) == 2  # one re-read, not the whole budget


async def test_malformed_body_then_success(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.queue(Fault.malformed(), Reply("readable"))
    response = await make_provider().complete(request())
    assert response.text == "readable"
    assert response.retries == 1


async def test_a_reread_waits_as_the_unreadable_reply_asks(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    # As the SDK waits between its retries: the server's retry-after-ms, else 0.5 s.
    fake_openai.queue(Fault.malformed(retry_after_ms=250), Reply("readable"))
    response = await make_provider().complete(request())
    assert (response.text, response.retries) == ("readable", 1)
    first, second = fake_openai.chat_requests
    assert first.completed is not None
    assert second.arrived - first.completed >= 0.245


async def test_malformed_body_without_retry_budget(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.queue(Fault.malformed(), Reply("never asked"))
    with pytest.raises(MalformedResponseError):
        await make_provider(max_retries=0).complete(request())
    assert len(fake_openai.chat_requests) == 1


async def test_stream_broken_before_any_text_is_retried(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.queue(Fault.broken_stream("cut", after_chunks=0), Reply("whole reply"))
    pieces: list[str] = []
    response = await make_provider().complete(request(), on_text=pieces.append)
    assert "".join(pieces) == response.text == "whole reply"
    assert response.retries == 1


async def test_stream_cut_mid_reply_fails_without_repeating_text(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.queue(Fault.broken_stream("cut", after_chunks=2), Reply("not reached"))
    pieces: list[str] = []
    with pytest.raises(ConnectionError) as caught:
        await make_provider().complete(request(), on_text=pieces.append)
    assert pieces == ["this ", "reply "]
    assert "broke" in caught.value.message
    assert caught.value.retryable
    assert len(fake_openai.chat_requests) == 1


@pytest.mark.parametrize(
    ("mode", "error"),
    [("garbage", MalformedResponseError), ("truncated", MalformedResponseError)],
)
async def test_unreadable_stream(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, mode: Any, error: type[Exception]
):
    fake_openai.queue(Fault.broken_stream(mode))
    with pytest.raises(error):
        await make_provider().complete(request(), on_text=lambda _: None)
    assert len(fake_openai.chat_requests) == 1


async def test_error_event_inside_a_stream(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.queue(Fault.broken_stream("error"))
    with pytest.raises(ServerError) as caught:
        await make_provider().complete(request(), on_text=lambda _: None)
    assert "The server had an error" in caught.value.message


# -- clients, concurrency, secrets ---------------------------------------------------------


async def test_one_client_is_reused(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    provider = make_provider()
    client = provider.client()
    await provider.complete(request())
    await provider.complete(request(), on_text=lambda _: None)
    assert provider.client() is client
    await provider.aclose()
    assert client.is_closed()
    assert provider.client() is not client  # a fresh one after aclose()


async def test_a_new_key_gets_a_new_client(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
):
    provider = make_provider()
    first = provider.client()
    monkeypatch.setenv(ENV, "fgt-another-key-0000")
    assert provider.client() is not first
    await provider.complete(request())
    assert fake_openai.chat_requests[-1].api_key == "fgt-another-key-0000"


async def test_retries_are_counted_per_call_under_concurrency(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    failures = {"flaky": 2}

    def responder(body: dict[str, Any]) -> Reply | Fault:
        said = body["messages"][-1]["content"]
        if failures.get(said, 0) > 0:
            failures[said] -= 1
            return Fault.server_error(502)
        return Reply(f"answer to {said}")

    fake_openai.responder = responder
    fake_openai.latency_s = 0.02  # keeps the calls overlapping
    provider = make_provider()
    flaky, steady, *others = await asyncio.gather(
        provider.complete(request("flaky")),
        provider.complete(request("steady")),
        *(provider.complete(request(f"other {i}")) for i in range(8)),
    )
    assert (flaky.retries, flaky.text) == (2, "answer to flaky")
    assert (steady.retries, steady.text) == (0, "answer to steady")
    assert all(r.retries == 0 for r in others)


async def test_key_never_appears_in_errors_or_reprs(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    echoing = "bad key {raw_key} (masked {key})"
    faults = [
        Fault.unauthorized(echoing),
        Fault.forbidden(echoing),
        Fault.model_not_found(echoing),
        Fault.bad_request(echoing),
        Fault.status_error(429, echoing, type="insufficient_quota", code="insufficient_quota"),
        Fault.server_error(500, echoing),
    ]
    provider = make_provider(max_retries=0)
    errors: list[ProviderError] = []
    for fault in faults:
        fake_openai.queue(fault)
        with pytest.raises(ProviderError) as caught:
            await provider.complete(request())
        errors.append(caught.value)
    assert len({type(e) for e in errors}) == 5
    assert all("[redacted key]" in e.message for e in errors)
    assert_no_key(provider, *errors)


# -- the fake server as a separate process (how benchmarks run it) -------------------------


def test_fake_server_runs_as_a_process():
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_openai", "--port", "0", "--latency-ms", "5"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with urllib.request.urlopen(f"{base_url}/models", timeout=30) as answer:
            assert b"gpt-4o-mini" in answer.read()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "served 1 requests" in err
