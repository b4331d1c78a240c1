"""The request limiter every call of an engine goes through: requests in flight, requests
per minute and tokens per minute, and an adaptive slowdown while the API answers 429.

One limiter is shared by everything an engine runs against one provider at once (the rows
of a batch, the items of a ``for_each`` step), so the limits hold for the whole process,
not per run.

The rate limits are token buckets that refill continuously and hold at most one second's
worth, so requests are spread evenly instead of sent in a burst at the top of each minute
(the API enforces its per-minute limits over shorter windows too). A request larger than a
bucket still goes when the bucket is full, leaving a debt later requests wait out.

Adaptive slowdown (additive increase, multiplicative decrease): each 429 halves the
allowed concurrency and rates (down to 1/32) and holds new requests until its
``Retry-After`` has passed; each success gives back 1/16 of the full rate.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from types import TracebackType

__all__ = ["RequestLimiter", "note_rate_limited"]

_MIN_FACTOR = 1 / 32
_RECOVERY_STEP = 1 / 16
# When a 429 gives no Retry-After: hold new requests this long.
_DEFAULT_PAUSE_S = 1.0
_MAX_PAUSE_S = 60.0


class _Bucket:
    """A token bucket: ``rate_per_min`` units per minute, holding at most one second's."""

    def __init__(self, rate_per_min: float) -> None:
        self.rate_per_min = rate_per_min
        self.level = self.capacity(1.0)
        self.stamp = time.monotonic()

    def capacity(self, factor: float) -> float:
        return max(1.0, self.rate_per_min * factor / 60)

    def wait_for(self, amount: float, factor: float) -> float:
        """Seconds until ``amount`` can be taken (0 when it can be now)."""
        now = time.monotonic()
        rate = self.rate_per_min * factor / 60
        cap = self.capacity(factor)
        self.level = min(cap, self.level + (now - self.stamp) * rate)
        self.stamp = now
        need = min(amount, cap)  # a request larger than the bucket goes when it is full
        return 0.0 if self.level >= need else (need - self.level) / rate

    def take(self, amount: float) -> None:
        self.level -= amount


class RequestLimiter:
    """Admits requests within ``concurrency`` in flight and the optional ``rpm``/``tpm``."""

    def __init__(
        self, concurrency: int, *, rpm: float | None = None, tpm: float | None = None
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.factor = 1.0  # lowered by 429s, restored by successes
        self.in_flight = 0
        self.rate_limited = 0  # 429 responses seen (including ones the SDK retried)
        self._paused_until = 0.0
        self._requests = _Bucket(rpm) if rpm else None
        self._tokens = _Bucket(tpm) if tpm else None
        self._wakeup = asyncio.Event()
        self._waiting = 0

    @property
    def counts_tokens(self) -> bool:
        """Whether callers must say how many tokens a request may use."""
        return self._tokens is not None

    @property
    def allowed(self) -> int:
        """Requests allowed in flight now (lower than ``concurrency`` after 429s)."""
        return max(1, math.floor(self.concurrency * self.factor))

    def _delay(self, tokens: int) -> float:
        """Seconds to wait before a request may start; 0 when it may start now."""
        now = time.monotonic()
        if now < self._paused_until:
            return self._paused_until - now
        if self.in_flight >= self.allowed:
            return math.inf  # woken by a finishing request
        wait = 0.0
        if self._requests is not None:
            wait = max(wait, self._requests.wait_for(1, self.factor))
        if self._tokens is not None:
            wait = max(wait, self._tokens.wait_for(tokens, self.factor))
        return wait

    def slot(self, tokens: int = 0) -> _Slot:
        """Hold one request's place (``async with limiter.slot(tokens):``); ``tokens`` is
        its worst case (prompt + max_tokens)."""
        return _Slot(self, tokens)

    async def _acquire(self, tokens: int) -> None:
        while True:
            delay = self._delay(tokens)
            if delay <= 0:
                break
            # Woken early when a request finishes (a place in flight may be free).
            wakeup = self._wakeup
            self._waiting += 1
            try:
                await asyncio.wait_for(wakeup.wait(), None if delay == math.inf else delay)
            except asyncio.TimeoutError:
                pass
            finally:
                self._waiting -= 1
        if self._requests is not None:
            self._requests.take(1)
        if self._tokens is not None:
            self._tokens.take(tokens)
        self.in_flight += 1

    def _wake(self) -> None:
        if self._waiting:
            self._wakeup.set()
            self._wakeup = asyncio.Event()

    def note_rate_limited(self, retry_after_s: float | None) -> None:
        """A 429 arrived for one of this limiter's requests: slow everyone down."""
        self.rate_limited += 1
        self.factor = max(_MIN_FACTOR, self.factor / 2)
        pause = _DEFAULT_PAUSE_S if retry_after_s is None else retry_after_s
        until = time.monotonic() + min(max(pause, 0.0), _MAX_PAUSE_S)
        self._paused_until = max(self._paused_until, until)


class _Slot:
    """One request's place in a limiter, as an async context manager.

    A plain class rather than ``@asynccontextmanager``: it is entered for every request,
    and a generator-based context manager costs several times as much.
    """

    __slots__ = ("_limiter", "_reset", "_tokens")

    def __init__(self, limiter: RequestLimiter, tokens: int) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._reset: contextvars.Token[RequestLimiter | None] | None = None

    async def __aenter__(self) -> None:
        limiter = self._limiter
        if (
            limiter.in_flight < limiter.allowed
            and limiter._requests is None
            and limiter._tokens is None
            and time.monotonic() >= limiter._paused_until
        ):
            limiter.in_flight += 1  # the common case: no waiting, no bookkeeping
        else:
            await limiter._acquire(self._tokens)
        self._reset = _CURRENT.set(limiter)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        limiter = self._limiter
        if self._reset is not None:
            _CURRENT.reset(self._reset)
            self._reset = None
        limiter.in_flight -= 1
        if exc_type is None and limiter.factor < 1.0:
            limiter.factor = min(1.0, limiter.factor + _RECOVERY_STEP)
        limiter._wake()


_CURRENT: contextvars.ContextVar[RequestLimiter | None] = contextvars.ContextVar(
    "flowgpt_request_limiter", default=None
)


def note_rate_limited(retry_after_s: float | None) -> None:
    """For providers: report a 429 (even one the SDK will retry) to the limiter of the
    request being made, so other requests slow down too."""
    limiter = _CURRENT.get()
    if limiter is not None:
        limiter.note_rate_limited(retry_after_s)
