"""Static checks of a loaded workflow: everything ``flowgpt validate`` can find without
calling a model. Each finding is a Diagnostic pointing at the file, line and column."""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
from collections.abc import Sequence

from flowgpt import templating
from flowgpt.errors import Diagnostic, SpecError
from flowgpt.spec.graph import StepTemplate, find_cycle, step_dependencies, step_templates
from flowgpt.spec.inputs import check_value
from flowgpt.spec.models import StepSpec
from flowgpt.spec.output import check_schema
from flowgpt.spec.workflow import Location, TemplateSource, Workflow

__all__ = ["analyze", "check_runnable"]


def _close(word: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean `{match[0]}`?" if match else ""


class _Checker:
    def __init__(self, workflow: Workflow) -> None:
        self.wf = workflow
        self.spec = workflow.spec
        self.found: list[Diagnostic] = []

    def add(
        self,
        where: Location,
        message: str,
        hint: str | None = None,
        *,
        severity: str = "error",
        code: str = "check",
    ) -> None:
        self.found.append(
            Diagnostic(
                message,
                where.file,
                where.line,
                where.col,
                hint=hint,
                severity="warning" if severity == "warning" else "error",
                code=code,
            )
        )

    def at(self, *path: str | int) -> Location:
        return self.wf.locate(path)

    # -- templates ---------------------------------------------------------------------

    def check_template(
        self,
        source: TemplateSource,
        label: str,
        *,
        expression: bool = False,
        as_name: str | None = None,
        step: StepSpec | None = None,
    ) -> None:
        try:
            refs = templating.references(
                source.text, expression=expression, known=[as_name] if as_name else []
            )
        except templating.TemplateSyntaxProblem as exc:
            where = self.wf.locate_template_line(source, exc.line or 1)
            self.add(
                where,
                f"{label}: template syntax error: {exc.detail}",
                exc.hint or "check the {{ }} and {% %} pairs on this line",
                code="template",
            )
            return
        inputs = list(self.spec.inputs)
        steps = self.spec.step_ids
        for ref in refs.inputs:
            if ref.name is not None and ref.name not in inputs:
                self.add(
                    self.wf.locate_template_line(source, ref.line),
                    f"{label}: unknown input `{ref.name}`{_close(ref.name, inputs)}",
                    f"declared inputs: {', '.join(inputs) or 'none'}; declare it under `inputs:`",
                    code="reference",
                )
        for ref in refs.steps:
            where = self.wf.locate_template_line(source, ref.line)
            if ref.name is None:
                self.add(
                    where,
                    f"{label}: `steps` is read with a computed key, so flowgpt cannot tell "
                    "which step it needs",
                    "write `steps.<id>` explicitly, or add the step to `needs:`",
                    code="reference",
                )
            elif ref.name not in steps:
                self.add(
                    where,
                    f"{label}: unknown step `{ref.name}`{_close(ref.name, steps)}",
                    f"steps in this workflow: {', '.join(steps)}",
                    code="reference",
                )
            elif ref.attr is not None and ref.attr not in templating.STEP_FIELDS:
                self.add(
                    where,
                    f"{label}: `steps.{ref.name}.{ref.attr}` is not a step field"
                    f"{_close(ref.attr, templating.STEP_FIELDS)}",
                    f"a step has: {', '.join(templating.STEP_FIELDS)}",
                    code="reference",
                )
        for name, line in templating.private_attributes(source.text, expression=expression):
            self.add(
                self.wf.locate_template_line(source, line),
                f"{label}: the template reads the unsafe attribute `{name}`",
                "templates read data only (inputs, steps.<id>.output/text/usage/skipped); "
                "names starting with `_` are blocked",
                code="sandbox",
            )
        for ref in refs.names:
            name = ref.name or ""
            suggestion = _close(name, ["inputs", "steps", *([as_name] if as_name else [])])
            if not suggestion and name in inputs:
                suggestion = f"; did you mean `inputs.{name}`?"
            self.add(
                self.wf.locate_template_line(source, ref.line),
                f"{label}: unknown name `{name}`{suggestion}",
                "templates see `inputs`, `steps`"
                + (f" and the for_each item `{as_name}`" if as_name else "")
                + "; nothing else",
                code="reference",
            )

    # -- the whole workflow ------------------------------------------------------------

    def run(self) -> list[Diagnostic]:
        ids = self.spec.step_ids
        for index, step in enumerate(self.spec.steps):
            for t in step_templates(self.wf, step):
                self._step_template(step, t)
            if step.history is not None and step.history in ids:
                target_step = self.spec.step(step.history)
                if target_step.for_each is not None:
                    self.add(
                        self.at("steps", index, "history"),
                        f"step `{step.id}`: `history` cannot continue `{step.history}`, a "
                        "for_each step has one conversation per item",
                        "read its output instead, e.g. `{{ steps." + step.history + ".output }}`",
                        code="reference",
                    )
            for key, target in (("history", step.history),):
                if target is not None and target not in ids:
                    self.add(
                        self.at("steps", index, key),
                        f"step `{step.id}`: `{key}` names unknown step `{target}`"
                        f"{_close(target, ids)}",
                        f"steps in this workflow: {', '.join(ids)}",
                        code="reference",
                    )
            for n, need in enumerate(step.needs):
                if need not in ids:
                    self.add(
                        self.at("steps", index, "needs", n),
                        f"step `{step.id}`: `needs` names unknown step `{need}`{_close(need, ids)}",
                        f"steps in this workflow: {', '.join(ids)}",
                        code="reference",
                    )
            if step.as_ in ("inputs", "steps"):
                self.add(
                    self.at("steps", index, "as"),
                    f"step `{step.id}`: `as: {step.as_}` would hide the `{step.as_}` variable",
                    "choose another name for the item, e.g. `as: item`",
                )
            self._output(index, step)
            if step.chat_only:
                self.add(
                    self.at("steps", index),
                    f"step `{step.id}` has a system prompt but no `prompt`: it is a chat step, "
                    "which a run cannot send",
                    f"chat with it (`flowgpt chat {self.wf.display_path} --step {step.id}`), "
                    "or give it a `prompt` to run it",
                    severity="warning",
                    code="chat_only",
                )
            if step.setting("model", self.spec.defaults) is None:
                self.add(
                    self.at("steps", index),
                    f"step `{step.id}` has no model",
                    "set `defaults.model` for every step, or `model:` on this step",
                )
        for name, text in self.spec.outputs.items():
            self.check_template(TemplateSource(text, ("outputs", name)), f"output `{name}`")
        self._cycles()
        self._inputs()
        self.found.sort(key=lambda d: (d.file or "", d.line or 0, d.col or 0))
        return self.found

    def _step_template(self, step: StepSpec, t: StepTemplate) -> None:
        self.check_template(
            t.source,
            f"step `{step.id}` {t.where}",
            expression=t.expression,
            as_name=step.as_ if t.where != "for_each" else None,
            step=step,
        )

    def _output(self, index: int, step: StepSpec) -> None:
        out = step.output
        if out is None:
            return
        if out.is_json and out.schema_ is None:
            # JSON mode (response_format json_object): OpenAI refuses the request (400)
            # unless some message says "JSON". Structured outputs (a schema) need no word.
            texts = [t.source.text for t in step_templates(self.wf, step) if not t.expression]
            if not any("json" in text.lower() for text in texts):
                self.add(
                    self.at("steps", index, "output"),
                    f"step `{step.id}`: a JSON step without a schema is sent in JSON mode, "
                    'which OpenAI refuses unless a message says "JSON"; none of its messages do',
                    'say it in the prompt, e.g. "Reply with JSON.", or give `output:` a schema',
                    severity="warning",
                    code="json-word",
                )
        if out.schema_ is not None:
            for path, message in check_schema(out.schema_):
                self.add(
                    self.at("steps", index, "output", "schema", *path),
                    f"step `{step.id}`: invalid JSON Schema: {message}",
                    "the schema must be valid JSON Schema (Draft 2020-12); "
                    "see https://json-schema.org/understanding-json-schema/",
                    code="schema",
                )
        for n, check in enumerate(out.checks):
            if check.kind == "regex":
                try:
                    re.compile(check.value)
                except re.error as exc:
                    self.add(
                        self.at("steps", index, "output", "checks", n, "regex"),
                        f"step `{step.id}`: invalid regular expression: {exc}",
                        "regex checks use Python's `re` syntax",
                    )

    def _cycles(self) -> None:
        cycle = find_cycle(step_dependencies(self.wf))
        if cycle is None:
            return
        first = cycle[0]
        if len(cycle) == 2:
            message = f"step `{first}` depends on its own output"
        else:
            chain = ", ".join(f"`{a}` needs `{b}`" for a, b in itertools.pairwise(cycle))
            message = f"the steps form a cycle: {chain}"
        self.add(
            self.at("steps", self.wf.step_index(first)),
            message,
            "a step can only read steps that finish before it; break the cycle "
            "(dependencies come from templates, `needs` and `history`)",
            code="cycle",
        )

    def _inputs(self) -> None:
        for name, spec in self.spec.inputs.items():
            if spec.required:
                continue
            problem = check_value(spec, spec.default)
            if problem is not None:
                self.add(
                    self.at("inputs", name, "default"),
                    f"input `{name}`: the default does not fit its type: {problem}",
                    f"make the default a valid {spec.type}, or change `type`",
                )


def analyze(workflow: Workflow) -> list[Diagnostic]:
    """Every problem in a loaded workflow's structure (errors and warnings): references,
    cycles, templates, schemas, inputs. What it will cost (unpriced models, prompts that
    cannot fit) is ``flowgpt.accounting.checks``."""
    return _Checker(workflow).run()


def check_runnable(workflow: Workflow) -> None:
    """Raise SpecError when a workflow cannot be run: any static error, or a feature this
    version does not run yet. Used by the engine and by estimates, before any call."""
    errors = [
        # A chat step is fine to validate and to chat with, but a run cannot send it.
        dataclasses.replace(d, severity="error") if d.code == "chat_only" else d
        for d in analyze(workflow)
        if d.severity == "error" or d.code == "chat_only"
    ]
    if errors:
        raise SpecError(f"{workflow.display_path}: the workflow is not valid", diagnostics=errors)
