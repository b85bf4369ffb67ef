"""Settings: every variable stageflow_otel reads, from an injected environment, checked once, frozen."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import dataclasses
import logging
import operator

from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import Link

import stageflow
from stageflow_otel import OtlpEventSink, semconv
from stageflow_otel._export import BatchSettings
from stageflow_otel._settings import (
    RUN_VARIABLES,
    SDK_VARIABLES,
    Settings,
    SignalSettings,
)
from stageflow_otel._setup import build

LOG_PROTOCOL = (
    "stageflow_otel: {}={!r} is not 'grpc' or 'http/protobuf'; ignored (OTLP over http/protobuf "
    + ("unless another variable says otherwise)")
)

VALID = [
    ("OTEL_SDK_DISABLED", "TRUE", "sdk_disabled", True),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/", "traces.endpoint", "http://c:4318/v1/traces"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318", "metrics.exporters", ("otlp",)),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318", "logs.endpoint", "http://c:4318/v1/logs"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x", "traces.endpoint", "http://t:1/x"),
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:1/x", "metrics.endpoint", "http://m:1/x"),
    ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://l:1/x", "logs.exporters", ("otlp",)),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "GRPC", "metrics.protocol", "grpc"),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc", "traces.protocol", "grpc"),
    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc", "metrics.protocol", "grpc"),
    ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc", "logs.protocol", "grpc"),
    ("OTEL_TRACES_EXPORTER", "console, OTLP, console", "traces.exporters", ("console", "otlp")),
    ("OTEL_METRICS_EXPORTER", "none", "metrics.exporters", ()),
    ("OTEL_LOGS_EXPORTER", "console", "logs.exporters", ("console",)),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "600", "span_queue.capacity", 600),
    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64", "span_queue.batch_size", 64),
    ("OTEL_BSP_SCHEDULE_DELAY", "250", "span_queue.delay_millis", 250),
    ("OTEL_BLRP_MAX_QUEUE_SIZE", "700", "log_queue.capacity", 700),
    ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "32", "log_queue.batch_size", 32),
    ("OTEL_BLRP_SCHEDULE_DELAY", "20", "log_queue.delay_millis", 20),
    ("OTEL_SPAN_LINK_COUNT_LIMIT", "7", "link_limit", 7),
    ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "99", "log_record_length_limit", 99),
    ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "Unset", "span_length_limit", None),
    ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "0", "span_length_limit", 0),
    ("OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT", "50", "event_length_limit", 50),
    ("STAGEFLOW_OTEL_MODE", "complete", "mode", "complete"),
    ("STAGEFLOW_OTEL_COMPLETE_TIMEOUT", "0.25", "complete_timeout", 0.25),
    ("STAGEFLOW_EVENT_LOG_RECORDS", "yes", "event_log_records", True),
    ("STAGEFLOW_OTEL_MAX_EXPORT_BYTES", "1024", "max_export_bytes", 1024),
    ("STAGEFLOW_LOOP_MONITOR", "Off", "loop_monitor", False),
    ("STAGEFLOW_OTEL_WORKER_FLUSH_TIMEOUT", "0", "worker_flush_timeout", 0.0),
    ("OTEL_EXPORTER_PROMETHEUS_HOST", "0.0.0.0", "prometheus_host", "0.0.0.0"),
    ("OTEL_EXPORTER_PROMETHEUS_PORT", "0", "prometheus_port", 0),
    ("STAGEFLOW_OTEL_METRICS_MAX_SERIES", "75", "max_series", 75),
]
"""``(variable, value, field, value read)``: one valid value of every variable."""


def not_positive(default: int) -> str:
    """The message tail for a value that is not a positive integer: ``default`` is used instead."""
    return f"is not a positive integer; using {default}"


def not_seconds(default: int) -> str:
    """The message tail for a value that is not a number of seconds: ``default`` is used instead."""
    return f"is not a number of seconds; using {default}"


INVALID = [
    ("OTEL_SDK_DISABLED", "maybe", "sdk_disabled", "is not true or false; using false"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "traces.protocol", None),
    ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "udp", "logs.protocol", None),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "0", "span_queue.capacity", not_positive(16384)),
    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-1", "span_queue.batch_size", not_positive(512)),
    ("OTEL_BSP_SCHEDULE_DELAY", "soon", "span_queue.delay_millis", not_positive(5000)),
    ("OTEL_BLRP_MAX_QUEUE_SIZE", "1e3", "log_queue.capacity", not_positive(16384)),
    ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "x", "log_queue.batch_size", not_positive(512)),
    ("OTEL_BLRP_SCHEDULE_DELAY", "1.5", "log_queue.delay_millis", not_positive(1000)),
    ("OTEL_SPAN_LINK_COUNT_LIMIT", "many", "link_limit", not_positive(1024)),
    (
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "-5",
        "span_length_limit",
        "is not a non-negative integer or 'unset'; ignored",
    ),
    ("STAGEFLOW_OTEL_MODE", "fast", "mode", None),
    ("STAGEFLOW_OTEL_COMPLETE_TIMEOUT", "soon", "complete_timeout", not_seconds(10)),
    ("STAGEFLOW_EVENT_LOG_RECORDS", "sometimes", "event_log_records", "is not true or false; using false"),
    ("STAGEFLOW_OTEL_MAX_EXPORT_BYTES", "4MiB", "max_export_bytes", not_positive(4194304)),
    ("STAGEFLOW_LOOP_MONITOR", "maybe", "loop_monitor", "is not true or false; using true"),
    ("STAGEFLOW_OTEL_WORKER_FLUSH_TIMEOUT", "-1", "worker_flush_timeout", not_seconds(5)),
    ("OTEL_EXPORTER_PROMETHEUS_PORT", "65536", "prometheus_port", "is not a port (0 to 65535); using 9464"),
]
"""``(variable, bad value, field, message tail)``: the message is ``stageflow_otel: NAME='value' {tail}``
(``None``: the variable's own message, given in ``SPECIAL``)."""

SPECIAL = {
    "OTEL_EXPORTER_OTLP_PROTOCOL": LOG_PROTOCOL.format("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": LOG_PROTOCOL.format("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "udp"),
    "STAGEFLOW_OTEL_MODE": "stageflow_otel: STAGEFLOW_OTEL_MODE='fast' unknown; using 'bounded'",
}


def read(field: str, settings: Settings) -> object:
    """The ``field`` (dotted) of ``settings``."""
    return operator.attrgetter(field)(settings)


class TestDefaults:
    def test_an_empty_environment_gives_the_documented_defaults(self) -> None:
        """Nothing set: no OTLP, /metrics on 127.0.0.1:9464, the queue, limit and mode defaults."""
        settings = Settings.from_environ({})
        assert settings == Settings()
        assert (
            settings.sdk_disabled,
            settings.traces,
            settings.metrics,
            settings.logs,
            settings.span_queue,
            settings.log_queue,
            settings.link_limit,
            settings.span_length_limit,
            settings.log_record_length_limit,
            settings.mode,
            settings.complete_timeout,
            settings.event_log_records,
            settings.max_export_bytes,
            settings.loop_monitor,
            settings.worker_flush_timeout,
            settings.prometheus_host,
            settings.prometheus_port,
            settings.max_series,
            settings.environment,
        ) == (
            False,
            SignalSettings("traces", (), None, "http/protobuf"),
            SignalSettings("metrics", ("prometheus",), None, "http/protobuf"),
            SignalSettings("logs", (), None, "http/protobuf"),
            BatchSettings(capacity=16_384, batch_size=512, delay_millis=5000),
            BatchSettings(capacity=16_384, batch_size=512, delay_millis=1000),
            1024,
            4096,
            4096,
            "bounded",
            10.0,
            False,
            4 * 1024 * 1024,
            True,
            5.0,
            "127.0.0.1",
            9464,
            2000,
            (),
        )

    def test_every_variable_of_the_reference_is_read_here_by_the_sdk_or_at_each_run(self) -> None:
        """Each variable README lists changes a setting when set validly, unless the SDK or
        ``TracingInterceptor`` reads it itself."""
        valid = {name for name, *_ in VALID}
        listed = {variable.name for variable in semconv.ENVIRONMENT}
        assert (listed - valid - SDK_VARIABLES - RUN_VARIABLES, valid - listed) == (set(), set())


class TestValidValues:
    @pytest.mark.parametrize(("variable", "value", "field", "expected"), VALID, ids=[v[0] for v in VALID])
    def test_a_valid_value_is_read(
        self, caplog: pytest.LogCaptureFixture, variable: str, value: str, field: str, expected: object
    ) -> None:
        """A valid value sets its field, without a warning."""
        with caplog.at_level(logging.WARNING, logger="stageflow_otel"):
            settings = Settings.from_environ({variable: value})
        assert (read(field, settings), caplog.records) == (expected, [])

    def test_a_signals_own_endpoint_and_protocol_win_over_the_base_ones(self) -> None:
        """``OTEL_EXPORTER_OTLP_TRACES_*`` win for traces; the others keep the base endpoint and protocol;
        over gRPC the base endpoint is used as is."""
        settings = Settings.from_environ(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/v1/traces",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            }
        )
        assert (settings.traces, settings.logs) == (
            SignalSettings("traces", ("otlp",), "http://traces:4318/v1/traces", "http/protobuf"),
            SignalSettings("logs", ("otlp",), "http://base:4317", "grpc"),
        )

    @pytest.mark.parametrize(
        ("protocol", "expected"),
        [("grpc", "http://localhost:4317"), ("http/protobuf", "http://localhost:4318/v1/metrics")],
        ids=["grpc", "http"],
    )
    def test_an_otlp_exporter_without_an_endpoint_sends_to_the_local_default(
        self, protocol: str, expected: str
    ) -> None:
        """``OTEL_METRICS_EXPORTER=otlp`` alone sends to the collector's local default port."""
        environ = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
        assert Settings.from_environ(environ).metrics.otlp_endpoint == expected

    def test_the_specific_length_limit_wins_and_unset_means_unlimited(self) -> None:
        """The span limit wins over the general one; the log record limit keeps the general one; events
        take the smaller."""
        settings = Settings.from_environ(
            {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "300", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "unset"}
        )
        assert (
            settings.span_length_limit,
            settings.log_record_length_limit,
            settings.event_length_limit,
        ) == (
            None,
            300,
            300,
        )


class TestInvalidValues:
    @pytest.mark.parametrize(("variable", "value", "field", "tail"), INVALID, ids=[v[0] for v in INVALID])
    def test_an_unusable_value_is_logged_naming_it_and_the_default_applies(
        self, caplog: pytest.LogCaptureFixture, variable: str, value: str, field: str, tail: str | None
    ) -> None:
        """An unusable value logs one warning naming the variable, the value and what it must be; the
        field keeps its default."""
        with caplog.at_level(logging.WARNING, logger="stageflow_otel"):
            settings = Settings.from_environ({variable: value})
        message = SPECIAL[variable] if tail is None else f"stageflow_otel: {variable}={value!r} {tail}"
        assert ([r.getMessage() for r in caplog.records], read(field, settings)) == (
            [message],
            read(field, Settings()),
        )

    def test_an_unknown_exporter_is_logged_and_the_others_kept(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An unknown exporter name is left out, naming the known ones; the valid names stay."""
        with caplog.at_level(logging.WARNING, logger="stageflow_otel"):
            settings = Settings.from_environ({"OTEL_LOGS_EXPORTER": "kafka,console"})
        assert ([r.getMessage() for r in caplog.records], settings.logs.exporters) == (
            [
                "stageflow_otel: OTEL_LOGS_EXPORTER='kafka,console': unknown exporter 'kafka' ignored "
                "(known: otlp, console, none)"
            ],
            ("console",),
        )

    def test_prometheus_is_a_metrics_exporter_only(self, caplog: pytest.LogCaptureFixture) -> None:
        """``prometheus`` names the in-process /metrics: for traces it is unknown."""
        with caplog.at_level(logging.WARNING, logger="stageflow_otel"):
            settings = Settings.from_environ({"OTEL_TRACES_EXPORTER": "prometheus"})
        assert ([r.getMessage() for r in caplog.records], settings.traces.exporters) == (
            [
                "stageflow_otel: OTEL_TRACES_EXPORTER='prometheus': unknown exporter 'prometheus' ignored "
                "(known: otlp, console, none)"
            ],
            (),
        )

    @pytest.mark.parametrize("prefix", ["BSP", "BLRP"])
    def test_a_batch_larger_than_its_queue_is_refused_naming_the_fix(self, prefix: str) -> None:
        """A batch that cannot fit its queue raises, naming both variables and both ways out."""
        environ = {f"OTEL_{prefix}_MAX_QUEUE_SIZE": "10", f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE": "11"}
        with pytest.raises(ValueError) as caught:
            Settings.from_environ(environ)
        assert str(caught.value) == (
            f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE=11 is larger than OTEL_{prefix}_MAX_QUEUE_SIZE=10: "
            f"an export batch must fit in the queue; set OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE to at most 10 "
            f"or OTEL_{prefix}_MAX_QUEUE_SIZE to at least 11"
        )

    def test_a_bad_series_limit_is_refused_naming_it(self) -> None:
        """``STAGEFLOW_OTEL_METRICS_MAX_SERIES`` below 1 raises with the variable and its value."""
        with pytest.raises(ValueError) as caught:
            Settings.from_environ({"STAGEFLOW_OTEL_METRICS_MAX_SERIES": "0"})
        assert str(caught.value) == (
            "STAGEFLOW_OTEL_METRICS_MAX_SERIES='0': the most series /metrics holds must be a whole number of "
            "at least 1"
        )

    def test_a_disabled_sdk_reads_nothing_else(self, caplog: pytest.LogCaptureFixture) -> None:
        """With ``OTEL_SDK_DISABLED=true`` other variables are not read, so none can fail set-up."""
        environ = {
            "OTEL_SDK_DISABLED": "true",
            "OTEL_BSP_MAX_QUEUE_SIZE": "1",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
            "STAGEFLOW_OTEL_MODE": "fast",
        }
        with caplog.at_level(logging.WARNING, logger="stageflow_otel"):
            settings = Settings.from_environ(environ)
        assert (settings, caplog.records) == (Settings(sdk_disabled=True), [])


class TestEnvironment:
    def test_an_injected_environment_is_the_only_one_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Given a mapping, ``os.environ`` is not read; without one it is."""
        monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "3")
        injected = Settings.from_environ({"OTEL_SPAN_LINK_COUNT_LIMIT": "5"})
        assert (
            injected.link_limit,
            Settings.from_environ({}).link_limit,
            Settings.from_environ().link_limit,
        ) == (
            5,
            1024,
            3,
        )

    def test_the_environment_keeps_what_was_read_never_what_the_sdk_reads_itself(self) -> None:
        """``environment`` holds the non-blank values of the variables read here, sorted: not the SDK's
        own (sampler, resource), not the run's W3C parent, nor anything unknown (headers)."""
        settings = Settings.from_environ(
            {
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_BSP_MAX_QUEUE_SIZE": "600",
                "OTEL_LOGS_EXPORTER": "  ",
                "OTEL_TRACES_SAMPLER": "always_off",
                "OTEL_SERVICE_NAME": "svc",
                "OTEL_EXPORTER_OTLP_HEADERS": "authorization=secret",
                "TRACEPARENT": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
            }
        )
        assert settings.environment == (
            ("OTEL_BSP_MAX_QUEUE_SIZE", "600"),
            ("OTEL_TRACES_EXPORTER", "console"),
        )

    def test_settings_are_frozen(self) -> None:
        """Settings cannot be changed after reading; ``dataclasses.replace`` makes a new one."""
        settings = Settings.from_environ({})
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.mode = "complete"  # type: ignore[misc]
        assert dataclasses.replace(settings, mode="complete").mode == "complete"
        assert settings.mode == "bounded"

    def test_signal_returns_each_signals_settings(self) -> None:
        """``signal(name)`` is the field of that name."""
        settings = Settings.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
        assert [settings.signal(s) for s in ("traces", "metrics", "logs")] == [
            settings.traces,
            settings.metrics,
            settings.logs,
        ]


class TestBuild:
    def test_build_uses_the_settings_it_is_given_not_the_environment(
        self, otel_env: pytest.MonkeyPatch
    ) -> None:
        """``build(settings)`` takes mode, log records, /metrics, link and length limits from ``settings``
        though ``os.environ`` says otherwise."""
        otel_env.setenv("STAGEFLOW_EVENT_LOG_RECORDS", "false")
        otel_env.setenv("STAGEFLOW_OTEL_MODE", "bounded")
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        otel_env.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "50")
        settings = Settings.from_environ(
            {
                "STAGEFLOW_EVENT_LOG_RECORDS": "true",
                "STAGEFLOW_OTEL_MODE": "complete",
                "OTEL_EXPORTER_PROMETHEUS_PORT": "0",
                "STAGEFLOW_LOOP_MONITOR": "false",
                "OTEL_SPAN_LINK_COUNT_LIMIT": "2",
                "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "10",
            }
        )
        telemetry = build(settings, set_global=False)
        try:
            tracer = telemetry.tracer_provider.get_tracer("t")
            linked = [tracer.start_span(f"l{i}").get_span_context() for i in range(3)]
            span = tracer.start_span("s", links=[Link(c) for c in linked], attributes={"a": "x" * 20})
            span.end()
            assert isinstance(span, ReadableSpan)
            sink = telemetry.event_sink
            assert isinstance(sink, OtlpEventSink)
            server = telemetry.metrics_server
            assert (
                telemetry.mode,
                sink.log_records,
                server is not None and server.addr,
                len(span.links),
                (span.attributes or {})["a"],
                stageflow.get_loop_monitor(),
            ) == ("complete", True, "127.0.0.1", 2, "x" * 10, None)
        finally:
            telemetry.shutdown(5.0)

    def test_the_sdk_reads_the_sampler_itself(self, otel_env: pytest.MonkeyPatch) -> None:
        """No sampler of ours: the tracer provider has the one the SDK made of ``OTEL_TRACES_SAMPLER``
        and ``OTEL_TRACES_SAMPLER_ARG``."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        otel_env.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        otel_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
        telemetry = build(Settings.from_environ(), set_global=False)
        try:
            provider = telemetry.tracer_provider
            assert isinstance(provider, TracerProvider)
            description = provider.sampler.get_description()
        finally:
            telemetry.shutdown(5.0)
        assert description.startswith("ParentBased{root:TraceIdRatioBased{0.25}")

    def test_a_disabled_sdk_builds_no_ops(self) -> None:
        """``Settings(sdk_disabled=True)`` builds the disabled handle."""
        telemetry = build(Settings(sdk_disabled=True), set_global=False)
        assert (telemetry.disabled, type(telemetry.event_sink)) == (True, stageflow.NoOpEventSink)


def pipeline_name_recorded(sink: OtlpEventSink, log_exporter: InMemoryLogRecordExporter) -> object:
    """The pipeline name of the log record ``sink`` makes of an event of pipeline ``abcdefghij``."""
    try:
        sink.try_emit(type="pipeline.started", data={"pipeline": "abcdefghij"})
        assert sink.flush(5.0)
    finally:
        sink.shutdown(5.0)
    (record,) = log_exporter.get_finished_logs()
    return (record.log_record.attributes or {})[semconv.PIPELINE_NAME]


class TestSinkLengthLimit:
    @pytest.mark.parametrize(
        ("limit", "expected"), [(5, "abcde"), (None, "abcdefghij")], ids=["5", "unlimited"]
    )
    def test_the_sinks_limit_may_be_given(
        self,
        otel_env: pytest.MonkeyPatch,
        meter_provider: MeterProvider,
        logger_provider: LoggerProvider,
        log_exporter: InMemoryLogRecordExporter,
        limit: int | None,
        expected: str,
    ) -> None:
        """``OtlpEventSink(value_length_limit=...)`` cuts every string at that limit (``None``: never),
        whatever the environment says."""
        otel_env.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "3")
        sink = OtlpEventSink(
            logger_provider=logger_provider,
            meter_provider=meter_provider,
            log_records=True,
            value_length_limit=limit,
        )
        assert pipeline_name_recorded(sink, log_exporter) == expected

    def test_by_default_the_sink_reads_the_environment(
        self,
        otel_env: pytest.MonkeyPatch,
        meter_provider: MeterProvider,
        logger_provider: LoggerProvider,
        log_exporter: InMemoryLogRecordExporter,
    ) -> None:
        """Without ``value_length_limit`` the sink cuts at the smaller of the span and log record limits."""
        otel_env.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4")
        otel_env.setenv("OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT", "6")
        sink = OtlpEventSink(logger_provider=logger_provider, meter_provider=meter_provider, log_records=True)
        assert pipeline_name_recorded(sink, log_exporter) == "abcd"
