"""One answered turn of a chat (``ChatTurn``) and the defaults a chat starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from flowgpt.providers.base import Message
from flowgpt.usage import Usage

__all__ = ["DEFAULT_MAX_TOKENS", "DEFAULT_MODEL", "EXIT_WORDS", "SETTINGS", "ChatTurn"]

DEFAULT_MODEL = "gpt-4o-mini"
# Replies are bounded by default: it reserves room for the reply when trimming, and gives
# every turn a known worst case, so cost limits work.
DEFAULT_MAX_TOKENS = 1000
# Typed alone on a line, these end the REPL (ASCII ones in any case).
EXIT_WORDS = frozenset({"exit", "quit", "退出"})
# ChatRequest settings a session may pass besides model, temperature and max_tokens.
SETTINGS = ("top_p", "seed", "stop", "presence_penalty", "frequency_penalty")


@dataclass(frozen=True)
class ChatTurn:
    """One answered turn of a chat."""

    number: int  # 1, 2, ...; a failed turn uses up its number too
    user: str
    text: str  # the reply
    usage: Usage
    cost_usd: Decimal | None  # None: the model is unpriced
    latency_s: float
    model: str
    messages: list[Message] = field(default_factory=list)  # the request, as sent
    finish_reason: str | None = None
    # the numbers of earlier turns dropped from the history to make this one fit
    dropped: tuple[int, ...] = ()
    retries: int = 0  # transport retries the provider took
