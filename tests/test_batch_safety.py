"""`flowgpt batch` never destroys data and never pays for a step twice (issue 15):

- an `--out` that is the data file, the workflow or any file that is not a batch output
  is refused and left byte for byte as it was;
- two batches on one `--out`: the second refuses, naming the first's pid and host, while
  the first runs every row exactly once (the loopback server's log counts the requests);
- a batch killed with SIGKILL between a row's steps, run again, does not ask again for any
  step that had finished (the server's log, again);
- the output is readable by its owner only, holds no key, and rows done by another
  version of the workflow are pointed out when the batch is resumed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_openai import FakeOpenAI, Fault, Reply

pytestmark = pytest.mark.timeout(120)

WF = """\
version: 1
name: two-steps
defaults: {model: gpt-4o-mini, max_tokens: 50}
pricing:
  gpt-4o-mini: {input: 1.0, output: 2.0}
inputs:
  topic: {type: string}
steps:
  - id: first
    prompt: "First about {{ inputs.topic }}."
  - id: second
    prompt: "Second about {{ inputs.topic }} after: {{ steps.first.text }}"
outputs:
  answer: "{{ steps.second.text }}"
"""

KEY = "sk-test-batch-safety-00000000000000"


def _env(server: FakeOpenAI | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    if server is not None:
        env.update(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=server.base_url)
    return {**env, **extra}


def _setup(tmp_path: Path, rows: int) -> None:
    (tmp_path / "wf.yaml").write_text(WF, encoding="utf-8")
    lines = "".join(json.dumps({"topic": f"t{i}"}) + "\n" for i in range(1, rows + 1))
    (tmp_path / "rows.jsonl").write_text(lines, encoding="utf-8")


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowgpt", "batch", "wf.yaml", "--data", "rows.jsonl", *args]


def _batch(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*args), capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )


def _asked(server: FakeOpenAI) -> Counter[tuple[str, str]]:
    """(step, topic) -> how many times the server was asked."""
    seen: Counter[tuple[str, str]] = Counter()
    for request in server.chat_requests:
        content = request.body["messages"][-1]["content"]
        step, _, rest = content.partition(" about ")
        seen[(step.lower(), rest.split(" ")[0].rstrip("."))] += 1
    return seen


def _rows(path: Path) -> Counter[int]:
    return Counter(json.loads(x)["row"] for x in path.read_text(encoding="utf-8").splitlines())


# -- an --out that is not ours is never touched --------------------------------------------


@pytest.mark.parametrize(
    ("out", "content", "said"),
    [
        ("rows.jsonl", None, "is the data file"),
        ("wf.yaml", None, "is the workflow file"),
        ("notes.txt", "my notes\nsecond line\n", "not a flowgpt batch output"),
        ("config.json", '{"a": 1}\n', "not a flowgpt batch output"),
        ("one-line.json", '{"a": 1}', "not a flowgpt batch output"),
        ("other.jsonl", '{"row": 1, "status": "ok"}\n{"id": 7}\n', "other.jsonl:2: not a"),
    ],
)
def test_an_out_that_is_not_a_batch_output_is_refused_untouched(
    tmp_path: Path, out: str, content: str | None, said: str
) -> None:
    _setup(tmp_path, 2)
    target = tmp_path / out
    if content is not None:
        target.write_text(content, encoding="utf-8")
    before = target.read_bytes()
    done = _batch(tmp_path, _env(), "--out", out, "--mock")
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "nothing was run" in done.stderr
    assert "Traceback" not in done.stderr and "budget" not in done.stderr
    assert target.read_bytes() == before
    assert not (tmp_path / (out + ".lock")).exists()


# -- two batches on one --out ------------------------------------------------------------------


def test_a_second_batch_on_the_same_out_refuses_and_no_row_is_paid_twice(tmp_path: Path) -> None:
    _setup(tmp_path, 12)
    out = tmp_path / "out.jsonl"
    with FakeOpenAI(latency_ms=400) as server:
        env = _env(server)
        first = subprocess.Popen(
            _command("--out", "out.jsonl", "--concurrency", "2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        deadline = time.monotonic() + 60
        while not server.chat_requests:  # the first holds the lock once it sends
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        asked_before = len(server.chat_requests)
        second = _batch(tmp_path, env, "--out", "out.jsonl", "--concurrency", "2")
        assert first.poll() is None, "the first batch must still be running"
        _, first_err = first.communicate(timeout=90)
        asked = _asked(server)
    assert second.returncode == 2, second.stderr
    assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
    assert "being written by another flowgpt process" in second.stderr
    assert first.returncode == 0, first_err.decode()
    # Nothing lost: every row once; nothing paid twice: every step of every row asked once.
    assert _rows(out) == Counter(range(1, 13))
    assert asked == Counter({(s, f"t{i}"): 1 for s in ("first", "second") for i in range(1, 13)})
    assert asked_before >= 1
    assert not (tmp_path / "out.jsonl.lock").exists()
    # Once the first is done, the same command is welcome (and has nothing left to do).
    again = _batch(tmp_path, _env(), "--out", "out.jsonl", "--mock")
    assert again.returncode == 0 and "12 already done" in again.stderr


# -- kill -9 between a row's steps -------------------------------------------------------------


def test_a_batch_killed_between_steps_does_not_pay_finished_steps_again(tmp_path: Path) -> None:
    _setup(tmp_path, 6)
    hang = {"on": True}

    def responder(body: dict[str, Any]) -> Reply:
        content = body["messages"][-1]["content"]
        if hang["on"] and content.startswith("Second"):
            return Reply("late", delay_s=60)  # in flight when the process is killed
        return Reply(f"answer to {content.split(' ')[2]}")

    with FakeOpenAI(responder=responder) as server:
        env = _env(server)
        proc = subprocess.Popen(
            _command("--out", "out.jsonl", "--concurrency", "6"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        deadline = time.monotonic() + 60
        # A row's second step is asked only once its first is stored: wait for all six.
        while sum(1 for (s, _t) in _asked(server) if s == "second") < 6:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        hang["on"] = False
        again = _batch(tmp_path, env, "--out", "out.jsonl", "--concurrency", "6")
        asked = _asked(server)
    assert again.returncode == 0, again.stderr
    assert _rows(tmp_path / "out.jsonl") == Counter(range(1, 7))
    # Each first step was paid once in all; each second step was in flight, so asked again.
    assert {t: asked[("first", t)] for t in (f"t{i}" for i in range(1, 7))} == {
        f"t{i}": 1 for i in range(1, 7)
    }
    assert all(asked[("second", f"t{i}")] == 2 for i in range(1, 7))
    docs = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all(d["status"] == "ok" and d["outputs"]["answer"].startswith("answer") for d in docs)


def test_failed_rows_run_again_reuse_their_finished_steps(tmp_path: Path) -> None:
    # Faults on most second steps: each rerun pays only for what did not finish.
    _setup(tmp_path, 10)
    attempts: Counter[str] = Counter()

    def responder(body: dict[str, Any]) -> Reply | Fault:
        content = body["messages"][-1]["content"]
        topic = content.split(" ")[2].rstrip(".")
        if content.startswith("Second"):
            attempts[topic] += 1
            if attempts[topic] <= int(topic[1:]) % 3:  # some rows fail once or twice
                return Fault.bad_request("flaky")  # a 400: the row fails at once
        return Reply(f"answer to {topic}")

    with FakeOpenAI(responder=responder) as server:
        env = _env(server)
        for _ in range(4):
            done = _batch(tmp_path, env, "--out", "out.jsonl")
            if done.returncode == 0:
                break
        asked = _asked(server)
    assert done.returncode == 0, done.stderr
    assert _rows(tmp_path / "out.jsonl") == Counter(range(1, 11))
    assert all(asked[("first", f"t{i}")] == 1 for i in range(1, 11)), asked


# -- the output file ----------------------------------------------------------------------------


def test_the_output_is_private_and_holds_no_key(tmp_path: Path) -> None:
    _setup(tmp_path, 2)

    def responder(body: dict[str, Any]) -> Reply:
        return Reply(f"the key you sent me is {KEY}, and another is sk-proj-abcdefghijklmnop1234")

    with FakeOpenAI(responder=responder) as server:
        done = _batch(tmp_path, _env(server), "--out", "out.jsonl")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out.jsonl"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text(encoding="utf-8")
    assert KEY not in text and "sk-proj-abcdefghijklmnop1234" not in text
    assert "the key you sent me is [redacted key]" in text


def test_rows_done_by_another_version_of_the_workflow_are_pointed_out(tmp_path: Path) -> None:
    _setup(tmp_path, 3)
    assert _batch(tmp_path, _env(), "--out", "out.jsonl", "--mock").returncode == 0
    (tmp_path / "wf.yaml").write_text(WF.replace("First about", "Begin with"), encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text(
        (tmp_path / "rows.jsonl").read_text() + json.dumps({"topic": "t4"}) + "\n"
    )
    again = _batch(tmp_path, _env(), "--out", "out.jsonl", "--mock")
    assert again.returncode == 0, again.stderr
    assert "3 rows of out.jsonl were done with another version of the workflow" in again.stderr
    assert "3 already done" in again.stderr
    # Only rows done by another version are pointed out: the one done now is not.
    fresh = _batch(tmp_path, _env(), "--out", "out.jsonl", "--mock")
    assert "3 rows of out.jsonl were done with another version" in fresh.stderr
    assert "4 already done" in fresh.stderr
