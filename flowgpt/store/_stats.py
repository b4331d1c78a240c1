"""Spending over many runs: tokens and dollars by day, by model and by workflow
(``flowgpt runs stats``), added up from the steps the run store holds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from flowgpt.money import format_spend

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

    @property
    def cost_text(self) -> str:
        """Its dollars for people to read: "$1.20", "$0.50 + unpriced" or "unpriced"."""
        return format_spend(self.priced_usd, unpriced=self.cost_usd is None)

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


def stats_row(
    key: str,
    runs: int | None,
    prompt: int | None,
    completion: int | None,
    unpriced: int | None,
    costs: str | None,
) -> StatsRow:
    """A StatsRow from SQL aggregates: ``costs`` is the group's known step costs, their
    exact Decimal texts joined by commas (added up here: SQLite has no decimal type)."""
    priced = sum(map(Decimal, costs.split(","))) if costs else Decimal(0)
    return StatsRow(key, runs or 0, prompt or 0, completion or 0, Decimal(priced), unpriced or 0)


def costliest(rows: Iterable[StatsRow]) -> list[StatsRow]:
    """The most expensive first (then the most tokens, then by name)."""
    return sorted(rows, key=lambda r: (-r.priced_usd, -r.total_tokens, r.key))
