"""setup(): providers from OTEL_* variables, the disabled and default paths, globals, and shutdown."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import errno
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider

from stageflow import NoOpEventSink
from stageflow_otel import OtlpEventSink, Telemetry, semconv, setup
from stageflow_otel._settings import Settings

from .conftest import metric_points
from .otlp_receiver import HttpReceiver


def sampled(telemetry: Telemetry) -> bool:
    """Whether a fresh root span from ``telemetry``'s tracer provider is sampled."""
    span = telemetry.tracer_provider.get_tracer("t").start_span("s")
    span.end()
    return span.get_span_context().trace_flags.sampled


@pytest.fixture(name="quiet")
def _quiet(otel_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* from the shell, and no /metrics server unless a test asks for one."""
    otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
    return otel_env


class TestDisabled:
    def test_sdk_disabled_gives_no_op_everything(self, otel_env: pytest.MonkeyPatch) -> None:
        """OTEL_SDK_DISABLED=true yields no-op providers, a no-op sink, no server, and an instant shutdown."""
        otel_env.setenv("OTEL_SDK_DISABLED", "true")
        telemetry = setup("svc", metrics_port=0)
        assert (
            type(telemetry.tracer_provider),
            type(telemetry.meter_provider),
            type(telemetry.logger_provider),
            type(telemetry.event_sink),
            telemetry.metrics_server,
            telemetry.disabled,
        ) == (
            trace.NoOpTracerProvider,
            metrics.NoOpMeterProvider,
            _logs.NoOpLoggerProvider,
            NoOpEventSink,
            None,
            True,
        )
        assert telemetry.shutdown(timeout=0.0)


class TestDefaults:
    def test_without_an_endpoint_metrics_are_served_in_process(self, otel_env: pytest.MonkeyPatch) -> None:
        """With no OTLP endpoint, /metrics runs on 127.0.0.1 and spans are still sampled for trace ids."""
        otel_env.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", "0")
        with setup("svc", set_global=False) as telemetry:
            server = telemetry.metrics_server
            assert server is not None and server.addr == "127.0.0.1"
            assert (sampled(telemetry), isinstance(telemetry.event_sink, OtlpEventSink)) == (True, True)
        assert telemetry.shutdown(timeout=1.0)

    def test_a_busy_port_is_logged_naming_the_port_and_the_fix(
        self, quiet: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """When the /metrics port is taken, setup logs one error saying which port and how to choose
        another, and carries on without a server."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with caplog.at_level(logging.ERROR, logger="stageflow_otel"):
                telemetry = setup("svc", set_global=False, metrics_port=port)
        try:
            assert telemetry.metrics_server is None
            assert [r.getMessage() for r in caplog.records] == [
                f"stageflow_otel: cannot serve /metrics on 127.0.0.1:{port}: [Errno {errno.EADDRINUSE}] "
                f"127.0.0.1:{port} is already in use (by another process, or an earlier setup() in this "
                "one); serve /metrics on another port with OTEL_EXPORTER_PROMETHEUS_PORT or "
                "setup(metrics_port=...) (0: any free port), or on none with OTEL_METRICS_EXPORTER=otlp "
                "(or none)"
            ]
        finally:
            telemetry.shutdown(timeout=1.0)


class TestResource:
    @pytest.mark.parametrize(
        ("argument", "env", "expected"),
        [("arg", "env", "arg"), (None, "env", "env"), (None, None, "unknown_service:python")],
        ids=["argument-wins", "env", "default"],
    )
    def test_service_name(
        self, quiet: pytest.MonkeyPatch, argument: str | None, env: str | None, expected: str
    ) -> None:
        """service.name comes from the argument, else OTEL_SERVICE_NAME, else the SDK default."""
        if env is not None:
            quiet.setenv("OTEL_SERVICE_NAME", env)
        quiet.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=core")
        telemetry = setup(argument, set_global=False)
        try:
            provider = telemetry.tracer_provider
            assert isinstance(provider, TracerProvider)
            attributes = provider.resource.attributes
            assert (attributes["service.name"], attributes["team"]) == (expected, "core")
        finally:
            telemetry.shutdown(timeout=1.0)


class TestSampler:
    @pytest.mark.parametrize(
        ("sampler", "arg", "expected"),
        [
            ("always_off", None, False),
            ("always_on", None, True),
            ("traceidratio", "0", False),
            ("parentbased_traceidratio", "1", True),
            ("bogus", None, True),
        ],
        ids=["always-off", "always-on", "ratio-0", "parentbased-ratio-1", "unknown-falls-back"],
    )
    def test_traces_sampler_from_env(
        self, quiet: pytest.MonkeyPatch, sampler: str, arg: str | None, expected: bool
    ) -> None:
        """OTEL_TRACES_SAMPLER(+_ARG) decide sampling; an unknown sampler means parentbased_always_on."""
        quiet.setenv("OTEL_TRACES_SAMPLER", sampler)
        if arg is not None:
            quiet.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
        telemetry = setup("svc", set_global=False)
        try:
            assert sampled(telemetry) is expected
        finally:
            telemetry.shutdown(timeout=1.0)


@pytest.fixture(name="http_receiver")
def _http_receiver() -> Iterator[HttpReceiver]:
    """An OTLP/HTTP receiver, stopped at teardown."""
    receiver = HttpReceiver()
    yield receiver
    receiver.stop()


class TestPerSignal:
    def test_only_the_signal_with_an_endpoint_uses_otlp(
        self, quiet: pytest.MonkeyPatch, http_receiver: HttpReceiver
    ) -> None:
        """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT alone exports spans over OTLP and leaves events local."""
        quiet.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{http_receiver.endpoint}/v1/traces")
        telemetry = setup("svc", set_global=False)
        try:
            telemetry.tracer_provider.get_tracer("t").start_span("only-traces").end()
            telemetry.event_sink.try_emit(type="pipeline.created", data={})
            assert telemetry.force_flush(timeout=5.0)
            assert http_receiver.wait_for(lambda: len(http_receiver.spans()) == 1)
        finally:
            assert telemetry.shutdown(timeout=5.0)
        assert ([s.name for s in http_receiver.spans()], http_receiver.logs) == (["only-traces"], [])


class TestEventDrops:
    def test_events_refused_by_a_full_export_queue_are_counted(
        self, quiet: pytest.MonkeyPatch, http_receiver: HttpReceiver
    ) -> None:
        """With a batch of 4 held in flight and a 4-record queue, 6 more events give 4 records, 2 dropped."""
        quiet.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", f"{http_receiver.endpoint}/v1/logs")
        quiet.setenv("OTEL_BLRP_MAX_QUEUE_SIZE", "4")
        quiet.setenv("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "4")
        quiet.setenv("OTEL_BLRP_SCHEDULE_DELAY", "600000")
        quiet.setenv(semconv.ENV_EVENT_LOG_RECORDS, "true")
        reader = InMemoryMetricReader()
        telemetry = setup("svc", set_global=False, metric_readers=[reader])
        sink = telemetry.event_sink
        assert isinstance(sink, OtlpEventSink)
        http_receiver.hold()
        for i in range(4):  # one full batch: exported, and held by the receiver
            sink.try_emit(type="stage.a.completed", data={"stage": "a", "i": i})
        assert http_receiver.wait_for(lambda: http_receiver.held == 1)
        for i in range(4, 10):
            sink.try_emit(type="stage.a.completed", data={"stage": "a", "i": i})
        assert sink.flush(5.0)
        dropped = {
            str(p.attributes[semconv.TELEMETRY_CAUSE]): p.value
            for p in metric_points(reader, semconv.EVENTS_DROPPED.name)
            if isinstance(p, NumberDataPoint) and p.attributes is not None and p.value
        }
        assert (sink.dropped, dropped) == (2, {semconv.DROP_CAUSE_QUEUE_FULL: 2})
        http_receiver.release()
        assert telemetry.shutdown(5.0) is False  # two events were lost: shutdown says so
        assert len(http_receiver.log_records()) == 8


class TestProtocol:
    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "GRPC"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "Grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/Protobuf"),
        ],
        ids=["general-upper", "per-signal-mixed", "http-mixed"],
    )
    def test_protocol_names_ignore_case(
        self, quiet: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, variable: str, value: str
    ) -> None:
        """``OTEL_EXPORTER_OTLP_*PROTOCOL`` values are compared case-insensitively, without a warning."""
        quiet.setenv(variable, value)
        quiet.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        caplog.set_level(logging.WARNING)
        assert Settings.from_environ().traces.protocol == value.lower()
        assert caplog.records == []


class TestEventLogRecordsSwitch:
    @pytest.mark.parametrize(
        ("variable", "argument", "expected"),
        [
            (None, None, False),
            ("true", None, True),
            ("TRUE", None, True),
            ("false", None, False),
            ("true", False, False),
            (None, True, True),
        ],
        ids=["default-off", "env-on", "env-case", "env-off", "argument-wins-off", "argument-on"],
    )
    def test_log_records_are_opt_in(
        self, quiet: pytest.MonkeyPatch, variable: str | None, argument: bool | None, expected: bool
    ) -> None:
        """Events are span events only, unless STAGEFLOW_EVENT_LOG_RECORDS or setup()'s argument say so."""
        if variable is not None:
            quiet.setenv(semconv.ENV_EVENT_LOG_RECORDS, variable)
        telemetry = setup("svc", set_global=False, event_log_records=argument)
        try:
            sink = telemetry.event_sink
            assert isinstance(sink, OtlpEventSink)
            assert (sink.log_records, sink.span_events) == (expected, True)
        finally:
            telemetry.shutdown(timeout=1.0)


class TestShutdown:
    def test_shutdown_is_idempotent(self, quiet: pytest.MonkeyPatch) -> None:
        """A second shutdown returns True at once and the sink refuses new log records."""
        telemetry = setup("svc", set_global=False, event_log_records=True)
        assert (telemetry.shutdown(timeout=1.0), telemetry.shutdown(timeout=1.0)) == (True, True)
        telemetry.event_sink.try_emit(type="pipeline.created", data={})
        assert isinstance(telemetry.event_sink, OtlpEventSink) and telemetry.event_sink.dropped == 1

    def test_shutdown_with_a_metrics_server_is_quick(
        self, quiet: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With in-process exporters only, shutdown(0.2) just after a scrape succeeds well within 0.2 s."""
        reader = InMemoryMetricReader()
        telemetry = setup("svc", set_global=False, metrics_port=0, metric_readers=[reader])
        assert telemetry.metrics_server is not None
        with urllib.request.urlopen(telemetry.metrics_server.url, timeout=5) as response:
            assert response.status == 200
        caplog.set_level(logging.WARNING)
        started = time.monotonic()
        ok = telemetry.shutdown(0.2)
        elapsed = time.monotonic() - started
        assert (ok, elapsed < 0.25, caplog.records) == (True, True, [])


ENV_ONLY_SCRIPT = textwrap.dedent(
    """
    import stageflow, stageflow_otel
    from opentelemetry import metrics, trace

    telemetry = stageflow_otel.setup()
    resource = telemetry.tracer_provider.resource.attributes
    assert resource["service.name"] == "from-env", resource
    assert trace.get_tracer_provider() is telemetry.tracer_provider
    assert metrics.get_meter_provider() is telemetry.meter_provider
    assert stageflow.get_event_sink() is telemetry.event_sink
    assert telemetry.metrics_server is not None and telemetry.metrics_server.port > 0
    assert telemetry.shutdown(2.0)
    assert stageflow.get_event_sink() is not telemetry.event_sink
    print("ok")
    """
)


SECOND_SETUP_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(stream=sys.stdout, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    import stageflow_otel

    first = stageflow_otel.setup("one")
    print("first done")
    second = stageflow_otel.setup("two")
    assert first.shutdown(2.0) and second.shutdown(2.0)
    """
)


class TestSecondGlobalSetup:
    def test_a_second_global_setup_logs_an_error_naming_the_fix(self) -> None:
        """OpenTelemetry keeps the first global providers; the second setup() says so and how to fix it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env |= {"OTEL_METRICS_EXPORTER": "none"}
        done = subprocess.run(
            [sys.executable, "-c", SECOND_SETUP_SCRIPT], env=env, capture_output=True, text=True, timeout=60
        )
        assert (done.returncode, done.stderr, done.stdout.splitlines()) == (
            0,
            "",
            [
                "first done",
                "stageflow_otel ERROR stageflow_otel: setup(set_global=True) could not install its tracer, "
                "meter, logger provider(s): OpenTelemetry keeps the first global providers of a process, "
                "so interceptors using the globals report to the earlier ones. Pass this handle's providers "
                "to the interceptors (TracingInterceptor(telemetry.tracer_provider), "
                "MetricsInterceptor(telemetry.meter_provider)) or call setup() once per process",
            ],
        )


class TestEnvironmentOnly:
    def test_setup_without_arguments_reads_the_env_and_installs_globals(self) -> None:
        """In a fresh process, setup() alone reads OTEL_* and installs the global providers and sink."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env |= {"OTEL_SERVICE_NAME": "from-env", "OTEL_EXPORTER_PROMETHEUS_PORT": "0"}
        done = subprocess.run(
            [sys.executable, "-c", ENV_ONLY_SCRIPT], env=env, capture_output=True, text=True, timeout=60
        )
        assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok", "")
