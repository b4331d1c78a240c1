"""The live per-step display a run shows on stderr (rich), and the final cost table."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from flowgpt.cli._console import fit_pipes
from flowgpt.engine.events import EngineEvent
from flowgpt.money import format_usd
from flowgpt.providers.rate_limits import RateLimitHold, RateLimitStats
from flowgpt.results import RunResult, cost_table
from flowgpt.spec.models import WorkflowSpec

if TYPE_CHECKING:
    from rich.progress import ProgressColumn

    from flowgpt.engine.data import BatchRowResult

__all__ = ["BatchProgress", "Progress", "rate_limit_summary"]

# Rate-limit lines without a live display: at most one per this many seconds.
_RATE_LIMIT_LINE_EVERY_S = 10.0


def rate_limit_summary(stats: RateLimitStats) -> str:
    """What a summary says of the 429s waited out ("12 rate-limit 429s waited out
    (3.4 s)"); "" when there were none."""
    n = stats.rate_limited
    if not n:
        return ""
    return f"{n} rate-limit 429{'s' * (n != 1)} waited out ({stats.waited_s:.1f} s)"


def _held(holds: list[RateLimitHold]) -> str:
    return "held: " + "; ".join(str(h) for h in holds[:2]) if holds else ""


def _read(holds: Callable[[], list[RateLimitHold]] | None) -> list[RateLimitHold]:
    if holds is None:
        return []
    try:
        return holds()
    except RuntimeError:  # read from rich's refresh thread while the loop changed them
        return []


class _Throttled:
    """Prints rate-limit events as lines, at most one per ``_RATE_LIMIT_LINE_EVERY_S``."""

    def __init__(self) -> None:
        self.last = -_RATE_LIMIT_LINE_EVERY_S

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < _RATE_LIMIT_LINE_EVERY_S:
            return False
        self.last = now
        return True


_ICONS = {
    "waiting": "·",
    "running": "…",
    "ok": "✓",
    "failed": "✗",
    "skipped": "-",
    "retrying": "↻",
}


class Progress:
    """Shows each step's state as events arrive: a live table on a terminal, one line per
    event otherwise (logs, CI, pipes). ``holds`` (the engine's ``rate_limit_holds``), when
    set, adds a line to the live table while a rate limit holds requests back."""

    def __init__(self, spec: WorkflowSpec, console: Console | None = None) -> None:
        self.console = fit_pipes(console or Console(stderr=True, highlight=False))
        self.states: dict[str, str] = {s.id: "waiting" for s in spec.steps}
        self.notes: dict[str, str] = {s.id: "" for s in spec.steps}
        self.started: dict[str, float] = {}
        self.live: Live | None = None
        self.run_id: str | None = None
        self.holds: Callable[[], list[RateLimitHold]] | None = None
        self._rate_limit_lines = _Throttled()

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            # Rendered anew at every refresh: running times and rate-limit holds move on
            # between events too.
            self.live = Live(self, console=self.console, transient=True)
            self.live.__enter__()
        return self

    def __rich__(self) -> Table:
        return self._table()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.__exit__(exc_type, exc, tb)
            self.live = None

    def _table(self) -> Table:
        table = Table(show_header=False, box=None, pad_edge=False)
        for step, state in self.states.items():
            elapsed = ""
            if state == "running" and step in self.started:
                elapsed = f"{time.perf_counter() - self.started[step]:.1f}s"
            table.add_row(_ICONS[state], step, elapsed or self.notes[step])
        held = _held(_read(self.holds))
        if held:
            table.add_row("⏸", "", held, style="yellow")
        return table

    def _line(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, markup=False)
        else:
            self.console.print(text, markup=False)

    def on_event(self, event: EngineEvent) -> None:
        if event.kind == "run_started":
            self.run_id = event.message
        step = event.step
        if event.kind == "warning" and event.message:
            self._line(f"warning: {event.message}")
        if event.kind == "rate_limited" and event.message and self._rate_limit_lines.due():
            self._line(f"rate limit: {event.message}")
        if step is None or step not in self.states:
            return
        result = event.result
        if event.kind == "step_started":
            self.states[step] = "running"
            self.started[step] = time.perf_counter()
            if self.live is None:
                self._line(f"… {step} started")
        elif event.kind == "attempt_rejected":
            self.states[step] = "retrying"
            self.notes[step] = "reply rejected, asking again"
            self._line(f"↻ {step}: reply rejected: {event.message}")
        elif event.kind == "step_finished" and result is not None:
            self.states[step] = "ok"
            usage = result.usage
            if result.status in ("reused", "cached"):
                saved = format_usd(result.saved_usd)
                self.notes[step] = f"{result.status}, $0 (saved {saved})"
            else:
                self.notes[step] = (
                    f"{result.latency_s:.1f}s  {usage.prompt_tokens:,}→"
                    f"{usage.completion_tokens:,} tokens  {format_usd(result.cost_usd)}"
                )
            if self.live is None:
                self._line(f"✓ {step}  {self.notes[step]}")
        elif event.kind == "step_skipped":
            self.states[step] = "skipped"
            self.notes[step] = "skipped (when: false)"
            if self.live is None:
                self._line(f"- {step} skipped")
        elif event.kind == "step_failed":
            self.states[step] = "failed"
            self.notes[step] = "failed"
            if self.live is None:
                self._line(f"✗ {step} failed")
        if self.live is not None:
            self.live.refresh()

    def print_table(self, result: RunResult, **kwargs: Any) -> None:
        self.console.print(cost_table(result), **kwargs)


class BatchProgress:
    """A batch's progress on stderr: rows done and failed, tokens and dollars so far, and
    the time left. A live bar on a terminal; a line per tenth of the rows otherwise."""

    def __init__(
        self,
        total: int,
        console: Console | None = None,
        holds: Callable[[], list[RateLimitHold]] | None = None,
    ) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self.console = console or Console(stderr=True, highlight=False)
        self.total = total
        self.done = self.failed = self.tokens = 0
        self.cost: Decimal | None = Decimal(0)
        self.started = time.perf_counter()
        self._every = max(1, total // 10)
        self._holds = holds  # what holds requests back now (the engine's rate_limit_holds)
        self._rate_limit_lines = _Throttled()
        self.bar: Bar | None = None
        if self.console.is_terminal:
            self.bar = Bar(
                TextColumn("rows"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "{task.fields[failed]} failed · {task.fields[tokens]} tokens · "
                    "{task.fields[cost]}"
                ),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                _held_column(self.held),
                console=self.console,
                transient=True,
            )
            self._task = self.bar.add_task("rows", total=total)
            self._show()

    def _show(self) -> None:
        assert self.bar is not None
        self.bar.update(
            self._task,
            completed=self.done,
            failed=self.failed,
            tokens=f"{self.tokens:,}",
            cost=self.money,
        )

    @property
    def money(self) -> str:
        return format_usd(self.cost)

    def held(self) -> str:
        """What holds requests back now ("held: gpt-4o-mini: paced to the TPM limit ..."),
        or ""."""
        return _held(_read(self._holds))

    def on_event(self, event: EngineEvent) -> None:
        """Without a live bar, a line when a 429 holds requests back (at most one per
        ten seconds); the live bar shows it in its last column."""
        if (
            event.kind == "rate_limited"
            and self.bar is None
            and event.message
            and self._rate_limit_lines.due()
        ):
            self.console.print(f"rate limit: {event.message}", markup=False, soft_wrap=True)

    def __enter__(self) -> BatchProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, row: BatchRowResult) -> None:
        self.done += 1
        self.failed += not row.ok
        self.tokens += row.usage.total_tokens
        if self.cost is not None:
            self.cost = None if row.cost_usd is None else self.cost + row.cost_usd
        if self.bar is not None:
            self._show()
        elif self.done % self._every == 0 or self.done == self.total:
            elapsed = time.perf_counter() - self.started
            left = elapsed / self.done * (self.total - self.done)
            held = self.held()
            self.console.print(
                f"rows {self.done}/{self.total} · {self.failed} failed · {self.tokens:,} "
                f"tokens · {self.money} · {elapsed:.1f} s, about {left:.0f} s left"
                + (f" · {held}" if held else ""),
                markup=False,
                soft_wrap=True,
            )


def _held_column(held: Callable[[], str]) -> ProgressColumn:
    """A progress-bar column showing what holds requests back, read at every refresh."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Held(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(held(), style="yellow")

    return Held()
