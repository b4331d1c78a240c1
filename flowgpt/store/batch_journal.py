"""The Batch API runner's journal, in the run store's SQLite file: what was submitted, where,
and what came back, so a batch run survives a crash without sending or paying twice.

Three tables beside the run store's own (created on first use; older flowgpt versions
ignore them, which is why adding them changes no schema version):

``batch_jobs``
    One Batch API run of a workflow over a data file, found again by its ``key`` (for
    ``flowgpt batch``: the ``--out`` file). ``running`` until every row has finished.
``batch_submissions``
    One batch file and the batch made from it: the file id (stored right after the
    upload, before the batch is created), the batch id (stored as soon as the API
    returns it), the model, the round, and the batch's last known status; ``done`` once
    its results are recorded. A submission with a file but no batch id was being created
    when the process stopped: the batch, if it was made, is found again by its metadata.
``batch_lines``
    One request line: its ``custom_id`` (``row/step/attempt/n``), the request's
    fingerprint, the submission it went in, and its outcome: ``pending``, ``ok`` (with
    the reply), ``failed`` (with the error), or ``retired`` (its row failed, so running
    the batch again asks afresh instead of repeating the failure).

Every method commits before it returns (see :class:`flowgpt.store._db.StoreDatabase`).
Replies and error messages go through :func:`flowgpt.errors.redact` like everything else
the store writes.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flowgpt import errors
from flowgpt.errors import ProviderError, redact
from flowgpt.providers.base import ChatResponse
from flowgpt.store._db import StoreDatabase
from flowgpt.store._rows import _now
from flowgpt.usage import Usage

__all__ = ["BatchJournal", "JobRecord", "LineRecord", "SubmissionRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_jobs (
    job_id TEXT PRIMARY KEY,
    key TEXT NOT NULL,                    -- what finds the job again (flowgpt batch: --out)
    workflow TEXT NOT NULL,
    status TEXT NOT NULL,                 -- running | done
    created_at TEXT NOT NULL,             -- UTC ISO 8601
    created_unix REAL NOT NULL,           -- batches older than this are not the job's
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS batch_jobs_by_key ON batch_jobs (key, status);
CREATE TABLE IF NOT EXISTS batch_submissions (
    submission_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES batch_jobs (job_id) ON DELETE CASCADE,
    round INTEGER NOT NULL,
    model TEXT NOT NULL,
    lines INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    file_id TEXT NOT NULL,
    batch_id TEXT,                        -- NULL until the API said which batch it made
    status TEXT NOT NULL,                 -- uploaded, the batch's status, then done
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_submissions_by_job ON batch_submissions (job_id, status);
CREATE TABLE IF NOT EXISTS batch_lines (
    job_id TEXT NOT NULL REFERENCES batch_jobs (job_id) ON DELETE CASCADE,
    custom_id TEXT NOT NULL,
    submission_id TEXT NOT NULL,
    row INTEGER NOT NULL,
    step TEXT NOT NULL,                   -- "draft", or "tags[2]" for a for_each item
    attempt INTEGER NOT NULL,             -- 0, then 1.. for repairs
    n INTEGER NOT NULL,                   -- the how-many-th line of that attempt
    fingerprint TEXT NOT NULL,            -- of the request (flowgpt.store.fingerprint)
    status TEXT NOT NULL,                 -- pending | ok | failed | retired
    response TEXT,                        -- JSON: text, usage, finish_reason, model
    error TEXT,                           -- JSON: the ProviderError
    PRIMARY KEY (job_id, custom_id)
);
CREATE INDEX IF NOT EXISTS batch_lines_by_submission ON batch_lines (submission_id);
CREATE INDEX IF NOT EXISTS batch_lines_by_row ON batch_lines (job_id, row)
"""


@dataclass
class JobRecord:
    job_id: str
    key: str
    workflow: str
    status: str
    created_unix: float


@dataclass
class SubmissionRecord:
    submission_id: str
    job_id: str
    round: int
    model: str
    lines: int
    bytes: int
    file_id: str
    batch_id: str | None = None
    status: str = "uploaded"


@dataclass
class LineRecord:
    custom_id: str
    submission_id: str
    row: int
    step: str
    attempt: int
    n: int
    fingerprint: str
    status: str = "pending"
    response: ChatResponse | None = None
    error: ProviderError | None = None


class BatchJournal(StoreDatabase):
    """The Batch API runner's records in the run store's file (``path``: as for
    ``RunStore``; None is the default store). Use it as a context manager, or ``close``."""

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        StoreDatabase._migrate(conn)
        for statement in _SCHEMA.split(";\n"):
            if statement.strip():
                conn.execute(statement)

    def __enter__(self) -> BatchJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs -----------------------------------------------------------------------------

    def find_job(self, key: str) -> JobRecord | None:
        """The running job with this key, if there is one."""
        with self._guard("read the batch jobs"), self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM batch_jobs WHERE key = ? AND status = 'running'"
                " ORDER BY created_unix DESC LIMIT 1",
                (key,),
            ).fetchone()
        return None if row is None else _job(row)

    def open_job(self, key: str, workflow: str) -> JobRecord:
        """The running job with this key, or a new one."""
        found = self.find_job(key)
        if found is not None:
            return found
        job = JobRecord(
            job_id=f"job-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}",
            key=key,
            workflow=workflow,
            status="running",
            created_unix=time.time(),
        )
        with self._guard("start a batch job"), self._tx() as conn:
            conn.execute(
                "INSERT INTO batch_jobs (job_id, key, workflow, status, created_at, created_unix)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job.job_id, key, redact(workflow), job.status, _now(), job.created_unix),
            )
        return job

    def finish_job(self, job_id: str) -> None:
        with self._guard("finish the batch job"), self._tx() as conn:
            conn.execute(
                "UPDATE batch_jobs SET status = 'done', finished_at = ? WHERE job_id = ?",
                (_now(), job_id),
            )

    # -- submissions ----------------------------------------------------------------------

    def add_submission(self, submission: SubmissionRecord, lines: Sequence[LineRecord]) -> None:
        """Record an uploaded file and the lines it holds, before its batch is created."""
        s = submission
        now = _now()
        with self._guard("record a batch file"), self._tx() as conn:
            conn.execute(
                "INSERT INTO batch_submissions (submission_id, job_id, round, model, lines,"
                " bytes, file_id, batch_id, status, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    s.submission_id,
                    s.job_id,
                    s.round,
                    s.model,
                    s.lines,
                    s.bytes,
                    s.file_id,
                    s.batch_id,
                    s.status,
                    now,
                    now,
                ),
            )
            conn.executemany(
                "INSERT INTO batch_lines (job_id, custom_id, submission_id, row, step,"
                " attempt, n, fingerprint, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                [
                    (
                        s.job_id,
                        x.custom_id,
                        s.submission_id,
                        x.row,
                        x.step,
                        x.attempt,
                        x.n,
                        x.fingerprint,
                    )
                    for x in lines
                ],
            )

    def set_batch(self, submission_id: str, batch_id: str, status: str) -> None:
        """Record the batch made from a submission's file (as soon as the API says)."""
        with self._guard("record a batch"), self._tx() as conn:
            conn.execute(
                "UPDATE batch_submissions SET batch_id = ?, status = ?, updated_at = ?"
                " WHERE submission_id = ?",
                (batch_id, status, _now(), submission_id),
            )

    def set_status(self, submission_id: str, status: str) -> None:
        with self._guard("record a batch's status"), self._tx() as conn:
            conn.execute(
                "UPDATE batch_submissions SET status = ?, updated_at = ? WHERE submission_id = ?",
                (status, _now(), submission_id),
            )

    def open_submissions(self, job_id: str) -> list[SubmissionRecord]:
        """The job's submissions whose results are not recorded yet, oldest first."""
        with self._guard("read the batch jobs"), self._tx(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM batch_submissions WHERE job_id = ? AND status != 'done'"
                " ORDER BY created_at, rowid",
                (job_id,),
            ).fetchall()
        return [
            SubmissionRecord(
                submission_id=r["submission_id"],
                job_id=r["job_id"],
                round=r["round"],
                model=r["model"],
                lines=r["lines"],
                bytes=r["bytes"],
                file_id=r["file_id"],
                batch_id=r["batch_id"],
                status=r["status"],
            )
            for r in rows
        ]

    def last_round(self, job_id: str) -> int:
        with self._guard("read the batch jobs"), self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(round), 0) AS r FROM batch_submissions WHERE job_id = ?",
                (job_id,),
            ).fetchone()
        return int(row["r"])

    def record_results(
        self,
        submission_id: str,
        outcomes: Iterable[tuple[str, ChatResponse | ProviderError]],
    ) -> None:
        """Record every line's outcome (custom_id, reply or error) and mark the submission
        done, in one transaction: a crash leaves all of it to do again, or none."""
        ok, failed = [], []
        for custom_id, outcome in outcomes:
            if isinstance(outcome, ChatResponse):
                ok.append((_response_doc(outcome), submission_id, custom_id))
            else:
                failed.append((_error_doc(outcome), submission_id, custom_id))
        with self._guard("record a batch's results"), self._tx() as conn:
            conn.executemany(
                "UPDATE batch_lines SET status = 'ok', response = ?"
                " WHERE submission_id = ? AND custom_id = ? AND status = 'pending'",
                ok,
            )
            conn.executemany(
                "UPDATE batch_lines SET status = 'failed', error = ?"
                " WHERE submission_id = ? AND custom_id = ? AND status = 'pending'",
                failed,
            )
            conn.execute(
                "UPDATE batch_submissions SET status = 'done', updated_at = ?"
                " WHERE submission_id = ?",
                (_now(), submission_id),
            )

    # -- lines ----------------------------------------------------------------------------

    def lines(self, job_id: str) -> list[LineRecord]:
        """Every line of the job (retired ones too), in the order they were recorded."""
        with self._guard("read the batch lines"), self._tx(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM batch_lines WHERE job_id = ? ORDER BY rowid", (job_id,)
            ).fetchall()
        return [
            LineRecord(
                custom_id=r["custom_id"],
                submission_id=r["submission_id"],
                row=r["row"],
                step=r["step"],
                attempt=r["attempt"],
                n=r["n"],
                fingerprint=r["fingerprint"],
                status=r["status"],
                response=_response_from(r["response"]),
                error=_error_from(r["error"]),
            )
            for r in rows
        ]

    def retire_row(self, job_id: str, row: int) -> None:
        """A row failed: its lines are not replayed when the batch runs again."""
        with self._guard("record a failed row"), self._tx() as conn:
            conn.execute(
                "UPDATE batch_lines SET status = 'retired' WHERE job_id = ? AND row = ?",
                (job_id, row),
            )


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"],
        key=row["key"],
        workflow=row["workflow"],
        status=row["status"],
        created_unix=float(row["created_unix"]),
    )


def _response_doc(response: ChatResponse) -> str:
    return json.dumps(
        {
            "text": redact(response.text),
            "usage": response.usage.to_dict(),
            "finish_reason": response.finish_reason,
            "model": response.model,
        },
        ensure_ascii=False,
    )


def _response_from(text: str | None) -> ChatResponse | None:
    if text is None:
        return None
    doc = json.loads(text)
    return ChatResponse(
        text=doc["text"],
        usage=Usage.from_dict(doc["usage"]),
        finish_reason=doc.get("finish_reason"),
        model=doc.get("model"),
    )


def _error_doc(error: ProviderError) -> str:
    doc: dict[str, Any] = {
        "type": type(error).__name__,
        "message": error.message,
        "hint": error.hint,
        "status": error.status,
    }
    return json.dumps(doc, ensure_ascii=False)


def _error_from(text: str | None) -> ProviderError | None:
    if text is None:
        return None
    doc = json.loads(text)
    kind = getattr(errors, str(doc.get("type")), ProviderError)
    if not (isinstance(kind, type) and issubclass(kind, ProviderError)):
        kind = ProviderError
    return kind(doc.get("message") or "", hint=doc.get("hint"), status=doc.get("status"))
