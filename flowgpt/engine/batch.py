"""Batches: one workflow over many rows of inputs.

Rows run concurrently under one request limiter (so ``--concurrency``, ``--rpm`` and
``--tpm`` hold for the whole batch, not per row) and an optional budget shared by every
row. Results come back as rows finish. Everything is a stream: rows are read as they are
needed and each result is handed over the moment its row finishes, so memory stays flat
in the number of rows. The data file and the output file are ``flowgpt.engine.data``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Iterable, Mapping
from decimal import Decimal
from typing import Any

from flowgpt.accounting.budget import Budget
from flowgpt.engine.data import BatchRowResult, DataRow, row_digest
from flowgpt.engine.run import Run
from flowgpt.errors import FlowgptError
from flowgpt.results import RunResult
from flowgpt.usage import Usage

__all__ = ["StartRow", "run_rows"]

# Makes the run of one row, under the batch's shared budget (the engine passes it).
StartRow = Callable[[DataRow, Budget], Run]


async def run_rows(
    start: StartRow,
    rows: Iterable[Mapping[str, Any] | DataRow] | AsyncIterable[Mapping[str, Any] | DataRow],
    *,
    concurrency: int,
    max_cost_usd: Decimal | None = None,
    skip: Collection[int] = (),
    inputs_from_cli: bool = False,
) -> AsyncIterator[BatchRowResult]:
    """Run each row (``start`` makes its run), ``concurrency`` rows at a time, yielding
    each row's result as it finishes. Stops starting rows once the shared budget refuses a
    call. Rows given as mappings are numbered from 1; ``inputs_from_cli`` says their
    values are text to convert (as from a CSV file).

    ``concurrency`` workers each take the next row, run it, hand its result over and take
    another: a finished row's place is taken again at once, in the same task, so the
    number of rows in flight stays at the limit even when the event loop is busy (a task
    per row would wait for the loop to wake this generator and start its successor).
    At most ``concurrency`` results wait for the caller, so a slow caller holds the
    workers back instead of letting results pile up.
    """
    limit = concurrency
    shared = Budget(max_cost_usd, None, label="the batch's budget")
    source = _numbered(rows, inputs_from_cli)
    reading = asyncio.Lock()  # an async source may suspend in anext(): one reader at a time
    exhausted = False
    # A row's result, a worker's unexpected exception, or None when a worker is done.
    # Unbounded, so that a worker's last word always fits; `room` bounds the results.
    done: asyncio.Queue[BatchRowResult | BaseException | None] = asyncio.Queue()
    room = asyncio.Semaphore(limit)  # results not yet taken by the caller: at most `limit`

    async def next_row() -> DataRow | None:
        nonlocal exhausted
        async with reading:
            while not exhausted and not shared.refusals:
                row = await anext(source, None)
                if row is None:
                    exhausted = True
                elif row.number not in skip:
                    return row
            return None

    async def worker() -> None:
        try:
            while (row := await next_row()) is not None:
                # The row's run is awaited right here (no coroutine of its own between):
                # every level is crossed again whenever one of its requests suspends.
                try:
                    run = start(row, shared)
                    outcome = _succeeded(row, run.outcome(await run.execute()))
                except FlowgptError as exc:
                    outcome = _failed(row, exc)
                await room.acquire()
                done.put_nowait(outcome)
        except Exception as exc:  # not a row's failure (those are results): a bug
            done.put_nowait(exc)
        finally:
            done.put_nowait(None)

    workers = [asyncio.ensure_future(worker()) for _ in range(limit)]
    running = len(workers)
    try:
        while running:
            ready = [await done.get()]
            while not done.empty():  # everything that finished meanwhile, in row order
                ready.append(done.get_nowait())
            finished: list[BatchRowResult] = []
            for item in ready:
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    finished.append(item)
                    room.release()
            for result in sorted(finished, key=lambda r: r.row):
                yield result
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def _numbered(
    rows: Iterable[Mapping[str, Any] | DataRow] | AsyncIterable[Mapping[str, Any] | DataRow],
    from_text: bool,
) -> AsyncIterator[DataRow]:
    number = 0
    if isinstance(rows, AsyncIterable):
        async for item in rows:
            number += 1
            yield item if isinstance(item, DataRow) else DataRow(number, dict(item), 0, from_text)
    else:
        for item in rows:
            number += 1
            yield item if isinstance(item, DataRow) else DataRow(number, dict(item), 0, from_text)


def _succeeded(row: DataRow, result: RunResult) -> BatchRowResult:
    return BatchRowResult(
        row=row.number,
        inputs=result.inputs,
        status="ok",
        outputs=result.outputs,
        usage=result.usage,
        cost_usd=result.cost_usd,
        run_id=result.run_id,
        latency_s=result.latency_s,
        result=result,
        input_digest=row_digest(row.inputs),
    )


def _failed(row: DataRow, exc: FlowgptError) -> BatchRowResult:
    partial = exc.result if isinstance(exc.result, RunResult) else None
    return BatchRowResult(
        row=row.number,
        inputs=partial.inputs if partial else row.inputs,
        status="failed",
        usage=partial.usage if partial else Usage(),
        cost_usd=partial.cost_usd if partial else Decimal(0),
        error=exc.message,
        run_id=partial.run_id if partial else None,
        latency_s=partial.latency_s if partial else 0.0,
        result=partial,
        input_digest=row_digest(row.inputs),
    )
