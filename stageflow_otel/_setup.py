"""``setup()``: tracer, meter and logger providers, the OTLP event sink and ``/metrics`` from one call.

Everything is configured from the standard ``OTEL_*`` environment variables (``semconv.ENVIRONMENT`` lists
the ones read here; the OTLP exporters also read their own headers, TLS, compression and timeout
variables). A signal whose OTLP endpoint is configured exports over OTLP (``grpc`` or ``http/protobuf``);
without any endpoint nothing needs a server: metrics are served in-process at
``http://127.0.0.1:9464/metrics`` and traces and events are recorded (so logs and exemplars carry trace
ids) but only exported when ``OTEL_TRACES_EXPORTER`` / ``OTEL_LOGS_EXPORTER`` say ``console`` or ``otlp``.

Events reach the export pipeline or are counted in ``stageflow.events.dropped``: the sink's own buffer
counts what it refuses, and the log record processor ``setup()`` installs bounds its queue itself
(``OTEL_BLRP_MAX_QUEUE_SIZE``, 2048) and counts every stageflow event it refuses when the queue is full,
where the SDK's ``BatchLogRecordProcessor`` would silently drop its oldest record.

``Telemetry.shutdown(timeout)`` is bounded: the providers shut down in parallel daemon threads; shortly
before the deadline the exporters are aborted (their retry waits interrupted, gRPC and HTTP alike; later
batches dropped and counted), so it returns within ``timeout`` plus a few milliseconds even when the
collector is down. An OTLP/HTTP request already sent is not interrupted: it runs on until its own timeout
(``OTEL_EXPORTER_OTLP_TIMEOUT``) in the daemon thread left behind, and its batch counts as failed.

Example::

    import stageflow_otel

    telemetry = stageflow_otel.setup("checkout")
    graph = pipeline.build(interceptors=[stageflow_otel.TracingInterceptor()])
    ...
    telemetry.shutdown(timeout=5.0)
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider as SdkLoggerProvider
from opentelemetry.sdk._logs import LogRecordProcessor, ReadableLogRecord, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry

import stageflow

from . import semconv
from ._prometheus import MetricsServer, PrometheusMetricReader, start_metrics_server
from ._sink import OtlpEventSink

__all__ = ("Telemetry", "setup")

logger = logging.getLogger("stageflow_otel")

Signal = Literal["traces", "metrics", "logs"]

DEFAULT_SHUTDOWN_TIMEOUT = 5.0
"""Seconds ``shutdown()`` is given when called without a timeout (and at interpreter exit)."""

_TRUE = frozenset({"true", "1", "yes", "on"})
_PROTOCOLS = ("grpc", "http/protobuf")


# --------------------------------------------------------------------------- export accounting


class _Accounting:
    """Counts failed export batches per signal and spans lost with them (in memory and as metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures: dict[str, int] = {"traces": 0, "metrics": 0, "logs": 0}
        self.spans_dropped = 0
        self._failure_counter: metrics.Counter | None = None
        self._spans_counter: metrics.Counter | None = None

    def bind(self, meter_provider: metrics.MeterProvider) -> None:
        meter = metrics.get_meter(semconv.INSTRUMENTATION_SCOPE, stageflow.__version__, meter_provider)
        failures, spans = semconv.TELEMETRY_EXPORT_FAILURES, semconv.TELEMETRY_SPANS_DROPPED
        self._failure_counter = meter.create_counter(
            failures.name, unit=failures.unit, description=failures.description
        )
        self._spans_counter = meter.create_counter(spans.name, unit=spans.unit, description=spans.description)
        # the series exist at 0 before the first failure, so dashboards show 0 rather than no data
        for signal in self.failures:
            self._failure_counter.add(0, {semconv.TELEMETRY_SIGNAL: signal})
        self._spans_counter.add(0)

    def failed(self, signal: Signal, spans: int = 0) -> None:
        with self._lock:
            self.failures[signal] += 1
            self.spans_dropped += spans
        try:
            if self._failure_counter is not None:
                self._failure_counter.add(1, {semconv.TELEMETRY_SIGNAL: signal})
            if spans and self._spans_counter is not None:
                self._spans_counter.add(spans)
        except Exception:  # counting must not turn an export failure into a crash
            logger.debug("stageflow_otel: could not count an export failure", exc_info=True)

    def total(self) -> int:
        with self._lock:
            return sum(self.failures.values())


def _shutdown_inner(exporter: object, timeout_millis: float | None) -> None:
    shutdown: Callable[..., object] = exporter.shutdown  # type: ignore[attr-defined]
    if timeout_millis is not None and "timeout_millis" in inspect.signature(shutdown).parameters:
        shutdown(timeout_millis=timeout_millis)
    else:
        shutdown()


class _Guard:
    """Shared state of one exporter wrapper: aborting, and shutting the inner exporter down once."""

    def __init__(self, inner: object, signal: Signal, accounting: _Accounting) -> None:
        self.inner, self.signal, self.accounting = inner, signal, accounting
        self.aborted = False
        self._shut = False
        self._lock = threading.Lock()

    def shutdown(self, timeout_millis: float | None = None) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
        try:
            _shutdown_inner(self.inner, timeout_millis)
        except Exception:
            logger.debug("stageflow_otel: %s exporter shutdown failed", self.signal, exc_info=True)

    def abort(self) -> None:
        """Fail every later batch at once and interrupt the one in flight (its retries and its channel)."""
        self.aborted = True
        self.shutdown(0)


class _SpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, accounting: _Accounting) -> None:
        self.guard = _Guard(inner, "traces", accounting)
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = SpanExportResult.FAILURE
        if not self.guard.aborted:
            try:
                result = self._inner.export(spans)
            except Exception:
                logger.debug("stageflow_otel: span export raised", exc_info=True)
        if result is not SpanExportResult.SUCCESS:
            self.guard.accounting.failed("traces", len(spans))
        return result

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        self.guard.shutdown(timeout_millis)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _LogExporter(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter, accounting: _Accounting) -> None:
        self.guard = _Guard(inner, "logs", accounting)
        self._inner = inner
        self.taken: Callable[[int], None] = _ignore

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        self.taken(len(batch))
        result = LogRecordExportResult.FAILURE
        if not self.guard.aborted:
            try:
                result = self._inner.export(batch)
            except Exception:
                logger.debug("stageflow_otel: log export raised", exc_info=True)
        if result is not LogRecordExportResult.SUCCESS:
            self.guard.accounting.failed("logs")
        return result

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        self.guard.shutdown(timeout_millis)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _ignore(count: int) -> None:
    return None


class _CountingLogProcessor(LogRecordProcessor):
    """A ``BatchLogRecordProcessor`` whose queue overflow is counted, not silent.

    The SDK's processor drops its oldest record when its queue is full, with a log line only. This wrapper
    keeps the queue bound itself: it counts records handed to the SDK processor until the exporter takes
    them (an upper bound of the SDK's queue length) and refuses a record while ``capacity`` are queued,
    calling ``on_drop`` for stageflow events. The SDK queue is made ``capacity + batch_size`` long, so it
    never drops on its own.
    """

    def __init__(self, exporter: _LogExporter, capacity: int, batch_size: int) -> None:
        self._capacity = capacity
        self._queued = 0
        self._lock = threading.Lock()
        self.on_drop: Callable[[int], None] = _ignore
        exporter.taken = self._taken
        self._inner = BatchLogRecordProcessor(
            exporter, max_export_batch_size=batch_size, max_queue_size=capacity + batch_size
        )

    def _taken(self, count: int) -> None:
        with self._lock:
            self._queued = max(0, self._queued - count)

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        with self._lock:
            full = self._queued >= self._capacity
            if not full:
                self._queued += 1
        if not full:
            self._inner.on_emit(log_record)
        elif semconv.EVENT_TYPE in (log_record.log_record.attributes or {}):
            self.on_drop(1)

    def shutdown(self) -> None:
        self._inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _MetricExporter(MetricExporter):
    def __init__(self, inner: MetricExporter, accounting: _Accounting) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.guard = _Guard(inner, "metrics", accounting)
        self._inner = inner

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        result = MetricExportResult.FAILURE
        if not self.guard.aborted:
            try:
                result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            except Exception:
                logger.debug("stageflow_otel: metric export raised", exc_info=True)
        if result is not MetricExportResult.SUCCESS:
            self.guard.accounting.failed("metrics")
        return result

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.guard.shutdown(timeout_millis)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)


# --------------------------------------------------------------------------- configuration from the env


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _exporter_names(signal: Signal, has_endpoint: bool) -> list[str]:
    variable = {
        "traces": "OTEL_TRACES_EXPORTER",
        "metrics": semconv.ENV_METRICS_EXPORTER,
        "logs": "OTEL_LOGS_EXPORTER",
    }[signal]
    raw = _env(variable)
    if not raw:
        if has_endpoint:
            return ["otlp"]
        return ["prometheus"] if signal == "metrics" else []
    allowed = {"otlp", "console", "none", *(("prometheus",) if signal == "metrics" else ())}
    names = []
    for name in (n.strip().lower() for n in raw.split(",") if n.strip()):
        if name in allowed:
            names.append(name)
        else:
            logger.warning("stageflow_otel: %s=%r: unknown exporter %r ignored", variable, raw, name)
    return [n for n in names if n != "none"]


def _endpoint(signal: Signal) -> tuple[str | None, str]:
    """The signal's explicit endpoint (``None`` if not configured) and protocol."""
    upper = signal.upper()
    protocol = (
        _env(f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    ).lower()
    if protocol not in _PROTOCOLS:
        logger.warning("stageflow_otel: OTLP protocol %r unsupported; using http/protobuf", protocol)
        protocol = "http/protobuf"
    specific = _env(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")
    if specific:
        return specific, protocol
    base = _env("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return None, protocol
    if protocol == "grpc":
        return base, protocol
    return f"{base.rstrip('/')}/v1/{signal}", protocol


def _default_endpoint(signal: Signal, protocol: str) -> str:
    return "http://localhost:4317" if protocol == "grpc" else f"http://localhost:4318/v1/{signal}"


def _otlp_span_exporter(endpoint: str, protocol: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter(endpoint=endpoint)


def _otlp_metric_exporter(endpoint: str, protocol: str) -> MetricExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(endpoint=endpoint)


def _otlp_log_exporter(endpoint: str, protocol: str) -> LogRecordExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter

        return GrpcLogExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter

    return HttpLogExporter(endpoint=endpoint)


def _sampler() -> Sampler:
    name = _env("OTEL_TRACES_SAMPLER").lower() or "parentbased_always_on"
    raw_arg = _env("OTEL_TRACES_SAMPLER_ARG")
    ratio = 1.0
    if raw_arg:
        try:
            ratio = float(raw_arg)
        except ValueError:
            logger.warning("stageflow_otel: OTEL_TRACES_SAMPLER_ARG=%r is not a number; using 1.0", raw_arg)
        if not 0.0 <= ratio <= 1.0:
            logger.warning("stageflow_otel: OTEL_TRACES_SAMPLER_ARG=%r is outside [0, 1]; using 1.0", raw_arg)
            ratio = 1.0
    samplers: dict[str, Callable[[], Sampler]] = {
        "always_on": lambda: ALWAYS_ON,
        "always_off": lambda: ALWAYS_OFF,
        "traceidratio": lambda: TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: ParentBased(ALWAYS_ON),
        "parentbased_always_off": lambda: ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": lambda: ParentBased(TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        logger.warning(
            "stageflow_otel: OTEL_TRACES_SAMPLER=%r unsupported (one of %s); using parentbased_always_on",
            name,
            ", ".join(samplers),
        )
        name = "parentbased_always_on"
    return samplers[name]()


def _histogram_views() -> list[View]:
    buckets = list(semconv.DURATION_BUCKETS)
    return [
        View(instrument_name=m.name, aggregation=ExplicitBucketHistogramAggregation(buckets))
        for m in semconv.METRICS
        if m.instrument == "histogram"
    ]


# --------------------------------------------------------------------------- the handle


class Telemetry:
    """What ``setup()`` built: the three providers, the event sink, the ``/metrics`` server, and shutdown.

    Attributes:
        tracer_provider: pass it to ``TracingInterceptor(tracer_provider=...)`` (global too if set_global).
        meter_provider: pass it to ``MetricsInterceptor(meter_provider=...)``.
        logger_provider: where the event sink's log records go.
        event_sink: an ``OtlpEventSink`` (a ``NoOpEventSink`` when the SDK is disabled); give it to
            ``StageContext(event_sink=...)`` or rely on the process sink that ``set_global`` installs.
        metrics_server: the running ``/metrics`` endpoint, or ``None``.
        disabled: ``True`` when ``OTEL_SDK_DISABLED=true`` made everything a no-op.

    .. versionadded:: 0.10
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider,
        meter_provider: metrics.MeterProvider,
        logger_provider: _logs.LoggerProvider,
        event_sink: stageflow.EventSink,
        metrics_server: MetricsServer | None = None,
        disabled: bool = False,
        _guards: Sequence[_Guard] = (),
        _accounting: _Accounting | None = None,
        _global_sink: bool = False,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.logger_provider = logger_provider
        self.event_sink = event_sink
        self.metrics_server = metrics_server
        self.disabled = disabled
        self._guards = tuple(_guards)
        self._accounting = _accounting or _Accounting()
        self._global_sink = _global_sink
        self._lock = threading.Lock()
        self._shut_down = False

    @property
    def export_failures(self) -> Mapping[str, int]:
        """Failed export batches so far, by signal (``traces``, ``metrics``, ``logs``)."""
        with self._accounting._lock:
            return dict(self._accounting.failures)

    @property
    def spans_dropped(self) -> int:
        """Spans lost so far because their export batch failed."""
        return self._accounting.spans_dropped

    def force_flush(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
        """Export everything buffered now, giving up after ``timeout`` seconds.

        Returns:
            ``True`` when every provider flushed in time and no export failed meanwhile.
        """
        if self.disabled or self._shut_down:
            return not self._shut_down
        deadline = time.monotonic() + timeout
        ok = True
        if isinstance(self.event_sink, OtlpEventSink):
            ok = self.event_sink.flush(timeout / 2)
        millis = int(max(0.0, deadline - time.monotonic()) * 1000)
        calls = [(name, partial(provider.force_flush, millis)) for name, provider in self._sdk_providers()]
        before = self._accounting.total()
        finished = _run_bounded(calls, deadline)
        return ok and finished and self._accounting.total() == before

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
        """Flush and shut everything down, returning within ``timeout`` seconds (plus a few ms) regardless.

        The ``/metrics`` server stops, the event sink hands its buffer to the logger provider, then the
        three providers shut down in parallel daemon threads. Shortly before the deadline any exporter
        still busy is aborted: its retry waits are interrupted and what it still holds is dropped and
        counted; an OTLP/HTTP request already sent finishes (or times out) in a thread left behind.

        Returns:
            ``True`` when everything was exported and shut down in time; ``False`` otherwise (data lost).
        """
        with self._lock:
            if self._shut_down:
                return True
            self._shut_down = True
        atexit.unregister(self._atexit)
        if self.disabled:
            return True
        start = time.monotonic()
        deadline = start + max(0.0, timeout)
        if self._global_sink and stageflow.get_event_sink() is self.event_sink:
            stageflow.set_event_sink(None)
        if self.metrics_server is not None:
            try:
                self.metrics_server.close()
            except Exception:
                logger.warning("stageflow_otel: the /metrics server did not stop cleanly", exc_info=True)
        ok = True
        if isinstance(self.event_sink, OtlpEventSink):
            ok = self.event_sink.shutdown(min(timeout / 4, 1.0))
        before = self._accounting.total()
        millis = max(0.0, deadline - time.monotonic()) * 1000
        calls = [
            (name, partial(_provider_shutdown, provider, millis)) for name, provider in self._sdk_providers()
        ]
        finished = _run_bounded(calls, deadline, on_late=self._abort, grace=min(0.5, timeout / 4))
        return ok and finished and self._accounting.total() == before

    def _abort(self) -> None:
        for guard in self._guards:
            guard.abort()

    def _sdk_providers(self) -> list[tuple[str, Any]]:
        return [
            (name, provider)
            for name, provider in (
                ("traces", self.tracer_provider),
                ("metrics", self.meter_provider),
                ("logs", self.logger_provider),
            )
            if isinstance(provider, SdkTracerProvider | SdkMeterProvider | SdkLoggerProvider)
        ]

    def _atexit(self) -> None:
        self.shutdown(DEFAULT_SHUTDOWN_TIMEOUT)

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "disabled" if self.disabled else "shut down" if self._shut_down else "running"
        return f"Telemetry({state}, metrics_server={self.metrics_server!r})"


def _provider_shutdown(provider: Any, millis: float) -> object:
    if isinstance(provider, SdkMeterProvider):
        provider.shutdown(timeout_millis=millis)
        return True
    provider.shutdown()
    return True


def _run_bounded(
    calls: Sequence[tuple[str, Callable[[], object]]],
    deadline: float,
    *,
    on_late: Callable[[], None] | None = None,
    grace: float = 0.0,
) -> bool:
    """Run ``calls`` in parallel daemon threads; ``True`` if all returned truthy before ``deadline``.

    If some are still running ``grace`` seconds before the deadline, ``on_late`` is called (to abort
    them) and they get the rest of the time; threads still running at the deadline are left behind.
    """
    results: dict[str, bool] = {}

    def run(name: str, call: Callable[[], object]) -> None:
        try:
            results[name] = call() is not False
        except Exception:
            logger.warning("stageflow_otel: %s provider failed to flush or shut down", name, exc_info=True)
            results[name] = False

    threads = [
        threading.Thread(target=run, args=(name, call), name=f"stageflow-otel-{name}", daemon=True)
        for name, call in calls
    ]
    for thread in threads:
        thread.start()
    _join(threads, deadline - grace)
    if on_late is not None and any(t.is_alive() for t in threads):
        on_late()
        _join(threads, deadline)
    late = [t.name for t in threads if t.is_alive()]
    if late:
        logger.warning("stageflow_otel: %s still busy at the deadline; left behind", ", ".join(late))
    return not late and all(results.get(name, False) for name, _ in calls)


def _join(threads: Sequence[threading.Thread], deadline: float) -> None:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------- setup


def setup(
    service_name: str | None = None,
    *,
    resource_attributes: Mapping[str, AttributeValue] | None = None,
    set_global: bool = True,
    metrics_port: int | None = None,
    metrics_addr: str | None = None,
    registry: CollectorRegistry | None = None,
    metric_readers: Sequence[MetricReader] = (),
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

    Returns:
        The ``Telemetry`` handle; call ``shutdown(timeout)`` before exiting (an ``atexit`` hook does it
        with a 5 s bound otherwise).

    .. versionadded:: 0.10
    """
    if _env("OTEL_SDK_DISABLED").lower() in _TRUE:
        return Telemetry(
            tracer_provider=trace.NoOpTracerProvider(),
            meter_provider=metrics.NoOpMeterProvider(),
            logger_provider=_logs.NoOpLoggerProvider(),
            event_sink=stageflow.NoOpEventSink(),
            disabled=True,
        )
    attributes: dict[str, AttributeValue] = dict(resource_attributes or {})
    if service_name is not None:
        attributes[SERVICE_NAME] = service_name
    resource = Resource.create(attributes)
    accounting = _Accounting()
    guards: list[_Guard] = []

    tracer_provider = SdkTracerProvider(resource=resource, sampler=_sampler(), shutdown_on_exit=False)
    endpoint, protocol = _endpoint("traces")
    for name in _exporter_names("traces", endpoint is not None):
        span_exporter: SpanExporter = (
            ConsoleSpanExporter()
            if name == "console"
            else _otlp_span_exporter(endpoint or _default_endpoint("traces", protocol), protocol)
        )
        wrapped_spans = _SpanExporter(span_exporter, accounting)
        guards.append(wrapped_spans.guard)
        tracer_provider.add_span_processor(BatchSpanProcessor(wrapped_spans))

    readers: list[MetricReader] = list(metric_readers)
    endpoint, protocol = _endpoint("metrics")
    metric_exporters = _exporter_names("metrics", endpoint is not None)
    for name in metric_exporters:
        if name == "prometheus":
            continue
        metric_exporter: MetricExporter = (
            ConsoleMetricExporter()
            if name == "console"
            else _otlp_metric_exporter(endpoint or _default_endpoint("metrics", protocol), protocol)
        )
        wrapped_metrics = _MetricExporter(metric_exporter, accounting)
        guards.append(wrapped_metrics.guard)
        readers.append(PeriodicExportingMetricReader(wrapped_metrics))
    port = metrics_port
    if port is None and "prometheus" in metric_exporters:
        port = _port(_env(semconv.ENV_PROMETHEUS_PORT))
    prometheus_reader = PrometheusMetricReader() if port is not None else None
    if prometheus_reader is not None:
        readers.append(prometheus_reader)
    meter_provider = SdkMeterProvider(
        metric_readers=readers, resource=resource, views=_histogram_views(), shutdown_on_exit=False
    )
    accounting.bind(meter_provider)

    logger_provider = SdkLoggerProvider(resource=resource, shutdown_on_exit=False)
    log_processors: list[_CountingLogProcessor] = []
    endpoint, protocol = _endpoint("logs")
    for name in _exporter_names("logs", endpoint is not None):
        log_exporter: LogRecordExporter = (
            ConsoleLogRecordExporter()
            if name == "console"
            else _otlp_log_exporter(endpoint or _default_endpoint("logs", protocol), protocol)
        )
        wrapped_logs = _LogExporter(log_exporter, accounting)
        guards.append(wrapped_logs.guard)
        log_processor = _CountingLogProcessor(wrapped_logs, *_log_queue())
        log_processors.append(log_processor)
        logger_provider.add_log_record_processor(log_processor)

    server = None
    if prometheus_reader is not None and port is not None:
        addr = metrics_addr or _env(semconv.ENV_PROMETHEUS_HOST) or "127.0.0.1"
        try:
            server = start_metrics_server(prometheus_reader, port=port, addr=addr, registry=registry)
        except OSError as exc:
            logger.error("stageflow_otel: cannot serve /metrics on %s:%s: %s", addr, port, exc)

    sink = OtlpEventSink(logger_provider=logger_provider, meter_provider=meter_provider)
    for log_processor in log_processors:
        log_processor.on_drop = sink._count_dropped
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        _logs.set_logger_provider(logger_provider)
        stageflow.set_event_sink(sink)
        _check_globals(tracer_provider, meter_provider, logger_provider)
    telemetry = Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        event_sink=sink,
        metrics_server=server,
        _guards=guards,
        _accounting=accounting,
        _global_sink=set_global,
    )
    atexit.register(telemetry._atexit)
    return telemetry


def _check_globals(
    tracer_provider: trace.TracerProvider,
    meter_provider: metrics.MeterProvider,
    logger_provider: _logs.LoggerProvider,
) -> None:
    """Log an error if OpenTelemetry kept earlier global providers (they can be set once per process)."""
    kept = [
        name
        for name, current, ours in (
            ("tracer", trace.get_tracer_provider(), tracer_provider),
            ("meter", metrics.get_meter_provider(), meter_provider),
            ("logger", _logs.get_logger_provider(), logger_provider),
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


def _log_queue() -> tuple[int, int]:
    """``OTEL_BLRP_MAX_QUEUE_SIZE`` (2048) and ``OTEL_BLRP_MAX_EXPORT_BATCH_SIZE`` (512)."""
    return _positive_int("OTEL_BLRP_MAX_QUEUE_SIZE", 2048), _positive_int(
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", 512
    )


def _positive_int(name: str, default: int) -> int:
    raw = _env(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        logger.warning("stageflow_otel: %s=%r is not a positive integer; using %d", name, raw, default)
        return default
    return value


def _port(raw: str) -> int:
    if not raw:
        return 9464
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        logger.warning("stageflow_otel: %s=%r is not a port; using 9464", semconv.ENV_PROMETHEUS_PORT, raw)
        return 9464
    return port
