"""``flowgpt batch --batch-api``: the rows through OpenAI's Batch API, stage by stage.

The work is ``Engine.run_batch_api`` (``flowgpt.engine.batch_api``); this module checks
the options, shows progress (a live table on a terminal, a line per change otherwise),
writes the rows to ``--out`` as they finish and says how to continue.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from flowgpt.cli._common import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    _continue_command,
    _open_store,
    _tracing,
)
from flowgpt.errors import ProviderError
from flowgpt.money import format_usd

if TYPE_CHECKING:
    from flowgpt.engine.batch_api import BatchAPIRun, BatchAPIStatus
    from flowgpt.engine.data import BatchOutput, BatchRowResult
    from flowgpt.providers.batches import BatchInfo
    from flowgpt.spec.workflow import Workflow

# For tests and impatient users: look at batches in flight every this many seconds
# (default: after 2 s, then 1.5 times longer each time, up to a minute).
POLL_ENV = "FLOWGPT_BATCH_POLL_S"


def batch_api_command(
    *,
    workflow: str,
    data: str,
    out: str,
    max_cost: Decimal | None,
    model: str | None,
    no_wait: bool,
    cancel: bool,
    limits: dict[str, Any],
    provider_options: dict[str, Any],
    open_output: Callable[[Workflow], BatchOutput],
    store_path: str | None = None,
    no_store: bool = False,
    trace: bool = False,
) -> None:
    """The --batch-api side of ``flowgpt batch`` (see docs/batch-api.md); ``open_output``
    opens --out as the synchronous side does (``flowgpt.cli._batch._open_output``)."""
    if no_wait and cancel:
        raise click.UsageError("--no-wait and --cancel do different things: give one")
    given = [f"--{name}" for name, value in limits.items() if value is not None]
    if given:
        raise click.UsageError(
            f"{'/'.join(given)} do not apply to --batch-api: OpenAI schedules a batch's "
            "requests itself (use --max-cost to bound the money)"
        )
    if any(provider_options.values()):
        raise click.UsageError(
            "--batch-api sends the requests through OpenAI's Batch API; --mock and --local "
            "answer at once without one: give one or the other"
        )
    from flowgpt.engine.data import read_rows, scan_rows
    from flowgpt.engine.engine import Engine
    from flowgpt.spec.loader import load_workflow

    wf = load_workflow(workflow)
    job = f"batch:{Path(out).resolve()}"  # the same --out continues the same job
    # The journal of what was submitted lives in the store: without it, a crash would
    # submit (and pay for) everything again.
    with _open_store(store_path, no_store, needed_by="--batch-api") as store:
        engine = Engine(model=model, store=store, tracing=_tracing(trace))
        if cancel:
            _cancel(engine, wf, job, out)
            return
        total = scan_rows(data, wf)  # every row checked before anything is spent
        command = _continue_command()
        output = open_output(wf)
        progress = _Progress(wf.spec.name)

        async def go() -> BatchAPIRun:
            try:
                run = engine.run_batch_api(
                    wf,
                    output.pending(read_rows(data)),
                    job=job,
                    batch=str(Path(out).resolve()),  # as `flowgpt batch` names its rows
                    wait=not no_wait,
                    max_cost_usd=None if max_cost is None else str(max_cost),
                    poll_interval_s=_poll_interval(),
                    on_status=progress.status,
                )
                async for row in run:
                    output.write(row)
                    progress.row(row)
                return run
            finally:
                await engine.aclose()

        try:
            with progress:
                run = asyncio.run(go())
        except ProviderError as exc:
            click.echo(
                f"{exc.format()}\nnothing sent or answered so far is lost: once that is "
                f"fixed, run the same command again to continue:\n  {command}",
                err=True,
            )
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(
                f"interrupted: {progress.done} rows written to {out}; the batches in flight "
                "go on at OpenAI (and are paid). Run the same command again to continue:\n"
                f"  {command}\nor cancel them with:\n  {command} --cancel",
                err=True,
            )
            sys.exit(130)
        finally:
            engine.tracing.flush()  # spans are sent before the command ends
            output.close()
    _summary(run, progress, out, output.skipped, total, max_cost, command)


def _summary(
    run: BatchAPIRun,
    progress: _Progress,
    out: str,
    skipped: int,
    total: int,
    max_cost: Decimal | None,
    command: str,
) -> None:
    if progress.done or run.outcome == "done":
        said = (
            f"{progress.done} rows run: {progress.done - progress.failed} ok, "
            f"{progress.failed} failed · {progress.tokens:,} tokens · "
            f"{format_usd(run.rows_cost_usd)} at Batch API rates "
            f"({format_usd(run.rows_sync_usd)} synchronously)"
        )
        if skipped:
            said += f" · {skipped} already done"
        click.echo(f"{said} · results in {out}", err=True)
    code = EXIT_OK
    if run.outcome == "budget":
        click.echo(
            f"stopped by the batch budget (--max-cost {max_cost or 0:g}): the next stage was "
            f"not submitted: {run.message}\n"
            "raise --max-cost and run the same command again to continue",
            err=True,
        )
        code = EXIT_RUN_FAILED
    elif run.outcome == "waiting":
        left = total - skipped - progress.done
        batches = run.in_flight
        click.echo(
            f"{left} rows wait for {len(batches)} batch{'es' * (len(batches) != 1)} "
            "(answered within 24 h):",
            err=True,
        )
        for info in batches:
            click.echo(f"  {_batch_line(info)}", err=True)
        click.echo(f"run the same command again to continue:\n  {command}", err=True)
    if progress.failed:
        click.echo(
            f"{progress.failed} rows failed (their errors are in {out}); running the same "
            "command again retries them",
            err=True,
        )
        code = EXIT_RUN_FAILED
    sys.exit(code)


def _cancel(engine: Any, wf: Any, job: str, out: str) -> None:
    async def go() -> list[BatchInfo]:
        try:
            infos: list[BatchInfo] = await engine.cancel_batch_api(wf, job=job)
            return infos
        finally:
            await engine.aclose()

    infos = asyncio.run(go())
    if not infos:
        click.echo(f"no Batch API batches in flight for {out}", err=True)
        return
    cancelling = [i for i in infos if i.status == "cancelling"]
    if cancelling:
        n = len(cancelling)
        click.echo(f"cancelling {n} batch{'es' * (n != 1)}:", err=True)
    else:
        click.echo("nothing left to cancel; the batches of this run:", err=True)
    for info in infos:
        click.echo(f"  {_batch_line(info)}", err=True)
    click.echo(
        "answers that came before the cancel are kept (and paid). Run the command again "
        "without --cancel to continue (the cancelled requests are sent again), or write to "
        "a new --out to start over.",
        err=True,
    )


def _poll_interval() -> float | None:
    text = os.environ.get(POLL_ENV)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise click.UsageError(f"{POLL_ENV}={text!r}: give a number of seconds") from None
    return max(value, 0.0)


def _batch_line(info: BatchInfo) -> str:
    model = f" {info.model}" if info.model else ""
    failed = f", {info.failed} failed" if info.failed else ""
    return f"{info.id}{model} {info.status}: {info.completed}/{info.total} done{failed}"


class _Progress:
    """Stage k of n, each batch's status and counts, rows done and failed, dollars so far:
    a live table on a terminal, a line per change otherwise."""

    def __init__(self, workflow: str, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.workflow = workflow
        self.done = self.failed = self.tokens = 0
        self.last: BatchAPIStatus | None = None
        self.live: Live | None = None

    def __enter__(self) -> _Progress:
        if self.console.is_terminal:
            self.live = Live(self._table(), console=self.console, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def _money(self) -> str:
        s = self.last
        if s is None:
            return format_usd(Decimal(0))
        return f"{format_usd(s.spent_usd)} so far ({format_usd(s.sync_usd)} synchronously)"

    def _headline(self) -> str:
        s = self.last
        if s is None or s.round == 0:
            return f"{self.workflow}: starting"
        steps = ", ".join(s.steps)
        return f"stage {s.stage}/{s.stages} (round {s.round}: {steps})"

    def _rows(self) -> str:
        s = self.last
        done, failed, rows = (s.done, s.failed, s.rows) if s else (0, 0, 0)
        return f"rows {done}/{rows} done, {failed} failed · {self._money()}"

    def _table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_row(self._headline())
        for info in self.last.batches if self.last else ():
            table.add_row(f"  {_batch_line(info)}")
        table.add_row(self._rows())
        return table

    def _line(self, text: str) -> None:
        # One line per change, however long: logs are read by grep, not by width.
        (self.live.console if self.live else self.console).print(text, markup=False, soft_wrap=True)

    def status(self, status: BatchAPIStatus) -> None:
        self.last = status
        if status.event == "trouble":  # on a terminal too: the table does not show it
            self._line(f"warning: {status.message} (looking again later)")
        if self.live is not None:
            self.live.update(self._table())
            return
        if status.event == "submitted":
            shown = "; ".join(_batch_line(b) for b in status.batches)
            self._line(f"{self._headline()}: submitted {shown}")
        elif status.event == "batch":
            for info in status.batches:
                self._line(f"{self._headline()}: {_batch_line(info)}")
        elif status.event in ("results", "rows"):
            self._line(self._rows())

    def row(self, row: BatchRowResult) -> None:
        self.done += 1
        self.failed += not row.ok
        self.tokens += row.usage.total_tokens
        if self.live is not None:
            self.live.update(self._table())
