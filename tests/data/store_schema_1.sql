-- The run store schema 1, as flowgpt wrote it before schema 2 (pid, host, proc_start).
-- tests/test_store.py builds a schema-1 file from it to test the upgrade.
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
