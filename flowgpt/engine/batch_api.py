"""The Batch API runner: one workflow over many rows through a provider's Batch API.

Every row runs as an ordinary ``Run`` (so ``when``, ``for_each``, ``history``, JSON
schemas, checks, repairs and budgets mean exactly what they mean in a synchronous run),
but its provider is the runner: a request does not go out, it becomes a line of the next
batch file and the step waits for its answer. Once every unfinished row is waiting (the
rows are "settled"), those lines are the current stage: written as one JSONL file per
model (split at the API's 50,000 lines / 200 MB), uploaded, and made into batches. When
the batches end, their answers (in any order) go back to the steps that asked, which
validate them, repair or go on, and the rows settle again on the next stage's requests.
A line that failed (5xx) or was never answered (``batch_expired``, ``batch_cancelled``)
is sent again in the next round, within ``provider.max_retries``; a reply that fails
validation is re-asked by the run itself with the error fed back (``output.retries``).

Exactly once: each line's ``custom_id`` is ``row/step/attempt/n`` (``step`` is
``tags[2]`` for item 2 of a for_each step; ``n`` counts the lines sent for that attempt),
and the journal in the run store (``flowgpt.store.batch_journal``) records the file id
before its batch is created, the batch id as soon as the API returns it, and every line's
answer. Every batch carries the job and submission in its ``metadata``, so a batch created
just before a crash is found again rather than made twice. Running the same job again
replays the rows: a request whose answer is recorded gets it back at once (the same
request, by its fingerprint), a request in a batch still in flight waits for that batch,
and only requests never sent become new lines.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from flowgpt.accounting.budget import Budget
from flowgpt.accounting.prices import cost_of
from flowgpt.engine.batch import run_rows
from flowgpt.engine.calls import CALL_SITE
from flowgpt.engine.data import BatchRowResult, DataRow
from flowgpt.engine.plan import Plan
from flowgpt.engine.run import Run
from flowgpt.errors import BadRequestError, BudgetExceededError, ProviderError, ServerError
from flowgpt.providers.base import ChatRequest, ChatResponse, OnText, Provider
from flowgpt.providers.batches import CLOCK_SLACK_S, BatchAPI, BatchInfo, LineResult, split_lines
from flowgpt.providers.observe import note
from flowgpt.spec.workflow import Workflow
from flowgpt.store.batch_journal import BatchJournal, LineRecord, SubmissionRecord
from flowgpt.store.fingerprint import request_fingerprint
from flowgpt.tracing.base import NO_TRACING, BatchTrace

__all__ = ["ROWS_AT_ONCE", "BatchAPIRun", "BatchAPIStatus", "StartBatchRow", "cancel_batches"]

# Makes the run of one row: under the shared budget, sending through the given provider.
StartBatchRow = Callable[[DataRow, Budget, Provider], Run]

# The rows are settled when no row is busy and nothing happened for this many turns of
# the event loop: between a step's answer and its next request a run passes through a
# few awaits (a new task for a parallel step, a for_each gather), each one turn.
_QUIET_TURNS = 16
# Busy rows and nothing happening for this long can only be a bug: say so, do not hang.
_STUCK_S = 60.0
# Waiting for batches: the first look after this long, then 1.5 times longer each time
# nothing ended, up to the last.
_POLL_FIRST_S, _POLL_MAX_S = 2.0, 60.0
# Rows running at once by default: a row waiting for its batches holds some 20 KB.
ROWS_AT_ONCE = 50_000

Outcome = Literal["done", "waiting", "budget"]


@dataclass(frozen=True)
class BatchAPIStatus:
    """Progress of a Batch API run, reported at every change.

    ``event``: "started", "submitted" (a stage's batches were made), "batch" (a batch's
    status or counts changed), "results" (a batch's answers came back), "rows" (rows
    finished), "trouble" (a batch could not be looked at; ``message`` says why, and it
    is looked at again next time). ``stage``/``stages``: the deepest step of this round
    in the workflow's graph and the graph's depth; ``round`` counts submissions (repairs
    and retries make more rounds than stages). Dollars are the answers received so far at Batch API
    rates, and what the same answers would have cost synchronously.
    """

    event: str
    job_id: str
    round: int
    stage: int
    stages: int
    steps: tuple[str, ...]
    batches: tuple[BatchInfo, ...]
    rows: int
    done: int
    failed: int
    spent_usd: Decimal | None
    sync_usd: Decimal | None
    message: str | None = None  # for "trouble": what went wrong (it is tried again)


class _Row:
    """What the runner tracks of one row."""

    __slots__ = ("number", "sync_usd", "waiting")

    def __init__(self, number: int) -> None:
        self.number = number
        self.waiting = 0  # its calls waiting for a batch
        self.sync_usd: Decimal | None = Decimal(0)  # its answers at synchronous rates


class _Line:
    """One request line: recorded in the journal once it is in an uploaded file."""

    __slots__ = (
        "attempt",
        "custom_id",
        "error",
        "fingerprint",
        "future",
        "n",
        "request",
        "response",
        "row",
        "status",
        "step",
        "submission_id",
    )

    def __init__(self, record: LineRecord, request: ChatRequest | None = None) -> None:
        self.custom_id = record.custom_id
        self.submission_id: str | None = record.submission_id or None
        self.row, self.step, self.attempt, self.n = (
            record.row,
            record.step,
            record.attempt,
            record.n,
        )
        self.fingerprint = record.fingerprint
        self.status = record.status  # new (not sent yet), pending, ok, failed, retired
        self.response = record.response
        self.error = record.error
        self.request = request  # kept until the line is in a file
        self.future: asyncio.Future[None] | None = None

    def record(self) -> LineRecord:
        return LineRecord(
            custom_id=self.custom_id,
            submission_id=self.submission_id or "",
            row=self.row,
            step=self.step,
            attempt=self.attempt,
            n=self.n,
            fingerprint=self.fingerprint,
        )


class _RowProvider:
    """The provider a row's run sends through: each request becomes a batch line and the
    step waits for its answer. Named and located as the real provider, so prices and
    fingerprints are the real ones."""

    model_is_label = False

    def __init__(self, runner: BatchAPIRun, row: _Row) -> None:
        self.name = runner.provider.name
        self._runner = runner
        self._row = row

    def resolved_base_url(self) -> str | None:
        return self._runner.provider.resolved_base_url()

    async def complete(
        self, request: ChatRequest, *, on_text: OnText | None = None
    ) -> ChatResponse:
        return await self._runner._call(self._row, request)

    async def aclose(self) -> None:
        pass


class BatchAPIRun:
    """A workflow over rows through a Batch API; ``async for row in it`` gives each row's
    ``BatchRowResult`` as it finishes (in row order within a round).

    Made by ``Engine.run_batch_api``. ``job`` names the job in the run store: running a
    BatchAPIRun with the same job again continues it. At most ``rows_at_once`` rows run
    at once (default ``ROWS_AT_ONCE``; a stage holds a request of each); the others start
    as rows finish. With ``wait=False`` it submits the current stage and stops
    (``outcome == "waiting"``) instead of waiting for the batches.
    After the iteration, ``outcome`` says how it ended: "done" (every row finished),
    "waiting" (batches in flight, nothing more to do without waiting) or "budget" (the
    next stage's worst case could pass ``max_cost_usd``: nothing of it was submitted;
    ``message`` says why).
    """

    def __init__(
        self,
        *,
        workflow: Workflow,
        rows: Iterable[Mapping[str, Any] | DataRow] | AsyncIterable[Mapping[str, Any] | DataRow],
        start: StartBatchRow,
        provider: Provider,
        api: BatchAPI,
        store_path: str | Path,
        job: str,
        wait: bool = True,
        poll_interval_s: float | None = None,
        max_cost_usd: Decimal | None = None,
        skip: Collection[int] = (),
        inputs_from_cli: bool = False,
        on_status: Callable[[BatchAPIStatus], None] | None = None,
        rows_at_once: int | None = None,
        trace: BatchTrace = NO_TRACING,
    ) -> None:
        self.workflow = workflow
        self.rows_at_once = ROWS_AT_ONCE if rows_at_once is None else rows_at_once
        self.provider = provider
        self.api = api
        self.job_key = job
        self.wait = wait
        self.poll_interval_s = poll_interval_s
        self.max_cost_usd = max_cost_usd
        self.on_status = on_status
        self._rows_in = rows
        self._start = start
        self._store_path = store_path
        self._skip = skip
        self._inputs_from_cli = inputs_from_cli
        self._trace = trace  # its span ends with the iteration
        spec = workflow.spec
        self._max_retries = spec.provider.max_retries
        self._pricing = spec.pricing
        self._base_url = provider.resolved_base_url() or spec.provider.price_base_url
        plan = Plan.of(workflow)
        self._levels: dict[str, int] = {}  # a step's stage: 1 + the deepest it needs
        for sid in spec.step_ids:
            self._level(plan, sid)
        # -- how it ended, and progress
        self.job_id = ""
        self.outcome: Outcome | None = None
        self.message: str | None = None
        self.round = 0
        self.done = self.failed = 0
        self.spent_usd: Decimal | None = Decimal(0)  # answers received, at batch rates
        self.sync_usd: Decimal | None = Decimal(0)  # the same, at synchronous rates
        self.rows_cost_usd: Decimal | None = Decimal(0)  # rows finished, at batch rates
        self.rows_sync_usd: Decimal | None = Decimal(0)  # rows finished, synchronously
        # -- state
        self._journal: BatchJournal | None = None
        self._created_unix = 0.0
        # row -> (step, attempt) -> its lines, in the order they were made
        self._lines: dict[int, dict[tuple[str, int], list[_Line]]] = {}
        self._next_n: dict[tuple[int, str, int], int] = {}
        self._by_submission: dict[str, list[_Line]] = {}
        self._new: list[_Line] = []
        self._in_flight: dict[str, SubmissionRecord] = {}
        self._infos: dict[str, BatchInfo] = {}
        self._round_steps: tuple[str, ...] = ()
        self._row_state: dict[int, _Row] = {}
        self._runs: dict[int, Run] = {}
        self._finished: list[BatchRowResult] = []
        self._shared: Budget | None = None
        self._activity = 0  # bumped whenever a row does something the runner can see
        self._busy = 0  # rows started, not finished, with no call waiting
        self._poll_s = _POLL_FIRST_S

    def _level(self, plan: Plan, sid: str) -> int:
        if sid not in self._levels:
            deps = plan.steps[sid].deps
            self._levels[sid] = 1 + max((self._level(plan, d) for d in deps), default=0)
        return self._levels[sid]

    @property
    def stages(self) -> int:
        return max(self._levels.values(), default=0)

    @property
    def in_flight(self) -> list[BatchInfo]:
        """The batches not ended yet (as last seen)."""
        return [self._infos[s] for s in self._in_flight if s in self._infos]

    def __aiter__(self) -> AsyncIterator[BatchRowResult]:
        return self._run()

    # -- the run --------------------------------------------------------------------------

    async def _run(self) -> AsyncIterator[BatchRowResult]:
        try:
            async for result in self._rounds():
                yield result
        finally:
            self._trace.end()

    async def _rounds(self) -> AsyncIterator[BatchRowResult]:
        with BatchJournal(self._store_path) as journal:
            self._journal = journal
            job = journal.open_job(self.job_key, self.workflow.spec.name)
            self.job_id, self._created_unix = job.job_id, job.created_unix
            self.round = journal.last_round(job.job_id)
            self._trace.event(
                "flowgpt.batch_api.job",
                {"flowgpt.batch_api.job": job.job_id, "flowgpt.batch_api.round": self.round},
            )
            self._load(journal.lines(job.job_id))
            await self._recover(journal.open_submissions(job.job_id))
            rows = await _listed(self._rows_in)
            results = run_rows(
                self._start_row,
                rows,
                # Every row at once (a stage is every row's requests), up to a bound on
                # memory: beyond it, rows start as others finish, in later rounds.
                concurrency=max(min(len(rows), self.rows_at_once), 1),
                max_cost_usd=self.max_cost_usd,
                skip=self._skip,
                inputs_from_cli=self._inputs_from_cli,
            )
            consumer = asyncio.ensure_future(self._consume(results))
            self._status("started")
            try:
                first = True
                while True:
                    await self._settle(consumer)
                    for result in self._take_finished():
                        yield result
                    if self._shared is not None and self._shared.refusals:
                        self.outcome = "budget"  # nothing of this stage was submitted
                        break
                    if consumer.done():
                        consumer.result()  # a bug in a worker surfaces here
                        self.outcome = "done"
                        # Batches still in flight now hold nothing a row waits for (the
                        # workflow changed since they were sent): the job is over.
                        journal.finish_job(job.job_id)
                        break
                    # New lines go out once every batch has ended (one submission per
                    # stage), or at once when a run starts: they were due when it stopped.
                    if self._new and (first or not self._in_flight):
                        # With batches in flight, these are the rest of their round.
                        await self._submit(same_round=bool(self._in_flight))
                        first = False
                        if not self.wait:
                            self.outcome = "waiting"
                            break
                        continue
                    first = False
                    if not self._in_flight:
                        raise RuntimeError("rows wait for answers no batch will bring")
                    if await self._poll():
                        continue
                    if not self.wait:
                        self.outcome = "waiting"
                        break
                    await asyncio.sleep(self._next_poll_s())
            finally:
                consumer.cancel()
                await asyncio.gather(consumer, return_exceptions=True)
                self._journal = None

    def _start_row(self, row: DataRow, shared: Budget) -> Run:
        self._shared = shared
        state = self._row_state[row.number] = _Row(row.number)
        self._busy += 1
        self._activity += 1
        run = self._start(row, shared, _RowProvider(self, state))
        self._runs[row.number] = run
        return run

    async def _consume(self, results: AsyncIterator[BatchRowResult]) -> None:
        async for result in results:
            self._finished.append(result)
            if result.row in self._row_state:
                self._busy -= 1
            self._activity += 1

    async def _settle(self, consumer: asyncio.Future[None]) -> None:
        """Return once every unfinished row waits for an answer (or all have finished)."""
        quiet, seen, since = 0, -1, time.monotonic()
        while True:
            await asyncio.sleep(0)
            if consumer.done():
                return
            if self._activity != seen:
                quiet, seen, since = 0, self._activity, time.monotonic()
                continue
            quiet += 1
            if self._busy == 0 and quiet >= _QUIET_TURNS:
                return
            if quiet > 1000:  # rows busy yet nothing happens: don't spin the CPU
                if time.monotonic() - since > _STUCK_S:
                    raise RuntimeError(f"{self._busy} rows neither wait nor finish")
                await asyncio.sleep(0.001)

    def _take_finished(self) -> list[BatchRowResult]:
        """The rows finished since last time, in row order. When the batch budget refused
        a call, the rows it stopped are not finished: they are left for the next run."""
        finished, self._finished = sorted(self._finished, key=lambda r: r.row), []
        taken = []
        for result in finished:
            run = self._runs.pop(result.row, None)
            state = self._row_state.pop(result.row, None)
            budget_stop = (
                self._shared is not None
                and self._shared.refusals > 0
                and run is not None
                and isinstance(run.failure, BudgetExceededError)
            )
            if budget_stop:
                if self.message is None and run is not None and run.failure is not None:
                    self.message = run.failure.message
                continue
            taken.append(result)
            self._trace.row_done(result.ok, result.usage, result.cost_usd)
            self.done += 1
            self.rows_cost_usd = _add(self.rows_cost_usd, result.cost_usd)
            self.rows_sync_usd = _add(self.rows_sync_usd, state.sync_usd if state else None)
            if not result.ok:
                self.failed += 1
                # Running the batch again goes on from the row's run in the store (its
                # finished steps reused) and asks the rest afresh, not its failed lines.
                self._retire(result.row)
        if taken:
            self._status("rows")
        return taken

    def _retire(self, row: int) -> None:
        assert self._journal is not None
        self._journal.retire_row(self.job_id, row)
        for lines in self._lines.pop(row, {}).values():
            for line in lines:
                line.status = "retired"

    # -- calls ----------------------------------------------------------------------------

    async def _call(self, row: _Row, request: ChatRequest) -> ChatResponse:
        """A step's request: the recorded answer to the same request if there is one, else
        a line of the next batch (again, within the retries, while it fails)."""
        site = CALL_SITE.get()
        if site is None:
            raise RuntimeError("a batch line needs the run's call site (flowgpt.engine.calls)")
        fingerprint = request_fingerprint(
            request, base_url=self._base_url, provider=self.provider.name
        )
        key = (row.number, site.step, site.attempt)
        known = self._lines.setdefault(row.number, {}).setdefault((site.step, site.attempt), [])
        retries = position = 0
        while True:
            line = None
            while position < len(known):
                candidate = known[position]
                position += 1
                if candidate.fingerprint == fingerprint and candidate.status != "retired":
                    line = candidate
                    break
            if line is None:
                line = self._new_line(key, fingerprint, request)
                position = len(known)
            if line.status in ("new", "pending"):
                await self._wait_for(row, line)
            self._note_line(line)
            if line.response is not None:
                self._account(row, line.response, request.model)
                return line.response
            error = line.error or ServerError("the batch gave no answer")
            if error.retryable and retries < self._max_retries:
                retries += 1
                continue
            raise error

    def _new_line(self, key: tuple[int, str, int], fingerprint: str, request: ChatRequest) -> _Line:
        n = self._next_n.get(key, 0)
        self._next_n[key] = n + 1
        row, step, attempt = key
        record = LineRecord(
            custom_id=f"{row}/{step}/{attempt}/{n}",
            submission_id="",
            row=row,
            step=step,
            attempt=attempt,
            n=n,
            fingerprint=fingerprint,
            status="new",
        )
        line = _Line(record, request)
        self._lines[row][(step, attempt)].append(line)
        self._new.append(line)
        return line

    async def _wait_for(self, row: _Row, line: _Line) -> None:
        if line.future is None or line.future.done():
            line.future = asyncio.get_running_loop().create_future()
        if row.waiting == 0:
            self._busy -= 1
        row.waiting += 1
        self._activity += 1
        try:
            await line.future
        finally:
            row.waiting -= 1
            if row.waiting == 0:
                self._busy += 1
            self._activity += 1

    def _note_line(self, line: _Line) -> None:
        """Tell the request's span (if traced) which line of which batch answered it."""
        info = self._infos.get(line.submission_id) if line.submission_id else None
        attributes: dict[str, str] = {"flowgpt.batch_api.custom_id": line.custom_id}
        if info is not None:
            attributes["flowgpt.batch_api.batch_id"] = info.id
        note("flowgpt.batch_api.line", **attributes)

    def _account(self, row: _Row, response: ChatResponse, model: str) -> None:
        cost = cost_of(
            response.usage, model, base_url=self._base_url, overrides=self._pricing, batch=True
        )
        sync = cost_of(response.usage, model, base_url=self._base_url, overrides=self._pricing)
        self.spent_usd = _add(self.spent_usd, cost)
        self.sync_usd = _add(self.sync_usd, sync)
        row.sync_usd = _add(row.sync_usd, sync)

    def _resolve(self, line: _Line, outcome: ChatResponse | ProviderError) -> None:
        line.request = None
        if line.status == "retired":
            return
        if isinstance(outcome, ChatResponse):
            line.status, line.response = "ok", outcome
        else:
            line.status, line.error = "failed", outcome
        if line.future is not None and not line.future.done():
            line.future.set_result(None)

    # -- the journal and the API ----------------------------------------------------------

    def _load(self, records: list[LineRecord]) -> None:
        for record in records:
            key = (record.row, record.step, record.attempt)
            line = _Line(record)
            self._next_n[key] = max(self._next_n.get(key, 0), record.n + 1)
            self._by_submission.setdefault(record.submission_id, []).append(line)
            if record.status != "retired":
                by_site = self._lines.setdefault(record.row, {})
                by_site.setdefault((record.step, record.attempt), []).append(line)
        for by_site in self._lines.values():
            for lines in by_site.values():
                lines.sort(key=lambda line: line.n)

    def _metadata(self, submission: SubmissionRecord) -> dict[str, str]:
        return {
            "flowgpt_job": self.job_id,
            "flowgpt_submission": submission.submission_id,
            "flowgpt_round": str(submission.round),
            "flowgpt_workflow": self.workflow.spec.name[:500],
        }

    async def _recover(self, open_submissions: list[SubmissionRecord]) -> None:
        """Take up the batches of an earlier run of this job. One whose file was uploaded
        but whose batch id was never recorded is looked for by its metadata, and created
        only if the API has none."""
        assert self._journal is not None
        unknown = [s for s in open_submissions if s.batch_id is None]
        found: dict[str, BatchInfo] = {}
        if unknown:
            for info in await _job_batches(self.api, self.job_id, self._created_unix):
                found.setdefault(info.metadata.get("flowgpt_submission", ""), info)
        steps = {
            line.step.split("[")[0]
            for submission in open_submissions
            for line in self._by_submission.get(submission.submission_id, [])
        }
        self._round_steps = tuple(sorted(steps))
        for submission in open_submissions:
            if submission.batch_id is None and submission.submission_id in found:
                info = found[submission.submission_id]
                self._journal.set_batch(submission.submission_id, info.id, info.status)
                submission.batch_id = info.id
                self._infos[submission.submission_id] = info
            if submission.batch_id is not None:
                self._in_flight[submission.submission_id] = submission
            else:
                await self._create(submission)

    async def _submit(self, same_round: bool = False) -> None:
        """The new lines as batch files, one or more per model: each file recorded with
        its lines before its batch is created, the batch recorded as soon as it is."""
        assert self._journal is not None
        lines = sorted(self._new, key=lambda x: (x.row, x.step, x.attempt, x.n))
        self._new = []
        steps = {line.step.split("[")[0] for line in lines}
        if same_round and self.round:
            steps |= set(self._round_steps)
        else:
            self.round += 1
        self._round_steps = tuple(sorted(steps))
        by_model: dict[str, list[_Line]] = {}
        for line in lines:
            assert line.request is not None
            by_model.setdefault(line.request.model, []).append(line)
        for model, group in sorted(by_model.items()):
            encoded = [self.api.encode(x.custom_id, x.request) for x in group if x.request]
            assert len(encoded) == len(group)
            for indexes in split_lines(encoded, self.api.max_lines, self.api.max_bytes):
                part = [group[i] for i in indexes]
                data = b"".join(encoded[i] for i in indexes)
                submission = SubmissionRecord(
                    submission_id=secrets.token_hex(8),
                    job_id=self.job_id,
                    round=self.round,
                    model=model,
                    lines=len(part),
                    bytes=len(data),
                    file_id="",
                )
                submission.file_id = await self.api.upload(
                    f"flowgpt-{self.job_id}-{submission.submission_id}.jsonl", data
                )
                for line in part:
                    line.submission_id = submission.submission_id
                    line.status = "pending"
                self._journal.add_submission(submission, [line.record() for line in part])
                self._by_submission[submission.submission_id] = part
                for line in part:
                    line.request = None  # the file holds it now
                await self._create(submission)
        self._poll_s = _POLL_FIRST_S
        self._status("submitted")

    async def _create(self, submission: SubmissionRecord) -> None:
        """Make the batch of an uploaded file and record it. A batch the API refuses
        for good (a bad request: not a key or quota problem, which stops the run) fails
        its lines, so their rows fail with the reason instead of the job being stuck."""
        assert self._journal is not None
        try:
            info = await self.api.create(submission.file_id, self._metadata(submission))
        except BadRequestError as exc:
            self._record(submission, {}, missing=exc)
            return
        self._journal.set_batch(submission.submission_id, info.id, info.status)
        submission.batch_id = info.id
        self._infos[submission.submission_id] = info
        self._in_flight[submission.submission_id] = submission
        self._trace.event(
            "flowgpt.batch_api.submitted",
            {
                "flowgpt.batch_api.batch_id": info.id,
                "gen_ai.request.model": submission.model,
                "flowgpt.batch_api.lines": submission.lines,
                "flowgpt.batch_api.round": submission.round,
            },
        )

    async def _poll(self) -> bool:
        """Look at every batch in flight once; record the results of those that ended.
        True when any did."""
        assert self._journal is not None
        ended = False
        for sid, submission in list(self._in_flight.items()):
            assert submission.batch_id is not None
            try:
                info = await self.api.retrieve(submission.batch_id)
            except ProviderError as exc:
                if not exc.retryable:
                    raise
                # The network or the API is down for now: the batch goes on regardless;
                # look again next time rather than give up hours of waiting.
                self._status("trouble", exc.message)
                continue
            before = self._infos.get(sid)
            self._infos[sid] = info
            if before is None or before.status != info.status:
                self._journal.set_status(sid, info.status)
            if before is None or (before.status, before.completed, before.failed) != (
                info.status,
                info.completed,
                info.failed,
            ):
                self._status("batch")
            if info.ended:
                self._trace.event(
                    "flowgpt.batch_api.ended",
                    {
                        "flowgpt.batch_api.batch_id": info.id,
                        "flowgpt.batch_api.status": info.status,
                        "flowgpt.batch_api.completed": info.completed,
                        "flowgpt.batch_api.failed": info.failed,
                    },
                )
                results = await self.api.results(info, submission.model)
                missing = info.failure or ServerError(
                    f"batch {info.id} ended ({info.status}) without answering this request",
                    hint="it is sent again in the next round",
                )
                self._record(submission, results, missing=missing)
                del self._in_flight[sid]
                ended = True
        if ended:
            self._poll_s = _POLL_FIRST_S
            self._status("results")
        return ended

    def _record(
        self,
        submission: SubmissionRecord,
        results: Mapping[str, LineResult],
        *,
        missing: ProviderError,
    ) -> None:
        """Record the outcome of every line of a submission, in the journal and for the
        steps waiting for them: its result, or ``missing`` for a line with none."""
        assert self._journal is not None
        lines = self._by_submission.get(submission.submission_id, [])
        outcomes: list[ChatResponse | ProviderError] = []
        for line in lines:
            result = results.get(line.custom_id)
            outcome = None if result is None else result.response or result.error
            outcomes.append(outcome or missing)
        self._journal.record_results(
            submission.submission_id,
            [(line.custom_id, outcome) for line, outcome in zip(lines, outcomes, strict=True)],
        )
        for line, outcome in zip(lines, outcomes, strict=True):
            self._resolve(line, outcome)

    def _next_poll_s(self) -> float:
        if self.poll_interval_s is not None:
            return self.poll_interval_s
        wait, self._poll_s = self._poll_s, min(self._poll_s * 1.5, _POLL_MAX_S)
        return wait

    def _status(self, event: str, message: str | None = None) -> None:
        if self.on_status is None:
            return
        steps = self._round_steps
        self.on_status(
            BatchAPIStatus(
                event=event,
                job_id=self.job_id,
                round=self.round,
                stage=max((self._levels.get(s, 0) for s in steps), default=0),
                stages=self.stages,
                steps=steps,
                batches=tuple(self.in_flight),
                rows=len(self._row_state) + self.done,
                done=self.done,
                failed=self.failed,
                spent_usd=self.spent_usd,
                sync_usd=self.sync_usd,
                message=message,
            )
        )


async def cancel_batches(api: BatchAPI, store_path: str | Path, job: str) -> list[BatchInfo]:
    """Ask the API to cancel the job's batches in flight; what each is now. Answers that
    came before the cancel are kept: running the job again records them and sends the
    cancelled lines again. An empty list when the job has nothing in flight."""
    with BatchJournal(store_path) as journal:
        found = journal.find_job(job)
        if found is None:
            return []
        submissions = journal.open_submissions(found.job_id)
        ids = {s.batch_id for s in submissions if s.batch_id is not None}
        if any(s.batch_id is None for s in submissions):
            wanted = {s.submission_id for s in submissions}
            for info in await _job_batches(api, found.job_id, found.created_unix):
                if info.metadata.get("flowgpt_submission") in wanted:
                    ids.add(info.id)
        by_id = {s.batch_id: s for s in submissions if s.batch_id is not None}
        cancelled = []
        for batch_id in sorted(ids):
            info = await api.retrieve(batch_id)
            if not info.ended and info.status != "cancelling":
                info = await api.cancel(batch_id)
            if batch_id in by_id:
                journal.set_status(by_id[batch_id].submission_id, info.status)
            cancelled.append(info)
        return cancelled


async def _job_batches(api: BatchAPI, job_id: str, created_unix: float) -> list[BatchInfo]:
    """The job's batches as the API lists them (newest first), found by the job in their
    metadata: how a batch whose id was never recorded (a crash while it was created) is
    found again."""
    return await api.find({"flowgpt_job": job_id}, created_unix - CLOCK_SLACK_S)


async def _listed(
    rows: Iterable[Mapping[str, Any] | DataRow] | AsyncIterable[Mapping[str, Any] | DataRow],
) -> list[Mapping[str, Any] | DataRow]:
    """Every row, read at once: a stage holds a request of every row."""
    if isinstance(rows, AsyncIterable):
        return [row async for row in rows]
    return list(rows)


def _add(total: Decimal | None, cost: Decimal | None) -> Decimal | None:
    return None if total is None or cost is None else total + cost
