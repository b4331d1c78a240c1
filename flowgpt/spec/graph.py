"""The step graph: which steps must finish before which."""

from __future__ import annotations

import graphlib
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass

from flowgpt import templating
from flowgpt.spec.models import StepSpec
from flowgpt.spec.workflow import TemplateSource, Workflow

__all__ = [
    "StepTemplate",
    "find_cycle",
    "mermaid",
    "step_dependencies",
    "step_templates",
    "topological_order",
]


@dataclass(frozen=True)
class StepTemplate:
    """One template or expression of a step, with where it was written."""

    source: TemplateSource
    where: str  # "system", "prompt", "messages[1]", "when", "for_each"
    expression: bool = False


def step_templates(workflow: Workflow, step: StepSpec) -> Iterator[StepTemplate]:
    index = workflow.step_index(step.id)
    for kind in ("system", "prompt"):
        source = workflow.template(step, "system" if kind == "system" else "prompt")
        if source is not None:
            yield StepTemplate(source, kind)
    for i, message in enumerate(step.messages or []):
        path = ("steps", index, "messages", i, "content")
        yield StepTemplate(TemplateSource(message.content, path), f"messages[{i}]")
    for key in ("when", "for_each"):
        text = getattr(step, key)
        if text is not None:
            yield StepTemplate(TemplateSource(text, ("steps", index, key)), key, expression=True)


def step_dependencies(workflow: Workflow) -> dict[str, set[str]]:
    """For each step, the steps that must finish first: those its templates read, plus
    ``needs`` and ``history``. Unknown ids are kept (validation reports them)."""
    deps: dict[str, set[str]] = {}
    for step in workflow.spec.steps:
        found = set(step.needs)
        if step.history is not None:
            found.add(step.history)
        for t in step_templates(workflow, step):
            try:
                refs = templating.references(
                    t.source.text, expression=t.expression, known=[step.as_] if step.as_ else []
                )
            except templating.TemplateSyntaxProblem:
                continue  # reported by validation; the engine never gets this far
            found |= refs.step_ids
        deps[step.id] = found
    return deps


def find_cycle(deps: Mapping[str, Set[str]]) -> list[str] | None:
    """A cycle as step ids where each needs the next (first == last), or None.

    Dependencies on unknown steps are ignored here (they are reported separately)."""
    sorter = graphlib.TopologicalSorter(
        {step: {d for d in needs if d in deps} for step, needs in deps.items()}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        # graphlib lists the cycle so that each node is needed by the one before it.
        return list(reversed(exc.args[1]))
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


def mermaid(workflow: Workflow) -> str:
    """The step graph as a Mermaid flowchart (GitHub renders it in Markdown): a box per
    step with its model, an arrow from each step to the steps that need it (``history``
    and ``needs`` labelled), a double box for ``for_each`` steps, and ``when`` on the box."""
    spec = workflow.spec
    deps = step_dependencies(workflow)

    def node(step_id: str) -> str:
        return f"s_{step_id}"  # a prefix: Mermaid reserves words such as `end`

    def label(text: str) -> str:
        return text.replace('"', "#quot;")

    lines = ["flowchart TD"]
    for step in spec.steps:
        parts = [step.id]
        model = step.setting("model", spec.defaults)
        if model:
            parts.append(str(model))
        if step.for_each is not None:
            parts.append(f"for each {step.as_} in {step.for_each}")
        if step.when is not None:
            parts.append(f"when {step.when}")
        if step.chat_only:
            parts.append("chat step")
        text = label("<br/>".join(parts))
        lines.append(
            f'    {node(step.id)}[["{text}"]]'
            if step.for_each
            else f'    {node(step.id)}["{text}"]'
        )
    for step in spec.steps:
        for dep in sorted(deps[step.id]):
            if dep not in spec.step_ids:
                continue
            if dep == step.history:
                lines.append(f"    {node(dep)} -->|history| {node(step.id)}")
            elif dep in step.needs:
                lines.append(f"    {node(dep)} -.->|needs| {node(step.id)}")
            else:
                lines.append(f"    {node(dep)} --> {node(step.id)}")
    return "\n".join(lines) + "\n"
