"""The loader: every class of mistake is reported at its file:line:col with what to do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flowgpt.errors import Diagnostic, SpecError
from flowgpt.spec.loader import dump_workflow, load_workflow, parse_workflow

GOOD = """\
version: 1
name: t
defaults:
  model: gpt-4o-mini
steps:
  - id: a
    prompt: hello
"""


def errors_of(text: str, tmp_path: Path | None = None, name: str = "wf.yaml") -> list[Diagnostic]:
    if tmp_path is not None:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(SpecError) as info:
            load_workflow(path)
    else:
        with pytest.raises(SpecError) as info:
            parse_workflow(text, path="wf.yaml")
    assert info.value.exit_code == 2
    return info.value.diagnostics


def one(text: str) -> Diagnostic:
    found = errors_of(text)
    assert len(found) == 1, [d.format() for d in found]
    return found[0]


def test_good_file_loads() -> None:
    wf = parse_workflow(GOOD, path="wf.yaml")
    assert wf.spec.steps[0].id == "a"
    assert wf.spec.defaults.model == "gpt-4o-mini"


def test_yaml_syntax_error_has_line() -> None:
    d = one(GOOD + "  - id: b\n    prompt: [unclosed\n")
    assert (d.line, d.file) == (10, "wf.yaml")
    assert "invalid YAML" in d.message
    assert d.hint


def test_tab_indentation() -> None:
    d = one("version: 1\nname: t\nsteps:\n\t- id: a\n")
    assert (d.line, d.col) == (4, 1)
    assert "tab" in d.message
    assert "spaces" in (d.hint or "")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("hello", "caf\xe9").encode("latin-1"))
    with pytest.raises(SpecError) as info:
        load_workflow(path)
    d = info.value.diagnostics[0]
    assert (d.line, d.col) == (7, 16)
    assert "UTF-8" in d.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    d = one(text)
    assert "empty" in d.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_not_mapping(text: str) -> None:
    d = one(text)
    assert "top level" in d.message and d.line == 1


def test_duplicate_key_refused() -> None:
    d = one(GOOD.replace("name: t\n", "name: t\nname: u\n"))
    assert (d.line, d.col) == (3, 1)
    assert "duplicate key `name`" in d.message and "line 2" in d.message


def test_duplicate_step_id() -> None:
    d = one(GOOD + "  - id: a\n    prompt: again\n")
    assert d.line == 8
    assert "duplicate step id `a`" in d.message


def test_unknown_key_did_you_mean() -> None:
    d = one(GOOD.replace("  model: gpt-4o-mini\n", "  model: gpt-4o-mini\n  max_token: 5\n"))
    assert (d.line, d.col) == (5, 3)
    assert "unknown key `max_token`" in d.message
    assert "did you mean `max_tokens`" in d.message


def test_unknown_step_key() -> None:
    d = one(GOOD + "    promt: x\n")
    assert d.line == 8
    assert "did you mean `prompt`" in d.message


def test_unknown_check_kind() -> None:
    d = one(GOOD + "    output:\n      checks:\n        - max_word: 3\n")
    assert d.line == 10
    assert "unknown check `max_word`" in d.message and "max_words" in d.message


def test_wrong_type_and_range() -> None:
    found = errors_of(GOOD + "    temperature: 3\n    max_tokens: lots\n")
    lines = {d.line: d.message for d in found}
    assert "step `a`: `temperature` must be at most 2, got 3" in lines[8]
    assert "step `a`: `max_tokens` must be a whole number, got 'lots'" in lines[9]


def test_missing_required() -> None:
    d = one("version: 1\nname: t\n")
    assert "missing required key `steps`" in d.message


def test_step_without_prompt() -> None:
    d = one(GOOD.replace("    prompt: hello\n", "    model: gpt-4o\n"))
    assert d.line == 6
    assert "needs a `prompt`" in d.message


def test_unsupported_version() -> None:
    d = one(GOOD.replace("version: 1", "version: 2"))
    assert d.line == 1
    assert "unsupported `version`" in d.message


def test_alias_bomb_refused_quickly() -> None:
    bomb = textwrap.dedent(
        """\
        version: 1
        name: t
        a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
        b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
        c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
        d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
        e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
        f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
        g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
        h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
        i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
        """
    )
    d = one(bomb)
    assert "alias" in d.message
    assert d.line is not None and 5 <= d.line <= 11


def test_aliases_that_expand_to_too_much_text_are_refused() -> None:
    # Few values (under the values limit), but a long text repeated: 100,000 characters
    # x 10 x 11 = 11 million, over the 10 million a workflow may expand to.
    text = (
        "version: 1\nname: t\n"
        f"a: &a {'x' * 100_000}\n"
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    )
    d = one(text)
    assert d.message == (
        "YAML aliases here expand to more than 10,000,000 characters, flowgpt's limit for "
        "one workflow"
    )
    assert d.hint == "this looks like an alias bomb; write the values out or use fewer aliases"
    assert d.line == 5


def test_recursive_alias_refused() -> None:
    d = one("version: 1\nname: t\nx: &x [*x]\n")
    assert "alias" in d.message


def test_small_aliases_are_fine() -> None:
    text = GOOD + "  - id: b\n    prompt: &p shared text\n  - id: c\n    prompt: *p\n"
    wf = parse_workflow(text)
    assert wf.spec.step("c").prompt == "shared text"


def test_prompt_file_missing_absolute_and_outside(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET CONTENT")
    text = (
        GOOD
        + "    system_file: nothere.md\n"
        + "  - id: b\n    prompt_file: /etc/passwd\n"
        + "  - id: c\n    prompt_file: ../secret.txt\n"
    )
    found = errors_of(text, tmp_path / "sub")
    by_line = {d.line: d for d in found}
    assert "`system_file: nothere.md`: no such file" in by_line[8].message
    assert "absolute" in by_line[10].message
    assert "outside" in by_line[12].message
    assert all("TOP SECRET" not in d.format() for d in found)


def test_prompt_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "p.md").write_text("Hi {{ inputs.x }}", encoding="utf-8")
    path = tmp_path / "wf.yaml"
    path.write_text(
        GOOD.replace("    prompt: hello\n", "    prompt_file: p.md\n") + "inputs:\n  x: {}\n"
    )
    wf = load_workflow(path)
    source = wf.template(wf.spec.steps[0], "prompt")
    assert source is not None and source.text == "Hi {{ inputs.x }}"


KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"


@pytest.mark.parametrize(
    ("extra", "line", "words"),
    [
        (f"    system: use key {KEY} please\n", 8, "API key"),
        (f"provider:\n  api_key_env: {KEY}\n", 9, "not a variable name"),
        (f"provider:\n  api_key: {KEY}\n", 9, "secret"),
    ],
)
def test_api_key_in_file_refused_never_echoed(extra: str, line: int, words: str) -> None:
    found = errors_of(GOOD + extra)
    assert any(d.line == line and words in d.message for d in found), [d.format() for d in found]
    for d in found:
        assert KEY not in d.format()
        assert KEY[:12] not in str(d.to_dict())


def test_many_errors_reported_at_once() -> None:
    text = GOOD + "    temperature: 9\n    promt: x\n  - id: a\n    prompt: y\n"
    found = errors_of(text)
    assert len(found) >= 3
    assert [d.line for d in found] == sorted(d.line or 0 for d in found)


def test_round_trip_load_dump_load() -> None:
    path = Path(__file__).parent.parent / "workflows" / "article.yaml"
    first = load_workflow(path).spec
    again = parse_workflow(dump_workflow(first), path=path).spec
    assert again == first


# ---------------------------------------------------------------- errors that name the thing

NAMED = {
    "a bad value is quoted": (
        "version: 1\nname: e\ndefaults: {model: gpt-4o-mini, temperature: hot}\n"
        "steps:\n  - {id: a, prompt: hi}\n",
        3,
        ["`defaults.temperature` must be a number, got 'hot'"],
    ),
    "a step is named by its id, not steps[1]": (
        "version: 1\nname: e\ndefaults: {model: gpt-4o-mini}\nsteps:\n"
        "  - {id: a, prompt: hi}\n  - id: draft\n    prompt: hi\n    max_tokens: lots\n",
        8,
        ["step `draft`: `max_tokens` must be a whole number, got 'lots'"],
    ),
    "an id breaking the rule says the rule in words": (
        "version: 1\nname: e\ndefaults: {model: gpt-4o-mini}\nsteps:\n"
        "  - id: Draft-2\n    prompt: hi\n",
        5,
        [
            "step id 'Draft-2' is not a valid id: ids are lowercase letters, digits and "
            "underscores, starting with a letter or an underscore",
            "rename it, e.g. `draft_2`",
        ],
    ),
    "an enum gets the closest valid value": (
        "version: 1\nname: e\ndefaults: {model: gpt-4o-mini}\ninputs:\n"
        "  topic: {type: stirng}\nsteps:\n  - {id: a, prompt: hi}\n",
        5,
        ["got 'stirng'; did you mean `string`?"],
    ),
    "another language's type name is understood": (
        "version: 1\nname: e\ndefaults: {model: gpt-4o-mini}\ninputs:\n"
        "  n: {type: int}\nsteps:\n  - {id: a, prompt: hi}\n",
        5,
        ["got 'int'; did you mean `integer`?"],
    ),
    "no internal class names: the expected shape": (
        "version: 1\nname: e\ndefaults: {model: gpt-4o-mini}\ninputs:\n"
        "  topic: 5\nsteps:\n  - {id: a, prompt: hi}\n",
        5,
        ["`inputs.topic` must be a mapping like `{type: string, description: ...}`, got 5"],
    ),
    "a union says every type it takes once": (
        "version: 1\nname: e\ndefaults: {model: gpt-4o-mini, stop: 5}\n"
        "steps:\n  - {id: a, prompt: hi}\n",
        3,
        ["`defaults.stop` must be text or a list, got 5"],
    ),
    "an unclosed quote points where it opens": (
        "version: 1\nname: e\ndefaults: {model: gpt-4o-mini}\nsteps:\n  - id: a\n"
        '    prompt: "unclosed\n    temperature: 1\n  - id: b\n    prompt: fine\n',
        6,
        ['the quote " opened here is never closed'],
    ),
}


@pytest.mark.parametrize("case", list(NAMED), ids=list(NAMED))
def test_errors_name_the_thing(case: str, tmp_path: Path) -> None:
    text, line, words = NAMED[case]
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    from click.testing import CliRunner

    from flowgpt.cli import main

    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"wf.yaml:{line}:" in result.output, result.output
    for said in words:
        assert said in result.output, result.output
    assert "Spec" not in result.output and "Input should" not in result.output
    assert "Traceback" not in result.output


def test_a_refused_prompt_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "secret.txt").write_text("private")
    errors = errors_of(
        "version: 1\nname: e\ndefaults: {model: gpt-4o-mini}\nsteps:\n"
        "  - id: leak\n    prompt_file: ../secret.txt\n",
        tmp_path / "flows",
    )
    (error,) = errors
    assert error.line == 6
    assert "step `leak`: `prompt_file: ../secret.txt` points outside" in error.message


def test_a_model_typo_gets_a_did_you_mean_before_any_price_message(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from flowgpt.cli import main

    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\nname: e\ndefaults: {model: gpt4o-mini, max_tokens: 10}\n"
        "budget: {max_cost_usd: 0.01}\nsteps:\n  - {id: a, prompt: hi}\n"
    )
    checked = CliRunner().invoke(main, ["validate", str(path)])
    assert "wf.yaml:3:" in checked.output
    assert "did you mean `gpt-4o-mini`?" in checked.output
    assert "no known price" not in checked.output
    ran = CliRunner().invoke(main, ["run", str(path), "--mock", "--no-store"])
    assert ran.exit_code == 1
    assert "model `gpt4o-mini` (did you mean `gpt-4o-mini`?) has no known price" in ran.output
