"""collector/otelcol.yaml: complete pipelines, shipped components, hosts and ports that match the stack."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from stageflow_otel import semconv

from ._assets import COLLECTOR, load_yaml

CONTRIB_VERSION = "0.161.0"
"""The pinned image's version (docker-compose.yml); the component names below are the ones it ships."""

CONTRIB_COMPONENTS: dict[str, frozenset[str]] = {
    # From the otelcol-contrib distribution manifest
    # (open-telemetry/opentelemetry-collector-releases, distributions/otelcol-contrib/manifest.yaml),
    # restricted to the components this stack could plausibly use. In 0.161.0 the OTLP exporters are
    # named `otlp_grpc` and `otlp_http` (`otlp` / `otlphttp` remain as deprecated aliases), the spanmetrics
    # connector `span_metrics` (alias `spanmetrics`), the filelog receiver `file_log` (alias `filelog`), and
    # the `loki` exporter no longer exists (removed in v0.131.0).
    "receivers": frozenset(
        {"otlp", "prometheus", "hostmetrics", "file_log", "filelog", "jaeger", "zipkin", "nop"}
    ),
    "processors": frozenset(
        {
            "batch",
            "memory_limiter",
            "attributes",
            "resource",
            "resourcedetection",
            "filter",
            "transform",
            "tail_sampling",
            "probabilistic_sampler",
        }
    ),
    "exporters": frozenset(
        {
            "otlp_grpc",
            "otlp_http",
            "otlp",
            "otlphttp",
            "prometheus",
            "prometheusremotewrite",
            "debug",
            "file",
            "nop",
        }
    ),
    "connectors": frozenset({"span_metrics", "servicegraph", "forward", "count", "routing"}),
    "extensions": frozenset({"health_check", "healthcheckv2", "pprof", "zpages", "file_storage"}),
}

KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")


def _type(component_id: str) -> str:
    """The component type of an id like ``otlp_grpc/jaeger``."""
    return component_id.split("/", 1)[0]


def _port(endpoint: str) -> int:
    """The port of ``host:port`` or a URL."""
    return int(endpoint.rsplit(":", 1)[1].split("/", 1)[0])


def _published_container_ports(service: dict[str, Any]) -> set[int]:
    """Container ports a compose service publishes."""
    return {int(str(p).rsplit(":", 1)[1].split("/")[0]) for p in service.get("ports", [])}


class TestComponents:
    """Every component is defined, shipped in the pinned contrib version, and used."""

    def test_image_is_the_version_the_component_list_describes(self, services: dict[str, Any]) -> None:
        """The compose file runs the contrib version whose component names this test knows."""
        image = services["otel-collector"]["image"]
        assert image.startswith(f"otel/opentelemetry-collector-contrib:{CONTRIB_VERSION}@")

    @pytest.mark.parametrize("kind", KINDS, ids=list(KINDS))
    def test_defined_components_ship_in_contrib(self, otelcol: dict[str, Any], kind: str) -> None:
        """Each defined component's type exists in otelcol-contrib 0.161.0."""
        defined = {_type(c) for c in otelcol.get(kind) or {}}
        assert defined - CONTRIB_COMPONENTS[kind] == set()

    def test_pipeline_components_are_defined(self, otelcol: dict[str, Any]) -> None:
        """Every receiver, processor and exporter a pipeline names is defined (connectors count as both)."""
        connectors = set(otelcol.get("connectors") or {})
        undefined = []
        for name, pipeline in otelcol["service"]["pipelines"].items():
            for role, kind in (
                ("receivers", "receivers"),
                ("processors", "processors"),
                ("exporters", "exporters"),
            ):
                allowed = set(otelcol.get(kind) or {}) | (connectors if role != "processors" else set())
                undefined += [(name, c) for c in pipeline.get(role, []) if c not in allowed]
        assert undefined == []

    def test_extensions_in_service_are_defined(self, otelcol: dict[str, Any]) -> None:
        """Every extension the service enables is defined."""
        assert set(otelcol["service"]["extensions"]) <= set(otelcol["extensions"])

    def test_every_pipeline_has_receivers_and_exporters(self, otelcol: dict[str, Any]) -> None:
        """No pipeline lacks a receiver or an exporter."""
        pipelines = otelcol["service"]["pipelines"]
        assert [n for n, p in pipelines.items() if not p.get("receivers") or not p.get("exporters")] == []

    def test_every_defined_component_is_used(self, otelcol: dict[str, Any]) -> None:
        """Nothing is defined and left unused."""
        used = {c for p in otelcol["service"]["pipelines"].values() for r in p.values() for c in r}
        used |= set(otelcol["service"]["extensions"])
        defined = {c for kind in KINDS for c in otelcol.get(kind) or {}}
        assert defined - used == set()

    def test_connectors_are_exported_to_and_received_from(self, otelcol: dict[str, Any]) -> None:
        """Each connector ends one pipeline and starts another."""
        pipelines = otelcol["service"]["pipelines"].values()
        for connector in otelcol["connectors"]:
            assert any(connector in p["exporters"] for p in pipelines), connector
            assert any(connector in p.get("receivers", []) for p in pipelines), connector

    def test_signals_are_covered(self, otelcol: dict[str, Any]) -> None:
        """Traces, metrics and logs each have a pipeline fed by the OTLP receiver."""
        pipelines = otelcol["service"]["pipelines"]
        fed = {name.split("/")[0] for name, p in pipelines.items() if "otlp" in p["receivers"]}
        assert fed == {"traces", "metrics", "logs"}


class TestSettings:
    """Settings the telemetry conventions depend on."""

    def test_spanmetrics_dimensions_are_the_semconv_names(self, otelcol: dict[str, Any]) -> None:
        """spanmetrics splits by pipeline and stage name, as named in semconv."""
        dimensions = [d["name"] for d in otelcol["connectors"]["span_metrics"]["dimensions"]]
        assert dimensions == [semconv.PIPELINE_NAME, semconv.STAGE_NAME]

    def test_spanmetrics_buckets_reach_past_fifteen_seconds(self, otelcol: dict[str, Any]) -> None:
        """The largest spanmetrics bucket is at least 60 s (slow stages are not all in +Inf)."""
        histogram = otelcol["connectors"]["span_metrics"]["histogram"]
        largest = histogram["explicit"]["buckets"][-1]
        assert largest.endswith("s") and not largest.endswith("ms")
        assert float(largest[:-1]) >= 60

    def test_spanmetrics_match_jaeger_monitor_defaults(self, otelcol: dict[str, Any]) -> None:
        """Namespace and unit are the ones Jaeger's Monitor tab queries by default."""
        spanmetrics = otelcol["connectors"]["span_metrics"]
        assert (spanmetrics["namespace"], spanmetrics["histogram"]["unit"]) == ("traces.span.metrics", "ms")

    def test_prometheus_exporter_serves_openmetrics_with_semconv_names(self, otelcol: dict[str, Any]) -> None:
        """Exemplars need OpenMetrics; the suffix strategy yields `semconv.Metric.prometheus` names."""
        exporter = otelcol["exporters"]["prometheus"]
        assert exporter["enable_open_metrics"] is True
        assert exporter["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
        assert not exporter.get("resource_to_telemetry_conversion", {}).get("enabled", False)

    def test_memory_limiter_runs_first(self, otelcol: dict[str, Any]) -> None:
        """memory_limiter is the first processor of every pipeline that has processors."""
        pipelines = otelcol["service"]["pipelines"].values()
        assert [p["processors"][0] for p in pipelines if p.get("processors")] == ["memory_limiter"] * 3


class TestWiring:
    """Hosts and ports agree across compose, the collector, Jaeger, Loki, Prometheus and Grafana."""

    def test_exporter_hosts_are_compose_services_on_their_listening_ports(
        self, otelcol: dict[str, Any], services: dict[str, Any]
    ) -> None:
        """Traces go to Jaeger's OTLP gRPC port and logs to Loki's HTTP port, by service name."""
        jaeger = load_yaml(COLLECTOR / "jaeger" / "config.yaml")
        loki = load_yaml(COLLECTOR / "loki" / "config.yaml")
        listening = {
            "jaeger": _port(jaeger["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]),
            "loki": loki["server"]["http_listen_port"],
        }
        targets = {}
        for name, exporter in otelcol["exporters"].items():
            if "endpoint" in exporter and _type(name) != "prometheus":
                endpoint = exporter["endpoint"]
                url = urlsplit(endpoint if "://" in endpoint else f"grpc://{endpoint}")
                targets[name] = (url.hostname, url.port)
        assert targets == {
            "otlp_grpc/jaeger": ("jaeger", listening["jaeger"]),
            "otlp_http/loki": ("loki", listening["loki"]),
        }
        assert set(listening) <= set(services)

    def test_loki_exporter_uses_the_native_otlp_path(self, otelcol: dict[str, Any]) -> None:
        """Logs go to Loki's /otlp base (the exporter appends /v1/logs)."""
        assert urlsplit(otelcol["exporters"]["otlp_http/loki"]["endpoint"]).path == "/otlp"

    def test_prometheus_scrapes_the_exporter_and_collector_telemetry(
        self, otelcol: dict[str, Any], prometheus_config: dict[str, Any]
    ) -> None:
        """prometheus.yml targets the exporter port (honouring its job labels) and the telemetry port."""
        jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
        reader = otelcol["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
        exporter_port = _port(otelcol["exporters"]["prometheus"]["endpoint"])
        assert jobs["otel-collector"]["static_configs"][0]["targets"] == [f"otel-collector:{exporter_port}"]
        assert jobs["otel-collector"]["honor_labels"] is True
        assert jobs["otel-collector-internal"]["static_configs"][0]["targets"] == [
            f"otel-collector:{reader['port']}"
        ]

    def test_otlp_receiver_ports_are_published_and_used_by_the_demo(
        self, otelcol: dict[str, Any], services: dict[str, Any]
    ) -> None:
        """The OTLP gRPC/HTTP ports are published, and the demo exports to the gRPC one."""
        protocols = otelcol["receivers"]["otlp"]["protocols"]
        ports = {_port(protocols["grpc"]["endpoint"]), _port(protocols["http"]["endpoint"])}
        assert ports <= _published_container_ports(services["otel-collector"])
        demo_endpoint = urlsplit(services["demo"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (demo_endpoint.hostname, demo_endpoint.port) == (
            "otel-collector",
            _port(protocols["grpc"]["endpoint"]),
        )

    def test_health_check_port_is_what_prometheus_probes(
        self, otelcol: dict[str, Any], services: dict[str, Any]
    ) -> None:
        """The collector's health_check endpoint is the one the Prometheus healthcheck probes."""
        port = _port(otelcol["extensions"]["health_check"]["endpoint"])
        assert f"http://otel-collector:{port}/" in " ".join(services["prometheus"]["healthcheck"]["test"])

    def test_jaeger_reads_spanmetrics_from_prometheus(self, services: dict[str, Any]) -> None:
        """Jaeger's metric backend is the compose Prometheus, and its query UI port is published."""
        jaeger = load_yaml(COLLECTOR / "jaeger" / "config.yaml")
        backends = jaeger["extensions"]["jaeger_storage"]["metric_backends"]
        metrics_store = jaeger["extensions"]["jaeger_query"]["storage"]["metrics"]
        assert backends[metrics_store]["prometheus"]["endpoint"] == "http://prometheus:9090"
        assert 16686 in _published_container_ports(services["jaeger"])

    def test_grafana_datasource_urls_point_at_compose_services(
        self, datasources: dict[str, dict[str, Any]], services: dict[str, Any]
    ) -> None:
        """Each datasource URL is `http://<service>:<port the service listens on>`."""
        loki = load_yaml(COLLECTOR / "loki" / "config.yaml")
        prometheus_listen = next(
            a for a in services["prometheus"]["command"] if a.startswith("--web.listen-address=")
        )
        expected = {
            "prometheus": f"http://prometheus:{_port(prometheus_listen)}",
            "jaeger": "http://jaeger:16686",
            "loki": f"http://loki:{loki['server']['http_listen_port']}",
        }
        assert {uid: d["url"] for uid, d in datasources.items()} == expected
        assert {urlsplit(url).hostname for url in expected.values()} <= set(services)
