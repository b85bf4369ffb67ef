"""The event taxonomy onto span events and the stageflow.events.emitted counter, with the real SDK.

It runs past 500 lines because every outcome of the taxonomy is checked event by event against the core event
it came from.

Every run here goes to a tee of an ``InMemoryEventSink`` (the core's event stream, as emitted) and the
``OtlpEventSink`` under test, so each span event is compared with the very event it came from.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
from collections.abc import Sequence

from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stageflow import (
    InMemoryEventSink,
    Pipeline,
    PipelineCancelledError,
    PipelineFailedError,
    RecordedEvent,
    RetryPolicy,
    StageContext,
    StageGraph,
    StageKind,
    StageOutput,
)
from stageflow.interceptors import Interceptor, RetryInterceptor, TimeoutInterceptor
from stageflow_otel import OtlpEventSink, TracingInterceptor, semconv
from tests._stages import T, boom, fail, hang, hang_once_started, ok, skip
from tests._support import Tee, cancel_once_started

from .conftest import Traced, by_name, entry_ctx, metric_points

E = semconv.EVENTS


@pytest.fixture(name="stream")
def _stream() -> InMemoryEventSink:
    return InMemoryEventSink()


def traced_graph(pipeline: Pipeline, provider: TracerProvider, *more: Interceptor) -> StageGraph:
    return pipeline.build(interceptors=[TracingInterceptor(provider), *more])


class Teed:
    """Traced runs whose events go both to the ``OtlpEventSink`` under test and to ``stream``, the core's
    event stream as emitted, so each span event is compared with the very event it came from."""

    def __init__(
        self, traced: Traced, sink: OtlpEventSink, stream: InMemoryEventSink, reader: InMemoryMetricReader
    ) -> None:
        self.traced = traced
        self.sink = sink
        self.stream = stream
        self.reader = reader

    def counts(self) -> dict[tuple[object, ...], int | float]:
        """What the sink's ``stageflow.events.emitted`` counter counted so far."""
        return counts(self.reader)

    def closed(self, event_type: str, kind: str = "transform") -> dict[str, object]:
        """The attributes every closing stage event has, for the streamed event ``event_type``
        (``stage.{name}.{how}``): its type, its stage's name and ``kind``, and its duration as streamed."""
        duration = self.stream.of_type(event_type)[0].data["duration"]
        assert isinstance(duration, float)
        return {
            semconv.EVENT_TYPE: event_type,
            semconv.STAGE_NAME: event_type.split(".")[1],
            semconv.STAGE_KIND: kind,
            semconv.STAGE_DURATION_ATTRIBUTE: round(duration, 6),
        }

    def graph(self, pipeline: Pipeline, *more: Interceptor) -> StageGraph:
        """``pipeline`` built with the tracing interceptor and ``more``."""
        return pipeline.build(interceptors=[self.traced.interceptor, *more])

    async def run(self, graph: StageGraph, error: type[Exception] | None = None) -> tuple[ReadableSpan, ...]:
        """One run of ``graph`` (which must raise ``error``, when given); every span ended so far, checked
        against the stream (every streamed event is exactly one span event, in order)."""
        ctx = entry_ctx(sink=Tee(self.stream, self.sink))
        if error is None:
            await graph.run(ctx)
        else:
            with pytest.raises(error):
                await graph.run(ctx)
        spans = self.traced.finished()
        check_against_stream(spans, self.stream)
        return spans


@pytest.fixture(name="teed")
def _teed(
    traced: Traced, sink: OtlpEventSink, stream: InMemoryEventSink, metric_reader: InMemoryMetricReader
) -> Teed:
    return Teed(traced, sink, stream, metric_reader)


def ns(event: RecordedEvent) -> int:
    timestamp = event.data["timestamp"]
    assert isinstance(timestamp, float)
    return int(timestamp * 1e9)


def span_events(spans: Sequence[ReadableSpan]) -> dict[str, list[tuple[str, str]]]:
    """``span name -> [(event name, stageflow.event.type)]``; several spans of one name are numbered."""
    out: dict[str, list[tuple[str, str]]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        key = (
            span.name
            if span.name not in out
            else f"{span.name} #{sum(k.startswith(span.name) for k in out) + 1}"
        )
        out[key] = [(e.name, str((e.attributes or {}).get(semconv.EVENT_TYPE, ""))) for e in span.events]
    return out


def on_run_span(*between: tuple[str, str], end: str) -> list[tuple[str, str]]:
    """The span events of a run span: pipeline.created and pipeline.started, ``between``, then
    ``pipeline.{end}`` (as ``span_events`` lists them)."""
    return [
        (E["pipeline.created"], "pipeline.created"),
        (E["pipeline.started"], "pipeline.started"),
        *between,
        (E[f"pipeline.{end}"], f"pipeline.{end}"),
    ]


def check_against_stream(spans: Sequence[ReadableSpan], stream: InMemoryEventSink) -> None:
    """Every streamed event is exactly one span event, on a span whose time covers it, in stream order."""
    placed: list[tuple[int, str, int]] = []  # (timestamp, type, position of the span event in its span)
    for span in spans:
        assert span.start_time is not None and span.end_time is not None
        position = 0
        for event in span.events:
            if event.name == "exception":  # the SDK's own record_exception event
                continue
            assert span.start_time <= event.timestamp <= span.end_time, (span.name, event.name)
            placed.append((event.timestamp, str((event.attributes or {})[semconv.EVENT_TYPE]), position))
            position += 1
    assert sorted((t, ty) for t, ty, _ in placed) == sorted((ns(e), e.type) for e in stream.events)
    # within each span, the events keep the stream's order
    order = {(ns(e), e.type): i for i, e in enumerate(stream.events)}
    for span in spans:
        indexes = [
            order[e.timestamp, str((e.attributes or {})[semconv.EVENT_TYPE])]
            for e in span.events
            if e.name != "exception"
        ]
        assert indexes == sorted(indexes), span.name


def counts(reader: InMemoryMetricReader) -> dict[tuple[object, ...], int | float]:
    return {
        tuple((p.attributes or {}).get(k) for k in semconv.EVENTS_EMITTED.attributes): p.value
        for p in metric_points(reader, semconv.EVENTS_EMITTED.name)
        if isinstance(p, NumberDataPoint)
    }


def completed_runs(pipeline: str, stages: Sequence[str], *, runs: int) -> dict[tuple[object, ...], int]:
    """What ``counts`` reads after ``runs`` runs of ``pipeline`` in which each of ``stages`` started and
    completed."""
    return {
        (E["pipeline.created"], pipeline, None): runs,
        (E["pipeline.started"], pipeline, None): runs,
        **{
            (E[f"stage.{how}"], pipeline, stage): runs for stage in stages for how in ("started", "completed")
        },
        (E["pipeline.completed"], pipeline, None): runs,
    }


def attrs(span: ReadableSpan, index: int) -> dict[str, object]:
    return dict(span.events[index].attributes or {})


class TestSuccess:
    async def test_every_event_is_a_span_event_of_its_span(self, teed: Teed) -> None:
        """pipeline.* on the run span (created too), stage.{name}.* on the stage's span, exact attributes."""
        graph = teed.graph(
            Pipeline(name="demo")
            .with_stage("a", ok, T)
            .with_stage("b", ok, StageKind.ENRICH, dependencies=("a",))
        )
        for _ in range(2):
            spans = await teed.run(graph)
        assert span_events(spans[:3]) == {
            "pipeline demo": on_run_span(end="completed"),
            "stage a": [(E["stage.started"], "stage.a.started"), (E["stage.completed"], "stage.a.completed")],
            "stage b": [(E["stage.started"], "stage.b.started"), (E["stage.completed"], "stage.b.completed")],
        }
        first = {e.type: e.data for e in teed.stream.events[:8]}
        run, a = by_name(spans[:3])["pipeline demo"], by_name(spans[:3])["stage a"]
        assert [attrs(run, i) for i in range(3)] == [
            {
                semconv.EVENT_TYPE: "pipeline.created",
                semconv.PIPELINE_STAGES: 2,
                semconv.PIPELINE_VERSION: graph.version,
            },
            {semconv.EVENT_TYPE: "pipeline.started", semconv.PIPELINE_STAGES: 2},
            {
                semconv.EVENT_TYPE: "pipeline.completed",
                semconv.RUN_DURATION: round(first["pipeline.completed"]["duration"], 6),
                semconv.RUN_CRITICAL_PATH: ("a", "b"),
                semconv.RUN_RESULT: semconv.RESULT_SUCCESS,
            },
        ]
        assert [attrs(a, i) for i in range(2)] == [
            {
                semconv.EVENT_TYPE: "stage.a.started",
                semconv.STAGE_NAME: "a",
                semconv.STAGE_KIND: "transform",
                semconv.STAGE_WAIT_DURATION: round(first["stage.a.started"]["wait"], 6),
                semconv.STAGE_DEPENDENCIES: (),
            },
            {
                **teed.closed("stage.a.completed"),
                semconv.STAGE_WAIT_DURATION: round(first["stage.a.completed"]["wait"], 6),
                semconv.STAGE_ATTEMPT: 1,
                semconv.STAGE_RESULT: semconv.RESULT_SUCCESS,
            },
        ]
        # the run span starts just before pipeline.created (its first span event), a stage span with its
        # started event and ends with its closing event
        assert run.start_time is not None and run.start_time <= run.events[0].timestamp == ns(
            teed.stream.events[0]
        )
        assert (a.start_time, a.end_time) == (ns(teed.stream.events[2]), ns(teed.stream.events[3]))
        assert teed.counts() == completed_runs("demo", ("a", "b"), runs=2)

    async def test_log_records_carry_the_span_events_names_and_attributes(
        self,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
        log_sink: OtlpEventSink,
        log_exporter: InMemoryLogRecordExporter,
    ) -> None:
        """With log records on, each record has its span event's name and attributes, plus the run."""
        graph = traced_graph(
            Pipeline(name="demo").with_stage("a", ok, T).with_stage("b", boom, T, dependencies=("a",)),
            tracer_provider,
        )
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx(sink=log_sink))
        assert log_sink.flush(timeout=5.0)
        spans = span_exporter.get_finished_spans()
        run_id = str((by_name(spans)["pipeline demo"].attributes or {})[semconv.RUN_ID])
        from_spans = [
            (
                e.name,
                {**dict(e.attributes or {}), semconv.RUN_ID: run_id, semconv.PIPELINE_NAME: "demo"},
                e.timestamp,
            )
            for s in spans
            for e in s.events
            if e.name != "exception"
        ]
        from_logs = [
            (r.log_record.event_name, dict(r.log_record.attributes or {}), r.log_record.timestamp)
            for r in log_exporter.get_finished_logs()
        ]
        assert len(from_logs) == 7
        assert sorted(from_spans, key=lambda x: x[2]) == from_logs

    async def test_without_the_tracing_interceptor_events_are_still_counted(
        self, sink: OtlpEventSink, metric_reader: InMemoryMetricReader
    ) -> None:
        """No run span to carry them: nothing is put on spans, and the counter still counts every event."""
        await Pipeline(name="p").with_stage("a", ok, T).build().run(entry_ctx(sink=sink))
        assert counts(metric_reader) == completed_runs("p", ("a",), runs=1)

    async def test_span_events_can_be_switched_off(
        self,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
        meter_provider: MeterProvider,
    ) -> None:
        """``span_events=False``: spans carry no events, and stage spans end when their attempt returns."""
        sink = OtlpEventSink(meter_provider=meter_provider, span_events=False)
        await traced_graph(Pipeline(name="p").with_stage("a", ok, T), tracer_provider).run(
            entry_ctx(sink=sink)
        )
        assert span_events(span_exporter.get_finished_spans()) == {"stage a": [], "pipeline p": []}


class TestFailure:
    async def test_a_raising_stage(self, teed: Teed) -> None:
        """stage.x.failed follows the SDK's exception event on the stage span; pipeline.failed on the run."""
        spans = await teed.run(teed.graph(Pipeline(name="p").with_stage("x", boom, T)), PipelineFailedError)
        assert span_events(spans) == {
            "stage x": [
                ("stageflow.stage.started", "stage.x.started"),
                ("exception", ""),
                (E["stage.failed"], "stage.x.failed"),
            ],
            "pipeline p": on_run_span(end="failed"),
        }
        data = {e.type: e.data for e in teed.stream.events}
        x, run = by_name(spans)["stage x"], by_name(spans)["pipeline p"]
        assert attrs(x, 2) == {
            **teed.closed("stage.x.failed"),
            semconv.EXCEPTION_MESSAGE: "kaput",
            semconv.ERROR_TYPE: "RuntimeError",
            semconv.STAGE_ATTEMPT: 1,
            semconv.STAGE_RESULT: semconv.RESULT_ERROR,
        }
        assert attrs(run, 2) == {
            semconv.EVENT_TYPE: "pipeline.failed",
            semconv.RUN_DURATION: round(data["pipeline.failed"]["duration"], 6),
            semconv.RUN_CRITICAL_PATH: ("x",),
            semconv.STAGE_NAME: "x",
            semconv.EXCEPTION_MESSAGE: "kaput",
            semconv.ERROR_TYPE: "RuntimeError",
            semconv.RUN_RESULT: semconv.RESULT_ERROR,
        }
        assert teed.counts()[E["stage.failed"], "p", "x"] == 1
        assert teed.counts()[E["pipeline.failed"], "p", None] == 1

    async def test_a_stage_returning_fail(
        self, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter, sink: OtlpEventSink
    ) -> None:
        """StageOutput.fail: a failure result with StageFailedError as error.type."""
        with pytest.raises(PipelineFailedError):
            await traced_graph(Pipeline(name="p").with_stage("f", fail, T), tracer_provider).run(
                entry_ctx(sink=sink)
            )
        failed = attrs(by_name(span_exporter.get_finished_spans())["stage f"], 1)
        assert (
            failed[semconv.ERROR_TYPE],
            failed[semconv.STAGE_RESULT],
            failed[semconv.EXCEPTION_MESSAGE],
        ) == (
            "StageFailedError",
            semconv.RESULT_FAILURE,
            "bad input",
        )


class TestSkips:
    async def test_a_stage_skipping_itself_and_a_conditional_stage_skipped_by_the_executor(
        self, teed: Teed
    ) -> None:
        """A self-skip is on its span; a conditional stage never had one: its event is on the run span."""
        graph = teed.graph(
            Pipeline(name="p")
            .with_stage("s", skip, T)
            .with_stage("cond", ok, StageKind.GUARD, dependencies=("s",), conditional=True)
        )
        spans = await teed.run(graph)
        assert span_events(spans) == {
            "stage s": [(E["stage.started"], "stage.s.started"), (E["stage.skipped"], "stage.s.skipped")],
            "pipeline p": on_run_span((E["stage.skipped"], "stage.cond.skipped"), end="completed"),
        }
        s, run = by_name(spans)["stage s"], by_name(spans)["pipeline p"]
        assert attrs(s, 1) == {
            **teed.closed("stage.s.skipped"),
            semconv.STAGE_SKIP_REASON: "nothing to do",
            semconv.STAGE_RESULT: semconv.RESULT_SKIP,
        }
        assert attrs(run, 2) == {
            semconv.EVENT_TYPE: "stage.cond.skipped",
            semconv.STAGE_NAME: "cond",
            semconv.STAGE_KIND: "guard",
            semconv.STAGE_DURATION_ATTRIBUTE: 0.0,
            semconv.STAGE_SKIP_REASON: "dependency 's' was skipped",
            semconv.STAGE_RESULT: semconv.RESULT_SKIP,
        }
        assert {k: v for k, v in teed.counts().items() if k[0] == E["stage.skipped"]} == {
            (E["stage.skipped"], "p", "s"): 1,
            (E["stage.skipped"], "p", "cond"): 1,
        }


async def cancel(ctx: StageContext) -> StageOutput:
    return StageOutput.cancel("enough")


class TestCancellation:
    async def test_a_stage_returning_cancel(self, teed: Teed) -> None:
        """stage.c.cancelled with its reason on the stage span, pipeline.cancelled on the run span."""
        spans = await teed.run(
            teed.graph(Pipeline(name="p").with_stage("c", cancel, T)), PipelineCancelledError
        )
        c, run = by_name(spans)["stage c"], by_name(spans)["pipeline p"]
        assert attrs(c, 1) == {
            **teed.closed("stage.c.cancelled"),
            semconv.STAGE_CANCEL_REASON: "enough",
            semconv.STAGE_RESULT: semconv.RESULT_CANCELLATION,
        }
        assert [e.name for e in run.events][-1] == E["pipeline.cancelled"]
        cancelled = attrs(run, 2)
        assert (cancelled[semconv.STAGE_NAME], cancelled[semconv.RUN_CANCEL_REASON]) == ("c", "enough")

    async def test_the_caller_cancelling_the_run(self, teed: Teed) -> None:
        """The run task cancelled while its stage waits: stage.w.cancelled on w's span, then the run's."""
        started = asyncio.Event()
        graph = teed.graph(Pipeline(name="p").with_stage("w", hang_once_started(started), T))
        await cancel_once_started(teed.run(graph), started)
        spans = teed.traced.finished()
        assert span_events(spans) == {
            "stage w": [(E["stage.started"], "stage.w.started"), (E["stage.cancelled"], "stage.w.cancelled")],
            "pipeline p": on_run_span(end="cancelled"),
        }
        check_against_stream(spans, teed.stream)
        assert attrs(by_name(spans)["pipeline p"], 2)[semconv.RUN_CANCEL_REASON] == "cancelled by caller"


async def _no_sleep(delay: float) -> None:
    return None


class TestRetry:
    async def test_core_retries_put_retrying_on_the_failed_attempts_span(self, teed: Teed) -> None:
        """A with_stage(retry=...) stage: one span per attempt; retrying closes the attempt that failed."""
        calls = 0

        async def flaky(ctx: StageContext) -> StageOutput:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise ConnectionError(f"try {calls}")
            return StageOutput.ok()

        policy = RetryPolicy(max_attempts=3, jitter=0.0, sleep=_no_sleep)
        finished = await teed.run(teed.graph(Pipeline(name="p").with_stage("r", flaky, T, retry=policy)))
        spans = [s for s in finished if s.name == "stage r"]
        assert [
            [(e.name, (e.attributes or {}).get(semconv.EVENT_TYPE)) for e in s.events] for s in spans
        ] == [
            [
                (E["stage.started"], "stage.r.started"),
                ("exception", None),
                (E["stage.retrying"], "stage.r.retrying"),
            ],
            [("exception", None), (E["stage.retrying"], "stage.r.retrying")],
            [(E["stage.completed"], "stage.r.completed")],
        ]
        assert [dict(s.events[-1].attributes or {}) for s in spans[:2]] == [
            {
                semconv.EVENT_TYPE: "stage.r.retrying",
                semconv.STAGE_NAME: "r",
                semconv.STAGE_KIND: "transform",
                semconv.STAGE_ATTEMPT: attempt,
                semconv.STAGE_RETRY_DELAY: delay,
                semconv.EXCEPTION_MESSAGE: f"try {attempt}",
                semconv.ERROR_TYPE: "ConnectionError",
            }
            for attempt, delay in ((1, 0.1), (2, 0.2))
        ]
        assert attrs(spans[2], 0)[semconv.STAGE_ATTEMPT] == 3
        assert teed.counts()[E["stage.retrying"], "p", "r"] == 2

    async def test_retry_interceptor_retries_inside_one_span(self, teed: Teed) -> None:
        """RetryInterceptor runs inside the stage span: every retrying event lands on that one span."""
        calls = 0

        async def flaky(ctx: StageContext) -> StageOutput:
            nonlocal calls
            calls += 1
            return StageOutput.retry("busy") if calls < 2 else StageOutput.ok()

        retry = RetryInterceptor(RetryPolicy(max_attempts=3, jitter=0.0, sleep=_no_sleep))
        spans = await teed.run(teed.graph(Pipeline(name="p").with_stage("r", flaky, T), retry))
        assert span_events(spans)["stage r"] == [
            (E["stage.started"], "stage.r.started"),
            (E["stage.retrying"], "stage.r.retrying"),
            (E["stage.completed"], "stage.r.completed"),
        ]
        retrying = attrs(by_name(spans)["stage r"], 1)
        assert (retrying[semconv.STAGE_ATTEMPT], retrying[semconv.EXCEPTION_MESSAGE]) == (1, "busy")


class TestTimeout:
    async def test_a_timed_out_stage(self, teed: Teed) -> None:
        """StageTimeoutError: stage.t.failed with error.type timeout and result timeout, on t's span."""
        graph = teed.graph(
            Pipeline(name="p").with_stage("t", hang, T), TimeoutInterceptor(per_stage={"t": 0.01})
        )
        spans = await teed.run(graph, PipelineFailedError)
        failed = attrs(by_name(spans)["stage t"], 2)
        assert (
            failed[semconv.ERROR_TYPE],
            failed[semconv.STAGE_RESULT],
            failed[semconv.EXCEPTION_MESSAGE],
        ) == (
            "StageTimeoutError",
            semconv.RESULT_TIMEOUT,
            "stage 't' timed out after 0.01 s",
        )
        run_failed = attrs(by_name(spans)["pipeline p"], 2)
        assert (run_failed[semconv.ERROR_TYPE], run_failed[semconv.RUN_RESULT]) == (
            "StageTimeoutError",
            semconv.RESULT_TIMEOUT,
        )
        assert teed.counts()[E["stage.failed"], "p", "t"] == 1


class TestCounterGuard:
    async def test_names_past_the_limit_are_counted_as_other(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """With max_series=1 the second stage name and second pipeline name are counted as _OTHER."""
        sink = OtlpEventSink(meter_provider=meter_provider, max_series=1)
        for pipeline, stage in (("p", "a"), ("p", "b"), ("q", "a")):
            sink.try_emit(type=f"stage.{stage}.completed", data={"pipeline": pipeline, "stage": stage})
        assert counts(metric_reader) == {
            (E["stage.completed"], "p", "a"): 1,
            (E["stage.completed"], "p", semconv.OTHER): 1,
            (E["stage.completed"], semconv.OTHER, "a"): 1,
        }

    def test_max_series_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="max_series must be at least 1, got 0"):
            OtlpEventSink(max_series=0)


class TestDescribe:
    def test_the_per_type_cache_is_bounded(self) -> None:
        """Past the cache's bound, new event types are still described, just not remembered."""
        from stageflow_otel import _taxonomy

        for i in range(_taxonomy._MAX_SHAPES + 10):
            _taxonomy.describe(f"custom.{i}", None)
        assert len(_taxonomy._SHAPES) == _taxonomy._MAX_SHAPES
        event = _taxonomy.describe("stage.late.completed", {"stage": "late"})
        assert (event.name, event.kind, event.stage, event.attributes) == (
            E["stage.completed"],
            "stage.completed",
            "late",
            {
                semconv.EVENT_TYPE: "stage.late.completed",
                semconv.STAGE_NAME: "late",
                semconv.STAGE_RESULT: semconv.RESULT_SUCCESS,
            },
        )


class TestCustomEvents:
    async def test_a_stages_own_events_are_on_its_span_and_a_runs_on_the_run_span(self, teed: Teed) -> None:
        """A stage's ctx.try_emit_event lands on that stage's span, in order; a run-level one on the run's."""

        async def chatty(ctx: StageContext) -> StageOutput:
            ctx.try_emit_event("llm.tokens", {"n": 3})
            assert ctx.pipeline is not None
            ctx.pipeline.try_emit_event("run.note", {})
            return StageOutput.ok()

        spans = await teed.run(teed.graph(Pipeline(name="p").with_stage("c", chatty, T)))
        assert span_events(spans) == {
            "stage c": [
                (E["stage.started"], "stage.c.started"),
                (semconv.EVENT_OTHER, "llm.tokens"),
                (E["stage.completed"], "stage.c.completed"),
            ],
            "pipeline p": on_run_span((semconv.EVENT_OTHER, "run.note"), end="completed"),
        }
        assert attrs(by_name(spans)["stage c"], 1) == {
            semconv.EVENT_TYPE: "llm.tokens",
            semconv.STAGE_NAME: "c",
        }
        assert teed.counts()[semconv.EVENT_OTHER, "p", None] == 2

    async def test_events_emitted_after_the_run_ended_leave_its_ended_spans_unchanged(
        self, teed: Teed
    ) -> None:
        """A stage's context kept past the run (a background task's) emits to spans that already ended:
        the events are ignored, as the SDK ignores writes to an ended span, and nothing raises."""
        kept: list[StageContext] = []

        async def keeping(ctx: StageContext) -> StageOutput:
            kept.append(ctx)
            return StageOutput.ok()

        spans = await teed.run(teed.graph(Pipeline(name="p").with_stage("c", keeping, T)))
        before = span_events(spans)
        (ctx,) = kept
        ctx.try_emit_event("late.note", {"n": 1})
        assert ctx.pipeline is not None
        ctx.pipeline.try_emit_event("late.run", {})
        assert (span_events(teed.traced.finished()), before) == (
            before,
            {
                "stage c": [
                    (E["stage.started"], "stage.c.started"),
                    (E["stage.completed"], "stage.c.completed"),
                ],
                "pipeline p": on_run_span(end="completed"),
            },
        )

    async def test_a_stage_event_recorded_the_0_9_1_way_is_on_its_stages_span(
        self, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
    ) -> None:
        """``ctx.pipeline.record_stage_event`` (stageflow-core 0.9.1's) reaches the span of the stage it
        names, with no sink given to the run."""

        async def progress(ctx: StageContext) -> StageOutput:
            assert ctx.pipeline is not None
            ctx.pipeline.record_stage_event(stage="c", status="progress", payload={"pct": 50})
            return StageOutput.ok()

        graph = traced_graph(Pipeline(name="p").with_stage("c", progress, T), tracer_provider)
        await graph.run(entry_ctx())
        assert span_events(span_exporter.get_finished_spans())["stage c"] == [
            (E["stage.started"], "stage.c.started"),
            (semconv.EVENT_OTHER, "stage.c.progress"),
            (E["stage.completed"], "stage.c.completed"),
        ]
