"""The SQLite run store and response cache: RunStore, its runs, steps and cached replies.

Together with :mod:`flowgpt.store._db` (the file: where it lives, its permissions, schema,
connection and transactions) and :mod:`flowgpt.store._rows` (the values written, redacted,
and read back) it is the only code that touches the database. :func:`request_fingerprint`,
the cache key, lives in :mod:`flowgpt.store.fingerprint` and is re-exported here.

Where it lives
    ``$FLOWGPT_STORE`` when set; otherwise ``$XDG_DATA_HOME/flowgpt/runs.sqlite3``, or
    ``~/.local/share/flowgpt/runs.sqlite3`` when ``XDG_DATA_HOME`` is not set
    (see :func:`default_store_path`). The folder is created on first use (mode 0700) and the
    file is created readable by its owner only (mode 0600): it holds prompts and replies.

What it holds
    One row per run (workflow name, path, text and its sha256, inputs, status, outputs,
    usage, cost, and who runs it: pid, host name and, on Linux, the process's start — a
    "running" run whose process on this host is gone reads back as "interrupted"), one
    row per step (status, model, output, reply text, messages, usage, cost, the price
    used, the request fingerprint, latency, error, timings) written the moment the step
    finishes, one row per attempt (reply, usage, cost, latency, finish reason, transport
    retries, validation failures), and the response cache (request fingerprint -> reply).

Reading it back
    :meth:`RunStore.load_run` rebuilds a run (``runs show``); :meth:`RunStore.list_entries`
    lists runs with each batch as one :class:`BatchSummary` whose rows SQLite adds up
    (``runs list``; :meth:`RunStore.list_runs` with ``batch=`` lists its rows), and
    :meth:`RunStore.stats` adds up what the steps spent by day, model and workflow
    (``runs stats``).

Durability and concurrency
    The database runs in WAL mode with ``synchronous=NORMAL``: every write is committed at
    once, so a process killed right after :meth:`RunStore.record_step` returned loses
    nothing (only a power cut can lose the last commits). Writes take the write lock up
    front (``BEGIN IMMEDIATE``) and wait up to 5 s for another process (``busy_timeout``),
    so several flowgpt processes can share one file. One connection serves one
    :class:`RunStore`; a lock makes it safe to call from several threads.

Money
    Dollars are stored as TEXT holding the exact ``Decimal``, never as floats. An unpriced
    cost is NULL, never 0.

Secrets
    flowgpt never hands a key to the store: requests carry no key and errors are redacted
    where they are raised. As defence in depth every string written here — workflow text,
    inputs, messages, replies, outputs, errors — goes through :func:`flowgpt.errors.redact`
    first, so something that looks like a key (``sk-...``, ``Bearer ...``) never reaches
    the file. :func:`request_fingerprint` hashes the request, which holds no key either.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Iterable, Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from flowgpt.errors import redact
from flowgpt.providers.base import ChatResponse
from flowgpt.results import AttemptResult, RunResult, StepResult
from flowgpt.store._browse import (
    SUMS,
    DailySpend,
    RunFacets,
    RunFilter,
    Spending,
    facets,
    filter_sql,
    spending,
    utc_midnight,
)
from flowgpt.store._db import SCHEMA_VERSION, StoreDatabase, StoreError, default_store_path
from flowgpt.store._rows import (
    BatchSummary,
    RunSummary,
    _batch_summary,
    _decimal,
    _json,
    _load,
    _money,
    _now,
    _owner,
    _run_status,
    _step_doc,
    _step_from_doc,
    _summary,
    _text,
    _totals,
    _usage_of,
)
from flowgpt.store._stats import RunStats, StatsRow, costliest, stats_row
from flowgpt.store.fingerprint import request_fingerprint
from flowgpt.usage import Usage

if TYPE_CHECKING:
    from flowgpt.accounting.prices import ModelPrice

__all__ = [
    "SCHEMA_VERSION",
    "BatchSummary",
    "DailySpend",
    "RunFacets",
    "RunFilter",
    "RunStats",
    "RunStore",
    "RunSummary",
    "Spending",
    "StatsRow",
    "StoreError",
    "default_store_path",
    "new_run_id",
    "request_fingerprint",
]


def new_run_id() -> str:
    """A new run id: sortable by time, with a random part that tells apart runs started
    in the same second (``20261204-181816-3fa2c1``)."""
    return f"{_stamp(int(time.time()))}-{random.getrandbits(24):06x}"


# Formatted once a second, not once a run: a batch starts thousands of runs a second.
@functools.lru_cache(maxsize=1)
def _stamp(second: int) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(second))


# A step in one of these states has a usable result: `--resume` may reuse it.
_REUSABLE = ("ok", "reused", "cached")
_RUN_STATUSES = ("ok", "failed", "interrupted", "running")
_SUMMARY_COLUMNS = (
    "run_id, workflow, status, started_at, finished_at, cost_usd, prompt_tokens,"
    " completion_tokens, workflow_sha256, resumed_from, workflow_path, pid, host, proc_start,"
    " provider, endpoint, batch, batch_row"
)


# -- the store --------------------------------------------------------------------------


class RunStore(StoreDatabase):
    """The run store and response cache in one SQLite file.

    ``RunStore(path)`` creates the folder, the file and the schema as needed. Use it as a
    context manager, or call :meth:`close`. Every method commits before it returns.
    """

    def __enter__(self) -> RunStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------

    def start_run(
        self,
        run_id: str,
        *,
        workflow_name: str,
        workflow_text: str | None,
        workflow_path: str | None,
        inputs: dict[str, Any],
        steps: Iterable[StepResult] = (),
        resumed_from: str | None = None,
        provider: str | None = None,
        endpoint: str | None = None,
        batch: str | None = None,
        batch_row: int | None = None,
    ) -> None:
        """Record a new run as "running", and who runs it: this process (its pid, host
        and, on Linux, start time), so that readers can tell when it died without finishing.

        ``steps``: the run's (pending) step results in workflow order — the engine's
        ``_Run.results.values()``. They fix the order of the steps and let ``runs list``
        count steps not run yet; steps recorded later but not listed here go after them.
        ``workflow_sha256`` is the hash of the text as given (before redaction).
        ``provider`` and ``endpoint``: who answered ("openai", "mock", "local", ...) and
        where its requests went (a base URL without credentials); ``batch`` and
        ``batch_row``: the batch (its output file) and row this run is.
        """
        sha = None
        if workflow_text is not None:
            sha = hashlib.sha256(workflow_text.encode("utf-8")).hexdigest()
        pid, host, proc_start = _owner()
        with self._guard("start the run"), self._tx() as conn:
            exists = conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if exists:
                raise StoreError(
                    f"run {run_id} is already in {self.path}",
                    hint="start every run (a resumed one too) with a new run id",
                )
            conn.execute(
                "INSERT INTO runs (run_id, workflow, workflow_path, workflow_text,"
                " workflow_sha256, inputs, resumed_from, status, started_at, pid, host,"
                " proc_start, provider, endpoint, batch, batch_row)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    redact(workflow_name),
                    _text(workflow_path),
                    _text(workflow_text),
                    sha,
                    _json(inputs),
                    resumed_from,
                    _now(),
                    pid,
                    host,
                    proc_start,
                    _text(provider),
                    _text(endpoint),
                    _text(batch),
                    batch_row,
                ),
            )
            for position, step in enumerate(steps):
                conn.execute(
                    "INSERT OR IGNORE INTO steps (run_id, step_id, position, status, model)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (run_id, redact(step.id), position, step.status, _text(step.model)),
                )

    def record_step(
        self,
        run_id: str,
        step: StepResult,
        *,
        fingerprint: str | None,
        price: ModelPrice | None,
    ) -> None:
        """Store one step's result (insert or replace); committed before this returns.

        Call it the moment a step finishes — ok, failed or skipped — and again whenever
        its result changes. ``price``: the ModelPrice its cost was computed with (None
        when unpriced). ``fingerprint``: :func:`request_fingerprint` of the step's first
        request, which ``--resume`` compares.
        """
        usage = step.usage
        values = {
            "status": step.status,
            "model": _text(step.model),
            "output": _json(step.output),
            "text": _text(step.text),
            "messages": _json(step.messages),
            "items": _json([_step_doc(i) for i in step.items]) if step.items else None,
            "latency_s": float(step.latency_s),
            "error": _text(step.error),
            "exact_tokens": int(step.exact_tokens),
            "cost_usd": _money(step.cost_usd),
            "saved_usd": _money(step.saved_usd),
            **usage.to_dict(),
            "price": None if price is None else json.dumps(price.to_dict()),
            "fingerprint": fingerprint,
            "finished_at": _now(),
        }
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values)
        step_id = redact(step.id)
        with self._guard(f"record step {step.id}"), self._tx() as conn:
            conn.execute(
                f"INSERT INTO steps (run_id, step_id, position, {columns})"
                " VALUES (?, ?, (SELECT COALESCE(MAX(position), -1) + 1 FROM steps"
                f" WHERE run_id = ?), {marks})"
                f" ON CONFLICT (run_id, step_id) DO UPDATE SET {updates}",
                (run_id, step_id, run_id, *values.values()),
            )
            conn.execute("DELETE FROM attempts WHERE run_id = ? AND step_id = ?", (run_id, step_id))
            conn.executemany(
                "INSERT INTO attempts (run_id, step_id, n, text, prompt_tokens,"
                " completion_tokens, cached_tokens, reasoning_tokens, cost_usd, latency_s,"
                " finish_reason, retries, failures)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        step_id,
                        n,
                        redact(a.text),
                        *a.usage.to_dict().values(),
                        _money(a.cost_usd),
                        float(a.latency_s),
                        _text(a.finish_reason),
                        a.retries,
                        _json(a.failures),
                    )
                    for n, a in enumerate(step.attempts)
                ],
            )

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        error: str | None,
        outputs: dict[str, Any],
        cost_usd: Decimal | None,
        usage: Usage,
        latency_s: float = 0.0,
    ) -> None:
        """Record how the run ended: "ok", "failed" or "interrupted".

        ``latency_s`` is the run's wall time (``RunResult.latency_s``), shown in the total
        row of the table.
        """
        if status not in _RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(_RUN_STATUSES)}, not {status!r}")
        with self._guard("finish the run"), self._tx() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, error = ?, outputs = ?, cost_usd = ?,"
                " prompt_tokens = ?, completion_tokens = ?, cached_tokens = ?,"
                " reasoning_tokens = ?, latency_s = ?, finished_at = ? WHERE run_id = ?",
                (
                    status,
                    _text(error),
                    _json(outputs),
                    _money(cost_usd),
                    *usage.to_dict().values(),
                    float(latency_s),
                    _now(),
                    run_id,
                ),
            )
            if cursor.rowcount == 0:
                raise self._missing(run_id)

    # -- reading ------------------------------------------------------------------------

    def _missing(self, run_id: str) -> StoreError:
        return StoreError(f"no run {run_id} in {self.path}; `flowgpt runs list` shows the runs")

    def _resolve(self, conn: sqlite3.Connection, run_id: str) -> str:
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
            return run_id
        if not run_id:
            raise self._missing(run_id)
        rows = conn.execute(
            "SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ?"
            " ORDER BY started_at DESC LIMIT 6",
            (len(run_id), run_id),
        ).fetchall()
        if not rows:
            raise self._missing(run_id)
        if len(rows) > 1:
            shown = ", ".join(r["run_id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise StoreError(
                f"run id {run_id!r} matches more than one run in {self.path}: {shown}",
                hint="give more characters of the run id",
            )
        found: str = rows[0]["run_id"]
        return found

    def resolve_run_id(self, run_id: str) -> str:
        """The full id of the run ``run_id`` names (a full id or a unique prefix)."""
        with self._guard("read the runs"), self._tx(write=False) as conn:
            return self._resolve(conn, run_id)

    def list_runs(
        self, limit: int = 20, *, batch: str | None = None, where: RunFilter | None = None
    ) -> list[RunSummary]:
        """The latest ``limit`` runs, newest first, each batch row a run of its own.

        ``batch`` (or ``where.batch``): only that batch's runs (its output file as
        recorded, or a path or file name that names one batch; see
        :meth:`resolve_batch`), by row number. ``where``: only the runs it picks."""
        batch = batch if batch is not None else where.batch if where is not None else None
        with self._guard("read the runs"), self._tx(write=False) as conn:
            full = None if batch is None else self._resolve_batch(conn, batch)
            condition, args = filter_sql(conn, where, full)
            order = (
                "started_at DESC, rowid DESC" if full is None else "batch_row, started_at, rowid"
            )
            runs = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM runs r WHERE {condition} ORDER BY {order} LIMIT ?",
                (*args, limit),
            ).fetchall()
            return self._summaries(conn, runs)

    def list_entries(
        self, limit: int = 20, *, where: RunFilter | None = None
    ) -> list[RunSummary | BatchSummary]:
        """What ``flowgpt runs list`` shows: the latest ``limit`` runs and batches, newest
        first, a batch as one :class:`BatchSummary` placed by its latest run's start.

        ``where``: only the runs it picks, and the batches with a run it picks (each
        summed up whole; ``list_runs(batch=..., where=...)`` lists the rows it picks)."""
        with self._guard("read the runs"), self._tx(write=False) as conn:
            full = None
            if where is not None and where.batch is not None:
                full = self._resolve_batch(conn, where.batch)
            condition, args = filter_sql(conn, where, full)
            singles = conn.execute(
                f"SELECT rowid, {_SUMMARY_COLUMNS} FROM runs r WHERE batch IS NULL"
                f" AND {condition} ORDER BY started_at DESC, rowid DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
            batches = conn.execute(
                "SELECT batch, MAX(started_at) AS last, MAX(rowid) AS rowid FROM runs r"
                f" WHERE batch IS NOT NULL AND {condition}"
                " GROUP BY batch ORDER BY last DESC, rowid DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
            newest = sorted(
                [((r["started_at"], r["rowid"]), r["run_id"], None) for r in singles]
                + [((b["last"], b["rowid"]), None, b["batch"]) for b in batches],
                reverse=True,
            )[:limit]
            chosen = {run_id for _, run_id, _ in newest if run_id is not None}
            summaries = {
                s.run_id: s
                for s in self._summaries(conn, [r for r in singles if r["run_id"] in chosen])
            }
            grouped = self._batches(conn, [b for _, _, b in newest if b is not None])
        return [
            summaries[run_id] if run_id is not None else grouped[str(batch)]
            for _, run_id, batch in newest
        ]

    def batch_summary(self, batch: str) -> BatchSummary:
        """One batch's runs taken together (``batch`` as for :meth:`resolve_batch`)."""
        with self._guard("read the batch"), self._tx(write=False) as conn:
            full = self._resolve_batch(conn, batch)
            return self._batches(conn, [full])[full]

    def resolve_batch(self, batch: str) -> str:
        """The batch ``batch`` names, as recorded (the absolute path of its output file):
        that exact value, or a path to the same file, or a file name or path ending that
        only one recorded batch ends with. Raises StoreError otherwise."""
        with self._guard("read the batches"), self._tx(write=False) as conn:
            return self._resolve_batch(conn, batch)

    def _resolve_batch(self, conn: sqlite3.Connection, batch: str) -> str:
        def known(name: str) -> bool:
            found = conn.execute("SELECT 1 FROM runs WHERE batch = ? LIMIT 1", (name,))
            return found.fetchone() is not None

        if batch and known(batch):
            return batch
        if batch:
            absolute = str(Path(batch).expanduser().resolve())
            if known(absolute):
                return absolute
            tail = "/" + batch.strip("/")
            names = [
                r["batch"]
                for r in conn.execute("SELECT DISTINCT batch FROM runs WHERE batch IS NOT NULL")
                if r["batch"].endswith(tail)
            ]
            if len(names) == 1:
                found: str = names[0]
                return found
            if names:
                raise StoreError(
                    f"{batch!r} matches more than one batch in {self.path}: "
                    + ", ".join(sorted(names)[:5]),
                    hint="give the output file's path",
                )
        raise StoreError(
            f"no batch {batch!r} in {self.path}; `flowgpt runs list` shows the batches"
        )

    def _batches(self, conn: sqlite3.Connection, names: Sequence[str]) -> dict[str, BatchSummary]:
        """The summaries of these batches. SQLite adds up their runs (a batch may have many
        thousands); only the steps of runs that have not finished are read."""
        if not names:
            return {}
        marks = ", ".join("?" for _ in names)
        totals = {
            row["batch"]: row
            for row in conn.execute(
                "SELECT batch, COUNT(*) AS runs, MIN(started_at) AS first_start,"
                " MAX(finished_at) AS last_end,"
                " SUM(CASE WHEN finished_at IS NOT NULL"
                " THEN prompt_tokens + completion_tokens ELSE 0 END) AS tokens,"
                " SUM(finished_at IS NOT NULL AND cost_usd IS NULL) AS unpriced_runs,"
                " group_concat(CASE WHEN finished_at IS NOT NULL THEN cost_usd END) AS costs,"
                " group_concat(DISTINCT provider) AS providers,"
                # the latest run's workflow and endpoint
                " (SELECT workflow FROM runs l WHERE l.batch = r.batch"
                "  ORDER BY started_at DESC, rowid DESC LIMIT 1) AS workflow,"
                " (SELECT endpoint FROM runs l WHERE l.batch = r.batch"
                "  ORDER BY started_at DESC, rowid DESC LIMIT 1) AS endpoint"
                f" FROM runs r WHERE batch IN ({marks}) GROUP BY batch",
                list(names),
            )
        }
        latest: dict[str, list[sqlite3.Row]] = {name: [] for name in names}
        for row in conn.execute(
            # Each row's latest run, counted by status (and who runs it, for "running").
            "SELECT batch, status, pid, host, proc_start, COUNT(*) AS n FROM runs r"
            f" WHERE batch IN ({marks}) AND NOT EXISTS (SELECT 1 FROM runs o"
            " WHERE o.batch = r.batch AND o.batch_row IS r.batch_row AND"
            " (o.started_at > r.started_at OR (o.started_at = r.started_at AND o.rowid > r.rowid)))"
            " GROUP BY batch, status, pid, host, proc_start",
            list(names),
        ):
            latest[row["batch"]].append(row)
        open_runs = conn.execute(
            "SELECT run_id, batch, finished_at, cost_usd, prompt_tokens, completion_tokens"
            f" FROM runs WHERE batch IN ({marks}) AND finished_at IS NULL",
            list(names),
        ).fetchall()
        steps = self._steps_of(conn, [r["run_id"] for r in open_runs])
        unfinished: dict[str, list[tuple[Decimal | None, int]]] = {name: [] for name in names}
        for run in open_runs:
            unfinished[run["batch"]].append(_totals(run, steps[run["run_id"]]))
        return {
            name: _batch_summary(totals[name], latest[name], unfinished[name])
            for name in names
            if name in totals
        }

    @staticmethod
    def _steps_of(conn: sqlite3.Connection, run_ids: list[str]) -> dict[str, list[sqlite3.Row]]:
        """What the summaries need of the steps of these runs."""
        steps: dict[str, list[sqlite3.Row]] = {run_id: [] for run_id in run_ids}
        for start in range(0, len(run_ids), 500):  # within SQLite's limit on parameters
            chunk = run_ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for row in conn.execute(
                "SELECT run_id, status, cost_usd, prompt_tokens, completion_tokens, finished_at"
                f" FROM steps WHERE run_id IN ({marks})",
                chunk,
            ):
                steps[row["run_id"]].append(row)
        return steps

    def _summaries(self, conn: sqlite3.Connection, runs: list[sqlite3.Row]) -> list[RunSummary]:
        """The RunSummary of each run row, with its steps read."""
        steps = self._steps_of(conn, [r["run_id"] for r in runs])
        return [_summary(run, steps[run["run_id"]]) for run in runs]

    def latest_run_id(self) -> str | None:
        """The id of the run started last, or None when the store holds none."""
        with self._guard("read the runs"), self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT run_id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1"
            ).fetchone()
        return None if row is None else str(row["run_id"])

    def stats(self, *, since: date | None = None, include_mock: bool = False) -> RunStats:
        """Tokens and dollars of every finished step, in all and by day (local time),
        model and workflow; batch rows and chats included. ``since``: count only steps
        that finished on that day (local time) or later. The mock provider's runs are
        left out (their dollars were never billed) unless ``include_mock``."""
        where, args = ["s.finished_at IS NOT NULL"], []
        if since is not None:
            where.append("s.finished_at >= ?")
            args.append(utc_midnight(since))
        mock = " AND ".join([*where, "r.provider = 'mock'"])
        if not include_mock:
            where.append("(r.provider IS NULL OR r.provider != 'mock')")
        scope = f"FROM steps s JOIN runs r ON r.run_id = s.run_id WHERE {' AND '.join(where)}"
        groups = {
            "day": "date(s.finished_at, 'localtime')",  # SQLite reads the "+00:00"
            "model": "COALESCE(s.model, '-')",
            "workflow": "r.workflow",
        }
        with self._guard("read the runs"), self._tx(write=False) as conn:
            total = stats_row("total", *conn.execute(f"SELECT {SUMS} {scope}", args).fetchone())
            by = {
                name: [
                    stats_row(*row)
                    for row in conn.execute(
                        f"SELECT {key} AS k, {SUMS} {scope} GROUP BY k ORDER BY k", args
                    )
                ]
                for name, key in groups.items()
            }
            left_out = 0
            if not include_mock:
                left_out = conn.execute(
                    "SELECT COUNT(DISTINCT s.run_id) FROM steps s"
                    f" JOIN runs r ON r.run_id = s.run_id WHERE {mock}",
                    args,
                ).fetchone()[0]
        return RunStats(
            total=total,
            by_day=by["day"],
            by_model=costliest(by["model"]),
            by_workflow=costliest(by["workflow"]),
            since=since,
            mock_runs_left_out=int(left_out),
        )

    def spending(self, where: RunFilter | None = None) -> Spending:
        """What the runs ``where`` picks spent (the mock provider's runs included, and
        told apart): tokens and dollars in all, and by day (local time) and model."""
        with self._guard("read the runs"), self._tx(write=False) as conn:
            full = None
            if where is not None and where.batch is not None:
                full = self._resolve_batch(conn, where.batch)
            return spending(conn, *filter_sql(conn, where, full))

    def run_facets(self) -> RunFacets:
        """The workflows, models, providers, statuses and days the runs have."""
        with self._guard("read the runs"), self._tx(write=False) as conn:
            return facets(conn)

    def workflow_text(self, run_id: str) -> str | None:
        """The workflow file's text as the run read it (redacted), or None when not kept."""
        with self._guard("read the run"), self._tx(write=False) as conn:
            full = self._resolve(conn, run_id)
            row = conn.execute(
                "SELECT workflow_text FROM runs WHERE run_id = ?", (full,)
            ).fetchone()
        return None if row["workflow_text"] is None else str(row["workflow_text"])

    def step_prices(self, run_id: str) -> dict[str, dict[str, Any] | None]:
        """Step id -> the price its cost was computed with (``ModelPrice.to_dict()``: USD
        per million tokens and its ``source``), None when unpriced."""
        with self._guard("read the run"), self._tx(write=False) as conn:
            full = self._resolve(conn, run_id)
            rows = conn.execute(
                "SELECT step_id, price FROM steps WHERE run_id = ? ORDER BY position", (full,)
            ).fetchall()
        return {row["step_id"]: _load(row["price"]) for row in rows}

    def run_summary(self, run_id: str) -> RunSummary:
        """The summary of one run (a full id or a unique prefix)."""
        with self._guard("read the run"), self._tx(write=False) as conn:
            full = self._resolve(conn, run_id)
            run = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM runs WHERE run_id = ?", (full,)
            ).fetchone()
            (summary,) = self._summaries(conn, [run])
        return summary

    def load_run(self, run_id: str) -> RunResult:
        """The run as a RunResult, rebuilt from the rows (``run_id`` may be a unique prefix).

        A "running" run whose process is gone reads as "interrupted", with an error saying
        so (it can be resumed like any other). Raises StoreError (an InputError, exit 2)
        when there is no such run.
        """
        with self._guard("read the run"), self._tx(write=False) as conn:
            full = self._resolve(conn, run_id)
            run = conn.execute("SELECT * FROM runs WHERE run_id = ?", (full,)).fetchone()
            steps = self._load_steps(conn, full, "")
        status = _run_status(run)
        error = run["error"]
        if status != run["status"] and error is None:
            error = f"its process (pid {run['pid']}) is gone: it was killed or crashed"
        return RunResult(
            workflow=run["workflow"],
            inputs=_load(run["inputs"], {}),
            steps=steps,
            outputs=_load(run["outputs"], {}),
            status=status,
            error=error,
            run_id=full,
            latency_s=float(run["latency_s"] or 0.0),
        )

    def latest_batch_run(self, batch: str, row: int, workflow: str | None = None) -> str | None:
        """The id of the latest run of row ``row`` of batch ``batch`` (of ``workflow``, when
        given), or None: a batch row run again resumes from it, so that no step it
        finished is paid twice."""
        query = "SELECT run_id FROM runs WHERE batch = ? AND batch_row = ?"
        args: list[Any] = [_text(batch), row]
        if workflow is not None:
            query += " AND workflow = ?"
            args.append(redact(workflow))
        with self._guard("read the runs"), self._tx(write=False) as conn:
            found = conn.execute(
                query + " ORDER BY started_at DESC, rowid DESC LIMIT 1", args
            ).fetchone()
        return None if found is None else str(found["run_id"])

    def finished_steps(self, run_id: str) -> dict[str, tuple[str | None, StepResult]]:
        """Step id -> (fingerprint, result) of the run's steps that have a usable result
        (status ok, reused or cached), for ``--resume``. ``run_id`` may be a prefix."""
        with self._guard("read the run"), self._tx(write=False) as conn:
            full = self._resolve(conn, run_id)
            marks = ", ".join("?" for _ in _REUSABLE)
            fingerprints = {
                row["step_id"]: row["fingerprint"]
                for row in conn.execute(
                    f"SELECT step_id, fingerprint FROM steps WHERE run_id = ?"
                    f" AND status IN ({marks})",
                    (full, *_REUSABLE),
                )
            }
            steps = self._load_steps(conn, full, f" AND status IN ({marks})", _REUSABLE)
        return {sid: (fingerprints[sid], step) for sid, step in steps.items()}

    @staticmethod
    def _load_steps(
        conn: sqlite3.Connection, run_id: str, where: str, args: Iterable[Any] = ()
    ) -> dict[str, StepResult]:
        attempts: dict[str, list[AttemptResult]] = {}
        for row in conn.execute(
            "SELECT * FROM attempts WHERE run_id = ? ORDER BY step_id, n", (run_id,)
        ):
            attempts.setdefault(row["step_id"], []).append(
                AttemptResult(
                    text=row["text"],
                    usage=_usage_of(row),
                    cost_usd=_decimal(row["cost_usd"]),
                    latency_s=float(row["latency_s"]),
                    finish_reason=row["finish_reason"],
                    retries=int(row["retries"]),
                    failures=_load(row["failures"], []),
                )
            )
        steps: dict[str, StepResult] = {}
        for row in conn.execute(
            f"SELECT * FROM steps WHERE run_id = ?{where} ORDER BY position",
            (run_id, *args),
        ):
            steps[row["step_id"]] = StepResult(
                id=row["step_id"],
                model=row["model"],
                status=row["status"],
                output=_load(row["output"]),
                text=row["text"],
                messages=_load(row["messages"], []),
                attempts=attempts.get(row["step_id"], []),
                items=[_step_from_doc(d) for d in _load(row["items"], [])],
                latency_s=float(row["latency_s"]),
                error=row["error"],
                exact_tokens=bool(row["exact_tokens"]),
                saved_usd=_decimal(row["saved_usd"]),
            )
        return steps

    # -- response cache -----------------------------------------------------------------

    def cache_get(self, fingerprint: str) -> ChatResponse | None:
        """The stored reply to the request with this fingerprint, or None."""
        with self._guard("read the response cache"), self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM cache WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        if row is None:
            return None
        return ChatResponse(
            text=row["text"],
            usage=_usage_of(row),
            finish_reason=row["finish_reason"],
            model=row["model"],
        )

    def cache_put(self, fingerprint: str, response: ChatResponse) -> None:
        """Remember the reply to the request with this fingerprint (replacing an older one)."""
        with self._guard("write the response cache"), self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO cache (fingerprint, text, model, finish_reason,"
                " prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    fingerprint,
                    redact(response.text),
                    _text(response.model),
                    _text(response.finish_reason),
                    *response.usage.to_dict().values(),
                    _now(),
                ),
            )
