"""The run store in use: resume, the response cache, `runs show`, kill -9 and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flowgpt import Engine, MockProvider, ServerError, parse_workflow
from flowgpt.results import render_table
from flowgpt.store.run_store import RunStore
from tests.support.fake_openai import FakeOpenAI, Reply

ROOT = Path(__file__).resolve().parent.parent
TRANSLATE = str(ROOT / "workflows" / "translate.yaml")

WF = """\
version: 1
name: r
defaults: {model: gpt-4o-mini, temperature: 0, max_tokens: 50}
steps:
  - id: one
    prompt: First.
  - id: two
    prompt: 'Second after {{ steps.one.output }}'
  - id: three
    temperature: 0.9
    prompt: 'Third after {{ steps.two.output }}'
"""


def test_resume_reuses_unchanged_finished_steps(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite3")
    failing = MockProvider(["ONE", ServerError("down", status=503)])
    with pytest.raises(ServerError) as info:
        Engine(provider=failing, store=store).run_sync(parse_workflow(WF))
    first = info.value.result
    assert first.steps["one"].status == "ok" and first.steps["two"].status == "failed"

    again = MockProvider(["TWO", "THREE"])
    result = Engine(provider=again, store=store).run_sync(parse_workflow(WF), resume=first.run_id)
    assert result.ok and result.run_id != first.run_id
    assert result.steps["one"].status == "reused" and result.steps["one"].output == "ONE"
    assert result.steps["one"].cost_usd == 0
    assert result.steps["one"].saved_usd == first.steps["one"].cost_usd
    # Only the steps that had not finished were requested.
    assert [r.messages[-1]["content"] for r in again.requests] == [
        "Second after ONE",
        "Third after TWO",
    ]
    assert "saved $" in result.report() and "one (reused)" in result.report()


def test_a_changed_request_is_not_reused(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite3")
    first = Engine(provider=MockProvider(["A", "B", "C"]), store=store).run_sync(parse_workflow(WF))
    changed = WF.replace("First.", "First, changed.")
    mock = MockProvider(["A2", "B2", "C2"])
    result = Engine(provider=mock, store=store).run_sync(
        parse_workflow(changed), resume=first.run_id
    )
    assert all(s.status == "ok" for s in result.steps.values())
    assert len(mock.requests) == 3


def test_response_cache_answers_identical_deterministic_requests(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite3")
    wf = parse_workflow(WF)
    Engine(provider=MockProvider(["A", "B", "C"]), store=store, cache=True).run_sync(wf)
    mock = MockProvider(["C again"])
    result = Engine(provider=mock, store=store, cache=True).run_sync(wf)
    assert result.steps["one"].status == "cached" and result.steps["one"].output == "A"
    assert result.steps["two"].status == "cached" and result.steps["two"].cost_usd == 0
    # temperature 0.9 is meant to vary: not cached unless the step asks for it.
    assert result.steps["three"].status == "ok" and len(mock.requests) == 1
    explicit = WF.replace("    temperature: 0.9\n", "    temperature: 0.9\n    cache: true\n")
    # Steps one and two come from the cache: the only request is step three's.
    Engine(provider=MockProvider(["X"]), store=store, cache=True).run_sync(parse_workflow(explicit))
    mock = MockProvider()
    result = Engine(provider=mock, store=store, cache=True).run_sync(parse_workflow(explicit))
    assert result.steps["three"].status == "cached" and result.steps["three"].output == "X"
    assert mock.requests == [] and result.cost_usd == 0
    assert "three (cached)" in result.report()


def test_runs_show_prints_the_table_the_run_printed(tmp_path: Path) -> None:
    env = {**os.environ, "FLOWGPT_STORE": str(tmp_path / "runs.sqlite3")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowgpt",
            "run",
            str(ROOT / "workflows" / "article.yaml"),
            "-i",
            "topic=tea",
            "--mock",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "flowgpt", "runs", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    run_id = json.loads(listed.stdout)[0]["run_id"]
    shown = subprocess.run(
        [sys.executable, "-m", "flowgpt", "runs", "show", run_id[:12]],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    # The table the run printed at its end is in it, line for line, then what was sent.
    table_at_end = run.stderr[run.stderr.index("article-writer: ok") :]
    table = "\n".join(ln.rstrip() for ln in table_at_end.strip().splitlines())
    shown_text = "\n".join(ln.rstrip() for ln in shown.stdout.splitlines())
    assert shown_text.startswith(f"run {run_id} · started ")
    assert table in shown_text
    assert shown_text.index(table) < shown_text.index("## outline") < shown_text.index("## draft")
    assert "Plan an article about tea of about 600 words." in shown_text
    missing = subprocess.run(
        [sys.executable, "-m", "flowgpt", "runs", "show", "nope"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert missing.returncode == 2 and "runs list" in missing.stderr


def test_store_keeps_the_same_table_as_the_result(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite3")
    result = Engine(provider=MockProvider(), store=store).run_sync(
        parse_workflow(WF.replace("gpt-4o-mini", "gpt-4o"))
    )
    assert render_table(store.load_run(result.run_id or "")) == result.report()


def _slow_compare(body: dict[str, Any]) -> Reply:
    said = body["messages"][-1]["content"]
    if "Compare the original" in said:
        return Reply('{"faithful": true, "differences": []}', delay_s=60)
    return Reply("Bonjour le monde.")


def _wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["kill", "interrupt"])
def test_killed_run_resumes_without_paying_again(tmp_path: Path, how: str) -> None:
    key = "sk-test-resume-key-00000000000000"
    store_path = tmp_path / "runs.sqlite3"
    with FakeOpenAI(responder=_slow_compare) as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")},
            "OPENAI_API_KEY": key,
            "OPENAI_BASE_URL": server.base_url,
            "FLOWGPT_STORE": str(store_path),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowgpt", "run", TRANSLATE, "-i", "text=Hello world."],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        # Steps translate and back_translate finish; compare hangs on the server.
        _wait_for(lambda: len(server.chat_requests) == 3)
        if how == "kill":
            proc.kill()  # SIGKILL: nothing gets to clean up
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        with RunStore(store_path) as store:
            (summary,) = store.list_runs()
            done = store.finished_steps(summary.run_id)
        assert set(done) == {"translate", "back_translate"}
        if how == "interrupt":
            assert proc.returncode == 130
            assert f"--resume {summary.run_id}" in err and "Traceback" not in err
            assert summary.status == "interrupted"
        else:
            assert proc.returncode == -signal.SIGKILL
            # Never finished, but its process is gone: read back as interrupted.
            assert (summary.status, summary.finished_at) == ("interrupted", None)
        before = len(server.chat_requests)
        server.responder = lambda body: Reply('{"faithful": true, "differences": []}')
        resumed = subprocess.run(
            [sys.executable, "-m", "flowgpt", "run", TRANSLATE, "--resume", summary.run_id],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
        new_requests = server.chat_requests[before:]
    assert resumed.returncode == 0, resumed.stderr
    # Zero re-paid requests: only the unfinished step was sent.
    assert len(new_requests) == 1
    assert "Compare the original" in new_requests[0].body["messages"][-1]["content"]
    assert "translate (reused)" in resumed.stderr and "back_translate (reused)" in resumed.stderr
    # The key never reaches the store.
    for suffix in ("", "-wal"):
        path = Path(str(store_path) + suffix)
        if path.exists():
            assert key.encode() not in path.read_bytes()


def test_runs_list_on_an_empty_store_and_show_of_a_failed_run(tmp_path: Path) -> None:
    env = {**os.environ, "FLOWGPT_STORE": str(tmp_path / "runs.sqlite3")}

    def flowgpt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flowgpt", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )

    empty = flowgpt("runs", "list")
    assert empty.returncode == 0 and "no runs yet" in empty.stderr
    failed = flowgpt(
        "run",
        str(ROOT / "workflows" / "article.yaml"),
        "-i",
        "topic=tea",
        "--mock",
        "--max-cost",
        "0.0001",
    )
    assert failed.returncode == 1
    run_id = json.loads(flowgpt("runs", "list", "--json").stdout)[0]["run_id"]
    shown = flowgpt("runs", "show", run_id)
    assert "FAILED" in shown.stdout and "error: step `" in shown.stdout
    assert "could break the budget" in shown.stdout
