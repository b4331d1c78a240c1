"""Parsing and running templates: :class:`Template` (a parsed, compiled template or
expression), the cached parsers, and the ``render``/``evaluate``/``references`` entry
points."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Collection, Mapping
from typing import Any

from jinja2 import meta, nodes
from jinja2.environment import Template as _JinjaTemplate
from jinja2.exceptions import TemplateSyntaxError
from jinja2.parser import Parser
from jinja2.runtime import Undefined

from flowgpt.templating._errors import TemplateRenderProblem, TemplateSyntaxProblem
from flowgpt.templating._explain import _explain, _template_line
from flowgpt.templating._references import Reference, References, _Use, _walk
from flowgpt.templating._sandbox import _ENV, _finalize, _render_bounded, _run_bounded

_RESULT_NAME = "flowgpt_expression_result_"


# -------------------------------------------------------------------------- parsing


def strip_expression_braces(source: str) -> str:
    """``{{ expr }}`` -> ``expr``: exactly one surrounding pair, with Jinja's ``-``/``+``."""
    text = source.strip()
    if text.startswith("{{") and text.endswith("}}") and len(text) >= 4:
        inner = text[2:-2]
        if inner.startswith(("-", "+")):
            inner = inner[1:]
        if inner.endswith(("-", "+")):
            inner = inner[:-1]
        return inner
    return source


def _syntax_hint(exc: TemplateSyntaxError, expression: bool) -> str | None:
    m = re.search(r"No (filter|test) named '([^']+)'", exc.message or "")
    if m:
        kind, name = m.groups()
        known = _ENV.filters if kind == "filter" else _ENV.tests
        close = difflib.get_close_matches(name, list(known), n=1)
        if close:
            return f"did you mean the {kind} `{close[0]}`?"
    if expression:
        return (
            "`when` and `for_each` take a bare Jinja expression, e.g. "
            "`inputs.words > 300` or `steps.outline.output.sections`"
        )
    return None


def _syntax_problem(
    exc: TemplateSyntaxError, source: str, expression: bool
) -> TemplateSyntaxProblem:
    return TemplateSyntaxProblem(
        exc.message or str(exc),
        line=exc.lineno,
        hint=_syntax_hint(exc, expression),
        multiline="\n" in source.strip(),
    )


class Template:
    """A parsed, compiled template or expression. Obtain with :func:`parse_template` or
    :func:`parse_expression` (both cached by source)."""

    def __init__(
        self, source: str, *, expression: bool, ast: nodes.Template, compiled: _JinjaTemplate
    ) -> None:
        self.source = source
        self.expression = expression
        self._ast = ast
        self._compiled = compiled
        self._multiline = "\n" in source.strip()
        self._uses: tuple[_Use, ...] | None = None
        self._free: frozenset[str] | None = None
        # Plain text (a system prompt, mostly): no tag, no expression, so the same output
        # whatever the context. Jinja renders it once, on first use, not on every call.
        self._constant = not expression and all(
            isinstance(node, nodes.Output)
            and all(isinstance(part, nodes.TemplateData) for part in node.nodes)
            for node in ast.body
        )
        self._text: str | None = None

    def __repr__(self) -> str:
        kind = "expression" if self.expression else "template"
        return f"<flowgpt {kind} {self.source[:40]!r}>"

    # -- static analysis

    def _analyse(self) -> tuple[tuple[_Use, ...], frozenset[str]]:
        if self._uses is None or self._free is None:
            uses: list[_Use] = []
            _walk(self._ast, frozenset(), uses)
            self._uses = tuple(uses)
            self._free = frozenset(meta.find_undeclared_variables(self._ast))
        return self._uses, self._free

    def references(self, *, known: Collection[str] = ()) -> References:
        """Static references; ``known`` are extra names in scope (the ``as`` variable)."""
        uses, free = self._analyse()
        unshadowed = {u.name for u in uses if not u.shadowed}
        inputs: list[Reference] = []
        steps: list[Reference] = []
        names: list[Reference] = []
        for use in uses:
            if use.name not in free:
                continue  # always bound by the template itself, or a Jinja global
            if use.shadowed and use.name in unshadowed:
                continue  # this occurrence is the template's own variable
            if use.name in ("inputs", "steps"):
                first = use.path[0] if use.path else None
                name = first if isinstance(first, str) else None
                ref = Reference(
                    "input" if use.name == "inputs" else "step", name, use.line, use.path
                )
                (inputs if use.name == "inputs" else steps).append(ref)
            elif use.name not in known and use.name not in _ENV.globals:
                names.append(Reference("name", use.name, use.line, use.path))
        return References(tuple(inputs), tuple(steps), tuple(names))

    # -- running

    def render(
        self, context: Mapping[str, Any], *, step: str | None = None, where: str | None = None
    ) -> str:
        """Render to text. Raises :class:`TemplateRenderProblem` (a ``TemplateError``)."""
        try:
            if self.expression:
                return str(_finalize_text(self._run(context)))
            if not self._constant:
                return _render_bounded(self._compiled, context)
            if self._text is None:
                self._text = _render_bounded(self._compiled, {})
            return self._text
        except Exception as exc:
            raise self._problem(exc, context, step, where) from exc

    def evaluate(
        self, context: Mapping[str, Any], *, step: str | None = None, where: str | None = None
    ) -> Any:
        """Evaluate an expression to its native Python value (a list, a bool...)."""
        try:
            value = self._run(context)
            _ensure_defined(value)
            return value
        except Exception as exc:
            raise self._problem(exc, context, step, where) from exc

    def _run(self, context: Mapping[str, Any]) -> Any:
        if not self.expression:
            return _render_bounded(self._compiled, context)
        # An expression prints nothing: it assigns its value to _RESULT_NAME.
        return _run_bounded(self._compiled, context)[1].vars[_RESULT_NAME]

    # -- errors

    def _problem(
        self, exc: Exception, context: Mapping[str, Any], step: str | None, where: str | None
    ) -> TemplateRenderProblem:
        # _explain gets plain data, not the Template: it sits below this module.
        uses, _ = self._analyse()
        step_ids = [r.name for r in self.references().steps if r.name is not None]
        detail, hint = _explain(exc, context, uses, step_ids)
        return TemplateRenderProblem(
            detail,
            line=_template_line(exc.__traceback__),
            step=step,
            where=where,
            hint=hint,
            multiline=self._multiline,
        )


def _finalize_text(value: Any) -> Any:
    out = _finalize(value)
    if isinstance(out, Undefined):
        str(out)  # raises
    return out


def _ensure_defined(value: Any) -> None:
    """An expression like ``[inputs.missing]`` yields a list holding an Undefined: raise."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Undefined):
            str(item)  # raises the strict undefined error
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


# Tags that load another template: a workflow's templates have no files to load (the
# sandbox has no loader), so they are refused when parsed, which `validate` reports.
_FILE_TAGS: dict[type[nodes.Node], str] = {
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Extends: "extends",
}


def _refuse_file_tags(ast: nodes.Template, source: str) -> None:
    for node in ast.find_all(tuple(_FILE_TAGS)):
        raise TemplateSyntaxProblem(
            f"`{{% {_FILE_TAGS[type(node)]} %}}` is not supported: templates cannot load files",
            line=node.lineno,
            hint="put the text in the workflow itself (a YAML anchor shares it between "
            "steps), or pass it in as an input (`-i name=...` or `--inputs-file`)",
            multiline="\n" in source.strip(),
        )


@functools.lru_cache(maxsize=1024)
def parse_template(source: str) -> Template:
    """Parse and compile a template. Raises :class:`TemplateSyntaxProblem`."""
    try:
        ast = _ENV.parse(source)
        compiled = _ENV.from_string(ast)
    except TemplateSyntaxError as exc:  # TemplateAssertionError too (unknown filter)
        raise _syntax_problem(exc, source, expression=False) from None
    _refuse_file_tags(ast, source)
    return Template(source, expression=False, ast=ast, compiled=compiled)


@functools.lru_cache(maxsize=1024)
def parse_expression(source: str) -> Template:
    """Parse and compile a bare Jinja expression (``inputs.words > 300``); one surrounding
    ``{{ }}`` is accepted. Raises :class:`TemplateSyntaxProblem`."""
    inner = strip_expression_braces(source)
    # Lines stripped in front of `{{` still count, so errors point at the right line.
    offset = source[: len(source) - len(source.lstrip())].count("\n") if inner != source else 0
    try:
        if not inner.strip():
            raise TemplateSyntaxError("the expression is empty", 1)
        parser = Parser(_ENV, inner, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            raise TemplateSyntaxError(
                f"unexpected {token.value!r} after the expression", token.lineno
            )
        ast = nodes.Template(
            [nodes.Assign(nodes.Name(_RESULT_NAME, "store"), expr, lineno=1)], lineno=1
        )
        ast.set_environment(_ENV)
        compiled = _ENV.from_string(ast)
    except TemplateSyntaxError as exc:
        exc.lineno += offset
        raise _syntax_problem(exc, source, expression=True) from None
    return Template(source, expression=True, ast=ast, compiled=compiled)


def single_expression(source: str) -> str | None:
    """The expression inside a value that is exactly one ``{{ expr }}`` (surrounding
    whitespace aside), else None. Lets ``outputs:`` keep a value's type: ``"{{ n }}"``
    stays a number, ``"n = {{ n }}"`` is text."""
    text = source.strip()
    if not (text.startswith("{{") and text.endswith("}}")):
        return None
    try:
        body = parse_template(text)._ast.body
    except TemplateSyntaxProblem:
        return None  # rendering it reports the error
    if len(body) != 1 or not isinstance(body[0], nodes.Output):
        return None
    parts = body[0].nodes
    if len(parts) != 1 or isinstance(parts[0], nodes.TemplateData):
        return None
    return strip_expression_braces(text).strip()


def _parse(source: str, expression: bool) -> Template:
    return parse_expression(source) if expression else parse_template(source)


def references(source: str, *, expression: bool = False, known: Collection[str] = ()) -> References:
    """Static references of a template (or expression) to inputs, steps and other names.

    ``known`` are extra names in scope, e.g. the ``as`` variable of a for_each step.
    Raises :class:`TemplateSyntaxProblem` when the source does not parse.
    """
    return _parse(source, expression).references(known=known)


def render(
    source: str,
    context: Mapping[str, Any],
    *,
    step: str | None = None,
    where: str | None = None,
) -> str:
    """Render a template. ``step`` and ``where`` (``"prompt"``, ``"system"``,
    ``"messages[1]"``, ``"outputs.title"``...) only name the place in error messages."""
    try:
        template = parse_template(source)
    except TemplateSyntaxProblem as exc:
        raise _with_place(exc, step, where) from None
    return template.render(context, step=step, where=where)


def evaluate(
    expression: str,
    context: Mapping[str, Any],
    *,
    step: str | None = None,
    where: str | None = None,
) -> Any:
    """Evaluate a ``when``/``for_each`` expression to its native value."""
    try:
        template = parse_expression(expression)
    except TemplateSyntaxProblem as exc:
        raise _with_place(exc, step, where) from None
    return template.evaluate(context, step=step, where=where)


def _with_place(
    exc: TemplateSyntaxProblem, step: str | None, where: str | None
) -> TemplateSyntaxProblem:
    return TemplateSyntaxProblem(
        exc.detail,
        line=exc.line,
        step=step,
        where=where,
        hint=exc.hint,
        multiline=exc.line is not None and exc.line > 1,
    )
