"""The leaf values of :func:`flowgpt.providers.mock.schema_example.minimal_instance`: strings that
read like data (from the property name, a ``format``, a ``pattern``, fitted to the length
bounds) and the numbers to try within a schema's bounds and ``multipleOf``.

:class:`_Unsatisfiable` (no value fits a subschema) lives here, below the generator that
also raises it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from flowgpt.providers.mock.pattern_example import example_for_pattern


class _Unsatisfiable(Exception):
    pass


# -------------------------------------------------------------------- strings


def _words(hint: str | None) -> str:
    if not hint:
        return "text"
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", hint)
    spaced = re.sub(r"[_\-.]+", " ", spaced).strip().lower()
    return spaced or "text"


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _text(hint: str | None, index: int | None) -> str:
    number = f" {index + 1}" if index is not None else ""
    return f"example {_words(hint)}{number}"


def _format_value(fmt: str, index: int | None) -> str | None:
    i = index or 0
    n = "" if index is None else str(i + 1)
    values = {
        "email": f"user{n}@example.com",
        "idn-email": f"user{n}@example.com",
        "date": f"2024-01-{i % 28 + 1:02d}",
        "date-time": f"2024-01-{i % 28 + 1:02d}T12:00:00Z",
        "time": "12:00:00Z",
        "duration": f"P{i + 1}D",
        "uri": f"https://example.com/{n}",
        "uri-reference": f"https://example.com/{n}",
        "iri": f"https://example.com/{n}",
        "iri-reference": f"https://example.com/{n}",
        "url": f"https://example.com/{n}",
        "uri-template": "https://example.com/{id}",
        "hostname": f"host{n}.example.com",
        "idn-hostname": f"host{n}.example.com",
        "ipv4": f"192.0.2.{i % 254 + 1}",
        "ipv6": f"2001:db8::{i + 1:x}",
        "uuid": f"00000000-0000-4000-8000-{i:012d}",
        "json-pointer": f"/example{n}",
        "relative-json-pointer": str(i),
        "regex": "^example$",
    }
    return values.get(fmt)


def _fit_length(text: str, min_len: int, max_len: int | None) -> str:
    while len(text) < min_len:
        text += " example text"
    if max_len is not None and len(text) > max_len:
        text = text[:max_len]
        if text.endswith(" "):
            text = text[:-1] + "x"
    return text


def _make_string(schema: Mapping[str, Any], hint: str | None, index: int | None) -> str:
    min_len = int(schema.get("minLength", 0))
    max_len = int(schema["maxLength"]) if "maxLength" in schema else None
    fmt = schema.get("format")
    if isinstance(fmt, str):
        value = _format_value(fmt, index)
        if value is not None:
            return value
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        preferred = [_text(hint, index), _words(hint), str(hint or ""), "example"]
        found = example_for_pattern(pattern, min_len, max_len, preferred=preferred)
        if found is None:
            raise _Unsatisfiable(f"no example found for the pattern {pattern!r}")
        return found
    return _fit_length(_text(hint, index), min_len, max_len)


# -------------------------------------------------------------------- numbers


def _number_candidates(schema: Mapping[str, Any], index: int) -> Iterator[float | int]:
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    ex_lo = schema.get("exclusiveMinimum")
    ex_hi = schema.get("exclusiveMaximum")
    step = schema.get("multipleOf")
    lows = [v for v in (lo, ex_lo) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    highs = [v for v in (hi, ex_hi) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    low = max(lows) if lows else None
    high = min(highs) if highs else None

    start: float
    if low is None:
        start = 0 if high is None else min(0, high)
    elif high is None:
        start = max(0, low)
    else:
        start = 0 if low <= 0 <= high else low

    if isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0:
        k0 = math.ceil(start / step)
        ks = [k for d in range(500) for k in (k0 + index + d, k0 - 1 - d)]
        for k in ks:
            value = k * step
            if isinstance(value, float):
                yield round(value, 12)
            yield value
        return
    yield start + index
    yield math.ceil(start) + index
    yield math.floor(start) + 1 + index
    if low is not None:
        yield low + 1
        yield math.floor(low) + 1
    if high is not None:
        yield high - 1
        yield math.ceil(high) - 1
    if low is not None and high is not None:
        yield (low + high) / 2
        yield math.floor((low + high) / 2)
