"""The /metrics endpoint: collector-identical names, labels, explicit buckets and trace_id exemplars."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import errno
import logging
import socket
import urllib.request
from collections.abc import Iterator

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from stageflow import (
    StageContext,
    StageOutput,
)
from stageflow_otel import (
    MetricsInterceptor,
    MetricsServer,
    PrometheusMetricReader,
    TracingInterceptor,
    semconv,
    start_metrics_server,
)
from stageflow_otel._prometheus import prometheus_name

from .conftest import entry_ctx, one_stage_graph


@pytest.fixture(name="metric_reader")
def _reader() -> PrometheusMetricReader:
    """A fresh Prometheus bridge reader. It overrides conftest's in-memory ``metric_reader`` for this
    module, so conftest's ``meter_provider`` (a fresh meter provider, shut down at teardown, which takes any
    reader) is read by this one."""
    return PrometheusMetricReader()


@pytest.fixture(name="server")
def _server(metric_reader: PrometheusMetricReader, meter_provider: MeterProvider) -> Iterator[MetricsServer]:
    """``/metrics`` on a free 127.0.0.1 port, closed at teardown."""
    server = start_metrics_server(metric_reader, port=0)
    yield server
    server.close()


def scrape(server: MetricsServer) -> list[Sample]:
    """Every sample of an OpenMetrics scrape of ``server`` over HTTP."""
    request = urllib.request.Request(server.url, headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        text = response.read().decode()
    families = text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
    return [s for family in families for s in family.samples]


async def ok(ctx: StageContext) -> StageOutput:
    """A stage that succeeds."""
    return StageOutput.ok(done=True)


class TestNames:
    @pytest.mark.parametrize("metric", semconv.METRICS, ids=[m.name for m in semconv.METRICS])
    def test_collector_naming_rules_give_the_semconv_prometheus_name(self, metric: semconv.Metric) -> None:
        """The collector's rules (dots, unit suffix, _total) applied to each metric give Metric.prometheus."""
        assert prometheus_name(metric.name, metric.unit, monotonic_sum=metric.instrument == "counter") == (
            metric.prometheus
        )

    def test_every_semconv_metric_is_served_under_its_prometheus_series(
        self, meter_provider: MeterProvider, server: MetricsServer
    ) -> None:
        """One value recorded per semconv metric shows up under exactly the names dashboards query."""
        meter = meter_provider.get_meter(semconv.INSTRUMENTATION_SCOPE)
        for m in semconv.METRICS:
            if m.instrument == "histogram":
                meter.create_histogram(m.name, unit=m.unit).record(0.2)
            elif m.instrument == "counter":
                meter.create_counter(m.name, unit=m.unit).add(1)
            elif m.instrument == "updowncounter":
                meter.create_up_down_counter(m.name, unit=m.unit).add(1)
            else:
                meter.create_gauge(m.name, unit=m.unit).set(2)
        names = {s.name for s in scrape(server)}
        expected = {series for m in semconv.METRICS for series in m.prometheus_series}
        assert expected - names == set()
        assert {n for n in names if not n.endswith("_created")} - expected == set()


class TestSamples:
    async def test_stage_histogram_has_labels_buckets_and_trace_exemplars(
        self,
        meter_provider: MeterProvider,
        server: MetricsServer,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
    ) -> None:
        """Stage durations carry underscore labels, the semconv buckets, and an exemplar of the stage span."""
        graph = one_stage_graph(
            "p", "greet", ok, TracingInterceptor(tracer_provider), MetricsInterceptor(meter_provider)
        )
        await graph.run(entry_ctx())
        samples = scrape(server)
        buckets = [s for s in samples if s.name == semconv.STAGE_DURATION.prometheus + "_bucket"]
        assert [s.labels["le"] for s in buckets] == [*(repr(b) for b in semconv.DURATION_BUCKETS), "+Inf"]
        labels = {k: v for k, v in buckets[0].labels.items() if k != "le"}
        assert labels == {
            semconv.OTEL_SCOPE_LABEL: semconv.INSTRUMENTATION_SCOPE,
            "stageflow_pipeline_name": "p",
            "stageflow_stage_name": "greet",
            "stageflow_stage_kind": "transform",
            "stageflow_stage_result": "success",
        }
        stage = next(s.context for s in span_exporter.get_finished_spans() if s.name == "stage greet")
        assert [s.exemplar.labels for s in buckets if s.exemplar is not None] == [
            {"trace_id": format(stage.trace_id, "032x"), "span_id": format(stage.span_id, "016x")}
        ]

    def test_points_with_different_attributes_share_a_label_set(
        self, meter_provider: MeterProvider, server: MetricsServer
    ) -> None:
        """error.type present on one point only becomes an empty label on the others (Prometheus: absent)."""
        counter = meter_provider.get_meter("t").create_counter(semconv.PIPELINE_RUN_ERRORS.name, unit="{run}")
        counter.add(1, {semconv.PIPELINE_NAME: "p"})
        counter.add(2, {semconv.PIPELINE_NAME: "p", semconv.ERROR_TYPE: "timeout"})
        values = {
            s.labels["error_type"]: s.value
            for s in scrape(server)
            if s.name == semconv.PIPELINE_RUN_ERRORS.prometheus
        }
        assert values == {"": 1.0, "timeout": 2.0}


class TestServer:
    def test_binds_loopback_with_a_fresh_registry(self, server: MetricsServer) -> None:
        """By default /metrics listens on 127.0.0.1 and serves its own registry, not the global one."""
        assert (server.addr, server.url.startswith("http://127.0.0.1:"), server.registry is REGISTRY) == (
            "127.0.0.1",
            True,
            False,
        )

    def test_an_injected_registry_is_served_and_released_on_close(
        self, metric_reader: PrometheusMetricReader, meter_provider: MeterProvider
    ) -> None:
        """The bridge registers on the given registry and unregisters on (idempotent) close."""
        registry = CollectorRegistry()
        meter_provider.get_meter("t").create_counter("x.y", unit="s").add(3)
        server = start_metrics_server(metric_reader, port=0, registry=registry)
        try:
            assert [s.value for s in scrape(server) if s.name == "x_y_seconds_total"] == [3.0]
        finally:
            server.close()
            server.close()
        assert list(registry.collect()) == []

    def test_a_busy_port_raises_naming_it_and_how_to_choose_another(
        self, metric_reader: PrometheusMetricReader
    ) -> None:
        """start_metrics_server on a port in use raises an OSError that names the port and the fix."""
        registry = CollectorRegistry()
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(OSError) as caught:
                start_metrics_server(metric_reader, port=port, registry=registry)
        assert (caught.value.errno, caught.value.strerror, list(registry.collect())) == (
            errno.EADDRINUSE,
            f"127.0.0.1:{port} is already in use (by another process, or an earlier setup() in this one); "
            "serve /metrics on another port with OTEL_EXPORTER_PROMETHEUS_PORT or setup(metrics_port=...) "
            "(0: any free port), or on none with OTEL_METRICS_EXPORTER=otlp (or none)",
            [],
        )

    def test_after_reader_shutdown_the_scrape_is_empty(
        self, metric_reader: PrometheusMetricReader, meter_provider: MeterProvider, server: MetricsServer
    ) -> None:
        """A shut-down meter provider yields an empty, still valid, scrape."""
        meter_provider.get_meter("t").create_counter("c").add(1)
        meter_provider.shutdown()
        assert scrape(server) == []


class TestSeriesBound:
    def test_names_rotating_through_never_hold_more_than_max_series(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Five rounds of ten new label sets, scraped after each, leave the ten newest; forty evicted, one
        warning."""
        reader = PrometheusMetricReader(max_series=10)
        provider = MeterProvider(metric_readers=[reader])
        server = start_metrics_server(reader, port=0)
        counter = provider.get_meter("t").create_counter("rotating")
        held = []
        try:
            with caplog.at_level(logging.WARNING, logger="stageflow_otel"):
                for round_ in range(5):
                    for i in range(10):
                        counter.add(1, {"name": f"n{round_ * 10 + i}"})
                    held.append(len([s for s in scrape(server) if s.name == "rotating_total"]))
            names = sorted(s.labels["name"] for s in scrape(server) if s.name == "rotating_total")
        finally:
            server.close()
            provider.shutdown()
        assert (held, names, reader.series, reader.series_evicted) == (
            [10, 10, 10, 10, 10],
            sorted(f"n{i}" for i in range(40, 50)),
            10,
            40,
        )
        assert [r.getMessage() for r in caplog.records] == [
            "stageflow_otel: /metrics holds at most 10 series; a new series of rotating {'name': 'n10'} "
            "evicts the one updated least recently (this and every later eviction is counted in "
            "PrometheusMetricReader.series_evicted; raise STAGEFLOW_OTEL_METRICS_MAX_SERIES to keep more)"
        ]

    def test_a_series_in_use_is_not_evicted_by_new_ones(self) -> None:
        """Eviction takes the series updated least recently: one updated every round stays, cumulative."""
        reader = PrometheusMetricReader(max_series=3)
        provider = MeterProvider(metric_readers=[reader])
        counter = provider.get_meter("t").create_counter("c")
        try:
            for i in range(6):
                counter.add(1, {"name": "busy"})
                counter.add(1, {"name": f"new{i}"})
                reader.snapshot()
            data = reader.snapshot()
        finally:
            provider.shutdown()
        assert data is not None
        points = {
            str(p.attributes["name"]): p.value
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            for p in m.data.data_points
            if isinstance(p, NumberDataPoint) and p.attributes
        }
        assert (points, reader.series_evicted) == ({"busy": 6, "new4": 1, "new5": 1}, 4)

    def test_counters_and_histograms_stay_cumulative_across_scrapes(
        self, metric_reader: PrometheusMetricReader, meter_provider: MeterProvider, server: MetricsServer
    ) -> None:
        """Added over three scrapes, a counter shows the running total and a histogram every bucket count."""
        meter = meter_provider.get_meter("t")
        counter = meter.create_counter("runs")
        histogram = meter.create_histogram("took", unit="s")
        for value, seconds in ((2, 0.002), (3, 0.2), (4, 7.0)):
            counter.add(value)
            histogram.record(seconds)
            samples = scrape(server)
        counts = {s.name: s.value for s in samples if s.name in ("runs_total", "took_seconds_count")}
        buckets = {
            s.labels["le"]: s.value
            for s in samples
            if s.name == "took_seconds_bucket" and s.labels["le"] in ("0.0025", "0.25", "10.0", "+Inf")
        }
        assert (counts, buckets) == (
            {"runs_total": 9.0, "took_seconds_count": 3.0},
            {"0.0025": 1.0, "0.25": 2.0, "10.0": 3.0, "+Inf": 3.0},
        )

    def test_an_evicted_series_that_comes_back_starts_from_zero(self) -> None:
        """With room for one series, a counter evicted and updated again shows only what came since."""
        reader = PrometheusMetricReader(max_series=1)
        provider = MeterProvider(metric_readers=[reader])
        counter = provider.get_meter("t").create_counter("c")
        values = []
        try:
            for name, value in (("a", 5), ("b", 1), ("a", 2)):
                counter.add(value, {"name": name})
                data = reader.snapshot()
                assert data is not None
                values += [
                    (str(p.attributes["name"]), p.value)
                    for rm in data.resource_metrics
                    for sm in rm.scope_metrics
                    for m in sm.metrics
                    for p in m.data.data_points
                    if isinstance(p, NumberDataPoint) and p.attributes
                ]
        finally:
            provider.shutdown()
        assert values == [("a", 5), ("b", 1), ("a", 2)]

    def test_the_limit_comes_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """STAGEFLOW_OTEL_METRICS_MAX_SERIES sets the default limit; unset, it is 2,000."""
        unset = PrometheusMetricReader().max_series
        monkeypatch.setenv("STAGEFLOW_OTEL_METRICS_MAX_SERIES", "75")
        assert (unset, PrometheusMetricReader().max_series) == (2000, 75)

    @pytest.mark.parametrize("raw", ["0", "-3", "many"])
    def test_a_bad_limit_is_refused_naming_it(self, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
        """A limit below 1 or not a number is refused with the variable and its value."""
        monkeypatch.setenv("STAGEFLOW_OTEL_METRICS_MAX_SERIES", raw)
        with pytest.raises(ValueError) as caught:
            PrometheusMetricReader()
        assert str(caught.value) == (
            f"STAGEFLOW_OTEL_METRICS_MAX_SERIES={raw!r}: the most series /metrics holds must be a whole "
            "number of at least 1"
        )

    @pytest.mark.parametrize("value", [0, -1, True, 2.5])
    def test_a_bad_argument_is_refused_naming_it(self, value: object) -> None:
        """max_series must be an int of at least 1."""
        with pytest.raises(ValueError) as caught:
            PrometheusMetricReader(max_series=value)  # type: ignore[arg-type]
        assert str(caught.value) == f"max_series must be an int of at least 1, got {value!r}"
