"""What rate limits are made of, shared by the request limiter, the providers that report
to it and the displays that show it: how a request counts against a model's limits
(``model_family``, ``request_tokens``), what a limit's name counts (``limit_kind``), what
a reply's headers tell (``AccountLimits``), what holds requests back (``RateLimitHold``),
the counts for a summary (``RateLimitStats``), the end of waiting (``WaitCapReached``),
and the bucket that paces requests to a rate (``TokenBucket``)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Literal

from flowgpt.providers.base import ChatRequest

__all__ = [
    "AccountLimits",
    "RateLimitHold",
    "RateLimitStats",
    "TokenBucket",
    "WaitCapReached",
    "limit_kind",
    "model_family",
    "request_tokens",
]

_DATED_RE = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def model_family(model: str) -> str:
    """The model whose rate limits a request counts against: dated snapshots and
    fine-tunes share their base model's (``ft:gpt-4o-mini-2024-07-18:org::id`` ->
    ``gpt-4o-mini``)."""
    if model.startswith("ft:"):
        model = model[3:].split(":", 1)[0]
    return _DATED_RE.sub("", model)


def limit_kind(limit: str) -> Literal["tokens", "requests"]:
    """What a limit, as the API names it ("TPM", "RPM", ...), counts: "tokens" for a
    tokens limit, else "requests"."""
    return "tokens" if limit.startswith("T") else "requests"


def request_tokens(request: ChatRequest) -> int:
    """What a request counts against a tokens-per-minute limit, the way OpenAI counts it:
    the larger of ``max_tokens`` and the prompt's size estimated from its characters
    (four to a token). This is the API's rate-limit estimate, not the tokens billed
    (those are counted exactly); where the API's own estimate is larger, the
    ``remaining`` headers correct the buckets."""
    chars = sum(len(m["content"] or "") + len(m.get("name", "")) for m in request.messages)
    if request.response_format is not None:
        chars += len(json.dumps(request.response_format))
    return max(request.max_tokens or 0, -(-chars // 4))


@dataclass(frozen=True)
class AccountLimits:
    """What a reply's ``x-ratelimit-*`` headers say about its model's limits: the limits
    per minute and what is left of them."""

    requests: int | None = None
    tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None


@dataclass(frozen=True)
class RateLimitHold:
    """Requests held back by a rate limit.

    ``model``: the model family; ``limit``: which limit ("TPM", "RPM", ... as the API
    names it; None when it did not say); ``per_minute``: that limit, when known;
    ``wait_s``: how long they are held from now on; ``rate_limited``: True while waiting
    out a 429, False while paced below a limit."""

    model: str
    limit: str | None
    per_minute: float | None
    wait_s: float
    rate_limited: bool

    def __str__(self) -> str:
        limit = f"the {self.limit} limit" if self.limit else "a rate limit"
        if self.per_minute is not None:
            unit = limit_kind(self.limit or "")
            limit += f" ({self.per_minute:,.0f} {unit}/min)"
        if self.rate_limited:
            return f"{self.model}: {limit} reached (429), held {self.wait_s:.1f} s"
        return f"{self.model}: paced to {limit}"


@dataclass
class RateLimitStats:
    """Counts kept for a summary: 429s waited out, and the wall-clock seconds requests
    were held for them (overlapping holds counted once per model family)."""

    rate_limited: int = 0
    waited_s: float = 0.0


class WaitCapReached(Exception):
    """Waiting out a rate limit would go past the wait cap: ``asked_s`` is the wait the
    API asked for, ``limited_s`` how long the model family has been refused already."""

    def __init__(self, asked_s: float, limited_s: float, cap_s: float) -> None:
        super().__init__(f"a wait of {asked_s:g} s after {limited_s:g} s passes {cap_s:g} s")
        self.asked_s = asked_s
        self.limited_s = limited_s
        self.cap_s = cap_s


class TokenBucket:
    """A token bucket: ``per_minute`` units per minute, holding at most one second's, so
    that what it lets through is spread evenly. ``factor`` (0-1] slows it down."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60
        self.capacity = self.level = max(1.0, self.rate)
        self.stamp = time.monotonic()

    def set(self, per_minute: float) -> None:
        self.rate = per_minute / 60
        self.capacity = max(1.0, self.rate)
        self.level = min(self.level, self.capacity)

    def wait_for(self, amount: float, factor: float, now: float) -> float:
        """Seconds until ``amount`` can be taken (0 when it can be now)."""
        rate = self.rate * factor
        cap = max(1.0, self.capacity * factor)
        self.level = min(cap, self.level + (now - self.stamp) * rate)
        self.stamp = now
        need = min(amount, cap)  # a request larger than the bucket goes when it is full
        return 0.0 if self.level >= need else (need - self.level) / rate

    def correct(self, server_deficit: float, now: float) -> None:
        """Lower the level to what the API has left when it has less than counted here."""
        self.wait_for(0, 1.0, now)
        self.level = min(self.level, self.capacity - server_deficit)
