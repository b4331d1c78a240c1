"""The checks made before a template operation that could build a value much larger than
its inputs: repetition and powers, ``%`` and ``str.format`` (widths and precisions,
``*`` ones too, and what each field prints), padding, joins, replacements, ``to_bytes``,
and the filters that pad, repeat or print (``indent``, ``wordwrap``, ``pprint``,
``tojson``, ``batch``...). Each refuses with a :class:`RenderLimitError` before anything is
built; :mod:`flowgpt.templating._sandbox` calls them, and measures every result after.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jinja2.filters import make_attrgetter
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, SandboxedFormatter
from jinja2.utils import pass_context, pass_environment

from flowgpt.templating import _limits
from flowgpt.templating._limits import (
    SHORT,
    RenderLimitError,
    check_bits,
    check_size,
    text_size,
)

# -- operators ----------------------------------------------------------------------------

_SEQUENCES = (str, bytes, bytearray, list, tuple)


def check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        _check_repeat(left, right)
    elif operator == "**":
        _check_power(left, right)
    elif operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        check_size(len(left) + len(right), "the concatenation")
    elif operator == "%" and isinstance(left, (str, bytes, bytearray)):
        check_percent(left, right)


def _check_repeat(left: Any, right: Any) -> None:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, _SEQUENCES) and type(times) is int and times > 0:
            # A list's items count as printed: [s] * 100 of a long s is a long value.
            unit = len(seq) if isinstance(seq, (str, bytes, bytearray)) else text_size(seq)
            check_size(unit * times, f"repeating a sequence {times:,} times")
    if type(left) is int and type(right) is int:
        check_bits(left.bit_length() + right.bit_length(), "the product")


def _check_power(left: Any, right: Any) -> None:
    if type(left) is int and type(right) is int and right > 0 and abs(left) > 1:
        check_bits(right * abs(left).bit_length(), "the power")


# -- %-formatting ---------------------------------------------------------------------------

# One conversion: %(key)flags width .precision length type; `*` takes the number from args.
_PERCENT = re.compile(r"%(?:\(([^()]*)\))?([-#0 +]*)(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.?)")


def check_percent(fmt: str | bytes | bytearray, args: Any) -> None:
    """Refuse ``fmt % args`` when the result could be too large: every width and precision
    (``*`` ones are read from the arguments) and what each value prints count."""
    text = fmt.decode("latin-1") if isinstance(fmt, (bytes, bytearray)) else fmt
    positional = list(args) if isinstance(args, tuple) else [args]
    mapping = args if isinstance(args, Mapping) else None
    index = 0

    def take() -> Any:
        nonlocal index
        value = positional[index] if index < len(positional) else None
        index += 1
        return value

    total = len(text)
    for match in _PERCENT.finditer(text):
        key, _flags, width, precision, kind = match.groups()
        if kind == "%":
            continue
        numbers = []
        for given in (width, precision):
            if given == "*":
                numbers.append(take())
            elif given:
                numbers.append(int(given))
        value = mapping.get(key) if key is not None and mapping is not None else take()
        wide = sum(abs(n) for n in numbers if type(n) is int)
        total += wide + text_size(value)
    check_size(total, "the formatted text")


# -- str.format ------------------------------------------------------------------------------

# A standard format spec: [[fill]align][sign][z][#][0][width][grouping][.precision][type]
_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?[a-zA-Z%]?")


class BoundedFormatter(SandboxedFormatter):
    """The sandbox's ``str.format``, adding up what each field prints (its width and
    precision, resolved from nested fields, included) and refusing past the limit."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.size = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self.size = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        match = _SPEC.fullmatch(format_spec)
        if match is not None:
            wide = sum(int(n) for n in match.groups() if n)
        else:  # a type's own spec (a date's %Y-%m-%d): its digits, and room per letter
            wide = sum(int(n) for n in re.findall(r"\d+", format_spec)) + 64 * len(format_spec)
        self.size += wide + text_size(value)
        check_size(self.size, "the formatted text")
        return super().format_field(value, format_spec)


def bounded_format(env: Any, owner: str, name: str) -> Callable[..., str]:
    """``owner.format`` / ``owner.format_map`` through :class:`BoundedFormatter`."""
    formatter = BoundedFormatter(env)

    def wrapper(*args: Any, **kwargs: Any) -> str:
        if name == "format_map":
            if kwargs or len(args) != 1:
                raise TypeError("format_map() takes exactly one argument")
            return type(owner)(formatter.vformat(owner, (), args[0]))
        return type(owner)(formatter.vformat(owner, args, kwargs))

    return functools.update_wrapper(wrapper, getattr(owner, name))


# -- method calls ----------------------------------------------------------------------------

_PADDING = frozenset({"center", "ljust", "rjust", "zfill"})


def check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse method calls that would build a value past the limit."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, (str, bytes, bytearray)):
        if name in _PADDING:
            for size in (a for a in (*args, *kwargs.values()) if type(a) is int):
                check_size(size, f"{type(owner).__name__}.{name}")
        elif name == "expandtabs":
            tab = next((a for a in (*args, *kwargs.values()) if type(a) is int), 8)
            tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
            check_size(len(owner) + tabs * max(tab, 0), f"{type(owner).__name__}.expandtabs")
        elif name == "join" and args:
            joined_size(args[0], owner)
        elif name == "replace" and len(args) >= 2:
            check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
        elif name == "translate" and args and isinstance(args[0], Mapping):
            longest = max((text_size(v) for v in args[0].values()), default=1)
            check_size(len(owner) * max(longest, 1), "str.translate")
    elif type(owner) is int and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if type(length) is int:
            check_size(length, "int.to_bytes")


def joined_size(items: Iterable[Any], sep: Any) -> int:
    """The length of ``sep.join(items)`` (items as text), refused as soon as it is past
    the limit, before anything is built."""
    size = 0
    for count, item in enumerate(items):
        size += text_size(item) + (len(sep) if count else 0)
        check_size(size, "the joined text")
    return size


def check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if not isinstance(text, (str, bytes, bytearray)):
        text = str(text)
    try:
        hits = text.count(old) if len(old) else len(text) + 1
    except TypeError:
        return  # the replace itself reports the wrong argument
    if type(count) is int and count >= 0:
        hits = min(hits, count)
    check_size(len(text) + hits * max(len(new) - len(old), 0), "the replaced text")


# -- filters ----------------------------------------------------------------------------------


def _indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    text = str(s) if isinstance(s, str) else ""
    pad = len(width) if isinstance(width, str) else int(width) if type(width) is int else 0
    check_size(pad, "the indentation")
    check_size(len(text) + (text.count("\n") + 1) * pad, "the indented text")


def _wordwrap(
    s: Any, width: Any = 79, break_long_words: bool = True, wrapstring: Any = None, *_: Any
) -> None:
    text = s if isinstance(s, str) else ""
    if isinstance(wrapstring, str) and len(wrapstring) > 1:
        check_size(len(text) + (len(text) + 1) * len(wrapstring), "the wrapped text")


def _urlize(
    value: Any,
    trim_url_limit: Any = None,
    nofollow: bool = False,
    target: Any = None,
    rel: Any = None,
    *_: Any,
) -> None:
    text = value if isinstance(value, str) else ""
    extra = len(str(target or "")) + len(str(rel or "")) + 64
    check_size(3 * len(text) + (text.count(" ") + text.count("\n") + 1) * extra, "urlize")


def _escape(value: Any) -> None:
    text = value if isinstance(value, str) else str(value) if isinstance(value, int) else ""
    special = sum(text.count(c) for c in "&<>\"'")
    check_size(len(text) + 4 * special, "the escaped text")


def _batch(value: Any, linecount: Any, fill_with: Any = None) -> None:
    if fill_with is not None and type(linecount) is int:
        check_size(linecount, "a batch")


def _slice(value: Any, slices: Any, fill_with: Any = None) -> None:
    if type(slices) is int and slices > MAX_RANGE:
        raise RenderLimitError(
            f"slice({slices:,}) is too large for a template (at most {MAX_RANGE:,} slices)",
            "size",
        )


def _printed(value: Any, *_: Any, **__: Any) -> None:
    _limits.check_text(value, "the printed value")


def _pprinted(value: Any) -> None:
    # pprint puts items on lines of their own, indented by their depth, and cuts long
    # strings into pieces (each a line of its own).
    _limits.check_text(value, "the pretty-printed value", indent=1)
    check_size(2 * text_size(value), "the pretty-printed value")


def _xmlattr(d: Any, autospace: bool = True) -> None:
    check_size(6 * text_size(d), "the attributes")


def _urlencode(value: Any) -> None:
    check_size(9 * text_size(value), "the URL-encoded text")


# Filter name -> a check of its arguments (the filter's own parameters, without the
# context, environment or eval context Jinja passes first).
FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "indent": _indent,
    "wordwrap": _wordwrap,
    "urlize": _urlize,
    "escape": _escape,
    "e": _escape,
    "forceescape": _escape,
    "batch": _batch,
    "slice": _slice,
    "string": _printed,
    "pprint": _pprinted,
    "xmlattr": _xmlattr,
    "urlencode": _urlencode,
}

# Filters that return one of the values they were given (not a new one): nothing built.
SELECTING_FILTERS = frozenset(
    {"attr", "d", "default", "first", "last", "max", "min", "random", "safe"}
)


@pass_environment
def bounded_sum(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """``sum``, in linear time for lists (Python's sum of lists copies at every step)."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    if not isinstance(start, (list, tuple)):
        return sum(iterable, start)
    out = list(start)
    for item in iterable:
        _limits.tick()
        out.extend(item)
        check_size(len(out), "the sum")
    return type(start)(out)


def checked_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (a filter) with its check before and its result measured after.

    The wrapper takes the render context, so Jinja never calls it while compiling (it
    folds constant filters at compile time otherwise: ``'x'|indent(999999999)`` would
    run inside ``flowgpt validate``)."""
    check = FILTER_CHECKS.get(name)
    kind = getattr(getattr(func, "jinja_pass_arg", None), "name", None)
    selecting = name in SELECTING_FILTERS

    # The filter's own first argument, from the render context (Jinja passes it that way).
    first: Callable[[Context], Any] | None = {
        "context": lambda context: context,
        "eval_context": lambda context: context.eval_ctx,
        "environment": lambda context: context.environment,
    }.get(kind or "")

    # No tick here: a filter runs once per call, bounded by the size of what it is given
    # (loops and calls, which may repeat without end, tick).
    @pass_context
    def wrapper(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        if check is not None:
            check(value, *args, **kwargs)
        if first is None:
            result = func(value, *args, **kwargs)
        else:
            result = func(first(context), value, *args, **kwargs)
        if selecting or result is value or (type(result) is str and len(result) < SHORT):
            return result
        return _limits.built(result)

    wrapper.__name__ = getattr(func, "__name__", name)
    wrapper.__doc__ = func.__doc__
    return wrapper
