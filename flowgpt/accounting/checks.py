"""What ``flowgpt validate`` checks about cost, and the whole of ``validate``.

``cost_diagnostics`` finds what the workflow will cost that can be known without calling a
model: models with no known price (a warning: reports will say "unpriced"; an error with
``--strict``) and steps whose own text plus ``max_tokens`` cannot fit their model's context
window. ``check_file`` is everything ``flowgpt validate`` reports for one file: the
structure (``flowgpt.spec.analysis``) and the cost.
"""

from __future__ import annotations

from pathlib import Path

from flowgpt.accounting.prices import closest_model, resolve_price
from flowgpt.accounting.tokens import context_window, count_text
from flowgpt.errors import Diagnostic, SpecError
from flowgpt.spec.analysis import analyze
from flowgpt.spec.graph import step_templates
from flowgpt.spec.loader import load_workflow
from flowgpt.spec.workflow import Location, Workflow

__all__ = ["check_file", "cost_diagnostics"]


def _warning(where: Location, message: str, hint: str, code: str) -> Diagnostic:
    return Diagnostic(
        message, where.file, where.line, where.col, hint=hint, severity="warning", code=code
    )


def _windows(workflow: Workflow) -> list[Diagnostic]:
    """Steps whose own text (before any input or reply is added) plus max_tokens already
    cannot fit their model's context window."""
    spec = workflow.spec
    found = []
    for index, step in enumerate(spec.steps):
        model = step.setting("model", spec.defaults)
        if model is None:
            continue
        override = spec.pricing.get(model)
        window = context_window(model, override.context_window if override else None)
        if window is None:
            continue
        texts = [t.source.text for t in step_templates(workflow, step) if not t.expression]
        max_tokens = step.setting("max_tokens", spec.defaults) or 0
        # Four bytes per character bound the tokens: the tokenizer is only loaded for
        # prompts long enough to possibly not fit.
        if 4 * sum(len(t) for t in texts) + max_tokens <= window:
            continue
        static = sum(count_text(t, model) for t in texts)
        if static + max_tokens > window:
            found.append(
                _warning(
                    workflow.locate(("steps", index)),
                    f"step `{step.id}`: its own text is {static:,} tokens; with max_tokens "
                    f"{max_tokens:,} it cannot fit {model}'s context window of {window:,}",
                    "shorten the prompt, lower max_tokens, or use a model with a larger window",
                    "context",
                )
            )
    return found


def _prices(workflow: Workflow) -> list[Diagnostic]:
    """Models with no known price, each reported once, where it is written."""
    spec = workflow.spec
    found = []
    seen: set[str] = set()
    for index, step in enumerate(spec.steps):
        model = step.setting("model", spec.defaults)
        if model is None or model in seen:
            continue
        seen.add(model)
        price = resolve_price(
            model,
            base_url=spec.provider.price_base_url,
            overrides=spec.pricing,
            prices=spec.provider.prices,
        )
        if price is None:
            path = ("steps", index, "model") if step.model else ("defaults", "model")
            # Only OpenAI's list prices make a typo of an OpenAI name likely; other price
            # lists need not read it (which may import genai-prices and fill the cache).
            close = closest_model(model) if spec.provider.prices == "openai" else None
            if close is not None:
                # A typo is the likelier story than an unpriced model: say that first.
                found.append(
                    _warning(
                        workflow.locate(path),
                        f"model `{model}` is not a model OpenAI lists; did you mean `{close}`?",
                        f"fix the name; if `{model}` is right (a relay's alias, a "
                        f"fine-tune), give it a price: `pricing: {{{model}: {{input: ..., "
                        "output: ...}}` (USD per million tokens)",
                        "model",
                    )
                )
                continue
            found.append(
                _warning(
                    workflow.locate(path),
                    f'model `{model}` has no known price: costs will show as "unpriced"',
                    f"add `pricing: {{{model}: {{input: ..., output: ...}}}}` (USD per "
                    "million tokens) to the workflow",
                    "unpriced",
                )
            )
    return found


def cost_diagnostics(workflow: Workflow) -> list[Diagnostic]:
    """Warnings about what running ``workflow`` will cost (see the module doc)."""
    return _windows(workflow) + _prices(workflow)


def check_file(path: str | Path) -> list[Diagnostic]:
    """Load and check one workflow file (everything ``flowgpt validate`` reports), in the
    order they appear in the file; never raises for problems in the file."""
    try:
        workflow = load_workflow(path)
    except SpecError as exc:
        return exc.diagnostics
    found = analyze(workflow) + cost_diagnostics(workflow)
    return sorted(found, key=lambda d: (d.file or "", d.line or 0, d.col or 0))
