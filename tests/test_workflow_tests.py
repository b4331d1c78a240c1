"""`flowgpt test`: cases in NAME.test.yaml, cassettes recorded through the real openai SDK
against the loopback server and replayed with no server and no network, every kind of
expectation, the report, JUnit XML, exit codes, the model matrix and the pytest plugin."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import junitparser
import pytest
from click.testing import CliRunner

from flowgpt.cli import main
from flowgpt.engine.calls import current_call
from flowgpt.errors import BadRequestError, SpecError
from flowgpt.providers.base import ChatRequest, ChatResponse, OnText
from flowgpt.providers.mock.provider import default_reply
from flowgpt.store.cassettes import Cassette, load_cassette, save_cassette
from flowgpt.testing import load_suite, run_suite_sync
from flowgpt.testing.models import suite_json_schema
from flowgpt.usage import Usage
from tests.support.fake_openai import FakeOpenAI, Fault, Reply

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-loopback-0123456789abcdef"

WORKFLOW = """\
version: 1
name: tea-note
defaults: {model: gpt-4o-mini, temperature: 0, max_tokens: 200}
inputs:
  topic: {type: string}
  loud: {type: boolean, default: false}
steps:
  - id: outline
    prompt: Plan a note about {{ inputs.topic }}. Reply with JSON.
    output:
      schema:
        type: object
        required: [title, points]
        properties:
          title: {type: string}
          points: {type: array, items: {type: string}}
  - id: write
    prompt: |
      Write about {{ steps.outline.output.title }}:
      {% for p in steps.outline.output.points %}- {{ p }}
      {% endfor %}
  - id: shout
    when: inputs.loud
    prompt: Say "{{ steps.write.output }}" loudly.
outputs:
  note: "{{ steps.write.output }}"
  title: "{{ steps.outline.output.title }}"
"""

TESTS = """\
workflow: tea.yaml
judge_model: gpt-4o-mini
cases:
  - name: green
    inputs: {topic: green tea}
    expect:
      - step: outline
        schema: {type: object, required: [title]}
      - output: note
        contains: tea
      - output: note
        judge: Is it about tea? Answer yes or no.
  - name: loud black
    inputs: {topic: black tea, loud: true}
    expect:
      - step: shout
        contains: TEA
"""


def responder(body: dict[str, Any]) -> Reply:
    """Replies that depend on the request, as a model's would."""
    prompt = body["messages"][-1]["content"]
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema" and fmt["json_schema"]["name"] == "verdict":
        return Reply(json.dumps({"answer": "yes", "reason": "it talks about tea"}))
    if fmt.get("type") == "json_schema":
        m = re.search(r"about (.+?)\.", prompt)
        topic = m.group(1) if m else "tea"
        return Reply(json.dumps({"title": topic.title(), "points": ["origin", "brewing"]}))
    if prompt.startswith("Say"):
        return Reply(prompt.upper())
    return Reply(f"A short note about tea.\n{prompt}")


def write(folder: Path, workflow: str = WORKFLOW, tests: str = TESTS) -> Path:
    (folder / "tea.yaml").write_text(workflow, encoding="utf-8")
    (folder / "tea.test.yaml").write_text(tests, encoding="utf-8")
    return folder / "tea.yaml"


def flowgpt(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the network was touched: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tea.yaml and its cases, recorded through the openai SDK against the loopback
    server, which is stopped before the test body runs."""
    workflow = write(tmp_path)
    with FakeOpenAI(responder=responder) as server, monkeypatch.context() as env:
        env.setenv("OPENAI_API_KEY", KEY)
        env.setenv("OPENAI_BASE_URL", server.base_url)
        code, out = flowgpt("test", str(workflow), "--record")
        assert code == 0, out
        # green: outline, write, judge; loud black: outline, write, shout
        assert len(server.chat_requests) == 6
    yield workflow


# -- record, then replay offline --------------------------------------------------------------


def test_recorded_against_the_loopback_server_replays_with_no_server_and_no_network(
    recorded: Path, no_network: None
) -> None:
    with pytest.raises(AssertionError, match="network"):  # the guard is on
        socket.create_connection(("127.0.0.1", 9))
    code, out = flowgpt("test", str(recorded))
    assert code == 0, out
    assert "2 cases: 2 passed" in out
    assert "replayed from" in out
    assert "not asked for" not in out  # every recorded request was used
    cassette = (recorded.parent / "tea.cassette.yaml").read_text()
    assert KEY not in cassette and "authorization" not in cassette.lower()
    steps = [x.step for x in load_cassette(recorded.parent / "tea.cassette.yaml").interactions]
    assert steps == ["outline", "write", "(judge)", "outline", "write", "shout"]


def test_a_replay_imports_no_http_client(recorded: Path) -> None:
    probe = (
        "import sys\nfrom flowgpt.cli import main\n"
        f"sys.argv = ['flowgpt', 'test', {str(recorded)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('PROBE', code, [m for m in ('openai', 'httpx') if m in sys.modules])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert "PROBE 0 []" in proc.stdout, proc.stdout + proc.stderr


def test_a_changed_prompt_fails_its_case_naming_the_step_and_the_change(
    recorded: Path, no_network: None
) -> None:
    text = recorded.read_text().replace('prompt: Say "', 'prompt: Shout "')
    recorded.write_text(text)
    code, out = flowgpt("test", str(recorded))
    assert code == 1
    assert re.search(r"PASS\s+green", out), out
    assert re.search(r"FAIL\s+loud black", out), out
    assert "case `loud black`, step `shout`: the request is not in" in out
    assert '-Say "A SHORT NOTE' not in out  # the recorded prompt, as sent (not the reply)
    assert re.search(r'^\s+-Say "A short note about tea\.$', out, re.M), out
    assert re.search(r'^\s+\+Shout "A short note about tea\.$', out, re.M), out
    assert f"record again: flowgpt test {recorded.parent / 'tea.test.yaml'} --record" in out
    assert "1 passed, 1 failed" in out


def test_a_new_step_says_nothing_was_recorded_for_it(recorded: Path, no_network: None) -> None:
    text = recorded.read_text().replace(
        "outputs:", "  - id: extra\n    prompt: More about {{ inputs.topic }}.\noutputs:"
    )
    recorded.write_text(text)
    code, out = flowgpt("test", str(recorded), "--case", "green")
    assert code == 1
    assert "step `extra`: the request is not in" in out
    assert "nothing was recorded for step `extra` (new since the recording?)" in out


def test_recording_twice_writes_the_same_interactions_in_the_same_order(tmp_path: Path) -> None:
    # A for_each step's items finish in any order; the cassette must not care.
    for name in ("report.yaml", "report.test.yaml"):
        (tmp_path / name).write_text((ROOT / "workflows" / name).read_text())

    def interactions() -> str:
        code, out = flowgpt("test", str(tmp_path / "report.yaml"), "--record", "--mock")
        assert code == 0, out
        text = (tmp_path / "report.cassette.yaml").read_text()
        return text[text.index("interactions:") :]

    first = interactions()
    assert first == interactions()
    assert "step: section[1]" in first


def test_a_request_made_twice_is_recorded_and_paid_once(tmp_path: Path) -> None:
    tests = TESTS.replace("loud black", "green again").replace(
        "{topic: black tea, loud: true}", "{topic: green tea, loud: true}"
    )
    write(tmp_path, tests=tests)
    with FakeOpenAI(responder=responder) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", KEY)
        env.setenv("OPENAI_BASE_URL", server.base_url)
        code, out = flowgpt("test", str(tmp_path / "tea.yaml"), "--record")
        assert code == 0, out
        # outline and write are the same for both cases: only the shout is new
        assert len(server.chat_requests) == 4
    cassette = load_cassette(tmp_path / "tea.cassette.yaml")
    assert [(x.case, x.step) for x in cassette.interactions] == [
        ("green", "outline"),
        ("green", "write"),
        ("green", "(judge)"),
        ("green again", "shout"),
    ]
    assert flowgpt("test", str(tmp_path / "tea.yaml"))[0] == 0


def test_requests_left_from_an_older_version_are_pointed_out(recorded: Path) -> None:
    tests = recorded.with_name("tea.test.yaml")
    judge = "      - output: note\n        judge: Is it about tea? Answer yes or no.\n"
    assert judge in tests.read_text()
    tests.write_text(tests.read_text().replace(judge, ""))
    code, out = flowgpt("test", str(recorded))
    assert code == 0, out
    assert "1 recorded request was not asked for (left from an older version?)" in out


def test_a_refused_response_format_is_replayed_as_refused(tmp_path: Path) -> None:
    class NoStructuredOutputs(Scripted):
        async def complete(
            self, request: ChatRequest, *, on_text: OnText | None = None
        ) -> ChatResponse:
            fmt = request.response_format or {}
            if fmt.get("type") == "json_schema":
                self.requests.append((_step(), request))
                raise BadRequestError("response_format json_schema is not supported", status=400)
            return await super().complete(request, on_text=on_text)

    path = _suite(tmp_path, "{output: title, equals: Green tea}")
    provider = NoStructuredOutputs(REPLIES)
    recorded = run_suite_sync(load_suite(path), mode="record", provider=provider)
    assert recorded.ok, recorded.explain()
    formats = [(r.response_format or {}).get("type") for step, r in provider.requests]
    assert formats[:2] == ["json_schema", "json_object"]  # refused, then asked less strictly
    text = path.with_name("tea.cassette.yaml").read_text()
    assert "refused:\n    status: 400\n    message: response_format json_schema" in text
    assert run_suite_sync(load_suite(path)).ok


def test_recording_one_case_keeps_what_the_others_recorded(recorded: Path) -> None:
    code, out = flowgpt("test", str(recorded), "--record", "--mock", "--case", "green")
    assert code == 1  # the mock's replies do not say "tea": that case fails, and is recorded
    cassette = load_cassette(recorded.parent / "tea.cassette.yaml")
    by_case = {(x.case, x.step) for x in cassette.interactions}
    assert ("loud black", "shout") in by_case
    assert cassette.provider == "mock"
    code, out = flowgpt("test", str(recorded), "--case", "loud black")
    assert code == 0, out


def test_a_provider_failure_while_recording_keeps_the_old_cassette(
    recorded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (recorded.parent / "tea.cassette.yaml").read_text()
    junit = recorded.parent / "junit.xml"
    with FakeOpenAI(responder=responder) as server:
        server.queue(Fault.unauthorized(), times=10)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        code, out = flowgpt("test", str(recorded), "--record", "--junit", str(junit))
    assert code == 1
    assert "ERROR green" in out.replace("  ", " ")
    assert "the cassette was not written" in out
    assert (recorded.parent / "tea.cassette.yaml").read_text() == before
    suite = next(iter(junitparser.JUnitXml.fromfile(str(junit))))
    assert (suite.tests, suite.errors, suite.failures) == (2, 2, 0)
    assert KEY not in junit.read_text() and KEY not in out


def test_the_cassette_keeps_no_credentials_of_the_endpoint(tmp_path: Path) -> None:
    workflow = write(tmp_path)
    with FakeOpenAI(responder=responder) as server, pytest.MonkeyPatch.context() as env:
        secret_url = server.base_url.replace("http://", "http://user:s3cret@")
        env.setenv("OPENAI_API_KEY", KEY)
        env.setenv("OPENAI_BASE_URL", secret_url)
        code, out = flowgpt("test", str(workflow), "--record")
        assert code == 0, out
        assert server.chat_requests
    assert "s3cret" not in (tmp_path / "tea.cassette.yaml").read_text()
    assert load_cassette(tmp_path / "tea.cassette.yaml").endpoint == server.base_url


@pytest.mark.parametrize(
    ("url", "written"),
    [
        ("http://user:pw@example.com:8443/v1?key=s3cret#top", "http://example.com:8443/v1"),
        ("http://user:pw@example.com:99999/v1?key=s3cret", "http://example.com/v1"),
        ("http://[::1/v1", None),  # not a URL: nothing is written
        ("local:/home/me/models/tiny.gguf", "local"),
    ],
)
def test_the_endpoint_is_written_without_what_is_private(
    tmp_path: Path, url: str, written: str | None
) -> None:
    path = tmp_path / "c.cassette.yaml"
    save_cassette(Cassette(provider="openai", endpoint=url), path)
    assert load_cassette(path).endpoint == written
    assert "s3cret" not in path.read_text() and "pw@" not in path.read_text()


def test_no_cassette_is_a_clear_error_that_says_how_to_record(tmp_path: Path) -> None:
    workflow = write(tmp_path)
    code, out = flowgpt("test", str(workflow))
    assert code == 2
    assert "tea.cassette.yaml: error: no cassette to replay" in out
    assert f"record it first: flowgpt test {tmp_path / 'tea.test.yaml'} --record" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("cassette", "message"),
    [
        (
            b"version: 2\ninteractions: []\n",
            "error: this is not a flowgpt cassette: unsupported cassette version 2",
        ),
        (
            b"version: 1\ninteractions: []\n# caf\xe9\n",
            "error: cannot read the cassette: it is not UTF-8",
        ),
        (
            b"version: 1\ncases:\n  green: {latency_s: fast}\ninteractions: []\n",
            "error: this is not a flowgpt cassette: cases.green: latencies must be numbers",
        ),
        (
            b"version: 1\ncases:\n  green: {latency_s: 1, steps: {write: [2]}}\n",
            "error: this is not a flowgpt cassette: cases.green: latencies must be numbers",
        ),
    ],
    ids=["version", "not-utf8", "latency", "step-latency"],
)
def test_a_broken_cassette_is_exit_2_saying_what_is_wrong(
    tmp_path: Path, cassette: bytes, message: str
) -> None:
    workflow = write(tmp_path)
    (tmp_path / "tea.cassette.yaml").write_bytes(cassette)
    code, out = flowgpt("test", str(workflow))
    assert code == 2, out
    assert f"{tmp_path / 'tea.cassette.yaml'}: {message}" in out, out
    assert f"record it first: flowgpt test {tmp_path / 'tea.test.yaml'} --record" in out
    assert "Traceback" not in out


# -- every kind of expectation ------------------------------------------------------------------


class Scripted:
    """Replies by the step that asks (``current_call``); the mock's reply otherwise."""

    name = "mock"
    model_is_label = False

    def __init__(self, replies: Mapping[str, str], latency_s: float = 0.0) -> None:
        self.replies = dict(replies)
        self.latency_s = latency_s
        self.requests: list[tuple[str | None, ChatRequest]] = []

    def resolved_base_url(self) -> None:
        return None

    async def complete(
        self, request: ChatRequest, *, on_text: OnText | None = None
    ) -> ChatResponse:
        import asyncio

        step = _step()
        self.requests.append((step, request))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        text = self.replies.get(step or "") or default_reply(request)[0]
        return ChatResponse(text=text, usage=Usage(100, 20), finish_reason="stop")

    async def aclose(self) -> None:
        return None


REPLIES = {
    "outline": '{"title": "Green tea", "points": ["origin", "brewing"]}',
    "write": "Green tea comes from China.\nBrew it at 80 degrees.",
    "(judge)": '{"answer": "yes", "reason": "it says where it comes from"}',
}
NOTE = "Green tea comes from China.\nBrew it at 80 degrees."

# (expectation, holds?, text the report must show when it does not)
KINDS = [
    ("{output: title, equals: Green tea}", True, None),
    ("{output: title, equals: Black tea}", False, 'actual: "Green tea"'),
    ("{step: outline, equals: {title: Green tea, points: [origin, brewing]}}", True, None),
    ("{step: outline, equals: {title: Green tea, points: [origin]}}", False, '+    "brewing"'),
    ("{output: note, equals: 'Green tea comes from Japan.'}", False, "Green tea comes from China."),
    ("{output: note, contains: China}", True, None),
    ("{output: note, contains: 80}", True, None),  # a number is the text it is written as
    ("{output: note, contains: Japan}", False, "actual: Green tea comes from China."),
    ("{step: outline, contains: brewing}", True, None),  # JSON values: their JSON text
    ("{output: note, not_contains: Japan}", True, None),
    ("{output: note, not_contains: China}", False, "found at character 21"),
    ("{output: note, regex: '\\d+ degrees'}", True, None),
    ("{output: note, regex: '^Japan'}", False, "actual: Green tea comes from China."),
    ("{step: outline, schema: {type: object, required: [title]}}", True, None),
    ("{step: outline, schema: {required: [price]}}", False, "'price' is a required property"),
    ("{output: note, expr: 'len(value.split()) >= 5'}", True, None),
    ("{output: note, expr: 'value | length > 1000'}", False, "it gave false"),
    ("{output: note, expr: 'steps.outline.output.points | length == 2'}", True, None),
    ("{output: note, expr: 'value.nope.deeper'}", False, "the expression failed"),
    ("{output: note, judge: 'Does it say where it comes from?'}", True, None),
    ("{cost_usd: {max: 1}}", True, None),
    ("{cost_usd: {max: 0.0000001}}", False, "actual: $0.000"),
    ("{cost_usd: {min: 1}}", False, "cost at least $1"),
    ("{tokens: {max: 1000}}", True, None),
    ("{tokens: {max: 100}}", False, "actual: 240 tokens"),
    ("{step: outline, tokens: {max: 119}}", False, "actual: 120 tokens"),
    ("{latency_s: {max: 60}}", True, None),
]


def _suite(tmp_path: Path, expect: str, extra: str = "") -> Path:
    workflow = WORKFLOW.replace("defaults:", f"{extra}defaults:")
    tests = (
        f"workflow: tea.yaml\njudge_model: gpt-4o-mini\ncases:\n  - name: c\n"
        f"    inputs: {{topic: green tea}}\n    expect:\n      - {expect}\n"
    )
    write(tmp_path, workflow, tests)
    return tmp_path / "tea.test.yaml"


@pytest.mark.parametrize(("expect", "holds", "shown"), KINDS, ids=[k[0] for k in KINDS])
def test_each_expectation_kind_passes_and_fails_where_it_should(
    tmp_path: Path, expect: str, holds: bool, shown: str | None
) -> None:
    suite = load_suite(_suite(tmp_path, expect))
    result = run_suite_sync(suite, mode="live", provider=Scripted(REPLIES))
    (case,) = result.cases
    assert case.passed is holds, case.explain()
    if not holds:
        explained = case.explain()
        assert f"{tmp_path / 'tea.test.yaml'}:7: " in explained  # file:line of the expectation
        assert "\n  actual: " in explained, explained  # every failure shows the actual value
        assert shown is not None and shown in explained, explained


def test_a_judge_that_says_no_fails_with_its_reason(tmp_path: Path) -> None:
    replies = {**REPLIES, "(judge)": '{"answer": "no", "reason": "it never names a country"}'}
    suite = load_suite(_suite(tmp_path, "{output: note, judge: 'Does it name a country?'}"))
    provider = Scripted(replies)
    (case,) = run_suite_sync(suite, mode="live", provider=provider).cases
    assert not case.passed
    assert "the judge: it never names a country" in case.explain()
    assert "actual: Green tea comes from China." in case.explain()
    (judge,) = [r for step, r in provider.requests if step == "(judge)"]
    assert judge.model == "gpt-4o-mini" and "Does it name a country?" in str(judge.messages)
    assert "Green tea comes from China." in judge.messages[-1]["content"]


def test_a_judge_that_answers_neither_yes_nor_no_fails(tmp_path: Path) -> None:
    replies = {**REPLIES, "(judge)": "Perhaps."}
    suite = load_suite(_suite(tmp_path, "{output: note, judge: 'Is it good?'}"))
    (case,) = run_suite_sync(suite, mode="live", provider=Scripted(replies)).cases
    assert not case.passed and "neither yes nor no" in case.explain()


def test_the_judge_model_is_configurable(tmp_path: Path) -> None:
    path = _suite(tmp_path, "{output: note, judge: 'Is it short?', model: gpt-4o}")
    path.write_text(path.read_text() + "      - {output: title, judge: 'Is it a title?'}\n")
    path.write_text(path.read_text().replace("judge_model: gpt-4o-mini", "judge_model: gpt-4.1"))
    provider = Scripted(REPLIES)
    result = run_suite_sync(load_suite(path), mode="live", provider=provider)
    assert result.ok, result.explain()
    models = sorted(r.model for step, r in provider.requests if step == "(judge)")
    assert models == ["gpt-4.1", "gpt-4o"]


def test_an_unpriced_cost_fails_a_cost_limit_and_says_why(tmp_path: Path) -> None:
    path = _suite(tmp_path, "{cost_usd: {max: 1}}")
    path.with_name("tea.yaml").write_text(WORKFLOW.replace("gpt-4o-mini", "my-own-model"))
    (case,) = run_suite_sync(load_suite(path), mode="live", provider=Scripted(REPLIES)).cases
    assert not case.passed
    assert "the cost is unknown" in case.explain() and "actual: unpriced" in case.explain()


def test_latency_limits_hold_in_a_replay_as_they_were_recorded(tmp_path: Path) -> None:
    path = _suite(tmp_path, "{latency_s: {max: 0.01}}")
    slow = Scripted(REPLIES, latency_s=0.05)
    recorded = run_suite_sync(load_suite(path), mode="record", provider=slow)
    assert not recorded.ok and recorded.cassette_written
    replayed = run_suite_sync(load_suite(path))
    (case,) = replayed.cases
    assert not case.passed and case.latency_s >= 0.1  # two calls of 0.05 s, as recorded
    assert "should take at most 0.01 seconds" in case.explain()
    assert re.search(r"actual: \d+\.\d\ds", case.explain()), case.explain()


def test_a_failed_run_fails_its_case_with_the_error(tmp_path: Path) -> None:
    replies = {**REPLIES, "outline": "not JSON at all"}
    (case,) = run_suite_sync(
        load_suite(_suite(tmp_path, "{output: note, contains: tea}")),
        mode="live",
        provider=Scripted(replies),
    ).cases
    assert case.status == "failed"
    assert "step `outline`: the reply failed validation" in case.explain()


# -- the report, exit codes, JUnit, JSON ---------------------------------------------------------


def test_report_exit_codes_and_junit(recorded: Path) -> None:
    junit = recorded.parent / "junit.xml"
    code, out = flowgpt("test", str(recorded), "--junit", str(junit))
    assert code == 0, out
    suites = list(junitparser.JUnitXml.fromfile(str(junit)))
    assert [(s.tests, s.failures, s.errors) for s in suites] == [(2, 0, 0)]

    tests = recorded.with_name("tea.test.yaml")
    tests.write_text(tests.read_text().replace("contains: TEA", "contains: COFFEE"))
    code, out = flowgpt("test", str(recorded), "--junit", str(junit))
    assert code == 1
    assert f'{tests}:16: step `shout` should contain "COFFEE"' in out
    assert 'actual: SAY "A SHORT NOTE ABOUT TEA.' in out
    xml = junitparser.JUnitXml.fromfile(str(junit))
    (suite,) = list(xml)
    assert (xml.tests, xml.failures, xml.errors) == (2, 1, 0)
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (2, 1, 0, 0)
    cases = {c.name: c for c in suite}
    assert cases["green"].is_passed
    (failure,) = cases["loud black"].result
    assert isinstance(failure, junitparser.Failure)
    assert failure.message == 'step `shout` should contain "COFFEE"'
    assert "actual:" in (failure.text or "")

    tests.write_text(tests.read_text().replace("contains: COFFEE", "contians: TEA"))
    code, out = flowgpt("test", str(recorded), "--junit", str(junit))
    assert code == 2
    assert f"{tests}:17:9: error: unknown key `contians`" in out
    assert "did you mean `contains`?" in out and "Traceback" not in out


def test_json_report(recorded: Path) -> None:
    code, out = flowgpt("test", str(recorded), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["mode"] == "replay" and data["passed"] == 2
    green = data["cases"][0]
    assert green["name"] == "green" and green["status"] == "passed"
    assert [e["kind"] for e in green["expectations"]] == ["schema", "contains", "judge"]
    assert green["outputs"]["title"] == "Green Tea"


@pytest.mark.parametrize(
    ("tests", "line", "message"),
    [
        ("  - {step: outlne, contains: x}", 7, "unknown step `outlne`; did you mean `outline`?"),
        ("  - {output: notes, contains: x}", 7, "unknown output `notes`; did you mean `note`?"),
        ("  - {output: note, regex: '(unclosed'}", 7, "invalid regular expression"),
        ("  - {output: note, expr: 'value >'}", 7, "`expr`: "),
        ("  - {output: note, schema: {type: objekt}}", 7, "invalid JSON Schema"),
        (
            "  - {output: note, contains: x, regex: y}",
            7,
            "exactly one kind (found contains, regex)",
        ),
        ("  - {contains: x}", 7, "`contains` needs `step:` or `output:`"),
        ("  - {output: note, cost_usd: {max: 1}}", 7, "limits the whole case, or one step"),
        ("  - {cost_usd: {}}", 7, "a limit needs `max:`"),
        ("  - {output: note, contains: x, model: gpt-4o}", 7, "`model:` only goes with `judge:`"),
    ],
)
def test_a_bad_test_file_is_exit_2_at_file_and_line(
    tmp_path: Path, tests: str, line: int, message: str
) -> None:
    text = (
        "workflow: tea.yaml\ncases:\n  - name: c\n    inputs: {topic: tea}\n"
        f"    expect:\n    #\n  {tests}\n"
    )
    write(tmp_path, tests=text)
    code, out = flowgpt("test", str(tmp_path / "tea.yaml"))
    assert code == 2, out
    assert f"{tmp_path / 'tea.test.yaml'}:{line}:" in out, out
    assert message in out, out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("tests", "message"),
    [
        (
            "cases:\n  - name: a\n    inputs: {topic: x}\n  - name: a\n    inputs: {topic: y}\n",
            ":4:11: error: duplicate case name `a` (first used on line 2)",
        ),
        (
            "cases:\n  - name: a\n    inputs: {topik: x}\n",
            ":3:13: error: case `a`: unknown input `topik`; did you mean `topic`?",
        ),
        (
            "cases:\n  - name: a\n    inputs: {topic: 3}\n",
            ":3:13: error: case `a`: input `topic`",
        ),
        (
            "cases:\n  - name: a\n    inputs: {topic: x}\n"
            "    expect: [{output: note, judge: 'ok?'}]\n",
            ":4:36: error: no model to answer `judge:`",
        ),
        ("workflow: nope.yaml\ncases: [{name: a}]\n", ":1:11: error: workflow file not found"),
        ("", ":1:1: error: the test file file is empty"),
    ],
)
def test_more_mistakes_in_test_files(tmp_path: Path, tests: str, message: str) -> None:
    workflow = WORKFLOW.replace("defaults: {model: gpt-4o-mini, ", "defaults: {")
    write(tmp_path, workflow=workflow, tests=tests)
    for step in ("outline", "write", "shout"):  # no default model: steps name theirs
        workflow = workflow.replace(f"  - id: {step}\n", f"  - id: {step}\n    model: gpt-4o\n")
    (tmp_path / "tea.yaml").write_text(workflow)
    code, out = flowgpt("test", str(tmp_path / "tea.test.yaml"))
    assert code == 2, out
    assert message in out.replace(str(tmp_path / "tea.test.yaml"), ""), out


def test_a_workflow_without_a_test_file_says_how_to_start_one(tmp_path: Path) -> None:
    (tmp_path / "tea.yaml").write_text(WORKFLOW)
    code, out = flowgpt("test", str(tmp_path / "tea.yaml"))
    assert code == 2
    assert f"no test file for this workflow: create {tmp_path / 'tea.test.yaml'}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--record", "--live"], "--record and --live: give one (--record also runs live)"),
        (["--mock"], "a replay answers from the cassette; --mock and --local go with --record"),
        (["--model", "a", "--model", "b"], "comparing models calls each of them: add --live"),
        (["--case", "gren"], "no case named `gren`; did you mean `green`?"),
    ],
)
def test_command_line_mistakes_are_exit_2(recorded: Path, args: list[str], message: str) -> None:
    code, out = flowgpt("test", str(recorded), *args)
    assert code == 2, (args, out)
    assert message in out, out


def test_a_test_file_with_tests_too_is_exit_2(tmp_path: Path) -> None:
    write(tmp_path)
    tests = str(tmp_path / "tea.test.yaml")
    code, out = flowgpt("test", tests, "--tests", tests)
    assert code == 2, out
    assert "give a workflow with --tests, or a test file alone" in out


def test_a_test_file_that_names_no_workflow_asks_which_it_tests(tmp_path: Path) -> None:
    write(tmp_path, tests=TESTS.replace("workflow: tea.yaml\n", ""))
    tests = tmp_path / "tea.test.yaml"
    tests.rename(tmp_path / "coffee.test.yaml")
    code, out = flowgpt("test", str(tmp_path / "coffee.test.yaml"))
    assert code == 2, out
    assert (
        f"{tmp_path / 'coffee.test.yaml'}:1:1: error: no `workflow:` and no coffee.yaml beside "
        "the test file"
    ) in out, out
    assert "add `workflow: NAME.yaml` (relative to the test file)" in out
    with pytest.raises(SpecError, match=r"coffee\.test\.yaml: which workflow does it test\?"):
        load_suite(tmp_path / "coffee.test.yaml")


def test_validate_checks_test_files_and_cassettes_too(recorded: Path) -> None:
    folder = recorded.parent
    files = [str(folder / n) for n in ("tea.yaml", "tea.test.yaml", "tea.cassette.yaml")]
    code, out = flowgpt("validate", *files)
    assert code == 0, out
    (folder / "tea.cassette.yaml").write_text("version: 1\ninteractions: [{request: 3}]\n")
    (folder / "tea.test.yaml").write_text(TESTS.replace("step: shout", "step: shoot"))
    code, out = flowgpt("validate", *files)
    assert code == 2
    assert f"{folder / 'tea.test.yaml'}:16:15: error: unknown step `shoot`" in out
    assert f"{folder / 'tea.cassette.yaml'}: error: this is not a flowgpt cassette" in out


# -- comparing models ---------------------------------------------------------------------------


def test_the_model_matrix_against_the_loopback_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflow = (
        "version: 1\nname: answer\ndefaults: {max_tokens: 100}\n"
        "pricing:\n  gpt-4o-mini: {input: 1, output: 2}\n  gpt-4.1-mini: {input: 3, output: 4}\n"
        "inputs:\n  q: {type: string}\n"
        "steps:\n  - id: answer\n    model: gpt-4o-mini\n    prompt: '{{ inputs.q }}'\n"
        "outputs:\n  answer: '{{ steps.answer.output }}'\n"
    )
    tests = (
        "cases:\n"
        "  - name: tea\n    inputs: {q: 'Which tea?'}\n"
        "    expect: [{output: answer, contains: tea}]\n"
        "  - name: any\n    inputs: {q: 'Anything?'}\n"
        "    expect: [{output: answer, regex: '.'}]\n"
    )
    write(tmp_path, workflow, tests)

    def by_model(body: dict[str, Any]) -> Reply:
        if body["model"] == "gpt-4o-mini":
            return Reply("Green tea.", prompt_tokens=100, completion_tokens=50)
        return Reply("Coffee.", prompt_tokens=100, completion_tokens=50, delay_s=0.05)

    junit = tmp_path / "junit.xml"
    with FakeOpenAI(responder=by_model) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        args = ["test", str(tmp_path / "tea.yaml"), "--live", "--junit", str(junit)]
        args += ["--model", "gpt-4o-mini", "--model", "gpt-4.1-mini"]
        code, out = flowgpt(*args)
        code_json, out_json = flowgpt(*args, "--json")
        sent = sorted(r.body["model"] for r in server.chat_requests)
    assert code == code_json == 1  # gpt-4.1-mini fails a case
    assert sent == ["gpt-4.1-mini"] * 4 + ["gpt-4o-mini"] * 4
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "pass rate" in line)
    matrix = [line.split() for line in lines[header:]]
    assert matrix[0] == ["model", "passed", "pass", "rate", "cost", "mean", "latency"]
    # 100 prompt + 50 completion tokens a case: $0.0002 at $1/$2 a million, $0.0005 at $3/$4
    assert matrix[1][:4] == ["gpt-4o-mini", "2/2", "100%", "$0.0004"]
    assert matrix[2][:4] == ["gpt-4.1-mini", "1/2", "50%", "$0.001"]
    data = json.loads(out_json)
    models = {m["model"]: m for m in data["models"]}
    assert models["gpt-4o-mini"]["pass_rate"] == 1.0 and models["gpt-4.1-mini"]["pass_rate"] == 0.5
    assert models["gpt-4o-mini"]["cost_usd"] == "0.0004"
    assert models["gpt-4.1-mini"]["cost_usd"] == "0.0010"
    assert models["gpt-4.1-mini"]["mean_latency_s"] >= 0.05
    suites = {s.name: s for s in junitparser.JUnitXml.fromfile(str(junit))}
    tests_file = str(tmp_path / "tea.test.yaml")
    assert suites[f"{tests_file} [gpt-4o-mini]"].failures == 0
    assert suites[f"{tests_file} [gpt-4.1-mini]"].failures == 1


# -- the shipped examples, the schema, the pytest plugin ------------------------------------------

SHIPPED = sorted((ROOT / "workflows").glob("*.test.yaml"))


def test_every_shipped_workflow_has_tests_and_a_cassette() -> None:
    workflows = {
        p.name.removesuffix(".yaml")
        for p in (ROOT / "workflows").glob("*.yaml")
        if not p.name.endswith((".test.yaml", ".cassette.yaml"))
    }
    assert {p.name.removesuffix(".test.yaml") for p in SHIPPED} == workflows
    assert all(p.with_name(p.name.replace(".test.", ".cassette.")).exists() for p in SHIPPED)


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_cassettes_replay_and_pass(path: Path) -> None:
    result = run_suite_sync(load_suite(path))
    assert result.ok, (
        f"{result.explain()}\nif the workflow changed on purpose, record again: "
        f"flowgpt test {path.relative_to(ROOT)} --record --mock"
    )


def test_the_shipped_test_schema_is_fresh() -> None:
    shipped = json.loads((ROOT / "schemas" / "test.schema.json").read_text())
    assert shipped == suite_json_schema(), "run: flowgpt schema --test > schemas/test.schema.json"
    code, out = flowgpt("schema", "--test")
    assert code == 0 and json.loads(out) == shipped


def test_the_pytest_plugin_runs_cases_as_items(recorded: Path) -> None:
    folder = recorded.parent
    (folder / "conftest.py").write_text('pytest_plugins = ["flowgpt.testing.pytest_plugin"]\n')
    tests = folder / "tea.test.yaml"
    tests.write_text(tests.read_text().replace("contains: TEA", "contains: COFFEE"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", str(folder)],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
        timeout=120,
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "1 failed, 1 passed" in out
    assert "PASSED tea.test.yaml::green" in out
    assert "FAILED tea.test.yaml::loud black" in out
    assert f'{tests}:16: step `shout` should contain "COFFEE"' in out


def _step() -> str | None:
    call = current_call()
    return call.step if call is not None else None
