"""Budgets and estimates: a run never spends past its budget, and `estimate` is never below
what a run really costs."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowgpt import BudgetExceededError, Engine, MockProvider, MockReply, Usage, parse_workflow
from flowgpt.accounting.estimate import estimate
from flowgpt.accounting.tokens import count_text
from flowgpt.errors import FlowgptError

CHAIN = """\
version: 1
name: b
defaults: {{model: gpt-4o-mini, max_tokens: {max_tokens}}}
budget: {budget}
steps:
  - id: one
    prompt: Say something about tea.
  - id: two
    prompt: 'Improve: {{{{ steps.one.output }}}}'
"""


def test_run_stops_before_a_call_that_could_break_the_budget() -> None:
    # A call of gpt-4o-mini with max_tokens 1000 can cost ~$0.0006. The first one really
    # spends ~$0.00054, so the second could break $0.0008 and must not be made.
    wf = parse_workflow(CHAIN.format(max_tokens=1000, budget="{max_cost_usd: 0.0008}"))
    mock = MockProvider([MockReply("long", usage=Usage(prompt_tokens=20, completion_tokens=900))])
    with pytest.raises(BudgetExceededError) as info:
        Engine(provider=mock).run_sync(wf)
    err = info.value
    assert len(mock.requests) == 1  # the second call was never sent
    assert err.exit_code == 1 and err.step == "two"
    assert "spent so far: one $" in err.message and "budget of $0.0008" in err.message
    spent = err.result.cost_usd
    assert spent is not None and spent <= Decimal("0.0008")
    assert err.result.steps["one"].status == "ok" and err.result.steps["two"].status == "failed"


def test_token_budget() -> None:
    wf = parse_workflow(CHAIN.format(max_tokens=500, budget="{max_tokens: 700}"))
    mock = MockProvider([MockReply("long", usage=Usage(prompt_tokens=20, completion_tokens=400))])
    with pytest.raises(BudgetExceededError) as info:
        Engine(provider=mock).run_sync(wf)
    assert len(mock.requests) == 1 and "700 tokens" in info.value.message


def test_engine_max_cost_is_the_lower_limit() -> None:
    wf = parse_workflow(CHAIN.format(max_tokens=1000, budget="{max_cost_usd: 5}"))
    mock = MockProvider([MockReply("long", usage=Usage(prompt_tokens=20, completion_tokens=900))])
    with pytest.raises(BudgetExceededError):
        Engine(provider=mock, max_cost_usd="0.0008").run_sync(wf)
    assert len(mock.requests) == 1


def test_cost_budget_with_unpriced_model_is_refused_before_any_call() -> None:
    text = CHAIN.format(max_tokens=100, budget="{max_cost_usd: 1}").replace("gpt-4o-mini", "my-llm")
    mock = MockProvider()
    with pytest.raises(BudgetExceededError) as info:
        Engine(provider=mock).run_sync(parse_workflow(text))
    assert mock.requests == [] and "no known price" in info.value.message
    assert "pricing:" in (info.value.hint or "")


def test_estimate_of_a_static_prompt_is_exact() -> None:
    wf = parse_workflow(CHAIN.format(max_tokens=100, budget="{max_tokens: 100000}"))
    est = estimate(wf)
    one = est.steps[0]
    mock = MockProvider()
    result = Engine(provider=mock).run_sync(wf)
    assert one.prompt_exact and one.prompt_tokens == result.steps["one"].usage.prompt_tokens
    two = est.steps[1]
    assert not two.prompt_exact and two.prompt_tokens >= result.steps["two"].usage.prompt_tokens
    assert est.worst_cost_usd is not None and est.worst_cost_usd >= result.cost_usd


# --- properties ------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "required": ["title", "items"],
    "properties": {
        "title": {"type": "string"},
        "items": {"type": "array", "items": {"type": "string"}},
    },
}


@st.composite
def workflows(draw: st.DrawFn) -> tuple[str, dict[str, list[str]]]:
    """A random chain/graph of text and JSON steps, and random replies for the mock."""
    n = draw(st.integers(1, 4))
    steps = []
    replies: dict[str, list[str]] = {}
    words = st.lists(
        st.sampled_from(["tea", "green", "très", "茶", "leaf", "42", "{", "\n"]), max_size=40
    )
    for i in range(n):
        max_tokens = draw(st.integers(5, 60))
        is_json = draw(st.booleans())
        earlier = [f"s{j}" for j in range(i)]
        refs = draw(st.lists(st.sampled_from(earlier), max_size=2)) if earlier else []
        parts = [f"Step {i}: " + " ".join(draw(words))]
        for ref in refs:
            ref_json = steps[int(ref[1:])]["json"]
            if ref_json:
                # No "{" here: next to a Jinja tag it would change the tag.
                body = " ".join(w for w in draw(words) if w != "{")
                parts.append(
                    f"{{{{ steps.{ref}.output.title }}}}"
                    f"{{% for x in steps.{ref}.output['items'] %}}- {{{{ x }}}} {body}\n"
                    f"{{% endfor %}}"
                    f"{{% if steps.{ref}.output.title %}}{body}{{% endif %}}"
                )
            else:
                parts.append(f"{{{{ steps.{ref}.output }}}}")
        retries = draw(st.integers(0, 2)) if is_json else 0
        steps.append(
            {
                "id": f"s{i}",
                "json": is_json,
                "max": max_tokens,
                "prompt": " ".join(parts),
                "retries": retries,
            }
        )
        # Replies: some invalid JSON first (exercising retries), always within max_tokens.
        mine = replies[f"s{i}"] = ["not json"] * draw(st.integers(0, retries))
        if is_json:
            items = draw(st.lists(st.sampled_from(["a", "bb", "茶", ""]), max_size=12))
            reply = json.dumps({"title": "t", "items": items}, ensure_ascii=False)
        else:
            reply = " ".join(draw(words)) or "ok"
        if count_text(reply) > max_tokens:
            reply = "ok" if not is_json else json.dumps({"title": "t", "items": []})
        mine.append(reply)
    lines = ["version: 1", "name: prop", "defaults: {model: gpt-4o-mini}", "steps:"]
    for s in steps:
        lines += [
            f"  - id: {s['id']}",
            f"    max_tokens: {s['max']}",
            f"    prompt: {json.dumps(s['prompt'], ensure_ascii=False)}",
        ]
        if s["json"]:
            lines += [
                "    output:",
                f"      schema: {json.dumps(SCHEMA)}",
                f"      retries: {s['retries']}",
            ]
    return "\n".join(lines) + "\n", replies


class _StepMock(MockProvider):
    """Takes each step's replies from its own queue, so concurrent steps cannot swap them."""

    def __init__(self, replies: dict[str, list[str]]) -> None:
        super().__init__()
        self.by_step = {k: list(v) for k, v in replies.items()}

    async def complete(self, request: Any, *, on_text: Any = None) -> Any:
        first_user = next(m["content"] for m in request.messages if m["role"] == "user")
        step = "s" + first_user.split(":", 1)[0].removeprefix("Step ")
        self.add_replies(self.by_step[step].pop(0))
        return await super().complete(request, on_text=on_text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=workflows(), budget=st.decimals(min_value="0.000001", max_value="0.0002", places=6))
def test_cost_never_exceeds_budget_and_estimate_bounds_the_run(
    data: tuple[str, dict[str, list[str]]], budget: Decimal
) -> None:
    text, replies = data
    wf = parse_workflow(text)
    est = estimate(wf)
    # Without a budget: the estimate is never below what the run costs.
    free = Engine(provider=_StepMock(replies)).run_sync(wf)
    assert free.cost_usd is not None and est.worst_cost_usd is not None
    assert free.cost_usd <= est.worst_cost_usd
    assert free.usage.total_tokens <= (est.worst_tokens or 0)
    for s in est.steps:
        assert free.steps[s.id].usage.prompt_tokens <= s.prompt_tokens + (s.attempts - 1) * (
            (s.max_output_tokens or 0) + 408
        )
    # With a budget: whatever happens, the money spent stays within it.
    limited = Engine(provider=_StepMock(replies), max_cost_usd=budget)
    try:
        result = limited.run_sync(wf)
    except FlowgptError as exc:
        assert isinstance(exc, BudgetExceededError), exc
        result = exc.result
    assert result.cost_usd is not None and result.cost_usd <= budget


def test_usage_is_what_the_mock_reports() -> None:
    wf = parse_workflow(CHAIN.format(max_tokens=50, budget="{max_tokens: 100000}"))
    usage = Usage(prompt_tokens=10, completion_tokens=5)
    result = Engine(provider=MockProvider([MockReply("a", usage=usage), "b"])).run_sync(wf)
    assert result.steps["one"].usage == usage


def test_validate_warns_when_the_static_text_cannot_fit() -> None:
    from flowgpt.accounting.checks import cost_diagnostics as analyze

    long_prompt = "word " * 7000  # ~7,000 tokens; gpt-4 has 8,192
    text = (
        "version: 1\nname: w\ndefaults: {model: gpt-4, max_tokens: 2000}\nsteps:\n"
        f"  - id: a\n    prompt: {long_prompt}\n"
    )
    found = analyze(parse_workflow(text))
    assert [(d.severity, d.code, d.line) for d in found] == [("warning", "context", 5)]
    assert "cannot fit gpt-4's context window of 8,192" in found[0].message
    fits = text.replace("max_tokens: 2000", "max_tokens: 500")
    assert analyze(parse_workflow(fits)) == []


def test_estimate_bounds_a_loop_that_adds_text_per_item() -> None:
    text = """\
version: 1
name: loop
defaults: {model: gpt-4o-mini}
steps:
  - id: list
    max_tokens: 60
    prompt: List things.
    output:
      schema: {type: object, properties: {items: {type: array, items: {type: string}}}}
  - id: use
    max_tokens: 10
    prompt: |
      {% for x in steps.list.output['items'] %}- item {{ x }}: please describe it in detail
      {% endfor %}
"""
    items = json.dumps({"items": [""] * 25})
    wf = parse_workflow(text)
    est = estimate(wf)
    result = Engine(provider=MockProvider([items, "ok"])).run_sync(wf)
    assert result.steps["use"].usage.prompt_tokens <= est.steps[1].prompt_tokens
