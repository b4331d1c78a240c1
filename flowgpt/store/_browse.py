"""Runs picked by what they are: a :class:`RunFilter` (workflow, model, status, provider,
dates, batch) as SQL over the ``runs`` table, what the runs it picks spent — in all and by
day and model, the mock provider's part apart — and the values there are to filter by.

:class:`flowgpt.store.RunStore` reads them (``list_entries(where=...)``,
``list_runs(where=...)``, ``spending``, ``run_facets``); ``flowgpt ui``'s runs page shows
them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from flowgpt.store._rows import _run_status
from flowgpt.store._stats import StatsRow, stats_row

__all__ = ["DailySpend", "RunFacets", "RunFilter", "Spending"]

RUN_STATUSES = ("ok", "failed", "interrupted", "running")


@dataclass(frozen=True)
class RunFilter:
    """Which runs to pick; a field left None picks any.

    ``model``: runs with a step that was run with it (not skipped, not pending).
    ``status`` as read back: "interrupted" includes a "running" run whose process is
    gone. ``provider``: "openai", "mock", "local" (relays and other OpenAI-compatible
    endpoints are "openai"). ``since`` and ``until``: the first and last day (local
    time) a run started on. ``batch``: the runs of one batch (as
    :meth:`RunStore.resolve_batch` names it).
    """

    workflow: str | None = None
    model: str | None = None
    status: str | None = None
    provider: str | None = None
    since: date | None = None
    until: date | None = None
    batch: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in RUN_STATUSES:
            raise ValueError(
                f"status must be one of {', '.join(RUN_STATUSES)}, not {self.status!r}"
            )

    @property
    def empty(self) -> bool:
        return self == RunFilter()


@dataclass(frozen=True)
class DailySpend:
    """What the steps of one model spent on one day (local time); ``mock``: spent by the
    mock provider, counted with real prices but never billed."""

    day: str  # YYYY-MM-DD
    model: str
    mock: bool
    spent: StatsRow


@dataclass(frozen=True)
class Spending:
    """What the runs a filter picks spent: ``runs`` counts them, ``total`` adds up their
    finished steps (the mock provider's included) and ``mock`` is that part of it;
    ``daily`` by day and model, oldest first. Dollars as in :class:`StatsRow`: never a
    smaller, wrong amount when a price is unknown."""

    runs: int
    total: StatsRow
    mock: StatsRow
    daily: list[DailySpend]


@dataclass(frozen=True)
class RunFacets:
    """The values the runs in the store have, to filter by (sorted)."""

    workflows: list[str]
    models: list[str]
    providers: list[str]
    statuses: list[str]
    first_day: date | None  # the first and last day (local time) a run started on
    last_day: date | None


def utc_midnight(day: date) -> str:
    """Local midnight of ``day`` as the UTC text run times are stored in."""
    midnight = datetime.combine(day, datetime.min.time()).astimezone()
    return midnight.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _gone(conn: sqlite3.Connection) -> list[str]:
    """The runs recorded as "running" whose process is gone: they read as "interrupted"."""
    rows = conn.execute(
        "SELECT run_id, status, pid, host, proc_start FROM runs WHERE status = 'running'"
    ).fetchall()
    return [r["run_id"] for r in rows if _run_status(r) == "interrupted"]


def filter_sql(
    conn: sqlite3.Connection, where: RunFilter | None, batch: str | None = None
) -> tuple[str, list[Any]]:
    """``where`` as a condition on ``runs r`` and its arguments ("1" picks every run);
    ``batch`` is the filter's batch already resolved to its recorded name."""
    where = where or RunFilter()
    conditions: list[str] = []
    args: list[Any] = []
    for column, value in (("workflow", where.workflow), ("provider", where.provider)):
        if value is not None:
            conditions.append(f"r.{column} = ?")
            args.append(value)
    if batch is not None:
        conditions.append("r.batch = ?")
        args.append(batch)
    if where.model is not None:
        conditions.append(
            "EXISTS (SELECT 1 FROM steps m WHERE m.run_id = r.run_id AND m.model = ?"
            " AND m.status NOT IN ('pending', 'skipped'))"
        )
        args.append(where.model)
    if where.status in ("interrupted", "running"):
        gone = _gone(conn)
        marks = ", ".join("?" for _ in gone) or "NULL"
        if where.status == "interrupted":
            conditions.append(f"(r.status = 'interrupted' OR r.run_id IN ({marks}))")
        else:
            conditions.append(f"(r.status = 'running' AND r.run_id NOT IN ({marks}))")
        args.extend(gone)
    elif where.status is not None:
        conditions.append("r.status = ?")
        args.append(where.status)
    if where.since is not None:
        conditions.append("r.started_at >= ?")
        args.append(utc_midnight(where.since))
    if where.until is not None:
        conditions.append("r.started_at < ?")
        args.append(utc_midnight(where.until + timedelta(days=1)))
    return " AND ".join(conditions) or "1", args


# Whole numbers are added up by SQLite; dollars (exact decimal text) by stats_row.
SUMS = (
    "COUNT(DISTINCT s.run_id), SUM(s.prompt_tokens), SUM(s.completion_tokens),"
    " SUM(CASE WHEN s.cost_usd IS NULL THEN s.prompt_tokens + s.completion_tokens"
    " ELSE 0 END), group_concat(s.cost_usd)"
)


def spending(conn: sqlite3.Connection, condition: str, args: list[Any]) -> Spending:
    """What the runs matching ``condition`` (on ``runs r``) spent: their finished steps."""
    scope = (
        "FROM steps s JOIN runs r ON r.run_id = s.run_id"
        f" WHERE s.finished_at IS NOT NULL AND {condition}"
    )
    mock = "(r.provider IS NOT NULL AND r.provider = 'mock')"
    runs = conn.execute(f"SELECT COUNT(*) FROM runs r WHERE {condition}", args).fetchone()[0]
    total = stats_row("total", *conn.execute(f"SELECT {SUMS} {scope}", args).fetchone())
    mocked = stats_row("mock", *conn.execute(f"SELECT {SUMS} {scope} AND {mock}", args).fetchone())
    daily = [
        DailySpend(day, model, bool(is_mock), stats_row(model, *sums))
        for day, model, is_mock, *sums in conn.execute(
            "SELECT date(s.finished_at, 'localtime') AS d, COALESCE(s.model, '-') AS m,"
            f" {mock} AS k, {SUMS} {scope} GROUP BY d, m, k ORDER BY d, m, k",
            args,
        )
    ]
    return Spending(runs=int(runs), total=total, mock=mocked, daily=daily)


def facets(conn: sqlite3.Connection) -> RunFacets:
    def values(sql: str) -> list[str]:
        return sorted(str(row[0]) for row in conn.execute(sql) if row[0] is not None)

    statuses = set(values("SELECT DISTINCT status FROM runs"))
    if "running" in statuses:
        gone = len(_gone(conn))
        if gone:
            statuses.add("interrupted")
        if gone == conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'running'").fetchone()[0]:
            statuses.discard("running")  # every one of them reads as interrupted
    first, last = conn.execute(
        "SELECT date(MIN(started_at), 'localtime'), date(MAX(started_at), 'localtime') FROM runs"
    ).fetchone()
    return RunFacets(
        workflows=values("SELECT DISTINCT workflow FROM runs"),
        models=values(
            "SELECT DISTINCT model FROM steps WHERE status NOT IN ('pending', 'skipped')"
        ),
        providers=values("SELECT DISTINCT provider FROM runs"),
        statuses=[s for s in RUN_STATUSES if s in statuses],
        first_day=None if first is None else date.fromisoformat(first),
        last_day=None if last is None else date.fromisoformat(last),
    )
