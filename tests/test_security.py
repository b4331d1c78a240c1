"""The Jinja sandbox and secrets, end to end (DESIGN.md §4, issue 5 "Security").

- Template-injection payloads written in a workflow are refused with a clear error (exit 2)
  before any request is made; the same payloads given as input values, or returned by the
  model, are data: they reach the model literally and are never evaluated.
- Templates see no environment variables.
- ``prompt_file`` / ``system_file`` stay inside the workflow's folder, and a refusal never
  prints the outside file.
- A key never appears in anything a failing run shows or writes.

tests/test_templating.py checks the sandbox on ``templating.render`` alone; here the
payloads go through ``Engine`` runs and the ``flowgpt`` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flowgpt import Engine, MockProvider, SpecError, TemplateError, parse_workflow, templating
from flowgpt.errors import FlowgptError, ServerError
from flowgpt.results import RunResult
from flowgpt.spec.loader import load_workflow
from tests.support.fake_openai import FakeOpenAI, Fault, Reply, echo_responder

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent

SECRET_ENV = "FLOWGPT_TEST_SECRET"
SECRET = "env-secret-5b0c2e7a91d4"
OUTSIDE = "OUTSIDE-FILE-CONTENT-d41d8cd9"

WORKFLOW = """\
version: 1
name: sandbox
defaults: {{model: gpt-4o-mini, max_tokens: 20}}
inputs:
  topic: {{type: string, default: tea}}
  n: {{type: integer, default: 3}}
  doc: {{type: object, default: {{title: T}}}}
steps:
  - id: one
    prompt: {prompt}
"""


def workflow(prompt: str) -> str:
    return WORKFLOW.format(prompt=json.dumps(prompt))


def run(text: str, inputs: dict[str, Any] | None = None, replies: Any = None) -> Any:
    mock = MockProvider(replies)
    result = Engine(provider=mock).run_sync(parse_workflow(text), inputs or {})
    return result, mock


@pytest.fixture(autouse=True)
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret in the environment that no template may reach."""
    monkeypatch.setenv(SECRET_ENV, SECRET)


# -- template injection in the workflow: refused before any call ---------------------------

# payload -> what the error must name (the blocked attribute, the unknown name, the limit).
INJECTIONS: dict[str, str] = {
    "{{ ''.__class__.__mro__[1].__subclasses__() }}": "unsafe attribute `__class__`",
    "{{ cycler.__init__.__globals__ }}": "unsafe attribute `__init__`",
    "{{ self.__init__.__globals__ }}": "unsafe attribute `__init__`",
    "{{ joiner.__init__.__globals__.os }}": "unsafe attribute `__init__`",
    "{{ namespace.__init__.__globals__ }}": "unsafe attribute `__init__`",
    "{{ '{0.__class__}'.format(inputs) }}": "unsafe attribute `__class__`",
    "{{ '{0[topic].__class__.__mro__}'.format(inputs) }}": "unsafe attribute `__class__`",
    "{{ '%s' % inputs.__class__ }}": "`__class__`",
    "{{ '%s' % inputs.topic.__class__ }}": "unsafe attribute `__class__`",
    "{{ '%s' | format(inputs.doc.__class__) }}": "unsafe attribute `__class__`",
    "{{ inputs.__class__.__base__.__subclasses__() }}": "`__class__`",
    "{{ inputs.topic.__class__.__base__.__subclasses__() }}": "unsafe attribute `__class__`",
    "{% for x in ().__class__.__base__.__subclasses__() %}{% endfor %}": "`__class__`",
    "{{ inputs.topic | attr('__class__') }}": "unsafe attribute `__class__`",
    "{{ [inputs.doc] | map(attribute='__class__') | list }}": "unsafe attribute `__class__`",
    "{{ inputs.topic.upper.__self__ }}": "unsafe attribute `__self__`",
    "{{ self._TemplateReference__context }}": "unsafe attribute `_TemplateReference__context`",
    "{{ lipsum.__globals__ }}": "`lipsum`",
    "{{ config }}": "`config`",
    "{{ request }}": "`request`",
    "{{ environ }}": "`environ`",
    "{{ range(10**9) | list }}": "too large",
    "{{ 'x' * 10**10 }}": "too large",
    "{{ 10**10 * 'x' }}": "too large",
    "{{ ['x'] * 10**9 }}": "too large",
    "{{ ('x' * 10**7) * 10 }}": "too large",
    "{{ 'ab' * (inputs.n * 10**9) }}": "too large",
    "{{ 7 ** 100000000 }}": "too large",  # (Jinja's ** is left-associative)
}


@pytest.mark.timeout(10)  # refused, not hanging
@pytest.mark.parametrize("payload", list(INJECTIONS))
def test_injection_in_a_prompt_is_refused_before_any_call(payload: str) -> None:
    mock = MockProvider()
    with pytest.raises(SpecError) as caught:
        Engine(provider=mock).run_sync(parse_workflow(workflow(f"About: {payload}")))

    err = caught.value
    assert err.exit_code == 2
    shown = err.format()
    assert INJECTIONS[payload] in shown
    assert "step `one`" in shown
    assert mock.requests == []  # nothing was sent
    # Nothing of Python's insides, or of the environment, leaks into the message.
    for leak in ("<class", "<module", "<function", "<built-in", SECRET):
        assert leak not in shown
    if isinstance(err, TemplateError):  # refused at render time (else statically)
        assert err.step == "one"
        assert err.result is not None and err.result.steps["one"].status == "failed"


@pytest.mark.parametrize(
    "place",
    ["system", "messages", "when", "output"],
)
@pytest.mark.parametrize(
    "payload",
    ["cycler.__init__.__globals__.os.environ", "''.__class__.__mro__[1].__subclasses__()"],
)
def test_injection_is_refused_wherever_a_template_is(place: str, payload: str) -> None:
    template = json.dumps(f"{{{{ {payload} }}}}")  # JSON strings are YAML strings
    step = {
        "system": f"    system: {template}\n    prompt: hi\n",
        "messages": f"    messages:\n      - {{role: user, content: {template}}}\n",
        "when": f"    when: {json.dumps(payload)}\n    prompt: hi\n",
        "output": "    prompt: hi\n",
    }[place]
    text = "version: 1\nname: s\ndefaults: {model: gpt-4o-mini}\nsteps:\n  - id: one\n" + step
    if place == "output":
        text += f"outputs:\n  leaked: {template}\n"
    mock = MockProvider()
    with pytest.raises(SpecError) as caught:
        Engine(provider=mock).run_sync(parse_workflow(text))
    assert "unsafe attribute" in caught.value.format()
    assert caught.value.exit_code == 2
    # Found by the static check, so refused before anything is sent, outputs included.
    assert mock.requests == []


def test_mutating_the_context_is_refused_and_changes_nothing() -> None:
    text = (
        "version: 1\nname: s\ndefaults: {model: gpt-4o-mini}\n"
        "inputs:\n  doc: {type: object}\nsteps:\n"
        "  - id: one\n    prompt: \"{{ inputs.doc.update({'title': 'pwned'}) }}\"\n"
    )
    doc = {"title": "T"}
    with pytest.raises(TemplateError, match="unsafe attribute `update`"):
        run(text, {"doc": doc})
    assert doc == {"title": "T"}


# Memory bombs that slip past the per-operation limit (MAX_SEQUENCE_ITEMS): each builds a
# string a few times larger than the limit (tens of MB: cheap here, but the same shapes
# scale to gigabytes, e.g. `range(99999) | join('x' * 9999999)` is ~10**12 characters).
LIMIT = templating.MAX_SEQUENCE_ITEMS
GROWTH_BOMBS = {
    "output-concatenation": f"{{% set s = 'x' * {LIMIT} %}}{{{{ s }}}}{{{{ s }}}}",
    "loop-output": f"{{% set s = 'x' * {LIMIT} %}}{{% for _ in 'abc' %}}{{{{ s }}}}{{% endfor %}}",
    "tilde-concat": f"{{% set s = 'x' * {LIMIT} %}}{{{{ (s ~ s) | length }}}}",
    "plus-concat": f"{{% set s = 'x' * {LIMIT} %}}{{{{ (s + s) | length }}}}",
    "percent-width": f"{{{{ ('%{2 * LIMIT}s' % 'x') | length }}}}",
    "format-width": f"{{{{ '{{:>{2 * LIMIT}}}'.format('x') | length }}}}",
    "format-filter-width": f"{{{{ ('%{2 * LIMIT}s' | format('x')) | length }}}}",
    "center-filter": f"{{{{ ('x' | center({2 * LIMIT})) | length }}}}",
    "ljust-method": f"{{{{ 'x'.ljust({2 * LIMIT}) | length }}}}",
    "join-filter": f"{{{{ (range(3) | join('x' * {LIMIT})) | length }}}}",
    "replace-filter": f"{{{{ ('xxx' | replace('x', 'y' * {LIMIT})) | length }}}}",
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("source", list(GROWTH_BOMBS.values()), ids=list(GROWTH_BOMBS))
def test_strings_larger_than_the_sandbox_limit_are_refused(source: str) -> None:
    # templating.render directly: through a run, a prompt this large would then spend
    # tens of seconds in the context-window pre-flight's tokenizer.
    with pytest.raises(TemplateError, match="too large"):
        templating.render(source, {"inputs": {}, "steps": {}}, step="one")


# -- input values and model replies are data, never templates ------------------------------

DATA_PAYLOADS = [
    "{{ 7*7 }}",
    "{% for i in range(3) %}x{% endfor %}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ range(10**9) | list }}",
    "{{ 'x' * 10**10 }}",
    "{# comment #}{{ config }}{% raw %}",
    "{{",
    "${FLOWGPT_TEST_SECRET} $FLOWGPT_TEST_SECRET %FLOWGPT_TEST_SECRET%",
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("payload", list(dict.fromkeys(DATA_PAYLOADS + list(INJECTIONS))))
def test_an_input_value_is_rendered_literally(payload: str) -> None:
    text = workflow("About: {{ inputs.topic }}.") + "outputs:\n  echo: '{{ inputs.topic }}'\n"
    result, mock = run(text, {"topic": payload}, ["done"])
    assert mock.requests[0].messages[-1]["content"] == f"About: {payload}."
    assert result.outputs["echo"] == payload
    assert SECRET not in json.dumps(result.to_dict())


@pytest.mark.parametrize("payload", DATA_PAYLOADS[:4])
def test_a_model_reply_is_passed_on_literally(payload: str) -> None:
    text = workflow("first") + (
        "  - id: two\n    prompt: 'Go on: {{ steps.one.output }}'\n"
        "outputs:\n  raw: '{{ steps.one.text }}'\n"
    )
    result, mock = run(text, {}, [payload, "second"])
    assert mock.requests[1].messages[-1]["content"] == f"Go on: {payload}"
    assert result.outputs["raw"] == payload


@pytest.mark.parametrize(
    "value", ["{0.__class__}", "{0[topic].__class__.__mro__}", "{0.__init__.__globals__}"]
)
def test_an_input_used_as_a_format_string_cannot_reach_internals(value: str) -> None:
    # The author formats with a value the user gives: the sandbox's str.format checks apply.
    with pytest.raises(TemplateError, match="unsafe attribute") as caught:
        run(workflow("{{ inputs.topic.format(inputs) }}"), {"topic": value})
    assert caught.value.exit_code == 2
    assert "<class" not in caught.value.format()


def test_an_input_default_is_not_expanded_from_the_environment() -> None:
    text = (
        "version: 1\nname: s\ndefaults: {model: gpt-4o-mini}\n"
        "inputs:\n  who: {default: '$FLOWGPT_TEST_SECRET ${FLOWGPT_TEST_SECRET} ~'}\n"
        "steps:\n  - id: one\n    prompt: 'Hi {{ inputs.who }}'\n"
    )
    _, mock = run(text, {}, ["ok"])
    assert mock.requests[0].messages[-1]["content"] == (
        "Hi $FLOWGPT_TEST_SECRET ${FLOWGPT_TEST_SECRET} ~"
    )


# -- templates see no environment variables ----------------------------------------------

ENV_PROBES = [
    "{{ environ }}",
    "{{ env }}",
    "{{ os.environ }}",
    f"{{{{ environ.{SECRET_ENV} }}}}",
    f"{{{{ env['{SECRET_ENV}'] }}}}",
    "{{ getenv('FLOWGPT_TEST_SECRET') }}",
    "{{ lookup('env', 'FLOWGPT_TEST_SECRET') }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ joiner.__init__.__globals__['os'].environ }}",
    "{{ namespace.__init__.__globals__.os.environ }}",
    "{{ self._TemplateReference__context.environment }}",
    "{{ range.__self__ }}",
    "{{ dict.__base__.__subclasses__() }}",
    "{{ inputs.__class__.__init__.__globals__ }}",
    "{{ '{0.__init__.__globals__[os].environ}'.format(cycler) }}",
    "{% set e = namespace() %}{{ e.__init__.__globals__ }}",
    "{% import 'os' as os %}{{ os.environ }}",
    "{% include '/proc/self/environ' %}",
    "{% extends '/proc/self/environ' %}",
    "{{ inputs }}{{ steps }}{{ inputs.keys() | list }}",
]


@pytest.mark.parametrize("probe", ENV_PROBES)
def test_no_template_reaches_the_environment(probe: str) -> None:
    assert os.environ[SECRET_ENV] == SECRET
    mock = MockProvider(["ok"])
    try:
        result = Engine(provider=mock).run_sync(parse_workflow(workflow(probe)))
    except FlowgptError as err:
        assert isinstance(err, SpecError), err.format()
        shown = err.format()
        assert mock.requests == []
    else:
        shown = json.dumps(result.to_dict())
        shown += json.dumps([r.messages for r in mock.requests])
    assert SECRET not in shown


# -- prompt_file / system_file stay inside the workflow's folder -------------------------


def make_layout(tmp_path: Path) -> Path:
    """tmp/outside/secret.md next to tmp/flow/ (the workflow folder), which holds
    prompts/ok.md and three symlinks: link-out.md and dir-out/ lead outside, link-in.md
    to prompts/ok.md."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text(f"{OUTSIDE} {{{{ inputs.topic }}}}\n")
    flow = tmp_path / "flow"
    (flow / "prompts").mkdir(parents=True)
    (flow / "prompts" / "ok.md").write_text("Inside about {{ inputs.topic }}\n")
    (flow / "link-out.md").symlink_to(outside / "secret.md")
    (flow / "dir-out").symlink_to(outside, target_is_directory=True)
    (flow / "link-in.md").symlink_to(flow / "prompts" / "ok.md")
    return flow


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return make_layout(tmp_path)


def write_flow(folder: Path, key: str, name: str, filename: str = "wf.yaml") -> Path:
    path = folder / filename
    path.write_text(
        "version: 1\nname: files\ndefaults: {model: gpt-4o-mini}\n"
        "inputs:\n  topic: {default: tea}\n"
        f"steps:\n  - id: one\n    {key}: {name}\n"
        + ("    prompt: hi\n" if key == "system_file" else "")
    )
    return path


ESCAPES = [
    "link-out.md",  # a symlink to a file outside
    "dir-out/secret.md",  # through a symlinked folder
    "../outside/secret.md",
    "prompts/../../outside/secret.md",
    "./prompts/../link-out.md",
]


@pytest.mark.parametrize("key", ["prompt_file", "system_file"])
@pytest.mark.parametrize("name", ESCAPES)
def test_an_included_file_outside_the_folder_is_refused(layout: Path, key: str, name: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_workflow(write_flow(layout, key, name))
    err = caught.value
    assert err.exit_code == 2
    assert any(
        f"`{key}: {name}` points outside the workflow's folder" in d.message
        for d in err.diagnostics
    )
    shown = err.format() + json.dumps([d.to_dict() for d in err.diagnostics])
    assert OUTSIDE not in shown


@pytest.mark.parametrize("name", ["prompts/ok.md", "link-in.md", "prompts/../prompts/ok.md"])
def test_an_included_file_inside_the_folder_is_read(layout: Path, name: str) -> None:
    wf = load_workflow(write_flow(layout, "prompt_file", name))
    result = Engine(provider=(mock := MockProvider(["ok"]))).run_sync(wf)
    assert result.ok
    assert mock.requests[0].messages[-1]["content"] == "Inside about tea"


# -- the command line: exit codes, and what a failing run shows and writes --------------------

KEY_SK = "sk-proj-" + "Zq9Xw8Vu7Ts6Rq5Po4Nm3Lk2"  # shaped like a real key
KEY_PLAIN = "fgt-plain-3c7d1e9f0a2b4c6d"  # not key-shaped: only exact scrubbing hides it

ECHO_KEY = "Incorrect API key provided: {raw_key} (masked {key})."


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    written: str  # the -o file, "" when none
    stored: bytes  # the run store and its WAL, when the CLI wrote one
    bodies: list[Any]  # the request bodies this run sent

    def everything(self) -> str:
        return self.stdout + self.stderr + self.written + self.stored.decode("latin-1")


def cli_cases(tmp: Path, layout: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (arguments after `flowgpt`, extra environment)."""
    injection = tmp / "injection.yaml"
    injection.write_text(workflow("{{ cycler.__init__.__globals__.os.environ }}"))
    literal = tmp / "literal.yaml"
    literal.write_text(workflow("About: {{ inputs.topic }}"))
    failing = tmp / "failing.yaml"
    failing.write_text(
        workflow("case {{ inputs.topic }}").replace("steps:", "provider: {max_retries: 0}\nsteps:")
    )
    out = str(tmp / "{name}.json")
    return {
        "injection": (["run", str(injection), "-o", out], {"OPENAI_API_KEY": KEY_PLAIN}),
        "literal": (
            ["run", str(literal), "-i", "topic={{ 7*7 }}", "--json", "-o", out],
            {"OPENAI_API_KEY": KEY_PLAIN},
        ),
        "symlink": (["run", str(write_flow(layout, "prompt_file", "link-out.md")), "--mock"], {}),
        "401": (
            ["run", str(failing), "-i", "topic=401", "--json", "-o", out],
            {"OPENAI_API_KEY": KEY_SK},
        ),
        "500": (
            ["run", str(failing), "-i", "topic=500", "--json", "-o", out],
            {"OPENAI_API_KEY": KEY_PLAIN},
        ),
    }


def responder(body: dict[str, Any]) -> Reply | Fault:
    said = body["messages"][-1]["content"]
    if said == "case 401":
        return Fault.unauthorized(ECHO_KEY)
    if said == "case 500":
        return Fault.server_error(500, "upstream failed for " + ECHO_KEY)
    return echo_responder(body)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CliRun]:
    """Every `flowgpt` run of this file, started at once (Python start-up dominates each)."""
    tmp = tmp_path_factory.mktemp("cli-security")
    layout_dir = make_layout(tmp_path_factory.mktemp("layout"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    base_env[SECRET_ENV] = SECRET
    with FakeOpenAI(responder=responder) as server:
        procs = {}
        for name, (args, extra) in cli_cases(tmp, layout_dir).items():
            args = [a.replace("{name}", name) for a in args]
            env = {**base_env, **extra, "OPENAI_BASE_URL": server.base_url}
            env["FLOWGPT_STORE"] = str(tmp / f"{name}.sqlite3")
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "flowgpt", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
        outputs = {name: proc.communicate(timeout=60) for name, proc in procs.items()}
        sent = server.chat_requests
    runs = {}
    for name, (out, err) in outputs.items():
        written = tmp / f"{name}.json"
        stored = b"".join(
            p.read_bytes() for p in sorted(tmp.glob(f"{name}.sqlite3*")) if p.is_file()
        )
        runs[name] = CliRun(
            returncode=procs[name].returncode,
            stdout=out,
            stderr=err,
            written=written.read_text() if written.exists() else "",
            stored=stored,
            bodies=[r.body for r in sent if _run_of(r.body) == name],
        )
    return runs


def _run_of(body: dict[str, Any]) -> str:
    said = body["messages"][-1]["content"]
    if said in ("case 401", "case 500"):
        return said.removeprefix("case ")
    if said.startswith("About: "):
        return "literal"
    return "injection"  # anything else must not have been sent at all


def test_cli_injection_exits_2_without_a_request(cli: dict[str, CliRun]) -> None:
    run = cli["injection"]
    assert run.returncode == 2, run.stderr
    assert "unsafe attribute `__init__`" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.bodies == []
    assert SECRET not in run.everything()


def test_cli_input_value_is_sent_literally(cli: dict[str, CliRun]) -> None:
    run = cli["literal"]
    assert run.returncode == 0, run.stderr
    (body,) = run.bodies
    assert body["messages"][-1]["content"] == "About: {{ 7*7 }}"
    data = json.loads(run.stdout)
    assert data["inputs"]["topic"] == "{{ 7*7 }}"
    assert data["steps"][0]["output"] == "Echo: About: {{ 7*7 }}"


def test_cli_refuses_a_prompt_file_linked_outside_the_folder(cli: dict[str, CliRun]) -> None:
    run = cli["symlink"]
    assert run.returncode == 2, run.stderr
    assert "`prompt_file: link-out.md` points outside the workflow's folder" in run.stderr
    assert "Traceback" not in run.stderr
    assert OUTSIDE not in run.everything()


@pytest.mark.parametrize(("name", "key"), [("401", KEY_SK), ("500", KEY_PLAIN)])
def test_cli_failing_run_never_shows_the_key(cli: dict[str, CliRun], name: str, key: str) -> None:
    run = cli[name]
    assert run.returncode == 1, run.stderr
    assert len(run.bodies) == 1  # 401: never retried; 500: max_retries 0
    assert "[redacted key]" in run.stderr  # the server echoed it: scrubbed, not dropped
    data = json.loads(run.stdout)  # --json
    assert data["status"] == "failed"
    assert json.loads(run.written) == data  # -o
    assert "[redacted key]" in data["steps"][0]["error"]
    everything = run.everything()
    assert key not in everything
    assert key[-12:] not in everything  # not even a long tail of it
    if name == "401":
        assert "OPENAI_API_KEY" in run.stderr


# -- secrets inside the provider's own messages -------------------------------------------


def test_password_in_base_url_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    # In the workflow file a password is refused (tests/test_secrets.py); in
    # OPENAI_BASE_URL, where credentials may live, it is used and never shown.
    monkeypatch.setenv("OPENAI_API_KEY", KEY_PLAIN)
    with FakeOpenAI(responder=lambda body: Fault.server_error(500)) as server:
        url = server.base_url.replace("http://", "http://deploy:hunter2-pw-77@")
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        text = workflow("hi").replace("steps:", "provider: {max_retries: 0}\nsteps:")
        with pytest.raises(ServerError) as caught:
            Engine().run_sync(parse_workflow(text))
        assert len(server.chat_requests) == 1
    err = caught.value
    assert server.base_url in err.message
    result: RunResult = err.result
    for shown in (err.format(), repr(err), json.dumps(result.to_dict()), result.report()):
        assert "hunter2-pw-77" not in shown
        assert KEY_PLAIN not in shown
