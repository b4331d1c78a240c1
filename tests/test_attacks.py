"""The attack corpus (issue 15): hostile templates, workflow files, data files and server
replies, each a row of a table, each answered by one clear error that names the limit it
hit, within a bounded time and memory.

Templates run in a forked child under ``resource`` limits (tests/support/limits.py), so a
regression fails the test instead of taking the machine down: the child may grow by at
most a few hundred MB and use seconds of CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from flowgpt import Engine, MockProvider, SpecError, TemplateError, parse_workflow, templating
from flowgpt.accounting.checks import check_file
from flowgpt.templating import _limits
from tests.support.limits import in_child

CONTEXT = {"inputs": {"topic": "tea"}, "steps": {}}

# The most a hostile render may take: the render time limit plus room for a busy machine.
RENDER_SECONDS = 1.0
SECONDS = 8.0
GROWN_MB = 400

TOO_LARGE = "too large for a template"
TOO_LONG = "the template took too long"
TOO_MUCH = "the template built too much"

# payload -> what the error says (which limit was hit)
TEMPLATE_ATTACKS: dict[str, str] = {
    # Widths and precisions taken from the arguments, not written in the format.
    "{{ '%*s' % (999999999, 'x') }}": TOO_LARGE,
    "{{ '%.*f' % (999999999, 1.5) }}": TOO_LARGE,
    "{{ '%.999999999f' % 1.5 }}": TOO_LARGE,
    "{{ '{:{w}}'.format('x', w=999999999) }}": TOO_LARGE,
    "{{ '{0:>{1}}'.format('x', 999999999) }}": TOO_LARGE,
    "{{ '{:.999999999f}'.format(1.5) }}": TOO_LARGE,
    "{{ '{0}{0}{0}{0}{0}'.format('x' * 3000000) }}": TOO_LARGE,
    "{{ '%s' | format('x' * 9000000) ~ ('%s' | format('x' * 9000000)) }}": TOO_LARGE,
    # bytes and integers, not only str
    "{{ 'x'.encode() * 2000000000 }}": TOO_LARGE,
    "{{ (1).to_bytes(10**9, 'big') }}": TOO_LARGE,
    "{{ 'x'.encode().center(999999999) }}": TOO_LARGE,
    "{{ (2 ** 49999) * (2 ** 49999) * (2 ** 49999) }}": TOO_LARGE,
    "{% set ns = namespace(x=2 ** 49999) %}{% for i in range(30) %}"
    "{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x > 0 }}": TOO_LARGE,
    # Lists of one long string, printed: short in memory, huge as text.
    "{{ ['x' * 9000000] * 100 }}": TOO_LARGE,
    "{% set big = ['x' * 4000000] * 2 %}{{ big | pprint }}": TOO_LARGE,
    # Built without being printed (`| length`): the size of the rendered text alone
    # would not see them.
    "{% set big = ['\"' * 3000000] * 2 %}{{ big | tojson | length }}": TOO_LARGE,
    "{% set a = 'x' * 5000000 %}{{ ('%s%s%s' % (a, a, a)) | length }}": TOO_LARGE,
    "{{ ({}.fromkeys(range(100000), 'x' * 1000) | tojson) | length }}": TOO_LARGE,
    "{{ [1] | batch(999999999, 'x') | list }}": TOO_LARGE,
    "{{ range(10) | slice(999999999) | list }}": TOO_LARGE,
    # A namespace list doubled in a loop: 2**n items from n small lists.
    "{% set ns = namespace(l=['x']) %}{% for i in range(27) %}"
    "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}": TOO_LARGE,
    "{% set ns = namespace(l=['x']) %}{% for i in range(60) %}"
    "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l | length }}": TOO_LARGE,
    "{% set ns = namespace(a=['x'], b=['x']) %}{% for i in range(60) %}"
    "{% set ns.a = (ns.a, ns.a) %}{% set ns.b = {'l': ns.b, 'r': ns.b} %}{% endfor %}"
    "{{ ns.a == ns.b }}": TOO_LARGE,
    # Filters that pad, repeat or escape.
    "{{ 'x' | indent(999999999) }}": TOO_LARGE,
    "{{ inputs.topic | indent(999999999) }}": TOO_LARGE,
    "{{ 'x' | indent(200000000, true) }}": TOO_LARGE,
    "{{ (('x' * 1000) | wordwrap(1, wrapstring='y' * 100000)) | length }}": TOO_LARGE,
    "{{ (('&' * 9000000) | escape) | length }}": TOO_LARGE,
    "{{ (('a' * 100).translate({97: 'b' * 1000000})) | length }}": TOO_LARGE,
    "{{ ('\t' * 100).expandtabs(999999) }}": TOO_LARGE,
    "{% set s %}{{ 'x' * 9000000 }}{{ 'x' * 9000000 }}{% endset %}{{ s | length }}": TOO_LARGE,
    # Time: loops and recursion that build nothing.
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}": TOO_LONG,
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
    "{{ f(40) }}": TOO_LONG,
    "{% for i in range(100000) %}{% for c in 'x' * 9000000 %}{% endfor %}{% endfor %}": TOO_LONG,
    # Memory: every call keeps a new long string alive on the stack.
    "{% macro f(n, s) %}{% if n %}{{ f(n - 1, s ~ 'x') }}{% endif %}{% endmacro %}"
    "{{ f(500, 'x' * 9000000) }}": TOO_MUCH,
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}": "recursed too deeply",
}


def _workflow(prompt: str) -> str:
    return (
        "version: 1\nname: attack\ndefaults: {model: gpt-4o-mini, max_tokens: 20}\n"
        "inputs:\n  topic: {type: string, default: tea}\n"
        f"steps:\n  - id: one\n    prompt: {json.dumps(prompt)}\n"
    )


def _render(payload: str) -> None:
    _limits.MAX_RENDER_SECONDS = RENDER_SECONDS  # in the child only
    templating.render(payload, CONTEXT, step="one")


def _validate(path: Path) -> int:
    return len(check_file(path))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("payload", list(TEMPLATE_ATTACKS), ids=range(len(TEMPLATE_ATTACKS)))
def test_a_hostile_template_is_refused_within_bounded_time_and_memory(payload: str) -> None:
    outcome = in_child(lambda: _render(payload), memory_mb=700)
    assert not outcome.killed, outcome
    assert outcome.error_type == "TemplateRenderProblem", outcome
    assert TEMPLATE_ATTACKS[payload] in outcome.error, outcome.error
    assert outcome.seconds < SECONDS and outcome.grown_mb < GROWN_MB, outcome


@pytest.mark.timeout(60)
@pytest.mark.parametrize("payload", list(TEMPLATE_ATTACKS), ids=range(len(TEMPLATE_ATTACKS)))
def test_validate_evaluates_no_hostile_template(payload: str, tmp_path: Path) -> None:
    # `flowgpt validate` parses and checks templates; it must never run one (Jinja would
    # fold constant filters while compiling: `'x' | indent(999999999)` took 33 s, 4.9 GB).
    path = tmp_path / "attack.yaml"
    path.write_text(_workflow(payload), encoding="utf-8")
    outcome = in_child(lambda: _validate(path), memory_mb=700)
    assert not outcome.killed and not outcome.error, outcome
    assert outcome.seconds < 5 and outcome.grown_mb < 100, outcome


def test_a_hostile_template_fails_the_run_before_any_request() -> None:
    mock = MockProvider()
    # 30 million: enough to pass the limit, small enough for this process if it regresses.
    workflow = parse_workflow(_workflow("{{ ('%*s' % (30000000, 'x')) | length }}"))
    with pytest.raises(TemplateError) as caught:
        Engine(provider=mock).run_sync(workflow)
    assert caught.value.exit_code == 2 and mock.requests == []
    text = caught.value.format()
    assert "step `one`" in text and TOO_LARGE in text and "10,000,000" in text


@pytest.mark.parametrize(
    "source",
    [
        "{% for s in inputs.names %}- {{ s | upper | indent(2) }}\n{% endfor %}",
        "{{ '%-10s|%5.2f' % (inputs.topic, 3.14159) }} {{ '{:>8}'.format(inputs.topic) }}",
        "{{ inputs.names | tojson(indent=2) }} {{ inputs.names | pprint }}",
        "{% set ns = namespace(l=[]) %}{% for i in range(200) %}{% set ns.l = ns.l + [i] %}"
        "{% endfor %}{{ ns.l | sum }} {{ [[1], [2, 3]] | sum(start=[]) }}",
        "{% macro item(x) %}<{{ x }}>{% endmacro %}{% for x in inputs.names %}"
        "{{ item(x) }}{% endfor %} {{ 'ab' * 3 }} {{ (inputs.names * 2) | length }}",
    ],
)
def test_ordinary_templates_render_as_before(source: str) -> None:
    # The limits change nothing for templates that stay within them.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    context: dict[str, Any] = {"inputs": {"topic": "tea", "names": ["a", "b", "c"]}, "steps": {}}
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    plain.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent)
    assert templating.render(source, context) == plain.from_string(source).render(context)


def test_the_time_limit_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_limits, "MAX_RENDER_SECONDS", 0.2)
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(SpecError) as caught:
        templating.render(loop, CONTEXT, step="one")
    text = caught.value.format()
    assert "step `one`: the template took too long" in text and "longer than 0.2 s" in text


# -- hostile workflow files, data files and command lines --------------------------------------
# Each gets one clear message and exit code 2: never "internal error ... this is a bug".


def _nested_yaml(levels: int) -> str:
    return _workflow("hi") + "outputs:\n  x: " + "[" * levels + "]" * levels + "\n"


def _many_steps(count: int) -> str:
    steps = "".join(f"  - id: s{i}\n    prompt: x\n" for i in range(count))
    return "version: 1\nname: many\ndefaults: {model: gpt-4o-mini, max_tokens: 5}\nsteps:\n" + steps


def _deep_json(levels: int) -> str:
    return '{"topic": ' + "[" * levels + "]" * levels + "}\n"


def _huge_prompt_file(folder: Path) -> None:
    (folder / "prompts").mkdir(exist_ok=True)
    with open(folder / "prompts" / "huge.md", "wb") as f:
        f.truncate(3_000_000_000)  # a sparse 3 GB file: nothing is written to disk


ROWS_WF = _workflow("About {{ inputs.topic }}").replace(
    "topic: {type: string, default: tea}", "topic: {type: string}"
)
PORT_WF = _workflow("hi").replace(
    "steps:", "provider: {base_url: 'http://127.0.0.1:99999/v1'}\nsteps:"
)
FILE_WF = _workflow("hi").replace('prompt: "hi"', "prompt_file: prompts/huge.md")

# name -> (files, command line, what the message says)
BAD_INPUTS: dict[str, tuple[dict[str, Any], list[str], str]] = {
    "yaml-nested-600": (
        {"wf.yaml": _nested_yaml(600)},
        ["validate", "wf.yaml"],
        "nested more than 100 levels deep",
    ),
    "yaml-nul-byte": (
        {"wf.yaml": _workflow("hi").replace("name: attack", "name: at\0tack")},
        ["validate", "wf.yaml"],
        "wf.yaml:2:9: error: the file holds the control character U+0000",
    ),
    # 38,000 plain steps were called an alias bomb; the limit is lowered here so that
    # the test does not spend seconds composing YAML.
    "yaml-too-many-values": (
        {"wf.yaml": _many_steps(800), "patch": {"MAX_EXPANDED_NODES": 2_000}},
        ["validate", "wf.yaml"],
        "holds more than 2,000 values (keys, values and list items), flowgpt's limit",
    ),
    "prompt-file-3gb": (
        {"wf.yaml": FILE_WF, "prompts/huge.md": _huge_prompt_file},
        ["validate", "wf.yaml"],
        "larger than 4,000,000 bytes, flowgpt's limit for a prompt file",
    ),
    "base-url-port-99999": (
        {"wf.yaml": PORT_WF},
        ["validate", "wf.yaml"],
        "not a usable API base URL: it is not a valid URL (Port out of range 0-65535)",
    ),
    "env-base-url-port-99999": (
        {"wf.yaml": _workflow("hi"), "env": {"OPENAI_BASE_URL": "http://127.0.0.1:99999/v1"}},
        ["run", "wf.yaml"],
        "the API base URL cannot be used",
    ),
    "run-max-cost-nan": (
        {"wf.yaml": _workflow("hi")},
        ["run", "wf.yaml", "--mock", "--max-cost", "nan"],
        "'nan' is not an amount of dollars",
    ),
    "batch-max-cost-inf": (
        {"wf.yaml": ROWS_WF, "rows.jsonl": '{"topic": "tea"}\n'},
        [
            "batch",
            "wf.yaml",
            "--data",
            "rows.jsonl",
            "--out",
            "o.jsonl",
            "--mock",
            "--max-cost",
            "inf",
        ],
        "'inf' is not an amount of dollars",
    ),
    "csv-field-over-10m": (
        {"wf.yaml": ROWS_WF, "rows.csv": "topic\n" + "x" * 10_000_001 + "\n"},
        ["batch", "wf.yaml", "--data", "rows.csv", "--out", "o.jsonl", "--mock"],
        "rows.csv:2: a value is longer than 10,000,000 characters",
    ),
    "jsonl-nested-50000": (
        {"wf.yaml": ROWS_WF, "rows.jsonl": _deep_json(50_000)},
        ["batch", "wf.yaml", "--data", "rows.jsonl", "--out", "o.jsonl", "--mock"],
        "rows.jsonl:1: the row nests more than 100 levels",
    ),
    "jsonl-nested-900": (
        {"wf.yaml": ROWS_WF, "rows.jsonl": _deep_json(900)},
        ["batch", "wf.yaml", "--data", "rows.jsonl", "--out", "o.jsonl", "--mock"],
        "rows.jsonl:1: the row nests more than 100 levels",
    ),
    "inputs-file-nested": (
        {"wf.yaml": _workflow("hi"), "in.json": _deep_json(50_000)},
        ["run", "wf.yaml", "--mock", "--inputs-file", "in.json"],
        "--inputs-file in.json: lists and objects nest too deeply",
    ),
    "input-value-nested": (
        {
            "wf.yaml": _workflow("{{ inputs.doc }}").replace(
                "topic:", "doc: {type: array}\n  topic:"
            )
        },
        ["run", "wf.yaml", "--mock", "-i", "doc=" + "[" * 900 + "]" * 900],
        "input `doc`: lists and objects nest more than 100 levels deep",
    ),
    "empty-data-file": (
        {"wf.yaml": ROWS_WF, "rows.jsonl": ""},
        ["batch", "wf.yaml", "--data", "rows.jsonl", "--out", "o.jsonl", "--mock"],
        "rows.jsonl: no rows (the file is empty or has only a header); nothing was run",
    ),
    "header-only-csv": (
        {"wf.yaml": ROWS_WF, "rows.csv": "topic\n"},
        ["batch", "wf.yaml", "--data", "rows.csv", "--out", "o.jsonl", "--mock"],
        "rows.csv: no rows",
    ),
}


def _cli(tmp_path: Path, files: dict[str, Any], args: list[str]) -> tuple[int, str]:
    from click.testing import CliRunner

    from flowgpt.cli import main

    env = {"OPENAI_API_KEY": "sk-test-attacks-00000000000000000", **files.pop("env", {})}
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(tmp_path)
        else:
            path.write_text(content, encoding="utf-8")
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner(env=env).invoke(main, args)
    finally:
        os.chdir(old)
    return result.exit_code, result.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_every_bad_input_is_one_clear_error(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowgpt.spec import loader

    files, args, said = BAD_INPUTS[name]
    for attribute, value in files.get("patch", {}).items():
        monkeypatch.setattr(loader, attribute, value)
    files = {k: v for k, v in files.items() if k != "patch"}
    code, err = _cli(tmp_path, files, args)
    assert code == 2, err
    assert said in err, err
    assert "internal error" not in err and "Traceback" not in err and "this is a bug" not in err
    assert "alias bomb" not in err or "alias" in name


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "files"),
    [
        ("csv-field-200k", {"rows.csv": "topic\n" + "x" * 200_000 + "\n"}),
        ("csv-excel-bom", {"rows.csv": "\ufefftopic\ntea\n"}),
    ],
)
def test_data_files_python_would_refuse_are_read(
    name: str, files: dict[str, Any], tmp_path: Path
) -> None:
    args = ["batch", "wf.yaml", "--data", "rows.csv", "--out", "o.jsonl", "--mock"]
    code, err = _cli(tmp_path, {"wf.yaml": ROWS_WF, **files}, args)
    assert code == 0, err
    (line,) = (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["status"] == "ok"


# -- untrusted numbers from the server ----------------------------------------------------------

# A reply's usage a server may claim, none of which a real request can have.
IMPOSSIBLE_USAGE: dict[str, dict[str, Any]] = {
    "negative": {"prompt_tokens": -100000, "completion_tokens": 5, "total_tokens": -99995},
    "huge": {"prompt_tokens": 10**30, "completion_tokens": 5, "total_tokens": 10**30 + 5},
    "fraction": {"prompt_tokens": 12.5, "completion_tokens": 5, "total_tokens": 17.5},
    "text": {"prompt_tokens": "lots", "completion_tokens": 5, "total_tokens": 17},
    "negative-cached": {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": -7},
    },
    "nan-reasoning": {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "completion_tokens_details": {"reasoning_tokens": float("nan")},
    },
}

PRICED_WF = """\
version: 1
name: priced
defaults: {model: gpt-4o-mini, max_tokens: 50}
pricing:
  gpt-4o-mini: {input: 1.0, output: 2.0}
provider: {base_url: BASE_URL, max_retries: 0}
inputs:
  topic: {type: string, default: tea}
steps:
  - id: one
    prompt: "About {{ inputs.topic }}"
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(IMPOSSIBLE_USAGE))
def test_impossible_usage_is_a_provider_error(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowgpt import MalformedResponseError
    from flowgpt.store import RunStore
    from tests.support.fake_openai import FakeOpenAI, Reply

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-attacks-00000000000000000")
    usage = IMPOSSIBLE_USAGE[name]
    with FakeOpenAI(responder=lambda body: Reply("hello", raw_usage=usage)) as server:
        workflow = parse_workflow(PRICED_WF.replace("BASE_URL", server.base_url))
        with RunStore(tmp_path / "runs.sqlite3") as store:
            with pytest.raises(MalformedResponseError) as caught:
                Engine(store=store).run_sync(workflow)
            result = caught.value.result
            # Recorded as failed (10**30 overflowed SQLite and left it "interrupted").
            assert store.run_summary(result.run_id).status == "failed"
    assert "impossible usage" in caught.value.message
    assert result.usage.prompt_tokens >= 0 and (result.cost_usd or 0) >= 0


def test_impossible_usage_never_lowers_what_a_batch_spent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    from decimal import Decimal

    from tests.support.fake_openai import FakeOpenAI, Reply

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-attacks-00000000000000000")
    negative = IMPOSSIBLE_USAGE["negative"]

    def responder(body: dict[str, Any]) -> Reply:
        number = int(body["messages"][-1]["content"].split("row")[1])
        if number % 2:  # every other row claims -100,000 prompt tokens
            return Reply("hello", raw_usage=negative)
        return Reply("hello", prompt_tokens=10, completion_tokens=50)  # $0.00011 a row

    limit = Decimal("0.0005")  # room for four honest rows
    rows = [{"topic": f"row{i}"} for i in range(1, 21)]
    with FakeOpenAI(responder=responder) as server:
        workflow = parse_workflow(PRICED_WF.replace("BASE_URL", server.base_url))

        async def go() -> list[Any]:
            async with Engine(concurrency=1) as engine:
                batch = engine.run_batch(workflow, rows, max_cost_usd=limit)
                return [row async for row in batch]

        results = asyncio.run(go())
    spent = sum((r.cost_usd or Decimal(0)) for r in results)
    assert Decimal(0) <= spent <= limit
    assert [r.row for r in results if "impossible usage" in (r.error or "")] == [1, 3, 5, 7]
    assert [r.row for r in results if r.ok] == [2, 4, 6, 8]
    assert "the batch's budget" in (results[-1].error or "")  # and no row after it


def test_a_negative_amount_never_lowers_the_spent_total() -> None:
    from decimal import Decimal

    from flowgpt.accounting.budget import Budget

    budget = Budget(Decimal("1"), 1000)
    first = budget.reserve("a", "m", 10, Decimal("0.1"))
    budget.settle(first, 10, Decimal("0.1"))
    second = budget.reserve("b", "m", 10, Decimal("0.1"))
    budget.settle(second, -100000, Decimal("-5"))
    assert budget.spent_cost == Decimal("0.1") and budget.spent_tokens == 10


def test_a_refusal_while_calls_are_in_flight_says_so() -> None:
    # "nothing spent yet" was printed while a call in flight went on to spend.
    import asyncio
    from decimal import Decimal

    from flowgpt import BudgetExceededError
    from flowgpt.providers.base import ChatRequest, ChatResponse
    from flowgpt.usage import Usage

    class Slow:
        name = "slow"
        model_is_label = False

        async def complete(self, request: ChatRequest, *, on_text: Any = None) -> ChatResponse:
            await asyncio.sleep(0.2)
            return ChatResponse(text="x", usage=Usage(prompt_tokens=10, completion_tokens=50))

        def resolved_base_url(self) -> None:
            return None

        async def aclose(self) -> None:
            pass

    text = PRICED_WF.replace("provider: {base_url: BASE_URL, max_retries: 0}\n", "")
    text += '  - id: two\n    prompt: "Also {{ inputs.topic }}"\n'
    with pytest.raises(BudgetExceededError) as caught:
        Engine(provider=Slow(), max_cost_usd=Decimal("0.00015")).run_sync(parse_workflow(text))
    message = caught.value.message
    assert "nothing spent yet" not in message
    assert "no call had finished yet; calls in flight may cost up to $0.000109 more" in message
    assert caught.value.result.cost_usd == Decimal("0.00011")  # spent after the refusal
