"""``setup()``: tracer, meter and logger providers, the OTLP event sink and ``/metrics`` from one call.

Everything is configured from the standard ``OTEL_*`` environment variables (``semconv.ENVIRONMENT`` lists
the ones read here; the OTLP exporters also read their own headers, TLS, compression and timeout
variables). A signal whose OTLP endpoint is configured exports over OTLP (``grpc`` or ``http/protobuf``);
without any endpoint nothing needs a server: metrics are served in-process at
``http://127.0.0.1:9464/metrics`` and traces and events are recorded (so logs and exemplars carry trace
ids) but only exported when ``OTEL_TRACES_EXPORTER`` / ``OTEL_LOGS_EXPORTER`` say ``console`` or ``otlp``.

Nothing is lost silently: the span and log record queues are bounded exactly around the SDK's batch
processors and every export batch is settled (``_export``), so each span, log record, event and metric
point given up on is counted by cause in the telemetry-health counters and ``Telemetry.lost``, and
``force_flush()`` / ``shutdown()`` return ``False``. ``mode="complete"`` waits for queue room instead of
dropping (bounded by ``STAGEFLOW_OTEL_COMPLETE_TIMEOUT``).

``Telemetry.shutdown(timeout)`` is bounded: the providers shut down in parallel daemon threads; shortly
before the deadline the exporters are aborted (their retry waits interrupted, a gRPC call cancelled, an
OTLP/HTTP request's socket shut down; later batches dropped and counted), so it returns within
``timeout`` plus a few milliseconds even when the collector is down or hung, with no thread left behind;
what was in flight or still queued is counted lost (cause ``timeout``).

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
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider as SdkLoggerProvider
from opentelemetry.sdk._logs import LogRecordLimits, ReadableLogRecord
from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter, LogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
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
from ._content import value_length_limit
from ._export import (
    DEFAULT_MAX_BYTES,
    Accounting,
    Backpressure,
    BatchSettings,
    Books,
    BoundedLogProcessor,
    BoundedSpanProcessor,
    Cause,
    CountingExporter,
    CountingMetricExporter,
    Guard,
    HttpSession,
    Signal,
    register_backpressure,
)
from ._otlp import grpc_span_exporter, http_span_exporter
from ._prometheus import MetricsServer, PrometheusMetricReader, start_metrics_server
from ._sink import OtlpEventSink

__all__ = ("Telemetry", "setup")

logger = logging.getLogger("stageflow_otel")

DEFAULT_SHUTDOWN_TIMEOUT = 5.0
"""Seconds ``shutdown()`` is given when called without a timeout (and at interpreter exit)."""

_TRUE = frozenset({"true", "1", "yes", "on"})
_PROTOCOLS = ("grpc", "http/protobuf")


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


def _otlp_span_exporter(endpoint: str, protocol: str, session: HttpSession | None) -> SpanExporter:
    if protocol == "grpc":
        return grpc_span_exporter(endpoint)
    return http_span_exporter(endpoint, _session(session))


def _otlp_metric_exporter(endpoint: str, protocol: str, session: HttpSession | None) -> MetricExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(endpoint=endpoint, session=_session(session))


def _otlp_log_exporter(endpoint: str, protocol: str, session: HttpSession | None) -> LogRecordExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter

        return GrpcLogExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter

    return HttpLogExporter(endpoint=endpoint, session=_session(session))


def _session(session: HttpSession | None) -> Any:
    assert session is not None, "an OTLP/HTTP exporter is always given an HttpSession"
    return session.session


def _http_session(name: str, protocol: str) -> HttpSession | None:
    """A fresh ``HttpSession`` for an OTLP/HTTP exporter, else ``None``."""
    return HttpSession() if name == "otlp" and protocol == "http/protobuf" else None


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
    return [
        View(instrument_name=m.name, aggregation=ExplicitBucketHistogramAggregation(list(m.buckets)))
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
        mode: ``"bounded"`` or ``"complete"`` (see ``setup()``).

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
        mode: Mode = "bounded",
        _guards: Sequence[Guard] = (),
        _books: Sequence[Books] = (),
        _accounting: Accounting | None = None,
        _global_sink: bool = False,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.logger_provider = logger_provider
        self.event_sink = event_sink
        self.metrics_server = metrics_server
        self.disabled = disabled
        self.mode: Mode = mode
        self._guards = tuple(_guards)
        self._books = tuple(_books)
        self._accounting = _accounting or Accounting()
        self._global_sink = _global_sink
        self._lock = threading.Lock()
        self._shut_down = False
        self._reported = 0
        self._on_shutdown: list[Callable[[], None]] = []  # the worker hook, the loop monitor

    @property
    def export_failures(self) -> Mapping[str, int]:
        """Failed export batches so far, by signal (``traces``, ``metrics``, ``logs``)."""
        with self._accounting._lock:
            return dict(self._accounting.failures)

    @property
    def spans_dropped(self) -> int:
        """Spans lost so far, every cause (``stageflow.telemetry.spans.dropped``)."""
        return self._accounting.total("spans")

    @property
    def lost(self) -> Mapping[str, Mapping[str, int]]:
        """Everything given up on so far: ``spans``, ``log_records``, ``metric_points`` and ``events``.

        Each maps every cause of ``semconv.DROP_CAUSES`` to a count; the same figures as the
        telemetry-health counters. Events lost as log records count in ``log_records`` too.
        """
        lost: dict[str, Mapping[str, int]] = dict(self._accounting.snapshot())
        sink = self.event_sink
        lost["events"] = dict(sink.dropped_by_cause) if isinstance(sink, OtlpEventSink) else {}
        return lost

    @property
    def links_dropped(self) -> int:
        """Span links truncated by the link limit so far (``stageflow.telemetry.links.dropped``)."""
        return self._accounting.links_dropped

    def _lost_total(self) -> int:
        sink = self.event_sink
        events = sink.dropped if isinstance(sink, OtlpEventSink) else 0
        return self._accounting.everything() + events

    def _report(self, ok: bool) -> bool:
        """``ok``, and nothing lost since the previous flush or shutdown."""
        total = self._lost_total()
        with self._lock:
            nothing_lost = total == self._reported
            self._reported = total
        return ok and nothing_lost

    def force_flush(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
        """Export everything buffered now, giving up after ``timeout`` seconds.

        Returns:
            ``True`` when every provider flushed in time, no export failed meanwhile and nothing was lost
            (dropped for any cause) since the previous ``force_flush()`` or ``setup()``.
        """
        if self.disabled or self._shut_down:
            return not self._shut_down
        deadline = time.monotonic() + timeout
        ok = True
        if isinstance(self.event_sink, OtlpEventSink):
            ok = self.event_sink.flush(timeout / 2)
        millis = int(max(0.0, deadline - time.monotonic()) * 1000)
        calls = [(name, partial(provider.force_flush, millis)) for name, provider in self._sdk_providers()]
        finished = _run_bounded(calls, deadline)
        return self._report(ok and finished)

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
        """Flush and shut everything down, returning within ``timeout`` seconds (plus a few ms) regardless.

        The ``/metrics`` server stops, the event sink hands its buffer to the logger provider, then the
        three providers shut down in parallel daemon threads. Shortly before the deadline any exporter
        still busy is aborted: its retry waits are interrupted and what it still holds is dropped and
        counted; an OTLP/HTTP request in flight is ended (its socket shut down) and its batch counted.
        A collector frozen at that moment that resumes later may still store such a batch.

        Returns:
            ``True`` when everything was exported and shut down in time and nothing was lost since the
            previous ``force_flush()`` (or ``setup()``); ``False`` otherwise. What was lost is in ``lost``.
        """
        with self._lock:
            if self._shut_down:
                return True
            self._shut_down = True
        atexit.unregister(self._atexit)
        for stop in self._on_shutdown:
            stop()
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
        millis = max(0.0, deadline - time.monotonic()) * 1000
        calls = [
            (name, partial(_provider_shutdown, provider, millis)) for name, provider in self._sdk_providers()
        ]
        finished = _run_bounded(calls, deadline, on_late=self._abort, grace=min(0.5, timeout / 4))
        for books in self._books:  # what is still queued or in flight now is given up on: counted
            books.abandon()
        return self._report(ok and finished)

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

    def shutdown_on_signals(
        self,
        signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
        *,
        timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        """Flush and shut down when the process receives one of ``signals``, then let the signal act.

        Without it a service stopped with SIGTERM (``docker stop``, Kubernetes, systemd) dies at once and
        the spans, log records and metric points still queued are lost. With it, the first of
        ``signals`` has a thread this call starts run ``shutdown(timeout)`` (the main thread goes on
        meanwhile, so it never waits on a lock it holds itself; the thread ends with ``shutdown()``
        however that is called); once that returns (within ``timeout`` plus a few ms) the
        previous handlers are put back and the signal goes to the one it had, so the process ends as it
        would have: killed by SIGTERM, ``KeyboardInterrupt`` for SIGINT, or whatever handler the
        application had installed (an ignored signal stays ignored). A second signal while flushing
        skips the rest of the flush.

        Call it from the main thread (Python handles signals there only), after installing the
        application's own handlers for these signals, if any: they run after the flush.

        Args:
            signals: the signals to flush on (default SIGTERM and SIGINT).
            timeout: the shutdown bound in seconds.

        Raises:
            ValueError: when called from another thread than the main one, or ``timeout`` is negative.

        .. versionadded:: 0.10
        """
        if not timeout >= 0:
            msg = f"shutdown_on_signals(timeout={timeout!r}): the timeout must be a number of seconds >= 0"
            raise ValueError(msg)
        if threading.current_thread() is not threading.main_thread():
            msg = (
                "shutdown_on_signals() must be called from the main thread: Python runs signal handlers "
                f"there only (called from {threading.current_thread().name!r})"
            )
            raise ValueError(msg)
        wanted = list(dict.fromkeys(signals))
        if self.disabled or not wanted:
            return
        previous = {sig: _handler(sig) for sig in wanted}
        received: list[int] = []
        trigger = threading.Event()

        def flush_then_deliver() -> None:
            trigger.wait()
            if not received:  # shut down otherwise, before any signal: nothing to do
                return
            sig = received[0]
            logger.info(
                "stageflow_otel: %s received; flushing telemetry (at most %g s) before it takes effect",
                signal.Signals(sig).name,
                timeout,
            )
            try:
                self.shutdown(timeout)
            finally:
                os.kill(os.getpid(), sig)  # handled below, in the main thread: the signal takes effect

        # Started now, not in the handler: a handler may run while the main thread holds a lock that
        # starting a thread (or logging) needs.
        threading.Thread(
            target=flush_then_deliver, name="stageflow-otel-signal-shutdown", daemon=True
        ).start()
        self._on_shutdown.append(trigger.set)

        def handle(sig: int, frame: Any) -> None:
            if not received and not trigger.is_set():
                received.append(sig)
                trigger.set()
                return
            # The flush is over, a second signal cuts it short, or the telemetry was shut down without a
            # signal: the previous handlers again, and this signal to the one it had.
            for each, handler in previous.items():
                if signal.getsignal(each) is handle:  # unless the application replaced it since
                    signal.signal(each, handler)
            action = previous[sig]
            if action == signal.SIG_DFL:
                os.kill(os.getpid(), sig)
            elif callable(action):
                action(sig, frame)

        for sig in wanted:
            signal.signal(sig, handle)

    def _atexit(self) -> None:
        self.shutdown(DEFAULT_SHUTDOWN_TIMEOUT)

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "disabled" if self.disabled else "shut down" if self._shut_down else "running"
        return f"Telemetry({state}, metrics_server={self.metrics_server!r})"


def _handler(sig: int) -> Any:
    """The current handler of ``sig`` (``SIG_DFL`` when it was not installed from Python)."""
    handler = signal.getsignal(sig)
    return signal.SIG_DFL if handler is None else handler


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


def _span_line(span: ReadableSpan) -> str:
    """A span as one line of JSON for the console exporter (the SDK's default indents it over ~25)."""
    return str(span.to_json(indent=None)) + os.linesep


def _log_line(record: ReadableLogRecord) -> str:
    """A log record as one line of JSON for the console exporter."""
    return record.to_json(indent=None) + os.linesep


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
            queue (``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BLRP_MAX_QUEUE_SIZE``), which the SDK refuses too.

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
    accounting = Accounting()
    guards: list[Guard] = []
    all_books: list[Books] = []
    chosen = _mode(mode)
    wait = _complete_timeout() if chosen == "complete" else None
    span_queue = _batch_settings("BSP", SPAN_QUEUE, wait)
    log_queue = _batch_settings("BLRP", LOG_QUEUE, wait)
    max_bytes = _positive_int(semconv.ENV_MAX_EXPORT_BYTES, DEFAULT_MAX_BYTES)

    tracer_provider = SdkTracerProvider(
        resource=resource, sampler=_sampler(), shutdown_on_exit=False, span_limits=_span_limits()
    )
    endpoint, protocol = _endpoint("traces")
    for name in _exporter_names("traces", endpoint is not None):
        session = _http_session(name, protocol)
        span_exporter: SpanExporter = (
            ConsoleSpanExporter(formatter=_span_line)
            if name == "console"
            else _otlp_span_exporter(endpoint or _default_endpoint("traces", protocol), protocol, session)
        )
        span_books = Books(span_queue, partial(_spans_lost, accounting))
        all_books.append(span_books)
        wrapped_spans = CountingExporter(span_exporter, "traces", accounting, span_books, max_bytes)
        wrapped_spans.guard.session = session
        guards.append(wrapped_spans.guard)
        tracer_provider.add_span_processor(BoundedSpanProcessor(wrapped_spans, span_books, accounting))

    readers: list[MetricReader] = list(metric_readers)
    endpoint, protocol = _endpoint("metrics")
    metric_exporters = _exporter_names("metrics", endpoint is not None)
    for name in metric_exporters:
        if name == "prometheus":
            continue
        session = _http_session(name, protocol)
        metric_exporter: MetricExporter = (
            ConsoleMetricExporter()
            if name == "console"
            else _otlp_metric_exporter(endpoint or _default_endpoint("metrics", protocol), protocol, session)
        )
        wrapped_metrics = CountingMetricExporter(metric_exporter, accounting)
        wrapped_metrics.guard.session = session
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
    sinks: list[OtlpEventSink] = []  # the sink counts the events lost in the log pipeline too

    logger_provider = SdkLoggerProvider(
        resource=resource, log_record_limits=_log_record_limits(), shutdown_on_exit=False
    )
    endpoint, protocol = _endpoint("logs")
    for name in _exporter_names("logs", endpoint is not None):
        session = _http_session(name, protocol)
        log_exporter: LogRecordExporter = (
            ConsoleLogRecordExporter(formatter=_log_line)
            if name == "console"
            else _otlp_log_exporter(endpoint or _default_endpoint("logs", protocol), protocol, session)
        )
        log_books = Books(log_queue, partial(_logs_lost, accounting, sinks))
        all_books.append(log_books)
        wrapped_logs = CountingExporter(log_exporter, "logs", accounting, log_books, max_bytes)
        wrapped_logs.guard.session = session
        guards.append(wrapped_logs.guard)
        logger_provider.add_log_record_processor(BoundedLogProcessor(wrapped_logs, log_books))
    sink = OtlpEventSink(
        logger_provider=logger_provider,
        meter_provider=meter_provider,
        max_buffer=EVENT_BUFFER,
        wait_timeout=wait,
        log_records=event_log_records,
    )
    sinks.append(sink)

    server = None
    if prometheus_reader is not None and port is not None:
        addr = metrics_addr or _env(semconv.ENV_PROMETHEUS_HOST) or "127.0.0.1"
        try:
            server = start_metrics_server(prometheus_reader, port=port, addr=addr, registry=registry)
        except OSError as exc:
            logger.error("stageflow_otel: cannot serve /metrics on %s:%s: %s", addr, port, exc)

    if wait is not None:
        register_backpressure(tracer_provider, Backpressure([*all_books, sink]))
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
        mode=chosen,
        _guards=guards,
        _books=all_books,
        _accounting=accounting,
        _global_sink=set_global,
    )
    from . import _loop, _worker

    _worker.install(telemetry)
    _loop.install(telemetry, loop_monitor)
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


Mode = Literal["bounded", "complete"]
"""``bounded``: a full export queue drops (and counts); ``complete``: wait for space, bounded by a timeout."""

SPAN_QUEUE = BatchSettings(capacity=16_384, batch_size=512, delay_millis=5000)
"""Span export queue defaults (``OTEL_BSP_MAX_QUEUE_SIZE``, ``..._MAX_EXPORT_BATCH_SIZE``, ``..._DELAY``)."""
LOG_QUEUE = BatchSettings(capacity=16_384, batch_size=512, delay_millis=1000)
"""Log record export queue defaults (``OTEL_BLRP_*``)."""
EVENT_BUFFER = 10_000
"""Events the OTLP event sink buffers before its thread hands them to the log pipeline."""
DEFAULT_COMPLETE_TIMEOUT = 10.0
"""Seconds a ``complete``-mode item waits for queue space (``STAGEFLOW_OTEL_COMPLETE_TIMEOUT``)."""


def _mode(argument: str | None) -> Mode:
    raw = argument if argument is not None else (_env(semconv.ENV_MODE).lower() or "bounded")
    if raw == "complete":
        return "complete"
    if raw != "bounded":
        if argument is not None:
            msg = f"setup(mode={argument!r}): mode must be 'bounded' or 'complete'"
            raise ValueError(msg)
        logger.warning("stageflow_otel: %s=%r unknown; using 'bounded'", semconv.ENV_MODE, raw)
    return "bounded"


def _complete_timeout() -> float:
    raw = _env(semconv.ENV_COMPLETE_TIMEOUT)
    if not raw:
        return DEFAULT_COMPLETE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0.0:
        logger.warning(
            "stageflow_otel: %s=%r is not a number of seconds; using %g",
            semconv.ENV_COMPLETE_TIMEOUT,
            raw,
            DEFAULT_COMPLETE_TIMEOUT,
        )
        return DEFAULT_COMPLETE_TIMEOUT
    return value


def _batch_settings(prefix: str, defaults: BatchSettings, wait: float | None) -> BatchSettings:
    """``defaults`` overridden by ``OTEL_{prefix}_MAX_QUEUE_SIZE|MAX_EXPORT_BATCH_SIZE|SCHEDULE_DELAY``."""
    batch = _positive_int(f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE", defaults.batch_size)
    capacity = _positive_int(f"OTEL_{prefix}_MAX_QUEUE_SIZE", defaults.capacity)
    if batch > capacity:
        # The SDK's batch processors refuse this too: a batch could never fill, so items would wait
        # for the schedule delay while the queue overflows.
        queue_name, batch_name = f"OTEL_{prefix}_MAX_QUEUE_SIZE", f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE"
        default = {name: "" if _env(name) else " (the default)" for name in (batch_name, queue_name)}
        msg = (
            f"{batch_name}={batch}{default[batch_name]} is larger than {queue_name}={capacity}"
            f"{default[queue_name]}: an export batch must fit in the queue; "
            f"set {batch_name} to at most {capacity} or {queue_name} to at least {batch}"
        )
        raise ValueError(msg)
    return BatchSettings(
        capacity=capacity,
        batch_size=batch,
        delay_millis=_positive_int(f"OTEL_{prefix}_SCHEDULE_DELAY", int(defaults.delay_millis)),
        wait=wait,
    )


def _span_limits() -> SpanLimits:
    """The SDK's span limits from ``OTEL_SPAN_*``, with ``DEFAULT_LINK_LIMIT`` links by default.

    String values are cut at ``value_length_limit("span")`` (see ``_content``).
    """
    links = _positive_int("OTEL_SPAN_LINK_COUNT_LIMIT", semconv.DEFAULT_LINK_LIMIT)
    length = value_length_limit("span")
    unset = SpanLimits.UNSET if length is None else length
    return SpanLimits(max_links=links, max_attribute_length=unset, max_span_attribute_length=unset)


def _log_record_limits() -> LogRecordLimits:
    """The SDK's log record limits, string attributes cut at ``value_length_limit("logrecord")``."""
    length = value_length_limit("logrecord")
    unset = LogRecordLimits.UNSET if length is None else length
    return LogRecordLimits(max_attribute_length=unset, max_log_record_attribute_length=unset)


def _spans_lost(accounting: Accounting, items: int, events: int, cause: Cause) -> None:
    accounting.dropped("spans", items, cause)


def _logs_lost(
    accounting: Accounting, sinks: Sequence[OtlpEventSink], items: int, events: int, cause: Cause
) -> None:
    accounting.dropped("log_records", items, cause)
    if events:
        for sink in sinks:
            sink._count_dropped(events, cause)


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
