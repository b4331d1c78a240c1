"""``flowgpt ui``: the run store in a local web page. The work is :mod:`flowgpt.ui`'s; this
parses the options, says where the page is and opens a browser when asked."""

from __future__ import annotations

from pathlib import Path

import click

from flowgpt.cli._common import _handle_errors
from flowgpt.ui._address import DEFAULT_PORT, HOST

__all__ = ["ui"]


@click.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help=f"The port on {HOST} (0: any free port).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False),
    help="The run store (default: $FLOWGPT_STORE or ~/.local/share/flowgpt/runs.sqlite3).",
)
@_handle_errors
def ui(port: int, open_browser: bool, store_path: str | None) -> None:
    """Browse the recorded runs in a web page: runs and batches with filters and totals,
    daily spend, each run's step graph, messages, replies, tokens and dollars.

    Read-only, on 127.0.0.1 only, offline; Ctrl-C stops it. Needs the ui extra:
    pip install 'flowgpt[ui]'."""
    from flowgpt.ui import serve

    def ready(url: str, store: Path) -> None:
        click.echo(f"flowgpt ui: {url}  (the runs in {store}; read-only; Ctrl-C stops it)")
        if open_browser:
            import webbrowser

            if not webbrowser.open(url):
                click.echo("no web browser found: open the address above", err=True)

    serve(store_path, port=port, on_ready=ready)
