"""OpenAI's Files and Batch APIs on a ``FakeOpenAI`` server, for the Batch API tests.

    with FakeOpenAI() as server:
        batches = FakeBatches(server)          # adds /v1/files and /v1/batches
        batches.fail = lambda custom_id, body: Fault.server_error() if ... else None
        batches.expire = lambda custom_id, body: ...
        ...
        batches.answered                       # custom_ids answered with a 200, in order

Routes, shaped like the real API's (the real openai SDK talks to them):
``POST /v1/files`` (multipart upload), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches/{id}``, ``GET /v1/batches`` (newest first,
``limit``/``after`` pagination, as the SDK's paginator asks) and
``POST /v1/batches/{id}/cancel``.

A batch is checked when it is created (one endpoint, unique custom_ids, one model: else it
is "failed" with the reason, as OpenAI does) and answered when it is next looked at
(retrieved or listed) once ``complete_after_s`` has passed, unless ``hold`` is set: every
line the way the chat endpoint answers it (the server's queue, then its responder), in
shuffled order. ``fail(custom_id, body)`` may return a ``Fault`` for a line (a status
fault becomes an error-file line with that status); ``expire(custom_id, body)`` leaves a
line unanswered and the batch "expired", with the line in the error file as
``batch_expired``. ``refuse(lines)`` may return ``(code, message)`` to fail a whole batch
when it is created (as OpenAI fails a bad file, or one over the enqueued-token limit with
``token_limit_exceeded``). A cancelled batch answers nothing. ``on_create`` and ``on_retrieve``
are called (in the server's thread) before the reply goes out, e.g. to kill the client.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.fake_openai import FakeOpenAI, Fault, RecordedRequest, Reply

__all__ = ["FakeBatches"]

ENDED = ("completed", "failed", "expired", "cancelled")


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


class FakeBatches:
    """The Files and Batch APIs of one FakeOpenAI server."""

    def __init__(self, server: FakeOpenAI, *, complete_after_s: float = 0.0, seed: int = 0):
        self.server = server
        self.complete_after_s = complete_after_s
        self.hold = False  # keep batches in progress until this is False again
        self.fail: Callable[[str, dict[str, Any]], Fault | None] | None = None
        self.expire: Callable[[str, dict[str, Any]], bool] | None = None
        self.refuse: Callable[[list[dict[str, Any]]], tuple[str, str] | None] | None = None
        self.on_create: Callable[[dict[str, Any]], None] | None = None
        self.on_retrieve: Callable[[dict[str, Any]], None] | None = None
        self.files: dict[str, _File] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # in creation order
        self.lines: dict[str, list[str]] = {}  # batch id -> the custom_ids it holds
        self.answered: list[str] = []  # custom_ids answered with a 200, in order
        self.refused: list[str] = []  # custom_ids answered with an error status
        self._bodies: dict[str, list[dict[str, Any]]] = {}
        self._created: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        server.handlers.append(self._handle)

    # -- what tests read --------------------------------------------------------------------

    def answered_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self.answered)

    def sent(self) -> list[str]:
        """Every custom_id of every batch created, in order (a line sent twice shows twice)."""
        with self._lock:
            return [cid for ids in self.lines.values() for cid in ids]

    def models(self) -> list[str]:
        """The model of each batch, in creation order."""
        with self._lock:
            return [str(b["model"]) for b in self.batches.values()]

    # -- the routes -------------------------------------------------------------------------

    async def _handle(self, rec: RecordedRequest, writer: asyncio.StreamWriter) -> bool | None:
        path = rec.path.split("?", 1)[0].rstrip("/")
        query = dict(
            part.split("=", 1) for part in rec.path.partition("?")[2].split("&") if "=" in part
        )
        send = self.server._send_json
        if path == "/v1/files" and rec.method == "POST":
            return await send(writer, 200, self._upload(rec))
        if m := re.fullmatch(r"/v1/files/([^/]+)(/content)?", path):
            found = self.files.get(m.group(1))
            if found is None:
                return await send(writer, 404, _error(f"No such File object: {m.group(1)}"))
            if m.group(2):
                return await self._send_bytes(writer, found.data)
            return await send(writer, 200, found.doc())
        if path == "/v1/batches" and rec.method == "POST":
            status, doc = self._create(json.loads(rec.raw))
            if status == 200 and self.on_create is not None:
                self.on_create(doc)
            return await send(writer, status, doc)
        if path == "/v1/batches" and rec.method == "GET":
            return await send(writer, 200, self._list(query))
        if m := re.fullmatch(r"/v1/batches/([^/]+)(/cancel)?", path):
            with self._lock:
                batch = self.batches.get(m.group(1))
            if batch is None:
                return await send(writer, 404, _error(f"No batch found with id '{m.group(1)}'."))
            if m.group(2) and rec.method == "POST":
                return await send(writer, 200, self._cancel(batch))
            self._advance(batch)
            if self.on_retrieve is not None:
                self.on_retrieve(batch)
            return await send(writer, 200, batch)
        return None

    async def _send_bytes(self, writer: asyncio.StreamWriter, data: bytes) -> bool:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        writer.write(head.encode() + data)
        await writer.drain()
        return True

    def _upload(self, rec: RecordedRequest) -> dict[str, Any]:
        fields = _multipart(rec.raw, rec.headers.get("content-type", ""))
        filename, data = fields["file"]
        purpose = fields["purpose"][1].decode()
        return self._new_file(filename or "upload.jsonl", purpose, data).doc()

    def _new_file(self, filename: str, purpose: str, data: bytes) -> _File:
        made = _File(f"file-fake{next(self._ids)}", filename, purpose, data)
        with self._lock:
            self.files[made.id] = made
        return made

    def _create(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        source = self.files.get(str(params.get("input_file_id")))
        if source is None:
            return 400, _error(f"Invalid 'input_file_id': {params.get('input_file_id')}")
        endpoint = params.get("endpoint")
        now = int(time.time())
        batch: dict[str, Any] = {
            "id": f"batch_fake{next(self._ids)}",
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": source.id,
            "completion_window": params.get("completion_window"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": params.get("metadata") or {},
            "model": None,
        }
        bodies, problems = [], []
        seen: set[str] = set()
        for number, raw in enumerate(source.data.splitlines(), start=1):
            line = json.loads(raw)
            cid = line.get("custom_id")
            if cid in seen:
                problems.append((number, "duplicate_custom_id", f"custom_id {cid} is repeated"))
            seen.add(cid)
            if line.get("method") != "POST" or line.get("url") != endpoint:
                problems.append((number, "invalid_url", "the line's url is not the endpoint"))
            bodies.append(line)
        models = {line["body"].get("model") for line in bodies}
        if len(models) > 1:
            problems.append((1, "mixed_models", f"one model per batch, not {sorted(models)}"))
        if params.get("completion_window") != "24h":
            problems.append((0, "invalid_completion_window", "the window must be 24h"))
        refused = self.refuse(bodies) if self.refuse is not None else None
        if refused is not None:
            problems.append((0, *refused))
        batch["request_counts"]["total"] = len(bodies)
        batch["model"] = next(iter(models), None)
        if problems:
            batch["status"], batch["failed_at"] = "failed", now
            batch["errors"] = {
                "object": "list",
                "data": [
                    {"code": code, "message": message, "line": number, "param": None}
                    for number, code, message in problems
                ],
            }
        with self._lock:
            self.batches[batch["id"]] = batch
            self.lines[batch["id"]] = [str(line.get("custom_id")) for line in bodies]
            self._bodies[batch["id"]] = bodies
            self._created[batch["id"]] = time.monotonic()
        return 200, batch

    def _list(self, query: dict[str, str]) -> dict[str, Any]:
        limit = int(query.get("limit", 20))
        with self._lock:
            newest_first = list(reversed(self.batches.values()))
        if "after" in query:
            ids = [b["id"] for b in newest_first]
            newest_first = newest_first[ids.index(query["after"]) + 1 :]
        page = newest_first[:limit]
        for batch in page:
            self._advance(batch)
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(newest_first) > limit,
        }

    def _cancel(self, batch: dict[str, Any]) -> dict[str, Any]:
        if batch["status"] not in ENDED:
            batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
        return batch

    # -- answering ----------------------------------------------------------------------------

    def _advance(self, batch: dict[str, Any]) -> None:
        with self._lock:
            if batch["status"] in ENDED:
                return
            now = int(time.time())
            if batch["status"] == "cancelling":
                batch["status"], batch["cancelled_at"] = "cancelled", now
                return
            batch["status"], batch["in_progress_at"] = "in_progress", now
            due = self._created[batch["id"]] + self.complete_after_s
            if self.hold or time.monotonic() < due:
                return
            bodies = list(self._bodies[batch["id"]])
        self._rng.shuffle(bodies)  # answers come back in any order
        output, errors = [], []
        expired = False
        for line in bodies:
            cid, body = str(line["custom_id"]), line["body"]
            if self.expire is not None and self.expire(cid, body):
                expired = True
                errors.append(_result(cid, None, _batch_error("batch_expired")))
                continue
            spec = (self.fail(cid, body) if self.fail else None) or self.server._next_spec(body)
            if isinstance(spec, Reply):
                completion = self.server._completion(body, spec)
                output.append(_result(cid, {"status_code": 200, "body": completion}, None))
                with self._lock:
                    self.answered.append(cid)
                continue
            status = spec.status if spec.kind == "status" else 500
            error = spec.error or {"message": "The server had an error.", "type": "server_error"}
            errors.append(_result(cid, {"status_code": status, "body": {"error": error}}, None))
            with self._lock:
                self.refused.append(cid)
        with self._lock:
            if output:
                batch["output_file_id"] = self._file_of(batch, "output", output)
            if errors:
                batch["error_file_id"] = self._file_of(batch, "errors", errors)
            batch["request_counts"]["completed"] = len(output)
            batch["request_counts"]["failed"] = len(errors)
            batch["finalizing_at"] = now
            if expired:
                batch["status"], batch["expired_at"] = "expired", now
            else:
                batch["status"], batch["completed_at"] = "completed", now

    def _file_of(self, batch: dict[str, Any], kind: str, lines: list[dict[str, Any]]) -> str:
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        made = _File(
            f"file-fake{next(self._ids)}", f"{batch['id']}_{kind}.jsonl", "batch_output", data
        )
        self.files[made.id] = made  # the caller holds the lock
        return made.id


def _result(custom_id: str, response: dict[str, Any] | None, error: Any) -> dict[str, Any]:
    if response is not None:
        response = {"request_id": f"req_{custom_id}", **response}
    return {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": response,
            "error": error}  # fmt: skip


def _batch_error(code: str) -> dict[str, str]:
    return {
        "code": code,
        "message": "This request could not be executed before the completion window expired.",
    }


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


def _multipart(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, content)."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    assert found is not None, f"not multipart: {content_type}"
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in raw.split(b"--" + found.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, body = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        filename = re.search(rb'filename="([^"]*)"', head)
        if name is not None:
            fields[name.group(1).decode()] = (
                filename.group(1).decode() if filename else None,
                body[:-2] if body.endswith(b"\r\n") else body,
            )
    return fields
