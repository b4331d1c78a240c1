"""`flowgpt runs`: what a run sent and got back (`runs show`), runs and batches listed
(`runs list`), spending added up (`runs stats`), and tables that fit the terminal."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowgpt import Engine, MockProvider, ServerError, parse_workflow
from flowgpt.cli import main
from flowgpt.money import format_usd
from flowgpt.providers.factory import make_provider
from flowgpt.results import AttemptResult, RunResult, StepResult, render_table
from flowgpt.spec.models import ProviderSpec
from flowgpt.store import BatchSummary, RunStore, RunSummary
from flowgpt.usage import Usage
from tests.support.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent

REPAIR = """\
version: 1
name: planner
defaults: {model: gpt-4o-mini, max_tokens: 60, temperature: 0}
steps:
  - id: plan
    system: You plan things.
    prompt: Give a plan as JSON with at least two points.
    output:
      format: json
      schema:
        type: object
        required: [points]
        properties: {points: {type: array, minItems: 2}}
      retries: 2
  - id: write
    prompt: 'Write about {{ steps.plan.output.points | join(", ") }}.'
"""


def cli(*args: str, columns: int = 120) -> Result:
    return CliRunner().invoke(
        main, list(args), env={"COLUMNS": str(columns)}, catch_exceptions=False
    )


def _repaired_run(store: RunStore) -> tuple[RunResult, MockProvider]:
    mock = MockProvider(['{"points": ["tea"]}', '{"points": ["tea", "milk"]}', "A text."])
    result = Engine(provider=mock, store=store).run_sync(parse_workflow(REPAIR))
    assert result.ok
    return result, mock


# -- runs show -----------------------------------------------------------------------------


def test_runs_show_prints_the_messages_as_sent_and_every_reply(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite3"
    with RunStore(db) as store:
        result, mock = _repaired_run(store)
    shown = cli("runs", "show", str(result.run_id)[:15], "--store", str(db))
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert out.startswith(f"run {result.run_id} · started ") and " · mock" in out.splitlines()[0]
    # The cost table first, then step by step what was sent, role by role, and the replies.
    assert out.index("planner: ok") < out.index("## plan") < out.index("## write")
    plan = out[out.index("## plan") : out.index("## write")]
    sent = mock.requests[0].messages
    assert f"### system\n\n{sent[0]['content']}\n" in plan
    assert f"### user\n\n{sent[1]['content']}\n" in plan
    # Both replies, in order; the rejected one with why, JSON pretty-printed.
    first, second = plan.index("### reply 1 of 2 · rejected"), plan.index("### reply 2 of 2")
    assert first < plan.index("rejected because:") < second
    assert "- at `$.points`: ['tea'] is too short" in plan
    assert '```json\n{\n  "points": [\n    "tea",\n    "milk"\n  ]\n}\n```' in plan[second:]
    write = out[out.index("## write") :]
    assert "### user\n\nWrite about tea, milk.\n" in write
    assert "### reply · " in write and "\nA text.\n" in write
    # Without RUN_ID: the latest run.
    assert cli("runs", "show", "--store", str(db)).output == out


def test_runs_show_json_holds_the_messages_and_replies(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite3"
    with RunStore(db) as store:
        result, mock = _repaired_run(store)
    shown = cli("runs", "show", str(result.run_id), "--json", "--store", str(db))
    doc = json.loads(shown.output)
    assert doc["run_id"] == result.run_id and doc["provider"] == "mock"
    assert doc["started_at"] and doc["finished_at"] and doc["batch"] is None
    plan, write = doc["steps"]
    assert plan["messages"] == [dict(m) for m in mock.requests[0].messages]
    assert [r["text"] for r in plan["replies"]] == [
        '{"points": ["tea"]}',
        '{"points": ["tea", "milk"]}',
    ]
    assert plan["replies"][0]["failures"] and plan["replies"][1]["failures"] == []
    assert plan["replies"][0]["cost_usd"] == str(result.steps["plan"].attempts[0].cost_usd)
    assert write["messages"][-1] == {"role": "user", "content": "Write about tea, milk."}
    assert write["text"] == "A text." and write["item_steps"] == []


def test_transcript_says_what_was_not_sent_and_shows_each_item() -> None:
    usage = Usage(prompt_tokens=9, completion_tokens=2)
    item = StepResult(
        id="each[0]",
        model="gpt-4o-mini",
        status="ok",
        text="A!",
        messages=[{"role": "user", "content": "Expand a"}],
        attempts=[AttemptResult("A!", usage, Decimal("0.00001"), 0.1)],
    )
    result = RunResult(
        workflow="w",
        inputs={"topic": "tea"},
        status="failed",
        error="step `big`: could break the budget",
        steps={
            "each": StepResult(id="each", model="gpt-4o-mini", status="ok", items=[item]),
            "big": StepResult(
                id="big",
                model="gpt-4o",
                status="failed",
                messages=[{"role": "user", "content": "A long prompt"}],
                error="step `big`: could break the budget",
            ),
            "later": StepResult(id="later", model="gpt-4o", status="pending"),
            "maybe": StepResult(id="maybe", model="gpt-4o", status="skipped"),
        },
    )
    text = result.transcript()
    assert text.startswith('inputs:\n\n```json\n{\n  "topic": "tea"\n}\n```')
    assert "## each ×1\n" in text and "## each[0]\n" in text and "### user\n\nExpand a\n" in text
    assert "## big\ngpt-4o · FAILED · nothing was sent\n" in text
    assert "## later\ngpt-4o · not run\n" in text
    assert "## maybe\ngpt-4o · skipped" in text
    assert text.rstrip().endswith("error: step `big`: could break the budget")


def test_runs_show_of_an_empty_store_is_a_clear_error(tmp_path: Path) -> None:
    shown = cli("runs", "show", "--store", str(tmp_path / "runs.sqlite3"))
    assert shown.exit_code == 2 and "no runs yet in" in shown.output


# -- runs list: who answered ---------------------------------------------------------------

PLAIN = """\
version: 1
name: plain
defaults: {model: gpt-4o-mini, max_tokens: 20}
steps:
  - id: only
    prompt: Say hi.
"""


def test_runs_list_shows_who_answered_mock_local_or_the_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "runs.sqlite3"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-runs-list-000000000000")
    with FakeOpenAI() as server, RunStore(db) as store:
        Engine(provider=MockProvider(), store=store).run_sync(parse_workflow(PLAIN))
        relay = make_provider(ProviderSpec(base_url=server.base_url, max_retries=0))
        Engine(provider=relay, store=store).run_sync(parse_workflow(PLAIN))
        # A local run, recorded as the local provider records it.
        store.start_run(
            "20000101-000000-000001",
            workflow_name="plain",
            workflow_text=None,
            workflow_path=None,
            inputs={},
            provider="local",
            endpoint="local:/models/SmolLM2.gguf",
        )
        host = server.base_url.split("//", 1)[1].split("/", 1)[0]
    listed = json.loads(cli("runs", "list", "--json", "--store", str(db)).output)
    assert [(r["provider"], r["kind"]) for r in listed] == [
        ("local", "run"),
        ("openai", "run"),
        ("mock", "run"),
    ]
    assert listed[1]["endpoint"] == server.base_url.rstrip("/")
    table = cli("runs", "list", "--store", str(db)).output
    rows = [ln for ln in table.splitlines() if re.search(r"\d{8}-\d{6}-", ln)]
    assert "│ local " in rows[0] and f"│ openai ({host}) " in rows[1] and "│ mock " in rows[2]


# -- runs list: a batch is one line --------------------------------------------------------

BATCHED = """\
version: 1
name: batched
defaults: {model: gpt-4o-mini, max_tokens: 20}
inputs:
  topic: {type: string}
steps:
  - id: only
    prompt: 'Say hi about {{ inputs.topic }}.'
"""


def _batch(store: RunStore, out: str, rows: list[dict[str, Any]], provider: MockProvider,
           skip: tuple[int, ...] = ()) -> None:  # fmt: skip
    engine = Engine(provider=provider, store=store, concurrency=1)

    async def go() -> None:
        async for _ in engine.run_batch(parse_workflow(BATCHED), rows, batch=out, skip=skip):
            pass

    asyncio.run(go())


def test_a_batch_is_one_line_with_its_rows_counted_and_expands(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite3"
    out = str(tmp_path / "out.jsonl")
    rows = [{"topic": "tea"}, {"topic": "milk"}, {"topic": "rice"}]
    with RunStore(db) as store:
        Engine(provider=MockProvider(), store=store).run_sync(parse_workflow(PLAIN))
        # Row 2 fails (rows run one at a time, so the scripted error is row 2's).
        _batch(store, out, rows, MockProvider(["one", ServerError("down", status=503), "three"]))
        (entry, single) = store.list_entries()
        assert isinstance(entry, BatchSummary) and isinstance(single, RunSummary)
        assert (entry.batch, entry.rows, entry.runs) == (out, 3, 3)
        assert (entry.status, entry.rows_by_status) == ("failed", {"failed": 1, "ok": 2})
        row_runs = store.list_runs(batch=out)
        assert [r.batch_row for r in row_runs] == [1, 2, 3]
        assert entry.total_tokens == sum(r.total_tokens for r in row_runs)
        assert entry.cost_usd == sum(r.cost_usd or 0 for r in row_runs)
        # Row 2 again: it now counts as ok; every run's spending still counts.
        _batch(store, out, rows, MockProvider(["two"]), skip=(1, 3))
        again = store.batch_summary("out.jsonl")  # a file name that names one batch
        assert (again.status, again.rows, again.runs, again.rows_ok) == ("ok", 3, 4, 3)
        every = store.list_runs(batch=out)
        assert [r.batch_row for r in every] == [1, 2, 2, 3]
        assert again.cost_usd == sum(r.cost_usd or 0 for r in every)
        assert again.cost_usd is not None and again.cost_usd > entry.cost_usd  # type: ignore[operator]
        later = Engine(provider=MockProvider(), store=store).run_sync(parse_workflow(PLAIN))

    listed = cli("runs", "list", "--store", str(db), columns=250)  # room for the whole table
    text = listed.output
    # Newest first: the later run, the batch (one line), the first run.
    lines = [ln for ln in text.splitlines() if ln.startswith("│")]
    assert len(lines) == 3 and str(later.run_id) in lines[0] and "out.jsonl" in lines[1]
    assert "3/3 rows" in lines[1] and format_usd(again.cost_usd) in lines[1]
    assert f"{again.total_tokens:,}" in lines[1]
    assert not any(r.run_id in text for r in every)  # its rows are not listed one by one
    assert "--batch PATH" in text
    docs = json.loads(cli("runs", "list", "--json", "--store", str(db)).output)
    assert [d["kind"] for d in docs] == ["run", "batch", "run"]
    assert docs[1]["rows_by_status"] == {"ok": 3} and docs[1]["runs"] == 4
    assert docs[1]["cost_usd"] == str(again.cost_usd)

    expanded = cli("runs", "list", "--batch", out, "--store", str(db)).output
    assert expanded.startswith(f"batch {out}: batched · 3 rows (3 ok) · 4 runs · ")
    for run in every:
        assert run.run_id in expanded
    rows_json = json.loads(cli("runs", "list", "--batch", out, "--json", "--store", str(db)).output)
    assert [(d["batch_row"], d["status"]) for d in rows_json] == [
        (1, "ok"),
        (2, "failed"),
        (2, "ok"),
        (3, "ok"),
    ]
    unknown = cli("runs", "list", "--batch", "nope.jsonl", "--store", str(db))
    assert unknown.exit_code == 2 and "no batch 'nope.jsonl'" in unknown.output
    # A row's run leads to its steps, and says which batch and row it is.
    shown = cli("runs", "show", every[1].run_id, "--store", str(db)).output
    assert f"row 2 of batch {out}" in shown.splitlines()[0]


def test_a_batch_with_a_row_still_running_adds_up_what_its_steps_recorded(
    tmp_path: Path,
) -> None:
    with RunStore(tmp_path / "runs.sqlite3") as store:
        _record(store, "row1", "w", "openai", [("gpt-4o-mini", "0.001", 10, 5)], batch="/o.jsonl")
        store.start_run(
            "row2",
            workflow_name="w",
            workflow_text=None,
            workflow_path=None,
            inputs={},
            batch="/o.jsonl",
            batch_row=2,
        )  # this process runs it, and has not finished it
        usage = Usage(prompt_tokens=7, completion_tokens=3)
        step = StepResult(
            id="s0",
            model="gpt-4o-mini",
            status="ok",
            attempts=[AttemptResult("x", usage, Decimal("0.0005"), 0.1)],
        )
        store.record_step("row2", step, fingerprint=None, price=None)
        summary = store.batch_summary("/o.jsonl")
    assert (summary.status, summary.rows_by_status) == ("running", {"ok": 1, "running": 1})
    assert summary.finished_at is None and summary.total_tokens == 25
    assert summary.cost_usd == Decimal("0.0015")


# -- runs stats ----------------------------------------------------------------------------


def _record(
    store: RunStore,
    run_id: str,
    workflow: str,
    provider: str,
    steps: list[tuple[str, str | None, int, int]],
    batch: str | None = None,
) -> None:
    """A finished run whose steps used (model, cost or None, prompt, completion)."""
    store.start_run(
        run_id,
        workflow_name=workflow,
        workflow_text=None,
        workflow_path=None,
        inputs={},
        provider=provider,
        batch=batch,
        batch_row=1 if batch else None,
    )
    results = []
    for n, (model, cost, prompt, completion) in enumerate(steps):
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion)
        price = None if cost is None else Decimal(cost)
        step = StepResult(
            id=f"s{n}",
            model=model,
            status="ok",
            text="x",
            attempts=[AttemptResult("x", usage, price, 0.1)],
        )
        store.record_step(run_id, step, fingerprint=None, price=None)
        results.append(step)
    result = RunResult(workflow, {}, {s.id: s for s in results}, status="ok")
    store.finish_run(
        run_id, status="ok", error=None, outputs={}, cost_usd=result.cost_usd, usage=result.usage
    )


@pytest.fixture
def spent(tmp_path: Path) -> Path:
    db = tmp_path / "runs.sqlite3"
    with RunStore(db) as store:
        _record(store, "r1", "w1", "openai", [("gpt-4o-mini", "0.001", 100, 50),
                                               ("gpt-4o", "0.01", 200, 100)])  # fmt: skip
        _record(store, "r2", "w2", "openai", [("my-model", None, 10, 5)])
        _record(store, "r3", "w1", "mock", [("gpt-4o-mini", "0.5", 1000, 1000)])
        _record(store, "r4", "w1", "openai", [("gpt-4o-mini", "0.002", 20, 10)], batch="/b.jsonl")
    return db


def test_stats_add_up_by_day_model_and_workflow_unpriced_never_as_zero(spent: Path) -> None:
    with RunStore(spent) as store:
        stats = store.stats()
        with_mock = store.stats(include_mock=True)
        tomorrow = store.stats(since=date.today() + timedelta(days=1))
        today = store.stats(since=date.today())
    total = stats.total
    assert (total.runs, total.prompt_tokens, total.completion_tokens) == (3, 330, 165)
    assert total.priced_usd == Decimal("0.013") and total.unpriced_tokens == 15
    assert total.cost_usd is None and stats.mock_runs_left_out == 1
    models = {r.key: r for r in stats.by_model}
    assert [r.key for r in stats.by_model] == ["gpt-4o", "gpt-4o-mini", "my-model"]
    assert models["gpt-4o-mini"].cost_usd == Decimal("0.003") and models["gpt-4o-mini"].runs == 2
    assert models["my-model"].cost_usd is None and models["my-model"].unpriced_tokens == 15
    flows = {r.key: r for r in stats.by_workflow}
    assert flows["w1"].cost_usd == Decimal("0.013") and flows["w1"].runs == 2  # the batch row too
    assert flows["w2"].cost_usd is None
    assert [(d.key, d.runs) for d in stats.by_day] == [(date.today().isoformat(), 3)]
    assert with_mock.total.priced_usd == Decimal("0.513") and with_mock.mock_runs_left_out == 0
    assert tomorrow.total.runs == 0 and today.total == stats.total


def test_runs_stats_command(spent: Path) -> None:
    shown = cli("runs", "stats", "--store", str(spent))
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert text.startswith("all runs: 3 runs · 495 tokens · $0.013 + unpriced\n")
    assert "left out: 1 --mock run (--include-mock counts them)" in text
    my_model = next(ln for ln in text.splitlines() if "my-model" in ln)
    assert "unpriced" in my_model and "$0" not in my_model
    for title in ("by day", "by model", "by workflow"):
        assert title in text
    week = cli("runs", "stats", "--days", "7", "--include-mock", "--json", "--store", str(spent))
    doc = json.loads(week.output)
    assert doc["since"] == (date.today() - timedelta(days=6)).isoformat()
    assert doc["total"]["runs"] == 4 and doc["total"]["cost_usd"] is None
    assert doc["total"]["priced_usd"] == "0.513" and doc["total"]["unpriced_tokens"] == 15
    models = {r["key"]: r for r in doc["by_model"]}
    assert models["gpt-4o-mini"]["cost_usd"] == "0.503"


def test_runs_stats_counts_batches_and_chats_run_for_real(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite3"
    with RunStore(db) as store:
        _batch(store, str(tmp_path / "o.jsonl"), [{"topic": "tea"}], MockProvider(["hi"]))
        rows = store.list_runs(batch=str(tmp_path / "o.jsonl"))
        stats = store.stats(include_mock=True)
    assert stats.by_workflow[0].key == "batched" and stats.total.runs == 1
    assert stats.total.cost_usd == rows[0].cost_usd


# -- fitting the terminal ------------------------------------------------------------------

LONG = """\
version: 1
name: long-names
defaults: {model: gpt-4o-mini-2024-07-18, max_tokens: 20}
inputs:
  topic: {type: string}
steps:
  - id: extract_the_key_points_of_the_text
    prompt: 'List the key points of {{ inputs.topic }}.'
  - id: summarize_every_point_in_one_line
    model: gpt-4o-2024-08-06
    prompt: 'Summarize {{ steps.extract_the_key_points_of_the_text.output }}'
"""


def _table_part(stderr: str, title: str) -> str:
    return stderr[stderr.index(title) :]


@pytest.mark.parametrize("columns", [80, 60, 40])
@pytest.mark.parametrize(
    ("workflow", "title"),
    [("workflows/article.yaml", "article-writer: ok"), ("long.yaml", "long-names: ok")],
)
def test_the_cost_table_shows_every_step_model_and_cost_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, columns: int, workflow: str, title: str
) -> None:
    (tmp_path / "long.yaml").write_text(LONG, encoding="utf-8")
    path = ROOT / workflow if workflow.startswith("workflows/") else tmp_path / workflow
    monkeypatch.setenv("FLOWGPT_STORE", str(tmp_path / "runs.sqlite3"))
    result = CliRunner().invoke(
        main,
        ["run", str(path), "-i", "topic=tea", "--mock", "--json"],
        env={"COLUMNS": str(columns)},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    table = _table_part(result.stderr, title)
    for line in table.splitlines():
        assert len(line.rstrip()) <= columns, line
    assert "…" not in table
    for step in doc["steps"]:
        assert step["id"] in table and step["model"] in table
        assert format_usd(Decimal(step["cost_usd"])) in table
    assert format_usd(Decimal(doc["cost_usd"])) in table


def test_the_full_table_where_it_fits_and_report_keeps_it() -> None:
    result = Engine(provider=MockProvider()).run_sync(
        parse_workflow(REPAIR.replace("retries: 2", "retries: 0")), {}
    )
    report = result.report()  # 100 columns: the whole table, every column
    assert report == render_table(result, width=100)
    assert "┃ step " in report and "┃ completion ┃" in report and "┃ attempts ┃" in report
    narrow = render_table(result, width=70)
    assert "tokens" in narrow and "completion" not in narrow  # prompt → completion in one
    assert all(len(ln.rstrip()) <= 70 for ln in narrow.splitlines())
    for step in result.steps.values():
        usage = step.usage
        assert f"{usage.prompt_tokens:,} → {usage.completion_tokens:,}" in narrow


@pytest.mark.parametrize("columns", [80, 50])
def test_runs_list_fits_the_terminal_with_every_run_id_and_cost(
    tmp_path: Path, columns: int
) -> None:
    db = tmp_path / "runs.sqlite3"
    with RunStore(db) as store:
        results = [
            Engine(provider=MockProvider(), store=store).run_sync(
                parse_workflow(PLAIN.replace("name: plain", f"name: a-rather-long-name-{n}"))
            )
            for n in range(3)
        ]
    wide = cli("runs", "list", "--store", str(db), columns=140).output
    assert "┃ started " in wide  # room for everything
    text = cli("runs", "list", "--store", str(db), columns=columns).output
    assert "…" not in text
    for line in text.splitlines():
        assert len(line.rstrip()) <= columns, line
    for r in results:
        assert str(r.run_id) in text and format_usd(r.cost_usd) in text
