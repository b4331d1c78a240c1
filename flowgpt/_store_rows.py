"""Between results and rows: the values the run store writes, redacted, and read back.

Every string written goes through :func:`flowgpt.errors.redact` (:func:`_json`,
:func:`_text`); dollars are the exact ``Decimal`` as text, None when unpriced
(:func:`_money`, :func:`_decimal`); the items of a for_each step are whole StepResults as
JSON (:func:`_step_doc`, :func:`_step_from_doc`); :func:`_summary` turns a run's rows into
the :class:`RunSummary` that ``flowgpt runs list`` shows.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, cast

from flowgpt.errors import redact
from flowgpt.results import AttemptResult, StepResult, StepStatus, sum_costs
from flowgpt.usage import Usage

_USAGE_COLUMNS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


# -- encoding helpers -------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _scrub(value: Any) -> Any:
    """``value`` as plain JSON data with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {redact(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return redact(str(value))  # Decimal, datetime, ...: their text


def _json(value: Any) -> str:
    return json.dumps(_scrub(value), ensure_ascii=False)


def _text(value: str | None) -> str | None:
    return None if value is None else redact(value)


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _load(value: str | None, default: Any = None) -> Any:
    return default if value is None else json.loads(value)


def _usage_of(row: sqlite3.Row | dict[str, Any]) -> Usage:
    return Usage(*(int(row[c] or 0) for c in _USAGE_COLUMNS))


def _attempt_doc(attempt: AttemptResult) -> dict[str, Any]:
    return {
        "text": attempt.text,
        "usage": attempt.usage.to_dict(),
        "cost_usd": _money(attempt.cost_usd),
        "latency_s": attempt.latency_s,
        "finish_reason": attempt.finish_reason,
        "retries": attempt.retries,
        "failures": list(attempt.failures),
    }


def _attempt_from_doc(doc: dict[str, Any]) -> AttemptResult:
    return AttemptResult(
        text=doc["text"],
        usage=Usage.from_dict(doc.get("usage") or {}),
        cost_usd=_decimal(doc.get("cost_usd")),
        latency_s=float(doc.get("latency_s") or 0.0),
        finish_reason=doc.get("finish_reason"),
        retries=int(doc.get("retries") or 0),
        failures=list(doc.get("failures") or []),
    )


def _step_doc(step: StepResult) -> dict[str, Any]:
    """A whole StepResult as JSON data (used for the items of a for_each step)."""
    return {
        "id": step.id,
        "model": step.model,
        "status": step.status,
        "output": step.output,
        "text": step.text,
        "messages": step.messages,
        "attempts": [_attempt_doc(a) for a in step.attempts],
        "items": [_step_doc(i) for i in step.items],
        "latency_s": step.latency_s,
        "error": step.error,
        "exact_tokens": step.exact_tokens,
        "saved_usd": _money(step.saved_usd),
    }


def _step_from_doc(doc: dict[str, Any]) -> StepResult:
    return StepResult(
        id=doc["id"],
        model=doc.get("model"),
        status=cast(StepStatus, doc.get("status", "pending")),
        output=doc.get("output"),
        text=doc.get("text"),
        messages=list(doc.get("messages") or []),
        attempts=[_attempt_from_doc(a) for a in doc.get("attempts") or []],
        items=[_step_from_doc(i) for i in doc.get("items") or []],
        latency_s=float(doc.get("latency_s") or 0.0),
        error=doc.get("error"),
        exact_tokens=bool(doc.get("exact_tokens", True)),
        saved_usd=_decimal(doc.get("saved_usd")),
    )


# -- run summaries ---------------------------------------------------------------------

# A step in one of these states needs no more work (counted as "done" by `runs list`).
_DONE = ("ok", "reused", "cached", "skipped")


@dataclass(frozen=True)
class RunSummary:
    """One line of ``flowgpt runs list``."""

    run_id: str
    workflow: str
    status: str
    started_at: str
    finished_at: str | None
    cost_usd: Decimal | None  # None: unpriced
    total_tokens: int
    steps_done: int  # ok, reused, cached or skipped
    steps_total: int
    workflow_path: str | None = None
    workflow_sha256: str | None = None
    resumed_from: str | None = None


def _summary(run: sqlite3.Row, steps: list[sqlite3.Row]) -> RunSummary:
    if run["finished_at"] is not None:
        cost = _decimal(run["cost_usd"])
        tokens = int(run["prompt_tokens"]) + int(run["completion_tokens"])
    else:  # still running, or the process died: add up what its steps recorded
        recorded = [s for s in steps if s["finished_at"] is not None]
        cost = sum_costs([_decimal(s["cost_usd"]) for s in recorded])
        tokens = sum(int(s["prompt_tokens"]) + int(s["completion_tokens"]) for s in steps)
    return RunSummary(
        run_id=run["run_id"],
        workflow=run["workflow"],
        status=run["status"],
        started_at=run["started_at"],
        finished_at=run["finished_at"],
        cost_usd=cost,
        total_tokens=tokens,
        steps_done=sum(1 for s in steps if s["status"] in _DONE),
        steps_total=len(steps),
        workflow_path=run["workflow_path"],
        workflow_sha256=run["workflow_sha256"],
        resumed_from=run["resumed_from"],
    )
