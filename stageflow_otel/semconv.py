"""Every telemetry name stageflow_otel emits: spans, attributes, metrics, events, and their Prometheus names.

It runs past 500 lines because it is the one registry of names: every name with its one-line meaning, which
the docs render.

Interceptors, the OTLP event sink, the ``/metrics`` endpoint, the dashboards, the collector configuration
and the README's telemetry reference all take their names from here (tests check the assets against it).
Durations are in seconds. Run ids appear only on spans, logs and events, never as metric attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = (
    "ATTRIBUTES",
    "DEFAULT_MAX_PIPELINE_NAMES",
    "DEFAULT_MAX_STAGE_NAMES",
    "DEFAULT_NAME_IDLE_TIMEOUT",
    "DEFAULT_VALUE_LENGTH_LIMIT",
    "METRIC_VALUE_LENGTH_LIMIT",
    "DURATION_BUCKETS",
    "FIRST_CHUNK_BUCKETS",
    "GEN_AI_ATTRIBUTES",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_PROVIDER_NAME",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_TIME_TO_FIRST_CHUNK",
    "PIPELINE_RUN_TIME_TO_FIRST_OUTPUT",
    "RUN_TIME_TO_FIRST_OUTPUT",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "STAGE_CHUNKS",
    "STAGE_TIME_PER_OUTPUT_CHUNK",
    "STAGE_TIME_PER_OUTPUT_CHUNK_METRIC",
    "STAGE_TIME_TO_FIRST_CHUNK",
    "STAGE_TIME_TO_FIRST_CHUNK_METRIC",
    "CODE_FUNCTION_NAME",
    "ERROR_TYPE",
    "ERROR_TYPE_CANCELLED",
    "ERROR_TYPE_RETRY_REQUESTED",
    "EVENTS",
    "EVENTS_EMITTED",
    "EVENT_NAME",
    "EVENT_TYPE",
    "ENV_EVENT_LOG_RECORDS",
    "PIPELINE_STAGES",
    "RUN_CANCEL_REASON",
    "STAGE_CANCEL_REASON",
    "STAGE_DURATION_ATTRIBUTE",
    "STAGE_RETRY_DELAY",
    "INSTRUMENTATION_SCOPE",
    "LINK_TYPE",
    "LINK_TYPE_DEPENDENCY",
    "LOG_ATTEMPT",
    "LOG_DURATION",
    "LOG_ERROR",
    "LOG_ERROR_TYPE",
    "LOG_KIND",
    "LOG_PIPELINE",
    "LOG_RUN_ID",
    "LOG_SPAN_ID",
    "LOG_STAGE",
    "LOG_STATUS",
    "LOG_TRACE_ID",
    "LOG_WAIT",
    "METRICS",
    "OTHER",
    "PIPELINE_NAME",
    "PIPELINE_VERSION",
    "RESULTS",
    "RESULT_CANCELLATION",
    "RESULT_ERROR",
    "RESULT_FAILURE",
    "RESULT_SKIP",
    "RESULT_SUCCESS",
    "RESULT_TIMEOUT",
    "RUN_CRITICAL_PATH",
    "RUN_DURATION",
    "RUN_ID",
    "RUN_RESULT",
    "SPAN_PIPELINE_PREFIX",
    "SPAN_STAGE_PREFIX",
    "STAGE_ATTEMPT",
    "STAGE_DEPENDENCIES",
    "STAGE_KIND",
    "STAGE_NAME",
    "STAGE_OUTPUT_PREFIX",
    "STAGE_RESULT",
    "STAGE_SKIP_REASON",
    "STAGE_WAIT_DURATION",
    "CIRCUIT_BREAKER_STATE",
    "EVENTS_DROPPED",
    "PIPELINE_RUN_ACTIVE",
    "PIPELINE_RUN_DURATION",
    "PIPELINE_RUN_ERRORS",
    "STAGE_CRITICAL_PATH_DURATION",
    "STAGE_DURATION",
    "STAGE_SKIPS",
    "STAGE_WAIT_DURATION_METRIC",
    "TELEMETRY_EXPORT_FAILURES",
    "TELEMETRY_SPANS_DROPPED",
    "ENVIRONMENT",
    "ENV_METRICS_EXPORTER",
    "ENV_PROMETHEUS_HOST",
    "ENV_PROMETHEUS_PORT",
    "EVENT_OTHER",
    "EXCEPTION_EVENT",
    "EXCEPTION_MESSAGE",
    "EXCEPTION_STACKTRACE",
    "EXCEPTION_TYPE",
    "OTEL_SCOPE_LABEL",
    "TELEMETRY_SIGNAL",
    "TELEMETRY_CAUSE",
    "STORE_KIND",
    "STORE_WRITE_DURATION",
    "STORE_RECORDS_DROPPED",
    "DROP_CAUSES",
    "DROP_CAUSE_QUEUE_FULL",
    "DROP_CAUSE_EXPORT_FAILED",
    "DROP_CAUSE_TIMEOUT",
    "DROP_CAUSE_SHUTDOWN",
    "DROP_CAUSE_TOO_LARGE",
    "TELEMETRY_LOG_RECORDS_DROPPED",
    "TELEMETRY_METRIC_POINTS_DROPPED",
    "TELEMETRY_LINKS_DROPPED",
    "ENV_MODE",
    "DEFAULT_LINK_LIMIT",
    "ENV_COMPLETE_TIMEOUT",
    "ENV_MAX_EXPORT_BYTES",
    "ENV_LOOP_MONITOR",
    "ENV_WORKER_FLUSH_TIMEOUT",
    "STAGE_DISPATCH_DURATION",
    "STAGE_DISPATCH_DURATION_METRIC",
    "STAGE_WORK",
    "WORK_STOPPED",
    "WORK_ABANDONED",
    "STAGE_ABANDONED",
    "STAGE_LOOP_BLOCK_DURATION",
    "STAGE_LOOP_BLOCK_DURATION_METRIC",
    "CODE_FILE_PATH",
    "CODE_LINE_NUMBER",
    "LOOP_LAG",
    "LOOP_UTILIZATION",
    "EnvironmentVariable",
    "Attribute",
    "InstrumentKind",
    "Metric",
    "prometheus_label",
)

INSTRUMENTATION_SCOPE: Final = "stageflow_otel"
"""The tracer, meter and logger name (a fixed string, not ``__name__``)."""

# --------------------------------------------------------------------------- spans

SPAN_PIPELINE_PREFIX: Final = "pipeline "
"""Run span name: ``"pipeline {pipeline name}"``, kind INTERNAL."""
SPAN_STAGE_PREFIX: Final = "stage "
"""Stage span name: ``"stage {stage name}"``, kind INTERNAL, child of the run span."""

# --------------------------------------------------------------------------- attributes

PIPELINE_NAME: Final = "stageflow.pipeline.name"
PIPELINE_VERSION: Final = "stageflow.pipeline.version"
RUN_ID: Final = "stageflow.run.id"
RUN_RESULT: Final = "stageflow.run.result"
RUN_CRITICAL_PATH: Final = "stageflow.run.critical_path"
RUN_DURATION: Final = "stageflow.run.duration"
STAGE_NAME: Final = "stageflow.stage.name"
STAGE_KIND: Final = "stageflow.stage.kind"
STAGE_RESULT: Final = "stageflow.stage.result"
STAGE_DEPENDENCIES: Final = "stageflow.stage.dependencies"
STAGE_WAIT_DURATION: Final = "stageflow.stage.wait.duration"
STAGE_ATTEMPT: Final = "stageflow.stage.attempt"
STAGE_SKIP_REASON: Final = "stageflow.stage.skip.reason"
"""On ``stageflow.stage.skipped`` events: why the stage (or the executor, for a conditional stage) skipped."""
STAGE_CANCEL_REASON: Final = "stageflow.stage.cancel.reason"
"""On ``stageflow.stage.cancelled`` events of a stage that returned ``StageOutput.cancel``: its reason."""
RUN_CANCEL_REASON: Final = "stageflow.run.cancel.reason"
"""On ``stageflow.pipeline.cancelled`` events: why the run was cancelled."""
STAGE_DURATION_ATTRIBUTE: Final = "stageflow.stage.duration"
"""On stage events that end a stage: its duration in seconds (the metric of the same name is a histogram)."""
STAGE_RETRY_DELAY: Final = "stageflow.stage.retry.delay"
"""On ``stageflow.stage.retrying`` events: seconds until the next attempt."""
STAGE_DISPATCH_DURATION: Final = "stageflow.stage.dispatch.duration"
"""On the span and the ``completed`` event of a sync stage: seconds its work spent getting to its executor
(thread, process pool, cluster) and back, apart from the time its code ran (the histogram's name too)."""
STAGE_WORK: Final = "stageflow.stage.work"
"""On the span and the ``failed``/``cancelled`` event of a sync stage whose hop was cancelled: what became of
the work, ``stopped`` (it never started, ended within the grace period, or was terminated) or ``abandoned``
(still running when the grace ran out; its late result is discarded)."""
WORK_STOPPED: Final = "stopped"
WORK_ABANDONED: Final = "abandoned"
STAGE_LOOP_BLOCK_DURATION: Final = "stageflow.stage.loop_block.duration"
"""On ``stageflow.stage.loop_blocked`` span events: seconds the stage held the event loop (the histogram
has this name too)."""
CODE_FILE_PATH: Final = "code.file.path"
"""OpenTelemetry semconv: the source file a loop block was sampled in."""
CODE_LINE_NUMBER: Final = "code.line.number"
"""OpenTelemetry semconv: the line number a loop block was sampled at."""
STAGE_CHUNKS: Final = "stageflow.stage.chunks"
"""On the span and the ``completed`` event of a streaming stage: how many chunks it yielded."""
STAGE_TIME_TO_FIRST_CHUNK: Final = "stageflow.stage.time_to_first_chunk"
"""On the span, the ``first_chunk`` and the ``completed`` event of a streaming stage: seconds from its start
to its first chunk, on the engine's monotonic clock (the histogram has this name too)."""
STAGE_TIME_PER_OUTPUT_CHUNK: Final = "stageflow.stage.time_per_output_chunk"
"""On the span and the ``completed`` event of a streaming stage that yielded at least two chunks: seconds per
chunk after the first (the histogram has this name too)."""
RUN_TIME_TO_FIRST_OUTPUT: Final = "stageflow.run.time_to_first_output"
"""On the run span of a pipeline with a streaming stage: seconds from the run's start to its first output
(``RunResult.time_to_first_output``)."""
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
"""OpenTelemetry GenAI semconv: the operation (``chat``, ``text_completion``, ...). A stage that has it in its
``config`` is a GenAI stage: its time to first chunk is also recorded as ``GEN_AI_TIME_TO_FIRST_CHUNK``."""
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
"""OpenTelemetry GenAI semconv: the model provider (``openai``, ...), read from the stage's ``config``."""
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
"""OpenTelemetry GenAI semconv: the model asked for, read from the stage's ``config``."""
SERVER_ADDRESS: Final = "server.address"
"""OpenTelemetry semconv: the GenAI server's host, read from the stage's ``config``."""
SERVER_PORT: Final = "server.port"
"""OpenTelemetry semconv: the GenAI server's port, read from the stage's ``config``."""
GEN_AI_ATTRIBUTES: Final = (
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    SERVER_ADDRESS,
    SERVER_PORT,
)
"""The GenAI attributes a stage may declare in its ``config`` (``gen_ai.operation.name`` marks it GenAI)."""
PIPELINE_STAGES: Final = "stageflow.pipeline.stages"
"""On ``stageflow.pipeline.created|started`` events: how many stages the graph has."""
EVENT_NAME: Final = "event.name"
"""OpenTelemetry semconv: the static event name, as an attribute of ``stageflow.events.emitted``."""
STAGE_OUTPUT_PREFIX: Final = "stageflow.stage.output."
"""Prefix of the attributes a ``capture_content`` redaction hook returns (content is off by default)."""
CODE_FUNCTION_NAME: Final = "code.function.name"
"""OpenTelemetry semconv: the stage runner's fully qualified function name."""
ERROR_TYPE: Final = "error.type"
LINK_TYPE: Final = "stageflow.link.type"
LINK_TYPE_DEPENDENCY: Final = "dependency"
DEFAULT_LINK_LIMIT: Final = 1024
"""Links a span keeps with ``setup()``'s tracer provider (``OTEL_SPAN_LINK_COUNT_LIMIT``; the SDK's is 128):
a stage span keeps one link per dependency up to this; the links beyond are counted in
``stageflow.telemetry.links.dropped``."""
EVENT_TYPE: Final = "stageflow.event.type"
"""Attribute of event log records holding the event's type string, e.g. ``stage.llm.completed``."""
EXCEPTION_MESSAGE: Final = "exception.message"
"""OpenTelemetry semconv: the redacted error message, on ``exception`` span events and ``*.failed``
event log records."""
EXCEPTION_TYPE: Final = "exception.type"
"""OpenTelemetry semconv: the exception's qualified class name, on ``exception`` span events."""
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"
"""OpenTelemetry semconv: the exception's own frames and its redacted message (no chained exceptions)."""
EXCEPTION_EVENT: Final = "exception"
"""Name of the span event a stage span gets when its stage raised (OpenTelemetry semconv)."""
TELEMETRY_SIGNAL: Final = "signal"
"""Attribute of ``stageflow.telemetry.export.failures``: ``traces``, ``metrics`` or ``logs``."""
TELEMETRY_CAUSE: Final = "cause"
"""Attribute of the telemetry-health ``*.dropped`` counters: why the items were lost (``DROP_CAUSES``)."""

STORE_KIND: Final = "stageflow.store.kind"
"""Attribute of the run-store metrics: ``memory``, ``sqlite`` or ``postgresql``."""

DROP_CAUSE_QUEUE_FULL: Final = "queue_full"
"""Lost on arrival: the export queue (or the event sink's buffer) was full."""
DROP_CAUSE_EXPORT_FAILED: Final = "export_failed"
"""Lost in a batch the exporter reported failed (collector down or rejecting)."""
DROP_CAUSE_TIMEOUT: Final = "timeout"
"""Lost to a bounded wait: ``complete`` mode's wait for queue space, or ``shutdown()``'s deadline."""
DROP_CAUSE_SHUTDOWN: Final = "shutdown"
"""Lost because it arrived after ``shutdown()`` began."""
DROP_CAUSE_TOO_LARGE: Final = "too_large"
"""Lost because the item alone encodes to more than the maximum export request size."""
DROP_CAUSES: Final = (
    DROP_CAUSE_QUEUE_FULL,
    DROP_CAUSE_EXPORT_FAILED,
    DROP_CAUSE_TIMEOUT,
    DROP_CAUSE_SHUTDOWN,
    DROP_CAUSE_TOO_LARGE,
)
"""Values of ``cause`` on the telemetry-health ``*.dropped`` counters."""

ERROR_TYPE_CANCELLED: Final = "cancelled"
"""``error.type`` of a stage or run whose task was cancelled (``asyncio.CancelledError``)."""
ERROR_TYPE_RETRY_REQUESTED: Final = "retry_requested"
"""``error.type`` of an attempt that returned ``StageOutput.retry`` (another attempt may follow)."""
# Any other failure uses the exception's class name (``StageFailedError`` for ``StageOutput.fail``,
# ``StageTimeoutError`` for a timeout, ``CircuitOpenError`` for a call an open breaker refused), qualified
# when nested (``Client.QuotaError``), as ``stageflow.error_type_name`` gives it.

DEFAULT_VALUE_LENGTH_LIMIT: Final = 4096
"""Characters kept of a string value (attributes, span names, status descriptions, log record bodies)
when neither ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`` / ``OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT``
nor ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` is set (the SDK's own default is unlimited)."""

OTHER: Final = "_OTHER"
"""Value used for ``error.type`` when unknown, and for pipeline and stage names the cardinality guard
does not admit on metric attributes."""

DEFAULT_MAX_PIPELINE_NAMES: Final = 50
"""Distinct pipeline names metric attributes carry at a time (``MetricsInterceptor(max_pipeline_series)``)."""
DEFAULT_MAX_STAGE_NAMES: Final = 200
"""Distinct stage names metric attributes carry at a time (``MetricsInterceptor(max_stage_series)``)."""
DEFAULT_NAME_IDLE_TIMEOUT: Final = 600.0
"""Seconds a pipeline or stage name must go unused before a new name may take its metric slot."""
METRIC_VALUE_LENGTH_LIMIT: Final = 256
"""Longest pipeline or stage name (or ``error.type``) a metric attribute carries; longer ones are
``_OTHER``. ``/metrics`` also cuts any label value past it (keeping a hash of the whole value)."""

RESULT_SUCCESS: Final = "success"
RESULT_FAILURE: Final = "failure"
RESULT_ERROR: Final = "error"
RESULT_TIMEOUT: Final = "timeout"
RESULT_CANCELLATION: Final = "cancellation"
RESULT_SKIP: Final = "skip"

RESULTS: Final = (
    RESULT_SUCCESS,
    RESULT_FAILURE,
    RESULT_ERROR,
    RESULT_TIMEOUT,
    RESULT_CANCELLATION,
    RESULT_SKIP,
)
"""Values of ``stageflow.run.result`` and ``stageflow.stage.result`` (the CI/CD ``cicd.pipeline.result``
vocabulary): ``failure`` = the stage returned ``StageOutput.fail``; ``error`` = it raised; ``timeout`` =
``StageTimeoutError``; ``cancellation`` = cancelled; ``skip`` = skipped."""


@dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute and where it appears."""

    name: str
    type: str
    where: str
    description: str


ATTRIBUTES: Final = (
    Attribute(PIPELINE_NAME, "string", "run and stage spans, metrics, logs", "The pipeline's name."),
    Attribute(PIPELINE_VERSION, "string", "run span", "Topology hash of the built graph."),
    Attribute(RUN_ID, "string", "run and stage spans, logs, events", "The run id."),
    Attribute(RUN_RESULT, "string", "run span, run metrics", "How the run ended (see RESULTS)."),
    Attribute(RUN_CRITICAL_PATH, "string[]", "run span", "The run's critical path, in order."),
    Attribute(STAGE_NAME, "string", "stage spans, stage metrics, logs", "The stage's name."),
    Attribute(STAGE_KIND, "string", "stage spans, stage metrics", "The stage's StageKind value."),
    Attribute(STAGE_RESULT, "string", "stage spans, stage metrics", "How the stage ended."),
    Attribute(STAGE_DEPENDENCIES, "string[]", "stage spans", "The stage's dependencies."),
    Attribute(STAGE_WAIT_DURATION, "double", "stage spans", "Seconds from ready to start."),
    Attribute(STAGE_ATTEMPT, "int", "stage spans", "1-based attempt number."),
    Attribute(
        STAGE_DISPATCH_DURATION,
        "double",
        "sync stage spans, their completed events",
        "Seconds the hop to the executor and back added (not the stage's own run time).",
    ),
    Attribute(
        STAGE_WORK,
        "string",
        "sync stage spans, their failed and cancelled events",
        f"After a cancelled hop: `{WORK_STOPPED}` or `{WORK_ABANDONED}` (still running, not waited for).",
    ),
    Attribute(
        STAGE_LOOP_BLOCK_DURATION,
        "double",
        "loop_blocked events",
        "Seconds the stage held the event loop in one callback.",
    ),
    Attribute(CODE_FILE_PATH, "string", "loop_blocked events", "Source file the block was sampled in."),
    Attribute(CODE_LINE_NUMBER, "int", "loop_blocked events", "Line the block was sampled at."),
    Attribute(RUN_DURATION, "double", "run span", "The run's duration in seconds (from RunResult)."),
    Attribute(STAGE_SKIP_REASON, "string", "skipped events", "Why the stage was skipped."),
    Attribute(STAGE_CANCEL_REASON, "string", "stage cancelled events", "The stage's cancel reason."),
    Attribute(RUN_CANCEL_REASON, "string", "pipeline cancelled events", "Why the run was cancelled."),
    Attribute(STAGE_DURATION_ATTRIBUTE, "double", "stage events that end a stage", "Seconds the stage ran."),
    Attribute(STAGE_RETRY_DELAY, "double", "retrying events", "Seconds until the next attempt."),
    Attribute(PIPELINE_STAGES, "int", "pipeline created/started events", "Stages in the graph."),
    Attribute(CODE_FUNCTION_NAME, "string", "stage spans", "The stage runner's qualified name."),
    Attribute(ERROR_TYPE, "string", "spans and metrics, on failure only", "Exception class name."),
    Attribute(LINK_TYPE, "string", "stage span links", "Always 'dependency'."),
    Attribute(EVENT_TYPE, "string", "events", "The event's type, e.g. stage.llm.completed."),
    Attribute(
        EXCEPTION_MESSAGE,
        "string",
        "`exception` span events, failed and retrying events",
        "The error message after the redaction hook.",
    ),
    Attribute(EXCEPTION_TYPE, "string", "`exception` span events", "The exception's qualified class name."),
    Attribute(EVENT_NAME, "string", "event counter", "The static event name."),
    Attribute(
        EXCEPTION_STACKTRACE,
        "string",
        "`exception` span events",
        "The exception's own frames and redacted message.",
    ),
    Attribute(TELEMETRY_SIGNAL, "string", "export failure metric", "traces, metrics or logs."),
    Attribute(
        TELEMETRY_CAUSE,
        "string",
        "telemetry-health dropped counters",
        "Why items were lost: " + ", ".join(DROP_CAUSES) + "; for run records: timeout, unavailable, error.",
    ),
    Attribute(STORE_KIND, "string", "run-store metrics", "memory, sqlite or postgresql."),
    Attribute(STAGE_CHUNKS, "int", "streaming stage spans, their completed events", "Chunks it yielded."),
    Attribute(
        STAGE_TIME_TO_FIRST_CHUNK,
        "double",
        "streaming stage spans, their first_chunk and completed events",
        "Seconds from the stage's start to its first chunk.",
    ),
    Attribute(
        STAGE_TIME_PER_OUTPUT_CHUNK,
        "double",
        "streaming stage spans, their completed events (two chunks or more)",
        "Seconds per chunk after the first.",
    ),
    Attribute(
        RUN_TIME_TO_FIRST_OUTPUT,
        "double",
        "run span (pipelines with a streaming stage)",
        "Seconds from the run's start to its first output (RunResult.time_to_first_output).",
    ),
    Attribute(
        GEN_AI_OPERATION_NAME,
        "string",
        "GenAI time-to-first-chunk metric",
        "From the stage's config; marks a GenAI stage.",
    ),
    Attribute(GEN_AI_PROVIDER_NAME, "string", "GenAI time-to-first-chunk metric", "From the stage's config."),
    Attribute(GEN_AI_REQUEST_MODEL, "string", "GenAI time-to-first-chunk metric", "From the stage's config."),
    Attribute(SERVER_ADDRESS, "string", "GenAI time-to-first-chunk metric", "From the stage's config."),
    Attribute(SERVER_PORT, "int", "GenAI time-to-first-chunk metric", "From the stage's config."),
)

# --------------------------------------------------------------------------- metrics

DURATION_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
"""Explicit histogram boundaries, in seconds: 1 ms to 1 h."""

FIRST_CHUNK_BUCKETS: Final = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
"""Explicit boundaries of the time-to-first-chunk/output histograms, in seconds: 10 ms to 82 s, doubling
(the OpenTelemetry GenAI conventions' boundaries), fine enough to tell voice latencies apart."""

InstrumentKind = Literal["histogram", "counter", "updowncounter", "gauge"]


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric: its OpenTelemetry name, instrument, unit, attributes and Prometheus name."""

    name: str
    instrument: InstrumentKind
    unit: str
    description: str
    attributes: tuple[str, ...]
    buckets: tuple[float, ...] = DURATION_BUCKETS
    """A histogram's explicit bucket boundaries, in seconds."""

    @property
    def prometheus(self) -> str:
        """The metric family name in Prometheus, the same on the collector and the ``/metrics`` path."""
        base = self.name.replace(".", "_")
        if self.unit == "s":
            base += "_seconds"
        elif self.unit == "1":
            base += "_ratio"
        if self.instrument == "counter":
            base += "_total"
        return base

    @property
    def prometheus_series(self) -> tuple[str, ...]:
        """The series names a query can use (``_bucket``/``_sum``/``_count`` for histograms)."""
        if self.instrument == "histogram":
            return tuple(f"{self.prometheus}{s}" for s in ("_bucket", "_sum", "_count"))
        return (self.prometheus,)


def prometheus_label(attribute: str) -> str:
    """The Prometheus label an attribute becomes (dots to underscores)."""
    return attribute.replace(".", "_")


_RUN_ATTRS = (PIPELINE_NAME, RUN_RESULT)
_STAGE_ATTRS = (PIPELINE_NAME, STAGE_NAME, STAGE_KIND, STAGE_RESULT, ERROR_TYPE)

PIPELINE_RUN_DURATION = Metric(
    "stageflow.pipeline.run.duration",
    "histogram",
    "s",
    "Duration of pipeline runs.",
    (*_RUN_ATTRS, ERROR_TYPE),
)
STAGE_DURATION = Metric(
    "stageflow.stage.duration", "histogram", "s", "Duration of stage executions.", _STAGE_ATTRS
)
STAGE_WAIT_DURATION_METRIC = Metric(
    "stageflow.stage.wait.duration",
    "histogram",
    "s",
    "Time from a stage's dependencies resolving to the stage starting.",
    (PIPELINE_NAME, STAGE_NAME, STAGE_KIND),
)
STAGE_CRITICAL_PATH_DURATION = Metric(
    "stageflow.stage.critical_path.duration",
    "histogram",
    "s",
    "Time a stage contributed to its run's critical path (wait plus duration), for stages on it.",
    (PIPELINE_NAME, STAGE_NAME, STAGE_KIND),
)
STAGE_DISPATCH_DURATION_METRIC = Metric(
    STAGE_DISPATCH_DURATION,
    "histogram",
    "s",
    "Time a completed sync stage's work spent getting to its executor (thread, process, cluster) and back.",
    (PIPELINE_NAME, STAGE_NAME, STAGE_KIND),
)
STAGE_TIME_TO_FIRST_CHUNK_METRIC = Metric(
    STAGE_TIME_TO_FIRST_CHUNK,
    "histogram",
    "s",
    "Time from a streaming stage's start to its first chunk.",
    (PIPELINE_NAME, STAGE_NAME, STAGE_KIND),
    FIRST_CHUNK_BUCKETS,
)
STAGE_TIME_PER_OUTPUT_CHUNK_METRIC = Metric(
    STAGE_TIME_PER_OUTPUT_CHUNK,
    "histogram",
    "s",
    "Time per chunk after the first, of streaming stages that yielded two chunks or more.",
    (PIPELINE_NAME, STAGE_NAME, STAGE_KIND),
    FIRST_CHUNK_BUCKETS,
)
PIPELINE_RUN_TIME_TO_FIRST_OUTPUT = Metric(
    "stageflow.pipeline.run.time_to_first_output",
    "histogram",
    "s",
    "Time from the start of a run of a pipeline with a streaming stage to its first output: the first chunk "
    "of its final stage, or that stage's end.",
    (PIPELINE_NAME,),
    FIRST_CHUNK_BUCKETS,
)
GEN_AI_TIME_TO_FIRST_CHUNK = Metric(
    "gen_ai.client.operation.time_to_first_chunk",
    "histogram",
    "s",
    "Time to the first chunk of GenAI stages (a gen_ai.operation.name in their config), per the GenAI "
    "conventions.",
    (*GEN_AI_ATTRIBUTES, ERROR_TYPE),
    FIRST_CHUNK_BUCKETS,
)
STAGE_ABANDONED = Metric(
    "stageflow.stage.abandoned",
    "counter",
    "{stage}",
    "Sync stages cancelled while their work kept running on the executor past the grace period.",
    (PIPELINE_NAME, STAGE_NAME, STAGE_KIND),
)
STAGE_LOOP_BLOCK_DURATION_METRIC = Metric(
    STAGE_LOOP_BLOCK_DURATION,
    "histogram",
    "s",
    "Blocks of the event loop over the loop monitor's threshold, by the stage whose code ran "
    "(no stage attributes for code outside any stage).",
    (PIPELINE_NAME, STAGE_NAME),
)
LOOP_LAG = Metric(
    "stageflow.loop.lag",
    "histogram",
    "s",
    "How late each heartbeat of the loop monitor ran (the event loop's delay).",
    (),
)
LOOP_UTILIZATION = Metric(
    "stageflow.loop.utilization",
    "gauge",
    "1",
    "Share (0 to 1) of the last completed second the event loop was busy.",
    (),
)
PIPELINE_RUN_ACTIVE = Metric(
    "stageflow.pipeline.run.active",
    "updowncounter",
    "{run}",
    "Pipeline runs in progress.",
    (PIPELINE_NAME,),
)
PIPELINE_RUN_ERRORS = Metric(
    "stageflow.pipeline.run.errors",
    "counter",
    "{run}",
    "Pipeline runs that failed or were cancelled.",
    (PIPELINE_NAME, RUN_RESULT, ERROR_TYPE),
)
STAGE_SKIPS = Metric(
    "stageflow.stage.skips", "counter", "{stage}", "Stages skipped.", (PIPELINE_NAME, STAGE_NAME, STAGE_KIND)
)
EVENTS_DROPPED = Metric(
    "stageflow.events.dropped",
    "counter",
    "{event}",
    "Events the OTLP event sink or its export path gave up on, by cause.",
    (TELEMETRY_CAUSE,),
)
EVENTS_EMITTED = Metric(
    "stageflow.events.emitted",
    "counter",
    "{event}",
    "Events the executor emitted to the OTLP event sink, by static event name.",
    (EVENT_NAME, PIPELINE_NAME, STAGE_NAME),
)
STORE_WRITE_DURATION = Metric(
    "stageflow.store.write.duration",
    "histogram",
    "s",
    "Time a run store took to record a run (stored or given up), from RunStoreMetrics.",
    (STORE_KIND,),
)
STORE_RECORDS_DROPPED = Metric(
    "stageflow.store.records.dropped",
    "counter",
    "{record}",
    "Runs a run store did not record, by cause (timeout, unavailable, error), from RunStoreMetrics.",
    (STORE_KIND, TELEMETRY_CAUSE),
)
CIRCUIT_BREAKER_STATE = Metric(
    "stageflow.circuit_breaker.state",
    "gauge",
    "{state}",
    "Circuit breaker state per stage: 0 closed, 1 half-open, 2 open.",
    (PIPELINE_NAME, STAGE_NAME),
)
TELEMETRY_EXPORT_FAILURES = Metric(
    "stageflow.telemetry.export.failures",
    "counter",
    "{batch}",
    "Export batches that failed, by signal (traces, metrics, logs).",
    ("signal",),
)
TELEMETRY_SPANS_DROPPED = Metric(
    "stageflow.telemetry.spans.dropped",
    "counter",
    "{span}",
    "Spans the export path gave up on, by cause.",
    (TELEMETRY_CAUSE,),
)
TELEMETRY_LOG_RECORDS_DROPPED = Metric(
    "stageflow.telemetry.log_records.dropped",
    "counter",
    "{log_record}",
    "Log records (events among them) the export path gave up on, by cause.",
    (TELEMETRY_CAUSE,),
)
TELEMETRY_METRIC_POINTS_DROPPED = Metric(
    "stageflow.telemetry.metric_points.dropped",
    "counter",
    "{data_point}",
    "Metric data points in exports that failed, by cause.",
    (TELEMETRY_CAUSE,),
)
TELEMETRY_LINKS_DROPPED = Metric(
    "stageflow.telemetry.links.dropped",
    "counter",
    "{link}",
    "Span links beyond the link limit (OTEL_SPAN_LINK_COUNT_LIMIT), truncated from ended spans.",
    (),
)

METRICS: Final = (
    PIPELINE_RUN_DURATION,
    STAGE_DURATION,
    STAGE_WAIT_DURATION_METRIC,
    STAGE_CRITICAL_PATH_DURATION,
    STAGE_DISPATCH_DURATION_METRIC,
    STAGE_TIME_TO_FIRST_CHUNK_METRIC,
    STAGE_TIME_PER_OUTPUT_CHUNK_METRIC,
    PIPELINE_RUN_TIME_TO_FIRST_OUTPUT,
    GEN_AI_TIME_TO_FIRST_CHUNK,
    PIPELINE_RUN_ACTIVE,
    PIPELINE_RUN_ERRORS,
    STAGE_SKIPS,
    STAGE_ABANDONED,
    STAGE_LOOP_BLOCK_DURATION_METRIC,
    LOOP_LAG,
    LOOP_UTILIZATION,
    EVENTS_DROPPED,
    EVENTS_EMITTED,
    STORE_WRITE_DURATION,
    STORE_RECORDS_DROPPED,
    CIRCUIT_BREAKER_STATE,
    TELEMETRY_EXPORT_FAILURES,
    TELEMETRY_SPANS_DROPPED,
    TELEMETRY_LOG_RECORDS_DROPPED,
    TELEMETRY_METRIC_POINTS_DROPPED,
    TELEMETRY_LINKS_DROPPED,
)

# --------------------------------------------------------------------------- events (span events, logs)

EVENTS: Final = {
    "pipeline.created": "stageflow.pipeline.created",
    "pipeline.started": "stageflow.pipeline.started",
    "pipeline.completed": "stageflow.pipeline.completed",
    "pipeline.failed": "stageflow.pipeline.failed",
    "pipeline.cancelled": "stageflow.pipeline.cancelled",
    "stage.started": "stageflow.stage.started",
    "stage.completed": "stageflow.stage.completed",
    "stage.failed": "stageflow.stage.failed",
    "stage.skipped": "stageflow.stage.skipped",
    "stage.cancelled": "stageflow.stage.cancelled",
    "stage.retrying": "stageflow.stage.retrying",
    "stage.first_chunk": "stageflow.stage.first_chunk",
    "stage.loop_blocked": "stageflow.stage.loop_blocked",
}
"""Event kind (``stage.{name}.x`` reduced to ``stage.x``) to static name (span events, log records)."""

# --------------------------------------------------------------------------- structured log fields

LOG_TRACE_ID: Final = "trace_id"
"""Log field: the current W3C trace id, 32 lowercase hex digits."""
LOG_SPAN_ID: Final = "span_id"
"""Log field: the current W3C span id, 16 lowercase hex digits."""
LOG_RUN_ID: Final = "run_id"
LOG_PIPELINE: Final = "pipeline"
LOG_STAGE: Final = "stage"
LOG_KIND: Final = "kind"
LOG_STATUS: Final = "status"
"""Log field: how the stage or run ended, one of ``RESULTS`` (absent on ``*.started`` lines)."""
LOG_DURATION: Final = "duration"
"""Log field: seconds."""
LOG_WAIT: Final = "wait"
"""Log field: seconds from the stage being ready to it starting."""
LOG_ATTEMPT: Final = "attempt"
LOG_ERROR: Final = "error"
"""Log field: the error message, on failure only."""
LOG_ERROR_TYPE: Final = "error_type"
"""Log field: the ``error.type`` value, on failure only."""

# --------------------------------------------------------------------------- event sink, /metrics, setup

EVENT_OTHER: Final = "stageflow.event"
"""Event name of log records whose type is outside the taxonomy (the type is in ``stageflow.event.type``)."""
OTEL_SCOPE_LABEL: Final = "otel_scope_name"
"""Prometheus label holding the instrumentation scope, as the collector's Prometheus exporter adds it."""


@dataclass(frozen=True, slots=True)
class EnvironmentVariable:
    """One environment variable ``setup()`` (or, for ``TRACEPARENT``, ``TracingInterceptor``) honours."""

    name: str
    default: str
    description: str


ENV_METRICS_EXPORTER: Final = "OTEL_METRICS_EXPORTER"
ENV_PROMETHEUS_HOST: Final = "OTEL_EXPORTER_PROMETHEUS_HOST"
ENV_PROMETHEUS_PORT: Final = "OTEL_EXPORTER_PROMETHEUS_PORT"
ENV_MODE: Final = "STAGEFLOW_OTEL_MODE"
"""``bounded`` (default: a full export queue drops and counts) or ``complete`` (wait for queue space)."""
ENV_MAX_EXPORT_BYTES: Final = "STAGEFLOW_OTEL_MAX_EXPORT_BYTES"
"""Largest OTLP export request ``setup()`` sends: bigger batches are split, bigger items dropped, counted."""
ENV_COMPLETE_TIMEOUT: Final = "STAGEFLOW_OTEL_COMPLETE_TIMEOUT"
"""Seconds a ``complete``-mode wait for queue space may last before the item is dropped and counted."""
ENV_LOOP_MONITOR: Final = "STAGEFLOW_LOOP_MONITOR"
"""``false``: ``setup()`` leaves the event-loop monitor off (default on: loop lag, busy share, blocks)."""
ENV_WORKER_FLUSH_TIMEOUT: Final = "STAGEFLOW_OTEL_WORKER_FLUSH_TIMEOUT"
"""Seconds a worker process waits, after each stage it ran, for its telemetry to be exported."""
ENV_EVENT_LOG_RECORDS: Final = "STAGEFLOW_EVENT_LOG_RECORDS"
"""``true``: the OTLP event sink also exports every event as an OTLP log record (default: span events)."""

ENVIRONMENT: Final = (
    EnvironmentVariable("OTEL_SDK_DISABLED", "false", "`true`: no-op providers, nothing exported."),
    EnvironmentVariable(
        "OTEL_SERVICE_NAME", "unknown_service:python", "`service.name` (the `setup()` argument wins)."
    ),
    EnvironmentVariable("OTEL_RESOURCE_ATTRIBUTES", "", "Extra resource attributes, `k=v,k2=v2`."),
    EnvironmentVariable(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "Collector base URL; when set (or per signal) that signal uses OTLP.",
    ),
    EnvironmentVariable("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", "Traces endpoint, used as is."),
    EnvironmentVariable("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "", "Metrics endpoint, used as is."),
    EnvironmentVariable("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "", "Logs (events) endpoint, used as is."),
    EnvironmentVariable("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "`grpc` or `http/protobuf`."),
    EnvironmentVariable("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "", "Per-signal protocol override."),
    EnvironmentVariable("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "", "Per-signal protocol override."),
    EnvironmentVariable("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "", "Per-signal protocol override."),
    EnvironmentVariable(
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "10",
        "Export timeout in seconds (headers, TLS, compression: as the SDK); over OTLP/HTTP it bounds "
        "connecting and retrying, and a request the collector received is waited for until it answers "
        "(or `shutdown()` ends it), so a batch is never counted lost and delivered both.",
    ),
    EnvironmentVariable(
        "OTEL_TRACES_EXPORTER", "`otlp` if an endpoint is set, else `none`", "`otlp`, `console` or `none`."
    ),
    EnvironmentVariable(
        ENV_METRICS_EXPORTER,
        "`otlp` if an endpoint is set, else `prometheus`",
        "Comma-separated: `otlp`, `prometheus` (the in-process `/metrics`), `console`, `none`.",
    ),
    EnvironmentVariable(
        "OTEL_LOGS_EXPORTER", "`otlp` if an endpoint is set, else `none`", "`otlp`, `console` or `none`."
    ),
    EnvironmentVariable(
        "OTEL_TRACES_SAMPLER",
        "parentbased_always_on",
        "`always_on`, `always_off`, `traceidratio` or their `parentbased_` forms.",
    ),
    EnvironmentVariable("OTEL_TRACES_SAMPLER_ARG", "1.0", "The ratio for `traceidratio` samplers."),
    EnvironmentVariable("OTEL_METRIC_EXPORT_INTERVAL", "60000", "Milliseconds between OTLP metric exports."),
    EnvironmentVariable(
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "16384",
        "Spans queued for export (the SDK's default is 2048); more are dropped and counted.",
    ),
    EnvironmentVariable("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512", "Spans per export batch."),
    EnvironmentVariable("OTEL_BSP_SCHEDULE_DELAY", "5000", "Milliseconds between span exports."),
    EnvironmentVariable(
        "OTEL_BLRP_MAX_QUEUE_SIZE",
        "16384",
        "Log records (events) queued for export (SDK: 2048); more are dropped and counted.",
    ),
    EnvironmentVariable("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "512", "Log records per export batch."),
    EnvironmentVariable("OTEL_BLRP_SCHEDULE_DELAY", "1000", "Milliseconds between log record exports."),
    EnvironmentVariable(
        "OTEL_SPAN_LINK_COUNT_LIMIT",
        str(DEFAULT_LINK_LIMIT),
        "Links a span keeps (the SDK's default is 128); links beyond are counted.",
    ),
    EnvironmentVariable(
        ENV_MODE,
        "bounded",
        "`bounded`: a full export queue drops and counts; `complete`: wait for room "
        "(see *Delivery and loss accounting*).",
    ),
    EnvironmentVariable(
        ENV_COMPLETE_TIMEOUT, "10", "Seconds a `complete`-mode wait for queue room lasts at most."
    ),
    EnvironmentVariable(
        ENV_EVENT_LOG_RECORDS,
        "false",
        "`true`: every event is also an OTLP log record (for Loki); the default is span events only.",
    ),
    EnvironmentVariable(
        ENV_MAX_EXPORT_BYTES,
        "4194304",
        "Largest export request (4 MiB, the collector's gRPC default): bigger batches are split, "
        "a bigger span or record is dropped and counted (`too_large`).",
    ),
    EnvironmentVariable("OTEL_METRIC_EXPORT_TIMEOUT", "30000", "Milliseconds allowed for one metric export."),
    EnvironmentVariable(
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        str(DEFAULT_VALUE_LENGTH_LIMIT),
        "Characters kept of any exported string value (`unset`: no limit).",
    ),
    EnvironmentVariable(
        "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "`OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`",
        "The same for spans: attributes, event attributes, names, status descriptions.",
    ),
    EnvironmentVariable(
        "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "`OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`",
        "The same for log records: attributes and every string in the body.",
    ),
    EnvironmentVariable(
        ENV_LOOP_MONITOR,
        "true",
        "`false`: `setup()` does not start the event-loop monitor (`setup(loop_monitor=...)` wins).",
    ),
    EnvironmentVariable(
        ENV_WORKER_FLUSH_TIMEOUT,
        "5",
        "Seconds a worker process gives its telemetry to be exported after each stage, before the "
        "result returns (see *Across threads and processes*).",
    ),
    EnvironmentVariable(ENV_PROMETHEUS_HOST, "127.0.0.1", "Address the `/metrics` endpoint binds to."),
    EnvironmentVariable(ENV_PROMETHEUS_PORT, "9464", "Port of the `/metrics` endpoint (`0`: any free port)."),
    EnvironmentVariable(
        "STAGEFLOW_OTEL_METRICS_MAX_SERIES",
        "2000",
        "Series (label sets) `/metrics` holds at most; a new one evicts the one updated least recently.",
    ),
    EnvironmentVariable(
        "TRACEPARENT", "", "W3C parent of run spans when no span is current and the run metadata has none."
    ),
    EnvironmentVariable("TRACESTATE", "", "W3C trace state accompanying `TRACEPARENT`."),
)
"""Environment variables stageflow_otel honours (OTLP exporters also read their own ``OTEL_EXPORTER_*``)."""
