"""The request one chat turn sends, and the history trimmed to fit it.

A request is the system prompt, the pinned messages, the turns kept so far and the new
user message. It must fit the model's context window minus ``max_tokens``, and
``max_history_tokens`` when that is set: whole turns are dropped, oldest first, until it
does, and when even the fixed part and the new message do not fit the turn is refused
with :class:`~flowgpt.errors.ContextWindowError` before anything is sent.

:class:`_ChatHistory` is that part of :class:`flowgpt.chat.ChatSession`, which sets the
attributes it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowgpt.errors import ContextWindowError
from flowgpt.providers.base import ChatRequest, Message

if TYPE_CHECKING:
    from flowgpt.spec.models import PriceSpec

# count_tokens(): 3 tokens prime the reply, on top of every message's own tokens.
_PRIMING = 3


@dataclass
class _Kept:
    user: Message
    assistant: Message
    tokens: int  # both messages, framing included


class _ChatHistory:
    """Builds a turn's request from the session's settings and kept turns (the base of
    :class:`flowgpt.chat.ChatSession`, whose ``__init__`` sets these)."""

    _model: str
    system: str | None
    pinned: list[Message]
    max_tokens: int | None
    temperature: float | None
    settings: dict[str, Any]
    max_history_tokens: int | None
    pricing: dict[str, PriceSpec]
    _kept: list[_Kept]
    _first_kept: int

    def _window(self) -> int | None:
        from flowgpt.accounting.tokens import context_window

        override = self.pricing.get(self._model)
        return context_window(self._model, override.context_window if override else None)

    def _limit(self) -> tuple[int | None, str]:
        window = self._window()
        limit: int | None = None
        why = ""
        if window is not None:
            limit = window - (self.max_tokens or 0)
            why = "window"
        if self.max_history_tokens is not None and (
            limit is None or self.max_history_tokens < limit
        ):
            limit, why = self.max_history_tokens, "history"
        return limit, why

    def _tokens(self, message: Message) -> int:
        from flowgpt.accounting.tokens import count_tokens

        return count_tokens([message], self._model) - _PRIMING

    def _fixed(self) -> list[Message]:
        fixed: list[Message] = []
        if self.system is not None:
            fixed.append(Message(role="system", content=self.system))
        return fixed + self.pinned

    def _build(self, number: int, user: Message) -> tuple[ChatRequest, int, int]:
        """The request for this turn, the index of the first kept turn, its prompt tokens."""
        fixed = self._fixed()
        base = _PRIMING + sum(self._tokens(m) for m in fixed) + self._tokens(user)
        first = self._first_kept
        kept_tokens = sum(k.tokens for k in self._kept[first:])
        limit, why = self._limit()
        if limit is not None:
            if base > limit:
                raise self._too_long(number, base, limit, why)
            while base + kept_tokens > limit:
                kept_tokens -= self._kept[first].tokens
                first += 1
        messages = list(fixed)
        for kept in self._kept[first:]:
            messages += [kept.user, kept.assistant]
        messages.append(user)
        request = ChatRequest(
            model=self._model,
            messages=messages,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            **self.settings,
        )
        return request, first, base + kept_tokens

    def _too_long(self, number: int, tokens: int, limit: int, why: str) -> ContextWindowError:
        what = "your message" if not self._fixed() else "the system prompt and your message"
        if why == "history":
            return ContextWindowError(
                f"turn {number}: {what} take {tokens:,} tokens, more than max_history_tokens "
                f"({limit:,}), so nothing was sent",
                hint="shorten the message, or raise max_history_tokens (--max-history-tokens)",
                step=f"turn-{number}",
            )
        window = self._window() or 0
        return ContextWindowError(
            f"turn {number}: {what} take {tokens:,} tokens; with max_tokens "
            f"{self.max_tokens or 0:,} for the reply that does not fit {self._model}'s "
            f"context window of {window:,} tokens, so nothing was sent",
            hint="shorten the message, lower max_tokens (--max-tokens), or use a model with "
            "a larger window",
            step=f"turn-{number}",
        )
