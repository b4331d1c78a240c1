"""What a run produces: one StepResult per step and a RunResult for the whole run, and the
ways they are shown: the per-step cost table (rich, loaded only when a table is asked
for, fitted to the width it is printed in), the transcript of what each step sent and
got back (plain text), and plain JSON-ready dicts."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from flowgpt.money import format_usd, sum_costs
from flowgpt.usage import Usage

__all__ = [
    "STATUS_WORDS",
    "AttemptResult",
    "FirstFit",
    "RunResult",
    "StepResult",
    "StepStatus",
    "attempt_to_dict",
    "cost_table",
    "pretty",
    "render_table",
    "render_transcript",
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
    # Where the prices came from, when they are not the endpoint's own (OpenAI's list
    # prices for requests sent through a relay, say); shown under the cost table.
    price_note: str | None = None

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

    def transcript(self) -> str:
        """What each step sent and got back (:func:`render_transcript`)."""
        return render_transcript(self)

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


@dataclass(frozen=True)
class _Line:
    """One row of the cost table, as text."""

    name: str
    model: str
    prompt: str
    cached: str
    completion: str
    cost: str
    latency: str
    attempts: str


def _lines(result: RunResult) -> tuple[list[_Line], _Line, bool]:
    """The step rows, the total row, and whether any token count is approximate."""
    lines: list[_Line] = []
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
        lines.append(
            _Line(
                name,
                step.model or "-",
                f"{approx}{usage.prompt_tokens:,}",
                f"{usage.cached_tokens:,}",
                f"{usage.completion_tokens:,}",
                _usd(step.cost_usd, step.status),
                f"{step.latency_s:.2f}s",
                str(step.n_attempts),
            )
        )
    total = result.usage
    total_line = _Line(
        "total",
        "",
        f"{total.prompt_tokens:,}",
        f"{total.cached_tokens:,}",
        f"{total.completion_tokens:,}",
        format_usd(result.cost_usd),
        f"{result.latency_s:.2f}s",
        str(sum(s.n_attempts for s in result.steps.values())),
    )
    return lines, total_line, any_approx


def _caption(result: RunResult, any_approx: bool) -> str:
    saved = [s.saved_usd for s in result.steps.values() if s.saved_usd is not None]
    captions = []
    if saved:
        captions.append(f"saved {format_usd(sum(saved, Decimal(0)))} by reusing results")
    if any_approx:
        captions.append("~ token counts are approximate for models without a known tokenizer")
    if result.price_note:
        captions.append(result.price_note)
    return "; ".join(captions)


def cost_table(result: RunResult) -> Any:
    """The per-step table (tokens, dollars, latency and attempts per step, and a total) as
    a rich renderable that fits where it is printed: the full table when it fits, else a
    narrower one (prompt and completion tokens in one column, lighter borders), else two
    lines per step. Step ids, models and dollars are never cut short."""
    lines, total, any_approx = _lines(result)
    caption = _caption(result, any_approx)
    title = f"{result.workflow}: {result.status}"
    return FirstFit(
        _full_table(title, lines, total, caption),
        _compact_table(title, lines, total, caption),
        _stacked(title, lines, total, caption),
    )


def _full_table(title: str, lines: list[_Line], total: _Line, caption: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
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
    for line in lines:
        table.add_row(*_cells(line))
    table.add_section()
    table.add_row(*_cells(total))
    if caption:
        table.caption = caption
        table.caption_justify = "left"
    return table


def _cells(line: _Line) -> tuple[str, ...]:
    return (
        line.name,
        line.model,
        line.prompt,
        line.cached,
        line.completion,
        line.cost,
        line.latency,
        line.attempts,
    )


def _tokens(line: _Line) -> str:
    """Prompt → completion tokens, with the prompt tokens the API served from its cache."""
    cached = f" ({line.cached} cached)" if line.cached != "0" else ""
    return f"{line.prompt}{cached} → {line.completion}"


def _compact_table(title: str, lines: list[_Line], total: _Line, caption: str) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(
        title=title,
        title_justify="left",
        box=box.MINIMAL_HEAVY_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("step", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    for line in [*lines, total]:
        if line is total:
            table.add_section()
        table.add_row(line.name, line.model, _tokens(line), line.cost, line.latency, line.attempts)
    if caption:
        table.caption = caption
        table.caption_justify = "left"
    return table


def _stacked(title: str, lines: list[_Line], total: _Line, caption: str) -> Any:
    from rich.console import Group
    from rich.text import Text

    def numbers(line: _Line) -> str:
        attempts = f"{line.attempts} attempt{'s' * (line.attempts != '1')}"
        return f"{_tokens(line)} tokens · {line.cost} · {line.latency} · {attempts}"

    parts = [Text(title)]
    for line in lines:
        parts.append(Text(f"{line.name} · {line.model}"))
        parts.append(Text(f"  {numbers(line)}"))
    parts.append(Text(f"total: {numbers(total)}"))
    if caption:
        parts.append(Text(caption))
    return Group(*parts)


class FirstFit:
    """The first of several renderings of one thing that fits the width it is printed in
    (the last one whatever the width): a wide table on a wide terminal, a narrower layout
    on a narrow one, and never a cell cut short with "…"."""

    def __init__(self, *renderings: Any) -> None:
        if not renderings:
            raise ValueError("FirstFit needs at least one rendering")
        self.renderings = renderings

    def pick(self, console: Any, options: Any) -> Any:
        from rich.measure import Measurement

        # Measured without a limit: rich clamps a measurement to the width it is given.
        unlimited = options.update_width(10_000)
        for rendering in self.renderings[:-1]:
            if Measurement.get(console, unlimited, rendering).maximum <= options.max_width:
                return rendering
        return self.renderings[-1]

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield self.pick(console, options)

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        from rich.measure import Measurement

        return Measurement.get(console, options, self.pick(console, options))


def render_table(result: RunResult, *, width: int = 100) -> str:
    """The cost table as plain text, fitted to ``width`` columns."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, no_color=True, highlight=False, emoji=False)
    console.print(cost_table(result))
    return buffer.getvalue()


def _money(value: Decimal | None) -> str | None:
    # JSON carries money as a string so no precision is lost; unpriced is null, never 0.
    return None if value is None else str(value)


def attempt_to_dict(attempt: AttemptResult) -> dict[str, Any]:
    """One reply of a step: its text, why validation rejected it, usage, cost, latency."""
    return {
        "text": attempt.text,
        "failures": list(attempt.failures),
        "finish_reason": attempt.finish_reason,
        "usage": attempt.usage.to_dict(),
        "cost_usd": _money(attempt.cost_usd),
        "latency_s": round(attempt.latency_s, 4),
        "retries": attempt.retries,
    }


def step_to_dict(step: StepResult, *, details: bool = False) -> dict[str, Any]:
    """A step as JSON data. ``details`` adds what was sent and received: ``messages``
    (as sent), ``text`` (the last reply), ``replies`` (every attempt, in order) and
    ``item_steps`` (a for_each step's items, each with the same details)."""
    doc = {
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
    if details:
        doc["messages"] = step.messages
        doc["text"] = step.text
        doc["replies"] = [attempt_to_dict(a) for a in step.attempts]
        doc["item_steps"] = [step_to_dict(i, details=True) for i in step.items]
    return doc


def result_to_dict(result: RunResult, *, details: bool = False) -> dict[str, Any]:
    """A run as JSON data; ``details``: each step's messages and replies too."""
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
        "price_note": result.price_note,
        "steps": [step_to_dict(s, details=details) for s in result.steps.values()],
    }


# -- the transcript -------------------------------------------------------------------


def render_transcript(result: RunResult) -> str:
    """What each step sent and got back, as Markdown-like text (like ``llm logs``): the
    inputs, then per step its messages as sent, role by role, and every reply in order
    (JSON pretty-printed), with why validation rejected it; a step's error last.

    This is ``flowgpt runs show``'s body; ``RunStore.load_run`` gives the result."""
    out: list[str] = []
    if result.inputs:
        out += ["inputs:", "", _fenced(_json_text(result.inputs), "json"), ""]
    for step in result.steps.values():
        _step_transcript(step, out)
        for item in step.items:
            _step_transcript(item, out)
    if result.error:
        out += [f"error: {result.error}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


# What a step's status means, for people (the run page and the transcript).
STATUS_WORDS = {
    "ok": "ok",
    "failed": "failed",
    "skipped": "skipped (its when: was false)",
    "reused": "reused from the run it resumed",
    "cached": "answered from the response cache",
    "pending": "not run",
}

# The transcript is Markdown-like text: a failure stands out, `when:` is code.
_TRANSCRIPT_WORDS = {
    **STATUS_WORDS,
    "failed": "FAILED",
    "skipped": "skipped (its `when:` was false)",
}


def _step_transcript(step: StepResult, out: list[str]) -> None:
    title = step.id + (f" ×{len(step.items)}" if step.items else "")
    usage = step.usage
    facts = [step.model or "-", _TRANSCRIPT_WORDS.get(step.status, step.status)]
    if step.attempts or step.items:
        facts.append(f"{usage.prompt_tokens:,} → {usage.completion_tokens:,} tokens")
        facts.append(format_usd(step.cost_usd))
        facts.append(f"{step.latency_s:.2f}s")
    elif step.status == "failed":
        facts.append("nothing was sent")
    if step.saved_usd is not None:
        facts.append(f"saved {format_usd(step.saved_usd)}")
    out += [f"## {title}", " · ".join(facts), ""]
    if step.items:  # the items follow, each with its own messages and replies
        if step.error:
            out += [f"error: {step.error}", ""]
        return
    for message in step.messages:
        role = str(message.get("role", "?"))
        if message.get("name"):
            role += f" ({message['name']})"
        content = message.get("content")
        text = content if isinstance(content, str) else _json_text(content)
        out += [f"### {role}", "", text.rstrip("\n"), ""]  # trailing newlines are unseen
    attempts = step.attempts
    for n, attempt in enumerate(attempts, 1):
        heading = "### reply" if len(attempts) == 1 else f"### reply {n} of {len(attempts)}"
        notes = []
        if attempt.failures:
            notes.append("rejected")
        if attempt.finish_reason == "length":
            notes.append("cut off at max_tokens")
        notes.append(
            f"{attempt.usage.prompt_tokens:,} → {attempt.usage.completion_tokens:,} tokens"
        )
        notes.append(format_usd(attempt.cost_usd))
        out += [" · ".join([heading, *notes]), "", _reply_text(attempt.text), ""]
        if attempt.failures:
            out += ["rejected because:", *(f"- {f}" for f in attempt.failures), ""]
            if n < len(attempts):
                out += ["(asked again, with these errors)", ""]
    if not attempts and step.text is not None:  # reused or cached: no call was made
        out += [f"### reply ({step.status})", "", _reply_text(step.text), ""]
    if step.error:
        out += [f"error: {step.error}", ""]


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _fenced(text: str, lang: str = "") -> str:
    fence = "```"
    while fence in text:  # a reply that holds a fence gets a longer one
        fence += "`"
    return f"{fence}{lang}\n{text}\n{fence}"


def pretty(value: Any) -> tuple[str, bool]:
    """A value as shown to people, and whether that is JSON: data, and text that is a JSON
    object or array, pretty-printed; any other text as it is."""
    if not isinstance(value, str):
        return _json_text(value), True
    stripped = value.strip()
    if stripped[:1] in ("{", "["):
        try:
            return _json_text(json.loads(stripped)), True
        except ValueError:
            pass
    return value, False


def _reply_text(text: str) -> str:
    """A reply as shown: JSON pretty-printed in a fenced block, anything else as it is."""
    shown, is_json = pretty(text)
    return _fenced(shown, "json") if is_json else text
