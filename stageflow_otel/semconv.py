"""Every telemetry name stageflow_otel emits: spans, attributes, metrics, events, and their Prometheus names.

Interceptors, the OTLP event sink, the ``/metrics`` endpoint, the dashboards, the collector configuration
and the README's telemetry reference all take their names from here (tests check the assets against it).
Durations are in seconds. Run ids appear only on spans, logs and events, never as metric attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = (
    "ATTRIBUTES",
    "DURATION_BUCKETS",
    "ERROR_TYPE",
    "EVENTS",
    "EVENT_TYPE",
    "INSTRUMENTATION_SCOPE",
    "LINK_TYPE",
    "LINK_TYPE_DEPENDENCY",
    "METRICS",
    "OTHER",
    "PIPELINE_NAME",
    "PIPELINE_VERSION",
    "RESULTS",
    "RUN_CRITICAL_PATH",
    "RUN_ID",
    "RUN_RESULT",
    "SPAN_PIPELINE_PREFIX",
    "SPAN_STAGE_PREFIX",
    "STAGE_ATTEMPT",
    "STAGE_DEPENDENCIES",
    "STAGE_KIND",
    "STAGE_NAME",
    "STAGE_RESULT",
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
STAGE_NAME: Final = "stageflow.stage.name"
STAGE_KIND: Final = "stageflow.stage.kind"
STAGE_RESULT: Final = "stageflow.stage.result"
STAGE_DEPENDENCIES: Final = "stageflow.stage.dependencies"
STAGE_WAIT_DURATION: Final = "stageflow.stage.wait.duration"
STAGE_ATTEMPT: Final = "stageflow.stage.attempt"
ERROR_TYPE: Final = "error.type"
LINK_TYPE: Final = "stageflow.link.type"
LINK_TYPE_DEPENDENCY: Final = "dependency"
EVENT_TYPE: Final = "stageflow.event.type"
"""Attribute of event log records holding the seed's event string, e.g. ``stage.llm.completed``."""

OTHER: Final = "_OTHER"
"""Value used for ``error.type`` when unknown, and for stage names past the cardinality limit."""

RESULTS: Final = ("success", "failure", "error", "timeout", "cancellation", "skip")
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
    Attribute(ERROR_TYPE, "string", "spans and metrics, on failure only", "Exception class name."),
    Attribute(LINK_TYPE, "string", "stage span links", "Always 'dependency'."),
    Attribute(EVENT_TYPE, "string", "event log records", "The seed's event string."),
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

InstrumentKind = Literal["histogram", "counter", "updowncounter", "gauge"]


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric: its OpenTelemetry name, instrument, unit, attributes and Prometheus name."""

    name: str
    instrument: InstrumentKind
    unit: str
    description: str
    attributes: tuple[str, ...]

    @property
    def prometheus(self) -> str:
        """The metric family name in Prometheus, the same on the collector and the ``/metrics`` path."""
        base = self.name.replace(".", "_")
        if self.unit == "s":
            base += "_seconds"
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
    "Events the OTLP event sink dropped because its buffer was full or it was shut down.",
    (),
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
    "Spans lost because their export batch failed.",
    (),
)

METRICS: Final = (
    PIPELINE_RUN_DURATION,
    STAGE_DURATION,
    STAGE_WAIT_DURATION_METRIC,
    STAGE_CRITICAL_PATH_DURATION,
    PIPELINE_RUN_ACTIVE,
    PIPELINE_RUN_ERRORS,
    STAGE_SKIPS,
    EVENTS_DROPPED,
    CIRCUIT_BREAKER_STATE,
    TELEMETRY_EXPORT_FAILURES,
    TELEMETRY_SPANS_DROPPED,
)

# --------------------------------------------------------------------------- events (OTLP log records)

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
}
"""Seed event kind (``stage.{name}.x`` reduced to ``stage.x``) to static OTLP event name."""
