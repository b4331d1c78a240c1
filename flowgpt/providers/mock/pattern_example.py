"""A string that matches a regular expression: a JSON Schema ``pattern`` (and a
``patternProperties`` key) for :mod:`flowgpt.providers.mock.schema_example`.

:func:`example_for_pattern` tries the preferred strings first, then one written by
:class:`_PatternWriter` (a small regex walker: literals, classes, groups, the first
branch of an alternation, quantifiers repeated a little more each try), then a few stock
strings; every candidate is checked with :mod:`re`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

__all__ = ["example_for_pattern"]


def example_for_pattern(
    pattern: str,
    min_len: int = 0,
    max_len: int | None = None,
    *,
    preferred: list[str] | None = None,
) -> str | None:
    """A string matching ``pattern`` (searched, as JSON Schema does), or None."""
    try:
        compiled = re.compile(pattern)
    except re.error:
        return None

    def fits(text: str) -> bool:
        if len(text) < min_len or (max_len is not None and len(text) > max_len):
            return False
        return compiled.search(text) is not None

    for text in preferred or []:
        if text and fits(text):
            return text
    for extra in (0, 1, 2, 3, 5, 8, 13, 21, 34, max(min_len, 1)):
        try:
            text = _PatternWriter(pattern, extra).write()
        except _Unsupported:
            break
        if fits(text):
            return text
    for text in ("a", "A", "0", "example", "abc123", "x" * max(min_len, 1)):
        if fits(text):
            return text
    return None


class _Unsupported(Exception):
    pass


class _PatternWriter:
    """Writes one string matching a simple regular expression: literals, classes, groups,
    alternation (first branch), the usual quantifiers and escapes; no lookaround."""

    _CLASS_ESCAPES: ClassVar[dict[str, str]] = {
        "d": "0",
        "w": "a",
        "s": " ",
        "D": "a",
        "W": "-",
        "S": "a",
    }
    _PREFERRED = "aexnA0"

    def __init__(self, pattern: str, extra: int) -> None:
        self.p = pattern
        self.i = 0
        self.extra = extra

    def write(self) -> str:
        text = self.alternation()
        if self.i != len(self.p):
            raise _Unsupported
        return text

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def alternation(self) -> str:
        first = self.sequence()
        while self.peek() == "|":
            self.i += 1
            self.sequence()  # parsed for position only; the first branch is used
        return first

    def sequence(self) -> str:
        parts: list[str] = []
        while self.i < len(self.p) and self.peek() not in "|)":
            parts.append(self.quantified(self.atom()))
        return "".join(parts)

    def atom(self) -> str:
        c = self.peek()
        self.i += 1
        if c in "^$":
            return ""
        if c == ".":
            return "a"
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.p.startswith(("?P<", "?<"), self.i) and not self.p.startswith(
                ("?<=", "?<!"), self.i
            ):
                end = self.p.find(">", self.i)
                if end < 0:
                    raise _Unsupported
                self.i = end + 1
            elif self.peek() == "?":
                raise _Unsupported  # lookaround, flags
            inner = self.alternation()
            if self.peek() != ")":
                raise _Unsupported
            self.i += 1
            return inner
        if c == "[":
            return self.char_class()
        if c == "\\":
            return self.escape(in_class=False)
        return c

    def escape(self, *, in_class: bool) -> str:
        c = self.peek()
        if not c:
            raise _Unsupported
        self.i += 1
        if c in self._CLASS_ESCAPES:
            return self._CLASS_ESCAPES[c]
        if c in "bB" and not in_class:
            return ""
        if c == "n":
            return "\n"
        if c == "t":
            return "\t"
        if c in "ux":
            width = 4 if c == "u" else 2
            digits = self.p[self.i : self.i + width]
            if len(digits) != width or not all(ch in "0123456789abcdefABCDEF" for ch in digits):
                raise _Unsupported
            self.i += width
            return chr(int(digits, 16))
        if c.isdigit() or c in "pPkAZz":
            raise _Unsupported  # backreferences, unicode properties, anchors we do not model
        return c

    def char_class(self) -> str:
        start = self.i - 1
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        members: list[tuple[str, str]] = []
        first = True
        while True:
            c = self.peek()
            if not c:
                raise _Unsupported
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            self.i += 1
            low = self.escape(in_class=True) if c == "\\" else c
            if self.peek() == "-" and self.p[self.i + 1 : self.i + 2] not in ("]", ""):
                self.i += 1
                d = self.peek()
                self.i += 1
                high = self.escape(in_class=True) if d == "\\" else d
                members.append((low, high))
            else:
                members.append((low, low))
        text = self.p[start : self.i]
        try:
            cls = re.compile(text)
        except re.error as exc:
            raise _Unsupported from exc
        for ch in self._candidates(members, negated):
            if cls.fullmatch(ch):
                return ch
        raise _Unsupported

    def _candidates(self, members: list[tuple[str, str]], negated: bool) -> Iterator[str]:
        yield from self._PREFERRED
        if not negated:
            for low, high in members:
                if low:
                    yield low[0]
                if high:
                    yield high[0]
        yield from "bcdz19-_ .,"

    def quantified(self, atom: str) -> str:
        c = self.peek()
        low: int
        high: int | None
        if c == "*":
            low, high = 0, None
            self.i += 1
        elif c == "+":
            low, high = 1, None
            self.i += 1
        elif c == "?":
            low, high = 0, 1
            self.i += 1
        elif c == "{":
            m = re.compile(r"\{(\d+)(,(\d*))?\}").match(self.p, self.i)
            if m is None:
                return atom  # a literal brace
            low = int(m.group(1))
            high = low if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
            self.i = m.end()
        else:
            return atom
        if self.peek() in ("?", "+"):
            self.i += 1  # lazy / possessive: same strings
        count = low + self.extra if high is None else min(high, low + self.extra)
        return atom * count
