"""Spans and event records derive a failed stage's ``error.type`` the same way (the core's derivation)."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stageflow import (
    ContextSnapshot,
    Pipeline,
    PipelineFailedError,
    PipelineTimer,
    RunIdentity,
    StageContext,
    StageInputs,
    StageKind,
    StageOutput,
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
