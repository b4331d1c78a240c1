"""`when` and `for_each`: skips, nulls, item order, concurrency, a failing item, estimates."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from flowgpt import (
    Engine,
    MockProvider,
    ServerError,
    SpecError,
    TemplateError,
    parse_workflow,
)
from flowgpt.accounting.estimate import estimate
from flowgpt.spec.analysis import analyze

MAP = """\
version: 1
name: map
defaults: {model: gpt-4o-mini, max_tokens: 40}
provider: {concurrency: 3}
inputs:
  topics: {type: array, default: [tea, coffee, cocoa, mate]}
steps:
  - id: each
    for_each: inputs.topics
    as: topic
    prompt: 'One line about {{ topic }}.'
  - id: join
    prompt: '{% for line in steps.each.output %}{{ loop.index }}. {{ line }}
      {% endfor %}'
outputs:
  lines: '{{ steps.each.output }}'
"""


class Echo(MockProvider):
    """Answers with the prompt's topic after a delay that reverses the finishing order."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most = 0

    async def complete(self, request: Any, *, on_text: Any = None) -> Any:
        said = request.messages[-1]["content"]
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            # Earlier items take longer, so they finish last.
            order = ["cocoa", "coffee", "tea", "mate"]
            delay = 0.05 * (4 - next((i for i, t in enumerate(order) if t in said), 3))
            await asyncio.sleep(delay)
            self.add_replies(said.upper())
            return await super().complete(request, on_text=on_text)
        finally:
            self.in_flight -= 1


def test_for_each_runs_items_concurrently_and_keeps_item_order() -> None:
    provider = Echo()
    result = Engine(provider=provider).run_sync(parse_workflow(MAP))
    assert result.outputs["lines"] == [
        "ONE LINE ABOUT TEA.",
        "ONE LINE ABOUT COFFEE.",
        "ONE LINE ABOUT COCOA.",
        "ONE LINE ABOUT MATE.",
    ]
    each = result.steps["each"]
    assert len(each.items) == 4 and each.n_attempts == 4
    assert each.usage == sum((i.usage for i in each.items[1:]), each.items[0].usage)
    assert provider.most == 3  # provider.concurrency bounds the items
    join = provider.requests[-1].messages[-1]["content"]
    assert join.startswith("1. ONE LINE ABOUT TEA.")
    assert "each ×4" in result.report()


def test_one_failing_item_fails_the_step_and_keeps_the_others() -> None:
    class FailCocoa(MockProvider):
        async def complete(self, request: Any, *, on_text: Any = None) -> Any:
            if "cocoa" in request.messages[-1]["content"]:
                raise ServerError("down", status=503)
            return await super().complete(request, on_text=on_text)

    provider = FailCocoa()
    with pytest.raises(ServerError) as info:
        Engine(provider=provider).run_sync(parse_workflow(MAP))
    each = info.value.result.steps["each"]
    assert each.status == "failed"
    assert [i.status for i in each.items] == ["ok", "ok", "failed", "ok"]
    assert info.value.result.steps["join"].status == "pending"  # never started


def test_empty_list_gives_empty_output() -> None:
    mock = MockProvider()
    result = Engine(provider=mock).run_sync(parse_workflow(MAP), {"topics": []})
    assert result.steps["each"].output == [] and len(mock.requests) == 1


WHEN = """\
version: 1
name: when
defaults: {model: gpt-4o-mini, max_tokens: 40}
inputs:
  long: {type: boolean, default: false}
steps:
  - id: extra
    when: inputs.long
    prompt: More detail.
  - id: final
    prompt: 'Base.{% if steps.extra.output %} Plus: {{ steps.extra.output }}{% endif %}'
  - id: map_over_skipped
    when: '{{ inputs.long }}'
    for_each: steps.extra.output
    as: x
    prompt: '{{ x }}'
"""


def test_when_false_skips_and_downstream_sees_null() -> None:
    mock = MockProvider(["FINAL"])
    result = Engine(provider=mock).run_sync(parse_workflow(WHEN))
    assert result.steps["extra"].status == "skipped" and result.steps["extra"].output is None
    assert result.steps["map_over_skipped"].status == "skipped"
    assert [r.messages[-1]["content"] for r in mock.requests] == ["Base."]
    assert "extra (skipped)" in result.report()


def test_when_true_runs() -> None:
    mock = MockProvider(["DETAIL", "FINAL", "X"])
    wf = parse_workflow(
        WHEN.replace("for_each: steps.extra.output", "for_each: '[steps.extra.output]'")
    )
    result = Engine(provider=mock).run_sync(wf, {"long": True})
    assert mock.requests[1].messages[-1]["content"] == "Base. Plus: DETAIL"
    assert result.steps["map_over_skipped"].output == ["X"]


def test_for_each_over_null_or_a_non_list_is_a_clear_error() -> None:
    text = WHEN.replace("    when: '{{ inputs.long }}'\n", "")
    with pytest.raises(TemplateError) as info:
        Engine(provider=MockProvider(["F"])).run_sync(parse_workflow(text))
    assert "gave null" in info.value.message and "map_over_skipped" in info.value.message
    text = MAP.replace("for_each: inputs.topics", "for_each: inputs.topics | length")
    with pytest.raises(TemplateError, match="must give a list, not int"):
        Engine(provider=MockProvider()).run_sync(parse_workflow(text))


def test_history_of_a_for_each_step_is_refused() -> None:
    text = MAP.replace("outputs:", "  - id: more\n    history: each\n    prompt: more\noutputs:")
    found = analyze(parse_workflow(text))
    assert any("for_each step has one conversation per item" in d.message for d in found)
    with pytest.raises(SpecError):
        Engine(provider=MockProvider()).run_sync(parse_workflow(text))


def test_estimate_bounds_for_each_over_inputs_and_over_replies() -> None:
    wf = parse_workflow(MAP)
    est = estimate(wf)
    each = est.steps[0]
    assert each.items == 4 and each.prompt_exact
    result = Engine(provider=MockProvider()).run_sync(wf)
    assert result.cost_usd is not None and est.worst_cost_usd is not None
    assert result.cost_usd <= est.worst_cost_usd
    assert result.steps["each"].usage.prompt_tokens <= each.prompt_tokens * 4

    over_reply = """\
version: 1
name: outline
defaults: {model: gpt-4o-mini}
steps:
  - id: plan
    max_tokens: 30
    prompt: List sections.
    output:
      schema: {type: object, properties: {sections: {type: array, items: {type: string}}}}
  - id: write
    max_tokens: 20
    for_each: steps.plan.output.sections
    as: s
    prompt: 'Write the section {{ s }} in detail, with examples.'
"""
    wf = parse_workflow(over_reply)
    est = estimate(wf)
    assert est.steps[1].items == 30 and not est.steps[1].prompt_exact
    reply = json.dumps({"sections": ["a"] * 12})
    result = Engine(provider=MockProvider([reply])).run_sync(wf)
    assert len(result.steps["write"].items) == 12
    assert result.usage.total_tokens <= (est.worst_tokens or 0)
    assert result.cost_usd is not None and est.worst_cost_usd is not None
    assert result.cost_usd <= est.worst_cost_usd


def test_estimate_refuses_a_for_each_that_is_not_a_list() -> None:
    text = MAP.replace("for_each: inputs.topics", "for_each: inputs.topics | length")
    with pytest.raises(TemplateError, match="must give a list, not int"):
        estimate(parse_workflow(text))
