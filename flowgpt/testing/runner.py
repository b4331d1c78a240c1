"""Running a test file: every case through the engine, replayed from its cassette, recorded
into it, or live; then each case's expectations checked.

Cases run one after another, so each case's latency is its own (the steps of a case
still run concurrently, as in any run). When models are compared, each model runs every
case.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from flowgpt.accounting.prices import cost_of
from flowgpt.accounting.tokens import count_text
from flowgpt.engine.engine import Engine
from flowgpt.errors import FlowgptError, ProviderError, SpecError
from flowgpt.providers.base import Provider
from flowgpt.providers.factory import make_provider
from flowgpt.results import RunResult
from flowgpt.spec.diagnostics import did_you_mean
from flowgpt.spec.output import schema_failures
from flowgpt.store.cassettes import (
    CaseTiming,
    Cassette,
    load_cassette,
    merge_interactions,
    save_cassette,
)
from flowgpt.testing.cassette import RecordingProvider, ReplayProvider, running_case
from flowgpt.testing.expect import CaseRun, check
from flowgpt.testing.judge import Judge
from flowgpt.testing.models import CaseSpec
from flowgpt.testing.results import CaseResult, Mode, SuiteResult
from flowgpt.testing.suite import Suite
from flowgpt.usage import Usage

__all__ = ["run_suite", "run_suite_sync"]


@dataclass
class _Case:
    """A case's outcome before its expectations are checked."""

    run: RunResult | None
    failure: FlowgptError | None
    latency_s: float
    # Seconds each step that ran took (skipped steps are left out).
    steps: dict[str, float] = field(default_factory=dict)


def _select(suite: Suite, cases: Collection[str] | None) -> list[tuple[int, CaseSpec]]:
    """The cases to run, each with its index in the test file."""
    if cases is not None:
        names = [c.name for c in suite.spec.cases]
        unknown = [n for n in cases if n not in names]
        if unknown:
            raise SpecError(
                f"{suite.path}: no case named `{unknown[0]}`{did_you_mean(unknown[0], names)}",
                hint=f"the cases: {', '.join(names)}",
            )
    return [(i, c) for i, c in enumerate(suite.spec.cases) if cases is None or c.name in cases]


async def _run_case(engine: Engine, suite: Suite, case: CaseSpec) -> _Case:
    started = time.perf_counter()
    with running_case(case.name):
        try:
            run = await engine.run(suite.workflow, case.inputs)
        except FlowgptError as exc:
            result = exc.result if isinstance(exc.result, RunResult) else None
            return _Case(result, exc, time.perf_counter() - started)
    steps = {sid: s.latency_s for sid, s in run.steps.items() if s.status != "skipped"}
    return _Case(run, None, run.latency_s, steps)


async def _finish_case(
    suite: Suite,
    index: int,
    case: CaseSpec,
    outcome: _Case,
    *,
    model: str | None,
    judge: Judge,
    recorded: CaseTiming | None,
) -> CaseResult:
    result = CaseResult(
        name=case.name,
        status="passed",
        model=model,
        run=outcome.run,
        latency_s=outcome.latency_s,
        where=suite.where("cases", index, "name"),
    )
    if outcome.failure is not None:
        result.status = "error" if isinstance(outcome.failure, ProviderError) else "failed"
        result.error = outcome.failure.format()
        return result
    assert outcome.run is not None
    steps = outcome.steps  # a skipped step's latency is its result's (see expect.py)
    if recorded is not None:
        # A replay takes no time: latency is what the case took when it was recorded.
        result.latency_s, steps = recorded.latency_s, {**steps, **recorded.steps}
    case_run = CaseRun(outcome.run, result.latency_s, steps)
    with running_case(case.name):
        try:
            result.expectations = list(
                await asyncio.gather(
                    *(
                        check(
                            expect,
                            case_run,
                            judge=judge,
                            judge_model=suite.judge_model,
                            where=suite.where("cases", index, "expect", j),
                        )
                        for j, expect in enumerate(case.expect)
                    )
                )
            )
        except FlowgptError as exc:  # a judge's request failed
            result.status = "error" if isinstance(exc, ProviderError) else "failed"
            result.error = exc.format()
            return result
    if result.failures:
        result.status = "failed"
    return result


def _warm_up(suite: Suite, models: Sequence[str], provider: Provider) -> None:
    """Load what loads on first use (a tokenizer, the price list, JSON Schema: about half
    a second), so that it is not counted in the first case's latency."""
    wf = suite.workflow.spec
    step_models = {s.model or wf.defaults.model for s in wf.steps}
    base_url = provider.resolved_base_url() or wf.provider.price_base_url
    for name in sorted({m for m in (*step_models, *models) if m}):
        count_text("warm up", name)
        cost_of(Usage(1, 1), name, base_url=base_url, overrides=wf.pricing)
    schema_failures({}, {"type": "object"})


async def run_suite(
    suite: Suite,
    *,
    mode: Mode = "replay",
    provider: Provider | None = None,
    models: Sequence[str] = (),
    cases: Collection[str] | None = None,
    cassette: Cassette | None = None,
) -> SuiteResult:
    """Run a test file's cases and check their expectations.

    ``mode``: ``"replay"`` answers from the cassette (no network, no key); ``"record"``
    calls the provider and writes every request and reply to the cassette; ``"live"``
    calls the provider and writes nothing. ``provider`` is what record and live call
    (default: the workflow's ``provider:``, made here and closed at the end). ``models``
    runs every case once per model, each replacing every step's model (the judge keeps
    its own); comparing more than one is live only. ``cases`` picks cases by name.
    ``cassette``: what a replay answers from, loaded already (default: the suite's, read
    here), so that runs of one case each read it once.
    """
    if len(models) > 1 and mode != "live":
        raise SpecError(
            "comparing models calls each of them: run them live",
            hint="add --live (a cassette holds one recording)",
        )
    if mode == "replay" and provider is not None:
        raise SpecError("a replay answers from the cassette; a provider is for record or live")
    if mode != "replay" and cassette is not None:
        raise SpecError("a cassette is for a replay; record and live call the provider")
    selected = _select(suite, cases)
    wf = suite.workflow
    own: Provider | None = None
    calls: Provider
    if mode == "replay":
        if cassette is None:
            cassette = suite.load_cassette()
        calls = ReplayProvider(
            cassette, source=str(suite.cassette_path), record_hint=suite.record_command()
        )
    else:
        if provider is None:
            provider = own = make_provider(wf.spec.provider, wf.base_dir)
        calls = RecordingProvider(provider) if mode == "record" else provider
    judge = Judge(
        calls,
        price_base_url=calls.resolved_base_url() or wf.spec.provider.price_base_url,
        pricing=wf.spec.pricing,
    )
    result = SuiteResult(
        tests=str(suite.path),
        workflow=wf.display_path,
        mode=mode,
        models=list(models) or [None],
        cassette=str(suite.cassette_path) if mode != "live" else None,
    )
    timings: dict[str, CaseTiming] = {}
    if mode != "replay":
        _warm_up(suite, models, calls)
    try:
        for model in result.models:
            engine = Engine(provider=calls, model=model)
            for index, case in selected:
                outcome = await _run_case(engine, suite, case)
                if outcome.run is not None and outcome.failure is None:
                    timings[case.name] = CaseTiming(outcome.latency_s, outcome.steps)
                recorded = None
                if cassette is not None and outcome.failure is None:
                    recorded = cassette.timings.get(case.name)
                result.cases.append(
                    await _finish_case(
                        suite,
                        index,
                        case,
                        outcome,
                        model=model,
                        judge=judge,
                        recorded=recorded,
                    )
                )
    finally:
        if own is not None:
            await own.aclose()
    if isinstance(calls, RecordingProvider):
        _write_cassette(suite, calls, result, selected, timings)
    if isinstance(calls, ReplayProvider) and cases is None and result.ok:
        unused = len({x.key for x in calls.cassette.interactions} - calls.used)
        if unused:
            result.notes.append(
                f"{unused} recorded request{'s were' if unused != 1 else ' was'} not asked "
                f"for (left from an older version?): record again to drop "
                f"{'them' if unused != 1 else 'it'}"
            )
    return result


def _write_cassette(
    suite: Suite,
    recorder: RecordingProvider,
    result: SuiteResult,
    selected: list[tuple[int, CaseSpec]],
    timings: dict[str, CaseTiming],
) -> None:
    """Write what was recorded, unless the provider failed (the old cassette stays)."""
    broken = [c for c in result.cases if c.status == "error"]
    if broken:
        result.notes.append(
            f"the cassette was not written: case `{broken[0].name}` could not reach the "
            "provider (the cassette as it was is kept)"
        )
        return
    names = [c.name for c in suite.spec.cases]
    cassette = recorder.cassette(
        case_order=names, step_order=suite.workflow.spec.step_ids, timings=timings
    )
    if len(selected) < len(suite.spec.cases) and suite.cassette_path.exists():
        # Some cases were recorded again: keep what the others recorded before.
        old = load_cassette(suite.cassette_path, record_hint=suite.record_command())
        again = {c.name for _, c in selected}
        kept = [x for x in old.interactions if x.case not in again]
        cassette.interactions = sorted(
            merge_interactions(cassette.interactions, kept),
            key=lambda x: names.index(x.case) if x.case in names else len(names),
        )
        cassette.timings = {
            name: t
            for name in names
            if (t := cassette.timings.get(name) or old.timings.get(name)) is not None
        }
    comment = (
        f"flowgpt cassette for {suite.path.name}: the requests its cases made and the "
        "replies they got.\n"
        f"Replayed offline by `flowgpt test {suite.path}`; recorded again with --record."
    )
    save_cassette(cassette, suite.cassette_path, comment=comment)
    result.cassette_written = True


def run_suite_sync(
    suite: Suite,
    *,
    mode: Mode = "replay",
    provider: Provider | None = None,
    models: Sequence[str] = (),
    cases: Collection[str] | None = None,
    cassette: Cassette | None = None,
) -> SuiteResult:
    """``run_suite`` for code that is not async."""
    return asyncio.run(
        run_suite(
            suite, mode=mode, provider=provider, models=models, cases=cases, cassette=cassette
        )
    )
