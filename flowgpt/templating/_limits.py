"""What one render may build and how long it may run, so that any template stays within a
few hundred MB and a few seconds (``flowgpt validate`` evaluates nothing at all).

Four limits, module globals read at call time (patch them here in tests):

- ``MAX_SEQUENCE_ITEMS``: one value a template builds (a string, bytes, a list, a dict...)
  holds at most this many characters and items, counted as if it were printed, shared
  parts once per use: ``[s, s]`` counts ``s`` twice. Operations that could build a larger
  value are refused *before* they build it (repetition, padding and format widths, joins,
  replacements, ``indent``, ``to_bytes``...); every other result is measured after it is
  built, which is cheap because its inputs were bounded already.
- ``MAX_POWER_BITS``: one integer (``**``, ``*``).
- ``MAX_RENDER_BYTES``: everything one render builds, together (Python's own sizes). A
  loop that keeps what it builds alive cannot grow past it.
- ``MAX_RENDER_SECONDS``: checked at every loop iteration, call and filter, so a loop that
  builds nothing still stops.

Values a template is given are bounded where they come from: parsed JSON (inputs, data
rows, step outputs) is a tree as large as it is in memory, and a workflow's YAML may expand
through aliases to at most 10 million characters (the loader refuses more). Every value a
template builds is measured as it is built, so printing one is bounded too.

A render runs between :func:`start_render` and :func:`end_render`; the sandbox calls
:func:`tick` and :func:`built` as it goes. Each refusal is a :class:`RenderLimitError`
saying which limit.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar, Token
from typing import Any, TypeVar

MAX_SEQUENCE_ITEMS = 10_000_000
MAX_POWER_BITS = 100_000
MAX_RENDER_BYTES = 256_000_000
MAX_RENDER_SECONDS = 5.0

_T = TypeVar("_T")
_CONTAINERS = (list, tuple, dict, set, frozenset)
_TEXTS = (str, bytes, bytearray)


class RenderLimitError(OverflowError):
    """A template hit one of the render limits; the message names it, ``kind`` says
    which: "size" (one value), "bits" (one number), "memory" or "time" (the render)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_size(size: int, what: str) -> None:
    """Refuse a value of ``size`` characters or items before it is built."""
    if size > MAX_SEQUENCE_ITEMS:
        raise RenderLimitError(
            f"{what} would be {size:,} characters or items: too large for a template "
            f"(one value may hold {MAX_SEQUENCE_ITEMS:,})",
            "size",
        )


def check_bits(bits: int, what: str) -> None:
    """Refuse a number of ``bits`` bits before it is built."""
    if bits > MAX_POWER_BITS:
        raise RenderLimitError(
            f"{what} is too large for a template (about {bits:,} bits; a number may have "
            f"{MAX_POWER_BITS:,})",
            "bits",
        )


class _Render:
    """The budget of one render: its deadline, the bytes it built, and the measured size
    of every container it met (by id; the container is held, so its id stays unique)."""

    __slots__ = ("built", "deadline", "sizes", "ticks")

    def __init__(self) -> None:
        # Set at the first reading of the clock (16 ticks in): most renders never get there.
        self.deadline = 0.0
        self.built = 0
        self.ticks = 0
        # id -> (container, size when printed, items, depth)
        self.sizes: dict[int, tuple[Any, int, int, int]] = {}


_CURRENT: ContextVar[_Render | None] = ContextVar("flowgpt_render", default=None)


def start_render() -> Token[_Render | None]:
    """Start one render under a fresh budget (time and memory); pass the token to
    :func:`end_render` when it is over (a ``finally``: a context manager costs more than
    a short render)."""
    return _CURRENT.set(_Render())


def end_render(token: Token[_Render | None]) -> None:
    _CURRENT.reset(token)


def tick() -> None:
    """A loop iteration or call: stop once the render is out of time (the clock is read
    every 16th tick: each step between is bounded by the size limits)."""
    render = _CURRENT.get()
    if render is not None:
        _tick(render)


def _tick(render: _Render) -> None:
    render.ticks += 1
    if render.ticks & 15 == 0:
        _check_clock(render)


def _check_clock(render: _Render) -> None:
    now = time.monotonic()
    if not render.deadline:
        render.deadline = now + MAX_RENDER_SECONDS
    elif now > render.deadline:
        raise RenderLimitError(
            f"the render ran longer than {MAX_RENDER_SECONDS:g} s, the time one render may take",
            "time",
        )


def iterate(iterable: Iterable[_T]) -> Iterator[_T]:
    """A ``{% for %}`` loop's iterable, ticking at every item."""
    render = _CURRENT.get()
    if render is None:
        yield from iterable
        return
    for item in iterable:
        _tick(render)
        yield item


# Strings shorter than this are not counted against the render's memory: only a container
# can keep many of them, and a container counts their length (see measure).
SHORT = 1024


def built(value: _T) -> _T:
    """Account for a value an operation just built: refuse it when it is too large, and
    add its size to the render's memory budget."""
    kind = type(value)
    if kind is str or kind is bytes or kind is bytearray:
        length = len(value)  # type: ignore[arg-type]
        if length < SHORT:
            return value
        check_size(length, "the value")
    elif isinstance(value, _CONTAINERS):
        measure(value)  # refuses a value too large when printed
    elif kind is int:
        check_bits(value.bit_length(), "the number")  # type: ignore[attr-defined]
    elif isinstance(value, _TEXTS):  # a str subclass (Markup)
        check_size(len(value), "the value")
    else:
        return value
    render = _CURRENT.get()
    if render is not None:
        render.built += sys.getsizeof(value)
        if render.built > MAX_RENDER_BYTES:
            raise RenderLimitError(
                f"the render built more than {MAX_RENDER_BYTES // 1_000_000:,} MB of "
                "values, the memory one render may use",
                "memory",
            )
    return value


def _leaf(value: Any) -> int:
    """Printed size of something that is not a container (an upper bound for numbers)."""
    if isinstance(value, _TEXTS):
        return len(value) + 2  # quotes
    if type(value) is int:
        return value.bit_length() * 30103 // 100_000 + 2  # decimal digits
    return 24  # a float, None, a bool, a date: at most this long printed


# Values of up to this many items are measured on the spot (not remembered): most values
# a prompt prints are small, and remembering costs more than measuring them again.
_SMALL = 64


def _small(root: Any) -> tuple[int, int, int] | None:
    """(size, items, depth) of a small value, or None once it has more than _SMALL items
    or nests deeper than 16 (then it is measured the long way). Measures the tree as
    written (a part used twice counts twice), in one pass without recursion."""
    size = items = deepest = 0
    budget = _SMALL
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, _CONTAINERS):
            size += _leaf(value) + 2
            items += 1
            continue
        children = _children(value)
        budget -= len(children) + 1
        if budget < 0 or depth > 16:
            return None
        size += 4
        items += 1
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return size, items, deepest


def measure(root: Any) -> tuple[int, int, int]:
    """(size when printed, items, depth) of a value, counting shared parts once per use,
    without printing it. Containers are measured once per render (their sizes are kept),
    so a value built from measured parts costs only its own length; a value larger than
    the limit is refused as soon as that is known."""
    if not isinstance(root, _CONTAINERS):
        return _leaf(root), 1, 0
    quick = _small(root)
    if quick is not None:
        check_size(quick[0], "the value")
        return quick
    render = _CURRENT.get()
    sizes: dict[int, tuple[Any, int, int, int]] = render.sizes if render else {}
    found = sizes.get(id(root))
    if found is not None:
        return found[1:]
    # Depth first, without recursion (a value may nest deeper than Python's stack):
    # a node is expanded once, then measured from its children's sizes.
    expanding: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, ready = stack.pop()
        key = id(node)
        if not ready:
            if key in sizes:
                continue  # met twice in one value, measured the first time
            if key in expanding:
                raise RenderLimitError("the value contains itself", "size")
            expanding.add(key)
            stack.append((node, True))
            stack.extend(
                (child, False)
                for child in _children(node)
                if isinstance(child, _CONTAINERS) and id(child) not in sizes
            )
            continue
        size, items, depth = 2, 1, 0
        for child in _children(node):
            entry = sizes.get(id(child)) if isinstance(child, _CONTAINERS) else None
            if entry is not None:
                size += entry[1] + 2
                items += entry[2]
                depth = max(depth, entry[3] + 1)
            else:
                size += _leaf(child) + 2
                items += 1
                depth = max(depth, 1)
        check_size(size, "the value")
        sizes[key] = (node, size, items, depth)
        expanding.discard(key)
    return sizes[id(root)][1:]


def _children(node: Any) -> Any:
    if isinstance(node, dict):
        return [x for pair in node.items() for x in pair]
    return node


def text_size(value: Any, *, indent: int = 0) -> int:
    """An upper bound (escapes aside) of ``value`` printed as JSON or Python text, with
    ``indent`` characters per nesting level on each item's own line when indent > 0."""
    if isinstance(value, _TEXTS):
        return len(value)
    size, items, depth = measure(value)
    return size + items * depth * indent if indent else size


def check_text(value: Any, what: str, *, indent: int = 0) -> None:
    """Refuse to print ``value`` when its text would be too large."""
    check_size(text_size(value, indent=indent), what)
