"""The ``flowgpt`` command: a thin layer over the library. The only package importing click.

This module holds the ``main`` group (``--debug``, ``--version``) and registers the commands,
which live in private modules by job: ``_inspect`` (validate, schema, estimate), ``_run``,
``_batch``, ``_chat``, ``_runs``, ``_test``, ``_ui`` and ``_start`` (init, graph); what they
share is in ``_common``.

Heavy modules (the engine, the openai SDK, rich) are imported inside the commands that need
them, so ``flowgpt --help``, ``validate``, ``schema`` and ``estimate`` start fast.
"""

from __future__ import annotations

import click

from flowgpt.cli._batch import batch
from flowgpt.cli._chat import chat
from flowgpt.cli._inspect import estimate, schema, validate
from flowgpt.cli._run import run
from flowgpt.cli._runs import runs
from flowgpt.cli._start import graph, init
from flowgpt.cli._test import test
from flowgpt.cli._ui import ui

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flowgpt", message="flowgpt %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug: bool) -> None:
    """Run declarative prompt workflows: YAML steps, exact tokens, per-step cost.

    \b
    Start with:
      flowgpt init tea                    a starter workflow: tea.yaml
      flowgpt validate tea.yaml
      flowgpt run tea.yaml -i topic="green tea" --mock

    \b
    Shell completion (bash; zsh and fish alike, see docs/running.md):
      eval "$(_FLOWGPT_COMPLETE=bash_source flowgpt)"
    """


for _command in (init, validate, schema, run, estimate, batch, chat, runs, test, graph, ui):
    main.add_command(_command)
