"""What a run produces: one StepResult per step and a RunResult for the whole run, and the
ways they are shown: the per-step cost table (rich, loaded only when a table is asked
for) and plain JSON-ready dicts."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from flowgpt.money import format_usd, sum_costs
from flowgpt.usage import Usage

__all__ = [
    "AttemptResult",
    "RunResult",
    "StepResult",
    "StepStatus",
    "cost_table",
    "render_table",
    "result_to_dict",
    "step_to_dict",
]

StepStatus = Literal["ok", "failed", "skipped", "reused", "cached", "pending"]


@dataclass
class AttemptResult:
    """One call to the model (a step makes more than one when its output is repaired)."""

    text: str
    usage: Usage
    cost_usd: Decimal | None
    latency_s: float
    finish_reason: str | None = None
    retries: int = 0  # error retries the provider took for this call (not 429s waited out)
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
        return render_table(self)

    def to_dict(self) -> dict[str, Any]:
        return result_to_dict(self)


# -- the cost table and JSON ----------------------------------------------------------


_NOTES = {
    "reused": "reused",
    "cached": "cached",
    "skipped": "skipped",
    "failed": "FAILED",
    "pending": "not run",
}


def _usd(value: Decimal | None, status: str) -> str:
    if status == "skipped":
        return "-"
    return format_usd(value)


def cost_table(result: RunResult) -> Any:
    """A rich Table: one row per step and a total."""
    from rich.table import Table

    table = Table(title=f"{result.workflow}: {result.status}", title_justify="left")
    for name, justify in (
        ("step", "left"),
        ("model", "left"),
        ("prompt", "right"),
        ("cached", "right"),
        ("completion", "right"),
        ("cost", "right"),
        ("latency", "right"),
        ("attempts", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    any_approx = False
    for step in result.steps.values():
        usage = step.usage
        name = step.id
        if step.items:
            name += f" ×{len(step.items)}"
        note = _NOTES.get(step.status)
        if note:
            name += f" ({note})"
        approx = "" if step.exact_tokens else "~"
        any_approx = any_approx or not step.exact_tokens
        table.add_row(
            name,
            step.model or "-",
            f"{approx}{usage.prompt_tokens:,}",
            f"{usage.cached_tokens:,}",
            f"{usage.completion_tokens:,}",
            _usd(step.cost_usd, step.status),
            f"{step.latency_s:.2f}s",
            str(step.n_attempts),
        )
    total = result.usage
    table.add_section()
    table.add_row(
        "total",
        "",
        f"{total.prompt_tokens:,}",
        f"{total.cached_tokens:,}",
        f"{total.completion_tokens:,}",
        format_usd(result.cost_usd),
        f"{result.latency_s:.2f}s",
        str(sum(s.n_attempts for s in result.steps.values())),
    )
    saved = [s.saved_usd for s in result.steps.values() if s.saved_usd is not None]
    captions = []
    if saved:
        captions.append(f"saved {format_usd(sum(saved, Decimal(0)))} by reusing results")
    if any_approx:
        captions.append("~ token counts are approximate for models without a known tokenizer")
    if captions:
        table.caption = "; ".join(captions)
        table.caption_justify = "left"
    return table


def render_table(result: RunResult, *, width: int = 100) -> str:
    """The cost table as plain text."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, no_color=True, highlight=False, emoji=False)
    console.print(cost_table(result))
    return buffer.getvalue()


def _money(value: Decimal | None) -> str | None:
    # JSON carries money as a string so no precision is lost; unpriced is null, never 0.
    return None if value is None else str(value)


def step_to_dict(step: StepResult) -> dict[str, Any]:
    return {
        "id": step.id,
        "status": step.status,
        "model": step.model,
        "output": step.output,
        "usage": step.usage.to_dict(),
        "cost_usd": _money(step.cost_usd),
        "latency_s": round(step.latency_s, 4),
        "attempts": step.n_attempts,
        "retries": step.retries,
        "finish_reason": step.finish_reason,
        "exact_tokens": step.exact_tokens,
        "items": len(step.items) if step.items else None,
        "error": step.error,
    }


def result_to_dict(result: RunResult) -> dict[str, Any]:
    return {
        "workflow": result.workflow,
        "run_id": result.run_id,
        "status": result.status,
        "error": result.error,
        "inputs": result.inputs,
        "outputs": result.outputs,
        "usage": result.usage.to_dict(),
        "cost_usd": _money(result.cost_usd),
        "latency_s": round(result.latency_s, 4),
        "steps": [step_to_dict(s) for s in result.steps.values()],
    }
