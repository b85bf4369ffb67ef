"""The real collector, as shipped, writes to Loki as the tenant Grafana reads (Loki runs multi-tenant).

The collector built by ``collector/build-stack.sh`` runs ``collector/otelcol.yaml`` with its endpoints on
free loopback ports, Loki replaced by an OTLP/HTTP receiver serving its ``/otlp`` path that keeps each
request's headers. Log records sent to the collector must reach it with ``X-Scope-OrgID: stageflow``,
the tenant of Grafana's Loki datasource: without that header a multi-tenant Loki refuses the write.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from tests.otel.otlp_receiver import GrpcReceiver, HttpReceiver

from ._assets import COLLECTOR, load_yaml
from ._live import Child, free_port, wait_until
from ._stack import rewrite_endpoints, stack_binary


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


@pytest.fixture(name="stack", scope="module")
def _stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, HttpReceiver]]:
    """The shipped collector config on loopback ports; yields its OTLP/HTTP port and the Loki stand-in."""
    binary = stack_binary("otelcol")
    directory: Path = tmp_path_factory.mktemp("loki-tenant")
    ports = {name: free_port() for name in ("grpc", "http", "health", "prometheus", "telemetry")}
    jaeger, loki = GrpcReceiver(), HttpReceiver(base_path="/otlp")
    jaeger_port = int(jaeger.endpoint.rsplit(":", 1)[1])
    loki_port = int(loki.endpoint.rsplit(":", 1)[1].split("/")[0])
    local = "127.0.0.1"
    config: dict[str, Any] = rewrite_endpoints(
        load_yaml(COLLECTOR / "otelcol.yaml"),
        {
            ("0.0.0.0", 4317): (local, ports["grpc"]),
            ("0.0.0.0", 4318): (local, ports["http"]),
            ("0.0.0.0", 13133): (local, ports["health"]),
            ("0.0.0.0", 8889): (local, ports["prometheus"]),
            ("jaeger", 4317): (local, jaeger_port),
            ("loki", 3100): (local, loki_port),
        },
    )
    readers = config["service"]["telemetry"]["metrics"]["readers"]
    readers[0]["pull"]["exporter"]["prometheus"] = {"host": local, "port": ports["telemetry"]}
    path = directory / "otelcol.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    child = Child("otelcol", [binary, f"--config={path}"], directory / "otelcol.log")
    try:
        health = f"http://{local}:{ports['health']}/"
        assert wait_until(lambda: _status(health) == 200, timeout=60), child.output()
        yield ports["http"], loki
    finally:
        child.stop(30.0)
        jaeger.stop()
        loki.stop()


def test_log_records_reach_loki_with_grafanas_tenant(stack: tuple[int, HttpReceiver]) -> None:
    """Three log records sent to the collector reach Loki's /otlp path in requests naming the tenant."""
    port, loki = stack
    provider = LoggerProvider(resource=Resource.create({"service.name": "tenant"}))
    provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"http://127.0.0.1:{port}/v1/logs"))
    )
    logger = provider.get_logger("test")
    for i in range(3):
        logger.emit(body=f"record {i}")
    provider.shutdown()
    assert loki.wait_for(lambda: len(loki.log_records()) == 3, timeout=60)
    # Header names are case-insensitive (Go writes this one `X-Scope-Orgid`).
    tenants = {
        next((v for k, v in headers.items() if k.lower() == "x-scope-orgid"), None)
        for kind, headers in loki.headers
        if kind == "logs"
    }
    assert tenants == {"stageflow"}
