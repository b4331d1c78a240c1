"""Tables and JSON from results. Pure functions: nothing here calls a model or a file."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

from flowgpt.pricing import format_usd
from flowgpt.results import RunResult, StepResult

__all__ = ["cost_table", "render_table", "result_to_dict", "step_to_dict"]

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
