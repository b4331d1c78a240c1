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

import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Iterable
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

from flowgpt.errors import redact
from flowgpt.providers.base import ChatResponse
from flowgpt.results import AttemptResult, RunResult, StepResult
from flowgpt.store._db import SCHEMA_VERSION, StoreDatabase, StoreError, default_store_path
from flowgpt.store._rows import (
    RunSummary,
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
    _usage_of,
)
from flowgpt.store.fingerprint import request_fingerprint
from flowgpt.usage import Usage

if TYPE_CHECKING:
    from flowgpt.accounting.prices import ModelPrice

__all__ = [
    "SCHEMA_VERSION",
    "RunStore",
    "RunSummary",
    "StoreError",
    "default_store_path",
    "new_run_id",
    "request_fingerprint",
]


def new_run_id() -> str:
    """A new run id: sortable by time, with a random part that tells apart runs started
    in the same second (``20261204-181816-3fa2c1``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{random.getrandbits(24):06x}"


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

    def list_runs(self, limit: int = 20) -> list[RunSummary]:
        """The latest ``limit`` runs, newest first."""
        with self._guard("read the runs"), self._tx(write=False) as conn:
            runs = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
            steps: dict[str, list[sqlite3.Row]] = {r["run_id"]: [] for r in runs}
            if runs:
                marks = ", ".join("?" for _ in runs)
                for row in conn.execute(
                    "SELECT run_id, status, cost_usd, prompt_tokens, completion_tokens, finished_at"
                    f" FROM steps WHERE run_id IN ({marks})",
                    list(steps),
                ):
                    steps[row["run_id"]].append(row)
        return [_summary(run, steps[run["run_id"]]) for run in runs]

    def run_summary(self, run_id: str) -> RunSummary:
        """The summary of one run (a full id or a unique prefix)."""
        with self._guard("read the run"), self._tx(write=False) as conn:
            full = self._resolve(conn, run_id)
            run = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM runs WHERE run_id = ?", (full,)
            ).fetchone()
            steps = conn.execute(
                "SELECT status, cost_usd, prompt_tokens, completion_tokens, finished_at"
                " FROM steps WHERE run_id = ?",
                (full,),
            ).fetchall()
        return _summary(run, steps)

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
