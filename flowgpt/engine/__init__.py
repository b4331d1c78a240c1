"""The engine: ``Engine`` (what every run shares, and the way runs and batches start), one
run of a workflow, the plan worked out once per workflow, and batch execution."""

from __future__ import annotations

from flowgpt.engine.engine import Engine
from flowgpt.engine.events import EngineEvent, EventKind

__all__ = ["Engine", "EngineEvent", "EventKind"]
