"""One trace across processes: the worker side of a sync stage sent to another process.

``setup()`` registers a worker hook (``stageflow.add_worker_hook``) for every stage the core sends to
another process (a ``ProcessPoolExecutor``, Dask's ``client.get_executor()``, Ray). The hook is made on the
event loop inside the stage's context, where the stage span is current, and travels with the stage:

* **the W3C context** of the stage span (``traceparent``, ``tracestate``, ``baggage``), always with the W3C
  propagators whatever ``OTEL_PROPAGATORS`` says in either process;
* **the parent's telemetry settings**: its resource (``service.name`` and every resource attribute), and
  the parent's values of the variables its ``Settings`` were read from (``Settings.environment``): the
  OTLP endpoints, protocols and exporters, batch sizes and queues, length and link limits, the delivery
  mode and whether events are log records. Never secrets: OTLP headers, certificates and client keys
  (``OTEL_EXPORTER_OTLP_*HEADERS``, ``*_CERTIFICATE``, ``*_CLIENT_KEY``...) are read in the worker from
  its own environment by its SDK, as is everything else the SDK reads itself
  (``_settings.SDK_VARIABLES``: the sampler, whose default follows the stage span's sampling decision,
  OTLP compression and timeouts, the metric export interval).

In the worker, before the stage runs (``enter``):

1. the SDK is configured once per worker process from those settings: ``setup()``'s ``build()`` with
   ``Settings`` read from the parent's values (they win over the worker's environment for the variables
   that travel, which ``os.environ`` never sees), installed as the
   process's global providers, with a ``service.instance.id`` of its own and ``process.pid`` added to the
   parent's resource, no ``/metrics`` server (metrics go over OTLP when the parent exports them so, else
   nowhere) and no loop monitor. A process that already has an SDK keeps it: the providers a forked
   worker inherited from the parent's ``setup()`` (used as they are, losses reported as below; their
   meter provider still holds the parent's figures of the moment of the fork and exports them again,
   which is why README advises ``spawn`` when metrics go over OTLP), or the user's own (used as they
   are; their losses are theirs to count);
2. the extracted context is attached, so the spans the stage's code opens are children of the stage span,
   with the parent's baggage. No span of our own is opened in the worker: the stage span already covers
   the hop (its ``stageflow.stage.dispatch.duration`` says how much of it the hop took), a
   ``stage X (worker)`` span would double the spans of every hop and put the user's spans one level
   further from their stage; the worker's own resource (``service.instance.id``, ``process.pid``) tells
   which process ran them.

After the stage (``exit``), the context is detached and the worker's telemetry is flushed, waiting at most
``STAGEFLOW_OTEL_WORKER_FLUSH_TIMEOUT`` seconds (5), before the result returns. What the worker gave up on
since its previous report (spans, log records, metric points, by cause; failed export batches by signal;
span links truncated) comes back with the result and is added, on the event loop, to the parent's
telemetry-health counters (``stageflow.telemetry.*.dropped`` with the same ``cause``,
``stageflow.telemetry.export.failures``, ``stageflow.telemetry.links.dropped``; ``returned``), so
``Telemetry.lost``, ``force_flush()`` and ``shutdown()`` of the parent see it. A worker configured here
keeps those counters at zero itself, so no loss is counted twice.
Losses a worker has after the last stage it ran (a flush still running when the bound ran out, then
failing) are counted in its own counters, exported if it can, and reported with its next stage.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import PROCESS_PID, SERVICE_INSTANCE_ID
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

import stageflow

from . import semconv
from ._export import Accounting
from ._settings import SDK_VARIABLES, Settings
from ._sink import OtlpEventSink

if TYPE_CHECKING:
    from ._telemetry import Telemetry

__all__ = ("WorkerSettings", "WorkerTelemetry", "install", "settings_of", "worker_settings")

logger = logging.getLogger("stageflow_otel")

_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])

_NOT_PASSED = frozenset(
    {
        "OTEL_SDK_DISABLED",
        *SDK_VARIABLES,  # the resource travels as such; the sampler, timeouts, intervals: the worker's SDK
        semconv.ENV_METRICS_EXPORTER,  # decided below: never the in-process /metrics
        semconv.ENV_PROMETHEUS_HOST,
        semconv.ENV_PROMETHEUS_PORT,
        semconv.ENV_MODE,  # the mode setup() chose
        semconv.ENV_EVENT_LOG_RECORDS,  # as the parent's sink decided
        semconv.ENV_LOOP_MONITOR,
        semconv.ENV_WORKER_FLUSH_TIMEOUT,
        "TRACEPARENT",  # the stage span is the parent
        "TRACESTATE",
    }
)
PASSED: tuple[str, ...] = tuple(e.name for e in semconv.ENVIRONMENT if e.name not in _NOT_PASSED)
"""The environment variables whose parent's values a worker configures its SDK with."""
_SET_IN_WORKER = (*PASSED, semconv.ENV_METRICS_EXPORTER)
"""Every variable the worker's ``setup()`` reads from the parent's settings instead of its environment."""

_KINDS = frozenset({"spans", "log_records", "metric_points"})
_FAILURES = "export_failures"
_LINKS = "links"
_SIGNALS = frozenset({"traces", "metrics", "logs"})

Report = tuple[tuple[str, str, int], ...]
"""What a worker could not deliver since its previous report: ``(kind, cause, count)`` triples, kind one of
``spans``, ``log_records``, ``metric_points`` (by cause), ``export_failures`` (by signal) or ``links``."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The parent's telemetry settings a worker configures its SDK from (no secrets; picklable)."""

    resource: tuple[tuple[str, AttributeValue], ...]
    """The parent's resource attributes (``service.name`` among them)."""
    environment: tuple[tuple[str, str], ...]
    """The parent's values of ``PASSED`` that are set, and its metric exporters without ``prometheus``."""
    mode: str
    """``bounded`` or ``complete``."""
    event_log_records: bool
    """Whether events are exported as log records too."""
    flush_timeout: float
    """Seconds to wait for the worker's telemetry to be exported after each stage."""


def settings_of(telemetry: Telemetry, settings: Settings) -> WorkerSettings:
    """What ``telemetry``, built from ``settings``, gives its workers (no secrets: ``PASSED`` only)."""
    environment = {name: value for name, value in settings.environment if name in PASSED}
    # What setup() made of the metric exporters: never the in-process /metrics in a worker
    exporters = [n for n in settings.metrics.exporters if n in ("otlp", "console")]
    environment[semconv.ENV_METRICS_EXPORTER] = ",".join(exporters) or "none"
    resource = getattr(telemetry.tracer_provider, "resource", None)
    attributes = dict(resource.attributes) if resource is not None else {}
    sink = telemetry.event_sink
    return WorkerSettings(
        resource=tuple(attributes.items()),
        environment=tuple(sorted(environment.items())),
        mode=telemetry.mode,
        event_log_records=isinstance(sink, OtlpEventSink) and sink.log_records,
        flush_timeout=settings.worker_flush_timeout,
    )


# --------------------------------------------------------------------------- the hook


class WorkerTelemetry:
    """The worker hook of one hop: the stage span's W3C context and the parent's settings (picklable).

    Only ``carrier`` and ``settings`` cross to the worker; the parent's loss accounting stays behind on the
    original object, which ``returned`` reports into.
    """

    __slots__ = ("_accounting", "_process", "_token", "carrier", "settings")

    def __init__(
        self, carrier: dict[str, str], settings: WorkerSettings, accounting: Accounting | None = None
    ) -> None:
        self.carrier = carrier
        self.settings = settings
        self._accounting = accounting
        self._token: object = None
        self._process: _Process | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerTelemetry, (self.carrier, self.settings))

    def enter(self) -> None:
        """In the worker: configure its SDK once, then make the stage span the current span.

        Never raises: a failure is logged and the stage runs all the same (untraced).
        """
        try:
            self._process = _process(self.settings)
            self._token = otel_context.attach(_PROPAGATOR.extract(self.carrier))
        except Exception as exc:
            logger.error(
                "stageflow_otel: worker telemetry could not start in process %d: %r", os.getpid(), exc
            )

    def exit(self, error: BaseException | None) -> Report | None:
        """In the worker: detach, flush (bounded) and report what it could not deliver since last time."""
        token, self._token = self._token, None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]
        process = self._process
        if process is None:
            return None
        try:
            return process.flush(self.settings.flush_timeout)
        except Exception as exc:  # never expected: flush is bounded and guarded
            logger.error(
                "stageflow_otel: worker telemetry could not report in process %d: %r", os.getpid(), exc
            )
            return None

    def returned(self, report: object) -> None:
        """On the event loop: add the worker's losses to the parent's counters, with their cause."""
        accounting = self._accounting
        if accounting is None or not isinstance(report, tuple):
            return
        for item in report:
            kind, cause, count = item
            if not isinstance(count, int) or count <= 0:
                known = False
            elif kind in _KINDS and cause in semconv.DROP_CAUSES:
                accounting.dropped(kind, count, cause)
                known = True
            elif kind == _FAILURES and cause in _SIGNALS:
                for _ in range(count):
                    accounting.failed(cause)
                known = True
            else:
                known = kind == _LINKS
                if known:
                    accounting.links(count)
            if not known:  # a worker of another version: said, not guessed at
                logger.error("stageflow_otel: a worker reported a loss it cannot be counted as: %r", item)

    def __repr__(self) -> str:
        return f"WorkerTelemetry(traceparent={self.carrier.get('traceparent')!r})"


@dataclass(slots=True, eq=False, repr=False)
class _HookFactory:
    """``factory(stage, ctx)`` for ``stageflow.add_worker_hook``: a ``WorkerTelemetry`` per hop."""

    settings: WorkerSettings
    accounting: Accounting
    telemetry: Telemetry
    """The handle of the ``setup()`` that installed it: a forked worker inherits it with its providers."""

    def __call__(self, stage: stageflow.StageInfo, ctx: stageflow.StageContext) -> WorkerTelemetry:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return WorkerTelemetry(carrier, self.settings, self.accounting)


_installed: _HookFactory | None = None
"""The hook of this process's latest ``setup()``, until its ``shutdown()``."""


def install(telemetry: Telemetry, settings: Settings, accounting: Accounting) -> Callable[[], None]:
    """Make ``telemetry``'s settings travel with every stage sent to another process (the latest
    ``setup()`` wins), what its workers lose counted in ``accounting``; returns what takes the hook away
    again (``telemetry.shutdown()`` calls it)."""
    global _installed
    factory = _HookFactory(settings_of(telemetry, settings), accounting, telemetry)
    previous, _installed = _installed, factory
    if previous is not None:
        stageflow.remove_worker_hook(previous)
    stageflow.add_worker_hook(factory)

    def uninstall() -> None:
        global _installed
        stageflow.remove_worker_hook(factory)
        if _installed is factory:
            _installed = None

    return uninstall


# --------------------------------------------------------------------------- the worker process


class _Process:
    """This worker process's telemetry: what flushes it and what it reported lost so far."""

    def __init__(self, telemetry: Telemetry | None, provider: SdkTracerProvider | None) -> None:
        self.pid = os.getpid()
        self.telemetry = telemetry
        self.provider = provider
        self._lock = threading.Lock()
        # An inherited handle (fork) counts the parent's losses up to the fork: those are the parent's.
        self._reported = _totals(telemetry) if telemetry is not None else {}

    def flush(self, timeout: float) -> Report | None:
        telemetry = self.telemetry
        if telemetry is None:
            if self.provider is not None:
                try:
                    self.provider.force_flush(int(timeout * 1000))
                except Exception as exc:
                    logger.warning("stageflow_otel: flushing the worker's tracer provider failed: %r", exc)
            return None
        try:
            telemetry.force_flush(timeout)
        except Exception as exc:  # never expected: force_flush is bounded and guarded
            logger.warning("stageflow_otel: flushing the worker's telemetry failed: %r", exc)
        with self._lock:
            totals = _totals(telemetry)
            report = tuple(
                (kind, cause, count - self._reported.get((kind, cause), 0))
                for (kind, cause), count in totals.items()
                if count > self._reported.get((kind, cause), 0)
            )
            self._reported = totals
        return report


def _totals(telemetry: Telemetry) -> dict[tuple[str, str], int]:
    """Everything ``telemetry`` counted lost so far, as report keys."""
    totals = {
        (kind, cause): count
        for kind, causes in telemetry.lost.items()
        if kind != "events"  # the parent's event sink counts events; a worker emits none
        for cause, count in causes.items()
    }
    totals.update({(_FAILURES, signal): count for signal, count in telemetry.export_failures.items()})
    totals[(_LINKS, "")] = telemetry.links_dropped
    return totals


_lock = threading.Lock()
_state: _Process | None = None


def _process(settings: WorkerSettings) -> _Process:
    """This process's telemetry, configured from ``settings`` the first time (once per process)."""
    global _state
    state = _state
    if state is not None and state.pid == os.getpid():
        return state
    with _lock:
        state = _state
        if state is None or state.pid != os.getpid():
            state = _state = _adopt_or_configure(settings)
    return state


def _adopt_or_configure(settings: WorkerSettings) -> _Process:
    provider = trace.get_tracer_provider()
    if isinstance(provider, SdkTracerProvider):
        owner = _installed
        if owner is not None and owner.telemetry.tracer_provider is provider:
            # a forked worker: the parent's setup(), with its fork handlers; its losses are reported to
            # the parent, so this copy no longer counts them in its own metrics (a loss counts once)
            owner.accounting.unbind()
            return _Process(owner.telemetry, None)
        return _Process(None, provider)  # the user's own SDK
    try:
        return _Process(_configure(settings), None)
    except Exception as exc:  # telemetry never breaks a stage: it runs, untraced
        logger.error(
            "stageflow_otel: could not configure telemetry in worker process %d: %r", os.getpid(), exc
        )
        return _Process(None, None)


def _configure(settings: WorkerSettings) -> Telemetry:
    from ._setup import build

    resource: dict[str, AttributeValue] = dict(settings.resource)
    resource[SERVICE_INSTANCE_ID] = str(uuid.uuid4())
    resource[PROCESS_PID] = os.getpid()
    telemetry = build(
        worker_settings(settings, os.environ),
        resource_attributes=resource,
        set_global=True,
        metrics_port=None,
        mode=settings.mode,  # type: ignore[arg-type]
        event_log_records=settings.event_log_records,
        loop_monitor=False,
        count_losses=False,  # the parent counts them, and a loss must be counted once
    )
    return telemetry


def worker_settings(settings: WorkerSettings, environ: Mapping[str, str]) -> Settings:
    """The worker's ``Settings``: the parent's values of the variables that travel, the worker's own
    ``environ`` for every other one (its values of the travelling variables hidden)."""
    own = {name: value for name, value in environ.items() if name not in _SET_IN_WORKER}
    return Settings.from_environ({**own, **dict(settings.environment)})
