"""The commands that look at a workflow without calling a model: validate, schema and
estimate. They must start fast: nothing heavy is imported here, only inside them."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from flowgpt.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    _handle_errors,
    _loading_modules,
    _read_inputs_file,
)


@click.command()
@click.argument("workflows", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--strict", is_flag=True, help="Treat warnings (e.g. unpriced models) as errors.")
@_handle_errors
def validate(workflows: tuple[str, ...], as_json: bool, strict: bool) -> None:
    """Check workflows without calling a model. Exit 0 when clean, 2 on errors."""
    with _loading_modules("flowgpt.accounting.checks"):
        from flowgpt.accounting.checks import check_file

    reports = []
    failed = False
    for path in workflows:
        diagnostics = _check_any(path, check_file)
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


def _check_any(path: str, check_workflow: Any) -> Any:
    """The findings for a workflow, or for a test file or cassette lying beside one (so
    `flowgpt validate workflows/*.yaml` checks them all)."""
    from flowgpt.testing.paths import is_cassette_file, is_test_file

    if is_test_file(path):
        from flowgpt.testing.suite import check_test_file

        return check_test_file(path)
    if is_cassette_file(path):
        from flowgpt.errors import SpecError
        from flowgpt.store.cassettes import load_cassette

        try:
            load_cassette(path)
        except SpecError as exc:
            return exc.diagnostics
        return []
    return check_workflow(path)


@click.command()
@click.option("--test", "of_tests", is_flag=True, help="The schema of test files instead.")
def schema(of_tests: bool) -> None:
    """Print the workflow JSON Schema (for editors and CI)."""
    with _loading_modules("flowgpt.spec.models"):
        from flowgpt.spec.models import workflow_json_schema
    if of_tests:
        from flowgpt.testing.models import suite_json_schema

        click.echo(json.dumps(suite_json_schema(), indent=2, ensure_ascii=False))
        return
    click.echo(json.dumps(workflow_json_schema(), indent=2, ensure_ascii=False))


@click.command()
@click.argument("workflow", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="An input.")
@click.option("--inputs-file", type=click.Path(dir_okay=False), help="Inputs as a JSON object.")
@click.option("--model", help="Estimate with this model for every step.")
@click.option(
    "--batch-api",
    is_flag=True,
    help="Price it at Batch API rates (what `flowgpt batch --batch-api` pays).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@_handle_errors
def estimate(
    workflow: str,
    pairs: tuple[str, ...],
    inputs_file: str | None,
    model: str | None,
    batch_api: bool,
    as_json: bool,
) -> None:
    """Worst-case tokens and dollars per step, retries counted. No API call."""
    with _loading_modules("flowgpt.accounting.estimate"):
        import flowgpt.accounting.tokens  # noqa: F401  (loaded in the same pause)
        from flowgpt.accounting.estimate import estimate as estimate_workflow
        from flowgpt.money import format_usd
        from flowgpt.spec.inputs import parse_assignments
        from flowgpt.spec.loader import load_workflow

    wf = load_workflow(workflow)
    given: dict[str, Any] = _read_inputs_file(inputs_file) if inputs_file else {}
    given.update(parse_assignments(list(pairs), stdin=sys.stdin))
    result = estimate_workflow(wf, given, inputs_from_cli=True, model=model, batch=batch_api)
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
    if batch_api:
        click.echo(
            "\npriced at Batch API rates (about half the synchronous ones; see "
            "docs/batch-api.md): the cost of one row through `flowgpt batch --batch-api`.",
            err=True,
        )
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
