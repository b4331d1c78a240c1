"""Tracing: a run's spans (workflow, steps, model requests) and the GenAI client metrics,
per OpenTelemetry's GenAI semantic conventions. ``base`` declares what the engine calls
(and the no-op ``NO_TRACING``), ``setup`` decides whether tracing is on, and ``otel``, the
only module that imports OpenTelemetry, is loaded only when it is."""

from __future__ import annotations

from flowgpt.tracing.base import NO_TRACING, Tracing
from flowgpt.tracing.setup import make_tracing

__all__ = ["NO_TRACING", "Tracing", "make_tracing"]
