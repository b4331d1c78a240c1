"""`flowgpt batch --batch-api` and `Engine.run_batch_api`: a workflow over rows through
OpenAI's Batch API, stage by stage, exactly once, at batch rates.

Everything goes through the real openai SDK against tests/support/fake_openai.py with
tests/support/fake_batches.py (/v1/files, /v1/batches), which answers a batch's lines the
way its chat endpoint answers (the same responder), in shuffled order.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowgpt import Engine, parse_workflow
from flowgpt.accounting.estimate import estimate
from flowgpt.cli import main
from flowgpt.engine.batch_api import cancel_batches
from flowgpt.engine.data import BatchRowResult, workflow_version
from flowgpt.errors import (
    InputError,
    MalformedResponseError,
    QuotaExceededError,
    RateLimitError,
    SpecError,
)
from flowgpt.providers.base import ChatRequest
from flowgpt.providers.batches import BatchInfo, split_lines
from flowgpt.providers.openai import OpenAIProvider
from flowgpt.providers.openai_batches import OpenAIBatches
from flowgpt.spec.loader import load_workflow
from flowgpt.spec.output import repair_message
from flowgpt.store.batch_journal import BatchJournal, LineRecord, SubmissionRecord
from flowgpt.store.run_store import RunStore
from tests.support.fake_batches import FakeBatches
from tests.support.fake_openai import FakeOpenAI, Fault, Reply

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-batchapi-000000000000000"

# A JSON step, then two steps that depend on it, on two models.
WF = """\
version: 1
name: stages
defaults: {model: gpt-4o-mini, max_tokens: 40}
pricing:
  gpt-4o-mini: {input: 1.0, output: 2.0}
  gpt-4o: {input: 5.0, output: 20.0}
inputs:
  topic: {type: string}
steps:
  - id: plan
    prompt: "Plan {{ inputs.topic }}"
    output:
      format: json
      schema:
        type: object
        required: [echo]
        properties: {echo: {type: string}}
  - id: short
    prompt: "Short note on {{ steps.plan.output.echo }}"
  - id: long
    model: gpt-4o
    prompt: "Long note on {{ steps.plan.output.echo }}"
outputs:
  short: "{{ steps.short.text }}"
  long: "{{ steps.long.text }}"
"""
STEPS = ("plan", "short", "long")
# The key read from another variable than OPENAI_API_KEY (set by the test).
_GATEWAY = "provider: {api_key_env: GATEWAY_KEY}\n"


@pytest.fixture
def server() -> Iterator[tuple[FakeOpenAI, FakeBatches]]:
    with FakeOpenAI() as fake:
        yield fake, FakeBatches(fake)


@pytest.fixture
def cli_env(
    server: tuple[FakeOpenAI, FakeBatches], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": server[0].base_url,
        "FLOWGPT_STORE": str(tmp_path / "runs.sqlite3"),
        "FLOWGPT_BATCH_POLL_S": "0.005",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _files(tmp_path: Path, rows: int, workflow: str = WF) -> None:
    (tmp_path / "wf.yaml").write_text(workflow, encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text(
        "".join(json.dumps({"topic": f"t{i}"}) + "\n" for i in range(1, rows + 1)),
        encoding="utf-8",
    )


def _batch(tmp_path: Path, *args: str, out: str = "out.jsonl") -> Result:
    wf, data, target = (str(tmp_path / n) for n in ("wf.yaml", "rows.jsonl", out))
    return CliRunner().invoke(main, ["batch", wf, "--data", data, "--out", target, *args])


def _out(tmp_path: Path, name: str = "out.jsonl") -> dict[int, dict[str, Any]]:
    docs = [json.loads(x) for x in (tmp_path / name).read_text(encoding="utf-8").splitlines()]
    rows = Counter(d["row"] for d in docs)
    assert all(n == 1 for n in rows.values()), f"a row written twice: {rows}"
    return {d["row"]: d for d in docs}


def _row_steps(custom_ids: list[str]) -> Counter[tuple[int, str]]:
    """(row, step) of each custom_id ``row/step/attempt/n``."""
    return Counter((int(c.split("/")[0]), c.split("/")[1]) for c in custom_ids)


def _made(batches: FakeBatches) -> list[tuple[str, str]]:
    """(round, model) of every batch made, sorted."""
    return sorted(
        (b["metadata"]["flowgpt_round"], str(b["model"])) for b in batches.batches.values()
    )


STAGED = [("1", "gpt-4o-mini"), ("2", "gpt-4o"), ("2", "gpt-4o-mini")]


def _dollars(text: str, what: str) -> Decimal:
    """A dollar figure of the summary line."""
    summary = next(line for line in text.splitlines() if " rows run: " in line)
    found = re.search(rf"\$([0-9.]+) {what}", summary)
    assert found is not None, f"no '$... {what}' in: {text}"
    return Decimal(found.group(1))


# -- the same run, through batches -------------------------------------------------------


def test_batch_api_gives_the_synchronous_outputs_at_half_the_price(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    fake, batches = server
    _files(tmp_path, rows=6)
    sync = _batch(tmp_path, out="sync.jsonl")
    assert sync.exit_code == 0, sync.output
    chat_calls = len(fake.chat_requests)
    assert chat_calls == 6 * 3

    done = _batch(tmp_path, "--batch-api", out="api.jsonl")
    assert done.exit_code == 0, done.output

    # no synchronous chat call; one batch per stage and model
    assert len(fake.chat_requests) == chat_calls
    assert _made(batches) == STAGED
    assert _row_steps(batches.sent()) == Counter(
        {(row, step): 1 for row in range(1, 7) for step in STEPS}
    )
    # the same outputs, row by row
    by_sync, by_api = _out(tmp_path, "sync.jsonl"), _out(tmp_path, "api.jsonl")
    assert set(by_api) == set(range(1, 7))
    for row, doc in by_api.items():
        assert doc["status"] == "ok"
        assert doc["outputs"] == by_sync[row]["outputs"]
        assert doc["usage"] == by_sync[row]["usage"]
        # half of what the synchronous run paid for the same tokens
        assert Decimal(doc["cost_usd"]) * 2 == Decimal(by_sync[row]["cost_usd"])
    total_sync = sum(Decimal(d["cost_usd"]) for d in by_sync.values())
    assert _dollars(done.output, "at Batch API rates") * 2 == total_sync
    assert _dollars(done.output, "synchronously") == total_sync
    # progress said which stage, which batches and how far
    assert "stage 1/2 (round 1: plan): submitted batch_" in done.output
    assert "stage 2/2 (round 2: long, short)" in done.output
    assert "rows 6/6 done, 0 failed" in done.output


def test_the_same_semantics_as_a_synchronous_run(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    """for_each items, a schema-invalid reply repaired in a later round, when, history."""
    fake, batches = server
    workflow = parse_workflow(
        """\
version: 1
name: semantics
defaults: {model: gpt-4o-mini, max_tokens: 60}
pricing:
  gpt-4o-mini: {input: 1.0, output: 2.0}
inputs:
  topic: {type: string}
  n: {type: integer}
steps:
  - id: plan
    prompt: "List parts of {{ inputs.topic }}"
    output:
      format: json
      retries: 1
      schema:
        type: object
        required: [parts]
        properties: {parts: {type: array, items: {type: string}, minItems: 2}}
  - id: part
    for_each: steps.plan.output.parts
    as: p
    prompt: "Write about {{ p }}"
  - id: extra
    when: inputs.n > 1
    prompt: "Extra for {{ inputs.topic }}"
  - id: again
    history: plan
    prompt: "Now in one word."
outputs:
  parts: "{{ steps.part.output }}"
  extra: "{{ steps.extra.output }}"
  again: "{{ steps.again.text }}"
"""
    )

    def responder(body: dict[str, Any]) -> Reply:
        said = " ".join(str(m["content"]) for m in body["messages"])
        if body.get("response_format"):
            if "did not pass validation" not in said:
                return Reply(json.dumps({"parts": "not a list"}))  # repaired next round
            topic = said.split("List parts of ")[1].split()[0]
            return Reply(json.dumps({"parts": [f"{topic}-a", f"{topic}-b", f"{topic}-c"]}))
        return Reply(f"Re: {body['messages'][-1]['content']}")

    fake.responder = responder
    rows = [{"topic": "tea", "n": 1}, {"topic": "milk", "n": 2}]

    async def both(tmp: Path) -> tuple[list[BatchRowResult], list[BatchRowResult]]:
        async with Engine(store=RunStore(tmp / "runs.sqlite3")) as engine:
            sync = [r async for r in engine.run_batch(workflow, rows)]
            chat_calls = len(fake.chat_requests)
            run = engine.run_batch_api(workflow, rows, job="semantics", poll_interval_s=0.005)
            api = [r async for r in run]
            assert len(fake.chat_requests) == chat_calls  # nothing synchronous
            assert run.outcome == "done" and run.round == 3
        return sync, api

    with_sync, with_api = asyncio.run(both(tmp_path))
    assert [r.status for r in with_sync] == ["ok", "ok"], [r.error for r in with_sync]
    assert [r.status for r in with_api] == ["ok", "ok"], [r.error for r in with_api]
    assert {r.row: r.outputs for r in with_api} == {r.row: r.outputs for r in with_sync}
    first = with_api[0].outputs or {}
    assert first["parts"] == [
        "Re: Write about tea-a",
        "Re: Write about tea-b",
        "Re: Write about tea-c",
    ]
    assert first["extra"] is None and with_api[1].outputs["extra"]  # type: ignore[index]
    sent = batches.sent()
    # round 1: the plans (rejected) and `extra` (needs no step); round 2: the repairs;
    # round 3: the for_each items, a line each, and `again` (continues the plan's talk)
    assert {c for c in sent if c.startswith("1/")} == {
        "1/plan/0/0",
        "1/plan/1/0",
        "1/part[0]/0/0",
        "1/part[1]/0/0",
        "1/part[2]/0/0",
        "1/again/0/0",
    }
    assert "2/extra/0/0" in sent and not any(c.startswith("1/extra") for c in sent)
    repair = next(
        line
        for batch_id in batches.lines
        for line in batches._bodies[batch_id]
        if line["custom_id"] == "1/plan/1/0"
    )
    # structured outputs, as a synchronous call asks for them
    assert repair["body"]["response_format"]["type"] == "json_schema"
    assert repair["body"]["max_tokens"] == 60
    feedback = repair["body"]["messages"][-1]["content"]
    assert feedback.startswith(repair_message(["x"], None).split("\n")[0])
    assert "is not of type 'array'" in feedback
    assert with_api[0].result is not None
    assert with_api[0].result.steps["plan"].n_attempts == 2
    assert with_api[0].cost_usd is not None and with_sync[0].cost_usd is not None
    assert with_api[0].cost_usd * 2 == with_sync[0].cost_usd


def test_rows_beyond_rows_at_once_start_as_others_finish(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    _, batches = server
    rows = [{"topic": f"t{i}"} for i in range(1, 6)]

    async def go() -> tuple[list[BatchRowResult], int]:
        async with Engine(store=RunStore(tmp_path / "runs.sqlite3")) as engine:
            run = engine.run_batch_api(
                parse_workflow(WF), rows, job="window", poll_interval_s=0.005, rows_at_once=2
            )
            return [r async for r in run], run.round

    done, rounds = asyncio.run(go())
    assert sorted(r.row for r in done) == [1, 2, 3, 4, 5] and all(r.ok for r in done)
    assert rounds == 6  # rows 1-2, then 3-4, then 5: two stages each
    first_round = [c for b, ids in batches.lines.items() for c in ids][:2]
    assert sorted(first_round) == ["1/plan/0/0", "2/plan/0/0"]
    assert _row_steps(batches.answered) == Counter(
        {(row, step): 1 for row in range(1, 6) for step in STEPS}
    )


# -- exactly once ------------------------------------------------------------------------


def _subprocess_env(fake: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")},
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": fake.base_url,
        "FLOWGPT_STORE": str(tmp_path / "runs.sqlite3"),
        "FLOWGPT_BATCH_POLL_S": "0.005",
    }


@pytest.mark.parametrize("when", ["creating", "waiting"])
def test_killed_after_the_second_stage_is_submitted_the_same_command_finishes_exactly_once(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], when: str
) -> None:
    fake, batches = server
    _files(tmp_path, rows=5)
    # Round 1: row 2's plan fails (500), row 3's expires; both are sent again in round 2.
    batches.fail = lambda cid, body: Fault.server_error() if cid == "2/plan/0/0" else None
    batches.expire = lambda cid, body: cid == "3/plan/0/0"
    command = [sys.executable, "-m", "flowgpt", "batch", "wf.yaml", "--data", "rows.jsonl",
               "--out", "out.jsonl", "--batch-api"]  # fmt: skip
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=_subprocess_env(fake, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    killed: list[str] = []

    def kill(batch: dict[str, Any]) -> None:
        if batch["metadata"].get("flowgpt_round") == "2" and not killed:
            # SIGKILL: nothing gets to clean up. While creating, the batch exists but the
            # client never hears its id; while waiting, its id is recorded.
            killed.append(batch["id"])
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

    if when == "creating":
        batches.on_create = kill
    else:
        batches.on_retrieve = kill
    _, err = proc.communicate(timeout=60)
    assert killed and proc.returncode == -signal.SIGKILL, err.decode()
    batches.on_create = batches.on_retrieve = None
    made_before = len(batches.batches)
    assert not (tmp_path / "out.jsonl").exists() or _out(tmp_path) == {}

    again = subprocess.run(
        command,
        cwd=tmp_path,
        env=_subprocess_env(fake, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    rows = _out(tmp_path)
    assert set(rows) == {1, 2, 3, 4, 5} and all(d["status"] == "ok" for d in rows.values())
    # every (row, step) answered successfully exactly once, and no line sent twice
    assert _row_steps(batches.answered) == Counter(
        {(row, step): 1 for row in range(1, 6) for step in STEPS}
    )
    assert all(n == 1 for n in Counter(batches.sent()).values())
    assert {"2/plan/0/1", "3/plan/0/1"} <= set(batches.sent())  # the retries
    # the batch made when the process died was taken up, not made again
    round_2 = [b for b in batches.batches.values() if b["metadata"]["flowgpt_round"] == "2"]
    assert killed[0] in {b["id"] for b in round_2}
    assert len(round_2) == 2  # one per model: gpt-4o-mini (retries + short), gpt-4o (long)
    # Killed while creating round 2's first batch (gpt-4o), or once both were made; the
    # second run made only the rest: round 2's other batch if missing, and round 3 (short
    # and long of rows 2 and 3, whose plans were sent again in round 2). None twice.
    assert made_before == (2 if when == "creating" else 3)
    assert _made(batches) == [*STAGED, ("3", "gpt-4o"), ("3", "gpt-4o-mini")]
    assert len(fake.chat_requests) == 0


def test_a_lost_create_response_does_not_make_a_second_batch(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    _, batches = server
    _files(tmp_path, rows=2)
    lost: list[str] = []

    def drop(batch: dict[str, Any]) -> None:
        if not lost:
            lost.append(batch["id"])
            raise ConnectionResetError  # the batch exists; its answer never arrives

    batches.on_create = drop
    done = _batch(tmp_path, "--batch-api")
    assert done.exit_code == 0, done.output
    assert lost and lost[0] in batches.batches
    assert _made(batches) == STAGED  # none made twice
    assert _row_steps(batches.answered) == Counter(
        {(row, step): 1 for row in (1, 2) for step in STEPS}
    )


def test_a_refused_line_fails_its_row_the_others_go_on_and_running_again_retries_it(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    _, batches = server
    _files(tmp_path, rows=3)
    batches.fail = lambda cid, body: (
        Fault.bad_request("no such thing") if cid.startswith("2/long/") else None
    )
    first = _batch(tmp_path, "--batch-api")
    assert first.exit_code == 1
    rows = _out(tmp_path)
    assert [rows[n]["status"] for n in (1, 2, 3)] == ["ok", "failed", "ok"]
    assert "no such thing" in rows[2]["error"] and "1 rows failed" in first.output
    assert "2/long/0/0" in batches.sent()

    batches.fail = None
    second = _batch(tmp_path, "--batch-api")
    assert second.exit_code == 0, second.output
    assert "2 already done" in second.output
    assert _out(tmp_path)[2]["status"] == "ok"
    # the failed row went on from its failed step, as a synchronous batch's row does (the
    # steps it finished reused at $0 from its run in the store); the others not again
    assert Counter(c.split("/")[0] for c in batches.sent()) == Counter({"1": 3, "3": 3, "2": 4})
    assert [c for c in batches.sent() if c.startswith("2/")][-1].startswith("2/long/")
    with RunStore(cli_env["FLOWGPT_STORE"]) as store:
        latest = store.latest_batch_run(str(tmp_path / "out.jsonl"), 2)
        assert latest is not None
        steps = store.load_run(latest).steps
    assert {sid: s.status for sid, s in steps.items()} == {
        "plan": "reused",
        "short": "reused",
        "long": "ok",
    }


def test_a_refused_batch_fails_its_rows_with_the_reason_and_a_full_queue_is_tried_again(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    _, batches = server
    _files(tmp_path, rows=2)
    full = {"times": 1}

    def refuse(lines: list[dict[str, Any]]) -> tuple[str, str] | None:
        if lines[0]["body"]["model"] == "gpt-4o":
            return "invalid_request", "this project may not use gpt-4o in batches"
        if full["times"]:  # the first batch meets a full queue, then goes through
            full["times"] -= 1
            return "token_limit_exceeded", "Enqueued token limit reached for gpt-4o-mini"
        return None

    batches.refuse = refuse
    done = _batch(tmp_path, "--batch-api")
    assert done.exit_code == 1, done.output
    rows = _out(tmp_path)
    assert [rows[n]["status"] for n in (1, 2)] == ["failed", "failed"]
    assert "may not use gpt-4o in batches" in rows[1]["error"]
    assert {"1/plan/0/0", "1/plan/0/1"} <= set(batches.sent())  # the full queue: again
    assert _row_steps(batches.answered) == Counter(
        {(row, step): 1 for row in (1, 2) for step in ("plan", "short")}
    )


def test_waiting_outlasts_a_network_blip(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    _, batches = server
    # No transport retries: the dropped look at the batch reaches flowgpt itself.
    _files(
        tmp_path, rows=2, workflow=WF.replace("pricing:", "provider: {max_retries: 0}\npricing:")
    )
    blips = {"left": 1}

    def blip(batch: dict[str, Any]) -> None:
        if blips["left"]:
            blips["left"] -= 1
            raise ConnectionResetError  # the look fails; the batch goes on

    batches.on_retrieve = blip
    done = _batch(tmp_path, "--batch-api")
    assert done.exit_code == 0, done.output
    assert "warning: Could not reach" in done.output and "(looking again later)" in done.output
    assert set(_out(tmp_path)) == {1, 2}


# -- no-wait, cancel, budget -------------------------------------------------------------


def test_no_wait_submits_the_current_stage_and_says_how_to_continue(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    _, batches = server
    _files(tmp_path, rows=3)
    batches.hold = True
    first = _batch(tmp_path, "--batch-api", "--no-wait")
    assert first.exit_code == 0, first.output
    assert len(batches.batches) == 1 and not (tmp_path / "out.jsonl").read_text()
    assert "3 rows wait for 1 batch" in first.output
    assert "run the same command again to continue" in first.output
    assert re.search(r"flowgpt batch \S*wf.yaml .*--batch-api --no-wait", first.output)

    still = _batch(tmp_path, "--batch-api", "--no-wait")  # in progress: nothing new sent
    assert still.exit_code == 0 and len(batches.batches) == 1
    assert "in_progress" in still.output

    batches.hold = False
    second = _batch(tmp_path, "--batch-api", "--no-wait")  # stage 1 ended: stage 2 goes out
    assert second.exit_code == 0, second.output
    assert _made(batches) == STAGED
    last = _batch(tmp_path, "--batch-api", "--no-wait")
    assert last.exit_code == 0, last.output
    assert set(_out(tmp_path)) == {1, 2, 3}
    assert all(n == 1 for n in Counter(batches.sent()).values())
    assert "3 rows run: 3 ok, 0 failed" in last.output


def test_cancel_cancels_the_batches_in_flight_and_running_again_continues(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    _, batches = server
    _files(tmp_path, rows=2)
    batches.hold = True
    assert _batch(tmp_path, "--batch-api", "--no-wait").exit_code == 0
    (first_batch,) = batches.batches

    cancel = _batch(tmp_path, "--batch-api", "--cancel")
    assert cancel.exit_code == 0, cancel.output
    assert "cancelling 1 batch:" in cancel.output and first_batch in cancel.output
    assert batches.batches[first_batch]["status"] == "cancelling"
    nothing = _batch(tmp_path, "--batch-api", "--cancel")
    assert "cancelled" in nothing.output  # already cancelled: said, not cancelled again

    batches.hold = False
    done = _batch(tmp_path, "--batch-api")
    assert done.exit_code == 0, done.output
    assert batches.batches[first_batch]["status"] == "cancelled"
    assert {"1/plan/0/1", "2/plan/0/1"} <= set(batches.sent())  # sent again, once
    assert _row_steps(batches.answered) == Counter(
        {(row, step): 1 for row in (1, 2) for step in STEPS}
    )
    again = _batch(tmp_path, "--batch-api", "--cancel")
    assert "no Batch API batches in flight" in again.output


def test_a_stage_whose_worst_case_passes_the_budget_is_not_submitted(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    _, batches = server
    rows = 4
    _files(tmp_path, rows=rows)
    worst = {
        s.id: s.worst_cost_usd
        for s in estimate(parse_workflow(WF), {"topic": "t1"}, batch=True).steps
    }
    assert all(w is not None for w in worst.values())
    stage_1 = rows * worst["plan"]  # type: ignore[operator]
    stage_2 = rows * (worst["short"] + worst["long"])  # type: ignore[operator]
    assert stage_2 > stage_1  # the limit below lets stage 1 through, not stage 2
    limit = f"{stage_1 * Decimal('1.2'):f}"

    stopped = _batch(tmp_path, "--batch-api", "--max-cost", limit)
    assert stopped.exit_code == 1, stopped.output
    assert "stopped by the batch budget" in stopped.output
    assert "the next stage was not submitted" in stopped.output
    assert len(batches.batches) == 1  # stage 1 only
    assert _out(tmp_path) == {}  # no row is written as failed: they wait for more money

    more = _batch(tmp_path, "--batch-api", "--max-cost", "1")
    assert more.exit_code == 0, more.output
    assert _made(batches) == STAGED  # stage 1 not again
    assert set(_out(tmp_path)) == set(range(1, rows + 1))


# -- smaller things ----------------------------------------------------------------------


def test_batch_files_are_split_at_the_line_and_byte_limits() -> None:
    lines = [b"x" * 10] * 7
    assert split_lines(lines, max_lines=3, max_bytes=1000) == [[0, 1, 2], [3, 4, 5], [6]]
    assert split_lines(lines, max_lines=50_000, max_bytes=25) == [[0, 1], [2, 3], [4, 5], [6]]
    assert split_lines([], 3, 10) == []
    with pytest.raises(SpecError, match="more than a batch file may hold"):
        split_lines([b"y" * 11], 3, 10)


def test_estimate_batch_api_prices_at_batch_rates(tmp_path: Path) -> None:
    _files(tmp_path, rows=1)
    runner = CliRunner()
    args = ["estimate", str(tmp_path / "wf.yaml"), "-i", "topic=tea", "--json"]
    sync = json.loads(runner.invoke(main, args).stdout)
    batch = json.loads(runner.invoke(main, [*args, "--batch-api"]).stdout)
    assert batch["batch_api"] is True and sync["batch_api"] is False
    assert Decimal(batch["worst_cost_usd"]) * 2 == Decimal(sync["worst_cost_usd"])
    assert batch["worst_tokens"] == sync["worst_tokens"]
    text = runner.invoke(main, [*args[:-1], "--batch-api"])
    assert "priced at Batch API rates" in text.output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--batch-api", "--mock"], "--mock and --local answer at once"),
        (["--batch-api", "--concurrency", "4"], "--concurrency do not apply to --batch-api"),
        (["--no-wait"], "--no-wait and --cancel go with --batch-api"),
        (["--batch-api", "--no-wait", "--cancel"], "give one"),
    ],
)
def test_wrong_batch_api_options_are_refused(
    tmp_path: Path, args: list[str], said: str, cli_env: dict[str, str]
) -> None:
    _files(tmp_path, rows=1)
    done = _batch(tmp_path, *args)
    assert done.exit_code == 2 and said in done.output, done.output


def test_an_endpoint_without_a_batch_api_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI() as fake:  # chat only: /v1/files answers 404
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("FLOWGPT_STORE", str(tmp_path / "runs.sqlite3"))
        _files(tmp_path, rows=1)
        done = _batch(tmp_path, "--batch-api")
    assert done.exit_code == 1
    assert "has no Batch API" in done.output and "Traceback" not in done.output
    assert "run the same command again to continue" in done.output


def test_the_library_needs_the_run_store() -> None:
    with pytest.raises(SpecError, match="needs the run store"):
        Engine().run_batch_api(parse_workflow(WF), [{"topic": "x"}], job="j")


def test_a_budget_that_is_not_an_amount_is_refused(tmp_path: Path) -> None:
    engine = Engine(store=RunStore(tmp_path / "runs.sqlite3"))
    with pytest.raises(InputError, match="max_cost_usd must be an amount of dollars"):
        engine.run_batch_api(parse_workflow(WF), [{"topic": "x"}], job="j", max_cost_usd="nan")


def test_a_finished_batch_run_again_sends_nothing(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    _files(tmp_path, rows=2)
    assert _batch(tmp_path, "--batch-api").exit_code == 0
    made = len(server[1].batches)
    again = _batch(tmp_path, "--batch-api")
    assert again.exit_code == 0 and "2 already done" in again.output
    assert len(server[1].batches) == made


def test_batch_api_rows_are_recorded_as_runs_of_the_batch(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches], cli_env: dict[str, str]
) -> None:
    _files(tmp_path, rows=3)
    assert _batch(tmp_path, "--batch-api").exit_code == 0
    by_row = _out(tmp_path)
    out = str(tmp_path / "out.jsonl")
    with RunStore(cli_env["FLOWGPT_STORE"]) as store:
        runs = store.list_runs(batch=out)
        (summary,) = store.list_entries()
        # each row a run, priced as --out says (at Batch API rates), its messages kept
        assert [(r.status, r.steps_done) for r in runs] == [("ok", 3)] * 3
        assert [r.cost_usd for r in runs] == [Decimal(by_row[n]["cost_usd"]) for n in (1, 2, 3)]
        record = store.load_run(runs[0].run_id)
        assert list(record.steps) == list(STEPS)
        assert all(s.messages for s in record.steps.values())
    assert summary.batch == str(Path(out).resolve()) and summary.rows == 3
    assert summary.cost_usd == sum(Decimal(d["cost_usd"]) for d in by_row.values())
    listed = CliRunner().invoke(main, ["runs", "list"])
    assert listed.exit_code == 0 and "out.jsonl" in listed.output, listed.output


def test_batch_api_rows_carry_the_workflow_version_and_no_key(
    tmp_path: Path,
    server: tuple[FakeOpenAI, FakeBatches],
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--out is written as `flowgpt batch` writes it: each row tagged with the workflow's
    version, the key in use (of any shape) scrubbed from echoed replies."""
    fake, _ = server
    key = "my-gateway-token-4f9d1c2b7e"  # not sk-...: only the key in use is known
    monkeypatch.setenv("GATEWAY_KEY", key)
    workflow = WF.replace("pricing:", _GATEWAY + "pricing:")
    _files(tmp_path, rows=2, workflow=workflow)
    fake.responder = lambda body: Reply(
        json.dumps({"echo": f"called with {key}"})
        if body.get("response_format")
        else f"again {key}"
    )
    done = _batch(tmp_path, "--batch-api")
    assert done.exit_code == 0, done.output
    written = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    assert key not in written and "again [redacted key]" in written
    version = workflow_version(load_workflow(str(tmp_path / "wf.yaml")))
    assert [d["workflow_version"] for d in _out(tmp_path).values()] == [version] * 2

    # Rows done by another version are pointed out, as by `flowgpt batch`.
    _files(tmp_path, rows=3, workflow=workflow.replace("Short note", "Brief note"))
    again = _batch(tmp_path, "--batch-api")
    assert again.exit_code == 0, again.output
    out = tmp_path / "out.jsonl"
    assert f"note: 2 rows of {out} were done with another version" in again.output


_NOT_A_COMPLETION = "batch batch_x holds a reply that is not a valid chat completion: "


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"object": "error", "message": "oops"}, "the reply has no choices"),
        ({"id": "c1", "choices": []}, "the reply has no choices"),
        ({"id": "c1", "choices": [{"index": 0}]}, "the first choice has no message"),
        ("<html>bad gateway</html>", "the reply has no choices"),
        (None, "the reply has no choices"),
    ],
)
def test_a_reply_in_a_batch_that_is_not_a_chat_completion_is_sent_again(
    body: Any, why: str
) -> None:
    api = OpenAIBatches(OpenAIProvider(base_url="http://127.0.0.1:9/v1"))
    info = BatchInfo(id="batch_x", status="completed", input_file_id="file-1")
    result = api._answer("1/plan/0/0", body, info)
    assert result.custom_id == "1/plan/0/0" and result.response is None
    assert isinstance(result.error, MalformedResponseError)
    assert result.error.message == _NOT_A_COMPLETION + why
    assert result.error.retryable and result.error.hint == "it is sent again in the next round"
    # the same through a line of the output file
    line = {"custom_id": "1/plan/0/0", "response": {"status_code": 200, "body": body}}
    read = api._line(json.dumps(line).encode(), info, "gpt-4o-mini", KEY)
    assert read is not None and read.error is not None
    assert read.error.message == _NOT_A_COMPLETION + why


def test_a_refused_line_in_a_batch_says_what_the_same_call_would() -> None:
    api = OpenAIBatches(OpenAIProvider(base_url="http://127.0.0.1:9/v1"))
    info = BatchInfo(id="batch_x", status="completed", input_file_id="file-1")

    def error_of(status: int, error: dict[str, Any]) -> Any:
        body = {"status_code": status, "body": {"error": error}}
        line = json.dumps({"custom_id": "1/a/0/0", "response": body}).encode()
        result = api._line(line, info, "gpt-4o-mini", KEY)
        assert result is not None and result.response is None
        return result.error

    # insufficient_quota as the error's type (no code), as the synchronous call reads it
    quota = error_of(429, {"message": f"  No credit for {KEY}.  ", "type": "insufficient_quota"})
    assert isinstance(quota, QuotaExceededError) and not quota.retryable
    assert quota.message.endswith(
        "(429 insufficient_quota). The API said: No credit for [redacted key]."
    )
    limited = error_of(429, {"message": "Slow down", "code": "rate_limit_exceeded"})
    assert isinstance(limited, RateLimitError)
    assert limited.message.endswith("The API said: Slow down")


def test_cancel_finds_a_batch_whose_id_was_never_recorded(
    tmp_path: Path, server: tuple[FakeOpenAI, FakeBatches]
) -> None:
    """A crash between creating a batch and recording its id: --cancel finds the batch by
    the job and submission in its metadata, and cancels that one only."""
    fake, batches = server
    batches.hold = True
    store = tmp_path / "runs.sqlite3"
    request = ChatRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with BatchJournal(store) as journal:
        job_id = journal.open_job("the-job", "stages").job_id
    provider = OpenAIProvider(base_url=fake.base_url, environ={"OPENAI_API_KEY": KEY})
    api = OpenAIBatches(provider)

    async def make(job: str, submission: str) -> tuple[str, str]:
        """A batch of ``job``'s ``submission``: its file id and batch id."""
        file_id = await api.upload("f.jsonl", api.encode("1/a/0/0", request))
        tags = {"flowgpt_job": job, "flowgpt_submission": submission}
        return file_id, (await api.create(file_id, tags)).id

    async def go() -> tuple[list[BatchInfo], list[str]]:
        try:
            file_id, ours = await make(job_id, "s-open")
            _, other_job = await make("job-other", "s-open")
            _, not_open = await make(job_id, "s-not-recorded")
            with BatchJournal(store) as journal:  # the file, not the batch: as at a crash
                journal.add_submission(
                    SubmissionRecord("s-open", job_id, 1, request.model, 1, 1, file_id),
                    [LineRecord("1/a/0/0", "s-open", 1, "a", 0, 0, "fingerprint")],
                )
                (open_one,) = journal.open_submissions(job_id)
            assert open_one.batch_id is None
            return await cancel_batches(api, store, "the-job"), [ours, other_job, not_open]
        finally:
            await provider.aclose()

    cancelled, (ours, other_job, not_open) = asyncio.run(go())
    assert [(i.id, i.status) for i in cancelled] == [(ours, "cancelling")]
    assert [batches.batches[b]["status"] for b in (ours, other_job, not_open)] == [
        "cancelling",
        "in_progress",  # listed while looking for the job's: not cancelled
        "in_progress",
    ]
