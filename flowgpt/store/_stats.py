"""Spending over many runs: tokens and dollars by day, by model and by workflow
(``flowgpt runs stats``), added up from the steps the run store holds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

__all__ = ["RunStats", "StatsRow"]


@dataclass(frozen=True)
class StatsRow:
    """Tokens and dollars of one day, model or workflow (or of everything: ``key`` "total").

    ``priced_usd`` adds up the steps whose price is known; ``unpriced_tokens`` counts the
    tokens of those whose price is not, so a total with unknown prices is never shown as
    a smaller, wrong number: ``cost_usd`` is None ("unpriced") as soon as any is unknown.
    """

    key: str
    runs: int
    prompt_tokens: int
    completion_tokens: int
    priced_usd: Decimal
    unpriced_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_usd(self) -> Decimal | None:
        """The dollars, or None ("unpriced") when some of its tokens have no price."""
        return None if self.unpriced_tokens else self.priced_usd

    def to_dict(self) -> dict[str, Any]:
        cost = self.cost_usd
        return {
            "key": self.key,
            "runs": self.runs,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": None if cost is None else str(cost),
            "priced_usd": str(self.priced_usd),
            "unpriced_tokens": self.unpriced_tokens,
        }


@dataclass(frozen=True)
class RunStats:
    """What the runs in the store spent: in all, by day (local time, oldest first), by
    model and by workflow (the most expensive first). Batch rows and chats count like any
    run. ``since``: the first day counted (None: all). ``mock_runs_left_out``: runs of the
    mock provider, whose dollars were never billed, left out unless asked for."""

    total: StatsRow
    by_day: list[StatsRow]
    by_model: list[StatsRow]
    by_workflow: list[StatsRow]
    since: date | None = None
    mock_runs_left_out: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": None if self.since is None else self.since.isoformat(),
            "mock_runs_left_out": self.mock_runs_left_out,
            "total": self.total.to_dict(),
            "by_day": [r.to_dict() for r in self.by_day],
            "by_model": [r.to_dict() for r in self.by_model],
            "by_workflow": [r.to_dict() for r in self.by_workflow],
        }


@dataclass(frozen=True)
class StepSpend:
    """One finished step as stats count it."""

    run_id: str
    finished_at: str  # UTC ISO 8601, as stored
    model: str | None
    workflow: str
    cost_usd: Decimal | None  # None: unpriced
    prompt_tokens: int
    completion_tokens: int


class _Tally:
    def __init__(self) -> None:
        self.runs: set[str] = set()
        self.prompt = self.completion = self.unpriced = 0
        self.priced = Decimal(0)

    def add(self, step: StepSpend) -> None:
        self.runs.add(step.run_id)
        self.prompt += step.prompt_tokens
        self.completion += step.completion_tokens
        if step.cost_usd is not None:
            self.priced += step.cost_usd
        else:  # a step that used no tokens cost nothing, price or not
            self.unpriced += step.prompt_tokens + step.completion_tokens

    def row(self, key: str) -> StatsRow:
        return StatsRow(
            key, len(self.runs), self.prompt, self.completion, self.priced, self.unpriced
        )


def local_day(stamp: str) -> date:
    """The day (in local time) of a stored UTC timestamp."""
    return datetime.fromisoformat(stamp).astimezone().date()


def tally(
    steps: Iterable[StepSpend], *, since: date | None = None, mock_runs_left_out: int = 0
) -> RunStats:
    """Add up finished steps into totals by day, model and workflow."""
    total = _Tally()
    days: dict[str, _Tally] = {}
    models: dict[str, _Tally] = {}
    workflows: dict[str, _Tally] = {}
    for step in steps:
        total.add(step)
        for groups, key in (
            (days, local_day(step.finished_at).isoformat()),
            (models, step.model or "-"),
            (workflows, step.workflow),
        ):
            groups.setdefault(key, _Tally()).add(step)

    def costliest(groups: dict[str, _Tally]) -> list[StatsRow]:
        rows = [t.row(k) for k, t in groups.items()]
        return sorted(rows, key=lambda r: (-r.priced_usd, -r.total_tokens, r.key))

    return RunStats(
        total=total.row("total"),
        by_day=[days[k].row(k) for k in sorted(days)],
        by_model=costliest(models),
        by_workflow=costliest(workflows),
        since=since,
        mock_runs_left_out=mock_runs_left_out,
    )
