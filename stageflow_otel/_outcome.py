"""How a stage or a run ended, in the ``stageflow.*.result`` / ``error.type`` vocabulary of ``semconv``.

Shared by the tracing, metrics and logging interceptors so the three signals always agree. Also holds the
"is a real SDK configured?" test the fast paths use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import NamedTuple

from stageflow import (
    CircuitOpenError,
    PipelineCancelledError,
    PipelineFailedError,
    PipelineRunError,
    RetriesExhaustedError,
    RunResult,
    StageFailedError,
    StageOutput,
    StageResult,
    StageStatus,
    StageTimeoutError,
    error_type_name,
)

from . import semconv

__all__ = (
    "Outcome",
    "is_api_only",
    "outcome_of_error",
    "outcome_of_output",
    "outcome_of_run_error",
    "run_results",
)


class Outcome(NamedTuple):
    """A result value, the ``error.type`` (``None`` unless it failed) and a status description."""

    result: str
    error_type: str | None = None
    description: str | None = None


SUCCESS = Outcome(semconv.RESULT_SUCCESS)
SKIP = Outcome(semconv.RESULT_SKIP)
CANCELLATION = Outcome(semconv.RESULT_CANCELLATION)
CANCELLED = Outcome(semconv.RESULT_CANCELLATION, semconv.ERROR_TYPE_CANCELLED, "cancelled")

_FAILED_TYPE = StageFailedError.__name__


def outcome_of_output(output: StageOutput) -> Outcome:
    """The outcome of a stage attempt that returned ``output``.

    ``StageOutput.fail`` is a failure even though the executor only raises ``StageFailedError`` after the
    interceptor chain returned, so its ``error.type`` is that class's name.
    """
    status = output.status
    if status is StageStatus.OK:
        return SUCCESS
    if status is StageStatus.SKIP:
        return SKIP
    if status is StageStatus.FAIL:
        return Outcome(semconv.RESULT_FAILURE, _FAILED_TYPE, output.error)
    if status is StageStatus.RETRY:
        return Outcome(semconv.RESULT_FAILURE, semconv.ERROR_TYPE_RETRY_REQUESTED, output.error)
    return CANCELLATION


def outcome_of_error(exc: BaseException) -> Outcome:
    """The outcome of a stage (or run) that raised ``exc``."""
    if isinstance(exc, asyncio.CancelledError):
        return CANCELLED
    if isinstance(exc, StageTimeoutError):
        return Outcome(semconv.RESULT_TIMEOUT, semconv.ERROR_TYPE_TIMEOUT, str(exc))
    if isinstance(exc, CircuitOpenError):
        return Outcome(semconv.RESULT_ERROR, semconv.ERROR_TYPE_CIRCUIT_OPEN, str(exc))
    if isinstance(exc, StageFailedError | RetriesExhaustedError):
        return Outcome(semconv.RESULT_FAILURE, error_type_name(exc), str(exc))
    # the core's derivation, also in its stage events' ``error_type``: spans, metrics, logs and span
    # events built from events all name a nested ``Client.QuotaError`` the same way
    return Outcome(semconv.RESULT_ERROR, error_type_name(exc) or semconv.OTHER, str(exc))


def outcome_of_run_error(exc: BaseException) -> Outcome:
    """The outcome of a run that raised ``exc``: a failed run takes its first failing stage's outcome."""
    if isinstance(exc, PipelineFailedError):
        inner = outcome_of_error(exc.error)
        return Outcome(inner.result, inner.error_type, str(exc))
    if isinstance(exc, PipelineCancelledError):
        return CANCELLATION
    return outcome_of_error(exc)


def run_results(exc: BaseException) -> RunResult | None:
    """The partial ``RunResult`` a run error carries, if any."""
    if isinstance(exc, PipelineRunError):
        results: Mapping[str, StageResult] = exc.results
        if isinstance(results, RunResult):
            return results
    return None


def is_api_only(provider: object) -> bool:
    """Whether ``provider`` is one of the API's no-op or proxy providers (no SDK behind it)."""
    module = type(provider).__module__
    return module.startswith(("opentelemetry.trace", "opentelemetry.metrics", "opentelemetry._logs"))
