"""Run stores and OpenTelemetry: the trace id each recorded run keeps, and the run-store metrics."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from stageflow import InMemoryRunStore, Pipeline, RunStoreWrite, StageContext, StageKind, StageOutput
from stageflow_otel import RunStoreMetrics, TracingInterceptor
from tests._support import make_ctx

from .conftest import metric_points

CAUSES = ("error", "timeout", "unavailable")
"""Why a run store drops records, as ``stageflow.store.records.dropped`` counts them (sorted)."""


async def ok(ctx: StageContext) -> StageOutput:
    return StageOutput.ok()


def one_stage() -> Pipeline:
    return Pipeline(name="one").with_stage("a", ok, StageKind.WORK)


class TestTraceId:
    async def test_a_traced_run_is_recorded_with_its_trace_id(
        self, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
    ) -> None:
        """The stored run carries the trace id of its run span."""
        store = InMemoryRunStore()
        graph = one_stage().build([TracingInterceptor(tracer_provider)], run_store=store)
        results = await graph.run(make_ctx())
        run_span = next(s for s in span_exporter.get_finished_spans() if s.name == "pipeline one")
        assert run_span.context is not None
        record = await store.get_run(results.run_id)
        assert record is not None and record.trace_id == format(run_span.context.trace_id, "032x")

    async def test_a_run_that_is_not_sampled_keeps_no_trace_id(self) -> None:
        """A run whose trace is not exported (sampled out) keeps no trace id: a link would lead nowhere."""
        store = InMemoryRunStore()
        provider = TracerProvider(sampler=ALWAYS_OFF)
        graph = one_stage().build([TracingInterceptor(provider)], run_store=store)
        results = await graph.run(make_ctx())
        record = await store.get_run(results.run_id)
        assert record is not None and record.trace_id is None
        provider.shutdown()


class TestRunStoreMetrics:
    async def test_writes_and_drops_are_exported(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """Every write lands in the duration histogram; drops count by cause, every cause starting at 0."""
        observe = RunStoreMetrics(meter_provider=meter_provider)
        store = InMemoryRunStore(observer=observe)
        graph = one_stage().build(run_store=store)
        await graph.run(make_ctx())
        observe(RunStoreWrite("postgresql", 0.25, "timeout"))
        observe(RunStoreWrite("postgresql", 0.5, "timeout"))
        observe(RunStoreWrite("postgresql", 0.01, None))
        durations = metric_points(metric_reader, "stageflow.store.write.duration")
        assert sorted(
            (dict(p.attributes or {})["stageflow.store.kind"], p.count)
            for p in durations
            if isinstance(p, HistogramDataPoint)
        ) == [
            ("memory", 1),
            ("postgresql", 3),
        ]
        dropped = metric_points(metric_reader, "stageflow.store.records.dropped")
        assert sorted(
            (dict(p.attributes or {})["stageflow.store.kind"], dict(p.attributes or {})["cause"], p.value)
            for p in dropped
            if isinstance(p, NumberDataPoint)
        ) == [("memory", cause, 0) for cause in CAUSES] + [
            ("postgresql", cause, 2 if cause == "timeout" else 0) for cause in CAUSES
        ]
