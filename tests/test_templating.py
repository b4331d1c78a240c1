"""The Jinja sandbox: rendering, expressions, reference discovery and error messages."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from flowgpt.errors import SpecError, TemplateError
from flowgpt.templating import (
    STEP_FIELDS,
    Reference,
    TemplateRenderProblem,
    TemplateSyntaxProblem,
    _template,
    evaluate,
    make_context,
    parse_expression,
    parse_template,
    references,
    render,
    single_expression,
    step_entry,
    strip_expression_braces,
)


@pytest.fixture
def ctx() -> dict[str, Any]:
    return make_context(
        {"topic": "tea", "words": 600, "items": ["x", "y"], "zh": "绿茶"},
        {
            "outline": step_entry(
                output={"title": "All About Tea", "sections": ["Origins", "Kinds", "Brewing"]},
                text='{"title": "All About Tea"}',
                usage={"prompt_tokens": 10, "completion_tokens": 5},
            ),
            "draft": step_entry(output="A draft.", text="A draft."),
            "gate": step_entry(skipped=True),
        },
    )


def problem(source: str, context: dict[str, Any], **kw: Any) -> TemplateRenderProblem:
    with pytest.raises(TemplateRenderProblem) as info:
        render(source, context, **kw)
    return info.value


# ---------------------------------------------------------------- rendering


def test_renders_inputs_and_step_outputs(ctx: dict[str, Any]) -> None:
    source = (
        'About {{ inputs.topic }} in {{ inputs.words }} words: "{{ steps.outline.output.title }}"'
    )
    assert render(source, ctx) == 'About tea in 600 words: "All About Tea"'


def test_item_access_and_attribute_access_are_equivalent(ctx: dict[str, Any]) -> None:
    assert render("{{ inputs['topic'] }}/{{ steps['outline']['output'].title }}", ctx) == (
        "tea/All About Tea"
    )


def test_design_doc_loop_renders_one_line_per_section(ctx: dict[str, Any]) -> None:
    source = (
        'Write "{{ steps.outline.output.title }}" with these sections:\n'
        "{% for s in steps.outline.output.sections %}- {{ s }}\n{% endfor %}"
    )
    assert render(source, ctx) == (
        'Write "All About Tea" with these sections:\n- Origins\n- Kinds\n- Brewing\n'
    )


def test_block_tags_on_their_own_lines_leave_no_blank_lines(ctx: dict[str, Any]) -> None:
    source = (
        "Sections:\n{% for s in steps.outline.output.sections %}\n  - {{ s }}\n{% endfor %}\nEnd.\n"
    )
    # trim_blocks/lstrip_blocks; the block scalar's final newline is dropped
    assert render(source, ctx) == "Sections:\n  - Origins\n  - Kinds\n  - Brewing\nEnd."


def test_none_prints_nothing_and_containers_print_as_json(ctx: dict[str, Any]) -> None:
    assert render("[{{ steps.gate.output }}]", ctx) == "[]"
    assert render("{{ steps.outline.output.sections }}", ctx) == '["Origins", "Kinds", "Brewing"]'
    assert render("{{ {'k': inputs.zh} }}", ctx) == '{"k": "绿茶"}'


def test_a_prompt_of_references_prints_each_value_by_the_printing_rules() -> None:
    context = make_context(
        {"topic": "绿茶", "n": 3, "doc": {"title": "T", "tags": ["a"]}, "items": 1.5, "ok": True},
        {"a": step_entry(output=None)},
    )
    source = (
        "About {{ inputs.topic }} in {{ inputs.n }} points; {{ inputs['doc'] }} "
        "{{ inputs.items }}{{ steps.a.output }} {{ inputs.ok }}.\n"
    )
    # non-ASCII JSON, None as nothing, `items` the input (not dict.items), final newline dropped
    expected = 'About 绿茶 in 3 points; {"title": "T", "tags": ["a"]} 1.5 True.'
    assert render(source, context) == expected


def test_plain_text_renders_as_itself(ctx: dict[str, Any]) -> None:
    assert render("You are a careful editor.\n", ctx) == "You are a careful editor."


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("You are a careful editor.\n", "You are a careful editor."),
        ("Be brief.{# a note to the author #}", "Be brief."),
        ("Write {% raw %}{{ name }}{% endraw %} as is.", "Write {{ name }} as is."),
        ("", ""),
    ],
)
def test_text_without_tags_is_the_same_whatever_the_context(
    source: str, text: str, jinja_renders: list[str]
) -> None:
    # Rendered by Jinja once and kept (a system prompt is sent on every call): the next
    # render, with another context, gives the same output without rendering again.
    source = _fresh(source)
    assert render(source, make_context({"name": "a"}, {})) == text
    assert render(source, make_context({"name": "b"}, {})) == text
    assert len(jinja_renders) == 1


def test_text_with_an_expression_is_rendered_every_time(jinja_renders: list[str]) -> None:
    source = _fresh("Dear {{ inputs.name }},")
    assert render(source, make_context({"name": "a"}, {})) == "Dear a,"
    assert render(source, make_context({"name": "b"}, {})) == "Dear b,"
    assert jinja_renders == ["Dear a,", "Dear b,"]


def _fresh(source: str) -> str:
    """``source`` with a comment no other template has, so parse_template's cache (and the
    text a tag-free Template keeps) starts empty for it."""
    return "{# " + uuid.uuid4().hex + " #}" + source


@pytest.fixture
def jinja_renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What every render through Jinja (``_render_bounded``) gave, in order."""
    renders: list[str] = []
    real = _template._render_bounded

    def counting(compiled: Any, context: Any) -> str:
        renders.append(real(compiled, context))
        return renders[-1]

    monkeypatch.setattr(_template, "_render_bounded", counting)
    return renders


@pytest.mark.parametrize(
    ("inputs", "source"),
    [
        ({}, "{{ inputs.topic }}"),  # missing input
        ({"doc": "text"}, "{{ inputs.doc.title }}"),  # a string has no fields
        ({"doc": {}}, "{{ inputs.doc.items }}"),  # no key `items`: dict.items is not printed
        ({}, "{{ range }}"),  # a Jinja global is a function, not a value
        ({"doc": {"n": Decimal("Infinity")}}, "{{ inputs.doc }}"),  # no JSON for it
    ],
)
def test_references_that_cannot_print_are_errors(inputs: dict[str, Any], source: str) -> None:
    problem(source, make_context(inputs, {}))


def test_output_over_the_size_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flowgpt.templating._limits.MAX_SEQUENCE_ITEMS", 1_000)
    context = make_context({"big": "x" * 600}, {})
    assert render("{{ inputs.big }}", context) == "x" * 600
    err = problem("{{ inputs.big }}{{ inputs.big }}", context)
    assert "too large" in err.message


def test_tojson_keeps_non_ascii_and_key_order(ctx: dict[str, Any]) -> None:
    out = render("{{ {'z': inputs.zh, 'a': '<b>'} | tojson }}", ctx)
    assert out == '{"z": "绿茶", "a": "<b>"}'
    assert render("{{ [1] | tojson(indent=2) }}", ctx) == "[\n  1\n]"


def test_dict_key_wins_over_dict_method(ctx: dict[str, Any]) -> None:
    # `items` is an input here, not dict.items
    assert render("{% for i in inputs.items %}{{ i }}{% endfor %}", ctx) == "xy"
    assert render("{{ steps.outline.keys() | list | length }}", ctx) == "4"


def test_usage_and_skipped_are_visible(ctx: dict[str, Any]) -> None:
    source = (
        "{{ steps.outline.usage.total_tokens }} {{ steps.gate.skipped }} {{ steps.draft.text }}"
    )
    assert render(source, ctx) == "15 True A draft."


def test_skipped_output_can_be_guarded(ctx: dict[str, Any]) -> None:
    source = "{% if steps.gate.output %}{{ steps.gate.output.title }}{% else %}none{% endif %}"
    assert render(source, ctx) == "none"


def test_jinja_conveniences_still_work(ctx: dict[str, Any]) -> None:
    assert render("{% set ns = namespace(n=0) %}{% set ns.n = ns.n + 1 %}{{ ns.n }}", ctx) == "1"
    assert (
        render(
            "{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}", ctx
        )
        == "01"
    )
    assert render("{% macro b(x) %}*{{ x }}*{% endmacro %}{{ b(inputs.topic) }}", ctx) == "*tea*"
    assert render("{{ inputs.missing | default('fallback') }}", ctx) == "fallback"
    assert render("{{ inputs.missing is defined }}", ctx) == "False"


def test_compiled_templates_are_cached() -> None:
    assert parse_template("{{ inputs.a }}") is parse_template("{{ inputs.a }}")
    assert parse_expression("inputs.a") is parse_expression("inputs.a")


# -------------------------------------------------------------- expressions


def test_evaluate_returns_native_values(ctx: dict[str, Any]) -> None:
    assert evaluate("inputs.words > 300", ctx) is True
    assert evaluate("inputs.words < 300", ctx) is False
    assert evaluate("steps.outline.output.sections", ctx) == ["Origins", "Kinds", "Brewing"]
    assert evaluate("steps.gate.skipped", ctx) is True
    assert evaluate("steps.gate.output", ctx) is None
    assert evaluate("inputs.words // 100", ctx) == 6


@pytest.mark.parametrize(
    "source",
    [
        "{{ steps.outline.output.sections }}",
        "  {{steps.outline.output.sections}}  ",
        "{{- steps.outline.output.sections -}}",
    ],
)
def test_evaluate_accepts_one_pair_of_braces(ctx: dict[str, Any], source: str) -> None:
    assert evaluate(source, ctx) == ["Origins", "Kinds", "Brewing"]


def test_strip_expression_braces() -> None:
    assert strip_expression_braces("{{ a }}") == " a "
    assert strip_expression_braces("a > 1") == "a > 1"
    assert strip_expression_braces("{{ -1 }}") == " -1 "
    assert strip_expression_braces("{{ {'a': {'b': 1}} }}") == " {'a': {'b': 1}} "


def test_evaluate_undefined_inside_a_literal_is_an_error(ctx: dict[str, Any]) -> None:
    with pytest.raises(TemplateRenderProblem, match=r"`inputs\.nope` is undefined"):
        evaluate("[inputs.topic, inputs.nope]", ctx, step="each")


def test_evaluate_bare_undefined_is_an_error(ctx: dict[str, Any]) -> None:
    with pytest.raises(TemplateRenderProblem) as info:
        evaluate("inputs.wrods > 3", ctx, step="gate", where="when")
    assert info.value.message == (
        "step `gate`: `inputs.wrods` is undefined; did you mean `inputs.words`? (when)"
    )


def test_evaluate_skipped_step(ctx: dict[str, Any]) -> None:
    with pytest.raises(TemplateRenderProblem, match="step `gate` was skipped"):
        evaluate("steps.gate.output.sections", ctx, step="each", where="for_each")


# ------------------------------------------------------------ syntax errors


def test_syntax_error_carries_line_inside_template() -> None:
    with pytest.raises(TemplateSyntaxProblem) as info:
        parse_template("line one\nline two {{ inputs.topic \nline three")
    err = info.value
    assert err.line in (2, 3)
    assert isinstance(err, TemplateError)
    assert isinstance(err, SpecError)
    assert err.exit_code == 2
    assert err.detail


def test_syntax_error_on_a_later_line() -> None:
    with pytest.raises(TemplateSyntaxProblem) as info:
        parse_template("a\nb\n{% if x %}\nnever closed")
    assert info.value.line == 4
    assert "endif" in info.value.detail


def test_unknown_filter_is_a_syntax_problem_with_did_you_mean() -> None:
    with pytest.raises(TemplateSyntaxProblem) as info:
        parse_template("{{ inputs.topic | uper }}")
    assert info.value.hint == "did you mean the filter `upper`?"


@pytest.mark.parametrize(
    ("source", "tag"),
    [
        ("{% include 'header.txt' %}", "include"),
        ("Intro\n{% import 'macros.txt' as m %}", "import"),
        ("{% from 'macros.txt' import box %}", "from ... import"),
        ("a\nb\n{% extends 'base.txt' %}", "extends"),
    ],
)
def test_tags_that_load_files_are_refused_when_parsed(source: str, tag: str) -> None:
    # Refused at parse time (so `validate` reports them), not at render time with
    # Jinja's "no loader for this environment specified".
    with pytest.raises(TemplateSyntaxProblem) as info:
        parse_template(source)
    assert info.value.detail == f"`{{% {tag} %}}` is not supported: templates cannot load files"
    assert info.value.line == source.count("\n") + 1
    assert "--inputs-file" in (info.value.hint or "")


def test_render_syntax_error_names_the_step() -> None:
    with pytest.raises(TemplateSyntaxProblem) as info:
        render("{{ oops ", {}, step="draft", where="prompt")
    assert info.value.message.startswith("step `draft`: template syntax error:")
    assert info.value.step == "draft"


@pytest.mark.parametrize(
    ("source", "line"),
    [("inputs.a inputs.b", 1), ("inputs.a +\n\n)", 3), ("", 1), ("\n\n{{ inputs.a + }}", 3)],
)
def test_expression_syntax_errors(source: str, line: int) -> None:
    with pytest.raises(TemplateSyntaxProblem) as info:
        parse_expression(source)
    assert info.value.line == line
    assert info.value.hint and "bare Jinja expression" in info.value.hint


def test_an_expression_is_not_a_template() -> None:
    with pytest.raises(TemplateSyntaxProblem):
        parse_expression("{{ inputs.a }} and {{ inputs.b }}")


# --------------------------------------------------------- undefined names


def test_undefined_input_names_step_path_and_suggestion(ctx: dict[str, Any]) -> None:
    err = problem("Hello\n{{ inputs.tpoic }}", ctx, step="draft")
    assert err.message == (
        "step `draft`: `inputs.tpoic` is undefined; did you mean `inputs.topic`? (line 2)"
    )
    assert err.step == "draft"
    assert err.line == 2
    assert err.detail.startswith("`inputs.tpoic` is undefined")


def test_undefined_input_without_suggestion_lists_inputs(ctx: dict[str, Any]) -> None:
    err = problem("{{ inputs.zzzzzz }}", ctx, step="draft")
    assert "`inputs.zzzzzz` is undefined" in err.message
    assert err.hint is not None and "`topic`" in err.hint


def test_misspelled_root_suggests_inputs(ctx: dict[str, Any]) -> None:
    err = problem("{{ input.topic }}", ctx, step="s")
    assert "`input` is undefined; did you mean `inputs`?" in err.message


def test_bare_input_name_suggests_inputs_prefix(ctx: dict[str, Any]) -> None:
    err = problem("{{ topic }}", ctx, step="s")
    assert "did you mean `inputs.topic`?" in err.message


def test_misspelled_step_field(ctx: dict[str, Any]) -> None:
    err = problem("{{ steps.outline.outptu.title }}", ctx, step="s", where="prompt")
    assert err.message == (
        "step `s`: `steps.outline.outptu` is undefined; did you mean `steps.outline.output`? "
        "(prompt)"
    )


def test_misspelled_step_id(ctx: dict[str, Any]) -> None:
    err = problem("{{ steps.outlien.output }}", ctx, step="s")
    assert "did you mean `steps.outline`?" in err.message


def test_missing_json_field(ctx: dict[str, Any]) -> None:
    err = problem("{{ steps.outline.output.titel }}", ctx, step="s")
    assert (
        "`steps.outline.output.titel` is undefined; did you mean `steps.outline.output.title`?"
        in (err.message)
    )


def test_list_index_out_of_range(ctx: dict[str, Any]) -> None:
    err = problem("{{ steps.outline.output.sections[7] }}", ctx, step="s")
    assert "has 3 item(s)" in err.message


def test_field_of_a_text_step(ctx: dict[str, Any]) -> None:
    err = problem("{{ steps.draft.output.heading }}", ctx, step="s")
    assert "step `draft` is a text step" in err.message


def test_printing_a_method_is_an_error(ctx: dict[str, Any]) -> None:
    # str.title exists, so this would otherwise print "<built-in method title ...>"
    err = problem("{{ steps.draft.output.title }}", ctx, step="s")
    assert "printed a builtin_function_or_method" in err.message
    assert err.hint and "text step" in err.hint


def test_undefined_through_a_loop_variable(ctx: dict[str, Any]) -> None:
    context = make_context({"people": [{"name": "Ann"}]}, {})
    err = problem("{% for p in inputs.people %}{{ p.nmae }}{% endfor %}", context, step="s")
    assert "`inputs.people[0].nmae` is undefined; did you mean `inputs.people[0].name`?" in (
        err.message
    )


def test_for_each_item_variable(ctx: dict[str, Any]) -> None:
    context = make_context({}, {}, item_name="section", item={"title": "T"})
    assert render("{{ section.title }}", context) == "T"
    err = problem("{{ section.titl }}", context, step="each")
    assert "`section.titl` is undefined; did you mean `section.title`?" in err.message


def test_make_context_refuses_an_item_name_that_hides_inputs() -> None:
    with pytest.raises(ValueError):
        make_context({}, {}, item_name="inputs", item=1)


# ------------------------------------------------------------ skipped steps


def test_dereferencing_a_skipped_step_names_it(ctx: dict[str, Any]) -> None:
    err = problem("{{ steps.gate.output.title }}", ctx, step="draft")
    assert err.message.startswith("step `draft`: step `gate` was skipped, so its output is null")
    assert err.hint and "{% if steps.gate.output %}" in err.hint


def test_iterating_a_skipped_step_names_it(ctx: dict[str, Any]) -> None:
    err = problem("{% for s in steps.gate.output %}{{ s }}{% endfor %}", ctx, step="draft")
    assert "step `gate` was skipped" in err.message


def test_null_json_field_names_the_path() -> None:
    context = make_context({}, {"a": step_entry(output={"meta": None})})
    err = problem("{{ steps.a.output.meta.x }}", context, step="s")
    assert "`steps.a.output.meta` is null" in err.message


# ----------------------------------------------------------------- sandbox


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__.os }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ '{0.__class__}'.format(inputs) }}",
        "{{ '{0.__class__.__base__}'.format(inputs.topic) }}",
        "{{ '{x.__class__}'.format_map({'x': inputs.topic}) }}",
        "{{ inputs.topic | attr('__class__') }}",
        "{{ '%s' | format(inputs.topic.__class__) }}",
        "{{ inputs.topic.upper.__self__ }}",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}",
        "{{ range.__call__.__self__ }}",
        "{{ self._TemplateReference__context }}",
    ],
)
def test_unsafe_attribute_access_is_refused(ctx: dict[str, Any], source: str) -> None:
    err = problem(source, ctx, step="evil")
    assert "template tried to access an unsafe attribute" in err.message
    assert err.message.startswith("step `evil`:")
    assert err.hint and "blocked" in err.hint


def test_mapped_unsafe_attribute_is_refused(ctx: dict[str, Any]) -> None:
    err = problem("{{ [inputs.topic] | map(attribute='__class__') | list }}", ctx, step="evil")
    assert "unsafe attribute `__class__`" in err.message


def test_mutating_the_context_is_refused(ctx: dict[str, Any]) -> None:
    err = problem("{{ steps.outline.output.sections.append('x') }}", ctx, step="s")
    assert "unsafe attribute `append`" in err.message
    assert ctx["steps"]["outline"]["output"]["sections"] == ["Origins", "Kinds", "Brewing"]
    problem("{{ inputs.update({'topic': 'x'}) }}", ctx)
    assert ctx["inputs"]["topic"] == "tea"


@pytest.mark.parametrize(
    "name", ["environ", "os", "config", "sys", "env", "getenv", "request", "settings", "lipsum"]
)
def test_no_environment_or_python_objects(ctx: dict[str, Any], name: str) -> None:
    err = problem(f"{{{{ {name} }}}}", ctx, step="s")
    assert f"`{name}` is undefined" in err.message
    with pytest.raises(TemplateRenderProblem):
        evaluate(f"{name}.HOME", ctx)


@pytest.mark.parametrize(
    "source", ["{{ dict }}", "{{ self }}", "{{ cycler }}", "{{ inputs.topic.upper }}"]
)
def test_printing_python_objects_is_refused(ctx: dict[str, Any], source: str) -> None:
    problem(source, ctx)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 100000000 }}",
        "{{ [1] * 100000000 }}",
        "{{ 100000000 * 'x' }}",
        "{{ 7 ** 10000000 }}",
        "{{ range(10000000) | list | length }}",
    ],
)
def test_memory_bombs_are_refused(ctx: dict[str, Any], source: str) -> None:
    err = problem(source, ctx, step="s")
    assert "too large" in err.message


def test_ordinary_arithmetic_still_works(ctx: dict[str, Any]) -> None:
    assert render("{{ '-' * 3 }} {{ 2 ** 10 }} {{ inputs.words * 2 }}", ctx) == "--- 1024 1200"


def test_runtime_error_is_a_template_error(ctx: dict[str, Any]) -> None:
    err = problem("a\n{{ inputs.words + 'x' }}", ctx, step="s", where="system")
    assert "TypeError" in err.message
    assert err.line == 2
    assert err.message.endswith("(system, line 2)")


# --------------------------------------------------------------- references


def test_references_finds_inputs_steps_and_lines() -> None:
    refs = references(
        "Plan {{ inputs.topic }}\n"
        "{{ steps.outline.output.title }} {{ steps['draft'].text }}\n"
        "{{ inputs['words'] }} {{ steps.check.skipped }}"
    )
    assert refs.input_names == {"topic", "words"}
    assert refs.step_ids == {"outline", "draft", "check"}
    assert [(r.name, r.line) for r in refs.inputs] == [("topic", 1), ("words", 3)]
    by_id = {r.name: r for r in refs.steps}
    assert by_id["outline"].attr == "output"
    assert by_id["outline"].path == ("outline", "output", "title")
    assert by_id["outline"].line == 2
    assert by_id["draft"].attr == "text"
    assert by_id["check"].attr == "skipped"
    assert by_id["outline"].dotted == "steps.outline.output.title"
    assert refs.names == ()


def test_references_reports_misspelled_step_attribute() -> None:
    refs = references("{{ steps.x.outptu }}")
    (ref,) = refs.steps
    assert ref.attr == "outptu"
    assert ref.attr not in STEP_FIELDS


def test_references_unknown_names_with_paths() -> None:
    refs = references("{{ input.topic }}\n{{ stepz.a.output }}")
    assert [(r.name, r.path, r.line) for r in refs.names] == [
        ("input", ("topic",), 1),
        ("stepz", ("a", "output"), 2),
    ]
    assert refs.names[0].dotted == "input.topic"


def test_references_ignores_template_locals() -> None:
    source = (
        "{% for s in steps.outline.output.sections %}{{ s.title }} {{ loop.index }}{% endfor %}\n"
        "{% set total = inputs.words * 2 %}{{ total }}\n"
        "{% macro bullet(text) %}- {{ text }}{% endmacro %}{{ bullet(inputs.topic) }}\n"
        "{% with x = inputs.topic %}{{ x }}{% endwith %}\n"
        "{% set ns = namespace(n=0) %}{% set ns.n = 1 %}{{ ns.n }}\n"
        "{{ range(3) | list }} {{ dict(a=1) }}"
    )
    refs = references(source)
    assert refs.names == ()
    assert refs.input_names == {"words", "topic"}
    assert refs.step_ids == {"outline"}


def test_references_known_names_are_not_unknown() -> None:
    refs = references("{{ section.title }} {{ inputs.topic }}", known={"section"})
    assert refs.names == ()
    refs = references("{{ section.title }}")
    assert [r.name for r in refs.names] == ["section"]


def test_references_use_before_set_is_still_free() -> None:
    refs = references("{{ later }}{% set later = 1 %}")
    assert [r.name for r in refs.names] == ["later"]


def test_loop_variable_outside_its_loop_is_free() -> None:
    refs = references("{% for s in inputs.items %}{{ s }}{% endfor %}{{ s }}")
    assert [(r.name, r.line) for r in refs.names] == [("s", 1)]


def test_references_computed_step_key_is_dynamic() -> None:
    refs = references("{% for k in inputs.ids %}{{ steps[k].output }}{% endfor %}{{ steps }}")
    assert refs.step_ids == frozenset()
    assert len(refs.dynamic_steps) == 2
    assert all(r.name is None for r in refs.dynamic_steps)


def test_references_inside_filters_tests_calls_and_conditions() -> None:
    refs = references(
        "{% if steps.a.output and inputs.x is defined %}"
        "{{ steps.b.text | replace(inputs.old, inputs.new) }}"
        "{{ steps.c.output.items[inputs.i] }}"
        "{% endif %}"
    )
    assert refs.input_names == {"x", "old", "new", "i"}
    assert refs.step_ids == {"a", "b", "c"}
    assert {r.name: r.path for r in refs.steps}["c"] == ("c", "output", "items")


def test_expression_references() -> None:
    refs = references("steps.outline.output.sections", expression=True)
    assert refs.steps == (Reference("step", "outline", 1, ("outline", "output", "sections")),)
    refs = references("{{ inputs.words > 300 }}", expression=True)
    assert refs.input_names == {"words"}


def test_references_of_a_bad_template_raise_syntax_problem() -> None:
    with pytest.raises(TemplateSyntaxProblem):
        references("{{ inputs.a ")


def test_references_can_be_combined() -> None:
    both = references("{{ inputs.a }}") + references("{{ steps.b.output }}")
    assert both.input_names == {"a"} and both.step_ids == {"b"}


def test_step_entry_shape() -> None:
    entry = step_entry(
        output={"a": 1}, text='{"a": 1}', usage={"prompt_tokens": 2, "completion_tokens": 3}
    )
    assert entry == {
        "output": {"a": 1},
        "text": '{"a": 1}',
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
        "skipped": False,
    }
    assert step_entry(skipped=True, output="ignored")["output"] is None


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ steps.a.output.n }}", "steps.a.output.n"),
        ("  {{steps.a.output}}\n", "steps.a.output"),
        ("{{ {'a': {'b': 1}} }}", "{'a': {'b': 1}}"),
        ("n = {{ steps.a.output.n }}", None),
        ("{{ a }} and {{ b }}", None),
        ("{{ a }}{% if b %}x{% endif %}", None),
        ("plain text", None),
        ("{{ broken ", None),
    ],
)
def test_single_expression(source: str, expected: str | None) -> None:
    assert single_expression(source) == expected


def test_dates_and_decimals_print_and_serialise() -> None:
    import datetime
    from decimal import Decimal

    context = make_context({"day": datetime.date(2024, 1, 2), "price": Decimal("1.50")}, {})
    assert render("{{ inputs.day }} {{ inputs.price }}", context) == "2024-01-02 1.50"
    assert render("{{ inputs }}", context) == '{"day": "2024-01-02", "price": 1.5}'
