"""The plan of a workflow: what is worked out once per workflow rather than once per run
or per call (the workflow checked for running, each step's dependencies, model settings,
templates and response_format, the outputs' templates). Cached on the Workflow object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowgpt import templating
from flowgpt.spec.analysis import check_runnable
from flowgpt.spec.graph import step_dependencies
from flowgpt.spec.models import MODEL_SETTING_NAMES, StepSpec
from flowgpt.spec.output import response_format_for
from flowgpt.spec.workflow import Workflow

__all__ = ["Plan", "StepPlan"]


@dataclass(frozen=True)
class StepPlan:
    """What can be worked out about a step once per workflow, not once per call."""

    step: StepSpec
    deps: frozenset[str]
    dependents: tuple[str, ...]
    model: str | None  # the step's or the defaults' (an engine's `model` overrides it)
    system: str | None
    prompt: str | None
    settings: dict[str, Any]  # model settings other than `model`, defaults applied
    response_format: dict[str, Any] | None


class Plan:
    """A workflow checked and prepared for running; cached on the Workflow object."""

    def __init__(self, workflow: Workflow) -> None:
        check_runnable(workflow)
        spec = workflow.spec
        deps = step_dependencies(workflow)
        dependents: dict[str, list[str]] = {s.id: [] for s in spec.steps}
        for sid, needs in deps.items():
            for dep in needs:
                dependents[dep].append(sid)
        self.steps: dict[str, StepPlan] = {}
        for step in spec.steps:
            system = workflow.template(step, "system")
            prompt = workflow.template(step, "prompt")
            self.steps[step.id] = StepPlan(
                step=step,
                deps=frozenset(deps[step.id]),
                dependents=tuple(dependents[step.id]),
                model=step.setting("model", spec.defaults),
                system=system.text if system else None,
                prompt=prompt.text if prompt else None,
                settings={
                    name: step.setting(name, spec.defaults)
                    for name in MODEL_SETTING_NAMES
                    if name != "model" and step.setting(name, spec.defaults) is not None
                },
                response_format=response_format_for(step.id, step.output),
            )
        # (name, template, the expression when the template is exactly one `{{ expr }}`)
        self.outputs: tuple[tuple[str, str, str | None], ...] = tuple(
            (name, source, templating.single_expression(source))
            for name, source in spec.outputs.items()
        )

    @classmethod
    def of(cls, workflow: Workflow) -> Plan:
        plan = workflow.cache.get("engine.plan")
        if not isinstance(plan, cls):
            plan = workflow.cache["engine.plan"] = cls(workflow)
        return plan
