"""Exact token counts for short texts without building tiktoken's encoder.

Building a tiktoken ``Encoding`` costs about 0.2-0.3 s (its Rust side indexes ~200k
ranks), more than ``flowgpt estimate`` may spend in total. Counting a few prompts needs far
less: split the text with the encoding's own regex, look each piece up in its ranks, and
byte-pair-merge the rare pieces that are not a single token. That is tiktoken's algorithm
(the reference Python version in ``tiktoken/_educational.py``: always merge the adjacent
pair with the lowest rank, the leftmost on ties), so counts are identical;
tests/test_tokens.py checks that over random and real texts.

``tokens.py`` decides when to use this (short texts, before the real encoder exists).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PureCounter"]


class PureCounter:
    """Counts tokens like ``len(encoding.encode_ordinary(text))``."""

    def __init__(self, pat_str: str, mergeable_ranks: Mapping[bytes, int]) -> None:
        import regex  # tiktoken's own dependency; its patterns need \\p{...} classes

        self._findall: Callable[[str], list[Any]] = regex.compile(pat_str).findall
        self._ranks = mergeable_ranks

    def count(self, text: str) -> int:
        ranks = self._ranks
        total = 0
        for piece in self._findall(text):
            data = piece.encode("utf-8")
            total += 1 if data in ranks else _merged_length(ranks, data)
        return total


def _merged_length(ranks: Mapping[bytes, int], data: bytes) -> int:
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
