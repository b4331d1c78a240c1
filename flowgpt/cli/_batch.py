"""``flowgpt batch``: rows of inputs through one workflow, results streamed to a file."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import click

from flowgpt.cli._common import (
    EXIT_RUN_FAILED,
    _continue_command,
    _handle_errors,
    _limit_options,
    _make_provider,
    _provider_options,
    _trace_option,
    _tracing,
)


@click.command()
@click.argument("workflow", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False),
    help="The rows: a .jsonl file (a JSON object per line) or a .csv file with a header.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Results, a JSON line per row; run again with the same file to resume.",
)
@_limit_options
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    metavar="USD",
    help="Stop starting rows before any call that could take the whole batch past USD.",
)
@click.option("--model", help="Use this model for every step.")
@_provider_options
@_trace_option
@_handle_errors
def batch(
    workflow: str,
    data: str,
    out: str,
    concurrency: int | None,
    rpm: int | None,
    tpm: int | None,
    max_cost: float | None,
    model: str | None,
    trace: bool,
    **provider_options: Any,
) -> None:
    """Run a workflow once per row of a data file, streaming results to --out.

    Rows run concurrently under one request limiter; a failed row does not stop the
    others. Running the same command again skips the rows already done in --out."""
    from flowgpt.cli._progress import BatchProgress
    from flowgpt.engine.data import BatchOutput, read_rows, scan_rows
    from flowgpt.engine.engine import Engine
    from flowgpt.spec.loader import load_workflow

    wf = load_workflow(workflow)
    total = scan_rows(data, wf)  # every row checked before anything is spent
    engine = Engine(
        provider=_make_provider(**provider_options),
        model=model,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        tracing=_tracing(trace),
    )
    command = _continue_command()
    budget = None if max_cost is None else str(max_cost)
    output = BatchOutput(out, wf.spec.name).open()
    try:
        skipped = 0

        def pending() -> Iterator[Any]:
            nonlocal skipped
            for row in read_rows(data):
                if output.check(row):
                    skipped += 1
                else:
                    yield row

        progress = BatchProgress(max(total - len(output.done), 0))

        async def go() -> None:
            async for row in engine.run_batch(wf, pending(), max_cost_usd=budget):
                output.write(row)
                progress.update(row)

        try:
            with progress:
                asyncio.run(go())
        except KeyboardInterrupt:
            click.echo(
                f"interrupted: {progress.done} rows written to {out}; run the same command "
                f"again to continue:\n  {command}",
                err=True,
            )
            sys.exit(130)
    finally:
        engine.tracing.flush()  # spans are sent before the command ends
        output.close()
    left = total - skipped - progress.done
    summary = (
        f"{progress.done} rows run: {progress.done - progress.failed} ok, {progress.failed} "
        f"failed · {progress.tokens:,} tokens · {progress.money}"
    )
    if skipped:
        summary += f" · {skipped} already done"
    click.echo(f"{summary} · results in {out}", err=True)
    if left > 0:
        click.echo(
            f"stopped by the batch budget (--max-cost {max_cost or 0:g}): {left} rows not run; "
            f"raise --max-cost and run the same command again to continue",
            err=True,
        )
    if progress.failed:
        click.echo(
            f"{progress.failed} rows failed (their errors are in {out}); running the same "
            "command again retries them",
            err=True,
        )
    if progress.failed or left > 0:
        sys.exit(EXIT_RUN_FAILED)
