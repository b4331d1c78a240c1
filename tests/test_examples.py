"""Every workflow in workflows/ validates clean and runs: offline with the mock provider, and
through the real openai SDK against the loopback server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flowgpt import Engine, MockProvider, load_workflow
from flowgpt.accounting.checks import check_file
from flowgpt.providers.mock.schema_example import minimal_instance
from flowgpt.providers.openai import OpenAIProvider
from tests.support.fake_openai import FakeOpenAI, Reply

ROOT = Path(__file__).resolve().parent.parent
# The workflows; their test files and cassettes (NAME.test.yaml, NAME.cassette.yaml) lie
# beside them and are replayed by tests/test_workflow_tests.py.
EXAMPLES = sorted(
    p
    for p in (ROOT / "workflows").glob("*.yaml")
    if not p.name.endswith((".test.yaml", ".cassette.yaml"))
)
INPUTS: dict[str, dict[str, Any]] = {
    "article": {"topic": "green tea", "words": 300},
    "translate": {"text": "The cat sleeps on the warm windowsill."},
    "codegen": {"task": "parse an ISO date"},
    "analysis": {"text": "ACME sold 5 tons of tea to Globex on 3 May 2026."},
    "report": {"subject": "tea in Japan"},
    "chatbot": {"question": "Do you sell teapots?"},
    "note": {"topic": "green tea"},
}


def test_every_example_has_inputs_here() -> None:
    assert {p.stem for p in EXAMPLES} == set(INPUTS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_clean(path: Path) -> None:
    assert [d.format() for d in check_file(path) if d.severity == "error"] == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_with_mock(path: Path) -> None:
    result = Engine(provider=MockProvider()).run_sync(load_workflow(path), INPUTS[path.stem])
    assert result.ok
    assert all(s.status == "ok" for s in result.steps.values())
    assert result.outputs and all(v not in (None, "") for v in result.outputs.values())
    assert result.usage.prompt_tokens > 0 and result.cost_usd is not None


def schema_responder(body: dict[str, Any]) -> Reply:
    """Answer JSON steps with a schema-valid object and text steps with a few words."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return Reply(json.dumps(minimal_instance(fmt["json_schema"]["schema"])))
    if fmt.get("type") == "json_object":
        return Reply('{"ok": true}')
    return Reply("```python\ndef f() -> None: ...\n```\nA short, plain answer.")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_through_the_sdk_and_loopback_server(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-loopback-000000000000")
    wf = load_workflow(path)
    with FakeOpenAI(responder=schema_responder) as server:
        provider = OpenAIProvider(base_url=server.base_url)
        result = Engine(provider=provider).run_sync(wf, INPUTS[path.stem])
        sent = server.chat_requests
    assert result.ok
    # One request per step, or per item for a for_each step.
    assert len(sent) == sum(max(len(s.items), 1) for s in result.steps.values())
    assert {r.body["model"] for r in sent} <= {
        s.model or wf.spec.defaults.model for s in wf.spec.steps
    }
    # The loopback server stands in for a relay: OpenAI model names are priced at OpenAI's
    # list prices (budgets keep working), and the result says where the prices came from.
    assert result.cost_usd is not None and result.cost_usd > 0
    assert result.price_note is not None and server.base_url.rstrip("/") in result.price_note


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_estimate_bounds_its_mock_run(path: Path) -> None:
    from flowgpt.accounting.estimate import estimate

    wf = load_workflow(path)
    est = estimate(wf, INPUTS[path.stem])
    result = Engine(provider=MockProvider()).run_sync(wf, INPUTS[path.stem])
    assert est.worst_cost_usd is not None and result.cost_usd is not None
    assert result.cost_usd <= est.worst_cost_usd
    for step in est.steps:
        assert result.steps[step.id].usage.prompt_tokens <= step.prompt_tokens
