"""The sandboxed Jinja environment every template runs in: strict undefined values that
remember what was looked up, the printing rules (``finalize``, ``tojson``), the limits on
every value a template builds and on the time a render takes, and the bounded render.

The limits live in ``_limits`` (module globals read at call time: to change one in a test,
patch it there, e.g. ``flowgpt.templating._limits.MAX_SEQUENCE_ITEMS``); the checks made
before an operation that could build a large value live in ``_checks``."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, MutableMapping
from decimal import Decimal
from typing import Any, NoReturn, cast

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Environment
from jinja2.environment import Template as JinjaTemplate
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from flowgpt.templating import _checks, _limits
from flowgpt.templating._errors import _MissingValue, _NotAValue, _UnsafeAccess


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
    # Not measured first (the common case, printing a step's output, stays cheap): every
    # value a template builds was measured when it was built, and the data it is given is
    # bounded (parsed JSON is a tree; a workflow's YAML may expand to 10 million characters
    # at most). Indentation multiplies; escapes at most sextuple: checked after.
    if indent:
        _limits.check_text(value, "the value as JSON", indent=indent)
    text = json.dumps(value, ensure_ascii=False, indent=indent, default=_json_default)
    _limits.check_size(len(text), "the value as JSON")
    return text


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


def _checked_join(value: Any, d: str = "", attribute: Any = None) -> str:
    if attribute is not None:
        value = [v.get(attribute) if isinstance(v, dict) else v for v in value]
    items = list(value)
    _checks.joined_size(items, str(d))
    return str(d).join(str(item) for item in items)


def _checked_replace(value: Any, old: str, new: str, count: int | None = None) -> str:
    text = str(value)
    _checks.check_replace(text, old, new, -1 if count is None else count)
    return text.replace(old, new) if count is None else text.replace(old, new, count)


def _checked_center(value: Any, width: int = 80) -> str:
    _limits.check_size(int(width), "the centred text")
    return str(value).center(width)


def _checked_format(value: Any, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise TypeError("format takes either positional or keyword arguments, not both")
    given = kwargs or args
    _checks.check_percent(str(value), given)
    return str(value) % given


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator, with every value a template builds going through the
    environment's checks: ``~`` joins, list/tuple/dict literals, ``{% for %}`` iterables."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # `a ~ b` joins through a size check instead of Jinja's plain str_join.
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.built(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.built(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # a target: `{% for a, b in ... %}`, `{% set a, b = ... %}`
            super().visit_Tuple(node, frame)
            return
        self.write("environment.built(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # The loop's iterable ticks the render's clock at every item (see `visit`).
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if id(node) in self._loop_iterables:
            self.write("environment.iterate(")
            result = super().visit(node, *args, **kwargs)
            self.write(")")
            return result
        return super().visit(node, *args, **kwargs)

    @property
    def _loop_iterables(self) -> set[int]:
        found: set[int] | None = self.__dict__.get("_flowgpt_loops")
        if found is None:
            found = self.__dict__["_flowgpt_loops"] = set()
        return found


class _LoopContext(LoopContext):
    """``loop`` (loops that use it, recursive ones too): ticks at every item."""

    def __next__(self) -> tuple[Any, LoopContext]:
        _limits.tick()
        return super().__next__()


class _Template(JinjaTemplate):
    @classmethod
    def _from_namespace(
        cls,
        environment: Environment,
        namespace: MutableMapping[str, Any],
        globals: MutableMapping[str, Any],
    ) -> JinjaTemplate:
        # The compiled module imported Jinja's LoopContext; its functions look it up here.
        namespace["LoopContext"] = _LoopContext
        return super()._from_namespace(environment, namespace, globals)


def _new_value(result: Any, *given: Any) -> Any:
    """Measure a result, unless it is one of the values the operation was given."""
    if any(result is g for g in given):
        return result
    return _limits.built(result)


class _Environment(ImmutableSandboxedEnvironment):
    """The immutable sandbox: step outputs are shared by steps rendering concurrently and
    are stored, so no template may change them (``list.append``, ``dict.update``...).

    It also bounds every value a template builds and the time a render takes (see
    ``_limits``): operators, calls, filters, literals, joins and slices go through the
    checks in ``_checks`` first and are measured after; loops, calls and filters tick the
    clock. Nothing is evaluated while compiling (no constant folding)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CodeGenerator
    template_class = _Template

    @staticmethod
    def concat(pieces: Any) -> str:
        # Blocks, macros and `{% set %}` blocks join their output here.
        parts: list[str] = []
        size = 0
        for piece in pieces:
            size += len(piece)
            _limits.check_size(size, "the text of a block")
            parts.append(piece)
        return _limits.built("".join(parts))

    def built(self, value: Any) -> Any:
        return _limits.built(value)

    def iterate(self, iterable: Any) -> Any:
        return _limits.iterate(iterable)

    def wrap_str_format(self, value: Any) -> Any:
        owner = getattr(value, "__self__", None)
        name = getattr(value, "__name__", "")
        if isinstance(owner, str) and name in ("format", "format_map"):
            return _checks.bounded_format(self, owner, name)
        return None

    def checked_concat(self, values: tuple[Any, ...]) -> str:
        _checks.joined_size(values, "")
        return _limits.built("".join(str(v) for v in values))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _limits.tick()
        _checks.check_call(__obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, (dict, list, tuple)) and name not in ("copy", "fromkeys"):
            return result  # a lookup: one of the container's own values
        return _new_value(result, owner, *args, *kwargs.values())

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        # A plain dict instead of Jinja's ChainMap: every render copies the globals, and
        # a ChainMap copy is several times slower. The globals never change after setup.
        return {**self.globals, **(d or {})}

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Plain-dict context: a key wins over a dict method of the same name.
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        value = super().getitem(obj, argument)
        return _new_value(value, obj) if isinstance(argument, slice) else value

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _checks.check_binop(operator, left, right)
        return _new_value(super().call_binop(context, operator, left, right), left, right)


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
        optimized=False,  # constant folding would run template code while compiling
    )
    # lipsum(n=10**7) is a cheap way to build a huge prompt and has no use in one.
    env.globals.pop("lipsum", None)
    env.filters["tojson"] = _tojson
    env.filters["join"] = _checked_join
    env.filters["replace"] = _checked_replace
    env.filters["center"] = _checked_center
    env.filters["format"] = _checked_format
    env.filters["sum"] = _checks.bounded_sum
    for name, func in list(env.filters.items()):
        env.filters[name] = _checks.checked_filter(name, func)
    return env


def _render_bounded(compiled: JinjaTemplate, context: Mapping[str, Any]) -> str:
    """Render under the render limits, refusing output longer than the limit before it
    is all built."""
    return _run_bounded(compiled, context)[0]


def _run_bounded(compiled: JinjaTemplate, context: Mapping[str, Any]) -> tuple[str, Context]:
    """Run ``compiled`` under the render limits: (its output, the context it ran in, whose
    ``vars`` hold what it assigned)."""
    parts: list[str] = []
    size = 0
    token = _limits.start_render()
    try:
        # new_context copies the variables itself (into a dict with the globals).
        ctx = compiled.new_context(cast("dict[str, Any]", context))
        for piece in compiled.root_render_func(ctx):
            size += len(piece)
            if size > _limits.MAX_SEQUENCE_ITEMS:
                _limits.check_size(size, "the rendered text")
            parts.append(piece)
    except Exception:
        # Rewrites the traceback so its frames carry template line numbers.
        _ENV.handle_exception()
    finally:
        _limits.end_render(token)
    return "".join(parts), ctx


_ENV = _make_env()
