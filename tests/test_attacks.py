"""The attack corpus (issue 15): hostile templates, workflow files, data files and server
replies, each a row of a table, each answered by one clear error that names the limit it
hit, within a bounded time and memory.

Templates run in a forked child under ``resource`` limits (tests/support/limits.py), so a
regression fails the test instead of taking the machine down: the child may grow by at
most a few hundred MB and use seconds of CPU.
"""

from __future__ import annotations

import json
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
    "{{ (2 ** 99999) * (2 ** 99999) }}": TOO_LARGE,
    "{% set ns = namespace(x=2 ** 60000) %}{% for i in range(30) %}"
    "{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x > 0 }}": TOO_LARGE,
    # Lists of one long string, printed: short in memory, huge as text.
    "{{ ['x' * 9000000] * 100 }}": TOO_LARGE,
    "{% set big = ['x' * 4000000] * 2 %}{{ big | pprint }}": TOO_LARGE,
    "{% set big = ['x' * 4000000] * 2 %}{{ big | tojson(indent=2) ~ big | tojson }}": TOO_LARGE,
    "{% set a = 'x' * 5000000 %}{{ '%s%s%s' % (a, a, a) }}": TOO_LARGE,
    "{{ {}.fromkeys(range(100000), 'x' * 1000) }}": TOO_LARGE,
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
    "{{ ('x' * 1000) | wordwrap(1, wrapstring='y' * 100000) }}": TOO_LARGE,
    "{{ ('&' * 9000000) | escape }}": TOO_LARGE,
    "{{ ('a' * 100) .translate({97: 'b' * 1000000}) }}": TOO_LARGE,
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
    workflow = parse_workflow(_workflow("{{ '%*s' % (999999999, 'x') }}"))
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
