"""The interceptor mechanism: an onion of ``call_next`` wrappers, folded once per graph.

An interceptor overrides ``intercept_stage`` (around every stage attempt) and/or ``intercept_run`` (around a
whole run). ``BaseInterceptor`` builds the seed's ``before``/``after``/``on_error`` hooks on top.

Isolation: an exception an interceptor raises on its own is handled by where it happened.

* **Before the stage (or run) ran** — the interceptor had not called ``call_next`` yet: the call **fails
  closed** with ``InterceptorFailedError`` (its ``__cause__`` is the interceptor's exception), so a crashed
  auth or policy check never lets the stage run. An interceptor whose failure is harmless (telemetry)
  declares ``fail_open = True``: it is then logged (``logging.getLogger("stageflow")``) and bypassed, and
  the rest of the chain runs.
* **After** ``call_next`` ended: it is logged and the inner outcome (its result or its exception) stands.

Exceptions coming out of ``call_next`` pass through unchanged; ``CriticalInterceptorError`` (and subclasses
such as ``StageTimeoutError``) and ``StageError`` (such as ``RetriesExhaustedError``) fail the stage on
purpose; ``asyncio.CancelledError`` always propagates. Each isolated call records the inner outcome in its
own guard object (never on the context objects), so blame always lands on the interceptor that raised.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, cast

from ._attempts import run_attempts
from ._checks import check_instances
from ._context import PipelineContext, StageContext
from ._errors import (
    CriticalInterceptorError,
    InterceptorFailedError,
    PipelineDefinitionError,
    PipelineRunError,
    StageBlockedError,
    StageError,
)
from ._results import RunResult, StageResult
from ._retry import RetryPolicy
from ._types import StageOutput, StageStatus

if TYPE_CHECKING:
    from ._dag import StageInfo
    from ._events import EventSink

__all__ = (
    "BaseInterceptor",
    "CallNext",
    "ErrorAction",
    "Interceptor",
    "InterceptorResult",
    "RunNext",
    "build_run_chain",
    "hooked_sink",
    "build_stage_chain",
    "check_chain_depth",
    "order_interceptors",
    "run_sink_hooks",
)

logger = logging.getLogger("stageflow")

CallNext: TypeAlias = Callable[[StageContext], Awaitable[StageOutput]]
"""The rest of a stage's chain: call it with the stage context to run the stage."""

RunNext: TypeAlias = Callable[[PipelineContext], Awaitable[RunResult]]
"""The rest of a run's chain: call it with the run context to run the pipeline."""


class Interceptor:
    """Base class of interceptors: pass-through by default.

    Override ``intercept_stage`` to wrap every stage attempt, ``intercept_run`` to wrap every run. A stage
    body runs inside the context its interceptors set up (contextvars set before ``call_next`` are visible
    in ``execute()``). Stage tasks are created inside the context ``intercept_run`` sets up.

    Attributes:
        name: a name for logs.
        priority: lower runs outer (first before, last after).
        isolated: whether the chain guards this interceptor (see the module docstring). An interceptor
            that never raises on its own, only ``call_next``'s outcome or deliberate
            ``CriticalInterceptorError``/``StageError``s, may set it to ``False``: the chain then calls it
            directly, which saves a layer per stage (about half a microsecond), and an exception it does
            raise fails the stage. The built-in interceptors and stageflow_otel's do so.
        fail_open: what an exception the interceptor raises on its own before ``call_next`` does: ``False``
            (the default) fails the stage with ``InterceptorFailedError`` (fail closed: a crashed guard
            never lets the stage run); ``True`` logs it and bypasses the interceptor. Telemetry
            interceptors (stageflow_otel's) are fail-open.
        enforces: the stage settings, by ``config`` key, that this interceptor enforces
            (``TimeoutInterceptor``: ``frozenset({"timeout"})``). A graph in which a stage sets a timeout
            (``config["timeout"]`` or a ``timeout`` attribute) that none of its interceptors enforces warns
            at its first run; an interceptor of yours that enforces timeouts declares it here.

    .. versionadded:: 0.10

    .. versionchanged:: 0.11
       ``enforces``.
    """

    name: str = "interceptor"
    priority: int = 100
    isolated: bool = True
    fail_open: bool = False
    enforces: frozenset[str] = frozenset()

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        """Wrap one stage attempt; must return ``await call_next(ctx)`` or another ``StageOutput``."""
        return await call_next(ctx)

    async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
        """Wrap one run; must return ``await call_next(run)``."""
        return await call_next(run)

    def run_sink(self, run: PipelineContext, sink: EventSink) -> EventSink:
        """The sink ``run``'s events go to, given the one it would use: override it to receive every event
        of the run yourself (return a sink that takes each event, then hands it to ``sink``).

        Called once per run by ``StageGraph.run()``, before the run's first event (``pipeline.created``)
        and before any ``intercept_run``, in the caller's context; the outermost interceptor's sink sees
        each event first. Only interceptors that override it are called, so a graph without one pays
        nothing; one that raises is logged and the run keeps the sink it had.

        Returns:
            ``sink`` itself by default.

        .. versionadded:: 0.11
        """
        return sink


class ErrorAction(Enum):
    """What ``BaseInterceptor.on_error`` asks for after a stage raised."""

    RETRY = "retry"
    """Run the stage again, under the interceptor's ``retry_policy``."""
    FALLBACK = "fallback"
    """Finish the stage with ``BaseInterceptor.fallback(...)``'s output instead of failing."""
    FAIL = "fail"
    """Let the error fail the stage (the default)."""


@dataclass(slots=True, kw_only=True)
class InterceptorResult:
    """What ``BaseInterceptor.before`` returns to stop a stage from running.

    ``stage_ran=False`` stops the stage: it finishes with ``result`` when one is given (a ``StageOutput``,
    or a mapping taken as ``StageOutput.ok(result)``), otherwise it fails with
    ``StageBlockedError(error)``.
    """

    stage_ran: bool = True
    result: Any = None
    error: str | None = None


class BaseInterceptor(Interceptor):
    """An interceptor written as ``before``/``after``/``on_error`` hooks.

    The hooks receive the stage name and the run's ``PipelineContext`` (whose ``data`` dict is shared by
    the run). Override any of them.

    Attributes:
        retry_policy: how ``ErrorAction.RETRY`` retries (attempts in all, backoff). Retries run through
            the same attempt loop as ``with_stage(retry=)`` and ``RetryInterceptor``: ``ctx.attempt``
            counts them, each emits ``stage.X.retrying``, and running out fails the stage with
            ``RetriesExhaustedError``. Only exceptions reach ``on_error``: a ``StageOutput.retry`` passes
            through to the next retry mechanism.
    """

    name = "base_interceptor"
    priority = 100
    retry_policy: RetryPolicy = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0)

    async def before(self, stage_name: str, ctx: PipelineContext) -> InterceptorResult | None:
        """Called before the stage; return ``InterceptorResult(stage_ran=False, ...)`` to stop it."""
        return None

    async def after(self, stage_name: str, result: StageResult, ctx: PipelineContext) -> None:
        """Called after the stage returned (also after a fallback), with its result so far."""
        return None

    async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
        """Called when the stage raised; the returned action decides what happens."""
        return ErrorAction.FAIL

    async def fallback(self, stage_name: str, error: Exception, ctx: PipelineContext) -> StageOutput:
        """The output used for ``ErrorAction.FALLBACK``: by default a skip whose reason names the error."""
        return StageOutput.skip(reason=f"fallback after {type(error).__name__}: {error}")

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        """Run ``before``, the stage, ``on_error`` on exceptions and ``after``."""
        run = ctx.pipeline
        assert run is not None
        verdict = await self.before(stage.name, run)
        if verdict is not None and not verdict.stage_ran:
            if verdict.result is None:
                raise StageBlockedError(stage.name, self.name, verdict.error)
            output = (
                verdict.result if isinstance(verdict.result, StageOutput) else StageOutput.ok(verdict.result)
            )
            await self._after(stage, ctx, output, None)
            return output

        async def decide(exc: Exception) -> bool | StageOutput:
            action = await self.on_error(stage.name, exc, run)
            if action is ErrorAction.RETRY:
                return self.retry_policy.should_retry(exc)
            if action is ErrorAction.FALLBACK:
                return await self.fallback(stage.name, exc, run)
            return False

        # the one attempt loop: retries here count in ctx.attempt and emit stage.X.retrying like any other
        output = await run_attempts(
            stage, ctx, call_next, self.retry_policy, decide=decide, retry_outputs=False
        )
        await self._after(stage, ctx, output, None)
        return output

    async def _after(
        self, stage: StageInfo, ctx: StageContext, output: StageOutput, error: BaseException | None
    ) -> None:
        run = ctx.pipeline
        assert run is not None
        status = StageStatus.FAIL if output.status is StageStatus.RETRY else output.status
        result = StageResult(
            stage.name,
            stage.kind,
            status,
            output,
            error,
            ctx.ready_at,
            ctx.began_at,
            time.perf_counter(),
            ctx.attempt,
        )
        await self.after(stage.name, result, run)


# --------------------------------------------------------------------------- chains

_NOT_CALLED, _RUNNING, _RETURNED, _RAISED = range(4)
_new = object.__new__


def _name(interceptor: Interceptor) -> str:
    return str(getattr(interceptor, "name", type(interceptor).__name__))


def _report(interceptor: Interceptor, where: str, exc: Exception) -> None:
    logger.error(
        "stageflow: interceptor %r raised in %s and was bypassed: %r",
        _name(interceptor),
        where,
        exc,
        exc_info=exc,
    )


_Ctx = TypeVar("_Ctx", StageContext, PipelineContext)
_Out = TypeVar("_Out")


class _Guard(Generic[_Ctx, _Out]):
    """The ``call_next`` one isolated interceptor receives for one call: records what the inner chain did.

    One per call, so the record never lives on the (public) context objects and never mixes up layers: an
    exception is the inner chain's exactly when it came out of this guard.
    """

    __slots__ = ("_inner", "state", "value")

    def __init__(self, inner: Callable[[_Ctx], Awaitable[_Out]]) -> None:
        self._inner: Callable[[_Ctx], Awaitable[_Out]] = inner
        self.state = _NOT_CALLED
        self.value: object  # set with the state that has one (returned or raised)

    async def __call__(self, ctx: _Ctx) -> _Out:
        self.state = _RUNNING
        try:
            out = await self._inner(ctx)
        except BaseException as exc:  # recorded, never handled: a cancellation is an outcome too
            self.state, self.value = _RAISED, exc
            raise
        self.state, self.value = _RETURNED, out
        return out


class _Layer(Generic[_Ctx, _Out]):
    """One isolated interceptor in a chain (see the module docstring)."""

    __slots__ = ("_deliberate", "_fail_open", "_inner", "_intercept", "_interceptor", "_stage", "_where")

    def __init__(
        self,
        interceptor: Interceptor,
        intercept: Callable[[_Ctx, Callable[[_Ctx], Awaitable[_Out]]], Awaitable[_Out]],
        inner: Callable[[_Ctx], Awaitable[_Out]],
        where: str,
        deliberate: tuple[type[Exception], ...],
        stage: str | None,
    ) -> None:
        self._interceptor = interceptor
        self._intercept: Callable[[_Ctx, Callable[[_Ctx], Awaitable[_Out]]], Awaitable[_Out]] = intercept
        self._inner: Callable[[_Ctx], Awaitable[_Out]] = inner
        self._where = where
        self._deliberate = deliberate
        self._fail_open = bool(getattr(interceptor, "fail_open", False))
        self._stage = stage

    async def __call__(self, ctx: _Ctx) -> _Out:
        # ``_Guard(self._inner)``, without the ``__init__`` call (a fifth of an empty layer's cost)
        guard: _Guard[_Ctx, _Out] = _new(_Guard)
        guard._inner = self._inner
        guard.state = _NOT_CALLED
        try:
            return await self._intercept(ctx, guard)
        except Exception as exc:
            state = guard.state
            if (state == _RAISED and exc is guard.value) or isinstance(exc, self._deliberate):
                raise
            if state == _NOT_CALLED:
                if not self._fail_open:  # a guard that crashed never lets the stage run
                    raise self._failed(ctx, exc) from exc
                _report(self._interceptor, self._where, exc)
                return await self._inner(ctx)
            if state == _RUNNING:  # the inner call is still running elsewhere: it has no outcome yet
                raise self._failed(ctx, exc) from exc
            _report(self._interceptor, self._where, exc)
            inner = guard.value
            if state == _RAISED:
                assert isinstance(inner, BaseException)
                if isinstance(inner, asyncio.CancelledError) and not _cancel_pending():
                    # The interceptor cancelled the inner call itself (its own timeout) and failed: there is
                    # no inner outcome to fall back to, so its exception is the outcome.
                    raise
                raise inner from None
            return cast(_Out, inner)

    def _failed(self, ctx: _Ctx, exc: Exception) -> InterceptorFailedError:
        pipeline = ctx.pipeline_name if isinstance(ctx, PipelineContext) else None
        return InterceptorFailedError(self._stage, _name(self._interceptor), exc, pipeline=pipeline)


_STAGE_DELIBERATE = (CriticalInterceptorError, StageError)
_RUN_DELIBERATE = (CriticalInterceptorError, PipelineRunError)


def _cancel_pending() -> bool:
    """Whether the current task has been asked to cancel (and has not taken the request back)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _overrides(interceptor: Interceptor, method: str) -> bool:
    return getattr(type(interceptor), method, None) is not getattr(Interceptor, method)


def order_interceptors(interceptors: Sequence[Interceptor]) -> tuple[Interceptor, ...]:
    """Interceptors sorted by priority (stable: equal priorities keep their given order)."""
    check_instances(
        interceptors,
        Interceptor,
        TypeError,
        "interceptor {!r} is not an Interceptor; subclass stageflow.interceptors.Interceptor "
        "or BaseInterceptor",
    )
    return tuple(sorted(interceptors, key=lambda ic: ic.priority))


class _Direct:
    """An interceptor that is not isolated: called straight, with no coroutine of its own in between."""

    __slots__ = ("_inner", "_intercept", "_stage")

    def __init__(self, interceptor: Interceptor, stage: StageInfo, inner: CallNext) -> None:
        self._intercept = interceptor.intercept_stage
        self._stage = stage
        self._inner = inner

    def __call__(self, ctx: StageContext) -> Awaitable[StageOutput]:
        return self._intercept(self._stage, ctx, self._inner)


class _DirectRun:
    """A run interceptor that is not isolated, called straight."""

    __slots__ = ("_inner", "_intercept")

    def __init__(self, interceptor: Interceptor, inner: RunNext) -> None:
        self._intercept = interceptor.intercept_run
        self._inner = inner

    def __call__(self, run: PipelineContext) -> Awaitable[RunResult]:
        return self._intercept(run, self._inner)


_FRAME_MARGIN = 250  # Python frames left for the event loop, the caller (a test runner...) and the stage body


def check_chain_depth(ordered: Sequence[Interceptor]) -> None:
    """Refuse a chain so deep that running a stage through it would exceed Python's recursion limit.

    An isolated interceptor nests three frames per stage call (its guard, itself, the next call), one
    that is not isolated nests one: past the limit every run would fail with ``RecursionError``.

    Raises:
        PipelineDefinitionError: naming the count and the fixes.
    """
    for method in ("intercept_stage", "intercept_run"):
        active = [ic for ic in ordered if _overrides(ic, method)]
        isolated = sum(1 for ic in active if ic.isolated)
        frames = 3 * isolated + (len(active) - isolated)
        limit = sys.getrecursionlimit()
        if frames > limit - _FRAME_MARGIN:
            msg = (
                f"{len(active)} interceptors override {method} ({isolated} of them isolated), which nests "
                f"{frames} Python frames per call; Python's recursion limit ({limit}) leaves room for "
                f"{limit - _FRAME_MARGIN}: merge interceptors, set isolated = False on those that never "
                "raise on their own, or raise sys.setrecursionlimit()"
            )
            raise PipelineDefinitionError(msg)


def build_stage_chain(stage: StageInfo, call: CallNext, ordered: Sequence[Interceptor]) -> CallNext:
    """Fold the interceptors that wrap stages around ``call`` (outermost first in ``ordered``)."""
    active = [ic for ic in ordered if _overrides(ic, "intercept_stage")]
    if not active:
        return call
    # Bound ``__call__`` methods, not the layer objects: calling those is a plain method call, without the
    # type-slot lookup that calling an instance costs (paid twice per layer per stage).
    chained: CallNext = call
    where = f"stage {stage.name!r}"
    for ic in reversed(active):
        if ic.isolated:
            intercept = partial(ic.intercept_stage, stage)
            chained = _Layer(ic, intercept, chained, where, _STAGE_DELIBERATE, stage.name).__call__
        else:
            chained = _Direct(ic, stage, chained).__call__
    return chained


def run_sink_hooks(
    ordered: Sequence[Interceptor],
) -> tuple[Callable[[PipelineContext, EventSink], EventSink], ...]:
    """The ``run_sink`` of each interceptor that overrides it, innermost first (folded once per graph)."""
    return tuple(ic.run_sink for ic in reversed(ordered) if _overrides(ic, "run_sink"))


def hooked_sink(
    hooks: Sequence[Callable[[PipelineContext, EventSink], EventSink]], run: PipelineContext, sink: EventSink
) -> EventSink:
    """``sink`` as the interceptors' ``run_sink`` hooks give it for ``run``; a hook that raises is skipped."""
    for hook in hooks:
        try:
            sink = hook(run, sink)
        except Exception:
            logger.exception("stageflow: %r's run_sink failed; the run keeps its event sink", hook)
    return sink


def build_run_chain(call: RunNext, ordered: Sequence[Interceptor]) -> RunNext:
    """Fold the interceptors that wrap runs around ``call``."""
    active = [ic for ic in ordered if _overrides(ic, "intercept_run")]
    if not active:
        return call
    chained: RunNext = call
    for ic in reversed(active):
        if ic.isolated:
            chained = _Layer(ic, ic.intercept_run, chained, "run", _RUN_DELIBERATE, None).__call__
        else:
            chained = _DirectRun(ic, chained).__call__
    return chained
