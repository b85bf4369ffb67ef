"""Interceptors: middleware around every stage (and every run).

Example::

    from stageflow.interceptors import BaseInterceptor, InterceptorResult

    class AuthInterceptor(BaseInterceptor):
        name = "auth"
        priority = 5

        async def before(self, stage_name, ctx):
            if not ctx.data.get("authenticated"):
                return InterceptorResult(stage_ran=False, error="Not authenticated")
            return None

``TracingInterceptor``, ``MetricsInterceptor`` and ``LoggingInterceptor`` come from ``stageflow_otel``
(``pip install 'stageflow-core[otel]'``) and are imported from it on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from stageflow._dag import StageInfo
from stageflow._interceptors import (
    BaseInterceptor,
    CallNext,
    ErrorAction,
    Interceptor,
    InterceptorResult,
    RunNext,
)
from stageflow.interceptors._builtins import (
    CircuitBreakerInterceptor,
    CircuitState,
    CircuitStateChange,
    RetryAttempt,
    RetryInterceptor,
    TimeoutInterceptor,
    get_default_interceptors,
)

__all__ = (
    "BaseInterceptor",
    "CallNext",
    "CircuitBreakerInterceptor",
    "CircuitState",
    "CircuitStateChange",
    "ErrorAction",
    "Interceptor",
    "InterceptorResult",
    "RetryAttempt",
    "RetryInterceptor",
    "RunNext",
    "StageInfo",
    "TimeoutInterceptor",
    "get_default_interceptors",
)

_OTEL_NAMES = ("LoggingInterceptor", "MetricsInterceptor", "TracingInterceptor")


def __getattr__(name: str) -> Any:
    if name in _OTEL_NAMES:
        try:
            module = importlib.import_module("stageflow_otel")
        except ImportError as exc:
            msg = (
                f"{name} lives in the OpenTelemetry companion package; install it with "
                f"pip install 'stageflow-core[otel]' ({exc})"
            )
            raise ImportError(msg, name=name) from exc
        value = getattr(module, name)
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
