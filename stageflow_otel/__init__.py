"""stageflow_otel: OpenTelemetry traces, metrics and events for stageflow pipelines."""

from __future__ import annotations

from ._logging import LoggingInterceptor as LoggingInterceptor
from ._logging import add_trace_context as add_trace_context
from ._metrics import MetricsInterceptor as MetricsInterceptor
from ._sink import OtlpEventSink as OtlpEventSink
from ._tracing import ContentHook as ContentHook
from ._tracing import TracingInterceptor as TracingInterceptor
from ._tracing import inject_context as inject_context

__all__ = (
    "ContentHook",
    "LoggingInterceptor",
    "MetricsInterceptor",
    "OtlpEventSink",
    "TracingInterceptor",
    "add_trace_context",
    "inject_context",
)
