"""The documentation cannot rot: every example in docs/ is checked against the code.

Conventions (for whoever edits docs/*.md):

* ```yaml blocks with a top-level ``cases:`` are test files (docs/testing.md): they must be
  valid against the test-file format.
* ```yaml blocks that contain a line ``version: 1`` are whole workflows: they must load and
  pass every static check with no error and no warning. A block whose first line starts
  with ``# broken`` is wrong on purpose and must fail; ``# broken: some text`` also
  requires ``some text`` in one of the messages. Other ```yaml blocks are fragments: they
  must be valid YAML, and their top-level keys (``provider:``, ``inputs:``, ``steps:``,
  ``output:`` ...) must be valid against the format.
* ```console blocks are transcripts. Each ``$ flowgpt ...`` line is run in-process (from
  the repository root, without an API key) and what it prints (stdout and stderr, as a
  terminal shows them) must equal the lines below it, up to the next ``$`` line.
  ``$ echo $?`` prints the exit code of the command before it. Timings, run ids
  (``20261125-230148-ddee91``, also outside JSON), dates and times are normalised. Each
  block runs with an empty run store of its own (``FLOWGPT_STORE``). Anything else (pipes,
  variables) belongs in ```bash or ```text blocks, which are not run.
* ```python blocks are run, each in a fresh namespace from the repository root, and every
  ``test_*`` function they define is called. A block preceded by a line
  ``<!-- not run: why -->`` is skipped (e.g. it needs a real API key).
* Every workflow (and test file) in docs/examples/ (not broken/) passes
  ``flowgpt validate --strict`` with nothing to report; every file in docs/examples/broken/
  fails it and is shown, with its output, in a ```console block of docs/validate.md.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from pydantic import TypeAdapter, ValidationError

from flowgpt.accounting.checks import check_file, cost_diagnostics
from flowgpt.cli import main
from flowgpt.errors import SpecError
from flowgpt.spec.analysis import analyze
from flowgpt.spec.loader import parse_workflow
from flowgpt.spec.models import OutputSpec, WorkflowSpec
from flowgpt.testing.models import SuiteSpec
from flowgpt.testing.paths import is_test_file
from flowgpt.testing.suite import check_test_file

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
BROKEN = EXAMPLES / "broken"
PAGES = sorted(DOCS.glob("*.md"))
# Absolute paths in messages (e.g. "create it at /home/you/...") are shown with this prefix.
ROOT_PLACEHOLDER = "/path/to/flowgpt"


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str  # the nearest non-blank line above the fence

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        above = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        yield Block(page, start + 1, lang.lower(), "\n".join(body) + "\n", above)


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]


def of(lang: str) -> list[Block]:
    return [b for b in ALL_BLOCKS if b.lang == lang]


def ids(items: list[Block]) -> list[str]:
    return [b.where for b in items]


def test_docs_exist() -> None:
    names = {p.name for p in PAGES}
    assert {
        "format.md",
        "validate.md",
        "running.md",
        "python-api.md",
        "tokens-and-cost.md",
    } <= names
    assert of("yaml") and of("console") and of("python")


# ----------------------------------------------------------------------- yaml blocks

TEST_FILE_BLOCKS = [b for b in of("yaml") if re.search(r"^cases:", b.text, re.M)]
WORKFLOW_BLOCKS = [
    b
    for b in of("yaml")
    if re.search(r"^version:\s*1\s*$", b.text, re.M) and b not in TEST_FILE_BLOCKS
]
FRAGMENT_BLOCKS = [b for b in of("yaml") if b not in WORKFLOW_BLOCKS + TEST_FILE_BLOCKS]


def _broken(block: Block) -> str | None:
    """None for a normal block; the expected text ("" for any) for a `# broken` block."""
    first = block.text.lstrip().splitlines()[0] if block.text.strip() else ""
    m = re.match(r"#\s*broken\b:?\s*(.*)$", first)
    return m.group(1).strip() if m else None


def _diagnostics(text: str) -> list[str]:
    # Inline examples read their prompt files from docs/examples/, like the examples there.
    try:
        wf = parse_workflow(text, path="<doc>", base_dir=EXAMPLES)
    except SpecError as exc:
        return [d.format() for d in exc.diagnostics]
    found = sorted(analyze(wf) + cost_diagnostics(wf), key=lambda d: (d.line or 0, d.col or 0))
    return [d.format() for d in found]


@pytest.mark.parametrize("block", WORKFLOW_BLOCKS, ids=ids(WORKFLOW_BLOCKS))
def test_yaml_workflow_blocks(block: Block) -> None:
    found = _diagnostics(block.text)
    expected = _broken(block)
    if expected is None:
        assert found == [], f"{block.where}: this example does not validate cleanly"
    else:
        assert found, f"{block.where}: marked broken, but it validates"
        assert any(expected in d for d in found), (block.where, expected, found)


@pytest.mark.parametrize("block", TEST_FILE_BLOCKS, ids=ids(TEST_FILE_BLOCKS))
def test_yaml_test_file_blocks(block: Block) -> None:
    try:
        SuiteSpec.model_validate(yaml.safe_load(block.text))
    except ValidationError as exc:
        pytest.fail(f"{block.where}: not a valid test file:\n{exc}")


_FRAGMENT_TYPES: dict[str, Any] = {
    **{name: info.annotation for name, info in WorkflowSpec.model_fields.items()},
    "output": OutputSpec,
}


@pytest.mark.parametrize("block", FRAGMENT_BLOCKS, ids=ids(FRAGMENT_BLOCKS))
def test_yaml_fragment_blocks(block: Block) -> None:
    data = yaml.safe_load(block.text)
    if _broken(block) is not None:
        return
    assert isinstance(data, dict), f"{block.where}: a fragment is a mapping of format keys"
    for key, value in data.items():
        assert key in _FRAGMENT_TYPES, f"{block.where}: `{key}` is not a workflow key"
        try:
            TypeAdapter(_FRAGMENT_TYPES[key]).validate_python(value)
        except ValidationError as exc:
            pytest.fail(f"{block.where}: `{key}` is not valid:\n{exc}")


# ------------------------------------------------------------------- example files

GOOD_FILES = sorted(p for p in EXAMPLES.rglob("*.yaml") if BROKEN not in p.parents)
BROKEN_FILES = sorted(BROKEN.glob("*.yaml"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", GOOD_FILES, ids=_rel)
def test_example_files_validate_clean(path: Path) -> None:
    check = check_test_file if is_test_file(path) else check_file
    assert [d.format() for d in check(path)] == []


@pytest.mark.parametrize("path", BROKEN_FILES, ids=_rel)
def test_broken_files_fail_and_are_shown(path: Path) -> None:
    assert check_file(path), f"{_rel(path)} is in broken/ but has nothing to report"
    shown = [b for b in of("console") if b.page.name == "validate.md" and _rel(path) in b.text]
    assert shown, f"{_rel(path)} is not shown in a console block of docs/validate.md"


# --------------------------------------------------------------------- transcripts

CONSOLE_BLOCKS = of("console")


def _normalise(text: str) -> str:
    text = text.replace(str(ROOT), ROOT_PLACEHOLDER)
    text = re.sub(r"\b\d+\.\d+s\b", "0.00s", text)  # latencies in tables and progress
    text = re.sub(r'"latency_s": [\d.e-]+', '"latency_s": 0.0', text)
    text = re.sub(r'"run_id": "[^"]*"', '"run_id": "RUN_ID"', text)
    text = re.sub(r"\b\d{8}-\d{6}-[0-9a-f]{6}\b", "RUN_ID", text)  # e.g. in `--resume ID`
    # Dates and times (`runs list`, `runs show`, `runs stats`), to the second or millisecond.
    text = re.sub(
        r"\b\d{4}-\d\d-\d\d([ T]\d\d:\d\d(:\d\d(\.\d+)?)?([+-]\d\d:\d\d)?)?", "DATE", text
    )
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def run_cli(args: list[str]) -> tuple[int, str]:
    """Run `flowgpt ARGS` in-process from the repository root, as a user would see it."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        os.chdir(cwd)
    return result.exit_code, result.output


def transcript(block: Block) -> Iterator[tuple[str, str]]:
    """(command, expected output) pairs of a console block."""
    command: str | None = None
    output: list[str] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield command, "\n".join(output)
            command, output = line[2:].strip(), []
        else:
            assert command is not None, f"{block.where}: output before the first `$` line"
            output.append(line)
    if command is not None:
        yield command, "\n".join(output)


@pytest.fixture
def plain_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    # Each block starts with an empty run store, so `flowgpt runs ...` shows its own runs.
    monkeypatch.setenv("FLOWGPT_STORE", str(tmp_path / "runs.sqlite3"))


@pytest.mark.usefixtures("plain_terminal")
@pytest.mark.parametrize("block", CONSOLE_BLOCKS, ids=ids(CONSOLE_BLOCKS))
def test_console_blocks(block: Block) -> None:
    last_exit: int | None = None
    for command, expected in transcript(block):
        if command == "echo $?":
            assert last_exit is not None, f"{block.where}: `echo $?` before any command"
            actual = str(last_exit)
        else:
            argv = shlex.split(command)
            assert argv[0] == "flowgpt", f"{block.where}: only `flowgpt` commands run here"
            assert not set(argv) & {"|", ">", "<", "&&", ";", "2>&1"}, (
                f"{block.where}: shell syntax in a console block; use a bash block"
            )
            last_exit, actual = run_cli(argv[1:])
        assert _normalise(actual) == _normalise(expected), f"{block.where}: `{command}`"


# --------------------------------------------------------------------- python blocks

PYTHON_BLOCKS = [b for b in of("python") if not b.marker.startswith("<!-- not run")]


@pytest.mark.usefixtures("plain_terminal")
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=ids(PYTHON_BLOCKS))
def test_python_blocks(block: Block) -> None:
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code = compile(block.text, f"{block.where}", "exec")
        exec(code, namespace)
        for name, value in list(namespace.items()):
            if name.startswith("test_") and callable(value):
                value()
    finally:
        os.chdir(cwd)


# ------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"^(`{3,}|~{3,}).*?^\1", "", text, flags=re.M | re.S)  # not in code blocks
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        linked = (page.parent / target) if target else page
        assert linked.exists(), f"{page.name}: broken link {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name}: no heading for {target}#{anchor}"
