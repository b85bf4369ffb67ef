"""stageflow_otel: OpenTelemetry traces, metrics and events for stageflow pipelines."""

from __future__ import annotations

from ._logging import LoggingInterceptor as LoggingInterceptor
from ._logging import add_trace_context as add_trace_context
from ._metrics import MetricsInterceptor as MetricsInterceptor
from ._prometheus import MetricsServer as MetricsServer
from ._prometheus import PrometheusBridge as PrometheusBridge
from ._prometheus import PrometheusMetricReader as PrometheusMetricReader
from ._prometheus import start_metrics_server as start_metrics_server
from ._setup import Telemetry as Telemetry
from ._setup import setup as setup
from ._sink import OtlpEventSink as OtlpEventSink
from ._tracing import ContentHook as ContentHook
from ._tracing import TracingInterceptor as TracingInterceptor
from ._tracing import inject_context as inject_context

__all__ = (
    "ContentHook",
    "LoggingInterceptor",
    "MetricsInterceptor",
    "MetricsServer",
    "OtlpEventSink",
    "PrometheusBridge",
    "PrometheusMetricReader",
    "Telemetry",
    "TracingInterceptor",
    "add_trace_context",
    "inject_context",
    "setup",
    "start_metrics_server",
)
