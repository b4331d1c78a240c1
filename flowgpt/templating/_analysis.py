"""Structure checks on a parsed template beyond its references: the loops and conditions
that depend on step replies (for estimates) and the private attributes it reads (for
validation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from jinja2 import nodes

from flowgpt.templating._references import _target_names, _Use, _walk
from flowgpt.templating._template import parse_expression, parse_template


@dataclass(frozen=True)
class DynamicBlock:
    """A ``{% for %}`` or ``{% if %}`` whose loop or test reads earlier steps' replies.

    Its static text is printed once per item (for) or maybe (if), so how much text it adds
    depends on replies not written yet; estimates bound it from this description.
    """

    kind: Literal["for", "if"]
    step_ids: frozenset[str]
    text: str  # the static text inside (for: excluding nested loops, counted on their own)
    outputs: int  # `{{ }}` expressions printed inside, besides the text
    input_names: frozenset[str]  # inputs printed inside


def _step_ids_in(node: nodes.Node, via: Mapping[str, frozenset[str]]) -> frozenset[str]:
    uses: list[_Use] = []
    _walk(node, frozenset(), uses)
    found: set[str] = set()
    for use in uses:
        if use.name == "steps" and use.path and isinstance(use.path[0], str):
            found.add(use.path[0])
        found |= via.get(use.name, frozenset())
    return frozenset(found)


def _collect(body: Sequence[nodes.Node], skip_loops: bool) -> tuple[str, int, set[str]]:
    text: list[str] = []
    outputs = 0
    inputs: set[str] = set()
    for child in body:
        for node in [child, *child.find_all(nodes.Node)]:
            if skip_loops and isinstance(node, nodes.For) and node is not child:
                continue
            if isinstance(node, nodes.TemplateData):
                text.append(node.data)
            elif isinstance(node, nodes.Output):
                outputs += sum(not isinstance(n, nodes.TemplateData) for n in node.nodes)
        uses: list[_Use] = []
        _walk(child, frozenset(), uses)
        inputs |= {str(u.path[0]) for u in uses if u.name == "inputs" and u.path and not u.shadowed}
    return "".join(text), outputs, inputs


def private_attributes(source: str, *, expression: bool = False) -> list[tuple[str, int]]:
    """Attributes starting with ``_`` a template reads (``x.__class__``, ``x['_y']``), with
    their lines: the sandbox refuses them at run time, validation reports them earlier."""
    template = parse_expression(source) if expression else parse_template(source)
    found: list[tuple[str, int]] = []
    by_line: dict[int, str] = {}
    for node in template._ast.find_all((nodes.Getattr, nodes.Getitem)):
        name: object = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        if isinstance(name, str) and name.startswith("_"):
            # The walk meets a chain's outer end first: the last one met on a line is the
            # first written (``x.__class__.__mro__`` -> ``__class__``); one per line is enough.
            by_line[node.lineno] = name
    found = [(name, line) for line, name in sorted(by_line.items())]
    return found


def dynamic_blocks(source: str) -> list[DynamicBlock]:
    """The loops and conditions of a template that depend on step replies."""
    template = parse_template(source)
    found: list[DynamicBlock] = []

    def visit(node: nodes.Node, via: dict[str, frozenset[str]]) -> None:
        if isinstance(node, nodes.For):
            ids = _step_ids_in(node.iter, via)
            inner = dict(via)
            if ids:
                text, outputs, inputs = _collect(node.body, skip_loops=True)
                found.append(DynamicBlock("for", ids, text, outputs, frozenset(inputs)))
                for name in _target_names(node.target):
                    inner[name] = ids
            for child in node.body + node.else_:
                visit(child, inner)
            return
        if isinstance(node, nodes.If):
            ids = _step_ids_in(node.test, via)
            if ids:
                branches = node.body + list(node.elif_) + node.else_
                text, outputs, inputs = _collect(branches, skip_loops=False)
                found.append(DynamicBlock("if", ids, text, outputs, frozenset(inputs)))
        for child in node.iter_child_nodes():
            visit(child, via)

    visit(template._ast, {})
    return found
