"""The export path ``setup()`` builds: bounded batch queues and exporters whose every loss is counted.

It runs past 500 lines because the loss accounting is one ledger: the queue books, the processor and exporter
wrappers that settle each batch and the HTTP session share its invariants and are read together.

For spans and log records, a ``_Books`` keeps the exact count of what sits in the SDK batch processor's
queue and what is in flight in its exporter. The processor wrappers admit an item only while the queue
holds fewer than its capacity (the SDK queue is made longer than that, so the SDK never drops on its own)
and the exporter wrappers settle every batch: exported, or lost with a cause. Metric exports are settled
by data point. Nothing leaves the export path uncounted:

========================  =====================================================================
cause                     what was lost
========================  =====================================================================
``queue_full``            the item arrived while the export queue was full
``export_failed``         the exporter reported its batch failed (collector down, rejected...), or
                          could not encode the item (a string holding a lone surrogate)
``timeout``               a bounded wait ran out: ``complete`` mode waiting for queue space, or
                          ``shutdown()``'s deadline with the item still queued or in flight
``shutdown``              the item arrived after ``shutdown()`` began
``too_large``             the item alone encodes to more than the maximum request size (batches
                          nearing it are split, so the other items still go out)
========================  =====================================================================

OTLP/HTTP requests go through an ``HttpSession``: once a request has reached the collector it is waited
for until the collector answers, however long past ``OTEL_EXPORTER_OTLP_TIMEOUT`` (which bounds connecting
and retrying), because a collector that was frozen and resumes processes a request the client gave up on:
giving up would count its batch lost although it was delivered. ``shutdown()`` aborts such a request (its
socket is shut down, so no thread waits on it) and counts its batch lost.

In ``complete`` mode an item that finds the queue full waits for space for at most the configured
timeout; once a wait has run out, later items are counted as ``timeout`` at once until the exporter takes
a batch again, so a stalled collector costs one timeout, not one per item. On the event loop nothing
blocks: the item is *parked* (``Books.admit``) and the run that ended it awaits room
(``Backpressure.room``, which ``TracingInterceptor`` awaits after each span it ends) while the loop
serves other tasks; the exporter moves parked items into the queue as it takes batches. Off the loop
(another thread) the caller blocks, as the SDK's own processors would.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Literal, Protocol, TypeVar

from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LogRecordProcessor, ReadableLogRecord, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import stageflow

from . import semconv
from ._threads import LoopWaiters, reinit_after_fork

__all__ = (
    "Accounting",
    "Backpressure",
    "BatchSettings",
    "Books",
    "Cause",
    "Guard",
    "HttpSession",
    "Parking",
    "CountingExporter",
    "BoundedLogProcessor",
    "CountingMetricExporter",
    "Signal",
    "BoundedSpanProcessor",
    "backpressure_of",
    "register_backpressure",
    "split",
    "DEFAULT_MAX_BYTES",
)

logger = logging.getLogger("stageflow_otel")

Signal = Literal["traces", "metrics", "logs"]
Cause = Literal["queue_full", "export_failed", "timeout", "shutdown", "too_large"]


class Accounting:
    """Every span, log record, event and metric point the export path gave up on, by cause.

    The totals are kept in memory (``Telemetry`` reads them) and counted in the telemetry-health metrics
    once ``bind`` has given a meter provider. Thread-safe; counting never raises.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures: dict[str, int] = {"traces": 0, "metrics": 0, "logs": 0}
        self.lost: dict[str, dict[str, int]] = {
            kind: dict.fromkeys(semconv.DROP_CAUSES, 0) for kind in ("spans", "log_records", "metric_points")
        }
        self.links_dropped = 0
        self._failure_counter: metrics.Counter | None = None
        self._counters: dict[str, metrics.Counter] = {}
        self._links_counter: metrics.Counter | None = None

    def bind(self, meter_provider: metrics.MeterProvider) -> None:
        """Create the health counters on ``meter_provider``, every series at 0 (dashboards show 0)."""
        meter = metrics.get_meter(semconv.INSTRUMENTATION_SCOPE, stageflow.__version__, meter_provider)

        def counter(metric: semconv.Metric) -> metrics.Counter:
            return meter.create_counter(metric.name, unit=metric.unit, description=metric.description)

        self._failure_counter = counter(semconv.TELEMETRY_EXPORT_FAILURES)
        for signal in self.failures:
            self._failure_counter.add(0, {semconv.TELEMETRY_SIGNAL: signal})
        for kind, metric in (
            ("spans", semconv.TELEMETRY_SPANS_DROPPED),
            ("log_records", semconv.TELEMETRY_LOG_RECORDS_DROPPED),
            ("metric_points", semconv.TELEMETRY_METRIC_POINTS_DROPPED),
        ):
            self._counters[kind] = counter(metric)
            for cause in semconv.DROP_CAUSES:
                self._counters[kind].add(0, {semconv.TELEMETRY_CAUSE: cause})
        self._links_counter = counter(semconv.TELEMETRY_LINKS_DROPPED)
        self._links_counter.add(0)

    def failed(self, signal: Signal) -> None:
        """Count one failed export batch of ``signal``."""
        with self._lock:
            self.failures[signal] += 1
        self._add(self._failure_counter, 1, {semconv.TELEMETRY_SIGNAL: signal})

    def dropped(self, kind: str, count: int, cause: Cause) -> None:
        """Count ``count`` items of ``kind`` (``spans``, ``log_records``, ``metric_points``) lost."""
        if count <= 0:
            return
        with self._lock:
            self.lost[kind][cause] += count
        self._add(self._counters.get(kind), count, {semconv.TELEMETRY_CAUSE: cause})

    def links(self, count: int) -> None:
        """Count ``count`` span links the span limits truncated."""
        if count <= 0:
            return
        with self._lock:
            self.links_dropped += count
        self._add(self._links_counter, count, None)

    def unbind(self) -> None:
        """Stop counting in the telemetry-health metrics; the totals are still kept (a worker process's
        losses are counted by its parent, once)."""
        self._failure_counter = None
        self._counters = {}
        self._links_counter = None

    def failures_by_signal(self) -> dict[str, int]:
        """A copy of the failed export batches by signal."""
        with self._lock:
            return dict(self.failures)

    def total(self, kind: str) -> int:
        """Items of ``kind`` lost so far, all causes."""
        with self._lock:
            return sum(self.lost[kind].values())

    def snapshot(self) -> dict[str, dict[str, int]]:
        """A copy of the losses by kind and cause."""
        with self._lock:
            return {kind: dict(causes) for kind, causes in self.lost.items()}

    def everything(self) -> int:
        """Items lost so far, every kind and cause (links excluded: a truncated span is delivered)."""
        with self._lock:
            return sum(sum(causes.values()) for causes in self.lost.values())

    @staticmethod
    def _add(counter: metrics.Counter | None, count: int, attributes: dict[str, str] | None) -> None:
        if counter is None:
            return
        try:
            counter.add(count, attributes)
        except Exception:  # counting must not turn a loss into a crash
            logger.debug("stageflow_otel: could not count lost telemetry", exc_info=True)


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """One batch pipeline: queue capacity, batch size, schedule delay, ``complete`` mode's wait (or None)."""

    capacity: int
    batch_size: int
    delay_millis: float
    wait: float | None = None


_Lost = Callable[[int, int, "Cause"], None]
"""Count lost items: ``(items, events among them, cause)``."""


_Feed = Callable[[], None]
"""Hands one admitted item to the SDK processor."""


class Books:
    """Exact counts of one signal's batch pipeline: items queued, batches in flight, and every loss.

    ``admit`` is called for each item before it enters the SDK processor; ``taken`` when the exporter
    receives a batch; ``settled`` when the export returned. ``abandon`` counts what is still queued or in
    flight as lost (``timeout``) when ``shutdown()`` gives up on it, and makes later arrivals count as
    ``shutdown``. In ``complete`` mode items ended on an event loop while the queue is full are parked
    (``parked``) until ``taken`` makes room, and ``room()`` waits for that without blocking the loop.
    """

    def __init__(self, settings: BatchSettings, lost: _Lost) -> None:
        self.settings = settings
        self._lost = lost
        self._init_state()
        reinit_after_fork(self._init_state)

    def _init_state(self) -> None:
        # In a forked child the parent's queue is the parent's to export (the SDK clears its own copy).
        self._cond = threading.Condition(threading.Lock())
        self.queued = 0
        self.queued_events = 0
        self._inflight: dict[int, tuple[int, int]] = {}
        self._tokens = itertools.count(1)
        self.closed = False
        self._abandoned = False
        self._stalled = False
        self._parked: deque[tuple[_Feed, int, float]] = deque()
        self._waiters = LoopWaiters()

    @property
    def parked(self) -> int:
        """Items parked on an event loop, waiting for queue room (``complete`` mode)."""
        return len(self._parked)

    def admit(self, event: bool = False, feed: _Feed | None = None) -> bool:
        """Reserve a queue slot for one item: ``True`` to hand it to the processor now.

        ``False`` when it is refused (and counted), or, in ``complete`` mode on an event loop with the
        queue full, parked: ``feed`` hands it to the processor once ``taken`` makes room.
        """
        cause: Cause | None = None
        expired: list[tuple[_Feed, int, float]] = []
        with self._cond:
            if self.closed:
                cause = "shutdown"
            elif self._parked or self.queued >= self.settings.capacity:
                wait = self.settings.wait
                if wait is None:
                    cause = "queue_full"
                elif self._stalled:
                    cause = "timeout"
                elif feed is not None and asyncio._get_running_loop() is not None:
                    if self._parked and time.monotonic() - self._parked[0][2] > wait:
                        expired = self._expire_locked()  # parked too long with no run awaiting them
                        cause = "timeout"
                    else:
                        self._parked.append((feed, int(event), time.monotonic()))
                        return False
                elif not self._cond.wait_for(self._has_room, wait):
                    self._stalled = True
                    cause = "shutdown" if self.closed else "timeout"
                elif self.closed:  # woken by shutdown, not by room
                    cause = "shutdown"
            if cause is None:
                self.queued += 1
                self.queued_events += event
        if expired:
            self._lost(len(expired), sum(e for _, e, _ in expired), "timeout")
        if cause is not None:
            self._lost(1, int(event), cause)
            return False
        return True

    async def room(self) -> None:
        """Wait, without blocking the event loop, until every item parked now is in the queue.

        At most the ``complete`` timeout from the oldest parked item's arrival: then every parked item
        is counted lost (``timeout``) and later ones are refused at once until the exporter takes a batch.
        """
        wait = self.settings.wait
        loop = asyncio.get_running_loop()
        with self._cond:
            if not self._parked or wait is None:
                return
            future = self._waiters.add(loop)
            remaining = self._parked[0][2] + wait - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await future
        except TimeoutError:
            self._expire()
        finally:
            with self._cond:
                self._waiters.discard(loop, future)

    def _expire(self) -> None:
        with self._cond:
            expired = self._expire_locked()
        if expired:
            self._lost(len(expired), sum(e for _, e, _ in expired), "timeout")

    def _expire_locked(self) -> list[tuple[_Feed, int, float]]:
        """Give up on every parked item (the caller counts them); wake the runs awaiting room."""
        expired = list(self._parked)
        self._parked.clear()
        if expired:
            self._stalled = True
        self._waiters.wake()
        return expired

    def _has_room(self) -> bool:
        return self.closed or self.queued < self.settings.capacity

    def taken(self, items: int, events: int) -> int | None:
        """The exporter received a batch; a token for ``settled`` (``None``: already counted as lost).

        The room it makes goes to parked items first, which are handed to the processor here.
        """
        moved: list[_Feed] = []
        with self._cond:
            if self._abandoned:
                return None
            self.queued = max(0, self.queued - items)
            self.queued_events = max(0, self.queued_events - events)
            self._stalled = False
            token = next(self._tokens)
            self._inflight[token] = (items, events)
            while self._parked and self.queued < self.settings.capacity:
                feed, event, _ = self._parked.popleft()
                self.queued += 1
                self.queued_events += event
                moved.append(feed)
            if not self._parked:
                self._waiters.wake()
            self._cond.notify_all()
        for feed in moved:
            try:
                feed()
            except Exception:  # the SDK processor failed to take it: it is lost, never raised here
                logger.debug("stageflow_otel: a parked item could not be queued", exc_info=True)
        return token

    def settled(self, token: int | None, cause: Cause | None) -> None:
        """The batch of ``token`` was exported (``cause`` ``None``) or lost for ``cause``."""
        if token is None:
            return
        with self._cond:
            batch = self._inflight.pop(token, None)
        if batch is not None and cause is not None:
            self._lost(batch[0], batch[1], cause)

    def lose(self, token: int | None, items: int, events: int, cause: Cause) -> None:
        """Part of the batch of ``token`` was lost for ``cause``; the rest is settled later."""
        if token is None or items <= 0:
            return
        with self._cond:
            batch = self._inflight.get(token)
            if batch is None:
                return
            self._inflight[token] = (batch[0] - items, batch[1] - events)
        self._lost(items, events, cause)

    def close(self) -> None:
        """Refuse (and count as ``shutdown``) every item from now on, parked ones too; wake the waiters."""
        with self._cond:
            self.closed = True
            parked = list(self._parked)
            self._parked.clear()
            self._waiters.wake()
            self._cond.notify_all()
        if parked:
            self._lost(len(parked), sum(e for _, e, _ in parked), "shutdown")

    def abandon(self) -> int:
        """Count everything still queued or in flight as lost (``timeout``); return how many items."""
        with self._cond:
            self.closed = True
            self._abandoned = True
            parked = self._expire_locked()
            items = self.queued + sum(i for i, _ in self._inflight.values()) + len(parked)
            events = self.queued_events + sum(e for _, e in self._inflight.values())
            events += sum(e for _, e, _ in parked)
            self.queued = self.queued_events = 0
            self._inflight.clear()
            self._cond.notify_all()
        self._lost(items, events, "timeout")
        return items


# --------------------------------------------------------------------------- exporter wrappers


DEFAULT_MAX_BYTES = 4 * 1024 * 1024
"""Largest export request sent (``STAGEFLOW_OTEL_MAX_EXPORT_BYTES``): the collector's OTLP/gRPC receiver
refuses messages over 4 MiB by default, which would fail every other item of the batch too."""

_T = TypeVar("_T")


def split(
    items: Sequence[_T], limit: int, *, estimate: Callable[[_T], int], size: Callable[[_T], int]
) -> tuple[list[Sequence[_T]], list[_T]]:
    """``items`` as batches whose encoding fits in ``limit`` bytes, and the items too large alone.

    ``estimate`` is cheap and undercounts by less than half; only a batch whose estimate passes half the
    limit pays for ``size`` (an exact encoding of each item on its own).
    """
    if sum(estimate(item) for item in items) * 2 <= limit:
        return ([items] if items else []), []
    chunks: list[Sequence[_T]] = []
    oversized: list[_T] = []
    current: list[_T] = []
    total = 0
    for item in items:
        n = size(item)
        if n > limit:
            oversized.append(item)
            continue
        if current and total + n > limit:
            chunks.append(current)
            current, total = [], 0
        current.append(item)
        total += n
    if current:
        chunks.append(current)
    return chunks, oversized


def _value_estimate(value: object) -> int:
    if isinstance(value, str | bytes):
        return len(value) + 8
    if isinstance(value, Mapping):
        return sum(len(str(k)) + _value_estimate(v) for k, v in value.items()) + 8
    if isinstance(value, list | tuple):
        return sum(_value_estimate(v) for v in value) + 8
    return 12


def _attributes_estimate(attributes: Mapping[str, object] | None) -> int:
    if not attributes:
        return 0
    return sum(len(key) + _value_estimate(value) for key, value in attributes.items())


def _span_estimate(span: ReadableSpan) -> int:
    size = 120 + len(span.name) + _attributes_estimate(span.attributes)
    size += len(span.status.description or "")
    for event in span.events:
        size += 24 + len(event.name) + _attributes_estimate(event.attributes)
    for link in span.links:
        size += 48 + _attributes_estimate(link.attributes)
    return size


def _span_size(span: ReadableSpan) -> int:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return int(encode_spans([span]).ByteSize())


def _record_estimate(record: ReadableLogRecord) -> int:
    api = record.log_record
    return 80 + _value_estimate(api.body) + _attributes_estimate(api.attributes)


def _record_size(record: ReadableLogRecord) -> int:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

    return int(encode_logs([record]).ByteSize())


def _shutdown_inner(exporter: object, timeout_millis: float | None) -> None:
    shutdown: Callable[..., object] = exporter.shutdown  # type: ignore[attr-defined]
    if timeout_millis is not None and "timeout_millis" in inspect.signature(shutdown).parameters:
        shutdown(timeout_millis=timeout_millis)
    else:
        shutdown()


_KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    *(
        (socket.IPPROTO_TCP, getattr(socket, name), value)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
        if hasattr(socket, name)
    ),
]
"""TCP keepalive on export connections: a collector host that vanished (no reset ever comes) is noticed
within about a minute, so waiting for a request's answer without a read timeout cannot hang for good."""


class HttpSession:
    """A ``requests.Session`` for the OTLP/HTTP exporters that waits for answers and can be aborted.

    ``session`` is the session to give the exporter (``OTLPSpanExporter(session=...)``). Its requests
    connect within the exporter's timeout but then wait for the collector's answer without a read
    timeout (see the module docs: an answer given up on may still be a delivery). ``abort()`` shuts down
    the socket of every open connection, which ends a request in flight at once, and makes every later
    request fail without connecting.
    """

    def __init__(self) -> None:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.connection import HTTPConnection, HTTPSConnection
        from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

        self._lock = threading.Lock()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.aborted = False
        owner = self

        class Connection(HTTPConnection):
            default_socket_options = [*HTTPConnection.default_socket_options, *_KEEPALIVE]

            def connect(self) -> None:
                super().connect()
                owner._opened(self)

        class TlsConnection(HTTPSConnection):
            default_socket_options = [*HTTPSConnection.default_socket_options, *_KEEPALIVE]

            def connect(self) -> None:
                super().connect()
                owner._opened(self)

        class Pool(HTTPConnectionPool):
            ConnectionCls = Connection

        class TlsPool(HTTPSConnectionPool):
            ConnectionCls = TlsConnection

        class Adapter(HTTPAdapter):
            def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
                super().init_poolmanager(*args, **kwargs)
                self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}

            def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
                manager = super().proxy_manager_for(proxy, **kwargs)
                if not proxy.lower().startswith("socks"):  # SOCKS pools have connections of their own
                    manager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}
                return manager

        class Session(requests.Session):
            def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
                if owner.aborted:
                    msg = "the export was aborted by shutdown()"
                    raise requests.exceptions.ConnectionError(msg)
                timeout = kwargs.get("timeout")
                if isinstance(timeout, int | float):
                    kwargs["timeout"] = (timeout, None)  # connect within it; then wait for the answer
                return super().request(method, url, *args, **kwargs)

        self.session = Session()
        adapter = Adapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _opened(self, connection: Any) -> None:
        with self._lock:
            self._connections.add(connection)
            aborted = self.aborted
        if aborted:  # connected while abort() ran: this one is ended too
            _shut(connection)

    def abort(self) -> None:
        """End every request in flight now (their sockets shut down) and refuse later ones."""
        with self._lock:
            self.aborted = True
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)

    def reset_after_fork(self) -> None:
        """Forget the parent's pooled connections (sharing one would interleave both processes' requests)."""
        with self._lock:
            self._connections = weakref.WeakSet()
        try:
            self.session.close()
        except Exception:
            logger.debug("stageflow_otel: could not reset the export session after fork", exc_info=True)


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    try:
        # The plain socket's shutdown, also for a TLS socket: a thread may be inside its read right now.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class Guard:
    """Shared state of one exporter wrapper: aborting, and shutting the inner exporter down once.

    ``session`` is the ``HttpSession`` of an OTLP/HTTP exporter (``None`` for the others): ``abort()``
    ends its request in flight.
    """

    def __init__(self, inner: object, signal: Signal, accounting: Accounting) -> None:
        self.inner, self.signal, self.accounting = inner, signal, accounting
        self.session: HttpSession | None = None
        self.aborted = False
        self._shut = False
        self._lock = threading.Lock()
        reinit_after_fork(self._after_fork)

    def _after_fork(self) -> None:
        # The child inherits the OTLP/HTTP exporter's pooled keep-alive sockets; sharing one connection
        # with the parent would interleave both processes' requests, so the child opens its own.
        self._lock = threading.Lock()
        if self.session is not None:
            self.session.reset_after_fork()

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
        """Fail every later batch at once and interrupt the one in flight (its retries, its channel or
        its HTTP request)."""
        self.aborted = True
        if self.session is not None:
            self.session.abort()
        self.shutdown(0)

    @property
    def failure_cause(self) -> Cause:
        """The cause of a failed batch: ``timeout`` once ``shutdown()`` aborted the exporter."""
        return "timeout" if self.aborted else "export_failed"


def _events_in(batch: Sequence[Any]) -> int:
    """How many log records of ``batch`` are events (0 for spans: their events travel inside them)."""
    return sum(
        1
        for r in batch
        if isinstance(r, ReadableLogRecord) and semconv.EVENT_TYPE in (r.log_record.attributes or {})
    )


@dataclass(frozen=True, slots=True)
class _Kind:
    """What differs between exporting spans and exporting log records."""

    signal: Signal
    result: type[SpanExportResult] | type[LogRecordExportResult]
    estimate: Callable[[Any], int]
    size: Callable[[Any], int]


_SPANS = _Kind("traces", SpanExportResult, _span_estimate, _span_size)
_LOG_RECORDS = _Kind("logs", LogRecordExportResult, _record_estimate, _record_size)


class CountingExporter(SpanExporter, LogRecordExporter):
    """Settles every span or log record batch in ``books``: exported, or lost and counted by cause.

    A batch whose encoding would pass ``max_bytes`` goes out in several requests, and an item too
    large alone is counted ``too_large``: the exporter's own exact split when it has one (a ``requests``
    method, as ``_otlp``'s span exporters: ``requests(items, limit) -> (requests, too large)``), else
    ``split`` on estimated sizes.
    """

    def __init__(
        self,
        inner: SpanExporter | LogRecordExporter,
        signal: Literal["traces", "logs"],
        accounting: Accounting,
        books: Books,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.guard = Guard(inner, signal, accounting)
        self._inner: Any = inner
        self._kind = _SPANS if signal == "traces" else _LOG_RECORDS
        self._books = books
        self.max_bytes = max_bytes
        requests = getattr(inner, "requests", None)
        self._requests: Callable[[Sequence[Any], int], tuple[list[Sequence[Any]], list[Any]]] = (
            requests
            if callable(requests)
            else partial(split, estimate=self._kind.estimate, size=self._kind.size)
        )

    def export(self, batch: Sequence[Any]) -> Any:
        kind = self._kind
        success, failure = kind.result.SUCCESS, kind.result.FAILURE
        token = self._books.taken(len(batch), _events_in(batch))
        chunks, oversized, ok = self._split(batch, token)
        self._books.lose(token, len(oversized), _events_in(oversized), "too_large")
        for chunk in chunks:
            result = failure
            if not self.guard.aborted:
                try:
                    result = self._inner.export(chunk)
                except Exception:
                    logger.debug("stageflow_otel: %s export raised", kind.signal, exc_info=True)
            if result is not success:
                ok = False
                self.guard.accounting.failed(kind.signal)
                self._books.lose(token, len(chunk), _events_in(chunk), self.guard.failure_cause)
        self._books.settled(token, None)
        return success if ok and not oversized else failure

    def _split(self, batch: Sequence[Any], token: int | None) -> tuple[list[Sequence[Any]], list[Any], bool]:
        """``batch`` as requests, the items too large alone, and whether every item could be encoded.

        An item the encoder refuses (a string with a lone surrogate, say) is counted ``export_failed``
        and the others still go out: only then is each item tried alone, so a batch that encodes costs
        nothing more.
        """
        try:
            chunks, oversized = self._requests(batch, self.max_bytes)
            return chunks, oversized, True
        except Exception:
            logger.debug("stageflow_otel: encoding a %s batch raised", self._kind.signal, exc_info=True)
        good: list[Any] = []
        bad: list[Any] = []
        for item in batch:
            try:
                self._requests([item], self.max_bytes)
            except Exception:
                bad.append(item)
            else:
                good.append(item)
        self.guard.accounting.failed(self._kind.signal)
        self._books.lose(token, len(bad), _events_in(bad), "export_failed")
        try:
            chunks, oversized = self._requests(good, self.max_bytes)
        except Exception:
            logger.debug("stageflow_otel: encoding a %s batch raised", self._kind.signal, exc_info=True)
            self._books.lose(token, len(good), _events_in(good), "export_failed")
            return [], [], False
        return chunks, oversized, False

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        self.guard.shutdown(timeout_millis)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self._inner.force_flush(timeout_millis))


def _points(metrics_data: MetricsData) -> int:
    return sum(
        len(metric.data.data_points)
        for resource in metrics_data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    )


class CountingMetricExporter(MetricExporter):
    """Counts the data points of every failed metric export."""

    def __init__(self, inner: MetricExporter, accounting: Accounting) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.guard = Guard(inner, "metrics", accounting)
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
            self.guard.accounting.dropped("metric_points", _points(metrics_data), self.guard.failure_cause)
        return result

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.guard.shutdown(timeout_millis)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)


# --------------------------------------------------------------------------- processor wrappers


_Batch = TypeVar("_Batch", BatchSpanProcessor, BatchLogRecordProcessor)


class _Bounded(Generic[_Batch]):
    """The SDK's batch processor ``batch`` feeding ``exporter``, its queue bounded exactly by ``books``
    (no silent drop): what both bounded processors share."""

    def __init__(self, batch: type[_Batch], exporter: CountingExporter, books: Books) -> None:
        self._books = books
        settings = books.settings
        self._inner: _Batch = batch(
            exporter,
            max_queue_size=settings.capacity + settings.batch_size,
            schedule_delay_millis=settings.delay_millis,
            max_export_batch_size=settings.batch_size,
        )

    def shutdown(self) -> None:
        self._books.close()
        self._inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class BoundedSpanProcessor(_Bounded[BatchSpanProcessor], SpanProcessor):
    """A ``BatchSpanProcessor`` whose queue is bounded exactly by ``books`` (no silent drop).

    Also counts the links each ended span lost to the span limits (``stageflow.telemetry.links.dropped``).
    """

    def __init__(self, exporter: CountingExporter, books: Books, accounting: Accounting) -> None:
        super().__init__(BatchSpanProcessor, exporter, books)
        self._accounting = accounting

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        if isinstance(span, ReadableSpan) and span.dropped_links:
            self._accounting.links(span.dropped_links)
        if self._books.admit(feed=partial(self._inner.on_end, span)):
            self._inner.on_end(span)


class BoundedLogProcessor(_Bounded[BatchLogRecordProcessor], LogRecordProcessor):
    """A ``BatchLogRecordProcessor`` whose queue is bounded exactly by ``books`` (no silent drop)."""

    def __init__(self, exporter: CountingExporter, books: Books) -> None:
        super().__init__(BatchLogRecordProcessor, exporter, books)

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        event = semconv.EVENT_TYPE in (log_record.log_record.attributes or {})
        if self._books.admit(event, feed=partial(self._inner.on_emit, log_record)):
            self._inner.on_emit(log_record)


# --------------------------------------------------------------------------- complete mode on the loop


class Parking(Protocol):
    """Something the event loop may park items in while the run that made them awaits ``room()``."""

    @property
    def parked(self) -> int | bool:
        """Whether (or how many) items are parked now."""

    async def room(self) -> None:
        """Wait until what is parked now has room (or was given up on)."""


class Backpressure:
    """The runs' side of ``complete`` mode: ``room()`` awaits queue room for what the loop parked.

    One per ``setup()`` in ``complete`` mode, over its span and log record books and its event sink's
    buffer; found from the tracer provider with ``backpressure_of`` (``TracingInterceptor`` awaits it
    after each span it ends).
    """

    def __init__(self, books: Sequence[Parking]) -> None:
        self._books = tuple(books)

    @property
    def parked(self) -> bool:
        """Whether any item is parked (read without a lock: a hint, checked again by ``room``)."""
        return any(books.parked for books in self._books)

    async def room(self) -> None:
        """Wait until every item parked now is queued (or given up on after the ``complete`` timeout)."""
        for books in self._books:
            await books.room()


_BACKPRESSURE: weakref.WeakKeyDictionary[object, Backpressure] = weakref.WeakKeyDictionary()


def register_backpressure(tracer_provider: object, backpressure: Backpressure) -> None:
    """Make ``backpressure_of(tracer_provider)`` return ``backpressure``."""
    _BACKPRESSURE[tracer_provider] = backpressure


def backpressure_of(tracer_provider: object) -> Backpressure | None:
    """The ``Backpressure`` of a ``complete``-mode ``setup()``'s tracer provider, else ``None``."""
    try:
        return _BACKPRESSURE.get(tracer_provider)
    except TypeError:  # not weak-referenceable: never registered
        return None
