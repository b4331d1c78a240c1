"""A chat set up from one step of a workflow (:meth:`flowgpt.chat.ChatSession.from_workflow`).

The step is picked (the only one, or by id), its system prompt and few-shot ``messages``
are rendered with the inputs they use (templates that need other steps' outputs are
refused), and the session gets the step's model, settings, provider, pricing and budget.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from flowgpt import templating
from flowgpt.chat.turn import DEFAULT_MAX_TOKENS, DEFAULT_MODEL, SETTINGS
from flowgpt.errors import SpecError
from flowgpt.money import usd_limit
from flowgpt.providers.base import Message, Provider
from flowgpt.providers.factory import make_provider
from flowgpt.spec.inputs import resolve_inputs
from flowgpt.spec.loader import load_workflow
from flowgpt.spec.models import PriceList, PriceSpec, StepSpec
from flowgpt.spec.workflow import Workflow

__all__ = ["ChatSetup", "setup_from_workflow"]


@dataclass(frozen=True)
class ChatSetup:
    """What a chat takes from one step of a workflow: ``ChatSession``'s arguments."""

    provider: Provider
    owns_provider: bool  # made here from the workflow's `provider:`: the session closes it
    model: str
    system: str | None
    pinned: list[Message]
    max_tokens: int
    temperature: float | None
    settings: dict[str, Any]
    max_cost_usd: Decimal | None
    max_total_tokens: int | None
    pricing: dict[str, PriceSpec]
    price_base_url: str | None
    prices: PriceList
    name: str
    workflow: Workflow
    inputs: dict[str, Any]


def setup_from_workflow(
    workflow: Workflow | str,
    step: str | None = None,
    *,
    provider: Provider | None = None,
    inputs: Mapping[str, Any] | None = None,
    inputs_from_cli: bool = False,
    model: str | None = None,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    max_cost_usd: Decimal | float | str | None = None,
) -> ChatSetup:
    """The setup of a chat with one step of ``workflow`` (see
    :meth:`flowgpt.chat.ChatSession.from_workflow`); arguments override the step's."""
    if isinstance(workflow, str):
        workflow = load_workflow(workflow)
    spec = workflow.spec
    step_spec = _pick_step(workflow, step)
    templates: list[tuple[str, str]] = []  # (where, source)
    if system is None:
        source = workflow.template(step_spec, "system")
        if source is not None:
            templates.append(("system", source.text))
    for i, m in enumerate(step_spec.messages or []):
        templates.append((f"messages[{i}]", m.content))
    given = dict(inputs or {})
    needed = _inputs_needed(workflow, step_spec.id, templates)
    declared = {k: v for k, v in spec.inputs.items() if k in needed or k in given}
    subset = spec.model_copy(update={"inputs": declared})
    resolved = resolve_inputs(subset, given, from_cli=inputs_from_cli)
    context = {"inputs": resolved, "steps": {}}
    rendered = {
        where: templating.render(source, context, step=step_spec.id, where=where)
        for where, source in templates
    }
    pinned: list[Message] = []
    for i, m in enumerate(step_spec.messages or []):
        entry = Message(role=m.role, content=rendered[f"messages[{i}]"])
        if m.name:
            entry["name"] = m.name
        pinned.append(entry)
    defaults = spec.defaults
    limits = spec.budget
    cost_limit: Decimal | None = limits.max_cost_usd if limits else None
    if max_cost_usd is not None:
        given_limit = usd_limit(max_cost_usd) or Decimal(0)
        cost_limit = given_limit if cost_limit is None else min(cost_limit, given_limit)
    owned = provider is None
    if provider is None:
        provider = make_provider(spec.provider, workflow.base_dir)
    return ChatSetup(
        provider=provider,
        owns_provider=owned,
        model=model or step_spec.setting("model", defaults) or DEFAULT_MODEL,
        system=system if system is not None else rendered.get("system"),
        pinned=pinned,
        max_tokens=max_tokens or step_spec.setting("max_tokens", defaults) or DEFAULT_MAX_TOKENS,
        temperature=(
            temperature if temperature is not None else step_spec.setting("temperature", defaults)
        ),
        settings={name: step_spec.setting(name, defaults) for name in SETTINGS},
        max_cost_usd=cost_limit,
        max_total_tokens=limits.max_tokens if limits else None,
        pricing=dict(spec.pricing),
        price_base_url=spec.provider.price_base_url,
        prices=spec.provider.prices,
        name=f"{spec.name} (chat)",
        workflow=workflow,
        inputs=resolved,
    )


def _pick_step(workflow: Workflow, step: str | None) -> StepSpec:
    spec = workflow.spec
    ids = spec.step_ids
    if step is None:
        if len(ids) == 1:
            return spec.steps[0]
        raise SpecError(
            f"{workflow.display_path} has {len(ids)} steps; say which one to chat with",
            hint=f"add --step with one of: {', '.join(ids)}",
        )
    try:
        return spec.step(step)
    except KeyError:
        close = difflib.get_close_matches(step, ids, n=1)
        guess = f"; did you mean `{close[0]}`?" if close else ""
        raise SpecError(
            f"{workflow.display_path} has no step `{step}`{guess}",
            hint=f"its steps: {', '.join(ids)}",
        ) from None


def _inputs_needed(workflow: Workflow, step_id: str, templates: list[tuple[str, str]]) -> set[str]:
    """The inputs the templates use; refuses templates that need earlier steps' outputs."""
    needed: set[str] = set()
    for where, source in templates:
        refs = templating.references(source)
        used = sorted({f"`{r.dotted}`" for r in (*refs.steps, *refs.names)})
        if used:
            hint = (
                "pass --system with the system prompt to use, or chat with a step whose "
                "system prompt uses only inputs"
                if where == "system"
                else "chat with a step whose few-shot messages use only inputs"
            )
            raise SpecError(
                f"step `{step_id}`: its {where} uses {', '.join(used)}, which only exists "
                "during a run, so it cannot start a chat",
                hint=hint,
            )
        for ref in refs.inputs:
            if ref.name is None:  # `inputs` as a whole: every input is needed
                needed |= set(workflow.spec.inputs)
            else:
                needed.add(ref.name)
    return needed
