"""Token usage as the API reports it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Usage"]


@dataclass(frozen=True)
class Usage:
    """Tokens of one call (or a sum of calls).

    ``prompt_tokens`` includes ``cached_tokens``; ``completion_tokens`` includes
    ``reasoning_tokens``, exactly as the Chat Completions API reports them.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    @classmethod
    def total(cls, usages: Iterable[Usage]) -> Usage:
        """The sum of some usages, built once (``a + b + c`` builds one per ``+``)."""
        prompt = completion = cached = reasoning = 0
        for u in usages:
            prompt += u.prompt_tokens
            completion += u.completion_tokens
            cached += u.cached_tokens
            reasoning += u.reasoning_tokens
        return cls(prompt, completion, cached, reasoning)

    def to_dict(self) -> dict[str, int]:
        # A literal, not dataclasses.asdict (which deep-copies): this is on the hot path.
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        return cls(**{k: int(data.get(k) or 0) for k in cls.__dataclass_fields__})
