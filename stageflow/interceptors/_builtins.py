"""The built-in core interceptors: timeouts, circuit breakers and retries.

Default priorities (lower = outer): ``RetryInterceptor`` 35, ``CircuitBreakerInterceptor`` 40,
``TimeoutInterceptor`` 50. So each retry attempt passes through the breaker (and counts toward it) and
gets its own timeout, and a call the open breaker refuses is never retried.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from stageflow._attempts import RetryAttempt, run_attempts
from stageflow._config import ConfigProvider, config_value
from stageflow._context import StageContext
from stageflow._dag import StageInfo
from stageflow._errors import CircuitOpenError, StageTimeoutError
from stageflow._interceptors import CallNext, Interceptor
from stageflow._retry import RetryPolicy
from stageflow._types import StageOutput, StageStatus

__all__ = (
    "CircuitBreakerInterceptor",
    "CircuitState",
    "CircuitStateChange",
    "RetryAttempt",
    "RetryInterceptor",
    "TimeoutInterceptor",
    "get_default_interceptors",
)

logger = logging.getLogger("stageflow")

_FROM_CONFIG: Any = object()


def _check_timeout(where: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or math.isnan(value):
        msg = f"{where} = {value!r} is not a valid timeout; use a number of seconds > 0, or None for none"
        raise ValueError(msg)
    return float(value)


class TimeoutInterceptor(Interceptor):
    """Fails a stage attempt that runs longer than its timeout with ``StageTimeoutError``.

    A stage's timeout is the first of: ``per_stage[name]``; ``timeout`` in the stage's ``config``;
    a ``timeout`` attribute of the stage object; ``timeout.<stage>`` from ``config``; ``default``
    (``timeout.default`` from ``config`` when ``default`` is not given). ``None`` means no timeout.
    The stage is cancelled at the deadline (it sees ``CancelledError``) and its error is a
    ``StageTimeoutError`` (a ``TimeoutError``), distinguishable from a ``TimeoutError`` the stage raises
    itself, which passes through unchanged.

    Args:
        default: seconds, or ``None`` for no default timeout (``DEFAULT_TIMEOUT_MS`` when not given).
        per_stage: timeouts by stage name (``None`` disables the timeout of that stage).
        config: a ``ConfigProvider`` for ``timeout.default`` and ``timeout.<stage>``.
    """

    name = "timeout"
    priority = 50
    enforces = frozenset({"timeout"})
    isolated = False  # never raises on its own: called without the isolation guard
    DEFAULT_TIMEOUT_MS: int = 30_000
    """The default timeout, in milliseconds, when neither ``default`` nor ``timeout.default`` is given
    (as in stageflow-core 0.9.1; a subclass may override it).

    .. versionadded:: 0.10
    """

    def __init__(
        self,
        default: float | None = _FROM_CONFIG,
        *,
        per_stage: Mapping[str, float | None] | None = None,
        config: ConfigProvider | None = None,
    ) -> None:
        if default is _FROM_CONFIG:
            default = config_value(config, "timeout.default", float, self.DEFAULT_TIMEOUT_MS / 1000)
        self.default = _check_timeout("TimeoutInterceptor default", default)
        self.per_stage = {
            name: _check_timeout(f"timeout of stage {name!r}", t) for name, t in (per_stage or {}).items()
        }
        self.config = config
        # By StageInfo identity (graphs of equal names may configure a stage differently), through a weak
        # reference: an entry never keeps its stage (or the stage's runner) alive, and goes with it.
        self._resolved: dict[int, tuple[weakref.ref[StageInfo], float | None]] = {}

    def timeout_for(self, stage: StageInfo) -> float | None:
        """The timeout that applies to ``stage`` (resolved once per stage, then cached while it lives)."""
        key = id(stage)
        entry = self._resolved.get(key)
        if entry is not None and entry[0]() is stage:
            return entry[1]
        value: float | None
        if stage.name in self.per_stage:
            value = self.per_stage[stage.name]
        elif "timeout" in stage.config:
            value = _check_timeout(f"config['timeout'] of stage {stage.name!r}", stage.config["timeout"])
        elif getattr(stage.runner, "timeout", None) is not None:
            value = _check_timeout(f"{type(stage.runner).__name__}.timeout", stage.runner.timeout)
        else:
            value = _check_timeout(
                f"timeout.{stage.name}",
                config_value(self.config, f"timeout.{stage.name}", float, self.default),
            )
        resolved = self._resolved
        resolved[key] = (weakref.ref(stage, lambda _: resolved.pop(key, None)), value)
        return value

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        """Run the attempt under its timeout."""
        timeout = self.timeout_for(stage)
        if timeout is None:
            return await call_next(ctx)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                output = await call_next(ctx)
        except TimeoutError as exc:
            if deadline.expired():
                raise StageTimeoutError(stage.name, timeout) from exc
            raise
        if deadline.expired():  # the stage swallowed the cancellation and returned: it still timed out
            raise StageTimeoutError(stage.name, timeout)
        return output


class CircuitState(IntEnum):
    """A breaker's state; the value is what the ``stageflow.circuit_breaker.state`` gauge reports."""

    CLOSED = 0
    """Calls pass; consecutive failures are counted."""
    HALF_OPEN = 1
    """One trial call passes; others are refused until it ends."""
    OPEN = 2
    """Calls are refused with ``CircuitOpenError`` until ``recovery_timeout`` passed."""


@dataclass(frozen=True, slots=True)
class CircuitStateChange:
    """One breaker transition, as reported to listeners."""

    stage: str
    pipeline: str
    old: CircuitState
    new: CircuitState
    at: float
    """The breaker clock's reading."""


class _Breaker:
    __slots__ = ("failures", "opened_at", "probing", "state")

    def __init__(self) -> None:
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False


class CircuitBreakerInterceptor(Interceptor):
    """A circuit breaker per stage (per pipeline name and stage name).

    CLOSED: calls pass; ``failure_threshold`` consecutive failures (exceptions, ``StageOutput.fail`` or
    ``StageOutput.retry``) open the breaker. OPEN: calls fail fast with ``CircuitOpenError`` until
    ``recovery_timeout`` seconds passed; then the next call is the one trial call (HALF_OPEN) while others
    are refused. The trial's success closes the breaker, its failure opens it again for another
    ``recovery_timeout``; a cancelled trial leaves it HALF_OPEN so the next call becomes the trial.

    Args:
        failure_threshold: consecutive failures that open the breaker (default from
            ``circuit_breaker.failure_threshold``, else 5).
        recovery_timeout: seconds before a trial call (default from ``circuit_breaker.recovery_timeout``,
            else 30).
        clock: a monotonic clock in seconds (tests inject a fake).
        listeners: callables receiving every ``CircuitStateChange``.
        config: a ``ConfigProvider``.
    """

    name = "circuit_breaker"
    priority = 40
    isolated = False  # never raises on its own: called without the isolation guard

    def __init__(
        self,
        *,
        failure_threshold: int | None = None,
        recovery_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        listeners: Iterable[Callable[[CircuitStateChange], object]] = (),
        config: ConfigProvider | None = None,
    ) -> None:
        if failure_threshold is None:
            failure_threshold = config_value(config, "circuit_breaker.failure_threshold", int, 5)
        if recovery_timeout is None:
            recovery_timeout = config_value(config, "circuit_breaker.recovery_timeout", float, 30.0)
        if (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            msg = f"failure_threshold={failure_threshold!r} is invalid; use an int >= 1"
            raise ValueError(msg)
        if not isinstance(recovery_timeout, int | float) or recovery_timeout < 0:
            msg = f"recovery_timeout={recovery_timeout!r} is invalid; use seconds >= 0"
            raise ValueError(msg)
        self.failure_threshold = failure_threshold
        self.recovery_timeout = float(recovery_timeout)
        self.clock = clock
        self._listeners = list(listeners)
        self._breakers: dict[tuple[str, str], _Breaker] = {}

    def add_listener(self, listener: Callable[[CircuitStateChange], object]) -> None:
        """Report every future state change to ``listener`` (exceptions it raises are logged)."""
        self._listeners.append(listener)

    def state(self, stage: str, pipeline: str = "pipeline") -> CircuitState:
        """The current state of one stage's breaker (CLOSED if it never ran)."""
        breaker = self._breakers.get((pipeline, stage))
        return CircuitState.CLOSED if breaker is None else breaker.state

    def states(self) -> dict[tuple[str, str], CircuitState]:
        """Every breaker's state, keyed by ``(pipeline, stage)``."""
        return {key: b.state for key, b in self._breakers.items()}

    def _move(self, stage: StageInfo, breaker: _Breaker, new: CircuitState, now: float) -> None:
        old = breaker.state
        breaker.state = new
        if new is CircuitState.OPEN:
            breaker.opened_at = now
        change = CircuitStateChange(stage.name, stage.pipeline, old, new, now)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception as exc:  # a listener never affects the stage
                logger.error("stageflow: circuit breaker listener %r failed: %r", listener, exc)

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        """Refuse, trial or pass the call, and count its outcome."""
        key = (stage.pipeline, stage.name)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = _Breaker()
        trial = False
        if breaker.state is not CircuitState.CLOSED:
            now = self.clock()
            if breaker.state is CircuitState.OPEN:
                waited = now - breaker.opened_at
                if waited < self.recovery_timeout:
                    raise CircuitOpenError(stage.name, self.recovery_timeout - waited)
                self._move(stage, breaker, CircuitState.HALF_OPEN, now)
            elif breaker.probing:
                raise CircuitOpenError(stage.name, 0.0)
            breaker.probing = trial = True
        try:
            output = await call_next(ctx)
        except asyncio.CancelledError:
            if trial:
                breaker.probing = False
            raise
        except Exception:
            self._failed(stage, breaker, trial)
            raise
        if output.status is StageStatus.FAIL or output.status is StageStatus.RETRY:
            self._failed(stage, breaker, trial)
        else:
            breaker.failures = 0
            if trial:
                breaker.probing = False
                self._move(stage, breaker, CircuitState.CLOSED, self.clock())
        return output

    def _failed(self, stage: StageInfo, breaker: _Breaker, trial: bool) -> None:
        if trial:
            breaker.probing = False
            self._move(stage, breaker, CircuitState.OPEN, self.clock())
            return
        breaker.failures += 1
        if breaker.state is CircuitState.CLOSED and breaker.failures >= self.failure_threshold:
            breaker.failures = 0
            self._move(stage, breaker, CircuitState.OPEN, self.clock())


class RetryInterceptor(Interceptor):
    """Retries a stage attempt that raised a retryable exception or returned ``StageOutput.retry``.

    Its attempts run in the same loop as ``with_stage(retry=)``'s: each retry is reported to listeners
    (``RetryAttempt``) and as a ``stage.{name}.retrying`` event, ``ctx.attempt`` counts the attempts, and
    when the policy's attempts are used up the stage fails with ``RetriesExhaustedError`` (whose
    ``__cause__`` is the last exception, if the last attempt raised).

    Args:
        policy: the ``RetryPolicy`` (default: built from ``retry.*`` in ``config``, else ``RetryPolicy()``).
        config: a ``ConfigProvider``.
        listeners: callables receiving every ``RetryAttempt``.
    """

    name = "retry"
    priority = 35
    isolated = False  # never raises on its own: called without the isolation guard

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        config: ConfigProvider | None = None,
        listeners: Iterable[Callable[[RetryAttempt], object]] = (),
    ) -> None:
        if policy is None:
            base = RetryPolicy()
            policy = RetryPolicy(
                max_attempts=config_value(config, "retry.max_attempts", int, base.max_attempts),
                initial_delay=config_value(config, "retry.initial_delay", float, base.initial_delay),
                multiplier=config_value(config, "retry.multiplier", float, base.multiplier),
                max_delay=config_value(config, "retry.max_delay", float, base.max_delay),
                jitter=config_value(config, "retry.jitter", float, base.jitter),
            )
        self.policy = policy
        self._listeners = list(listeners)

    def add_listener(self, listener: Callable[[RetryAttempt], object]) -> None:
        """Report every future retry to ``listener``."""
        self._listeners.append(listener)

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        """Run attempts until one does not ask for a retry or the policy is used up."""
        return await run_attempts(stage, ctx, call_next, self.policy, listeners=self._listeners)


def get_default_interceptors(*, config: ConfigProvider | None = None) -> list[Interceptor]:
    """The default core stack: a circuit breaker per stage and a timeout per stage attempt.

    ``[CircuitBreakerInterceptor(config=config), TimeoutInterceptor(config=config)]`` — with no
    configuration: breakers open after 5 consecutive failures and try again after 30 s; stages time out
    after 30 s. Retries are not in the default stack, because retrying is only safe for idempotent stages:
    add ``RetryInterceptor`` (or a per-stage ``RetryPolicy``) where it is. The OpenTelemetry interceptors
    come from ``stageflow_otel``.
    """
    return [CircuitBreakerInterceptor(config=config), TimeoutInterceptor(config=config)]
