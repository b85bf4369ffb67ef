"""The event-loop monitor's figures as metrics: loop lag, the loop's busy share, and blocks by stage.

``setup()`` starts one ``stageflow.LoopMonitor`` for the process (``stageflow.set_loop_monitor``) whose
callbacks record here, and stops it at ``shutdown()``. OpenTelemetry has no semantic convention for
CPython's event loop; the instruments follow the shape of Node's ``nodejs.eventloop.*`` metrics:

* ``stageflow.loop.lag`` (histogram, seconds): how late each heartbeat ran (every 10 ms while a loop runs
  a pipeline), so its percentiles are the event loop's delay percentiles (Node: ``nodejs.eventloop.delay.*``,
  gauges of the same percentiles);
* ``stageflow.loop.utilization`` (gauge, ratio 0 to 1): the loop's busy share over the last completed second
  (Node: ``nodejs.eventloop.utilization``);
* ``stageflow.stage.loop_block.duration`` (histogram, seconds): every block over the monitor's threshold, by
  the pipeline and stage whose code held the loop (no stage attributes for code outside any stage).

The stage's span gets the block as a ``stageflow.stage.loop_blocked`` span event from the core's
``stage.{name}.loop_blocked`` event, which ``TracingInterceptor`` receives as it receives every event of
the run (``_tracing``), even though the monitor reports it from outside the run's context.

The callbacks run on the event loop inside whatever context the heartbeat was scheduled in, so they
record with an empty context: no exemplar points at an unrelated (or long ended) span.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from opentelemetry import context as otel_context
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.util.types import AttributeValue

import stageflow

from . import semconv
from ._guard import NameGuard
from ._once import LogOnce

__all__ = ("LoopTelemetry", "install")

_EMPTY = otel_context.Context()


class LoopTelemetry:
    """A ``LoopMonitor`` whose lag, busy share and blocks are recorded on ``meter_provider``."""

    def __init__(self, meter_provider: MeterProvider) -> None:
        meter = metrics.get_meter(semconv.INSTRUMENTATION_SCOPE, stageflow.__version__, meter_provider)
        buckets = list(semconv.DURATION_BUCKETS)
        m = semconv.LOOP_LAG
        self._lag = meter.create_histogram(
            m.name, unit=m.unit, description=m.description, explicit_bucket_boundaries_advisory=buckets
        )
        m = semconv.STAGE_LOOP_BLOCK_DURATION_METRIC
        self._blocks = meter.create_histogram(
            m.name, unit=m.unit, description=m.description, explicit_bucket_boundaries_advisory=buckets
        )
        m = semconv.LOOP_UTILIZATION
        meter.create_observable_gauge(
            m.name, callbacks=[self._observe], unit=m.unit, description=m.description
        )
        self._pipelines = NameGuard(
            "pipeline", semconv.DEFAULT_MAX_PIPELINE_NAMES, semconv.DEFAULT_NAME_IDLE_TIMEOUT
        )
        self._stages = NameGuard("stage", semconv.DEFAULT_MAX_STAGE_NAMES, semconv.DEFAULT_NAME_IDLE_TIMEOUT)
        self._names_lock = threading.Lock()  # loops of several threads may report blocks at once
        self.monitor = stageflow.LoopMonitor(on_lag=self._on_lag, on_block=self._on_block)
        self._started = False
        self._failed = LogOnce(
            "stageflow_otel: recording the loop monitor's figures failed: %r; some are missing (logged once)"
        )

    def start(self) -> None:
        """Make this monitor the process's (``stageflow.set_loop_monitor``)."""
        stageflow.set_loop_monitor(self.monitor)
        self._started = True

    def stop(self) -> None:
        """Stop the monitor if it is still the process's (a later ``setup()`` may have replaced it)."""
        if self._started and stageflow.get_loop_monitor() is self.monitor:
            stageflow.set_loop_monitor(None)
        self.monitor.close()
        self._started = False

    def _on_lag(self, lag: float) -> None:
        try:
            self._lag.record(lag, None, _EMPTY)
        except Exception as exc:  # the SDK's failure never reaches the loop
            self._failed(exc)

    def _on_block(self, block: stageflow.LoopBlock) -> None:
        attributes: dict[str, AttributeValue] = {}
        now = time.monotonic()
        with self._names_lock:
            if block.pipeline is not None:
                attributes[semconv.PIPELINE_NAME] = self._pipelines(block.pipeline, now)
            if block.stage is not None:
                attributes[semconv.STAGE_NAME] = self._stages(block.stage, now)
        try:
            self._blocks.record(block.duration, attributes, _EMPTY)
        except Exception as exc:
            self._failed(exc)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.monitor.utilization())]


def install(meter_provider: MeterProvider, wanted: bool) -> Callable[[], None] | None:
    """Start the process's loop monitor, recording on ``meter_provider``, if ``wanted``
    (``setup(loop_monitor=...)``, else ``STAGEFLOW_LOOP_MONITOR``); returns what stops it
    (``Telemetry.shutdown()`` calls it)."""
    if not wanted:
        return None
    loop = LoopTelemetry(meter_provider)
    loop.start()
    return loop.stop
