"""The OpenAI Chat Completions provider: the only module that imports the openai SDK.

Any OpenAI-compatible endpoint works through ``base_url``. This module holds the SDK
client, the httpx hooks, the calls (plain and streamed) and the translation of SDK
exceptions; the rules that need no SDK (which models take ``max_completion_tokens``,
Retry-After, usage mapping, error wording) are in ``_openai_rules``. Decisions, in one place:

* The SDK is used through its public API only: a plain ``openai.AsyncOpenAI``,
  ``client.chat.completions.create()`` for every call (``stream=True`` with
  ``stream_options={"include_usage": True}`` when streaming, so usage stays exact), and
  ``openai.DefaultAsyncHttpxClient(event_hooks=...)`` for the two hooks below. No
  subclass, no private module, no ``client.post()``: one call path, at the price of
  ``create()``'s parameter transform (about 0.5 ms of CPU per call on a 2-core VM).
* Error retries are the SDK's own (``max_retries``; 408/409/5xx, timeouts and
  connection errors; a server-directed wait, ``retry-after-ms`` then ``Retry-After``, is
  obeyed when 0 < wait <= 120 s, else exponential backoff 0.5 s doubling up to 8 s).
  flowgpt adds no backoff of its own and has no setting to shorten the SDK's: tests make
  retries quick the way a server does, with ``retry-after-ms``. Adjustments, through the
  httpx hooks and the SDK's documented server-directed behaviour (``x-should-retry``)
  rather than a copy of its loop:

  - every response's ``x-ratelimit-*`` headers go to the request limiter, which paces
    every request of that model to the account's limits;
  - every 429 is marked ``x-should-retry: false``, so the SDK raises it at once:
    ``insufficient_quota`` fails; any other 429 is waited out around ``create()`` with
    the limiter (``wait_out_rate_limit``) for as long as it asks, outside ``max_retries``
    (a limit asks for patience, not a retry), until ``max_rate_limit_wait_s`` ends it;
  - a 5xx that is really a refused request is marked ``x-should-retry: false`` too;
  - every HTTP attempt is counted by the request hook into a per-call context variable,
    so ``ChatResponse.retries`` / ``ProviderError.retries`` are exact even with many
    calls in flight on one client.
* A reply that cannot be read (bad JSON, no choices, a stream that broke or ended without
  a finish_reason) is retried once more, within the same ``max_retries`` budget, after
  the wait the SDK would take (the reply's own retry-after if it sent one, else 0.5 s);
  a broken stream only if no text was handed to ``on_text`` yet, so callers never see
  text twice.
* ``max_tokens`` is sent as ``max_completion_tokens`` for the o-series and gpt-5 families
  (which reject ``max_tokens``) and as ``max_tokens`` for every other model, the spelling
  that OpenAI-compatible servers (Ollama, vLLM, llama.cpp, ...) understand.
* One SDK client per (base_url, digest of the key) per event loop, made on first use and
  reused by every call; a client from a finished loop is dropped, never reused.
* Every SDK exception becomes one ``flowgpt.errors.ProviderError`` subclass here, with a
  message that says what to do next. The API key is never stored on the provider, never
  put in a message (the literal key and anything key-shaped are scrubbed) and exceptions
  are raised ``from None`` so a traceback cannot show the SDK's own text either.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import httpx2
import openai
from openai.types.chat import ChatCompletion

from flowgpt.errors import AuthenticationError, ConnectionError, ProviderError, ServerError
from flowgpt.providers import limiter
from flowgpt.providers._openai_rules import (
    _CALL,
    _REQUEST_INVALID_RE,
    _account_limits,
    _after,
    _api_said,
    _body_is_quota,
    _body_message,
    _Call,
    _cause,
    _endpoint,
    _key_digest,
    _rate_limit_capped,
    _rate_limit_floor,
    _rate_limit_wait,
    _Reply,
    _reply_of,
    _reread_wait_s,
    _scrub,
    _settings,
    _status_error,
    _str_or_none,
    _Unreadable,
    _unreadable_error,
    _usage,
    uses_max_completion_tokens,
)
from flowgpt.providers.base import ChatRequest, ChatResponse, OnText
from flowgpt.providers.observe import note
from flowgpt.providers.rate_limits import WaitCapReached

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

__all__ = ["DEFAULT_BASE_URL", "OpenAIProvider", "uses_max_completion_tokens"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


async def _count_attempt(request: httpx2.Request) -> None:
    call = _CALL.get()
    if call is None:
        return
    limiter.note_request_sent()
    # The SDK numbers its attempts in this header; unlike counting requests, it does not
    # mistake a followed redirect for a retry.
    try:
        call.current = max(call.current, int(request.headers["x-stainless-retry-count"]) + 1)
    except (KeyError, ValueError):
        call.current += 1
    if call.retries:
        note("flowgpt.retry", **{"http.request.resend_count": call.retries})


async def _on_response(response: httpx2.Response) -> None:
    """Every response, before the SDK reads it: its headers are kept for a re-read's wait
    and its x-ratelimit-* told to the limiter. The SDK retries no 429 (``complete`` waits
    them out) nor a 5xx that is really a refused request (llama-cpp-python's 500s)."""
    call = _CALL.get()
    headers = response.headers
    if call is not None:
        call.headers = headers
    if limiter.wants_account_limits():
        limits = _account_limits(headers)
        if limits is not None:
            limiter.note_account_limits(limits)
    status = response.status_code
    if status >= 500:
        await response.aread()
        if _refused_request(response):
            # Sending the same request again cannot help: the SDK obeys this header.
            headers["x-should-retry"] = "false"
        return
    if status == 429:
        # The SDK obeys this header before its status-code rules.
        headers["x-should-retry"] = "false"


def _refused_request(response: httpx2.Response) -> bool:
    try:
        return bool(_REQUEST_INVALID_RE.search(response.text))
    except (httpx2.ResponseNotRead, UnicodeDecodeError):
        return False


class OpenAIProvider:
    """Chat Completions through the official SDK, against OpenAI or a compatible API.

    The key is read from the environment variable named ``api_key_env`` (never passed in);
    ``base_url`` defaults to ``OPENAI_BASE_URL``, then the SDK's default. One SDK client per
    (base_url, key) is created on first use and reused by every call on the same event loop.
    """

    name = "openai"
    model_is_label = False

    def __init__(
        self,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60,
        max_retries: int = 3,
        *,
        max_rate_limit_wait_s: float = 300,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_rate_limit_wait_s < 0:
            raise ValueError("max_rate_limit_wait_s must be >= 0")
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        # The longest a model may stay rate limited (429s waited out) before a request fails.
        self.max_rate_limit_wait_s = float(max_rate_limit_wait_s)
        self._environ = environ
        # (base_url, sha256 of the key) -> (client, the loop its connections belong to)
        self._clients: dict[
            tuple[str, str], tuple[openai.AsyncOpenAI, asyncio.AbstractEventLoop]
        ] = {}
        # (base_url, loop, client) the last call used: most calls need the same one again,
        # found without hashing the key (the client holds the key anyway).
        self._last: tuple[str, asyncio.AbstractEventLoop, openai.AsyncOpenAI] | None = None

    def __repr__(self) -> str:
        return (
            f"OpenAIProvider(base_url={self.base_url!r}, api_key_env={self.api_key_env!r}, "
            f"timeout_s={self.timeout_s:g}, max_retries={self.max_retries}, "
            f"max_rate_limit_wait_s={self.max_rate_limit_wait_s:g})"
        )

    # -- configuration ---------------------------------------------------------------------
    @property
    def _env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def resolved_base_url(self) -> str:
        return self.base_url or self._env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL

    def _read_key(self) -> str:
        key = (self._env.get(self.api_key_env) or "").strip()
        if not key:
            raise AuthenticationError(
                f"No API key: the environment variable {self.api_key_env} is not set.",
                hint=f"Set {self.api_key_env} to your API key (the workflow names the variable, "
                "never the key).",
                code="no_key",
            )
        return key

    def client(self) -> openai.AsyncOpenAI:
        """The SDK client for the current key and base URL (created on first use)."""
        return self._client_for(self._read_key())

    def _client_for(self, key: str) -> openai.AsyncOpenAI:
        base_url = self.resolved_base_url()
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[1] is loop and last[0] == base_url and last[2].api_key == key:
            return last[2]
        cache_key = (base_url, _key_digest(key))
        cached = self._clients.get(cache_key)
        if cached is not None and cached[1] is loop:
            self._last = (base_url, loop, cached[0])
            return cached[0]
        # A client made under another (now finished) event loop cannot be reused: its
        # pooled connections belong to that loop. Drop it; its loop cannot close it now.
        timeout = httpx2.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0))
        http_client = openai.DefaultAsyncHttpxClient(
            timeout=timeout,
            event_hooks={"request": [_count_attempt], "response": [_on_response]},
        )
        client = openai.AsyncOpenAI(
            api_key=key,
            base_url=base_url,
            timeout=timeout,
            max_retries=self.max_retries,
            http_client=http_client,
        )
        self._clients[cache_key] = (client, loop)
        self._last = (base_url, loop, client)
        return client

    async def aclose(self) -> None:
        clients, self._clients, self._last = self._clients, {}, None
        loop = asyncio.get_running_loop()
        for client, client_loop in clients.values():
            if client_loop is loop:
                await client.close()

    # -- the call ----------------------------------------------------------------------------
    async def complete(
        self, request: ChatRequest, *, on_text: OnText | None = None
    ) -> ChatResponse:
        key = self._read_key()  # before any request: no key, no call
        client = self._client_for(key)
        call = _Call()
        token = _CALL.set(call)
        sdk = client
        reread = False
        try:
            while True:
                try:
                    if on_text is None:
                        response = await self._create(sdk, request)
                    else:
                        response = await self._stream(sdk, request, on_text)
                except _Unreadable as exc:
                    remaining = self.max_retries - call.retries
                    if reread or remaining <= 0 or exc.emitted:
                        raise _unreadable_error(
                            exc, call, _endpoint(self.resolved_base_url())
                        ) from None
                    # One more try, inside the same retry budget as the SDK's own retries.
                    reread = True
                    wait = _reread_wait_s(call.headers)
                    call.next_create()
                    await asyncio.sleep(wait)
                    sdk = client.with_options(max_retries=remaining - 1)
                    continue
                except openai.RateLimitError as exc:
                    if _is_quota(exc):
                        raise self._translate(exc, key, request.model, call) from None
                    await self._wait_out(exc, key, request.model, call)
                    call.next_create()
                    # The rest of the error-retry budget: a rate limit takes none of it.
                    sdk = client.with_options(max_retries=max(self.max_retries - call.retries, 0))
                    continue
                except openai.OpenAIError as exc:
                    raise self._translate(exc, key, request.model, call) from None
                return ChatResponse(
                    text=response.text,
                    usage=response.usage,
                    finish_reason=response.finish_reason,
                    model=response.model,
                    retries=call.retries,
                    extra=response.extra,
                )
        finally:
            _CALL.reset(token)

    async def _create(self, sdk: openai.AsyncOpenAI, request: ChatRequest) -> _Reply:
        try:
            # Any: a compatible server may send what the SDK's model does not describe.
            completion: Any = await sdk.chat.completions.create(
                model=request.model, messages=_messages(request), **_settings(request)
            )
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
            raise _Unreadable(f"the body is not valid JSON ({exc})") from None
        if not isinstance(completion, ChatCompletion):
            raise _Unreadable(f"expected a JSON chat completion, got {type(completion).__name__}")
        return _reply_of(completion)

    async def _stream(
        self, sdk: openai.AsyncOpenAI, request: ChatRequest, on_text: OnText
    ) -> _Reply:
        parts: list[str] = []
        usage: Any = None
        finish_reason: str | None = None
        model: str | None = None
        completion_id: str | None = None
        refusal: list[str] = []
        stream = await sdk.chat.completions.create(
            model=request.model,
            messages=_messages(request),
            # Usage arrives in a last chunk, so a streamed reply is counted as exactly.
            stream=True,
            stream_options={"include_usage": True},
            **_settings(request),
        )
        try:
            async with stream:
                async for chunk in stream:
                    model = _str_or_none(getattr(chunk, "model", None)) or model
                    completion_id = _str_or_none(getattr(chunk, "id", None)) or completion_id
                    if getattr(chunk, "usage", None) is not None:
                        usage = chunk.usage
                    choices = getattr(chunk, "choices", None) or []
                    for choice in choices:
                        if getattr(choice, "index", 0) != 0:
                            continue  # n > 1 is not supported; keep the first choice
                        delta = getattr(choice, "delta", None)
                        piece = getattr(delta, "content", None)
                        if isinstance(piece, str) and piece:
                            parts.append(piece)
                            on_text(piece)
                        refused = getattr(delta, "refusal", None)
                        if refused:
                            refusal.append(str(refused))
                        finish = _str_or_none(getattr(choice, "finish_reason", None))
                        finish_reason = finish or finish_reason
        except json.JSONDecodeError as exc:
            raise _Unreadable(
                f"a stream event is not valid JSON ({exc})", emitted=bool(parts)
            ) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            # The SDK does not retry a stream that breaks after its headers arrived.
            detail = _cause(exc) or "connection lost"
            raise _Unreadable(
                f"the stream broke after {len(''.join(parts))} characters ({detail})",
                emitted=bool(parts),
                broken=True,
            ) from None
        if finish_reason is None:
            raise _Unreadable("the stream ended before the reply was complete", emitted=bool(parts))
        extra: dict[str, Any] = {"id": completion_id}
        if refusal:
            extra["refusal"] = "".join(refusal)
        if usage is None:
            extra["usage_missing"] = True
        return _Reply(
            "".join(parts), _usage(usage, emitted=bool(parts)), finish_reason, model, extra
        )

    async def _wait_out(
        self, exc: openai.RateLimitError, key: str, model: str, call: _Call
    ) -> None:
        """Wait a rate-limit 429 out with the request limiter, or raise the error that
        says the wait cap is reached."""
        message = _api_message(exc)
        asked = _rate_limit_wait(exc.response.headers, message)
        call.rate_limited += 1
        wait = asked.wait
        # For whoever listens to this call (tracing): a 429 and the wait the server asked.
        note("flowgpt.rate_limited", **({} if wait is None else {"flowgpt.retry_after_s": wait}))
        if wait is not None:
            wait = max(wait, _rate_limit_floor(call.rate_limited))
        if call.first_429 is None:
            call.first_429 = time.monotonic()
        try:
            await limiter.wait_out_rate_limit(
                wait,
                limit=asked.limit,
                per_minute=asked.value,
                retry_after=asked.retry_after,
                cap_s=self.max_rate_limit_wait_s,
                first_at=call.first_429,
            )
        except WaitCapReached as capped:
            call.rate_limited -= 1  # the last attempt was not waited out
            said = _api_said(message, key)
            endpoint = _endpoint(self.resolved_base_url())
            raise _rate_limit_capped(asked, capped, endpoint, model, said, call.retries) from None

    # -- errors ------------------------------------------------------------------------------
    def _translate(
        self, exc: openai.OpenAIError, key: str, model: str, call: _Call
    ) -> ProviderError:
        env, endpoint, retries = self.api_key_env, _endpoint(self.resolved_base_url()), call.retries
        after = _after(retries)

        def said(err: openai.APIError) -> str:
            return _api_said(_api_message(err), key)

        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            return _status_error(
                status,
                env=env,
                endpoint=endpoint,
                model=model,
                retries=retries,
                said=said(exc),
                headers=exc.response.headers,
                # Read only where they matter, as before: a 429's body, a 5xx's text.
                quota=status == 429 and _is_quota(exc),
                refused=status >= 500 and _refused_request(exc.response),
            )
        if isinstance(exc, openai.APITimeoutError):
            return ConnectionError(
                f"No answer from {endpoint} within {self.timeout_s:g} s{after}.",
                hint="Raise provider.timeout_s for long replies, or check that the endpoint is up.",
                retries=retries,
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = _cause(exc)
            return ConnectionError(
                f"Could not reach {endpoint}{after}"
                + (f": {_scrub(cause, key)}." if cause else "."),
                hint="Check base_url / OPENAI_BASE_URL, your network and any proxy settings.",
                retries=retries,
            )
        if isinstance(exc, openai.APIError):  # e.g. an error event inside a stream
            return ServerError(
                f"{endpoint} reported an error{after}:{said(exc) or ' (no message)'}",
                hint="Try again later.",
                retries=retries,
            )
        return ProviderError(
            f"The OpenAI client failed: {_scrub(str(exc), key)}",
            hint="Run with --debug for details.",
            retries=retries,
        )


def _messages(request: ChatRequest) -> list[ChatCompletionMessageParam]:
    # flowgpt's Message is a plain {"role", "content", "name"} dict: what the SDK's
    # message params are on the wire; only their static types differ.
    return cast("list[ChatCompletionMessageParam]", request.messages)


def _api_message(exc: openai.APIError) -> str:
    """The API's own error message (not the SDK's 'Error code: ...' wrapper)."""
    message = _body_message(exc.body)
    if message is not None:
        return message
    if isinstance(exc, openai.APIStatusError):
        return ""
    return exc.message


def _is_quota(exc: openai.APIStatusError) -> bool:
    if exc.code == "insufficient_quota" or exc.type == "insufficient_quota":
        return True
    return _body_is_quota(exc.body)
