"""YAML text -> Workflow, with every mistake pointing at ``file:line:col``.

The only module that imports yaml. PyYAML is used for scanning and composing; construction
is checked on the way (duplicate keys, alias bombs) and records where every value was
written, so pydantic's errors can be mapped back to the file. The checks on the composed
document (secrets, duplicate step ids, pydantic's errors -> diagnostics) live in
flowgpt.spec.diagnostics; reading ``system_file``/``prompt_file`` stays here.

Other YAML files flowgpt reads and writes go through here too: ``read_document`` and
``validate_document`` give any pydantic model the same file:line diagnostics (test files),
``load_data`` reads plain data fast and ``dump_data`` writes it for people to diff
(cassettes).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from flowgpt.errors import Diagnostic, SpecError
from flowgpt.spec.diagnostics import (
    _duplicate_step_ids,
    _secret_diagnostics,
    _validation_diagnostics,
)
from flowgpt.spec.inputs import MAX_NESTING
from flowgpt.spec.models import WorkflowSpec
from flowgpt.spec.secrets import credentials_in_base_url, scan_text
from flowgpt.spec.workflow import Location, SourceMap, Workflow, _Mark

__all__ = [
    "dump_data",
    "dump_workflow",
    "load_data",
    "load_workflow",
    "parse_document",
    "parse_workflow",
    "read_document",
    "validate_document",
]

M = TypeVar("M", bound=BaseModel)

_WORKFLOW_START = "start with `version: 1`, `name: ...` and `steps:`"

# A document may hold, and expand to through aliases, at most this many values; a
# "billion laughs" file is refused before anything is expanded.
MAX_EXPANDED_NODES = 100_000
MAX_EXPANDED_CHARS = 10_000_000
MAX_FILE_BYTES = 2_000_000
# A prompt file holds at most this much: about a million tokens, more than any model's
# context window takes.
MAX_PROMPT_FILE_BYTES = 4_000_000
# FLOWGPT_ALLOW_HIDDEN_FILES=1 lets prompt files live in hidden folders (.github/prompts).
ALLOW_HIDDEN_ENV = "FLOWGPT_ALLOW_HIDDEN_FILES"


class _Problem(Exception):
    def __init__(self, message: str, mark: yaml.Mark | None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.hint = hint


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and records where values were written."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        # id(container) -> {key or index: (key node, value node)}; the containers stay
        # alive in the result, so their ids stay unique.
        self.children: dict[int, dict[Any, tuple[yaml.Node | None, yaml.Node]]] = {}
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # PyYAML composes recursively: refuse deep nesting (deeper than MAX_NESTING) before
        # Python's stack runs out.
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise _Problem(
                    f"lists and mappings are nested more than {MAX_NESTING} levels deep",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                    "flowgpt reads workflows nested at most that deep; flatten this value",
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key; SafeConstructor reports it below
                continue
            if duplicate:
                first = seen[key].start_mark.line + 1
                raise _Problem(
                    f"duplicate key `{key}` (first written on line {first})",
                    key_node.start_mark,
                    "YAML would silently keep only the last one; remove or rename one of them",
                )
            seen[key] = key_node
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        self.children[id(mapping)] = {
            self.construct_object(k, deep=True): (k, v)
            for k, v in node.value
            if k.tag != "tag:yaml.org,2002:merge"
        }
        return mapping

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> list[Any]:
        sequence: list[Any] = super().construct_sequence(node, deep=deep)
        self.children[id(sequence)] = {i: (None, v) for i, v in enumerate(node.value)}
        return sequence

    def construct_yaml_map(self, node: yaml.MappingNode) -> Generator[dict[Any, Any], None, None]:
        data: dict[Any, Any] = {}
        yield data
        value = self.construct_mapping(node)
        data.update(value)
        self.children[id(data)] = self.children.pop(id(value))

    def construct_yaml_seq(self, node: yaml.SequenceNode) -> Generator[list[Any], None, None]:
        data: list[Any] = []
        yield data
        value = self.construct_sequence(node)
        data.extend(value)
        self.children[id(data)] = self.children.pop(id(value))


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_yaml_seq)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse documents with too many values, or whose aliases expand to too many values
    (or refer to themselves)."""
    written: set[int] = set()
    pending: list[yaml.Node] = [root]
    while pending:  # every node once, however many aliases point at it
        node = pending.pop()
        if id(node) in written:
            continue
        written.add(id(node))
        if len(written) > MAX_EXPANDED_NODES:
            raise _Problem(
                f"the workflow holds more than {MAX_EXPANDED_NODES:,} values (keys, values "
                "and list items), flowgpt's limit for one workflow",
                node.start_mark,
                "split it into smaller workflows",
            )
        if isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            pending.extend(n for pair in node.value for n in pair)
    sizes: dict[int, tuple[int, int]] = {}  # id -> (values, characters) once expanded
    active: set[int] = set()

    def size(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Problem(
                "a YAML alias refers to itself", node.start_mark, "remove the recursive alias"
            )
        active.add(key)
        total, chars = 1, 0
        if isinstance(node, yaml.ScalarNode):
            chars = len(node.value)
        else:
            for child in node.value:  # nodes of a sequence, (key, value) pairs of a mapping
                for part in child if isinstance(child, tuple) else (child,):
                    values, text = size(part)
                    total, chars = total + values, chars + text
        active.discard(key)
        sizes[key] = (total, chars)
        if total > MAX_EXPANDED_NODES:
            raise _Problem(
                f"YAML aliases here expand to more than {MAX_EXPANDED_NODES:,} values "
                f"(the document has {len(written):,} written out), flowgpt's limit for one "
                "workflow",
                node.start_mark,
                "this looks like an alias bomb; write the values out or use fewer aliases",
            )
        if chars > MAX_EXPANDED_CHARS:
            # A long text repeated through aliases: templates print values, so what a
            # value expands to must stay printable.
            raise _Problem(
                f"YAML aliases here expand to more than {MAX_EXPANDED_CHARS:,} characters, "
                "flowgpt's limit for one workflow",
                node.start_mark,
                "this looks like an alias bomb; write the values out or use fewer aliases",
            )
        return total, chars

    size(root)


def _record_marks(loader: _Loader, data: Any, node: yaml.Node, smap: SourceMap) -> None:
    """Fill ``smap`` with the position of every value, by document path."""

    def visit(
        value: Any,
        node: yaml.Node,
        key_node: yaml.Node | None,
        path: tuple[str | int, ...],
        depth: int,
    ) -> None:
        style = node.style if isinstance(node, yaml.ScalarNode) else None
        mark = node.start_mark
        smap.marks.setdefault(path, _Mark(mark.line + 1, mark.column + 1, style))
        if key_node is not None:
            kmark = key_node.start_mark
            smap.key_marks.setdefault(path, _Mark(kmark.line + 1, kmark.column + 1))
        if depth > 64 or not isinstance(value, (dict, list)):
            return
        children = loader.children.get(id(value), {})
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            nodes = children.get(key)
            if nodes is not None and isinstance(key, (str, int)):
                visit(child, nodes[1], nodes[0], (*path, key), depth + 1)

    visit(data, node, None, (), 0)


def _decode(raw: bytes, file: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(
            "the file is not UTF-8",
            diagnostics=[
                Diagnostic(
                    f"the file is not valid UTF-8 (byte 0x{raw[exc.start]:02x})",
                    file,
                    line,
                    col,
                    hint="save the file as UTF-8",
                )
            ],
        ) from None
    return text.removeprefix("\ufeff")


def _yaml_error(exc: yaml.YAMLError, file: str) -> Diagnostic:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    line = mark.line + 1 if mark is not None else None
    col = mark.column + 1 if mark is not None else None
    if "'\\t'" in problem or "\t" in problem:
        return Diagnostic(
            "a tab is used for indentation",
            file,
            line,
            col,
            hint="YAML indents with spaces only; replace the tab with spaces",
        )
    context = getattr(exc, "context", None)
    opened = getattr(exc, "context_mark", None)
    if context and "quoted scalar" in context and opened is not None:
        # An unclosed quote is found at the end of the file; where it opens is what to fix.
        quote = "'" if "single" in context else '"'
        return Diagnostic(
            f"invalid YAML: the quote {quote} opened here is never closed",
            file,
            opened.line + 1,
            opened.column + 1,
            hint=f"close it with {quote} at the end of the value, or write a long text as a "
            "block: `prompt: |` and the text indented on the lines below",
        )
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    if "got '?'" in problem:
        # `{q: Which tea?}`: in { } a `?` starts a complex key; easy to write, hard to see.
        return Diagnostic(
            message,
            file,
            line,
            col,
            hint='inside { } quote text that has a `?`, e.g. {question: "Which tea?"}',
        )
    return Diagnostic(
        message,
        file,
        line,
        col,
        hint="check the indentation and quoting around this line; "
        "quote values that contain ': ' or start with '{', '*', '&' or '!'",
    )


def _reader_error(exc: yaml.reader.ReaderError, text: str, file: str) -> Diagnostic:
    """A character YAML does not allow (NUL, most control characters)."""
    line = text.count("\n", 0, exc.position) + 1
    col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or " ")
    return Diagnostic(
        f"the file holds the control character U+{code:04X}, which YAML does not allow",
        file,
        line,
        col,
        hint="remove it; the file may not be a text file, or was saved with a wrong encoding",
    )


def _compose(
    text: str, file: str, what: str = "workflow", start_hint: str | None = None
) -> tuple[Any, SourceMap]:
    smap = SourceMap(file, lines=text.splitlines())
    try:
        loader = _Loader(text)  # reads (and checks) the characters at once
    except yaml.reader.ReaderError as exc:
        diag = _reader_error(exc, text, file)
        raise SpecError(diag.message, diagnostics=[diag]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(
                "the file is empty",
                diagnostics=[
                    Diagnostic(
                        f"the {what} file is empty",
                        file,
                        1,
                        1,
                        hint=start_hint
                        or "start with `version: 1`, a `name:` and `steps:`; "
                        "see `flowgpt schema` or docs/format.md",
                    )
                ],
            )
        _check_expansion(node)
        data = loader.construct_document(node)
        _record_marks(loader, data, node, smap)
    except _Problem as exc:
        mark = exc.mark
        raise SpecError(
            exc.message,
            diagnostics=[
                Diagnostic(
                    exc.message,
                    file,
                    mark.line + 1 if mark else None,
                    mark.column + 1 if mark else None,
                    hint=exc.hint,
                )
            ],
        ) from None
    except yaml.reader.ReaderError as exc:
        diag = _reader_error(exc, text, file)
        raise SpecError(diag.message, diagnostics=[diag]) from None
    except yaml.YAMLError as exc:
        diag = _yaml_error(exc, file)
        raise SpecError(diag.message, diagnostics=[diag]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "nothing"
        raise SpecError(
            "the top level is not a mapping",
            diagnostics=[
                Diagnostic(
                    f"the top level of a {what} must be a mapping of keys, not {kind}",
                    file,
                    1,
                    1,
                    hint=start_hint or _WORKFLOW_START,
                )
            ],
        )
    return data, smap


# --- included files --------------------------------------------------------------------


def _read_includes(
    spec: WorkflowSpec, base_dir: Path, smap: SourceMap, allow_hidden: bool
) -> tuple[dict[str, str], list[Diagnostic]]:
    files: dict[str, str] = {}
    found: list[Diagnostic] = []
    root = base_dir.resolve()
    for index, step in enumerate(spec.steps):
        for key in ("system_file", "prompt_file"):
            name = getattr(step, key)
            if name is None or name in files:
                continue
            loc = smap.locate(("steps", index, key))

            def problem(message: str, hint: str, loc: Location = loc) -> None:
                found.append(Diagnostic(message, loc.file, loc.line, loc.col, hint=hint))

            said = f"step `{step.id}`: `{key}: {name}`"
            if Path(name).is_absolute():
                problem(
                    f"{said} is an absolute path; it must be relative to the workflow file",
                    "move the file next to the workflow and give a relative path",
                )
                continue
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                # Never read (or print) a file outside the workflow's folder.
                problem(
                    f"{said} points outside the workflow's folder",
                    "prompt files must live in the workflow's folder or below it",
                )
                continue
            hidden = _hidden_part(Path(name).parts) or _hidden_part(target.relative_to(root).parts)
            if hidden is not None and not allow_hidden:
                # .ssh/, .config/, .env: a workflow saved in a home folder must not send
                # what is kept there to the API.
                problem(
                    f"`{key}` points into a hidden file or folder (`{hidden}`)",
                    "prompt files are sent to the API: keep them in a visible folder; if "
                    f"this one is meant, set {ALLOW_HIDDEN_ENV}=1",
                )
                continue
            if not target.is_file():
                problem(
                    f"{said}: no such file ({target})",
                    "create it there, or fix the path (relative to the workflow file)",
                )
                continue
            with target.open("rb") as f:
                raw = f.read(MAX_PROMPT_FILE_BYTES + 1)  # never more, however large it is
            if len(raw) > MAX_PROMPT_FILE_BYTES:
                problem(
                    f"`{key}` file {name} is larger than {MAX_PROMPT_FILE_BYTES:,} bytes, "
                    "flowgpt's limit for a prompt file",
                    "a prompt cannot hold that much: no model's context window takes it; "
                    "pass long documents in as inputs, in parts",
                )
                continue
            try:
                files[name] = raw.decode("utf-8").removeprefix("\ufeff")
            except UnicodeDecodeError:
                problem(f"{said} is not UTF-8 text", "save it as UTF-8")
                continue
            found.extend(scan_text(files[name], str(base_dir / name), prompt_file=True))
    return files, found


def _hidden_part(parts: tuple[str, ...]) -> str | None:
    return next((p for p in parts if p.startswith(".") and p not in (".", "..")), None)


# --- public API ------------------------------------------------------------------------


def parse_workflow(
    text: str,
    *,
    path: str | Path | None = None,
    base_dir: str | Path | None = None,
    allow_hidden_files: bool | None = None,
) -> Workflow:
    """Parse a workflow from YAML text. Raises SpecError with every mistake it can find.

    ``path`` is used in messages and to find ``system_file``/``prompt_file``; ``base_dir``
    overrides the folder those are read from. Prompt files in hidden files or folders
    (``.ssh/``) are refused unless ``allow_hidden_files`` (default: the environment
    variable FLOWGPT_ALLOW_HIDDEN_FILES is 1).
    """
    file = str(path) if path is not None else "<workflow>"
    data, smap = _compose(text, file)
    diagnostics = _secret_diagnostics(data, smap, text)
    # The whole text too: keys in mapping keys and comments, private keys.
    flagged = {d.line for d in diagnostics if d.line is not None}
    diagnostics += scan_text(text, file, skip_lines=flagged)
    diagnostics += credentials_in_base_url(data, smap)
    diagnostics += _duplicate_step_ids(data, smap)
    spec: WorkflowSpec | None = None
    try:
        spec = WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        for diag in _validation_diagnostics(exc, data, smap):
            # A secret already has its own (better) message at that place.
            if any(d.line == diag.line and d.code == "secret" for d in diagnostics):
                continue
            if "duplicate step id" in diag.message and any(
                "duplicate step id" in d.message for d in diagnostics
            ):
                continue
            diagnostics.append(diag)
    workflow_path = Path(path) if path is not None else None
    files: dict[str, str] = {}
    if spec is not None:
        folder = (
            Path(base_dir)
            if base_dir is not None
            else (workflow_path.parent if workflow_path is not None else Path.cwd())
        )
        if allow_hidden_files is None:
            allow_hidden_files = os.environ.get(ALLOW_HIDDEN_ENV, "").strip() == "1"
        files, include_problems = _read_includes(spec, folder, smap, allow_hidden_files)
        diagnostics += include_problems
    if diagnostics or spec is None:
        diagnostics.sort(key=lambda d: (d.line or 0, d.col or 0))
        raise SpecError(f"{file}: the workflow is not valid", diagnostics=diagnostics)
    return Workflow(spec=spec, path=workflow_path, source=text, source_map=smap, files=files)


def _read_text(path: str | Path, what: str, too_large_hint: str) -> str:
    """A YAML file's text, or a SpecError that says what is wrong with the file."""
    p = Path(path)
    file = str(path)
    try:
        if p.is_dir():
            raise SpecError(
                f"{file} is a folder",
                diagnostics=[Diagnostic(f"this is a folder, not a {what} file", file)],
            )
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(
            f"{file}: no such file",
            diagnostics=[
                Diagnostic("no such file", file, hint=f"check the path; {what}s end in .yaml")
            ],
        ) from None
    except OSError as exc:
        raise SpecError(
            f"{file}: cannot read",
            diagnostics=[Diagnostic(f"cannot read the file: {exc.strerror}", file)],
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(
            f"{file}: too large",
            diagnostics=[
                Diagnostic(
                    f"the file is {len(raw):,} bytes; {what}s are limited to {MAX_FILE_BYTES:,}",
                    file,
                    hint=too_large_hint,
                )
            ],
        )
    return _decode(raw, file)


def load_workflow(path: str | Path, *, allow_hidden_files: bool | None = None) -> Workflow:
    """Load and check a workflow file (format, keys, types, included files); see
    :func:`parse_workflow` for ``allow_hidden_files``."""
    text = _read_text(
        path, "workflow", "move long prompts into prompt files (prompt_file / system_file)"
    )
    return parse_workflow(text, path=Path(path), allow_hidden_files=allow_hidden_files)


# --- other YAML documents (test files, cassettes) ---------------------------------------


def parse_document(
    text: str, *, path: str | Path, what: str, start_hint: str
) -> tuple[dict[str, Any], SourceMap]:
    """A YAML mapping and where each of its values was written, checked like a workflow's
    text (duplicate keys, alias bombs, tabs). ``what`` names the kind of file in messages
    ("test file"); ``start_hint`` says how such a file starts."""
    data, smap = _compose(text, str(path), what, start_hint)
    return data, smap


def read_document(
    path: str | Path, *, what: str, start_hint: str
) -> tuple[str, dict[str, Any], SourceMap]:
    """``parse_document`` of a file: its text, its data and the source map."""
    text = _read_text(path, what, f"split it into smaller {what}s")
    data, smap = parse_document(text, path=path, what=what, start_hint=start_hint)
    return text, data, smap


def validate_document(
    model: type[M], data: dict[str, Any], smap: SourceMap
) -> tuple[M | None, list[Diagnostic]]:
    """``data`` as a ``model``, or None and pydantic's errors as file:line diagnostics
    (unknown keys with a did-you-mean, missing keys, wrong types)."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, _validation_diagnostics(exc, data, smap, root=model)


def load_data(text: str, *, path: str | Path) -> Any:
    """Plain data from YAML that flowgpt wrote (a cassette): fast (libyaml when installed),
    without a source map; a YAML error is a SpecError at file:line."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # a safe loader: plain data only
    except yaml.YAMLError as exc:
        diag = _yaml_error(exc, str(path))
        raise SpecError(diag.message, diagnostics=[diag]) from None


class _Dumper(yaml.SafeDumper):
    """Multi-line text as literal blocks, so a changed prompt or reply diffs line by line;
    a value written twice is written out twice (no `&id001` anchors for people to chase)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _represent_str)


def dump_data(data: Any) -> str:
    """Plain data as YAML for people to read and diff: keys in the order given, multi-line
    strings as literal blocks (PyYAML quotes the ones a block cannot hold), no folding."""
    text: str = yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1_000_000
    )
    return text


def dump_workflow(spec: WorkflowSpec) -> str:
    """The spec as YAML, with only the keys that were given."""
    return yaml.safe_dump(spec.dump(), sort_keys=False, allow_unicode=True)
