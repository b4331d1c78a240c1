"""DESIGN.md §4's fault table end to end: the engine (and, for some rows, the ``flowgpt``
command) with the real openai SDK against the loopback server in tests/support/fake_openai.py.

tests/test_openai_provider.py checks each fault at the provider boundary; here the same
faults go through a whole run, so what is checked is what a user sees: the run's error and
exit code, the partial result kept in ``error.result``, the retries recorded per step, and the
requests the server really received (with its own arrival and completion times).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flowgpt import Engine, OutputValidationError, parse_workflow
from flowgpt.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionError,
    FlowgptError,
    ProviderError,
    QuotaExceededError,
    ServerError,
)
from flowgpt.providers.openai import OpenAIProvider
from flowgpt.results import RunResult
from tests.support.fake_openai import FakeOpenAI, Fault, RecordedRequest, Reply

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent

# Not "sk-"-shaped on purpose: errors.redact cannot hide a leak of it, only the provider's
# scrubbing of the literal key can.
KEY = "fgt-faults-7c1e9a0b4d2f6e83"

# $1 / $2 per million tokens: a step with 100 prompt and 50 completion tokens costs $0.0002.
CHAIN = """\
version: 1
name: faults
defaults: {{model: gpt-4o-mini, max_tokens: 50}}
pricing:
  gpt-4o-mini: {{input: 1.0, output: 2.0}}
provider: {provider}
inputs:
  topic: {{type: string}}
steps:
  - id: one
    prompt: "one: {{{{ inputs.topic }}}}"
  - id: two
    prompt: "two: {{{{ steps.one.output }}}}"
  - id: three
    prompt: "three: {{{{ steps.two.output }}}}"
outputs:
  final: "{{{{ steps.three.output }}}}"
"""


def chain(**provider: Any) -> str:
    """The 3-step chain; ``provider`` becomes its ``provider:`` section (JSON is YAML)."""
    return CHAIN.format(provider=json.dumps(provider))


def price(prompt_tokens: int, completion_tokens: int) -> Decimal:
    return (prompt_tokens * Decimal(1) + completion_tokens * Decimal(2)) / 1_000_000


def prompt_of(rec: RecordedRequest) -> str:
    content: str = rec.body["messages"][-1]["content"]
    return content


def assert_key_hidden(err: FlowgptError) -> None:
    shown = [str(err), repr(err), err.format(), err.message, err.hint or ""]
    if err.result is not None:
        shown.append(json.dumps(err.result.to_dict(), default=str))
        shown.append(err.result.report())
    for text in shown:
        assert KEY not in text


MakeProvider = Callable[..., OpenAIProvider]


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return KEY


@pytest.fixture
async def make_provider(fake_openai: FakeOpenAI, key: str) -> AsyncIterator[MakeProvider]:
    made: list[OpenAIProvider] = []

    def make(**kwargs: Any) -> OpenAIProvider:
        kwargs.setdefault("timeout_s", 5)
        kwargs.setdefault("max_retries", 2)
        provider = OpenAIProvider(base_url=fake_openai.base_url, **kwargs)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def run_chain(provider: OpenAIProvider, text: str = "") -> RunResult:
    return await Engine(provider=provider).run(parse_workflow(text or chain()), {"topic": "tea"})


async def failed_run(provider: OpenAIProvider, text: str = "") -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await run_chain(provider, text=text)
    return caught.value


# -- 401: fail at once, name the variable that was read, never show the key -----------------


@pytest.mark.parametrize("api_key_env", ["OPENAI_API_KEY", "ACME_LLM_KEY"])
async def test_401_fails_at_once_naming_the_variable_read(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, api_key_env: str
) -> None:
    # The engine builds the provider from the workflow's own `provider:` section here.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv(api_key_env, KEY)
    # A careless proxy that echoes the whole key back in its error message.
    fake_openai.queue(Fault.unauthorized("Incorrect API key provided: {raw_key}."), times=5)
    text = chain(base_url=fake_openai.base_url, api_key_env=api_key_env, max_retries=4)

    with pytest.raises(AuthenticationError) as caught:
        await Engine().run(parse_workflow(text), {"topic": "tea"})

    err = caught.value
    assert (err.status, err.retries, err.exit_code) == (401, 0, 1)
    sent = fake_openai.chat_requests
    assert len(sent) == 1 and sent[0].api_key == KEY  # that variable was read, once
    assert f"environment variable {api_key_env}" in err.message
    assert api_key_env in (err.hint or "")
    if api_key_env != "OPENAI_API_KEY":
        assert "OPENAI_API_KEY" not in err.format()
    assert "Incorrect API key provided: [redacted key]" in err.message
    assert_key_hidden(err)
    result = err.result
    assert result.status == "failed"
    assert [s.status for s in result.steps.values()] == ["failed", "pending", "pending"]


# -- 429 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "wait_s"),
    [
        (Fault.rate_limited(retry_after_s=1), 1.0),
        (Fault.rate_limited(retry_after_ms=400), 0.4),
    ],
    ids=["retry-after", "retry-after-ms"],
)
async def test_429_waits_as_asked_then_succeeds_without_an_error_retry(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, fault: Fault, wait_s: float
) -> None:
    fake_openai.queue(
        Reply("first", prompt_tokens=100, completion_tokens=50), fault, Reply("second"), "third"
    )
    # The server-directed wait, whatever it is: neither the SDK's backoff nor a shorter
    # one; and outside the error retries (there are none here).
    result = await run_chain(make_provider(max_retries=0))

    assert result.ok and result.outputs == {"final": "third"}
    steps = result.steps
    assert [steps[s].retries for s in ("one", "two", "three")] == [0, 0, 0]
    assert [steps[s].n_attempts for s in ("one", "two", "three")] == [1, 1, 1]
    sent = fake_openai.chat_requests
    assert [prompt_of(r).split(":")[0] for r in sent] == ["one", "two", "two", "three"]
    limited, retried = sent[1], sent[2]
    assert limited.completed is not None
    # Server times: the retry arrived no sooner than asked (2 % slack for clock rounding).
    assert retried.arrived - limited.completed >= wait_s * 0.98


async def test_429_retry_after_zero_is_no_directive(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
) -> None:
    # Retry-After: 0 says nothing (the SDK treats it so too); the message names no time
    # either ("try again later"), so the wait is the default second, not a hot loop.
    fake_openai.queue(Fault.rate_limited(retry_after_s=0), "one", "two", "three")
    result = await run_chain(make_provider(max_retries=2))
    assert result.ok and result.steps["one"].retries == 0
    limited, retried = fake_openai.chat_requests[:2]
    assert limited.completed is not None
    assert retried.arrived - limited.completed >= 0.98


async def test_insufficient_quota_fails_at_once(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
) -> None:
    fake_openai.queue(Reply("first", prompt_tokens=100, completion_tokens=50))
    fake_openai.queue(Fault.quota_exceeded(), times=5)

    err = await failed_run(make_provider(max_retries=4))

    assert isinstance(err, QuotaExceededError)
    assert (err.status, err.retries, err.exit_code) == (429, 0, 1)
    assert len(fake_openai.chat_requests) == 2  # step one, then step two once: no retry
    assert "retrying cannot help" in (err.hint or "")
    assert "billing" in err.format()
    assert "insufficient_quota" in err.message
    assert err.result.steps["one"].status == "ok"
    assert err.result.steps["two"].status == "failed"
    assert err.result.cost_usd == price(100, 50)


# -- 5xx / timeouts / connection resets: bounded retries, then a clear failure ------------


# (fault, error, max_retries, words in the message). A timeout or a dropped connection
# cannot ask for a short wait (no HTTP reply carries a retry-after-ms), so the SDK's own
# backoff applies, 0.5 s then 1 s: one retry shows the bound as well and keeps them quick.
PERSISTENT: dict[str, tuple[Fault, type[ProviderError], int, str]] = {
    "500": (Fault.server_error(500), ServerError, 2, "failed with status 500 after 2 retries"),
    "503": (Fault.unavailable(), ServerError, 2, "failed with status 503 after 2 retries"),
    "502": (Fault.server_error(502, "Bad gateway"), ServerError, 2, "Bad gateway"),
    "timeout": (Fault.timeout(hang_s=3), ConnectionError, 1, "within 0.2 s after 1 retry"),
    "reset": (Fault.drop(), ConnectionError, 1, "after 1 retry"),
    "reset-before-headers": (Fault.drop(partial=False), ConnectionError, 1, "after 1 retry"),
}


@pytest.mark.parametrize("name", list(PERSISTENT))
async def test_persistent_fault_is_retried_max_retries_times_then_fails(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, name: str
) -> None:
    fault, error_type, retries, words = PERSISTENT[name]
    fake_openai.responder = lambda body: fault
    timeout_s = 0.2 if name == "timeout" else 5

    err = await failed_run(make_provider(max_retries=retries, timeout_s=timeout_s))

    assert type(err) is error_type
    assert err.retryable and err.exit_code == 1
    assert err.retries == retries
    assert len(fake_openai.chat_requests) == retries + 1  # max_retries + 1, then it stops
    assert words in err.message
    assert err.hint
    assert err.result.steps["one"].status == "failed"
    assert err.result.steps["one"].error == err.message
    assert err.result.error == err.message
    assert_key_hidden(err)


TRANSIENT: dict[str, Fault] = {
    "503": Fault.unavailable(),
    "500": Fault.server_error(500),
    "timeout": Fault.timeout(hang_s=3),
    "reset": Fault.drop(),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
async def test_transient_fault_then_success(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, name: str
) -> None:
    fake_openai.queue("first", TRANSIENT[name], "second", "third")
    provider = make_provider(max_retries=2, timeout_s=0.3 if name == "timeout" else 5)

    result = await run_chain(provider)

    assert result.ok and result.outputs == {"final": "third"}
    assert [s.retries for s in result.steps.values()] == [0, 1, 0]
    assert len(fake_openai.chat_requests) == 4


# -- the command line: exit 1, a clear message, the table, never the key -----------------


FLOWGPT_RUN = (sys.executable, "-m", "flowgpt", "run")
CLI_FAULTS: dict[str, Fault] = {
    "401": Fault.unauthorized("Incorrect API key provided: {raw_key}."),
    "503": Fault.unavailable(),
    "timeout": Fault.timeout(hang_s=1),
    "reset": Fault.drop(),
}


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    written: str  # the -o file
    stored: bytes  # the run store (and its WAL) the run wrote, if any
    sent: list[RecordedRequest]  # the requests this run made


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CliRun]:
    """`flowgpt run -o FILE` once per row of CLI_FAULTS, all at once against one server
    (Python start-up dominates a run, so they start in parallel). The server picks the
    fault from the run's topic. The 401 run reads its key from a custom `api_key_env`;
    the others may retry once (`max_retries: 1`) with a 0.3 s timeout."""
    folder = tmp_path_factory.mktemp("cli-faults")

    def responder(body: dict[str, Any]) -> Fault:
        return CLI_FAULTS[body["messages"][-1]["content"].removeprefix("one: ")]

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    with FakeOpenAI(responder=responder) as server:
        procs: dict[str, subprocess.Popen[str]] = {}
        for name in CLI_FAULTS:
            wf = folder / f"{name}.yaml"
            if name == "401":
                wf.write_text(chain(api_key_env="ACME_LLM_KEY", max_retries=3))
                env = {**base_env, "ACME_LLM_KEY": KEY}
            else:
                wf.write_text(chain(max_retries=1, timeout_s=0.3))
                env = {**base_env, "OPENAI_API_KEY": KEY}
            env["OPENAI_BASE_URL"] = server.base_url
            env["FLOWGPT_STORE"] = str(folder / f"{name}.sqlite3")  # never the user's store
            procs[name] = subprocess.Popen(
                [*FLOWGPT_RUN, str(wf), "-i", f"topic={name}", "-o", str(folder / f"{name}.json")],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
        outputs = {name: proc.communicate(timeout=60) for name, proc in procs.items()}
        sent = server.chat_requests
    return {
        name: CliRun(
            returncode=procs[name].returncode,
            stdout=out,
            stderr=err,
            written=(folder / f"{name}.json").read_text(),
            stored=b"".join(p.read_bytes() for p in sorted(folder.glob(f"{name}.sqlite3*"))),
            sent=[r for r in sent if prompt_of(r) == f"one: {name}"],
        )
        for name, (out, err) in outputs.items()
    }


def assert_cli_failed_cleanly(run: CliRun) -> None:
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr
    assert "one (FAILED)" in run.stderr  # the per-step table is still printed
    data = json.loads(run.written)
    assert data["status"] == "failed"
    assert [s["status"] for s in data["steps"]] == ["failed", "pending", "pending"]
    for shown in (run.stdout, run.stderr, run.written):
        assert KEY not in shown
    assert KEY.encode() not in run.stored


def test_cli_401_exits_1_at_once_naming_the_custom_variable(cli_runs: dict[str, CliRun]) -> None:
    run = cli_runs["401"]
    assert_cli_failed_cleanly(run)
    assert len(run.sent) == 1 and run.sent[0].api_key == KEY  # max_retries: 3, yet one
    assert "environment variable ACME_LLM_KEY" in run.stderr
    assert "OPENAI_API_KEY" not in run.stderr
    assert "[redacted key]" in run.stderr  # the echoed key was scrubbed, not dropped


@pytest.mark.parametrize("name", ["503", "timeout", "reset"])
def test_cli_gives_up_after_max_retries_with_exit_1(cli_runs: dict[str, CliRun], name: str) -> None:
    run = cli_runs[name]
    assert_cli_failed_cleanly(run)
    assert len(run.sent) == 2  # max_retries: 1
    assert "after 1 retry" in run.stderr
    expected = {"503": "status 503", "timeout": "within 0.3 s", "reset": "Could not reach"}
    assert expected[name] in run.stderr
    assert json.loads(run.written)["steps"][0]["error"] in run.stderr


# -- output fails validation: re-ask with the error, then fail keeping the last output -----


REPAIRED = """\
version: 1
name: repair
defaults: {model: gpt-4o-mini}
steps:
  - id: plan
    prompt: Plan a tea article as JSON.
    output:
      schema:
        type: object
        required: [title]
        properties:
          title: {type: string}
      retries: 1
  - id: write
    prompt: "Write {{ steps.plan.output.title }}"
"""


async def test_validation_failure_reasks_with_the_error_then_keeps_the_last_output(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
) -> None:
    fake_openai.queue(Reply("Sure! Here it is: {"), Reply('{"title": 42}'), "never asked")

    with pytest.raises(OutputValidationError) as caught:
        await Engine(provider=make_provider()).run(parse_workflow(REPAIRED))

    err = caught.value
    assert err.exit_code == 1
    assert err.attempts == 2
    assert err.last_output == '{"title": 42}'
    first, second = fake_openai.chat_requests  # `write` was never requested
    asked = first.body["messages"]
    again = second.body["messages"]
    assert again[: len(asked)] == asked
    assert again[len(asked)] == {"role": "assistant", "content": "Sure! Here it is: {"}
    feedback = again[len(asked) + 1]
    assert feedback["role"] == "user" and len(again) == len(asked) + 2
    plan = err.result.steps["plan"]
    assert feedback["content"].startswith("Your reply did not pass validation:\n")
    assert plan.attempts[0].failures
    for failure in plan.attempts[0].failures:
        assert failure in feedback["content"]
    assert feedback["content"].endswith("Reply again with the corrected JSON only.")
    assert second.body.get("response_format") == first.body.get("response_format") is not None
    assert plan.status == "failed" and plan.text == '{"title": 42}'
    assert err.result.steps["write"].status == "pending"


# -- a failure in the middle keeps what was done -----------------------------------------


@pytest.mark.parametrize(
    ("fault", "error_type", "max_retries", "requests_for_two"),
    [
        (Fault.bad_request("Invalid value for 'temperature'."), BadRequestError, 2, 1),
        (Fault.unavailable(), ServerError, 2, 3),
        # One retry: a dropped connection gets the SDK's own backoff (see PERSISTENT).
        (Fault.drop(), ConnectionError, 1, 2),
    ],
    ids=["400", "503", "reset"],
)
async def test_step_two_failing_keeps_step_one_and_never_starts_step_three(
    fake_openai: FakeOpenAI,
    make_provider: MakeProvider,
    fault: Fault,
    error_type: type[ProviderError],
    max_retries: int,
    requests_for_two: int,
) -> None:
    fake_openai.queue(Reply("first answer", prompt_tokens=100, completion_tokens=50))
    fake_openai.responder = lambda body: fault

    err = await failed_run(make_provider(max_retries=max_retries))

    assert type(err) is error_type
    result = err.result
    assert result.status == "failed" and result.error == err.message
    one, two, three = result.steps.values()
    assert (one.status, one.output, one.cost_usd) == ("ok", "first answer", price(100, 50))
    assert one.usage.prompt_tokens == 100 and one.usage.completion_tokens == 50
    assert (two.status, two.error) == ("failed", err.message)
    assert (three.status, three.attempts) == ("pending", [])
    assert result.cost_usd == price(100, 50)  # what was spent is reported
    data = result.to_dict()
    assert data["cost_usd"] == str(price(100, 50))
    assert [s["status"] for s in data["steps"]] == ["ok", "failed", "pending"]
    prompts = [prompt_of(r) for r in fake_openai.chat_requests]
    assert prompts == ["one: tea"] + ["two: first answer"] * requests_for_two
    assert not any(p.startswith("three") for p in prompts)


# -- random faults: 200 chains, every one completes, no step recorded twice --------------


RANDOM_CHAIN = """\
version: 1
name: random-faults
defaults: {model: gpt-4o-mini, max_tokens: 20}
provider: {concurrency: 64}
inputs:
  chain: {type: integer}
steps:
  - id: one
    prompt: "chain {{ inputs.chain }} step one"
  - id: two
    prompt: "chain {{ inputs.chain }} step two after {{ steps.one.output }}"
  - id: three
    prompt: "chain {{ inputs.chain }} step three after {{ steps.two.output }}"
outputs:
  final: "{{ steps.three.output }}"
"""


@pytest.mark.timeout(40)
async def test_random_faults_over_200_chains(fake_openai: FakeOpenAI, key: str) -> None:
    chains, fault_rate = 200, 0.2
    rng = random.Random(20240611)
    kinds = {
        "429": Fault.rate_limited,  # each asks for retry-after-ms: 1
        "503": Fault.unavailable,
        "500": lambda: Fault.server_error(500),
    }
    served: Counter[tuple[int, str]] = Counter()  # good replies per (chain, step)
    faulted: Counter[tuple[int, str]] = Counter()
    errors: Counter[tuple[int, str]] = Counter()  # the faults that take an error retry
    faults_by_kind: Counter[str] = Counter()

    def responder(body: dict[str, Any]) -> Reply | Fault:
        # Runs on the server's single event-loop thread, so the counters need no lock.
        m = re.match(r"chain (\d+) step (\w+)", body["messages"][-1]["content"])
        assert m is not None
        where = (int(m[1]), m[2])
        if rng.random() < fault_rate:
            kind = rng.choice(sorted(kinds))
            faulted[where] += 1
            errors[where] += kind != "429"  # a rate limit is waited out, not retried
            faults_by_kind[kind] += 1
            return kinds[kind]()
        served[where] += 1
        return Reply(f"c{where[0]}-{where[1]}-done")

    fake_openai.responder = responder
    provider = OpenAIProvider(base_url=fake_openai.base_url, timeout_s=10, max_retries=10)
    engine = Engine(provider=provider)
    workflow = parse_workflow(RANDOM_CHAIN)
    gate = asyncio.Semaphore(50)

    async def one_chain(n: int) -> RunResult:
        async with gate:
            return await engine.run(workflow, {"chain": n})

    try:
        results = await asyncio.gather(*(one_chain(n) for n in range(chains)))
    finally:
        await provider.aclose()

    steps = ("one", "two", "three")
    assert all(r.ok for r in results)
    for n, result in enumerate(results):
        assert result.outputs == {"final": f"c{n}-three-done"}
        for sid in steps:
            step = result.steps[sid]
            assert served[(n, sid)] == 1, (n, sid)  # exactly one good reply per step
            assert step.n_attempts == 1
            assert step.retries == errors[(n, sid)], (n, sid)  # every retry accounted for
    assert set(served) == {(n, s) for n in range(chains) for s in steps}
    total_faults = sum(faulted.values())
    assert len(fake_openai.chat_requests) == chains * 3 + total_faults
    # ~20 % of ~750 requests: the faults really happened, of every kind.
    assert 80 <= total_faults <= 250, total_faults
    assert set(faults_by_kind) == set(kinds)
