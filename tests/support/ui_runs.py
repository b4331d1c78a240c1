"""A run store with the runs the `flowgpt ui` tests look at, and a running `flowgpt ui`.

:func:`fill_store` records, into one store: `--mock` runs made with the real command line
(two article runs, one stopped by --max-cost so it failed, a hello run; moved to the day
before yesterday), a `--mock` batch over three rows (report.yaml, whose `section` step is
a for_each; moved to yesterday), and today a 3-step run whose JSON step was repaired (the
first reply failed its schema), a run whose prompt and reply hold hostile HTML, with a
step skipped by its `when:`, a run through a relay (the real openai SDK against
tests/support/fake_openai.py, with cached and reasoning tokens) and a failed run of the
local provider (recorded as it records one). (Moving runs to earlier days gives the date
filters and the daily chart something to tell apart.)

:class:`UIProcess` starts `python -m flowgpt ui --port 0 --store FILE` and reads the
address it prints.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from flowgpt import Engine, MockProvider, parse_workflow
from flowgpt.cli import main
from flowgpt.providers.factory import make_provider
from flowgpt.results import RunResult, StepResult
from flowgpt.spec.models import ProviderSpec
from flowgpt.store import RunStore, new_run_id
from flowgpt.usage import Usage
from tests.support.fake_openai import FakeOpenAI, Reply

ROOT = Path(__file__).resolve().parent.parent.parent
_KEY = "FLOWGPT_UI_TEST_KEY"  # the relay's key: an environment variable, as always

HOSTILE_SCRIPT = "<script>alert(1)</script>"
HOSTILE_IMG = "<img src=x onerror=alert(1)>"
HOSTILE = f"Here you go: {HOSTILE_SCRIPT} and {HOSTILE_IMG} done"

TRIAGE = """\
version: 1
name: triage
defaults: {model: gpt-4o-mini, max_tokens: 200}
inputs:
  ticket: {type: string}
steps:
  - id: extract
    prompt: |
      Read this support ticket and reply with JSON (product, severity):
      {{ inputs.ticket }}
    output:
      schema:
        type: object
        required: [product, severity]
        properties:
          product: {type: string}
          severity: {type: string, enum: [low, high]}
      retries: 1
  - id: answer
    prompt: Write a short, kind reply about the {{ steps.extract.output.product }}.
  - id: summary
    model: gpt-4o
    prompt: |
      Summarise for the team ({{ steps.extract.output.severity }} severity):
      {{ steps.answer.output }}
"""
TRIAGE_FIRST = '{"product": "kettle", "severity": "urgent"}'  # not in the enum: repaired
TRIAGE_SECOND = '{"product": "kettle", "severity": "high"}'

ECHO = """\
version: 1
name: echo
defaults: {model: gpt-4o-mini}
inputs:
  text: {type: string}
  urgent: {type: boolean, default: false}
steps:
  - id: reply
    prompt: "Repeat this: {{ inputs.text }}"
  - id: escalate
    when: inputs.urgent
    prompt: "Escalate: {{ steps.reply.output }}"
"""


ASK = """\
version: 1
name: ask
defaults: {model: o4-mini}
steps:
  - id: answer
    prompt: Which tea goes with rain?
"""
LOCAL_MODEL = "/models/SmolLM2-135M-Instruct.gguf"


@dataclass(frozen=True)
class FilledStore:
    path: Path
    triage_run: str
    hostile_run: str
    failed_run: str
    batch_out: Path
    relay_run: str
    local_run: str
    relay_host: str


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return result.output


def _move_back(store: Path, days: int) -> None:
    """Every run recorded so far (and its steps) as if it happened ``days`` days earlier."""

    def earlier(stamp: str | None) -> str | None:
        if stamp is None:
            return None
        moved = datetime.fromisoformat(stamp) - timedelta(days=days)
        return moved.isoformat(timespec="milliseconds")

    conn = sqlite3.connect(store)
    with conn:
        for table, columns in (
            ("runs", ("started_at", "finished_at")),
            ("steps", ("finished_at",)),
        ):
            for row in conn.execute(f"SELECT rowid, {', '.join(columns)} FROM {table}").fetchall():
                sets = ", ".join(f"{c} = ?" for c in columns)
                values = [earlier(v) for v in row[1:]]
                conn.execute(f"UPDATE {table} SET {sets} WHERE rowid = ?", (*values, row[0]))
    conn.close()


def fill_store(folder: Path) -> FilledStore:
    """A store in ``folder`` with the runs described above."""
    store_path = folder / "runs.sqlite3"
    store = str(store_path)
    article = str(ROOT / "workflows" / "article.yaml")
    _cli("run", article, "-i", "topic=green tea", "--mock", "--store", store)
    _cli("run", str(ROOT / "docs" / "examples" / "hello.yaml"), "-i", "name=Ada", "--mock",
         "--store", store)  # fmt: skip
    _cli("run", article, "-i", "topic=oolong", "--mock", "--max-cost", "0.0001", "--store", store)
    _move_back(store_path, 1)
    out = folder / "results.jsonl"
    _cli("batch", str(ROOT / "workflows" / "report.yaml"), "--data",
         str(ROOT / "docs" / "examples" / "topics.jsonl"), "--out", str(out), "--mock",
         "--store", store)  # fmt: skip
    _move_back(store_path, 1)  # the single runs: 2 days ago; the batch: yesterday
    with RunStore(store_path) as runs:
        (failed,) = [r for r in runs.list_runs(50) if r.status == "failed"]
        triage_file = folder / "triage.yaml"
        triage_file.write_text(TRIAGE)
        mock = MockProvider([TRIAGE_FIRST, TRIAGE_SECOND, "We are sorry about the kettle."])
        engine = Engine(provider=mock, store=runs)
        triage = engine.run_sync(
            parse_workflow(TRIAGE, path=triage_file), {"ticket": "My kettle leaks."}
        )
        assert triage.ok and len(triage.steps["extract"].attempts) == 2
        echo_file = folder / "echo.yaml"
        echo_file.write_text(ECHO)
        engine = Engine(provider=MockProvider([HOSTILE]), store=runs)
        hostile = engine.run_sync(parse_workflow(ECHO, path=echo_file), {"text": HOSTILE})
        assert hostile.ok and hostile.steps["escalate"].status == "skipped"
        ask_file = folder / "ask.yaml"
        ask_file.write_text(ASK)
        ask = parse_workflow(ASK, path=ask_file)
        with FakeOpenAI() as server:
            server.queue(Reply("Assam.", prompt_tokens=40, completion_tokens=30,
                               cached_tokens=16, reasoning_tokens=24))  # fmt: skip
            spec = ProviderSpec(base_url=server.base_url, api_key_env=_KEY, max_retries=0)
            os.environ[_KEY] = "sk-test-ui-relay-00000000000000000000"

            async def through_the_relay() -> RunResult:
                provider = make_provider(spec)
                try:  # its connections closed before the server stops
                    return await Engine(provider=provider, store=runs).run(ask)
                finally:
                    await provider.aclose()

            try:
                relay = asyncio.run(through_the_relay())
            finally:
                del os.environ[_KEY]
            host = server.base_url.split("//", 1)[1].split("/", 1)[0]
        assert relay.ok
        local_run = new_run_id()
        runs.start_run(
            local_run,
            workflow_name="ask",
            workflow_text=ASK,
            workflow_path=str(ask_file),
            inputs={},
            steps=[StepResult(id="answer", model="o4-mini")],
            provider="local",
            endpoint=f"local:{LOCAL_MODEL}",
        )
        runs.finish_run(
            local_run,
            status="failed",
            error="the local model could not be loaded",
            outputs={},
            cost_usd=Decimal(0),
            usage=Usage(),
        )
    return FilledStore(
        store_path,
        str(triage.run_id),
        str(hostile.run_id),
        failed.run_id,
        out,
        str(relay.run_id),
        local_run,
        host,
    )


class UIProcess:
    """``flowgpt ui --port 0`` over a store, in a process of its own (a context manager)."""

    def __init__(self, store: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.store = store
        self.args = args
        self.env = env
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> UIProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        env.update(self.env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowgpt", "ui", "--port", "0", "--store", str(self.store),
             *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"flowgpt ui did not start: {self.proc.communicate()[1]}")
        self.url = line.split()[2]
        return self

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rpartition(":")[2])

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return  # stopped already
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
