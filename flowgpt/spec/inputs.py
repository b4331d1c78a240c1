"""Checking a run's inputs against the workflow's ``inputs:`` declarations."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from flowgpt.errors import Diagnostic, InputError
from flowgpt.spec.models import InputSpec, WorkflowSpec

__all__ = [
    "MAX_INPUT_FILE_BYTES",
    "MAX_NESTING",
    "TextFromFile",
    "check_value",
    "convert_cli_value",
    "nests_deeper_than",
    "parse_assignments",
    "resolve_inputs",
]

# Lists and objects nest at most this deep in an input, a data row or a workflow (deeper
# ones break JSON, the store, templates and YAML composing on Python's stack, and are no
# prompt's data).
MAX_NESTING = 100

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and dicts in ``value`` nest more than ``limit`` levels (no recursion)."""
    level: list[tuple[Any, int]] = [(value, 0)]
    while level:
        node, depth = level.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            if depth >= limit:
                return True
            level.extend((child, depth + 1) for child in node)
    return False


def check_value(spec: InputSpec, value: Any) -> str | None:
    """What is wrong with ``value`` for this input, or None when it fits."""
    if isinstance(value, (list, dict)) and nests_deeper_than(value, MAX_NESTING):
        return f"lists and objects nest more than {MAX_NESTING} levels deep"
    expected = _PY_TYPES[spec.type]
    # bool is an int in Python; it is not an integer or a number here.
    if isinstance(value, bool) and spec.type != "boolean":
        return f"expected {spec.type}, got a boolean"
    if not isinstance(value, expected):
        return f"expected {spec.type}, got {_json_type(value)}"
    if spec.enum is not None and value not in spec.enum:
        options = ", ".join(json.dumps(v, ensure_ascii=False) for v in spec.enum)
        return f"must be one of {options}"
    if isinstance(value, (int, float)):
        if spec.minimum is not None and value < spec.minimum:
            return f"must be at least {_num(spec.minimum)}"
        if spec.maximum is not None and value > spec.maximum:
            return f"must be at most {_num(spec.maximum)}"
    return None


def convert_cli_value(spec: InputSpec, raw: str) -> Any:
    """Convert a ``-i key=value`` string by the declared type: arrays and objects as JSON
    (an array read from a file that is not JSON: one item per non-empty line). Raises
    ValueError."""
    if spec.type == "string":
        return raw
    if spec.type == "boolean":
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected a boolean: true/false, yes/no or 1/0")
    if spec.type == "integer":
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if spec.type == "number":
        try:
            number = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        return int(number) if number.is_integer() and "." not in raw and "e" not in raw else number
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        if spec.type == "array" and isinstance(raw, TextFromFile):
            return [line.strip() for line in raw.splitlines() if line.strip()]
        raise ValueError(f"expected {spec.type} as JSON ({exc.msg})") from None
    except RecursionError:
        raise ValueError(f"lists and objects nest more than {MAX_NESTING} levels deep") from None
    return value


class TextFromFile(str):
    """An ``-i key=@FILE`` (or ``key=-``, standard input) value: the file's text, which an
    array input takes one item per line when it is not a JSON array."""

    source: str  # the file named, or "-"

    def __new__(cls, text: str, source: str) -> TextFromFile:
        value = super().__new__(cls, text)
        value.source = source
        return value


# Inputs read from files are prompts' material, not datasets: past this, say so.
MAX_INPUT_FILE_BYTES = 10_000_000


def parse_assignments(pairs: list[str], *, stdin: TextIO | None = None) -> dict[str, str]:
    """``["topic=tea", "words=300"]`` -> ``{"topic": "tea", "words": "300"}``.

    ``key=@path`` takes the text of a file and ``key=-`` the text of ``stdin`` (once);
    ``key=@@text`` is the literal ``@text``."""
    out: dict[str, str] = {}
    read_stdin = False
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(
                f"-i {pair!r} is not key=value",
                hint="write inputs as -i topic=tea (quote values with spaces)",
            )
        if value.startswith("@@"):
            value = value[1:]
        elif value.startswith("@"):
            value = _read_input_file(key, value[1:])
        elif value == "-" and stdin is not None:
            if read_stdin:
                raise InputError(
                    f"-i {key}=-: standard input was already read by another input",
                    hint="read at most one input from standard input; use @FILE for others",
                )
            read_stdin = True
            value = TextFromFile(stdin.read(), "-")
        out[key] = value
    return out


def _read_input_file(key: str, name: str) -> TextFromFile:
    path = Path(name).expanduser()
    try:
        size = path.stat().st_size
        if size > MAX_INPUT_FILE_BYTES:
            raise InputError(
                f"-i {key}=@{name}: the file is {size:,} bytes, more than inputs take "
                f"({MAX_INPUT_FILE_BYTES:,})",
                hint="pass a smaller file, or run the workflow over rows of a data file "
                "with `flowgpt batch`",
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"-i {key}=@{name}: no such file",
            hint="give the path of a text file (relative to the current folder), or write "
            f"-i {key}=@@... for a value that starts with @",
        ) from None
    except IsADirectoryError:
        raise InputError(f"-i {key}=@{name}: a folder, not a file") from None
    except UnicodeDecodeError:
        raise InputError(
            f"-i {key}=@{name}: not UTF-8 text", hint="save the file as UTF-8 text"
        ) from None
    except OSError as exc:
        raise InputError(f"-i {key}=@{name}: cannot read it ({exc.strerror or exc})") from None
    return TextFromFile(text, name)


def resolve_inputs(
    workflow: WorkflowSpec,
    given: Mapping[str, Any],
    *,
    from_cli: bool = False,
    source: str = "inputs",
) -> dict[str, Any]:
    """Apply defaults, convert CLI strings, and check every input. Raises InputError listing
    every problem at once."""
    problems: list[Diagnostic] = []
    declared = workflow.inputs
    resolved: dict[str, Any] = {}
    for key in given:
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            guess = f"; did you mean `{close[0]}`?" if close else ""
            problems.append(
                Diagnostic(
                    f"unknown input `{key}`{guess}",
                    source,
                    hint=f"this workflow takes: {', '.join(declared) or 'no inputs'}",
                    code="input",
                )
            )
    for name, spec in declared.items():
        if name in given:
            value = given[name]
            if from_cli and isinstance(value, str):
                try:
                    value = convert_cli_value(spec, value)
                except ValueError as exc:
                    problems.append(Diagnostic(f"input `{name}`: {exc}", source, code="input"))
                    continue
        elif not spec.required:
            value = spec.default
        else:
            desc = f" ({spec.description})" if spec.description else ""
            problems.append(
                Diagnostic(
                    f"missing input `{name}`{desc}",
                    source,
                    hint=f"give `{name}` a value in the run's inputs",
                    code="missing_input",
                )
            )
            continue
        wrong = check_value(spec, value)
        if wrong is not None:
            problems.append(Diagnostic(f"input `{name}`: {wrong}", source, code="input"))
            continue
        resolved[name] = value
    if problems:
        raise InputError("the inputs are not valid", diagnostics=problems)
    return resolved


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
