"""`flowgpt chat` and ChatSession: streamed turns, history trimmed to fit, tokens and cost
per turn, failed turns that do not end the chat, the conversation stored as a run.

Library tests use the mock provider and the loopback server (through the real openai SDK,
streaming); the command line is driven through piped stdin and a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flowgpt import (
    AuthenticationError,
    BudgetExceededError,
    ChatSession,
    ContextWindowError,
    InputError,
    MockProvider,
    MockReply,
    PriceSpec,
    RateLimitError,
    SpecError,
    Usage,
    count_tokens,
    load_workflow,
    parse_workflow,
)
from flowgpt.accounting.prices import cost_of
from flowgpt.cli import main
from flowgpt.cli._repl import run_repl
from flowgpt.money import format_usd
from flowgpt.providers.base import Message
from flowgpt.providers.openai import OpenAIProvider
from flowgpt.store.run_store import RunStore
from tests.support.fake_openai import FakeOpenAI, Fault, Reply

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
CHATBOT = ROOT / "workflows" / "chatbot.yaml"
KEY = "fgt-chat-secret-0123456789abcdef"  # not sk-shaped: only real scrubbing hides it
SYSTEM = "You are a helpful assistant for a tea shop."


def msg(role: str, content: str) -> Message:
    return Message(role=role, content=content)


# -- the library, with the mock provider -----------------------------------------------------


async def test_turn_three_carries_turns_one_and_two() -> None:
    mock = MockProvider(["Hello! How can I help?", "Try a sencha.", "About 80 °C."])
    pieces: list[str] = []
    async with ChatSession(mock, system=SYSTEM, temperature=0.3, max_tokens=200) as chat:
        await chat.send("Hi")
        await chat.send("Which green tea?")
        turn = await chat.send("How hot should the water be?", on_text=pieces.append)
    expected = [
        msg("system", SYSTEM),
        msg("user", "Hi"),
        msg("assistant", "Hello! How can I help?"),
        msg("user", "Which green tea?"),
        msg("assistant", "Try a sencha."),
        msg("user", "How hot should the water be?"),
    ]
    assert mock.requests[2].messages == expected
    assert turn.messages == expected
    assert (mock.requests[2].temperature, mock.requests[2].max_tokens) == (0.3, 200)
    assert "".join(pieces) == turn.text == "About 80 °C."
    assert len(pieces) > 1  # it streamed
    assert [t.number for t in chat.turns] == [1, 2, 3]
    assert chat.history == [*expected[1:], msg("assistant", "About 80 °C.")]


async def test_tokens_and_cost_per_turn_are_the_reported_usage_at_genai_prices() -> None:
    from genai_prices import Usage as GPUsage
    from genai_prices import calc_price

    mock = MockProvider(
        [
            MockReply("one", usage=Usage(prompt_tokens=1200, completion_tokens=300)),
            MockReply("two", usage=Usage(prompt_tokens=1600, completion_tokens=100)),
        ]
    )
    chat = ChatSession(mock, model="gpt-4o-mini")
    first = await chat.send("a")
    second = await chat.send("b")
    await chat.aclose()

    def price(p: int, c: int) -> Decimal:
        usage = GPUsage(input_tokens=p, output_tokens=c)
        return calc_price(usage, "gpt-4o-mini", provider_id="openai").total_price

    assert first.usage == Usage(1200, 300) and second.usage == Usage(1600, 100)
    assert first.cost_usd == price(1200, 300) and second.cost_usd == price(1600, 100)
    assert chat.usage == Usage(2800, 400)
    assert chat.cost_usd == price(1200, 300) + price(1600, 100)


async def test_trimming_drops_the_oldest_turns_and_keeps_the_system_prompt() -> None:
    replies = ["first answer " * 5, "second answer " * 5, "third answer", "fourth answer"]
    turns3 = [
        msg("system", SYSTEM),
        msg("user", "question two"),
        msg("assistant", replies[1]),
        msg("user", "question three"),
    ]
    limit = count_tokens(turns3, "gpt-4o-mini")  # turn 3 fits exactly without turn 1
    mock = MockProvider(replies)
    chat = ChatSession(mock, system=SYSTEM, max_history_tokens=limit)
    assert chat.context_limit() == limit
    one = await chat.send("question one")
    two = await chat.send("question two")
    three = await chat.send("question three")
    assert one.dropped == two.dropped == ()
    assert mock.requests[1].messages[:2] == [msg("system", SYSTEM), msg("user", "question one")]
    assert mock.requests[2].messages == turns3
    assert three.dropped == (1,)
    assert count_tokens(mock.requests[2].messages, "gpt-4o-mini") <= limit
    # A dropped turn stays dropped; turn 4 must also drop turn 2, never the system prompt.
    four = await chat.send("question four")
    sent = mock.requests[3].messages
    assert sent[0] == msg("system", SYSTEM) and sent[-1] == msg("user", "question four")
    assert msg("user", "question one") not in sent
    assert four.dropped and four.dropped[0] == 2
    assert count_tokens(sent, "gpt-4o-mini") <= limit


async def test_the_context_window_minus_max_tokens_is_the_limit() -> None:
    # A model flowgpt does not know, whose window the workflow's pricing gives.
    kept = [msg("system", SYSTEM), msg("user", "b"), msg("assistant", "B " * 20), msg("user", "c")]
    window = count_tokens(kept, "my-model") + 50
    pricing = {"my-model": PriceSpec(input=Decimal(1), output=Decimal(2), context_window=window)}
    mock = MockProvider(["A " * 20, "B " * 20, "C"])
    chat = ChatSession(mock, model="my-model", system=SYSTEM, max_tokens=50, pricing=pricing)
    assert chat.context_limit() == window - 50
    await chat.send("a")
    await chat.send("b")
    turn = await chat.send("c")
    assert mock.requests[2].messages == kept
    assert turn.dropped == (1,)
    # Priced by the override: (prompt * 1 + completion * 2) / 1e6
    assert turn.cost_usd == Decimal(turn.usage.prompt_tokens + 2 * turn.usage.completion_tokens) / (
        10**6
    )


async def test_a_message_that_cannot_fit_fails_before_sending_and_the_chat_goes_on() -> None:
    mock = MockProvider(["fine", "still fine"])
    chat = ChatSession(mock, system=SYSTEM, max_history_tokens=60)
    await chat.send("hello")
    with pytest.raises(ContextWindowError) as info:
        await chat.send("word " * 200)
    assert "max_history_tokens" in info.value.message and "nothing was sent" in info.value.message
    assert len(mock.requests) == 1
    turn = await chat.send("short")
    assert turn.number == 3
    assert [m["content"] for m in mock.requests[1].messages] == [SYSTEM, "hello", "fine", "short"]
    # The model's own window, for a known model: 128k minus max_tokens.
    big = ChatSession(MockProvider(), max_tokens=1000)
    assert big.context_limit() == 128_000 - 1000
    with pytest.raises(ContextWindowError, match="context window of 128,000 tokens"):
        await big.send("tea " * 130_000)


async def test_a_failed_turn_is_not_kept_and_the_next_one_works() -> None:
    mock = MockProvider(["first", RateLimitError("Rate limited (429)"), "third"])
    chat = ChatSession(mock, system=SYSTEM)
    await chat.send("one")
    with pytest.raises(RateLimitError):
        await chat.send("two")
    turn = await chat.send("three")
    assert mock.requests[2].messages == [
        msg("system", SYSTEM),
        msg("user", "one"),
        msg("assistant", "first"),
        msg("user", "three"),
    ]
    assert turn.number == 3 and chat.failed_turns == 1 and len(chat.turns) == 2


async def test_a_turn_that_could_break_the_cost_limit_is_not_sent() -> None:
    mock = MockProvider()
    # gpt-4o-mini: $0.60 per million output tokens, so 1000 max_tokens alone is $0.0006:
    # a turn is sent only while what was spent plus that worst case stays within $0.0007.
    chat = ChatSession(mock, max_tokens=1000, max_cost_usd="0.0007")
    with pytest.raises(BudgetExceededError, match="could cost up to"):
        for _ in range(10):
            await chat.send("and again")
    assert 2 <= len(chat.turns) < 10
    assert len(mock.requests) == len(chat.turns)  # the refused turn was never sent
    spent = chat.cost_usd
    assert spent is not None and spent + Decimal("0.0006") > Decimal("0.0007")


async def test_stream_yields_the_pieces() -> None:
    chat = ChatSession(MockProvider(["Green tea is steamed or pan-fired."]))
    pieces = [piece async for piece in chat.stream("What is green tea?")]
    assert len(pieces) > 1 and "".join(pieces) == "Green tea is steamed or pan-fired."
    assert chat.turns[-1].text == "".join(pieces)
    failing = ChatSession(MockProvider([AuthenticationError("bad key")]))
    with pytest.raises(AuthenticationError):
        async for _ in failing.stream("hi"):
            pass


async def test_the_conversation_is_stored_as_a_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite3")
    mock = MockProvider(["Hello!", RateLimitError("Rate limited (429)"), "Sencha."])
    async with ChatSession(mock, system=SYSTEM, store=store) as chat:
        assert chat.run_id is None  # nothing stored before the first turn
        await chat.send("Hi")
        with pytest.raises(RateLimitError):
            await chat.send("Which tea?")
        await chat.send("Which green tea?")
        run_id = chat.run_id
    assert run_id is not None
    result = store.load_run(run_id)
    assert result.workflow == "chat" and result.status == "ok"
    assert list(result.steps) == ["turn-1", "turn-2", "turn-3"]
    assert [s.status for s in result.steps.values()] == ["ok", "failed", "ok"]
    assert result.steps["turn-2"].error == "Rate limited (429)"
    assert result.steps["turn-3"].text == "Sencha."
    assert result.steps["turn-3"].messages[-1] == {"role": "user", "content": "Which green tea?"}
    assert result.usage == chat.usage and result.cost_usd == chat.cost_usd
    (summary,) = store.list_runs()
    assert (summary.run_id, summary.steps_done, summary.steps_total) == (run_id, 2, 3)
    store.close()


async def test_a_chat_whose_every_turn_failed_is_stored_as_failed(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite3")
    mock = MockProvider([AuthenticationError("bad key"), RateLimitError("Rate limited (429)")])
    async with ChatSession(mock, store=store) as chat:
        for text in ("Hi", "Hello?"):
            with pytest.raises((AuthenticationError, RateLimitError)):
                await chat.send(text)
        assert chat.all_failed
    result = store.load_run(chat.run_id or "")
    assert result.status == "failed"
    assert result.error == "all 2 turns failed; the last: Rate limited (429)"
    (summary,) = store.list_runs()
    assert (summary.status, summary.provider) == ("failed", "mock")
    # One answered turn is enough for "ok" (the other's error stays on its step).
    mixed = ChatSession(MockProvider([RateLimitError("429"), "Hello!"]), store=store)
    with pytest.raises(RateLimitError):
        await mixed.send("Hi")
    await mixed.send("Hi again")
    await mixed.aclose()
    assert not mixed.all_failed and store.load_run(mixed.run_id or "").status == "ok"
    store.close()


# -- from a workflow step --------------------------------------------------------------------


async def test_a_workflow_step_gives_model_system_prompt_settings_and_budget() -> None:
    wf = load_workflow(CHATBOT)
    mock = MockProvider()
    chat = ChatSession.from_workflow(wf, "answer", provider=mock)
    assert chat.model == "gpt-4o-mini" and chat.max_tokens == 400 and chat.temperature == 0.5
    assert chat.system is not None and "Leaf & Kettle" in chat.system  # the input's default
    assert chat.budget.max_cost_usd == Decimal("0.02")
    assert chat.name == "tea-shop-chatbot (chat)"
    await chat.send("Do you sell teapots?")
    sent = mock.requests[0].messages
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]  # few-shot kept
    assert sent[-1]["content"] == "Do you sell teapots?"
    # inputs from -i, an explicit system prompt, a lower cost limit
    other = ChatSession.from_workflow(
        wf, inputs={"shop": "Tea & Co"}, max_cost_usd=0.01, model="gpt-4o", max_tokens=99
    )
    assert other.system is not None and "Tea & Co" in other.system
    assert (other.model, other.max_tokens, other.budget.max_cost_usd) == (
        "gpt-4o",
        99,
        Decimal("0.01"),
    )
    plain = ChatSession.from_workflow(wf, system="Be brief.", provider=mock)
    assert plain.system == "Be brief."
    await other.aclose()


def test_a_step_the_chat_cannot_use_is_refused_clearly() -> None:
    wf = parse_workflow(
        """
version: 1
name: two
defaults: {model: gpt-4o-mini}
inputs:
  persona: {type: string}
steps:
  - id: a
    system: You are {{ inputs.persona }}.
    prompt: Hi
  - id: b
    system: Continue from {{ steps.a.output }}.
    prompt: Go on
"""
    )
    with pytest.raises(SpecError, match="has 2 steps") as info:
        ChatSession.from_workflow(wf, provider=MockProvider())
    assert "--step" in (info.value.hint or "")
    with pytest.raises(SpecError, match="did you mean `a`"):
        ChatSession.from_workflow(wf, "aa", provider=MockProvider())
    with pytest.raises(SpecError, match=r"uses `steps\.a\.output`"):
        ChatSession.from_workflow(wf, "b", provider=MockProvider())
    with pytest.raises(InputError) as missing:
        ChatSession.from_workflow(wf, "a", provider=MockProvider())
    assert "missing input `persona`" in missing.value.format()
    chat = ChatSession.from_workflow(wf, "a", provider=MockProvider(), inputs={"persona": "Ann"})
    assert chat.system == "You are Ann."


# -- through the real openai SDK, streaming, against the loopback server ------------------


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return KEY


async def test_streamed_turns_through_the_sdk(fake_openai: FakeOpenAI, key: str) -> None:
    fake_openai.queue(
        Reply("Hello there!", prompt_tokens=20, completion_tokens=3),
        Reply("Try sencha.", prompt_tokens=35, completion_tokens=4),
        Reply(
            "About 80 degrees.",
            prompt_tokens=50,
            completion_tokens=5,
            chunks=["Ab", "out 80", " degrees."],
        ),
        Fault.unauthorized(),
        Reply("Still here.", prompt_tokens=70, completion_tokens=3),
    )
    pricing = {"gpt-4o-mini": PriceSpec(input=Decimal("0.15"), output=Decimal("0.60"))}
    provider = OpenAIProvider(fake_openai.base_url)
    pieces: list[str] = []
    shown = pieces.append
    async with ChatSession(provider, system=SYSTEM, pricing=pricing, max_tokens=300) as chat:
        await chat.send("Hi", on_text=shown)
        await chat.send("Which green tea?", on_text=shown)
        pieces.clear()
        third = await chat.send("How hot?", on_text=shown)
        third_pieces = list(pieces)
        with pytest.raises(AuthenticationError) as info:
            await chat.send("Are you there?", on_text=shown)
        fifth = await chat.send("Hello?", on_text=shown)
    bodies = [r.body for r in fake_openai.chat_requests]
    assert all(
        b["stream"] is True and b["stream_options"] == {"include_usage": True} for b in bodies
    )
    assert bodies[2]["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "Which green tea?"},
        {"role": "assistant", "content": "Try sencha."},
        {"role": "user", "content": "How hot?"},
    ]
    assert bodies[2]["max_tokens"] == 300
    assert third_pieces == ["Ab", "out 80", " degrees."] and third.text == "About 80 degrees."
    # Tokens are the server's; cost is its usage at the override's price.
    assert third.usage == Usage(50, 5)
    assert third.cost_usd == (50 * Decimal("0.15") + 5 * Decimal("0.60")) / 10**6
    assert chat.usage == Usage(20 + 35 + 50 + 70, 3 + 4 + 5 + 3)
    # The 401 says which variable was read and never shows the key; the next turn works
    # and carries no trace of the failed one.
    error = info.value.format()
    assert "401" in error and "OPENAI_API_KEY" in error and KEY not in error
    assert fifth.text == "Still here."
    assert bodies[4]["messages"][-3:] == [
        {"role": "user", "content": "How hot?"},
        {"role": "assistant", "content": "About 80 degrees."},
        {"role": "user", "content": "Hello?"},
    ]


async def test_a_local_server_is_unpriced_not_free(fake_openai: FakeOpenAI, key: str) -> None:
    # With `prices: pricing` (a server that bills nothing like OpenAI) and no entries.
    fake_openai.queue(Reply("hi", prompt_tokens=5, completion_tokens=1))
    chat = ChatSession(OpenAIProvider(fake_openai.base_url), prices="pricing")
    turn = await chat.send("hello")
    await chat.aclose()
    await chat.provider.aclose()
    assert turn.cost_usd is None and chat.cost_usd is None


async def test_a_relay_is_priced_at_openais_prices(fake_openai: FakeOpenAI, key: str) -> None:
    fake_openai.queue(Reply("hi", prompt_tokens=5, completion_tokens=1))
    chat = ChatSession(OpenAIProvider(fake_openai.base_url))
    turn = await chat.send("hello")
    await chat.aclose()
    await chat.provider.aclose()
    assert turn.cost_usd == cost_of(Usage(5, 1), "gpt-4o-mini") and turn.cost_usd > 0


# -- the REPL, in-process ------------------------------------------------------------------


def repl(session: ChatSession, text: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_repl(session, stdin=io.StringIO(text), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("word", ["exit", "QUIT", "  退出  ", "Exit"])
def test_exit_words_end_the_chat(word: str) -> None:
    mock = MockProvider(["one", "two"])
    code, out, err = repl(ChatSession(mock), f"hello\n\n   \n{word}\nnot sent\n")
    assert code == 0
    assert [r.messages[-1]["content"] for r in mock.requests] == ["hello"]  # blank lines skipped
    assert out == "one\n"
    assert re.search(
        r"^turn 1: \d+ → \d+ tokens, \$[\d.]+ · total \d+ tokens, \$[\d.]+$", err, re.M
    )
    assert err.rstrip().splitlines()[-1].startswith("chat ended: 1 turn, ")


def test_end_of_input_ends_the_chat_and_a_failed_turn_does_not() -> None:
    mock = MockProvider([RateLimitError("Rate limited (429)", hint="try later"), "fine"])
    code, out, err = repl(ChatSession(mock), "one\ntwo")  # no newline at the end either
    assert code == 0 and out == "fine\n"
    lines = err.splitlines()
    assert lines[0] == "turn 1 failed: Rate limited (429)"
    assert lines[1] == "  try later"
    assert lines[2].startswith("turn 2: ")
    assert lines[-1].startswith("chat ended: 1 turn (1 failed), ")


def test_a_budget_stop_ends_the_chat_with_exit_1(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite3")
    chat = ChatSession(MockProvider(), max_tokens=1000, max_cost_usd="0.0007", store=store)
    code, _out, err = repl(chat, "one\ntwo\nthree\nfour\n")
    assert code == 1
    assert "could break the budget" in err
    assert chat.run_id is not None
    assert store.load_run(chat.run_id).status == "failed"
    store.close()


def test_ctrl_c_at_the_prompt_stores_the_chat_and_exits_130(tmp_path: Path) -> None:
    class Interrupting(io.StringIO):
        def readline(self, size: int | None = -1) -> str:
            line = super().readline()
            if not line:
                raise KeyboardInterrupt
            return line

    store = RunStore(tmp_path / "runs.sqlite3")
    chat = ChatSession(MockProvider(["one"]), store=store)
    out, err = io.StringIO(), io.StringIO()
    code = run_repl(chat, stdin=Interrupting("hello\n"), stdout=out, stderr=err)
    assert code == 130
    assert chat.run_id is not None and chat.run_id in err.getvalue()
    assert store.load_run(chat.run_id).status == "interrupted"
    store.close()


class Interrupted(MockProvider):
    """Streams part of its reply, then Ctrl-C arrives (a real SIGINT to this process)."""

    async def complete(self, request: Any, *, on_text: Any = None) -> Any:
        if len(self.requests) == 0:
            return await super().complete(request, on_text=on_text)
        self.requests.append(request)
        on_text("slow slow ")
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(10)
        raise AssertionError("not cancelled")


def test_ctrl_c_mid_reply_stores_what_was_answered(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite3")
    chat = ChatSession(Interrupted(["Quick answer."]), store=store)
    started = time.monotonic()
    code, out, err = repl(chat, "one\ntwo\nthree\n")
    assert time.monotonic() - started < 5
    assert code == 130
    assert out == "Quick answer.\nslow slow \n"
    assert err.splitlines()[1:] == [
        "interrupted",
        f"chat ended: 1 turn, {chat.usage.total_tokens} tokens, "
        f"{format_usd(chat.cost_usd)} · stored as run {chat.run_id}",
    ]
    assert chat.run_id is not None
    result = store.load_run(chat.run_id)
    assert result.status == "interrupted" and list(result.steps) == ["turn-1"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    store.close()


def test_the_summary_line_says_unpriced_and_what_was_dropped() -> None:
    chat = ChatSession(
        MockProvider(["a " * 30, "b " * 30, "c"]), model="my-model", max_history_tokens=80
    )
    _, _, err = repl(chat, "one\ntwo\nthree\n")
    assert "turn 1: " in err and ", unpriced · total " in err
    assert "turn 1 dropped to fit max_history_tokens" in err


# -- the command line ----------------------------------------------------------------------


def flowgpt(*args: str, stdin: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "flowgpt", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=full,
        cwd=ROOT,
        timeout=30,
    )


def runs_json(store: Path) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["runs", "list", "--json", "--store", str(store)])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.output)
    return rows


def test_cli_piped_stdin_with_the_mock_stops_at_退出(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    proc = flowgpt(
        "chat", "--mock", "--system", SYSTEM, "--store", str(store),
        stdin="Which green tea?\nAnd black tea?\n退出\nnever sent\n",
        env={},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    replies = proc.stdout.splitlines()
    assert len(replies) == 2 and all(r.startswith("Mock answer ") for r in replies)
    assert "never sent" not in proc.stdout
    assert "you> " not in proc.stdout + proc.stderr  # no prompt when stdin is not a terminal
    summaries = re.findall(
        r"^turn (\d): (\d+) → (\d+) tokens, (\$[\d.]+) · total", proc.stderr, re.M
    )
    assert [s[0] for s in summaries] == ["1", "2"]
    # Turn 2's prompt holds the system prompt and turn 1: more tokens than turn 1's.
    assert int(summaries[1][1]) > int(summaries[0][1]) + int(summaries[0][2])
    (row,) = runs_json(store)
    assert (row["workflow"], row["status"], row["steps_done"], row["steps_total"]) == (
        "chat",
        "ok",
        2,
        2,
    )
    assert f"stored as run {row['run_id']}" in proc.stderr
    assert Decimal(row["cost_usd"]) > 0


def test_cli_with_a_workflow_step_and_the_loopback_server(
    tmp_path: Path, fake_openai: FakeOpenAI, key: str
) -> None:
    # In-process (the SDK is imported already); piped stdin and a terminal are covered by
    # the subprocess tests.
    workflow = tmp_path / "bot.yaml"
    workflow.write_text(
        f"""version: 1
name: bot
defaults: {{model: gpt-4o-mini, max_tokens: 200}}
provider: {{base_url: "{fake_openai.base_url}", max_retries: 0}}
pricing:
  gpt-4o-mini: {{input: 1.0, output: 2.0}}
steps:
  - id: answer
    system: You are a tea expert.
    prompt: "{{{{ inputs.q }}}}"
inputs:
  q: {{type: string}}
""",
        encoding="utf-8",
    )
    fake_openai.queue(
        Fault.unauthorized(),
        Reply("Sencha is lovely.", prompt_tokens=30, completion_tokens=5),
        Reply("Use 80 degrees.", prompt_tokens=45, completion_tokens=4),
    )
    store = tmp_path / "runs.sqlite3"
    proc = CliRunner().invoke(
        main,
        ["chat", str(workflow), "--step", "answer", "--store", str(store)],
        input="hi\nWhich green tea?\nHow hot?\nquit\nnever sent\n",
    )
    assert proc.exit_code == 0, proc.output
    assert proc.stdout == "Sencha is lovely.\nUse 80 degrees.\n"
    err = proc.stderr
    assert "turn 1 failed: Authentication failed (401)" in err and "OPENAI_API_KEY" in err
    assert key not in err + proc.stdout
    assert "turn 2: 30 → 5 tokens, $0.00004 · total 35 tokens, $0.00004" in err
    assert "turn 3: 45 → 4 tokens, $0.000053 · total 84 tokens, $0.000093" in err
    assert "chat ended: 2 turns (1 failed), 84 tokens, $0.000093 · stored as run " in err
    bodies = [r.body for r in fake_openai.chat_requests]
    assert len(bodies) == 3 and all(b["stream"] for b in bodies)
    assert bodies[2]["messages"] == [
        {"role": "system", "content": "You are a tea expert."},
        {"role": "user", "content": "Which green tea?"},
        {"role": "assistant", "content": "Sencha is lovely."},
        {"role": "user", "content": "How hot?"},
    ]
    (row,) = runs_json(store)
    assert (row["workflow"], row["steps_done"], row["steps_total"]) == ("bot (chat)", 2, 3)
    assert Decimal(row["cost_usd"]) == Decimal("0.000093")


def test_cli_end_of_input_and_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    store = str(tmp_path / "runs.sqlite3")
    result = runner.invoke(main, ["chat", "--mock", "--store", store], input="hello\n")
    assert result.exit_code == 0
    assert result.output.startswith("Mock answer ")
    assert "turn 1: " in result.output and "chat ended: 1 turn, " in result.output
    result = runner.invoke(main, ["chat", "--mock", "--step", "answer"], input="")
    assert result.exit_code == 2 and "need a WORKFLOW" in result.output
    result = runner.invoke(main, ["chat", str(ROOT / "workflows" / "article.yaml"), "--mock"])
    assert (
        result.exit_code == 2 and "add --step with one of: outline, draft, polish" in result.output
    )


def test_cli_chat_whose_every_turn_failed_exits_1_and_is_stored_failed(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    # Every message is too long for 5 tokens of history: no turn is ever sent.
    result = CliRunner().invoke(
        main,
        ["chat", "--mock", "--max-history-tokens", "5", "--store", str(store)],
        input="hello\nagain\n",
    )
    assert result.exit_code == 1, result.output
    assert "turn 2 failed: " in result.output
    assert "chat ended: every turn failed (2) · stored as run " in result.output
    (row,) = runs_json(store)
    assert (row["status"], row["steps_done"], row["steps_total"]) == ("failed", 0, 2)
    assert row["provider"] == "mock"
    # A chat that failed once but was answered after ends 0, stored "ok".
    ok = CliRunner().invoke(
        main,
        ["chat", "--mock", "--max-history-tokens", "40", "--store", str(store)],
        input=("word " * 60) + "\nhello\n",
    )
    assert ok.exit_code == 0, ok.output
    assert "turn 1 failed: " in ok.output and "chat ended: 1 turn (1 failed)" in ok.output
    assert runs_json(store)[0]["status"] == "ok"


def test_cli_no_store_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "runs.sqlite3"
    monkeypatch.setenv("FLOWGPT_STORE", str(store))  # where the chat would go otherwise
    result = CliRunner().invoke(main, ["chat", "--mock", "--no-store"], input="hello\n")
    assert result.exit_code == 0
    assert "chat ended: 1 turn, " in result.output
    assert not store.exists()


# -- a real terminal -------------------------------------------------------------------------


class Terminal:
    """`flowgpt ARGS` on a pseudo-terminal; every wait has a deadline."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        full = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        full.update({"TERM": "dumb", **env})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowgpt", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env=full,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def expect(self, marker: str, timeout: float = 15) -> str:
        wanted = marker.encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} within {timeout}s; got:\n{self.text}")
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the terminal closed before {marker!r}:\n{self.text}")
            self.seen += chunk
        return self.text

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    @property
    def text(self) -> str:
        return self.seen.decode("utf-8", "replace").replace("\r\n", "\n")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    made: list[Terminal] = []
    yield made
    for t in made:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait(5)


def test_a_pseudo_terminal_chat_ends_on_退出(tmp_path: Path, terminal: list[Terminal]) -> None:
    store = tmp_path / "runs.sqlite3"
    t = Terminal(["chat", "--mock", "--store", str(store)], {})
    terminal.append(t)
    t.expect("you> ")
    t.type("Which green tea?")
    t.expect("turn 1: ")
    t.expect("you> ")
    t.type("And for the evening?")
    t.expect("turn 2: ")
    t.expect("you> ")
    t.type("退出")
    out = t.expect("chat ended: 2 turns, ")
    assert t.close() == 0
    assert "type exit, quit or 退出 (or Ctrl-D) to end" in out
    assert "Mock answer " in out and 'to "And for the evening"' in out
    (row,) = runs_json(store)
    assert row["status"] == "ok" and row["steps_done"] == 2


# -- the documentation's chat transcripts ------------------------------------------------------

TRANSCRIPT = re.compile(
    r"```bash\nprintf '((?:[^'\\]|\\.)*)' \| flowgpt (chat[^\n]*)\n```\n\s*```text\n(.*?)```",
    re.S,
)
DOC_PAGES = [ROOT / "docs" / "chat.md", ROOT / "docs" / "quickstart-zh.md"]


def _transcripts() -> list[tuple[str, str, str, str]]:
    found = []
    for page in DOC_PAGES:
        for m in TRANSCRIPT.finditer(page.read_text(encoding="utf-8")):
            typed = m.group(1).replace("\\n", "\n").replace("\\\\", "\\")
            found.append((page.name, typed, m.group(2), m.group(3)))
    return found


def test_the_docs_show_chat_transcripts() -> None:
    assert {page for page, *_ in _transcripts()} == {p.name for p in DOC_PAGES}


@pytest.mark.parametrize(
    "page,typed,command,expected", _transcripts(), ids=lambda v: v if v.endswith(".md") else ""
)
def test_doc_transcripts_match_what_chat_prints(
    page: str,
    typed: str,
    command: str,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shlex

    monkeypatch.setenv("FLOWGPT_STORE", str(tmp_path / "runs.sqlite3"))
    monkeypatch.chdir(ROOT)
    exit_code = 0
    if command.endswith("; echo $?"):  # the transcript ends with the exit code
        command = command.removesuffix("; echo $?")
        *lines, code = expected.strip().splitlines()
        expected, exit_code = "\n".join(lines), int(code)
    result = CliRunner().invoke(main, shlex.split(command), input=typed, catch_exceptions=False)
    run_id = re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{6}\b")
    assert result.exit_code == exit_code, result.output
    assert run_id.sub("RUN_ID", result.output).strip() == run_id.sub("RUN_ID", expected).strip()
