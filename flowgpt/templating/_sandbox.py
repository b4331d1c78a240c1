"""The sandboxed Jinja environment every template runs in: strict undefined values that
remember what was looked up, the printing rules (``finalize``, ``tojson``), size limits on
every string a template can build, and the bounded render loop.

The limits are module globals read at call time: to change one in a test, patch it here
(``flowgpt.templating._sandbox.MAX_SEQUENCE_ITEMS``), not on the package."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, MutableMapping
from decimal import Decimal
from typing import Any, NoReturn, cast

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template as _JinjaTemplate
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from flowgpt.templating._errors import _MissingValue, _NotAValue, _UnsafeAccess

# Memory bombs the sandbox does not stop on its own ('x' * 10**10, 10 ** 10**9).
MAX_SEQUENCE_ITEMS = 10_000_000
MAX_POWER_BITS = 100_000


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
