"""Rate limits: the request limiter (requests/tokens per minute, learned from the API's
headers or given), and 429s waited out on the wire against the loopback server's emulated
account limit."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flowgpt import Engine, QuotaExceededError, parse_workflow
from flowgpt.engine.events import EngineEvent
from flowgpt.providers._openai_rules import _rate_limit_wait, parse_duration
from flowgpt.providers.base import ChatRequest
from flowgpt.providers.limiter import RequestLimiter, note_account_limits, wait_out_rate_limit
from flowgpt.providers.openai import OpenAIProvider
from flowgpt.providers.rate_limits import (
    AccountLimits,
    WaitCapReached,
    model_family,
    request_tokens,
)
from tests.support.fake_openai import AccountLimit, FakeOpenAI, Fault, Reply

KEY = "sk-test-limit-000000000000000000"


def ask(max_tokens: int | None = None, text: str = "hi", model: str = "gpt-4o-mini") -> ChatRequest:
    return ChatRequest(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens
    )


async def _starts(
    limiter: RequestLimiter, n: int, request: ChatRequest | None = None, hold_s: float = 0.0
) -> list[float]:
    """When each of ``n`` requests, all asked for at once, was let through."""
    origin = time.monotonic()
    starts: list[float] = []

    async def one() -> None:
        async with limiter.slot(request):
            starts.append(time.monotonic() - origin)
            await asyncio.sleep(hold_s)

    await asyncio.gather(*(one() for _ in range(n)))
    return sorted(starts)


# -- pacing ------------------------------------------------------------------------------


def test_requests_per_minute_spread_requests_out() -> None:
    # 1,200/min = 20/s: a burst of one second's worth goes at once, the rest at 20/s.
    starts = asyncio.run(_starts(RequestLimiter(100, rpm=1200), 40))
    assert starts[19] < 0.3
    assert starts[-1] >= 0.85  # 20 more at 20/s take about a second
    # After the burst, the k-th request waits for k refills of 1/20 s: never ahead of the rate.
    assert all(starts[20 + k] >= (k + 1) * 0.05 - 0.02 for k in range(20))


def test_a_request_counts_max_tokens_or_its_prompt_whichever_is_larger() -> None:
    # OpenAI counts a request against TPM as max(max_tokens, the prompt estimated from
    # its characters): not the sum.
    assert request_tokens(ask(max_tokens=200)) == 200
    long = "word " * 500  # 2,500 characters
    assert request_tokens(ask(max_tokens=10, text=long)) == 625
    assert request_tokens(ask(text=long)) == 625  # no max_tokens: the prompt
    assert request_tokens(ask(max_tokens=1000, text=long)) == 1000


def test_tokens_per_minute_count_each_request_as_the_api_does() -> None:
    # 60,000 tokens/min = 1,000/s; ten requests of max_tokens 200 = 2,000 tokens.
    starts = asyncio.run(_starts(RequestLimiter(100, tpm=60_000), 10, ask(max_tokens=200)))
    assert starts[4] < 0.3  # the first second's worth at once
    assert 0.8 <= starts[-1] < 1.5  # 200 each, not 200 + the prompt


def test_a_request_bigger_than_the_bucket_still_goes() -> None:
    starts = asyncio.run(_starts(RequestLimiter(4, tpm=600), 1, ask(max_tokens=5_000)))
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


async def _enter(limiter: RequestLimiter, entered: asyncio.Event, request: ChatRequest) -> None:
    async with limiter.slot(request):
        entered.set()
        await asyncio.sleep(0.01)


def test_a_waiter_cancelled_as_its_place_comes_hands_the_place_on() -> None:
    # One place in flight: a request holds it, two wait for it. The first waiter is
    # cancelled just as the holder leaves (the place already handed to it, before it ran):
    # the place goes on to the second, not left empty with a request waiting for it.
    async def go() -> None:
        limiter = RequestLimiter(1)
        leave = asyncio.Event()
        first_in, second_in = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with limiter.slot(ask()):
                await leave.wait()
            first.cancel()

        held = asyncio.create_task(holder())
        await asyncio.sleep(0)
        first = asyncio.create_task(_enter(limiter, first_in, ask()))
        await asyncio.sleep(0)
        second = asyncio.create_task(_enter(limiter, second_in, ask()))
        await asyncio.sleep(0)
        assert limiter.in_flight == 1 and len(limiter._places) == 2
        leave.set()
        await held
        try:
            await asyncio.wait_for(second_in.wait(), 0.5)
        finally:
            second.cancel()
        assert first.cancelled() and not first_in.is_set()

    asyncio.run(go())


def test_a_waiter_a_rate_limit_holds_hands_its_place_on() -> None:
    # One place in flight, 30 requests a minute per model family (one at once, then one
    # every 2 s). A gpt-4o-mini request holds the place; another gpt-4o-mini and then a
    # gpt-4o request wait for it. When the holder leaves, the place goes to the second
    # gpt-4o-mini, which must wait ~2 s for its family's rate: it hands the place on to the
    # gpt-4o request, which goes at once.
    async def go() -> None:
        limiter = RequestLimiter(1, rpm=30)
        leave = asyncio.Event()
        first_in, second_in = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with limiter.slot(ask()):
                await leave.wait()

        held = asyncio.create_task(holder())
        await asyncio.sleep(0)
        first = asyncio.create_task(_enter(limiter, first_in, ask()))
        await asyncio.sleep(0)
        second = asyncio.create_task(_enter(limiter, second_in, ask(model="gpt-4o")))
        await asyncio.sleep(0)
        assert limiter.in_flight == 1 and len(limiter._places) == 2
        leave.set()
        await held
        try:
            await asyncio.wait_for(second_in.wait(), 0.5)
            assert not first_in.is_set()
        finally:
            first.cancel()
            second.cancel()

    asyncio.run(go())


def test_until_a_reply_tells_the_limits_at_most_eight_requests_go() -> None:
    # A batch must not open with a burst of 429s: until the first reply (here one that
    # tells no limits, as a local server's) only 8 of 30 go; then every other one at once.
    starts = asyncio.run(_starts(RequestLimiter(50), 30, ask(max_tokens=10), hold_s=0.1))
    assert max(starts[:8]) < 0.05
    assert min(starts[8:]) >= 0.09 and max(starts[8:]) < 0.2


def test_limits_learned_from_a_reply_pace_every_later_request() -> None:
    # What a provider does with a reply's x-ratelimit-* headers: 1,200 RPM = 20/s, paced at
    # 98 % of it (19.6/s) with a second's worth at most at once.
    async def go() -> list[float]:
        limiter = RequestLimiter(100)
        async with limiter.slot(ask(max_tokens=10)):
            note_account_limits(AccountLimits(requests=1200, remaining_requests=1199))
        assert limiter.limits("gpt-4o-mini-2024-07-18") == {"requests": pytest.approx(1176)}
        return await _starts(limiter, 40, ask(max_tokens=10))

    starts = asyncio.run(go())
    assert starts[18] < 0.3  # a second's worth (19.6, one already spent) at once
    assert starts[-1] >= 0.95  # then 19.6/s


def test_a_reply_saying_the_account_has_less_left_holds_requests_back() -> None:
    # 60,000 TPM = 1,000/s. The reply says 2,000 tokens are in use (another process on the
    # same key): the next request of 100 waits until the account has room for it, ~1 s.
    async def go(remaining: int) -> float:
        limiter = RequestLimiter(10)
        async with limiter.slot(ask(max_tokens=100)):
            note_account_limits(AccountLimits(tokens=60_000, remaining_tokens=remaining))
        started = time.monotonic()
        async with limiter.slot(ask(max_tokens=100)):
            return time.monotonic() - started

    assert asyncio.run(go(60_000 - 100)) < 0.1  # as counted here: no wait
    assert 0.9 <= asyncio.run(go(60_000 - 2_000)) < 1.6


def test_model_family_shares_the_limits_of_snapshots_and_fine_tunes() -> None:
    assert model_family("gpt-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert model_family("ft:gpt-4o-mini-2024-07-18:acme::abc123") == "gpt-4o-mini"
    assert model_family("gpt-4-0613") == "gpt-4"
    assert model_family("o4-mini") == "o4-mini"


# -- 429s waited out -----------------------------------------------------------------------


def test_a_429_holds_every_request_of_the_model_for_the_wait() -> None:
    async def go() -> tuple[RequestLimiter, list[float], float]:
        limiter = RequestLimiter(4)
        origin = time.monotonic()
        starts: list[float] = []
        waited = 0.0

        async def one(i: int) -> None:
            nonlocal waited
            async with limiter.slot(ask()):
                starts.append(time.monotonic() - origin)
                if i == 0:  # what the provider does when a rate-limit 429 arrives
                    waited = await wait_out_rate_limit(
                        0.3, limit="TPM", cap_s=60, first_at=time.monotonic()
                    )

        await asyncio.gather(*(one(i) for i in range(3)))
        return limiter, starts, waited

    limiter, starts, waited = asyncio.run(go())
    stats = limiter.stats
    assert stats.rate_limited == 1 and stats.waited_s == pytest.approx(0.3, abs=0.05)
    assert 0.3 <= waited < 0.45  # the wait asked for, plus at most 10 % jitter
    assert starts[0] < 0.1 and min(starts[1:]) >= 0.29  # the others were held too
    # No limits known (no headers): concurrency was halved, each success gives 1/16 back.
    assert limiter.factor == pytest.approx(0.5 + 3 / 16)


def test_the_wait_cap_counts_from_the_first_429_of_the_model() -> None:
    async def go() -> WaitCapReached:
        limiter = RequestLimiter(4)
        async with limiter.slot(ask()):
            first = time.monotonic()
            await wait_out_rate_limit(0.2, limit="RPM", cap_s=0.5, first_at=first)
            with pytest.raises(WaitCapReached) as caught:
                await wait_out_rate_limit(0.4, limit="RPM", cap_s=0.5, first_at=first)
        return caught.value

    capped = asyncio.run(go())
    assert capped.asked_s == 0.4 and capped.cap_s == 0.5 and 0.2 <= capped.limited_s < 0.4


def test_a_wait_longer_than_the_cap_fails_at_once_and_holds_nobody() -> None:
    async def go() -> float:
        limiter = RequestLimiter(4)
        started = time.monotonic()
        async with limiter.slot(ask()):
            with pytest.raises(WaitCapReached):
                await wait_out_rate_limit(3600, limit=None, cap_s=300, first_at=started)
        assert limiter.holds() == []
        async with limiter.slot(ask()):
            return time.monotonic() - started

    assert asyncio.run(go()) < 0.1


def test_the_limiter_says_what_holds_requests_back() -> None:
    async def go() -> list[str]:
        limiter = RequestLimiter(4)
        async with limiter.slot(ask()):
            note_account_limits(AccountLimits(tokens=120_000, remaining_tokens=119_000))
        seen = []
        waiting = asyncio.ensure_future(_starts(limiter, 60, ask(max_tokens=100)))
        await asyncio.sleep(0.1)
        seen += [str(h) for h in limiter.holds()]
        await waiting
        async with limiter.slot(ask()):
            task = asyncio.ensure_future(
                wait_out_rate_limit(2, limit="TPM", cap_s=60, first_at=time.monotonic())
            )
            await asyncio.sleep(0.05)
            seen += [str(h) for h in limiter.holds()]
            task.cancel()
        return seen

    paced, limited = asyncio.run(go())
    assert paced == "gpt-4o-mini: paced to the TPM limit (120,000 tokens/min)"
    assert limited.startswith("gpt-4o-mini: the TPM limit (120,000 tokens/min) reached (429)")


# -- what a 429 asks for -------------------------------------------------------------------


def test_openai_durations() -> None:
    assert parse_duration("6m0s") == 360
    assert parse_duration("1.2s") == pytest.approx(1.2)
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("2") == 2
    assert parse_duration("soon") is None


def test_the_wait_comes_from_retry_after_then_the_reset_header_then_the_message() -> None:
    message = (
        "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): "
        "Limit 120000, Used 119500, Requested 600. Please try again in 300ms. Visit ..."
    )
    resets = {"x-ratelimit-reset-tokens": "1.5s", "x-ratelimit-reset-requests": "20ms"}
    first = _rate_limit_wait({"retry-after-ms": "250", **resets}, message)
    assert (first.wait, first.retry_after, first.limit, first.value) == (0.25, True, "TPM", 120000)
    assert _rate_limit_wait({"retry-after": "2", **resets}, message).wait == 2
    # The reset of the limit that was reached (tokens), not the other one.
    assert _rate_limit_wait(resets, message).wait == 1.5
    assert not _rate_limit_wait(resets, message).retry_after
    assert _rate_limit_wait({}, message).wait == pytest.approx(0.3)
    # Unnamed in the message: the limit with nothing left, as the headers tell.
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-limit-requests": "500"}
    unnamed = _rate_limit_wait(headers, "Too many requests")
    assert (unnamed.wait, unnamed.limit, unnamed.value) == (None, "RPM", 500)


# -- on the wire: the real SDK against the loopback server --------------------------------

ONE_STEP = """\
version: 1
name: rows
defaults: {{model: gpt-4o-mini, max_tokens: {max_tokens}}}
provider: {{max_retries: 0, concurrency: {concurrency}{extra}}}
inputs:
  n: {{type: integer}}
steps:
  - id: say
    prompt: "Say {{{{ inputs.n }}}}"
"""


def one_step(max_tokens: int = 20, concurrency: int = 8, extra: str = "") -> Any:
    return parse_workflow(
        ONE_STEP.format(max_tokens=max_tokens, concurrency=concurrency, extra=extra)
    )


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return monkeypatch


async def _batch(engine: Engine, workflow: Any, n: int) -> list[Any]:
    return [row async for row in engine.run_batch(workflow, [{"n": i} for i in range(n)])]


def _limited(n: int) -> Fault:
    return Fault.rate_limited(
        retry_after_ms=None,
        message=f"Rate limit reached for gpt-4o-mini in organization org-x on tokens per min "
        f"(TPM): Limit 30000, Used 29990, Requested 20. Please try again in {n}ms.",
    )


async def test_a_batch_whose_every_row_first_gets_a_429_finishes_every_row(
    env: pytest.MonkeyPatch,
) -> None:
    # Each row's first request is refused (no retry-after; "try again in 30ms"); with
    # max_retries 0 every row still ends ok: a rate limit is waited out, not retried.
    seen: set[str] = set()

    def responder(body: dict[str, Any]) -> Reply | Fault:
        prompt = body["messages"][-1]["content"]
        if prompt not in seen:
            seen.add(prompt)
            return _limited(30)
        return Reply(f"done {prompt}")

    events: list[EngineEvent] = []
    with FakeOpenAI(responder=responder, latency_ms=5) as server:
        env.setenv("OPENAI_BASE_URL", server.base_url)
        async with Engine(on_event=events.append) as engine:
            rows = await _batch(engine, one_step(), 30)
        requests = server.chat_requests
    assert [r.status for r in rows] == ["ok"] * 30
    assert all(r.result.steps["say"].retries == 0 for r in rows)
    assert len(requests) == 60
    assert sum(isinstance(r.reply, Fault) for r in requests) == 30
    assert engine.rate_limits.rate_limited == 30
    assert 0.03 <= engine.rate_limits.waited_s < 3
    held = [e for e in events if e.kind == "rate_limited"]
    assert len(held) == 30 and held[0].hold is not None and held[0].hold.limit == "TPM"
    assert held[0].message and "the TPM limit (30,000 tokens/min) reached (429)" in held[0].message


async def test_a_batch_is_paced_to_the_account_limit_the_headers_tell(
    env: pytest.MonkeyPatch,
) -> None:
    # The server's account: 30,000 TPM (500/s, at most one second's worth at once); each
    # request counts max_tokens 50. 40 rows need 2,000 tokens: about 3 s, with no flag.
    with FakeOpenAI(latency_ms=20, account_limit=AccountLimit(tpm=30_000)) as server:
        env.setenv("OPENAI_BASE_URL", server.base_url)
        async with Engine() as engine:
            rows = await _batch(engine, one_step(max_tokens=50, concurrency=20), 40)
        requests = server.chat_requests
    assert [r.status for r in rows] == ["ok"] * 40
    assert server.rate_limited <= 2  # learned from the first replies, then paced
    assert len(requests) == 40 + server.rate_limited
    # 1,500 tokens past the first second's 500, at 500/s: the last request goes about 3 s
    # after the first; the 98 % margin and the loop's timing (a busy machine) add some.
    span = requests[-1].arrived - requests[0].arrived
    assert 2.9 <= span < 5.0
    assert engine.rate_limits.rate_limited == server.rate_limited


async def test_insufficient_quota_fails_at_once(env: pytest.MonkeyPatch) -> None:
    with FakeOpenAI() as server:
        env.setenv("OPENAI_BASE_URL", server.base_url)
        server.queue(Fault.quota_exceeded())
        async with Engine() as engine:
            started = time.monotonic()
            with pytest.raises(QuotaExceededError) as caught:
                await engine.run(one_step(), {"n": 1})
            elapsed = time.monotonic() - started
        assert len(server.chat_requests) == 1
    assert elapsed < 0.5 and engine.rate_limits.rate_limited == 0
    assert "retrying cannot help" in (caught.value.hint or "")


async def test_one_429_asking_for_an_hour_fails_its_row_and_stalls_no_other(
    env: pytest.MonkeyPatch,
) -> None:
    # Issue 15: a Retry-After of 3600 s on one row held every row of the batch. Longer
    # than the wait cap, it fails that request at once, saying why; the others run on.
    with FakeOpenAI(latency_ms=20) as server:
        env.setenv("OPENAI_BASE_URL", server.base_url)
        server.queue(Fault.rate_limited(retry_after_s=3600))
        async with Engine() as engine:
            started = time.monotonic()
            rows = await _batch(engine, one_step(concurrency=4), 12)
            elapsed = time.monotonic() - started
    failed = [r for r in rows if not r.ok]
    assert len(failed) == 1 and len([r for r in rows if r.ok]) == 11
    assert "asked to wait 3,600 s, longer than the wait cap" in (failed[0].error or "")
    assert "provider.max_rate_limit_wait_s: 300 s" in (failed[0].error or "")
    assert elapsed < 3


def test_the_wait_cap_ends_an_endless_limit_with_a_message_naming_it(tmp_path: Path) -> None:
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(
        ONE_STEP.format(max_tokens=20, concurrency=2, extra=", max_rate_limit_wait_s: 1")
    )
    with FakeOpenAI(responder=lambda body: _limited(100)) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "flowgpt", "run", str(workflow), "-i", "n=1", "--no-store"],
            capture_output=True,
            text=True,
            env={**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.base_url},
            timeout=60,
        )
        sent = len(server.chat_requests)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert (
        "the TPM limit (tokens per minute, 30,000) of gpt-4o-mini was still reached after "
        "waiting" in proc.stderr
    )
    assert "the wait cap (provider.max_rate_limit_wait_s: 1 s)" in proc.stderr
    assert "lower max_tokens, --concurrency or --tpm" in proc.stderr
    assert sent >= 5  # waited out again and again (max_retries is 0), then stopped
    # The run's summary counts the 429s it waited out (all but the last).
    assert f"{sent - 1} rate-limit 429s waited out (" in proc.stderr


BATCH_FILES = ("--data", "rows.jsonl", "--out", "out.jsonl")


def test_the_batch_summary_says_how_many_429s_were_waited_out(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(ONE_STEP.format(max_tokens=20, concurrency=4, extra=""))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(10)))
    with FakeOpenAI() as server:
        server.queue(_limited(50), _limited(50), _limited(50))
        proc = subprocess.run(
            [sys.executable, "-m", "flowgpt", "batch", "wf.yaml", *BATCH_FILES],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.base_url},
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    # A line when a 429 holds requests back (at most one per ten seconds) ...
    held = [line for line in proc.stderr.splitlines() if line.startswith("rate limit:")]
    assert held == [
        "rate limit: gpt-4o-mini: the TPM limit (30,000 tokens/min) reached (429), held 0.1 s"
    ]
    # ... and the summary counts them all.
    assert "10 ok, 0 failed" in proc.stderr
    assert "· 3 rate-limit 429s waited out (" in proc.stderr


def test_the_emulated_account_limit_speaks_as_openai_does() -> None:
    # What the benchmark and the tests above rely on: OpenAI's wording and headers.
    import openai

    async def go(base_url: str) -> tuple[list[Any], Any]:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0)
        messages: Any = [{"role": "user", "content": "hi"}]
        replies = []
        try:
            for _ in range(2):
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=messages, max_tokens=45
                )
                replies.append(raw.headers)
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=messages, max_tokens=45
                )
        finally:
            await client.close()
        return replies, caught.value

    # 6,000 TPM over 1 s windows: 100 tokens at once, then 100/s; each request counts 45.
    with FakeOpenAI(account_limit=AccountLimit(rpm=600, tpm=6000)) as server:
        headers, error = asyncio.run(go(server.base_url))
    first = headers[0]
    assert first["x-ratelimit-limit-tokens"] == "6000"
    assert first["x-ratelimit-limit-requests"] == "600"
    assert first["x-ratelimit-remaining-tokens"] == "5955"
    assert first["x-ratelimit-remaining-requests"] == "599"
    assert re.fullmatch(r"\d+ms", first["x-ratelimit-reset-tokens"])
    assert error.code == "rate_limit_exceeded" and "retry-after" not in error.response.headers
    assert error.response.headers["x-ratelimit-limit-tokens"] == "6000"
    assert re.search(
        r"for gpt-4o-mini in organization \S+ on tokens per min \(TPM\): Limit 6000, "
        r"Used \d+, Requested 45\. Please try again in \d+ms\.",
        error.message,
    )
    assert server.rate_limited == 1


async def test_a_streamed_request_waits_out_a_429_too(env: pytest.MonkeyPatch) -> None:
    with FakeOpenAI() as server:
        server.queue(_limited(50), Reply("hello there"))
        provider = OpenAIProvider(base_url=server.base_url, max_retries=0)
        pieces: list[str] = []
        try:
            response = await provider.complete(ask(max_tokens=5), on_text=pieces.append)
        finally:
            await provider.aclose()
        first, second = server.chat_requests
    assert (response.text, response.retries, pieces) == ("hello there", 0, ["hello ", "there"])
    assert first.stream and second.stream and first.completed is not None
    assert second.arrived - first.completed >= 0.05


async def test_429s_asking_to_wait_a_millisecond_are_waited_out_ever_longer(
    env: pytest.MonkeyPatch,
) -> None:
    # A server that keeps asking for 1 ms gets no hot loop: the n-th 429 of a request is
    # waited out for at least 25 ms doubling (25, 50, 100, 200 ms; at most 1 s).
    with FakeOpenAI() as server:
        server.queue(Fault.rate_limited(retry_after_ms=1), times=4)
        server.queue(Reply("at last"))
        provider = OpenAIProvider(base_url=server.base_url, max_retries=0)
        try:
            response = await provider.complete(ask(max_tokens=5))
        finally:
            await provider.aclose()
        requests = server.chat_requests
    assert response.text == "at last" and len(requests) == 5
    gaps = [b.arrived - (a.completed or b.arrived) for a, b in itertools.pairwise(requests)]
    assert all(gap >= floor for gap, floor in zip(gaps, (0.025, 0.05, 0.1, 0.2), strict=True))


FOR_EACH = """\
version: 1
name: many
defaults: {model: gpt-4o-mini, max_tokens: 20}
provider: {concurrency: 2, max_retries: 0}
inputs:
  items: {type: array}
steps:
  - id: each
    for_each: inputs.items
    as: item
    prompt: "Say {{ item }}"
"""


def test_a_retry_after_holds_every_request_of_the_engine(env: pytest.MonkeyPatch) -> None:
    # A server that tells no limits (no x-ratelimit-* headers): its Retry-After holds every
    # request, and fewer go at once for a while.
    with FakeOpenAI(latency_ms=30) as server:
        env.setenv("OPENAI_BASE_URL", server.base_url)
        server.queue(Fault.rate_limited(retry_after_s=0.5))
        engine = Engine()
        result = engine.run_sync(parse_workflow(FOR_EACH), {"items": list(range(6))})
        requests = server.chat_requests
    assert result.ok and engine.rate_limits.rate_limited == 1
    rejected = requests[0]
    assert isinstance(rejected.reply, Fault)
    later = [r for r in requests[1:] if r.arrived > rejected.arrived]
    # The request in flight alongside the 429 ran on; every request started after it
    # waited for its Retry-After, the rejected one's second try included ...
    fresh = [r for r in later if r.arrived > (requests[1].completed or 0)]
    assert fresh and all(r.arrived >= rejected.arrived + 0.45 for r in fresh)
    # ... and with concurrency halved (2 -> 1), they no longer overlapped.
    ordered = sorted(fresh, key=lambda r: r.arrived)
    assert all((a.completed or 0) <= b.arrived + 0.005 for a, b in itertools.pairwise(ordered))
    assert len(requests) == 7  # six items, one waited out
