"""Run budgets: a call is made only when its worst case fits what is left.

Every call reserves its worst case (all prompt tokens uncached, every allowed output token
used, at the model's price) before it is sent; when it returns, the real usage replaces the
reservation. Concurrent calls each hold their reservation, so the sum of what is spent and
what is in flight never passes the limit: a run cannot exceed its budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from flowgpt.accounting.prices import closest_model
from flowgpt.errors import BudgetExceededError
from flowgpt.money import format_usd

__all__ = ["Budget", "Reservation"]


@dataclass
class Reservation:
    step: str
    tokens: int
    cost: Decimal
    outer: Reservation | None = None  # the same call held in the enclosing budget


class Budget:
    """Limits for one run (either may be None: no limit of that kind)."""

    def __init__(
        self,
        max_cost_usd: Decimal | None,
        max_tokens: int | None,
        *,
        outer: Budget | None = None,
        label: str = "the budget",
    ) -> None:
        # A budget shared by many runs (a batch's --max-cost): every call must fit both.
        self.outer = outer if outer is not None and outer.active else None
        self.label = label
        self.refusals = 0  # calls refused (a batch stops starting rows after the first)
        self.max_cost_usd = max_cost_usd
        self.max_tokens = max_tokens
        self.spent_cost = Decimal(0)
        self.spent_tokens = 0
        self.reserved_cost = Decimal(0)
        self.reserved_tokens = 0
        self.spent_by_step: dict[str, Decimal] = {}

    @property
    def active(self) -> bool:
        return (
            self.max_cost_usd is not None or self.max_tokens is not None or (self.outer is not None)
        )

    def _spent_lines(self) -> str:
        # What was spent when the call was refused; calls still in flight are said apart
        # (they finish and are paid after this message was written).
        flight = ""
        if self.reserved_cost > 0:
            flight = f"; calls in flight may cost up to {format_usd(self.reserved_cost)} more"
        if not self.spent_by_step:
            finished = "no call had finished yet" if flight else "nothing spent yet"
            return finished + flight
        parts = [f"{step} {format_usd(cost)}" for step, cost in self.spent_by_step.items()]
        total = f" (total {format_usd(self.spent_cost)})"
        return "spent so far: " + ", ".join(parts) + total + flight

    def reserve(
        self, step: str, model: str, tokens: int, worst_cost: Decimal | None
    ) -> Reservation:
        """Hold a call's worst case, or raise BudgetExceededError without holding anything."""
        try:
            return self._reserve(step, model, tokens, worst_cost)
        except BudgetExceededError:
            self.refusals += 1
            raise

    def _reserve(
        self, step: str, model: str, tokens: int, worst_cost: Decimal | None
    ) -> Reservation:
        if self.max_cost_usd is not None and worst_cost is None:
            close = closest_model(model)
            typo = f" (did you mean `{close}`?)" if close else ""
            raise BudgetExceededError(
                f"step `{step}`: model `{model}`{typo} has no known price, so the cost budget "
                f"({format_usd(self.max_cost_usd)}) cannot be enforced",
                hint=f"add `pricing: {{{model}: {{input: ..., output: ...}}}}` (USD per "
                "million tokens), or remove the cost limit",
                step=step,
            )
        cost = worst_cost or Decimal(0)
        if self.max_cost_usd is not None:
            committed = self.spent_cost + self.reserved_cost
            if committed + cost > self.max_cost_usd:
                raise BudgetExceededError(
                    f"step `{step}`: the next call could cost up to {format_usd(cost)} "
                    f"({tokens:,} tokens at {model}'s price); with {format_usd(committed)} "
                    f"spent or in flight, that could break {self.label} of "
                    f"{format_usd(self.max_cost_usd)}, so it was not made; " + self._spent_lines(),
                    hint="raise `budget.max_cost_usd` (or the run's cost limit), lower the "
                    "step's max_tokens, or use a cheaper model",
                    step=step,
                    code="budget",
                )
        if self.max_tokens is not None:
            committed_tokens = self.spent_tokens + self.reserved_tokens
            if committed_tokens + tokens > self.max_tokens:
                raise BudgetExceededError(
                    f"step `{step}`: the next call could use up to {tokens:,} tokens; with "
                    f"{committed_tokens:,} used or in flight that could break {self.label} of "
                    f"{self.max_tokens:,} tokens, so it was not made; " + self._spent_lines(),
                    hint="raise `budget.max_tokens`, or lower the step's max_tokens",
                    step=step,
                )
        outer = None
        if self.outer is not None:
            outer = self.outer.reserve(step, model, tokens, worst_cost)
        self.reserved_cost += cost
        self.reserved_tokens += tokens
        return Reservation(step, tokens, cost, outer)

    def settle(self, reservation: Reservation, tokens: int, cost: Decimal | None) -> None:
        """Replace a reservation by what the call really used (0 when it failed unbilled).

        What was spent only grows: a negative amount (a server's impossible usage, which
        the providers refuse already) counts as 0, so it can never let later calls through.
        """
        tokens = max(tokens, 0)
        if cost is not None and cost < 0:
            cost = Decimal(0)
        if reservation.outer is not None and self.outer is not None:
            self.outer.settle(reservation.outer, tokens, cost)
        self.reserved_cost -= reservation.cost
        self.reserved_tokens -= reservation.tokens
        self.spent_tokens += tokens
        if cost is not None:
            self.spent_cost += cost
            by_step = self.spent_by_step
            by_step[reservation.step] = by_step.get(reservation.step, Decimal(0)) + cost
