"""Stage spans recorded by stageflow (``_span``) behave as the SDK's: for user code, processors and limits."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from stageflow import Pipeline, StageContext, StageKind, StageOutput
from stageflow_otel import TracingInterceptor, semconv
from stageflow_otel._span import RecordedSpan

from .conftest import entry_ctx

T = StageKind.TRANSFORM


class Watcher(SpanProcessor):
    """Notes what it sees of each span at its start and end, and tags every span at its start."""

    def __init__(self) -> None:
        self.started: list[tuple[str, object]] = []
        self.ended: list[tuple[str, bool]] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started.append((span.name, (span.attributes or {}).get(semconv.STAGE_NAME)))
        span.set_attribute("app.tag", "seen")

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append((span.name, span.end_time is not None))


def provider_with(exporter: InMemorySpanExporter, *processors: SpanProcessor, **kw: Any) -> TracerProvider:
    provider = TracerProvider(**kw)
    for processor in (*processors, SimpleSpanProcessor(exporter)):
        provider.add_span_processor(processor)
    return provider


async def annotate(ctx: StageContext) -> StageOutput:
    span = trace.get_current_span()
    span.set_attribute("app.items", 3)
    span.set_attribute("app.bad", {"not": "valid"})
    span.add_event("app.step", {"n": 1})
    span.record_exception(ValueError("soft"))
    span.set_status(StatusCode.OK)
    return StageOutput.ok()


async def annotated_stage_span(span_exporter: InMemorySpanExporter) -> ReadableSpan:
    """The span of stage ``a`` (``annotate``) after one traced run."""
    provider = provider_with(span_exporter)
    graph = Pipeline(name="p").with_stage("a", annotate, T).build(interceptors=[TracingInterceptor(provider)])
    await graph.run(entry_ctx())
    (stage,) = [s for s in span_exporter.get_finished_spans() if s.name == "stage a"]
    return stage


class TestRecordedSpans:
    async def test_user_code_annotates_the_current_stage_span(
        self, span_exporter: InMemorySpanExporter
    ) -> None:
        """Attributes, events, exceptions and status set inside a stage land on its span; bad values don't."""
        stage = await annotated_stage_span(span_exporter)
        attributes = dict(stage.attributes or {})
        assert (attributes["app.items"], "app.bad" in attributes) == (3, False)
        assert [e.name for e in stage.events] == [
            semconv.EVENTS["stage.started"],
            "app.step",
            "exception",
            semconv.EVENTS["stage.completed"],
        ]
        assert (stage.events[2].attributes or {})["exception.type"] == "ValueError"
        assert stage.status.status_code is StatusCode.OK
        assert attributes[semconv.STAGE_RESULT] == semconv.RESULT_SUCCESS

    async def test_processors_see_each_stage_span_start_and_end(
        self, span_exporter: InMemorySpanExporter
    ) -> None:
        """``on_start`` gets the span with its attributes (and may add one); ``on_end`` the ended span."""
        watcher = Watcher()
        provider = provider_with(span_exporter, watcher)
        graph = (
            Pipeline(name="p")
            .with_stage("a", annotate, T)
            .with_stage("b", annotate, T, dependencies=("a",))
            .build(interceptors=[TracingInterceptor(provider)])
        )
        await graph.run(entry_ctx())
        assert watcher.started == [("pipeline p", None), ("stage a", "a"), ("stage b", "b")]
        assert watcher.ended == [("stage a", True), ("stage b", True), ("pipeline p", True)]
        assert {s.name: (s.attributes or {}).get("app.tag") for s in span_exporter.get_finished_spans()} == {
            "pipeline p": "seen",
            "stage a": "seen",
            "stage b": "seen",
        }

    async def test_the_span_limits_hold_and_what_they_drop_is_counted(
        self, span_exporter: InMemorySpanExporter
    ) -> None:
        """Past ``max_span_attributes`` the oldest attributes go, counted in ``dropped_attributes``."""
        provider = provider_with(span_exporter, span_limits=SpanLimits(max_span_attributes=4))
        graph = (
            Pipeline(name="p").with_stage("a", annotate, T).build(interceptors=[TracingInterceptor(provider)])
        )
        await graph.run(entry_ctx())
        (stage,) = [s for s in span_exporter.get_finished_spans() if s.name == "stage a"]
        assert len(stage.attributes or {}) == 4
        assert list(stage.attributes or {})[-2:] == ["app.items", semconv.STAGE_RESULT]
        # 7 of the stage's own (pipeline, stage, kind, function, run id, attempt, wait), app.items and
        # the result: 9 set, 4 kept
        assert stage.dropped_attributes == 5

    async def test_an_ended_span_takes_no_more_attributes_or_events(
        self, span_exporter: InMemorySpanExporter
    ) -> None:
        """``put`` and ``put_event`` (stageflow's own writes) on an ended span do nothing, as the SDK's."""
        stage = await annotated_stage_span(span_exporter)
        assert isinstance(stage, RecordedSpan)
        attributes, events = dict(stage.attributes or {}), list(stage.events)
        stage.put("app.late", 1)
        stage.put_event("app.late", {"n": 2}, None)
        assert (dict(stage.attributes or {}), list(stage.events), len(events)) == (attributes, events, 4)


class TestTraceFlags:
    @pytest.mark.parametrize("parent_flags", [None, 0x01, 0x03], ids=["root", "sampled", "sampled-random"])
    async def test_run_and_stage_spans_get_the_flags_the_sdk_gives(
        self, span_exporter: InMemorySpanExporter, parent_flags: int | None
    ) -> None:
        """The W3C random trace id flag as the SDK sets it: the id generator's for a new trace (random),
        else the parent's; so a run span, and its stage span, carry the flags of an SDK child span."""
        provider = provider_with(span_exporter)
        caller = Context()
        if parent_flags is not None:
            remote = trace.SpanContext(0xABC, 0xDEF, True, trace.TraceFlags(parent_flags))
            caller = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        graph = (
            Pipeline(name="p").with_stage("a", annotate, T).build(interceptors=[TracingInterceptor(provider)])
        )
        token = otel_context.attach(caller)
        try:
            await graph.run(entry_ctx())
        finally:
            otel_context.detach(token)
        spans = {s.name: s for s in span_exporter.get_finished_spans()}
        run, stage = spans["pipeline p"], spans["stage a"]
        sdk = provider.get_tracer("sdk")
        sdk_run = sdk.start_span("run", context=caller)
        assert isinstance(run, RecordedSpan) and isinstance(stage, RecordedSpan)
        sdk_stage = sdk.start_span("stage", context=trace.set_span_in_context(run))
        flags = [int(s.get_span_context().trace_flags) for s in (run, stage, sdk_run, sdk_stage)]
        expected = 0x03 if parent_flags is None else parent_flags
        assert flags == [expected] * 4
