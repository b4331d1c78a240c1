"""Batches: `Engine.run_batch` and `flowgpt batch` (rows, output, resume, budget, limits)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flowgpt import Engine, MockProvider, ServerError, parse_workflow
from flowgpt.engine.data import BatchOutput, BatchRowResult, read_rows
from flowgpt.providers.base import ChatRequest, ChatResponse, OnText
from flowgpt.usage import Usage
from tests.support.fake_openai import FakeOpenAI, Fault, Reply

ROOT = Path(__file__).resolve().parent.parent
BATCH_ARGS = ("--data", "rows.jsonl", "--out", "out.jsonl", "--concurrency", "4")

WF = """\
version: 1
name: two-steps
defaults: {model: gpt-4o-mini, max_tokens: 50}
pricing:
  gpt-4o-mini: {input: 1.0, output: 2.0}
inputs:
  topic: {type: string}
  n: {type: integer, default: 1}
steps:
  - id: first
    prompt: "First about {{ inputs.topic }} ({{ inputs.n }})."
  - id: second
    prompt: "Second after: {{ steps.first.text }}"
outputs:
  answer: "{{ steps.second.text }}"
"""


class Counting:
    """A provider that tracks requests in flight and fails rows whose topic says so."""

    name = "counting"
    model_is_label = False

    def __init__(self, latency_s: float = 0.01) -> None:
        self.latency_s = latency_s
        self.in_flight = self.most = self.calls = 0

    async def complete(
        self, request: ChatRequest, *, on_text: OnText | None = None
    ) -> ChatResponse:
        self.calls += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s)
            if "boom" in request.messages[-1]["content"]:
                raise ServerError("the server broke (500)")
            return ChatResponse(text="fine", usage=Usage(prompt_tokens=10, completion_tokens=5))
        finally:
            self.in_flight -= 1

    def resolved_base_url(self) -> None:
        return None

    async def aclose(self) -> None:
        pass


async def _collect(engine: Engine, rows: Any, **kw: Any) -> list[BatchRowResult]:
    return [r async for r in engine.run_batch(parse_workflow(WF), rows, **kw)]


def test_rows_share_one_request_limit_and_a_failed_row_does_not_stop_the_rest() -> None:
    provider = Counting()
    rows = [{"topic": "boom" if i == 7 else f"t{i}"} for i in range(1, 31)]
    results = asyncio.run(_collect(Engine(provider=provider), rows, concurrency=4))
    by_row = {r.row: r for r in results}
    assert sorted(by_row) == list(range(1, 31))  # every row exactly once
    # Rows run concurrently, yet never more than 4 requests at once across all rows.
    assert provider.most == 4
    failed = [r for r in results if not r.ok]
    assert [r.row for r in failed] == [7]
    assert "500" in (failed[0].error or "")
    ok = by_row[1]
    assert ok.outputs == {"answer": "fine"}
    assert ok.usage == Usage(prompt_tokens=20, completion_tokens=10)
    # 20 prompt tokens at $1/M + 10 completion tokens at $2/M
    assert ok.cost_usd == Decimal("0.00004")
    assert provider.calls == 29 * 2 + 1  # the failed row's second step never ran


def test_rows_come_back_as_they_finish_not_all_at_the_end() -> None:
    class Slow(Counting):
        async def complete(
            self, request: ChatRequest, *, on_text: OnText | None = None
        ) -> ChatResponse:
            if "slow" in request.messages[-1]["content"]:
                await asyncio.sleep(0.5)
            return await super().complete(request)

    async def go() -> list[tuple[int, float]]:
        started = time.perf_counter()
        seen = []
        rows = [{"topic": "slow"}, *({"topic": f"t{i}"} for i in range(5))]
        async for r in Engine(provider=Slow()).run_batch(parse_workflow(WF), rows, concurrency=3):
            seen.append((r.row, time.perf_counter() - started))
        return seen

    seen = asyncio.run(go())
    assert seen[-1][0] == 1  # the slow row finishes last ...
    assert seen[0][1] < 0.4  # ... and the others were handed over before it finished


def test_the_batch_budget_is_shared_by_all_rows_and_stops_new_rows() -> None:
    provider = Counting(latency_s=0)
    # Each call's worst case: ~15 prompt tokens at $1/M + 50 completion at $2/M ≈ $0.000115.
    limit = Decimal("0.001")
    rows = [{"topic": f"t{i}"} for i in range(100)]
    results = asyncio.run(
        _collect(Engine(provider=provider), rows, concurrency=2, max_cost_usd=limit)
    )
    spent = sum((r.cost_usd or Decimal(0)) for r in results)
    assert spent <= limit
    assert 0 < len([r for r in results if r.ok]) < 100
    # The refused row is reported, and no row was started after the refusal.
    assert len(results) < 100
    assert any("batch's budget" in (r.error or "") for r in results)


def test_skip_leaves_out_rows_already_done() -> None:
    provider = Counting(latency_s=0)
    rows = [{"topic": f"t{i}"} for i in range(1, 6)]
    results = asyncio.run(_collect(Engine(provider=provider), rows, skip={2, 4}))
    assert sorted(r.row for r in results) == [1, 3, 5]
    assert provider.calls == 6


def test_read_rows_of_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"topic": "tea", "n": 2}\n\n{"topic": "coffee"}\n', encoding="utf-8")
    assert [(r.number, r.line, r.inputs) for r in read_rows(jsonl)] == [
        (1, 1, {"topic": "tea", "n": 2}),
        (2, 3, {"topic": "coffee"}),
    ]
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text('topic,n\n"tea, green",3\n绿茶,4\n', encoding="utf-8")
    rows = list(read_rows(csv_file))
    assert [r.inputs for r in rows] == [
        {"topic": "tea, green", "n": "3"},
        {"topic": "绿茶", "n": "4"},
    ]
    assert all(r.from_text for r in rows)  # converted like -i key=value: "3" -> 3


def test_output_keeps_done_rows_and_drops_failed_and_torn_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"

    def line(row: int, status: str, topic: str) -> str:
        result = BatchRowResult(row, {"topic": topic}, "ok" if status == "ok" else "failed")
        return json.dumps(result.to_dict("two-steps"))

    out.write_text(
        line(1, "ok", "a")
        + "\n"
        + line(2, "failed", "b")
        + "\n"
        + line(3, "ok", "c")
        + '\n{"row": 4, "sta',
        encoding="utf-8",
    )
    with BatchOutput(out, "two-steps") as output:
        assert set(output.done) == {1, 3}
        assert output.dropped == 2
    kept = [json.loads(x)["row"] for x in out.read_text(encoding="utf-8").splitlines()]
    assert kept == [1, 3]


# -- the command ---------------------------------------------------------------------------


def _env(server: FakeOpenAI, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")},
        "OPENAI_API_KEY": "sk-test-batch-0000000000000000",
        "OPENAI_BASE_URL": server.base_url,
        **extra,
    }


def _batch(
    tmp_path: Path, env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowgpt", "batch", str(tmp_path / "wf.yaml"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=timeout,
    )


def _rows_in(path: Path) -> Counter[int]:
    return Counter(json.loads(x)["row"] for x in path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_batch_run_again_has_every_row_exactly_once(
    tmp_path: Path, how: signal.Signals
) -> None:
    (tmp_path / "wf.yaml").write_text(WF, encoding="utf-8")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"topic": f"t{i}"}) + "\n" for i in range(60)))
    out = tmp_path / "out.jsonl"
    with FakeOpenAI(latency_ms=40) as server:
        env = _env(server)
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowgpt", "batch", "wf.yaml", *BATCH_ARGS],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        deadline = time.monotonic() + 60
        while not out.exists() or len(out.read_bytes().splitlines()) < 10:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(how)  # SIGKILL: nothing gets to clean up; SIGINT: Ctrl-C
        _, err = proc.communicate(timeout=30)
        if how == signal.SIGINT:
            assert proc.returncode == 130
            assert b"run the same command again" in err and b"Traceback" not in err
        first = _rows_in(out)
        assert 10 <= len(first) < 60
        sent_before = len(server.chat_requests)
        again = _batch(tmp_path, env, "--data", "rows.jsonl", "--out", "out.jsonl")
        sent_again = len(server.chat_requests) - sent_before
    assert again.returncode == 0, again.stderr
    rows = _rows_in(out)
    assert rows == Counter(range(1, 61))  # every row, exactly once
    assert f"{len(first)} already done" in again.stderr
    # Only the rows not done were sent again (at most the few cut off mid-row re-run step 1).
    assert sent_again <= (60 - len(first)) * 2 + 4 * 2
    docs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert all(d["status"] == "ok" and d["outputs"]["answer"] for d in docs)


def test_batch_retries_failed_rows_when_run_again(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WF, encoding="utf-8")
    (tmp_path / "rows.csv").write_text("topic,n\ntea,1\nbad,2\ncoffee,3\n", encoding="utf-8")
    broken = {"on": True}

    def responder(body: dict[str, Any]) -> Reply | Fault:
        if broken["on"] and "bad" in body["messages"][-1]["content"]:
            return Fault.bad_request("nope")  # a 400 is not retried: the row fails at once
        return Reply("answer")

    with FakeOpenAI(responder=responder) as server:
        env = _env(server)
        first = _batch(tmp_path, env, "--data", "rows.csv", "--out", "out.jsonl")
        assert first.returncode == 1
        assert "1 rows failed" in first.stderr and "Traceback" not in first.stderr
        docs = {
            d["row"]: d for d in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())
        }
        assert docs[2]["status"] == "failed" and "nope" in docs[2]["error"]
        # CSV text is converted by the declared types: --out holds the values the run used
        assert docs[3]["inputs"] == {"topic": "coffee", "n": 3}
        broken["on"] = False
        second = _batch(tmp_path, env, "--data", "rows.csv", "--out", "out.jsonl")
    assert second.returncode == 0, second.stderr
    assert _rows_in(tmp_path / "out.jsonl") == Counter([1, 2, 3])
    assert "2 already done" in second.stderr


def test_bad_rows_are_refused_before_any_call(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WF, encoding="utf-8")
    (tmp_path / "rows.csv").write_text("topic,n\ntea,1\ncoffee,many\n", encoding="utf-8")
    with FakeOpenAI() as server:
        done = _batch(tmp_path, _env(server), "--data", "rows.csv", "--out", "out.jsonl")
        assert server.chat_requests == []
    assert done.returncode == 2
    assert "rows.csv:3" in done.stderr and "row 2" in done.stderr and "`n`" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_changed_data_is_not_mixed_into_an_old_output(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WF, encoding="utf-8")
    data = tmp_path / "rows.jsonl"
    data.write_text('{"topic": "tea"}\n{"topic": "coffee"}\n', encoding="utf-8")
    env = {**os.environ}
    assert (
        _batch(tmp_path, env, "--data", "rows.jsonl", "--out", "o.jsonl", "--mock").returncode == 0
    )
    data.write_text('{"topic": "milk"}\n{"topic": "coffee"}\n', encoding="utf-8")
    again = _batch(tmp_path, env, "--data", "rows.jsonl", "--out", "o.jsonl", "--mock")
    assert again.returncode == 2
    assert "row 1 was done with other inputs" in again.stderr and "new --out" in again.stderr


def test_batch_max_cost_stops_and_a_higher_limit_continues(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WF, encoding="utf-8")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"topic": f"t{i}"}) + "\n" for i in range(30)))
    env = {**os.environ}
    args = ("--data", "rows.jsonl", "--out", "o.jsonl", "--mock", "--concurrency", "2")
    first = _batch(tmp_path, env, *args, "--max-cost", "0.001")
    assert first.returncode == 1, first.stderr
    assert "stopped by the batch budget" in first.stderr
    docs = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert sum(Decimal(d["cost_usd"]) for d in docs) <= Decimal("0.001")
    second = _batch(tmp_path, env, *args, "--max-cost", "1")
    assert second.returncode == 0, second.stderr
    assert _rows_in(tmp_path / "o.jsonl") == Counter(range(1, 31))


def test_mock_batch_writes_a_line_per_row_with_inputs_outputs_cost_and_status(
    tmp_path: Path,
) -> None:
    (tmp_path / "wf.yaml").write_text(WF, encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text('{"topic": "tea", "n": 3}\n', encoding="utf-8")
    done = _batch(tmp_path, {**os.environ}, "--data", "rows.jsonl", "--out", "o.jsonl", "--mock")
    assert done.returncode == 0, done.stderr
    (doc,) = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert doc["row"] == 1 and doc["status"] == "ok" and doc["error"] is None
    assert doc["inputs"] == {"topic": "tea", "n": 3}
    assert set(doc["outputs"]) == {"answer"}
    assert Decimal(doc["cost_usd"]) > 0 and doc["usage"]["prompt_tokens"] > 0
    assert "1 rows run: 1 ok, 0 failed" in done.stderr


def test_mock_provider_is_not_needed_for_the_library_path() -> None:
    # The mock works through run_batch too (users test their batches offline).
    results = asyncio.run(_collect(Engine(provider=MockProvider()), [{"topic": "tea"}]))
    assert results[0].ok and results[0].outputs and results[0].cost_usd is not None


def test_batch_rows_are_runs_in_the_store(tmp_path: Path) -> None:
    # Each row's run is recorded like any run: its run_id in --out leads to its steps, and
    # the store knows which batch and row it was and who answered.
    from flowgpt.store import RunStore

    (tmp_path / "wf.yaml").write_text(WF, encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text('{"topic": "tea"}\n{"topic": "milk"}\n')
    store = tmp_path / "runs.sqlite3"
    args = ("--data", "rows.jsonl", "--out", "o.jsonl", "--mock", "--store", str(store))
    done = _batch(tmp_path, {**os.environ}, *args)
    assert done.returncode == 0, done.stderr
    docs = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    with RunStore(store) as runs:
        for doc in docs:
            summary = runs.run_summary(doc["run_id"])
            assert summary.status == "ok" and summary.provider == "mock"
            assert summary.batch == str((tmp_path / "o.jsonl").resolve())
            assert summary.batch_row == doc["row"]
            run = runs.load_run(doc["run_id"])
            assert run.inputs == doc["inputs"]
            assert run.steps["second"].text == doc["outputs"]["answer"]
    nothing = tmp_path / "none.sqlite3"
    again = _batch(
        tmp_path,
        {**os.environ},
        "--data",
        "rows.jsonl",
        "--out",
        "p.jsonl",
        "--mock",
        "--no-store",
        "--store",
        str(nothing),
    )
    assert again.returncode == 0 and not nothing.exists()
