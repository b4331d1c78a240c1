"""The SQLite run store and response cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from flowgpt.accounting.prices import ModelPrice
from flowgpt.errors import InputError
from flowgpt.providers.base import ChatRequest, ChatResponse, Message
from flowgpt.results import AttemptResult, RunResult, StepResult, render_table
from flowgpt.store.run_store import (
    SCHEMA_VERSION,
    RunStore,
    StoreError,
    default_store_path,
    request_fingerprint,
)
from flowgpt.usage import Usage

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-proj-AAAAAAAAAAAAAAAAAAAAAAAA"
PRICE = ModelPrice(
    input=Decimal("0.15"), cached_input=Decimal("0.075"), output=Decimal("0.6"), source="local"
)


def sample_run(run_id: str = "20260101-120000-abcdef", *, priced: bool = True) -> RunResult:
    """Three steps: ok after a repaired attempt, skipped, failed."""

    def cost(value: str) -> Decimal | None:
        return Decimal(value) if priced else None

    outline = StepResult(
        id="outline",
        model="gpt-4o-mini",
        status="ok",
        output={"title": "Tea", "sections": ["a", "b", "c"]},
        text='{"title": "Tea", "sections": ["a", "b", "c"]}',
        messages=[
            {"role": "system", "content": "You are an editor."},
            {"role": "user", "content": "Plan an article about tea."},
        ],
        attempts=[
            AttemptResult(
                text='{"title": "Tea"}',
                usage=Usage(120, 30, 64, 0),
                cost_usd=cost("0.0000186"),
                latency_s=0.8125,
                finish_reason="stop",
                retries=1,
                failures=["$: 'sections' is a required property"],
            ),
            AttemptResult(
                text='{"title": "Tea", "sections": ["a", "b", "c"]}',
                usage=Usage(180, 40, 0, 12),
                cost_usd=cost("0.000051"),
                latency_s=1.25,
                finish_reason="stop",
            ),
        ],
        latency_s=2.0625,
    )
    draft = StepResult(id="draft", model="gpt-4o", status="skipped")
    polish = StepResult(
        id="polish",
        model="gpt-4o",
        status="failed",
        text="As an AI ...",
        messages=[{"role": "user", "content": "Polish it.", "name": "editor"}],
        attempts=[
            AttemptResult(
                text="As an AI ...",
                usage=Usage(50, 10, 0, 0),
                cost_usd=cost("0.000225"),
                latency_s=0.5,
                finish_reason="length",
                failures=["contains 'As an AI'"],
            )
        ],
        latency_s=0.5,
        error="step `polish`: the reply failed validation on all 1 attempt",
    )
    return RunResult(
        workflow="article-writer",
        inputs={"topic": "tea", "words": 600},
        steps={"outline": outline, "draft": draft, "polish": polish},
        outputs={"title": "Tea"},
        status="failed",
        error=polish.error,
        run_id=run_id,
        latency_s=2.75,
    )


def save(store: RunStore, result: RunResult, *, workflow_text: str | None = "version: 1\n") -> None:
    """What the engine does: start, record each step as it finishes, finish."""
    assert result.run_id is not None
    store.start_run(
        result.run_id,
        workflow_name=result.workflow,
        workflow_text=workflow_text,
        workflow_path="workflows/article.yaml",
        inputs=result.inputs,
        steps=[StepResult(id=s.id, model=s.model) for s in result.steps.values()],
    )
    for step in reversed(result.steps.values()):  # finishing order is not the file order
        store.record_step(
            result.run_id,
            step,
            fingerprint=f"fp-{step.id}",
            price=PRICE if step.cost_usd is not None else None,
        )
    store.finish_run(
        result.run_id,
        status=result.status,
        error=result.error,
        outputs=result.outputs,
        cost_usd=result.cost_usd,
        usage=result.usage,
        latency_s=result.latency_s,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    with RunStore(tmp_path / "runs.sqlite3") as opened:
        yield opened


def test_round_trip_gives_the_same_result_and_table(store: RunStore) -> None:
    original = sample_run()
    save(store, original)
    loaded = store.load_run(original.run_id or "")
    assert loaded.usage == original.usage
    assert loaded.cost_usd == original.cost_usd == Decimal("0.0002946")
    assert loaded.outputs == original.outputs
    assert loaded.inputs == original.inputs
    assert [s.status for s in loaded.steps.values()] == ["ok", "skipped", "failed"]
    assert list(loaded.steps) == ["outline", "draft", "polish"]  # the file's order
    assert loaded.steps == original.steps  # every field, attempts included
    assert (loaded.status, loaded.error, loaded.latency_s) == ("failed", original.error, 2.75)
    assert render_table(loaded) == render_table(original)


def test_items_pending_reused_and_approximate_steps_round_trip(store: RunStore) -> None:
    original = sample_run()
    item = StepResult(
        id="translate",
        model="my-model",
        status="ok",
        output="hola",
        text="hola",
        attempts=[AttemptResult("hola", Usage(10, 2), None, 0.25)],
        exact_tokens=False,
    )
    original.steps["translate"] = StepResult(
        id="translate", model="my-model", status="ok", output=["hola"], items=[item, item]
    )
    original.steps["reuse"] = StepResult(
        id="reuse",
        model="gpt-4o-mini",
        status="reused",
        output="old",
        attempts=[AttemptResult("old", Usage(), Decimal(0), 0.0)],
        saved_usd=Decimal("0.0125"),
    )
    original.steps["later"] = StepResult(id="later", model="gpt-4o")  # never ran
    save(store, original)
    loaded = store.load_run(original.run_id or "")
    assert loaded.steps == original.steps
    assert loaded.cost_usd is None  # an unpriced for_each item makes the run unpriced
    table = render_table(loaded)
    assert table == render_table(original)
    assert "later (not run)" in table and "saved $0.0125" in table


def test_unpriced_cost_stays_none(store: RunStore) -> None:
    original = sample_run(priced=False)
    save(store, original)
    loaded = store.load_run(original.run_id or "")
    assert loaded.cost_usd is None
    assert loaded.steps["outline"].attempts[0].cost_usd is None
    assert loaded.steps["draft"].cost_usd == Decimal(0)  # skipped: nothing spent
    (summary,) = store.list_runs()
    assert summary.cost_usd is None
    assert render_table(loaded) == render_table(original)
    raw = store._conn.execute(  # type: ignore[union-attr]
        "SELECT cost_usd, price FROM steps WHERE step_id = 'outline'"
    ).fetchone()
    assert tuple(raw) == (None, None)  # NULL, never 0


def test_money_is_stored_as_exact_text(store: RunStore) -> None:
    save(store, sample_run())
    conn = store._conn
    assert conn is not None
    row = conn.execute(
        "SELECT cost_usd, typeof(cost_usd), price FROM steps WHERE step_id = 'outline'"
    )
    cost, kind, price = row.fetchone()
    assert (cost, kind) == ("0.0000696", "text")
    assert ModelPrice.from_dict(json.loads(price)) == PRICE
    (kinds,) = conn.execute(
        "SELECT group_concat(DISTINCT typeof(cost_usd)) FROM attempts"
    ).fetchone()
    assert kinds == "text"


def test_list_runs_newest_first_with_totals(store: RunStore) -> None:
    first = sample_run("20260101-000000-000001")
    save(store, first)
    second = sample_run("20260101-000001-000002", priced=False)
    save(store, second)
    # A third run that is still going (or whose process died): one step of three done.
    third = sample_run("20260101-000002-000003")
    store.start_run(
        "20260101-000002-000003",
        workflow_name="article-writer",
        workflow_text=None,
        workflow_path=None,
        inputs={},
        steps=[StepResult(id=s) for s in third.steps],
        resumed_from=first.run_id,
    )
    store.record_step(
        "20260101-000002-000003", third.steps["outline"], fingerprint=None, price=PRICE
    )

    runs = store.list_runs()
    assert [r.run_id for r in runs] == [third.run_id, second.run_id, first.run_id]
    newest, middle, oldest = runs
    assert (newest.status, newest.finished_at, newest.resumed_from) == (
        "running",
        None,
        "20260101-000000-000001",
    )
    assert newest.cost_usd == third.steps["outline"].cost_usd
    assert newest.total_tokens == third.steps["outline"].usage.total_tokens
    assert (newest.steps_done, newest.steps_total) == (1, 3)
    assert (oldest.workflow, oldest.status) == ("article-writer", "failed")
    assert oldest.cost_usd == first.cost_usd
    assert oldest.total_tokens == first.usage.total_tokens == 430
    assert (oldest.steps_done, oldest.steps_total) == (2, 3)  # ok + skipped; failed is not done
    assert oldest.started_at <= oldest.finished_at  # type: ignore[operator]
    assert oldest.started_at.endswith("+00:00")
    assert oldest.workflow_path == "workflows/article.yaml"
    assert oldest.workflow_sha256 == hashlib.sha256(b"version: 1\n").hexdigest()
    assert middle.cost_usd is None
    assert [r.run_id for r in store.list_runs(limit=1)] == [third.run_id]
    assert store.run_summary("20260101-000001") == middle


def test_prefix_lookup_and_missing_run(store: RunStore) -> None:
    save(store, sample_run("20260101-000000-aaaaaa"))
    save(store, sample_run("20260101-000000-aabbbb"))
    assert store.load_run("20260101-000000-aab").run_id == "20260101-000000-aabbbb"
    assert store.resolve_run_id("20260101-000000-aaaa") == "20260101-000000-aaaaaa"
    with pytest.raises(StoreError, match="matches more than one run") as ambiguous:
        store.load_run("20260101-000000-aa")
    assert "give more characters" in ambiguous.value.format()
    with pytest.raises(InputError) as missing:
        store.load_run("nope")
    message = missing.value.format()
    assert message == f"no run nope in {store.path}; `flowgpt runs list` shows the runs"
    assert missing.value.exit_code == 2
    with pytest.raises(InputError, match="no run"):
        store.finished_steps("")
    with pytest.raises(InputError, match="no run"):
        store.load_run("20260101-000000-AAB")  # prefixes are case-sensitive, like the ids


def test_finished_steps_are_the_reusable_ones(store: RunStore) -> None:
    original = sample_run()
    save(store, original)
    finished = store.finished_steps("20260101-120000")
    assert list(finished) == ["outline"]
    fingerprint, step = finished["outline"]
    assert fingerprint == "fp-outline"
    assert step == original.steps["outline"]


def test_record_step_is_an_upsert(store: RunStore) -> None:
    original = sample_run()
    save(store, original)
    outline = original.steps["outline"]
    outline.attempts = outline.attempts[1:]
    store.record_step(original.run_id or "", outline, fingerprint="fp-2", price=PRICE)
    loaded = store.load_run(original.run_id or "")
    assert list(loaded.steps) == ["outline", "draft", "polish"]  # position kept
    assert loaded.steps["outline"].attempts == outline.attempts
    assert store.finished_steps(original.run_id or "")["outline"][0] == "fp-2"


def test_misuse_is_refused(store: RunStore) -> None:
    save(store, sample_run())
    with pytest.raises(StoreError, match="already in"):
        save(store, sample_run())
    with pytest.raises(ValueError, match="status must be one of"):
        store.finish_run(
            "20260101-120000-abcdef",
            status="done",
            error=None,
            outputs={},
            cost_usd=None,
            usage=Usage(),
        )
    with pytest.raises(StoreError, match="no run ghost"):
        store.finish_run("ghost", status="ok", error=None, outputs={}, cost_usd=None, usage=Usage())
    with pytest.raises(StoreError, match="record step"):
        store.record_step("ghost", StepResult(id="x"), fingerprint=None, price=None)
    store.close()
    store.close()  # twice is fine
    with pytest.raises(StoreError, match="closed"):
        store.list_runs()


# -- fingerprints -------------------------------------------------------------------------

REQUEST = ChatRequest(
    model="gpt-4o-mini",
    messages=[Message(role="system", content="Be brief."), Message(role="user", content="Hi")],
    temperature=0.0,
    max_tokens=100,
    stop=["END"],
    response_format={"type": "json_object"},
)


def test_fingerprint_is_stable_and_canonical() -> None:
    fp = request_fingerprint(REQUEST, base_url=None)
    assert len(fp) == 64 and fp == request_fingerprint(REQUEST, base_url=None)
    same = ChatRequest(
        model="gpt-4o-mini",
        messages=[{"content": "Be brief.", "role": "system"}, {"content": "Hi", "role": "user"}],
        response_format={"type": "json_object"},
        stop="END",
        max_tokens=100,
        temperature=0,
    )
    assert request_fingerprint(same, base_url=None) == fp
    url = request_fingerprint(REQUEST, base_url="http://localhost:11434/v1")
    assert request_fingerprint(REQUEST, base_url="http://localhost:11434/v1/") == url


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "gpt-4o"},
        {"messages": [Message(role="user", content="Hi")]},
        {"messages": [*REQUEST.messages, Message(role="user", content="more")]},
        {"messages": [REQUEST.messages[0], Message(role="user", content="Hi", name="bob")]},
        {"temperature": 0.7},
        {"temperature": None},
        {"top_p": 0.9},
        {"max_tokens": 101},
        {"seed": 1},
        {"stop": None},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
        {"response_format": None},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
    ],
)
def test_fingerprint_changes_with_the_request(changes: dict[str, object]) -> None:
    changed = dataclasses.replace(REQUEST, **changes)  # type: ignore[arg-type]
    assert request_fingerprint(changed, base_url=None) != request_fingerprint(
        REQUEST, base_url=None
    )


def test_fingerprint_depends_on_endpoint_not_key(monkeypatch: pytest.MonkeyPatch) -> None:
    default = request_fingerprint(REQUEST, base_url=None)
    assert request_fingerprint(REQUEST, base_url="http://127.0.0.1:9/v1") != default
    assert request_fingerprint(REQUEST, base_url=None, provider="mock") != default
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert request_fingerprint(REQUEST, base_url=None) == default
    monkeypatch.setenv("OPENAI_API_KEY", KEY.replace("A", "B"))
    assert request_fingerprint(REQUEST, base_url=None) == default


# -- response cache -----------------------------------------------------------------------


def test_cache_put_and_get(store: RunStore) -> None:
    fp = request_fingerprint(REQUEST, base_url=None)
    assert store.cache_get(fp) is None
    response = ChatResponse(
        text='{"ok": true}',
        usage=Usage(20, 5, 10, 2),
        finish_reason="stop",
        model="gpt-4o-mini-2024-07-18",
        retries=2,
    )
    store.cache_put(fp, response)
    cached = store.cache_get(fp)
    assert cached == ChatResponse(
        text='{"ok": true}',
        usage=Usage(20, 5, 10, 2),
        finish_reason="stop",
        model="gpt-4o-mini-2024-07-18",
    )  # a cached answer took no transport retries
    store.cache_put(fp, ChatResponse(text="newer", usage=Usage(1, 1)))
    assert store.cache_get(fp) == ChatResponse(text="newer", usage=Usage(1, 1))
    with RunStore(store.path) as other:  # shared with other processes and later runs
        assert other.cache_get(fp) == ChatResponse(text="newer", usage=Usage(1, 1))


# -- security -----------------------------------------------------------------------------


def test_keys_never_reach_the_database(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    result = sample_run()
    result.inputs = {"topic": f"use {KEY}", KEY: "as a name", "nested": [{"k": KEY}]}
    outline = result.steps["outline"]
    outline.messages = [{"role": "user", "content": f"my key is {KEY}, Bearer {KEY[3:]}"}]
    outline.output = {"leak": KEY}
    outline.text = KEY
    outline.attempts[0].text = KEY
    outline.attempts[0].failures = [KEY]
    result.steps["polish"].error = f"401 for key {KEY}"
    result.outputs = {"title": KEY}
    store = RunStore(path)
    save(store, result, workflow_text=f"# {KEY}\nversion: 1\n")
    store.cache_put("fp", ChatResponse(text=f"here: {KEY}", usage=Usage()))

    wal = path.with_name(path.name + "-wal")
    assert wal.exists()  # the data sits in the WAL until a checkpoint
    needle = KEY.encode()
    for file in (path, wal):
        assert needle not in file.read_bytes()
        assert b"AAAAAAAAAAAAAAAAAAAAAAAA" not in file.read_bytes()
    assert b"[redacted key]" in path.read_bytes() + wal.read_bytes()

    loaded = store.load_run(result.run_id or "")
    assert loaded.inputs["topic"] == "use [redacted key]"
    assert loaded.steps["outline"].messages[0]["content"].count("[redacted key]") == 2
    store.close()
    assert needle not in path.read_bytes()
    assert not wal.exists() or needle not in wal.read_bytes()


def test_store_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "runs.sqlite3"
    RunStore(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


# -- durability and concurrency -----------------------------------------------------------


def test_wal_mode_and_pragmas(store: RunStore) -> None:
    conn = store._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    with sqlite3.connect(store.path) as plain:  # WAL is a property of the file
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert plain.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_abandoned_connection_keeps_recorded_steps(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    result = sample_run()
    crashed = RunStore(path)
    crashed.start_run("r1", workflow_name="w", workflow_text=None, workflow_path=None, inputs={})
    crashed.record_step("r1", result.steps["outline"], fingerprint="fp", price=PRICE)
    # No finish_run, no close: a second store on the same file sees the step.
    with RunStore(path) as second:
        loaded = second.load_run("r1")
        assert loaded.status == "running"
        assert loaded.steps["outline"] == result.steps["outline"]
        assert second.finished_steps("r1")["outline"][0] == "fp"


def _python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_right_after_record_step_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    child = _python(
        f"""
        import os, signal
        from decimal import Decimal
        from flowgpt.results import AttemptResult, StepResult
        from flowgpt.store.run_store import RunStore
        from flowgpt.usage import Usage
        store = RunStore({str(path)!r})
        store.start_run("r1", workflow_name="w", workflow_text="x", workflow_path=None,
                        inputs={{}}, steps=[StepResult(id="a"), StepResult(id="b")])
        step = StepResult(id="a", model="m", status="ok", output="done", text="done",
                          attempts=[AttemptResult("done", Usage(3, 4), Decimal("0.01"), 0.5)])
        store.record_step("r1", step, fingerprint="fp-a", price=None)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    _, err = child.communicate(timeout=30)
    assert child.returncode == -9, err
    with RunStore(path) as store:
        (summary,) = store.list_runs()
        # Its process is gone: the run reads as interrupted (never finished).
        assert (summary.status, summary.steps_done, summary.steps_total) == ("interrupted", 1, 2)
        assert summary.finished_at is None
        assert summary.cost_usd == Decimal("0.01")
        fingerprint, step = store.finished_steps("r1")["a"]
        assert (fingerprint, step.output, step.usage) == ("fp-a", "done", Usage(3, 4))
        loaded = store.load_run("r1")
        assert loaded.status == "interrupted"
        assert loaded.error == f"its process (pid {child.pid}) is gone: it was killed or crashed"
    with sqlite3.connect(path) as conn:  # reading changed nothing in the file
        assert conn.execute("SELECT status FROM runs").fetchone()[0] == "running"
    conn.close()


def _flowgpt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowgpt", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_run_of_a_process_that_is_gone_is_interrupted_and_of_a_live_one_running(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.sqlite3"
    # The child starts a run, then waits for its stdin to close, never finishing the run.
    code = f"""
        import sys
        from flowgpt.results import StepResult
        from flowgpt.store.run_store import RunStore
        store = RunStore({str(path)!r})
        store.start_run("r1", workflow_name="w", workflow_text="x", workflow_path=None,
                        inputs={{}}, steps=[StepResult(id="a")])
        print("started", flush=True)
        sys.stdin.read()
        """
    waiter = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiter.stdout is not None and waiter.stdout.readline() == "started\n"
        with RunStore(path) as store:
            assert store.run_summary("r1").status == "running"  # its process is alive
            assert store.load_run("r1").status == "running"
            assert store.load_run("r1").error is None
    finally:
        waiter.kill()
        waiter.communicate(timeout=30)
    with RunStore(path) as store:
        assert store.run_summary("r1").status == "interrupted"
    listed = _flowgpt("runs", "list", "--store", str(path))
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if "r1" in line]
    assert "interrupted" in row and "running" not in row
    as_json = json.loads(_flowgpt("runs", "list", "--json", "--store", str(path)).stdout)
    assert [(r["run_id"], r["status"], r["finished_at"]) for r in as_json] == [
        ("r1", "interrupted", None)
    ]
    shown = _flowgpt("runs", "show", "r1", "--store", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "w: interrupted" in shown.stdout
    assert f"error: its process (pid {waiter.pid}) is gone" in shown.stdout


def _set_owner(path: Path, run_id: str, **columns: object) -> None:
    with sqlite3.connect(path) as conn:
        for column, value in columns.items():
            conn.execute(f"UPDATE runs SET {column} = ? WHERE run_id = ?", (value, run_id))
    conn.close()


def test_who_runs_a_run_is_recorded_and_judged(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    with RunStore(path) as store:
        store.start_run("r1", workflow_name="w", workflow_text=None, workflow_path=None, inputs={})
    with sqlite3.connect(path) as conn:
        pid, host, proc_start = conn.execute("SELECT pid, host, proc_start FROM runs").fetchone()
    conn.close()
    assert (pid, host) == (os.getpid(), socket.gethostname())
    linux = Path("/proc/self/stat").exists()
    assert (proc_start is not None) == linux

    def status() -> str:
        with RunStore(path) as store:
            return store.run_summary("r1").status

    assert status() == "running"  # this process
    dead = _python("pass")
    dead.communicate(timeout=30)
    _set_owner(path, "r1", pid=dead.pid, proc_start=None)
    assert status() == "interrupted"
    _set_owner(path, "r1", host="another-machine")
    assert status() == "running"  # cannot know
    _set_owner(path, "r1", host=None, pid=None)
    assert status() == "running"  # recorded by schema 1: unknown
    if linux:
        # The pid is alive but is another process than the one recorded: pid reuse.
        _set_owner(path, "r1", host=host, pid=os.getpid(), proc_start="another-boot:1")
        assert status() == "interrupted"
        _set_owner(path, "r1", proc_start=proc_start)
        assert status() == "running"


def test_schema_1_store_is_upgraded_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript((REPO / "tests" / "data" / "store_schema_1.sql").read_text())
        conn.execute("INSERT INTO schema_version (id, version) VALUES (1, 1)")
        conn.execute(
            "INSERT INTO runs (run_id, workflow, status, started_at, finished_at, cost_usd,"
            " prompt_tokens, completion_tokens, inputs, outputs) VALUES"
            " ('old-ok', 'w', 'ok', '2026-01-01T00:00:00.000+00:00',"
            " '2026-01-01T00:00:01.000+00:00', '0.5', 10, 5, '{\"n\": 1}', '{}'),"
            " ('old-running', 'w', 'running', '2026-01-01T00:00:02.000+00:00', NULL, NULL,"
            " 0, 0, '{}', NULL)"
        )
        conn.execute(
            "INSERT INTO steps (run_id, step_id, position, status, finished_at, output)"
            " VALUES ('old-running', 'a', 0, 'ok', '2026-01-01T00:00:03.000+00:00', '\"A\"')"
        )
    conn.close()
    assert SCHEMA_VERSION == 3
    with RunStore(path) as store:
        summaries = {s.run_id: s for s in store.list_runs()}
        assert {r: s.status for r, s in summaries.items()} == {
            "old-ok": "ok",
            "old-running": "running",  # no pid recorded: stays running
        }
        assert summaries["old-ok"].cost_usd == Decimal("0.5")
        assert summaries["old-ok"].total_tokens == 15
        assert store.load_run("old-ok").inputs == {"n": 1}
        assert store.finished_steps("old-running")["a"][1].output == "A"
        assert summaries["old-ok"].provider is None  # unknown before schema 3
        store.start_run(
            "new",
            workflow_name="w",
            workflow_text=None,
            workflow_path=None,
            inputs={},
            provider="mock",
            batch="/data/out.jsonl",
            batch_row=7,
        )
        new = store.run_summary("new")
        assert new.status == "running"
        assert (new.provider, new.batch, new.batch_row) == ("mock", "/data/out.jsonl", 7)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == 3
        columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        assert {"pid", "host", "proc_start", "provider", "endpoint", "batch", "batch_row"} <= (
            columns
        )
        assert (
            conn.execute("SELECT pid FROM runs WHERE run_id = 'new'").fetchone()[0] == os.getpid()
        )
    conn.close()
    with RunStore(path) as again:  # opening an upgraded file again changes nothing
        assert len(again.list_runs()) == 3


def test_two_processes_write_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    RunStore(path).close()
    writer = """
        from flowgpt.providers.base import ChatResponse
        from flowgpt.results import StepResult
        from flowgpt.store.run_store import RunStore
        from flowgpt.usage import Usage
        run = "{run}"
        with RunStore({path!r}) as store:
            store.start_run(run, workflow_name="w", workflow_text=None, workflow_path=None,
                            inputs={{}})
            for i in range(60):
                store.record_step(run, StepResult(id=f"s{{i}}", status="ok", output=i),
                                  fingerprint=None, price=None)
                store.cache_put(f"{{run}}-{{i}}", ChatResponse(text=str(i), usage=Usage()))
        """
    children = [_python(writer.format(run=run, path=str(path))) for run in ("p1", "p2")]
    # ... and this process writes too, from several threads at once.
    with RunStore(path) as store:
        store.start_run(
            "main", workflow_name="w", workflow_text=None, workflow_path=None, inputs={}
        )

        def work(offset: int) -> None:
            for i in range(offset, offset + 15):
                store.record_step(
                    "main", StepResult(id=f"s{i}", status="ok"), fingerprint=None, price=None
                )

        threads = [threading.Thread(target=work, args=(n * 15,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for child in children:
            _, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
        summaries = {s.run_id: s for s in store.list_runs()}
        assert {r: (s.steps_done, s.steps_total) for r, s in summaries.items()} == {
            "p1": (60, 60),
            "p2": (60, 60),
            "main": (60, 60),
        }
        assert store.load_run("p2").steps["s59"].output == 59
        assert store.cache_get("p1-59") is not None


def test_unusable_files_are_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the run store") as bad:
        RunStore(garbage)
    # The library says what to do in its own terms; the command line adds its options.
    from flowgpt.cli._common import _cli_format

    assert "FLOWGPT_STORE" in bad.value.format() and "--no-store" not in bad.value.format()
    assert "--no-store" in _cli_format(bad.value)

    newer = tmp_path / "newer.sqlite3"
    RunStore(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer flowgpt"):
        RunStore(newer)

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the run store"):
        RunStore(blocker / "runs.sqlite3")


# -- where the store lives ----------------------------------------------------------------


def test_default_store_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLOWGPT_STORE", str(tmp_path / "mine.db"))
    assert default_store_path() == tmp_path / "mine.db"
    with RunStore() as store:
        assert store.path == tmp_path / "mine.db"
    assert (tmp_path / "mine.db").exists()

    monkeypatch.delenv("FLOWGPT_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_store_path() == tmp_path / "data" / "flowgpt" / "runs.sqlite3"

    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "share" / "flowgpt" / "runs.sqlite3"
    assert default_store_path() == expected
