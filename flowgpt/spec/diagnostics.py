"""Checks on a composed workflow document, each reported at ``file:line:col``.

API keys pasted into the file, duplicate step ids, and pydantic's validation errors turned
into messages with hints (unknown keys with "did you mean", missing keys, the version).
Works on plain data and a SourceMap; it does not import yaml (flowgpt.spec.loader does that).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from flowgpt.errors import API_KEY_RE, Diagnostic
from flowgpt.spec.models import CHECK_KINDS, ENV_NAME, IDENT, CheckSpec, WorkflowSpec
from flowgpt.spec.workflow import SourceMap

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


def _secret_diagnostics(data: Any, smap: SourceMap, text: str) -> list[Diagnostic]:
    """API keys pasted into the file, by where they are: a key field, ``api_key_env``, or a
    value whose key only shows once YAML has read it (escapes); ``scan_text`` reports the
    others at their own line. The key itself is never echoed."""
    found: list[Diagnostic] = []

    def add(path: _DocPath, message: str, hint: str) -> None:
        loc = smap.locate(path, key=path[-1:] != ("api_key_env",))
        found.append(Diagnostic(message, loc.file, loc.line, loc.col, hint=hint, code="secret"))

    for path, value in _walk(data):
        if path and isinstance(path[-1], str) and _KEY_FIELD.match(path[-1]):
            add(
                path,
                f"`{path[-1]}` puts a secret in the workflow file",
                "keep keys in environment variables: remove this line and set "
                "`provider.api_key_env` to the variable's NAME (default OPENAI_API_KEY)",
            )
        elif isinstance(value, str) and (literal := API_KEY_RE.search(value)):
            if path[-1:] == ("api_key_env",):
                add(
                    path,
                    "`api_key_env` holds what looks like an API key, not a variable name",
                    "set it to the NAME of the variable, e.g. `api_key_env: OPENAI_API_KEY`, "
                    "and export the key in your shell; revoke the key if the file was shared",
                )
            elif literal.group() not in text:
                add(
                    path,
                    "an API key (sk-...) is written in the workflow file",
                    "remove it and keep it in an environment variable; revoke the key if this "
                    "file was shared or committed",
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


def _model_at(
    loc: Sequence[str | int], root: type[BaseModel] = WorkflowSpec
) -> type[BaseModel] | None:
    """The spec model class that the value at ``loc`` is validated against."""
    current: list[Any] = [root]
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


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """``"; did you mean `X`?"`` for the option closest to ``word``, or "" when none is close."""
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


# Patterns of the format, said in words.
_PATTERN_WORDS = {
    IDENT: "lowercase letters, digits and underscores, starting with a letter or an "
    "underscore (e.g. `draft_2`)",
    ENV_NAME: "the NAME of an environment variable: letters, digits and underscores, not "
    "starting with a digit (e.g. `OPENAI_API_KEY`)",
}
# The shape a mapping of each model takes, for "must be a mapping" messages.
_SHAPES = {
    "InputSpec": "`{type: string, description: ...}`",
    "StepSpec": "`{id: ..., prompt: ...}`",
    "MessageSpec": "`{role: user, content: ...}`",
    "PriceSpec": "`{input: 0.15, output: 0.60}` (USD per million tokens)",
    "OutputSpec": "`{format: json, schema: {...}, retries: 2}`",
    "CheckSpec": "`{max_words: 100}`",
}
# Python's and other languages' names for the input types.
_TYPE_NAMES = {
    "text": "string",
    "str": "string",
    "int": "integer",
    "float": "number",
    "double": "number",
    "bool": "boolean",
    "list": "array",
    "dict": "object",
    "map": "object",
}
_KINDS = {
    "float_parsing": "a number",
    "float_type": "a number",
    "decimal_parsing": "a number",
    "decimal_type": "a number",
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a mapping",
}


def _got(value: Any) -> str:
    """The bad value, quoted as the user wrote it."""
    if isinstance(value, str):
        return f"'{value}'" if len(value) <= 60 else f"'{value[:57]}...'"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


def _subject(path: Sequence[str | int], data: Any) -> str:
    """Who the value belongs to: a step by its id (not `steps[1]`), else the dotted path."""
    steps = data.get("steps") if isinstance(data, dict) else None
    if (
        len(path) >= 2
        and path[0] == "steps"
        and isinstance(path[1], int)
        and isinstance(steps, list)
    ):
        step = steps[path[1]] if path[1] < len(steps) else None
        sid = step.get("id") if isinstance(step, dict) else None
        if isinstance(sid, str):
            rest = _dotted(path[2:])
            return f"step `{sid}`" + (f": `{rest}`" if rest else "")
    return f"`{_dotted(path)}`" if path else "the workflow"


def _wording(err: Any, path: Sequence[str | int], data: Any) -> tuple[str, str | None]:
    """A pydantic error as a message that names the thing and quotes the bad value."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = _got(err.get("input"))
    subject = _subject(path, data)
    if kind in _KINDS:
        return f"{subject} must be {_KINDS[kind]}, got {got}", None
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        value = err.get("input")
        guess = did_you_mean(value, options) if isinstance(value, str) else ""
        if not guess and isinstance(value, str) and _TYPE_NAMES.get(value) in options:
            guess = f"; did you mean `{_TYPE_NAMES[value]}`?"
        listed = ", ".join(f"`{o}`" for o in options)
        return f"{subject} must be one of {listed}, got {got}{guess}", None
    if kind == "string_pattern_mismatch":
        rule = _PATTERN_WORDS.get(str(ctx.get("pattern")), f"match {ctx.get('pattern')}")
        value = err.get("input")
        if path and path[-1] == "id" and isinstance(value, str):
            fixed = re.sub(r"[^a-z0-9_]", "_", value.lower())
            fixed = f"_{fixed}" if fixed[:1].isdigit() else fixed
            return f"step id {got} is not a valid id: ids are {rule}", f"rename it, e.g. `{fixed}`"
        return f"{subject} must be {rule}, got {got}", None
    if kind == "model_type":
        shape = _SHAPES.get(str(ctx.get("class_name")), "a mapping of keys")
        return f"{subject} must be a mapping like {shape}, got {got}", None
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        limit = ctx.get(key)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"{subject} must be {words} {limit}, got {got}", None
    message = err["msg"].removeprefix("Value error, ")
    if "input" in err and kind not in ("value_error", "assertion_error"):
        return f"{subject}: {message} (got {got})", None
    return f"{subject}: {message}", None


def _validation_diagnostics(
    exc: ValidationError, data: Any, smap: SourceMap, root: type[BaseModel] = WorkflowSpec
) -> list[Diagnostic]:
    """pydantic's errors about ``data`` (validated as ``root``) at file:line, with hints."""
    found: list[Diagnostic] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        hint: str | None = None
        path = _doc_path(loc, smap)
        if kind == "extra_forbidden":
            key = str(loc[-1])
            model = _model_at(loc[:-1], root)
            allowed = _allowed_keys(model) if model else []
            if model is CheckSpec:
                message = f"unknown check `{key}`{did_you_mean(key, CHECK_KINDS)}"
                hint = f"checks are: {', '.join(CHECK_KINDS)}"
            else:
                parent = _dotted(path[:-1]) or "the top level"
                message = f"unknown key `{key}` in {parent}{did_you_mean(key, allowed)}"
                hint = f"allowed keys: {', '.join(allowed)}" if allowed else None
        elif kind == "missing":
            key = str(loc[-1])
            message = f"missing required key `{key}` in {_dotted(path) or 'the top level'}"
            hint = "see docs/format.md for what each section needs"
        elif loc[:1] == ("version",) and kind == "literal_error":
            message = "unsupported `version`; this flowgpt reads format version 1"
            hint = "set `version: 1`"
        else:
            message, hint = _wording(err, path, data)
        location = smap.locate(path, key=kind == "extra_forbidden")
        found.append(Diagnostic(message, location.file, location.line, location.col, hint=hint))
    return _merge_union_errors(found)


def _merge_union_errors(found: list[Diagnostic]) -> list[Diagnostic]:
    """A value that fits none of a union's types fails once per type, at one place:
    "must be text" and "must be a list" become "must be text or a list"."""
    merged: list[Diagnostic] = []
    for diag in found:
        last = merged[-1] if merged else None
        head, sep, got = diag.message.rpartition(", got ")
        if (
            last is not None
            and sep
            and (last.file, last.line, last.col) == (diag.file, diag.line, diag.col)
            and last.message.endswith(sep + got)
            and " must be " in head
        ):
            subject, _, wanted = head.partition(" must be ")
            before = last.message[: -len(sep + got)]
            if before.startswith(subject + " must be "):
                merged[-1] = dataclasses.replace(last, message=f"{before} or {wanted}{sep}{got}")
                continue
        merged.append(diag)
    return merged


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
