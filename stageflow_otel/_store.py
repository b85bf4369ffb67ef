"""Metrics of the run stores: how long each run took to record, and the runs that were not recorded.

Example::

    from stageflow import PostgresRunStore
    from stageflow_otel import RunStoreMetrics

    store = PostgresRunStore(url, observer=RunStoreMetrics())
"""

from __future__ import annotations

from opentelemetry import metrics
from opentelemetry.metrics import MeterProvider

from stageflow import RunStoreWrite
from stageflow import __version__ as _stageflow_version

from . import semconv

__all__ = ("RunStoreMetrics",)

_STORE_CAUSES = ("timeout", "unavailable", "error")


class RunStoreMetrics:
    """A run store ``observer`` that exports ``stageflow.store.write.duration`` (every ``record_run``) and
    ``stageflow.store.records.dropped`` (runs not recorded, by cause).

    Pass it as ``observer=`` to ``PostgresRunStore``, ``SQLiteRunStore`` or ``InMemoryRunStore``. The
    dropped counter starts at zero for every cause of each store kind it sees, so a dashboard shows
    "none dropped" rather than "no data".

    Args:
        meter_provider: where the instruments live; the global provider when ``None``.

    .. versionadded:: 0.10
    """

    def __init__(self, *, meter_provider: MeterProvider | None = None) -> None:
        meter = metrics.get_meter(semconv.INSTRUMENTATION_SCOPE, _stageflow_version, meter_provider)
        duration = semconv.STORE_WRITE_DURATION
        dropped = semconv.STORE_RECORDS_DROPPED
        self._duration = meter.create_histogram(
            duration.name,
            unit=duration.unit,
            description=duration.description,
            explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS),
        )
        self._dropped = meter.create_counter(dropped.name, unit=dropped.unit, description=dropped.description)
        self._kinds: set[str] = set()

    def __call__(self, write: RunStoreWrite) -> None:
        """Record one write (called by the store after each ``record_run``)."""
        if write.store not in self._kinds:
            self._kinds.add(write.store)
            for cause in _STORE_CAUSES:
                self._dropped.add(0, {semconv.STORE_KIND: write.store, semconv.TELEMETRY_CAUSE: cause})
        self._duration.record(write.duration, {semconv.STORE_KIND: write.store})
        if write.dropped is not None:
            self._dropped.add(1, {semconv.STORE_KIND: write.store, semconv.TELEMETRY_CAUSE: write.dropped})
