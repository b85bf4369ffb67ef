"""MetricsInterceptor: instruments, attributes, buckets, exemplars, cardinality guard and breaker gauge."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import logging

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stageflow import (
    Pipeline,
    PipelineContext,
    PipelineFailedError,
    RetryPolicy,
    RunResult,
    StageContext,
    StageKind,
    StageOutput,
    StageRunner,
)
from stageflow.interceptors import (
    BaseInterceptor,
    CircuitBreakerInterceptor,
    ErrorAction,
    Interceptor,
    TimeoutInterceptor,
)
from stageflow_otel import MetricsInterceptor, semconv
from tests._stages import T, boom, chain, diamond, fail, hang, hang_once_started, ok, skip
from tests._support import cancel_once_started

from .conftest import entry_ctx, metric_points, one_stage_graph

Attrs = frozenset[tuple[str, object]]


def histograms(reader: InMemoryMetricReader, name: str) -> dict[Attrs, HistogramDataPoint]:
    """The histogram points of ``name`` by attribute set."""
    points = metric_points(reader, name)
    assert all(isinstance(p, HistogramDataPoint) for p in points)
    return {frozenset((p.attributes or {}).items()): p for p in points if isinstance(p, HistogramDataPoint)}


def sums(reader: InMemoryMetricReader, name: str) -> dict[Attrs, float]:
    """The counter, up-down counter or gauge values of ``name`` by attribute set."""
    points = metric_points(reader, name)
    assert all(isinstance(p, NumberDataPoint) for p in points)
    return {
        frozenset((p.attributes or {}).items()): p.value for p in points if isinstance(p, NumberDataPoint)
    }


def stage_attrs(stage: str, kind: str = "transform", **extra: str) -> Attrs:
    """The attribute set of a stage metric point of pipeline ``demo``."""
    return frozenset(
        {
            "stageflow.pipeline.name": "demo",
            "stageflow.stage.name": stage,
            "stageflow.stage.kind": kind,
            **extra,
        }.items()
    )


async def run_diamond(*interceptors: Interceptor) -> RunResult:
    """One run of the diamond pipeline ``demo`` built with ``interceptors``."""
    return await diamond().build(interceptors=list(interceptors)).run(entry_ctx())


class TestStageMetrics:
    """Stage duration and wait histograms."""

    @pytest.mark.parametrize(
        ("metric", "result"),
        [
            (semconv.STAGE_DURATION.name, {"stageflow.stage.result": "success"}),
            (semconv.STAGE_WAIT_DURATION_METRIC.name, {}),
        ],
        ids=["duration", "wait"],
    )
    async def test_stage_duration_and_wait_points(
        self,
        meter_provider: MeterProvider,
        metric_reader: InMemoryMetricReader,
        metric: str,
        result: dict[str, str],
    ) -> None:
        """Each stage records one duration with pipeline, name, kind and result, and its wait once, without
        a result attribute; both in the semconv buckets."""
        await run_diamond(MetricsInterceptor(meter_provider))
        points = histograms(metric_reader, metric)
        assert set(points) == {
            stage_attrs("a", **result),
            stage_attrs("b", **result),
            stage_attrs("c", "enrich", **result),
            stage_attrs("d", **result),
        }
        assert {(p.count, tuple(p.explicit_bounds)) for p in points.values()} == {
            (1, semconv.DURATION_BUCKETS)
        }

    @pytest.mark.parametrize(
        ("runner", "result", "error_type"),
        [(boom, "error", "RuntimeError"), (fail, "failure", "StageFailedError")],
        ids=["raises", "fail-output"],
    )
    async def test_failure_attributes(
        self,
        meter_provider: MeterProvider,
        metric_reader: InMemoryMetricReader,
        runner: StageRunner,
        result: str,
        error_type: str,
    ) -> None:
        """A failed stage's duration carries its result and ``error.type``."""
        graph = one_stage_graph("demo", "x", runner, MetricsInterceptor(meter_provider))
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx())
        assert set(histograms(metric_reader, semconv.STAGE_DURATION.name)) == {
            stage_attrs("x", **{"stageflow.stage.result": result, "error.type": error_type})
        }

    async def test_timeout_attributes(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """A timed-out stage records result and ``error.type`` ``timeout``."""
        graph = one_stage_graph(
            "demo", "slow", hang, MetricsInterceptor(meter_provider), TimeoutInterceptor(0.01)
        )
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx())
        assert set(histograms(metric_reader, semconv.STAGE_DURATION.name)) == {
            stage_attrs("slow", **{"stageflow.stage.result": "timeout", "error.type": "StageTimeoutError"})
        }

    async def test_exemplars_carry_stage_span(
        self,
        interceptors: list[Interceptor],
        span_exporter: InMemorySpanExporter,
        metric_reader: InMemoryMetricReader,
    ) -> None:
        """Stage durations are recorded inside the stage span, so exemplars carry its trace and span id."""
        # Metrics listed before tracing: the nesting follows the interceptors' priority, not the list order.
        await run_diamond(*reversed(interceptors))
        spans = {
            (s.attributes or {})["stageflow.stage.name"]: s
            for s in span_exporter.get_finished_spans()
            if s.name.startswith("stage ")
        }
        points = histograms(metric_reader, semconv.STAGE_DURATION.name)
        seen = {}
        for attrs, point in points.items():
            stage = dict(attrs)["stageflow.stage.name"]
            assert len(point.exemplars) == 1
            exemplar = point.exemplars[0]
            seen[stage] = (exemplar.trace_id, exemplar.span_id)
        assert seen == {name: (s.context.trace_id, s.context.span_id) for name, s in spans.items()}


class _FallBack(BaseInterceptor):
    """Turns any error into ``BaseInterceptor.fallback``'s skip, outside the metrics interceptor."""

    name = "fall_back"
    priority = 5

    async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
        return ErrorAction.FALLBACK


class TestSettledStageResults:
    async def test_an_attempt_an_outer_interceptor_fell_back_from_is_a_skip(
        self,
        interceptors: list[Interceptor],
        span_exporter: InMemorySpanExporter,
        metric_reader: InMemoryMetricReader,
    ) -> None:
        """The stage settled as a skip: its duration says ``skip`` without ``error.type``, as its span and
        events do; the point is recorded in the run's trace."""
        await one_stage_graph("demo", "x", boom, _FallBack(), *interceptors).run(entry_ctx())
        points = histograms(metric_reader, semconv.STAGE_DURATION.name)
        assert set(points) == {stage_attrs("x", **{"stageflow.stage.result": "skip"})}
        (trace_id,) = {s.context.trace_id for s in span_exporter.get_finished_spans()}
        assert [e.trace_id for p in points.values() for e in p.exemplars] == [trace_id]
        assert sums(metric_reader, semconv.STAGE_SKIPS.name) == {stage_attrs("x"): 1}

    async def test_each_retried_attempt_keeps_its_own_result(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """Two attempts that raised and a third that succeeded record two errors and a success."""
        calls = []

        async def flaky(ctx: StageContext) -> StageOutput:
            calls.append(ctx.attempt)
            if len(calls) < 3:
                raise ConnectionError("try again")
            return StageOutput.ok()

        graph = one_stage_graph(
            "demo",
            "x",
            flaky,
            MetricsInterceptor(meter_provider),
            retry=RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0),
        )
        await graph.run(entry_ctx())
        counts = {
            dict(attrs)["stageflow.stage.result"]: point.count
            for attrs, point in histograms(metric_reader, semconv.STAGE_DURATION.name).items()
        }
        assert (calls, counts) == ([1, 2, 3], {"error": 2, "success": 1})


class TestRunMetrics:
    """Run duration, active runs, run errors, skips and the critical path."""

    async def test_run_duration_and_active(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """A run counts as active while it runs, then records its duration with its result."""
        seen_active: list[dict[Attrs, float]] = []

        async def look(ctx: StageContext) -> StageOutput:
            seen_active.append(sums(metric_reader, semconv.PIPELINE_RUN_ACTIVE.name))
            return StageOutput.ok()

        graph = one_stage_graph("demo", "look", look, MetricsInterceptor(meter_provider))
        await graph.run(entry_ctx())
        pipeline = frozenset({("stageflow.pipeline.name", "demo")})
        assert seen_active == [{pipeline: 1}]
        assert sums(metric_reader, semconv.PIPELINE_RUN_ACTIVE.name) == {pipeline: 0}
        runs = histograms(metric_reader, semconv.PIPELINE_RUN_DURATION.name)
        assert {k: (p.count, tuple(p.explicit_bounds)) for k, p in runs.items()} == {
            frozenset({("stageflow.pipeline.name", "demo"), ("stageflow.run.result", "success")}): (
                1,
                semconv.DURATION_BUCKETS,
            )
        }
        assert sums(metric_reader, semconv.PIPELINE_RUN_ERRORS.name) == {}

    async def test_run_errors(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """A failed run is counted in run errors with its result and ``error.type``."""
        graph = one_stage_graph("demo", "x", boom, MetricsInterceptor(meter_provider))
        for _ in range(2):
            with pytest.raises(PipelineFailedError):
                await graph.run(entry_ctx())
        expected = frozenset(
            {
                ("stageflow.pipeline.name", "demo"),
                ("stageflow.run.result", "error"),
                ("error.type", "RuntimeError"),
            }
        )
        assert sums(metric_reader, semconv.PIPELINE_RUN_ERRORS.name) == {expected: 2}
        assert set(histograms(metric_reader, semconv.PIPELINE_RUN_DURATION.name)) == {expected}

    async def test_cancelled_run(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """A run whose caller is cancelled is no longer active and counts as a ``cancelled`` error."""
        started = asyncio.Event()

        graph = one_stage_graph(
            "demo", "hang", hang_once_started(started), MetricsInterceptor(meter_provider)
        )
        await cancel_once_started(graph.run(entry_ctx()), started)
        pipeline = frozenset({("stageflow.pipeline.name", "demo")})
        assert sums(metric_reader, semconv.PIPELINE_RUN_ACTIVE.name) == {pipeline: 0}
        assert sums(metric_reader, semconv.PIPELINE_RUN_ERRORS.name) == {
            pipeline | {("stageflow.run.result", "cancellation"), ("error.type", "cancelled")}: 1
        }

    async def test_critical_path(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """Only stages on the run's critical path record a critical-path duration of wait plus duration."""
        result = await run_diamond(MetricsInterceptor(meter_provider))
        points = histograms(metric_reader, semconv.STAGE_CRITICAL_PATH_DURATION.name)
        kinds = {"a": "transform", "b": "transform", "c": "enrich", "d": "transform"}
        assert set(points) == {stage_attrs(name, kinds[name]) for name in result.critical_path}
        for name in result.critical_path:
            r = result[name]
            assert points[stage_attrs(name, kinds[name])].sum == pytest.approx(r.wait + r.duration)

    async def test_skips(self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader) -> None:
        """Stages that skip themselves and conditional stages the executor skips are both counted."""
        graph = (
            Pipeline(name="demo")
            .with_stage("s", skip, T)
            .with_stage("cond", ok, StageKind.GUARD, dependencies=("s",), conditional=True)
            .build(interceptors=[MetricsInterceptor(meter_provider)])
        )
        await graph.run(entry_ctx())
        assert sums(metric_reader, semconv.STAGE_SKIPS.name) == {
            stage_attrs("s"): 1,
            stage_attrs("cond", "guard"): 1,
        }


class TestCardinality:
    """The stage-name cardinality guard."""

    async def test_overflow_folds_into_other(
        self,
        meter_provider: MeterProvider,
        metric_reader: InMemoryMetricReader,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Stage names past ``max_stage_series`` are recorded as ``_OTHER``, with one warning."""
        caplog.set_level(logging.WARNING, logger="stageflow_otel")
        graph = chain(("a", ok), ("b", ok), ("c", ok), ("d", ok), name="demo").build(
            interceptors=[MetricsInterceptor(meter_provider, max_stage_series=2)]
        )
        await graph.run(entry_ctx())
        await graph.run(entry_ctx())
        points = histograms(metric_reader, semconv.STAGE_DURATION.name)
        success = {"stageflow.stage.result": "success"}
        assert {k: p.count for k, p in points.items()} == {
            stage_attrs("a", **success): 2,
            stage_attrs("b", **success): 2,
            stage_attrs("_OTHER", **success): 4,
        }
        assert len([r for r in caplog.records if r.name == "stageflow_otel"]) == 1

    def test_invalid_limit(self, meter_provider: MeterProvider) -> None:
        """A limit below one is rejected."""
        with pytest.raises(ValueError, match="max_stage_series"):
            MetricsInterceptor(meter_provider, max_stage_series=0)


class TestCircuitBreakerGauge:
    """The ``stageflow.circuit_breaker.state`` gauge."""

    async def test_gauge_follows_breaker(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """The gauge reports 2 (open) for a stage whose breaker opened, and 0 for a closed one."""
        breaker = CircuitBreakerInterceptor(failure_threshold=1, recovery_timeout=3600)
        metrics = MetricsInterceptor(meter_provider)
        metrics.observe_circuit_breaker(breaker)
        graph = (
            Pipeline(name="demo")
            .with_stage("fine", ok, T)
            .with_stage("x", boom, T, dependencies=("fine",))
            .build(interceptors=[metrics, breaker])
        )
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx())
        states = sums(metric_reader, semconv.CIRCUIT_BREAKER_STATE.name)
        assert states[frozenset({("stageflow.pipeline.name", "demo"), ("stageflow.stage.name", "x")})] == 2

    async def test_existing_states_are_reported(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """A breaker observed after it opened is reported from its current state."""
        breaker = CircuitBreakerInterceptor(failure_threshold=1, recovery_timeout=3600)
        graph = Pipeline(name="demo").with_stage("x", boom, T).build(interceptors=[breaker])
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx())
        MetricsInterceptor(meter_provider).observe_circuit_breaker(breaker)
        assert sums(metric_reader, semconv.CIRCUIT_BREAKER_STATE.name) == {
            frozenset({("stageflow.pipeline.name", "demo"), ("stageflow.stage.name", "x")}): 2
        }

    async def test_every_stage_with_state_is_reported(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """Stages whose breaker ran but never changed state are reported closed (0)."""
        breaker = CircuitBreakerInterceptor(failure_threshold=100)
        metrics = MetricsInterceptor(meter_provider)
        metrics.observe_circuit_breaker(breaker)
        graph = diamond().build(interceptors=[metrics, breaker])
        await graph.run(entry_ctx())
        assert sums(metric_reader, semconv.CIRCUIT_BREAKER_STATE.name) == {
            frozenset({("stageflow.pipeline.name", "demo"), ("stageflow.stage.name", name)}): 0
            for name in "abcd"
        }

    async def test_overflow_series_reports_the_worst_state(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
    ) -> None:
        """Stages past ``max_stage_series`` share the ``_OTHER`` series, which shows the most open state."""
        breaker = CircuitBreakerInterceptor(failure_threshold=1, recovery_timeout=3600)
        metrics = MetricsInterceptor(meter_provider, max_stage_series=1)
        metrics.observe_circuit_breaker(breaker)
        graph = chain(("a", ok), ("b", ok), ("c", boom), ("d", ok), name="demo").build(
            interceptors=[metrics, breaker]
        )
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx())
        assert sums(metric_reader, semconv.CIRCUIT_BREAKER_STATE.name) == {
            frozenset({("stageflow.pipeline.name", "demo"), ("stageflow.stage.name", "a")}): 0,
            frozenset({("stageflow.pipeline.name", "demo"), ("stageflow.stage.name", "_OTHER")}): 2,
        }


class TestNoSdk:
    """The fast path when no SDK is configured."""

    async def test_noop_provider(self) -> None:
        """With a no-op provider the run works unchanged."""
        graph = diamond().build(interceptors=[MetricsInterceptor(NoOpMeterProvider())])
        assert sorted(await graph.run(entry_ctx())) == ["a", "b", "c", "d"]

    async def test_sdk_disabled(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``OTEL_SDK_DISABLED=true`` records nothing."""
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        graph = diamond().build(interceptors=[MetricsInterceptor(provider)])
        await graph.run(entry_ctx())
        assert metric_points(reader, semconv.STAGE_DURATION.name) == []
        provider.shutdown()

    async def test_global_default_without_sdk(self) -> None:
        """``MetricsInterceptor()`` with no global SDK provider passes runs straight through."""
        graph = diamond().build(interceptors=[MetricsInterceptor()])
        assert sorted(await graph.run(entry_ctx())) == ["a", "b", "c", "d"]
