"""Bad input around telemetry: a sampler dropping everything, a raising sink, a flood of custom events.

Telemetry never changes a run's outcome, and what it gives up on is counted.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import collections
import logging
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, Sampler, SamplingResult

from stageflow import InMemoryEventSink, Pipeline, StageContext, StageKind, StageOutput
from stageflow_otel import OtlpEventSink, TracingInterceptor, semconv

from .conftest import entry_ctx, metric_points, one_stage_graph

T = StageKind.TRANSFORM
CUSTOM_EVENTS = 10_000


class RaisingSink:
    """An event sink that raises on every event."""

    def __init__(self) -> None:
        self.calls = 0

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.calls += 1
        raise RuntimeError("sink down")


class DropStageSpans(Sampler):
    """Samples run spans and drops every stage span (a sampler deciding by span name)."""

    def should_sample(self, parent_context: Any, trace_id: int, name: str, *args: Any, **kw: Any) -> Any:
        decision = Decision.DROP if name.startswith("stage ") else Decision.RECORD_AND_SAMPLE
        return SamplingResult(decision)

    def get_description(self) -> str:
        return "DropStageSpans"


def provider_with(exporter: InMemorySpanExporter, **kwargs: Any) -> TracerProvider:
    provider = TracerProvider(**kwargs)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def user_span_in(provider: TracerProvider) -> Any:
    """A stage opening a span of its own with ``provider``, returning that span's context."""

    async def stage(ctx: StageContext) -> StageOutput:
        with provider.get_tracer("user").start_as_current_span("user work") as span:
            seen = span.get_span_context()
        return StageOutput.ok(trace_id=seen.trace_id, sampled=seen.trace_flags.sampled)

    return stage


class TestSamplers:
    async def test_a_sampler_dropping_everything_changes_nothing_but_the_spans(
        self, tracer_provider: TracerProvider
    ) -> None:
        """ALWAYS_OFF: no span anywhere, the run's results and events as without tracing."""
        exporter = InMemorySpanExporter()
        provider = provider_with(exporter, sampler=ALWAYS_OFF)
        pipeline = Pipeline(name="p").with_stage("a", user_span_in(provider), T)
        plain, traced = InMemoryEventSink(), InMemoryEventSink()
        expected = await pipeline.build().run(entry_ctx(sink=plain))
        results = await pipeline.build(interceptors=[TracingInterceptor(provider)]).run(
            entry_ctx(sink=traced)
        )
        assert exporter.get_finished_spans() == ()
        assert results["a"].status is expected["a"].status
        assert results["a"].output is not None and results["a"].output.data["sampled"] is False
        assert [e.type for e in traced.events] == [e.type for e in plain.events]

    async def test_a_sampler_dropping_stage_spans_keeps_user_spans_in_the_trace(
        self, span_exporter: InMemorySpanExporter
    ) -> None:
        """A stage span the sampler drops is not recorded; a span the user opens in it stays in the trace."""
        provider = provider_with(span_exporter, sampler=DropStageSpans())
        graph = Pipeline(name="p").with_stage("a", user_span_in(provider), T)
        results = await graph.build(interceptors=[TracingInterceptor(provider)]).run(entry_ctx())
        spans = {s.name: s for s in span_exporter.get_finished_spans()}
        assert sorted(spans) == ["pipeline p", "user work"]
        run, user = spans["pipeline p"], spans["user work"]
        assert run.context is not None and user.context is not None and user.parent is not None
        # the user's span is in the run's trace, under the stage span the sampler dropped
        assert user.context.trace_id == run.context.trace_id
        assert user.parent.span_id != run.context.span_id
        output = results["a"].output
        assert output is not None and output.data["trace_id"] == run.context.trace_id


class TestSinks:
    async def test_a_raising_sink_changes_no_outcome_and_no_span_event(
        self,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The tracing side takes each event before the run's sink: spans are whole, the sink's
        failure is logged once."""
        sink = RaisingSink()
        graph = one_stage_graph("p", "a", user_span_in(tracer_provider), TracingInterceptor(tracer_provider))
        with caplog.at_level(logging.ERROR):
            results = await graph.run(entry_ctx(sink=sink))
            again = await graph.run(entry_ctx(sink=sink))
        assert results["a"].output is not None and again["a"].output is not None
        assert sink.calls == 10
        spans = {s.name: s for s in span_exporter.get_finished_spans()}
        assert [str((e.attributes or {})[semconv.EVENT_TYPE]) for e in spans["stage a"].events] == [
            "stage.a.started",
            "stage.a.completed",
        ]
        assert [r.getMessage() for r in caplog.records] == [
            f"stageflow_otel: event sink {sink!r} failed and is ignored: RuntimeError('sink down')"
        ]


class TestFloods:
    async def test_ten_thousand_custom_events_in_one_stage(
        self,
        span_exporter: InMemorySpanExporter,
        meter_provider: MeterProvider,
        metric_reader: InMemoryMetricReader,
    ) -> None:
        """The span keeps the newest events up to its limit and counts the rest; the counter counts all."""
        provider = provider_with(span_exporter, span_limits=SpanLimits(max_events=128))
        sink = OtlpEventSink(meter_provider=meter_provider)

        async def chatty(ctx: StageContext) -> StageOutput:
            for i in range(CUSTOM_EVENTS):
                ctx.try_emit_event("llm.token", {"index": i})
            return StageOutput.ok()

        graph = (
            Pipeline(name="p").with_stage("a", chatty, T).build(interceptors=[TracingInterceptor(provider)])
        )
        results = await graph.run(entry_ctx(sink=sink))
        assert results["a"].output is not None
        spans = {s.name: s for s in span_exporter.get_finished_spans()}
        stage = spans["stage a"]
        # started + 10,000 custom + completed, of which the newest 128 are kept
        assert (len(stage.events), stage.dropped_events) == (128, CUSTOM_EVENTS + 2 - 128)
        assert [e.name for e in stage.events[-2:]] == [semconv.EVENT_OTHER, semconv.EVENTS["stage.completed"]]
        emitted = {
            (p.attributes or {}).get(semconv.EVENT_NAME): p.value
            for p in metric_points(metric_reader, semconv.EVENTS_EMITTED.name)
            if isinstance(p, NumberDataPoint)
        }
        assert emitted[semconv.EVENT_OTHER] == CUSTOM_EVENTS
        sink.shutdown(timeout=5.0)


class BlockingExporter(SpanExporter):
    """An exporter that blocks until released (a collector that never answers), then keeps the spans."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(HANG_GUARD)
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


HANG_GUARD = 30.0


class TestExporters:
    async def test_an_exporter_that_blocks_never_blocks_a_run(self) -> None:
        """Runs finish while the user's batch exporter is stuck; once it answers, every span arrives."""
        exporter = BlockingExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=1))
        graph = one_stage_graph("p", "a", user_span_in(provider), TracingInterceptor(provider))
        await graph.run(entry_ctx())
        assert await asyncio.to_thread(exporter.entered.wait, HANG_GUARD)  # the export thread is stuck
        for _ in range(20):
            results = await graph.run(entry_ctx())
            assert results["a"].output is not None
        exporter.release.set()
        assert provider.force_flush(int(HANG_GUARD * 1000))
        provider.shutdown()
        assert sorted(collections.Counter(s.name for s in exporter.spans).items()) == [
            ("pipeline p", 21),
            ("stage a", 21),
            ("user work", 21),
        ]
