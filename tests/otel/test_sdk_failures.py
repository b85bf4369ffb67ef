"""C9: an OpenTelemetry SDK that raises never changes a run's outcome, and is logged once per interceptor."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import logging
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.metrics import ExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import Attributes

from stageflow import (
    NoOpEventSink,
    Pipeline,
    PipelineFailedError,
    StageContext,
    StageKind,
    StageOutput,
    StageStatus,
)
from stageflow.interceptors import Interceptor
from stageflow_otel import MetricsInterceptor, TracingInterceptor
from stageflow_otel._outcome import Outcome
from stageflow_otel._tracing import _RunTrace, _StageSpan
from tests._stages import ok

from .conftest import Traced, entry_ctx, one_stage_graph

T = StageKind.TRANSFORM

TRACING_WARNING = (
    "stageflow_otel: TracingInterceptor: the OpenTelemetry SDK raised RuntimeError('{}'); the affected "
    "spans are incomplete or missing, the pipeline is unaffected (logged once)"
)
METRICS_WARNING = (
    "stageflow_otel: MetricsInterceptor: the OpenTelemetry SDK raised RuntimeError('exemplar boom'); "
    "some measurements are missing, the pipeline is unaffected (logged once)"
)


class RaisingProcessor(SpanProcessor):
    """A span processor that raises in ``on_start`` or ``on_end``."""

    def __init__(self, where: str) -> None:
        self.where = where

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Raise when configured to fail at the start."""
        if self.where == "start":
            raise RuntimeError("on_start boom")

    def on_end(self, span: ReadableSpan) -> None:
        """Raise when configured to fail at the end."""
        if self.where == "end":
            raise RuntimeError("on_end boom")


class RaisingExemplarFilter(ExemplarFilter):
    """An exemplar filter that raises, so every synchronous measurement raises inside the SDK."""

    def should_sample(
        self, value: float, time_unix_nano: int, attributes: Attributes, context: Context
    ) -> bool:
        """Raise."""
        raise RuntimeError("exemplar boom")


def raising_tracer_provider(where: str) -> TracerProvider:
    """A fresh tracer provider whose span processor raises at ``where``."""
    provider = TracerProvider()
    provider.add_span_processor(RaisingProcessor(where))
    return provider


@pytest.fixture(name="raising_meter_provider")
def _raising_meter_provider() -> Iterator[MeterProvider]:
    """A fresh meter provider whose every ``record``/``add`` raises."""
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()], exemplar_filter=RaisingExemplarFilter())
    yield provider
    provider.shutdown()


class Calls:
    """Counts stage executions by name."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def ok(self, name: str) -> Any:
        """A stage that counts itself and returns ``value=name``."""

        async def stage(ctx: StageContext) -> StageOutput:
            self.counts[name] = self.counts.get(name, 0) + 1
            return StageOutput.ok(value=name)

        return stage


def interceptors(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> list[Interceptor]:
    """Tracing and metrics interceptors on the given providers."""
    return [TracingInterceptor(tracer_provider), MetricsInterceptor(meter_provider)]


def warnings(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """Every record at warning level or above as ``(logger, message)`` (any logger, so core too)."""
    return [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]


def summary(results: Mapping[str, Any]) -> dict[str, tuple[StageStatus, dict[str, Any]]]:
    """Each stage's status and output data."""
    return {name: (r.status, dict(r.data)) for name, r in results.items()}


class TestSdkFailures:
    """SDK exceptions in the interceptors' start and end paths."""

    @pytest.mark.parametrize("where", ["start", "end"], ids=["on_start", "on_end"])
    async def test_results_unchanged(
        self, where: str, raising_meter_provider: MeterProvider, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A raising span processor and meter leave every stage's output as is, each run exactly once."""
        calls = Calls()
        pipeline = (
            Pipeline(name="p")
            .with_stage("a", calls.ok("a"), T)
            .with_stage("b", calls.ok("b"), T, dependencies=("a",))
        )
        graph = pipeline.build(
            interceptors=interceptors(raising_tracer_provider(where), raising_meter_provider)
        )
        caplog.set_level(logging.WARNING)
        for _ in range(2):
            results = await graph.run(entry_ctx())
            assert summary(results) == {
                "a": (StageStatus.OK, {"value": "a"}),
                "b": (StageStatus.OK, {"value": "b"}),
            }
        assert calls.counts == {"a": 2, "b": 2}
        assert sorted(warnings(caplog)) == [
            ("stageflow_otel", METRICS_WARNING),
            ("stageflow_otel", TRACING_WARNING.format(f"on_{where} boom")),
        ]

    async def test_stage_error_unchanged(
        self, raising_meter_provider: MeterProvider, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A stage's own exception reaches the caller, not the SDK's."""
        error = RuntimeError("kaput")
        calls = 0

        async def boom(ctx: StageContext) -> StageOutput:
            nonlocal calls
            calls += 1
            raise error

        graph = one_stage_graph(
            "p", "a", boom, *interceptors(raising_tracer_provider("end"), raising_meter_provider)
        )
        caplog.set_level(logging.WARNING)
        with pytest.raises(PipelineFailedError) as exc_info:
            await graph.run(entry_ctx())
        assert (exc_info.value.stage, exc_info.value.error, calls) == ("a", error, 1)
        assert sorted(warnings(caplog)) == [
            ("stageflow_otel", METRICS_WARNING),
            ("stageflow_otel", TRACING_WARNING.format("on_end boom")),
        ]

    async def test_cancellation_unchanged(
        self, raising_meter_provider: MeterProvider, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Cancelling the run propagates ``CancelledError`` and never runs the stage a second time."""
        started = asyncio.Event()
        never = asyncio.Event()
        calls = 0

        async def waits(ctx: StageContext) -> StageOutput:
            nonlocal calls
            calls += 1
            started.set()
            await never.wait()
            return StageOutput.ok()

        graph = one_stage_graph(
            "p", "a", waits, *interceptors(raising_tracer_provider("end"), raising_meter_provider)
        )
        caplog.set_level(logging.WARNING)
        task = asyncio.create_task(graph.run(entry_ctx()))
        async with asyncio.timeout(5):
            await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task
        assert calls == 1
        assert sorted(warnings(caplog)) == [
            ("stageflow_otel", METRICS_WARNING),
            ("stageflow_otel", TRACING_WARNING.format("on_end boom")),
        ]


class TestSpansEndedWhateverRaises:
    """A span whose end-of-attempt bookkeeping raises is ended all the same (the failure logged once)."""

    @staticmethod
    def raising_outcome(interceptor: TracingInterceptor, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make recording a stage's outcome on its span raise, as a broken SDK span would."""

        def boom(*args: object) -> None:
            raise RuntimeError("outcome boom")

        monkeypatch.setattr(interceptor, "_end_stage_outcome", boom)

    async def test_a_stage_span_whose_outcome_raises_is_still_ended(
        self, traced: Traced, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        self.raising_outcome(traced.interceptor, monkeypatch)
        caplog.set_level(logging.WARNING)
        results = await one_stage_graph("p", "a", ok, traced.interceptor).run(entry_ctx())
        assert (sorted(results), [s.name for s in traced.finished()], warnings(caplog)) == (
            ["a"],
            ["stage a", "pipeline p"],
            [("stageflow_otel", TRACING_WARNING.format("outcome boom"))],
        )

    def test_closing_a_run_ends_every_span_left_whatever_raises(
        self,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Two stage spans still open when the run ends: both are ended though the first one's raises."""
        interceptor = TracingInterceptor(tracer_provider)
        self.raising_outcome(interceptor, monkeypatch)
        tracer = tracer_provider.get_tracer("test")
        run = SimpleNamespace(run_id="r", pipeline_name="p")
        run_span = tracer.start_span("pipeline p")
        state = _RunTrace(interceptor, run, run_span, Context(), {}, NoOpEventSink())  # type: ignore[arg-type]
        for name in ("a", "b"):
            attempt = _StageSpan(tracer.start_span(f"stage {name}"), name)
            attempt.outcome = Outcome("error", "RuntimeError", "x")
            state.open[name] = attempt
        caplog.set_level(logging.WARNING)
        state.close()
        assert ([s.name for s in span_exporter.get_finished_spans()], state.open, warnings(caplog)) == (
            ["stage a", "stage b"],
            {},
            [("stageflow_otel", TRACING_WARNING.format("outcome boom"))],
        )
