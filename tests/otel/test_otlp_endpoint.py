"""setup() against real OTLP endpoints (gRPC and HTTP receivers on 127.0.0.1), and with the collector down."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from stageflow import (
    EventSink,
    RunResult,
    StageContext,
    StageGraph,
    StageOutput,
)
from stageflow_otel import MetricsInterceptor, Telemetry, TracingInterceptor, semconv, setup

from .conftest import diamond_of, entry_ctx, metric_points
from .otlp_receiver import OtlpReceiver, closed_port

RUNS = 6
STAGES = ("a", "b", "c", "d")


async def quick(ctx: StageContext) -> StageOutput:
    """A stage that yields once and succeeds."""
    await asyncio.sleep(0)
    return StageOutput.ok(done=True)


async def slow(ctx: StageContext) -> StageOutput:
    """A stage that takes a few milliseconds, so export work could show up in its latency."""
    await asyncio.sleep(0.01)
    return StageOutput.ok(done=True)


StageFn = Callable[[StageContext], Awaitable[StageOutput]]


def instrumented(telemetry: Telemetry, stage: StageFn = quick) -> StageGraph:
    """The diamond built with the tracing and metrics interceptors on ``telemetry``'s providers."""
    return diamond_of(stage).build(
        interceptors=[
            TracingInterceptor(telemetry.tracer_provider),
            MetricsInterceptor(telemetry.meter_provider),
        ]
    )


async def run_concurrently(graph: StageGraph, sink: EventSink | None, n: int = RUNS) -> list[RunResult]:
    """``n`` concurrent runs of ``graph``."""
    return await asyncio.gather(*(graph.run(entry_ctx(sink=sink)) for _ in range(n)))


async def run_and_flush(telemetry: Telemetry) -> list[RunResult]:
    """``RUNS`` concurrent runs of the instrumented diamond, to ``telemetry``'s event sink; its telemetry is
    then flushed."""
    results = await run_concurrently(instrumented(telemetry), telemetry.event_sink)
    assert telemetry.force_flush(timeout=10.0)
    return results


def every_span(receiver: OtlpReceiver) -> list[Span]:
    """The spans of ``RUNS`` runs of the diamond, once all of them arrived."""
    assert receiver.wait_for(lambda: len(receiver.spans()) >= RUNS * (1 + len(STAGES)))
    return receiver.spans()


@pytest.fixture(name="telemetry")
def _telemetry(receiver: OtlpReceiver, otel_env: pytest.MonkeyPatch) -> Iterator[Telemetry]:
    """setup() configured only through OTEL_* variables to export to ``receiver``."""
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", receiver.protocol)
    otel_env.setenv("OTEL_SERVICE_NAME", "otlp-test")
    otel_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    telemetry = setup(set_global=False)
    yield telemetry
    telemetry.shutdown(timeout=5.0)


@pytest.fixture(name="telemetry_with_log_records")
def _telemetry_with_log_records(receiver: OtlpReceiver, otel_env: pytest.MonkeyPatch) -> Iterator[Telemetry]:
    """As ``telemetry``, with STAGEFLOW_EVENT_LOG_RECORDS=true: events are log records too."""
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", receiver.protocol)
    otel_env.setenv(semconv.ENV_EVENT_LOG_RECORDS, "true")
    telemetry = setup("otlp-test", set_global=False)
    yield telemetry
    telemetry.shutdown(timeout=5.0)


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind) if kind else None


def _attributes(attributes: Iterable[KeyValue]) -> dict[str, object]:
    return {a.key: _value(a.value) for a in attributes}


def _hex(raw: bytes) -> str:
    return raw.hex()


class TestOtlpExport:
    async def test_every_run_and_stage_arrives_exactly_once(
        self, telemetry: Telemetry, receiver: OtlpReceiver
    ) -> None:
        """N concurrent runs arrive as N run spans, each with one span per stage, in its own trace."""
        results = await run_and_flush(telemetry)
        spans = every_span(receiver)
        runs = [s for s in spans if s.name == "pipeline demo"]
        run_ids = Counter(a.value.string_value for s in runs for a in s.attributes if a.key == semconv.RUN_ID)
        assert run_ids == Counter({str(r.run_id): 1 for r in results})
        by_trace = Counter((_hex(s.trace_id), s.name) for s in spans)
        expected = {
            (_hex(run.trace_id), name)
            for run in runs
            for name in ("pipeline demo", *(f"stage {n}" for n in STAGES))
        }
        assert dict(by_trace) == dict.fromkeys(expected, 1)

    async def test_events_arrive_as_span_events_of_their_spans(
        self, telemetry: Telemetry, receiver: OtlpReceiver
    ) -> None:
        """By default every event travels as a span event on its span, in order, and no log record is sent."""
        results = await run_and_flush(telemetry)
        names = {
            (_attributes(s.attributes)[semconv.RUN_ID], s.name): [
                (e.name, _attributes(e.attributes)[semconv.EVENT_TYPE]) for e in s.events
            ]
            for s in every_span(receiver)
        }
        expected = {}
        for result in results:
            run_id = str(result.run_id)
            expected[run_id, "pipeline demo"] = [
                ("stageflow.pipeline.created", "pipeline.created"),
                ("stageflow.pipeline.started", "pipeline.started"),
                ("stageflow.pipeline.completed", "pipeline.completed"),
            ]
            for stage in STAGES:
                expected[run_id, f"stage {stage}"] = [
                    ("stageflow.stage.started", f"stage.{stage}.started"),
                    ("stageflow.stage.completed", f"stage.{stage}.completed"),
                ]
        assert names == expected
        for span in receiver.spans():
            assert all(
                span.start_time_unix_nano <= e.time_unix_nano <= span.end_time_unix_nano for e in span.events
            )
        assert receiver.log_records() == []

    async def test_event_logs_carry_the_run_trace_ids(
        self, telemetry_with_log_records: Telemetry, receiver: OtlpReceiver
    ) -> None:
        """With log records on, every event after pipeline.created is also a log record in its run's trace,
        with the run span's id, the span event's name and its attributes plus the run id and pipeline."""
        telemetry = telemetry_with_log_records
        await run_and_flush(telemetry)
        per_run = 2 + 2 * len(STAGES) + 1
        assert receiver.wait_for(lambda: len(receiver.log_records()) >= RUNS * per_run)

        spans = receiver.spans()
        run_spans = {
            a.value.string_value: s
            for s in spans
            if s.name == "pipeline demo"
            for a in s.attributes
            if a.key == semconv.RUN_ID
        }
        span_events = {
            (_attributes(s.attributes)[semconv.RUN_ID], _attributes(e.attributes)[semconv.EVENT_TYPE]): (
                e.name,
                _attributes(e.attributes),
            )
            for s in spans
            for e in s.events
        }
        seen: Counter[str] = Counter()
        for record in receiver.log_records():
            attributes = _attributes(record.attributes)
            run_id = attributes.pop(semconv.RUN_ID)
            assert attributes.pop(semconv.PIPELINE_NAME) == "demo"
            run_span = run_spans[str(run_id)]
            seen[record.event_name] += 1
            # pipeline.created too: the run span starts before the run's first event
            assert (record.trace_id, record.span_id) == (run_span.trace_id, run_span.span_id)
            assert span_events[run_id, attributes[semconv.EVENT_TYPE]] == (record.event_name, attributes)
        assert len(span_events) == RUNS * per_run
        assert seen == Counter(
            {
                "stageflow.pipeline.created": RUNS,
                "stageflow.pipeline.started": RUNS,
                "stageflow.stage.started": RUNS * len(STAGES),
                "stageflow.stage.completed": RUNS * len(STAGES),
                "stageflow.pipeline.completed": RUNS,
            }
        )

    async def test_metrics_and_resource_arrive(self, telemetry: Telemetry, receiver: OtlpReceiver) -> None:
        """Run and stage histograms arrive under their semconv names, with the env-configured resource."""
        await run_and_flush(telemetry)
        wanted = {semconv.PIPELINE_RUN_DURATION.name, semconv.STAGE_DURATION.name}
        assert receiver.wait_for(lambda: wanted <= receiver.metric_names())
        stage = next(m for m in receiver.iter_metrics() if m.name == semconv.STAGE_DURATION.name)
        assert (stage.unit, list(stage.histogram.data_points[0].explicit_bounds)) == (
            "s",
            list(semconv.DURATION_BUCKETS),
        )
        attributes = receiver.resource_attributes()
        assert (attributes["service.name"], attributes["deployment.environment.name"]) == (
            "otlp-test",
            "test",
        )


@pytest.fixture(name="down")
def _down(otel_env: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> pytest.MonkeyPatch:
    """OTEL_* pointing every signal at a closed 127.0.0.1 port, exporting every 10 ms."""
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    otel_env.setenv("OTEL_BLRP_SCHEDULE_DELAY", "10")
    otel_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "10")
    return otel_env


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"], ids=["grpc", "http-protobuf"])
class TestCollectorDown:
    async def test_runs_keep_their_latency_and_never_see_an_error(
        self, down: pytest.MonkeyPatch, protocol: str
    ) -> None:
        """With the collector unreachable, instrumented runs succeed and take about as long as bare runs."""
        down.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        telemetry = setup("down", set_global=False)
        try:
            bare, traced = diamond_of(slow).build(), instrumented(telemetry, slow)

            async def timed(graph: StageGraph, sink: EventSink | None) -> float:
                start = time.perf_counter()
                await run_concurrently(graph, sink, 4)
                return time.perf_counter() - start

            bare_times, traced_times = [], []
            for _ in range(6):
                bare_times.append(await timed(bare, None))
                traced_times.append(await timed(traced, telemetry.event_sink))
        finally:
            telemetry.shutdown(timeout=1.0)
        ratio = statistics.median(traced_times) / statistics.median(bare_times)
        assert ratio < 1.5

    def test_shutdown_returns_within_its_timeout(self, down: pytest.MonkeyPatch, protocol: str) -> None:
        """shutdown(1.0) returns False long before the exporters would give up on their own, and counts
        every span it could not send.

        The exporters may retry for an hour, so a shutdown that waited for them would take at least the
        sum of their first five backoffs (1 + 2 + 4 + 8 + 16 s, less 20 % jitter: 24.8 s). The bound
        asserted, 20 s, is twenty times the timeout: no slow machine stretches a bounded join that far,
        and a shutdown ignoring its timeout cannot meet it.
        """
        down.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        down.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3600")
        down.setenv(semconv.ENV_EVENT_LOG_RECORDS, "true")  # so that logs are exported (and fail) too
        telemetry = setup("down", set_global=False)
        results = asyncio.run(run_concurrently(instrumented(telemetry), telemetry.event_sink))
        assert len(results) == RUNS

        start = time.monotonic()
        flushed = telemetry.shutdown(timeout=1.0)
        elapsed = time.monotonic() - start

        assert (flushed, elapsed < 20.0) == (False, True)
        assert telemetry.spans_dropped == RUNS * (1 + len(STAGES))
        assert {k: v > 0 for k, v in telemetry.export_failures.items()} == {
            "traces": True,
            "metrics": True,
            "logs": True,
        }

    def test_export_failures_are_counted_as_metrics(self, down: pytest.MonkeyPatch, protocol: str) -> None:
        """Failed batches show up in export.failures by signal, their spans in spans.dropped by cause."""
        down.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        down.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0.2")
        down.setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")
        reader = InMemoryMetricReader()
        telemetry = setup("down", set_global=False, metric_readers=[reader])
        try:
            asyncio.run(run_concurrently(instrumented(telemetry), telemetry.event_sink, 1))
            assert not telemetry.force_flush(timeout=3.0)
            failures = {
                str(p.attributes[semconv.TELEMETRY_SIGNAL]): p.value
                for p in metric_points(reader, semconv.TELEMETRY_EXPORT_FAILURES.name)
                if isinstance(p, NumberDataPoint) and p.attributes is not None
            }
            dropped = {
                str(p.attributes[semconv.TELEMETRY_CAUSE]): p.value
                for p in metric_points(reader, semconv.TELEMETRY_SPANS_DROPPED.name)
                if isinstance(p, NumberDataPoint) and p.attributes is not None and p.value
            }
        finally:
            telemetry.shutdown(timeout=1.0)
        assert (sorted(failures), dropped) == (
            ["logs", "metrics", "traces"],
            {semconv.DROP_CAUSE_EXPORT_FAILED: 1 + len(STAGES)},
        )
