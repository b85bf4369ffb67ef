"""Every reporter says the same of each outcome: spans, span events, metrics, event data and the demo's
summary read the core's category (the README's table of what each view shows); spans and event records
name a failed stage's ``error.type`` the same way (the core's derivation)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from stageflow import (
    BaseInterceptor,
    ErrorAction,
    PipelineContext,
    PipelineFailedError,
    StageContext,
    StageKind,
    StageOutput,
    StageTimeoutError,
    error_type_name,
)
from stageflow._events import InMemoryEventSink
from stageflow_otel import MetricsInterceptor, OtlpEventSink, TracingInterceptor, semconv
from stageflow_otel._demo import BreakerTally, DemoStats, _summary, outcome_of
from stageflow_otel._outcome import outcome_of_error
from tests._outcome_cases import CASES, EXPECTED, build_case, run_case

from .conftest import entry_ctx, metric_points, one_stage_graph


class Client:
    class QuotaError(Exception):
        """An error class nested in another class: its qualified name differs from its name."""


async def over_quota(ctx: StageContext) -> StageOutput:
    raise Client.QuotaError("quota exceeded")


FailingRun = Callable[[str, Any], Awaitable[tuple[Sequence[ReadableSpan], Sequence[ReadableLogRecord]]]]


@pytest.fixture(name="failing_run")
def _failing_run(
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    logger_provider: LoggerProvider,
    log_exporter: InMemoryLogRecordExporter,
    meter_provider: MeterProvider,
) -> FailingRun:
    """``spans, records = await failing_run(name, stage)``: one traced run of pipeline ``p`` whose one WORK
    stage ``name`` fails, its events going to an OTLP sink with log records on; the sink is flushed and shut
    down. It gives the finished spans and log records."""

    async def failing_run(
        name: str, stage: Any
    ) -> tuple[Sequence[ReadableSpan], Sequence[ReadableLogRecord]]:
        sink = OtlpEventSink(logger_provider=logger_provider, meter_provider=meter_provider, log_records=True)
        graph = one_stage_graph("p", name, stage, TracingInterceptor(tracer_provider), kind=StageKind.WORK)
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx(sink=sink))
        assert sink.flush(timeout=5.0)
        sink.shutdown(timeout=5.0)
        return span_exporter.get_finished_spans(), log_exporter.get_finished_logs()

    return failing_run


class TestNestedErrorType:
    def test_the_otel_outcome_uses_the_core_derivation(self) -> None:
        """``outcome_of_error`` names an error by ``stageflow.error_type_name``: the qualified name."""
        error = Client.QuotaError("x")
        assert error_type_name(error) == "Client.QuotaError"
        assert outcome_of_error(error).error_type == "Client.QuotaError"

    async def test_span_and_event_record_agree(
        self,
        failing_run: FailingRun,
    ) -> None:
        """The stage span, its span events and the stage.failed record all say ``Client.QuotaError``."""
        spans, logs = await failing_run("q", over_quota)
        (stage_span,) = [s for s in spans if s.name == semconv.SPAN_STAGE_PREFIX + "q"]
        failed = [
            dict(r.log_record.attributes or {})
            for r in logs
            if (r.log_record.attributes or {}).get(semconv.EVENT_TYPE) == "stage.q.failed"
        ]
        assert [a.get(semconv.ERROR_TYPE) for a in failed] == ["Client.QuotaError"]
        assert (stage_span.attributes or {}).get(semconv.ERROR_TYPE) == "Client.QuotaError"
        span_event_types = {
            (e.attributes or {}).get(semconv.ERROR_TYPE)
            for s in spans
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
        graph = one_stage_graph(
            "p", "search", flaky, TracingInterceptor(tracer_provider), _FallBack(), kind=StageKind.ENRICH
        )
        await graph.run(entry_ctx())
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
        failing_run: FailingRun,
    ) -> None:
        """Span, span events and log records all say result ``timeout`` and the subclass's name."""
        finished, logs = await failing_run("llm", provider_timed_out)
        expected = (semconv.RESULT_TIMEOUT, "ProviderTimeoutError")
        spans = {s.name: s for s in finished}
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
            for r in logs
        }
        assert (
            records["stage.llm.failed"][semconv.STAGE_RESULT],
            records["stage.llm.failed"][semconv.ERROR_TYPE],
        ) == expected


@dataclass(frozen=True, slots=True)
class SpanSays:
    """What the OpenTelemetry side says of one case's stage ``s`` and its run."""

    stage_result: str | None
    """``stageflow.stage.result`` on ``s``'s span (``None``: ``s`` had no span)."""
    stage_error_type: str | None
    stage_status: str
    """``s``'s span status (``UNSET``, ``ERROR``); ``-`` without a span."""
    closing_event: str
    """The span event that closed ``s``, and the span it is on (``stage`` or ``run``)."""
    event_result: str | None
    """``stageflow.stage.result`` on that span event."""
    run_result: str | None
    run_error_type: str | None
    run_status: str


@dataclass(frozen=True, slots=True)
class EventSays:
    """What the events say of one case's stage ``s`` and its run."""

    stage_event: str
    category: str | None
    error_type: str | None
    run_event: str
    run_category: str | None
    run_error_type: str | None


SPANS: dict[str, SpanSays] = {
    "success": SpanSays(
        "success", None, "UNSET", "stage: stageflow.stage.completed", "success", "success", None, "UNSET"
    ),
    "failure": SpanSays(
        "failure",
        "StageFailedError",
        "ERROR",
        "stage: stageflow.stage.failed",
        "failure",
        "failure",
        "StageFailedError",
        "ERROR",
    ),
    "error": SpanSays(
        "error",
        "ValueError",
        "ERROR",
        "stage: stageflow.stage.failed",
        "error",
        "error",
        "ValueError",
        "ERROR",
    ),
    "timeout": SpanSays(
        "timeout",
        "StageTimeoutError",
        "ERROR",
        "stage: stageflow.stage.failed",
        "timeout",
        "timeout",
        "StageTimeoutError",
        "ERROR",
    ),
    "cancel": SpanSays(
        "cancellation",
        None,
        "UNSET",
        "stage: stageflow.stage.cancelled",
        "cancellation",
        "cancellation",
        None,
        "UNSET",
    ),
    "skip": SpanSays(
        "skip", None, "UNSET", "stage: stageflow.stage.skipped", "skip", "success", None, "UNSET"
    ),
    "conditional-skip": SpanSays(
        None, None, "-", "run: stageflow.stage.skipped", "skip", "success", None, "UNSET"
    ),
    "fallback": SpanSays(
        "skip", None, "UNSET", "stage: stageflow.stage.skipped", "skip", "success", None, "UNSET"
    ),
}
"""The README's table, for spans and span events."""


EVENTS: dict[str, EventSays] = {
    "success": EventSays("stage.s.completed", "success", None, "pipeline.completed", "success", None),
    "failure": EventSays(
        "stage.s.failed", "failure", "StageFailedError", "pipeline.failed", "failure", "StageFailedError"
    ),
    "error": EventSays("stage.s.failed", "error", "ValueError", "pipeline.failed", "error", "ValueError"),
    "timeout": EventSays(
        "stage.s.failed", "timeout", "StageTimeoutError", "pipeline.failed", "timeout", "StageTimeoutError"
    ),
    "cancel": EventSays(
        "stage.s.cancelled", "cancellation", None, "pipeline.cancelled", "cancellation", None
    ),
    "skip": EventSays("stage.s.skipped", "skip", None, "pipeline.completed", "success", None),
    "conditional-skip": EventSays("stage.s.skipped", "skip", None, "pipeline.completed", "success", None),
    "fallback": EventSays("stage.s.skipped", "skip", None, "pipeline.completed", "success", None),
}
"""The README's table, for event data."""


def _closing(span: ReadableSpan) -> list[Event]:
    return [
        e
        for e in span.events
        if (e.attributes or {}).get(semconv.EVENT_TYPE, "").startswith("stage.s.")  # type: ignore[union-attr]
        and e.name != "stageflow.stage.started"
    ]


@pytest.mark.parametrize("case", CASES)
class TestEveryReporterAgrees:
    async def test_spans_span_events_metrics_events_and_the_demo(
        self,
        case: str,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
        meter_provider: MeterProvider,
        metric_reader: InMemoryMetricReader,
    ) -> None:
        """One run of the case, traced and measured: its spans, span events, metrics, events and the demo's
        summary say what the README's table says, and what ``StageResult.category`` says."""
        expected = EXPECTED[case]
        sink = InMemoryEventSink()
        graph = build_case(case, [TracingInterceptor(tracer_provider), MetricsInterceptor(meter_provider)])
        ran = await run_case(graph, sink)
        assert ran.results["s"].category == expected.category

        ended = [e for e in sink.events if e.type.startswith("stage.s.") and not e.type.endswith("started")]
        (run_ended,) = [
            e
            for e in sink.events
            if e.type in ("pipeline.completed", "pipeline.failed", "pipeline.cancelled")
        ]
        (stage_ended,) = ended
        assert (
            EventSays(
                stage_ended.type,
                stage_ended.data.get("category"),
                stage_ended.data.get("error_type"),
                run_ended.type,
                run_ended.data.get("category"),
                run_ended.data.get("error_type"),
            )
            == EVENTS[case]
        )

        spans = span_exporter.get_finished_spans()
        (run_span,) = [s for s in spans if s.name == "pipeline case-" + case]
        stage_spans = [s for s in spans if s.name == "stage s"]
        attributes = dict(stage_spans[0].attributes or {}) if stage_spans else {}
        on_stage = [e for s in stage_spans for e in _closing(s)]
        closing = on_stage or _closing(run_span)
        (event,) = closing
        run_attributes = dict(run_span.attributes or {})
        assert (
            SpanSays(
                attributes.get(semconv.STAGE_RESULT),  # type: ignore[arg-type]
                attributes.get(semconv.ERROR_TYPE),  # type: ignore[arg-type]
                stage_spans[0].status.status_code.name if stage_spans else "-",
                f"{'stage' if on_stage else 'run'}: {event.name}",
                (event.attributes or {}).get(semconv.STAGE_RESULT),  # type: ignore[arg-type]
                run_attributes.get(semconv.RUN_RESULT),  # type: ignore[arg-type]
                run_attributes.get(semconv.ERROR_TYPE),  # type: ignore[arg-type]
                run_span.status.status_code.name,
            )
            == SPANS[case]
        )
        assert (event.attributes or {}).get(semconv.ERROR_TYPE) == expected.error_type

        durations = {
            ((p.attributes or {}).get(semconv.STAGE_RESULT), (p.attributes or {}).get(semconv.ERROR_TYPE))
            for p in metric_points(metric_reader, semconv.STAGE_DURATION.name)
            if (p.attributes or {}).get(semconv.STAGE_NAME) == "s"
        }
        skips = [
            p.value  # type: ignore[union-attr]
            for p in metric_points(metric_reader, semconv.STAGE_SKIPS.name)
            if (p.attributes or {}).get(semconv.STAGE_NAME) == "s"
        ]
        assert (durations, sum(skips)) == (
            set() if case == "conditional-skip" else {(expected.category, expected.error_type)},
            int(expected.category == "skip"),
        )

        runs = {
            (p.attributes or {}).get(semconv.RUN_RESULT): (p.attributes or {}).get(semconv.ERROR_TYPE)
            for p in metric_points(metric_reader, semconv.PIPELINE_RUN_DURATION.name)
        }
        errors = sum(
            p.value
            for p in metric_points(metric_reader, semconv.PIPELINE_RUN_ERRORS.name)
            if isinstance(p, NumberDataPoint)
        )
        assert (runs, errors) == (
            {expected.run_category: EVENTS[case].run_error_type},
            int(expected.run_category != "success"),
        )

        stats = DemoStats()
        stats.add(outcome_of(ran.error), ran.results.duration)

        class Health:
            export_failures: dict[str, int] = {}

        assert (
            _summary(stats, BreakerTally(), Health()).splitlines()[2] == f"  {expected.run_said:<18}      1"
        )
