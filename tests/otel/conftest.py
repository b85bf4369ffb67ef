"""OpenTelemetry fixtures: a fresh SDK provider per test with an in-memory exporter or reader (C3, C14).

Tests never install global providers. Append new fixtures at the end of this file.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import DataPointT, InMemoryMetricReader, MetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stageflow import (
    ContextSnapshot,
    EventSink,
    Pipeline,
    PipelineFailedError,
    PipelineRunError,
    PipelineTimer,
    RunIdentity,
    StageContext,
    StageGraph,
    StageInputs,
    StageKind,
)
from stageflow.interceptors import Interceptor
from stageflow_otel import MetricsInterceptor, OtlpEventSink, TracingInterceptor
from tests._support import run_fails

if TYPE_CHECKING:
    from .otlp_receiver import OtlpReceiver

__all__ = (
    "by_name",
    "diamond_of",
    "dump_spans",
    "entry_ctx",
    "metric_points",
    "one_stage_graph",
    "span_event",
)


def dump_spans(spans: Sequence[ReadableSpan]) -> list[str]:
    """The span forest as indented lines, children under parents, with links as ``[links: a, b]``.

    Roots are spans whose parent is not among ``spans``. Siblings are ordered by name, then start time.
    """
    by_id = {s.context.span_id: s for s in spans}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent if parent in by_id else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: (s.name, s.start_time or 0)):
            line = "  " * depth + span.name
            if span.links:
                names = [
                    by_id[k.context.span_id].name if k.context.span_id in by_id else "?" for k in span.links
                ]
                line += f" [links: {', '.join(names)}]"
            lines.append(line)
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return lines


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    """The spans by name (names must be unique)."""
    named = {s.name: s for s in spans}
    assert len(named) == len(spans)
    return named


def span_event(span: ReadableSpan, name: str) -> dict[str, Any]:
    """The attributes of the one event called ``name`` on ``span`` (fails when it has none or several)."""
    found = [dict(e.attributes or {}) for e in span.events if e.name == name]
    assert len(found) == 1, (name, [e.name for e in span.events])
    return found[0]


def metric_points(reader: InMemoryMetricReader, name: str) -> list[DataPointT]:
    """Every data point of the metric ``name`` collected now (empty when it has none)."""
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


class _ShutsDown(Protocol):
    def shutdown(self) -> object: ...


_Provider = TypeVar("_Provider", bound=_ShutsDown)
_Processor = TypeVar("_Processor")


def _for_one_test(
    provider: _Provider, add_processor: Callable[[_Processor], object], processor: _Processor
) -> Iterator[_Provider]:
    """The body of an SDK provider fixture: ``provider``, ``processor`` added to it with ``add_processor``,
    for one test; shut down at the test's teardown."""
    add_processor(processor)
    yield provider
    provider.shutdown()


@pytest.fixture(name="span_exporter")
def _span_exporter() -> InMemorySpanExporter:
    """An in-memory span exporter, fed by ``tracer_provider``."""
    return InMemorySpanExporter()


@pytest.fixture(name="tracer_provider")
def _tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A fresh SDK tracer provider exporting synchronously to ``span_exporter``."""
    provider = TracerProvider()
    yield from _for_one_test(provider, provider.add_span_processor, SimpleSpanProcessor(span_exporter))


@pytest.fixture(name="metric_reader")
def _metric_reader() -> InMemoryMetricReader:
    """An in-memory metric reader, attached to ``meter_provider``."""
    return InMemoryMetricReader()


@pytest.fixture(name="meter_provider")
def _meter_provider(metric_reader: MetricReader) -> Iterator[MeterProvider]:
    """A fresh SDK meter provider read by ``metric_reader`` (default trace-based exemplar filter).

    Any reader: ``metric_reader`` is the in-memory one above, except in test_prometheus.py, which overrides
    it with a ``PrometheusMetricReader``."""
    provider = MeterProvider(metric_readers=[metric_reader])
    yield provider
    provider.shutdown()


@pytest.fixture(name="log_exporter")
def _log_exporter() -> InMemoryLogRecordExporter:
    """An in-memory log record exporter, fed by ``logger_provider``."""
    return InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]


@pytest.fixture(name="logger_provider")
def _logger_provider(log_exporter: InMemoryLogRecordExporter) -> Iterator[LoggerProvider]:
    """A fresh SDK logger provider exporting synchronously to ``log_exporter``."""
    provider = LoggerProvider()
    yield from _for_one_test(
        provider, provider.add_log_record_processor, SimpleLogRecordProcessor(log_exporter)
    )


def entry_ctx(metadata: Mapping[str, Any] | None = None, *, sink: EventSink | None = None) -> StageContext:
    """An entry ``StageContext`` for ``StageGraph.run()`` with a fresh run id, the given metadata, and
    ``sink`` as the run's event sink (``None``: the process sink)."""
    snapshot = ContextSnapshot(run_id=RunIdentity(), metadata=dict(metadata or {}))
    return StageContext(snapshot, StageInputs(snapshot), "pipeline_entry", PipelineTimer(), event_sink=sink)


def one_stage_graph(
    pipeline: str,
    name: str,
    stage: Any,
    *interceptors: Interceptor,
    kind: StageKind = StageKind.TRANSFORM,
    **options: Any,
) -> StageGraph:
    """Pipeline ``pipeline`` of the one stage ``name`` running ``stage`` (a ``kind`` stage, ``options``
    going to ``with_stage``), built with ``interceptors``."""
    return (
        Pipeline(name=pipeline)
        .with_stage(name, stage, kind, **options)
        .build(interceptors=list(interceptors))
    )


def diamond_of(fn: Any) -> Pipeline:
    """Pipeline ``demo``: ``a -> (b, c) -> d``, every stage running ``fn``, b and c ENRICH stages."""
    return (
        Pipeline(name="demo")
        .with_stage("a", fn, StageKind.TRANSFORM)
        .with_stage("b", fn, StageKind.ENRICH, dependencies=("a",))
        .with_stage("c", fn, StageKind.ENRICH, dependencies=("a",))
        .with_stage("d", fn, StageKind.TRANSFORM, dependencies=("b", "c"))
    )


@pytest.fixture(name="otel_env")
def _otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A monkeypatch with every ``OTEL_*`` variable (and the sink's switch) removed from the environment.

    So the developer's shell cannot leak in. ``setup()`` starts no loop monitor here (it is process-wide,
    and a block it blames on a stage adds an event): tests of the monitor ask for it.
    """
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("STAGEFLOW_EVENT_LOG_RECORDS", raising=False)
    monkeypatch.setenv("STAGEFLOW_LOOP_MONITOR", "false")
    return monkeypatch


@pytest.fixture(name="sink")
def _otlp_sink(meter_provider: MeterProvider, logger_provider: LoggerProvider) -> Iterator[OtlpEventSink]:
    """The ``OtlpEventSink`` under test, with its defaults (span events on, log records off), on the
    fresh providers; in this folder it takes the place of the suite's in-memory ``sink``."""
    sink = OtlpEventSink(meter_provider=meter_provider, logger_provider=logger_provider)
    yield sink
    sink.shutdown(timeout=5.0)


@pytest.fixture(name="receiver", params=["grpc", "http"], ids=["grpc", "http-protobuf"])
def _receiver(request: pytest.FixtureRequest) -> Iterator[OtlpReceiver]:
    """A running OTLP receiver of each protocol (gRPC keeps gRPC's default 4 MiB message limit), stopped
    at teardown. A file that needs one kind of receiver defines its own ``receiver``."""
    from .otlp_receiver import GrpcReceiver, HttpReceiver

    receiver: OtlpReceiver = GrpcReceiver() if request.param == "grpc" else HttpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(name="log_sink")
def _log_sink(meter_provider: MeterProvider, logger_provider: LoggerProvider) -> Iterator[OtlpEventSink]:
    """An ``OtlpEventSink`` with log records on (and span events), on the fresh providers."""
    sink = OtlpEventSink(meter_provider=meter_provider, logger_provider=logger_provider, log_records=True)
    yield sink
    sink.shutdown(timeout=5.0)


@pytest.fixture(name="interceptors")
def _interceptors(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> list[Interceptor]:
    """A tracing and a metrics interceptor on the fresh providers."""
    return [TracingInterceptor(tracer_provider), MetricsInterceptor(meter_provider)]


class Traced:
    """Pipelines built with a ``TracingInterceptor`` on the test's tracer provider, and the spans they
    ended."""

    def __init__(self, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
        self.provider = provider
        self.exporter = exporter
        self.interceptor = TracingInterceptor(provider)

    def build(self, pipeline: Pipeline) -> StageGraph:
        """``pipeline`` built with the tracing interceptor."""
        return pipeline.build(interceptors=[self.interceptor])

    def finished(self) -> tuple[ReadableSpan, ...]:
        """The spans ended so far, in the order they ended."""
        return self.exporter.get_finished_spans()

    def spans(self) -> dict[str, ReadableSpan]:
        """The spans ended so far by name (names must be unique)."""
        return by_name(self.finished())

    async def failed(
        self,
        graph: StageGraph,
        error: type[PipelineRunError] = PipelineFailedError,
        *,
        sink: EventSink | None = None,
    ) -> dict[str, ReadableSpan]:
        """The spans by name of one run of ``graph`` (its events going to ``sink``), which must raise
        ``error``."""
        await run_fails(graph.run(entry_ctx(sink=sink)), error)
        return self.spans()


@pytest.fixture(name="traced")
def _traced(tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter) -> Traced:
    """Pipelines traced on the fresh tracer provider, and the spans they ended."""
    return Traced(tracer_provider, span_exporter)
