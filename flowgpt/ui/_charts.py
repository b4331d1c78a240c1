"""The pictures of ``flowgpt ui``, worked out on the server as plain geometry: the step
graph (boxes in layers, arrows between them), a run's per-step cost and latency bars, and
the daily spend by model. The templates draw them as inline SVG, so the pages need no
JavaScript and no drawing library; every text in them is escaped by the templates.
"""

from __future__ import annotations

import graphlib
import math
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from decimal import Decimal

from flowgpt.money import format_spend, format_usd

__all__ = [
    "BarChart",
    "GraphLayout",
    "GraphStep",
    "SpendChart",
    "SpendSeries",
    "bar_chart",
    "layout_graph",
    "spend_chart",
]

# -- the step graph ---------------------------------------------------------------------

BOX_W, BOX_H = 176.0, 66.0
GAP_X, GAP_Y, PAD = 54.0, 18.0, 10.0
_CHAR_W = 7.6  # about one character of the box font (13px, sans-serif)


@dataclass(frozen=True)
class GraphStep:
    """One step as its box shows it."""

    id: str
    status: str  # ok, failed, skipped, reused, cached, pending
    detail: str  # second line: the status, a for_each step's items
    figures: str  # third line: cost and latency
    title: str  # the tooltip: everything, untruncated


@dataclass(frozen=True)
class Node:
    step: GraphStep
    x: float
    y: float
    label: str  # the id, cut to fit the box
    layer: int

    @property
    def w(self) -> float:
        return BOX_W

    @property
    def h(self) -> float:
        return BOX_H


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str  # SVG path data, numbers only
    skipped: bool  # into a skipped step


@dataclass(frozen=True)
class GraphLayout:
    nodes: list[Node]
    edges: list[Edge]
    width: float
    height: float


def _fit(text: str, width: float) -> str:
    most = max(4, int(width / _CHAR_W))
    return text if len(text) <= most else text[: most - 1] + "…"


def _layers(ids: Sequence[str], deps: Mapping[str, Set[str]]) -> dict[str, int]:
    """Each step's layer: 0 without dependencies, else one more than its deepest one."""
    known = {i: {d for d in deps.get(i, ()) if d in ids and d != i} for i in ids}
    try:
        order = list(graphlib.TopologicalSorter(known).static_order())
    except graphlib.CycleError:  # a stored workflow was valid; never drawn wrong, though
        return {i: n for n, i in enumerate(ids)}
    layer: dict[str, int] = {}
    for i in order:
        layer[i] = 1 + max((layer[d] for d in known[i]), default=-1)
    return layer


def layout_graph(steps: Sequence[GraphStep], deps: Mapping[str, Set[str]]) -> GraphLayout:
    """Steps left to right by dependency depth, each arrow from a step to one that needs
    it. Within a layer, steps go in file order, then by where their dependencies sit
    (two barycenter passes), which keeps arrows from crossing in the usual shapes."""
    ids = [s.id for s in steps]
    if not ids:
        return GraphLayout([], [], 0.0, 0.0)
    position = {i: n for n, i in enumerate(ids)}
    layer = _layers(ids, deps)
    columns: list[list[str]] = [[] for _ in range(max(layer.values()) + 1)]
    for i in ids:
        columns[layer[i]].append(i)
    rank: dict[str, float] = {}

    def place() -> None:
        for column in columns:
            for n, i in enumerate(column):
                rank[i] = (n + 0.5) / len(column)

    place()
    for _ in range(2):
        for column in columns[1:]:

            def centre(i: str) -> tuple[float, int]:
                before = [rank[d] for d in deps.get(i, ()) if d in rank and layer[d] < layer[i]]
                return (sum(before) / len(before) if before else rank[i], position[i])

            column.sort(key=centre)
        place()
    tallest = max(len(c) for c in columns)
    inner = tallest * BOX_H + (tallest - 1) * GAP_Y
    slots: dict[str, tuple[int, float]] = {}  # id -> (layer, top, before any lane room)
    for n, column in enumerate(columns):
        used = len(column) * BOX_H + (len(column) - 1) * GAP_Y
        for k, i in enumerate(column):
            slots[i] = (n, (inner - used) / 2 + k * (BOX_H + GAP_Y))
    pairs = [
        (d, i)
        for i in ids
        for d in sorted(deps.get(i, ()), key=lambda d: position.get(d, -1))
        if d in slots and d != i
    ]
    # An arrow that skips layers would cross the boxes in between: it goes over them,
    # in a lane of its own above the highest box it passes (room is made at the top).
    lanes: dict[tuple[str, str], float] = {}
    for d, i in pairs:
        (la, ya), (lb, yb) = slots[d], slots[i]
        low, high = min(ya, yb), max(ya, yb) + BOX_H
        blocking = [
            y for j, (lj, y) in slots.items() if la < lj < lb and y < high and y + BOX_H > low
        ]
        if blocking:
            lanes[d, i] = min(blocking) - 8 - 7 * len(lanes)
    room = 10 + 7 * len(lanes) if lanes else 0.0
    height = 2 * PAD + room + inner
    width = 2 * PAD + len(columns) * BOX_W + (len(columns) - 1) * GAP_X
    by_id = {s.id: s for s in steps}
    nodes = {
        i: Node(
            step=by_id[i],
            x=PAD + n * (BOX_W + GAP_X),
            y=PAD + room + top,
            label=_fit(i, BOX_W - 20),
            layer=n,
        )
        for i, (n, top) in slots.items()
    }
    edges = []
    for d, i in pairs:
        a, b = nodes[d], nodes[i]
        x1, y1 = a.x + BOX_W, a.y + BOX_H / 2
        x2, y2 = b.x - 2, b.y + BOX_H / 2  # the arrowhead ends at the box
        if (d, i) in lanes:
            lane = PAD + room + lanes[d, i]
            c = GAP_X / 2
            path = (
                f"M{x1:.1f},{y1:.1f} C{x1 + c:.1f},{y1:.1f} {x1 + c:.1f},{lane:.1f}"
                f" {x1 + GAP_X:.1f},{lane:.1f} L{x2 - GAP_X:.1f},{lane:.1f}"
                f" C{x2 - c:.1f},{lane:.1f} {x2 - c:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
            )
        else:
            bend = max(18.0, (x2 - x1) / 2)
            path = (
                f"M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f}"
                f" {x2:.1f},{y2:.1f}"
            )
        edges.append(Edge(d, i, path, by_id[i].status == "skipped"))
    return GraphLayout([nodes[i] for i in ids], edges, width, height)


# -- a run's cost and latency per step ----------------------------------------------------

_NOT_RUN = ("skipped", "pending")


@dataclass(frozen=True)
class Bar:
    width: float  # 0 when there is nothing to draw
    text: str  # the value, as shown beside the bar
    known: bool  # False: unpriced (no bar, never a zero-length "$0")


@dataclass(frozen=True)
class BarRow:
    step_id: str
    label: str
    y: float
    cost: Bar
    latency: Bar
    status: str


@dataclass(frozen=True)
class BarChart:
    rows: list[BarRow]
    label_w: float
    bar_w: float  # the longest bar
    text_w: float  # room for a value after its bar
    row_h: float
    width: float
    height: float

    @property
    def cost_x(self) -> float:
        return self.label_w

    @property
    def latency_x(self) -> float:
        return self.label_w + self.bar_w + self.text_w


def bar_chart(
    steps: Sequence[tuple[str, str, Decimal | None, float]], *, bar_w: float = 220.0
) -> BarChart:
    """Bars of (step id, status, cost, latency): cost and latency side by side, each
    scaled to its largest value. An unpriced cost draws no bar and says "unpriced"; a
    step skipped or not run draws none and says "-"."""
    label_w, text_w, row_h, head = 150.0, 96.0, 24.0, 22.0
    ran = [(c, t) for _, s, c, t in steps if s not in _NOT_RUN]
    most_cost = max((c for c, _ in ran if c is not None), default=Decimal(0))
    most_latency = max((t for _, t in ran), default=0.0)
    rows = []
    for n, (step_id, status, cost, latency) in enumerate(steps):
        if status in _NOT_RUN:
            cost_bar = latency_bar = Bar(0.0, "-", True)
        else:
            if cost is None:
                cost_bar = Bar(0.0, "unpriced", False)
            else:
                share = float(cost / most_cost) if most_cost else 0.0
                cost_bar = Bar(bar_w * share, format_usd(cost), True)
            share = latency / most_latency if most_latency else 0.0
            latency_bar = Bar(bar_w * share, f"{latency:.2f}s", True)
        rows.append(
            BarRow(
                step_id,
                _fit(step_id, label_w - 12),
                head + n * row_h,
                cost_bar,
                latency_bar,
                status,
            )
        )
    width = label_w + 2 * (bar_w + text_w)
    return BarChart(rows, label_w, bar_w, text_w, row_h, width, head + len(rows) * row_h + 4)


# -- daily spend by model ---------------------------------------------------------------


@dataclass(frozen=True)
class SpendSeries:
    """One model's spending on one day (``mock``: by the mock provider, never billed)."""

    day: str
    model: str
    mock: bool
    usd: Decimal  # the priced part
    unpriced_tokens: int


@dataclass(frozen=True)
class Segment:
    x: float
    y: float
    w: float
    h: float
    series: int  # the colour
    mock: bool
    title: str


@dataclass(frozen=True)
class DayLabel:
    x: float  # the centre of its bar
    text: str  # MM-DD, or "" where labels would crowd
    title: str
    unpriced: bool  # some of the day's tokens have no price


@dataclass(frozen=True)
class Tick:
    y: float
    text: str


@dataclass(frozen=True)
class LegendItem:
    series: int
    mock: bool
    text: str


@dataclass(frozen=True)
class SpendChart:
    segments: list[Segment]
    days: list[DayLabel]
    ticks: list[Tick]
    legend: list[LegendItem]
    width: float
    height: float
    plot_x: float
    plot_bottom: float
    days_left_out: int  # older days not drawn


def _nice_top(value: Decimal) -> Decimal:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return Decimal(1)
    power = Decimal(1).scaleb(value.adjusted())
    for step in (1, 2, 5, 10):
        if Decimal(step) * power >= value:
            return Decimal(step) * power
    return 10 * power  # pragma: no cover - the loop ends at 10


def spend_chart(series: Sequence[SpendSeries], *, most_days: int = 62) -> SpendChart:
    """Stacked bars, one per day with spending, a colour per model (the mock provider's
    part lighter), on a dollar axis; days with unpriced tokens are marked."""
    days = sorted({s.day for s in series})
    left_out = max(0, len(days) - most_days)
    days = days[left_out:]
    keys = sorted({(s.model, s.mock) for s in series if s.day in days})
    colour: dict[str, int] = {}
    for model, _ in keys:
        colour.setdefault(model, len(colour) % 8)
    totals = {d: sum((s.usd for s in series if s.day == d), Decimal(0)) for d in days}
    top = _nice_top(max(totals.values(), default=Decimal(0)))
    plot_x, plot_top, plot_h = 78.0, 12.0, 160.0
    step = max(16.0, min(44.0, 640.0 / max(1, len(days))))
    bar = step * 0.7
    plot_bottom = plot_top + plot_h
    width = plot_x + step * len(days) + 16
    segments, labels = [], []
    every = math.ceil(44.0 / step)  # keep the MM-DD labels apart
    for n, day in enumerate(days):
        x = plot_x + n * step + (step - bar) / 2
        y = plot_bottom
        today = [s for s in series if s.day == day]
        for s in sorted(today, key=lambda s: (s.mock, s.model)):
            h = float(s.usd / top) * plot_h
            who = f"{s.model} (mock, not billed)" if s.mock else s.model
            extra = f" + {s.unpriced_tokens:,} unpriced tokens" if s.unpriced_tokens else ""
            if h > 0:
                y -= h
                segments.append(
                    Segment(
                        x,
                        y,
                        bar,
                        h,
                        colour[s.model],
                        s.mock,
                        f"{day} · {who}: {format_usd(s.usd)}{extra}",
                    )
                )
        unpriced = any(s.unpriced_tokens for s in today)
        total = format_spend(totals[day], unpriced)  # what has no price is said, never $0
        labels.append(
            DayLabel(x + bar / 2, day[5:] if n % every == 0 else "", f"{day}: {total}", unpriced)
        )
    ticks = [
        Tick(plot_bottom - plot_h * k / 4, format_usd(top * k / 4) if k else "$0") for k in range(5)
    ]
    legend = [
        LegendItem(colour[m], mock, f"{m} (mock, not billed)" if mock else m) for m, mock in keys
    ]
    return SpendChart(
        segments,
        labels,
        ticks,
        legend,
        max(width, 320.0),
        plot_bottom + 30,
        plot_x,
        plot_bottom,
        left_out,
    )
