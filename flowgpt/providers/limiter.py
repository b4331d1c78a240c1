"""The request limiter every call of an engine goes through.

It holds two kinds of limits:

* **Requests in flight** (``concurrency``), for everything sent through it, first come
  first served.
* **The account's rate limits, per model family**: requests and tokens per minute, learned
  from the ``x-ratelimit-*`` headers of the API's replies (a provider reports them with
  ``note_account_limits``) and capped by the ``rpm``/``tpm`` given; a request counts as
  ``rate_limits.request_tokens`` says. Until the first reply for a model family has told
  its limits, at most 8 of its requests are in flight, so that a batch does not open with
  a burst of 429s; a reply that tells no limits (a local server, the mock) lifts that.

Rates are paced with token buckets (``rate_limits.TokenBucket``: evenly, at most one
second's worth at once, as the API enforces its per-minute limits over short windows). A
learned limit is paced at 98 % of itself, a margin for requests that reach the API a
little bunched. Each reply's ``remaining`` headers correct a bucket down when the account
has less left than counted here (another process on the same key).

A rate-limit 429 is waited out (``wait_out_rate_limit``, called by the provider) for the
wait the API asked for, and the request then takes its place in the buckets again; it
does not use the provider's error retries. A Retry-After holds every request of the
family; without one, the buckets (corrected from the 429's headers) hold the others. A
wait that would end more than ``cap_s`` after the family was first refused (with no
success since) raises ``WaitCapReached``. Where the API tells no limits, each 429 holds
every request of the family and halves the concurrency allowed (down to 1/32); each
success gives back 1/16 (additive increase, multiplicative decrease).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from flowgpt.providers.base import ChatRequest
from flowgpt.providers.rate_limits import (
    AccountLimits,
    RateLimitHold,
    RateLimitStats,
    TokenBucket,
    WaitCapReached,
    limit_kind,
    model_family,
    request_tokens,
)

__all__ = [
    "RequestLimiter",
    "note_account_limits",
    "note_request_sent",
    "wait_out_rate_limit",
    "wants_account_limits",
]

_MIN_FACTOR = 1 / 32
_RECOVERY_STEP = 1 / 16
_MARGIN = 0.98  # learned limits are paced at this fraction of themselves
_DEFAULT_WAIT_S = 1.0  # a 429 that says nothing about how long to wait
_JITTER = 0.1  # a waited-out request goes again up to 10 % after the wait
# Until a reply has told a model family's limits, at most this many of its requests are in
# flight (a provider's default concurrency): enough for a run's parallel steps, few enough
# that a batch does not open with a burst of 429s.
_FIRST_IN_FLIGHT = 8


class _Family:
    """One model family's rate limits and state within a limiter."""

    __slots__ = (
        "held_limit",
        "known",
        "learned",
        "limited",
        "limited_until",
        "name",
        "named",
        "paused_until",
        "probing",
        "requests",
        "sent",
        "streak_since",
        "tokens",
        "waiting",
    )

    def __init__(self, name: str, rpm: float | None, tpm: float | None) -> None:
        self.name = name
        self.requests = TokenBucket(rpm) if rpm else None
        self.tokens = TokenBucket(tpm) if tpm else None
        # None: no reply yet; False: replies tell no limits; True: limits learned.
        self.known: bool | None = None
        self.learned: dict[str, int] = {}  # "requests"/"tokens" -> the limit per minute
        self.named: dict[str, int] = {}  # limits as 429 messages named them ("TPM": 30000)
        self.probing = 0  # requests in flight while the limits are not known yet
        self.paused_until = 0.0  # every request held until then (a 429's Retry-After)
        self.limited_until = 0.0  # some request waits out a 429 until then
        self.limited: str | None = None  # the limit that 429 named
        self.streak_since: float | None = None  # the first 429 since the last success
        self.sent = [0, 0]  # requests and tokens taken so far (to correct from headers)
        self.waiting = 0  # requests held by a rate limit now
        self.held_limit: str | None = None  # the limit that held a request last

    @property
    def free(self) -> bool:
        """No rate limit to count against: only concurrency holds its requests."""
        return self.known is False and self.requests is None and self.tokens is None

    def per_minute(self, limit: str | None) -> float | None:
        """The value of ``limit`` ("TPM", "RPM", ...) when known."""
        if not limit:
            return None
        kind = limit_kind(limit)
        learned = self.learned.get(kind) or self.named.get(limit)
        if learned is not None:
            return float(learned)
        bucket = self.tokens if kind == "tokens" else self.requests
        return None if bucket is None else bucket.rate * 60


class RequestLimiter:
    """Admits requests within ``concurrency`` in flight and each model family's rate
    limits (learned from the API, capped by the optional ``rpm``/``tpm``).

    ``stats`` collects the 429s waited out and the time waited (pass one object to share
    it between limiters); ``on_hold`` is called with a ``RateLimitHold`` for every 429
    waited out."""

    def __init__(
        self,
        concurrency: int,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        stats: RateLimitStats | None = None,
        on_hold: Callable[[RateLimitHold], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.stats = stats if stats is not None else RateLimitStats()
        self.on_hold = on_hold
        self.factor = 1.0  # lowered by 429s where no limits are known, restored by successes
        self.in_flight = 0
        self._families: dict[str, _Family] = {}
        self._by_model: dict[str, _Family] = {}
        # Requests waiting for a place in flight, first come first served: a finishing
        # request wakes one (waking all would cost O(waiting) per request).
        self._places: deque[asyncio.Future[None]] = deque()
        # Set (and replaced) when a family's limits become known: wakes the requests
        # waiting for the first reply.
        self._changed = asyncio.Event()

    @property
    def allowed(self) -> int:
        """Requests allowed in flight now (lower than ``concurrency`` after 429s)."""
        return max(1, math.floor(self.concurrency * self.factor))

    def family(self, model: str) -> _Family:
        found = self._by_model.get(model)
        if found is None:
            name = model_family(model)
            found = self._families.get(name)
            if found is None:
                found = self._families[name] = _Family(name, self.rpm, self.tpm)
            self._by_model[model] = found
        return found

    def limits(self, model: str) -> dict[str, float]:
        """The rates ``model``'s requests are paced to, per minute ("requests",
        "tokens"): the learned limits (at the pacing margin) under the caps given."""
        fam = self.family(model)
        buckets = (("requests", fam.requests), ("tokens", fam.tokens))
        return {kind: bucket.rate * 60 for kind, bucket in buckets if bucket is not None}

    def holds(self) -> list[RateLimitHold]:
        """What holds requests back now, per model family (empty when nothing does)."""
        now = time.monotonic()
        found = []
        for fam in list(self._families.values()):
            if now < fam.limited_until:
                limit = fam.limited
                wait = fam.limited_until - now
                found.append(RateLimitHold(fam.name, limit, fam.per_minute(limit), wait, True))
            elif fam.waiting and fam.held_limit is not None:
                limit = fam.held_limit
                found.append(RateLimitHold(fam.name, limit, fam.per_minute(limit), 0.0, False))
        return found

    def slot(self, request: ChatRequest | None = None) -> _Slot:
        """Hold one request's place (``async with limiter.slot(request):``)."""
        return _Slot(self, self.family(request.model if request is not None else ""), request)

    # -- admission ------------------------------------------------------------------------

    def _delay(self, slot: _Slot, concurrency: bool = True) -> tuple[float, str]:
        """Seconds to wait before ``slot`` may go (0: now), and what holds it: "place" (in
        flight), "first" (the first reply), "rate" (a rate limit or a 429)."""
        fam = slot.family
        if fam.tokens is not None and slot.tokens is None:
            slot.tokens = request_tokens(slot.request) if slot.request is not None else 0
        now = time.monotonic()
        fam.held_limit = None
        if now < fam.paused_until:
            fam.held_limit = fam.limited
            return fam.paused_until - now, "rate"
        if concurrency and (self.in_flight >= self.allowed):
            return math.inf, "place"
        if fam.known is None and fam.probing >= _FIRST_IN_FLIGHT and not slot.probe:
            return math.inf, "first"
        wait = 0.0
        if fam.requests is not None:
            wait = fam.requests.wait_for(1, self.factor, now)
            if wait > 0:
                fam.held_limit = "RPM"
        if fam.tokens is not None:
            tokens_wait = fam.tokens.wait_for(slot.tokens or 0, self.factor, now)
            if tokens_wait > wait:
                wait, fam.held_limit = tokens_wait, "TPM"
        return wait, "rate"

    async def _admit(self, slot: _Slot, concurrency: bool = True) -> None:
        fam = slot.family
        counted = handed = False
        try:
            while True:
                delay, why = self._delay(slot, concurrency)
                if delay <= 0:
                    break
                if handed and why != "place":
                    self._next_place()  # a place it cannot use now goes to the next in line
                handed = False
                if fam.held_limit is not None and not counted:
                    fam.waiting += 1
                    counted = True
                if why == "place":
                    place = asyncio.get_running_loop().create_future()
                    self._places.append(place)
                    try:
                        await place
                    except asyncio.CancelledError:
                        if place.done() and not place.cancelled():
                            self._next_place()
                        else:
                            self._places.remove(place)
                        raise
                    handed = True
                elif why == "first":
                    await self._changed.wait()
                else:
                    await asyncio.sleep(delay)
        finally:
            if counted:
                fam.waiting -= 1
        self._take(slot)

    def _next_place(self) -> None:
        """Wake the first request waiting for a place in flight."""
        while self._places:
            place = self._places.popleft()
            if not place.done():
                place.set_result(None)
                return

    def _take(self, slot: _Slot) -> None:
        fam = slot.family
        if slot.tokens is None:
            # Counted even before a limit needs it: a reply's headers are compared with
            # everything sent since.
            slot.tokens = request_tokens(slot.request) if slot.request is not None else 0
        tokens = slot.tokens
        if fam.requests is not None:
            fam.requests.level -= 1
        if fam.tokens is not None:
            fam.tokens.level -= tokens
        fam.sent[0] += 1
        fam.sent[1] += tokens
        slot.taken = (fam.sent[0], fam.sent[1])
        slot.sent_at = time.monotonic()
        if fam.known is None and fam.requests is None and fam.tokens is None and not slot.probe:
            fam.probing += 1
            slot.probe = True

    def _limits_changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- what the provider reports --------------------------------------------------------

    def _learn(self, slot: _Slot, limits: AccountLimits) -> None:
        fam = slot.family
        changed = fam.known is not True
        fam.known = True
        now = time.monotonic()
        taken = slot.taken
        fam.requests, new_requests = self._learn_limit(
            slot,
            "requests",
            fam.requests,
            limits.requests,
            limits.remaining_requests,
            cap=self.rpm,
            sent_after=None if taken is None else fam.sent[0] - taken[0],
            now=now,
        )
        fam.tokens, new_tokens = self._learn_limit(
            slot,
            "tokens",
            fam.tokens,
            limits.tokens,
            limits.remaining_tokens,
            cap=self.tpm,
            sent_after=None if taken is None else fam.sent[1] - taken[1],
            now=now,
        )
        if changed or new_requests or new_tokens:
            self._limits_changed()

    def _learn_limit(
        self,
        slot: _Slot,
        kind: str,
        bucket: TokenBucket | None,
        limit: int | None,
        remaining: int | None,
        *,
        cap: float | None,
        sent_after: int | None,
        now: float,
    ) -> tuple[TokenBucket | None, bool]:
        """One limit a reply told (``kind``: "requests" or "tokens") and what is left of it:
        ``bucket`` made, or set, to pace it (at the margin, under ``cap``) when the limit is
        new, then corrected down to what the account has left. ``sent_after``: what the
        family sent after this request (None: it was never taken). Returns the bucket and
        whether the limit was new."""
        if not limit or limit <= 0:
            return bucket, False
        fam = slot.family
        new = fam.learned.get(kind) != limit
        if new:
            fam.learned[kind] = limit
            rate = limit * _MARGIN if cap is None else min(cap, limit * _MARGIN)
            if bucket is None:
                bucket = TokenBucket(rate)
            else:
                bucket.set(rate)
        if remaining is not None and bucket is not None and sent_after is not None:
            # What the API had used when it counted this request (sent at sent_at), less
            # what it has refilled since, plus what was sent after it: what it has in use
            # now.
            used = max(0.0, limit - remaining - limit / 60 * (now - slot.sent_at))
            bucket.correct(used + sent_after, now)
        return bucket, new

    async def _hold(
        self,
        slot: _Slot,
        wait_s: float | None,
        *,
        limit: str | None,
        per_minute: int | None,
        retry_after: bool,
        cap_s: float,
        first_at: float,
    ) -> float:
        fam = slot.family
        now = time.monotonic()
        if fam.streak_since is None:
            fam.streak_since = min(first_at, now)
        wait = _capped_wait(wait_s, now, fam.streak_since, cap_s)
        if limit and per_minute:
            fam.named[limit] = per_minute
        until = now + wait
        if retry_after or fam.known is not True:
            # A Retry-After is for every request; and without limits to pace by, holding
            # everyone for the wait is all there is. (With limits, the buckets, corrected
            # from this 429's headers, already hold the others as long as needed.)
            fam.paused_until = max(fam.paused_until, until)
        if fam.known is not True:
            self.factor = max(_MIN_FACTOR, self.factor / 2)  # fewer at once, too
        if until > fam.limited_until:
            self.stats.waited_s += until - max(now, fam.limited_until)
            fam.limited_until = until
            fam.limited = limit
        self.stats.rate_limited += 1
        if self.on_hold is not None:
            self.on_hold(RateLimitHold(fam.name, limit, fam.per_minute(limit), wait, True))
        fam.waiting += 1
        try:
            await _sleep_out(wait)
        finally:
            fam.waiting -= 1
        # Its place in flight is still held; its place in the rate buckets is taken again.
        await self._admit(slot, concurrency=False)
        return time.monotonic() - now


class _Slot:
    """One request's place in a limiter, as an async context manager.

    A plain class rather than ``@asynccontextmanager``: it is entered for every request,
    and a generator-based context manager costs several times as much.
    """

    __slots__ = ("_reset", "family", "limiter", "probe", "request", "sent_at", "taken", "tokens")

    def __init__(self, limiter: RequestLimiter, family: _Family, request: ChatRequest | None):
        self.limiter = limiter
        self.family = family
        self.request = request
        self.tokens: int | None = None  # what it counts against a TPM limit
        self.probe = False  # sent before the family's limits were known
        self.taken: tuple[int, int] | None = None  # the family's sent counts after its own
        self.sent_at = 0.0  # when its last attempt went out
        self._reset: contextvars.Token[_Slot | None] | None = None

    async def __aenter__(self) -> None:
        limiter = self.limiter
        fam = self.family
        if (
            fam.free
            and limiter.in_flight < limiter.allowed
            and not limiter._places
            and time.monotonic() >= fam.paused_until
        ):
            limiter.in_flight += 1  # the common case: no waiting, no bookkeeping
        else:
            await limiter._admit(self)
            limiter.in_flight += 1
        self._reset = _CURRENT.set(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        limiter = self.limiter
        fam = self.family
        if self._reset is not None:
            _CURRENT.reset(self._reset)
            self._reset = None
        limiter.in_flight -= 1
        if self.probe:
            fam.probing -= 1
            if fam.known is None:
                if exc_type is None:
                    fam.known = False  # the reply told no limits: none to learn or wait for
                limiter._limits_changed()  # (after a failure, another request goes first)
        if exc_type is None:
            fam.streak_since = None
            if limiter.factor < 1.0:
                limiter.factor = min(1.0, limiter.factor + _RECOVERY_STEP)
        if limiter._places:
            limiter._next_place()


_CURRENT: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar(
    "flowgpt_request_slot", default=None
)


def note_request_sent() -> None:
    """For providers: the request being made goes out now (each attempt), so that its
    reply's headers are read against the right moment."""
    slot = _CURRENT.get()
    if slot is not None:
        slot.sent_at = time.monotonic()


def wants_account_limits() -> bool:
    """For providers: whether to read a reply's limits for ``note_account_limits`` (not
    once that model's replies have shown they tell none: reading costs a little)."""
    slot = _CURRENT.get()
    return slot is not None and slot.family.known is not False


def note_account_limits(limits: AccountLimits) -> None:
    """For providers: what a reply's headers say about the account's limits for the
    request being made, so that the limiter paces every request of that model by them."""
    slot = _CURRENT.get()
    if slot is not None:
        slot.limiter._learn(slot, limits)


async def wait_out_rate_limit(
    wait_s: float | None,
    *,
    limit: str | None = None,
    per_minute: int | None = None,
    retry_after: bool = False,
    cap_s: float,
    first_at: float,
) -> float:
    """For providers: a rate-limit 429 arrived for the request being made; wait it out.

    ``wait_s`` is the wait it asked for (None: it did not say), ``retry_after`` whether
    that came as a Retry-After (then every request of the model waits for it, not just
    this one), ``limit`` the limit it named ("TPM", "RPM", ...) and ``per_minute`` its
    value, ``cap_s`` the most a model family may stay refused, ``first_at``
    (``time.monotonic()``) when this request met its first 429. After the wait the
    request takes its place in the limiter's rate buckets again; returns the seconds
    waited. Raises ``WaitCapReached`` when the wait would end more than ``cap_s`` after
    the family (or, outside a limiter, this request) was first refused."""
    slot = _CURRENT.get()
    if slot is not None:
        return await slot.limiter._hold(
            slot,
            wait_s,
            limit=limit,
            per_minute=per_minute,
            retry_after=retry_after,
            cap_s=cap_s,
            first_at=first_at,
        )
    return await _sleep_out(_capped_wait(wait_s, time.monotonic(), first_at, cap_s))


def _capped_wait(wait_s: float | None, now: float, since: float, cap_s: float) -> float:
    """The wait for a 429 that asked for ``wait_s`` (None: it did not say), at ``now``.
    Raises ``WaitCapReached`` when it would end more than ``cap_s`` after ``since`` (when
    the model family, or the request, was first refused)."""
    wait = _DEFAULT_WAIT_S if wait_s is None else max(wait_s, 0.0)
    if now + wait > since + cap_s:
        raise WaitCapReached(wait, now - since, cap_s)
    return wait


async def _sleep_out(wait: float) -> float:
    """Sleep ``wait`` and up to 10 % more (so that the requests it held do not all go
    again at once); returns the seconds slept."""
    wait *= 1 + _JITTER * random.random()
    await asyncio.sleep(wait)
    return wait
