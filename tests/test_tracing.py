"""Tracing: OpenTelemetry spans and metrics per the GenAI conventions (docs/tracing.md).

The shape is checked with the SDK's in-memory exporter and metric reader, the real openai
SDK talking to the loopback server; then end to end: ``flowgpt run`` / ``flowgpt batch``
in a subprocess, with only ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, exporting through the real
OTLP/HTTP exporter to a loopback receiver that decodes the protobuf (what a collector,
Jaeger, Phoenix or Langfuse receives).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from flowgpt import AuthenticationError, Engine, MockProvider, parse_workflow
from flowgpt.providers.openai import OpenAIProvider
from flowgpt.store.run_store import RunStore
from flowgpt.tracing import NO_TRACING
from flowgpt.tracing.otel import DURATION_BUCKETS, TOKEN_BUCKETS
from tests.support.fake_batches import FakeBatches
from tests.support.fake_openai import FakeOpenAI, Fault, Reply
from tests.support.otlp_receiver import OtlpReceiver, Span

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
ENV = "TRACE_TEST_KEY"
# sk-shaped, so that content the user opts into is redacted too (errors.redact).
KEY = "sk-proj-" + "Q7w3E9r1T5y8U2i4" * 3
MARKER = "zebra-marker-41"  # an input value: content, never traced without the opt-in

WF = f"""\
version: 1
name: traced
defaults: {{model: gpt-4o-mini, max_tokens: 60, temperature: 0.5}}
provider: {{api_key_env: {ENV}, max_retries: 2}}
pricing:
  gpt-4o-mini: {{input: 0.15, cached_input: 0.075, output: 0.60}}
inputs:
  topic: {{type: string}}
steps:
  - id: outline
    prompt: "Plan {{{{ inputs.topic }}}} as JSON."
    output:
      schema:
        type: object
        required: [sections]
        properties: {{sections: {{type: array, items: {{type: string}}}}}}
      retries: 1
  - id: items
    for_each: steps.outline.output.sections
    as: section
    prompt: "Write {{{{ section }}}}."
  - id: final
    prompt: "Join: {{{{ steps.items.output }}}}"
outputs:
  text: "{{{{ steps.final.output }}}}"
"""

# The server's replies, in the order the requests reach it. (The two items go at once;
# whichever comes first is rate limited once, then gets the second item's reply.)
REPLIES: list[Reply | Fault] = [
    Reply('{"sections": "not a list"}', prompt_tokens=21, completion_tokens=7),
    Reply('{"sections": ["a", "b"]}', prompt_tokens=44, completion_tokens=9, cached_tokens=16),
    Fault.rate_limited(),
    Reply("item text", prompt_tokens=12, completion_tokens=3),
    Reply("item text", prompt_tokens=12, completion_tokens=3),
    Reply("all done", prompt_tokens=31, completion_tokens=5, reasoning_tokens=2),
]
# (input, output, cached, reasoning) of every reply: what the request spans must say.
SERVER_USAGE = sorted(
    (r.prompt_tokens or 0, r.completion_tokens or 0, r.cached_tokens, r.reasoning_tokens)
    for r in REPLIES
    if isinstance(r, Reply)
)


# -- in memory ---------------------------------------------------------------------------


class Otel:
    """A tracer and a meter provider that keep everything in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def engine(self, provider: Any) -> Engine:
        return Engine(
            provider=provider,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
        )

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        if span.parent is None:
            return None
        return next(s for s in self.spans if s.context.span_id == span.parent.span_id)

    def histograms(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            m.name: list(m.data.data_points)
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        }


@pytest.fixture
def otel() -> Iterator[Otel]:
    found = Otel()
    yield found
    found.tracer_provider.shutdown()
    found.meter_provider.shutdown()


@pytest.fixture
def openai_provider(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OpenAIProvider]:
    monkeypatch.setenv(ENV, KEY)
    yield OpenAIProvider(base_url=fake_openai.base_url, api_key_env=ENV, max_retries=2)


def run_traced(otel: Otel, provider: Any, topic: str = "tea") -> Any:
    return otel.engine(provider).run_sync(parse_workflow(WF), {"topic": topic})


def everything(spans: list[ReadableSpan]) -> str:
    """Every name, attribute, event, status and resource value, as one text."""
    parts: list[str] = []
    for s in spans:
        parts += [s.name, repr(dict(s.attributes or {})), repr(dict(s.resource.attributes))]
        parts += [f"{e.name} {dict(e.attributes or {})!r}" for e in s.events]
        parts.append(s.status.description or "")
    return "\n".join(parts)


def test_spans_nest_run_step_item_request(
    otel: Otel, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.queue(*REPLIES)
    result = run_traced(otel, openai_provider)
    (root,) = [s for s in otel.spans if s.parent is None]
    assert root.name == "invoke_workflow traced"
    assert root.kind == SpanKind.INTERNAL
    steps = {s.name: s for s in otel.spans if otel.parent(s) is root}
    assert sorted(steps) == ["step final", "step items", "step outline"]
    items = [s for s in otel.spans if otel.parent(s) is steps["step items"]]
    assert sorted(s.name for s in items) == ["step items[0]", "step items[1]"]
    chats = otel.named("chat ")
    # One span per model request (a rate-limited request and its retry are one request).
    assert len(chats) == 5 == len(fake_openai.chat_requests) - 1
    assert {s.name for s in chats} == {"chat gpt-4o-mini"}
    assert all(s.kind == SpanKind.CLIENT for s in chats)
    parents = sorted(otel.parent(s).name for s in chats)  # type: ignore[union-attr]
    assert parents == [
        "step final",
        "step items[0]",
        "step items[1]",
        "step outline",
        "step outline",
    ]
    assert all(s.context.trace_id == root.context.trace_id for s in otel.spans)
    assert root.attributes is not None
    assert root.attributes["flowgpt.run.id"] == result.run_id


def test_the_run_span_holds_the_run(
    otel: Otel, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    import hashlib

    fake_openai.queue(*REPLIES)
    result = run_traced(otel, openai_provider, topic=MARKER)
    (root,) = otel.named("invoke_workflow")
    a = dict(root.attributes or {})
    assert a["gen_ai.operation.name"] == "invoke_workflow"
    assert a["gen_ai.workflow.name"] == "traced"
    assert a["flowgpt.workflow.digest"] == "sha256:" + hashlib.sha256(WF.encode()).hexdigest()
    assert a["flowgpt.inputs"] == ("topic",)  # names, never values
    assert a["flowgpt.run.status"] == "ok"
    assert a["flowgpt.usage.input_tokens"] == result.usage.prompt_tokens == 120
    assert a["flowgpt.usage.output_tokens"] == result.usage.completion_tokens == 27
    assert a["flowgpt.cost_usd"] == pytest.approx(float(result.cost_usd))
    assert root.status.status_code == StatusCode.UNSET


def test_request_spans_hold_the_servers_usage_and_the_cost(
    otel: Otel, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.queue(*REPLIES)
    result = run_traced(otel, openai_provider)
    chats = [dict(s.attributes or {}) for s in otel.named("chat ")]
    usage = sorted(
        (
            a["gen_ai.usage.input_tokens"],
            a["gen_ai.usage.output_tokens"],
            a.get("gen_ai.usage.cache_read.input_tokens", 0),
            a.get("gen_ai.usage.reasoning.output_tokens", 0),
        )
        for a in chats
    )
    assert usage == SERVER_USAGE
    for a in chats:
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "gpt-4o-mini"
        assert a["gen_ai.request.max_tokens"] == 60
        assert a["gen_ai.request.temperature"] == 0.5
        assert a["server.address"] == "127.0.0.1"
        assert a["server.port"] == fake_openai.port
        assert a["gen_ai.response.finish_reasons"] == ("stop",)
        assert str(a["gen_ai.response.id"]).startswith("chatcmpl-")
        assert a["flowgpt.price.source"] == "workflow"
    assert len({a["gen_ai.response.id"] for a in chats}) == 5
    json_requests = [a for a in chats if a.get("gen_ai.output.type") == "json"]
    assert len(json_requests) == 2  # the outline's, asked with its schema
    total = sum(Decimal(str(a["flowgpt.cost_usd"])) for a in chats)
    assert float(total) == pytest.approx(float(result.cost_usd))


def test_retries_429s_and_repairs_are_events(
    otel: Otel, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.queue(*REPLIES)
    run_traced(otel, openai_provider)
    retried = [s for s in otel.named("chat ") if s.events]
    (span,) = retried
    # A rate-limit 429 is waited out, not retried: it spends none of the retry budget.
    assert [e.name for e in span.events] == ["flowgpt.rate_limited"]
    assert span.events[0].attributes == {"flowgpt.retry_after_s": 0.001}
    assert "flowgpt.retries" not in (span.attributes or {})
    (outline,) = otel.named("step outline")
    assert [e.name for e in outline.events] == ["flowgpt.repair"]
    assert outline.events[0].attributes == {"flowgpt.failures.count": 1}  # no content
    a = dict(outline.attributes or {})
    assert a["flowgpt.step.attempts"] == 2
    assert a["flowgpt.step.validation"] == "passed"
    assert a["flowgpt.step.status"] == "ok"


def test_a_retried_5xx_is_a_retry_event(
    otel: Otel, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.queue(
        Fault.server_error(),
        Reply('{"sections": ["a"]}'),
        Reply("item text"),
        Reply("all done"),
    )
    run_traced(otel, openai_provider)
    (span,) = [s for s in otel.named("chat ") if s.events]
    # The second attempt of the request, its first error retry, is sent as its first resend.
    assert [e.name for e in span.events] == ["flowgpt.retry"]
    assert span.events[0].attributes == {"http.request.resend_count": 1}
    assert (span.attributes or {})["flowgpt.retries"] == 1


def test_errors_carry_their_class(
    otel: Otel, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.queue(Fault.unauthorized("Incorrect API key provided: {raw_key}."))
    with pytest.raises(AuthenticationError):
        run_traced(otel, openai_provider)
    (chat,) = otel.named("chat ")
    (step,) = otel.named("step outline")
    (root,) = otel.named("invoke_workflow")
    for span in (chat, step, root):
        assert span.status.status_code == StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "AuthenticationError"
    assert (chat.attributes or {})["http.response.status_code"] == 401
    assert (root.attributes or {})["flowgpt.run.status"] == "failed"
    assert KEY not in everything(otel.spans)  # the server echoed it; the span does not
    (duration,) = otel.histograms()["gen_ai.client.operation.duration"]
    assert duration.attributes["error.type"] == "AuthenticationError"


def test_metrics_follow_the_conventions(
    otel: Otel, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.queue(*REPLIES)
    result = run_traced(otel, openai_provider)
    metrics = otel.histograms()
    tokens = {p.attributes["gen_ai.token.type"]: p for p in metrics["gen_ai.client.token.usage"]}
    assert tokens["input"].sum == result.usage.prompt_tokens
    assert tokens["output"].sum == result.usage.completion_tokens
    assert tokens["input"].count == tokens["output"].count == 5
    assert tuple(tokens["input"].explicit_bounds) == TOKEN_BUCKETS
    assert tokens["input"].attributes["gen_ai.provider.name"] == "openai"
    assert tokens["input"].attributes["gen_ai.request.model"] == "gpt-4o-mini"
    (duration,) = metrics["gen_ai.client.operation.duration"]
    assert duration.count == 5
    assert tuple(duration.explicit_bounds) == DURATION_BUCKETS


def test_no_message_content_by_default(
    otel: Otel, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.queue(*REPLIES)
    run_traced(otel, openai_provider, topic=MARKER)
    text = everything(otel.spans)
    assert MARKER not in text
    assert "gen_ai.input.messages" not in text and "gen_ai.output.messages" not in text
    assert "all done" not in text  # a reply


@pytest.mark.parametrize("setting", ["true", "SPAN_ONLY", "span_and_event"])
def test_message_content_on_opt_in(
    setting: str,
    otel: Otel,
    fake_openai: FakeOpenAI,
    openai_provider: OpenAIProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", setting)
    fake_openai.queue(*REPLIES)
    run_traced(otel, openai_provider, topic=MARKER)
    first = min(otel.named("chat "), key=lambda s: s.start_time or 0)
    a = dict(first.attributes or {})
    assert json.loads(str(a["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": f"Plan {MARKER} as JSON."}]}
    ]
    assert json.loads(str(a["gen_ai.output.messages"])) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": '{"sections": "not a list"}'}],
            "finish_reason": "stop",
        }
    ]
    (outline,) = otel.named("step outline")
    assert "flowgpt.failures" in (outline.events[0].attributes or {})
    with_events = [
        s for s in otel.named("chat ") if any(e.name.startswith("gen_ai.") for e in s.events)
    ]
    assert bool(with_events) == (setting == "span_and_event")


def test_content_only_in_events_with_event_only(
    otel: Otel,
    fake_openai: FakeOpenAI,
    openai_provider: OpenAIProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "EVENT_ONLY")
    fake_openai.queue(*REPLIES)
    run_traced(otel, openai_provider, topic=MARKER)
    for span in otel.named("chat "):
        assert "gen_ai.input.messages" not in (span.attributes or {})
        details = [e for e in span.events if e.name == "gen_ai.client.inference.operation.details"]
        assert [sorted(e.attributes or {}) for e in details] == [
            ["gen_ai.input.messages"],
            ["gen_ai.output.messages"],
        ]
    assert MARKER in everything(otel.spans)


def test_the_key_is_never_traced_even_with_content_on(
    otel: Otel,
    fake_openai: FakeOpenAI,
    openai_provider: OpenAIProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    fake_openai.queue(*REPLIES)
    # Even a key pasted into an input (so into a prompt) is redacted from the content.
    run_traced(otel, openai_provider, topic=f"tea {KEY}")
    assert fake_openai.chat_requests[0].api_key == KEY  # it was sent to the server...
    text = everything(otel.spans)
    assert KEY not in text  # ...and appears nowhere in the spans
    assert "[redacted key]" in text


def test_a_run_inside_an_application_span_is_its_child(otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handle request") as app:
        run_traced(otel, MockProvider())
    (root,) = otel.named("invoke_workflow")
    assert root.parent is not None and root.parent.span_id == app.get_span_context().span_id


def test_mock_runs_have_no_server(otel: Otel) -> None:
    run_traced(otel, MockProvider())
    for span in otel.named("chat "):
        a = dict(span.attributes or {})
        assert a["gen_ai.provider.name"] == "mock"
        assert "server.address" not in a


def test_skipped_reused_and_cached_steps_are_spans_too(otel: Otel, tmp_path: Path) -> None:
    from flowgpt.store.run_store import RunStore

    wf = parse_workflow(
        "version: 1\nname: s\ndefaults: {model: gpt-4o-mini, temperature: 0}\nsteps:\n"
        "  - id: a\n    prompt: hi\n  - id: b\n    when: 'false'\n    prompt: later\n"
    )
    store = RunStore(str(tmp_path / "runs.sqlite3"))
    engine = Engine(
        provider=MockProvider(),
        store=store,
        cache=True,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    engine.run_sync(wf, {})
    engine.run_sync(wf, {})  # step a from the response cache
    statuses = [(s.attributes or {})["flowgpt.step.status"] for s in otel.named("step a")]
    assert statuses == ["ok", "cached"]
    assert [e.name for e in otel.named("step a")[1].events] == ["flowgpt.cache_hit"]
    assert [(s.attributes or {})["flowgpt.step.status"] for s in otel.named("step b")] == [
        "skipped",
        "skipped",
    ]
    assert len(otel.named("chat ")) == 1  # a cache hit sends no request
    store.close()


async def test_batch_rows_are_runs_under_one_batch_span(otel: Otel) -> None:
    engine = otel.engine(MockProvider())
    rows = [{"topic": "tea"}, {"topic": "coffee"}]
    results = [r async for r in engine.run_batch(parse_workflow(WF), rows)]
    assert [r.status for r in results] == ["ok", "ok"]
    (batch,) = otel.named("batch ")
    assert batch.name == "batch traced" and batch.parent is None
    runs = otel.named("invoke_workflow")
    assert all(otel.parent(r) is batch for r in runs)
    assert sorted((r.attributes or {})["flowgpt.batch.row"] for r in runs) == [1, 2]
    a = dict(batch.attributes or {})
    assert (a["flowgpt.batch.rows"], a["flowgpt.batch.failed"]) == (2, 0)
    assert a["flowgpt.usage.input_tokens"] == sum(r.usage.prompt_tokens for r in results)


async def test_batch_api_rows_and_batches_are_traced(
    otel: Otel, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    batches = FakeBatches(fake_openai)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    workflow = parse_workflow(
        "version: 1\nname: staged\ndefaults: {model: gpt-4o-mini, max_tokens: 20}\n"
        "inputs: {topic: {type: string}}\nsteps:\n"
        "  - {id: first, prompt: 'About {{ inputs.topic }}'}\n"
        "  - {id: second, prompt: 'More on {{ steps.first.text }}'}\n"
    )
    engine = Engine(
        store=RunStore(tmp_path / "runs.sqlite3"),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    async with engine:
        run = engine.run_batch_api(
            workflow, [{"topic": "tea"}, {"topic": "milk"}], job="traced", poll_interval_s=0.005
        )
        results = [r async for r in run]
    assert [r.status for r in results] == ["ok", "ok"]

    (batch,) = otel.named("batch ")
    assert batch.name == "batch staged" and batch.parent is None
    a = dict(batch.attributes or {})
    assert (a["flowgpt.batch.rows"], a["flowgpt.batch.failed"]) == (2, 0)
    # One Batch API batch per stage, each submitted and ended, as events of the batch span.
    made = {str(e.attributes["flowgpt.batch_api.batch_id"]) for e in batch.events
            if e.name == "flowgpt.batch_api.submitted" and e.attributes}  # fmt: skip
    ended = [dict(e.attributes or {}) for e in batch.events if e.name == "flowgpt.batch_api.ended"]
    assert made == set(batches.batches) and len(made) == 2
    assert {e["flowgpt.batch_api.batch_id"] for e in ended} == made
    assert all(e["flowgpt.batch_api.status"] == "completed" for e in ended)
    # Rows are runs under it; every request is a chat span naming its line and batch.
    runs = otel.named("invoke_workflow")
    assert sorted((r.attributes or {})["flowgpt.batch.row"] for r in runs) == [1, 2]
    assert all(otel.parent(r) is batch for r in runs)
    chats = otel.named("chat ")
    assert len(chats) == 4
    lines = {
        str((e.attributes or {})["flowgpt.batch_api.custom_id"]): (e.attributes or {}).get(
            "flowgpt.batch_api.batch_id"
        )
        for c in chats
        for e in c.events
        if e.name == "flowgpt.batch_api.line"
    }
    assert sorted(lines) == sorted(batches.sent()) and set(lines.values()) == made
    # usage as the batch's answers said, adding up to what the rows report
    for kind, name in (("input", "prompt_tokens"), ("output", "completion_tokens")):
        traced = [(c.attributes or {})[f"gen_ai.usage.{kind}_tokens"] for c in chats]
        assert all(isinstance(n, int) and n > 0 for n in traced)
        assert sum(traced) == sum(getattr(r.usage, name) for r in results)  # type: ignore[misc]


def test_tracing_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Engine().tracing is NO_TRACING
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert Engine(tracing=False).tracing is NO_TRACING
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert Engine().tracing is NO_TRACING


def test_without_the_extra_the_variable_warns_and_trace_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flowgpt import SpecError
    from flowgpt.tracing import setup

    monkeypatch.setattr(setup, "otel_installed", lambda: False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    with pytest.warns(RuntimeWarning, match=r"pip install 'flowgpt\[otel\]'"):
        assert Engine().tracing is NO_TRACING
    with pytest.raises(SpecError, match="tracing needs OpenTelemetry"):
        Engine(tracing=True)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, (["otlp"], ["otlp"])),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, (["otlp"], [])),
        ({}, (["otlp"], ["otlp"])),  # --trace alone: the SDK's default endpoint for both
        ({"OTEL_METRICS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "console"}, (["console"], [])),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, (["otlp", "console"], ["otlp"])),
    ],
)
def test_which_exporters_flowgpts_own_providers_use(
    environ: dict[str, str], expected: tuple[list[str], list[str]]
) -> None:
    from flowgpt.tracing.setup import exporters

    assert exporters(environ) == expected


# -- end to end: the CLI, the OTLP/HTTP exporter, a loopback receiver ----------------------


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as found:
        yield found


def flowgpt(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "flowgpt", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_env(fake: FakeOpenAI, receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OPENAI_BASE_URL": fake.base_url,
        ENV: KEY,
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def by_id(spans: list[Span]) -> dict[str, Span]:
    return {s.span_id: s for s in spans}


def test_flowgpt_run_sends_the_span_tree_over_otlp(
    fake_openai: FakeOpenAI, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    (tmp_path / "wf.yaml").write_text(WF)
    fake_openai.queue(*REPLIES)
    # Headers as Langfuse asks for them (Basic auth with a space, as its docs write it).
    headers = "Authorization=Basic cGstbGY6c2stbGY=,x-langfuse-ingestion-version=4"
    env = cli_env(fake_openai, receiver, OTEL_EXPORTER_OTLP_HEADERS=headers)
    proc = flowgpt("run", "wf.yaml", "-i", f"topic={MARKER}", "--no-store", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    spans = receiver.spans()
    ids = by_id(spans)
    (root,) = [s for s in spans if not s.parent_id]
    assert root.name == "invoke_workflow traced" and root.kind == "INTERNAL"
    steps = sorted(s.name for s in spans if s.parent_id == root.span_id)
    assert steps == ["step final", "step items", "step outline"]
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert len(chats) == 5 and all(c.kind == "CLIENT" for c in chats)
    assert sorted(ids[c.parent_id].name for c in chats) == [
        "step final",
        "step items[0]",
        "step items[1]",
        "step outline",
        "step outline",
    ]
    usage = sorted(
        (
            c.attributes["gen_ai.usage.input_tokens"],
            c.attributes["gen_ai.usage.output_tokens"],
            c.attributes.get("gen_ai.usage.cache_read.input_tokens", 0),
            c.attributes.get("gen_ai.usage.reasoning.output_tokens", 0),
        )
        for c in chats
    )
    assert usage == SERVER_USAGE
    # The SDK's own configuration: default service name, the headers variable.
    assert root.resource["service.name"] == "flowgpt"
    assert root.scope == "flowgpt"
    for sent in receiver.headers:
        assert sent["authorization"] == "Basic cGstbGY6c2stbGY="
        assert sent["x-langfuse-ingestion-version"] == "4"
    metrics = receiver.metrics()
    tokens = metrics["gen_ai.client.token.usage"]
    assert sum(p.sum for p in tokens if p.attributes["gen_ai.token.type"] == "input") == 120
    assert sum(p.count for p in metrics["gen_ai.client.operation.duration"]) == 5
    # No content by default, and never the key: searched in the raw protobuf bodies.
    raw = b"".join(receiver.bodies)
    assert MARKER.encode() not in raw and b"all done" not in raw
    assert KEY.encode() not in raw


def test_flowgpt_run_with_capture_on_sends_messages_never_the_key(
    fake_openai: FakeOpenAI, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    (tmp_path / "wf.yaml").write_text(WF)
    fake_openai.queue(*REPLIES)
    env = cli_env(
        fake_openai,
        receiver,
        OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true",
        OTEL_SERVICE_NAME="article-service",
    )
    proc = flowgpt("run", "wf.yaml", "-i", f"topic={MARKER}", "--no-store", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    spans = receiver.spans()
    inputs = [s.attributes.get("gen_ai.input.messages", "") for s in spans]
    assert any(MARKER in text for text in inputs)
    outputs = [s.attributes.get("gen_ai.output.messages", "") for s in spans]
    assert any("all done" in text for text in outputs)
    assert {s.resource["service.name"] for s in spans} == {"article-service"}
    assert KEY.encode() not in b"".join(receiver.bodies)


@pytest.mark.parametrize("via", ["chat", "batch-api"])
def test_flowgpt_batch_sends_a_span_per_row(
    fake_openai: FakeOpenAI, receiver: OtlpReceiver, tmp_path: Path, via: str
) -> None:
    (tmp_path / "wf.yaml").write_text(
        f"version: 1\nname: rows\ndefaults: {{model: gpt-4o-mini, max_tokens: 20}}\n"
        f"provider: {{api_key_env: {ENV}}}\n"
        "inputs: {topic: {type: string}}\nsteps:\n  - id: a\n    prompt: 'On {{ inputs.topic }}'\n"
    )
    (tmp_path / "rows.jsonl").write_text('{"topic": "tea"}\n{"topic": "coffee"}\n')
    batches = FakeBatches(fake_openai)
    env = cli_env(
        fake_openai,
        receiver,
        FLOWGPT_STORE=str(tmp_path / "runs.sqlite3"),
        FLOWGPT_BATCH_POLL_S="0.005",
    )
    api = ["--batch-api"] if via == "batch-api" else []
    proc = flowgpt(
        "batch", "wf.yaml", "--data", "rows.jsonl", "--out", "out.jsonl", *api,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    spans = receiver.spans()
    (batch,) = [s for s in spans if not s.parent_id]
    assert batch.name == "batch rows"
    runs = [s for s in spans if s.parent_id == batch.span_id]
    assert sorted(r.attributes["flowgpt.batch.row"] for r in runs) == [1, 2]
    assert len([s for s in spans if s.name == "chat gpt-4o-mini"]) == 2
    submitted = [e for e in batch.events if e.name == "flowgpt.batch_api.submitted"]
    assert len(submitted) == len(batches.batches) == (1 if api else 0)


def test_trace_flag_without_the_variable_uses_the_traces_endpoint_variable(
    fake_openai: FakeOpenAI, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    (tmp_path / "wf.yaml").write_text(WF)
    fake_openai.queue(*REPLIES)
    env = cli_env(fake_openai, receiver)
    del env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{receiver.url}/v1/traces"
    proc = flowgpt(
        "run", "wf.yaml", "-i", "topic=tea", "--no-store", "--trace", cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert len([s for s in receiver.spans() if s.name.startswith("chat ")]) == 5
    assert receiver.metrics() == {}  # a traces-only endpoint: no metrics sent anywhere


def test_the_tracing_benchmark_runs() -> None:
    # Tiny counts, no timings checked: it runs both modes and the receiver gets every span.
    args = ["--chains-seq", "2", "--chains-conc", "4", "--concurrency", "2", "--latency-ms", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.bench_tracing", *args, "--repeat", "1"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OPENAI_"))},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert rows["sequential"][1] == "2" and rows["concurrent"][1] == "4"
    received, expected = rows["Spans"][2], rows["Spans"][4].rstrip(".")
    assert received == expected and int(received) > 0
