"""Spans and event records derive a failed stage's ``error.type`` the same way (the core's derivation)."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from stageflow import (
    BaseInterceptor,
    ContextSnapshot,
    ErrorAction,
    Pipeline,
    PipelineContext,
    PipelineFailedError,
    PipelineTimer,
    RunIdentity,
    StageContext,
    StageInputs,
    StageKind,
    StageOutput,
    StageTimeoutError,
    error_type_name,
)
from stageflow_otel import OtlpEventSink, TracingInterceptor, semconv
from stageflow_otel._outcome import outcome_of_error


class Client:
    class QuotaError(Exception):
        """An error class nested in another class: its qualified name differs from its name."""


async def over_quota(ctx: StageContext) -> StageOutput:
    raise Client.QuotaError("quota exceeded")


class TestNestedErrorType:
    def test_the_otel_outcome_uses_the_core_derivation(self) -> None:
        """``outcome_of_error`` names an error by ``stageflow.error_type_name``: the qualified name."""
        error = Client.QuotaError("x")
        assert error_type_name(error) == "Client.QuotaError"
        assert outcome_of_error(error).error_type == "Client.QuotaError"

    async def test_span_and_event_record_agree(
        self,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
        logger_provider: LoggerProvider,
        log_exporter: InMemoryLogRecordExporter,
        meter_provider: MeterProvider,
    ) -> None:
        """The stage span, its span events and the stage.failed record all say ``Client.QuotaError``."""
        sink = OtlpEventSink(logger_provider=logger_provider, meter_provider=meter_provider, log_records=True)
        graph = (
            Pipeline(name="p")
            .with_stage("q", over_quota, StageKind.WORK)
            .build(interceptors=[TracingInterceptor(tracer_provider)])
        )
        snapshot = ContextSnapshot(run_id=RunIdentity())
        ctx = StageContext(snapshot, StageInputs(snapshot), "entry", PipelineTimer(), event_sink=sink)
        with pytest.raises(PipelineFailedError):
            await graph.run(ctx)
        assert sink.flush(timeout=5.0)
        sink.shutdown(timeout=5.0)
        (stage_span,) = [
            s for s in span_exporter.get_finished_spans() if s.name == semconv.SPAN_STAGE_PREFIX + "q"
        ]
        failed = [
            dict(r.log_record.attributes or {})
            for r in log_exporter.get_finished_logs()
            if (r.log_record.attributes or {}).get(semconv.EVENT_TYPE) == "stage.q.failed"
        ]
        assert [a.get(semconv.ERROR_TYPE) for a in failed] == ["Client.QuotaError"]
        assert (stage_span.attributes or {}).get(semconv.ERROR_TYPE) == "Client.QuotaError"
        span_event_types = {
            (e.attributes or {}).get(semconv.ERROR_TYPE)
            for s in span_exporter.get_finished_spans()
            for e in s.events
            if (e.attributes or {}).get(semconv.ERROR_TYPE) is not None
        }
        assert span_event_types == {"Client.QuotaError"}


class _FallBack(BaseInterceptor):
    """Turns any failure into the base class's fallback (a skip), outside the tracing interceptor."""

    name = "fall_back"
    priority = 5

    async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
        return ErrorAction.FALLBACK


async def flaky(ctx: StageContext) -> StageOutput:
    raise ConnectionError("search is down")


class TestFallback:
    async def test_a_stage_an_interceptor_fell_back_from_is_a_skip_span(
        self, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
    ) -> None:
        """The core settled the stage as a skip: its span says ``skip`` with no error, like its events."""
        graph = (
            Pipeline(name="p")
            .with_stage("search", flaky, StageKind.ENRICH)
            .build(interceptors=[TracingInterceptor(tracer_provider), _FallBack()])
        )
        snapshot = ContextSnapshot(run_id=RunIdentity())
        await graph.run(StageContext(snapshot, StageInputs(snapshot), "entry", PipelineTimer()))
        spans = {s.name: s for s in span_exporter.get_finished_spans()}
        stage, run = spans["stage search"], spans["pipeline p"]
        assert stage.status.status_code is StatusCode.UNSET
        assert {k: v for k, v in (stage.attributes or {}).items() if k in RESULT_KEYS} == {
            semconv.STAGE_RESULT: semconv.RESULT_SKIP
        }
        # what the stage raised stays visible, next to the events that say how it ended
        assert [(e.name, (e.attributes or {}).get(semconv.EVENT_TYPE)) for e in stage.events] == [
            (semconv.EVENTS["stage.started"], "stage.search.started"),
            (semconv.EXCEPTION_EVENT, None),
            (semconv.EVENTS["stage.skipped"], "stage.search.skipped"),
        ]
        assert (stage.events[2].attributes or {})[semconv.STAGE_RESULT] == semconv.RESULT_SKIP
        assert run.status.status_code is StatusCode.UNSET
        assert {k: v for k, v in (run.attributes or {}).items() if k in RESULT_KEYS} == {
            semconv.RUN_RESULT: semconv.RESULT_SUCCESS
        }


RESULT_KEYS = frozenset({semconv.STAGE_RESULT, semconv.RUN_RESULT, semconv.ERROR_TYPE})


class ProviderTimeoutError(StageTimeoutError):
    """A timeout of the user's own, a subclass of the core's."""


async def provider_timed_out(ctx: StageContext) -> StageOutput:
    raise ProviderTimeoutError("llm", 2.0)


class TestTimeoutSubclass:
    async def test_a_subclass_of_stage_timeout_error_is_a_timeout_on_spans_and_events_alike(
        self,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
        logger_provider: LoggerProvider,
        log_exporter: InMemoryLogRecordExporter,
        meter_provider: MeterProvider,
    ) -> None:
        """Span, span events and log records all say result ``timeout`` and the subclass's name."""
        sink = OtlpEventSink(logger_provider=logger_provider, meter_provider=meter_provider, log_records=True)
        graph = (
            Pipeline(name="p")
            .with_stage("llm", provider_timed_out, StageKind.WORK)
            .build(interceptors=[TracingInterceptor(tracer_provider)])
        )
        snapshot = ContextSnapshot(run_id=RunIdentity())
        with pytest.raises(PipelineFailedError):
            await graph.run(StageContext(snapshot, StageInputs(snapshot), "entry", PipelineTimer(), sink))
        assert sink.flush(timeout=5.0)
        sink.shutdown(timeout=5.0)
        expected = (semconv.RESULT_TIMEOUT, "ProviderTimeoutError")
        spans = {s.name: s for s in span_exporter.get_finished_spans()}
        stage, run = spans["stage llm"], spans["pipeline p"]
        assert (
            (stage.attributes or {})[semconv.STAGE_RESULT],
            (stage.attributes or {})[semconv.ERROR_TYPE],
        ) == (expected)
        assert (
            (run.attributes or {})[semconv.RUN_RESULT],
            (run.attributes or {})[semconv.ERROR_TYPE],
        ) == expected
        closing = {
            str((e.attributes or {})[semconv.EVENT_TYPE]): e.attributes or {}
            for s in (stage, run)
            for e in s.events
            if e.name != semconv.EXCEPTION_EVENT
        }
        assert (
            closing["stage.llm.failed"][semconv.STAGE_RESULT],
            closing["stage.llm.failed"][semconv.ERROR_TYPE],
        ) == expected
        assert (
            closing["pipeline.failed"][semconv.RUN_RESULT],
            closing["pipeline.failed"][semconv.ERROR_TYPE],
        ) == expected
        records = {
            str((r.log_record.attributes or {})[semconv.EVENT_TYPE]): r.log_record.attributes or {}
            for r in log_exporter.get_finished_logs()
        }
        assert (
            records["stage.llm.failed"][semconv.STAGE_RESULT],
            records["stage.llm.failed"][semconv.ERROR_TYPE],
        ) == expected
