"""``flowgpt run``: one workflow run, with progress, outputs, the cost table and resume."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import Any

import click

from flowgpt.cli._common import (
    USD,
    _continue_command,
    _fail,
    _handle_errors,
    _limit_options,
    _make_provider,
    _open_store,
    _print_outputs,
    _provider_options,
    _read_inputs_file,
    _secrets,
    _store_options,
    _trace_option,
    _tracing,
)
from flowgpt.errors import FlowgptError, InputError, redact


@click.command()
@click.argument("workflow", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="An input.")
@click.option("--inputs-file", type=click.Path(dir_okay=False), help="Inputs as a JSON object.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.option(
    "-o",
    "--output",
    "out_file",
    type=click.Path(dir_okay=False),
    help="Also write the result (JSON) to FILE.",
)
@click.option("--model", help="Use this model for every step.")
@click.option(
    "--resume", metavar="RUN_ID", help="Continue a run: unchanged finished steps are reused at $0."
)
@_store_options("run")
@click.option(
    "--cache",
    is_flag=True,
    help="Answer identical requests of steps at temperature 0 from the store.",
)
@click.option(
    "--max-cost",
    type=USD,
    metavar="USD",
    help="Stop before any call that could take the run past USD (on top of `budget:`).",
)
@_limit_options
@_provider_options
@_trace_option
@_handle_errors
def run(
    workflow: str,
    pairs: tuple[str, ...],
    inputs_file: str | None,
    as_json: bool,
    out_file: str | None,
    model: str | None,
    max_cost: Decimal | None,
    concurrency: int | None,
    rpm: int | None,
    tpm: int | None,
    mock: bool,
    local: bool,
    local_model: str | None,
    resume: str | None,
    store_path: str | None,
    no_store: bool,
    cache: bool,
    trace: bool,
) -> None:
    """Run a workflow: progress on stderr, outputs on stdout, then the cost table.

    Every finished step is stored at once (see `flowgpt runs`), so a failed or
    interrupted run continues with --resume RUN_ID without paying again."""
    from flowgpt.cli._progress import Progress, rate_limit_summary
    from flowgpt.engine.engine import Engine
    from flowgpt.spec.inputs import parse_assignments
    from flowgpt.spec.loader import load_workflow

    wf = load_workflow(workflow)
    given: dict[str, Any] = _read_inputs_file(inputs_file) if inputs_file else {}
    given.update(parse_assignments(list(pairs), stdin=sys.stdin))
    provider = _make_provider(mock=mock, local=local, local_model=local_model)
    store = _open_store(store_path, no_store, needed_by="--resume" if resume else None)

    def resume_command(run_id: str) -> str:
        # The same provider, model, limits and store as this run (resuming a --mock run
        # must not turn into paid calls, nor drop a cost limit); the inputs are the run's.
        return _continue_command(drop={"pairs", "inputs_file", "resume"}, add=["--resume", run_id])

    if cache and store is None:
        raise InputError("--cache keeps answers in the run store", hint="drop --no-store")
    progress = Progress(wf.spec)
    engine = Engine(
        provider=provider,
        model=model,
        max_cost_usd=None if max_cost is None else str(max_cost),
        on_event=progress.on_event,
        store=store,
        cache=cache,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        tracing=_tracing(trace),
    )
    progress.holds = engine.rate_limit_holds
    error: FlowgptError | None = None
    try:
        with progress:
            try:
                result = engine.run_sync(wf, given, inputs_from_cli=True, resume=resume)
            except FlowgptError as exc:
                if exc.result is None:
                    raise
                error, result = exc, exc.result
    except KeyboardInterrupt:
        run_id = progress.run_id
        if store is not None and run_id:
            click.echo(
                f"interrupted: the finished steps are stored; continue with:\n"
                f"  {resume_command(run_id)}",
                err=True,
            )
        else:
            click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        engine.tracing.flush()  # spans are sent before the command ends
        if store is not None:
            store.close()
    secrets = _secrets(wf)  # a reply echoing the key is scrubbed, as in errors
    if out_file:
        with open(out_file, "w", encoding="utf-8") as f:
            f.write(redact(json.dumps(result.to_dict(), indent=2, ensure_ascii=False), secrets))
    if as_json:
        click.echo(redact(json.dumps(result.to_dict(), indent=2, ensure_ascii=False), secrets))
    elif error is None:
        if result.outputs:
            _print_outputs(result.outputs, secrets)
        elif result.steps:
            # No `outputs:` declared: show the last step's output rather than nothing.
            last = list(result.steps.values())[-1]
            _print_outputs({last.id: last.output}, secrets)
    progress.print_table(result)
    if engine.rate_limits.rate_limited:
        click.echo(rate_limit_summary(engine.rate_limits), err=True)
    if error is not None:
        finished = any(s.status in ("ok", "reused", "cached") for s in result.steps.values())
        then = []
        if store is not None and result.run_id and finished:
            then.append(
                f"after fixing it, `{resume_command(result.run_id)}` "
                "re-runs only what did not finish"
            )
        _fail(error, then)
