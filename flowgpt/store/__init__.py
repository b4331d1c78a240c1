"""The SQLite run store: runs, steps, attempts and the response cache (``run_store``), the
file and its schema (``_db``), the values written and read back (``_rows``) and the
request fingerprint that keys the cache and resume (``fingerprint``). The only package that
imports sqlite3."""

from __future__ import annotations

from flowgpt.store.run_store import (
    SCHEMA_VERSION,
    BatchSummary,
    DailySpend,
    RunFacets,
    RunFilter,
    RunStats,
    RunStore,
    RunSummary,
    Spending,
    StatsRow,
    StoreError,
    default_store_path,
    new_run_id,
    request_fingerprint,
)

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
