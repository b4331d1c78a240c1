"""``flowgpt test``: run a workflow's test cases, replayed from their cassette (offline),
recorded into it, or live; a line per case, the failures, and the model matrix."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from flowgpt.cli._common import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    _handle_errors,
    _make_provider,
    _provider_options,
)
from flowgpt.errors import Diagnostic, SpecError

if TYPE_CHECKING:
    from flowgpt.testing.results import Mode

_STARTER = """cases:
  - name: first case
    inputs: {...}
    expect:
      - output: NAME
        contains: some text"""


def _suite_paths(path: str, tests: str | None) -> tuple[Path, Path | None]:
    """(the test file, the workflow given on the command line or None)."""
    from flowgpt.testing.paths import is_test_file, tests_path_for

    if is_test_file(path):
        if tests is not None:
            raise click.UsageError("give a workflow with --tests, or a test file alone")
        return Path(path), None
    test_file = Path(tests) if tests is not None else tests_path_for(path)
    if tests is None and not test_file.exists():
        raise SpecError(
            f"{path}: no test file",
            diagnostics=[
                Diagnostic(
                    f"no test file for this workflow: create {test_file}",
                    path,
                    hint=f"a test file lists cases (see docs/testing.md):\n{_STARTER}",
                )
            ],
        )
    return test_file, Path(path)


def _line(case: Any, width: int) -> str:
    from flowgpt.money import format_usd

    word = {"passed": "PASS", "failed": "FAIL", "error": "ERROR"}[case.status]
    return (
        f"  {word:<5} {case.name:<{width}}  {format_usd(case.cost_usd):>10}  "
        f"{case.latency_s:>6.2f}s"
    ).rstrip()


def _matrix(result: Any) -> list[str]:
    from flowgpt.money import format_usd

    rows = [("model", "passed", "pass rate", "cost", "mean latency")]
    for s in result.matrix():
        rows.append(
            (
                s.model or "(the workflow's)",
                f"{s.passed}/{s.cases}",
                f"{s.pass_rate:.0%}",
                format_usd(s.cost_usd),
                f"{s.latency_s:.2f}s",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]


def _report(result: Any) -> list[str]:
    from flowgpt.money import format_usd, sum_costs

    n = len({c.name for c in result.cases})
    how = {
        "replay": f"replayed from {result.cassette} (times as recorded)",
        "record": f"recorded into {result.cassette}",
        "live": "live",
    }[result.mode]
    lines = [f"{result.tests}: {n} case{'s' * (n != 1)}, {how}"]
    width = max((len(c.name) for c in result.cases), default=0)
    for model in result.models:
        if len(result.models) > 1:
            lines.append(f"model {model}:")
        for case in (c for c in result.cases if c.model == model):
            lines.append(_line(case, width))
            if not case.passed:
                lines += [f"        {text}" for text in case.explain().splitlines()]
    total = len(result.cases)
    parts = [f"{result.passed} passed"]
    if result.failed:
        parts.append(f"{result.failed} failed")
    if result.errors:
        parts.append(f"{result.errors} could not run")
    cost = f"cost {format_usd(result.cost_usd)}"
    judges = sum_costs(c.judge_cost_usd for c in result.cases)
    if judges != 0:
        cost += f" (judges {format_usd(judges)})"
    lines.append(f"{total} case{'s' * (total != 1)}: {', '.join(parts)}; {cost}")
    if len(result.models) > 1:
        lines += ["", *_matrix(result)]
    if result.cassette_written:
        lines.append(f"wrote {result.cassette}")
    lines += result.notes
    return lines


@click.command()
@click.argument("path", metavar="WORKFLOW", type=click.Path(dir_okay=False))
@click.option(
    "--tests",
    "tests_file",
    type=click.Path(dir_okay=False),
    help="The test file (default: NAME.test.yaml beside NAME.yaml).",
)
@click.option(
    "--record",
    is_flag=True,
    help="Call the provider and write every request and reply to the cassette.",
)
@click.option("--live", is_flag=True, help="Call the provider; write no cassette.")
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="M",
    help="Run every step with model M; repeat it with --live to compare models.",
)
@click.option("--case", "cases", multiple=True, metavar="NAME", help="Run only this case.")
@click.option(
    "--junit", "junit_file", type=click.Path(dir_okay=False), help="Also write JUnit XML to FILE."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_provider_options
@_handle_errors
def test(
    path: str,
    tests_file: str | None,
    record: bool,
    live: bool,
    models: tuple[str, ...],
    cases: tuple[str, ...],
    junit_file: str | None,
    as_json: bool,
    mock: bool,
    local: bool,
    local_model: str | None,
) -> None:
    """Run a workflow's test cases (NAME.test.yaml) and check what they expect.

    By default the cases replay their cassette (NAME.cassette.yaml): offline, no key,
    and a request that changed since it was recorded fails its case. --record calls the
    provider and writes the cassette; --live calls it and writes nothing.

    Exit 0 when every case passes, 1 when one fails, 2 when the test file is wrong."""
    if record and live:
        raise click.UsageError("--record and --live: give one (--record also runs live)")
    mode: Mode = "record" if record else "live" if live else "replay"
    if mode == "replay" and (mock or local or local_model):
        raise click.UsageError(
            "a replay answers from the cassette; --mock and --local go with --record or --live"
        )
    if len(models) > 1 and mode != "live":
        raise click.UsageError("comparing models calls each of them: add --live")
    from flowgpt.testing.junit import junit_xml
    from flowgpt.testing.runner import run_suite_sync
    from flowgpt.testing.suite import load_suite

    test_file, workflow = _suite_paths(path, tests_file)
    suite = load_suite(test_file, workflow=workflow)
    provider = _make_provider(mock=mock, local=local, local_model=local_model)
    result = run_suite_sync(
        suite,
        mode=mode,
        provider=provider,
        models=list(models),
        cases=list(cases) or None,
    )
    if junit_file:
        Path(junit_file).write_text(junit_xml(result), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(_report(result)))
    sys.exit(EXIT_OK if result.ok else EXIT_RUN_FAILED)
