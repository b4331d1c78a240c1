"""``flowgpt runs list``, ``runs show`` and ``runs stats``: the runs recorded in the store.

The work is the store's (``RunStore.list_entries``, ``load_run``, ``stats``) and the
result's (``cost_table``, ``render_transcript``); this module picks what to show and lays
it out to fit the terminal.
"""

from __future__ import annotations

import json
import os
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from flowgpt.cli._common import _handle_errors, _open_store
from flowgpt.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from flowgpt.store import BatchSummary, RunSummary, StatsRow

__all__ = ["runs"]

_STORE_OPTION = click.option(
    "--store", "store_path", type=click.Path(dir_okay=False), help="The run store."
)


@click.group()
def runs() -> None:
    """Runs recorded in the store: list them, show one, add up what they spent."""


# -- shared presentation ----------------------------------------------------------------


def _console() -> Console:
    from rich.console import Console

    from flowgpt.cli._console import fit_pipes

    return fit_pipes(Console(highlight=False))


def _when(stamp: str | None) -> str:
    return "-" if stamp is None else stamp[:19].replace("T", " ")


def _shown_path(path: str) -> str:
    """A recorded path as typed from here: relative to the current folder when inside it."""
    try:
        return os.path.relpath(path) if Path(path).is_relative_to(Path.cwd()) else path
    except ValueError:  # another drive (Windows)
        return path


def _run_json(r: RunSummary) -> dict[str, Any]:
    return {
        "kind": "run",
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
        "workflow_path": r.workflow_path,
        "provider": r.provider,
        "endpoint": r.endpoint,
        "batch": r.batch,
        "batch_row": r.batch_row,
    }


def _batch_json(b: BatchSummary) -> dict[str, Any]:
    return {
        "kind": "batch",
        "batch": b.batch,
        "workflow": b.workflow,
        "status": b.status,
        "started_at": b.started_at,
        "finished_at": b.finished_at,
        "cost_usd": None if b.cost_usd is None else str(b.cost_usd),
        "total_tokens": b.total_tokens,
        "rows": b.rows,
        "rows_by_status": b.rows_by_status,
        "runs": b.runs,
        "provider": b.provider,
        "endpoint": b.endpoint,
    }


def _fitted(
    columns: list[str], rows: list[dict[str, str]], *, optional: str, head: tuple[str, ...]
) -> Any:
    """A table of ``rows`` that fits the width it is printed in: all ``columns``; else
    without the ``optional`` one; else two lines per row (the ``head`` columns, then the
    others) — never a run id or a dollar amount cut short."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from flowgpt.results import FirstFit

    right = {"steps", "tokens", "cost", "row"}

    def table(names: list[str]) -> Table:
        t = Table()
        for name in names:
            t.add_column(name, no_wrap=True, justify="right" if name in right else "left")
        for row in rows:
            t.add_row(*(row[n] for n in names))
        return t

    rest = [c for c in columns if c not in head]
    widths = {n: max(len(row[n]) for row in rows) for n in head[:-1]}
    stacked = Group(
        *(
            Text(line)
            for row in rows
            for line in (
                "  ".join([*(row[n].ljust(widths[n]) for n in head[:-1]), row[head[-1]]]),
                "  " + " · ".join(_labelled(n, row[n]) for n in rest),
            )
        )
    )
    return FirstFit(table(columns), table([c for c in columns if c != optional]), stacked)


def _labelled(column: str, value: str) -> str:
    """A value out of its column says what it counts: "205 tokens", "2/3 steps"."""
    if column in ("tokens", "steps") and value[-1:].isdigit():
        return f"{value} {column}"
    return value


# -- runs list --------------------------------------------------------------------------


@runs.command("list")
@_STORE_OPTION
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option(
    "--batch",
    "batch",
    metavar="PATH",
    help="List the runs of one batch (its --out file), row by row.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_handle_errors
def runs_list(store_path: str | None, limit: int, batch: str | None, as_json: bool) -> None:
    """The most recent runs, newest first; a batch is one line (--batch PATH lists its
    rows). `provider` says who answered: openai (and the host, when not OpenAI's API),
    local or mock."""
    from flowgpt.money import format_usd
    from flowgpt.store import BatchSummary

    summary: BatchSummary | None = None
    batch_runs: list[RunSummary] = []
    with _open_store(store_path, False) as store:
        if batch is not None:
            summary = store.batch_summary(batch)
            batch_runs = store.list_runs(limit, batch=summary.batch)
            found: Sequence[RunSummary | BatchSummary] = batch_runs
        else:
            found = store.list_entries(limit)
        where = store.path
    if as_json:
        click.echo(
            json.dumps(
                [_batch_json(e) if isinstance(e, BatchSummary) else _run_json(e) for e in found],
                indent=2,
            )
        )
        return
    if not found:
        click.echo(f"no runs yet in {where}", err=True)
        return
    console = _console()
    if summary is not None:
        console.print(_batch_heading(summary, shown=len(found)), markup=False)
        rows = [
            {
                "row": str(r.batch_row) if r.batch_row is not None else "-",
                "run": r.run_id,
                "status": r.status,
                "started": _when(r.started_at),
                "steps": f"{r.steps_done}/{r.steps_total}",
                "tokens": f"{r.total_tokens:,}",
                "cost": format_usd(r.cost_usd),
            }
            for r in batch_runs
        ]
        columns = ["row", "run", "status", "started", "steps", "tokens", "cost"]
        head = ("row", "run", "status", "cost")
        console.print(_fitted(columns, rows, optional="started", head=head))
        return
    rows = []
    for e in found:
        if isinstance(e, BatchSummary):
            run, steps = f"batch {_shown_path(e.batch)}", f"{e.rows_ok}/{e.rows} rows"
        else:
            run, steps = e.run_id, f"{e.steps_done}/{e.steps_total}"
        rows.append(
            {
                "run": run,
                "workflow": e.workflow,
                "status": e.status,
                "cost": format_usd(e.cost_usd),
                "provider": e.via,
                "started": _when(e.started_at),
                "steps": steps,
                "tokens": f"{e.total_tokens:,}",
            }
        )
    # The run id holds its start time, so "started" is the column to drop when narrow.
    columns = ["run", "workflow", "provider", "status", "started", "steps", "tokens", "cost"]
    head = ("run", "workflow", "status", "cost")
    console.print(_fitted(columns, rows, optional="started", head=head))
    if any(isinstance(e, BatchSummary) for e in found):
        console.print("a batch is one line; `flowgpt runs list --batch PATH` lists its rows")


def _batch_heading(b: BatchSummary, *, shown: int) -> str:
    from flowgpt.money import format_usd

    counts = ", ".join(f"{n} {status}" for status, n in b.rows_by_status.items())
    line = (
        f"batch {_shown_path(b.batch)}: {b.workflow} · {b.rows} rows ({counts}) · "
        f"{b.runs} runs · {b.total_tokens:,} tokens · {format_usd(b.cost_usd)} · "
        f"{b.via}"
    )
    if shown < b.runs:
        line += f"\nshowing the first {shown} of its {b.runs} runs (-n N shows more)"
    return line


# -- runs show --------------------------------------------------------------------------


@runs.command("show")
@click.argument("run_id", required=False)
@_STORE_OPTION
@click.option(
    "--json", "as_json", is_flag=True, help="Print the whole run, messages included, as JSON."
)
@_handle_errors
def runs_show(run_id: str | None, store_path: str | None, as_json: bool) -> None:
    """What a run sent and got back: its cost table, then each step's messages as sent,
    role by role, and every reply (JSON pretty-printed) with why validation rejected it.
    RUN_ID may be a unique prefix; without it, the latest run."""
    from flowgpt.results import cost_table, render_transcript, result_to_dict

    with _open_store(store_path, False) as store:
        if run_id is None:
            run_id = store.latest_run_id()
            if run_id is None:
                raise InputError(f"no runs yet in {store.path}")
        result = store.load_run(run_id)
        summary = store.run_summary(result.run_id or run_id)
    if as_json:
        doc = result_to_dict(result, details=True)
        doc.update(
            started_at=summary.started_at,
            finished_at=summary.finished_at,
            workflow_path=summary.workflow_path,
            resumed_from=summary.resumed_from,
            provider=summary.provider,
            endpoint=summary.endpoint,
            batch=summary.batch,
            batch_row=summary.batch_row,
        )
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    facts = [
        f"run {summary.run_id}",
        f"started {_when(summary.started_at)} UTC",
        summary.via,
    ]
    if summary.batch is not None:
        facts.append(f"row {summary.batch_row} of batch {_shown_path(summary.batch)}")
    if summary.resumed_from:
        facts.append(f"resumed from {summary.resumed_from}")
    # Plain text around the table: messages are shown exactly as sent, wrapped (if at all)
    # by the terminal, never re-flowed.
    click.echo(" · ".join(facts))
    if summary.workflow_path:
        click.echo(f"workflow file: {_shown_path(summary.workflow_path)}")
    click.echo()
    _console().print(cost_table(result))
    click.echo()
    click.echo(render_transcript(result), nl=False)


# -- runs stats -------------------------------------------------------------------------


@runs.command("stats")
@_STORE_OPTION
@click.option(
    "--days",
    type=click.IntRange(min=1),
    metavar="N",
    help="Count only the last N days (today included; local time). Default: all.",
)
@click.option(
    "--include-mock",
    is_flag=True,
    help="Count --mock runs too (left out by default: their dollars were never billed).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_handle_errors
def runs_stats(store_path: str | None, days: int | None, include_mock: bool, as_json: bool) -> None:
    """Tokens and dollars the recorded runs spent (batch rows and chats included), by
    day, by model and by workflow. A cost without a known price shows as "unpriced"."""
    since = None if days is None else date.today() - timedelta(days=days - 1)
    with _open_store(store_path, False) as store:
        stats = store.stats(since=since, include_mock=include_mock)
    if as_json:
        click.echo(json.dumps(stats.to_dict(), indent=2, ensure_ascii=False))
        return
    console = _console()
    scope = "all runs" if since is None else f"since {since.isoformat()} ({days} days)"
    if not stats.total.runs:
        console.print(f"nothing to count ({scope})", markup=False)
    else:
        total = stats.total
        runs = f"{total.runs:,} run{'s' * (total.runs != 1)}"
        console.print(
            f"{scope}: {runs} · {total.total_tokens:,} tokens · {total.cost_text}", markup=False
        )
    if stats.mock_runs_left_out:
        n = stats.mock_runs_left_out
        console.print(
            f"left out: {n} --mock run{'s' * (n != 1)} (--include-mock counts them)",
            markup=False,
        )
    if stats.total.runs:
        for title, key, rows in (
            ("by day", "day", stats.by_day),
            ("by model", "model", stats.by_model),
            ("by workflow", "workflow", stats.by_workflow),
        ):
            console.print(_stats_table(title, key, rows))


def _stats_table(title: str, key: str, rows: list[StatsRow]) -> Any:
    """One grouping of the stats: a table, or a line per row where the table is too wide."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from flowgpt.results import FirstFit

    table = Table(title=title, title_justify="left")
    table.add_column(key, no_wrap=True)
    for name in ("runs", "prompt", "completion", "cost"):
        table.add_column(name, justify="right", no_wrap=True)
    lines = [Text(title)]
    for row in rows:
        runs, prompt, completion = (
            f"{row.runs:,}",
            f"{row.prompt_tokens:,}",
            f"{row.completion_tokens:,}",
        )
        table.add_row(row.key, runs, prompt, completion, row.cost_text)
        lines.append(
            Text(
                f"  {row.key}: {runs} run{'s' * (row.runs != 1)} · {prompt} → {completion} "
                f"tokens · {row.cost_text}"
            )
        )
    return FirstFit(table, Group(*lines))
