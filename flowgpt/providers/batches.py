"""The Batch API a provider may offer (``flowgpt batch --batch-api``), as the engine sees it.

A Batch API takes a JSONL file of requests, answers them within a completion window (24 h
at OpenAI, at half the price) and hands back a file of replies and a file of errors, in any
order, each line tagged with the ``custom_id`` it was sent with. ``BatchAPI`` is everything
the engine's Batch API runner (``flowgpt.engine.batch_api``) uses of one: writing a request
as a line, uploading a file, creating, retrieving, finding (by metadata), cancelling a
batch, and reading its results as ``ChatResponse``s and ``ProviderError``s, so the runner
never sees an SDK object and tests can use a fake. OpenAI's is
``flowgpt.providers.openai_batches``; ``flowgpt.providers.factory.batch_api_of`` finds
a provider's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from flowgpt.errors import ProviderError, SpecError
from flowgpt.providers.base import ChatRequest, ChatResponse

__all__ = [
    "BATCH_ENDED",
    "CLOCK_SLACK_S",
    "BatchAPI",
    "BatchCapable",
    "BatchInfo",
    "LineResult",
    "split_lines",
]

# A batch in one of these states will not change any more: its results can be read.
BATCH_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
# Looking for a job's batches by their metadata (``BatchAPI.find``): those created before
# the job started, less this for clock skew, are not the job's.
CLOCK_SLACK_S = 3600.0


@dataclass(frozen=True)
class BatchInfo:
    """A batch as the API reports it; counts are of requests (lines)."""

    id: str
    status: str  # validating, in_progress, finalizing, completed, failed, expired, ...
    input_file_id: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: float = 0.0  # unix time
    total: int = 0
    completed: int = 0
    failed: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None  # of its requests, when the API says
    # Why the whole batch was refused (status "failed"), for every line it held.
    failure: ProviderError | None = None

    @property
    def ended(self) -> bool:
        return self.status in BATCH_ENDED


@dataclass(frozen=True)
class LineResult:
    """One line of a batch's results: its reply, or why it has none."""

    custom_id: str
    response: ChatResponse | None = None
    error: ProviderError | None = None


class BatchAPI(Protocol):
    """Everything the Batch API runner uses of a provider's Batch API.

    ``max_lines`` and ``max_bytes`` bound one batch file; ``encode`` writes one request as
    a line of it (what the provider's own call would send, as JSON, ending in a newline).
    Errors are ``flowgpt.errors.ProviderError`` subclasses, with what to do next.
    """

    max_lines: int
    max_bytes: int

    def encode(self, custom_id: str, request: ChatRequest) -> bytes: ...

    async def upload(self, name: str, data: bytes) -> str:
        """Upload a batch file; its file id."""
        ...

    async def create(self, file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        """Start a batch over an uploaded file, tagged with ``metadata``."""
        ...

    async def retrieve(self, batch_id: str) -> BatchInfo: ...

    async def find(self, metadata: Mapping[str, str], since: float) -> list[BatchInfo]:
        """The batches created at or after ``since`` (unix time) whose metadata holds
        every pair of ``metadata``: how a batch created just before a crash is found."""
        ...

    async def cancel(self, batch_id: str) -> BatchInfo: ...

    async def results(self, batch: BatchInfo, model: str) -> dict[str, LineResult]:
        """An ended batch's answers and errors by custom_id (``model``: the one its
        requests asked for, for error messages). Lines it never answered are missing."""
        ...


@runtime_checkable
class BatchCapable(Protocol):
    """A provider that offers a Batch API of its own (e.g. a test's fake)."""

    def batch_api(self) -> BatchAPI: ...


def split_lines(lines: Sequence[bytes], max_lines: int, max_bytes: int) -> list[list[int]]:
    """Which lines go into which file (by index, in order): at most ``max_lines`` lines
    and ``max_bytes`` bytes each. A line larger than ``max_bytes`` on its own is refused."""
    files: list[list[int]] = []
    current: list[int] = []
    size = 0
    for index, line in enumerate(lines):
        if len(line) > max_bytes:
            raise SpecError(
                f"--batch-api: one request is {len(line):,} bytes, more than a batch file "
                f"may hold ({max_bytes:,})",
                hint="shorten the prompt or its inputs, or run that row without --batch-api",
            )
        if current and (len(current) >= max_lines or size + len(line) > max_bytes):
            files.append(current)
            current, size = [], 0
        current.append(index)
        size += len(line)
    if current:
        files.append(current)
    return files
