"""An OpenAI-compatible Chat Completions server on 127.0.0.1, for tests and benchmarks.

It speaks real HTTP/1.1 (keep-alive, chunked SSE streaming), so the real openai SDK talks to
it through ``base_url``::

    with FakeOpenAI() as server:              # port 0: an ephemeral port
        server.base_url                       # 'http://127.0.0.1:PORT/v1'
        server.queue(Reply("hello", prompt_tokens=12, completion_tokens=1))
        server.queue(Fault.rate_limited(retry_after_s=1), Reply("ok"))
        ...
        server.requests                       # every request, with arrival/completion times

Replies come from a FIFO queue of specs (``Reply`` or ``Fault``); when the queue is empty
the ``responder`` (a callable from the request body to a spec) answers, by default with a
deterministic echo whose usage counts words. ``GET /v1/models`` lists ``models``.

As a separate process (benchmarks), the base URL is the first stdout line::

    python -m tests.support.fake_openai --port 0 --latency-ms 50

An emulated account limit (``FakeOpenAI(account_limit=AccountLimit(rpm=3000,
tpm=120_000))``, or ``--rpm``/``--tpm``) makes it behave like OpenAI's rate limiter: per
model, requests and tokens per minute enforced over short windows, a request counting
max(max_tokens, characters / 4) tokens; a request over the limit gets a 429 at once,
worded as OpenAI's ("... on tokens per min (TPM): Limit 120000, Used 1900, Requested
100. Please try again in 50ms. ..."), with ``x-ratelimit-*`` headers and no
``retry-after``; every reply carries ``x-ratelimit-limit/remaining/reset-*``.

Implementation: one asyncio loop in a background thread with a minimal HTTP/1.1 parser.
A thread per connection (ThreadingHTTPServer) would also work, but an event loop keeps
hundreds of idle keep-alive connections and per-request latency (``asyncio.sleep``) cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http
import itertools
import json
import math
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Literal

__all__ = [
    "FAST_RETRY_AFTER_MS",
    "AccountLimit",
    "FakeOpenAI",
    "Fault",
    "RecordedRequest",
    "Reply",
    "Responder",
    "count_words",
    "echo_responder",
    "main",
]

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o4-mini", "gpt-5-mini")

# The faults a client retries (429 rate limits, 5xx, unreadable replies and broken
# streams) ask it to wait this long with ``retry-after-ms``, so that tests stay fast: the
# openai SDK obeys a server-directed wait of 0 < wait <= 120 s instead of its own backoff
# (0.5 s doubling up to 8 s). Pass ``retry_after_ms=None`` for a fault without the header
# (the client's own backoff applies); ``retry_after_s``, when given, is sent instead.
# Faults that are not HTTP replies (timeouts, dropped connections) cannot carry a header.
FAST_RETRY_AFTER_MS: float = 1.0


@dataclass(frozen=True)
class Reply:
    """A successful answer. Token counts left as None are counted from words."""

    text: str = "ok"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: str = "stop"
    model: str | None = None  # None: echo the requested model
    chunks: Sequence[str] | None = None  # stream deltas; None: the text split into words
    usage: bool = True  # False: send no usage at all (some compatible servers do that)
    delay_s: float = 0.0  # on top of the server's latency
    chunk_delay_s: float = 0.0  # between stream chunks
    headers: dict[str, str] = field(default_factory=dict)
    # Sent as the usage object exactly as given (impossible counts included), instead of
    # the counts above.
    raw_usage: dict[str, Any] | None = None


FaultKind = Literal["status", "hang", "malformed", "drop", "broken_stream"]
StreamBreak = Literal["cut", "garbage", "error", "truncated"]


@dataclass(frozen=True)
class Fault:
    """A failure to inject; build one with the class methods below.

    Retryable faults carry ``retry-after-ms: 1`` unless told otherwise (see
    ``FAST_RETRY_AFTER_MS``). In ``error`` messages, ``{model}`` becomes the requested
    model, ``{key}`` a masked form of the bearer key (as the real API does) and
    ``{raw_key}`` the whole key (a careless proxy), so tests can check that clients scrub
    keys from what they show.
    """

    kind: FaultKind
    status: int = 500
    error: dict[str, Any] | None = None  # the "error" object of a status fault
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the fault; for "hang", how long to hold the connection
    body: bytes = b""  # "malformed": the raw body sent with status 200
    content_type: str = "application/json"
    partial: bool = True  # "drop": send the headers and part of the body before closing
    mode: StreamBreak = "cut"  # "broken_stream": how the stream breaks
    after_chunks: int = 2  # "broken_stream": content chunks sent before it breaks
    text: str = "this reply never finishes because the stream breaks"

    # -- HTTP status faults, bodies shaped like the real API's -------------------------
    @classmethod
    def status_error(
        cls,
        status: int,
        message: str,
        *,
        type: str | None = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        error = {"message": message, "type": type, "param": param, "code": code}
        return cls("status", status=status, error=error, headers=dict(headers or {}))

    @classmethod
    def unauthorized(cls, message: str | None = None) -> Fault:
        return cls.status_error(
            401,
            message
            or "Incorrect API key provided: {key}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )

    @classmethod
    def forbidden(cls, message: str | None = None) -> Fault:
        return cls.status_error(
            403, message or "Project does not have access to model `{model}`.", code=None
        )

    @classmethod
    def model_not_found(cls, message: str | None = None) -> Fault:
        return cls.status_error(
            404,
            message or "The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )

    @classmethod
    def bad_request(
        cls, message: str, *, param: str | None = None, code: str | None = None
    ) -> Fault:
        return cls.status_error(400, message, param=param, code=code)

    @classmethod
    def rate_limited(
        cls,
        *,
        retry_after_s: float | None = None,
        retry_after_ms: float | None = FAST_RETRY_AFTER_MS,
        message: str | None = None,
    ) -> Fault:
        return cls.status_error(
            429,
            message
            or "Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, "
            "Requested 1. Please try again later.",
            type="requests",
            code="rate_limit_exceeded",
            headers=_retry_headers(retry_after_s, retry_after_ms),
        )

    @classmethod
    def quota_exceeded(cls) -> Fault:
        return cls.status_error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            type="insufficient_quota",
            code="insufficient_quota",
        )

    @classmethod
    def server_error(
        cls,
        status: int = 500,
        message: str = "The server had an error while processing your request. Sorry about that!",
        *,
        retry_after_s: float | None = None,
        retry_after_ms: float | None = FAST_RETRY_AFTER_MS,
    ) -> Fault:
        return cls.status_error(
            status,
            message,
            type="server_error",
            headers=_retry_headers(retry_after_s, retry_after_ms),
        )

    @classmethod
    def unavailable(
        cls,
        *,
        retry_after_s: float | None = None,
        retry_after_ms: float | None = FAST_RETRY_AFTER_MS,
    ) -> Fault:
        return cls.server_error(
            503,
            "The engine is currently overloaded, please try again later.",
            retry_after_s=retry_after_s,
            retry_after_ms=retry_after_ms,
        )

    # -- transport and body faults ------------------------------------------------------
    @classmethod
    def timeout(cls, hang_s: float = 5.0) -> Fault:
        """Hold the connection without answering for ``hang_s``, then close it."""
        return cls("hang", delay_s=hang_s)

    @classmethod
    def malformed(
        cls,
        body: bytes = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [',
        content_type: str = "application/json",
        *,
        retry_after_ms: float | None = FAST_RETRY_AFTER_MS,
    ) -> Fault:
        """Status 200 with a body that is not a Chat Completions reply."""
        headers = _retry_headers(None, retry_after_ms)
        return cls("malformed", status=200, body=body, content_type=content_type, headers=headers)

    @classmethod
    def no_choices(cls, *, retry_after_ms: float | None = FAST_RETRY_AFTER_MS) -> Fault:
        body = {"id": "chatcmpl-nochoices", "object": "chat.completion", "created": 0}
        return cls.malformed(json.dumps(body).encode(), retry_after_ms=retry_after_ms)

    @classmethod
    def drop(cls, *, partial: bool = True) -> Fault:
        """Close the connection mid-response (or, with partial=False, before any byte)."""
        return cls("drop", partial=partial)

    @classmethod
    def broken_stream(
        cls,
        mode: StreamBreak = "cut",
        *,
        after_chunks: int = 2,
        retry_after_ms: float | None = FAST_RETRY_AFTER_MS,
    ) -> Fault:
        """Start a stream (its headers carry ``retry_after_ms``), then break it.

        cut: the connection closes mid-stream; garbage: a data line that is not JSON;
        error: an in-stream ``{"error": ...}`` event; truncated: the body ends cleanly but
        without a finish_reason or ``[DONE]``. Non-streaming requests get a dropped body.
        """
        headers = _retry_headers(None, retry_after_ms)
        return cls("broken_stream", mode=mode, after_chunks=after_chunks, headers=headers)


Spec = Reply | Fault
Responder = Callable[[dict[str, Any]], Spec]
# An extra route (tests/support/fake_batches.py): answers a request (True/False: keep the
# connection open) or returns None to leave it to the next one.
Handler = Callable[["RecordedRequest", asyncio.StreamWriter], Awaitable[bool | None]]


def _retry_headers(retry_after_s: float | None, retry_after_ms: float | None) -> dict[str, str]:
    """``retry-after`` when ``retry_after_s`` is given (then instead of ``retry-after-ms``,
    which clients read first), else ``retry-after-ms`` when ``retry_after_ms`` is given."""
    if retry_after_s is not None:
        return {"retry-after": f"{retry_after_s:g}"}
    if retry_after_ms is not None:
        return {"retry-after-ms": f"{retry_after_ms:g}"}
    return {}


@dataclass
class RecordedRequest:
    """One request the server received. Times are ``time.monotonic()``."""

    method: str
    path: str
    # Holds Authorization: kept out of repr so a failing assert never prints a key.
    headers: dict[str, str] = field(repr=False)
    raw: bytes = field(repr=False)
    body: Any = None  # the parsed JSON body, when there is one
    arrived: float = 0.0
    completed: float | None = None  # when the reply was fully sent (or the connection cut)
    reply: Spec | None = None

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True


def count_words(text: str) -> int:
    return len(text.split())


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _prompt_words(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    return sum(
        count_words(_content_text(m.get("content"))) for m in messages if isinstance(m, dict)
    )


def echo_responder(body: dict[str, Any]) -> Reply:
    """Deterministic default: echo the last user message (as JSON when JSON was asked for)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    said = _content_text(last.get("content"))
    fmt = (body.get("response_format") or {}).get("type")
    if fmt in ("json_object", "json_schema"):
        return Reply(json.dumps({"echo": said}))
    text, finish = f"Echo: {said}", "stop"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    words = text.split()
    if isinstance(limit, int) and 0 < limit < len(words):
        text, finish = " ".join(words[:limit]), "length"
    return Reply(text, finish_reason=finish)


def _split_words(text: str) -> list[str]:
    # Words with their trailing space: joining the pieces gives the text back exactly.
    return re.findall(r"\S+\s*|\s+", text)


def _mask_key(key: str | None) -> str:
    if not key:
        return "<none>"
    return f"{key[:3]}****{key[-4:]}" if len(key) > 8 else "****"


def _usage_json(spec: Reply, body: dict[str, Any], text: str) -> dict[str, Any]:
    if spec.raw_usage is not None:
        return dict(spec.raw_usage)
    prompt = spec.prompt_tokens if spec.prompt_tokens is not None else _prompt_words(body)
    completion = spec.completion_tokens if spec.completion_tokens is not None else count_words(text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": spec.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": spec.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(payload: Any) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return _chunk(f"data: {data}\n\n".encode())


@dataclass(frozen=True)
class AccountLimit:
    """An account's rate limits, per model, the way OpenAI enforces them: ``rpm`` requests
    and ``tpm`` tokens per minute (None: no such limit), each a bucket that refills
    continuously and holds ``window_s`` seconds' worth (a short window: a minute's limit
    cannot be spent in one burst). A request counts max(max_tokens, characters / 4)
    tokens (OpenAI's estimate); one larger than the bucket goes when the bucket is full."""

    rpm: float | None = None
    tpm: float | None = None
    window_s: float = 1.0


def _duration(seconds: float) -> str:
    """OpenAI's (Go's) way to write a duration: "20ms", "1.2s", "6m0s", "1h2m3s"."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{round(rest, 3):g}s"
    if minutes >= 60:
        return f"{int(minutes // 60)}h{int(minutes % 60)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


def _request_tokens(body: dict[str, Any]) -> int:
    """What a request counts against a TPM limit: max(max_tokens, characters / 4)."""
    chars = sum(
        len(_content_text(m.get("content")))
        for m in body.get("messages") or []
        if isinstance(m, dict)
    )
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return max(limit if isinstance(limit, int) else 0, math.ceil(chars / 4))


class _Meter:
    """One limit of an emulated account (see ``AccountLimit``)."""

    def __init__(self, per_minute: float, window_s: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60
        self.capacity = self.level = max(1.0, self.rate * window_s)
        self.stamp = time.monotonic()

    def wait(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits (0: it fits now)."""
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def used(self) -> float:
        return self.capacity - self.level

    def headers(self, kind: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": f"{self.limit:g}",
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(self.limit - self.used()))),
            f"x-ratelimit-reset-{kind}": _duration(max(0.0, self.used()) / self.rate),
        }


class FakeOpenAI:
    """The server; use it as a context manager (or call start() and stop())."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        responder: Responder | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        api_key: str | None = None,
        record: bool = True,
        account_limit: AccountLimit | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.latency_s = latency_ms / 1000.0  # applied before every chat reply
        self.responder: Responder = responder or echo_responder
        self.models = list(models)
        self.api_key = api_key  # when set, any other bearer key gets a 401
        self.record = record  # off for long benchmark runs
        self._queue: deque[Spec] = deque()
        self._requests: list[RecordedRequest] = []
        self._served = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self.handlers: list[Handler] = []  # extra routes, asked before the built-in ones
        self.account_limit = account_limit  # emulate an account's rate limits
        self.rate_limited = 0  # requests refused by the account limit (429)
        self._meters: dict[str, tuple[_Meter | None, _Meter | None]] = {}

    # -- public API ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def queue(self, *specs: Spec | str, times: int = 1) -> None:
        """Append replies (a str is shorthand for ``Reply(text)``), each ``times`` times."""
        items = [Reply(s) if isinstance(s, str) else s for s in specs]
        with self._lock:
            for _ in range(times):
                self._queue.extend(items)

    @property
    def pending(self) -> int:
        """Queued specs not yet used."""
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.rstrip("/").endswith("/chat/completions")]

    @property
    def served(self) -> int:
        """Requests answered so far (counted even when not recording)."""
        with self._lock:
            return self._served

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._requests.clear()

    def start(self) -> FakeOpenAI:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve_connection, self.host, self.port, backlog=1024)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- server internals ----------------------------------------------------------------
    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conn_tasks):
            task.cancel()
        if self._conn_tasks:
            await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away; nothing to answer
        finally:
            self._conn_tasks.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read and answer one request; False closes the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # clean close between requests
        arrived = time.monotonic()
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = [*request_line.split(" ", 2), "", ""][:3]
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            raw = await _read_chunked(reader)
        else:
            raw = await reader.readexactly(int(headers.get("content-length") or 0))
        record = RecordedRequest(method, target, headers, raw, arrived=arrived)
        with self._lock:
            if self.record:
                self._requests.append(record)
            # Counted before the reply goes out: a client that has its answer must never
            # find it uncounted.
            self._served += 1
        keep_alive = await self._dispatch(record, writer)
        record.completed = time.monotonic()
        return keep_alive and headers.get("connection", "").lower() != "close"

    async def _dispatch(self, rec: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        path = rec.path.split("?", 1)[0].rstrip("/")
        if self.api_key is not None and rec.api_key != self.api_key:
            return await self._send_fault(writer, rec, {}, Fault.unauthorized())
        for handler in self.handlers:
            handled = await handler(rec, writer)
            if handled is not None:
                return handled
        if rec.method == "GET" and path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models
            ]
            return await self._send_json(writer, 200, {"object": "list", "data": data})
        if rec.method != "POST" or path != "/v1/chat/completions":
            error = {
                "message": f"Invalid URL ({rec.method} {path})",
                "type": "invalid_request_error",
            }
            return await self._send_json(writer, 404, {"error": error})
        try:
            body = json.loads(rec.raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            error = {"message": "We could not parse the JSON body of your request.", "type": "x"}
            return await self._send_json(writer, 400, {"error": error})
        rec.body = body
        if self.account_limit is not None:
            return await self._dispatch_limited(rec, body, writer)
        spec = self._next_spec(body)
        rec.reply = spec
        delay = self.latency_s + spec.delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if isinstance(spec, Reply):
            if body.get("stream") is True:
                return await self._send_stream(writer, body, spec)
            return await self._send_reply(writer, body, spec)
        return await self._send_fault(writer, rec, body, spec)

    async def _dispatch_limited(
        self, rec: RecordedRequest, body: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        """A chat request under the account limit: a 429 at once when it is over the
        limit, else the usual answer, with x-ratelimit-* headers."""
        refused, headers = self._charge(body)
        if refused is not None:
            rec.reply = refused
            with self._lock:
                self.rate_limited += 1
            return await self._send_fault(writer, rec, body, refused)
        spec = self._next_spec(body)
        spec = dataclasses.replace(spec, headers={**headers, **spec.headers})
        rec.reply = spec
        delay = self.latency_s + spec.delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if isinstance(spec, Reply):
            if body.get("stream") is True:
                return await self._send_stream(writer, body, spec)
            return await self._send_reply(writer, body, spec)
        return await self._send_fault(writer, rec, body, spec)

    def _charge(self, body: dict[str, Any]) -> tuple[Fault | None, dict[str, str]]:
        """Count a request against the account limit: (a 429 when it is over, or None;
        the x-ratelimit-* headers). Runs on the server's one event loop: no lock."""
        limit = self.account_limit
        assert limit is not None
        model = str(body.get("model") or "")
        meters = self._meters.get(model)
        if meters is None:
            meters = self._meters[model] = (
                _Meter(limit.rpm, limit.window_s) if limit.rpm else None,
                _Meter(limit.tpm, limit.window_s) if limit.tpm else None,
            )
        tokens = _request_tokens(body)
        now = time.monotonic()
        refused = None
        for meter, amount, kind, name in zip(
            meters, (1, tokens), ("requests", "tokens"), ("RPM", "TPM"), strict=True
        ):
            if meter is not None and refused is None:
                wait = meter.wait(amount, now)
                if wait > 0:
                    refused = (
                        f"Rate limit reached for {model} in organization org-fake on {kind} per "
                        f"min ({name}): Limit {meter.limit:g}, Used {math.ceil(meter.used())}, "
                        f"Requested {amount}. Please try again in {_duration(wait)}. Visit "
                        "https://platform.openai.com/account/rate-limits to learn more.",
                        kind,
                    )
        if refused is None:
            for meter, amount in zip(meters, (1, tokens), strict=True):
                if meter is not None:
                    meter.level -= amount
        headers: dict[str, str] = {}
        for meter, kind in zip(meters, ("requests", "tokens"), strict=True):
            if meter is not None:
                headers.update(meter.headers(kind))
        if refused is None:
            return None, headers
        fault = Fault.status_error(
            429, refused[0], type=refused[1], code="rate_limit_exceeded", headers=headers
        )
        return fault, headers

    def _next_spec(self, body: dict[str, Any]) -> Spec:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        try:
            return self.responder(body)
        except Exception as exc:  # a broken test responder should be visible, not hang
            return Fault.server_error(500, f"fake responder failed: {exc!r}")

    def _completion_id(self) -> str:
        return f"chatcmpl-fake{next(self._ids)}"

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
    ) -> bool:
        data = json.dumps(payload).encode()
        head = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        head += [("x-request-id", f"req_{next(self._ids)}"), *(headers or {}).items()]
        writer.write(_head(status, head) + data)
        await writer.drain()
        return True

    def _completion(self, body: dict[str, Any], spec: Reply) -> dict[str, Any]:
        completion: dict[str, Any] = {
            "id": self._completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": spec.model or body.get("model") or "unknown",
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": spec.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": spec.finish_reason,
                }
            ],
        }
        if spec.usage:
            completion["usage"] = _usage_json(spec, body, spec.text)
        return completion

    async def _send_reply(
        self, writer: asyncio.StreamWriter, body: dict[str, Any], spec: Reply
    ) -> bool:
        return await self._send_json(writer, 200, self._completion(body, spec), spec.headers)

    def _start_stream(self, writer: asyncio.StreamWriter, headers: dict[str, str]) -> None:
        head = [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("Transfer-Encoding", "chunked"),
            ("x-request-id", f"req_{next(self._ids)}"),
            *headers.items(),
        ]
        writer.write(_head(200, head))

    async def _send_stream(
        self, writer: asyncio.StreamWriter, body: dict[str, Any], spec: Reply
    ) -> bool:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = self._chunk_base(body, spec.model)
        extra = {"usage": None} if include_usage and spec.usage else {}
        pieces = list(spec.chunks) if spec.chunks is not None else _split_words(spec.text)

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**base, "choices": [choice], **extra})

        self._start_stream(writer, spec.headers)
        writer.write(event({"role": "assistant", "content": "", "refusal": None}))
        for piece in pieces:
            if spec.chunk_delay_s:
                await writer.drain()
                await asyncio.sleep(spec.chunk_delay_s)
            writer.write(event({"content": piece}))
        writer.write(event({}, spec.finish_reason))
        if include_usage and spec.usage:
            text = "".join(pieces)
            writer.write(_sse({**base, "choices": [], "usage": _usage_json(spec, body, text)}))
        writer.write(_sse("[DONE]") + b"0\r\n\r\n")
        await writer.drain()
        return True

    def _chunk_base(self, body: dict[str, Any], model: str | None = None) -> dict[str, Any]:
        return {
            "id": self._completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model or body.get("model") or "unknown",
            "system_fingerprint": "fp_fake",
        }

    async def _send_fault(
        self, writer: asyncio.StreamWriter, rec: RecordedRequest, body: dict[str, Any], fault: Fault
    ) -> bool:
        if fault.kind == "status":
            error = dict(fault.error or {})
            message = str(error.get("message") or "")
            message = message.replace("{model}", str(body.get("model", "")))
            message = message.replace("{raw_key}", rec.api_key or "")
            error["message"] = message.replace("{key}", _mask_key(rec.api_key))
            return await self._send_json(writer, fault.status, {"error": error}, fault.headers)
        if fault.kind == "hang":
            return False  # the delay already ran; close without a byte of answer
        if fault.kind == "malformed":
            head = [("Content-Type", fault.content_type), ("Content-Length", str(len(fault.body)))]
            writer.write(_head(200, [*head, *fault.headers.items()]) + fault.body)
            await writer.drain()
            return True
        if fault.kind == "broken_stream" and body.get("stream") is True:
            return await self._send_broken_stream(writer, body, fault)
        # "drop", and "broken_stream" on a non-streaming request
        if fault.partial or fault.kind == "broken_stream":
            data = json.dumps(self._completion(body, Reply(fault.text))).encode()
            head = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
            writer.write(_head(200, head) + data[: len(data) // 3])
            await writer.drain()
        return False

    async def _send_broken_stream(
        self, writer: asyncio.StreamWriter, body: dict[str, Any], fault: Fault
    ) -> bool:
        base = self._chunk_base(body)

        def event(delta: dict[str, Any]) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            return _sse({**base, "choices": [choice]})

        self._start_stream(writer, fault.headers)
        writer.write(event({"role": "assistant", "content": ""}))
        for piece in _split_words(fault.text)[: fault.after_chunks]:
            writer.write(event({"content": piece}))
        if fault.mode == "cut":
            await writer.drain()
            return False  # close without the terminating chunk
        if fault.mode == "garbage":
            writer.write(_chunk(b'data: {"choices": [{"delta": {"content": "oops\n\n'))
        elif fault.mode == "error":
            error = {"message": "The server had an error while processing your request.",
                     "type": "server_error"}  # fmt: skip
            writer.write(_sse({"error": error}))
            writer.write(_sse("[DONE]"))
        writer.write(b"0\r\n\r\n")  # "truncated": a clean end without finish_reason
        await writer.drain()
        return True


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers expected
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_openai",
        description="Serve a fake OpenAI Chat Completions API; prints its base URL first.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each reply")
    parser.add_argument("--record", action="store_true", help="keep every request in memory")
    parser.add_argument("--rpm", type=float, help="emulate an account's requests per minute")
    parser.add_argument("--tpm", type=float, help="emulate an account's tokens per minute")
    parser.add_argument(
        "--limit-window-s", type=float, default=1.0, help="the window --rpm/--tpm hold"
    )
    args = parser.parse_args(argv)
    account = None
    if args.rpm or args.tpm:
        account = AccountLimit(args.rpm, args.tpm, args.limit_window_s)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with FakeOpenAI(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        record=args.record,
        account_limit=account,
    ) as server:
        print(server.base_url, flush=True)
        while not stop.wait(0.2):  # a timed wait lets the signal handler run promptly
            pass
        print(f"fake-openai: served {server.served} requests", file=sys.stderr)
        if account is not None:
            print(f"fake-openai: rate-limited {server.rate_limited} requests", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
