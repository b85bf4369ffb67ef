"""The worker side of a hop, in this process: attaching the stage's context, flushing and reporting losses,
adopting or configuring an SDK. Nothing here installs global providers: the process's worker state and
``setup`` are replaced for each test (the real worker processes are in ``test_worker.py``)."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import logging
import os
from collections.abc import Iterator
from typing import Any

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stageflow_otel import Telemetry, _setup, _worker, semconv, setup
from stageflow_otel._settings import Settings

from .conftest import metric_points
from .otlp_receiver import closed_port

SETTINGS = _worker.WorkerSettings(
    resource=(("service.name", "parent-svc"), ("deployment.environment.name", "test")),
    environment=(
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "1000"),
        ("OTEL_METRICS_EXPORTER", "none"),
    ),
    mode="complete",
    event_log_records=True,
    flush_timeout=2.0,
)


@pytest.fixture(name="state")
def _state(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """This process's worker state and owner, restored after the test."""
    monkeypatch.setattr(_worker, "_state", None)
    monkeypatch.setattr(_worker, "_installed", None)
    yield monkeypatch


def _dead_end(env: pytest.MonkeyPatch) -> Telemetry:
    """A ``setup()`` (no globals) exporting spans to a port nothing listens on, quickly given up on."""
    env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{closed_port()}/v1/traces")
    env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    env.setenv("OTEL_METRICS_EXPORTER", "none")
    return setup("worker", set_global=False)


class TestEnterAndExit:
    def test_enter_makes_the_stage_span_current_with_its_baggage_and_exit_restores(
        self, otel_env: pytest.MonkeyPatch, state: pytest.MonkeyPatch, tracer_provider: TracerProvider
    ) -> None:
        """Between ``enter`` and ``exit`` the carrier's span is current (with the parent's baggage); after
        ``exit`` the context is what it was, and the hop reports nothing lost."""
        telemetry = setup("worker", set_global=False)
        try:
            state.setattr(_worker, "_state", _worker._Process(telemetry, None))
            token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
            try:
                with tracer_provider.get_tracer("t").start_as_current_span("stage x") as span:
                    carrier: dict[str, str] = {}
                    _worker._PROPAGATOR.inject(carrier)
            finally:
                otel_context.detach(token)
            hook = _worker.WorkerTelemetry(carrier, SETTINGS)
            before = trace.get_current_span().get_span_context()
            hook.enter()
            inside = (trace.get_current_span().get_span_context(), baggage.get_baggage("tenant"))
            report = hook.exit(None)
            after = trace.get_current_span().get_span_context()
        finally:
            telemetry.shutdown(5.0)
        stage = span.get_span_context()
        assert (inside[0].trace_id, inside[0].span_id, inside[0].is_remote, inside[1]) == (
            stage.trace_id,
            stage.span_id,
            True,
            "acme",
        )
        assert (before.is_valid, after.is_valid, report) == (False, False, ())


class TestFlushAndReport:
    def test_each_loss_is_reported_once_by_cause(
        self, otel_env: pytest.MonkeyPatch, state: pytest.MonkeyPatch
    ) -> None:
        """A flush reports what was lost since the previous report: the failed span once, then nothing."""
        telemetry = _dead_end(otel_env)
        try:
            process = _worker._Process(telemetry, None)
            telemetry.tracer_provider.get_tracer("t").start_span("user work").end()
            first = process.flush(5.0)
            second = process.flush(5.0)
        finally:
            telemetry.shutdown(0.5)
        assert (first, second) == ((("spans", "export_failed", 1), ("export_failures", "traces", 1)), ())

    def test_an_inherited_handle_does_not_report_the_parents_earlier_losses(
        self, otel_env: pytest.MonkeyPatch, state: pytest.MonkeyPatch
    ) -> None:
        """Losses counted before the worker adopted the handle (the parent's, before the fork) are not
        reported again; later ones are."""
        telemetry = _dead_end(otel_env)
        try:
            telemetry.tracer_provider.get_tracer("t").start_span("parent's").end()
            telemetry.force_flush(5.0)
            process = _worker._Process(telemetry, None)
            quiet = process.flush(5.0)
            telemetry.tracer_provider.get_tracer("t").start_span("worker's").end()
            loud = process.flush(5.0)
        finally:
            telemetry.shutdown(0.5)
        assert (quiet, loud) == ((), (("spans", "export_failed", 1), ("export_failures", "traces", 1)))

    def test_a_users_sdk_is_flushed_and_reports_nothing(self, state: pytest.MonkeyPatch) -> None:
        """The user's own provider is flushed (its batch exported) and its losses are not ours to report."""
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600_000))
        try:
            provider.get_tracer("t").start_span("user work").end()
            report = _worker._Process(None, provider).flush(5.0)
            names = [s.name for s in exporter.get_finished_spans()]
        finally:
            provider.shutdown()
        assert (report, names) == (None, ["user work"])

    def test_a_process_with_no_telemetry_reports_nothing(self) -> None:
        assert _worker._Process(None, None).flush(1.0) is None


class TestAdoptOrConfigure:
    def test_the_owners_providers_are_adopted(
        self, otel_env: pytest.MonkeyPatch, state: pytest.MonkeyPatch
    ) -> None:
        """When the global provider is the one of this process's ``setup()`` (a forked worker's), its
        handle is used, losses and all."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        telemetry = setup("owner", set_global=False)
        try:
            state.setattr(trace, "get_tracer_provider", lambda: telemetry.tracer_provider)
            adopted = _worker._adopt_or_configure(SETTINGS)
        finally:
            telemetry.shutdown(5.0)
        assert (adopted.telemetry, adopted.provider) == (telemetry, None)

    def test_a_users_provider_is_kept(self, state: pytest.MonkeyPatch) -> None:
        provider = TracerProvider()
        state.setattr(trace, "get_tracer_provider", lambda: provider)
        kept = _worker._adopt_or_configure(SETTINGS)
        assert (kept.telemetry, kept.provider) == (None, provider)

    def test_without_an_sdk_one_is_configured_once_per_process(self, state: pytest.MonkeyPatch) -> None:
        """No SDK yet: ``_configure`` runs once, and every later hop of the process reuses its result."""
        calls: list[_worker.WorkerSettings] = []

        def configure(settings: _worker.WorkerSettings) -> Any:
            calls.append(settings)
            return None

        state.setattr(_worker, "_configure", configure)
        first = _worker._process(SETTINGS)
        again = _worker._process(SETTINGS)
        assert (first is again, first.pid, calls) == (True, os.getpid(), [SETTINGS])

    def test_a_configuration_that_fails_leaves_the_stage_untraced_and_says_why(
        self, state: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        def configure(settings: _worker.WorkerSettings) -> Any:
            raise ValueError("OTEL_BSP_MAX_EXPORT_BATCH_SIZE=100 is larger than OTEL_BSP_MAX_QUEUE_SIZE=10")

        state.setattr(_worker, "_configure", configure)
        with caplog.at_level(logging.ERROR, logger="stageflow_otel"):
            process = _worker._adopt_or_configure(SETTINGS)
        assert (process.telemetry, process.provider) == (None, None)
        assert [r.getMessage() for r in caplog.records] == [
            f"stageflow_otel: could not configure telemetry in worker process {os.getpid()}: "
            "ValueError('OTEL_BSP_MAX_EXPORT_BATCH_SIZE=100 is larger than OTEL_BSP_MAX_QUEUE_SIZE=10')"
        ]


class TestConfigure:
    def test_setup_runs_with_the_parents_settings_and_a_resource_of_its_own(
        self, otel_env: pytest.MonkeyPatch
    ) -> None:
        """The worker's set-up reads the parent's variables (the worker's own values of them hidden) and
        its own for the rest, gets the parent's resource plus an instance id and pid of its own, global
        providers, no /metrics and no loop monitor; ``os.environ`` is never changed."""
        otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "42")  # the worker's own: hidden, the parent has none
        otel_env.setenv("OTEL_BLRP_SCHEDULE_DELAY", "43")  # the worker's own: hidden, the parent has none
        otel_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=worker-secret")  # read in the worker
        otel_env.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", "9999")  # does not travel: the worker's own
        before = dict(os.environ)
        seen: dict[str, Any] = {}
        reader = InMemoryMetricReader()
        real_build = _setup.build

        def fake_build(settings: Settings, **kwargs: Any) -> Telemetry:
            seen.update(kwargs)
            seen["settings"] = settings
            seen["environ"] = dict(os.environ)
            handle = real_build(settings, **{**kwargs, "set_global": False, "metric_readers": [reader]})
            made.append(handle)
            return handle

        made: list[Telemetry] = []
        otel_env.setattr(_setup, "build", fake_build)
        telemetry = _worker._configure(SETTINGS)
        try:
            # a loss in the worker is reported to the parent, not counted in the worker's own metrics
            telemetry._accounting.dropped("spans", 3, "queue_full")
            telemetry._accounting.failed("traces")
            counted = {
                p.attributes[semconv.TELEMETRY_CAUSE]: p.value
                for p in metric_points(reader, semconv.TELEMETRY_SPANS_DROPPED.name)
                if isinstance(p, NumberDataPoint) and p.attributes
            }
            failures = [
                p.value
                for p in metric_points(reader, semconv.TELEMETRY_EXPORT_FAILURES.name)
                if isinstance(p, NumberDataPoint)
            ]
            lost = telemetry.lost["spans"]["queue_full"]
        finally:
            telemetry.shutdown(0.5)
        assert made == [telemetry]
        assert (lost, set(counted.values()), set(failures)) == (3, {0}, {0})
        resource = seen.pop("resource_attributes")
        instance = resource.pop("service.instance.id")
        settings = seen.pop("settings")
        assert (seen.pop("environ"), dict(os.environ)) == (before, before)
        assert (resource, len(instance), seen) == (
            {"service.name": "parent-svc", "deployment.environment.name": "test", "process.pid": os.getpid()},
            36,
            {
                "set_global": True,
                "metrics_port": None,
                "mode": "complete",
                "event_log_records": True,
                "loop_monitor": False,
                "count_losses": False,
            },
        )
        assert (
            settings.environment,
            settings.traces.endpoint,
            settings.span_queue.capacity,
            settings.span_queue.delay_millis,
            settings.log_queue.delay_millis,
            settings.metrics.exporters,
            settings.prometheus_port,
        ) == (
            (
                ("OTEL_BSP_MAX_QUEUE_SIZE", "1000"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_PROMETHEUS_PORT", "9999"),
                ("OTEL_METRICS_EXPORTER", "none"),
                ("STAGEFLOW_LOOP_MONITOR", "false"),
            ),
            "http://127.0.0.1:4318/v1/traces",
            1000,
            5000,
            1000,
            (),
            9999,
        )
        assert semconv.ENV_WORKER_FLUSH_TIMEOUT not in _worker.PASSED
