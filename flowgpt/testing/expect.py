"""Checking one expectation against a finished run: what it looks at, whether it holds,
and the actual value (with a diff for text) when it does not."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from flowgpt import templating
from flowgpt.errors import FlowgptError
from flowgpt.money import format_usd
from flowgpt.results import RunResult
from flowgpt.spec.output import schema_failures
from flowgpt.testing.judge import Judge
from flowgpt.testing.models import ExpectSpec, LimitSpec
from flowgpt.testing.results import ExpectationResult

__all__ = ["CaseRun", "check", "show"]

_SHOW_CHARS = 600
_SHOW_LINES = 15


@dataclass(frozen=True)
class CaseRun:
    """What a case's expectations look at: its run and how long it took."""

    run: RunResult
    latency_s: float
    step_latency: Mapping[str, float] = field(default_factory=dict)


def show(value: Any) -> str:
    """A value as people read it: one-line text quoted, longer text as is, others as
    JSON; cut when long."""
    if isinstance(value, str) and "\n" not in value:
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    lines = text.splitlines()
    if len(lines) > _SHOW_LINES:
        text = "\n".join([*lines[:_SHOW_LINES], f"[... {len(lines) - _SHOW_LINES} more lines]"])
    if len(text) > _SHOW_CHARS:
        text = text[:_SHOW_CHARS] + " [... cut]"
    return text


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _diff(expected: Any, actual: Any) -> str | None:
    """A unified diff when both sides are multi-line text or structured values."""
    if isinstance(expected, str) and isinstance(actual, str):
        if "\n" not in expected and "\n" not in actual:
            return None
        a, b = expected.splitlines(), actual.splitlines()
    elif isinstance(expected, (dict, list)) and isinstance(actual, (dict, list)):
        a = json.dumps(expected, indent=2, ensure_ascii=False, sort_keys=True).splitlines()
        b = json.dumps(actual, indent=2, ensure_ascii=False, sort_keys=True).splitlines()
    else:
        return None
    lines = list(difflib.unified_diff(a, b, "expected", "actual", n=2, lineterm=""))
    return "\n".join(lines[:60])


def _equal(expected: Any, actual: Any) -> bool:
    # true is not 1 here, although Python says so.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return bool(expected == actual)


def subject(expect: ExpectSpec) -> str:
    if expect.output is not None:
        return f"output `{expect.output}`"
    if expect.step is not None:
        return f"step `{expect.step}`"
    return "the case"


def _number(value: Decimal) -> str:
    return f"{value.normalize():f}"


def _limit_text(limit: LimitSpec, unit: str) -> str:
    parts = []
    if limit.min is not None:
        parts.append(f"at least {unit}{_number(limit.min)}")
    if limit.max is not None:
        parts.append(f"at most {unit}{_number(limit.max)}")
    return " and ".join(parts)


def _context(run: RunResult, value: Any) -> dict[str, Any]:
    return {
        "value": value,
        "inputs": run.inputs,
        "outputs": run.outputs,
        "steps": {sid: step.template_view() for sid, step in run.steps.items()},
        "len": len,  # so `len(value.split()) >= 50` reads as it would in Python
    }


async def check(
    expect: ExpectSpec, case: CaseRun, *, judge: Judge, judge_model: str | None, where: str | None
) -> ExpectationResult:
    """Check one expectation against a finished run."""
    kind = expect.kind
    result = ExpectationResult(
        kind=kind, subject=subject(expect), description="", passed=False, where=where
    )
    run = case.run
    if kind in ("cost_usd", "tokens", "latency_s"):
        return _check_limit(expect, case, result)
    value = run.outputs.get(expect.output) if expect.output is not None else None
    if expect.step is not None:
        value = run.steps[expect.step].output
    expected = expect.value
    if kind == "equals":
        result.description = f"equal {show(expected)}"
        result.passed = _equal(expected, value)
        if not result.passed:
            result.detail = _diff(expected, value)
    elif kind in ("contains", "not_contains"):
        text = _as_text(value)
        found = text.find(expected)
        result.passed = (found >= 0) == (kind == "contains")
        negation = "not " if kind == "not_contains" else ""
        result.description = f"{negation}contain {show(expected)}"
        if kind == "not_contains" and found >= 0:
            start = max(found - 40, 0)
            excerpt = text[start : found + len(expected) + 40]
            result.detail = f"found at character {found}: {show(excerpt)}"
    elif kind == "regex":
        result.description = f"match the regular expression {expected!r}"
        result.passed = re.search(expected, _as_text(value)) is not None
    elif kind == "schema":
        result.description = "match the schema"
        problems = schema_failures(value, expected)
        result.passed = not problems
        result.detail = "\n".join(f"- {p}" for p in problems) or None
    elif kind == "expr":
        result.description = f"make `{expected}` true"
        try:
            outcome = templating.evaluate(expected, _context(run, value), where="expr")
        except FlowgptError as exc:
            result.detail = f"the expression failed: {exc.message}"
        else:
            result.passed = bool(outcome)
            if not result.passed:
                result.detail = f"it gave {show(outcome)}"
    elif kind == "judge":
        model = expect.model or judge_model
        assert model is not None  # the suite's checks make sure of it
        result.description = f"get yes from {model} to {show(expected)}"
        verdict = await judge.ask(expected, value, model)
        result.passed = verdict.passed
        result.cost_usd = verdict.cost_usd
        result.detail = f"the judge: {verdict.reason}" if verdict.reason else None
    if not result.passed:
        result.actual = show(value)
    return result


def _check_limit(expect: ExpectSpec, case: CaseRun, result: ExpectationResult) -> ExpectationResult:
    kind = expect.kind
    limit: LimitSpec = expect.value
    run = case.run
    step = run.steps[expect.step] if expect.step is not None else None
    actual: Decimal | None
    if kind == "cost_usd":
        result.description = f"cost {_limit_text(limit, '$')}"
        cost = step.cost_usd if step is not None else run.cost_usd
        actual, shown = cost, format_usd(cost)
    elif kind == "tokens":
        result.description = f"use {_limit_text(limit, '')} tokens"
        usage = step.usage if step is not None else run.usage
        actual, shown = Decimal(usage.total_tokens), f"{usage.total_tokens:,} tokens"
    else:
        result.description = f"take {_limit_text(limit, '')} seconds"
        # A step that was skipped is not in step_latency: its result says how long it took.
        seconds = case.latency_s if step is None else case.step_latency.get(step.id, step.latency_s)
        actual, shown = Decimal(str(round(seconds, 3))), f"{seconds:.2f}s"
    if actual is None:
        result.detail = (
            "the cost is unknown: a model has no known price; give it one in the "
            "workflow's `pricing:`, or drop this limit"
        )
    else:
        result.passed = (limit.min is None or actual >= limit.min) and (
            limit.max is None or actual <= limit.max
        )
    if not result.passed:
        result.actual = shown
    return result
