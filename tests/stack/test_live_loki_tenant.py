"""The real collector, as shipped, writes to Loki as the tenant Grafana reads (Loki runs multi-tenant).

The collector built by ``collector/build-stack.sh`` runs ``collector/otelcol.yaml`` with its endpoints on
free loopback ports, Loki replaced by an OTLP/HTTP receiver serving its ``/otlp`` path that keeps each
request's headers. Log records sent to the collector must reach it with ``X-Scope-OrgID: stageflow``,
the tenant of Grafana's Loki datasource: without that header a multi-tenant Loki refuses the write.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from collections.abc import Iterator

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from tests.otel.otlp_receiver import HttpReceiver

from ._live import shipped_collector


@pytest.fixture(name="stack", scope="module")
def _stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, HttpReceiver]]:
    """The shipped collector config on loopback ports; yields its OTLP/HTTP port and the Loki stand-in."""
    with shipped_collector(tmp_path_factory.mktemp("loki-tenant")) as (ports, loki):
        yield ports["http"], loki


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
