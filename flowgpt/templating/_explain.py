"""Error explanations: turn an exception raised while rendering into a message naming the
full path that failed and why (undefined key, null value, skipped step, a text step read
like JSON, unsafe access...), with a did-you-mean or a hint.

It reads the failing template only as plain data, so it sits below ``_template``: ``uses``,
the root names the template reads with the static path of each (from ``_references``), and
``step_ids``, the steps it names, in order."""

from __future__ import annotations

import difflib
from collections import deque
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from jinja2.exceptions import (
    SecurityError,
    TemplateAssertionError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.utils import missing

from flowgpt.templating._errors import _MissingValue, _NotAValue, _UnsafeAccess
from flowgpt.templating._limits import RenderLimitError
from flowgpt.templating._references import _format_path, _Use

_TEMPLATE_FILENAME = "<template>"


def _template_line(tb: TracebackType | None) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


_MISS = object()


def _descend(value: Any, segment: str | int) -> Any:
    if isinstance(value, dict):
        return value.get(segment, _MISS)
    if isinstance(value, (list, tuple)) and isinstance(segment, int):
        return value[segment] if -len(value) <= segment < len(value) else _MISS
    return _MISS


def _find_path(
    obj: Any, name: Any, context: Mapping[str, Any], uses: Sequence[_Use]
) -> list[str | int] | None:
    """Where ``obj`` sits in the context, preferring the path the template spelled."""
    for use in uses:
        if use.shadowed or use.name not in context:
            continue  # the template's own variable, or a Jinja global: not in the context
        root, path = use.name, use.path
        value: Any = context[root]
        for i, segment in enumerate(path):
            if value is obj and segment == name:
                return [root, *path[:i]]
            value = _descend(value, segment)
            if value is _MISS:
                break
    if obj is None:
        return None  # None is everywhere; only the spelled path is trustworthy
    # Fallback: search the context for the very object (e.g. reached through a loop var).
    queue: deque[tuple[Any, list[str | int]]] = deque((v, [k]) for k, v in context.items())
    seen = 0
    while queue and seen < 20_000:
        node, where = queue.popleft()
        seen += 1
        if node is obj:
            return where
        if isinstance(node, dict):
            queue.extend((v, [*where, k]) for k, v in node.items() if isinstance(k, (str, int)))
        elif isinstance(node, (list, tuple)):
            queue.extend((v, [*where, i]) for i, v in enumerate(node))
    return None


def _suggest(name: str, candidates: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def _skipped_steps(context: Mapping[str, Any], step_ids: Sequence[str]) -> list[str]:
    steps = context.get("steps")
    if not isinstance(steps, dict):
        return []
    return [
        sid
        for sid in dict.fromkeys(step_ids)
        if isinstance(steps.get(sid), dict) and steps[sid].get("skipped")
    ]


def _skipped_message(step_id: str, what: str) -> tuple[str, str]:
    return (
        f"step `{step_id}` was skipped, so its output is null and {what}",
        f"guard it with `{{% if steps.{step_id}.output %}}...{{% endif %}}` "
        f"(or test `steps.{step_id}.skipped`)",
    )


# A render limit's kind -> how the message starts, and what to do.
_LIMITS = {
    "size": (
        "the template built a value that is too large: ",
        "templates build prompts, not data: pass large values in as inputs instead of "
        "building them (repeating, padding, nesting) in the template",
    ),
    "bits": ("the template built a value that is too large: ", None),
    "memory": (
        "the template built too much: ",
        "a loop builds new values at every turn; build less, or pass the values in as inputs",
    ),
    "time": (
        "the template took too long: ",
        "a loop or macro runs too many times; loop over less (inputs or a step's output), "
        "or split the work across steps",
    ),
}


def _explain_missing(
    exc: _MissingValue, context: Mapping[str, Any], uses: Sequence[_Use], step_ids: Sequence[str]
) -> tuple[str, str | None]:
    obj, name = exc.obj, exc.name
    if obj is missing:
        return _explain_unknown_name(str(name), context)
    path = _find_path(obj, name, context, uses)
    if obj is None:
        if path and len(path) == 3 and path[0] == "steps" and path[2] == "output":
            step_id = str(path[1])
            entry = context["steps"].get(step_id)
            if isinstance(entry, dict) and entry.get("skipped"):
                spelled = _format_path([*path, name])
                return _skipped_message(step_id, f"`{spelled}` cannot be read")
        if path:
            where = _format_path(path)
            return (
                f"`{where}` is null, so `{_format_path([*path, name])}` is undefined",
                f"guard it with `{{% if {where} %}}...{{% endif %}}`",
            )
        skipped = _skipped_steps(context, step_ids)
        if skipped:
            return _skipped_message(skipped[0], f"`{name}` cannot be read from it")
        return f"tried to read `{name}` of a null value", None

    full: str | None = _format_path([*path, name]) if path else None
    subject = f"`{_format_path(path)}`" if path else f"this {_kind(obj)}"
    if isinstance(obj, dict):
        keys = [k for k in obj if isinstance(k, str)]
        close = _suggest(str(name), keys)
        message = f"`{full}` is undefined" if full else f"{subject} has no key `{name}`"
        if close:
            spelled = _format_path([*path, close]) if path else close
            return f"{message}; did you mean `{spelled}`?", None
        return message, _dict_hint(path, keys)
    if isinstance(obj, (list, tuple)):
        if isinstance(name, int):
            return (
                f"`{full or name}` is undefined: {subject} has {len(obj)} item(s)",
                "indexes start at 0; use `| length` to check the size first",
            )
        return (
            f"{subject} is a list, so it has no field `{name}`",
            "loop over it with `{% for item in ... %}` or pick one with `[0]`",
        )
    if isinstance(obj, str):
        hint = "give that step `output: {format: json}` and a schema to read fields"
        if path and len(path) == 3 and path[0] == "steps" and path[2] == "output":
            return (
                f"step `{path[1]}` is a text step, so `{_format_path(path)}` is a string "
                f"and has no field `{name}`",
                hint,
            )
        return f"{subject} is a string, so it has no field `{name}`", None
    return f"{subject} ({_kind(obj)}) has no field `{name}`", None


def _kind(value: Any) -> str:
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "list",
        tuple: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _dict_hint(path: Sequence[str | int] | None, keys: Sequence[str]) -> str | None:
    if not keys:
        return f"`{_format_path(path)}` is empty" if path else None
    shown = ", ".join(f"`{k}`" for k in keys[:12]) + (", ..." if len(keys) > 12 else "")
    where = f"`{_format_path(path)}`" if path else "it"
    return f"{where} has: {shown}"


def _explain_unknown_name(name: str, context: Mapping[str, Any]) -> tuple[str, str | None]:
    message = f"`{name}` is undefined"
    inputs = context.get("inputs")
    steps = context.get("steps")
    if isinstance(inputs, dict) and name in inputs:
        return f"{message}; did you mean `inputs.{name}`?", "inputs are read as `inputs.<name>`"
    if isinstance(steps, dict) and name in steps:
        return (
            f"{message}; did you mean `steps.{name}.output`?",
            "a step's result is read as `steps.<id>.output`",
        )
    names = [str(k) for k in context]
    close = _suggest(name, names)
    if close:
        return f"{message}; did you mean `{close}`?", None
    visible = ", ".join(f"`{n}`" for n in names)
    return message, (
        f"a template sees only {visible}; no environment variables or Python objects"
        if visible
        else "a template sees no environment variables or Python objects"
    )


def _explain(
    exc: Exception, context: Mapping[str, Any], uses: Sequence[_Use], step_ids: Sequence[str]
) -> tuple[str, str | None]:
    if isinstance(exc, _MissingValue):
        return _explain_missing(exc, context, uses, step_ids)
    if isinstance(exc, SecurityError):
        attr = getattr(exc, "name", None)
        obj = getattr(exc, "obj", None)
        if isinstance(exc, _UnsafeAccess) and isinstance(attr, str):
            what = f"template tried to access an unsafe attribute `{attr}` of {_a(_kind(obj))}"
            if attr.startswith("_"):
                return what, (
                    "templates may read data (inputs, steps.<id>.output/text/usage/skipped) "
                    "but not Python internals; names starting with `_` are blocked"
                )
            return what, (
                "templates cannot change values (append, update, pop...); "
                "build a new value instead, e.g. `items + [x]`"
            )
        return (
            f"template tried to do something unsafe: {exc}",
            "templates may only read inputs and steps and use Jinja's filters",
        )
    if isinstance(exc, _NotAValue):
        value = exc.value
        if callable(value):
            return (
                f"`{{{{ }}}}` printed a {type(value).__name__} instead of a value",
                "a method was printed without calling it, or a text step's output (a string) "
                "was read like an object (`.title` is a string method); "
                "use a JSON step to read fields",
            )
        return f"`{{{{ }}}}` printed a {type(value).__name__} object, not a value", (
            "templates print text, numbers, booleans, lists and objects (as JSON)"
        )
    if isinstance(exc, UndefinedError):
        return str(exc), None
    if isinstance(exc, TemplateAssertionError | TemplateSyntaxError):
        return exc.message or str(exc), None
    if isinstance(exc, RecursionError):
        return "the template recursed too deeply", None
    if isinstance(exc, RenderLimitError):
        return _LIMITS[exc.kind][0] + str(exc), _LIMITS[exc.kind][1]
    if isinstance(exc, MemoryError):
        return "the template ran out of memory", _LIMITS["memory"][1]
    if isinstance(exc, OverflowError):
        return f"the template built a value that is too large: {exc}", None
    detail = f"{type(exc).__name__}: {exc}"
    if "NoneType" in str(exc):
        skipped = _skipped_steps(context, step_ids)
        if skipped:
            return _skipped_message(skipped[0], f"the template failed ({detail})")
        return f"{detail} (a value is null)", None
    return detail, None
