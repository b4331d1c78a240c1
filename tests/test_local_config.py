"""The local provider's settings, prices and estimates: everything that needs no model."""

from __future__ import annotations

from decimal import Decimal

import pytest

from flowgpt import parse_workflow
from flowgpt.accounting.budget import Budget
from flowgpt.accounting.checks import cost_diagnostics
from flowgpt.accounting.estimate import estimate
from flowgpt.accounting.prices import (
    LOCAL_PRICE,
    cost_of,
    is_local_url,
    resolve_price,
    worst_case_cost,
)
from flowgpt.errors import SpecError
from flowgpt.spec.analysis import analyze
from flowgpt.spec.models import PriceSpec, ProviderSpec
from flowgpt.usage import Usage

LOCAL = """
version: 1
name: local
defaults: {model: smollm2, max_tokens: 50}
provider: {type: local}
budget: {max_cost_usd: 0.001}
steps:
  - id: ask
    prompt: What is green tea?
"""


@pytest.mark.parametrize("base_url", ["local", "local:/models/SmolLM2.gguf"])
def test_a_local_model_costs_a_known_zero(base_url: str) -> None:
    assert is_local_url(base_url)
    assert resolve_price("anything", base_url=base_url) == LOCAL_PRICE
    assert LOCAL_PRICE.source == "local" and LOCAL_PRICE.output == 0
    assert cost_of(Usage(1000, 500), "gpt-4o", base_url=base_url) == Decimal(0)
    # A price the workflow sets still wins (e.g. to account for the machine's cost).
    overrides = {"gpt-4o": PriceSpec(input=Decimal(1), output=Decimal(2))}
    assert resolve_price("gpt-4o", base_url=base_url, overrides=overrides).source == "workflow"  # type: ignore[union-attr]


@pytest.mark.parametrize("base_url", [None, "http://localhost:8000/v1", "https://local.ai/v1"])
def test_only_the_local_provider_is_local(base_url: str | None) -> None:
    assert not is_local_url(base_url)


def test_a_cost_budget_accepts_a_local_model() -> None:
    budget = Budget(Decimal("0.001"), None)
    worst = worst_case_cost(100, 50, resolve_price("smollm2", base_url="local"))
    assert worst == Decimal(0)
    budget.reserve("ask", "smollm2", 150, worst)  # an unpriced model would be refused here


def test_provider_settings_must_fit_the_type() -> None:
    assert ProviderSpec(type="local", model_path="m.gguf", n_ctx=2048).price_base_url == "local"
    assert ProviderSpec(base_url="http://x/v1").price_base_url == "http://x/v1"
    with pytest.raises(ValueError, match="not used by `type: local`"):
        ProviderSpec(type="local", base_url="http://localhost:8000/v1")
    with pytest.raises(ValueError, match="max_rate_limit_wait_s: not used by `type: local`"):
        ProviderSpec(type="local", max_rate_limit_wait_s=10)  # no API, no rate limit
    with pytest.raises(ValueError, match="only used with `type: local`"):
        ProviderSpec(model_path="m.gguf")
    with pytest.raises(SpecError) as info:
        parse_workflow(LOCAL.replace("{type: local}", "{type: local, api_key_env: KEY}"))
    assert "api_key_env: not used by `type: local`" in info.value.format()


def test_a_local_workflow_validates_clean_and_estimates_zero_approximately() -> None:
    wf = parse_workflow(LOCAL)
    assert analyze(wf) == [] and cost_diagnostics(wf) == []  # $0 is a known price
    est = estimate(wf)
    (step,) = est.steps
    assert step.worst_cost_usd == Decimal(0) and est.worst_cost_usd == Decimal(0)
    assert step.price is not None and step.price.source == "local"
    # Counted with tiktoken, for a model with its own tokenizer: never claimed exact, even
    # when the step's model label is an OpenAI name.
    assert step.tokenizer_exact is False
    labelled = estimate(parse_workflow(LOCAL.replace("smollm2", "gpt-4o-mini")))
    assert labelled.steps[0].tokenizer_exact is False
    remote = estimate(parse_workflow(LOCAL.replace("provider: {type: local}\n", "")))
    assert remote.steps[0].tokenizer_exact is False  # "smollm2": tiktoken does not know it
    openai = estimate(
        parse_workflow(LOCAL.replace("provider: {type: local}\n", "").replace("smollm2", "gpt-4o"))
    )
    assert openai.steps[0].tokenizer_exact is True
