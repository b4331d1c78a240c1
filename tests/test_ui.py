"""`flowgpt ui` without a browser: the store queries behind its runs page (filters, totals,
daily spend), the step graph's layout, and the server itself — bound to 127.0.0.1 only,
non-local Host headers refused, a Content-Security-Policy on every response, read-only,
offline, and started without the web stack loaded by `flowgpt --help`.

The pages in a real browser: tests/test_ui_browser.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, MutableMapping
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from flowgpt.cli import main
from flowgpt.money import format_usd, sum_costs
from flowgpt.results import StepResult
from flowgpt.store import BatchSummary, RunFilter, RunStore, RunSummary
from flowgpt.ui._charts import GraphStep, SpendSeries, layout_graph, spend_chart
from flowgpt.ui._pages import resume_command
from tests.support.ui_runs import (
    HOSTILE_SCRIPT,
    LOCAL_MODEL,
    ROOT,
    FilledStore,
    UIProcess,
    fill_store,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

TODAY = date.today()
YESTERDAY = TODAY - timedelta(days=1)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> FilledStore:
    return fill_store(tmp_path_factory.mktemp("ui"))


@pytest.fixture(scope="module")
def ui(filled: FilledStore) -> Iterator[UIProcess]:
    with UIProcess(filled.path) as server:
        yield server


def _all_runs(store: RunStore) -> list[RunSummary]:
    return store.list_runs(1000)


def _sum(runs: list[RunSummary]) -> tuple[int, Decimal | None]:
    """Tokens and dollars of runs as their own rows say (not the steps the UI adds up)."""
    return sum(r.total_tokens for r in runs), sum_costs(r.cost_usd for r in runs)


# -- the store queries ------------------------------------------------------------------


def test_spending_of_every_run_matches_the_runs_themselves(filled: FilledStore) -> None:
    with RunStore(filled.path) as store:
        runs = _all_runs(store)
        spent = store.spending()
        assert len(runs) == 10  # 3 single CLI runs, 3 batch rows, triage, echo, relay, local
        assert spent.runs == len(runs)
        assert (spent.total.total_tokens, spent.total.cost_usd) == _sum(runs)
        # the mock provider's part (never billed) apart: all but the relay run's dollars
        mocked = _sum([r for r in runs if r.provider == "mock"])
        assert (spent.mock.total_tokens, spent.mock.cost_usd) == mocked
        relay = store.run_summary(filled.relay_run).cost_usd
        assert relay and spent.total.priced_usd - spent.mock.priced_usd == relay
        by_model: dict[str, Decimal] = {}
        by_day: dict[str, Decimal] = {}
        for d in spent.daily:
            assert d.mock == (d.model != "o4-mini")
            by_model[d.model] = by_model.get(d.model, Decimal(0)) + d.spent.priced_usd
            by_day[d.day] = by_day.get(d.day, Decimal(0)) + d.spent.priced_usd
        stats = store.stats(include_mock=True)
        assert by_model == {row.key: row.priced_usd for row in stats.by_model}
        assert by_day == {row.key: row.priced_usd for row in stats.by_day}
        assert list(by_day) == [(TODAY - timedelta(days=n)).isoformat() for n in (2, 1, 0)]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (RunFilter(workflow="article-writer"), {"article-writer": 2}),
        (RunFilter(workflow="report"), {"report": 3}),
        (RunFilter(status="failed"), {"article-writer": 1, "ask": 1}),
        # draft and summary use gpt-4o; the failed article run never got to its draft
        (RunFilter(model="gpt-4o"), {"article-writer": 1, "triage": 1}),
        (RunFilter(model="o4-mini"), {"ask": 1}),  # the failed local run never ran its step
        (
            RunFilter(provider="mock"),
            {"article-writer": 2, "hello": 1, "report": 3, "triage": 1, "echo": 1},
        ),
        (RunFilter(provider="openai"), {"ask": 1}),
        (RunFilter(provider="local"), {"ask": 1}),
        (RunFilter(provider="openai", status="failed"), {}),
        (RunFilter(since=TODAY, until=TODAY), {"triage": 1, "echo": 1, "ask": 2}),
        (RunFilter(since=YESTERDAY), {"report": 3, "triage": 1, "echo": 1, "ask": 2}),
        (RunFilter(until=YESTERDAY), {"article-writer": 2, "hello": 1, "report": 3}),
        (
            RunFilter(since=TODAY - timedelta(days=2), until=TODAY - timedelta(days=2)),
            {"article-writer": 2, "hello": 1},
        ),
        (RunFilter(since=TODAY + timedelta(days=1)), {}),
        (RunFilter(workflow="article-writer", status="ok"), {"article-writer": 1}),
        (RunFilter(batch="results.jsonl"), {"report": 3}),
    ],
)
def test_a_filter_picks_its_runs_and_their_spending(
    filled: FilledStore, where: RunFilter, expected: dict[str, int]
) -> None:
    with RunStore(filled.path) as store:
        picked = store.list_runs(1000, where=where)
        counts: dict[str, int] = {}
        for r in picked:
            counts[r.workflow] = counts.get(r.workflow, 0) + 1
        assert counts == expected
        spent = store.spending(where)
        assert spent.runs == len(picked)
        assert (spent.total.total_tokens, spent.total.cost_usd) == _sum(picked)


def test_entries_group_a_batch_and_its_rows_that_match(filled: FilledStore) -> None:
    with RunStore(filled.path) as store:
        entries = store.list_entries(50, where=RunFilter(provider="mock"))
        batches = [e for e in entries if isinstance(e, BatchSummary)]
        assert [b.batch for b in batches] == [str(filled.batch_out)]
        assert len(entries) == 6  # 5 single runs and the batch
        assert store.list_entries(50, where=RunFilter(workflow="hello"))[0].workflow == "hello"
        rows = store.list_runs(10, where=RunFilter(batch=str(filled.batch_out)))
        assert [r.batch_row for r in rows] == [1, 2, 3]
        assert store.list_entries(50) == store.list_entries(50, where=RunFilter())


def test_facets_list_what_there_is_to_filter_by(filled: FilledStore) -> None:
    with RunStore(filled.path) as store:
        facets = store.run_facets()
    assert facets.workflows == ["article-writer", "ask", "echo", "hello", "report", "triage"]
    assert facets.models == ["gpt-4o", "gpt-4o-mini", "o4-mini"]
    assert facets.providers == ["local", "mock", "openai"]
    assert facets.statuses == ["ok", "failed"]
    assert (facets.first_day, facets.last_day) == (TODAY - timedelta(days=2), TODAY)


def test_a_running_run_whose_process_is_gone_is_picked_as_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    with RunStore(path) as store:
        for run_id in ("alive", "dead"):
            store.start_run(
                run_id, workflow_name="w", workflow_text=None, workflow_path=None, inputs={}
            )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE runs SET pid = ?, proc_start = NULL WHERE run_id = 'dead'", (dead.pid,)
        )
    conn.close()
    with RunStore(path) as store:
        picked = store.list_runs(where=RunFilter(status="interrupted"))
        assert [r.run_id for r in picked] == ["dead"]
        assert [r.run_id for r in store.list_runs(where=RunFilter(status="running"))] == ["alive"]
        assert store.run_facets().statuses == ["interrupted", "running"]


def test_a_filter_refuses_an_unknown_status() -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        RunFilter(status="done")


def test_step_prices_and_workflow_text_are_read_back(filled: FilledStore) -> None:
    with RunStore(filled.path) as store:
        prices = store.step_prices(filled.triage_run)
        text = store.workflow_text(filled.triage_run[:-2])  # a unique prefix
    assert list(prices) == ["extract", "answer", "summary"]
    assert {p["source"] for p in prices.values() if p} == {"genai-prices"}
    assert Decimal(prices["summary"]["output"]) > Decimal(prices["answer"]["output"])
    assert text is not None and "name: triage" in text


# -- the step graph ---------------------------------------------------------------------


def _steps(*ids: str) -> list[GraphStep]:
    return [GraphStep(i, "ok", "ok", "$0", i) for i in ids]


def test_the_graph_puts_each_step_after_what_it_needs() -> None:
    deps = {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}, "e": set()}
    graph = layout_graph(_steps("a", "b", "c", "d", "e"), deps)
    node = {n.step.id: n for n in graph.nodes}
    assert [node[i].layer for i in "abcde"] == [0, 1, 1, 2, 0]
    assert node["a"].x < node["b"].x == node["c"].x < node["d"].x
    assert {(e.source, e.target) for e in graph.edges} == {
        ("a", "b"),
        ("a", "c"),
        ("b", "d"),
        ("c", "d"),
    }
    boxes = [(n.x, n.y, n.x + n.w, n.y + n.h) for n in graph.nodes]
    for i, p in enumerate(boxes):  # no two boxes overlap, all inside the picture
        assert p[0] >= 0 and p[1] >= 0 and p[2] <= graph.width and p[3] <= graph.height
        for q in boxes[i + 1 :]:
            assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1]


def test_an_arrow_that_skips_a_layer_goes_over_the_boxes_between() -> None:
    graph = layout_graph(_steps("a", "b", "c"), {"b": {"a"}, "c": {"a", "b"}})
    node = {n.step.id: n for n in graph.nodes}
    (long,) = [e for e in graph.edges if (e.source, e.target) == ("a", "c")]
    heights = [float(xy.split(",")[1]) for xy in long.path.replace("M", " ").replace(
        "C", " ").replace("L", " ").split()]  # fmt: skip
    assert min(heights) < node["b"].y  # above b, not through it
    (short,) = [e for e in graph.edges if (e.source, e.target) == ("a", "b")]
    assert "L" not in short.path


def test_the_spend_chart_stacks_models_and_marks_what_has_no_price() -> None:
    series = [
        SpendSeries("2026-01-01", "gpt-4o", False, Decimal("0.30"), 0),
        SpendSeries("2026-01-01", "gpt-4o-mini", True, Decimal("0.10"), 0),
        SpendSeries("2026-01-02", "my-finetune", False, Decimal(0), 500),
        SpendSeries("2026-01-03", "gpt-4o", False, Decimal("0.05"), 0),
    ]
    chart = spend_chart(series)
    assert [d.text for d in chart.days] == ["01-01", "01-02", "01-03"]
    assert [d.unpriced for d in chart.days] == [False, True, False]
    assert chart.days[1].title == "2026-01-02: unpriced"  # never "$0"
    first = [s for s in chart.segments if s.title.startswith("2026-01-01")]
    assert [s.mock for s in first] == [False, True]  # billed first, the mock's on top
    assert abs(first[0].h / first[1].h - 3) < 1e-6  # heights in proportion to dollars
    assert first[1].y + first[1].h == first[0].y  # stacked
    assert [t.text for t in chart.ticks][-1] == "$0.50"  # a round top above $0.40
    legend = [item.text for item in chart.legend]
    assert legend == ["gpt-4o", "gpt-4o-mini (mock, not billed)", "my-finetune"]
    many = [SpendSeries(f"2026-03-{d:02d}", "m", False, Decimal(1), 0) for d in range(1, 32)]
    assert spend_chart(many, most_days=10).days_left_out == 21


def test_resume_command_keeps_the_provider_and_the_store(filled: FilledStore) -> None:
    with RunStore(filled.path) as store:
        failed = store.run_summary(filled.failed_run)
    command = resume_command(failed, filled.path)
    article = ROOT / "workflows" / "article.yaml"
    assert command == (
        f"flowgpt run {article} --resume {filled.failed_run} --mock --store {filled.path}"
    )
    with RunStore(filled.path) as store:
        local = store.run_summary(filled.local_run)
    assert resume_command(local, filled.path) == (
        f"flowgpt run {local.workflow_path} --resume {filled.local_run}"
        f" --local-model {LOCAL_MODEL} --store {filled.path}"
    )
    moved = RunSummary(**{**local.__dict__, "workflow_path": "my flows/ask.yaml"})
    assert resume_command(moved, filled.path).startswith("flowgpt run 'my flows/ask.yaml' ")


# -- the server -------------------------------------------------------------------------


def _get(
    port: int, path: str, host: str | None = None, method: str = "GET"
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True)
    conn.putheader("Host", host if host is not None else f"127.0.0.1:{port}")
    conn.endheaders()
    response = conn.getresponse()
    response.read()
    return response


def test_the_server_answers_local_hosts_only(ui: UIProcess) -> None:
    for host in (f"127.0.0.1:{ui.port}", f"localhost:{ui.port}", "localhost"):
        assert _get(ui.port, "/", host).status == 200, host
    # DNS rebinding: a name that resolves to 127.0.0.1 still carries its own Host
    for host in ("evil.example", f"evil.example:{ui.port}", "127.0.0.1.evil.example", ""):
        assert _get(ui.port, "/", host).status == 400, host


def test_every_response_forbids_scripts_and_other_origins(ui: UIProcess) -> None:
    for path in ("/", "/runs/nothing", "/static/ui.css"):
        response = _get(ui.port, path)
        csp = response.getheader("content-security-policy") or ""
        assert "default-src 'none'" in csp and "script-src 'none'" in csp, path
        assert response.getheader("x-content-type-options") == "nosniff"
    assert _get(ui.port, "/static/ui.css").getheader("content-type", "").startswith("text/css")
    refused = _get(ui.port, "/", "evil.example")
    assert "script-src 'none'" in (refused.getheader("content-security-policy") or "")


def test_an_unknown_batch_or_bad_filter_is_said_on_the_page(ui: UIProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=10)
    conn.request("GET", "/?batch=%3Cb%3Enope.jsonl&until=31-12-2026")
    response = conn.getresponse()
    body = response.read().decode()
    assert response.status == 200
    assert "no batch &#39;&lt;b&gt;nope.jsonl&#39; in" in body
    assert "until: &#39;31-12-2026&#39; is not a date (YYYY-MM-DD); left out" in body


def _fingerprint(path: Path) -> tuple[object, ...]:
    """What a store holds: the size of its file and of its -wal file (in WAL mode a write
    lands there first, leaving the main file as it was), then every row of every table."""
    wal = path.with_name(path.name + "-wal")
    sizes = [p.stat().st_size if p.exists() else 0 for p in (path, wal)]
    # Read-only: closing it never checkpoints the -wal file into the main one.
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        rows = {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}
    finally:
        conn.close()
    assert {"runs", "steps", "attempts"} <= rows.keys() and rows["runs"]
    return sizes, rows


def test_the_server_only_reads(ui: UIProcess, filled: FilledStore) -> None:
    assert _get(ui.port, f"/runs/{filled.triage_run}").status == 200  # the store is open
    before = _fingerprint(filled.path)
    for method in ("POST", "PUT", "DELETE"):
        assert _get(ui.port, "/", method=method).status == 405
        assert _get(ui.port, f"/runs/{filled.triage_run}", method=method).status == 405
    for path in ("/", f"/runs/{filled.triage_run}", f"/runs/{filled.failed_run}"):
        assert _get(ui.port, path).status == 200
    assert _fingerprint(filled.path) == before


def test_an_unknown_run_is_a_404_that_shows_the_id_as_text(ui: UIProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=10)
    conn.request("GET", "/runs/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    response = conn.getresponse()
    body = response.read().decode()
    assert response.status == 404
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert HOSTILE_SCRIPT not in body


def test_the_server_listens_on_127_0_0_1_only(ui: UIProcess) -> None:
    with socket.create_connection(("127.0.0.1", ui.port), timeout=5):
        pass
    # Another loopback address reaches a socket bound to all interfaces, not this one.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", ui.port), timeout=5)
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == ui.port
    ]
    assert listening == [f"0100007F:{ui.port:04X}"]  # 127.0.0.1, and nothing else
    for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]:
        fields = line.split()
        assert not (fields[3] == "0A" and int(fields[1].split(":")[1], 16) == ui.port)


def test_pages_load_nothing_from_elsewhere(ui: UIProcess, filled: FilledStore) -> None:
    for path in ("/", f"/runs/{filled.triage_run}", f"/runs/{filled.hostile_run}"):
        conn = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=10)
        conn.request("GET", path)
        body = conn.getresponse().read().decode()
        assert "<script" not in body
        for url in re.findall(r'(?:href|src)="([^"]*)"', body):
            assert url.startswith(("/", "#", "?")), url


def test_ctrl_c_stops_it_quietly(filled: FilledStore) -> None:
    server = UIProcess(filled.path)
    with server:
        assert _get(server.port, "/").status == 200
        assert server.proc is not None
        server.proc.send_signal(signal.SIGINT)
        _, err = server.proc.communicate(timeout=30)
        assert (server.proc.returncode, err) == (0, "")


def test_a_busy_port_is_one_clear_error(filled: FilledStore) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["ui", "--port", str(port), "--store", str(filled.path)])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "--port 0" in result.output
    assert "Traceback" not in result.output


def test_without_the_ui_extra_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import flowgpt.ui

    monkeypatch.setattr(flowgpt.ui, "_NEEDS", ("starlette", "no_such_package_for_flowgpt"))
    result = CliRunner().invoke(main, ["ui", "--store", str(tmp_path / "s.sqlite3")])
    assert result.exit_code == 2
    assert "flowgpt ui needs no_such_package_for_flowgpt" in result.output
    assert "pip install 'flowgpt[ui]'" in result.output


def test_the_help_in_the_docs_is_the_help() -> None:
    # docs/ui.md shows it in a text block (console blocks run as `main`, not `flowgpt`)
    page = (ROOT / "docs" / "ui.md").read_text(encoding="utf-8")
    shown = page.split("$ flowgpt ui --help\n", 1)[1].split("```", 1)[0]
    result = CliRunner().invoke(main, ["ui", "--help"], prog_name="flowgpt", env={"COLUMNS": "120"})
    assert result.output == shown


def test_open_starts_the_browser_on_the_address(filled: FilledStore, tmp_path: Path) -> None:
    seen = tmp_path / "opened.txt"
    fake = tmp_path / "browser.py"
    fake.write_text(f"import sys, pathlib\npathlib.Path({str(seen)!r}).write_text(sys.argv[1])\n")
    env = {"BROWSER": f"{sys.executable} {fake} %s"}
    with UIProcess(filled.path, "--open", env=env) as server:
        for _ in range(100):
            if seen.exists() and seen.read_text():
                break
            time.sleep(0.05)
        assert seen.read_text() == server.url


# Loaded by `flowgpt ui --help` and `flowgpt --help`: none of the web stack.
_PROBE = """
import json, sys
sys.argv = ["flowgpt", *json.loads(sys.argv[1])]
from flowgpt.cli import main
try:
    main()
except SystemExit:
    pass
print("LOADED " + json.dumps([m for m in ("starlette", "uvicorn", "jinja2", "flowgpt.ui.app")
                              if m in sys.modules]))
"""


@pytest.mark.parametrize("args", [["--help"], ["ui", "--help"]])
def test_help_does_not_load_the_web_stack(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "Browse the recorded runs" in out
    assert out.rpartition("LOADED ")[2].strip() == "[]"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="needs root with unshare(1) and ip(8) to start the server with no network at all",
)
def test_it_starts_and_serves_with_no_network(filled: FilledStore) -> None:
    # In a network namespace of its own with only the loopback device up: no DNS, no
    # route anywhere. The server starts and serves its pages and files from the package.
    probe = f"""
import sys, urllib.request
sys.path.insert(0, {str(ROOT)!r})
from tests.support.ui_runs import UIProcess
with UIProcess(__import__("pathlib").Path({str(filled.path)!r})) as ui:
    for path in ("", "runs/{filled.triage_run}", "static/ui.css", "static/favicon.svg"):
        with urllib.request.urlopen(ui.url + path, timeout=10) as r:
            print(path or "/", r.status, len(r.read()))
try:
    urllib.request.urlopen("http://pypi.org/", timeout=5)
except OSError:
    print("offline")
"""
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"',
         sys.executable, probe],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:4]] == [
        ["/", "200"],
        [f"runs/{filled.triage_run}", "200"],
        ["static/ui.css", "200"],
        ["static/favicon.svg", "200"],
    ]
    assert lines[-1] == "offline"


def test_the_ui_startup_benchmark_runs(
    capsys: pytest.CaptureFixture[str], filled: FilledStore
) -> None:
    from tests.benchmarks import bench_ui

    assert bench_ui.main(["--runs", "1", "--store", str(filled.path)]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == ["flowgpt-help", "flowgpt-ui"]  # the times themselves are not checked


def test_totals_text_never_says_zero_for_unpriced() -> None:
    from flowgpt.store import StatsRow

    assert StatsRow("t", 1, 10, 10, Decimal(0), 20).cost_text == "unpriced"
    assert StatsRow("t", 2, 10, 10, Decimal("0.5"), 20).cost_text == "$0.50 + unpriced"
    assert StatsRow("t", 1, 10, 10, Decimal(0), 0).cost_text == format_usd(Decimal(0))


# -- the app in this process: its error pages -------------------------------------------


def _ask(app: Starlette, path: str) -> tuple[int, str]:
    """GET ``path`` from an ASGI app in this process: the status and the page."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body.decode()


def test_a_store_that_cannot_be_read_is_a_400_that_says_why(tmp_path: Path) -> None:
    from flowgpt.ui.app import create_app

    path = tmp_path / "runs.sqlite3"
    with RunStore(path) as store:
        store.start_run("r1", workflow_name="w", workflow_text=None, workflow_path=None, inputs={})
        app = create_app(store)
        with sqlite3.connect(path) as conn:  # damaged behind the open store's back
            conn.execute("DROP TABLE steps")
        conn.close()
        status, body = _ask(app, "/")
    assert status == 400
    assert "<h1>Cannot show this</h1>" in body
    assert f"run store {path}: could not read the runs: no such table: steps" in body


def test_a_stored_workflow_that_no_longer_parses_shows_its_steps_without_arrows(
    tmp_path: Path,
) -> None:
    from flowgpt.ui.app import create_app

    path = tmp_path / "runs.sqlite3"
    with RunStore(path) as store:
        store.start_run(
            "r1",
            workflow_name="w",
            workflow_text="name: [unclosed",
            workflow_path=None,
            inputs={},
            steps=[StepResult("first"), StepResult("second")],
        )
        status, body = _ask(create_app(store), "/runs/r1")
    assert status == 200
    assert "the stored workflow could not be read again: invalid YAML: expected" in body
    assert 'id="step-first"' in body and 'id="step-second"' in body
