"""The /metrics endpoint: collector-identical names, labels, explicit buckets and trace_id exemplars."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import urllib.request
from collections.abc import Iterator

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from stageflow import (
    ContextSnapshot,
    Pipeline,
    PipelineTimer,
    RunIdentity,
    StageContext,
    StageInputs,
    StageKind,
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


@pytest.fixture(name="reader")
def _reader() -> PrometheusMetricReader:
    """A fresh Prometheus bridge reader."""
    return PrometheusMetricReader()


@pytest.fixture(name="provider")
def _provider(reader: PrometheusMetricReader) -> Iterator[MeterProvider]:
    """A meter provider read by ``reader``."""
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture(name="server")
def _server(reader: PrometheusMetricReader, provider: MeterProvider) -> Iterator[MetricsServer]:
    """``/metrics`` on a free 127.0.0.1 port, closed at teardown."""
    server = start_metrics_server(reader, port=0)
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


def entry() -> StageContext:
    """An entry context with a fresh run id."""
    snapshot = ContextSnapshot(run_id=RunIdentity())
    return StageContext(snapshot, StageInputs(snapshot), "pipeline_entry", PipelineTimer())


class TestNames:
    @pytest.mark.parametrize("metric", semconv.METRICS, ids=[m.name for m in semconv.METRICS])
    def test_collector_naming_rules_give_the_semconv_prometheus_name(self, metric: semconv.Metric) -> None:
        """The collector's rules (dots, unit suffix, _total) applied to each metric give Metric.prometheus."""
        assert prometheus_name(metric.name, metric.unit, monotonic_sum=metric.instrument == "counter") == (
            metric.prometheus
        )

    def test_every_semconv_metric_is_served_under_its_prometheus_series(
        self, provider: MeterProvider, server: MetricsServer
    ) -> None:
        """One value recorded per semconv metric shows up under exactly the names dashboards query."""
        meter = provider.get_meter(semconv.INSTRUMENTATION_SCOPE)
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
        provider: MeterProvider,
        server: MetricsServer,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
    ) -> None:
        """Stage durations carry underscore labels, the semconv buckets, and an exemplar of the stage span."""
        graph = (
            Pipeline(name="p")
            .with_stage("greet", ok, StageKind.TRANSFORM)
            .build(interceptors=[TracingInterceptor(tracer_provider), MetricsInterceptor(provider)])
        )
        await graph.run(entry())
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
        self, provider: MeterProvider, server: MetricsServer
    ) -> None:
        """error.type present on one point only becomes an empty label on the others (Prometheus: absent)."""
        counter = provider.get_meter("t").create_counter(semconv.PIPELINE_RUN_ERRORS.name, unit="{run}")
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
        self, reader: PrometheusMetricReader, provider: MeterProvider
    ) -> None:
        """The bridge registers on the given registry and unregisters on (idempotent) close."""
        registry = CollectorRegistry()
        provider.get_meter("t").create_counter("x.y", unit="s").add(3)
        server = start_metrics_server(reader, port=0, registry=registry)
        try:
            assert [s.value for s in scrape(server) if s.name == "x_y_seconds_total"] == [3.0]
        finally:
            server.close()
            server.close()
        assert list(registry.collect()) == []

    def test_after_reader_shutdown_the_scrape_is_empty(
        self, reader: PrometheusMetricReader, provider: MeterProvider, server: MetricsServer
    ) -> None:
        """A shut-down meter provider yields an empty, still valid, scrape."""
        provider.get_meter("t").create_counter("c").add(1)
        provider.shutdown()
        assert scrape(server) == []
