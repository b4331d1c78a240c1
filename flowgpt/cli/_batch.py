"""``flowgpt batch``: rows of inputs through one workflow, results streamed to a file."""

from __future__ import annotations

import asyncio
import functools
import sys
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from flowgpt.cli._common import (
    EXIT_RUN_FAILED,
    USD,
    _continue_command,
    _handle_errors,
    _limit_options,
    _make_provider,
    _open_store,
    _provider_options,
    _secrets,
    _store_options,
    _trace_option,
    _tracing,
)

if TYPE_CHECKING:
    from flowgpt.engine.data import BatchOutput
    from flowgpt.spec.workflow import Workflow


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
    type=USD,
    metavar="USD",
    help="Stop starting rows before any call that could take the whole batch past USD.",
)
@click.option("--model", help="Use this model for every step.")
@_store_options("batch's rows")
@click.option(
    "--batch-api",
    is_flag=True,
    help="Send the requests through OpenAI's Batch API, stage by stage: half the price, "
    "answers within 24 h. The same command again continues (docs/batch-api.md).",
)
@click.option(
    "--no-wait", is_flag=True, help="With --batch-api: submit the current stage and exit."
)
@click.option(
    "--cancel", is_flag=True, help="With --batch-api: cancel this batch's batches in flight."
)
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
    max_cost: Decimal | None,
    model: str | None,
    store_path: str | None,
    no_store: bool,
    batch_api: bool,
    no_wait: bool,
    cancel: bool,
    trace: bool,
    **provider_options: Any,
) -> None:
    """Run a workflow once per row of a data file, streaming results to --out.

    Rows run concurrently under one request limiter; a failed row does not stop the
    others. Running the same command again skips the rows already done in --out."""
    if batch_api or no_wait or cancel:
        if not batch_api:
            raise click.UsageError("--no-wait and --cancel go with --batch-api")
        from flowgpt.cli._batch_api import batch_api_command

        limits = {"concurrency": concurrency, "rpm": rpm, "tpm": tpm}
        batch_api_command(
            workflow=workflow,
            data=data,
            out=out,
            max_cost=max_cost,
            model=model,
            no_wait=no_wait,
            cancel=cancel,
            limits=limits,
            provider_options=provider_options,
            open_output=functools.partial(_open_output, out, data, workflow),
            store_path=store_path,
            no_store=no_store,
            trace=trace,
        )
        return
    from flowgpt.cli._progress import BatchProgress, rate_limit_summary
    from flowgpt.engine.data import read_rows, scan_rows
    from flowgpt.engine.engine import Engine
    from flowgpt.spec.loader import load_workflow

    wf = load_workflow(workflow)
    total = scan_rows(data, wf)  # every row checked before anything is spent
    store = _open_store(store_path, no_store)
    engine = Engine(
        provider=_make_provider(**provider_options),
        model=model,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        store=store,
        tracing=_tracing(trace),
    )
    command = _continue_command()
    budget = None if max_cost is None else str(max_cost)
    output = _open_output(out, data, workflow, wf)
    try:
        progress = BatchProgress(max(total - len(output.done), 0), holds=engine.rate_limit_holds)
        engine.on_event = progress.on_event

        async def go() -> None:
            # The engine's providers belong to this event loop: closed before it ends.
            async with engine:
                rows = engine.run_batch(
                    wf,
                    output.pending(read_rows(data)),
                    max_cost_usd=budget,
                    batch=str(Path(out).resolve()),
                )
                async for row in rows:
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
        if store is not None:
            store.close()
    left = total - output.skipped - progress.done
    summary = (
        f"{progress.done} rows run: {progress.done - progress.failed} ok, {progress.failed} "
        f"failed · {progress.tokens:,} tokens · {progress.money}"
    )
    if output.skipped:
        summary += f" · {output.skipped} already done"
    if engine.rate_limits.rate_limited:
        summary += f" · {rate_limit_summary(engine.rate_limits)}"
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


def _open_output(out: str, data: str, workflow: str, wf: Workflow) -> BatchOutput:
    """``--out`` opened for the batch, with or without --batch-api: never the data, the
    workflow or a prompt file (nor another batch's file in use); each row tagged with the
    workflow's version, the rows another version did pointed out; the key in use (and
    anything shaped like a key) never written."""
    from flowgpt.engine.data import BatchOutput, workflow_version

    others: dict[str | Path, str] = {data: "the data file", workflow: "the workflow file"}
    others.update({wf.base_dir / name: "a prompt file of the workflow" for name in wf.files})
    output = BatchOutput(
        out, wf.spec.name, others=others, version=workflow_version(wf), secrets=_secrets(wf)
    ).open()
    if output.stale:
        click.echo(
            f"note: {len(output.stale)} rows of {out} were done with another version of "
            "the workflow (its text or prompt files changed since); they are kept as they "
            "are: delete their lines (or use a new --out) to run them again",
            err=True,
        )
    return output
