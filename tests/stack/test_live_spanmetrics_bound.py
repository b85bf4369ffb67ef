"""The real collector's spanmetrics connector, as shipped, keeps 2,000 dimension sets and one overflow series.

The collector built by ``collector/build-stack.sh`` runs ``collector/otelcol.yaml`` with its endpoints on
free loopback ports (Jaeger and Loki replaced by local OTLP receivers, which only need to accept). 2,500
spans with distinct stage names arrive; its Prometheus exporter must then serve exactly 2,000 named
``traces_span_metrics_calls_total`` series and one ``otel_metric_overflow="true"`` series counting the
other 500 spans.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import re
import urllib.request
from collections.abc import Iterator

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from stageflow_otel import semconv

from ._live import shipped_collector, wait_until

SPANS = 2_500
LIMIT = 2_000
CALLS = re.compile(r"^traces_span_metrics_calls_total\{(?P<labels>[^}]*)\} (?P<value>\S+)", re.M)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture(name="collector", scope="module")
def _collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """The shipped collector config running on free loopback ports; yields those ports."""
    with shipped_collector(tmp_path_factory.mktemp("spanmetrics-bound")) as (ports, _):
        yield ports


def test_spanmetrics_keeps_2000_dimension_sets_and_an_overflow_series(collector: dict[str, int]) -> None:
    """2,500 distinct stage spans give 2,000 named call series and one overflow series of 500 calls."""
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{collector['http']}/v1/traces")
    provider = TracerProvider(resource=Resource.create({"service.name": "bound"}))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=SPANS, max_export_batch_size=500))
    tracer = provider.get_tracer("test")
    for i in range(SPANS):
        name = f"s{i:04d}"
        tracer.start_span(
            semconv.SPAN_STAGE_PREFIX + name,
            attributes={semconv.PIPELINE_NAME: "bound", semconv.STAGE_NAME: name},
        ).end()
    assert provider.force_flush(30_000)
    provider.shutdown()
    url = f"http://127.0.0.1:{collector['prometheus']}/metrics"

    def series() -> list[tuple[str, float]]:
        return [(m["labels"], float(m["value"])) for m in CALLS.finditer(_get(url)[1])]

    def counted_all() -> bool:
        return sum(value for _, value in series()) == SPANS

    assert wait_until(counted_all, timeout=90, interval=1.0), len(series())
    found = series()
    overflow = [value for labels, value in found if 'otel_metric_overflow="true"' in labels]
    named = [labels for labels, _ in found if 'otel_metric_overflow="true"' not in labels]
    assert (len(named), overflow) == (LIMIT, [float(SPANS - LIMIT)])
    assert all('stageflow_stage_name="s' in labels for labels in named)
