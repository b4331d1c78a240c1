"""Whether tracing is on, and the ``Tracing`` an engine uses: ``NO_TRACING`` when it is
off (then OpenTelemetry is not even imported), ``flowgpt.tracing.otel``'s otherwise.

Tracing is on when asked for (``--trace``, ``Engine(tracing=True)``, a tracer provider
given) or when the environment names an OTLP endpoint, as OpenTelemetry's own SDK
configuration does: ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
(``OTEL_SDK_DISABLED=true`` turns it off). Message content is recorded only when
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` opts in.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Mapping

from flowgpt.errors import SpecError
from flowgpt.tracing.base import NO_TRACING, ContentCapture, Tracing

__all__ = [
    "CAPTURE_CONTENT_VARIABLE",
    "ENDPOINT_VARIABLES",
    "INSTALL_HINT",
    "content_capture",
    "exporters",
    "make_tracing",
    "otel_installed",
    "tracing_requested",
    "untraced_warning",
]

INSTALL_HINT = "install the otel extra: pip install 'flowgpt[otel]'"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
CAPTURE_CONTENT_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def content_capture(environ: Mapping[str, str] | None = None) -> ContentCapture:
    """The conventions' opt-in: ``true`` (content on the spans) in its first form, and
    ``SPAN_ONLY`` / ``EVENT_ONLY`` / ``SPAN_AND_EVENT`` / ``NO_CONTENT`` in its newer one."""
    env = os.environ if environ is None else environ
    value = env.get(CAPTURE_CONTENT_VARIABLE, "").strip().lower()
    return ContentCapture(
        spans=value in ("true", "span_only", "span_and_event"),
        events=value in ("event_only", "span_and_event"),
    )


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """True when the environment names an OTLP endpoint for traces (and the SDK is not
    disabled): read without importing anything."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def otel_installed() -> bool:
    """True when the otel extra is installed (found without importing OpenTelemetry's
    modules; only its namespace package is loaded)."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
        )
    except (ImportError, ValueError):
        return False


def make_tracing(
    enabled: bool | None = None,
    *,
    tracer_provider: object | None = None,
    meter_provider: object | None = None,
    environ: Mapping[str, str] | None = None,
) -> Tracing:
    """The tracing an engine uses.

    ``enabled``: True turns tracing on (exporting where the ``OTEL_*`` variables say, by
    default OTLP/HTTP to localhost:4318), False off, None (the default) on when an OTLP
    endpoint variable is set. Given providers turn it on and are used as they are;
    otherwise an application's global SDK providers are used when it set some, else
    flowgpt makes its own from the ``OTEL_*`` variables (once per process).

    Raises ``SpecError`` when tracing is asked for explicitly and the otel extra is
    missing; when only the environment asks, warns (``RuntimeWarning``) and runs untraced.
    """
    if enabled is False:
        return NO_TRACING
    env = os.environ if environ is None else environ
    explicit = enabled is True or tracer_provider is not None or meter_provider is not None
    if not explicit and not tracing_requested(env):
        return NO_TRACING
    if not otel_installed():
        if explicit:
            raise SpecError(
                "tracing needs OpenTelemetry, which is not installed", hint=INSTALL_HINT
            )
        warnings.warn(_untraced(env), RuntimeWarning, stacklevel=3)
        return NO_TRACING
    from flowgpt.tracing.otel import OtelTracing

    return OtelTracing.create(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        capture=content_capture(env),
        exporters=exporters(env),
    )


def exporters(environ: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """The exporters flowgpt's own providers use, for traces and for metrics: what
    ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` name (``otlp``, ``console``;
    ``none`` for nothing), by default ``otlp``. Metrics go to the general OTLP endpoint
    or their own; a traces-only endpoint says nothing about where metrics should go, so
    then none are sent by default."""
    env = os.environ if environ is None else environ
    metrics = bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        or not env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    return (
        _named(env.get("OTEL_TRACES_EXPORTER", ""), default=True),
        _named(env.get("OTEL_METRICS_EXPORTER", ""), default=metrics),
    )


def _named(value: str, *, default: bool) -> list[str]:
    names = [name.strip() for name in value.lower().split(",") if name.strip()]
    if not names:
        return ["otlp"] if default else []
    return [name for name in names if name != "none"]


def untraced_warning(environ: Mapping[str, str] | None = None) -> str | None:
    """What to tell a user whose environment asks for tracing this installation cannot do
    (the otel extra is missing); None when there is nothing to tell."""
    env = os.environ if environ is None else environ
    if not tracing_requested(env) or otel_installed():
        return None
    return _untraced(env)


def _untraced(env: Mapping[str, str]) -> str:
    variable = next((name for name in ENDPOINT_VARIABLES if env.get(name)), ENDPOINT_VARIABLES[0])
    return (
        f"{variable} is set, but tracing needs OpenTelemetry ({INSTALL_HINT}); "
        "running without traces"
    )
