"""A chat session from one step of a workflow (:meth:`flowgpt.chat.ChatSession.from_workflow`).

The step is picked (the only one, or by id), its system prompt and few-shot ``messages``
are rendered with the inputs they use (templates that need other steps' outputs are
refused), and the session gets the step's model, settings, provider, pricing and budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from flowgpt.chat.session import _SETTINGS, DEFAULT_MAX_TOKENS, DEFAULT_MODEL
from flowgpt.errors import SpecError
from flowgpt.providers.base import Message

if TYPE_CHECKING:
    from flowgpt.chat.session import ChatSession
    from flowgpt.providers.base import Provider
    from flowgpt.spec.models import StepSpec
    from flowgpt.spec.workflow import Workflow
    from flowgpt.store.run_store import RunStore


def session_from_workflow(
    cls: type[ChatSession],
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
    max_history_tokens: int | None = None,
    max_cost_usd: Decimal | float | str | None = None,
    store: RunStore | None = None,
) -> ChatSession:
    """:meth:`flowgpt.chat.ChatSession.from_workflow` (documented there), for ``cls``."""
    from flowgpt.spec.inputs import resolve_inputs

    if isinstance(workflow, str):
        from flowgpt.spec.loader import load_workflow

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
    rendered = {where: _render(source, context, step_spec.id, where) for where, source in templates}
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
        given_limit = Decimal(str(max_cost_usd))
        cost_limit = given_limit if cost_limit is None else min(cost_limit, given_limit)
    step_max = step_spec.setting("max_tokens", defaults)
    owned = False
    if provider is None:
        # The workflow's `provider:`, built exactly as a run builds it.
        from flowgpt.engine.engine import Engine

        provider, owned = Engine()._provider_for(spec, workflow.base_dir)
    session = cls(
        provider,
        model=model or step_spec.setting("model", defaults) or DEFAULT_MODEL,
        system=system if system is not None else rendered.get("system"),
        pinned=pinned,
        max_tokens=max_tokens or step_max or DEFAULT_MAX_TOKENS,
        temperature=(
            temperature if temperature is not None else step_spec.setting("temperature", defaults)
        ),
        settings={name: step_spec.setting(name, defaults) for name in _SETTINGS},
        max_history_tokens=max_history_tokens,
        max_cost_usd=cost_limit,
        max_total_tokens=limits.max_tokens if limits else None,
        pricing=spec.pricing,
        price_base_url=spec.provider.base_url,
        store=store,
        name=f"{spec.name} (chat)",
        workflow=workflow,
        inputs=resolved,
    )
    session._owns_provider = owned
    return session


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
        import difflib

        close = difflib.get_close_matches(step, ids, n=1)
        guess = f"; did you mean `{close[0]}`?" if close else ""
        raise SpecError(
            f"{workflow.display_path} has no step `{step}`{guess}",
            hint=f"its steps: {', '.join(ids)}",
        ) from None


def _inputs_needed(workflow: Workflow, step_id: str, templates: list[tuple[str, str]]) -> set[str]:
    """The inputs the templates use; refuses templates that need earlier steps' outputs."""
    from flowgpt import templating

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


def _render(source: str, context: Mapping[str, Any], step: str, where: str) -> str:
    from flowgpt import templating

    return templating.render(source, context, step=step, where=where)
