"""The workflow file -> a checked ``Workflow``: the pydantic models of the format
(``models``), the YAML loader with file:line diagnostics (``loader``, the only yaml
importer), the step graph, inputs, the output contract and the static checks. Nothing here
calls a model.

The format's models are re-exported here (``from flowgpt.spec import StepSpec``).
"""

from __future__ import annotations

from flowgpt.spec.models import (
    CHECK_KINDS,
    BatchPriceSpec,
    BudgetSpec,
    CheckSpec,
    DefaultsSpec,
    InputSpec,
    MessageSpec,
    ModelSettings,
    OutputSpec,
    PriceSpec,
    ProviderSpec,
    StepSpec,
    WorkflowSpec,
    workflow_json_schema,
)

__all__ = [
    "CHECK_KINDS",
    "BatchPriceSpec",
    "BudgetSpec",
    "CheckSpec",
    "DefaultsSpec",
    "InputSpec",
    "MessageSpec",
    "ModelSettings",
    "OutputSpec",
    "PriceSpec",
    "ProviderSpec",
    "StepSpec",
    "WorkflowSpec",
    "workflow_json_schema",
]
