"""Jinja2 templating for prompts, ``when`` and ``for_each``: sandboxed rendering and static
reference discovery. The only module that imports jinja2.

Threat model: templates come from the workflow file (written by its author, maybe shared);
inputs and model replies are data and are never rendered as templates, so they cannot
inject template code. The sandbox keeps templates from reaching Python internals, the
environment or mutating the shared context, and caps the obvious memory bombs.

The render context the engine passes is plain data (see :func:`make_context`)::

    {
        "inputs": {"topic": "tea", "words": 600},
        "steps": {
            "outline": {"output": {...} | "text" | None, "text": "raw reply" | None,
                        "usage": {"prompt_tokens": 12, ...}, "skipped": False},
        },
        "section": "...",   # the ``as`` variable, only inside a for_each step
    }

Rendering rules beyond plain Jinja (chosen for prompts):
- undefined names are errors (strict), naming the step, the full path and a did-you-mean;
- ``{{ None }}`` prints nothing, a dict or list prints as JSON (not Python repr), and
  printing a function or other Python object is an error (``steps.a.output.title`` on a
  text step would otherwise print ``<built-in method title ...>``);
- on a dict, a key wins over a dict method of the same name (``inputs.items`` is the input
  called ``items``, not ``dict.items``);
- ``trim_blocks`` and ``lstrip_blocks`` are on (as in Hugging Face chat templates), so a
  ``{% for %}`` on its own line leaves no blank line; the final newline of a block scalar
  is dropped (Jinja's default);
- ``tojson`` keeps non-ASCII text as is (Chinese prompts) and keeps key order.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import json
import re
from collections import deque
from collections.abc import Collection, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, NoReturn, cast

from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template as _JinjaTemplate
from jinja2.exceptions import (
    SecurityError,
    TemplateAssertionError,
    TemplateRuntimeError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.parser import Parser
from jinja2.runtime import Context, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from flowgpt.errors import TemplateError

__all__ = [
    "STEP_FIELDS",
    "DynamicBlock",
    "Reference",
    "References",
    "Template",
    "TemplateRenderProblem",
    "TemplateSyntaxProblem",
    "dynamic_blocks",
    "evaluate",
    "make_context",
    "parse_expression",
    "parse_template",
    "references",
    "render",
    "single_expression",
    "step_entry",
    "strip_expression_braces",
]

#: What a template may read of a step: ``steps.<id>.<field>``.
STEP_FIELDS: tuple[str, ...] = ("output", "text", "usage", "skipped")

# Memory bombs the sandbox does not stop on its own ('x' * 10**10, 10 ** 10**9).
MAX_SEQUENCE_ITEMS = 10_000_000
MAX_POWER_BITS = 100_000

_RESULT_NAME = "flowgpt_expression_result_"
_TEMPLATE_FILENAME = "<template>"


# --------------------------------------------------------------------------- errors


def _location(where: str | None, line: int | None, multiline: bool) -> str:
    parts = [where] if where else []
    if line is not None and multiline:
        parts.append(f"line {line}")
    return f" ({', '.join(parts)})" if parts else ""


def _compose(detail: str, step: str | None, where: str | None, line: int | None, ml: bool) -> str:
    head = f"step `{step}`: " if step else ""
    return f"{head}{detail}{_location(where, line, ml)}"


class TemplateSyntaxProblem(TemplateError):
    """A template or expression does not parse.

    ``line`` is 1-based inside the template text, so the loader can add the line where a
    block scalar starts; ``detail`` is the message without step or location.
    """

    def __init__(
        self,
        detail: str,
        *,
        line: int | None,
        step: str | None = None,
        where: str | None = None,
        hint: str | None = None,
        multiline: bool = True,
    ) -> None:
        super().__init__(
            _compose(f"template syntax error: {detail}", step, where, line, multiline),
            step=step,
            hint=hint,
        )
        self.detail = detail
        self.line = line
        self.where = where


class TemplateRenderProblem(TemplateError):
    """A template failed at render time (undefined name, unsafe access, skipped step...).

    ``line`` is 1-based inside the template text when known.
    """

    def __init__(
        self,
        detail: str,
        *,
        line: int | None = None,
        step: str | None = None,
        where: str | None = None,
        hint: str | None = None,
        multiline: bool = True,
    ) -> None:
        super().__init__(_compose(detail, step, where, line, multiline), step=step, hint=hint)
        self.detail = detail
        self.line = line
        self.where = where


class _MissingValue(UndefinedError):
    """An undefined value was used; carries what was looked up on what."""

    def __init__(self, message: str, obj: Any, name: Any) -> None:
        super().__init__(message)
        self.obj = obj
        self.name = name


class _UnsafeAccess(SecurityError):
    """The sandbox refused an attribute; carries which one on what."""

    def __init__(self, message: str, obj: Any, name: Any) -> None:
        super().__init__(message)
        self.obj = obj
        self.name = name


class _NotAValue(TemplateRuntimeError):
    """``{{ }}`` printed a function, class or other Python object."""

    def __init__(self, value: Any) -> None:
        super().__init__(f"printed a {type(value).__name__}")
        self.value = value


# --------------------------------------------------------------------- environment


class _Undefined(StrictUndefined):
    """StrictUndefined whose errors remember the object and name, for good messages."""

    __slots__ = ()

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        if issubclass(self._undefined_exception, SecurityError):
            raise _UnsafeAccess(self._undefined_message, self._undefined_obj, self._undefined_name)
        raise _MissingValue(self._undefined_message, self._undefined_obj, self._undefined_name)


# StrictUndefined binds its dunders (__str__, __iter__, __bool__...) to the base class's
# function object, so overriding the method alone would not reach them; rebind them all.
for _cls in (Undefined, StrictUndefined):
    for _attr, _value in list(vars(_cls).items()):
        if _value is Undefined._fail_with_undefined_error and _attr != "_fail_with_undefined_error":
            setattr(_Undefined, _attr, _Undefined._fail_with_undefined_error)


def _json_default(value: Any) -> Any:
    if isinstance(value, Undefined):
        str(value)  # raises the strict undefined error with its name
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()  # YAML turns `default: 2024-01-01` into a date
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if _is_python_object(value):
        raise _NotAValue(value)
    return str(value)


def _to_json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=_json_default)


def _tojson(value: Any, indent: int | None = None) -> str:
    """JSON for prompts: non-ASCII kept (Chinese stays readable), no HTML escaping."""
    return _to_json(value, indent)


def _is_python_object(value: Any) -> bool:
    """Functions, classes and Jinja's helpers: printing one is always a template bug."""
    return callable(value) or type(value).__module__.split(".")[0] == "jinja2"


def _finalize(value: Any) -> Any:
    if isinstance(value, Undefined):
        return value  # printing it raises the undefined error
    if value is None:
        return ""  # a skipped step's null output prints nothing, not "None"
    if isinstance(value, (dict, list, tuple)):
        return _to_json(value)
    if isinstance(value, str) or not _is_python_object(value):
        return value  # text, numbers, booleans, dates...
    raise _NotAValue(value)


class _CodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # `a ~ b` joins through a size check instead of Jinja's plain str_join.
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


# Widths in `%`-format and str.format specs: each pads the text to that many characters.
_PERCENT_WIDTH = re.compile(r"%[#0\- +]*(\d+)|%[#0\- +]*\d*\.(\d+)")
_FORMAT_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _check_size(size: int, what: str) -> None:
    if size > MAX_SEQUENCE_ITEMS:
        raise OverflowError(
            f"{what} would be {size:,} characters, too large for a template "
            f"(limit {MAX_SEQUENCE_ITEMS:,})"
        )


def _check_widths(fmt: str) -> None:
    widths = [int(n) for m in _PERCENT_WIDTH.finditer(fmt) for n in m.groups() if n]
    for spec in _FORMAT_SPEC.findall(fmt):
        widths += [int(n) for n in re.findall(r"\d+", spec)]
    for width in widths:
        _check_size(width, "a formatting width")


def _joined_size(items: Any, sep: str) -> tuple[list[str], int]:
    texts: list[str] = []
    size = 0
    for item in items:
        text = str(item)
        size += len(text) + (len(sep) if texts else 0)
        _check_size(size, "the joined text")
        texts.append(text)
    return texts, size


def _checked_join(value: Any, d: str = "", attribute: Any = None) -> str:
    if attribute is not None:
        value = [v.get(attribute) if isinstance(v, dict) else v for v in value]
    texts, _ = _joined_size(value, str(d))
    return str(d).join(texts)


def _checked_replace(value: Any, old: str, new: str, count: int | None = None) -> str:
    text = str(value)
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    _check_size(len(text) + hits * max(len(new) - len(old), 0), "the replaced text")
    return text.replace(old, new) if count is None else text.replace(old, new, count)


def _checked_center(value: Any, width: int = 80) -> str:
    _check_size(int(width), "the centred text")
    return str(value).center(width)


def _checked_format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_widths(str(value))
    if args and kwargs:
        raise TypeError("format takes either positional or keyword arguments, not both")
    return str(value) % (kwargs or args)


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse str method calls that would build a string past the limit."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if not isinstance(owner, str):
        return
    if name in _PADDING_METHODS:
        sizes = [a for a in (*args, *kwargs.values()) if isinstance(a, int)]
        factor = owner.count("\t") if name == "expandtabs" else 1
        for size in sizes:
            _check_size(size * max(factor, 1), f"str.{name}")
    elif name == "join" and args:
        _joined_size(args[0], owner)
    elif name == "replace" and len(args) >= 2:
        _checked_replace(owner, str(args[0]), str(args[1]), *args[2:3])
    elif name in ("format", "format_map"):
        _check_widths(owner)


class _Environment(ImmutableSandboxedEnvironment):
    """The immutable sandbox: step outputs are shared by steps rendering concurrently and
    are stored, so no template may change them (``list.append``, ``dict.update``...).

    It also bounds the size of every string a template can build: repetition and powers,
    concatenation (`+`, `~`), `%` and str.format widths, padding, join and replace, and
    the rendered text as a whole."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CodeGenerator

    def wrap_str_format(self, value: Any) -> Any:
        # str.format is wrapped when it is looked up, not when it is called: check the
        # widths in the format string here.
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map"):
            _check_widths(owner)
        return super().wrap_str_format(value)

    def checked_concat(self, values: tuple[Any, ...]) -> str:
        texts, _ = _joined_size(values, "")
        return "".join(texts)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        # A plain dict instead of Jinja's ChainMap: every render copies the globals, and
        # a ChainMap copy is several times slower. The globals never change after setup.
        return {**self.globals, **(d or {})}

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Plain-dict context: a key wins over a dict method of the same name.
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+" and isinstance(left, (str, list, tuple)):
            if isinstance(right, (str, list, tuple)):
                _check_size(len(left) + len(right), "the concatenation")
        elif operator == "%" and isinstance(left, str):
            _check_widths(left)
        return super().call_binop(context, operator, left, right)


def _check_repeat(left: Any, right: Any) -> None:
    for seq, times in ((left, right), (right, left)):
        if (
            isinstance(seq, (str, list, tuple))
            and isinstance(times, int)
            and len(seq) * times > MAX_SEQUENCE_ITEMS
        ):
            raise OverflowError(
                f"repeating a sequence {times} times is too large for a template "
                f"(limit {MAX_SEQUENCE_ITEMS:,} items)"
            )


def _check_power(left: Any, right: Any) -> None:
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and right > 0
        and abs(left) > 1
        and right * abs(left).bit_length() > MAX_POWER_BITS
    ):
        raise OverflowError("the power is too large for a template")


def _make_env() -> _Environment:
    env = _Environment(
        undefined=_Undefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        finalize=_finalize,
        extensions=["jinja2.ext.loopcontrols"],
        auto_reload=False,
        cache_size=0,  # we cache compiled templates ourselves, keyed by source
    )
    # lipsum(n=10**7) is a cheap way to build a huge prompt and has no use in one.
    env.globals.pop("lipsum", None)
    env.filters["tojson"] = _tojson
    env.filters["join"] = _checked_join
    env.filters["replace"] = _checked_replace
    env.filters["center"] = _checked_center
    env.filters["format"] = _checked_format
    return env


def _render_bounded(compiled: _JinjaTemplate, context: Mapping[str, Any]) -> str:
    """Render, refusing output longer than the limit before it is all built."""
    # new_context copies the variables itself (into a dict with the globals).
    ctx = compiled.new_context(cast("dict[str, Any]", context))
    parts: list[str] = []
    size = 0
    try:
        for piece in compiled.root_render_func(ctx):
            size += len(piece)
            if size > MAX_SEQUENCE_ITEMS:
                _check_size(size, "the rendered text")
            parts.append(piece)
    except Exception:
        # Rewrites the traceback so its frames carry template line numbers.
        _ENV.handle_exception()
    return "".join(parts)


_ENV = _make_env()


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
        # Plain text (no expression, tag or variable anywhere) renders the same every time:
        # the text is kept after its first render (a system prompt, mostly).
        self._plain = not expression and all(
            isinstance(node, nodes.Output)
            and all(isinstance(child, nodes.TemplateData) for child in node.nodes)
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
        if self._text is not None:
            return self._text
        try:
            if self.expression:
                return str(_finalize_text(self._run(context)))
            text = _render_bounded(self._compiled, context)
        except Exception as exc:
            raise self._problem(exc, context, step, where) from exc
        if self._plain:
            self._text = text
        return text

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
        ctx = self._compiled.new_context(cast("dict[str, Any]", context))  # copied there
        try:
            for _ in self._compiled.root_render_func(ctx):
                pass
        except Exception:
            # Rewrites the traceback so its frames carry template line numbers.
            _ENV.handle_exception()
        return ctx.vars[_RESULT_NAME]

    # -- errors

    def _problem(
        self, exc: Exception, context: Mapping[str, Any], step: str | None, where: str | None
    ) -> TemplateRenderProblem:
        detail, hint = _explain(exc, context, self)
        return TemplateRenderProblem(
            detail,
            line=_template_line(exc.__traceback__),
            step=step,
            where=where,
            hint=hint,
            multiline=self._multiline,
        )

    def _chains(self, context: Mapping[str, Any]) -> Iterator[tuple[str, tuple[str | int, ...]]]:
        uses, _ = self._analyse()
        for use in uses:
            if not use.shadowed and use.name in context:
                yield use.name, use.path


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


@functools.lru_cache(maxsize=1024)
def parse_template(source: str) -> Template:
    """Parse and compile a template. Raises :class:`TemplateSyntaxProblem`."""
    try:
        ast = _ENV.parse(source)
        compiled = _ENV.from_string(ast)
    except TemplateSyntaxError as exc:  # TemplateAssertionError too (unknown filter)
        raise _syntax_problem(exc, source, expression=False) from None
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


# ----------------------------------------------------------------------- context


def step_entry(
    *,
    output: Any = None,
    text: Any = None,
    usage: Mapping[str, int] | None = None,
    skipped: bool = False,
) -> dict[str, Any]:
    """The context entry of one finished (or skipped) step, as templates see it."""
    counts = dict(usage or {})
    counts.setdefault("prompt_tokens", 0)
    counts.setdefault("completion_tokens", 0)
    counts.setdefault("total_tokens", counts["prompt_tokens"] + counts["completion_tokens"])
    return {
        "output": None if skipped else output,
        "text": None if skipped else text,
        "usage": counts,
        "skipped": skipped,
    }


def make_context(
    inputs: Mapping[str, Any],
    steps: Mapping[str, Mapping[str, Any]],
    *,
    item_name: str | None = None,
    item: Any = None,
) -> dict[str, Any]:
    """The render context: ``inputs``, ``steps`` and, inside for_each, the ``as`` item."""
    context: dict[str, Any] = {
        "inputs": dict(inputs),
        "steps": {k: dict(v) for k, v in steps.items()},
    }
    if item_name is not None:
        if item_name in context:
            raise ValueError(f"`as: {item_name}` would hide `{item_name}`; choose another name")
        context[item_name] = item
    return context


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


# ------------------------------------------------------------ error explanations


def _format_path(parts: Sequence[str | int]) -> str:
    text = str(parts[0])
    for part in parts[1:]:
        if isinstance(part, str) and part.isidentifier():
            text += f".{part}"
        else:
            text += f"[{part!r}]"
    return text


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
    obj: Any, name: Any, context: Mapping[str, Any], tpl: Template
) -> list[str | int] | None:
    """Where ``obj`` sits in the context, preferring the path the template spelled."""
    for root, path in tpl._chains(context):
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


def _skipped_steps(context: Mapping[str, Any], tpl: Template) -> list[str]:
    steps = context.get("steps")
    if not isinstance(steps, dict):
        return []
    ids = [r.name for r in tpl.references().steps if r.name is not None]
    return [
        sid
        for sid in dict.fromkeys(ids)
        if isinstance(steps.get(sid), dict) and steps[sid].get("skipped")
    ]


def _skipped_message(step_id: str, what: str) -> tuple[str, str]:
    return (
        f"step `{step_id}` was skipped, so its output is null and {what}",
        f"guard it with `{{% if steps.{step_id}.output %}}...{{% endif %}}` "
        f"(or test `steps.{step_id}.skipped`)",
    )


def _explain_missing(
    exc: _MissingValue, context: Mapping[str, Any], tpl: Template
) -> tuple[str, str | None]:
    obj, name = exc.obj, exc.name
    if obj is missing:
        return _explain_unknown_name(str(name), context)
    path = _find_path(obj, name, context, tpl)
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
        skipped = _skipped_steps(context, tpl)
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


def _explain(exc: Exception, context: Mapping[str, Any], tpl: Template) -> tuple[str, str | None]:
    if isinstance(exc, _MissingValue):
        return _explain_missing(exc, context, tpl)
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
    if isinstance(exc, OverflowError):
        return f"the template built a value that is too large: {exc}", None
    detail = f"{type(exc).__name__}: {exc}"
    if "NoneType" in str(exc):
        skipped = _skipped_steps(context, tpl)
        if skipped:
            return _skipped_message(skipped[0], f"the template failed ({detail})")
        return f"{detail} (a value is null)", None
    return detail, None
