"""What the pages of ``flowgpt ui`` show, read from the run store: plain data for the
templates (no HTML here). The runs page (:func:`runs_page`): the runs a filter picks,
newest first, batches with their rows, totals and a chart of daily spend; the run page
(:func:`run_page`): its step graph, cost and latency per step, and every step's messages,
replies, usage and price, with the command that resumes it.

The store is only read, through :class:`flowgpt.store.RunStore`'s public methods.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flowgpt.errors import FlowgptError
from flowgpt.money import format_usd
from flowgpt.results import STATUS_WORDS, AttemptResult, RunResult, StepResult, pretty
from flowgpt.store import (
    BatchSummary,
    RunFacets,
    RunFilter,
    RunStore,
    RunSummary,
    Spending,
    default_store_path,
)
from flowgpt.ui._charts import (
    BarChart,
    GraphLayout,
    GraphStep,
    SpendChart,
    SpendSeries,
    bar_chart,
    layout_graph,
    spend_chart,
)

__all__ = ["RunPage", "RunsPage", "parse_filter", "run_page", "runs_page"]

# Entries (runs and batches) on the runs page, and rows shown under each batch.
ENTRIES = 100
BATCH_ROWS = 50
BATCH_PAGE_ROWS = 1000


# -- shared -----------------------------------------------------------------------------


def local_time(stamp: str | None) -> str:
    """A stored UTC time as this machine's local time, to the second."""
    if stamp is None:
        return "-"
    try:
        return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return stamp


@dataclass(frozen=True)
class Via:
    """Who answered a run: ``provider`` ("openai", "mock", "local"; a batch may name
    several) and, for an endpoint other than OpenAI's own API (a relay, a local server),
    its host."""

    provider: str | None
    host: str | None = None


def via(summary: RunSummary | BatchSummary) -> Via:
    return Via(summary.provider, summary.host)


# -- the runs page ----------------------------------------------------------------------


def parse_filter(query: Mapping[str, str]) -> tuple[RunFilter, list[str]]:
    """The filter a runs page's query string asks for, and what in it was wrong (each
    wrong value is left out of the filter and said)."""
    problems: list[str] = []

    def text(name: str) -> str | None:
        value = (query.get(name) or "").strip()
        return value or None

    def day(name: str) -> date | None:
        value = text(name)
        if value is None:
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            problems.append(f"{name}: {value!r} is not a date (YYYY-MM-DD); left out")
            return None

    status = text("status")
    if status is not None and status not in ("ok", "failed", "interrupted", "running"):
        problems.append(f"status: {status!r} is not ok, failed, interrupted or running; left out")
        status = None
    where = RunFilter(
        workflow=text("workflow"),
        model=text("model"),
        status=status,
        provider=text("provider"),
        since=day("since"),
        until=day("until"),
        batch=text("batch"),
    )
    return where, problems


def filter_query(where: RunFilter, **changes: str | None) -> str:
    """The query string of a runs page with this filter (and ``changes``)."""
    values: dict[str, Any] = {
        "workflow": where.workflow,
        "model": where.model,
        "status": where.status,
        "provider": where.provider,
        "since": where.since.isoformat() if where.since else None,
        "until": where.until.isoformat() if where.until else None,
        "batch": where.batch,
    }
    values.update(changes)
    return urlencode({k: v for k, v in values.items() if v})


@dataclass(frozen=True)
class RunRow:
    summary: RunSummary
    via: Via
    started: str
    kind = "run"

    @property
    def cost(self) -> str:
        return format_usd(self.summary.cost_usd)


@dataclass(frozen=True)
class BatchGroup:
    summary: BatchSummary
    via: Via
    started: str
    rows: list[RunRow]
    more: bool  # more of its rows match than are shown
    link: str  # the runs page of this batch alone
    kind = "batch"

    @property
    def cost(self) -> str:
        return format_usd(self.summary.cost_usd)


@dataclass(frozen=True)
class Totals:
    runs: int
    tokens: int
    cost: str  # of everything picked, the mock provider's runs included
    mock_cost: str | None  # that part of it, when there is one
    mock_runs: int
    unpriced_tokens: int


@dataclass
class RunsPage:
    store_path: str
    where: RunFilter
    problems: list[str]
    facets: RunFacets
    entries: list[RunRow | BatchGroup]
    totals: Totals
    chart: SpendChart
    more: bool  # more entries match than are shown
    batch: BatchGroup | None = None  # the batch when the page is one batch's rows

    def query(self, **changes: str | None) -> str:
        return filter_query(self.where, **changes)


def _row(summary: RunSummary) -> RunRow:
    return RunRow(summary, via(summary), local_time(summary.started_at))


def _totals(spent: Spending) -> Totals:
    return Totals(
        runs=spent.runs,
        tokens=spent.total.total_tokens,
        cost=spent.total.cost_text,
        mock_cost=spent.mock.cost_text if spent.mock.runs else None,
        mock_runs=spent.mock.runs,
        unpriced_tokens=spent.total.unpriced_tokens,
    )


def _chart(spent: Spending) -> SpendChart:
    return spend_chart(
        [
            SpendSeries(d.day, d.model, d.mock, d.spent.priced_usd, d.spent.unpriced_tokens)
            for d in spent.daily
        ]
    )


def runs_page(store: RunStore, query: Mapping[str, str]) -> RunsPage:
    """The runs page for a query string (workflow, model, status, provider, since, until,
    batch): newest first, a batch as a group with the rows that match."""
    where, problems = parse_filter(query)
    facets = store.run_facets()
    if where.batch is not None:
        try:
            where = replace(where, batch=store.resolve_batch(where.batch))
        except FlowgptError as exc:
            where = replace(where, batch=None)
            problems.append(exc.message)
    return _page(store, where, problems, facets)


def _page(store: RunStore, where: RunFilter, problems: list[str], facets: RunFacets) -> RunsPage:
    spent = store.spending(where)
    if where.batch is not None:
        summary = store.batch_summary(where.batch)
        rows = store.list_runs(BATCH_PAGE_ROWS + 1, where=where)
        group = BatchGroup(
            summary,
            via(summary),
            local_time(summary.started_at),
            [_row(r) for r in rows[:BATCH_PAGE_ROWS]],
            len(rows) > BATCH_PAGE_ROWS,
            "?" + filter_query(where),
        )
        return RunsPage(
            str(store.path),
            where,
            problems,
            facets,
            [],
            _totals(spent),
            _chart(spent),
            False,
            batch=group,
        )
    found = store.list_entries(ENTRIES + 1, where=where)
    entries: list[RunRow | BatchGroup] = []
    for entry in found[:ENTRIES]:
        if isinstance(entry, BatchSummary):
            picked = replace(where, batch=entry.batch)
            rows = store.list_runs(BATCH_ROWS + 1, where=picked)
            entries.append(
                BatchGroup(
                    entry,
                    via(entry),
                    local_time(entry.started_at),
                    [_row(r) for r in rows[:BATCH_ROWS]],
                    len(rows) > BATCH_ROWS,
                    "?" + filter_query(picked),
                )
            )
        else:
            entries.append(_row(entry))
    return RunsPage(
        str(store.path),
        where,
        problems,
        facets,
        entries,
        _totals(spent),
        _chart(spent),
        len(found) > ENTRIES,
    )


# -- the run page -----------------------------------------------------------------------


@dataclass(frozen=True)
class MessageView:
    role: str
    name: str | None
    text: str
    json: bool


@dataclass(frozen=True)
class AttemptView:
    n: int
    of: int
    attempt: AttemptResult
    text: str
    json: bool

    @property
    def rejected(self) -> bool:
        return bool(self.attempt.failures)

    @property
    def asked_again(self) -> bool:
        return self.rejected and self.n < self.of

    @property
    def cost(self) -> str:
        return format_usd(self.attempt.cost_usd)


@dataclass
class StepView:
    step: StepResult
    anchor: str
    price: dict[str, Any] | None
    messages: list[MessageView]
    attempts: list[AttemptView]
    reply: tuple[str, bool] | None  # a reused or cached step's reply (no call was made)
    output: tuple[str, bool] | None
    items: list[StepView] = field(default_factory=list)

    @property
    def status_text(self) -> str:
        return STATUS_WORDS.get(self.step.status, self.step.status)

    @property
    def ran(self) -> bool:
        return self.step.status not in ("skipped", "pending")

    @property
    def sent(self) -> bool:
        """Its messages went to the model (a step can fail before its call: a budget)."""
        return bool(self.step.attempts) or any(i.sent for i in self.items)

    @property
    def cost(self) -> str:
        return format_usd(self.step.cost_usd) if self.ran else "-"

    @property
    def price_text(self) -> str:
        """The price its cost was computed with, per million tokens, and where it is from."""
        if not self.ran:
            return "-"
        if self.price is None:
            if not self.step.attempts:
                return "-"
            return "unpriced: no known price for this model"
        p = self.price
        parts = [
            f"input ${_plain(p.get('input'))}",
            f"cached input ${_plain(p.get('cached_input'))}",
            f"output ${_plain(p.get('output'))}",
        ]
        if p.get("cache_write"):
            parts.append(f"cache write ${_plain(p['cache_write'])}")
        return " · ".join(parts) + " per 1M tokens"

    @property
    def price_source(self) -> str | None:
        if self.price is None or not self.ran:
            return None
        return _SOURCES.get(str(self.price.get("source")), str(self.price.get("source")))

    @property
    def item_counts(self) -> str:
        counts: dict[str, int] = {}
        for item in self.step.items:
            counts[item.status] = counts.get(item.status, 0) + 1
        return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


_SOURCES = {
    "genai-prices": "genai-prices (the providers' list prices)",
    "workflow": "the workflow's pricing:",
    "local": "a local model: $0",
}


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    number = Decimal(str(value))
    return f"{number.normalize():f}" if number else "0"


def _step_view(step: StepResult, price: dict[str, Any] | None, anchor: str) -> StepView:
    messages = []
    for m in step.messages:
        text, is_json = pretty(m.get("content"))
        name = m.get("name")
        messages.append(
            MessageView(str(m.get("role", "?")), None if name is None else str(name), text, is_json)
        )
    attempts = [
        AttemptView(n, len(step.attempts), a, *pretty(a.text))
        for n, a in enumerate(step.attempts, 1)
    ]
    reply = None
    if not step.attempts and step.text is not None:
        reply = pretty(step.text)
    output = None if step.output is None or step.status == "skipped" else pretty(step.output)
    view = StepView(step, anchor, price, messages, attempts, reply, output)
    view.items = [
        _step_view(item, price, f"{anchor}-item-{n}") for n, item in enumerate(step.items, 1)
    ]
    return view


@dataclass
class RunPage:
    summary: RunSummary
    result: RunResult
    via: Via
    started: str
    finished: str
    steps: list[StepView]
    graph: GraphLayout | None
    graph_note: str | None
    bars: BarChart
    resume: str | None  # the command that continues it
    resume_notes: list[str]
    workflow_text: str | None
    inputs: str
    outputs: str | None

    @property
    def cost(self) -> str:
        return format_usd(self.result.cost_usd)


def resume_command(summary: RunSummary, store_path: Path) -> str:
    """``flowgpt run WORKFLOW --resume RUN_ID`` as far as the store knows the run: its
    workflow file, provider (``--mock``, ``--local-model``) and store (``--store`` when
    it is not the default one)."""
    words = ["flowgpt", "run", shlex.quote(summary.workflow_path or "WORKFLOW.yaml")]
    words += ["--resume", summary.run_id]
    if summary.provider == "mock":
        words.append("--mock")  # resuming a --mock run must never turn into paid calls
    elif summary.provider == "local":
        endpoint = summary.endpoint or ""
        model = endpoint.partition(":")[2]
        words += ["--local-model", shlex.quote(model)] if model else ["--local"]
    if store_path.expanduser().resolve() != default_store_path().expanduser().resolve():
        words += ["--store", shlex.quote(str(store_path))]
    return " ".join(words)


def _graph(
    summary: RunSummary, result: RunResult, text: str | None
) -> tuple[GraphLayout | None, str | None]:
    """The step graph, from the workflow text the run read; a note when it cannot be
    drawn with its arrows."""
    boxes = []
    for step in result.steps.values():
        detail = STATUS_WORDS.get(step.status, step.status).split(" (")[0]
        if step.items:
            ok = sum(1 for i in step.items if i.status in ("ok", "reused", "cached"))
            detail += f" · {len(step.items)} items ({ok} ok)"
        elif len(step.attempts) > 1:
            detail += f" · {len(step.attempts)} attempts"
        if step.status in ("skipped", "pending"):
            figures = ""
        else:
            figures = f"{format_usd(step.cost_usd)} · {step.latency_s:.2f}s"
        title = f"{step.id}: {detail}" + (f" · {figures}" if figures else "")
        boxes.append(GraphStep(step.id, step.status, detail, figures, title))
    if not boxes:
        return None, "this run has no steps recorded"
    if text is None:
        return layout_graph(boxes, {}), "the workflow's text was not kept: no arrows"
    from flowgpt.spec.graph import step_dependencies
    from flowgpt.spec.loader import parse_workflow

    try:
        workflow = parse_workflow(text, path=summary.workflow_path)
        deps = step_dependencies(workflow)
    except (FlowgptError, OSError, KeyError) as exc:
        message = exc.message if isinstance(exc, FlowgptError) else str(exc)
        first = message.splitlines()[0] if message else type(exc).__name__
        return layout_graph(boxes, {}), f"the stored workflow could not be read again: {first}"
    return layout_graph(boxes, deps), None


def run_page(store: RunStore, run_id: str) -> RunPage:
    """Everything the run page shows of one run (``run_id`` may be a unique prefix).
    Raises StoreError when there is no such run."""
    result = store.load_run(run_id)
    full = result.run_id or run_id
    summary = store.run_summary(full)
    prices = store.step_prices(full)
    text = store.workflow_text(full)
    steps = [
        _step_view(step, prices.get(step.id), f"step-{step.id}") for step in result.steps.values()
    ]
    graph, note = _graph(summary, result, text)
    bars = bar_chart([(s.id, s.status, s.cost_usd, s.latency_s) for s in result.steps.values()])
    resume = None
    notes: list[str] = []
    if result.status in ("failed", "interrupted"):
        resume = resume_command(summary, store.path)
        notes.append(
            "Finished steps are reused at $0; add the options the run was started with that"
            " the store does not keep (--model, --max-cost, --cache)."
        )
        if summary.workflow_path is None:
            notes.append("The run's workflow file was not recorded: put its path in.")
        if summary.batch is not None:
            notes.append(
                f"This run is row {summary.batch_row} of a batch: running the batch command"
                f" again with --out {shlex.quote(summary.batch)} continues the whole batch."
            )
    return RunPage(
        summary=summary,
        result=result,
        via=via(summary),
        started=local_time(summary.started_at),
        finished=local_time(summary.finished_at),
        steps=steps,
        graph=graph,
        graph_note=note,
        bars=bars,
        resume=resume,
        resume_notes=notes,
        workflow_text=text,
        inputs=pretty(result.inputs)[0],
        outputs=pretty(result.outputs)[0] if result.outputs else None,
    )
