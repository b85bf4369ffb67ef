"""``LoggingInterceptor`` (structlog, one line per run and stage start/finish) and ``add_trace_context``.

Each line carries the W3C ``trace_id``/``span_id`` of the current span (the stage span when the interceptor
runs inside ``TracingInterceptor``, as its priority 30 makes it), so logs and traces join up. The field
names are in ``semconv`` (``LOG_*``); event names are the static ``semconv.EVENTS`` names.

Example::

    import structlog
    from stageflow_otel import LoggingInterceptor, add_trace_context

    structlog.configure(processors=[add_trace_context, structlog.processors.JSONRenderer()])
    graph = pipeline.build(interceptors=[LoggingInterceptor()])
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, WrappedLogger

from stageflow import PipelineContext, RunResult, StageContext, StageInfo, StageOutput
from stageflow.interceptors import CallNext, Interceptor, RunNext

from . import semconv
from ._content import (
    ErrorDetails,
    ErrorRedactor,
    redact_error_message,
    redacted_message,
    value_length_limit,
)
from ._once import LogOnce
from ._outcome import Outcome, observe_run, observe_stage

__all__ = ("LoggingInterceptor", "add_trace_context")

_perf = time.perf_counter

_EV = semconv.EVENTS
_STAGE_FINISHED = {
    semconv.RESULT_SUCCESS: _EV["stage.completed"],
    semconv.RESULT_SKIP: _EV["stage.skipped"],
    semconv.RESULT_CANCELLATION: _EV["stage.cancelled"],
}
_RUN_FINISHED = {
    semconv.RESULT_SUCCESS: _EV["pipeline.completed"],
    semconv.RESULT_CANCELLATION: _EV["pipeline.cancelled"],
}


_where: ContextVar[tuple[str, str, str | None] | None] = ContextVar(
    "stageflow_otel.logging.where", default=None
)
"""(run id, pipeline, stage or ``None``) of the run and stage ``LoggingInterceptor`` is inside."""

_SPAN_FIELDS = (
    (semconv.RUN_ID, semconv.LOG_RUN_ID),
    (semconv.PIPELINE_NAME, semconv.LOG_PIPELINE),
    (semconv.STAGE_NAME, semconv.LOG_STAGE),
)


def add_trace_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor adding the current span's ids and the current run and stage.

    Adds the W3C ``trace_id`` and ``span_id`` (lowercase hex) of the current span, and ``run_id``,
    ``pipeline`` and ``stage`` of the stageflow run and stage the line is written in. Add it to your own
    structlog configuration so every log line written inside a stage joins up with its trace and run.
    The run and stage come from ``LoggingInterceptor`` when it wraps the stage, else from the current
    ``TracingInterceptor`` span. Outside a span and a run the event is left unchanged; fields already
    present in the event are kept.

    .. versionadded:: 0.10
    .. versionchanged:: 0.10
        Adds ``run_id``, ``pipeline`` and ``stage``.
    """
    span = trace.get_current_span()
    span_context = span.get_span_context()
    if span_context.is_valid:
        event_dict.setdefault(semconv.LOG_TRACE_ID, format(span_context.trace_id, "032x"))
        event_dict.setdefault(semconv.LOG_SPAN_ID, format(span_context.span_id, "016x"))
    where = _where.get()
    if where is not None:
        run_id, pipeline, stage = where
        event_dict.setdefault(semconv.LOG_RUN_ID, run_id)
        event_dict.setdefault(semconv.LOG_PIPELINE, pipeline)
        if stage is not None:
            event_dict.setdefault(semconv.LOG_STAGE, stage)
        return event_dict
    attributes = getattr(span, "attributes", None)  # an SDK span's own attributes (the API has none)
    if attributes:
        for attribute, field in _SPAN_FIELDS:
            value = attributes.get(attribute)
            if isinstance(value, str):
                event_dict.setdefault(field, value)
    return event_dict


def _seconds(value: float) -> float:
    """Seconds rounded to the microsecond, so log lines read ``5.1e-05``, not ``5.0726000040413055e-05``."""
    return round(value, 6)


def _default_logger() -> Any:
    """The user's structlog configuration if there is one, else a logger writing JSON lines to stdout."""
    if structlog.is_configured():
        return structlog.get_logger(semconv.INSTRUMENTATION_SCOPE)
    return structlog.wrap_logger(
        structlog.PrintLogger(),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


class LoggingInterceptor(Interceptor):
    """Log one structured line when each run and each stage attempt starts and when it finishes.

    Stage lines carry ``run_id``, ``pipeline``, ``stage``, ``kind``, ``attempt``, ``trace_id`` and
    ``span_id``; ``*.started`` lines add ``wait``, finishing lines ``status`` (a ``semconv.RESULTS`` value),
    ``duration`` (seconds) and, on failure, ``error`` and ``error_type``. Failures log at error level,
    cancellations at warning level, everything else at info level.

    Args:
        logger: a structlog logger (anything with ``info``/``warning``/``error`` taking an event and keyword
            fields). By default the global structlog configuration when ``structlog.configure`` was called
            before the interceptor was made, else JSON lines on stdout.

    .. versionadded:: 0.10
    """

    name = "logging"
    priority = 30
    isolated = False  # never raises on its own: called without the isolation guard
    fail_open = True  # telemetry: if it ever failed before the stage, bypassing it is safe

    def __init__(self, logger: Any = None, *, redact_error: ErrorRedactor = redact_error_message) -> None:
        self._log = logger if logger is not None else _default_logger()
        self._redact = redact_error
        self._limit = value_length_limit("logrecord")
        self._failed_once = LogOnce("stageflow_otel: LoggingInterceptor's logger raised %r (logged once)")

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            fields[semconv.LOG_TRACE_ID] = format(span_context.trace_id, "032x")
            fields[semconv.LOG_SPAN_ID] = format(span_context.span_id, "016x")
        try:
            getattr(self._log, level)(event, **fields)
        except Exception as exc:  # C9: a broken logger never breaks the pipeline
            self._failed_once(exc)

    async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
        """Log ``stageflow.pipeline.started`` and how the run finished."""
        base = {semconv.LOG_RUN_ID: str(run.run_id), semconv.LOG_PIPELINE: run.pipeline_name}
        self._emit("info", _EV["pipeline.started"], dict(base))
        started = _perf()
        token = _where.set((base[semconv.LOG_RUN_ID], run.pipeline_name, None))

        def ended(outcome: Outcome, results: RunResult | None) -> None:
            _where.reset(token)
            self._finished(_RUN_FINISHED, _EV["pipeline.failed"], base, outcome, started)

        return await observe_run(run, call_next, ended, self._failed_once)

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        """Log ``stageflow.stage.started`` and how the stage attempt finished."""
        base: dict[str, Any] = {
            semconv.LOG_RUN_ID: str(ctx.pipeline_run_id),
            semconv.LOG_PIPELINE: stage.pipeline,
            semconv.LOG_STAGE: stage.name,
            semconv.LOG_KIND: stage.kind.value,
            semconv.LOG_ATTEMPT: ctx.attempt,
        }
        started_fields = dict(base)
        started_fields[semconv.LOG_WAIT] = _seconds(max(0.0, ctx.began_at - ctx.ready_at))
        self._emit("info", _EV["stage.started"], started_fields)
        started = _perf()
        token = _where.set((base[semconv.LOG_RUN_ID], stage.pipeline, stage.name))

        def ended(outcome: Outcome | None, error: Exception | None, output: StageOutput | None) -> None:
            _where.reset(token)
            if outcome is not None:
                self._finished(_STAGE_FINISHED, _EV["stage.failed"], base, outcome, started)

        return await observe_stage(ctx, call_next, ended, self._failed_once)

    def _finished(
        self,
        events: dict[str, str],
        failed_event: str,
        base: dict[str, Any],
        outcome: Outcome,
        started: float,
    ) -> None:
        fields = dict(base)
        fields[semconv.LOG_STATUS] = outcome.result
        fields[semconv.LOG_DURATION] = _seconds(_perf() - started)
        if outcome.result == semconv.RESULT_CANCELLATION:
            level = "warning"
        elif outcome.error_type is None:
            level = "info"
        else:
            level = "error"
        if outcome.error_type is not None:
            fields[semconv.LOG_ERROR_TYPE] = outcome.error_type
            if outcome.description:
                details = ErrorDetails(
                    outcome.error_type,
                    outcome.description,
                    base.get(semconv.LOG_PIPELINE),
                    base.get(semconv.LOG_STAGE),
                )
                message = redacted_message(self._redact, details, self._limit)
                if message is not None:
                    fields[semconv.LOG_ERROR] = message
        self._emit(level, events.get(outcome.result, failed_event), fields)
