"""setup() and the loop monitor: lag, busy share and blocks as metrics, a block as its stage's span event."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import logging
import sys
import time
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stageflow
from stageflow import (
    InMemoryEventSink,
    StageContext,
    StageOutput,
)
from stageflow_otel import OtlpEventSink, TracingInterceptor, semconv, setup
from stageflow_otel._loop import LoopTelemetry
from tests._support import Tee

from .conftest import entry_ctx, metric_points, one_stage_graph

BLOCK = 0.15
"""Seconds the blocking stage holds the event loop (three times the monitor's 50 ms threshold)."""
HANG_GUARD = 30.0
"""Seconds after which a wait counts as a hang (never reached when the code works)."""


async def block(ctx: StageContext) -> StageOutput:
    line = sys._getframe().f_lineno + 1
    time.sleep(BLOCK)  # noqa: ASYNC251 - the mistake the monitor is for: blocking code in an async stage
    return StageOutput.ok(line=line)


class TestLoopMonitorFromSetup:
    async def test_a_block_is_a_span_event_on_its_stage_and_every_figure_a_metric(
        self,
        otel_env: pytest.MonkeyPatch,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
    ) -> None:
        """The stage that slept on the loop gets a stageflow.stage.loop_blocked span event with the block's
        duration and code location; the block histogram has it by pipeline and stage; the lag histogram
        and the busy-share gauge have figures; shutdown() stops the monitor."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        reader = InMemoryMetricReader()
        telemetry = setup("loops", set_global=False, metric_readers=[reader], loop_monitor=True)
        try:
            monitor = stageflow.get_loop_monitor()
            assert monitor is not None
            graph = one_stage_graph("loops", "block", block, TracingInterceptor(tracer_provider))
            results = await graph.run(entry_ctx(sink=telemetry.event_sink))
            blocks = metric_points(reader, semconv.STAGE_LOOP_BLOCK_DURATION_METRIC.name)
            lags = metric_points(reader, semconv.LOOP_LAG.name)
            utilization = metric_points(reader, semconv.LOOP_UTILIZATION.name)
        finally:
            telemetry.shutdown(5.0)
        assert stageflow.get_loop_monitor() is None
        output = results["block"].output
        assert output is not None
        (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "stage block"]
        events = [dict(e.attributes or {}) for e in span.events if e.name == "stageflow.stage.loop_blocked"]
        assert len(events) == 1
        (seen,) = events
        duration = seen.pop(semconv.STAGE_LOOP_BLOCK_DURATION)
        assert isinstance(duration, float)
        # the core measures a block as the heartbeat's lag (its accuracy is the core's to test): over the
        # threshold, and the histogram holds the very value the span event does
        assert monitor.threshold < duration < BLOCK + 5.0
        assert seen == {
            semconv.EVENT_TYPE: "stage.block.loop_blocked",
            semconv.STAGE_NAME: "block",
            semconv.STAGE_KIND: "transform",
            semconv.CODE_FILE_PATH: __file__,
            semconv.CODE_LINE_NUMBER: output.data["line"],
        }
        assert [e.name for e in span.events] == [
            "stageflow.stage.started",
            "stageflow.stage.loop_blocked",
            "stageflow.stage.completed",
        ]
        histograms = [
            (dict(p.attributes or {}), p.count, round(p.sum, 6))
            for p in blocks
            if isinstance(p, HistogramDataPoint)
        ]
        assert histograms == [({semconv.PIPELINE_NAME: "loops", semconv.STAGE_NAME: "block"}, 1, duration)]
        (lag,) = lags
        assert isinstance(lag, HistogramDataPoint)
        assert (dict(lag.attributes or {}), lag.count >= 1, lag.max >= duration) == (
            {},
            True,
            True,
        )
        assert list(lag.explicit_bounds) == list(semconv.DURATION_BUCKETS)
        (busy,) = utilization
        assert isinstance(busy, NumberDataPoint)
        assert (dict(busy.attributes or {}), 0.0 <= busy.value <= 1.0) == ({}, True)

    def test_on_by_default_off_by_the_environment(self, otel_env: pytest.MonkeyPatch) -> None:
        """Without STAGEFLOW_LOOP_MONITOR setup() starts the monitor; ``false`` leaves it off; the argument
        wins over the variable."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        seen = []
        otel_env.delenv("STAGEFLOW_LOOP_MONITOR")
        for variable, argument in ((None, None), ("false", None), ("false", True), ("true", False)):
            if variable is not None:
                otel_env.setenv("STAGEFLOW_LOOP_MONITOR", variable)
            telemetry = setup("loops", set_global=False, loop_monitor=argument)
            seen.append(stageflow.get_loop_monitor() is not None)
            telemetry.shutdown(5.0)
            assert stageflow.get_loop_monitor() is None
        assert seen == [True, False, True, False]

    def test_the_latest_setup_owns_the_monitor_until_its_shutdown(self, otel_env: pytest.MonkeyPatch) -> None:
        """A second setup() replaces the first's monitor; the first's shutdown leaves the second's on."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        first = setup("one", set_global=False, loop_monitor=True)
        first_monitor = stageflow.get_loop_monitor()
        second = setup("two", set_global=False, loop_monitor=True)
        second_monitor = stageflow.get_loop_monitor()
        first.shutdown(5.0)
        kept = stageflow.get_loop_monitor()
        second.shutdown(5.0)
        assert first_monitor is not None and second_monitor is not None
        assert first_monitor is not second_monitor
        assert (kept, stageflow.get_loop_monitor()) == (second_monitor, None)


class OnBlock:
    """A sink that sets ``reported`` when a ``loop_blocked`` event arrives."""

    def __init__(self, reported: asyncio.Event) -> None:
        self.reported = reported

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        if type.endswith(".loop_blocked"):
            self.reported.set()


class TestBlockReportedByTheHeartbeat:
    async def test_a_block_found_after_the_stage_moved_on_still_lands_on_its_span_and_trace(
        self,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
        meter_provider: MeterProvider,
        logger_provider: LoggerProvider,
        log_exporter: InMemoryLogRecordExporter,
    ) -> None:
        """A stage that blocks and then awaits is reported by the monitor's heartbeat, outside the run's
        context: the event still becomes a span event on the stage's span, and its log record carries
        that span's trace context."""
        sink = OtlpEventSink(meter_provider=meter_provider, logger_provider=logger_provider, log_records=True)
        stream = InMemoryEventSink()
        reported = asyncio.Event()
        loop_telemetry = LoopTelemetry(meter_provider)

        async def block_then_wait(ctx: StageContext) -> StageOutput:
            time.sleep(BLOCK)  # noqa: ASYNC251 - blocks the loop; the heartbeat reports it once this awaits
            await asyncio.wait_for(reported.wait(), HANG_GUARD)
            return StageOutput.ok()

        graph = one_stage_graph("loops", "slow", block_then_wait, TracingInterceptor(tracer_provider))
        loop_telemetry.start()
        try:
            await graph.run(entry_ctx(sink=Tee(stream, sink, OnBlock(reported))))
        finally:
            loop_telemetry.stop()
            assert sink.flush(HANG_GUARD)
            sink.shutdown(5.0)
        (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "stage slow"]
        assert [e.name for e in span.events] == [
            "stageflow.stage.started",
            "stageflow.stage.loop_blocked",
            "stageflow.stage.completed",
        ]
        records = [
            r.log_record
            for r in log_exporter.get_finished_logs()
            if (r.log_record.attributes or {}).get(semconv.EVENT_TYPE) == "stage.slow.loop_blocked"
        ]
        assert [(r.trace_id, r.span_id) for r in records] == [(span.context.trace_id, span.context.span_id)]


class TestBlocksOutsideStages:
    def test_a_block_no_stage_ran_is_recorded_without_stage_attributes(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """Code outside any stage held the loop: the histogram records the block with no attributes."""
        loop_telemetry = LoopTelemetry(meter_provider)
        loop_telemetry.monitor.on_block(stageflow.LoopBlock(0.2, "/app/server.py", 12))  # type: ignore[misc]
        loop_telemetry.monitor.on_block(  # type: ignore[misc]
            stageflow.LoopBlock(0.3, "/app/embed.py", 41, "embed", "rag", "run-1")
        )
        points = metric_points(metric_reader, semconv.STAGE_LOOP_BLOCK_DURATION_METRIC.name)
        assert sorted(
            (sorted((p.attributes or {}).items()), p.count, p.sum)
            for p in points
            if isinstance(p, HistogramDataPoint)
        ) == [
            ([], 1, 0.2),
            ([(semconv.PIPELINE_NAME, "rag"), (semconv.STAGE_NAME, "embed")], 1, 0.3),
        ]


class _Broken:
    def record(self, *args: object) -> None:
        raise RuntimeError("the SDK broke")


class TestSdkFailures:
    def test_an_sdk_that_raises_never_reaches_the_loop_and_is_logged_once(
        self, meter_provider: MeterProvider, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Recording lag or a block that raises in the SDK is swallowed; one warning says figures are
        missing."""
        loop_telemetry = LoopTelemetry(meter_provider)
        loop_telemetry._lag = _Broken()  # type: ignore[assignment]
        loop_telemetry._blocks = _Broken()  # type: ignore[assignment]
        with caplog.at_level(logging.WARNING, logger="stageflow_otel"):
            loop_telemetry._on_lag(0.001)
            loop_telemetry._on_block(stageflow.LoopBlock(0.2, "/app/server.py", 12))
            loop_telemetry._on_lag(0.002)
        assert [r.getMessage() for r in caplog.records] == [
            "stageflow_otel: recording the loop monitor's figures failed: RuntimeError('the SDK broke'); "
            "some are missing (logged once)"
        ]
