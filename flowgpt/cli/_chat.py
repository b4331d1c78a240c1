"""``flowgpt chat``: an interactive conversation, as a step of a workflow or on its own."""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any

import click

from flowgpt.cli._common import (
    USD,
    _handle_errors,
    _make_provider,
    _open_store,
    _provider_options,
    _read_inputs_file,
    _store_options,
)
from flowgpt.errors import InputError


@click.command()
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
    type=USD,
    metavar="USD",
    help="Stop before a turn that could take the chat past USD (on top of `budget:`).",
)
@_store_options("chat")
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
    max_cost: Decimal | None,
    store_path: str | None,
    no_store: bool,
    **provider_kwargs: Any,
) -> None:
    """Chat with a model: replies stream as they arrive; tokens and cost per turn.

    The history is trimmed to the context window (oldest turns first, the system prompt
    kept). End with exit, quit, 退出 or Ctrl-D. The conversation is stored as a run
    (see `flowgpt runs`)."""
    from flowgpt.chat.session import ChatSession
    from flowgpt.chat.turn import DEFAULT_MAX_TOKENS, DEFAULT_MODEL
    from flowgpt.cli._repl import run_repl

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
            from flowgpt.spec.inputs import parse_assignments
            from flowgpt.spec.loader import load_workflow

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
