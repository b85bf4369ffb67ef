"""The one attempt loop: every way of retrying a stage runs its attempts here.

``with_stage(retry=)`` (the executor), ``RetryInterceptor`` and ``BaseInterceptor``'s
``ErrorAction.RETRY`` all call ``run_attempts``, so whichever of them retried, ``ctx.attempt`` counts the
attempts, every retry emits one ``stage.{name}.retrying`` event with the same fields, and running out of
attempts fails the stage with ``RetriesExhaustedError`` ("... after N attempts"). A streaming stage is
retried only while it has delivered no chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import InvalidStageOutputError, RetriesExhaustedError, describe, error_type_name
from ._reporting import STAGE_RETRYING, stage_event_type
from ._types import StageOutput, StageStatus

if TYPE_CHECKING:
    from ._context import StageContext
    from ._dag import StageInfo
    from ._retry import RetryPolicy

__all__ = ("RetryAttempt", "run_attempts")

logger = logging.getLogger("stageflow")

_RETRY = StageStatus.RETRY

Decide = Callable[[Exception], Awaitable["bool | StageOutput"]]
"""After an attempt raised: retry (``True``), let the error stand (``False``), or finish with an output."""


@dataclass(frozen=True, slots=True)
class RetryAttempt:
    """One failed attempt that is about to be retried (what ``RetryInterceptor`` listeners receive)."""

    stage: str
    pipeline: str
    attempt: int
    """The attempt that failed (1-based)."""
    error: str
    """The error message: the exception's ``str()``, or the ``StageOutput.retry`` message."""
    delay: float
    """Seconds before the next attempt."""
    error_type: str | None = None
    """The exception's type name (``error_type_name``), ``None`` for ``StageOutput.retry``."""


async def run_attempts(
    stage: StageInfo,
    ctx: StageContext,
    call: Callable[[StageContext], Awaitable[StageOutput]],
    policy: RetryPolicy,
    *,
    decide: Decide | None = None,
    retry_outputs: bool = True,
    listeners: Sequence[Callable[[RetryAttempt], object]] = (),
) -> StageOutput:
    """Call ``call(ctx)`` until an attempt neither raises a retryable error nor returns ``StageOutput.retry``.

    Args:
        stage: the stage being attempted.
        ctx: its context; ``ctx.attempt`` is advanced before every new attempt.
        call: one attempt.
        policy: attempts in all and the backoff between them; ``policy.should_retry`` decides which
            exceptions are retried unless ``decide`` is given.
        decide: decides instead of ``policy.should_retry`` (``BaseInterceptor.on_error``).
        retry_outputs: whether ``StageOutput.retry`` is retried here (otherwise it is returned as is).
        listeners: callables receiving every ``RetryAttempt`` (their exceptions are logged).

    Raises:
        RetriesExhaustedError: the last allowed attempt failed in a retryable way (raised, or asked to
            retry); a raised error is its ``__cause__`` and ``last_error``.
        Exception: an attempt's error that is not retried passes through unchanged.
    """
    first = ctx.attempt
    while True:
        try:
            output = await call(ctx)
        except Exception as exc:
            stream = ctx._stream
            if stream is not None and stream.chunks:
                raise  # a stream that delivered chunks is never retried: its consumers already read them
            verdict = policy.should_retry(exc) if decide is None else await decide(exc)
            if verdict is False:
                raise
            if verdict is not True:
                return verdict  # the fallback output
            tried = ctx.attempt - first + 1
            if tried >= policy.max_attempts:
                raise RetriesExhaustedError(stage.name, tried, describe(exc), error=exc) from exc
            await _retrying(stage, ctx, policy, describe(exc), error_type_name(exc), listeners)
            continue
        if type(output) is not StageOutput and not isinstance(output, StageOutput):
            raise InvalidStageOutputError(stage.name, output)  # never retried
        if not retry_outputs or output.status is not _RETRY:
            return output
        tried = ctx.attempt - first + 1
        if tried >= policy.max_attempts:
            raise RetriesExhaustedError(stage.name, tried, output.error)
        await _retrying(stage, ctx, policy, output.error or "", None, listeners)


async def _retrying(
    stage: StageInfo,
    ctx: StageContext,
    policy: RetryPolicy,
    error: str,
    error_type: str | None,
    listeners: Sequence[Callable[[RetryAttempt], object]],
) -> None:
    """Report the failed attempt, wait out the backoff and advance ``ctx.attempt``."""
    delay = policy.delay(ctx.attempt)
    if listeners:
        attempt = RetryAttempt(stage.name, stage.pipeline, ctx.attempt, error, delay, error_type)
        for listener in listeners:
            try:
                listener(attempt)
            except Exception as exc:  # a listener never affects the stage
                logger.error("stageflow: retry listener %r failed: %r", listener, exc)
    run = ctx.pipeline
    reporter = None if run is None else run._run_reporter()
    if reporter is not None and reporter.sink is not None:
        data = {
            "stage": stage.name,
            "kind": stage.kind.value,
            "attempt": ctx.attempt,
            "delay": delay,
            "error": error,
        }
        if error_type is not None:
            data["error_type"] = error_type
        reporter.event(stage_event_type(stage.name, STAGE_RETRYING), data)
    await policy.sleep(delay)
    ctx.attempt += 1
