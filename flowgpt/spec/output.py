"""A step's output contract (``output:``): the ``response_format`` it asks for, whether its
schema is a valid JSON Schema, judging a reply against it (parse, schema, checks), and the
message that asks the model to repair a reply that failed. Nothing here calls a model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from flowgpt.spec.models import CheckSpec, OutputSpec

__all__ = [
    "FEEDBACK_MAX_CHARS",
    "FEEDBACK_MAX_TOKENS",
    "Verdict",
    "check_schema",
    "parse_json_reply",
    "repair_message",
    "response_format_for",
    "schema_failures",
    "validate_reply",
]

# The repair message is capped so a retry's prompt stays bounded (estimates rely on it):
# in characters here, and in tokens by the engine.
FEEDBACK_MAX_CHARS = 1200
FEEDBACK_MAX_TOKENS = 400

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```", re.S)


@dataclass
class Verdict:
    """The result of validating one reply."""

    output: Any
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def parse_json_reply(text: str) -> Any:
    """Parse a JSON reply; one fenced code block around (or inside) it is tolerated.

    Raises ValueError with a message fit to send back to the model."""
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as first:
        blocks = _FENCE.findall(stripped)
        if len(blocks) == 1:
            try:
                return json.loads(blocks[0])
            except json.JSONDecodeError as exc:
                raise ValueError(f"the code block is not valid JSON: {_json_msg(exc)}") from None
        raise ValueError(f"the reply is not valid JSON: {_json_msg(first)}") from None


def _json_msg(exc: json.JSONDecodeError) -> str:
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"


SchemaProblems = list[tuple[tuple[str | int, ...], str]]


def check_schema(schema: dict[str, Any]) -> SchemaProblems:
    """Problems that make ``schema`` an invalid Draft 2020-12 JSON Schema, by path."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(Draft202012Validator.META_SCHEMA)
    return [(tuple(error.path), error.message) for error in validator.iter_errors(schema)]


def schema_failures(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Why ``instance`` does not match ``schema``, one line each (empty when it does)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    failures = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.path)):
        where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.path)
        failures.append(f"at `${where}`: {error.message}" if where else error.message)
    return failures


def _check(check: CheckSpec, text: str) -> str | None:
    kind, value = check.kind, check.value
    words = len(text.split())
    if kind == "min_words" and words < value:
        return f"it has {words} words; it needs at least {value}"
    if kind == "max_words" and words > value:
        return f"it has {words} words; it must have at most {value}"
    if kind == "max_chars" and len(text) > value:
        return f"it has {len(text)} characters; it must have at most {value}"
    if kind == "contains" and value not in text:
        return f"it must contain {value!r}"
    if kind == "not_contains" and value in text:
        return f"it must not contain {value!r}"
    if kind == "regex" and re.search(value, text) is None:
        return f"it must match the regular expression {value!r}"
    if kind == "one_of" and text.strip() not in value:
        return f"it must be exactly one of: {', '.join(repr(v) for v in value)}"
    return None


def validate_reply(text: str, spec: OutputSpec | None, finish_reason: str | None = None) -> Verdict:
    """Parse and check a reply against the step's ``output:`` contract."""
    failures: list[str] = []
    output: Any = text
    if spec is not None and spec.is_json:
        if finish_reason == "length":
            failures.append("the reply was cut off at max_tokens, so the JSON is incomplete")
        else:
            try:
                output = parse_json_reply(text)
            except ValueError as exc:
                failures.append(str(exc))
            else:
                if spec.schema_ is not None:
                    failures += schema_failures(output, spec.schema_)
    if spec is not None:
        for check in spec.checks:
            problem = _check(check, text)
            if problem is not None:
                failures.append(problem)
    return Verdict(output=output, failures=failures)


def repair_message(failures: list[str], spec: OutputSpec | None) -> str:
    """The user message that re-asks the model after a failed validation."""
    lines = "\n".join(f"- {f}" for f in failures)
    if len(lines) > FEEDBACK_MAX_CHARS:
        lines = lines[: FEEDBACK_MAX_CHARS - 1] + "…"
    what = "the corrected JSON only" if spec is not None and spec.is_json else "a corrected reply"
    return f"Your reply did not pass validation:\n{lines}\nReply again with {what}."


def _strict_ok(schema: Any) -> bool:
    """Whether OpenAI's strict structured outputs accept the schema unchanged: every object
    closes its properties and requires all of them."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties", {})
            if schema.get("additionalProperties") is not False:
                return False
            if set(schema.get("required", [])) != set(props):
                return False
        return all(_strict_ok(v) for v in schema.values())
    if isinstance(schema, list):
        return all(_strict_ok(v) for v in schema)
    return True


def response_format_for(step_id: str, spec: OutputSpec | None) -> dict[str, Any] | None:
    """The ``response_format`` to send for a step, or None for text steps."""
    if spec is None or not spec.is_json:
        return None
    if spec.schema_ is None:
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": step_id,
            "schema": spec.schema_,
            "strict": _strict_ok(spec.schema_),
        },
    }
