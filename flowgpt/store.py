"""The SQLite run store and response cache: the only module that touches the database.

Where it lives
    ``$FLOWGPT_STORE`` when set; otherwise ``$XDG_DATA_HOME/flowgpt/runs.sqlite3``, or
    ``~/.local/share/flowgpt/runs.sqlite3`` when ``XDG_DATA_HOME`` is not set
    (see :func:`default_store_path`). The folder is created on first use (mode 0700) and the
    file is created readable by its owner only (mode 0600): it holds prompts and replies.

What it holds
    One row per run (workflow name, path, text and its sha256, inputs, status, outputs,
    usage, cost), one row per step (status, model, output, reply text, messages, usage, cost,
    the price used, the request fingerprint, latency, error, timings) written the moment the
    step finishes, one row per attempt (reply, usage, cost, latency, finish reason, transport
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
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from flowgpt.errors import InputError, redact
from flowgpt.providers.base import ChatRequest, ChatResponse
from flowgpt.results import AttemptResult, RunResult, StepResult, StepStatus, sum_costs
from flowgpt.usage import Usage

if TYPE_CHECKING:
    from flowgpt.pricing import ModelPrice

__all__ = [
    "SCHEMA_VERSION",
    "RunStore",
    "RunSummary",
    "StoreError",
    "default_store_path",
    "request_fingerprint",
]

SCHEMA_VERSION = 1

# A step in one of these states has a usable result: `--resume` may reuse it.
_REUSABLE = ("ok", "reused", "cached")
# ... and in one of these it needs no more work (counted as "done" by `runs list`).
_DONE = ("ok", "reused", "cached", "skipped")
_RUN_STATUSES = ("ok", "failed", "interrupted", "running")
_SUMMARY_COLUMNS = (
    "run_id, workflow, status, started_at, finished_at, cost_usd, prompt_tokens,"
    " completion_tokens, workflow_sha256, resumed_from, workflow_path"
)
_USAGE_COLUMNS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    -- Small columns first, large text last: listing runs never reads the large ones.
    run_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,             -- UTC ISO 8601
    finished_at TEXT,
    cost_usd TEXT,                        -- Decimal as text, NULL = unpriced
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    latency_s REAL NOT NULL DEFAULT 0,
    workflow_sha256 TEXT,
    resumed_from TEXT,
    workflow_path TEXT,
    error TEXT,
    inputs TEXT NOT NULL,                 -- JSON
    outputs TEXT,                         -- JSON
    workflow_text TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    step_id TEXT NOT NULL,
    position INTEGER NOT NULL,            -- the order of the run's steps
    status TEXT NOT NULL,
    finished_at TEXT,
    cost_usd TEXT,                        -- the step total, NULL = unpriced
    saved_usd TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    latency_s REAL NOT NULL DEFAULT 0,
    exact_tokens INTEGER NOT NULL DEFAULT 1,
    fingerprint TEXT,
    model TEXT,
    price TEXT,                           -- JSON ModelPrice.to_dict(), NULL = unpriced
    error TEXT,
    output TEXT,                          -- JSON
    text TEXT,
    messages TEXT NOT NULL DEFAULT '[]',  -- JSON
    items TEXT,                           -- JSON, the results of a for_each step
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX IF NOT EXISTS steps_by_position ON steps (run_id, position);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd TEXT,
    latency_s REAL NOT NULL DEFAULT 0,
    finish_reason TEXT,
    retries INTEGER NOT NULL DEFAULT 0,
    failures TEXT NOT NULL DEFAULT '[]',  -- JSON
    text TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, n),
    FOREIGN KEY (run_id, step_id) REFERENCES steps (run_id, step_id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS cache (
    fingerprint TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    model TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
"""

_STORE_HINT = "set FLOWGPT_STORE (or --store) to a writable file, or pass --no-store"


class StoreError(InputError):
    """The run store cannot be used, or holds no such run (exit 2)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)

    def format(self) -> str:
        # Not a mistake in a workflow file: no "<workflow>:" location in front.
        return f"{self.message}\n  {self.hint}" if self.hint else self.message


def default_store_path() -> Path:
    """$FLOWGPT_STORE, else $XDG_DATA_HOME/flowgpt/runs.sqlite3, else
    ~/.local/share/flowgpt/runs.sqlite3."""
    explicit = os.environ.get("FLOWGPT_STORE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "flowgpt" / "runs.sqlite3"


_FLOAT_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def request_fingerprint(
    request: ChatRequest, *, base_url: str | None, provider: str | None = None
) -> str:
    """A sha256 (hex) of everything that determines the reply to ``request``.

    It covers where the request goes (``base_url``; None means the default endpoint), the
    model, the messages and every setting that is set, ``response_format`` included.
    Numbers are normalised (``temperature: 1`` equals ``1.0``) and a single ``stop`` string
    equals a one-item list. The request holds no API key, so none is hashed. ``provider``
    (e.g. ``"mock"``) keeps replies of different providers apart; when None it is left
    out, so fingerprints stay comparable between versions that do not pass it.
    """
    params = request.params()
    for key in _FLOAT_PARAMS:
        if key in params:
            params[key] = float(params[key])
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    document: dict[str, Any] = {
        "v": 1,
        "base_url": base_url.strip().rstrip("/") if base_url else "default",
        "model": request.model,
        "messages": [dict(m) for m in request.messages],
        "params": params,
    }
    if provider is not None:
        document["provider"] = provider
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


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


# -- the store --------------------------------------------------------------------------


class RunStore:
    """The run store and response cache in one SQLite file.

    ``RunStore(path)`` creates the folder, the file and the schema as needed. Use it as a
    context manager, or call :meth:`close`. Every method commits before it returns.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = self._open()
            with self._tx() as conn:
                self._migrate(conn)
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(
                f"cannot open the run store {self.path}: {exc}", hint=_STORE_HINT
            ) from None
        except OSError as exc:
            self.close()
            raise StoreError(
                f"cannot create the run store {self.path}: {exc.strerror or exc}",
                hint=_STORE_HINT,
            ) from None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            # Owner-only from the start; SQLite gives the -wal/-shm files the same mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(
            str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        # One statement at a time: executescript() would commit the open transaction.
        for statement in _SCHEMA.split(";\n"):
            if statement.strip():
                conn.execute(statement)
        row = conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, ?)", (SCHEMA_VERSION,)
            )
        elif row["version"] > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"it was written by a newer flowgpt (schema {row['version']}, "
                f"this one knows {SCHEMA_VERSION}); upgrade flowgpt"
            )

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock: committed on success, rolled back on error.

        Writes take SQLite's write lock up front (BEGIN IMMEDIATE), so two processes never
        deadlock upgrading a read lock; reads see one consistent snapshot.
        """
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"the run store {self.path} is closed")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(
                f"run store {self.path}: could not {doing}: {exc}", hint=_STORE_HINT
            ) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

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
    ) -> None:
        """Record a new run as "running".

        ``steps``: the run's (pending) step results in workflow order — the engine's
        ``_Run.results.values()``. They fix the order of the steps and let ``runs list``
        count steps not run yet; steps recorded later but not listed here go after them.
        ``workflow_sha256`` is the hash of the text as given (before redaction).
        """
        sha = None
        if workflow_text is not None:
            sha = hashlib.sha256(workflow_text.encode("utf-8")).hexdigest()
        with self._guard("start the run"), self._tx() as conn:
            exists = conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if exists:
                raise StoreError(
                    f"run {run_id} is already in {self.path}",
                    hint="start every run (a resumed one too) with a new run id",
                )
            conn.execute(
                "INSERT INTO runs (run_id, workflow, workflow_path, workflow_text,"
                " workflow_sha256, inputs, resumed_from, status, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                (
                    run_id,
                    redact(workflow_name),
                    _text(workflow_path),
                    _text(workflow_text),
                    sha,
                    _json(inputs),
                    resumed_from,
                    _now(),
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
        return [self._summary(run, steps[run["run_id"]]) for run in runs]

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
        return self._summary(run, steps)

    @staticmethod
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

    def load_run(self, run_id: str) -> RunResult:
        """The run as a RunResult, rebuilt from the rows (``run_id`` may be a unique prefix).

        Raises StoreError (an InputError, exit 2) when there is no such run.
        """
        with self._guard("read the run"), self._tx(write=False) as conn:
            full = self._resolve(conn, run_id)
            run = conn.execute("SELECT * FROM runs WHERE run_id = ?", (full,)).fetchone()
            steps = self._load_steps(conn, full, "")
        return RunResult(
            workflow=run["workflow"],
            inputs=_load(run["inputs"], {}),
            steps=steps,
            outputs=_load(run["outputs"], {}),
            status=run["status"],
            error=run["error"],
            run_id=full,
            latency_s=float(run["latency_s"] or 0.0),
        )

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
