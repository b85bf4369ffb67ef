"""Retry policies: how often and how long to wait before running a stage again."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ._errors import (
    CircuitOpenError,
    InterceptorFailedError,
    InvalidStageOutputError,
    RetriesExhaustedError,
    StageBlockedError,
)

__all__ = ("RetryPolicy",)

_NEVER_RETRIED = (
    StageBlockedError,
    CircuitOpenError,
    InterceptorFailedError,
    InvalidStageOutputError,
    RetriesExhaustedError,
)


def _is_error_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Run a stage up to ``max_attempts`` times, with exponential backoff and jitter between attempts.

    A stage is retried when it returns ``StageOutput.retry(...)``, or raises an exception that
    ``retry_on`` accepts (an exception class, a tuple of them, or a predicate). Interceptor refusals and
    failures (``StageBlockedError``, ``CircuitOpenError``, ``InterceptorFailedError``),
    ``InvalidStageOutputError`` and an inner retry loop's ``RetriesExhaustedError`` are never retried.

    The delay before attempt ``n + 1`` is ``min(max_delay, initial_delay * multiplier ** (n - 1))``,
    scaled by a random factor in ``[1 - jitter, 1 + jitter]``.

    Args:
        max_attempts: attempts in all, including the first (>= 1).
        initial_delay: seconds before the second attempt.
        multiplier: growth of the delay per attempt (>= 1).
        max_delay: upper bound of the delay.
        jitter: relative spread of the delay, in ``[0, 1]``.
        retry_on: exception types (one class or a tuple), or a predicate, that are retried; ``()``
            retries only ``StageOutput.retry``. A single class is kept as a one-element tuple.
        sleep: the coroutine used to wait (tests pass a fake).
        random: the source of jitter, returning floats in ``[0, 1)``.
    """

    max_attempts: int = 3
    initial_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 10.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] | type[BaseException] | Callable[[BaseException], bool] = (
        Exception,
    )
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False)
    random: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            problems.append(f"max_attempts={self.max_attempts!r} (use an int >= 1)")
        if self.initial_delay < 0:
            problems.append(f"initial_delay={self.initial_delay!r} (use a delay >= 0)")
        if self.multiplier < 1:
            problems.append(f"multiplier={self.multiplier!r} (use a multiplier >= 1)")
        if self.max_delay < 0:
            problems.append(f"max_delay={self.max_delay!r} (use a delay >= 0)")
        if not 0 <= self.jitter <= 1:
            problems.append(f"jitter={self.jitter!r} (use a fraction in [0, 1])")
        retry_on = self.retry_on
        if _is_error_class(retry_on):
            # an exception class is callable too: without this it would be taken as a predicate
            object.__setattr__(self, "retry_on", (retry_on,))
        elif isinstance(retry_on, tuple):
            bad = [t for t in retry_on if not _is_error_class(t)]
            if bad:
                problems.append(
                    f"retry_on={retry_on!r} (a tuple of exception classes; {bad[0]!r} is not one)"
                )
        elif not callable(retry_on):
            problems.append(
                f"retry_on={retry_on!r} (use an exception class, a tuple of them, or a predicate)"
            )
        if problems:
            msg = "invalid RetryPolicy: " + "; ".join(problems)
            raise ValueError(msg)

    def should_retry(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt."""
        if isinstance(error, _NEVER_RETRIED):
            return False
        retry_on = self.retry_on
        if isinstance(retry_on, tuple):
            return isinstance(error, retry_on)
        return bool(retry_on(error))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        if not self.initial_delay or not self.max_delay:
            return 0.0
        try:
            grown = self.initial_delay * self.multiplier ** (attempt - 1)
        except OverflowError:  # the growth left float range long after it passed max_delay
            grown = self.max_delay
        base = min(self.max_delay, grown)
        if self.jitter:
            base *= 1 + self.jitter * (2 * self.random() - 1)
        return max(0.0, base)
