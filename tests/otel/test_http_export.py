"""OTLP/HTTP with a collector that freezes: exact loss counts, and a shutdown that leaves nothing behind.

The receiver runs in a child process stopped with SIGSTOP and resumed with SIGCONT, as a collector paused
by a debugger, a stalled VM or a stopped container: its kernel still accepts connections and buffers the
requests, and it processes them once resumed.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import threading
from collections.abc import Iterator

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from stageflow_otel import semconv, setup

from .otlp_receiver import FreezableReceiver
from .test_accounting import EVENTS_PER_RUN, NOTHING, SPANS_PER_RUN, only, run


@pytest.fixture(name="receiver")
def _receiver() -> Iterator[FreezableReceiver]:
    """An OTLP/HTTP receiver in a child process that the test can freeze and resume."""
    receiver = FreezableReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(name="env")
def _env(otel_env: pytest.MonkeyPatch, receiver: FreezableReceiver) -> pytest.MonkeyPatch:
    """Every signal exported to ``receiver`` over OTLP/HTTP when flushed, with a 0.5 s export timeout."""
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    otel_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0.5")
    otel_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")
    otel_env.setenv(semconv.ENV_EVENT_LOG_RECORDS, "true")
    for prefix in ("BSP", "BLRP"):
        otel_env.setenv(f"OTEL_{prefix}_SCHEDULE_DELAY", "600000")
    return otel_env


class TestFrozenCollector:
    def test_a_batch_answered_after_the_export_timeout_is_delivered_not_lost(
        self, env: pytest.MonkeyPatch, receiver: FreezableReceiver
    ) -> None:
        """Frozen past the export timeout, then resumed: every span and record arrives once, none is
        counted lost."""
        env.setenv("OTEL_METRICS_EXPORTER", "none")
        telemetry = setup("frozen", set_global=False)
        try:
            receiver.freeze()
            asyncio.run(run(telemetry, 4))
            # Flushing waits 2 s, four times the export timeout, for answers the frozen receiver never gives.
            assert telemetry.force_flush(2.0) is False
            receiver.resume()
            counts = receiver.counts(spans=4 * SPANS_PER_RUN, log_records=4 * EVENTS_PER_RUN)
            assert telemetry.force_flush(10.0) is True
            lost = telemetry.lost
        finally:
            telemetry.shutdown(5.0)
        assert (counts, lost["spans"], lost["log_records"], lost["events"]) == (
            {"spans": 20, "log_records": 44, "metric_points": 0},
            NOTHING,
            NOTHING,
            NOTHING,
        )


class TestShutdownWithAHungRequest:
    @pytest.mark.parametrize("via_proxy", [False, True], ids=["direct", "through-an-http-proxy"])
    def test_shutdown_ends_the_requests_counts_their_items_and_leaves_no_thread(
        self, env: pytest.MonkeyPatch, receiver: FreezableReceiver, via_proxy: bool
    ) -> None:
        """With the receiver (or the HTTP proxy in front of the collector) frozen, shutdown(2) returns
        False, leaves no thread running and counts every span, record and metric point it could not send
        as timeout."""
        env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")  # the requests would outlive shutdown's deadline
        for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            env.delenv(name, raising=False)
        if via_proxy:  # the frozen process is the proxy: the collector's host is never looked up
            env.setenv("HTTP_PROXY", receiver.endpoint)
            env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.invalid:4318")
        reader = InMemoryMetricReader()
        before = set(threading.enumerate())
        telemetry = setup("hung", set_global=False, metric_readers=[reader])
        asyncio.run(run(telemetry, 3))
        data = reader.get_metrics_data()
        assert data is not None
        points = sum(
            len(metric.data.data_points)
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        )
        receiver.freeze()

        flushed = telemetry.shutdown(2.0)

        left = sorted(t.name for t in threading.enumerate() if t not in before)
        assert (flushed, left) == (False, [])
        assert telemetry.lost == {
            "spans": only(timeout=3 * SPANS_PER_RUN),
            "log_records": only(timeout=3 * EVENTS_PER_RUN),
            "metric_points": only(timeout=points),
            "events": only(timeout=3 * EVENTS_PER_RUN),
        }
