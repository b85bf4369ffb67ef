"""Retry policies: how often and how long to wait before running a stage again."""

from __future__ import annotations

import asyncio
import math
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

    Raises:
        TypeError: a field has the wrong type (``initial_delay="1"``); the message names every bad field
            and its value.
        ValueError: a field is out of range or not finite (``initial_delay=nan``, ``jitter=2``), likewise.
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
        problems: list[str] = []
        wrong_type = False
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            wrong_type = True
            problems.append(
                f"max_attempts={attempts!r} (a {type(attempts).__name__}, not an int; use an int >= 1)"
            )
        elif attempts < 1:
            problems.append(f"max_attempts={attempts!r} (use an int >= 1)")
        for name, low, high, fix in (
            ("initial_delay", 0.0, math.inf, "use a delay >= 0"),
            ("multiplier", 1.0, math.inf, "use a multiplier >= 1"),
            ("max_delay", 0.0, math.inf, "use a delay >= 0"),
            ("jitter", 0.0, 1.0, "use a fraction in [0, 1]"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                wrong_type = True
                problems.append(f"{name}={value!r} (a {type(value).__name__}, not a number; {fix})")
            elif not math.isfinite(value):
                problems.append(f"{name}={value!r} (not a finite number; {fix})")
            elif not low <= value <= high:
                problems.append(f"{name}={value!r} ({fix})")
        for name in ("sleep", "random"):
            if not callable(getattr(self, name)):
                wrong_type = True
                value = getattr(self, name)
                kind = (
                    "a coroutine function taking seconds"
                    if name == "sleep"
                    else "a function returning [0, 1)"
                )
                problems.append(f"{name}={value!r} (use {kind})")
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
            raise TypeError(msg) if wrong_type else ValueError(msg)

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
