"""Sync stages as telemetry, with the real SDK: dispatch time on the span, its event and a histogram; work a
cancelled hop stopped or abandoned on the span, its event and ``stageflow.stage.abandoned``."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import threading

from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stageflow import InMemoryEventSink, Pipeline, PipelineFailedError, StageContext, StageKind, StageOutput
from stageflow.interceptors import Interceptor
from stageflow_otel import OtlpEventSink, semconv
from tests._support import Tee

from .conftest import by_name, entry_ctx, metric_points, span_event

HANG_GUARD = 30.0
"""Seconds after which a wait counts as a hang (never reached when the code works)."""


async def fetch(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(n=1)


def parse(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(n=ctx.inputs.get_from("fetch", "n") + 1)


class TestDispatch:
    async def test_dispatch_time_is_on_the_span_the_event_and_the_histogram(
        self,
        interceptors: list[Interceptor],
        span_exporter: InMemorySpanExporter,
        metric_reader: InMemoryMetricReader,
        sink: OtlpEventSink,
    ) -> None:
        """A sync stage's dispatch time, exactly as its result says, on its span, its completed event and
        the histogram; the async stage has none of them."""
        graph = (
            Pipeline(name="hops")
            .with_stage("fetch", fetch, StageKind.ENRICH)
            .with_stage("parse", parse, StageKind.TRANSFORM, dependencies=("fetch",))
            .build(interceptors=interceptors)
        )
        stream = InMemoryEventSink()
        results = await graph.run(entry_ctx(sink=Tee(stream, sink)))
        dispatch = results["parse"].dispatch
        assert dispatch > 0.0
        assert [e.data["dispatch"] for e in stream.of_type("stage.parse.completed")] == [dispatch]
        spans = by_name(span_exporter.get_finished_spans())
        parse_span, fetch_span = spans["stage parse"], spans["stage fetch"]
        assert (parse_span.attributes or {})[semconv.STAGE_DISPATCH_DURATION] == round(dispatch, 6)
        assert span_event(parse_span, "stageflow.stage.completed")[semconv.STAGE_DISPATCH_DURATION] == round(
            dispatch, 6
        )
        assert semconv.STAGE_DISPATCH_DURATION not in (fetch_span.attributes or {})
        assert semconv.STAGE_DISPATCH_DURATION not in span_event(fetch_span, "stageflow.stage.completed")
        points = metric_points(metric_reader, semconv.STAGE_DISPATCH_DURATION_METRIC.name)
        assert [
            (dict(p.attributes or {}), p.count, p.sum) for p in points if isinstance(p, HistogramDataPoint)
        ] == [
            (
                {
                    semconv.PIPELINE_NAME: "hops",
                    semconv.STAGE_NAME: "parse",
                    semconv.STAGE_KIND: "transform",
                },
                1,
                dispatch,
            )
        ]
        assert list(points[0].explicit_bounds) == list(semconv.DURATION_BUCKETS)  # type: ignore[union-attr]


class _Blocking:
    """A sync stage that starts, tells the test, and runs until released (or, if ``stoppable``, until the
    run asks it to stop)."""

    def __init__(self, stoppable: bool) -> None:
        self.stoppable = stoppable
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, ctx: StageContext) -> StageOutput:
        self.started.set()
        if self.stoppable:
            while not ctx.stop_requested and not self.release.wait(0.005):
                pass
        else:
            self.release.wait(HANG_GUARD)
        return StageOutput.ok()


class TestCancelledWork:
    @pytest.mark.parametrize(("stoppable", "work"), [(False, "abandoned"), (True, "stopped")])
    async def test_what_became_of_the_work_is_on_the_span_the_event_and_the_counter(
        self,
        interceptors: list[Interceptor],
        span_exporter: InMemorySpanExporter,
        metric_reader: InMemoryMetricReader,
        sink: OtlpEventSink,
        stoppable: bool,
        work: str,
    ) -> None:
        """Fail-fast cancels a sync stage's hop: work that ends within the grace period was stopped, work
        still running after it was abandoned (counted once in stageflow.stage.abandoned)."""
        slow = _Blocking(stoppable)

        async def fail(ctx: StageContext) -> StageOutput:
            await asyncio.to_thread(slow.started.wait, HANG_GUARD)
            raise RuntimeError("boom")

        graph = (
            Pipeline(name="hops")
            .with_stage("slow", slow, StageKind.TRANSFORM)
            .with_stage("fail", fail, StageKind.GUARD)
            .build(
                interceptors=interceptors,
                cancel_grace=0.05 if not stoppable else HANG_GUARD,
            )
        )
        stream = InMemoryEventSink()
        try:
            with pytest.raises(PipelineFailedError) as raised:
                await graph.run(entry_ctx(sink=Tee(stream, sink)))
        finally:
            slow.release.set()
        assert raised.value.results["slow"].work == work
        assert [e.data["work"] for e in stream.of_type("stage.slow.cancelled")] == [work]
        span = by_name(span_exporter.get_finished_spans())["stage slow"]
        assert (span.attributes or {})[semconv.STAGE_WORK] == work
        assert span_event(span, "stageflow.stage.cancelled")[semconv.STAGE_WORK] == work
        counted = [
            (dict(p.attributes or {}), p.value)
            for p in metric_points(metric_reader, semconv.STAGE_ABANDONED.name)
            if isinstance(p, NumberDataPoint)
        ]
        expected = {
            semconv.PIPELINE_NAME: "hops",
            semconv.STAGE_NAME: "slow",
            semconv.STAGE_KIND: "transform",
        }
        assert counted == ([(expected, 1)] if work == "abandoned" else [])
        assert metric_points(metric_reader, semconv.STAGE_DISPATCH_DURATION_METRIC.name) == []
