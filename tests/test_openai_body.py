"""The openai provider sends exactly what ``chat.completions.create()`` would send.

The provider posts its own JSON body through the SDK's ``post()`` rather than calling
``create()``, skipping the SDK's param transform (an identity on flowgpt's plain JSON
values, and about a quarter of the SDK's CPU per request). These tests hold it to that:
for any request flowgpt can build, the body and headers that reach the server are the ones
a plain ``AsyncOpenAI`` sends through ``create()`` with the same arguments, over real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowgpt.providers.base import ChatRequest, Message
from flowgpt.providers.openai import OpenAIProvider, uses_max_completion_tokens
from tests.support.fake_openai import FakeOpenAI

KEY = "fgt-body-test-key"
ENV = "FLOWGPT_BODY_TEST_KEY"
TIMEOUT_S = 7.0
MAX_RETRIES = 1


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def create_kwargs(request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The arguments a hand-written app passes to create() for this request."""
    settings_ = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stop": request.stop,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "response_format": request.response_format,
    }
    kwargs: dict[str, Any] = {k: v for k, v in settings_.items() if v is not None}
    if request.max_tokens is not None:
        name = (
            "max_completion_tokens" if uses_max_completion_tokens(request.model) else "max_tokens"
        )
        kwargs[name] = request.max_tokens
    if stream:
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
    return {"model": request.model, "messages": request.messages, **kwargs}


async def send_both(server: FakeOpenAI, request: ChatRequest, *, stream: bool) -> None:
    """One request through create() on a plain AsyncOpenAI, then one through the provider."""
    client = openai.AsyncOpenAI(
        api_key=KEY, base_url=server.base_url, timeout=TIMEOUT_S, max_retries=MAX_RETRIES
    )
    provider = OpenAIProvider(
        server.base_url,
        api_key_env=ENV,
        timeout_s=TIMEOUT_S,
        max_retries=MAX_RETRIES,
        environ={ENV: KEY},
    )
    try:
        reply: Any = await client.chat.completions.create(**create_kwargs(request, stream=stream))
        if stream:
            async with reply:
                async for _ in reply:
                    pass
        await provider.complete(request, on_text=(lambda _: None) if stream else None)
    finally:
        await client.close()
        await provider.aclose()


# -- what flowgpt can put in a request -------------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40)},
        optional={"name": names},
    ),
    min_size=1,
    max_size=4,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
response_formats = (
    st.none()
    | st.sampled_from([{"type": "json_object"}, {"type": "text"}])
    | st.builds(
        lambda name, schema, strict: {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": strict},
        },
        names,
        st.dictionaries(st.sampled_from(["type", "properties", "required", "items"]), json_values),
        st.booleans(),
    )
)
maybe_float = st.none() | st.floats(-2, 2, allow_nan=False)
requests = st.builds(
    ChatRequest,
    model=st.sampled_from(
        [
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-3.5-turbo",
            "o1",
            "o3-mini",
            "gpt-5-mini",
            "ft:o4-mini:acme::x1",
            "llama3.1:8b",
            "openrouter/openai/gpt-5",
        ]
    ),
    messages=messages,
    temperature=maybe_float,
    top_p=st.none() | st.floats(0, 1, allow_nan=False),
    max_tokens=st.none() | st.integers(1, 200_000),
    seed=st.none() | st.integers(-(2**31), 2**31 - 1),
    stop=st.none()
    | st.text(min_size=1, max_size=5)
    | st.lists(st.text(min_size=1, max_size=5), max_size=4),
    presence_penalty=maybe_float,
    frequency_penalty=maybe_float,
    response_format=response_formats,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=requests, stream=st.booleans())
def test_the_provider_sends_what_create_sends(
    server: FakeOpenAI, request: ChatRequest, stream: bool
) -> None:
    server.reset()
    asyncio.run(send_both(server, request, stream=stream))

    by_create, by_provider = server.chat_requests
    assert by_provider.body == by_create.body
    assert by_provider.headers == by_create.headers  # auth, User-Agent, timeouts, ...
    assert by_provider.stream is stream


async def test_the_user_agent_is_the_sdks(fake_openai: FakeOpenAI) -> None:
    provider = OpenAIProvider(fake_openai.base_url, api_key_env=ENV, environ={ENV: KEY})
    try:
        chat: list[Message] = [{"role": "user", "content": "hi"}]
        await provider.complete(ChatRequest(model="gpt-4o-mini", messages=chat))
    finally:
        await provider.aclose()

    (sent,) = fake_openai.chat_requests
    assert sent.headers["user-agent"] == f"AsyncOpenAI/Python {openai.__version__}"
