"""The request one chat turn sends, and the history trimmed to fit it (``ChatHistory``).

A request is the system prompt, the pinned messages, the turns kept so far and the new
user message. It must fit the model's context window minus ``max_tokens``, and
``max_history_tokens`` when that is set: whole turns are dropped, oldest first, until it
does, and when even the fixed part and the new message do not fit the turn is refused
with :class:`~flowgpt.errors.ContextWindowError` before anything is sent. A dropped turn
stays dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flowgpt.accounting.tokens import context_window, count_tokens
from flowgpt.errors import ContextWindowError
from flowgpt.providers.base import ChatRequest, Message

__all__ = ["ChatHistory", "ChatRequestPlan"]

# count_tokens(): 3 tokens prime the reply, on top of every message's own tokens.
_PRIMING = 3


@dataclass
class _Kept:
    number: int  # the turn's number
    user: Message
    assistant: Message
    tokens: int  # both messages, framing included


@dataclass(frozen=True)
class ChatRequestPlan:
    """What a turn will send: the request, its prompt tokens, and the earlier turns left
    out to make it fit (``keep`` makes that final once the turn is answered)."""

    request: ChatRequest
    prompt_tokens: int
    first_kept: int  # index of the oldest kept turn the request holds
    dropped: tuple[int, ...]  # numbers of the turns dropped for this request


class ChatHistory:
    """The conversation so far and the request settings of a chat."""

    def __init__(
        self,
        *,
        model: str,
        system: str | None,
        pinned: Sequence[Message],
        max_tokens: int | None,
        temperature: float | None,
        settings: Mapping[str, Any],
        max_history_tokens: int | None,
        window_override: int | None,
    ) -> None:
        self.model = model
        self.system = system
        self.pinned: list[Message] = [Message(**m) for m in pinned]
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.settings: dict[str, Any] = {k: v for k, v in settings.items() if v is not None}
        self.max_history_tokens = max_history_tokens
        self.window_override = window_override
        self._kept: list[_Kept] = []
        self._first_kept = 0

    @property
    def messages(self) -> list[Message]:
        """The turns the next request will start from (dropped ones left out)."""
        out: list[Message] = []
        for kept in self._kept[self._first_kept :]:
            out += [kept.user, kept.assistant]
        return out

    def window(self) -> int | None:
        return context_window(self.model, self.window_override)

    def limit(self) -> tuple[int | None, str]:
        """Most prompt tokens a request may have, and why ("window" or "history"): the
        context window minus max_tokens, or max_history_tokens when smaller; None when the
        window is unknown and no max_history_tokens is set (then nothing is trimmed)."""
        window = self.window()
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

    def fixed(self) -> list[Message]:
        """The messages every request starts with: the system prompt and pinned ones."""
        fixed: list[Message] = []
        if self.system is not None:
            fixed.append(Message(role="system", content=self.system))
        return fixed + self.pinned

    def plan(self, number: int, user: Message) -> ChatRequestPlan:
        """The request for turn ``number``, trimmed to fit; raises ContextWindowError when
        even the fixed messages and ``user`` do not fit."""
        fixed = self.fixed()
        base = _PRIMING + sum(self._tokens(m) for m in fixed) + self._tokens(user)
        first = self._first_kept
        kept_tokens = sum(k.tokens for k in self._kept[first:])
        limit, why = self.limit()
        if limit is not None:
            if base > limit:
                raise self._too_long(number, base, limit, why, bool(fixed))
            while base + kept_tokens > limit:
                kept_tokens -= self._kept[first].tokens
                first += 1
        messages = list(fixed)
        for kept in self._kept[first:]:
            messages += [kept.user, kept.assistant]
        messages.append(user)
        request = ChatRequest(
            model=self.model,
            messages=messages,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            **self.settings,
        )
        dropped = tuple(k.number for k in self._kept[self._first_kept : first])
        return ChatRequestPlan(request, base + kept_tokens, first, dropped)

    def keep(self, plan: ChatRequestPlan, number: int, user: Message, reply: str) -> None:
        """Turn ``number`` was answered: its drops become final and it joins the history."""
        assistant = Message(role="assistant", content=reply)
        self._first_kept = plan.first_kept
        tokens = self._tokens(user) + self._tokens(assistant)
        self._kept.append(_Kept(number, user, assistant, tokens))

    def _tokens(self, message: Message) -> int:
        return count_tokens([message], self.model) - _PRIMING

    def _too_long(
        self, number: int, tokens: int, limit: int, why: str, has_fixed: bool
    ) -> ContextWindowError:
        what = "the system prompt and your message take" if has_fixed else "your message takes"
        if why == "history":
            return ContextWindowError(
                f"turn {number}: {what} {tokens:,} tokens, more than max_history_tokens "
                f"({limit:,}), so nothing was sent",
                hint="shorten the message, or raise max_history_tokens",
                step=f"turn-{number}",
                code="chat_history",
            )
        return ContextWindowError(
            f"turn {number}: {what} {tokens:,} tokens; with max_tokens "
            f"{self.max_tokens or 0:,} for the reply that does not fit {self.model}'s "
            f"context window of {self.window() or 0:,} tokens, so nothing was sent",
            hint="shorten the message, lower max_tokens, or use a model with a larger window",
            step=f"turn-{number}",
            code="chat_window",
        )
