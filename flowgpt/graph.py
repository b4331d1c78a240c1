"""The step graph: which steps must finish before which."""

from __future__ import annotations

import graphlib
from collections.abc import Mapping, Set

__all__ = ["find_cycle", "topological_order"]


def find_cycle(deps: Mapping[str, Set[str]]) -> list[str] | None:
    """A cycle as a list of step ids (first == last), or None when the graph is acyclic.

    Dependencies on unknown steps are ignored here (they are reported separately)."""
    sorter = graphlib.TopologicalSorter(
        {step: {d for d in needs if d in deps} for step, needs in deps.items()}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle: list[str] = list(exc.args[1])
        # graphlib lists the cycle backwards (each node depends on the next): turn it into
        # "a -> b" meaning a runs before b.
        return list(reversed(cycle))
    return None


def topological_order(deps: Mapping[str, Set[str]], order: list[str]) -> list[str]:
    """Steps in an order where each comes after its dependencies; ties keep file order."""
    position = {step: i for i, step in enumerate(order)}
    remaining = {s: set(deps.get(s, ())) & set(order) for s in order}
    result: list[str] = []
    while remaining:
        ready = sorted((s for s, d in remaining.items() if not d), key=position.__getitem__)
        if not ready:
            raise ValueError("the step graph has a cycle")
        for step in ready:
            result.append(step)
            del remaining[step]
        for d in remaining.values():
            d.difference_update(ready)
    return result
