"""The mock provider and the minimal JSON Schema instance generator behind its JSON replies."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from jsonschema import Draft7Validator, Draft202012Validator

from flowgpt.errors import RateLimitError, ServerError
from flowgpt.providers.base import ChatRequest, Message, Provider
from flowgpt.providers.mock.provider import MockProvider, MockReply, default_reply
from flowgpt.providers.mock.schema_example import (
    SchemaExampleError,
    example_for_pattern,
    minimal_instance,
)
from flowgpt.usage import Usage

tokens = pytest.importorskip("flowgpt.accounting.tokens")

OUTLINE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "sections"],
    "properties": {
        "title": {"type": "string"},
        "sections": {"type": "array", "items": {"type": "string"}, "minItems": 3},
    },
}


def request(
    prompt: str = "Plan an article about tea.",
    *,
    system: str | None = "You are an editor.",
    model: str = "gpt-4o-mini",
    **kw: Any,
) -> ChatRequest:
    messages: list[Message] = []
    if system is not None:
        messages.append(Message(role="system", content=system))
    messages.append(Message(role="user", content=prompt))
    return ChatRequest(model=model, messages=messages, **kw)


def schema_format(schema: dict[str, Any], name: str = "outline") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}


# -------------------------------------------------------------- basics


def test_is_a_provider() -> None:
    mock = MockProvider()
    assert isinstance(mock, Provider)
    assert mock.name == "mock"


async def test_default_text_is_deterministic_and_prompt_dependent() -> None:
    a = await MockProvider().complete(request("Plan an article about tea."))
    b = await MockProvider().complete(request("Plan an article about tea."))
    c = await MockProvider().complete(request("Plan an article about coffee."))
    assert a.text == b.text
    assert a.text != c.text
    assert "tea" in a.text
    assert a.finish_reason == "stop"
    assert a.model == "gpt-4o-mini"
    assert len(a.text.split()) >= 15  # a few sentences, not a stub


def test_default_text_is_stable_across_processes() -> None:
    code = (
        "from flowgpt.providers.base import ChatRequest;"
        "from flowgpt.providers.mock.provider import default_reply;"
        "print(default_reply(ChatRequest(model='m', messages=["
        "{'role': 'user', 'content': 'hello 世界'}]))[0])"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1
    req = ChatRequest(model="m", messages=[Message(role="user", content="hello 世界")])
    assert outputs == {default_reply(req)[0] + "\n"}


async def test_scripted_replies_in_order_then_default() -> None:
    mock = MockProvider(["first", MockReply("second", finish_reason="length")])
    assert mock.remaining == 2
    r1 = await mock.complete(request("a"))
    r2 = await mock.complete(request("b"))
    r3 = await mock.complete(request("c"))
    assert r1.text == "first" and r1.finish_reason == "stop"
    assert r2.text == "second" and r2.finish_reason == "length"
    assert r3.text == default_reply(request("c"))[0]
    assert mock.remaining == 0


async def test_add_replies_appends_to_the_queue() -> None:
    mock = MockProvider(["one"])
    mock.add_replies("two", "three")
    texts = [(await mock.complete(request())).text for _ in range(3)]
    assert texts == ["one", "two", "three"]


async def test_exceptions_are_raised_then_replies_continue() -> None:
    mock = MockProvider([RateLimitError("slow down", status=429), ServerError, "ok"])
    with pytest.raises(RateLimitError, match="slow down"):
        await mock.complete(request())
    with pytest.raises(ServerError):
        await mock.complete(request())
    assert (await mock.complete(request())).text == "ok"
    assert len(mock.requests) == 3  # failed calls are recorded too


async def test_requests_are_recorded() -> None:
    mock = MockProvider()
    first = request("one")
    second = request("two", max_tokens=50, temperature=0.2)
    await mock.complete(first)
    await mock.complete(second)
    assert mock.requests == [first, second]
    assert mock.last_request is second
    assert mock.requests[1].messages[-1]["content"] == "two"


async def test_usage_is_counted_with_the_real_tokenizer() -> None:
    req = request("Summarise the history of tea in three sentences.", model="gpt-4o")
    response = await MockProvider().complete(req)
    assert response.usage.prompt_tokens == tokens.count_tokens(req.messages, "gpt-4o")
    assert response.usage.completion_tokens == tokens.count_text(response.text, "gpt-4o")
    assert response.usage.prompt_tokens > 0


async def test_scripted_text_usage_is_counted_too() -> None:
    req = request("hi")
    response = await MockProvider(["Hello there, friend."]).complete(req)
    assert response.usage == Usage(
        prompt_tokens=tokens.count_tokens(req.messages, req.model),
        completion_tokens=tokens.count_text("Hello there, friend.", req.model),
    )


async def test_mock_reply_usage_and_model_override() -> None:
    usage = Usage(prompt_tokens=100, completion_tokens=7, cached_tokens=50)
    mock = MockProvider([MockReply("x", usage=usage, model="gpt-4o-2024-08-06")])
    response = await mock.complete(request())
    assert response.usage == usage
    assert response.model == "gpt-4o-2024-08-06"


# ---------------------------------------------------------------- JSON


async def test_json_schema_reply_validates() -> None:
    response = await MockProvider().complete(request(response_format=schema_format(OUTLINE_SCHEMA)))
    data = json.loads(response.text)
    Draft202012Validator(OUTLINE_SCHEMA).validate(data)
    assert data == {
        "title": "example title",
        "sections": ["example section 1", "example section 2", "example section 3"],
    }
    assert response.finish_reason == "stop"


async def test_json_object_reply_is_an_object() -> None:
    response = await MockProvider().complete(request(response_format={"type": "json_object"}))
    assert isinstance(json.loads(response.text), dict)


async def test_prompt_that_asks_for_json_gets_json() -> None:
    mock = MockProvider()
    asked = await mock.complete(request("List three teas. Respond with a JSON object."))
    assert isinstance(json.loads(asked.text), dict)
    system = await mock.complete(request("Three teas", system="Reply only in valid JSON."))
    assert isinstance(json.loads(system.text), dict)
    mentioned = await mock.complete(request("Explain what this JSON file configures."))
    with pytest.raises(json.JSONDecodeError):
        json.loads(mentioned.text)


async def test_text_response_format_gets_text() -> None:
    response = await MockProvider().complete(request(response_format={"type": "text"}))
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)


async def test_unsatisfiable_schema_still_answers_json() -> None:
    schema = {"type": "integer", "minimum": 5, "maximum": 1}
    response = await MockProvider().complete(request(response_format=schema_format(schema)))
    json.loads(response.text)  # valid JSON; the engine's validation reports the schema error


async def test_non_ascii_json_is_not_escaped() -> None:
    schema = {"type": "object", "properties": {"标题": {"const": "绿茶"}}, "required": ["标题"]}
    response = await MockProvider().complete(request(response_format=schema_format(schema)))
    assert response.text == '{"标题": "绿茶"}'


# ------------------------------------------------------------ streaming


async def test_streaming_calls_on_text_with_chunks_that_join_to_the_text() -> None:
    chunks: list[str] = []
    response = await MockProvider().complete(request(), on_text=chunks.append)
    assert len(chunks) > 1
    assert "".join(chunks) == response.text


async def test_streaming_a_scripted_and_a_json_reply() -> None:
    mock = MockProvider(["  leading and trailing spaces  \n"])
    chunks: list[str] = []
    response = await mock.complete(request(), on_text=chunks.append)
    assert "".join(chunks) == response.text == "  leading and trailing spaces  \n"
    chunks.clear()
    response = await mock.complete(
        request(response_format=schema_format(OUTLINE_SCHEMA)), on_text=chunks.append
    )
    assert "".join(chunks) == response.text


async def test_empty_reply_streams_nothing() -> None:
    chunks: list[str] = []
    response = await MockProvider([""]).complete(request(), on_text=chunks.append)
    assert response.text == "" and chunks == []


# ------------------------------------------------------- limits, stop, latency


async def test_default_reply_is_cut_at_max_tokens() -> None:
    response = await MockProvider().complete(request(max_tokens=6))
    assert response.finish_reason == "length"
    assert 0 < response.usage.completion_tokens <= 6
    full = default_reply(request())[0]
    assert full.startswith(response.text)


async def test_default_reply_under_max_tokens_is_complete() -> None:
    response = await MockProvider().complete(request(max_tokens=800))
    assert response.finish_reason == "stop"
    assert response.text == default_reply(request())[0]


async def test_json_reply_cut_at_max_tokens_is_length() -> None:
    req = request(response_format=schema_format(OUTLINE_SCHEMA), max_tokens=5)
    response = await MockProvider().complete(req)
    assert response.finish_reason == "length"
    assert response.usage.completion_tokens <= 5


async def test_stop_sequence_cuts_default_text() -> None:
    full = default_reply(request())[0]
    response = await MockProvider().complete(request(stop=[". "]))
    assert response.text == full.split(". ")[0]
    assert response.finish_reason == "stop"


async def test_latency_is_simulated_concurrently() -> None:
    mock = MockProvider(latency_s=0.1)
    started = time.perf_counter()
    await asyncio.gather(*(mock.complete(request(str(i))) for i in range(5)))
    elapsed = time.perf_counter() - started
    assert 0.1 <= elapsed < 0.45
    assert len(mock.requests) == 5


async def test_concurrent_calls_take_scripted_replies_in_call_order() -> None:
    mock = MockProvider(["r0", "r1", "r2", "r3"], latency_s=0.01)
    responses = await asyncio.gather(*(mock.complete(request(f"p{i}")) for i in range(4)))
    assert [r.text for r in responses] == ["r0", "r1", "r2", "r3"]
    assert [r.messages[-1]["content"] for r in mock.requests] == ["p0", "p1", "p2", "p3"]


def test_negative_latency_is_refused() -> None:
    with pytest.raises(ValueError):
        MockProvider(latency_s=-1)


# ------------------------------------------------- minimal schema instances

CASES: list[tuple[str, dict[str, Any]]] = [
    ("design outline", OUTLINE_SCHEMA),
    ("string", {"type": "string"}),
    ("nullable string", {"type": ["string", "null"]}),
    ("null first", {"type": ["null", "integer"]}),
    ("minLength", {"type": "string", "minLength": 30}),
    ("maxLength", {"type": "string", "maxLength": 3}),
    ("exact length", {"type": "string", "minLength": 5, "maxLength": 5}),
    ("maxLength 0", {"type": "string", "maxLength": 0}),
    ("pattern code", {"type": "string", "pattern": r"^[A-Z]{3}-\d{4}$"}),
    ("pattern alternation", {"type": "string", "pattern": "^(low|medium|high)$"}),
    ("pattern words", {"type": "string", "pattern": "^[a-z_]+$"}),
    ("pattern date", {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}),
    ("pattern negated class", {"type": "string", "pattern": "[^a-z]{2,}"}),
    ("pattern unanchored", {"type": "string", "pattern": "ab+c"}),
    ("pattern groups", {"type": "string", "pattern": r"^(?:[a-z]+\.){2}[a-z]{2,3}$"}),
    ("pattern cjk", {"type": "string", "pattern": "^[\\u4e00-\\u9fff]+$"}),
    ("pattern + length", {"type": "string", "pattern": "^[a-z]+$", "minLength": 12}),
    ("email", {"type": "string", "format": "email"}),
    ("date", {"type": "string", "format": "date"}),
    ("date-time", {"type": "string", "format": "date-time"}),
    ("uri", {"type": "string", "format": "uri"}),
    ("uuid", {"type": "string", "format": "uuid"}),
    ("ipv4", {"type": "string", "format": "ipv4"}),
    ("enum", {"enum": ["red", "green"]}),
    ("enum with type", {"type": "string", "enum": [1, "two"]}),
    ("const", {"const": {"a": [1, 2]}}),
    ("integer minimum", {"type": "integer", "minimum": 5}),
    ("integer exclusiveMinimum", {"type": "integer", "exclusiveMinimum": 5}),
    ("integer negative max", {"type": "integer", "maximum": -3}),
    ("number open interval", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
    ("integer multipleOf", {"type": "integer", "multipleOf": 7, "minimum": 10}),
    ("number multipleOf", {"type": "number", "multipleOf": 0.1, "minimum": 0.25}),
    ("number multipleOf below", {"type": "number", "exclusiveMaximum": -2, "multipleOf": 2}),
    ("integer range", {"type": "integer", "minimum": 1, "maximum": 10}),
    ("boolean", {"type": "boolean"}),
    ("null", {"type": "null"}),
    ("anyOf", {"anyOf": [{"type": "integer", "minimum": 3, "maximum": 1}, {"type": "string"}]}),
    ("oneOf", {"oneOf": [{"type": "integer"}, {"type": "string"}]}),
    (
        "oneOf objects",
        {
            "oneOf": [
                {"type": "object", "properties": {"kind": {"const": "a"}}, "required": ["kind"]},
                {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]},
            ]
        },
    ),
    (
        "allOf merge",
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"properties": {"b": {"type": "integer", "minimum": 2}}, "required": ["b"]},
            ]
        },
    ),
    (
        "allOf same property",
        {
            "type": "object",
            "required": ["n"],
            "allOf": [
                {"properties": {"n": {"type": "integer", "minimum": 3}}},
                {"properties": {"n": {"maximum": 9, "multipleOf": 4}}},
            ],
        },
    ),
    (
        "$ref to $defs",
        {
            "$defs": {
                "Person": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "email": {"type": "string", "format": "email"},
                    },
                    "required": ["name"],
                }
            },
            "type": "object",
            "properties": {
                "people": {"type": "array", "items": {"$ref": "#/$defs/Person"}, "minItems": 2}
            },
            "required": ["people"],
        },
    ),
    (
        "recursive $ref",
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {"value": {"type": "integer"}, "next": {"$ref": "#/$defs/node"}},
                    "required": ["value"],
                }
            },
            "$ref": "#/$defs/node",
        },
    ),
    (
        "tree",
        {
            "type": "object",
            "properties": {
                "label": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#"}},
            },
            "required": ["label", "children"],
        },
    ),
    (
        "$anchor",
        {
            "$defs": {"x": {"$anchor": "thing", "type": "string", "minLength": 2}},
            "$ref": "#thing",
        },
    ),
    (
        "if/then",
        {
            "type": "object",
            "properties": {"kind": {"enum": ["a", "b"]}},
            "required": ["kind"],
            "if": {"properties": {"kind": {"const": "a"}}},
            "then": {"required": ["x"], "properties": {"x": {"type": "integer"}}},
        },
    ),
    (
        "prefixItems",
        {
            "type": "array",
            "prefixItems": [{"type": "string"}, {"type": "integer"}],
            "minItems": 3,
            "items": {"type": "boolean"},
        },
    ),
    (
        "uniqueItems integers",
        {"type": "array", "items": {"type": "integer"}, "minItems": 3, "uniqueItems": True},
    ),
    (
        "uniqueItems strings",
        {"type": "array", "items": {"type": "string"}, "minItems": 4, "uniqueItems": True},
    ),
    (
        "uniqueItems booleans",
        {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "uniqueItems": True},
    ),
    (
        "uniqueItems enum",
        {"type": "array", "items": {"enum": ["x", "y", "z"]}, "minItems": 3, "uniqueItems": True},
    ),
    (
        "contains",
        {
            "type": "array",
            "contains": {"type": "integer"},
            "items": {"type": ["string", "integer"]},
        },
    ),
    ("maxItems", {"type": "array", "items": {"type": "string"}, "maxItems": 0}),
    (
        "minProperties",
        {"type": "object", "minProperties": 2, "additionalProperties": {"type": "integer"}},
    ),
    (
        "patternProperties",
        {
            "type": "object",
            "patternProperties": {"^x_": {"type": "integer"}},
            "minProperties": 1,
            "additionalProperties": False,
        },
    ),
    (
        "oneOf on required",
        {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
        },
    ),
    (
        "dependentRequired",
        {
            "type": "object",
            "properties": {"card": {"type": "string"}, "billing": {"type": "string"}},
            "required": ["card"],
            "dependentRequired": {"card": ["billing"]},
        },
    ),
    (
        "strict structured output",
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "summary": {"type": "string"},
                "keyPoints": {"type": "array", "items": {"type": "string"}},
                "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "tags": {"type": ["array", "null"], "items": {"type": "string"}},
            },
            "required": ["summary", "keyPoints", "sentiment", "confidence", "tags"],
        },
    ),
    (
        "no type, properties",
        {"properties": {"score": {"type": "number", "minimum": 1, "maximum": 10}}},
    ),
    ("no type, minLength", {"minLength": 4}),
    (
        "empty subschemas",
        {
            "type": "object",
            "properties": {"anything": {}, "truthy": True},
            "required": ["anything", "truthy"],
        },
    ),
    (
        "not",
        {"type": "string", "not": {"const": "forbidden"}},
    ),
]


@pytest.mark.parametrize(("name", "schema"), CASES, ids=[c[0] for c in CASES])
def test_minimal_instance_validates(name: str, schema: dict[str, Any]) -> None:
    value = minimal_instance(schema)
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [e.message for e in validator.iter_errors(value)]
    assert errors == [], f"{name}: {value!r}"
    json.dumps(value)  # plain JSON data


def test_minimal_instance_reads_like_text() -> None:
    assert minimal_instance(OUTLINE_SCHEMA) == {
        "title": "example title",
        "sections": ["example section 1", "example section 2", "example section 3"],
    }
    assert minimal_instance(
        {"type": "object", "properties": {"keyPoints": {"type": "string"}}}
    ) == {"keyPoints": "example key points"}
    people = minimal_instance(
        {
            "type": "array",
            "minItems": 2,
            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
        }
    )
    assert people == [{"name": "example name 1"}, {"name": "example name 2"}]


def test_minimal_instance_fills_optional_properties() -> None:
    # later templates may read optional fields; under --mock they should exist
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
    assert minimal_instance(schema) == {"a": "example a", "b": 0}


def test_minimal_instance_specific_values() -> None:
    assert minimal_instance({"type": "integer", "minimum": 5}) == 5
    assert minimal_instance({"type": "integer", "exclusiveMinimum": 5}) == 6
    assert minimal_instance({"type": "integer", "multipleOf": 7, "minimum": 10}) == 14
    assert minimal_instance({"type": "string", "pattern": "^(low|medium|high)$"}) == "low"
    assert minimal_instance({"type": "string", "format": "email"}) == "user@example.com"
    assert minimal_instance({"type": ["string", "null"]}) == "example text"
    assert minimal_instance({"enum": ["red", "green"]}) == "red"
    assert minimal_instance({"type": "boolean"}) is False
    assert minimal_instance({}) == {}
    assert minimal_instance(True) == {}


def test_draft7_schema_with_definitions() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"x": {"type": "string", "minLength": 3}},
        "type": "object",
        "properties": {
            "a": {"$ref": "#/definitions/x"},
            "t": {"type": "array", "items": [{"type": "integer"}]},
        },
        "required": ["a"],
    }
    value = minimal_instance(schema)
    Draft7Validator(schema).validate(value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 5, "maximum": 1},
        {"allOf": [{"type": "string"}, {"type": "integer"}]},
        {"type": "array", "minItems": 2, "items": False},
        {"$ref": "#/$defs/missing"},
        {"$ref": "https://example.com/schema.json"},
    ],
)
def test_unsatisfiable_schemas_raise(schema: dict[str, Any]) -> None:
    with pytest.raises(SchemaExampleError):
        minimal_instance(schema)


def test_false_schema_raises() -> None:
    with pytest.raises(SchemaExampleError):
        minimal_instance(False)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"^\d{3}$", "000"),
        ("^[A-Z][a-z]+$", None),
        (r"^\w+@\w+\.com$", None),
        ("^(?P<x>ab)+$", "ab"),
        ("colou?r", None),
        (r"^#[0-9a-fA-F]{6}$", None),
    ],
)
def test_example_for_pattern(pattern: str, expected: str | None) -> None:
    import re

    found = example_for_pattern(pattern)
    assert found is not None and re.search(pattern, found)
    if expected is not None:
        assert found == expected


def test_example_for_pattern_gives_up_politely() -> None:
    assert example_for_pattern("(") is None  # not a regex
    assert example_for_pattern("^a$", min_len=3) is None
