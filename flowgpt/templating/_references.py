"""Static reference discovery: which inputs, steps and other names a template reads, with
the static path read from each, found by walking the Jinja AST with the names every scope
binds (loop variables, ``set``, macro arguments), so a template's own variables are not
taken for context names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from jinja2 import nodes


@dataclass(frozen=True)
class Reference:
    """One use of ``inputs``, ``steps`` or another free name in a template.

    ``path`` holds the static segments after the root name: ``steps.outline.output.title``
    gives ``("outline", "output", "title")``. A computed segment (``steps[name]``) ends the
    path. ``name`` is the input name, step id or free name; it is ``None`` when a template
    uses ``inputs``/``steps`` as a whole or with a computed key, so the step cannot be known
    statically (the validator should ask for ``needs:``).
    """

    kind: Literal["input", "step", "name"]
    name: str | None
    line: int
    path: tuple[str | int, ...] = ()

    @property
    def attr(self) -> str | None:
        """For a step reference, the field read (``output``, ``text``...), if static."""
        if self.kind == "step" and len(self.path) > 1 and isinstance(self.path[1], str):
            return self.path[1]
        return None

    @property
    def dotted(self) -> str:
        root = {"input": "inputs", "step": "steps"}.get(self.kind, self.name)
        return _format_path([str(root), *self.path])


@dataclass(frozen=True)
class References:
    """What a template reads from its context, each use with its line inside the template."""

    inputs: tuple[Reference, ...] = ()
    steps: tuple[Reference, ...] = ()
    names: tuple[Reference, ...] = ()  # free names other than inputs/steps/known/globals

    @property
    def input_names(self) -> frozenset[str]:
        return frozenset(r.name for r in self.inputs if r.name is not None)

    @property
    def step_ids(self) -> frozenset[str]:
        return frozenset(r.name for r in self.steps if r.name is not None)

    @property
    def dynamic_steps(self) -> tuple[Reference, ...]:
        """Uses of ``steps`` whose step id cannot be known without running the template."""
        return tuple(r for r in self.steps if r.name is None)

    def __add__(self, other: References) -> References:
        return References(
            self.inputs + other.inputs, self.steps + other.steps, self.names + other.names
        )


@dataclass(frozen=True)
class _Use:
    """A root name read somewhere, with the static path read from it."""

    name: str
    path: tuple[str | int, ...]
    line: int
    shadowed: bool  # bound by the template itself at this point (loop var, set, macro arg)


_DYNAMIC = object()


def _format_path(parts: Sequence[str | int]) -> str:
    text = str(parts[0])
    for part in parts[1:]:
        if isinstance(part, str) and part.isidentifier():
            text += f".{part}"
        else:
            text += f"[{part!r}]"
    return text


# ------------------------------------------------------------------ AST walking


def _target_names(node: nodes.Node) -> set[str]:
    return {n.name for n in node.find_all(nodes.Name) if n.ctx in ("store", "param")} | (
        {node.name} if isinstance(node, nodes.Name) else set()
    )


_SCOPES = (nodes.For, nodes.Macro, nodes.CallBlock, nodes.With, nodes.FilterBlock)


def _scope_bound(body: Sequence[nodes.Node]) -> set[str]:
    """Names a scope binds with ``set``, ``macro`` or imports (order ignored)."""
    bound: set[str] = set()
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (nodes.Assign, nodes.AssignBlock)):
            bound |= _target_names(node.target)
        elif isinstance(node, nodes.Macro):
            bound.add(node.name)
            continue
        elif isinstance(node, nodes.FromImport):
            bound |= {n if isinstance(n, str) else n[1] for n in node.names}
        elif isinstance(node, nodes.Import):
            bound.add(node.target)
        if isinstance(node, _SCOPES):
            continue
        stack.extend(c for c in node.iter_child_nodes() if isinstance(c, nodes.Stmt))
    return bound


def _walk(node: nodes.Node, bound: frozenset[str], out: list[_Use]) -> None:
    if isinstance(node, nodes.Template):
        inner = bound | _scope_bound(node.body)
        for child in node.body:
            _walk(child, inner, out)
    elif isinstance(node, nodes.For):
        _walk(node.iter, bound, out)
        targets = _target_names(node.target)
        body_scope = bound | targets | {"loop"} | _scope_bound(node.body)
        if node.test is not None:
            _walk(node.test, bound | targets, out)
        for child in node.body:
            _walk(child, body_scope, out)
        else_scope = bound | _scope_bound(node.else_)
        for child in node.else_:
            _walk(child, else_scope, out)
    elif isinstance(node, (nodes.Macro, nodes.CallBlock)):
        if isinstance(node, nodes.CallBlock):
            _walk(node.call, bound, out)
        for default in node.defaults:
            _walk(default, bound, out)
        args = {a.name for a in node.args}
        inner = bound | args | {"varargs", "kwargs", "caller"} | _scope_bound(node.body)
        for child in node.body:
            _walk(child, inner, out)
    elif isinstance(node, nodes.With):
        for value in node.values:
            _walk(value, bound, out)
        inner = bound | set().union(*(_target_names(t) for t in node.targets))
        inner |= _scope_bound(node.body)
        for child in node.body:
            _walk(child, inner, out)
    elif isinstance(node, nodes.NSRef):
        out.append(_Use(node.name, (), node.lineno, node.name in bound))
    elif isinstance(node, nodes.Name):
        if node.ctx == "load":
            out.append(_Use(node.name, (), node.lineno, node.name in bound))
    elif isinstance(node, (nodes.Getattr, nodes.Getitem)):
        _walk_chain(node, bound, out)
    else:
        for child in node.iter_child_nodes():
            _walk(child, bound, out)


def _walk_chain(
    node: nodes.Getattr | nodes.Getitem, bound: frozenset[str], out: list[_Use]
) -> None:
    segments: list[object] = []
    base: nodes.Node = node
    while isinstance(base, (nodes.Getattr, nodes.Getitem)):
        if isinstance(base, nodes.Getattr):
            segments.append(base.attr)
        elif isinstance(base.arg, nodes.Const) and isinstance(base.arg.value, (str, int)):
            segments.append(base.arg.value)
        else:
            segments.append(_DYNAMIC)
            _walk(base.arg, bound, out)
        base = base.node
    segments.reverse()
    static: list[str | int] = []
    for seg in segments:
        if seg is _DYNAMIC or not isinstance(seg, (str, int)):
            break
        static.append(seg)
    if isinstance(base, nodes.Name) and base.ctx == "load":
        out.append(_Use(base.name, tuple(static), base.lineno, base.name in bound))
    else:
        _walk(base, bound, out)
