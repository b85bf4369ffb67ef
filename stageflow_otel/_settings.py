"""Every environment variable stageflow_otel interprets, read once into a frozen ``Settings``.

``Settings.from_environ(environ)`` reads them from a mapping (``os.environ`` by default), checks each, and
returns one immutable value that ``setup()`` builds the providers, exporters, queues, the event sink and
``/metrics`` from; nothing else of ``setup()`` looks at the environment. A value that cannot be used is
logged once, naming the variable, the value and what it must be, and its default applies; a
combination the SDK would refuse too (an export batch larger than its queue) and an unusable
``/metrics`` series limit raise ``ValueError`` instead.

What the OpenTelemetry SDK reads itself stays with it (``SDK_VARIABLES``): the sampler
(``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``), the resource (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``), the OTLP exporters' timeouts, headers, certificates and compression, and
the metric export interval and timeout are read by the SDK from ``os.environ`` of the process that builds
the providers.

Example::

    settings = Settings.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    settings.traces.exporters, settings.traces.endpoint   # ('otlp',), 'http://collector:4318/v1/traces'
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

from . import semconv
from ._export import DEFAULT_MAX_BYTES, BatchSettings, Signal

__all__ = (
    "DEFAULT_COMPLETE_TIMEOUT",
    "DEFAULT_FLUSH_TIMEOUT",
    "DEFAULT_MAX_SERIES",
    "DEFAULT_PROMETHEUS_PORT",
    "ENV_MAX_SERIES",
    "LOG_QUEUE",
    "RUN_VARIABLES",
    "SDK_VARIABLES",
    "SIGNALS",
    "SPAN_QUEUE",
    "Mode",
    "Protocol",
    "Settings",
    "SignalSettings",
    "event_length_limit",
    "event_log_records",
    "max_series",
    "value_length_limit",
)

logger = logging.getLogger("stageflow_otel")

Mode = Literal["bounded", "complete"]
"""``bounded``: a full export queue drops (and counts); ``complete``: wait for space, bounded by a timeout."""
Protocol = Literal["grpc", "http/protobuf"]
"""The OTLP protocols stageflow_otel exports with."""

SIGNALS: Final[tuple[Signal, ...]] = ("traces", "metrics", "logs")
"""The three signals, in the order ``setup()`` builds them."""
SPAN_QUEUE: Final = BatchSettings(capacity=16_384, batch_size=512, delay_millis=5000)
"""Span export queue defaults (``OTEL_BSP_MAX_QUEUE_SIZE``, ``..._MAX_EXPORT_BATCH_SIZE``, ``..._DELAY``)."""
LOG_QUEUE: Final = BatchSettings(capacity=16_384, batch_size=512, delay_millis=1000)
"""Log record export queue defaults (``OTEL_BLRP_*``)."""
DEFAULT_COMPLETE_TIMEOUT: Final = 10.0
"""Seconds a ``complete``-mode item waits for queue space (``STAGEFLOW_OTEL_COMPLETE_TIMEOUT``)."""
DEFAULT_FLUSH_TIMEOUT: Final = 5.0
"""Seconds a worker waits for its telemetry to be exported after each stage (``ENV_WORKER_FLUSH_TIMEOUT``)."""
DEFAULT_MAX_SERIES: Final = 2000
"""Series (label sets; a histogram's buckets count as one) ``/metrics`` holds at most."""
ENV_MAX_SERIES: Final = "STAGEFLOW_OTEL_METRICS_MAX_SERIES"
"""The variable ``/metrics``'s ``max_series`` is read from."""
DEFAULT_PROMETHEUS_PORT: Final = 9464
"""The port ``/metrics`` is served on by default (``OTEL_EXPORTER_PROMETHEUS_PORT``)."""

SDK_VARIABLES: Final = frozenset(
    {
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_METRIC_EXPORT_INTERVAL",
        "OTEL_METRIC_EXPORT_TIMEOUT",
    }
)
"""Variables of ``semconv.ENVIRONMENT`` that the SDK reads itself, from ``os.environ``."""
RUN_VARIABLES: Final = frozenset({"TRACEPARENT", "TRACESTATE"})
"""Variables ``TracingInterceptor`` reads at each run (the W3C parent of a run without one)."""

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_UNSET = "unset"
_PROTOCOLS: tuple[Protocol, ...] = ("grpc", "http/protobuf")
_EXPORTER_VARIABLES: Final[Mapping[Signal, str]] = {
    "traces": "OTEL_TRACES_EXPORTER",
    "metrics": semconv.ENV_METRICS_EXPORTER,
    "logs": "OTEL_LOGS_EXPORTER",
}

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SignalSettings:
    """How one signal is exported.

    Attributes:
        signal: ``traces``, ``metrics`` or ``logs``.
        exporters: the exporters to build, in the order named (``otlp``, ``console``, and for metrics
            ``prometheus``, the in-process ``/metrics``); ``none`` and unknown names left out.
        endpoint: the OTLP endpoint, as configured (the per-signal variable as is; the base endpoint
            with ``/v1/{signal}`` added over HTTP); ``None`` when neither is set.
        protocol: ``grpc`` or ``http/protobuf``.
    """

    signal: Signal
    exporters: tuple[str, ...]
    endpoint: str | None
    protocol: Protocol

    @property
    def otlp_endpoint(self) -> str:
        """The endpoint an OTLP exporter sends to: ``endpoint``, else the protocol's local default."""
        if self.endpoint is not None:
            return self.endpoint
        if self.protocol == "grpc":
            return "http://localhost:4317"
        return f"http://localhost:4318/v1/{self.signal}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything stageflow_otel reads from the environment, read once (see the module docstring).

    Attributes:
        sdk_disabled: ``OTEL_SDK_DISABLED``: no-op providers, nothing exported.
        traces: ``OTEL_TRACES_EXPORTER`` and the OTLP endpoint and protocol of traces.
        metrics: ``OTEL_METRICS_EXPORTER`` and the OTLP endpoint and protocol of metrics.
        logs: ``OTEL_LOGS_EXPORTER`` and the OTLP endpoint and protocol of logs (events).
        span_queue: ``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``,
            ``OTEL_BSP_SCHEDULE_DELAY`` (``wait`` is set by ``setup()`` from the mode).
        log_queue: the same for log records, ``OTEL_BLRP_*``.
        link_limit: ``OTEL_SPAN_LINK_COUNT_LIMIT``.
        span_length_limit: characters kept of span strings (``None``: unlimited);
            ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``, else ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``.
        log_record_length_limit: the same for log records (``OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT``).
        mode: ``STAGEFLOW_OTEL_MODE``.
        complete_timeout: ``STAGEFLOW_OTEL_COMPLETE_TIMEOUT``, seconds.
        event_log_records: ``STAGEFLOW_EVENT_LOG_RECORDS``.
        max_export_bytes: ``STAGEFLOW_OTEL_MAX_EXPORT_BYTES``.
        loop_monitor: ``STAGEFLOW_LOOP_MONITOR``.
        worker_flush_timeout: ``STAGEFLOW_OTEL_WORKER_FLUSH_TIMEOUT``, seconds.
        prometheus_host: ``OTEL_EXPORTER_PROMETHEUS_HOST``.
        prometheus_port: ``OTEL_EXPORTER_PROMETHEUS_PORT``.
        max_series: ``STAGEFLOW_OTEL_METRICS_MAX_SERIES``.
        environment: the non-blank values of every variable of ``semconv.ENVIRONMENT`` that was read,
            sorted by name (what a worker process is configured from).
    """

    sdk_disabled: bool = False
    traces: SignalSettings = SignalSettings("traces", (), None, "http/protobuf")
    metrics: SignalSettings = SignalSettings("metrics", ("prometheus",), None, "http/protobuf")
    logs: SignalSettings = SignalSettings("logs", (), None, "http/protobuf")
    span_queue: BatchSettings = SPAN_QUEUE
    log_queue: BatchSettings = LOG_QUEUE
    link_limit: int = semconv.DEFAULT_LINK_LIMIT
    span_length_limit: int | None = semconv.DEFAULT_VALUE_LENGTH_LIMIT
    log_record_length_limit: int | None = semconv.DEFAULT_VALUE_LENGTH_LIMIT
    mode: Mode = "bounded"
    complete_timeout: float = DEFAULT_COMPLETE_TIMEOUT
    event_log_records: bool = False
    max_export_bytes: int = DEFAULT_MAX_BYTES
    loop_monitor: bool = True
    worker_flush_timeout: float = DEFAULT_FLUSH_TIMEOUT
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = DEFAULT_PROMETHEUS_PORT
    max_series: int = DEFAULT_MAX_SERIES
    environment: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable from ``environ`` (default ``os.environ``).

        With ``OTEL_SDK_DISABLED`` true nothing else is read: every other field keeps its default.

        Raises:
            ValueError: an export batch size is larger than its queue (``OTEL_BSP_*``, ``OTEL_BLRP_*``),
                or ``STAGEFLOW_OTEL_METRICS_MAX_SERIES`` is not a whole number of at least 1.
        """
        env = os.environ if environ is None else environ
        if _flag(env, "OTEL_SDK_DISABLED", False):
            return cls(sdk_disabled=True)  # nothing else is used, so nothing else can be wrong
        # the variables several settings fall back on: read (and a bad value logged) once
        protocol = _protocol(env, "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
        length_limit = _length(env, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", semconv.DEFAULT_VALUE_LENGTH_LIMIT)
        return cls(
            sdk_disabled=False,
            traces=_signal(env, "traces", protocol),
            metrics=_signal(env, "metrics", protocol),
            logs=_signal(env, "logs", protocol),
            span_queue=_queue(env, "BSP", SPAN_QUEUE),
            log_queue=_queue(env, "BLRP", LOG_QUEUE),
            link_limit=_positive_int(env, "OTEL_SPAN_LINK_COUNT_LIMIT", semconv.DEFAULT_LINK_LIMIT),
            span_length_limit=_length_limit(env, "span", length_limit),
            log_record_length_limit=_length_limit(env, "logrecord", length_limit),
            mode=_mode(env),
            complete_timeout=_seconds(env, semconv.ENV_COMPLETE_TIMEOUT, DEFAULT_COMPLETE_TIMEOUT),
            event_log_records=event_log_records(env),
            max_export_bytes=_positive_int(env, semconv.ENV_MAX_EXPORT_BYTES, DEFAULT_MAX_BYTES),
            loop_monitor=_flag(env, semconv.ENV_LOOP_MONITOR, True),
            worker_flush_timeout=_seconds(env, semconv.ENV_WORKER_FLUSH_TIMEOUT, DEFAULT_FLUSH_TIMEOUT),
            prometheus_host=_text(env, semconv.ENV_PROMETHEUS_HOST) or "127.0.0.1",
            prometheus_port=_port(env),
            max_series=max_series(env),
            environment=tuple(
                sorted(
                    (variable.name, env[variable.name])
                    for variable in semconv.ENVIRONMENT
                    if variable.name not in SDK_VARIABLES | RUN_VARIABLES and _text(env, variable.name)
                )
            ),
        )

    def signal(self, signal: Signal) -> SignalSettings:
        """The settings of ``signal``."""
        return self.traces if signal == "traces" else self.metrics if signal == "metrics" else self.logs

    @property
    def event_length_limit(self) -> int | None:
        """The length limit of event views: the smaller of the span and log record limits."""
        return _smaller(self.span_length_limit, self.log_record_length_limit)


# --------------------------------------------------------------------------- one reader per kind of value


def _text(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _warn(name: str, raw: str, expected: str, default: object) -> None:
    logger.warning("stageflow_otel: %s=%r is not %s; using %s", name, raw, expected, default)


def _parsed(
    env: Mapping[str, str],
    name: str,
    default: _T,
    parse: Callable[[str], _T | None],
    expected: str,
    shown: str,
) -> _T:
    """``parse`` of the variable's value; its default when unset or when ``parse`` gives ``None`` (logged)."""
    raw = _text(env, name)
    if not raw:
        return default
    value = parse(raw)
    if value is None:
        _warn(name, raw, expected, shown)
        return default
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    def parse(raw: str) -> bool | None:
        lowered = raw.lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else None

    return _parsed(env, name, default, parse, "true or false", str(default).lower())


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int | None]:
    def parse(raw: str) -> int | None:
        try:
            value = int(raw)
        except ValueError:
            return None
        return value if value >= minimum and (maximum is None or value <= maximum) else None

    return parse


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _parsed(env, name, default, _int_at_least(1), "a positive integer", str(default))


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    def parse(raw: str) -> float | None:
        try:
            value = float(raw)
        except ValueError:
            return None
        return value if value >= 0.0 and value != float("inf") else None

    return _parsed(env, name, default, parse, "a number of seconds", f"{default:g}")


def _port(env: Mapping[str, str]) -> int:
    name = semconv.ENV_PROMETHEUS_PORT
    default = DEFAULT_PROMETHEUS_PORT
    return _parsed(env, name, default, _int_at_least(0, 65535), "a port (0 to 65535)", str(default))


def _mode(env: Mapping[str, str]) -> Mode:
    raw = _text(env, semconv.ENV_MODE).lower()
    if raw in ("", "bounded"):
        return "bounded"
    if raw == "complete":
        return "complete"
    logger.warning("stageflow_otel: %s=%r unknown; using 'bounded'", semconv.ENV_MODE, raw)
    return "bounded"


def event_log_records(env: Mapping[str, str]) -> bool:
    """``STAGEFLOW_EVENT_LOG_RECORDS`` (default ``False``)."""
    return _flag(env, semconv.ENV_EVENT_LOG_RECORDS, False)


def max_series(env: Mapping[str, str]) -> int:
    """``STAGEFLOW_OTEL_METRICS_MAX_SERIES`` (default ``DEFAULT_MAX_SERIES``).

    Raises:
        ValueError: the value is not a whole number of at least 1.
    """
    raw = _text(env, ENV_MAX_SERIES)
    if not raw:
        return DEFAULT_MAX_SERIES
    value = _int_at_least(1)(raw)
    if value is None:
        msg = f"{ENV_MAX_SERIES}={raw!r}: the most series /metrics holds must be a whole number of at least 1"
        raise ValueError(msg)
    return value


def value_length_limit(signal: Literal["span", "logrecord"], env: Mapping[str, str]) -> int | None:
    """The string length limit for ``signal`` (``None``: unlimited, by ``unset``).

    ``OTEL_{SPAN,LOGRECORD}_ATTRIBUTE_VALUE_LENGTH_LIMIT`` wins over ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``;
    without either the limit is ``semconv.DEFAULT_VALUE_LENGTH_LIMIT``. A value that is not a
    non-negative integer (or ``unset``) is logged and ignored.
    """
    general = _length(env, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", semconv.DEFAULT_VALUE_LENGTH_LIMIT)
    return _length_limit(env, signal, general)


def _length_limit(
    env: Mapping[str, str], signal: Literal["span", "logrecord"], general: int | None
) -> int | None:
    return _length(env, f"OTEL_{signal.upper()}_ATTRIBUTE_VALUE_LENGTH_LIMIT", general)


def _length(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    """A length limit: a non-negative integer, ``unset`` (``None``: unlimited), else ``default``."""
    raw = _text(env, name)
    if not raw:
        return default
    if raw.lower() == _UNSET:
        return None
    value = _int_at_least(0)(raw)
    if value is None:
        logger.warning("stageflow_otel: %s=%r is not a non-negative integer or 'unset'; ignored", name, raw)
        return default
    return value


def event_length_limit(env: Mapping[str, str]) -> int | None:
    """The length limit of event views: the smaller of the span and log record limits."""
    return _smaller(value_length_limit("span", env), value_length_limit("logrecord", env))


def _smaller(*limits: int | None) -> int | None:
    """The smallest of ``limits``, ``None`` (unlimited) counting as the largest."""
    known = [n for n in limits if n is not None]
    return min(known) if known else None


def _protocol(env: Mapping[str, str], name: str) -> Protocol | None:
    """The protocol ``name`` says, ``None`` when unset or unusable (logged)."""
    raw = _text(env, name)
    if not raw:
        return None
    lowered = raw.lower()
    for protocol in _PROTOCOLS:
        if lowered == protocol:
            return protocol
    logger.warning(
        "stageflow_otel: %s=%r is not 'grpc' or 'http/protobuf'; ignored (OTLP over http/protobuf "
        "unless another variable says otherwise)",
        name,
        raw,
    )
    return None


def _endpoint(env: Mapping[str, str], signal: Signal, protocol: Protocol) -> str | None:
    specific = _text(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if specific:
        return specific
    base = _text(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return None
    if protocol == "grpc":
        return base
    return f"{base.rstrip('/')}/v1/{signal}"


def _exporters(env: Mapping[str, str], signal: Signal, has_endpoint: bool) -> tuple[str, ...]:
    variable = _EXPORTER_VARIABLES[signal]
    raw = _text(env, variable)
    if not raw:
        if has_endpoint:
            return ("otlp",)
        return ("prometheus",) if signal == "metrics" else ()
    allowed = ("otlp", "console", *(("prometheus",) if signal == "metrics" else ()), "none")
    names: list[str] = []
    for name in (n.strip().lower() for n in raw.split(",") if n.strip()):
        if name in allowed:
            names.append(name)
        else:
            logger.warning(
                "stageflow_otel: %s=%r: unknown exporter %r ignored (known: %s)",
                variable,
                raw,
                name,
                ", ".join(allowed),
            )
    return tuple(n for n in dict.fromkeys(names) if n != "none")


def _signal(env: Mapping[str, str], signal: Signal, general: Protocol) -> SignalSettings:
    protocol = _protocol(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL") or general
    endpoint = _endpoint(env, signal, protocol)
    return SignalSettings(signal, _exporters(env, signal, endpoint is not None), endpoint, protocol)


def _queue(env: Mapping[str, str], prefix: str, defaults: BatchSettings) -> BatchSettings:
    """``defaults`` overridden by ``OTEL_{prefix}_MAX_QUEUE_SIZE|MAX_EXPORT_BATCH_SIZE|SCHEDULE_DELAY``."""
    queue_name, batch_name = f"OTEL_{prefix}_MAX_QUEUE_SIZE", f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE"
    batch = _positive_int(env, batch_name, defaults.batch_size)
    capacity = _positive_int(env, queue_name, defaults.capacity)
    if batch > capacity:
        # The SDK's batch processors refuse this too: a batch could never fill, so items would wait
        # for the schedule delay while the queue overflows.
        default = {name: "" if _text(env, name) else " (the default)" for name in (batch_name, queue_name)}
        msg = (
            f"{batch_name}={batch}{default[batch_name]} is larger than {queue_name}={capacity}"
            f"{default[queue_name]}: an export batch must fit in the queue; "
            f"set {batch_name} to at most {capacity} or {queue_name} to at least {batch}"
        )
        raise ValueError(msg)
    delay = _positive_int(env, f"OTEL_{prefix}_SCHEDULE_DELAY", int(defaults.delay_millis))
    return BatchSettings(capacity=capacity, batch_size=batch, delay_millis=delay)
