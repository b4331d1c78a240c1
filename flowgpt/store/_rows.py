"""Between results and rows: the values the run store writes, redacted, and read back.

Every string written goes through :func:`flowgpt.errors.redact` (:func:`_json`,
:func:`_text`); dollars are the exact ``Decimal`` as text, None when unpriced
(:func:`_money`, :func:`_decimal`); the items of a for_each step are whole StepResults as
JSON (:func:`_step_doc`, :func:`_step_from_doc`); :func:`_summary` turns a run's rows into
the :class:`RunSummary` that ``flowgpt runs list`` shows. :func:`_owner` is who runs a run
(recorded when it starts) and :func:`_run_status` the status a run is read back with: a
"running" run whose process is gone reads as "interrupted".
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from flowgpt.errors import redact
from flowgpt.money import sum_costs
from flowgpt.results import AttemptResult, StepResult, StepStatus
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


# -- who runs a run ---------------------------------------------------------------------


@functools.cache
def _boot_id() -> str | None:
    """This boot's id (Linux), read once: it cannot change while the process lives."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, "boot id:start time") of process ``pid`` from Linux's /proc, or None where
    /proc does not tell (not Linux, no such process).

    The start time (clock ticks after boot) with the boot id names one process: a pid
    reused later, or after a reboot, gives another value.
    """
    boot = _boot_id()
    if boot is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so count the
    # fields after the last ")": state is field 3, starttime field 22.
    fields = stat[stat.rfind(")") + 1 :].split()
    if len(fields) < 20:
        return None
    return fields[0], f"{boot}:{fields[19]}"


def _host() -> str:
    """This machine's name as the store holds it (redacted, like every string written)."""
    return redact(socket.gethostname())


def _owner() -> tuple[int, str, str | None]:
    """(pid, host, process start) of this process, recorded in the run it starts."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return pid, _host(), None if stat is None else stat[1]


def _process_gone(pid: int | None, host: str | None, started: str | None) -> bool:
    """True when the process that runs a run is known to be gone.

    The rule: the run was started on this host (same ``socket.gethostname()``) and its pid
    is not alive (``os.kill(pid, 0)`` raises ProcessLookupError; PermissionError means
    alive, someone else's), or is a zombie, or (on Linux, where the start is recorded) is
    now another process: its boot id and start time differ, so the pid was reused. No pid
    or host (a run recorded by schema 1), another host, or Windows (where ``os.kill``
    would terminate the process): unknown, so not gone. Limits: without /proc (macOS) a
    reused pid reads as alive, and two machines or containers with the same host name
    sharing one store file can misjudge each other's runs.
    """
    if pid is None or host is None or pid <= 0 or sys.platform == "win32":
        return False
    if host != _host():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, and not ours
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return False
    state, now = stat
    return state in ("Z", "X") or (started is not None and now != started)


_RunStatus = Literal["ok", "failed", "interrupted", "running"]


def _run_status(run: sqlite3.Row) -> _RunStatus:
    """The run's status as read: "interrupted" for a "running" run whose process is gone."""
    status: _RunStatus = run["status"]
    if status == "running" and _process_gone(run["pid"], run["host"], run["proc_start"]):
        return "interrupted"
    return status


# -- run summaries ---------------------------------------------------------------------

# A step in one of these states needs no more work (counted as "done" by `runs list`).
_DONE = ("ok", "reused", "cached", "skipped")


def other_host(provider: str | None, endpoint: str | None) -> str | None:
    """Where "openai" requests went when that is not OpenAI's own API (a relay, a local
    server): the endpoint's host; None for any other provider, or for OpenAI's API."""
    # Imported here: the prices module loads the workflow models (pydantic), which the
    # store does not otherwise need.
    from flowgpt.accounting.prices import is_openai_url

    if provider != "openai" or is_openai_url(endpoint):
        return None
    return urlsplit(str(endpoint)).netloc or str(endpoint)


def via_text(provider: str | None, endpoint: str | None) -> str:
    """Who answered: "mock", "local", "openai", or "openai (HOST)" for another endpoint;
    "-" when the store did not keep it (runs recorded before it did)."""
    if provider is None:
        return "-"
    host = other_host(provider, endpoint)
    return provider if host is None else f"{provider} ({host})"


@dataclass(frozen=True)
class RunSummary:
    """One line of ``flowgpt runs list``.

    ``status`` is "interrupted" for a run recorded as "running" whose process is gone
    (killed, crashed, the machine went down); its ``finished_at`` stays None.
    """

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
    provider: str | None = None  # "openai", "mock", "local", ... (None: before schema 3)
    endpoint: str | None = None  # where its requests went
    batch: str | None = None  # the batch it is a row of (its output file)
    batch_row: int | None = None

    @property
    def host(self) -> str | None:
        """The host of its endpoint when that is not OpenAI's own API (see :func:`other_host`)."""
        return other_host(self.provider, self.endpoint)

    @property
    def via(self) -> str:
        """Who answered it, as ``flowgpt runs`` says it (see :func:`via_text`)."""
        return via_text(self.provider, self.endpoint)


def _totals(run: sqlite3.Row, steps: list[sqlite3.Row]) -> tuple[Decimal | None, int]:
    """A run's cost and tokens: from its row once it finished, else from its steps."""
    if run["finished_at"] is not None:
        return _decimal(run["cost_usd"]), int(run["prompt_tokens"]) + int(run["completion_tokens"])
    # still running, or the process died: add up what its steps recorded
    recorded = [s for s in steps if s["finished_at"] is not None]
    cost = sum_costs([_decimal(s["cost_usd"]) for s in recorded])
    return cost, sum(int(s["prompt_tokens"]) + int(s["completion_tokens"]) for s in steps)


def _summary(run: sqlite3.Row, steps: list[sqlite3.Row]) -> RunSummary:
    cost, tokens = _totals(run, steps)
    return RunSummary(
        run_id=run["run_id"],
        workflow=run["workflow"],
        status=_run_status(run),
        started_at=run["started_at"],
        finished_at=run["finished_at"],
        cost_usd=cost,
        total_tokens=tokens,
        steps_done=sum(1 for s in steps if s["status"] in _DONE),
        steps_total=len(steps),
        workflow_path=run["workflow_path"],
        workflow_sha256=run["workflow_sha256"],
        resumed_from=run["resumed_from"],
        provider=run["provider"],
        endpoint=run["endpoint"],
        batch=run["batch"],
        batch_row=run["batch_row"],
    )


# A batch's status: the first of these that one of its rows has (by its latest run).
_BATCH_STATUS_ORDER = ("running", "interrupted", "failed", "ok")


@dataclass(frozen=True)
class BatchSummary:
    """One line of ``flowgpt runs list`` for a batch: the runs of its rows taken together.

    ``rows`` counts the rows recorded and ``rows_by_status`` counts them by the status of
    their latest run (a row that failed and was run again counts once, as it ended);
    ``runs`` counts every run recorded, and ``cost_usd`` and ``total_tokens`` add up all
    they spent, a failed try of a row included (None: unpriced). ``status`` is "running"
    while a row runs, else "interrupted" or "failed" when a row's latest run is, else
    "ok". ``workflow`` and ``endpoint`` are the latest run's; ``provider`` names every
    provider its runs used.
    """

    batch: str  # its output file, as recorded
    workflow: str
    status: str
    started_at: str  # its first run's start
    finished_at: str | None  # its last run's end, once no row runs
    cost_usd: Decimal | None
    total_tokens: int
    rows: int
    rows_by_status: dict[str, int]
    runs: int
    provider: str | None = None
    endpoint: str | None = None

    @property
    def rows_ok(self) -> int:
        return self.rows_by_status.get("ok", 0)

    @property
    def host(self) -> str | None:
        """The host of its latest run's endpoint when that is not OpenAI's own API."""
        return other_host(self.provider, self.endpoint)

    @property
    def via(self) -> str:
        """Who answered its runs, as ``flowgpt runs`` says it (see :func:`via_text`)."""
        return via_text(self.provider, self.endpoint)


def _batch_summary(
    totals: sqlite3.Row,
    latest: list[sqlite3.Row],
    unfinished: list[tuple[Decimal | None, int]],
) -> BatchSummary:
    """A batch from what SQLite added up of its runs: ``totals`` (batch, runs, first_start,
    last_end, tokens and costs of the finished runs, unpriced_runs, providers, workflow
    and endpoint of the latest run), ``latest`` (the latest run of each row, counted by
    status, pid, host and proc_start, as ``n``) and ``unfinished`` (cost and tokens of
    each run that has not finished, from its steps)."""
    by_status: dict[str, int] = {}
    for group in latest:
        read = _run_status(group)
        by_status[read] = by_status.get(read, 0) + int(group["n"])
    status = next((s for s in _BATCH_STATUS_ORDER if by_status.get(s)), "ok")
    costs: list[Decimal | None] = [c for c, _ in unfinished]
    if totals["unpriced_runs"]:
        costs.append(None)
    if totals["costs"]:
        costs.extend(Decimal(c) for c in totals["costs"].split(","))
    providers = sorted(set((totals["providers"] or "").split(",")) - {""})
    return BatchSummary(
        batch=totals["batch"],
        workflow=totals["workflow"],
        status=status,
        started_at=totals["first_start"],
        finished_at=None if status == "running" else totals["last_end"],
        cost_usd=sum_costs(costs),
        total_tokens=int(totals["tokens"] or 0) + sum(t for _, t in unfinished),
        rows=sum(by_status.values()),
        rows_by_status=dict(sorted(by_status.items())),
        runs=int(totals["runs"]),
        provider=", ".join(providers) or None,
        endpoint=totals["endpoint"],
    )
