"""The engine: context passing, history, concurrency, render errors, inputs, cost."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from typing import Any

import pytest

from flowgpt import (
    Engine,
    InputError,
    MockProvider,
    MockReply,
    OutputValidationError,
    SpecError,
    TemplateError,
    Usage,
    parse_workflow,
)
from flowgpt.accounting.prices import cost_of
from flowgpt.providers.openai import OpenAIProvider
from tests.support.fake_openai import FakeOpenAI

CHAIN = """\
version: 1
name: chain
defaults: {model: gpt-4o-mini, max_tokens: 100}
inputs:
  topic: {type: string}
steps:
  - id: plan
    prompt: Plan {{ inputs.topic }}
    output:
      schema:
        type: object
        required: [title, parts]
        properties:
          title: {type: string}
          parts: {type: array, items: {type: string}}
  - id: write
    system: You write.
    prompt: |
      Write "{{ steps.plan.output.title }}":
      {% for p in steps.plan.output.parts %}- {{ p }}
      {% endfor %}
  - id: shorten
    history: write
    prompt: Shorter, about {{ inputs.topic }}.
outputs:
  text: "{{ steps.shorten.output }}"
  title: "{{ steps.plan.output.title }}"
  parts: "{{ steps.plan.output.parts }}"
"""


def run(text: str, provider: Any, inputs: dict[str, Any] | None = None, **kw: Any) -> Any:
    return Engine(provider=provider, **kw).run_sync(parse_workflow(text), inputs or {})


def test_text_and_json_fields_flow_between_steps() -> None:
    mock = MockProvider(
        [json.dumps({"title": "Tea", "parts": ["Green", "Black"]}), "DRAFT", "SHORT"]
    )
    result = run(CHAIN, mock, {"topic": "tea"})
    assert result.ok
    write_req = mock.requests[1]
    assert write_req.messages[-1]["content"] == 'Write "Tea":\n- Green\n- Black\n'
    assert result.outputs == {"text": "SHORT", "title": "Tea", "parts": ["Green", "Black"]}
    assert result.steps["plan"].output == {"title": "Tea", "parts": ["Green", "Black"]}
    assert result.steps["write"].text == "DRAFT"


def test_history_step_sends_the_earlier_conversation_exactly() -> None:
    mock = MockProvider([json.dumps({"title": "T", "parts": []}), "DRAFT", "SHORT"])
    run(CHAIN, mock, {"topic": "tea"})
    assert mock.requests[2].messages == [
        {"role": "system", "content": "You write."},
        {"role": "user", "content": 'Write "T":\n'},
        {"role": "assistant", "content": "DRAFT"},
        {"role": "user", "content": "Shorter, about tea."},
    ]


def test_json_step_sends_structured_output_request() -> None:
    mock = MockProvider([json.dumps({"title": "T", "parts": []}), "D", "S"])
    run(CHAIN, mock, {"topic": "tea"})
    fmt = mock.requests[0].response_format
    assert fmt is not None and fmt["type"] == "json_schema"
    assert fmt["json_schema"]["schema"]["required"] == ["title", "parts"]
    assert fmt["json_schema"]["strict"] is False  # not every object is closed
    assert mock.requests[1].response_format is None


PARALLEL = """\
version: 1
name: par
defaults: {model: gpt-4o-mini}
provider: {concurrency: 4}
steps:
  - id: a
    prompt: one
  - id: b
    prompt: two
  - id: c
    prompt: three
  - id: join
    prompt: "{{ steps.a.output }} {{ steps.b.output }} {{ steps.c.output }}"
"""


def test_independent_steps_overlap_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-000000")
    with FakeOpenAI(latency_ms=300) as server:
        provider = OpenAIProvider(base_url=server.base_url)
        result = run(PARALLEL, provider)
        requests = server.chat_requests
    assert result.ok and len(requests) == 4
    first_three = sorted(requests, key=lambda r: r.arrived)[:3]
    join = max(requests, key=lambda r: r.arrived)
    # a, b and c all arrive before any of them is answered (each takes >= 300 ms) ...
    assert max(r.arrived for r in first_three) < min(r.completed or 0 for r in first_three)
    # ... and the join step starts only after all three were answered.
    assert join.arrived >= max(r.completed or 0 for r in first_three)
    assert join.body["messages"][-1]["content"].count("Echo:") == 3


def test_render_error_names_the_step_and_the_name() -> None:
    text = CHAIN.replace("Shorter, about {{ inputs.topic }}.", "'{{ steps.plan.output.titel }}'")
    mock = MockProvider([json.dumps({"title": "T", "parts": []}), "D"])
    with pytest.raises(TemplateError) as info:
        run(text, mock, {"topic": "tea"})
    message = info.value.format()
    assert "shorten" in message and "titel" in message
    assert info.value.exit_code == 2
    # The steps that ran are in the partial result, with their cost.
    assert info.value.result.steps["plan"].status == "ok"


INPUTS = """\
version: 1
name: inputs
defaults: {model: gpt-4o-mini}
inputs:
  n: {type: integer, minimum: 1}
  ratio: {type: number, default: 0.5}
  loud: {type: boolean, default: false}
  tags: {type: array, default: []}
  meta: {type: object, default: {}}
  mode: {type: string, enum: [fast, slow], default: fast}
steps:
  - id: a
    prompt: >-
      {{ inputs.n + 1 }} {{ inputs.ratio }} {{ inputs.loud }} {{ inputs.tags }}
      {{ inputs.meta }} {{ inputs.mode }}
"""


def test_cli_strings_are_converted_by_declared_type() -> None:
    mock = MockProvider(["ok"])
    engine = Engine(provider=mock)
    given = {"n": "41", "ratio": "2.5", "loud": "yes", "tags": '["x"]', "meta": '{"k": 1}'}
    engine.run_sync(parse_workflow(INPUTS), given, inputs_from_cli=True)
    assert mock.requests[0].messages[-1]["content"] == '42 2.5 True ["x"] {"k": 1} fast'


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({}, "missing input `n`"),
        ({"n": "0"}, "at least 1"),
        ({"n": "x"}, "expected an integer"),
        ({"n": "1", "loud": "maybe"}, "expected a boolean"),
        ({"n": "1", "mode": "medium"}, "must be one of"),
        ({"n": "1", "tags": "[oops"}, "as JSON"),
        ({"n": "1", "nn": "2"}, "unknown input `nn`"),
    ],
)
def test_bad_inputs_are_refused_before_any_call(given: dict[str, str], words: str) -> None:
    mock = MockProvider()
    with pytest.raises(InputError) as info:
        Engine(provider=mock).run_sync(parse_workflow(INPUTS), given, inputs_from_cli=True)
    assert words in info.value.format()
    assert mock.requests == []


def test_step_cost_is_genai_prices_figure_for_reported_usage() -> None:
    usage = Usage(prompt_tokens=1200, completion_tokens=300, cached_tokens=1024, reasoning_tokens=0)
    mock = MockProvider([MockReply("hi", usage=usage)])
    text = "version: 1\nname: c\ndefaults: {model: gpt-4o}\nsteps:\n  - id: a\n    prompt: hi\n"
    result = run(text, mock)
    from genai_prices import Usage as GPUsage
    from genai_prices import calc_price

    expected = calc_price(
        GPUsage(input_tokens=1200, cache_read_tokens=1024, output_tokens=300),
        "gpt-4o",
        provider_id="openai",
    ).total_price
    assert result.steps["a"].cost_usd == expected == cost_of(usage, "gpt-4o")
    assert result.cost_usd == expected


def test_unpriced_model_is_unpriced_never_zero() -> None:
    text = (
        "version: 1\nname: c\ndefaults: {model: my-local-llm}\nsteps:\n  - id: a\n    prompt: hi\n"
    )
    result = run(text, MockProvider(["hello"]))
    assert result.steps["a"].cost_usd is None
    assert result.cost_usd is None
    assert "unpriced" in result.report()
    assert "$0 " not in result.report()
    data = result.to_dict()
    assert data["cost_usd"] is None and data["steps"][0]["cost_usd"] is None


def test_pricing_override_prices_an_unknown_model() -> None:
    text = (
        "version: 1\nname: c\ndefaults: {model: my-ft}\n"
        "pricing:\n  my-ft: {input: 1.0, output: 2.0}\n"
        "steps:\n  - id: a\n    prompt: hi\n"
    )
    mock = MockProvider([MockReply("x", usage=Usage(prompt_tokens=1000, completion_tokens=500))])
    result = run(text, mock)
    assert result.cost_usd == Decimal("0.002")


def test_model_override_applies_to_every_step() -> None:
    mock = MockProvider([json.dumps({"title": "T", "parts": []}), "D", "S"])
    run(CHAIN, mock, {"topic": "t"}, model="gpt-4.1-mini")
    assert {r.model for r in mock.requests} == {"gpt-4.1-mini"}


def test_invalid_json_is_repaired_with_the_exact_feedback() -> None:
    text = CHAIN.replace(
        "          parts: {type: array, items: {type: string}}",
        "          parts: {type: array, items: {type: string}}\n      retries: 1",
    )
    mock = MockProvider(['{"title": "T"}', json.dumps({"title": "T", "parts": ["a"]}), "D", "S"])
    result = run(text, mock, {"topic": "t"})
    plan = result.steps["plan"]
    assert plan.n_attempts == 2 and plan.output["parts"] == ["a"]
    repair = mock.requests[1].messages
    assert repair[-2] == {"role": "assistant", "content": '{"title": "T"}'}
    assert repair[-1]["content"] == (
        "Your reply did not pass validation:\n"
        "- 'parts' is a required property\n"
        "Reply again with the corrected JSON only."
    )
    assert plan.usage == plan.attempts[0].usage + plan.attempts[1].usage


def test_validation_retries_spent_keeps_last_output_and_cost() -> None:
    mock = MockProvider(["not json", "still not"])
    text = CHAIN.replace(
        "          parts: {type: array, items: {type: string}}",
        "          parts: {type: array, items: {type: string}}\n      retries: 1",
    )
    with pytest.raises(OutputValidationError) as info:
        run(text, mock, {"topic": "t"})
    err = info.value
    assert err.exit_code == 1 and err.attempts == 2 and err.last_output == "still not"
    assert err.cost_usd is not None and err.cost_usd > 0
    assert len(mock.requests) == 2  # nothing after the failed step was started


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        (
            "  - id: a\n    prompt: '{{ steps.b.output }}'\n"
            "  - id: b\n    prompt: '{{ steps.a.output }}'\n",
            "cycle",
        ),
        ("  - id: a\n    prompt: '{{ steps.outlin.output }}'\n", "unknown step `outlin`"),
    ],
)
def test_run_refuses_static_errors_before_any_call(steps: str, words: str) -> None:
    text = (
        "version: 1\nname: s\ndefaults: {model: gpt-4o}\n"
        "inputs:\n  xs: {type: array, default: []}\nsteps:\n" + steps
    )
    mock = MockProvider()
    with pytest.raises(SpecError) as info:
        run(text, mock)
    assert words in info.value.format()
    assert mock.requests == []


def test_context_window_overflow_is_refused_before_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flowgpt import ContextWindowError

    text = (
        "version: 1\nname: w\ndefaults: {model: gpt-4, max_tokens: 1000}\n"
        "inputs:\n  doc: {type: string}\nsteps:\n  - id: a\n    prompt: '{{ inputs.doc }}'\n"
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-window-0000000000000000")
    with FakeOpenAI() as server:
        provider = OpenAIProvider(base_url=server.base_url)
        # gpt-4 has 8,192 tokens: 7,500 words plus max_tokens 1,000 cannot fit ...
        with pytest.raises(ContextWindowError) as info:
            run(text, provider, {"doc": "word " * 7500})
        assert server.chat_requests == []
        # ... while a prompt whose byte count alone would not prove it fits, but whose
        # exact token count does, is sent.
        result = run(text, provider, {"doc": "word " * 1500})
        assert result.ok and len(server.chat_requests) == 1
    message = info.value.format()
    assert "context window of 8,192" in message and "step `a`" in message
    assert info.value.exit_code == 1


def test_concurrent_runs_share_one_request_limit() -> None:
    import asyncio

    class Counting(MockProvider):
        def __init__(self) -> None:
            super().__init__(latency_s=0.02)
            self.in_flight = 0
            self.most = 0

        async def complete(self, request: Any, *, on_text: Any = None) -> Any:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            try:
                return await super().complete(request, on_text=on_text)
            finally:
                self.in_flight -= 1

    provider = Counting()
    engine = Engine(provider=provider)
    wf = parse_workflow(PARALLEL)  # concurrency 4

    async def many() -> None:
        await asyncio.gather(*(engine.run(wf) for _ in range(10)))

    asyncio.run(many())
    assert provider.most == 4 and len(provider.requests) == 40


def test_json_cut_off_at_max_tokens_is_not_asked_again(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # The same limit cuts the same reply off again: one paid call, then a hint that says
    # to raise max_tokens (not output.retries).
    from click.testing import CliRunner

    from flowgpt.cli import main
    from tests.support.fake_openai import Reply

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-cutoff")
    path = tmp_path / "cut.yaml"
    path.write_text(
        "version: 1\nname: cut\n"
        f"provider: {{base_url: '{fake_openai.base_url}'}}\n"
        "defaults: {model: gpt-4o-mini, max_tokens: 8}\n"
        "steps:\n"
        "  - id: plan\n    prompt: Plan it as JSON.\n"
        "    output: {format: json, retries: 2}\n"
    )
    for _ in range(3):
        fake_openai.queue(Reply('{"title": "A long ti', finish_reason="length"))
    result = CliRunner().invoke(main, ["run", str(path), "--no-store"])
    assert result.exit_code == 1
    assert len(fake_openai.requests) == 1
    assert "cut off at max_tokens (8)" in result.output
    assert "raise max_tokens (now 8)" in result.output
    assert "output.retries" not in result.output


def test_the_json_word_400_is_diagnosed_not_worked_around(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # OpenAI's 400 for JSON mode without the word "JSON" is about the prompt, not about
    # response_format being unsupported: say so (and validate warns before any call).
    from click.testing import CliRunner

    from flowgpt.cli import main
    from tests.support.fake_openai import Fault

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-json-word")
    path = tmp_path / "plan.yaml"
    path.write_text(
        "version: 1\nname: plan\n"
        f"provider: {{base_url: '{fake_openai.base_url}'}}\n"
        "defaults: {model: gpt-4o-mini, max_tokens: 50}\n"
        "steps:\n"
        "  - id: plan\n    prompt: Plan a trip to Kyoto.\n"
        "    output: {format: json}\n"
    )
    checked = CliRunner().invoke(main, ["validate", str(path)])
    assert checked.exit_code == 0
    assert "step `plan`: a JSON step without a schema" in checked.output
    assert "plan.yaml:8:" in checked.output  # the line of `output:`
    fake_openai.queue(
        Fault.status_error(
            400,
            "'messages' must contain the word 'json' in some form, to use 'response_format' "
            "of type 'json_object'.",
            param="messages",
        )
    )
    result = CliRunner().invoke(main, ["run", str(path), "--no-store"])
    assert result.exit_code == 1
    assert len(fake_openai.requests) == 1  # not re-sent without response_format
    assert fake_openai.requests[0].body["response_format"] == {"type": "json_object"}
    assert 'no message says "JSON"' in result.output and "Reply with JSON." in result.output
    fine = path.read_text().replace("Plan a trip to Kyoto.", "Plan a trip to Kyoto as JSON.")
    path.write_text(fine)
    assert "json-word" not in CliRunner().invoke(main, ["validate", "--json", str(path)]).output


# -- an engine holds its providers ----------------------------------------------------------

GATHERED = """\
version: 1
name: gathered
defaults: {model: gpt-4o-mini, max_tokens: 20}
provider: {api_key_env: GATHERED_KEY, concurrency: 5}
inputs:
  n: {type: integer}
steps:
  - id: say
    prompt: "Say {{ inputs.n }}"
outputs:
  said: "{{ steps.say.output }}"
"""


async def test_200_gathered_runs_share_one_client_and_the_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The docs' way with a real provider: Engine() with no provider, the workflow's
    # `provider:` and the key from the environment, many runs gathered on one engine.
    import asyncio

    import openai

    made: list[openai.AsyncOpenAI] = []

    class Counted(openai.AsyncOpenAI):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(openai, "AsyncOpenAI", Counted)
    monkeypatch.setenv("GATHERED_KEY", "sk-test-gathered-00000000000000000")
    workflow = parse_workflow(GATHERED)
    with FakeOpenAI(latency_ms=10) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        async with Engine() as engine:
            results = await asyncio.gather(*(engine.run(workflow, {"n": n}) for n in range(200)))
            assert len(made) == 1 and not made[0].is_closed()
        requests = server.chat_requests
    assert [r.outputs["said"] for r in results] == [f"Echo: Say {n}" for n in range(200)]
    assert len(made) == 1  # one SDK client (and connection pool) for all 200 runs
    assert made[0].is_closed()  # closed when the engine was
    # Never more than provider.concurrency requests in flight, and that many were.
    events = sorted(
        [(r.arrived, 1) for r in requests] + [(r.completed or 0.0, -1) for r in requests]
    )
    in_flight = list(itertools.accumulate(change for _, change in events))
    assert len(requests) == 200 and max(in_flight) == 5


def test_run_sync_closes_the_client_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    made: list[openai.AsyncOpenAI] = []

    class Counted(openai.AsyncOpenAI):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(openai, "AsyncOpenAI", Counted)
    monkeypatch.setenv("GATHERED_KEY", "sk-test-gathered-00000000000000000")
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        result = Engine().run_sync(parse_workflow(GATHERED), {"n": 1})
    assert result.ok and len(made) == 1 and made[0].is_closed()
