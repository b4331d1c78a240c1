"""Tracing with OpenTelemetry, per its GenAI semantic conventions: the only module that
imports ``opentelemetry`` (imported only when tracing is on).

Spans (all but the request spans are INTERNAL)::

    batch {workflow}                      flowgpt batch: one per batch (with --batch-api:
                                          per process that works on the job; its
                                          events say which Batch API batches were
                                          submitted and how they ended)
    └── invoke_workflow {workflow}        one per run (gen_ai.operation.name invoke_workflow)
        └── step {id}                     one per step
            └── step {id}[i]              one per item of a for_each step
                └── chat {model}          CLIENT, one per model request

A request span holds what the conventions name (``gen_ai.operation.name``,
``gen_ai.provider.name``, ``gen_ai.request.*``, ``server.*``, ``gen_ai.response.*``,
``gen_ai.usage.*`` exactly as the server reported it) and flowgpt's own ``flowgpt.*``
(cost, price source, retries); transport retries and 429s are its events, repairs and
cache hits its step's. A request sent as a line of a Batch API batch lasts until its
batch ended, and an event names the line and the batch. Errors set the span status and
``error.type`` (the error's class).
Metrics: ``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration``, with the
conventions' bucket boundaries. Message content only with the opt-in (see ``setup``), and
then with anything key-shaped redacted; API keys never reach a span: nothing here reads
the environment's keys or the requests' headers.

The SDK is configured the way its authors intend: ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_*`` (endpoint,
headers, timeout, compression), ``OTEL_BSP_*`` are read by the SDK itself;
``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` choose ``otlp`` (the default),
``console`` or ``none``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from contextvars import Token
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import Histogram, Meter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from flowgpt.errors import redact
from flowgpt.providers.base import ChatRequest, ChatResponse
from flowgpt.providers.observe import CallListener, listen, stop_listening
from flowgpt.results import RunResult, StepResult
from flowgpt.spec.workflow import Workflow
from flowgpt.tracing import _attributes as attrs
from flowgpt.tracing.base import ContentCapture, PriceOf
from flowgpt.usage import Usage

__all__ = ["DURATION_BUCKETS", "TOKEN_BUCKETS", "OtelTracing"]

SCOPE = "flowgpt"
# The conventions' advisory bucket boundaries for the two client metrics.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip


@dataclass(frozen=True)
class _Telemetry:
    """What every span of one engine's tracing shares."""

    tracer: Tracer
    token_usage: Histogram
    duration: Histogram
    capture: ContentCapture
    flushables: tuple[Any, ...]  # providers with force_flush()


@dataclass(frozen=True)
class _RunScope:
    """What a run's request spans need to know about the run."""

    telemetry: _Telemetry
    provider: str
    server: Mapping[str, str | int]  # server.address, server.port
    price_of: PriceOf


class OtelTracing:
    """The ``Tracing`` of an engine (or of one batch row): starts runs and batches."""

    enabled = True

    def __init__(
        self, telemetry: _Telemetry, parent: Span | None = None, row: int | None = None
    ) -> None:
        self._telemetry = telemetry
        self._parent = None if parent is None else trace.set_span_in_context(parent)
        self._row = row

    @classmethod
    def create(
        cls,
        *,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        capture: ContentCapture,
        exporters: tuple[Sequence[str], Sequence[str]] = ((), ()),
    ) -> OtelTracing:
        """Tracing through the given providers; without any, through the application's
        global SDK providers if it set them, else through flowgpt's own, sending to
        ``exporters`` (the traces', the metrics')."""
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

        if tracer_provider is None and meter_provider is None:
            tracer_provider = trace.get_tracer_provider()
            meter_provider = metrics.get_meter_provider()
            if not isinstance(tracer_provider, SdkTracerProvider):
                tracer_provider, own_meters = _own_providers(exporters)
                if not isinstance(meter_provider, SdkMeterProvider):
                    meter_provider = own_meters
        elif tracer_provider is None:
            tracer_provider = trace.get_tracer_provider()
        elif meter_provider is None:
            meter_provider = metrics.get_meter_provider()
        version = attrs.version()
        meter: Meter = meter_provider.get_meter(SCOPE, version)
        telemetry = _Telemetry(
            tracer=tracer_provider.get_tracer(SCOPE, version),
            token_usage=meter.create_histogram(
                "gen_ai.client.token.usage",
                unit="{token}",
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
            ),
            duration=meter.create_histogram(
                "gen_ai.client.operation.duration",
                unit="s",
                description="GenAI operation duration.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            ),
            capture=capture,
            flushables=tuple(
                p for p in (tracer_provider, meter_provider) if hasattr(p, "force_flush")
            ),
        )
        return cls(telemetry)

    def start_run(
        self,
        workflow: Workflow,
        run_id: str,
        *,
        inputs: Collection[str],
        provider: str,
        base_url: str | None,
        price_of: PriceOf,
        resumed_from: str | None = None,
    ) -> _RunTrace:
        name = workflow.spec.name
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.workflow.name": name,
            "flowgpt.run.id": run_id,
            "flowgpt.workflow.digest": attrs.digest(workflow),
            "flowgpt.inputs": sorted(inputs),
        }
        if workflow.path is not None:
            attributes["flowgpt.workflow.path"] = str(workflow.path)
        if resumed_from is not None:
            attributes["flowgpt.run.resumed_from"] = resumed_from
        if self._row is not None:
            attributes["flowgpt.batch.row"] = self._row
        span = self._telemetry.tracer.start_span(
            f"invoke_workflow {name}",
            context=self._parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
        )
        scope = _RunScope(self._telemetry, provider, attrs.server(base_url), price_of)
        return _RunTrace(scope, span)

    def start_batch(self, workflow: str) -> _BatchTrace:
        span = self._telemetry.tracer.start_span(
            f"batch {workflow}",
            context=self._parent,
            kind=SpanKind.INTERNAL,
            attributes={"gen_ai.workflow.name": workflow},
        )
        return _BatchTrace(self._telemetry, span)

    def flush(self) -> None:
        for provider in self._telemetry.flushables:
            provider.force_flush()


class _BatchTrace:
    def __init__(self, telemetry: _Telemetry, span: Span) -> None:
        self._telemetry = telemetry
        self._span = span
        self._rows = self._failed = 0
        self._usage = Usage()
        self._cost: Decimal | None = Decimal(0)

    def row(self, number: int) -> OtelTracing:
        return OtelTracing(self._telemetry, self._span, number)

    def row_done(self, ok: bool, usage: Usage, cost_usd: Decimal | None) -> None:
        self._rows += 1
        self._failed += not ok
        self._usage = self._usage + usage
        self._cost = None if self._cost is None or cost_usd is None else self._cost + cost_usd

    def event(self, name: str, attributes: Mapping[str, str | int]) -> None:
        self._span.add_event(name, dict(attributes))

    def end(self) -> None:
        span = self._span
        if span.is_recording():
            span.set_attributes(
                {
                    "flowgpt.batch.rows": self._rows,
                    "flowgpt.batch.failed": self._failed,
                    **attrs.totals(self._usage, self._cost),
                }
            )
        span.end()


class _RunTrace:
    def __init__(self, scope: _RunScope, span: Span) -> None:
        self._scope = scope
        self._span = span
        self._context = trace.set_span_in_context(span)

    def step(self, step_id: str) -> _StepTrace:
        span = self._scope.telemetry.tracer.start_span(
            f"step {step_id}",
            context=self._context,
            kind=SpanKind.INTERNAL,
            attributes={"flowgpt.step.id": step_id},
        )
        return _StepTrace(self._scope, span, step_id)

    def end(self, result: RunResult, failure: BaseException | None) -> None:
        span = self._span
        if span.is_recording():
            span.set_attributes(
                {"flowgpt.run.status": result.status, **attrs.totals(result.usage, result.cost_usd)}
            )
            if failure is not None:
                _set_error(span, failure)
            elif result.status == "interrupted":
                span.set_attribute("error.type", "interrupted")
                span.set_status(Status(StatusCode.ERROR, "interrupted"))
        span.end()


class _StepTrace:
    def __init__(self, scope: _RunScope, span: Span, step_id: str) -> None:
        self._scope = scope
        self._span = span
        self._step_id = step_id
        self._context = trace.set_span_in_context(span)

    def item(self, index: int) -> _StepTrace:
        span = self._scope.telemetry.tracer.start_span(
            f"step {self._step_id}[{index}]",
            context=self._context,
            kind=SpanKind.INTERNAL,
            attributes={"flowgpt.step.id": self._step_id, "flowgpt.step.item": index},
        )
        return _StepTrace(self._scope, span, self._step_id)

    def chat(self, request: ChatRequest) -> _ChatTrace:
        return _ChatTrace(self._scope, self._context, request)

    def cache_hit(self) -> None:
        self._span.add_event("flowgpt.cache_hit")

    def rejected(self, failures: Sequence[str]) -> None:
        attributes: dict[str, Any] = {"flowgpt.failures.count": len(failures)}
        if self._scope.telemetry.capture.any:
            # Validation messages may quote the reply: content, so only on opt-in.
            attributes["flowgpt.failures"] = [redact(f) for f in failures]
        self._span.add_event("flowgpt.repair", attributes)

    def failed(self, error: BaseException) -> None:
        if self._span.is_recording():
            _set_error(self._span, error)

    def end(self, result: StepResult) -> None:
        span = self._span
        if span.is_recording():
            attributes: dict[str, Any] = {
                "flowgpt.step.status": result.status,
                "flowgpt.step.attempts": result.n_attempts,
                **attrs.totals(result.usage, result.cost_usd),
            }
            retries = result.retries
            if retries:
                attributes["flowgpt.step.retries"] = retries
            verdict = attrs.verdict(result)
            if verdict is not None:
                attributes["flowgpt.step.validation"] = verdict
            span.set_attributes(attributes)
        span.end()


class _ChatTrace:
    """A ``chat {model}`` CLIENT span, current (and listening to the provider's retries
    and 429s) while the request is in flight."""

    def __init__(
        self, scope: _RunScope, parent: otel_context.Context, request: ChatRequest
    ) -> None:
        self._scope = scope
        self._parent = parent
        self._request = request
        self._span: Span | None = None
        self._context_token: object = None
        self._listener_token: Token[CallListener | None] | None = None
        self._metric: dict[str, Any] = {}  # the metrics' attributes, once known
        self._started = 0.0

    def __enter__(self) -> _ChatTrace:
        scope, request = self._scope, self._request
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": scope.provider,
            "gen_ai.request.model": request.model,
            **scope.server,
            **attrs.request_settings(request),
        }
        capture = scope.telemetry.capture
        if capture.spans:
            attributes["gen_ai.input.messages"] = attrs.input_messages(request.messages)
        span = self._span = scope.telemetry.tracer.start_span(
            f"chat {request.model}", context=self._parent, kind=SpanKind.CLIENT,
            attributes=attributes,
        )  # fmt: skip
        if capture.events and span.is_recording():
            span.add_event(
                "gen_ai.client.inference.operation.details",
                {"gen_ai.input.messages": attrs.input_messages(request.messages)},
            )
        # Current while in flight: spans of the HTTP layer (if instrumented) nest here.
        self._context_token = otel_context.attach(trace.set_span_in_context(span))
        self._listener_token = listen(self._note)
        self._started = time.perf_counter()
        return self

    def _note(self, event: str, attributes: Mapping[str, Any]) -> None:
        if self._span is not None:
            self._span.add_event(event, dict(attributes))

    def answered(self, response: ChatResponse, cost_usd: Decimal | None) -> None:
        span = self._span
        if span is None:
            return
        metric = self._metric = self._metric_attributes()
        if response.model:
            metric["gen_ai.response.model"] = response.model
        usage = None if response.extra.get("usage_missing") else response.usage
        if usage is not None:
            self._record_tokens(usage)
        if not span.is_recording():
            return
        # Zeros (no retries, no cached or reasoning tokens) are left out: every attribute
        # costs time to record and to export, and an absent count reads as zero.
        attributes: dict[str, Any] = {}
        if response.retries:
            attributes["flowgpt.retries"] = response.retries
        response_id = response.extra.get("id")
        if isinstance(response_id, str):
            attributes["gen_ai.response.id"] = response_id
        if response.model:
            attributes["gen_ai.response.model"] = response.model
        if response.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [response.finish_reason]
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            if usage.cached_tokens:
                attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
            if usage.reasoning_tokens:
                attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
        price = self._scope.price_of(self._request.model)
        attributes["flowgpt.price.source"] = price.source if price is not None else "unpriced"
        if cost_usd is not None:
            attributes["flowgpt.cost_usd"] = float(cost_usd)
        capture = self._scope.telemetry.capture
        if capture.any:
            output = attrs.output_messages(response)
            if capture.spans:
                attributes["gen_ai.output.messages"] = output
            if capture.events:
                span.add_event(
                    "gen_ai.client.inference.operation.details",
                    {"gen_ai.output.messages": output},
                )
        span.set_attributes(attributes)

    def _metric_attributes(self) -> dict[str, Any]:
        return {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self._scope.provider,
            "gen_ai.request.model": self._request.model,
            **self._scope.server,
        }

    def _record_tokens(self, usage: Usage) -> None:
        attributes = self._metric
        histogram = self._scope.telemetry.token_usage
        histogram.record(usage.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
        histogram.record(usage.completion_tokens, {**attributes, "gen_ai.token.type": "output"})

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        seconds = time.perf_counter() - self._started
        if self._listener_token is not None:
            stop_listening(self._listener_token)
        otel_context.detach(self._context_token)  # type: ignore[arg-type]
        attributes = self._metric or self._metric_attributes()
        if exc is not None:
            attributes["error.type"] = _set_error(span, exc)
        span.end()
        self._scope.telemetry.duration.record(seconds, attributes)


def _set_error(span: Span, error: BaseException) -> str:
    """Mark ``span`` failed by ``error``: its class as ``error.type``, its message (keys
    redacted) as the status."""
    error_type, message, attributes = attrs.error_attributes(error)
    span.set_attributes(attributes)
    span.set_status(Status(StatusCode.ERROR, message))
    return error_type


# -- flowgpt's own SDK providers ------------------------------------------------------------

_OWN: tuple[Any, Any] | None = None
_OWN_LOCK = threading.Lock()


def _own_providers(exporters: tuple[Sequence[str], Sequence[str]]) -> tuple[Any, Any]:
    """One tracer and one meter provider per process, configured from the ``OTEL_*``
    variables by the SDK itself, sending to ``exporters`` (for traces, for metrics: see
    ``setup.exporters``); shut down (flushing them) when the process exits."""
    global _OWN
    with _OWN_LOCK:
        if _OWN is None:
            _OWN = _make_providers(*exporters)
        return _OWN


def _make_providers(traces: Sequence[str], metric_exporters: Sequence[str]) -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricReader,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        # Neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES named the service.
        resource = resource.merge(Resource({SERVICE_NAME: "flowgpt"}))
    tracer_provider = TracerProvider(resource=resource)
    for name in traces:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    readers: list[MetricReader] = []
    for name in metric_exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    return tracer_provider, MeterProvider(resource=resource, metric_readers=readers)
