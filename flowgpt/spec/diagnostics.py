"""Checks on a composed workflow document, each reported at ``file:line:col``.

API keys pasted into the file, duplicate step ids, and pydantic's validation errors turned
into messages with hints (unknown keys with "did you mean", missing keys, the version).
Works on plain data and a SourceMap; it does not import yaml (flowgpt.spec.loader does that).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from flowgpt.errors import Diagnostic
from flowgpt.spec.models import CHECK_KINDS, CheckSpec, WorkflowSpec
from flowgpt.spec.workflow import SourceMap

_KEY_LITERAL = re.compile(r"sk-[A-Za-z0-9_\-]{16,}")
_KEY_FIELD = re.compile(r"^(openai[_-]?)?api[_-]?key$|^(secret|token|password)$", re.I)


# --- secrets ---------------------------------------------------------------------------


_DocPath = tuple[str | int, ...]


def _walk(data: Any, path: _DocPath = ()) -> Iterator[tuple[_DocPath, Any]]:
    yield path, data
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(k, (str, int)):
                yield from _walk(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _walk(v, (*path, i))


def _secret_diagnostics(data: Any, smap: SourceMap) -> list[Diagnostic]:
    """API keys pasted into the file. The key itself is never echoed."""
    found: list[Diagnostic] = []

    def add(path: _DocPath, message: str, hint: str, line_in_value: int = 0) -> None:
        loc = smap.locate(path, key=path[-1:] != ("api_key_env",))
        if line_in_value:  # the line of a multi-line value that holds it
            loc = smap.template_line(path, line_in_value)
        found.append(Diagnostic(message, loc.file, loc.line, loc.col, hint=hint, code="secret"))

    for path, value in _walk(data):
        if path and isinstance(path[-1], str) and _KEY_FIELD.match(path[-1]):
            add(
                path,
                f"`{path[-1]}` puts a secret in the workflow file",
                "keep keys in environment variables: remove this line and set "
                "`provider.api_key_env` to the variable's NAME (default OPENAI_API_KEY)",
            )
        elif isinstance(value, str) and (literal := _KEY_LITERAL.search(value)):
            if path[-1:] == ("api_key_env",):
                add(
                    path,
                    "`api_key_env` holds what looks like an API key, not a variable name",
                    "set it to the NAME of the variable, e.g. `api_key_env: OPENAI_API_KEY`, "
                    "and export the key in your shell; revoke the key if the file was shared",
                )
            else:
                add(
                    path,
                    "an API key (sk-...) is written in the workflow file",
                    "remove it and keep it in an environment variable; revoke the key if this "
                    "file was shared or committed",
                    # a multi-line value: the line that holds the key
                    value[: literal.start()].count("\n") + 1 if "\n" in value else 0,
                )
    return found


# --- pydantic errors -> diagnostics ----------------------------------------------------


def _unwrap(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The spec model class that the value at ``loc`` is validated against."""
    current: list[Any] = [WorkflowSpec]
    for part in loc:
        nxt: list[Any] = []
        for ann in current:
            origin = typing.get_origin(ann)
            if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(part, str):
                for name, info in ann.model_fields.items():
                    if part in (name, info.alias):
                        nxt.extend(_unwrap(info.annotation))
            elif origin is list and isinstance(part, int):
                nxt.extend(_unwrap(typing.get_args(ann)[0]))
            elif origin is dict and isinstance(part, str):
                nxt.extend(_unwrap(typing.get_args(ann)[1]))
        if nxt:
            current = nxt
        # parts that are not keys (pydantic's union member names) are skipped
    for ann in current:
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return ann
    return None


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _doc_path(loc: Sequence[str | int], smap: SourceMap) -> tuple[str | int, ...]:
    """Drop the parts of a pydantic loc that are not in the document."""
    path: tuple[str | int, ...] = ()
    for part in loc:
        if (*path, part) in smap.marks:
            path = (*path, part)
    return path


def _validation_diagnostics(exc: ValidationError, data: Any, smap: SourceMap) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        hint: str | None = None
        path = _doc_path(loc, smap)
        where = _dotted(path) or "the workflow"
        if kind == "extra_forbidden":
            key = str(loc[-1])
            model = _model_at(loc[:-1])
            allowed = _allowed_keys(model) if model else []
            if model is CheckSpec:
                message = f"unknown check `{key}`{_did_you_mean(key, CHECK_KINDS)}"
                hint = f"checks are: {', '.join(CHECK_KINDS)}"
            else:
                parent = _dotted(path[:-1]) or "the top level"
                message = f"unknown key `{key}` in {parent}{_did_you_mean(key, allowed)}"
                hint = f"allowed keys: {', '.join(allowed)}" if allowed else None
        elif kind == "missing":
            key = str(loc[-1])
            message = f"missing required key `{key}` in {_dotted(path) or 'the top level'}"
            hint = "see docs/format.md for what each section needs"
        elif loc[:1] == ("version",) and kind == "literal_error":
            message = "unsupported `version`; this flowgpt reads format version 1"
            hint = "set `version: 1`"
        else:
            message = f"`{where}`: {msg}"
        location = smap.locate(path, key=kind == "extra_forbidden")
        found.append(Diagnostic(message, location.file, location.line, location.col, hint=hint))
    return found


def _duplicate_step_ids(data: dict[str, Any], smap: SourceMap) -> list[Diagnostic]:
    steps = data.get("steps")
    if not isinstance(steps, list):
        return []
    seen: dict[str, int] = {}
    found = []
    for i, step in enumerate(steps):
        sid = step.get("id") if isinstance(step, dict) else None
        if not isinstance(sid, str):
            continue
        if sid in seen:
            loc = smap.locate(("steps", i, "id"), key=True)
            first = smap.locate(("steps", seen[sid], "id")).line
            found.append(
                Diagnostic(
                    f"duplicate step id `{sid}` (first used on line {first})",
                    loc.file,
                    loc.line,
                    loc.col,
                    hint="step ids must be unique; rename one of them",
                )
            )
        else:
            seen[sid] = i
    return found
