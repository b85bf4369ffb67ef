"""Streaming stages through OpenTelemetry: span attributes, one first-chunk span event, and the histograms.

The engine's monotonic clock is replaced by a controlled one, so every time to first chunk, time per chunk
and time to first output is an exact value.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
from collections.abc import AsyncIterator, Callable

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stageflow import (
    InMemoryEventSink,
    Pipeline,
    PipelineFailedError,
    RunResult,
    StageContext,
    StageOutput,
    Streaming,
)
from stageflow_otel import MetricsInterceptor, OtlpEventSink, TracingInterceptor, semconv
from stageflow_otel._setup import _histogram_views
from tests._stages import T, voice
from tests._support import FakeClock, Tee

from .conftest import Traced, by_name, entry_ctx, metric_points

E = semconv.EVENTS


def histograms(reader: InMemoryMetricReader, name: str) -> dict[str | None, HistogramDataPoint]:
    """The points of histogram ``name`` by stage name (``None`` for points without one)."""
    out: dict[str | None, HistogramDataPoint] = {}
    for point in metric_points(reader, name):
        assert isinstance(point, HistogramDataPoint)
        stage = (point.attributes or {}).get(semconv.STAGE_NAME)
        out[None if stage is None else str(stage)] = point
    return out


def only_point(reader: InMemoryMetricReader, name: str) -> HistogramDataPoint:
    """The one point of histogram ``name`` (fails when it has none or several)."""
    [point] = metric_points(reader, name)
    assert isinstance(point, HistogramDataPoint)
    return point


def fails_after_first_chunk(
    clock: FakeClock, seconds: float, chunk: str, error: Exception
) -> Callable[[StageContext], AsyncIterator[str]]:
    """A streaming stage that yields ``chunk`` ``seconds`` after it started, then raises ``error``."""

    async def stream(ctx: StageContext) -> AsyncIterator[str]:
        clock.now += seconds
        yield chunk
        raise error

    return stream


class TestSpans:
    async def test_a_streaming_stage_span_has_one_first_chunk_event_and_its_measurements(
        self, clock: FakeClock, traced: Traced, sink: OtlpEventSink
    ) -> None:
        """The llm span gets one first_chunk span event at the core's first_chunk event, and its counts."""
        stream = InMemoryEventSink()
        result = await traced.build(voice(clock)).run(entry_ctx(sink=Tee(stream, sink)))
        spans = traced.spans()
        llm = spans["stage llm"]
        assert [(e.name, (e.attributes or {})[semconv.EVENT_TYPE]) for e in llm.events] == [
            (E["stage.started"], "stage.llm.started"),
            (E["stage.first_chunk"], "stage.llm.first_chunk"),
            (E["stage.completed"], "stage.llm.completed"),
        ]
        [first] = [e for e in stream.events if e.type == "stage.llm.first_chunk"]
        timestamp = first.data["timestamp"]
        assert isinstance(timestamp, float)
        assert llm.events[1].timestamp == int(timestamp * 1e9)
        assert dict(llm.events[1].attributes or {}) == {
            semconv.EVENT_TYPE: "stage.llm.first_chunk",
            semconv.STAGE_NAME: "llm",
            semconv.STAGE_KIND: "transform",
            semconv.STAGE_TIME_TO_FIRST_CHUNK: 0.25,
        }
        measured = {
            k: (llm.attributes or {}).get(k)
            for k in (
                semconv.STAGE_CHUNKS,
                semconv.STAGE_TIME_TO_FIRST_CHUNK,
                semconv.STAGE_TIME_PER_OUTPUT_CHUNK,
            )
        }
        # between its first and last chunk: tts's 0.0625 s for the first chunk, then 0.125 s per chunk
        assert measured == {
            semconv.STAGE_CHUNKS: 4,
            semconv.STAGE_TIME_TO_FIRST_CHUNK: 0.25,
            semconv.STAGE_TIME_PER_OUTPUT_CHUNK: 0.145833,  # seconds, to the microsecond
        }
        assert result["llm"].time_per_output_chunk == (0.0625 + 3 * 0.125) / 3
        tts = spans["stage tts"]
        assert [e.name for e in tts.events].count(E["stage.first_chunk"]) == 1
        assert (tts.attributes or {})[semconv.STAGE_CHUNKS] == 4
        assert (tts.attributes or {})[semconv.STAGE_TIME_TO_FIRST_CHUNK] == 0.0625
        # each later chunk waits for llm's next token: 0.125 s, then 0.0625 s to speak it
        assert (tts.attributes or {})[semconv.STAGE_TIME_PER_OUTPUT_CHUNK] == 0.1875
        stt = spans["stage stt"]
        assert [e.name for e in stt.events] == [E["stage.started"], E["stage.completed"]]
        assert semconv.STAGE_CHUNKS not in (stt.attributes or {})
        run = spans["pipeline voice"]
        # stt 0.5 s, llm's first chunk 0.25 s later, tts's first chunk 0.0625 s after that
        assert result.first_output_path == (("stt", 0.5), ("llm", 0.25), ("tts", 0.0625))
        assert (run.attributes or {})[semconv.RUN_TIME_TO_FIRST_OUTPUT] == 0.8125

    async def test_a_thousand_chunks_make_one_span_event(self, traced: Traced, sink: OtlpEventSink) -> None:
        """A stream of 1,000 chunks puts exactly one first_chunk event on its span, never one per chunk."""

        async def tokens(ctx: StageContext) -> AsyncIterator[int]:
            for i in range(1000):
                yield i

        async def reader(ctx: StageContext) -> StageOutput:
            n = 0
            async for _ in ctx.inputs.stream("tokens"):
                n += 1
            return StageOutput.ok(n=n)

        graph = traced.build(
            Pipeline("p")
            .with_stage("tokens", tokens, T, stream=Streaming(collect=False))
            .with_stage("reader", reader, T, dependencies=("tokens",), streams=("tokens",))
        )
        await graph.run(entry_ctx(sink=sink))
        span = traced.spans()["stage tokens"]
        assert [e.name for e in span.events] == [
            E["stage.started"],
            E["stage.first_chunk"],
            E["stage.completed"],
        ]
        assert (span.attributes or {})[semconv.STAGE_CHUNKS] == 1000

    async def test_a_stream_failing_after_its_first_chunk_keeps_its_time_to_first_chunk(
        self, clock: FakeClock, traced: Traced, sink: OtlpEventSink
    ) -> None:
        """A stage failing mid-stream has its first_chunk event and time to first chunk, then its failure."""
        llm = fails_after_first_chunk(clock, 0.5, "Hello", RuntimeError("connection reset"))
        spans = await traced.failed(traced.build(Pipeline("p").with_stage("llm", llm, T)), sink=sink)
        span = spans["stage llm"]
        assert [e.name for e in span.events] == [
            E["stage.started"],
            E["stage.first_chunk"],
            "exception",
            E["stage.failed"],
        ]
        assert (span.attributes or {})[semconv.STAGE_TIME_TO_FIRST_CHUNK] == 0.5
        assert (span.attributes or {})[semconv.STAGE_RESULT] == semconv.RESULT_ERROR

    async def test_a_pipeline_without_streaming_stages_has_no_time_to_first_output(
        self, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter, sink: OtlpEventSink
    ) -> None:
        """Runs of pipelines that do not stream keep their run span as before: no time to first output."""

        async def ok(ctx: StageContext) -> StageOutput:
            return StageOutput.ok()

        graph = Pipeline("p").with_stage("a", ok, T).build(interceptors=[TracingInterceptor(tracer_provider)])
        await graph.run(entry_ctx(sink=sink))
        run = by_name(span_exporter.get_finished_spans())["pipeline p"]
        assert semconv.RUN_TIME_TO_FIRST_OUTPUT not in (run.attributes or {})


class TestEventViews:
    async def test_log_records_and_the_event_counter_count_one_first_chunk_per_streaming_stage(
        self,
        clock: FakeClock,
        meter_provider: MeterProvider,
        metric_reader: InMemoryMetricReader,
        logger_provider: LoggerProvider,
        log_exporter: InMemoryLogRecordExporter,
    ) -> None:
        """With log records on, each streaming stage's first chunk is one INFO record whose attributes and
        body carry its time to first chunk; the closing record carries the chunk count and time per chunk;
        stageflow.events.emitted counts one first_chunk per streaming stage."""
        sink = OtlpEventSink(meter_provider=meter_provider, logger_provider=logger_provider, log_records=True)
        try:
            await voice(clock).build().run(entry_ctx(sink=sink))
            assert sink.flush(timeout=5.0)
        finally:
            sink.shutdown(timeout=5.0)
        records = [r.log_record for r in log_exporter.get_finished_logs()]
        first = [r for r in records if r.event_name == E["stage.first_chunk"]]
        assert [
            (
                dict(r.attributes or {})[semconv.STAGE_NAME],
                r.severity_text,
                (r.attributes or {})[semconv.STAGE_TIME_TO_FIRST_CHUNK],
            )
            for r in first
        ] == [("llm", "INFO", 0.25), ("tts", "INFO", 0.0625)]
        assert [
            {k: v for k, v in dict(r.body).items() if k == "time_to_first_chunk"}  # type: ignore[arg-type]
            for r in first
        ] == [{"time_to_first_chunk": 0.25}, {"time_to_first_chunk": 0.0625}]
        [closing] = [
            r
            for r in records
            if r.event_name == E["stage.completed"] and (r.attributes or {})[semconv.STAGE_NAME] == "llm"
        ]
        assert dict(closing.body)["time_per_output_chunk"] == 0.145833  # type: ignore[arg-type]
        assert (closing.attributes or {})[semconv.STAGE_CHUNKS] == 4
        counted = {
            (p.attributes or {}).get(semconv.STAGE_NAME): p.value
            for p in metric_points(metric_reader, semconv.EVENTS_EMITTED.name)
            if isinstance(p, NumberDataPoint)
            and (p.attributes or {}).get(semconv.EVENT_NAME) == E["stage.first_chunk"]
        }
        assert counted == {"llm": 1, "tts": 1}


class TestHistograms:
    async def test_time_to_first_chunk_per_chunk_and_first_output_exact(
        self, clock: FakeClock, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """Each streaming stage's TTFC and time per chunk, and the run's time to first output, are recorded
        once, with exact values, the voice-latency buckets and no run id."""
        graph = voice(clock).build(interceptors=[MetricsInterceptor(meter_provider)])
        await graph.run(entry_ctx())
        first = histograms(metric_reader, semconv.STAGE_TIME_TO_FIRST_CHUNK)
        assert {k: (p.count, p.sum) for k, p in first.items()} == {"llm": (1, 0.25), "tts": (1, 0.0625)}
        per = histograms(metric_reader, semconv.STAGE_TIME_PER_OUTPUT_CHUNK)
        assert {k: (p.count, p.sum) for k, p in per.items()} == {
            "llm": (1, (0.0625 + 3 * 0.125) / 3),
            "tts": (1, 0.1875),
        }
        runs = histograms(metric_reader, semconv.PIPELINE_RUN_TIME_TO_FIRST_OUTPUT.name)
        assert {k: (p.count, p.sum, dict(p.attributes or {})) for k, p in runs.items()} == {
            None: (1, 0.8125, {semconv.PIPELINE_NAME: "voice"})
        }
        points = [*first.values(), *per.values(), *runs.values()]
        assert {tuple(p.explicit_bounds) for p in points} == {semconv.FIRST_CHUNK_BUCKETS}
        # 0.25 s falls in (0.16, 0.32]; 0.0625 s in (0.04, 0.08]
        assert list(first["llm"].bucket_counts) == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        assert list(first["tts"].bucket_counts) == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        assert dict(first["llm"].attributes or {}) == {
            semconv.PIPELINE_NAME: "voice",
            semconv.STAGE_NAME: "llm",
            semconv.STAGE_KIND: "transform",
        }
        assert metric_points(metric_reader, semconv.GEN_AI_TIME_TO_FIRST_CHUNK.name) == []

    async def test_without_consumers_streaming_still_measures_the_first_output_at_the_final_stage(
        self, clock: FakeClock, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """The same pipeline with tts waiting for the whole reply: its first audio comes after llm's end."""
        graph = voice(clock, streamed=False).build(interceptors=[MetricsInterceptor(meter_provider)])
        result: RunResult = await graph.run(entry_ctx())
        runs = histograms(metric_reader, semconv.PIPELINE_RUN_TIME_TO_FIRST_OUTPUT.name)
        # stt 0.5 s, the whole llm reply 0.25 + 3 * 0.125 s, then tts's first chunk 0.0625 s
        assert result.time_to_first_output == 0.5 + 0.625 + 0.0625
        assert [(p.count, p.sum) for p in runs.values()] == [(1, 1.1875)]

    async def test_a_gen_ai_stage_also_records_the_gen_ai_time_to_first_chunk(
        self, clock: FakeClock, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """A stage with gen_ai.operation.name in its config records the GenAI metric with its GenAI
        attributes only, in the GenAI convention's buckets; values of the wrong type are left out."""
        config = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "server.address": "api.openai.com",
            "server.port": "443",  # not an int: left out
            "temperature": 0.2,
        }
        graph = voice(clock, llm_config=config).build(interceptors=[MetricsInterceptor(meter_provider)])
        await graph.run(entry_ctx())
        point = only_point(metric_reader, semconv.GEN_AI_TIME_TO_FIRST_CHUNK.name)
        assert (point.count, point.sum) == (1, 0.25)
        assert dict(point.attributes or {}) == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "server.address": "api.openai.com",
        }
        # the GenAI conventions' boundaries 0.01, 0.02, 0.04, ... 81.92 (doubling a float is exact)
        assert tuple(point.explicit_bounds) == tuple(0.01 * 2**i for i in range(14))

    async def test_a_gen_ai_stage_failing_mid_stream_records_its_error_type(
        self, clock: FakeClock, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """A GenAI stream that failed after its first chunk is recorded with error.type and server.port."""
        llm = fails_after_first_chunk(clock, 0.125, "Hel", ConnectionResetError("peer went away"))
        graph = (
            Pipeline("p")
            .with_stage("llm", llm, T, config={"gen_ai.operation.name": "chat", "server.port": 8443})
            .build(interceptors=[MetricsInterceptor(meter_provider)])
        )
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx())
        point = only_point(metric_reader, semconv.GEN_AI_TIME_TO_FIRST_CHUNK.name)
        assert (point.count, point.sum) == (1, 0.125)
        assert dict(point.attributes or {}) == {
            "gen_ai.operation.name": "chat",
            "server.port": 8443,
            "error.type": "ConnectionResetError",
        }
        first = only_point(metric_reader, semconv.STAGE_TIME_TO_FIRST_CHUNK)
        assert (first.count, first.sum) == (1, 0.125)
        assert metric_points(metric_reader, semconv.PIPELINE_RUN_TIME_TO_FIRST_OUTPUT.name) == []

    async def test_a_gen_ai_stream_its_consumer_stopped_is_recorded_as_cancelled(
        self, clock: FakeClock, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """A GenAI producer cancelled mid-stream by its failing consumer keeps its time to first chunk,
        recorded with ``error.type`` ``cancelled``."""

        async def llm(ctx: StageContext) -> AsyncIterator[str]:
            clock.now += 0.25
            yield "Hello."
            await asyncio.Event().wait()  # more tokens would come: the run stops first

        async def guard(ctx: StageContext) -> StageOutput:
            async for _ in ctx.inputs.stream("llm"):
                raise ValueError("rejected")
            return StageOutput.ok()

        graph = (
            Pipeline("p")
            .with_stage("llm", llm, T, config={"gen_ai.operation.name": "chat"})
            .with_stage("guard", guard, T, dependencies=("llm",), streams=("llm",))
            .build(interceptors=[MetricsInterceptor(meter_provider)])
        )
        with pytest.raises(PipelineFailedError) as caught:
            await graph.run(entry_ctx())
        assert caught.value.stage == "guard"
        point = only_point(metric_reader, semconv.GEN_AI_TIME_TO_FIRST_CHUNK.name)
        assert ((point.count, point.sum), dict(point.attributes or {})) == (
            (1, 0.25),
            {"gen_ai.operation.name": "chat", "error.type": semconv.ERROR_TYPE_CANCELLED},
        )

    async def test_a_stream_that_yields_nothing_records_no_time_to_first_chunk(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """No first chunk, no measurement: the histograms stay empty for that stage."""

        async def silent(ctx: StageContext) -> AsyncIterator[str]:
            return
            yield  # an async generator that yields nothing

        graph = (
            Pipeline("p")
            .with_stage("silent", silent, T)
            .build(interceptors=[MetricsInterceptor(meter_provider)])
        )
        await graph.run(entry_ctx())
        assert metric_points(metric_reader, semconv.STAGE_TIME_TO_FIRST_CHUNK) == []
        assert metric_points(metric_reader, semconv.STAGE_TIME_PER_OUTPUT_CHUNK) == []

    async def test_setup_views_keep_the_voice_latency_buckets(self, clock: FakeClock) -> None:
        """Through ``setup()``'s views, the first-chunk histograms keep their buckets, durations theirs."""
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader], views=_histogram_views())
        try:
            graph = voice(clock).build(interceptors=[MetricsInterceptor(provider)])
            await graph.run(entry_ctx())
            bounds = {
                name: {tuple(p.explicit_bounds) for p in metric_points(reader, name)}  # type: ignore[union-attr]
                for name in (
                    semconv.STAGE_TIME_TO_FIRST_CHUNK,
                    semconv.PIPELINE_RUN_TIME_TO_FIRST_OUTPUT.name,
                    semconv.STAGE_DURATION.name,
                )
            }
        finally:
            provider.shutdown()
        assert bounds == {
            semconv.STAGE_TIME_TO_FIRST_CHUNK: {semconv.FIRST_CHUNK_BUCKETS},
            semconv.PIPELINE_RUN_TIME_TO_FIRST_OUTPUT.name: {semconv.FIRST_CHUNK_BUCKETS},
            semconv.STAGE_DURATION.name: {semconv.DURATION_BUCKETS},
        }
