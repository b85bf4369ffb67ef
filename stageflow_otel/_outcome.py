"""How a stage or a run ended, in the ``stageflow.*.result`` / ``error.type`` vocabulary of ``semconv``.

Read from the core's outcome (``stageflow.error_category``, ``PipelineRunError.category``,
``error_type_name``), never re-derived: shared by the tracing, metrics and logging interceptors so the three
signals agree with each other and with the core's events. Also holds the
"is a real SDK configured?" test the fast paths use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeAlias

from stageflow import (
    PipelineCancelledError,
    PipelineContext,
    PipelineFailedError,
    PipelineRunError,
    RunResult,
    StageContext,
    StageFailedError,
    StageOutput,
    StageResult,
    StageStatus,
    error_category,
    error_type_name,
)
from stageflow.interceptors import CallNext, RunNext

from . import semconv

__all__ = (
    "Outcome",
    "RunEnd",
    "StageEnd",
    "is_api_only",
    "observe_run",
    "observe_stage",
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
    """The outcome of a stage (or run) that raised ``exc``: the core's category (``error_category``) and
    the core's name for the error (``error_type_name``), so every signal agrees with the core's events."""
    if isinstance(exc, asyncio.CancelledError):
        return CANCELLED
    return Outcome(error_category(exc).value, error_type_name(exc) or semconv.OTHER, str(exc))


def outcome_of_run_error(exc: BaseException) -> Outcome:
    """The outcome of a run that raised ``exc``: its ``category`` (a failed run's is its first failing
    stage's), with that stage's error type."""
    if isinstance(exc, PipelineFailedError):
        return Outcome(exc.category.value, outcome_of_error(exc.error).error_type, str(exc))
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


StageEnd: TypeAlias = Callable[["Outcome | None", "Exception | None", "StageOutput | None"], None]
"""Told how a stage attempt ended: its outcome (``None`` when it returned something else than a
``StageOutput``, which the core reports), the exception it raised, the output it returned."""

RunEnd: TypeAlias = Callable[[Outcome, "RunResult | None"], None]
"""Told how a run ended: its outcome and its (possibly partial) results."""


async def observe_stage(
    ctx: StageContext, call_next: CallNext, ended: StageEnd, failed: Callable[[Exception], None]
) -> StageOutput:
    """Await ``call_next(ctx)`` and tell ``ended`` how the attempt ended; the one scaffold around span work.

    ``ended`` runs exactly once, whatever happened (a return, an exception, a cancellation, a
    ``KeyboardInterrupt``); an exception it raises goes to ``failed`` and never replaces the stage's
    output, error or cancellation.
    """
    try:
        output = await call_next(ctx)
    except Exception as exc:
        _tell(ended, failed, outcome_of_error(exc), exc, None)
        raise
    except BaseException as exc:  # a cancellation, or KeyboardInterrupt / SystemExit: an end all the same
        _tell(ended, failed, outcome_of_error(exc), None, None)
        raise
    if isinstance(output, StageOutput):
        _tell(ended, failed, outcome_of_output(output), None, output)
    else:  # not a StageOutput: the core reports it; nothing to classify here
        _tell(ended, failed, None, None, None)
    return output


async def observe_run(
    run: PipelineContext, call_next: RunNext, ended: RunEnd, failed: Callable[[Exception], None]
) -> RunResult:
    """Await ``call_next(run)`` and tell ``ended`` how the run ended (the run's twin of ``observe_stage``)."""
    try:
        result = await call_next(run)
    except Exception as exc:
        _tell(ended, failed, outcome_of_run_error(exc), run_results(exc))
        raise
    except BaseException as exc:  # a cancellation, or KeyboardInterrupt / SystemExit: an end all the same
        _tell(ended, failed, outcome_of_error(exc), None)
        raise
    _tell(ended, failed, SUCCESS, result if isinstance(result, RunResult) else None)
    return result


def _tell(ended: Callable[..., None], failed: Callable[[Exception], None], *args: object) -> None:
    try:
        ended(*args)
    except Exception as exc:  # C9: telemetry never changes an outcome
        failed(exc)
