"""The in-process Prometheus ``/metrics`` endpoint: OpenTelemetry SDK metrics bridged into prometheus-client.

It runs past 500 lines because rendering OpenTelemetry points as Prometheus families (counters, gauges,
histograms with buckets and exemplars, the series cap) is one mapping kept in one place.

``PrometheusMetricReader`` is a pull ``MetricReader`` registered on the meter provider; ``PrometheusBridge``
is a prometheus-client ``Collector`` that, on every scrape, collects the reader and renders each metric
under the same family name the OpenTelemetry Collector's Prometheus exporter gives it (``semconv.Metric
.prometheus``), with attributes as labels (dots to underscores), explicit histogram buckets and
OpenMetrics exemplars carrying ``trace_id`` and ``span_id``.

Example::

    reader = PrometheusMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    server = start_metrics_server(reader, port=9464)   # http://127.0.0.1:9464/metrics
    ...
    server.close()
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.sdk.metrics import Counter, Histogram, ObservableCounter, ObservableUpDownCounter
from opentelemetry.sdk.metrics import UpDownCounter as SdkUpDownCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.metrics.export import Metric as OtelMetric
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from . import _settings, semconv
from ._content import clean_text
from ._http import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WORKERS,
    DEFAULT_WRITE_TIMEOUT,
    HttpServer,
    ServerLimits,
)
from ._settings import DEFAULT_MAX_SERIES, ENV_MAX_SERIES

__all__ = (
    "DEFAULT_MAX_SERIES",
    "ENV_MAX_SERIES",
    "MetricsServer",
    "PrometheusBridge",
    "PrometheusMetricReader",
    "prometheus_name",
    "start_metrics_server",
)

logger = logging.getLogger("stageflow_otel")

_KNOWN: Mapping[str, semconv.Metric] = {m.name: m for m in semconv.METRICS}
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_UNITS: Mapping[str, str] = {
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "m": "meters",
    "%": "percent",
    "1": "ratio",
}


def prometheus_name(name: str, unit: str, *, monotonic_sum: bool) -> str:
    """The family name the collector's Prometheus exporter gives an OpenTelemetry metric.

    Dots (and any other invalid character) become underscores, the unit becomes a suffix (``s`` ->
    ``_seconds``; annotations in braces such as ``{run}`` are dropped) and monotonic sums end in ``_total``.
    """
    base = _INVALID.sub("_", name)
    suffix = _UNITS.get(unit, "") if not unit.startswith("{") else ""
    if not suffix and unit and not unit.startswith("{") and unit not in _UNITS:
        suffix = _INVALID.sub("_", unit)
    if suffix and not base.endswith("_" + suffix):
        base += "_" + suffix
    if monotonic_sum and not base.endswith("_total"):
        base += "_total"
    return base


def _go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it (Go's float form): ``0.001``, ``1.0``, ``3600.0``."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _label(attribute: str) -> str:
    label = _INVALID.sub("_", semconv.prometheus_label(attribute))
    return "_" + label if label[:1].isdigit() else label


def _label_value(value: object) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | tuple):
        text = json.dumps(list(value))
    else:
        text = str(value)
    return _bounded(text)


_HASH_CHARS = 16


def _bounded(text: str) -> str:
    """``text`` as a label value no scrape can fail on: encodable, at most ``METRIC_VALUE_LENGTH_LIMIT``.

    A lone surrogate would make prometheus-client's UTF-8 encoding of the whole page fail (HTTP 500 on
    every scrape); a 1 MB value would be repeated on every sample of its series. A value cut short keeps
    a hash of the whole value, so two long values sharing a prefix stay two series.
    """
    text = clean_text(text, None)
    limit = semconv.METRIC_VALUE_LENGTH_LIMIT
    if len(text) <= limit:
        return text
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=_HASH_CHARS // 2).hexdigest()
    return f"{text[: limit - _HASH_CHARS - 1]}~{digest}"


_Kind = Literal["sum", "gauge", "histogram"]
_SeriesKey = tuple[str, str, str, tuple[tuple[str, Any], ...]]


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


@dataclass(slots=True)
class _Series:
    """One cumulative series: its metric's identity and its point, summed from the SDK's deltas."""

    scope: InstrumentationScope
    metric: OtelMetric
    kind: _Kind
    monotonic: bool
    point: NumberDataPoint | HistogramDataPoint


def _accumulate(
    old: NumberDataPoint | HistogramDataPoint, new: NumberDataPoint | HistogramDataPoint
) -> NumberDataPoint | HistogramDataPoint:
    """``old`` plus the delta ``new`` (same series), keeping ``old``'s start time."""
    if isinstance(old, HistogramDataPoint) and isinstance(new, HistogramDataPoint):
        if list(old.explicit_bounds) != list(new.explicit_bounds):
            return new
        return HistogramDataPoint(
            attributes=new.attributes,
            start_time_unix_nano=old.start_time_unix_nano,
            time_unix_nano=new.time_unix_nano,
            count=old.count + new.count,
            sum=old.sum + new.sum,
            bucket_counts=[a + b for a, b in zip(old.bucket_counts, new.bucket_counts, strict=True)],
            explicit_bounds=new.explicit_bounds,
            min=min(old.min, new.min),
            max=max(old.max, new.max),
            exemplars=new.exemplars or old.exemplars,
        )
    if isinstance(old, NumberDataPoint) and isinstance(new, NumberDataPoint):
        return NumberDataPoint(
            attributes=new.attributes,
            start_time_unix_nano=old.start_time_unix_nano,
            time_unix_nano=new.time_unix_nano,
            value=old.value + new.value,
            exemplars=new.exemplars or old.exemplars,
        )
    return new


class PrometheusMetricReader(MetricReader):
    """A pull ``MetricReader`` whose data ``PrometheusBridge`` renders per scrape, with bounded series.

    The SDK hands it deltas (so the SDK forgets a label set once it is read) and the reader keeps the
    cumulative series Prometheus expects, at most ``max_series`` of them (label sets; a histogram's
    buckets count as one): a new series beyond that evicts the one updated least recently, whatever
    the names rotating through, so the page and the memory stay bounded. Evictions are counted in
    ``series_evicted`` and logged once. An evicted series that comes back starts from zero again,
    which Prometheus treats as a counter reset.

    Args:
        max_series: the most series held (and served) at a time; ``None`` reads
            ``STAGEFLOW_OTEL_METRICS_MAX_SERIES`` (default 2,000).

    Raises:
        ValueError: ``max_series``, or the variable, is not a whole number of at least 1.

    .. versionadded:: 0.10
    """

    def __init__(self, *, max_series: int | None = None) -> None:
        if max_series is None:
            max_series = _settings.max_series(os.environ)
        if isinstance(max_series, bool) or not isinstance(max_series, int) or max_series < 1:
            msg = f"max_series must be an int of at least 1, got {max_series!r}"
            raise ValueError(msg)
        super().__init__(
            preferred_temporality={
                Counter: AggregationTemporality.DELTA,
                SdkUpDownCounter: AggregationTemporality.DELTA,
                Histogram: AggregationTemporality.DELTA,
                ObservableCounter: AggregationTemporality.DELTA,
                ObservableUpDownCounter: AggregationTemporality.DELTA,
            },
            preferred_aggregation={
                Histogram: ExplicitBucketHistogramAggregation(list(semconv.DURATION_BUCKETS))
            },
        )
        self.max_series = max_series
        self.series_evicted = 0
        """Series evicted so far to stay within ``max_series``."""
        self._lock = threading.Lock()
        self._latest: MetricsData | None = None
        self._series: OrderedDict[_SeriesKey, _Series] = OrderedDict()
        self._resource: Resource | None = None
        self._closed = False

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._latest = metrics_data

    @property
    def series(self) -> int:
        """Series held now (at most ``max_series``)."""
        return len(self._series)

    def snapshot(self, timeout_millis: float = 10_000) -> MetricsData | None:
        """Collect the meter provider now; every series held, cumulative (``None`` after shutdown)."""
        with self._lock:
            if self._closed:
                return None
            self._latest = None
            self.collect(timeout_millis=timeout_millis)
            if self._latest is not None:
                self._merge(self._latest)
            return self._cumulative()

    def _merge(self, data: MetricsData) -> None:
        for resource_metrics in data.resource_metrics:
            self._resource = resource_metrics.resource
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    self._merge_metric(scope_metrics.scope, metric)

    def _merge_metric(self, scope: InstrumentationScope, metric: OtelMetric) -> None:
        data = metric.data
        kind: _Kind
        if isinstance(data, HistogramData):
            kind, delta = "histogram", data.aggregation_temporality is AggregationTemporality.DELTA
        elif isinstance(data, Sum):
            kind, delta = "sum", data.aggregation_temporality is AggregationTemporality.DELTA
        elif isinstance(data, Gauge):
            kind, delta = "gauge", False
        else:  # exponential histograms have no classic Prometheus form
            return
        monotonic = isinstance(data, Sum) and data.is_monotonic
        for point in data.data_points:
            assert isinstance(point, NumberDataPoint | HistogramDataPoint)
            labels = tuple(sorted((k, _hashable(v)) for k, v in (point.attributes or {}).items()))
            key: _SeriesKey = (scope.name, metric.name, kind, labels)
            series = self._series.get(key)
            if series is None:
                self._make_room(metric.name, point)
                self._series[key] = _Series(scope, metric, kind, monotonic, point)
                continue
            series.metric = metric
            series.point = _accumulate(series.point, point) if delta else point
            self._series.move_to_end(key)

    def _make_room(self, name: str, point: NumberDataPoint | HistogramDataPoint) -> None:
        while len(self._series) >= self.max_series:
            self._series.popitem(last=False)
            self.series_evicted += 1
            if self.series_evicted == 1:
                logger.warning(
                    "stageflow_otel: /metrics holds at most %d series; a new series of %s %.300r evicts the "
                    "one updated least recently (this and every later eviction is counted in "
                    "PrometheusMetricReader.series_evicted; raise %s to keep more)",
                    self.max_series,
                    name,
                    dict(point.attributes or {}),
                    ENV_MAX_SERIES,
                )

    def _cumulative(self) -> MetricsData:
        """The series held, as cumulative metrics grouped by scope and metric, in a stable order."""
        by_scope: dict[str, tuple[InstrumentationScope, dict[tuple[str, str], list[_Series]]]] = {}
        for key in sorted(self._series, key=repr):
            series = self._series[key]
            _, metrics = by_scope.setdefault(key[0], (series.scope, {}))
            metrics.setdefault((key[1], key[2]), []).append(series)
        scope_metrics = [
            ScopeMetrics(scope, [_metric(group) for group in metrics.values()], scope.schema_url or "")
            for scope, metrics in by_scope.values()
        ]
        resource = self._resource if self._resource is not None else Resource.get_empty()
        return MetricsData([ResourceMetrics(resource, scope_metrics, resource.schema_url or "")])

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop answering scrapes (at once: a scrape in progress is not waited for)."""
        self._closed = True  # not under the lock, which a slow scrape may hold for seconds


def _metric(group: list[_Series]) -> OtelMetric:
    first = group[0]
    metric = first.metric
    data: HistogramData | Sum | Gauge
    if first.kind == "histogram":
        points = [s.point for s in group if isinstance(s.point, HistogramDataPoint)]
        data = HistogramData(points, AggregationTemporality.CUMULATIVE)
    elif first.kind == "sum":
        numbers = [s.point for s in group if isinstance(s.point, NumberDataPoint)]
        data = Sum(numbers, AggregationTemporality.CUMULATIVE, first.monotonic)
    else:
        data = Gauge([s.point for s in group if isinstance(s.point, NumberDataPoint)])
    return OtelMetric(metric.name, metric.description, metric.unit, data)


class PrometheusBridge(Collector):
    """A prometheus-client ``Collector`` rendering a ``PrometheusMetricReader``'s metrics on each scrape.

    Points of one family with different attribute sets share the union of their label names; a missing
    attribute is an empty label value, which Prometheus treats as an absent label.

    .. versionadded:: 0.10
    """

    def __init__(self, reader: PrometheusMetricReader) -> None:
        self._reader = reader

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the families are only known after a collection."""
        return ()

    def collect(self) -> Iterable[Metric]:
        """The reader's current metrics as prometheus-client metric families."""
        data = self._reader.snapshot()
        if data is None:
            return []
        groups: dict[str, _Group] = {}
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope.name
                for metric in scope_metrics.metrics:
                    _group(groups, metric, scope)
        return [group.family() for group in groups.values()]


_Point = tuple[dict[str, str], "NumberDataPoint | HistogramDataPoint"]


class _Group:
    """The points of one Prometheus family, gathered before the label names are known."""

    def __init__(self, name: str, kind: str, metric: OtelMetric) -> None:
        self.name, self.kind = name, kind
        self.description = clean_text(metric.description or "", None)
        self.unit = _unit(name, metric.unit)
        self.points: list[_Point] = []

    def family(self) -> Metric:
        names = sorted({label for labels, _ in self.points for label in labels})
        if self.kind == "histogram":
            histogram = HistogramMetricFamily(self.name, self.description, labels=names, unit=self.unit)
            for labels, point in self.points:
                assert isinstance(point, HistogramDataPoint)
                histogram.add_metric([labels.get(n, "") for n in names], _buckets(point), point.sum)
            return histogram
        if self.kind == "counter":
            counter = CounterMetricFamily(self.name, self.description, labels=names, unit=self.unit)
            for labels, point in self.points:
                assert isinstance(point, NumberDataPoint)
                exemplars = _exemplars(point)
                counter.add_metric(
                    [labels.get(n, "") for n in names],
                    point.value,
                    exemplar=exemplars[-1] if exemplars else None,
                )
            return counter
        gauge = GaugeMetricFamily(self.name, self.description, labels=names, unit=self.unit)
        for labels, point in self.points:
            assert isinstance(point, NumberDataPoint)
            gauge.add_metric([labels.get(n, "") for n in names], point.value)
        return gauge


def _group(groups: dict[str, _Group], metric: OtelMetric, scope: str) -> None:
    data = metric.data
    if isinstance(data, HistogramData | Sum) and (
        data.aggregation_temporality is not AggregationTemporality.CUMULATIVE
    ):
        return
    if isinstance(data, HistogramData):
        kind = "histogram"
    elif isinstance(data, Sum) and data.is_monotonic:
        kind = "counter"
    elif isinstance(data, Sum | Gauge):
        kind = "gauge"
    else:  # exponential histograms have no classic Prometheus form; the collector path keeps them
        return
    name = _family_name(metric, kind == "counter")
    group = groups.get(name)
    if group is None or group.kind != kind:
        group = groups[name] = _Group(name, kind, metric)
    for point in data.data_points:
        assert isinstance(point, NumberDataPoint | HistogramDataPoint)
        group.points.append((_labels(point, scope), point))


def _family_name(metric: OtelMetric, monotonic_sum: bool) -> str:
    known = _KNOWN.get(metric.name)
    if known is not None:
        return known.prometheus
    return prometheus_name(metric.name, metric.unit or "", monotonic_sum=monotonic_sum)


def _unit(name: str, otel_unit: str | None) -> str:
    unit = _UNITS.get(otel_unit or "", "")
    return unit if unit and name.endswith("_" + unit) else ""


def _labels(point: NumberDataPoint | HistogramDataPoint, scope: str) -> dict[str, str]:
    labels = {semconv.OTEL_SCOPE_LABEL: scope}
    for key, value in (point.attributes or {}).items():
        labels[_label(key)] = _label_value(value)
    return labels


def _exemplars(point: NumberDataPoint | HistogramDataPoint) -> list[Exemplar]:
    found = []
    for exemplar in point.exemplars or ():
        if not exemplar.trace_id or not exemplar.span_id:
            continue
        found.append(
            Exemplar(
                {"trace_id": format(exemplar.trace_id, "032x"), "span_id": format(exemplar.span_id, "016x")},
                exemplar.value,
                exemplar.time_unix_nano / 1e9,
            )
        )
    return found


def _buckets(point: HistogramDataPoint) -> list[tuple[str, float] | tuple[str, float, Exemplar]]:
    bounds = list(point.explicit_bounds)
    by_bucket: dict[int, Exemplar] = {}
    for exemplar in _exemplars(point):
        index = next((i for i, bound in enumerate(bounds) if exemplar.value <= bound), len(bounds))
        by_bucket[index] = exemplar
    buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
    cumulative = 0
    for i, count in enumerate(point.bucket_counts):
        cumulative += count
        le = _go_float(bounds[i]) if i < len(bounds) else "+Inf"
        found = by_bucket.get(i)
        buckets.append((le, float(cumulative)) if found is None else (le, float(cumulative), found))
    return buckets


class MetricsServer:
    """A running ``/metrics`` HTTP endpoint; ``close()`` stops it and releases the port.

    Its resources are bounded whatever its clients do: one thread owns every connection (non-blocking
    sockets) and ``workers`` threads answer complete requests; at most ``max_connections`` connections
    are open (one more closes the one waiting longest for its request); a request must arrive whole
    within ``request_timeout`` seconds of connecting (else ``408``) and its response be written within
    ``write_timeout`` seconds. So idle connections cost no threads and a slowloris cannot block scrapes.

    .. versionadded:: 0.10
    """

    def __init__(
        self,
        reader: PrometheusMetricReader,
        registry: CollectorRegistry,
        port: int,
        addr: str,
        *,
        workers: int = DEFAULT_WORKERS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        limits = ServerLimits(workers, max_connections, request_timeout, write_timeout)
        self.reader = reader
        self.registry = registry
        self._bridge = PrometheusBridge(reader)
        registry.register(self._bridge)
        try:
            self._server = HttpServer(make_wsgi_app(registry), addr, port, limits)
        except OSError as exc:
            registry.unregister(self._bridge)
            if exc.errno != errno.EADDRINUSE:
                raise
            msg = (
                f"{addr}:{port} is already in use (by another process, or an earlier setup() in this "
                f"one); serve /metrics on another port with {semconv.ENV_PROMETHEUS_PORT} or "
                f"setup(metrics_port=...) (0: any free port), or on none with "
                f"{semconv.ENV_METRICS_EXPORTER}=otlp (or none)"
            )
            raise OSError(exc.errno, msg) from exc
        except Exception:
            registry.unregister(self._bridge)
            raise
        self.addr = addr
        self.port: int = self._server.port
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The endpoint's threads (``1 + workers``, however many connections are open)."""
        return self._server.threads

    @property
    def url(self) -> str:
        """The endpoint's URL, e.g. ``http://127.0.0.1:9464/metrics``."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, close the socket and unregister the bridge (idempotent).

        Returns within a few tens of milliseconds: a scrape still being collected finishes in its
        daemon worker thread (with no data once the reader is shut down) and is not sent.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._server.close()
        self.registry.unregister(self._bridge)

    def __repr__(self) -> str:
        return f"MetricsServer(url={self.url!r})"


def start_metrics_server(
    reader: PrometheusMetricReader,
    *,
    port: int,
    addr: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
    workers: int = DEFAULT_WORKERS,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
) -> MetricsServer:
    """Serve ``reader``'s metrics at ``http://{addr}:{port}/metrics`` from ``1 + workers`` daemon threads.

    Args:
        reader: the reader registered on the meter provider.
        port: the TCP port; ``0`` picks a free one (see ``MetricsServer.port``).
        addr: the address to bind; loopback by default, so nothing is exposed unless asked for.
        registry: the prometheus-client registry to serve (default: a fresh one, not the global
            ``REGISTRY``, so the process's other collectors are not exposed by accident).
        workers: threads answering complete requests (collecting and rendering the metrics).
        max_connections: connections open at once; one more closes the one waiting longest for its
            request head.
        request_timeout: seconds from connecting to having the whole request head (else ``408``).
        write_timeout: seconds to write a response once it is ready (else the connection is dropped).

    Returns:
        The running ``MetricsServer``; call ``close()`` to stop it.

    Raises:
        OSError: the address cannot be bound; when the port is in use, the message names it and how to
            choose another (``setup()`` logs this as an error and runs without ``/metrics``).

    .. versionadded:: 0.10
    """
    return MetricsServer(
        reader,
        CollectorRegistry() if registry is None else registry,
        port,
        addr,
        workers=workers,
        max_connections=max_connections,
        request_timeout=request_timeout,
        write_timeout=write_timeout,
    )
