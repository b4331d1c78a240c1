"""The SQLite file behind the run store: where it lives, its schema, the connection.

:class:`StoreDatabase` creates the folder (0700) and the file (0600), opens it in WAL mode,
creates or checks the schema, and runs one transaction at a time under a lock;
:class:`flowgpt.store.RunStore` writes and reads its records on top of it. Every
``sqlite3.Error`` becomes a :class:`StoreError`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flowgpt.errors import InputError

__all__ = ["SCHEMA_VERSION", "StoreDatabase", "StoreError", "default_store_path"]

SCHEMA_VERSION = 3

# Columns added after schema 1, as (name, type): an older file gets them by ALTER TABLE
# (schema 2: who runs a run; schema 3: where its requests went, and the batch row it is).
_ADDED_RUN_COLUMNS = (
    ("pid", "INTEGER"),
    ("host", "TEXT"),
    ("proc_start", "TEXT"),
    ("provider", "TEXT"),
    ("endpoint", "TEXT"),
    ("batch", "TEXT"),
    ("batch_row", "INTEGER"),
)

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
    pid INTEGER,                          -- who runs it (schema 2): the process id,
    host TEXT,                            -- socket.gethostname(),
    proc_start TEXT,                      -- and "boot id:start time" on Linux (else NULL)
    provider TEXT,                        -- schema 3: "openai", "mock", "local", ...
    endpoint TEXT,                        -- where requests went (no credentials)
    batch TEXT,                           -- the batch it is a row of (its --out file)
    batch_row INTEGER,                    -- its row number in that batch
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

_STORE_HINT = "set FLOWGPT_STORE to a writable file (or use no store)"


class StoreError(InputError):
    """The run store cannot be used, or holds no such run (exit 2)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        # "store": the command line adds its --store/--no-store to a hint about the file
        super().__init__(message, hint=hint, code="store" if hint == _STORE_HINT else None)

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


class StoreDatabase:
    """One SQLite file and its connection: opened, migrated and closed; one transaction at
    a time through :meth:`_tx`, sqlite3 errors turned into StoreError by :meth:`_guard`."""

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
        elif row["version"] < SCHEMA_VERSION:
            # Older schemas: the runs table gains the newer columns (its old rows get
            # NULLs: a "running" one's liveness is unknown, so it stays "running").
            have = {c["name"] for c in conn.execute("PRAGMA table_info(runs)")}
            for name, kind in _ADDED_RUN_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            conn.execute("UPDATE schema_version SET version = ? WHERE id = 1", (SCHEMA_VERSION,))
        # After the migration: an older file has these columns only now.
        conn.execute("CREATE INDEX IF NOT EXISTS runs_by_batch ON runs (batch, batch_row)")

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
