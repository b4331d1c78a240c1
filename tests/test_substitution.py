"""Templates made of text and ``{{ name.key }}`` references render without Jinja
(flowgpt/templating/_substitution.py): the text must be exactly Jinja's, and anything the
fast path cannot decide must reach Jinja (and its error messages)."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowgpt.templating import TemplateRenderProblem, make_context, parse_template
from flowgpt.templating._sandbox import _render_bounded
from flowgpt.templating._substitution import substitute, substitution_parts

# Keys that are also dict methods: the sandbox reads the key first, and so must the fast path.
KEYS = ["topic", "n", "doc", "items", "keys", "get", "title"]

scalars = (
    st.text(max_size=12)
    | st.integers()
    | st.floats(allow_nan=True)
    | st.booleans()
    | st.none()
    | st.decimals(places=2, allow_nan=False)  # not printed by the fast path: Jinja's
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=6,
)
contexts = st.builds(
    lambda inputs, output: make_context(inputs, {"a": {"output": output, "text": "t"}}),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=5),
    values,
)
# Literal text that cannot start a Jinja tag, plus newlines (the trailing one is dropped).
literals = st.text(alphabet=st.characters(blacklist_characters="{}%#"), max_size=15)
references = st.builds(
    lambda root, keys, brackets: (
        "{{ " + root + "".join(f"['{k}']" if brackets else f".{k}" for k in keys) + " }}"
    ),
    st.sampled_from(["inputs", "steps.a.output", "steps.a", "steps.b", "nothing"]),
    st.lists(st.sampled_from(KEYS), max_size=2),
    st.booleans(),
)
templates = st.lists(literals | references, min_size=1, max_size=6).map("".join)


def jinja(source: str, context: dict[str, Any]) -> str:
    return _render_bounded(parse_template(source)._compiled, context)


@settings(max_examples=400, deadline=None)
@given(source=templates, context=contexts)
def test_the_fast_path_renders_exactly_what_jinja_renders(
    source: str, context: dict[str, Any]
) -> None:
    template = parse_template(source)
    try:
        expected = jinja(source, context)
    except Exception:
        # Jinja refuses (undefined name, a method printed...): so must render(), with
        # flowgpt's message, and the fast path must have left it to Jinja.
        assert template._parts is None or substitute(template._parts, context) is None
        with pytest.raises(TemplateRenderProblem):
            template.render(context)
        return
    assert template.render(context) == expected
    if template._parts is not None:
        fast = substitute(template._parts, context)
        assert fast is None or fast == expected


def test_prompts_take_the_fast_path() -> None:
    context = make_context(
        {"topic": "绿茶", "n": 3, "doc": {"title": "T", "tags": ["a"]}, "items": 1.5},
        {"a": {"output": None}},
    )
    source = (
        "About {{ inputs.topic }} in {{ inputs.n }} points; {{ inputs['doc'] }} "
        "{{ inputs.items }}{{ steps.a.output }}.\n"
    )
    parts = substitution_parts(parse_template(source)._ast)
    assert parts is not None
    text = substitute(parts, context)
    assert text == 'About 绿茶 in 3 points; {"title": "T", "tags": ["a"]} 1.5.'
    assert text == jinja(source, context)


@pytest.mark.parametrize(
    "source",
    [
        "{{ inputs.topic | upper }}",
        "{% if inputs.n %}x{% endif %}",
        "{{ inputs.n + 1 }}",
        "{{ 'literal' }}",
        "{{ inputs[inputs.topic] }}",
        "{{ range(3) }}",
    ],
)
def test_anything_more_than_references_is_left_to_jinja(source: str) -> None:
    assert substitution_parts(parse_template(source)._ast) is None


@pytest.mark.parametrize(
    ("inputs", "source"),
    [
        ({}, "{{ inputs.topic }}"),  # missing: Jinja's undefined error
        ({"doc": "text"}, "{{ inputs.doc.title }}"),  # not a dict
        ({"doc": {}}, "{{ inputs.doc.items }}"),  # a dict method, not a key
        ({"x": math.pi}, "{{ range }}"),  # a Jinja global
        ({"big": "x" * 6_000_000}, "{{ inputs.big }}{{ inputs.big }}"),  # over the limit
        ({"doc": {"n": Decimal("Infinity")}}, "{{ inputs.doc }}"),  # JSON cannot print it
    ],
)
def test_undecided_cases_go_to_jinja(inputs: dict[str, Any], source: str) -> None:
    template = parse_template(source)
    context = make_context(inputs, {})
    if template._parts is not None:
        assert substitute(template._parts, context) is None
    with pytest.raises(TemplateRenderProblem):
        template.render(context)
