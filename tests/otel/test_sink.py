"""OtlpEventSink: event names, severities, attributes, trace context, bounded buffer, failure isolation."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import logging
import threading

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stageflow import (
    Pipeline,
    PipelineFailedError,
    StageContext,
    StageKind,
    StageOutput,
)
from stageflow_otel import OtlpEventSink, TracingInterceptor, semconv
from stageflow_otel.docs import render_reference
from stageflow_otel.semconv import EVENTS
from tests._stages import boom, ok

from .conftest import entry_ctx, metric_points, one_stage_graph


def records(sink: OtlpEventSink, exporter: InMemoryLogRecordExporter) -> list[tuple[str, str, str]]:
    """``(event name, stageflow.event.type, severity)`` of every record, once the sink drained."""
    assert sink.flush(timeout=5.0)
    return [
        (
            str(r.log_record.event_name),
            str((r.log_record.attributes or {})[semconv.EVENT_TYPE]),
            str(r.log_record.severity_text),
        )
        for r in exporter.get_finished_logs()
    ]


class TestEventRecords:
    async def test_a_successful_run_becomes_static_event_names(
        self, log_sink: OtlpEventSink, log_exporter: InMemoryLogRecordExporter
    ) -> None:
        """Each event is a record with a static name, the seed's string in an attribute, at INFO."""
        graph = Pipeline(name="p").with_stage("greet", ok, StageKind.TRANSFORM).build()
        await graph.run(entry_ctx(sink=log_sink))
        assert records(log_sink, log_exporter) == [
            ("stageflow.pipeline.created", "pipeline.created", "INFO"),
            ("stageflow.pipeline.started", "pipeline.started", "INFO"),
            ("stageflow.stage.started", "stage.greet.started", "INFO"),
            ("stageflow.stage.completed", "stage.greet.completed", "INFO"),
            ("stageflow.pipeline.completed", "pipeline.completed", "INFO"),
        ]

    async def test_failures_are_errors_with_error_type_and_message(
        self, log_sink: OtlpEventSink, log_exporter: InMemoryLogRecordExporter
    ) -> None:
        """stage.x.failed and pipeline.failed are ERROR records carrying error.type and the message."""
        graph = Pipeline(name="p").with_stage("bad", boom, StageKind.TRANSFORM).build()
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx(sink=log_sink))
        assert sink_failed(log_sink, log_exporter) == [
            (EVENTS["stage.failed"], SeverityNumber.ERROR, "RuntimeError", "kaput", "bad", "error"),
            (EVENTS["pipeline.failed"], SeverityNumber.ERROR, "RuntimeError", "kaput", "bad", "error"),
        ]

    def test_cancelled_events_are_warnings(
        self, log_sink: OtlpEventSink, log_exporter: InMemoryLogRecordExporter
    ) -> None:
        """Cancelled events are WARN, with the cancellation result."""
        log_sink.try_emit(type="stage.a.b.cancelled", data={"stage": "a.b", "reason": "stop"})
        assert log_sink.flush(timeout=5.0)
        (record,) = [r.log_record for r in log_exporter.get_finished_logs()]
        assert (record.event_name, record.severity_number, dict(record.attributes or {})) == (
            EVENTS["stage.cancelled"],
            SeverityNumber.WARN,
            {
                semconv.EVENT_TYPE: "stage.a.b.cancelled",
                semconv.STAGE_NAME: "a.b",
                semconv.STAGE_CANCEL_REASON: "stop",
                semconv.STAGE_RESULT: semconv.RESULT_CANCELLATION,
            },
        )

    def test_seconds_are_rounded_to_the_microsecond(
        self, log_sink: OtlpEventSink, log_exporter: InMemoryLogRecordExporter
    ) -> None:
        """Durations, waits and timestamps are rounded in attributes and body; other numbers are kept."""
        log_sink.try_emit(
            type="stage.a.completed",
            data={"stage": "a", "duration": 0.005551484000534401, "wait": 5.0726000040413055e-05},
        )
        log_sink.try_emit(
            type="pipeline.completed",
            data={
                "timestamp": 1796121945.3077588,
                "duration": 0.0069259120000424446,
                "stages": {"a": {"status": "ok", "wait": 2.388499979133485e-05, "duration": 0.0055514840}},
                "score": 0.123456789,
            },
        )
        assert log_sink.flush(timeout=5.0)
        stage, run = [r.log_record for r in log_exporter.get_finished_logs()]
        assert (dict(stage.attributes or {}), stage.body) == (
            {
                semconv.EVENT_TYPE: "stage.a.completed",
                semconv.STAGE_NAME: "a",
                semconv.STAGE_DURATION_ATTRIBUTE: 0.005551,
                semconv.STAGE_WAIT_DURATION: 5.1e-05,
                semconv.STAGE_RESULT: semconv.RESULT_SUCCESS,
            },
            {"stage": "a", "duration": 0.005551, "wait": 5.1e-05},
        )
        assert ((run.attributes or {})[semconv.RUN_DURATION], run.body) == (
            0.006926,
            {
                "timestamp": 1796121945.307759,
                "duration": 0.006926,
                "stages": {"a": {"status": "ok", "wait": 2.4e-05, "duration": 0.005551}},
                "score": 0.123456789,
            },
        )

    def test_unknown_types_keep_their_string_under_a_generic_name(
        self, log_sink: OtlpEventSink, log_exporter: InMemoryLogRecordExporter
    ) -> None:
        """An event outside the taxonomy is named stageflow.event and keeps its data as the body."""
        log_sink.try_emit(type="custom.thing", data={"n": 1, "nested": {"k": [1, 2]}, "obj": object})
        assert log_sink.flush(timeout=5.0)
        (record,) = [r.log_record for r in log_exporter.get_finished_logs()]
        assert (record.event_name, record.body) == (
            semconv.EVENT_OTHER,
            {"n": 1, "nested": {"k": [1, 2]}, "obj": str(object)},
        )

    async def test_emit_is_try_emit(
        self, log_sink: OtlpEventSink, log_exporter: InMemoryLogRecordExporter
    ) -> None:
        """The awaitable ``emit`` records the event like ``try_emit``."""
        await log_sink.emit(type="pipeline.started", data={"run_id": "r1", "pipeline": "p"})
        assert records(log_sink, log_exporter) == [("stageflow.pipeline.started", "pipeline.started", "INFO")]


def sink_failed(
    sink: OtlpEventSink, exporter: InMemoryLogRecordExporter
) -> list[tuple[object, object, object, object, object, object]]:
    """The failure records as (name, severity, error.type, message, stage, result)."""
    assert sink.flush(timeout=5.0)
    found: list[tuple[object, object, object, object, object, object]] = []
    for r in exporter.get_finished_logs():
        record = r.log_record
        attributes = dict(record.attributes or {})
        if record.severity_number is SeverityNumber.ERROR:
            found.append(
                (
                    record.event_name,
                    record.severity_number,
                    attributes.get(semconv.ERROR_TYPE),
                    attributes.get(semconv.EXCEPTION_MESSAGE),
                    attributes.get(semconv.STAGE_NAME),
                    attributes.get(semconv.STAGE_RESULT, attributes.get(semconv.RUN_RESULT)),
                )
            )
    return found


class TestTraceContext:
    async def test_every_event_carries_the_run_span_under_the_callers(
        self,
        log_sink: OtlpEventSink,
        log_exporter: InMemoryLogRecordExporter,
        tracer_provider: TracerProvider,
    ) -> None:
        """Under a caller span, every event, pipeline.created too, carries the run span (its child)."""
        graph = one_stage_graph("p", "greet", ok, TracingInterceptor(tracer_provider))
        tracer = tracer_provider.get_tracer("test")
        with tracer.start_as_current_span("caller") as caller:
            await graph.run(entry_ctx(sink=log_sink))
        assert log_sink.flush(timeout=5.0)
        caller_ctx = caller.get_span_context()
        by_name = {
            str(r.log_record.event_name): (r.log_record.trace_id, r.log_record.span_id)
            for r in log_exporter.get_finished_logs()
        }
        assert "stageflow.pipeline.created" in by_name
        assert {trace_id for trace_id, _ in by_name.values()} == {caller_ctx.trace_id}
        span_ids = {span_id for _, span_id in by_name.values()}
        assert len(span_ids) == 1 and span_ids != {caller_ctx.span_id}

    def test_try_emit_captures_the_context_current_at_the_call(
        self,
        log_sink: OtlpEventSink,
        log_exporter: InMemoryLogRecordExporter,
        tracer_provider: TracerProvider,
    ) -> None:
        """The record's trace and span ids are those current when try_emit ran, not when it was written."""
        with tracer_provider.get_tracer("test").start_as_current_span("s") as span:
            log_sink.try_emit(type="pipeline.started", data={})
        log_sink.try_emit(type="pipeline.completed", data={})
        assert log_sink.flush(timeout=5.0)
        ids = [(r.log_record.trace_id, r.log_record.span_id) for r in log_exporter.get_finished_logs()]
        context = span.get_span_context()
        assert ids == [(context.trace_id, context.span_id), (0, 0)]

    async def test_an_event_a_stage_emits_while_it_runs_carries_its_stage_span(
        self,
        log_sink: OtlpEventSink,
        log_exporter: InMemoryLogRecordExporter,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
    ) -> None:
        """As the reference says: every record of a traced run carries the run span, but for an event the
        stage emits while it runs (its own ``try_emit_event``), which carries the stage's span."""

        async def chatty(ctx: StageContext) -> StageOutput:
            ctx.try_emit_event("llm.tokens", {"n": 3})
            return StageOutput.ok()

        graph = one_stage_graph("p", "greet", chatty, TracingInterceptor(tracer_provider))
        await graph.run(entry_ctx(sink=log_sink))
        assert log_sink.flush(timeout=5.0)
        span_of = {s.context.span_id: s.name for s in span_exporter.get_finished_spans()}
        records = [
            (str((r.log_record.attributes or {})[semconv.EVENT_TYPE]), span_of[r.log_record.span_id or 0])
            for r in log_exporter.get_finished_logs()
        ]
        assert records == [
            ("pipeline.created", "pipeline p"),
            ("pipeline.started", "pipeline p"),
            ("stage.greet.started", "pipeline p"),
            ("llm.tokens", "stage greet"),
            ("stage.greet.completed", "pipeline p"),
            ("pipeline.completed", "pipeline p"),
        ]
        assert (
            "and the trace context of the run span (of the stage's span for an event a stage emits while it "
            "runs, such as its own `ctx.try_emit_event(...)`; for an untraced run, the context current when "
            "it was emitted)." in render_reference()
        )


class _Blocking(LogRecordProcessor):
    """A processor whose on_emit waits until ``release`` is set (a stalled export pipeline)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: list[str] = []

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        self.entered.set()
        self.release.wait(10)
        self.seen.append(str(log_record.log_record.event_name))

    def shutdown(self) -> None:
        self.release.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class TestBoundedBuffer:
    def test_a_stalled_logger_never_blocks_and_overflow_is_counted(
        self, metric_reader: InMemoryMetricReader, meter_provider: MeterProvider
    ) -> None:
        """With the logger stuck, try_emit returns at once and events past max_buffer are dropped, counted."""
        blocking = _Blocking()
        provider = LoggerProvider()
        provider.add_log_record_processor(blocking)
        sink = OtlpEventSink(
            logger_provider=provider, meter_provider=meter_provider, max_buffer=2, log_records=True
        )
        try:
            sink.try_emit(type="pipeline.created", data={})
            assert blocking.entered.wait(5)
            for _ in range(5):
                sink.try_emit(type="pipeline.started", data={})
            dropped = {
                str(p.attributes[semconv.TELEMETRY_CAUSE]): p.value
                for p in metric_points(metric_reader, semconv.EVENTS_DROPPED.name)
                if isinstance(p, NumberDataPoint) and p.attributes is not None and p.value
            }
            assert (sink.dropped, dropped) == (3, {semconv.DROP_CAUSE_QUEUE_FULL: 3})
            blocking.release.set()
            assert sink.flush(timeout=5.0)
            assert blocking.seen == ["stageflow.pipeline.created"] + ["stageflow.pipeline.started"] * 2
        finally:
            blocking.release.set()
            sink.shutdown(timeout=5.0)
            provider.shutdown()

    def test_the_callers_dict_is_copied(self, meter_provider: MeterProvider) -> None:
        """Changing the data dict after try_emit changes nothing in the record the thread writes later."""
        blocking = _Blocking()
        exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
        provider = LoggerProvider()
        provider.add_log_record_processor(blocking)
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        sink = OtlpEventSink(logger_provider=provider, meter_provider=meter_provider, log_records=True)
        try:
            sink.try_emit(type="pipeline.created", data={})
            assert blocking.entered.wait(5)
            data: dict[str, object] = {"stage": "a", "n": 1}
            sink.try_emit(type="stage.a.completed", data=data)
            data["n"] = 2
            data["stage"] = "zzz"
            blocking.release.set()
            assert sink.flush(timeout=5.0)
            record = exporter.get_finished_logs()[-1].log_record
            assert (record.body, (record.attributes or {})[semconv.STAGE_NAME]) == (
                {"stage": "a", "n": 1},
                "a",
            )
        finally:
            blocking.release.set()
            sink.shutdown(timeout=5.0)
            provider.shutdown()

    def test_events_after_shutdown_are_dropped_and_counted(self, log_sink: OtlpEventSink) -> None:
        """A shut-down sink accepts nothing more and counts what it refused."""
        log_sink.try_emit(type="pipeline.created", data={})
        assert log_sink.shutdown(timeout=5.0)
        log_sink.try_emit(type="pipeline.started", data={})
        assert log_sink.dropped == 1

    def test_max_buffer_must_be_positive(self) -> None:
        """A zero buffer is rejected with the bad value in the message."""
        with pytest.raises(ValueError, match="max_buffer must be at least 1, got 0"):
            OtlpEventSink(max_buffer=0)


class _Exploding(LogRecordProcessor):
    """A processor that raises on every record."""

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        raise RuntimeError("processor down")

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class TestFailureIsolation:
    async def test_a_failing_logger_never_reaches_the_run(
        self, caplog: pytest.LogCaptureFixture, meter_provider: MeterProvider
    ) -> None:
        """Runs succeed while every record fails; the failure is logged once."""
        provider = LoggerProvider()
        provider.add_log_record_processor(_Exploding())
        sink = OtlpEventSink(logger_provider=provider, meter_provider=meter_provider, log_records=True)
        graph = Pipeline(name="p").with_stage("greet", ok, StageKind.TRANSFORM).build()
        try:
            with caplog.at_level(logging.ERROR, logger="stageflow_otel"):
                results = await asyncio.gather(
                    graph.run(entry_ctx(sink=sink)), graph.run(entry_ctx(sink=sink))
                )
                assert sink.flush(timeout=5.0)
        finally:
            sink.shutdown(timeout=5.0)
            provider.shutdown()
        assert [r.status.value for result in results for r in result.values()] == ["ok", "ok"]
        assert [r.message for r in caplog.records if r.name == "stageflow_otel"] == [
            "stageflow_otel: the OTLP event sink failed (further failures not logged): "
            "RuntimeError('processor down')"
        ]

    def test_try_emit_without_a_loop_or_provider_is_safe(self) -> None:
        """With only the global no-op providers, try_emit works from plain threads too."""
        sink = OtlpEventSink()
        sink.try_emit(type="pipeline.created", data=None)
        assert sink.flush(timeout=5.0)
        assert sink.shutdown(timeout=5.0)
