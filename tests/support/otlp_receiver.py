"""An OTLP/HTTP receiver on 127.0.0.1, for tests and benchmarks: what a collector (Jaeger,
Phoenix, Langfuse, the OpenTelemetry Collector) receives from flowgpt, decoded with
OpenTelemetry's own protobuf classes (opentelemetry-proto)::

    with OtlpReceiver() as receiver:          # port 0: an ephemeral port
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
        ...                                   # run flowgpt with tracing on
        receiver.spans()                      # every span received, as plain Span records
        receiver.metrics()                    # every metric data point, by metric name

It answers ``POST /v1/traces`` and ``POST /v1/metrics`` (protobuf, gzip or not) with the
empty success reply, as a collector does, ``GET /spans`` with the number of spans received,
and 404 to anything else. As a separate process (benchmarks), the URL is the first stdout
line::

    python -m tests.support.otlp_receiver --port 0
"""

from __future__ import annotations

import argparse
import gzip
import signal
import sys
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

__all__ = ["Event", "OtlpReceiver", "Point", "Span", "main", "value_of"]

KINDS = {
    SpanProto.SPAN_KIND_INTERNAL: "INTERNAL",
    SpanProto.SPAN_KIND_CLIENT: "CLIENT",
    SpanProto.SPAN_KIND_SERVER: "SERVER",
    SpanProto.SPAN_KIND_PRODUCER: "PRODUCER",
    SpanProto.SPAN_KIND_CONSUMER: "CONSUMER",
    SpanProto.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
}


def value_of(value: AnyValue) -> Any:
    """An OTLP AnyValue as the Python value it carries."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Sequence[KeyValue]) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in pairs}


@dataclass(frozen=True)
class Event:
    name: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Span:
    """One span as received (ids in hex; parent_id is "" for a root span)."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    events: list[Event]
    status: str  # "UNSET", "OK" or "ERROR"
    status_message: str
    resource: dict[str, Any]
    scope: str


@dataclass(frozen=True)
class Point:
    """One histogram data point of a metric."""

    attributes: dict[str, Any]
    count: int
    sum: float
    bounds: list[float]


@dataclass
class _Received:
    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)  # every request body, decompressed
    headers: list[dict[str, str]] = field(default_factory=list)
    spans: int = 0


class OtlpReceiver:
    """The receiver; use it as a context manager (or call start() and stop())."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, keep: bool = True) -> None:
        self.host = host
        self.port = port
        self.keep = keep  # False (benchmarks): only count the spans
        self._received = _Received()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, for OTEL_EXPORTER_OTLP_ENDPOINT (the exporter adds /v1/traces)."""
        return f"http://{self.host}:{self.port}"

    # -- what arrived ------------------------------------------------------------------
    @property
    def span_count(self) -> int:
        with self._lock:
            return self._received.spans

    @property
    def bodies(self) -> list[bytes]:
        with self._lock:
            return list(self._received.bodies)

    @property
    def headers(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._received.headers)

    def spans(self) -> list[Span]:
        with self._lock:
            requests = list(self._received.traces)
        found = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for s in scope_spans.spans:
                        found.append(
                            Span(
                                name=s.name,
                                kind=KINDS.get(s.kind, str(s.kind)),
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_id=s.parent_span_id.hex(),
                                attributes=_attributes(s.attributes),
                                events=[Event(e.name, _attributes(e.attributes)) for e in s.events],
                                status={0: "UNSET", 1: "OK", 2: "ERROR"}.get(s.status.code, "?"),
                                status_message=s.status.message,
                                resource=resource,
                                scope=scope_spans.scope.name,
                            )
                        )
        return found

    def metrics(self) -> dict[str, list[Point]]:
        """Histogram points by metric name, from the last export that had the metric (the
        SDK exports cumulative totals, so the last export holds them all)."""
        with self._lock:
            requests = list(self._received.metrics)
        found: dict[str, list[Point]] = {}
        for request in requests:
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.WhichOneof("data") != "histogram":
                            continue
                        found[metric.name] = [
                            Point(
                                _attributes(p.attributes),
                                p.count,
                                p.sum,
                                list(p.explicit_bounds),
                            )
                            for p in metric.histogram.data_points
                        ]
        return found

    # -- the server ----------------------------------------------------------------------
    def _handle(self, path: str, body: bytes, headers: dict[str, str]) -> bytes | None:
        if path == "/v1/traces":
            traces = ExportTraceServiceRequest.FromString(body)
            with self._lock:
                self._received.spans += sum(
                    len(ss.spans) for rs in traces.resource_spans for ss in rs.scope_spans
                )
                if self.keep:
                    self._received.traces.append(traces)
                    self._received.bodies.append(body)
                    self._received.headers.append(headers)
            return ExportTraceServiceResponse().SerializeToString()
        if path == "/v1/metrics":
            metrics = ExportMetricsServiceRequest.FromString(body)
            if self.keep:
                with self._lock:
                    self._received.metrics.append(metrics)
                    self._received.bodies.append(body)
                    self._received.headers.append(headers)
            return ExportMetricsServiceResponse().SerializeToString()
        return None

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = receiver._handle(self.path.split("?", 1)[0], body, headers)
                self.send_response(404 if reply is None else 200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply or b"")))
                self.end_headers()
                self.wfile.write(reply or b"")

            def do_GET(self) -> None:
                # GET /spans: how many spans arrived (for a receiver in another process).
                found = self.path == "/spans"
                body = str(receiver.span_count).encode() if found else b""
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.otlp_receiver",
        description="Receive OTLP/HTTP traces and metrics; prints its URL first.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with OtlpReceiver(host=args.host, port=args.port, keep=False) as receiver:
        print(receiver.url, flush=True)
        while not stop.wait(0.2):
            pass
        print(f"otlp-receiver: received {receiver.span_count} spans", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
