"""The request limiter: requests/tokens per minute and the adaptive slowdown on 429s."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from flowgpt import Engine, parse_workflow
from flowgpt.providers.limiter import RequestLimiter, note_rate_limited
from flowgpt.providers.openai import OpenAIProvider
from tests.support.fake_openai import FakeOpenAI, Fault


async def _starts(limiter: RequestLimiter, n: int, tokens: int = 0) -> list[float]:
    """When each of ``n`` requests, all asked for at once, was let through."""
    origin = time.monotonic()
    starts: list[float] = []

    async def one() -> None:
        async with limiter.slot(tokens):
            starts.append(time.monotonic() - origin)

    await asyncio.gather(*(one() for _ in range(n)))
    return sorted(starts)


def test_requests_per_minute_spread_requests_out() -> None:
    # 1,200/min = 20/s: a burst of one second's worth goes at once, the rest at 20/s.
    starts = asyncio.run(_starts(RequestLimiter(100, rpm=1200), 40))
    assert starts[19] < 0.3
    assert starts[-1] >= 0.85  # 20 more at 20/s take about a second
    # After the burst, the k-th request waits for k refills of 1/20 s: never ahead of the rate.
    assert all(starts[20 + k] >= (k + 1) * 0.05 - 0.02 for k in range(20))


def test_tokens_per_minute_count_each_request_worst_case() -> None:
    # 60,000 tokens/min = 1,000/s; ten requests of 200 tokens = 2,000 tokens.
    starts = asyncio.run(_starts(RequestLimiter(100, tpm=60_000), 10, tokens=200))
    assert starts[4] < 0.3  # the first second's worth at once
    assert starts[-1] >= 0.8


def test_a_request_bigger_than_the_bucket_still_goes() -> None:
    starts = asyncio.run(_starts(RequestLimiter(4, tpm=600), 1, tokens=5_000))
    assert starts == [pytest.approx(0, abs=0.2)]


def test_without_rate_limits_only_concurrency_holds_requests() -> None:
    limiter = RequestLimiter(3)
    most = 0

    async def one() -> None:
        nonlocal most
        async with limiter.slot():
            most = max(most, limiter.in_flight)
            await asyncio.sleep(0.01)

    async def go() -> None:
        await asyncio.gather(*(one() for _ in range(12)))

    asyncio.run(go())
    assert most == 3 and limiter.in_flight == 0


def test_a_429_halves_concurrency_and_holds_new_requests_until_retry_after() -> None:
    async def go() -> tuple[RequestLimiter, list[float]]:
        limiter = RequestLimiter(4)
        origin = time.monotonic()
        starts: list[float] = []

        async def one(i: int) -> None:
            async with limiter.slot():
                starts.append(time.monotonic() - origin)
                if i == 0:
                    note_rate_limited(0.3)  # what the provider does when a 429 arrives
                    assert limiter.allowed == 2

        await asyncio.gather(*(one(i) for i in range(3)))
        return limiter, starts

    limiter, starts = asyncio.run(go())
    assert limiter.rate_limited == 1
    assert starts[0] < 0.1 and min(starts[1:]) >= 0.29  # held for the Retry-After
    # Each success gives back 1/16 of the full rate.
    assert limiter.factor == pytest.approx(0.5 + 3 / 16)
    assert limiter.allowed == 2


WF = """\
version: 1
name: many
defaults: {model: gpt-4o-mini, max_tokens: 20}
provider: {concurrency: 2, max_retries: 3}
inputs:
  items: {type: array}
steps:
  - id: each
    for_each: inputs.items
    as: item
    prompt: "Say {{ item }}"
"""


def test_429s_slow_every_request_of_the_engine_down(monkeypatch: Any) -> None:
    with FakeOpenAI(latency_ms=30) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-limit-000000000000000000")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        server.queue(Fault.rate_limited(retry_after_s=0.5))
        provider = OpenAIProvider(max_retries=3)
        engine = Engine(provider=provider)
        result = engine.run_sync(parse_workflow(WF), {"items": list(range(6))})
        requests = server.chat_requests
    assert result.ok
    rejected = requests[0]
    assert rejected.reply is not None and "429" in repr(rejected.reply)
    later = [r for r in requests[1:] if r.arrived > rejected.arrived]
    # The request in flight alongside the 429 ran on; every request started after the 429
    # waited for its Retry-After, the SDK's retry of the rejected one included ...
    fresh = [r for r in later if r.arrived > (requests[1].completed or 0)]
    assert fresh and all(r.arrived >= rejected.arrived + 0.45 for r in fresh)
    # ... and with concurrency halved (2 -> 1), they no longer overlapped.
    ordered = sorted(fresh, key=lambda r: r.arrived)
    assert all((a.completed or 0) <= b.arrived + 0.005 for a, b in itertools.pairwise(ordered))
    assert len(requests) == 7  # six items, one retried
