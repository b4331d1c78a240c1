"""``flowgpt init`` (a starter workflow, its prompt and tests) and ``flowgpt graph`` (the
step graph as Mermaid)."""

from __future__ import annotations

from pathlib import Path

import click

from flowgpt.cli._common import _handle_errors
from flowgpt.errors import InputError


@click.command()
@click.argument("name", default="hello")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False),
    default=".",
    help="Where to write the files (default: the current folder).",
)
@_handle_errors
def init(name: str, folder: str) -> None:
    """Write a starter workflow NAME.yaml (with prompts/NAME.md and NAME.test.yaml).

    It validates as written and runs offline with --mock; edit it from there."""
    from flowgpt.spec.starter import starter_files

    try:
        files = starter_files(name)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    root = Path(folder)
    existing = [path for path in files if (root / path).exists()]
    if existing:
        raise InputError(
            f"{', '.join(str(root / p) for p in existing)} already exist"
            f"{'s' if len(existing) == 1 else ''}: nothing was written",
            hint="choose another NAME (flowgpt init NAME) or another --dir",
        )
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    shown = [str(root / p) if folder != "." else p for p in files]
    workflow = shown[0]
    click.echo(
        f"wrote {', '.join(shown)}\n"
        "next:\n"
        f"  flowgpt validate {workflow}\n"
        f'  flowgpt run {workflow} -i topic="green tea" --mock     # offline: no key, no cost\n'
        f'  flowgpt run {workflow} -i topic="green tea"            # OPENAI_API_KEY set\n'
        f"  flowgpt test {workflow} --record --mock                # then: flowgpt test {workflow}"
    )


@click.command()
@click.argument("workflow", type=click.Path(dir_okay=False))
@_handle_errors
def graph(workflow: str) -> None:
    """Print the step graph as a Mermaid flowchart (paste it into Markdown on GitHub)."""
    from flowgpt.spec.graph import mermaid
    from flowgpt.spec.loader import load_workflow

    click.echo(mermaid(load_workflow(workflow)), nl=False)
