"""Output validation: every check kind passing and failing, JSON parsing, cut-off replies,
structured outputs and the fallback when an endpoint refuses them, and the metaschema
check of a workflow's output schemas."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from flowgpt import Engine, OutputSpec, parse_workflow
from flowgpt.providers.openai import OpenAIProvider
from flowgpt.spec.output import (
    check_schema,
    parse_json_reply,
    response_format_for,
    validate_reply,
)
from tests.support.fake_openai import FakeOpenAI, Fault, Reply

TEXT = "The quick brown fox jumps over the lazy dog"  # 9 words, 43 characters


@pytest.mark.parametrize(
    ("check", "passes", "fails", "words"),
    [
        ({"min_words": 9}, TEXT, "too short", "at least 9"),
        ({"max_words": 9}, TEXT, TEXT + " again", "at most 9"),
        ({"max_chars": 43}, TEXT, TEXT + "!", "at most 43"),
        ({"contains": "fox"}, TEXT, "a cat", "must contain 'fox'"),
        ({"not_contains": "As an AI"}, TEXT, "As an AI, I", "must not contain"),
        ({"regex": r"^The \w+"}, TEXT, "the quick", "regular expression"),
        ({"one_of": ["yes", "no"]}, " yes\n", "maybe", "exactly one of"),
    ],
)
def test_each_check_kind(check: dict[str, object], passes: str, fails: str, words: str) -> None:
    spec = OutputSpec.model_validate({"checks": [check]})
    assert validate_reply(passes, spec).ok
    verdict = validate_reply(fails, spec)
    assert not verdict.ok and words in verdict.failures[0]


def test_checks_apply_to_json_replies_too() -> None:
    spec = OutputSpec.model_validate({"format": "json", "checks": [{"max_chars": 10}]})
    verdict = validate_reply('{"a": "long value"}', spec)
    assert verdict.failures == ["it has 19 characters; it must have at most 10"]


@pytest.mark.parametrize(
    "reply", ['{"a": 1}', '```json\n{"a": 1}\n```', 'Here it is:\n```\n{"a": 1}\n```\nDone.']
)
def test_json_reply_with_one_fenced_block_is_tolerated(reply: str) -> None:
    assert parse_json_reply(reply) == {"a": 1}


def test_two_fenced_blocks_are_not_guessed_between() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_json_reply("```\n{}\n```\n```\n[]\n```")


def test_cut_off_json_reply_fails_plainly() -> None:
    spec = OutputSpec.model_validate({"format": "json"})
    verdict = validate_reply('{"a": ', spec, finish_reason="length")
    assert verdict.failures == ["the reply was cut off at max_tokens, so the JSON is incomplete"]


def test_strict_structured_outputs_only_when_the_schema_allows() -> None:
    closed = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    fmt = response_format_for("s", OutputSpec.model_validate({"schema": closed}))
    assert fmt == {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": closed, "strict": True},
    }
    open_schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = response_format_for("s", OutputSpec.model_validate({"schema": open_schema}))
    assert fmt is not None and fmt["json_schema"]["strict"] is False
    assert response_format_for("s", OutputSpec.model_validate({"format": "json"})) == {
        "type": "json_object"
    }
    assert response_format_for("s", OutputSpec.model_validate({"checks": []})) is None


def test_check_schema_reports_every_problem_by_path() -> None:
    bad: dict[str, Any] = {"type": "object", "properties": {"n": {"type": 3}}, "required": "n"}
    problems = check_schema(bad)
    assert sorted(path for path, _ in problems) == [("properties", "n", "type"), ("required",)]
    assert all(isinstance(message, str) and message for _, message in problems)
    assert check_schema({"type": "object", "properties": {"n": {"type": "integer"}}}) == []
    # the same answer every time: nothing is remembered between calls
    assert check_schema(bad) == problems


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "default": datetime.date(2024, 1, 2)},  # YAML gives dates
        {"enum": [{1: "int key"}]},
        {"const": float("nan")},
    ],
)
def test_check_schema_takes_values_json_cannot_say(schema: dict[str, Any]) -> None:
    assert check_schema(schema) == []


WF = """\
version: 1
name: fallback
defaults: {model: gpt-4o-mini}
steps:
  - id: a
    prompt: Give a title.
    output:
      schema:
        type: object
        required: [title]
        properties: {title: {type: string}}
  - id: b
    prompt: 'Another: {{ steps.a.output.title }}'
    output:
      schema:
        type: object
        required: [title]
        properties: {title: {type: string}}
"""


def test_endpoint_without_json_schema_falls_back_to_json_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fallback-00000000000000")
    with FakeOpenAI() as server:
        server.queue(
            Fault.bad_request(
                "Invalid parameter: 'response_format' of type 'json_schema' is not supported."
            ),
            Reply('{"title": "One"}'),
            Reply('{"title": "Two"}'),
        )
        result = Engine(provider=OpenAIProvider(base_url=server.base_url)).run_sync(
            parse_workflow(WF)
        )
        bodies = [r.body for r in server.chat_requests]
    assert result.ok and result.outputs == {} and result.steps["b"].output == {"title": "Two"}
    assert bodies[0]["response_format"]["type"] == "json_schema"
    # json_object, with the schema beside it (llama.cpp servers turn it into a grammar).
    schema = bodies[0]["response_format"]["json_schema"]["schema"]
    assert bodies[1]["response_format"] == {"type": "json_object", "schema": schema}
    assert "matching this JSON Schema" in bodies[1]["messages"][-1]["content"]
    # The refusal is remembered: step b asks with json_object at once.
    assert bodies[2]["response_format"]["type"] == "json_object"
    assert len(bodies) == 3
    assert result.steps["a"].n_attempts == 1


def test_other_bad_requests_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowgpt import BadRequestError

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fallback-00000000000000")
    with FakeOpenAI() as server:
        server.queue(Fault.bad_request("max_tokens is too large"))
        with pytest.raises(BadRequestError, match="max_tokens is too large"):
            Engine(provider=OpenAIProvider(base_url=server.base_url)).run_sync(parse_workflow(WF))
        assert len(server.chat_requests) == 1
