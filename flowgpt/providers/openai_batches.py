"""OpenAI's Batch API through the openai SDK's public API (``flowgpt batch --batch-api``).

Files: ``client.files.create(file=..., purpose="batch")`` and ``client.files.content(...)``;
batches: ``client.batches.create/retrieve/list/cancel``. It uses the ``OpenAIProvider``'s
client (the same key, base URL, timeout and transport retries as its chat calls), writes
each request as the body ``chat.completions.create()`` would send (``max_tokens`` spelled
as the model wants it), and reads replies with the same code as a chat call's
(``_reply_of``), so a line's answer is exactly what the same call would have returned.
Errors become ``flowgpt.errors.ProviderError`` subclasses with what to do next.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, Final

import openai
from openai.types.chat import ChatCompletion

from flowgpt.errors import BadRequestError, MalformedResponseError, ProviderError, ServerError
from flowgpt.providers._openai_rules import (
    _FIRST_BACKOFF_S,
    _api_said,
    _body_is_quota,
    _body_message,
    _Call,
    _endpoint,
    _reply_of,
    _scrub,
    _settings,
    _status_error,
    _Unreadable,
)
from flowgpt.providers.base import ChatRequest, ChatResponse
from flowgpt.providers.batches import CLOCK_SLACK_S, BatchInfo, LineResult
from flowgpt.providers.openai import OpenAIProvider

__all__ = ["ENDPOINT", "OpenAIBatches"]

ENDPOINT: Final = "/v1/chat/completions"
# A batch's lines that failed for a reason sending them again can fix.
_RETRYABLE_CODES = frozenset({"batch_expired", "batch_cancelled"})
# A whole batch refused for a reason that passes (the queue of enqueued tokens is full).
_RETRYABLE_BATCH_CODES = frozenset({"token_limit_exceeded", "rate_limit_exceeded"})
# Between creates after a lost answer: the SDK's own backoff (_FIRST_BACKOFF_S, 0.5 s,
# doubling up to this).
_MAX_BACKOFF_S = 8.0


class OpenAIBatches:
    """The Batch API of the endpoint an ``OpenAIProvider`` sends to."""

    max_lines = 50_000  # OpenAI's limits for one batch file
    max_bytes = 200 * 1024 * 1024

    def __init__(self, provider: OpenAIProvider) -> None:
        self.provider = provider

    def __repr__(self) -> str:
        return f"OpenAIBatches({self.provider!r})"

    @property
    def endpoint(self) -> str:
        return _endpoint(self.provider.resolved_base_url())

    def encode(self, custom_id: str, request: ChatRequest) -> bytes:
        body = {"model": request.model, "messages": request.messages, **_settings(request)}
        line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    @asynccontextmanager
    async def _sdk(self, doing: str) -> AsyncIterator[openai.AsyncOpenAI]:
        client = self.provider.client()  # raises AuthenticationError when no key is set
        try:
            yield client
        except openai.NotFoundError as exc:
            raise BadRequestError(
                f"{self.endpoint} has no Batch API: it answered 404 to {doing}."
                f"{_api_said(_body_message(exc.body) or '', client.api_key)}",
                hint="--batch-api needs OpenAI's API (or a server with /v1/files and "
                "/v1/batches); run without --batch-api for this endpoint",
                status=404,
            ) from None
        except openai.OpenAIError as exc:
            raise self.provider._translate(exc, client.api_key, "(Batch API)", _Call()) from None

    async def upload(self, name: str, data: bytes) -> str:
        async with self._sdk("the upload of a batch file") as client:
            uploaded = await client.files.create(
                file=(name, data, "application/jsonl"), purpose="batch"
            )
        return uploaded.id

    async def create(self, file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        """Start a batch, exactly once: creating one is not idempotent, so instead of the
        SDK's blind retries, a create whose answer was lost (a timeout, a dropped
        connection, a 5xx) first looks for the batch by its metadata, and only when the
        API has none is it sent again (within ``max_retries``)."""
        since = time.time() - CLOCK_SLACK_S
        wait = _FIRST_BACKOFF_S
        for attempt in range(self.provider.max_retries + 1):
            try:
                async with self._sdk("the creation of a batch") as client:
                    batch = await client.with_options(max_retries=0).batches.create(
                        input_file_id=file_id,
                        endpoint=ENDPOINT,
                        completion_window="24h",
                        metadata=dict(metadata),
                    )
                return self._info(batch)
            except ProviderError as exc:
                if not exc.retryable or attempt == self.provider.max_retries:
                    raise
            made = await self.find(metadata, since)
            if made:
                return made[0]
            await asyncio.sleep(wait)
            wait = min(wait * 2, _MAX_BACKOFF_S)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def retrieve(self, batch_id: str) -> BatchInfo:
        async with self._sdk(f"a look at batch {batch_id}") as client:
            batch = await client.batches.retrieve(batch_id)
        return self._info(batch)

    async def find(self, metadata: Mapping[str, str], since: float) -> list[BatchInfo]:
        found = []
        async with self._sdk("the list of batches") as client:
            # Newest first, a page at a time: stop at the first one older than `since`.
            async for batch in client.batches.list(limit=100):
                if batch.created_at < since:
                    break
                tags = batch.metadata or {}
                if all(tags.get(key) == value for key, value in metadata.items()):
                    found.append(self._info(batch))
        return found

    async def cancel(self, batch_id: str) -> BatchInfo:
        async with self._sdk(f"cancelling batch {batch_id}") as client:
            batch = await client.batches.cancel(batch_id)
        return self._info(batch)

    async def results(self, batch: BatchInfo, model: str) -> dict[str, LineResult]:
        found: dict[str, LineResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            async with self._sdk(f"the download of batch {batch.id}'s results") as client:
                content = await client.files.content(file_id)
                key = client.api_key
            for raw in content.content.splitlines():
                if raw.strip():
                    line = self._line(raw, batch, model, key)
                    if line is not None:
                        found[line.custom_id] = line
        return found

    # -- reading what the API says ------------------------------------------------------

    def _info(self, batch: Any) -> BatchInfo:
        counts = batch.request_counts
        failure = None
        if batch.status == "failed":
            failure = self._batch_failure(batch)
        return BatchInfo(
            id=batch.id,
            status=batch.status,
            input_file_id=batch.input_file_id,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            created_at=float(batch.created_at),
            total=counts.total if counts else 0,
            completed=counts.completed if counts else 0,
            failed=counts.failed if counts else 0,
            metadata=dict(batch.metadata or {}),
            model=getattr(batch, "model", None),
            failure=failure,
        )

    def _batch_failure(self, batch: Any) -> ProviderError:
        errors = list(getattr(batch.errors, "data", None) or [])
        said = "; ".join(
            f"{e.message or e.code}" + (f" (line {e.line})" if e.line else "") for e in errors[:3]
        )
        codes = {e.code for e in errors}
        message = f"{self.endpoint} refused batch {batch.id}: {said or 'no reason given'}"
        if codes & _RETRYABLE_BATCH_CODES:
            return ServerError(message, hint="it is sent again in the next round")
        return BadRequestError(
            message, hint="fix what the message names (a step setting or the model) and run again"
        )

    def _line(self, raw: bytes, batch: BatchInfo, model: str, key: str) -> LineResult | None:
        try:
            doc = json.loads(raw)
            custom_id = str(doc["custom_id"])
        except (ValueError, KeyError, TypeError):
            return None  # not a result line: the requests it held count as unanswered
        response = doc.get("response") or None
        error = doc.get("error") or None
        if isinstance(response, dict) and response.get("status_code") == 200:
            return self._answer(custom_id, response.get("body"), batch)
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            # What the same call's error would have said (OpenAIProvider._translate).
            body = response.get("body")
            return LineResult(
                custom_id,
                error=_status_error(
                    response["status_code"],
                    env=self.provider.api_key_env,
                    endpoint=self.endpoint,
                    model=model,
                    retries=0,
                    said=_api_said(_body_message(body) or "", key),
                    headers={},
                    quota=_body_is_quota(body),
                    refused=False,
                ),
            )
        code = str((error or {}).get("code") or "unknown")
        message = _scrub(str((error or {}).get("message") or ""), key)
        if code in _RETRYABLE_CODES:
            return LineResult(
                custom_id,
                error=ServerError(
                    f"batch {batch.id} ended ({batch.status}) before this request was "
                    f"answered ({code})",
                    hint="it is sent again in the next round",
                ),
            )
        return LineResult(
            custom_id,
            error=BadRequestError(
                f"{self.endpoint} refused this request in batch {batch.id} ({code})"
                + (f": {message}" if message else ""),
                hint="fix what the message names and run again",
            ),
        )

    def _answer(self, custom_id: str, body: Any, batch: BatchInfo) -> LineResult:
        try:
            try:
                completion: Any = ChatCompletion.model_validate(body)
            except ValueError:
                # As leniently as the SDK reads a reply (it does not validate): a
                # compatible server may leave out what its model calls required.
                completion = _namespace(body)
            reply = _reply_of(completion)
        except _Unreadable as exc:
            return LineResult(
                custom_id,
                error=MalformedResponseError(
                    f"batch {batch.id} holds a reply that is not a valid chat completion: {exc}",
                    hint="it is sent again in the next round",
                ),
            )
        return LineResult(
            custom_id,
            response=ChatResponse(
                text=reply.text,
                usage=reply.usage,
                finish_reason=reply.finish_reason,
                model=reply.model,
                extra=reply.extra,
            ),
        )


def _namespace(value: Any) -> Any:
    """JSON as attributes (what ``_reply_of`` reads), lists kept as lists."""
    if isinstance(value, dict):
        return SimpleNamespace(**{str(k): _namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_namespace(v) for v in value]
    return value
