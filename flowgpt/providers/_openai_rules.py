"""The OpenAI provider's rules that need neither the openai SDK nor httpx2.

Which models take ``max_completion_tokens`` (and so the settings ``create()`` is given),
the wait a 429 or an unreadable reply asks for, what a refused request body looks like,
the per-call attempt count the httpx hooks reach through a context variable, reading a
reply's usage, and the wording shared by error messages. flowgpt/providers/openai.py (the
only module that imports the SDK) builds on these and re-exports
``uses_max_completion_tokens``; importing this module loads no SDK.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flowgpt.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionError,
    MalformedResponseError,
    ModelNotFoundError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    redact,
)
from flowgpt.providers.base import ChatRequest, endpoint_of
from flowgpt.providers.rate_limits import AccountLimits, WaitCapReached, limit_kind
from flowgpt.usage import Usage

# o1, o3-mini, o4-mini, gpt-5, gpt-5-mini, ... (optionally "ft:" fine-tunes of them).
_MAX_COMPLETION_TOKENS_RE = re.compile(r"^(?:ft:)?(?:o\d+(?:$|[-:_.])|gpt-5)")
# Masked keys the API echoes back ("sk-proj-****abcd") escape errors.redact's pattern.
_KEYISH_RE = re.compile(r"\bsk-[^\s'\"`,;)]*")


@functools.lru_cache(maxsize=256)
def uses_max_completion_tokens(model: str) -> bool:
    """True for the model families that want ``max_completion_tokens``."""
    return bool(_MAX_COMPLETION_TOKENS_RE.match(model.rsplit("/", 1)[-1].lower()))


def _settings(request: ChatRequest) -> dict[str, Any]:
    """The request's settings as ``chat.completions.create()`` keyword arguments, with
    ``max_tokens`` spelled as the model wants it (see ``uses_max_completion_tokens``)."""
    params = request.params()
    if "max_tokens" in params and uses_max_completion_tokens(request.model):
        params["max_completion_tokens"] = params.pop("max_tokens")
    return params


# What the SDK does between its own retries (openai's documented retry behaviour), which a
# re-read of an unreadable reply follows too: a server-directed wait (retry-after-ms, then
# Retry-After) is obeyed when 0 < wait <= 120 s, otherwise the first backoff is 0.5 s.
_SERVER_WAIT_MAX_S = 120.0
_FIRST_BACKOFF_S = 0.5


@dataclass
class _Call:
    """Per-complete() state, reached by the httpx hooks through a context variable."""

    earlier: int = 0  # HTTP attempts of the create() calls already finished
    current: int = 0  # HTTP attempts of the create() call in progress
    headers: Mapping[str, str] | None = None  # of the last response received
    rate_limited: int = 0  # attempts refused by a rate limit and waited out
    first_429: float | None = None  # when (time.monotonic()) the first of them came

    @property
    def retries(self) -> int:
        """Error retries: attempts after the first, less the rate limits waited out."""
        return max(self.earlier + self.current - 1 - self.rate_limited, 0)

    def next_create(self) -> None:
        self.earlier, self.current = self.earlier + self.current, 0


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "flowgpt_openai_call", default=None
)


# A FastAPI/pydantic request-validation error about the request body, e.g.
# "1 validation error: {'type': 'literal_error', 'loc': ('body', 'response_format', ...".
_REQUEST_INVALID_RE = re.compile(r"validation error.*'loc': \('body'", re.S)


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait a 429 asks for (``retry-after-ms`` or ``retry-after`` in seconds)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers[name]) / scale
        except (KeyError, ValueError):
            continue
    return None


# OpenAI's durations, as in x-ratelimit-reset-* ("6m0s", "1.2s", "20ms") and in 429
# messages ("Please try again in 1.2s.").
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_TRY_AGAIN_RE = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)", re.I)
# "Rate limit reached for gpt-4o-mini ... on tokens per min (TPM): Limit 120000, ..."
_LIMIT_NAMED_RE = re.compile(r"\(([A-Z]{3})\): Limit (\d+)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_RATELIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
)


def parse_duration(text: str) -> float | None:
    """Seconds in one of OpenAI's durations ("6m0s", "1.2s", "20ms", "1h2m3s", or a plain
    number of seconds); None when it is not one."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(float(headers[name]))
    except (KeyError, ValueError, OverflowError):
        return None


def _account_limits(headers: Mapping[str, str]) -> AccountLimits | None:
    """The limits a reply's x-ratelimit-* headers tell; None when it sent none."""
    values = [_int_header(headers, name) for name in _RATELIMIT_HEADERS]
    if values[0] is None and values[1] is None:
        return None
    return AccountLimits(*values)


@dataclass(frozen=True)
class _RateLimited:
    """What a rate-limit 429 asks: ``wait`` seconds (None: it does not say), whether that
    came as a Retry-After, the ``limit`` it names ("TPM", "RPM", ...) and its ``value``."""

    wait: float | None
    retry_after: bool
    limit: str | None
    value: int | None


def _rate_limit_wait(headers: Mapping[str, str], message: str) -> _RateLimited:
    """What a rate-limit 429 asks. The wait is retry-after-ms or Retry-After when sent,
    else the x-ratelimit-reset-* header of the limit that was reached, else the message's
    "try again in ..."."""
    named = _LIMIT_NAMED_RE.search(message)
    limit, value = (named.group(1), int(named.group(2))) if named else (None, None)
    if limit is None:
        # Not named: the limit with nothing left, as the headers tell.
        for kind, name in (("tokens", "TPM"), ("requests", "RPM")):
            if _int_header(headers, f"x-ratelimit-remaining-{kind}") == 0:
                limit, value = name, _int_header(headers, f"x-ratelimit-limit-{kind}")
                break
    wait = _retry_after_s(headers)
    if wait is not None and wait <= 0:
        wait = None  # "now" is no directive (the SDK treats it so too)
    retry_after = wait is not None
    if wait is None:
        kinds = [limit_kind(limit)] if limit else []
        resets = [
            parse_duration(headers.get(f"x-ratelimit-reset-{k}", ""))
            for k in kinds or ["requests", "tokens"]
        ]
        known = [r for r in resets if r is not None]
        wait = max(known) if known else None
    if wait is None:
        said = _TRY_AGAIN_RE.search(message)
        wait = parse_duration(said.group(1)) if said else None
    return _RateLimited(wait, retry_after, limit, value)


def _rate_limit_floor(refused: int) -> float:
    """The least wait before trying again after a request's ``refused``-th rate-limit 429,
    whatever the server asks: 25 ms, doubling up to 1 s (no hot loop against a server
    that keeps asking for 0 or 1 ms)."""
    return min(0.025 * 2.0 ** (refused - 1), 1.0)


def _reread_wait_s(headers: Mapping[str, str] | None) -> float:
    """How long to wait before re-reading an unreadable reply, as the SDK waits between
    its retries: the wait the reply's headers ask for if the SDK would obey it, else the
    SDK's first backoff."""
    wait = None if headers is None else _retry_after_s(headers)
    if wait is not None and 0 < wait <= _SERVER_WAIT_MAX_S:
        return wait
    return _FIRST_BACKOFF_S


class _Unreadable(Exception):
    """The reply could not be read; ``emitted`` tells whether on_text already saw text."""

    def __init__(self, detail: str, *, emitted: bool = False, broken: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.emitted = emitted
        self.broken = broken  # the connection broke (vs. a reply that made no sense)


@functools.lru_cache(maxsize=16)
def _key_digest(key: str) -> str:
    # Clients are cached by a digest, so the key itself is never a dict key anywhere.
    return hashlib.sha256(key.encode()).hexdigest()


def _endpoint(base_url: str) -> str:
    """The base URL for messages: no user:password, no query."""
    return endpoint_of(base_url) or "the API"


def _scrub(text: str, key: str | None) -> str:
    if key:
        text = text.replace(key, "[redacted key]")
    return redact(_KEYISH_RE.sub("[redacted key]", text))


def _body_message(body: object) -> str | None:
    """The API's own message in an error body (``{"error": {"message": ...}}``, the error
    object itself, or text), as a call's error or a batch's error line holds it; None when
    it holds none."""
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else None
        if isinstance(message, str):
            return message.strip()
    if isinstance(body, str):
        return body.strip()[:300]
    return None


def _body_is_quota(body: object) -> bool:
    """Whether an error body is OpenAI's ``insufficient_quota`` (as its code or type)."""
    error = body.get("error", body) if isinstance(body, dict) else None
    return isinstance(error, dict) and "insufficient_quota" in (
        error.get("code"),
        error.get("type"),
    )


def _api_said(message: str, key: str | None) -> str:
    """The API's message as error messages quote it (scrubbed of the key); "" for none."""
    return f" The API said: {_scrub(message, key)}" if message else ""


def _unreadable_error(exc: _Unreadable, call: _Call, endpoint: str) -> ProviderError:
    after = _after(call.retries)
    if exc.broken:
        return ConnectionError(
            f"The connection to {endpoint} broke mid-reply{after}: {exc.detail}.",
            hint="Check your network or the endpoint, then run again.",
            retries=call.retries,
        )
    return MalformedResponseError(
        f"{endpoint} sent a reply that is not a valid Chat Completions "
        f"response{after}: {exc.detail}.",
        hint="Check that base_url points at an OpenAI-compatible API (it usually ends "
        "in /v1) and that the model supports chat completions.",
        retries=call.retries,
    )


@dataclass
class _Reply:
    text: str
    usage: Usage
    finish_reason: str | None
    model: str | None
    extra: dict[str, Any]


def _reply_of(completion: Any) -> _Reply:
    """What a chat completion (the SDK's object, from a call or a batch's output file)
    says: its first choice's text, usage, finish reason and model; raises _Unreadable when
    it has no choice or message."""
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise _Unreadable("the reply has no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if message is None or not isinstance(content, (str, type(None))):
        raise _Unreadable("the first choice has no message")
    usage = getattr(completion, "usage", None)
    extra: dict[str, Any] = {"id": getattr(completion, "id", None)}
    refusal = getattr(message, "refusal", None)
    if refusal:
        extra["refusal"] = refusal
    if usage is None:
        extra["usage_missing"] = True
    return _Reply(
        text=content or "",
        usage=_usage(usage),
        finish_reason=_str_or_none(getattr(choice, "finish_reason", None)),
        model=_str_or_none(getattr(completion, "model", None)),
        extra=extra,
    )


# More tokens than any request can have (no context window holds that many): a reply
# claiming it is broken, not a bill to record.
_MAX_USAGE_TOKENS = 100_000_000


def _tokens(name: str, value: Any, emitted: bool) -> int:
    """A token count of a reply's usage (absent: 0); a count no reply can have (negative,
    not a whole number, absurdly large) makes the reply unreadable: it is never counted,
    so it can neither lower what was spent nor overflow what records it."""
    if value is None:
        return 0
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )
    if not whole or not 0 <= value <= _MAX_USAGE_TOKENS:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise _Unreadable(f"it reports impossible usage ({name} = {shown})", emitted=emitted)
    return int(value)


def _usage(usage: Any, *, emitted: bool = False) -> Usage:
    """The reply's usage; ``emitted``: its text was shown already (a stream)."""
    if usage is None:
        return Usage()
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    return Usage(
        prompt_tokens=_tokens("prompt_tokens", getattr(usage, "prompt_tokens", 0), emitted),
        completion_tokens=_tokens(
            "completion_tokens", getattr(usage, "completion_tokens", 0), emitted
        ),
        cached_tokens=_tokens(
            "cached_tokens", getattr(prompt_details, "cached_tokens", 0), emitted
        ),
        reasoning_tokens=_tokens(
            "reasoning_tokens", getattr(completion_details, "reasoning_tokens", 0), emitted
        ),
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _after(retries: int) -> str:
    if retries == 0:
        return ""
    return f" after {retries} {'retry' if retries == 1 else 'retries'}"


def _status_error(
    status: int,
    *,
    env: str,
    endpoint: str,
    model: str,
    retries: int,
    said: str,
    headers: Mapping[str, str],
    quota: bool,
    refused: bool,
) -> ProviderError:
    """The error for an HTTP error status; ``said`` is the API's own (scrubbed) message,
    ``quota`` a 429 for ``insufficient_quota``, ``refused`` a 5xx that refused the request."""
    after = _after(retries)
    if status == 401:
        return AuthenticationError(
            f"Authentication failed (401): {endpoint} rejected the API key read from "
            f"the environment variable {env}.{said}",
            hint=f"Check that {env} holds a valid key for {endpoint}.",
            status=status,
            retries=retries,
            code="no_key",
        )
    if status == 403:
        return AuthenticationError(
            f"Permission denied (403): the key in {env} may not use model '{model}' "
            f"at {endpoint}.{said}",
            hint=f"Check the project and organization of the key in {env}, or choose a "
            "model it can use.",
            status=status,
            retries=retries,
        )
    if status == 404:
        return ModelNotFoundError(
            f"Model '{model}' was not found at {endpoint} (404).{said}",
            hint="Check the model name and that your key can use it; if every model "
            "fails, check base_url (it usually ends in /v1).",
            status=status,
            retries=retries,
        )
    if status == 429 and quota:
        return QuotaExceededError(
            f"The account of the key in {env} is out of quota (429 insufficient_quota).{said}",
            hint="Add credit or raise the usage limit in your billing settings, or use "
            "another key; retrying cannot help.",
            status=status,
            retries=retries,
        )
    if status == 429:
        return RateLimitError(
            f"Rate limited by {endpoint} (429){after}.{_wait_asked(headers)}{said}",
            hint="Lower provider.concurrency, raise provider.max_retries, or try again later.",
            status=status,
            retries=retries,
        )
    if status >= 500 and refused:
        # Some servers (llama-cpp-python's) report a request body they cannot
        # accept as an internal error: it is the request that must change.
        return BadRequestError(
            f"The API refused the request for model '{model}' ({status}).{said}",
            hint="Fix the step setting the message names (e.g. response_format) and run again.",
            status=status,
            retries=retries,
        )
    if status >= 500 or status == 409:
        return ServerError(
            f"{endpoint} failed with status {status}{after}.{said}",
            hint="The API had a problem on its side; try again later.",
            status=status,
            retries=retries,
        )
    if status == 408:
        return ConnectionError(
            f"{endpoint} timed out the request (408){after}.{said}",
            hint="Try again later, or raise provider.timeout_s.",
            status=status,
            retries=retries,
        )
    return BadRequestError(
        f"The API refused the request for model '{model}' ({status}).{said}",
        hint="Fix the step setting the message names (e.g. max_tokens, temperature, "
        "stop, response_format) and run again.",
        status=status,
        retries=retries,
    )


def _rate_limit_capped(
    asked: _RateLimited, capped: WaitCapReached, endpoint: str, model: str, said: str, retries: int
) -> RateLimitError:
    """The error for a rate limit that outlasted the wait cap (provider.max_rate_limit_wait_s)."""
    limit, value = asked.limit, asked.value
    asked_s, limited_s, cap_s = capped.asked_s, capped.limited_s, capped.cap_s
    what = {"TPM": "tokens per minute", "RPM": "requests per minute"}.get(limit or "")
    named = f"the {limit} limit" if limit else "the rate limit"
    if what:
        named += f" ({what}{f', {value:,}' if value else ''})"
    cap = f"the wait cap (provider.max_rate_limit_wait_s: {cap_s:g} s)"
    if limited_s < 1 and asked_s > cap_s:
        message = (
            f"Rate limited by {endpoint} (429) on {named} of {model}: it asked to wait "
            f"{_seconds(asked_s)}, longer than {cap}.{said}"
        )
    else:
        message = (
            f"Rate limited by {endpoint} (429): {named} of {model} was still reached after "
            f"waiting {_seconds(limited_s)}, {cap}.{said}"
        )
    if limit == "TPM":
        lower = "lower max_tokens, --concurrency or --tpm"
    elif limit == "RPM":
        lower = "lower --concurrency or --rpm"
    else:
        lower = "lower --concurrency"
    return RateLimitError(
        message,
        hint=f"The account's limit for {model} is used up for now: {lower}, raise the "
        "limit in your account's settings (OpenAI: Settings > Limits), raise "
        "provider.max_rate_limit_wait_s to wait longer, or run again later.",
        status=429,
        retries=retries,
    )


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:,.0f} s"


def _wait_asked(headers: Mapping[str, str]) -> str:
    if "retry-after-ms" in headers:
        return f" The server asked to wait {headers['retry-after-ms']} ms."
    if "retry-after" in headers:
        return f" The server asked to wait {headers['retry-after']} s."
    return ""


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__
    if cause is None:
        return ""
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
