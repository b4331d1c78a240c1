"""Prices of models, in Decimal USD per million tokens.

Where a price comes from, first match wins:

1. the workflow's ``pricing:`` section (source ``"workflow"``);
2. the in-process local provider (``base_url`` ``"local"`` or ``"local:<model file>"``):
   zero, with source ``"local"`` — nobody bills for it, and that is known, not guessed;
3. genai-prices' OpenAI table (source ``"genai-prices"``): OpenAI's list prices for OpenAI
   model names, wherever the requests go. Relays and proxies in front of OpenAI (many
   users reach it through one, ``OPENAI_BASE_URL``) bill those names at OpenAI's prices or
   close to them, so budgets keep working there; a workflow whose endpoint bills otherwise
   says so with ``provider.prices`` (``pricing``: only its own ``pricing:`` entries;
   ``none``: nothing is priced), and reports say where a price came from when it is not
   the endpoint's own.

Anything else is unpriced: None, never 0, so reports can say "unpriced" instead of "$0".

Batch API rates (``batch=True``, for ``--batch-api``): the workflow's ``pricing:`` entry's
``batch:`` rates when it gives them, else half its rates; genai-prices' batch prices (its
``processing: batch`` price variants) for the models it has them for, else half the
standard rates, which is what OpenAI charges for the Batch API.

``import genai_prices`` alone takes ~0.25-0.3 s, half of what ``flowgpt validate`` may
spend in total (0.5 s), so ``resolve_price`` answers from a small JSON file in the user's
cache folder, filled from genai-prices on a miss; see "The disk cache" below for when it
is thrown away. ``cost_of`` (the exact cost of a finished call) always asks genai-prices
itself. This is the only module that imports genai_prices.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Any, Literal

from flowgpt.accounting._cache import user_cache_dir, write_atomic
from flowgpt.spec.models import PriceList, PriceSpec
from flowgpt.usage import Usage

__all__ = [
    "LOCAL_BASE_URL",
    "LOCAL_PRICE",
    "ModelPrice",
    "closest_model",
    "cost_of",
    "is_local_url",
    "is_openai_url",
    "listed_models",
    "resolve_price",
    "worst_case_cost",
]

PriceSource = Literal["workflow", "genai-prices", "local"]

_MILLION = Decimal(1_000_000)
_PROVIDER = "openai"


@dataclass(frozen=True)
class ModelPrice:
    """What one model costs, USD per million tokens.

    ``cache_write`` is set only for models that bill prompt tokens written to the prompt
    cache above the input price; worst-case estimates then use it for the prompt.
    For tiered prices (a higher rate past some prompt length) the highest tier is kept,
    because estimates are worst-case bounds. ``batch``: these are Batch API rates.
    """

    input: Decimal
    cached_input: Decimal
    output: Decimal
    source: PriceSource
    cache_write: Decimal | None = None
    batch: bool = False

    def to_dict(self) -> dict[str, str | bool | None]:
        """Plain data, e.g. to store with a run."""
        return {
            "input": str(self.input),
            "cached_input": str(self.cached_input),
            "output": str(self.output),
            "cache_write": None if self.cache_write is None else str(self.cache_write),
            "source": self.source,
            "batch": self.batch,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelPrice:
        cache_write = data.get("cache_write")
        return cls(
            input=Decimal(data["input"]),
            cached_input=Decimal(data["cached_input"]),
            output=Decimal(data["output"]),
            source=data["source"],
            cache_write=None if cache_write is None else Decimal(cache_write),
            batch=bool(data.get("batch", False)),
        )

    def halved(self) -> ModelPrice:
        """The Batch API's price where no batch rates are known: half of every rate."""
        return ModelPrice(
            input=self.input / 2,
            cached_input=self.cached_input / 2,
            output=self.output / 2,
            source=self.source,
            cache_write=None if self.cache_write is None else self.cache_write / 2,
            batch=True,
        )


# Where the local provider's requests "go": its resolved_base_url() is this, optionally
# followed by ":" and the model file (so cached replies of two models stay apart).
LOCAL_BASE_URL = "local"


def is_local_url(base_url: str | None) -> bool:
    """True for the in-process local provider (``"local"`` or ``"local:<model file>"``)."""
    return base_url is not None and (
        base_url == LOCAL_BASE_URL or base_url.startswith(LOCAL_BASE_URL + ":")
    )


def is_openai_url(base_url: str | None) -> bool:
    """True for OpenAI's own API (None means the SDK default, which is OpenAI): where
    OpenAI's list prices are the endpoint's own, so reports need not say where they came
    from. Regional hosts such as eu.api.openai.com are not included."""
    if base_url is None:
        return True
    from urllib.parse import urlsplit

    try:
        host = urlsplit(base_url.strip()).hostname
    except ValueError:
        return False
    return host == "api.openai.com"


@functools.lru_cache(maxsize=256)
def _from_override(spec: PriceSpec, batch: bool = False) -> ModelPrice:
    rates = spec.batch if batch and spec.batch is not None else spec
    cached = rates.cached_input if rates.cached_input is not None else rates.input
    price = ModelPrice(
        input=Decimal(rates.input),
        cached_input=Decimal(cached),
        output=Decimal(rates.output),
        source="workflow",
        batch=rates is not spec,
    )
    return price.halved() if batch and not price.batch else price


# A model run in-process costs nothing per token; a workflow may still set its own price.
LOCAL_PRICE = ModelPrice(
    input=Decimal(0), cached_input=Decimal(0), output=Decimal(0), source="local"
)


def resolve_price(
    model: str,
    *,
    base_url: str | None = None,
    overrides: Mapping[str, PriceSpec] | None = None,
    prices: PriceList = "openai",
    batch: bool = False,
) -> ModelPrice | None:
    """The price of ``model``, or None when it is unpriced (never a made-up zero).

    ``base_url`` tells the in-process local model apart (``"local..."``: $0); ``prices``
    is the workflow's ``provider.prices``; ``batch``: its Batch API rates."""
    if prices == "none":
        return None
    if overrides and model in overrides:
        return _from_override(overrides[model], batch)
    if is_local_url(base_url):
        return LOCAL_PRICE
    if prices == "pricing":
        return None
    return _price_cache().get(model, batch)


def listed_models() -> list[str]:
    """The model names OpenAI's price list knows (ids and dated snapshots), for
    did-you-mean suggestions."""
    cache = _price_cache()
    if not cache.entries:
        cache.get("gpt-4o-mini")  # fills the table (every exact name) on first use
    return sorted(name for name, entry in cache.entries.items() if entry is not None)


def closest_model(model: str) -> str | None:
    """The OpenAI model name ``model`` is most likely a typo of, if any: for did-you-mean
    suggestions. Reads the price list (filling the cache on a miss), so call it only when
    the suggestion is used."""
    close = difflib.get_close_matches(model, listed_models(), n=1, cutoff=0.8)
    return close[0] if close else None


def cost_of(
    usage: Usage,
    model: str,
    *,
    base_url: str | None = None,
    overrides: Mapping[str, PriceSpec] | None = None,
    prices: PriceList = "openai",
    batch: bool = False,
) -> Decimal | None:
    """The exact cost of a finished call, in USD; None when the model is unpriced.
    ``batch``: a call made through the Batch API, at its rates.

    Cached prompt tokens are billed at the cached rate; reasoning tokens are part of
    ``completion_tokens`` and billed as output once, never on top of it.
    """
    if prices == "none":
        return None
    if overrides and model in overrides:
        price = _from_override(overrides[model], batch)
        uncached = usage.prompt_tokens - usage.cached_tokens
        return (
            uncached * price.input
            + usage.cached_tokens * price.cached_input
            + usage.completion_tokens * price.output
        ) / _MILLION
    if is_local_url(base_url):
        return Decimal(0)
    if prices == "pricing":
        return None
    import genai_prices

    # The same mapping genai-prices' own Chat Completions extractor uses. Reasoning tokens
    # are a subset of output_tokens there too: they only change the total for a model
    # that prices them separately.
    gp_usage = genai_prices.Usage(
        input_tokens=usage.prompt_tokens,
        cache_read_tokens=usage.cached_tokens,
        output_tokens=usage.completion_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
    )
    from genai_prices import data_snapshot

    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, _PROVIDER, None)
    except LookupError:
        return None
    # genai-prices' own batch prices where it has them; otherwise OpenAI's half price.
    own_batch_prices = batch and bool(_batch_variants(info, datetime.now(timezone.utc)))
    calc = genai_prices.calc_price(
        gp_usage,
        model,
        provider_id=_PROVIDER,
        price_context=_BATCH_CONTEXT if own_batch_prices else None,
    )
    if batch and not own_batch_prices:
        return calc.total_price / 2
    return calc.total_price


def worst_case_cost(
    prompt_tokens: int, max_output_tokens: int, price: ModelPrice | None
) -> Decimal | None:
    """An upper bound for one call: no prompt caching, every allowed output token used."""
    if price is None:
        return None
    prompt_rate = price.input
    if price.cache_write is not None and price.cache_write > prompt_rate:
        prompt_rate = price.cache_write
    return (prompt_tokens * prompt_rate + max_output_tokens * price.output) / _MILLION


# --------------------------------------------------------------------------------------
# The disk cache of genai-prices' OpenAI table
#
# File: <user_cache_dir()>/genai-prices-<install>.json, where <install> hashes the folder
# genai-prices is installed in (two virtualenvs sharing a cache folder keep a file each
# instead of evicting each other). Content:
#     {"signature": "v<format>:<size>:<mtime_ns>", "models": {name: entry | null}}
# with the size and mtime of genai_prices/data.py (the price data itself) and null for a
# model genai-prices does not price per token.
#
# Invalidation, two rules and nothing else:
# 1. The whole file is ignored, and rewritten on the next miss, when its signature is not
#    the installed data's: installing or upgrading genai-prices writes a new data.py (a
#    new size or mtime), and bumping _CACHE_FORMAT below changes every signature too.
#    A process reads the signature once: it prices with the data it imported.
# 2. One entry is recomputed from its "valid_until" day on: genai-prices already knows
#    some future price changes, so today's price of such a model has an end date.
# A damaged file or entry counts as missing. Every miss prices the requested model and
# every exact OpenAI model name at once, and the file is written atomically, merged with
# what another process may have written meanwhile.
# --------------------------------------------------------------------------------------

# Bump when entries change shape or meaning: every existing file then fails rule 1.
# 2: entries gained "batch" (the Batch API rates, or null: half the standard rates).
_CACHE_FORMAT = 2


# Where genai-prices is installed does not change while a process runs (an upgrade
# rewrites data.py in place), and finding it takes ~35 us.
@functools.lru_cache(maxsize=1)
def _genai_prices_dir() -> str | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec("genai_prices")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return os.path.dirname(os.path.abspath(spec.origin))


def _signature(package_dir: str) -> str | None:
    """The installed price data's fingerprint (rule 1): the cache format, and the size
    and mtime of data.py, read with one stat instead of importing genai-prices."""
    stamp = _data_stamp(package_dir)
    return None if stamp is None else f"v{_CACHE_FORMAT}:{stamp}"


# Read once a process: a process prices with the genai-prices data it imported, so a
# newer install under a long-running process is for the next process to use.
@functools.lru_cache(maxsize=8)
def _data_stamp(package_dir: str) -> str | None:
    try:
        st = os.stat(os.path.join(package_dir, "data.py"))
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _today() -> date:
    return datetime.now(timezone.utc).date()


class _PriceCache:
    """One cache file (see above), read once: genai-prices' OpenAI prices flattened to
    one entry per model name."""

    def __init__(self, path: str | None, signature: str | None) -> None:
        self.path = path
        self.signature = signature
        self.entries: dict[str, Any] = self._read() if path and signature else {}
        # (model, batch) -> its price, parsed once (a run looks its models up once each,
        # ~25 us a lookup between API calls); not for entries with a "valid_until" day,
        # which rule 2 checks against today's date at every lookup.
        self.prices: dict[tuple[str, bool], ModelPrice | None] = {}

    def _read(self) -> dict[str, Any]:
        assert self.path is not None
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("signature") != self.signature:
            return {}  # rule 1: made from other data (or another format)
        models = data.get("models")
        return models if isinstance(models, dict) else {}

    def get(self, model: str, batch: bool = False) -> ModelPrice | None:
        if (model, batch) in self.prices:
            return self.prices[(model, batch)]
        if model in self.entries:
            fresh, price = _entry_to_price(self.entries[model], batch)
            if fresh:
                self._keep(model, batch, price)
                return price
        self._fill(model)
        price = _entry_to_price(self.entries[model], batch)[1]
        self._keep(model, batch, price)
        return price

    def _keep(self, model: str, batch: bool, price: ModelPrice | None) -> None:
        entry = self.entries.get(model)
        if not isinstance(entry, dict) or entry.get("valid_until") is None:
            self.prices[(model, batch)] = price

    def _fill(self, model: str) -> None:
        """Price ``model`` with genai-prices, plus every exact OpenAI model name, so later
        lookups of other common models stay on the fast path; then save."""
        if self.signature is None:  # genai-prices is not installed
            self.entries[model] = None
            return
        fresh = _compute_entries(model)
        self.entries.update(fresh)
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        # Merge with what another process may have written meanwhile.
        merged = {**self._read(), **self.entries}
        payload = json.dumps(
            {"signature": self.signature, "models": merged}, sort_keys=True, separators=(",", ":")
        ).encode()
        with contextlib.suppress(OSError):  # a read-only home only costs speed
            write_atomic(self.path, payload)


def _entry_to_price(entry: Any, batch: bool = False) -> tuple[bool, ModelPrice | None]:
    """(still valid, price) for a cache entry (rule 2); null entries are unpriced models.
    ``batch``: the entry's Batch API rates (half the standard ones when it has none)."""
    if entry is None:
        return True, None
    try:
        valid_until = entry.get("valid_until")
        if valid_until is not None and _today() >= date.fromisoformat(valid_until):
            return False, None  # a scheduled price change has happened
        rates = entry["batch"] if batch and entry.get("batch") is not None else entry
        cache_write = rates.get("cache_write")
        price = ModelPrice(
            input=Decimal(rates["input"]),
            cached_input=Decimal(rates["cached_input"]),
            output=Decimal(rates["output"]),
            source="genai-prices",
            cache_write=None if cache_write is None else Decimal(cache_write),
            batch=rates is not entry,
        )
        return True, price.halved() if batch and not price.batch else price
    except (AttributeError, KeyError, TypeError, ValueError, ArithmeticError):
        return False, None  # damaged entry: recompute


_caches: dict[tuple[str | None, str | None], _PriceCache] = {}


def _price_cache() -> _PriceCache:
    """This process's view of the disk cache; read again when the cache folder changes
    (a test's, say)."""
    import hashlib

    package_dir = _genai_prices_dir()
    signature = _signature(package_dir) if package_dir else None
    path = None
    if package_dir is not None:
        install = hashlib.sha1(package_dir.encode()).hexdigest()[:12]
        path = os.path.join(user_cache_dir(), f"genai-prices-{install}.json")
    key = (path, signature)
    cache = _caches.get(key)
    if cache is None:
        cache = _caches[key] = _PriceCache(path, signature)
    return cache


# --------------------------------------------------------------------------------------
# Flattening genai-prices' model prices (only reached on a cache miss)
# --------------------------------------------------------------------------------------


def _compute_entries(model: str) -> dict[str, Any]:
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    now = datetime.now(timezone.utc)
    entries: dict[str, Any] = {}

    def entry_for(name: str) -> Any:
        try:
            _, info = snapshot.find_provider_model(name, None, _PROVIDER, None)
        except LookupError:
            return None
        return _flatten(info, now)

    entries[model] = entry_for(model)
    for name in _exact_names(snapshot):
        if name not in entries:
            entries[name] = entry_for(name)
    return entries


def _exact_names(snapshot: Any) -> list[str]:
    """Every model name the OpenAI table matches by equality (ids and dated snapshots)."""
    from genai_prices import types

    names: list[str] = []

    def walk(clause: Any) -> None:
        if isinstance(clause, types.ClauseEquals):
            names.append(clause.equals)
        elif isinstance(clause, types.ClauseOr):
            for sub in clause.or_:
                walk(sub)

    for provider in snapshot.providers:
        if provider.id == _PROVIDER:
            for info in provider.models:
                walk(info.match)
    return names


def _highest(price: Any) -> Decimal | None:
    """A flat price; for tiered prices the highest tier (estimates are upper bounds)."""
    from genai_prices.types import TieredPrices

    if price is None:
        return None
    if isinstance(price, TieredPrices):
        return max([price.base, *(tier.price for tier in price.tiers)])
    return Decimal(price)


# genai-prices' request context for a call made through a Batch API.
_BATCH_CONTEXT = {"processing": "batch"}


def _batch_variants(info: Any, now: datetime) -> list[Any]:
    """The model's price variants for batch processing that apply at ``now`` and set a
    token rate (a variant without rates leaves the batch price unknown: then half)."""
    found = []
    for variant in info.price_variants or ():
        if any(_BATCH_CONTEXT.get(key) != value for key, value in variant.when.items()):
            continue
        if variant.constraint is not None and not variant.constraint.active(now):
            continue
        prices = variant.prices
        if prices.input_mtok is not None or prices.output_mtok is not None:
            found.append(variant)
    return found


def _flatten(info: Any, now: datetime) -> dict[str, Any] | None:
    """One ModelInfo's standard prices today as a cache entry; None if not token-priced.

    Conditional prices: the ones genai-prices applies today; when a price change is already
    scheduled, ``valid_until`` makes the entry expire on that day. Prices that vary with the
    time of day are merged to the highest of each rate. ``batch`` holds the Batch API rates
    when genai-prices has them (its batch price variants), else null.
    """
    from genai_prices import types

    valid_until: date | None = None
    for variant in info.price_variants or ():
        # A variant that starts later (a batch price announced ahead) changes the entry.
        constraint = variant.constraint
        if (
            isinstance(constraint, types.StartDateConstraint)
            and constraint.start_date > now.date()
            and (valid_until is None or constraint.start_date < valid_until)
        ):
            valid_until = constraint.start_date
    moments = {now}
    if isinstance(info.prices, types.ModelPrice):
        candidates = [info.prices]
    else:
        # Prices are constant between constraint boundaries, so asking genai-prices at
        # now and at every time-of-day boundary sees each price that applies today.
        for conditional in info.prices:
            constraint = conditional.constraint
            if isinstance(constraint, types.StartDateConstraint):
                if constraint.start_date > now.date() and (
                    valid_until is None or constraint.start_date < valid_until
                ):
                    valid_until = constraint.start_date
            elif isinstance(constraint, types.TimeOfDateConstraint):
                for moment in (time(0), constraint.start_time, constraint.end_time):
                    tz = moment.tzinfo or timezone.utc  # naive means UTC
                    moments.add(datetime.combine(now.date(), moment.replace(tzinfo=tz)))
        candidates = [info.get_prices(moment) for moment in moments]

    def rates(prices: list[Any]) -> dict[str, Any] | None:
        def rate(key: str) -> Decimal | None:
            values = [v for c in prices if (v := _highest(getattr(c, key, None))) is not None]
            return max(values) if values else None

        input_rate, output_rate = rate("input_mtok"), rate("output_mtok")
        if input_rate is None or output_rate is None:
            return None  # audio / image / per-request models: not priced per chat token
        cached = rate("cache_read_mtok")
        cache_write = rate("cache_write_mtok")
        return {
            "input": str(input_rate),
            # genai-prices bills cached tokens at the input rate when there is no cached rate
            "cached_input": str(cached if cached is not None else input_rate),
            "output": str(output_rate),
            "cache_write": None if cache_write is None else str(cache_write),
        }

    entry = rates(candidates)
    if entry is None:
        return None
    batch = None
    if _batch_variants(info, now):
        batch = rates([info.get_prices(moment, _BATCH_CONTEXT) for moment in moments])
    entry["valid_until"] = None if valid_until is None else valid_until.isoformat()
    entry["batch"] = batch
    return entry
