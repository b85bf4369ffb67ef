"""The OTLP event sink: every stageflow event as an OpenTelemetry log record with the run's trace context.

``try_emit`` runs on the event loop and only captures the current OpenTelemetry context and appends to a
bounded buffer; a daemon thread turns the buffered events into log records, so neither a slow log
processor nor an unreachable collector can stall a pipeline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry._logs import LoggerProvider, SeverityNumber, get_logger
from opentelemetry.metrics import MeterProvider, get_meter
from opentelemetry.util.types import AnyValue, AttributeValue

import stageflow

from . import semconv
from ._content import (
    ErrorDetails,
    ErrorRedactor,
    clean_text,
    redact_error_message,
    redacted_message,
    value_length_limit,
)

__all__ = ("OtlpEventSink",)

logger = logging.getLogger("stageflow_otel")

_Item = tuple[str, "dict[str, Any] | None", otel_context.Context, int]

_ATTRIBUTE_OF: Mapping[str, str] = {
    "run_id": semconv.RUN_ID,
    "pipeline": semconv.PIPELINE_NAME,
    "version": semconv.PIPELINE_VERSION,
    "stage": semconv.STAGE_NAME,
    "kind": semconv.STAGE_KIND,
    "wait": semconv.STAGE_WAIT_DURATION,
    "dependencies": semconv.STAGE_DEPENDENCIES,
    "critical_path": semconv.RUN_CRITICAL_PATH,
    "attempts": semconv.STAGE_ATTEMPT,
    "attempt": semconv.STAGE_ATTEMPT,
    "error": semconv.EXCEPTION_MESSAGE,
}
"""Event data key to log record attribute; every key (these included) also stays in the record's body."""

_ERROR_TYPES: Mapping[str, str] = {
    stageflow.StageTimeoutError.__name__: semconv.ERROR_TYPE_TIMEOUT,
    stageflow.CircuitOpenError.__name__: semconv.ERROR_TYPE_CIRCUIT_OPEN,
}
_FAILURE_TYPES = frozenset({stageflow.StageFailedError.__name__, stageflow.RetriesExhaustedError.__name__})


def _event_kind(type: str) -> str:
    """``stage.{name}.completed`` -> ``stage.completed``; pipeline events are returned unchanged."""
    if type.startswith("stage.") and type.count(".") >= 2:
        return "stage." + type.rsplit(".", 1)[1]
    return type


def _result(outcome: str, error_type: object) -> str | None:
    if outcome == "completed":
        return semconv.RESULT_SUCCESS
    if outcome == "skipped":
        return semconv.RESULT_SKIP
    if outcome == "cancelled":
        return semconv.RESULT_CANCELLATION
    if outcome == "failed":
        if error_type in _FAILURE_TYPES:
            return semconv.RESULT_FAILURE
        if error_type == stageflow.StageTimeoutError.__name__:
            return semconv.RESULT_TIMEOUT
        return semconv.RESULT_ERROR
    return None


def _severity(outcome: str) -> tuple[SeverityNumber, str]:
    if outcome == "failed":
        return SeverityNumber.ERROR, "ERROR"
    if outcome == "cancelled":
        return SeverityNumber.WARN, "WARN"
    return SeverityNumber.INFO, "INFO"


def _attribute(value: object, limit: int | None = None) -> AttributeValue | None:
    if isinstance(value, str):
        return clean_text(value, limit)
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(clean_text(v, limit) for v in value)
    if isinstance(value, list | tuple) and not value:
        return ()
    return None


def _body(value: object, limit: int | None = None) -> AnyValue:
    """``value`` as a log record body; every string (keys too) cut to ``limit`` and made encodable."""
    if isinstance(value, str):
        return clean_text(value, limit)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        return value if limit is None else value[:limit]
    if isinstance(value, Mapping):
        return {clean_text(str(k), limit): _body(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_body(v, limit) for v in value]
    return clean_text(str(value), limit)


class _Record(NamedTuple):
    event_name: str
    severity_number: SeverityNumber
    severity_text: str
    attributes: dict[str, AttributeValue]
    body: AnyValue


def _to_record(
    type: str,
    data: Mapping[str, Any] | None,
    limit: int | None = None,
    redact: ErrorRedactor = redact_error_message,
) -> _Record:
    """The log record fields (minus context and timestamps) of one event.

    The ``error`` message (attribute and body) is passed through ``redact`` (dropped when it returns
    ``None``); every string is cut to ``limit`` characters and made encodable.
    """
    data = dict(data or {})
    error_type = data.get("error_type")
    message = data.get("error")
    if isinstance(message, str) and message:
        pipeline, stage = data.get("pipeline"), data.get("stage")
        details = ErrorDetails(
            error_type if isinstance(error_type, str) and error_type else semconv.OTHER,
            message,
            pipeline if isinstance(pipeline, str) else None,
            stage if isinstance(stage, str) else None,
        )
        redacted = redacted_message(redact, details, limit)
        if redacted is None:
            del data["error"]
        else:
            data["error"] = redacted
    kind = _event_kind(type)
    outcome = kind.rsplit(".", 1)[-1]
    attributes: dict[str, AttributeValue] = {semconv.EVENT_TYPE: clean_text(type, limit)}
    for key, name in _ATTRIBUTE_OF.items():
        if key in data and (value := _attribute(data[key], limit)) is not None:
            attributes[name] = value
    if isinstance(error_type, str) and error_type:
        attributes[semconv.ERROR_TYPE] = clean_text(_ERROR_TYPES.get(error_type, error_type), limit)
    result = _result(outcome, error_type)
    if result is not None:
        key = semconv.STAGE_RESULT if kind.startswith("stage.") else semconv.RUN_RESULT
        attributes[key] = result
    severity, severity_text = _severity(outcome)
    return _Record(
        semconv.EVENTS.get(kind, semconv.EVENT_OTHER),
        severity,
        severity_text,
        attributes,
        _body(data, limit),
    )


class OtlpEventSink:
    """An ``EventSink`` that emits every event as an OTLP log record carrying the run's trace context.

    The event name is static (``stageflow.stage.completed``; see ``semconv.EVENTS``), the seed's event
    string is kept in ``stageflow.event.type``, well-known fields become ``stageflow.*`` attributes and the
    whole event data is the record's body. Severity: ``*.failed`` ERROR, ``*.cancelled`` WARN, else INFO.

    The trace context is the OpenTelemetry context current when ``try_emit`` is called. With
    ``TracingInterceptor`` that is the run span for ``pipeline.started|completed|failed|cancelled`` and for
    every stage event (stage events are emitted around, not inside, the stage span). ``pipeline.created`` is
    emitted by ``StageGraph.run`` before the run span exists, so it carries the caller's context: the span
    that becomes the run span's parent, or no trace at all.

    ``try_emit`` never blocks and never raises: it appends to a buffer of ``max_buffer`` events that a
    daemon thread drains into the logger. Events arriving while the buffer is full, or after
    ``shutdown``, are dropped and counted in ``stageflow.events.dropped``. With the providers of
    ``setup()``, events the log record processor refuses because its export queue is full
    (``OTEL_BLRP_MAX_QUEUE_SIZE``) are counted there too; with a logger provider of your own, drops inside
    its processors are that provider's to report.

    Args:
        logger_provider: where the log records go (default: the global logger provider).
        meter_provider: where ``stageflow.events.dropped`` is counted (default: the global meter provider).
        max_buffer: events held at most while the thread catches up.
        wait_timeout: ``None`` (the default): an event finding the buffer full is dropped (cause
            ``queue_full``). A number of seconds: ``try_emit`` waits for room that long at most (``setup()``'s
            ``complete`` mode); once a wait ran out, events are dropped (cause ``timeout``) without waiting
            until the thread makes room again.
        redact_error: the hook each event's ``error`` message passes through (default
            ``redact_error_message``; ``error_type_only`` leaves the message out, keeping ``error.type``).

    Every string of a record (attributes and body) is cut to ``OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT``
    (else ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``, else 4096 characters) and made encodable, so one huge or
    malformed value never makes the batch it travels in fail.

    .. versionadded:: 0.10
    """

    def __init__(
        self,
        *,
        logger_provider: LoggerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        max_buffer: int = 10_000,
        wait_timeout: float | None = None,
        redact_error: ErrorRedactor = redact_error_message,
    ) -> None:
        if max_buffer < 1:
            msg = f"max_buffer must be at least 1, got {max_buffer!r}"
            raise ValueError(msg)
        self._logger = get_logger(
            semconv.INSTRUMENTATION_SCOPE, stageflow.__version__, logger_provider=logger_provider
        )
        meter = get_meter(semconv.INSTRUMENTATION_SCOPE, stageflow.__version__, meter_provider)
        metric = semconv.EVENTS_DROPPED
        self._dropped_counter = meter.create_counter(
            metric.name, unit=metric.unit, description=metric.description
        )
        for cause in semconv.DROP_CAUSES:  # every series exists at 0 before the first drop (dashboards)
            self._dropped_counter.add(0, {semconv.TELEMETRY_CAUSE: cause})
        self._max = max_buffer
        self._wait = wait_timeout
        self._redact = redact_error
        self._limit = value_length_limit("logrecord")
        self._closed = False
        self._dropped = 0
        self._by_cause: dict[str, int] = dict.fromkeys(semconv.DROP_CAUSES, 0)
        self._failed_once = False
        self._init_threading()
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._init_threading)

            def after_in_child() -> None:
                if (reinit := ref()) is not None:
                    reinit()

            os.register_at_fork(after_in_child=after_in_child)

    def _init_threading(self) -> None:
        # After fork() the child has no drain thread and copies of the parent's locks; the parent's
        # buffered events are the parent's to deliver, so the child starts empty with a thread of its own.
        self._buffer: deque[_Item] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._unfinished = 0
        self._thread: threading.Thread | None = None
        self._drop_lock = threading.Lock()
        self._stalled = False

    @property
    def dropped(self) -> int:
        """Events dropped so far, every cause (buffer full, sink shut down, ``setup()``'s export path)."""
        return self._dropped

    @property
    def dropped_by_cause(self) -> Mapping[str, int]:
        """Events dropped so far by cause (``semconv.DROP_CAUSES``), as in ``stageflow.events.dropped``."""
        with self._drop_lock:
            return dict(self._by_cause)

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Hand the event to ``try_emit`` (nothing to await: the export happens in the background)."""
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Buffer the event with the current trace context; drop and count it if the buffer is full."""
        try:
            # A copy: the caller may change or reuse its dict before the thread turns it into a record.
            item: _Item = (
                type,
                None if data is None else dict(data),
                otel_context.get_current(),
                time.time_ns(),
            )
            cause = semconv.DROP_CAUSE_QUEUE_FULL
            with self._cond:
                if self._wait is not None and not self._closed and len(self._buffer) >= self._max:
                    if self._stalled or not self._cond.wait_for(self._has_room, self._wait):
                        self._stalled = True
                        cause = semconv.DROP_CAUSE_TIMEOUT
                if self._closed:
                    cause = semconv.DROP_CAUSE_SHUTDOWN
                accepted = not self._closed and len(self._buffer) < self._max
                if accepted:
                    self._buffer.append(item)
                    self._unfinished += 1
                    if self._thread is None:
                        self._thread = threading.Thread(
                            target=self._drain, name="stageflow-otel-events", daemon=True
                        )
                        self._thread.start()
                    self._cond.notify_all()
            if not accepted:
                self._count_dropped(1, cause)
        except Exception as exc:  # telemetry never breaks a pipeline
            self._report(exc)

    def _has_room(self) -> bool:
        return self._closed or len(self._buffer) < self._max

    def _count_dropped(self, count: int, cause: str) -> None:
        """Count ``count`` events lost for ``cause`` (thread-safe; never raises).

        ``setup()``'s export path calls it for the events it gives up on after this sink handed them
        over, so that ``stageflow.events.dropped`` counts every event that was not delivered.
        """
        with self._drop_lock:
            self._dropped += count
            self._by_cause[cause] = self._by_cause.get(cause, 0) + count
        try:
            self._dropped_counter.add(count, {semconv.TELEMETRY_CAUSE: cause})
        except Exception as exc:
            self._report(exc)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted event reached the logger; ``False`` if ``timeout`` seconds ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: self._unfinished == 0, timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop accepting events, hand the buffered ones to the logger and stop the thread.

        Returns:
            ``True`` when every buffered event was handed over within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            return True
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not thread.is_alive()

    def _drain(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._buffer) or self._closed)
                batch = list(self._buffer)
                self._buffer.clear()
                self._stalled = False
                self._cond.notify_all()
                if not batch and self._closed:
                    return
            for type, data, ctx, observed in batch:
                try:
                    self._write(type, data, ctx, observed)
                except Exception as exc:
                    self._report(exc)
            with self._cond:
                self._unfinished -= len(batch)
                self._cond.notify_all()

    def _write(
        self, type: str, data: dict[str, Any] | None, ctx: otel_context.Context, observed: int
    ) -> None:
        timestamp = (data or {}).get("timestamp")
        record = _to_record(type, data, self._limit, self._redact)
        self._logger.emit(
            timestamp=int(timestamp * 1e9) if isinstance(timestamp, int | float) else observed,
            observed_timestamp=observed,
            context=ctx,
            severity_number=record.severity_number,
            severity_text=record.severity_text,
            body=record.body,
            attributes=record.attributes,
            event_name=record.event_name,
        )

    def _report(self, exc: Exception) -> None:
        if not self._failed_once:
            self._failed_once = True
            logger.error("stageflow_otel: the OTLP event sink failed (further failures not logged): %r", exc)

    def __repr__(self) -> str:
        return f"OtlpEventSink(buffered={len(self._buffer)}, dropped={self._dropped})"
