"""Worst-case tokens and dollars of a run, worked out without calling a model.

For each step: the prompt tokens (exact when the prompt depends only on inputs; otherwise an
upper bound, because it quotes replies not yet written), the most output tokens it may use,
and its worst-case cost with every retry counted. The bound for a step's prompt:

- the text it would send with every upstream reply left empty, counted exactly, plus
- for each place a template reads an upstream step, that step's ``max_tokens`` (three times
  it for JSON steps, whose parsed values are printed back with quotes and spaces), plus
- for each ``{% for %}`` over a reply, the loop's own text once per possible item (a reply
  of M tokens holds at most M items), and for each ``{% if %}`` on a reply, its text, plus
- for ``history:``, the earlier step's whole prompt bound and reply, plus
- for the structured-output schema sent with JSON steps, its tokens, plus
- for retry k, k times (one rejected reply + the capped repair message).

The engine's budget check is exact (it counts the real prompt before each call); this
estimate is the number to decide with before running. ``batch=True`` prices it at Batch
API rates (``flowgpt estimate --batch-api``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from flowgpt import templating
from flowgpt.accounting.prices import ModelPrice, resolve_price, worst_case_cost
from flowgpt.accounting.tokens import context_window, count_text, count_tokens, is_exact_for
from flowgpt.errors import FlowgptError, TemplateError
from flowgpt.money import sum_costs
from flowgpt.spec.graph import step_dependencies, step_templates, topological_order
from flowgpt.spec.inputs import resolve_inputs
from flowgpt.spec.models import StepSpec
from flowgpt.spec.output import FEEDBACK_MAX_TOKENS, response_format_for
from flowgpt.spec.workflow import Workflow

__all__ = ["StepEstimate", "WorkflowEstimate", "estimate"]

JSON_FACTOR = 3
# One rejected reply (framing + role) and the repair message (framing + role + content).
_RETRY_OVERHEAD = 4 + 4 + FEEDBACK_MAX_TOKENS


@dataclass
class StepEstimate:
    id: str
    model: str
    prompt_tokens: int  # the first attempt's prompt (an upper bound unless prompt_exact)
    prompt_exact: bool
    max_output_tokens: int | None  # None: no max_tokens and an unknown context window
    attempts: int
    worst_tokens: int | None
    worst_cost_usd: Decimal | None
    price: ModelPrice | None
    tokenizer_exact: bool = True
    items: int | None = None  # for_each: the items (an upper bound when from a reply)


@dataclass
class WorkflowEstimate:
    workflow: str
    steps: list[StepEstimate] = field(default_factory=list)
    batch_api: bool = False  # priced at Batch API rates

    @property
    def worst_tokens(self) -> int | None:
        total = 0
        for s in self.steps:
            if s.worst_tokens is None:
                return None
            total += s.worst_tokens
        return total

    @property
    def worst_cost_usd(self) -> Decimal | None:
        return sum_costs([s.worst_cost_usd for s in self.steps])

    def to_dict(self) -> dict[str, Any]:
        def money(v: Decimal | None) -> str | None:
            return None if v is None else str(v)

        return {
            "workflow": self.workflow,
            "batch_api": self.batch_api,
            "worst_tokens": self.worst_tokens,
            "worst_cost_usd": money(self.worst_cost_usd),
            "steps": [
                {
                    "id": s.id,
                    "model": s.model,
                    "prompt_tokens": s.prompt_tokens,
                    "prompt_exact": s.prompt_exact,
                    "max_output_tokens": s.max_output_tokens,
                    "attempts": s.attempts,
                    "worst_tokens": s.worst_tokens,
                    "worst_cost_usd": money(s.worst_cost_usd),
                    "tokenizer_exact": s.tokenizer_exact,
                    "items": s.items,
                }
                for s in self.steps
            ],
        }


class _Blank:
    """Stands for a JSON reply not written yet: any field of it is blank, it loops zero
    times and prints nothing (its real size is added to the bound separately)."""

    def __getattr__(self, name: str) -> _Blank:
        if name.startswith("_"):
            raise AttributeError(name)
        return self

    def __getitem__(self, key: object) -> _Blank:
        return self

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __str__(self) -> str:
        return ""


class _Estimator:
    def __init__(
        self, workflow: Workflow, inputs: dict[str, Any], model: str | None, batch: bool
    ) -> None:
        self.batch = batch
        self.wf = workflow
        self.spec = workflow.spec
        self.inputs = inputs
        self.model_override = model
        self.deps = step_dependencies(workflow)
        self.first_prompt: dict[str, int] = {}
        # The most tokens a step's reply (all items' replies, for for_each) can hold.
        self.reply_bound: dict[str, int] = {}

    def _view(self, step: StepSpec) -> dict[str, Any]:
        is_json = step.output is not None and step.output.is_json
        return {"output": _Blank() if is_json else "", "text": "", "usage": {}, "skipped": False}

    def _render(self, source: str, ctx: dict[str, Any], model: str) -> tuple[str, int]:
        """The static text of a template, and extra tokens it may add beyond that."""
        try:
            return templating.render(source, ctx), 0
        except FlowgptError:
            # Placeholder replies cannot satisfy every template (`x.n > 3` on a blank):
            # count the template's own text, plus every input it prints, in full.
            extra = 0
            for ref in templating.references(source).inputs:
                value = self.inputs.get(ref.name or "", "")
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                extra += count_text(text, model) + 2
            return source, extra

    def _blocks(self, source: str, model: str) -> int:
        """Text that loops and conditions over replies may add: a loop's own text once
        per item (a reply of M tokens holds at most M items, nested lists included), a
        condition's text once."""
        extra = 0
        for block in templating.dynamic_blocks(source):
            per_pass = count_text(block.text, model) + 3 * block.outputs + 2
            for name in block.input_names:
                value = self.inputs.get(name, "")
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                per_pass += count_text(text, model) + 2
            if block.kind == "for":
                items = max((self.reply_bound.get(s, 0) for s in block.step_ids), default=0)
                extra += items * per_pass
            else:
                extra += per_pass
        return extra

    def _prompt(self, step: StepSpec, ctx: dict[str, Any], model: str) -> tuple[int, bool]:
        """An upper bound of one call's prompt tokens, and whether it is exact."""
        messages: list[dict[str, str]] = []
        dynamic = 0
        exact = True
        for t in step_templates(self.wf, step):
            if t.expression:
                continue
            role = "system" if t.where == "system" else "user"
            if t.where.startswith("messages["):
                role = (step.messages or [])[int(t.where[9:-1])].role
            text, extra = self._render(t.source.text, ctx, model)
            messages.append({"role": role, "content": text})
            dynamic += extra
            dynamic += self._blocks(t.source.text, model)
            refs = templating.references(t.source.text, known=[step.as_] if step.as_ else [])
            for ref in refs.steps:
                if ref.name is None or ref.name not in self.reply_bound:
                    continue
                exact = False
                upstream = self.spec.step(ref.name)
                factor = (
                    JSON_FACTOR if upstream.output is not None and upstream.output.is_json else 1
                )
                dynamic += factor * self.reply_bound[ref.name] + 2
        prompt = count_tokens(messages, model) + dynamic
        if step.history is not None and step.history in self.first_prompt:
            exact = False
            prompt += self.first_prompt[step.history] + self.reply_bound[step.history] + 4
        response_format = response_format_for(step.id, step.output)
        if response_format is not None:
            prompt += count_text(json.dumps(response_format), model)
        return prompt, exact

    def _item_prompts(
        self, step: StepSpec, ctx: dict[str, Any], model: str
    ) -> tuple[list[int], bool, int]:
        """For a for_each step: the prompt bound of each item (one entry standing for
        every item when the list comes from a reply), whether exact, and the item count."""
        name = step.as_ or "item"
        expression = step.for_each or ""
        refs = templating.references(expression, expression=True)
        upstream = [s for s in refs.step_ids if s in self.reply_bound]
        if not upstream:
            items = templating.evaluate(expression, ctx, step=step.id, where="for_each")
            if not isinstance(items, (list, tuple)):
                # The run would refuse it (engine.run_items): so does the estimate.
                raise TemplateError(
                    f"step `{step.id}`: `for_each` must give a list, not {type(items).__name__}",
                    step=step.id,
                )
            counted = [self._prompt(step, {**ctx, name: item}, model) for item in items]
            exact = all(is_exact for _, is_exact in counted)
            return [tokens for tokens, _ in counted], exact, len(items)
        # A reply of M tokens holds at most M items, and each printed item is part of it;
        # a validated schema's maxItems is a tighter bound on the count.
        bound = max(self.reply_bound[s] for s in upstream)
        count = min(bound, self._max_items(refs) or bound)
        static, _ = self._prompt(step, {**ctx, name: _Blank()}, model)
        uses = sum(
            1
            for t in step_templates(self.wf, step)
            if not t.expression
            for ref in templating.references(t.source.text).names
            if ref.name == name
        )
        return [static + uses * (JSON_FACTOR * bound + 2)], False, count

    def _max_items(self, refs: templating.References) -> int | None:
        """``maxItems`` of the schema at a single `steps.<id>.output.<path>` reference."""
        if len(refs.steps) != 1:
            return None
        ref = refs.steps[0]
        upstream = self.spec.step(ref.name) if ref.name in self.reply_bound else None
        if upstream is None or upstream.output is None or ref.path[1:2] != ("output",):
            return None
        schema: Any = upstream.output.schema_
        for key in ref.path[2:]:
            if not isinstance(schema, dict) or not isinstance(key, str):
                return None
            schema = (schema.get("properties") or {}).get(key)
        if isinstance(schema, dict) and isinstance(schema.get("maxItems"), int):
            return int(schema["maxItems"])
        return None

    def step(self, step: StepSpec) -> StepEstimate:
        model = self.model_override or step.setting("model", self.spec.defaults) or "gpt-4o-mini"
        ctx: dict[str, Any] = {
            "inputs": self.inputs,
            "steps": {s.id: self._view(s) for s in self.spec.steps if s.id in self.deps[step.id]},
        }
        if step.for_each is not None:
            prompts, exact, n_items = self._item_prompts(step, ctx, model)
            calls = n_items if len(prompts) == 1 and not exact else 1
        else:
            prompt, exact = self._prompt(step, ctx, model)
            prompts, n_items, calls = [prompt], 1, 1
        first = max(prompts, default=0)
        override = self.spec.pricing.get(model)
        window = context_window(model, override.context_window if override else None)
        max_out: int | None = step.setting("max_tokens", self.spec.defaults)
        if max_out is None and window is not None:
            max_out = max(window - first, 0)
        self.first_prompt[step.id] = first
        self.reply_bound[step.id] = (max_out or 0) * max(n_items, 1)
        attempts = 1 + (step.output.retries if step.output is not None else 0)
        price = resolve_price(
            model,
            base_url=self.spec.provider.price_base_url,
            overrides=self.spec.pricing,
            prices=self.spec.provider.prices,
            batch=self.batch,
        )
        worst_tokens: int | None = None
        worst_cost: Decimal | None = None
        if max_out is not None:
            worst_tokens = 0
            costs: list[Decimal | None] = []
            for prompt in prompts:
                for k in range(attempts):
                    p = prompt + k * (max_out + _RETRY_OVERHEAD)
                    worst_tokens += (p + max_out) * calls
                    one = worst_case_cost(p, max_out, price)
                    costs.append(None if one is None else one * calls)
            worst_cost = sum_costs(costs)
        return StepEstimate(
            id=step.id,
            model=model,
            prompt_tokens=first,
            prompt_exact=exact,
            max_output_tokens=max_out,
            attempts=attempts,
            worst_tokens=worst_tokens,
            worst_cost_usd=worst_cost,
            price=price,
            # A local model has its own tokenizer, whatever the step's model label says.
            tokenizer_exact=is_exact_for(model) and self.spec.provider.type != "local",
            items=n_items if step.for_each is not None else None,
        )


def estimate(
    workflow: Workflow,
    inputs: Mapping[str, Any] | None = None,
    *,
    inputs_from_cli: bool = False,
    model: str | None = None,
    batch: bool = False,
) -> WorkflowEstimate:
    """The worst case of running ``workflow`` with ``inputs``; no model is called.
    ``batch``: priced at Batch API rates (what ``--batch-api`` pays)."""
    from flowgpt.spec.analysis import check_runnable

    check_runnable(workflow)
    resolved = resolve_inputs(workflow.spec, inputs or {}, from_cli=inputs_from_cli)
    est = _Estimator(workflow, resolved, model, batch)
    by_id = {
        sid: est.step(workflow.spec.step(sid))
        for sid in topological_order(est.deps, workflow.spec.step_ids)
    }
    return WorkflowEstimate(
        workflow.spec.name, [by_id[s] for s in workflow.spec.step_ids], batch_api=batch
    )
