"""The render context templates see (plain data): ``inputs``, ``steps`` (one entry per
finished or skipped step) and, inside a for_each step, the ``as`` item."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: What a template may read of a step: ``steps.<id>.<field>``.
STEP_FIELDS: tuple[str, ...] = ("output", "text", "usage", "skipped")


def step_entry(
    *,
    output: Any = None,
    text: Any = None,
    usage: Mapping[str, int] | None = None,
    skipped: bool = False,
) -> dict[str, Any]:
    """The context entry of one finished (or skipped) step, as templates see it."""
    counts = dict(usage or {})
    counts.setdefault("prompt_tokens", 0)
    counts.setdefault("completion_tokens", 0)
    counts.setdefault("total_tokens", counts["prompt_tokens"] + counts["completion_tokens"])
    return {
        "output": None if skipped else output,
        "text": None if skipped else text,
        "usage": counts,
        "skipped": skipped,
    }


def make_context(
    inputs: Mapping[str, Any],
    steps: Mapping[str, Mapping[str, Any]],
    *,
    item_name: str | None = None,
    item: Any = None,
) -> dict[str, Any]:
    """The render context: ``inputs``, ``steps`` and, inside for_each, the ``as`` item."""
    context: dict[str, Any] = {
        "inputs": dict(inputs),
        "steps": {k: dict(v) for k, v in steps.items()},
    }
    if item_name is not None:
        if item_name in context:
            raise ValueError(f"`as: {item_name}` would hide `{item_name}`; choose another name")
        context[item_name] = item
    return context
