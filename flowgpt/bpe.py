"""Exact token counts for short texts without building tiktoken's encoder.

Building a tiktoken ``Encoding`` costs about 0.2-0.3 s (its Rust side indexes ~200k
ranks), more than ``flowgpt estimate`` may spend in total. Counting a few prompts needs far
less: split the text with the encoding's own regex, look each piece up in its ranks, and
byte-pair-merge the rare pieces that are not a single token. That is tiktoken's algorithm
(the reference Python version in ``tiktoken/_educational.py``: always merge the adjacent
pair with the lowest rank, the leftmost on ties), so counts are identical;
tests/test_tokens.py checks that over random and real texts.

``tokens.py`` decides when to use this (short texts, before the real encoder exists).

The ranks themselves (~200k entries) take ~0.07 s to unmarshal, a good part of what is left
of an estimate's time, and a few hundred lookups are all it needs: so they are also kept in
a small SQLite file (``RanksFile``) that answers each lookup from disk in microseconds.
"""

from __future__ import annotations

import os
import sqlite3
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["PureCounter", "Ranks", "RanksFile", "write_ranks_file"]


class Ranks(Protocol):
    """What counting needs of an encoding's ranks (a dict has it)."""

    def __contains__(self, key: object, /) -> bool: ...

    def get(self, key: bytes, /) -> int | None: ...


class PureCounter:
    """Counts tokens like ``len(encoding.encode_ordinary(text))``."""

    def __init__(self, pat_str: str, mergeable_ranks: Mapping[bytes, int] | Ranks) -> None:
        import regex  # tiktoken's own dependency; its patterns need \\p{...} classes

        self._findall: Callable[[str], list[Any]] = regex.compile(pat_str).findall
        self._ranks = mergeable_ranks

    @staticmethod
    def agrees_on(text: str) -> bool:
        """Whether this counter is sure to split ``text`` as tiktoken does.

        Not when the text has a character this Python's Unicode database does not know
        (``Cn``): the ``regex`` module's tables are newer than tiktoken's Rust regex, so
        they may disagree on whether it is a letter (U+3D000 is one to ``regex`` 2026, not
        to tiktoken 0.12), and the pieces, hence the count, would differ. Characters older
        than this Python's Unicode version are classified alike by both.
        """
        return text.isascii() or all(unicodedata.category(c) != "Cn" for c in set(text))

    def count(self, text: str) -> int:
        """Tokens in ``text``; exact when :meth:`agrees_on` says so."""
        ranks = self._ranks
        total = 0
        for piece in self._findall(text):
            data = piece.encode("utf-8")
            total += 1 if data in ranks else _merged_length(ranks, data)
        return total


def _merged_length(ranks: Mapping[bytes, int] | Ranks, data: bytes) -> int:
    """How many tokens byte-pair merging leaves of ``data``."""
    parts = [data[i : i + 1] for i in range(len(data))]
    get = ranks.get
    while len(parts) > 1:
        best_rank: int | None = None
        best = -1
        for i in range(len(parts) - 1):
            rank = get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best = rank, i
        if best_rank is None:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return len(parts)


class RanksFile:
    """An encoding's ranks in a read-only SQLite file, looked up one piece at a time."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'pat_str'").fetchone()
        self.pat_str: str = row[0]
        self._seen: dict[bytes, int | None] = {}

    def get(self, key: bytes, /) -> int | None:
        try:
            return self._seen[key]
        except KeyError:
            row = self._db.execute("SELECT rank FROM ranks WHERE piece = ?", (key,)).fetchone()
            rank = self._seen[key] = None if row is None else int(row[0])
            return rank

    def __contains__(self, key: object, /) -> bool:
        return isinstance(key, bytes) and self.get(key) is not None


def write_ranks_file(path: str, pat_str: str, ranks: Mapping[bytes, int]) -> None:
    """Write ``RanksFile``'s file, atomically (a reader never sees half of one)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        db = sqlite3.connect(tmp)
        try:
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            db.execute("CREATE TABLE ranks (piece BLOB PRIMARY KEY, rank INTEGER) WITHOUT ROWID")
            db.execute("INSERT INTO meta VALUES ('pat_str', ?)", (pat_str,))
            db.executemany("INSERT INTO ranks VALUES (?, ?)", ranks.items())
            db.commit()
        finally:
            db.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
