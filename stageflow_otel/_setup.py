"""``setup()``: tracer, meter and logger providers, the OTLP event sink and ``/metrics`` from one call.

Everything is configured from the environment, read once into a ``Settings`` (``_settings``; the
standard ``OTEL_*`` variables and stageflow's own, listed in ``semconv.ENVIRONMENT``; the SDK reads the
sampler, the resource variables and the OTLP exporters' headers, TLS, compression and timeout itself).
``build()`` then makes each signal's exporters in one loop over traces, metrics and logs. A signal whose
OTLP endpoint is configured exports over OTLP (``grpc`` or ``http/protobuf``); without any endpoint
nothing needs a server: metrics are served in-process at ``http://127.0.0.1:9464/metrics`` and traces
and events are recorded (so logs and exemplars carry trace ids) but only exported when
``OTEL_TRACES_EXPORTER`` / ``OTEL_LOGS_EXPORTER`` say ``console`` or ``otlp``.

Nothing is lost silently: the span and log record queues are bounded exactly around the SDK's batch
processors and every export batch is settled (``_export``), so each span, log record, event and metric
point given up on is counted by cause in the telemetry-health counters and ``Telemetry.lost``
(``_telemetry``). ``mode="complete"`` waits for queue room instead of dropping (bounded by
``STAGEFLOW_OTEL_COMPLETE_TIMEOUT``).

An OTLP/HTTP request that reached the collector is waited for until the collector answers, even past
``OTEL_EXPORTER_OTLP_TIMEOUT`` (which bounds connecting and retrying): a collector that was frozen and
resumes still processes it, so giving up would count a delivered batch as lost.

Example::

    import stageflow_otel

    telemetry = stageflow_otel.setup("checkout")
    graph = pipeline.build(interceptors=[stageflow_otel.TracingInterceptor()])
    ...
    telemetry.shutdown(timeout=5.0)
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider as SdkLoggerProvider
from opentelemetry.sdk._logs import LogRecordLimits, LogRecordProcessor, ReadableLogRecord
from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry

import stageflow

from . import _loop, _worker, semconv
from ._export import (
    Accounting,
    Backpressure,
    Books,
    BoundedLogProcessor,
    BoundedSpanProcessor,
    Cause,
    CountingExporter,
    CountingMetricExporter,
    Guard,
    HttpSession,
    register_backpressure,
)
from ._prometheus import MetricsServer, PrometheusMetricReader, start_metrics_server
from ._settings import SIGNALS, Mode, Settings, SignalSettings
from ._sink import OtlpEventSink
from ._telemetry import Telemetry

__all__ = ("EVENT_BUFFER", "Telemetry", "build", "setup")

logger = logging.getLogger("stageflow_otel")

EVENT_BUFFER = 10_000
"""Events the OTLP event sink buffers before its thread hands them to the log pipeline."""

_OTLP_EXPORTERS: Final[Mapping[tuple[str, str], str]] = {
    ("traces", "grpc"): "stageflow_otel._otlp:grpc_span_exporter",
    ("traces", "http/protobuf"): "stageflow_otel._otlp:http_span_exporter",
    ("metrics", "grpc"): "opentelemetry.exporter.otlp.proto.grpc.metric_exporter:OTLPMetricExporter",
    ("metrics", "http/protobuf"): "opentelemetry.exporter.otlp.proto.http.metric_exporter:OTLPMetricExporter",
    ("logs", "grpc"): "stageflow_otel._otlp:grpc_log_exporter",
    ("logs", "http/protobuf"): "stageflow_otel._otlp:http_log_exporter",
}
"""Each signal's OTLP exporter (a class or factory taking ``endpoint`` and, over HTTP, ``session``) by
protocol, imported when first used (gRPC is heavy to import); spans and log records go through
``_otlp``'s encoder."""


def setup(
    service_name: str | None = None,
    *,
    resource_attributes: Mapping[str, AttributeValue] | None = None,
    set_global: bool = True,
    metrics_port: int | None = None,
    metrics_addr: str | None = None,
    registry: CollectorRegistry | None = None,
    metric_readers: Sequence[MetricReader] = (),
    mode: Mode | None = None,
    event_log_records: bool | None = None,
    loop_monitor: bool | None = None,
) -> Telemetry:
    """Build tracer, meter and logger providers, the OTLP event sink and ``/metrics`` from ``OTEL_*``.

    Args:
        service_name: ``service.name``; ``None``: ``OTEL_SERVICE_NAME``, else ``unknown_service:python``.
        resource_attributes: more resource attributes (they win over ``OTEL_RESOURCE_ATTRIBUTES``).
        set_global: install the providers as OpenTelemetry's globals and the sink as stageflow's process
            sink (``True`` for applications; tests and libraries pass ``False`` and use the handle).
        metrics_port: serve ``/metrics`` on this port (``0``: a free one) whatever ``OTEL_METRICS_EXPORTER``
            says; ``None`` serves it on ``OTEL_EXPORTER_PROMETHEUS_PORT`` (9464) only when the metrics
            exporters include ``prometheus`` (the default without an OTLP endpoint).
        metrics_addr: the address ``/metrics`` binds; default ``OTEL_EXPORTER_PROMETHEUS_HOST`` or 127.0.0.1.
        registry: the prometheus-client registry ``/metrics`` serves (default: a fresh one).
        metric_readers: extra readers for the meter provider (an ``InMemoryMetricReader`` in tests).
        mode: what happens when an export queue is full. ``"bounded"`` (the default): the span, log
            record or event is dropped and counted (cause ``queue_full``), so the application never waits.
            ``"complete"``: the run waits for queue space, at most ``STAGEFLOW_OTEL_COMPLETE_TIMEOUT``
            seconds (10) per stall, without blocking the event loop (a span ended on the loop is parked
            and ``TracingInterceptor`` awaits room after each span it ends; another thread ending a span
            blocks); what still finds no room is dropped and counted (cause ``timeout``). ``None``:
            ``STAGEFLOW_OTEL_MODE``.
        event_log_records: also export every event as an OTLP log record (for searching events in
            Loki); ``None`` reads ``STAGEFLOW_EVENT_LOG_RECORDS`` (default off: events are span events on
            the run's spans, and counted in ``stageflow.events.emitted``).
        loop_monitor: watch every event loop that runs a pipeline (``stageflow.LoopMonitor``: loop lag,
            busy share, blocks blamed on their stage) until ``shutdown()``; ``None`` reads
            ``STAGEFLOW_LOOP_MONITOR`` (default on).

    Stages sent to another process carry this setup's settings and their stage span's context there
    (``_worker``): the worker configures its SDK once from them, and what it fails to deliver is counted here.

    Returns:
        The ``Telemetry`` handle; call ``shutdown(timeout)`` before exiting (an ``atexit`` hook does it
        with a 5 s bound otherwise).

    Raises:
        ValueError: ``mode`` is not ``"bounded"`` or ``"complete"``; an export batch size
            (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, ``OTEL_BLRP_MAX_EXPORT_BATCH_SIZE``) is larger than its
            queue (``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BLRP_MAX_QUEUE_SIZE``), which the SDK refuses too;
            ``STAGEFLOW_OTEL_METRICS_MAX_SERIES`` is not a whole number of at least 1.

    .. versionadded:: 0.10
    """
    return build(
        Settings.from_environ(),
        service_name=service_name,
        resource_attributes=resource_attributes,
        set_global=set_global,
        metrics_port=metrics_port,
        metrics_addr=metrics_addr,
        registry=registry,
        metric_readers=metric_readers,
        mode=mode,
        event_log_records=event_log_records,
        loop_monitor=loop_monitor,
    )


def build(
    settings: Settings,
    *,
    service_name: str | None = None,
    resource_attributes: Mapping[str, AttributeValue] | None = None,
    set_global: bool = True,
    metrics_port: int | None = None,
    metrics_addr: str | None = None,
    registry: CollectorRegistry | None = None,
    metric_readers: Sequence[MetricReader] = (),
    mode: Mode | None = None,
    event_log_records: bool | None = None,
    loop_monitor: bool | None = None,
    count_losses: bool = True,
) -> Telemetry:
    """``setup()`` from ``settings`` rather than the environment (a worker process sets up so).

    ``count_losses=False`` keeps the telemetry-health counters at zero (the losses are still in
    ``Telemetry.lost``): a worker's are counted by its parent, and a loss must be counted once.
    """
    if settings.sdk_disabled:
        return _disabled()
    chosen = _mode(mode, settings.mode)
    wait = settings.complete_timeout if chosen == "complete" else None
    accounting = Accounting()
    exports = _Exports(accounting, settings, wait)
    for signal in SIGNALS:
        exports.add(settings.signal(signal))
    port = metrics_port
    if port is None and "prometheus" in settings.metrics.exporters:
        port = settings.prometheus_port
    prometheus = PrometheusMetricReader(max_series=settings.max_series) if port is not None else None
    attributes: dict[str, AttributeValue] = dict(resource_attributes or {})
    if service_name is not None:
        attributes[SERVICE_NAME] = service_name
    resource = Resource.create(attributes)
    # No sampler given: the SDK reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG itself.
    tracer_provider = SdkTracerProvider(
        resource=resource, shutdown_on_exit=False, span_limits=_span_limits(settings)
    )
    for span_processor in exports.span_processors:
        tracer_provider.add_span_processor(span_processor)
    readers = [*metric_readers, *exports.readers, *([prometheus] if prometheus is not None else [])]
    meter_provider = SdkMeterProvider(
        metric_readers=readers, resource=resource, views=_histogram_views(), shutdown_on_exit=False
    )
    accounting.bind(meter_provider)
    if not count_losses:
        accounting.unbind()  # after bind: the series still exist, at zero
    logger_provider = SdkLoggerProvider(
        resource=resource, log_record_limits=_log_record_limits(settings), shutdown_on_exit=False
    )
    for log_processor in exports.log_processors:
        logger_provider.add_log_record_processor(log_processor)
    sink = OtlpEventSink(
        logger_provider=logger_provider,
        meter_provider=meter_provider,
        max_buffer=EVENT_BUFFER,
        wait_timeout=wait,
        log_records=settings.event_log_records if event_log_records is None else event_log_records,
        value_length_limit=settings.event_length_limit,
    )
    exports.events_lost.append(sink.count_dropped)  # events whose log records the export path gave up on
    telemetry = Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        event_sink=sink,
        metrics_server=_serve(prometheus, port, metrics_addr or settings.prometheus_host, registry),
        mode=chosen,
        _guards=exports.guards,
        _books=exports.books,
        _accounting=accounting,
        _global_sink=set_global,
    )
    if wait is not None:
        register_backpressure(tracer_provider, Backpressure([*exports.books, sink]))
    if set_global:
        _install_globals(telemetry)
    stops = (
        _worker.install(telemetry, settings, accounting),
        _loop.install(meter_provider, settings.loop_monitor if loop_monitor is None else loop_monitor),
    )
    telemetry._on_shutdown.extend(stop for stop in stops if stop is not None)  # its builder hands them over
    atexit.register(telemetry._atexit)
    return telemetry


class _Exports:
    """The export pipelines of the three signals, built before their providers: processors and readers
    to add, with the guards and books ``Telemetry`` flushes, aborts and settles."""

    def __init__(self, accounting: Accounting, settings: Settings, wait: float | None) -> None:
        self.accounting = accounting
        self.max_bytes = settings.max_export_bytes
        self.span_queue = replace(settings.span_queue, wait=wait)
        self.log_queue = replace(settings.log_queue, wait=wait)
        self.span_processors: list[SpanProcessor] = []
        self.readers: list[MetricReader] = []
        self.log_processors: list[LogRecordProcessor] = []
        self.guards: list[Guard] = []
        self.books: list[Books] = []
        self.events_lost: list[Callable[[int, Cause], None]] = []
        """Told how many events a lost log record batch carried (the event sink, once built)."""

    def add(self, settings: SignalSettings) -> None:
        """One pipeline per exporter ``settings`` names (``prometheus`` is the reader ``build()`` adds)."""
        for name in settings.exporters:
            if name == "prometheus":
                continue
            session = HttpSession() if name == "otlp" and settings.protocol == "http/protobuf" else None
            exporter = _console(settings.signal) if name == "console" else _otlp(settings, session)
            guard = self._pipeline(settings.signal, exporter)
            guard.session = session
            self.guards.append(guard)

    def _pipeline(self, signal: str, exporter: Any) -> Guard:
        if signal == "metrics":
            metric_exporter = CountingMetricExporter(exporter, self.accounting)
            self.readers.append(PeriodicExportingMetricReader(metric_exporter))
            return metric_exporter.guard
        if signal == "traces":
            books = Books(self.span_queue, self._spans_lost)
            span_exporter = CountingExporter(exporter, "traces", self.accounting, books, self.max_bytes)
            self.span_processors.append(BoundedSpanProcessor(span_exporter, books, self.accounting))
            self.books.append(books)
            return span_exporter.guard
        books = Books(self.log_queue, self._logs_lost)
        log_exporter = CountingExporter(exporter, "logs", self.accounting, books, self.max_bytes)
        self.log_processors.append(BoundedLogProcessor(log_exporter, books))
        self.books.append(books)
        return log_exporter.guard

    def _spans_lost(self, items: int, events: int, cause: Cause) -> None:
        self.accounting.dropped("spans", items, cause)

    def _logs_lost(self, items: int, events: int, cause: Cause) -> None:
        self.accounting.dropped("log_records", items, cause)
        if events:
            for count_events in self.events_lost:
                count_events(events, cause)


def _otlp(settings: SignalSettings, session: HttpSession | None) -> Any:
    """The OTLP exporter of ``settings``' signal and protocol; it reads its headers, TLS, compression
    and timeout from the environment itself."""
    module, _, name = _OTLP_EXPORTERS[(settings.signal, settings.protocol)].partition(":")
    exporter = getattr(importlib.import_module(module), name)
    if session is None:
        return exporter(endpoint=settings.otlp_endpoint)
    return exporter(endpoint=settings.otlp_endpoint, session=session.session)


def _console(signal: str) -> Any:
    if signal == "traces":
        return ConsoleSpanExporter(formatter=_span_line)
    if signal == "metrics":
        return ConsoleMetricExporter()
    return ConsoleLogRecordExporter(formatter=_log_line)


def _span_line(span: ReadableSpan) -> str:
    """A span as one line of JSON for the console exporter (the SDK's default indents it over ~25)."""
    return str(span.to_json(indent=None)) + os.linesep


def _log_line(record: ReadableLogRecord) -> str:
    """A log record as one line of JSON for the console exporter."""
    return record.to_json(indent=None) + os.linesep


def _disabled() -> Telemetry:
    return Telemetry(
        tracer_provider=trace.NoOpTracerProvider(),
        meter_provider=metrics.NoOpMeterProvider(),
        logger_provider=_logs.NoOpLoggerProvider(),
        event_sink=stageflow.NoOpEventSink(),
        disabled=True,
    )


def _mode(argument: str | None, configured: Mode) -> Mode:
    if argument is None:
        return configured
    if argument == "bounded":
        return "bounded"
    if argument == "complete":
        return "complete"
    msg = f"setup(mode={argument!r}): mode must be 'bounded' or 'complete'"
    raise ValueError(msg)


def _serve(
    reader: PrometheusMetricReader | None, port: int | None, addr: str, registry: CollectorRegistry | None
) -> MetricsServer | None:
    if reader is None or port is None:
        return None
    try:
        return start_metrics_server(reader, port=port, addr=addr, registry=registry)
    except OSError as exc:
        logger.error("stageflow_otel: cannot serve /metrics on %s:%s: %s", addr, port, exc)
        return None


def _install_globals(telemetry: Telemetry) -> None:
    """Install ``telemetry``'s providers as OpenTelemetry's globals and its sink as stageflow's process sink.

    Logs an error if OpenTelemetry kept earlier global providers (they can be set once per process).
    """
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    _logs.set_logger_provider(telemetry.logger_provider)
    stageflow.set_event_sink(telemetry.event_sink)
    kept = [
        name
        for name, current, ours in (
            ("tracer", trace.get_tracer_provider(), telemetry.tracer_provider),
            ("meter", metrics.get_meter_provider(), telemetry.meter_provider),
            ("logger", _logs.get_logger_provider(), telemetry.logger_provider),
        )
        if current is not ours
    ]
    if kept:
        logger.error(
            "stageflow_otel: setup(set_global=True) could not install its %s provider(s): OpenTelemetry "
            "keeps the first global providers of a process, so interceptors using the globals report to "
            "the earlier ones. Pass this handle's providers to the interceptors "
            "(TracingInterceptor(telemetry.tracer_provider), MetricsInterceptor(telemetry.meter_provider)) "
            "or call setup() once per process",
            ", ".join(kept),
        )


def _histogram_views() -> list[View]:
    return [
        View(instrument_name=m.name, aggregation=ExplicitBucketHistogramAggregation(list(m.buckets)))
        for m in semconv.METRICS
        if m.instrument == "histogram"
    ]


def _span_limits(settings: Settings) -> SpanLimits:
    """The SDK's span limits: ``settings.link_limit`` links, strings cut at the span length limit."""
    length = settings.span_length_limit
    unset = SpanLimits.UNSET if length is None else length
    return SpanLimits(
        max_links=settings.link_limit, max_attribute_length=unset, max_span_attribute_length=unset
    )


def _log_record_limits(settings: Settings) -> LogRecordLimits:
    """The SDK's log record limits, string attributes cut at the log record length limit."""
    length = settings.log_record_length_limit
    unset = LogRecordLimits.UNSET if length is None else length
    return LogRecordLimits(max_attribute_length=unset, max_log_record_attribute_length=unset)
