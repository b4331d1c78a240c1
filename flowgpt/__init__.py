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
    from flowgpt.accounting.estimate import StepEstimate, WorkflowEstimate, estimate
    from flowgpt.accounting.tokens import count_tokens
    from flowgpt.chat.session import ChatSession
    from flowgpt.chat.turn import ChatTurn
    from flowgpt.engine.engine import Engine
    from flowgpt.engine.events import EngineEvent
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
    from flowgpt.providers.base import ChatRequest, ChatResponse, Provider
    from flowgpt.providers.mock.provider import MockProvider, MockReply
    from flowgpt.results import AttemptResult, RunResult, StepResult
    from flowgpt.spec.loader import dump_workflow, load_workflow, parse_workflow
    from flowgpt.spec.models import (
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
    from flowgpt.spec.workflow import Workflow
    from flowgpt.usage import Usage

# Exports load on first use, so `flowgpt --help` and `validate` do not pay for the
# engine (or the openai SDK) at import time.
_EXPORTS: dict[str, str] = {
    "AttemptResult": "flowgpt.results",
    "AuthenticationError": "flowgpt.errors",
    "BadRequestError": "flowgpt.errors",
    "BudgetExceededError": "flowgpt.errors",
    "BudgetSpec": "flowgpt.spec.models",
    "ChatRequest": "flowgpt.providers.base",
    "ChatResponse": "flowgpt.providers.base",
    "ChatSession": "flowgpt.chat.session",
    "ChatTurn": "flowgpt.chat.turn",
    "CheckSpec": "flowgpt.spec.models",
    "ConnectionError": "flowgpt.errors",
    "ContextWindowError": "flowgpt.errors",
    "DefaultsSpec": "flowgpt.spec.models",
    "Diagnostic": "flowgpt.errors",
    "Engine": "flowgpt.engine.engine",
    "EngineEvent": "flowgpt.engine.events",
    "FlowgptError": "flowgpt.errors",
    "InputError": "flowgpt.errors",
    "InputSpec": "flowgpt.spec.models",
    "InterruptedRunError": "flowgpt.errors",
    "MalformedResponseError": "flowgpt.errors",
    "MessageSpec": "flowgpt.spec.models",
    "MockProvider": "flowgpt.providers.mock.provider",
    "MockReply": "flowgpt.providers.mock.provider",
    "ModelNotFoundError": "flowgpt.errors",
    "OutputSpec": "flowgpt.spec.models",
    "OutputValidationError": "flowgpt.errors",
    "PriceSpec": "flowgpt.spec.models",
    "Provider": "flowgpt.providers.base",
    "ProviderError": "flowgpt.errors",
    "ProviderSpec": "flowgpt.spec.models",
    "QuotaExceededError": "flowgpt.errors",
    "RateLimitError": "flowgpt.errors",
    "RunError": "flowgpt.errors",
    "RunResult": "flowgpt.results",
    "ServerError": "flowgpt.errors",
    "SpecError": "flowgpt.errors",
    "StepResult": "flowgpt.results",
    "StepSpec": "flowgpt.spec.models",
    "TemplateError": "flowgpt.errors",
    "Usage": "flowgpt.usage",
    "Workflow": "flowgpt.spec.workflow",
    "WorkflowSpec": "flowgpt.spec.models",
    "count_tokens": "flowgpt.accounting.tokens",
    "estimate": "flowgpt.accounting.estimate",
    "StepEstimate": "flowgpt.accounting.estimate",
    "WorkflowEstimate": "flowgpt.accounting.estimate",
    "dump_workflow": "flowgpt.spec.loader",
    "load_workflow": "flowgpt.spec.loader",
    "parse_workflow": "flowgpt.spec.loader",
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
    "StepEstimate",
    "StepResult",
    "StepSpec",
    "TemplateError",
    "Usage",
    "Workflow",
    "WorkflowEstimate",
    "WorkflowSpec",
    "count_tokens",
    "dump_workflow",
    "estimate",
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
