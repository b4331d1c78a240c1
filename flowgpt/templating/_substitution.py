"""A fast path for the commonest prompt: text with ``{{ inputs.x }}``-style references.

Jinja builds a render context and runs compiled code for every render, which is most of
what a step costs flowgpt before its request. A template whose only expressions are
name-and-key paths (``{{ inputs.topic }}``, ``{{ steps.a.output.title }}``,
``{{ item['k'] }}``) is rendered here with plain dict lookups instead, producing the
same text. Anything this cannot decide the same way Jinja would (a name that is not in
the context, a key that is missing or not a dict key, a value of another type, output
over the size limit) returns None, and the caller renders with Jinja, which also
produces the exact error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import nodes

from flowgpt.templating._sandbox import MAX_SEQUENCE_ITEMS, _to_json

# A literal piece of text, or (name, keys) for `{{ name.key1.key2 }}`.
Part = str | tuple[str, tuple[str, ...]]


def _path(node: nodes.Node) -> tuple[str, tuple[str, ...]] | None:
    keys: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr) and node.ctx == "load":
            keys.append(node.attr)
            node = node.node
        elif (
            isinstance(node, nodes.Getitem)
            and node.ctx == "load"
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            keys.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            return node.name, tuple(reversed(keys))
        else:
            return None


def substitution_parts(ast: nodes.Template) -> tuple[Part, ...] | None:
    """The template as literal text and reference paths, or None when it has anything
    else (a filter, a test, an operator, a tag...)."""
    parts: list[Part] = []
    for node in ast.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append(child.data)
                continue
            path = _path(child)
            if path is None:
                return None
            parts.append(path)
    return tuple(parts)


def substitute(parts: tuple[Part, ...], context: Mapping[str, Any]) -> str | None:
    """The rendered text, exactly as the sandbox renders it, or None for "ask Jinja"."""
    pieces: list[str] = []
    size = 0
    for part in parts:
        if isinstance(part, str):
            text = part
        else:
            name, keys = part
            if name not in context:
                return None  # a Jinja global, or undefined: Jinja's call
            value = context[name]
            for key in keys:
                # The sandbox reads a dict's key before any attribute of the same name.
                if type(value) is not dict or key not in value:
                    return None
                value = value[key]
            # As the sandbox's finalize prints each value.
            kind = type(value)
            if kind is str:
                text = value
            elif value is None:
                text = ""
            elif kind is int or kind is float or kind is bool:
                text = str(value)
            elif kind is dict or kind is list:
                try:
                    text = _to_json(value)
                except Exception:  # something in it does not print: Jinja says what
                    return None
            else:
                return None
        size += len(text)
        if size > MAX_SEQUENCE_ITEMS:
            return None  # Jinja raises the size error
        pieces.append(text)
    return "".join(pieces)
