"""``flowgpt runs list`` and ``flowgpt runs show``: the runs recorded in the store."""

from __future__ import annotations

import json

import click

from flowgpt.cli._common import _handle_errors, _open_store


@click.group()
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

    from flowgpt.money import format_usd

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

    from flowgpt.results import cost_table

    with _open_store(store_path, False) as store:
        result = store.load_run(run_id)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    console = Console(width=max(Console().width, 120), highlight=False)
    console.print(cost_table(result))
    if result.error:
        click.echo(f"error: {result.error}")
