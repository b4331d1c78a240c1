"""What a run produces: one StepResult per step and a RunResult for the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from flowgpt.usage import Usage

__all__ = ["AttemptResult", "RunResult", "StepResult", "StepStatus", "sum_costs"]

StepStatus = Literal["ok", "failed", "skipped", "reused", "cached", "pending"]


def sum_costs(costs: list[Decimal | None]) -> Decimal | None:
    """The sum of some costs; None ("unpriced") as soon as one of them is unknown."""
    total = Decimal(0)
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return total


@dataclass
class AttemptResult:
    """One call to the model (a step makes more than one when its output is repaired)."""

    text: str
    usage: Usage
    cost_usd: Decimal | None
    latency_s: float
    finish_reason: str | None = None
    retries: int = 0  # transport retries the provider took for this call
    failures: list[str] = field(default_factory=list)  # why validation rejected it
    cached: bool = False  # answered from the response cache, at $0


@dataclass
class StepResult:
    """The result of one step; a ``for_each`` step has one entry per item in ``items``."""

    id: str
    model: str | None = None
    status: StepStatus = "pending"
    output: Any = None
    text: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[AttemptResult] = field(default_factory=list)
    items: list[StepResult] = field(default_factory=list)
    latency_s: float = 0.0
    error: str | None = None
    # True when every token counted for this step used the model's own tokenizer.
    exact_tokens: bool = True
    # What the result would have cost had it not been reused/cached (for "saved").
    saved_usd: Decimal | None = None

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"

    @property
    def usage(self) -> Usage:
        """Tokens sent and received; cache hits sent nothing and count none."""
        attempts = self.attempts
        if len(attempts) == 1 and not self.items:  # the common case: nothing to add up
            return Usage() if attempts[0].cached else attempts[0].usage
        return Usage.total(
            [a.usage for a in attempts if not a.cached] + [i.usage for i in self.items]
        )

    @property
    def cost_usd(self) -> Decimal | None:
        costs = [a.cost_usd for a in self.attempts] + [i.cost_usd for i in self.items]
        return sum_costs(costs)

    @property
    def n_attempts(self) -> int:
        return len(self.attempts) + sum(i.n_attempts for i in self.items)

    @property
    def retries(self) -> int:
        return sum(a.retries for a in self.attempts) + sum(i.retries for i in self.items)

    @property
    def finish_reason(self) -> str | None:
        return self.attempts[-1].finish_reason if self.attempts else None

    def template_view(self) -> dict[str, Any]:
        """What templates see as ``steps.<id>``."""
        return {
            "output": self.output,
            # A for_each step's raw replies are a list, in item order, like its output.
            "text": [i.text for i in self.items] if self.items else self.text,
            "usage": self.usage.to_dict(),
            "skipped": self.skipped,
        }


@dataclass
class RunResult:
    """The result of a run: outputs, every step's result, and what it all cost."""

    workflow: str
    inputs: dict[str, Any]
    steps: dict[str, StepResult]
    outputs: dict[str, Any] = field(default_factory=dict)
    status: Literal["ok", "failed", "interrupted", "running"] = "running"
    error: str | None = None
    run_id: str | None = None
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def usage(self) -> Usage:
        return Usage.total([step.usage for step in self.steps.values()])

    @property
    def cost_usd(self) -> Decimal | None:
        """Total dollars, or None when any step that used tokens is unpriced."""
        return sum_costs([s.cost_usd for s in self.steps.values()])

    def report(self) -> str:
        """The per-step table the CLI prints at the end of a run."""
        from flowgpt.report import render_table

        return render_table(self)

    def to_dict(self) -> dict[str, Any]:
        from flowgpt.report import result_to_dict

        return result_to_dict(self)
