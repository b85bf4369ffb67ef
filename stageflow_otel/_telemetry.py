"""``Telemetry``: what ``setup()`` built, with bounded ``force_flush()`` and ``shutdown()``.

Nothing is lost silently: every span, log record, event and metric point given up on is counted by cause
in the telemetry-health counters and ``Telemetry.lost``, and ``force_flush()`` / ``shutdown()`` return
``False`` when anything was lost since the previous call.

``Telemetry.shutdown(timeout)`` is bounded: the providers shut down in parallel daemon threads; shortly
before the deadline the exporters are aborted (their retry waits interrupted, a gRPC call cancelled, an
OTLP/HTTP request's socket shut down; later batches dropped and counted), so it returns within
``timeout`` plus a few milliseconds even when the collector is down or hung, with no thread left behind;
what was in flight or still queued is counted lost (cause ``timeout``).
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
from typing import Any

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider as SdkLoggerProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

import stageflow

from ._export import Accounting, Books, Guard
from ._prometheus import MetricsServer
from ._settings import Mode
from ._sink import OtlpEventSink

__all__ = ("DEFAULT_SHUTDOWN_TIMEOUT", "Telemetry")

logger = logging.getLogger("stageflow_otel")

DEFAULT_SHUTDOWN_TIMEOUT = 5.0
"""Seconds ``shutdown()`` is given when called without a timeout (and at interpreter exit)."""


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
        return self._accounting.failures_by_signal()

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
