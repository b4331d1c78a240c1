"""flowgpt: declarative prompt workflows for the Chat Completions API.

from flowgpt import Engine, load_workflow

wf = load_workflow("workflows/article.yaml")
result = Engine().run_sync(wf, {"topic": "tea"})
print(result.outputs["article"], result.cost_usd)
print(result.report())
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowgpt.chat import ChatSession, ChatTurn
    from flowgpt.engine import Engine, EngineEvent
    from flowgpt.errors import (
        AuthenticationError,
        BadRequestError,
        BudgetExceededError,
        ConnectionError,
        ContextWindowError,
        Diagnostic,
        FlowgptError,
        InputError,
        InterruptedRunError,
        MalformedResponseError,
        ModelNotFoundError,
        OutputValidationError,
        ProviderError,
        QuotaExceededError,
        RateLimitError,
        RunError,
        ServerError,
        SpecError,
        TemplateError,
    )
    from flowgpt.loader import dump_workflow, load_workflow, parse_workflow
    from flowgpt.providers.base import ChatRequest, ChatResponse, Provider
    from flowgpt.providers.mock import MockProvider, MockReply
    from flowgpt.results import AttemptResult, RunResult, StepResult
    from flowgpt.spec import (
        BudgetSpec,
        CheckSpec,
        DefaultsSpec,
        InputSpec,
        MessageSpec,
        OutputSpec,
        PriceSpec,
        ProviderSpec,
        StepSpec,
        WorkflowSpec,
    )
    from flowgpt.tokens import count_tokens
    from flowgpt.usage import Usage
    from flowgpt.workflow import Workflow

# Exports load on first use, so `flowgpt --help` and `validate` do not pay for the
# engine (or the openai SDK) at import time.
_EXPORTS: dict[str, str] = {
    "AttemptResult": "flowgpt.results",
    "AuthenticationError": "flowgpt.errors",
    "BadRequestError": "flowgpt.errors",
    "BudgetExceededError": "flowgpt.errors",
    "BudgetSpec": "flowgpt.spec",
    "ChatRequest": "flowgpt.providers.base",
    "ChatResponse": "flowgpt.providers.base",
    "ChatSession": "flowgpt.chat",
    "ChatTurn": "flowgpt.chat",
    "CheckSpec": "flowgpt.spec",
    "ConnectionError": "flowgpt.errors",
    "ContextWindowError": "flowgpt.errors",
    "DefaultsSpec": "flowgpt.spec",
    "Diagnostic": "flowgpt.errors",
    "Engine": "flowgpt.engine",
    "EngineEvent": "flowgpt.engine",
    "FlowgptError": "flowgpt.errors",
    "InputError": "flowgpt.errors",
    "InputSpec": "flowgpt.spec",
    "InterruptedRunError": "flowgpt.errors",
    "MalformedResponseError": "flowgpt.errors",
    "MessageSpec": "flowgpt.spec",
    "MockProvider": "flowgpt.providers.mock",
    "MockReply": "flowgpt.providers.mock",
    "ModelNotFoundError": "flowgpt.errors",
    "OutputSpec": "flowgpt.spec",
    "OutputValidationError": "flowgpt.errors",
    "PriceSpec": "flowgpt.spec",
    "Provider": "flowgpt.providers.base",
    "ProviderError": "flowgpt.errors",
    "ProviderSpec": "flowgpt.spec",
    "QuotaExceededError": "flowgpt.errors",
    "RateLimitError": "flowgpt.errors",
    "RunError": "flowgpt.errors",
    "RunResult": "flowgpt.results",
    "ServerError": "flowgpt.errors",
    "SpecError": "flowgpt.errors",
    "StepResult": "flowgpt.results",
    "StepSpec": "flowgpt.spec",
    "TemplateError": "flowgpt.errors",
    "Usage": "flowgpt.usage",
    "Workflow": "flowgpt.workflow",
    "WorkflowSpec": "flowgpt.spec",
    "count_tokens": "flowgpt.tokens",
    "dump_workflow": "flowgpt.loader",
    "load_workflow": "flowgpt.loader",
    "parse_workflow": "flowgpt.loader",
}

__all__ = [
    "AttemptResult",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "BudgetSpec",
    "ChatRequest",
    "ChatResponse",
    "ChatSession",
    "ChatTurn",
    "CheckSpec",
    "ConnectionError",
    "ContextWindowError",
    "DefaultsSpec",
    "Diagnostic",
    "Engine",
    "EngineEvent",
    "FlowgptError",
    "InputError",
    "InputSpec",
    "InterruptedRunError",
    "MalformedResponseError",
    "MessageSpec",
    "MockProvider",
    "MockReply",
    "ModelNotFoundError",
    "OutputSpec",
    "OutputValidationError",
    "PriceSpec",
    "Provider",
    "ProviderError",
    "ProviderSpec",
    "QuotaExceededError",
    "RateLimitError",
    "RunError",
    "RunResult",
    "ServerError",
    "SpecError",
    "StepResult",
    "StepSpec",
    "TemplateError",
    "Usage",
    "Workflow",
    "WorkflowSpec",
    "count_tokens",
    "dump_workflow",
    "load_workflow",
    "parse_workflow",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowgpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
