"""stageflow_otel: OpenTelemetry traces, metrics and events for stageflow pipelines."""

from __future__ import annotations

from . import _extra  # noqa: F401 - first: without the otel extra, fail with the install command
from ._content import ErrorDetails as ErrorDetails
from ._content import ErrorRedactor as ErrorRedactor
from ._content import error_type_only as error_type_only
from ._content import redact_error_message as redact_error_message
from ._content import redact_error_message_and_pii as redact_error_message_and_pii
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
from ._store import RunStoreMetrics as RunStoreMetrics
from ._tracing import ContentHook as ContentHook
from ._tracing import TracingInterceptor as TracingInterceptor
from ._tracing import inject_context as inject_context

__all__ = (
    "ContentHook",
    "ErrorDetails",
    "ErrorRedactor",
    "LoggingInterceptor",
    "MetricsInterceptor",
    "MetricsServer",
    "OtlpEventSink",
    "PrometheusBridge",
    "PrometheusMetricReader",
    "RunStoreMetrics",
    "Telemetry",
    "TracingInterceptor",
    "add_trace_context",
    "error_type_only",
    "inject_context",
    "redact_error_message",
    "redact_error_message_and_pii",
    "setup",
    "start_metrics_server",
)
