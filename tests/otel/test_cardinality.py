"""Bounded cardinality: the pipeline and stage name guards and what ``/metrics`` serves from bad labels."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import urllib.request
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from stageflow import Pipeline
from stageflow_otel import (
    MetricsInterceptor,
    MetricsServer,
    OtlpEventSink,
    PrometheusMetricReader,
    semconv,
    start_metrics_server,
)
from stageflow_otel import _metrics as metrics_module
from stageflow_otel import _sink as sink_module
from stageflow_otel._guard import NameGuard
from tests._stages import T, ok
from tests._support import FakeClock

from .conftest import entry_ctx, metric_points


@pytest.fixture(name="clock")
def _clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The guards' clock (the interceptor's and the event sink's), under the test's control."""
    clock = FakeClock()
    monkeypatch.setattr(metrics_module, "_monotonic", clock)
    monkeypatch.setattr(sink_module, "_monotonic", clock)
    return clock


async def run(metrics: MetricsInterceptor, pipeline: str, stage: str = "s") -> None:
    """One run of a one-stage pipeline called ``pipeline``."""
    await Pipeline(name=pipeline).with_stage(stage, ok, T).build(interceptors=[metrics]).run(entry_ctx())


def runs_by_pipeline(reader: InMemoryMetricReader) -> dict[object, int]:
    """Run-duration counts by ``stageflow.pipeline.name``."""
    counts: Counter[object] = Counter()
    for point in metric_points(reader, semconv.PIPELINE_RUN_DURATION.name):
        counts[dict(point.attributes or {})[semconv.PIPELINE_NAME]] += point.count  # type: ignore[union-attr]
    return dict(counts)


def stages_by_name(reader: InMemoryMetricReader) -> dict[object, int]:
    """Stage-duration counts by ``stageflow.stage.name``."""
    counts: Counter[object] = Counter()
    for point in metric_points(reader, semconv.STAGE_DURATION.name):
        counts[dict(point.attributes or {})[semconv.STAGE_NAME]] += point.count  # type: ignore[union-attr]
    return dict(counts)


class TestPipelineGuard:
    async def test_pipeline_names_past_the_limit_are_other(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, clock: FakeClock
    ) -> None:
        """Pipelines past ``max_pipeline_series`` are recorded as ``_OTHER`` on every metric."""
        metrics = MetricsInterceptor(meter_provider, max_pipeline_series=2)
        for name in ("p1", "p2", "p3", "p4", "p1"):
            await run(metrics, name)
        assert runs_by_pipeline(metric_reader) == {"p1": 2, "p2": 1, "_OTHER": 2}
        active = metric_points(metric_reader, semconv.PIPELINE_RUN_ACTIVE.name)
        assert sorted(str(dict(p.attributes or {})[semconv.PIPELINE_NAME]) for p in active) == [
            "_OTHER",
            "p1",
            "p2",
        ]
        stage_pipelines = {
            dict(p.attributes or {})[semconv.PIPELINE_NAME]
            for p in metric_points(metric_reader, semconv.STAGE_DURATION.name)
        }
        assert stage_pipelines == {"p1", "p2", "_OTHER"}

    async def test_ten_thousand_pipelines_make_fifty_one_series(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, clock: FakeClock
    ) -> None:
        """With the defaults, 10,000 distinct pipelines give 50 named run series and ``_OTHER``."""
        metrics = MetricsInterceptor(meter_provider)
        for i in range(10_000):
            await run(metrics, f"pipeline-{i:05d}")
        counts = runs_by_pipeline(metric_reader)
        assert (len(counts), counts["_OTHER"], counts["pipeline-00049"]) == (51, 9_950, 1)

    async def test_an_idle_name_gives_its_slot_to_a_new_one(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, clock: FakeClock
    ) -> None:
        """The least recently used name loses its slot once idle for ``series_idle_timeout`` seconds."""
        metrics = MetricsInterceptor(meter_provider, max_pipeline_series=2, series_idle_timeout=600)
        await run(metrics, "first")
        await run(metrics, "second")
        clock.now += 599
        await run(metrics, "first")  # first is used again: second is now the least recently used
        await run(metrics, "third")  # no name idle for 600 s yet
        clock.now += 1
        await run(metrics, "third")  # second idle for 600 s: third takes its slot
        await run(metrics, "second")  # and second, now new again, finds no idle slot
        assert runs_by_pipeline(metric_reader) == {"first": 2, "second": 1, "third": 1, "_OTHER": 2}

    async def test_a_burst_of_new_names_evicts_no_name_in_use(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, clock: FakeClock
    ) -> None:
        """Names in use keep their slots however many new names arrive."""
        metrics = MetricsInterceptor(meter_provider, max_pipeline_series=2, series_idle_timeout=600)
        for step in range(5):
            await run(metrics, "a")
            await run(metrics, "b")
            for i in range(20):
                await run(metrics, f"burst-{step}-{i}")
            clock.now += 300
        assert runs_by_pipeline(metric_reader) == {"a": 5, "b": 5, "_OTHER": 100}


class TestStageGuard:
    async def test_the_first_stage_names_do_not_hold_their_slots_forever(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, clock: FakeClock
    ) -> None:
        """A stage name unused for the idle timeout gives its slot to a new stage name."""
        metrics = MetricsInterceptor(meter_provider, max_stage_series=1, series_idle_timeout=60)
        await run(metrics, "demo", "old")
        await run(metrics, "demo", "new")
        clock.now += 60
        await run(metrics, "demo", "new")
        assert stages_by_name(metric_reader) == {"old": 1, "_OTHER": 1, "new": 1}

    async def test_a_name_past_the_length_limit_is_other(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, clock: FakeClock
    ) -> None:
        """Pipeline and stage names longer than 256 characters are recorded as ``_OTHER``."""
        metrics = MetricsInterceptor(meter_provider)
        await run(metrics, "p" * 256, "s" * 257)
        await run(metrics, "p" * 257, "s" * 256)
        assert runs_by_pipeline(metric_reader) == {"p" * 256: 1, "_OTHER": 1}
        assert stages_by_name(metric_reader) == {"_OTHER": 1, "s" * 256: 1}

    @pytest.mark.parametrize(
        ("option", "value"),
        [("max_pipeline_series", 0), ("max_stage_series", 0), ("series_idle_timeout", -1.0)],
        ids=["pipelines", "stages", "idle"],
    )
    def test_invalid_options(self, meter_provider: MeterProvider, option: str, value: float) -> None:
        """Limits below one and negative idle timeouts are refused, naming the option and the value."""
        with pytest.raises(ValueError, match=f"^{option} must be .*, got {value!r}$"):
            MetricsInterceptor(meter_provider, **{option: value})  # type: ignore[arg-type]


class TestGuardUnderRaces:
    def test_a_slot_taken_away_mid_call_yields_other_not_an_error(self) -> None:
        """When another thread removes a slot mid-call the guard answers ``_OTHER`` instead of raising."""

        class Racing(OrderedDict[str, float]):
            def move_to_end(self, key: str, last: bool = True) -> None:
                del self[key]  # what a second thread evicting ``key`` right now would do
                super().move_to_end(key, last)

        guard = NameGuard("stage", 2, 600.0)
        guard._slots = Racing()
        assert [guard("a", 0.0), guard("a", 1.0), guard("b", 2.0)] == ["a", "_OTHER", "b"]


class TestEventCounterGuard:
    async def test_an_idle_name_gives_its_slot_and_its_counts_to_a_new_one(
        self, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, clock: FakeClock
    ) -> None:
        """``stageflow.events.emitted`` frees an idle stage name's slot (and drops its counts) after 600 s."""
        sink = OtlpEventSink(meter_provider=meter_provider, max_series=1, span_events=False)

        def emit(stage: str) -> None:
            sink.try_emit(type=f"stage.{stage}.completed", data={"pipeline": "p", "stage": stage})

        emit("old")
        emit("new")
        clock.now += 599
        emit("new")
        assert emitted(metric_reader) == {"old": 1, "_OTHER": 2}
        clock.now += 1
        emit("new")
        assert emitted(metric_reader) == {"_OTHER": 2, "new": 1}


def emitted(reader: InMemoryMetricReader) -> dict[object, float]:
    """``stageflow.events.emitted`` values by stage name."""
    return {
        dict(p.attributes or {})[semconv.STAGE_NAME]: p.value  # type: ignore[union-attr]
        for p in metric_points(reader, semconv.EVENTS_EMITTED.name)
    }


@pytest.fixture(name="served")
def _served() -> Iterator[tuple[MeterProvider, MetricsServer]]:
    """A meter provider whose metrics ``/metrics`` serves on a free 127.0.0.1 port."""
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server = start_metrics_server(reader, port=0)
    yield provider, server
    server.close()
    provider.shutdown()


def get(server: MetricsServer) -> tuple[int, str]:
    """The status and text of one scrape."""
    with urllib.request.urlopen(server.url, timeout=10) as response:
        return response.status, response.read().decode()


class TestMetricsLabels:
    def test_an_unencodable_label_value_is_escaped_not_a_500(
        self, served: tuple[MeterProvider, MetricsServer]
    ) -> None:
        """A lone surrogate in any label value is served backslash-escaped; scrapes keep answering 200."""
        provider, server = served
        provider.get_meter("other").create_counter("other.requests").add(1, {"path": "/caf\udce9"})
        status, text = get(server)
        assert status == 200
        assert 'other_requests_total{otel_scope_name="other",path="/caf\\\\udce9"} 1.0' in text

    def test_an_unencodable_description_or_label_name_is_no_500(
        self, served: tuple[MeterProvider, MetricsServer]
    ) -> None:
        """A lone surrogate in a metric's description (escaped) or an attribute key (as ``_``) is served."""
        provider, server = served
        meter = provider.get_meter("other")
        meter.create_counter("other.hits", description="hits on caf\udce9").add(1, {"k\udcffey": "v"})
        status, text = get(server)
        assert status == 200
        assert "# HELP other_hits_total hits on caf\\\\udce9" in text
        assert 'other_hits_total{k_ey="v",otel_scope_name="other"} 1.0' in text

    async def test_a_huge_label_value_is_cut_and_keeps_a_hash(
        self, served: tuple[MeterProvider, MetricsServer]
    ) -> None:
        """A 1 MB label value is served as its first 239 characters, ``~`` and a 16-digit hash."""
        provider, server = served
        counter = provider.get_meter("other").create_counter("other.requests")
        counter.add(1, {"path": "x" * 1_000_000})
        counter.add(2, {"path": "x" * 999_999 + "y"})
        status, text = get(server)
        lines = [line for line in text.splitlines() if line.startswith("other_requests_total{")]
        values = sorted(line.split('path="')[1].split('"')[0] for line in lines)
        assert (status, len(text) < 2_000, [len(v) for v in values]) == (200, True, [256, 256])
        assert [v[:240] for v in values] == ["x" * 239 + "~"] * 2
        assert values[0] != values[1]

    async def test_a_1_mb_stage_name_keeps_metrics_small(
        self, served: tuple[MeterProvider, MetricsServer]
    ) -> None:
        """A 1 MB stage name is served as ``_OTHER``: the page stays under 20 KB."""
        provider, server = served
        await run(MetricsInterceptor(provider), "p", "s" * 1_000_000)
        status, text = get(server)
        assert (status, len(text) < 20_000) == (200, True)
        assert 'stageflow_stage_name="_OTHER"' in text


class TestCollectorSpanMetrics:
    def test_spanmetrics_dimensions_are_bounded_and_expire(self) -> None:
        """The collector's spanmetrics connector caps its dimension sets and expires idle ones."""
        yaml = pytest.importorskip("yaml")
        path = Path(__file__).parents[2] / "collector" / "otelcol.yaml"
        connectors = yaml.safe_load(path.read_text(encoding="utf-8"))["connectors"]
        spanmetrics = connectors.get("span_metrics") or connectors["spanmetrics"]
        assert (spanmetrics["aggregation_cardinality_limit"], spanmetrics["series_expiration"]) == (
            2000,
            "10m",
        )
