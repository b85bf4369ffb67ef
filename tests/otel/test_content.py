"""Content safety: length limits, unencodable text and redacted error messages on every exported signal.

It runs past 500 lines because each content rule is checked on every exported signal.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from opentelemetry._logs import LogRecord
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AttributeValue

from stageflow import (
    EventSink,
    LoggingEventSink,
    Pipeline,
    PipelineFailedError,
    StageContext,
    StageGraph,
    StageInfo,
    StageKind,
    StageOutput,
)
from stageflow_otel import (
    ErrorDetails,
    ErrorRedactor,
    LoggingInterceptor,
    OtlpEventSink,
    Telemetry,
    TracingInterceptor,
    error_type_only,
    redact_error_message,
    redact_error_message_and_pii,
    semconv,
    setup,
)

from .conftest import by_name
from .conftest import entry_ctx as _entry_ctx
from .otlp_receiver import OtlpReceiver

W = StageKind.WORK
GOOD_RUNS = 20
EVENTS_PER_RUN = 7  # created, started, a started/completed, b started/completed|failed, run end


async def ok(ctx: StageContext) -> StageOutput:
    """A stage that succeeds."""
    return StageOutput.ok()


def two_stages(name: str, second: Any) -> Pipeline:
    """``a -> b`` where ``b`` runs ``second``."""
    return Pipeline(name=name).with_stage("a", ok, W).with_stage("b", second, W, dependencies=("a",))


def traced_graph(pipeline: Pipeline, telemetry: Telemetry) -> StageGraph:
    """``pipeline`` built with a tracing interceptor on ``telemetry``'s tracer provider."""
    return pipeline.build(interceptors=[TracingInterceptor(telemetry.tracer_provider)])


@contextlib.contextmanager
def exported() -> Iterator[Telemetry]:
    """``setup()`` from the environment (not installed globally); its telemetry is flushed when the block
    ends, then it is shut down."""
    telemetry = setup(set_global=False)
    try:
        yield telemetry
        assert telemetry.force_flush(timeout=10.0)
    finally:
        assert telemetry.shutdown(timeout=5.0)


async def one_bad_run_among_good_ones(bad: Any) -> Telemetry:
    """One traced run of ``two_stages("bad", bad)`` (which fails) among ``GOOD_RUNS`` concurrent traced
    runs of ``two_stages("good", ok)``, their telemetry exported; the (shut down) telemetry."""
    with exported() as telemetry:
        bad_graph = traced_graph(two_stages("bad", bad), telemetry)
        good_graph = traced_graph(two_stages("good", ok), telemetry)

        async def failing() -> None:
            with pytest.raises(PipelineFailedError):
                await bad_graph.run(entry_ctx(sink=telemetry.event_sink))

        await asyncio.gather(
            failing(), *(good_graph.run(entry_ctx(sink=telemetry.event_sink)) for _ in range(GOOD_RUNS))
        )
    return telemetry


def entry_ctx(sink: EventSink | None = None) -> StageContext:
    """An entry context with a fresh run id, reporting to ``sink``."""
    ctx = _entry_ctx()
    return StageContext(ctx.snapshot, ctx.inputs, ctx.stage_name, ctx.timer, event_sink=sink)


def attributes(items: Any) -> dict[str, Any]:
    """OTLP key/value pairs as a dict of their string (or int) values."""
    return {kv.key: kv.value.string_value or kv.value.int_value for kv in items}


def body_map(value: AnyValue) -> dict[str, str]:
    """The string entries of an OTLP kvlist body."""
    return {kv.key: kv.value.string_value for kv in value.kvlist_value.values}


@pytest.fixture(name="exporting")
def _exporting(receiver: OtlpReceiver, otel_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """OTEL_* sending traces and logs to ``receiver``, metrics nowhere."""
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", receiver.protocol)
    otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
    otel_env.setenv("STAGEFLOW_EVENT_LOG_RECORDS", "true")  # events as log records too
    return otel_env


class TestOversizedValues:
    async def test_a_5_mb_error_message_costs_no_other_run_its_telemetry(
        self, exporting: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """A 5 MB error message is cut to 4096 characters: every run's spans and events arrive."""

        async def huge(ctx: StageContext) -> StageOutput:
            raise ValueError("x" * 5_000_000)

        await one_bad_run_among_good_ones(huge)
        spans = receiver.spans()
        assert (
            sorted(s.name for s in spans if s.name.startswith("pipeline"))
            == ["pipeline bad"] + ["pipeline good"] * GOOD_RUNS
        )
        assert len(spans) == 3 * (GOOD_RUNS + 1)
        assert len(receiver.log_records()) == EVENTS_PER_RUN * (GOOD_RUNS + 1)
        failed = next(s for s in spans if s.name == "stage b" and s.status.message)
        event = attributes(next(e for e in failed.events if e.name == "exception").attributes)
        assert (len(failed.status.message), len(event["exception.message"])) == (4096, 4096)
        assert len(event["exception.stacktrace"]) == 4096
        record = next(r for r in receiver.log_records() if r.event_name == "stageflow.stage.failed")
        assert len(attributes(record.attributes)["exception.message"]) == 4096
        assert len(body_map(record.body)["error"]) == 4096
        sizes = [r.ByteSize() for r in receiver.traces] + [r.ByteSize() for r in receiver.logs]
        assert max(sizes) < 1_000_000

    async def test_length_limits_come_from_the_otel_variables(
        self, exporting: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """``OTEL_SPAN_…`` and ``OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT`` set the span and log limits."""
        exporting.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "100")
        exporting.setenv("OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT", "50")

        async def long(ctx: StageContext) -> StageOutput:
            return StageOutput.fail("y" * 1000)

        with exported() as telemetry, pytest.raises(PipelineFailedError):
            await traced_graph(two_stages("p" * 300, long), telemetry).run(
                entry_ctx(sink=telemetry.event_sink)
            )
        stage = next(s for s in receiver.spans() if s.name == "stage b")
        run = next(s for s in receiver.spans() if s.name.startswith("pipeline "))
        assert (len(stage.status.message), len(run.name)) == (100, 100)
        assert len(attributes(stage.attributes)[semconv.PIPELINE_NAME]) == 100
        record = next(r for r in receiver.log_records() if r.event_name == "stageflow.stage.failed")
        assert len(attributes(record.attributes)["exception.message"]) == 50
        assert (len(body_map(record.body)["error"]), len(body_map(record.body)["pipeline"])) == (50, 50)

    async def test_an_unencodable_error_message_costs_no_other_run_its_telemetry(
        self, exporting: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """A lone surrogate in an error message is exported backslash-escaped; no batch fails."""

        async def odd(ctx: StageContext) -> StageOutput:
            raise OSError("cannot open 'caf\udce9.txt'")

        telemetry = await one_bad_run_among_good_ones(odd)
        assert len(receiver.spans()) == 3 * (GOOD_RUNS + 1)
        assert len(receiver.log_records()) == EVENTS_PER_RUN * (GOOD_RUNS + 1)
        failed = next(s for s in receiver.spans() if s.name == "stage b" and s.status.message)
        assert failed.status.message == "cannot open 'caf\\udce9.txt'"
        assert telemetry.export_failures == {"traces": 0, "metrics": 0, "logs": 0}

    async def test_captured_content_that_cannot_encode_costs_no_other_span(
        self, exporting: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """A ``capture_content`` value with a lone surrogate is escaped, so its batch still exports."""

        def hook(stage: StageInfo, output: StageOutput) -> dict[str, AttributeValue]:
            return {"file": "caf\udce9.txt", "files": ("a", "b\udcff")}

        with exported() as telemetry:
            graph = two_stages("demo", ok).build(
                interceptors=[TracingInterceptor(telemetry.tracer_provider, capture_content=hook)]
            )
            await asyncio.gather(*(graph.run(entry_ctx()) for _ in range(GOOD_RUNS)))
        spans = receiver.spans()
        assert len(spans) == 3 * GOOD_RUNS
        stage = next(s for s in spans if s.name == "stage a")
        captured = {
            kv.key: kv.value for kv in stage.attributes if kv.key.startswith("stageflow.stage.output.")
        }
        assert captured["stageflow.stage.output.file"].string_value == "caf\\udce9.txt"
        assert [v.string_value for v in captured["stageflow.stage.output.files"].array_value.values] == [
            "a",
            "b\\udcff",
        ]


SECRET_MESSAGE = "login failed: password=hunter2 for bob@example.com"
REDACTED_MESSAGE = "login failed: password=[REDACTED] for [REDACTED]"


async def leaky(ctx: StageContext) -> StageOutput:
    """A stage whose error message holds a password and an e-mail address."""
    raise PermissionError(SECRET_MESSAGE)


async def returns_a_dict(ctx: StageContext) -> StageOutput:
    """A stage returning a dict holding a secret instead of a StageOutput."""
    return {"api_key": "sk-live-0000"}  # type: ignore[return-value]


FailedDemo = Callable[..., Awaitable[tuple[dict[str, ReadableSpan], list[LogRecord]]]]


@pytest.fixture(name="failed_demo")
def _failed_demo(
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    logger_provider: LoggerProvider,
    log_exporter: InMemoryLogRecordExporter,
) -> FailedDemo:
    """``spans, records = await failed_demo(stage, log_records=..., redact_error=...)``: one traced run of
    ``two_stages("demo", stage)``, which fails, its events going to an OTLP sink with ``log_records``; the
    tracing interceptor and the sink both redact errors with ``redact_error`` if given, else with their own
    default (the keyword is then not passed at all). It gives the spans by name and the log records, once
    the sink and the logger provider flushed."""

    async def failed_demo(
        stage: Any, *, log_records: bool | None = None, redact_error: ErrorRedactor | None = None
    ) -> tuple[dict[str, ReadableSpan], list[LogRecord]]:
        if redact_error is None:  # the library's default redaction, keyword left out
            sink = OtlpEventSink(logger_provider=logger_provider, log_records=log_records)
            tracing = TracingInterceptor(tracer_provider)
        else:
            sink = OtlpEventSink(
                logger_provider=logger_provider, log_records=log_records, redact_error=redact_error
            )
            tracing = TracingInterceptor(tracer_provider, redact_error=redact_error)
        with pytest.raises(PipelineFailedError):
            await two_stages("demo", stage).build(interceptors=[tracing]).run(entry_ctx(sink=sink))
        assert sink.flush(5.0)
        logger_provider.force_flush()
        records = [r.log_record for r in log_exporter.get_finished_logs()]
        return by_name(span_exporter.get_finished_spans()), records

    return failed_demo


class TestRedaction:
    async def test_error_messages_are_redacted_on_spans_and_log_records(
        self, failed_demo: FailedDemo
    ) -> None:
        """By default a password and an e-mail address in an error message are masked everywhere."""
        spans, records = await failed_demo(leaky, log_records=True)
        stage, run = spans["stage b"], spans["pipeline demo"]
        assert stage.status.description == REDACTED_MESSAGE
        assert run.status.description == f"stage 'b' failed: PermissionError: {REDACTED_MESSAGE}"
        exception = next(e for e in stage.events if e.name == "exception")
        event = dict(exception.attributes or {})
        assert (exception.name, event["exception.type"], event["exception.message"]) == (
            "exception",
            "PermissionError",
            REDACTED_MESSAGE,
        )
        assert str(event["exception.stacktrace"]).endswith(f"PermissionError: {REDACTED_MESSAGE}\n")
        failed = [r for r in records if r.event_name == "stageflow.stage.failed"]
        assert [(r.attributes or {})["exception.message"] for r in failed] == [REDACTED_MESSAGE]
        span_event = next(e for e in stage.events if e.name == "stageflow.stage.failed")
        assert (span_event.attributes or {})["exception.message"] == REDACTED_MESSAGE
        exported = repr([(s.status, s.events, s.attributes) for s in spans.values()])
        exported += repr([(r.body, r.attributes) for r in records])
        assert ("hunter2" in exported, "bob@" in exported) == (False, False)

    async def test_error_type_only_exports_no_message(self, failed_demo: FailedDemo) -> None:
        """With ``error_type_only`` spans and log records carry ``error.type`` and no message at all."""
        spans, records = await failed_demo(leaky, log_records=True, redact_error=error_type_only)
        stage = spans["stage b"]
        assert (stage.status.description, (stage.attributes or {})[semconv.ERROR_TYPE]) == (
            None,
            "PermissionError",
        )
        event = dict(next(e for e in stage.events if e.name == "exception").attributes or {})
        assert sorted(event) == ["exception.stacktrace", "exception.type"]
        assert str(event["exception.stacktrace"]).endswith("\nPermissionError\n")
        failed = [r for r in records if r.event_name == "stageflow.stage.failed"]
        assert [(r.attributes or {}).get("exception.message") for r in failed] == [None]
        assert [(r.attributes or {})[semconv.ERROR_TYPE] for r in failed] == ["PermissionError"]
        assert ["error" in r.body for r in failed if isinstance(r.body, dict)] == [False]
        span_event = next(e for e in stage.events if e.name == "stageflow.stage.failed")
        assert semconv.EXCEPTION_MESSAGE not in (span_event.attributes or {})

    async def test_a_non_stage_output_return_exports_only_its_type(self, failed_demo: FailedDemo) -> None:
        """A dict returned instead of a StageOutput reaches spans and log records as 'a dict object'."""
        spans, records = await failed_demo(returns_a_dict)
        assert spans["pipeline demo"].status.description == (
            "stage 'b' failed: InvalidStageOutputError: stage 'b' returned a dict object; execute() "
            "must return a StageOutput, e.g. StageOutput.ok(key=value)"
        )
        exported = repr([(s.status, s.events, s.attributes) for s in spans.values()])
        exported += repr([(r.body, r.attributes) for r in records])
        assert "sk-live" not in exported

    async def test_logging_interceptor_redacts_the_error_field(self) -> None:
        """The LoggingInterceptor's ``error`` field passes through the same redaction hook."""
        lines: list[tuple[str, dict[str, Any]]] = []

        class Capture:
            def info(self, event: str, **fields: Any) -> None:
                lines.append((event, fields))

            warning = error = info

        graph = two_stages("demo", leaky).build(interceptors=[LoggingInterceptor(Capture())])
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx())
        errors = [fields.get(semconv.LOG_ERROR) for _, fields in lines if "error_type" in fields]
        assert errors == [REDACTED_MESSAGE, f"stage 'b' failed: PermissionError: {REDACTED_MESSAGE}"]

    async def test_a_raising_hook_costs_only_the_message(
        self, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
    ) -> None:
        """A redaction hook that raises leaves the message out and the span otherwise complete."""

        def broken(error: ErrorDetails) -> str:
            raise RuntimeError("hook bug")

        graph = two_stages("demo", leaky).build(
            interceptors=[TracingInterceptor(tracer_provider, redact_error=broken)]
        )
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx())
        stage = next(s for s in span_exporter.get_finished_spans() if s.name == "stage b")
        assert (stage.status.description, (stage.attributes or {})[semconv.STAGE_RESULT]) == (
            None,
            "error",
        )


PII_CASES = {
    "ssn": ("SSN 123-45-6789 on file", "SSN [REDACTED] on file"),
    "phone-us": ("call 555-123-4567 or (555) 123-4567", "call [REDACTED] or [REDACTED]"),
    "phone-international": ("call +44 20 7946 0958 now", "call [REDACTED] now"),
    "iban": ("IBAN DE89 3704 0044 0532 0130 00 rejected", "IBAN [REDACTED] rejected"),
    "iban-compact": ("IBAN GB82WEST12345698765432", "IBAN [REDACTED]"),
    "bad-check-digits-kept": ("ref DE00 3704 0044", "ref DE00 3704 0044"),
    "secrets-too": ("password=hunter2 for ann@example.org", "password=[REDACTED] for [REDACTED]"),
    "dates-counts-kept": ("on 2026-12-05, 3 of 10 stages", "on 2026-12-05, 3 of 10 stages"),
}
"""Messages the opt-in PII redactor masks (or keeps), by case id: ``(message, redacted)``."""


class TestDefaultRedactor:
    @pytest.mark.parametrize(
        ("message", "expected"),
        [
            ("password=hunter2", "password=[REDACTED]"),
            ("db_password: 's3cr3t' rejected", "db_password: '[REDACTED]' rejected"),
            ('{"api_key": "abc123"}', '{"api_key": "[REDACTED]"}'),
            ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x", "Authorization: Bearer [REDACTED]"),
            ("GET https://bob:pw@example.com/x failed", "GET https://[REDACTED]@example.com/x failed"),
            ("no user ann.lee@example.org", "no user [REDACTED]"),
            ("card 4111 1111 1111 1111 declined", "card [REDACTED] declined"),
            ("key sk_live_4eC39HqLyjWDarjtT1zdp7dc bad", "key [REDACTED] bad"),
            ("timeout after 30 s on stage 'llm'", "timeout after 30 s on stage 'llm'"),
            ("KeyError: 'user_id'", "KeyError: 'user_id'"),
            (
                "run 0b9f6c1e-5d2a-4c4e-9a57-1f0e3b2a7c11 failed",
                "run 0b9f6c1e-5d2a-4c4e-9a57-1f0e3b2a7c11 failed",
            ),
            ("sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "sha [REDACTED]"),
            ("redis://:s3cret@cache:6379/0 refused", "redis://[REDACTED]@cache:6379/0 refused"),
            ("key AKIAIOSFODNN7EXAMPLE denied", "key [REDACTED] denied"),
            ("PGPASSWORD=hunter2 psql exited 2", "PGPASSWORD=[REDACTED] psql exited 2"),
            ("pass=hunter2", "pass=[REDACTED]"),
            ("login failed: the password is hunter2", "login failed: the password is [REDACTED]"),
            ("wrong password hunter2 for bob", "wrong password [REDACTED] for bob"),
            ("password is required", "password is required"),
            ("slack: xoxb-17653672481-19874698323-pdfjlkwlqwlkjsd revoked", "slack: [REDACTED] revoked"),
            ("url=https://x.test/?token=abc&page=2", "url=https://x.test/?token=[REDACTED]&page=2"),
            ("bad max_tokens=4096", "bad max_tokens=4096"),
            ("jwt eyJhbGciOiJIUzI1NiJ9.e30.c2ln expired", "jwt [REDACTED] expired"),
            ("on 2026-12-05 at 12:30:45, lodash@4.17.21", "on 2026-12-05 at 12:30:45, lodash@4.17.21"),
            ("SSN 123-45-6789, tel 555-123-4567", "SSN 123-45-6789, tel 555-123-4567"),
        ],
        ids=[
            "key=value",
            "prefixed-key-quoted",
            "json",
            "bearer",
            "url-credentials",
            "email",
            "card-number",
            "api-key-token",
            "plain-kept",
            "identifier-kept",
            "uuid-kept",
            "hex-digest",
            "url-empty-user",
            "aws-access-key-id",
            "pgpassword",
            "pass",
            "prose-is",
            "prose-bare",
            "prose-plain-kept",
            "slack-token",
            "key-value-inside-a-value",
            "count-kept",
            "jwt",
            "date-time-version-kept",
            "pii-kept-without-opt-in",
        ],
    )
    def test_masks_likely_secrets(self, message: str, expected: str) -> None:
        """The default redactor masks credentials, e-mail addresses, long numbers and API keys only."""
        assert redact_error_message(ErrorDetails("ValueError", message)) == expected

    @pytest.mark.parametrize(("message", "expected"), PII_CASES.values(), ids=PII_CASES)
    def test_pii_masking_is_opt_in(self, message: str, expected: str) -> None:
        """The opt-in PII redactor also masks SSNs, phone numbers and IBANs with valid check digits."""
        assert redact_error_message_and_pii(ErrorDetails("ValueError", message)) == expected

    @pytest.mark.parametrize(
        "redact", [redact_error_message, redact_error_message_and_pii], ids=["default", "pii"]
    )
    def test_linear_time_on_crafted_input(self, redact: ErrorRedactor) -> None:
        """Inputs crafted against each pattern, at the length limit, take well under a second each."""
        limit = semconv.DEFAULT_VALUE_LENGTH_LIMIT
        units = [
            "token-",
            "a",
            "a:",
            "a=",
            "a.",
            "a@",
            "a@a.",
            "1 ",
            "1-",
            "+1 ",
            "AB12 ",
            "eyJ",
            "eyJa.",
            "xoxb-",
            "bearer ",
            "password ",
            "pwd is ",
            "password=",
            '"api_key": "',
            "x://:",
            "x://a:",
            "redis://:",
            "(555) ",
            "123-45-",
            "aB1",
            "0123456789abcdef",
            "\t",
            "=",
            "-",
        ]
        slowest = 0.0
        for unit in units:
            for tail in ("", "!", "@"):
                message = (unit * (limit // len(unit) + 1))[: limit - len(tail)] + tail
                started = time.process_time()
                redact(ErrorDetails("ValueError", message))
                slowest = max(slowest, time.process_time() - started)
        # a generous bound: these take milliseconds; the backtracking patterns took 17 s on "token-" * 682
        assert slowest < 1.0


class TestStacktrace:
    async def test_source_lines_are_opt_in(
        self, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
    ) -> None:
        """Exported stack traces name file, line and function; their source lines only on request."""

        def connect(password: str) -> None:
            raise PermissionError("access denied")

        async def logs_in(ctx: StageContext) -> StageOutput:
            connect(password="hunter2")
            return StageOutput.ok()

        traces = []
        for source_lines in (False, True):
            tracing = TracingInterceptor(tracer_provider, stacktrace_source_lines=source_lines)
            with pytest.raises(PipelineFailedError):
                await (
                    Pipeline(name="db")
                    .with_stage("a", logs_in, W)
                    .build(interceptors=[tracing])
                    .run(entry_ctx())
                )
            stage = [s for s in span_exporter.get_finished_spans() if s.name == "stage a"][-1]
            event = next(e for e in stage.events if e.name == "exception")
            traces.append(str((event.attributes or {})["exception.stacktrace"]).splitlines())
        bare, with_source = traces
        frame = re.compile(r'  File "[^"]+", line \d+, in [\w<>]+')
        assert bare[0] == "Traceback (most recent call last):"
        assert [bool(frame.fullmatch(line)) for line in bare[1:-1]] == [True] * (len(bare) - 2)
        assert [line.rsplit(" ", 1)[1] for line in bare[-3:-1]] + bare[-1:] == [
            "logs_in",
            "connect",
            "PermissionError: access denied",
        ]
        assert "hunter2" not in "\n".join(bare)
        assert '    connect(password="hunter2")' in with_source


class TestCoreLoggingSink:
    async def test_readme_lambda_redacts_the_core_sinks_json_lines(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """README's ``redact_error=lambda m: ...`` masks the secret in every error the core sink logs."""
        sink = LoggingEventSink(redact_error=lambda m: redact_error_message(ErrorDetails("error", m)))
        with caplog.at_level(logging.INFO, logger="stageflow.events"), pytest.raises(PipelineFailedError):
            await two_stages("demo", leaky).build().run(entry_ctx(sink=sink))
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "stageflow.events"]
        assert [(line["type"], line["error"]) for line in lines if "error" in line] == [
            ("stage.b.failed", REDACTED_MESSAGE),
            ("pipeline.failed", REDACTED_MESSAGE),
        ]
