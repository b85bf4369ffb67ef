"""The OTLP event sink: the event taxonomy onto a counter; OTLP log records opt-in. It only exports.

It runs past 500 lines because its bounded buffer, the daemon thread that drains it and the drop accounting by
cause must be read as one piece.

``try_emit`` runs on the event loop. It describes the event once (``_taxonomy.describe``), counts it for
``stageflow.events.emitted``, and, only when log records are switched on, captures the current
OpenTelemetry context and appends to a bounded buffer that a daemon thread turns into log records, so
neither a slow log processor nor an unreachable collector can stall a pipeline. Span events are the
tracing side's: ``TracingInterceptor`` receives a traced run's events itself, puts each on its span and
hands the described event on to this sink (``_export``), so an event is described once.

Span events rather than log records by default: they travel in the span export the run pays for anyway,
while a log record per event (13 per 5-stage run) more than doubled the records to encode and export and
was the largest share of the export path's cost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry._logs import LoggerProvider, SeverityNumber, get_logger
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter
from opentelemetry.util.types import AnyValue, AttributeValue

import stageflow

from . import semconv
from ._content import ErrorRedactor, clean_text, redact_error_message
from ._guard import NameGuard
from ._once import LogOnce
from ._settings import event_length_limit, event_log_records
from ._taxonomy import TaxonomyEvent, describe
from ._threads import LoopWaiters, reinit_after_fork

__all__ = ("OtlpEventSink",)

_Item = tuple[TaxonomyEvent, "dict[str, Any] | None", otel_context.Context, int]


_monotonic = time.monotonic

DEFAULT_MAX_SERIES = 200
"""Default limit of distinct stage names, and of pipeline names, on ``stageflow.events.emitted``."""


def _severity(outcome: str) -> tuple[SeverityNumber, str]:
    if outcome == "failed":
        return SeverityNumber.ERROR, "ERROR"
    if outcome in ("cancelled", "loop_blocked"):
        return SeverityNumber.WARN, "WARN"
    return SeverityNumber.INFO, "INFO"


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


_SECONDS = (
    "timestamp",
    "duration",
    "wait",
    "delay",
    "stages",
    "dispatch",
    "time_to_first_chunk",
    "time_per_output_chunk",
)
"""Event data keys holding seconds (``stages``: each stage's wait and duration in a run summary)."""


def _rounded(value: object) -> object:
    """``value`` with every float rounded to the microsecond."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, Mapping):
        return {k: _rounded(v) for k, v in value.items()}
    return value


class OtlpEventSink:
    """An ``EventSink`` exporting the event taxonomy as a counter, log records opt-in.

    Every event gets a static name (``stageflow.stage.completed``; see ``semconv.EVENTS``), keeps the
    event's type (``stage.llm.completed``) in ``stageflow.event.type`` and its data as ``stageflow.*``
    attributes. Span events are not this sink's: ``TracingInterceptor`` puts every event of a traced run
    on its span whatever the run's sink, and hands the events of a run whose sink is this one over
    already described. Then:

    * **abandoned work**: a stage event saying a sync stage's work was abandoned (its hop was cancelled
      and the work kept running past the grace period) counts one in ``stageflow.stage.abandoned``;
    * **a counter**: ``stageflow.events.emitted`` by ``event.name``, ``stageflow.pipeline.name`` and,
      for stage events, ``stageflow.stage.name``; at most ``max_series`` distinct pipeline names and
      stage names each at a time, further ones counted as ``_OTHER``, under the same policy as
      ``MetricsInterceptor``'s guard (a name unused for 600 s gives its slot, and its counts, to a new
      name; names over 256 characters are ``_OTHER``);
    * **log records** (``log_records``, off by default; ``STAGEFLOW_EVENT_LOG_RECORDS=true`` or
      ``setup(event_log_records=True)`` turn them on): an OTLP log record per event, with the span
      event's name and attributes plus ``stageflow.run.id`` and ``stageflow.pipeline.name`` (which a span
      event takes from its span), the whole event data as body, and the trace context of the run span
      (of the stage's span for an event a stage emits while it runs, such as its own
      ``ctx.try_emit_event``; for an untraced run, the context current when the event is emitted).
      Severity: ``*.failed`` ERROR, ``*.cancelled`` and ``*.loop_blocked`` WARN, else INFO.

    ``try_emit`` never blocks and never raises. Log records go through a buffer of ``max_buffer`` events
    that a daemon thread drains into the logger; events arriving while it is full, or after ``shutdown``,
    get no log record and are counted in ``stageflow.events.dropped``. With the providers of ``setup()``,
    records the log record processor refuses because its export queue is full
    (``OTEL_BLRP_MAX_QUEUE_SIZE``) are counted there too.

    Args:
        logger_provider: where the log records go (default: the global logger provider).
        meter_provider: where the counters are (default: the global meter provider).
        max_buffer: events held at most while the log record thread catches up.
        log_records: export every event as an OTLP log record too; ``None`` reads
            ``STAGEFLOW_EVENT_LOG_RECORDS`` (``true`` turns them on; default off).
        span_events: let ``TracingInterceptor`` put the events of the runs this sink is given on their
            spans (``False`` keeps them off the spans; the spans still end at the core's events).
        max_series: distinct stage names, and pipeline names, ``stageflow.events.emitted`` keeps apart.
        wait_timeout: ``None`` (the default): an event finding the log record buffer full gets no record
            (cause ``queue_full``). A number of seconds (``setup()``'s ``complete`` mode): room is waited
            for that long at most; on an event loop ``try_emit`` never blocks (the event is held over the
            buffer and ``room()``, which ``TracingInterceptor`` awaits, waits for the thread), elsewhere
            it blocks. Once a wait ran out, records are dropped (cause ``timeout``) without waiting until
            the thread makes room again.
        redact_error: the hook each event's ``error`` message passes through, for every view (default
            ``redact_error_message``; ``error_type_only`` leaves the message out, keeping ``error.type``).
        value_length_limit: characters kept of every string (``None``: unlimited); ``"environment"``
            (the default): the smaller of the span and log record limits described below.

    Every string of an event (attributes and log record body) is cut to the span or log record attribute
    value length limit, whichever is smaller (``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``,
    ``OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT``, else ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``, else 4096
    characters) and made encodable, so one huge or malformed value never makes the batch it travels in fail.

    .. versionadded:: 0.10
    """

    def __init__(
        self,
        *,
        logger_provider: LoggerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        max_buffer: int = 10_000,
        log_records: bool | None = None,
        span_events: bool = True,
        max_series: int = DEFAULT_MAX_SERIES,
        wait_timeout: float | None = None,
        redact_error: ErrorRedactor = redact_error_message,
        value_length_limit: int | None | Literal["environment"] = "environment",
    ) -> None:
        if max_buffer < 1:
            msg = f"max_buffer must be at least 1, got {max_buffer!r}"
            raise ValueError(msg)
        if max_series < 1:
            msg = f"max_series must be at least 1, got {max_series!r}"
            raise ValueError(msg)
        self.log_records: bool = event_log_records(os.environ) if log_records is None else log_records
        """Whether every event is also exported as an OTLP log record."""
        self.span_events: bool = span_events
        """Whether ``TracingInterceptor`` puts the events of this sink's runs on their spans."""
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
        # Counted on the loop in a dict, reported when a reader collects: exact, and a dict update per
        # event instead of an SDK measurement.
        self._counts: dict[tuple[str, str | None, str | None], int] = {}

        def names(what: str, position: int) -> NameGuard:
            # ``position``: the names' place in the keys of ``_counts``
            idle = semconv.DEFAULT_NAME_IDLE_TIMEOUT
            return NameGuard(
                what, max_series, idle, option="max_series", on_evict=partial(self._forget, position)
            )

        self._pipeline_names = names("pipeline", 1)
        self._stage_names = names("stage", 2)
        metric = semconv.STAGE_ABANDONED
        self._abandoned_counter = meter.create_counter(
            metric.name, unit=metric.unit, description=metric.description
        )
        metric = semconv.EVENTS_EMITTED
        meter.create_observable_counter(
            metric.name, callbacks=[self._observe], unit=metric.unit, description=metric.description
        )
        self._max = max_buffer
        self._wait = wait_timeout
        self._redact = redact_error
        self._limit = (
            event_length_limit(os.environ) if value_length_limit == "environment" else value_length_limit
        )
        self._closed = False
        self._dropped = 0
        self._by_cause: dict[str, int] = dict.fromkeys(semconv.DROP_CAUSES, 0)
        self._report = LogOnce(
            "stageflow_otel: the OTLP event sink failed (further failures not logged): %r", logging.ERROR
        )
        self._init_threading()
        reinit_after_fork(self._init_threading)

    def _init_threading(self) -> None:
        # After fork() the child has no drain thread and copies of the parent's locks; the parent's
        # buffered events are the parent's to deliver, so the child starts empty with a thread of its own.
        self._buffer: deque[_Item] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._unfinished = 0
        self._thread: threading.Thread | None = None
        self._drop_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._stalled = False
        self._over_since: float | None = None
        """When the buffer first went over ``max_buffer`` (events the loop may not wait for)."""
        self._waiters = LoopWaiters()

    @property
    def dropped(self) -> int:
        """Events that got no log record so far, every cause (buffer full, shut down, the export path)."""
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
        """Count the event and, with log records on, buffer it for the thread."""
        try:
            self._export(describe(type, data, self._limit, self._redact), data)
        except Exception as exc:  # telemetry never breaks a pipeline
            self._report(exc)

    def _describes_like(self, limit: int | None, redact: ErrorRedactor) -> bool:
        """Whether an event described with ``limit`` and ``redact`` is what this sink would describe."""
        return limit == self._limit and redact is self._redact

    def _export(
        self,
        event: TaxonomyEvent,
        data: dict[str, Any] | None,
        context: otel_context.Context | None = None,
    ) -> None:
        """Export one event already described (by the run's tracing side): count it, buffer its record.

        Args:
            event: the event as ``describe`` made it (with this sink's limit and redaction hook).
            data: the event's data as the core built it (the log record's body).
            context: the trace context of the log record (the run span's, or the span of the stage
                emitting it while it runs); default the current context.

        Never raises. A run traced by ``TracingInterceptor`` hands its events here, described once.
        """
        try:
            self._count(event)
            if event.attributes.get(semconv.STAGE_WORK) == semconv.WORK_ABANDONED:
                self._count_abandoned(event)
            if self.log_records:
                self._buffer_record(event, data, context)
        except Exception as exc:  # telemetry never breaks a pipeline
            self._report(exc)

    def _buffer_record(
        self, event: TaxonomyEvent, data: dict[str, Any] | None, context: otel_context.Context | None = None
    ) -> None:
        # A copy: the caller may change or reuse its dict before the thread turns it into a record.
        item: _Item = (
            event,
            None if data is None else dict(data),
            otel_context.get_current() if context is None else context,
            time.time_ns(),
        )
        cause = semconv.DROP_CAUSE_QUEUE_FULL
        over = False
        with self._cond:
            if self._wait is not None and not self._closed and len(self._buffer) >= self._max:
                now = time.monotonic()
                if self._over_since is not None and now - self._over_since > self._wait:
                    self._stalled = True  # over the buffer for too long, and no run waited it out
                if self._stalled:
                    cause = semconv.DROP_CAUSE_TIMEOUT
                elif asyncio._get_running_loop() is not None:
                    # Never block the event loop: held over the buffer's size while the run that emitted
                    # it awaits room (``room()``, from TracingInterceptor through the Backpressure).
                    over = True
                    if self._over_since is None:
                        self._over_since = now
                elif not self._cond.wait_for(self._has_room, self._wait):
                    self._stalled = True
                    cause = semconv.DROP_CAUSE_TIMEOUT
            if self._closed:
                cause = semconv.DROP_CAUSE_SHUTDOWN
            accepted = not self._closed and (over or len(self._buffer) < self._max)
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
            self.count_dropped(1, cause)

    def _has_room(self) -> bool:
        return self._closed or len(self._buffer) < self._max

    @property
    def parked(self) -> bool:
        """Whether events wait over the buffer's size for room (``complete`` mode on the event loop)."""
        return self._over_since is not None

    async def room(self) -> None:
        """Wait, without blocking the event loop, until the buffer is back within ``max_buffer``.

        At most ``wait_timeout`` from when it went over; then later events find no room at once (they
        are dropped and counted, cause ``timeout``) until the thread makes room again.
        """
        loop = asyncio.get_running_loop()
        with self._cond:
            since, wait = self._over_since, self._wait
            if since is None or wait is None or self._closed:
                return
            future = self._waiters.add(loop)
        try:
            async with asyncio.timeout(max(0.0, since + wait - time.monotonic())):
                await future
        except TimeoutError:
            with self._cond:
                self._stalled = True
        finally:
            with self._cond:
                self._waiters.discard(loop, future)

    def _count(self, event: TaxonomyEvent) -> None:
        stage = event.stage if event.kind.startswith("stage.") else None
        pipeline = event.pipeline
        now = _monotonic()
        with self._count_lock:
            if pipeline is not None:
                pipeline = self._pipeline_names(pipeline, now)
            if stage is not None:
                stage = self._stage_names(stage, now)
            key = (event.name, pipeline, stage)
            self._counts[key] = self._counts.get(key, 0) + 1

    def _count_abandoned(self, event: TaxonomyEvent) -> None:
        """A sync stage ended while its work kept running: ``stageflow.stage.abandoned``."""
        attributes: dict[str, AttributeValue] = {}
        now = _monotonic()
        with self._count_lock:
            if event.pipeline is not None:
                attributes[semconv.PIPELINE_NAME] = self._pipeline_names(event.pipeline, now)
            if event.stage is not None:
                attributes[semconv.STAGE_NAME] = self._stage_names(event.stage, now)
        kind = event.attributes.get(semconv.STAGE_KIND)
        if kind is not None:
            attributes[semconv.STAGE_KIND] = kind
        self._abandoned_counter.add(1, attributes)

    def _forget(self, position: int, name: str) -> None:
        """Drop the counts of a name the guard let go (called under ``_count_lock``): memory stays bounded."""
        for key in [k for k in self._counts if k[position] == name]:
            del self._counts[key]

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._count_lock:
            counts = list(self._counts.items())
        observations = []
        for (name, pipeline, stage), count in counts:
            attributes: dict[str, AttributeValue] = {semconv.EVENT_NAME: name}
            if pipeline is not None:
                attributes[semconv.PIPELINE_NAME] = pipeline
            if stage is not None:
                attributes[semconv.STAGE_NAME] = stage
            observations.append(Observation(count, attributes))
        return observations

    def count_dropped(self, count: int, cause: str) -> None:
        """Count ``count`` events lost for ``cause`` (thread-safe; never raises).

        ``setup()``'s export path calls it for the log records it gives up on after this sink handed
        them over, so that ``stageflow.events.dropped`` counts every event whose record was not delivered.
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
        """Stop accepting log records, hand the buffered ones to the logger and stop the thread.

        Span events and counts go on (they need no thread); only log records stop.

        Returns:
            ``True`` when every buffered event was handed over within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._waiters.wake()
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
                self._over_since = None
                self._waiters.wake()
                self._cond.notify_all()
                if not batch and self._closed:
                    return
            for event, data, ctx, observed in batch:
                try:
                    self._write(event, data, ctx, observed)
                except Exception as exc:
                    self._report(exc)
            with self._cond:
                self._unfinished -= len(batch)
                self._cond.notify_all()

    def _write(
        self, event: TaxonomyEvent, data: dict[str, Any] | None, ctx: otel_context.Context, observed: int
    ) -> None:
        attributes = dict(event.attributes)
        if event.run_id is not None:
            attributes[semconv.RUN_ID] = clean_text(event.run_id, self._limit)
        if event.pipeline is not None:
            attributes[semconv.PIPELINE_NAME] = clean_text(event.pipeline, self._limit)
        severity, severity_text = _severity(event.outcome)
        body = dict(data or {})
        if "error" in body:  # the body carries the message as the attributes do: redacted, or not at all
            if event.message is None:
                del body["error"]
            else:
                body["error"] = event.message
        for key in _SECONDS:
            if key in body:
                body[key] = _rounded(body[key])
        self._logger.emit(
            timestamp=event.timestamp,
            observed_timestamp=observed,
            context=ctx,
            severity_number=severity,
            severity_text=severity_text,
            body=_body(body, self._limit),
            attributes=attributes,
            event_name=event.name,
        )

    def __repr__(self) -> str:
        return (
            f"OtlpEventSink(span_events={self.span_events}, log_records={self.log_records}, "
            f"buffered={len(self._buffer)}, dropped={self._dropped})"
        )
