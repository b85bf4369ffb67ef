"""The one exception tree of stageflow.

::

    StageflowError
    ├── PipelineDefinitionError (ValueError)         raised by Pipeline.with_stage()/compose()/build()
    │   ├── InvalidStageNameError
    │   ├── DuplicateStageError
    │   ├── UnknownDependencyError
    │   ├── SelfDependencyError
    │   ├── CycleError
    │   ├── InvalidStageKindError
    │   ├── InvalidRunnerError (also TypeError)
    │   ├── InvalidExecutorError (also TypeError)    executor= is not a usable concurrent.futures.Executor
    │   └── UnpicklableStageError                    a stage sent to another process cannot be pickled
    ├── PipelineRunError                              raised by StageGraph.run()
    │   ├── PipelineFailedError                       a stage failed; fail-fast
    │   └── PipelineCancelledError                    a stage returned StageOutput.cancel()
    ├── StageError                                    why one stage failed (found in StageResult.error)
    │   ├── StageFailedError                          the stage returned StageOutput.fail()
    │   ├── InvalidStageOutputError (also TypeError)  execute() returned something other than a StageOutput
    │   ├── RetryNotConfiguredError                   StageOutput.retry() without a retry policy
    │   ├── RetriesExhaustedError                     the retry policy ran out of attempts
    │   ├── UndeclaredDependencyError (also KeyError) a stage read the output of a stage it does not depend on
    │   ├── UnpicklableValueError (also TypeError)    an input or output could not cross to another process
    │   ├── StreamInputError (also LookupError)      read a streamed dependency's output before it ended
    │   ├── StreamError                               the stream a stage was reading failed
    │   ├── RemoteStageError                          it raised an unpicklable error in another process
    │   └── ExecutorError                             the stage's executor refused the work (shut down, dead)
    └── InterceptorError
        └── CriticalInterceptorError                  the one interceptor error that is not isolated
            ├── InterceptorFailedError                an interceptor raised before its stage ran
            ├── StageBlockedError                     InterceptorResult(stage_ran=False, error=...)
            ├── StageTimeoutError (also TimeoutError) TimeoutInterceptor
            └── CircuitOpenError                      CircuitBreakerInterceptor

``asyncio.CancelledError`` is never wrapped or swallowed by stageflow.

Every class has a ``category`` (an ``OutcomeCategory``) that its subclasses inherit: ``StageTimeoutError``
is a timeout, ``StageFailedError`` and ``RetriesExhaustedError`` are failures, ``PipelineCancelledError`` a
cancellation, a ``PipelineFailedError`` its failing stage's category, every other class an error.
``error_category(exc)`` reads it for any exception.

It is over 500 lines because the tree is kept whole in one module (as httpx keeps its own): each class
builds its message from its fields, says how to fix the cause, and pickles across a process hop.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from ._types import OutcomeCategory

if TYPE_CHECKING:
    from ._results import RunResult

__all__ = (
    "CircuitOpenError",
    "CriticalInterceptorError",
    "CycleError",
    "DuplicateStageError",
    "InterceptorError",
    "InterceptorFailedError",
    "ExecutorError",
    "InvalidExecutorError",
    "InvalidRunnerError",
    "InvalidStageKindError",
    "InvalidStageNameError",
    "InvalidStageOutputError",
    "PipelineCancelledError",
    "PipelineDefinitionError",
    "PipelineFailedError",
    "PipelineRunError",
    "RemoteStageError",
    "RetriesExhaustedError",
    "RetryNotConfiguredError",
    "SelfDependencyError",
    "StageBlockedError",
    "StageError",
    "StageFailedError",
    "StageTimeoutError",
    "StreamError",
    "StreamInputError",
    "StageflowError",
    "UndeclaredDependencyError",
    "UnknownDependencyError",
    "UnpicklableStageError",
    "UnpicklableValueError",
    "describe",
    "error_category",
    "error_type_name",
)


def describe(error: BaseException) -> str:
    """``str(error)``, or a stand-in when the exception's own ``__str__`` raises."""
    try:
        return str(error)
    except Exception:
        return f"<{type(error).__name__} whose str() failed>"


def error_type_name(error: BaseException) -> str:
    """The type name telemetry and records report for ``error``: its class's qualified name.

    ``Client.QuotaError`` for a class nested in ``Client``. Stage events (``error_type``), run records
    (``StageRecord.error_type``) and stageflow_otel's ``error.type`` all use this one derivation.
    """
    return type(error).__qualname__


def error_category(error: BaseException) -> OutcomeCategory:
    """The outcome category of a stage that raised ``error``: what every report of that stage shows.

    ``asyncio.CancelledError`` is ``CANCELLATION``. An exception with a ``category`` attribute that is
    ``FAILURE``, ``ERROR`` or ``TIMEOUT`` (every ``StageflowError`` a stage can fail with, and any exception
    class of yours that sets one) is that category. Anything else is ``ERROR``: a stage that raised failed,
    so a ``category`` that says otherwise (``SUCCESS``, ``SKIP``, or the ``CANCELLATION`` of a nested run's
    ``PipelineCancelledError`` a stage let through) does not count. A run's own category is
    ``RunResult.category`` or ``PipelineRunError.category``.

    .. versionadded:: 0.11
    """
    if not isinstance(error, Exception):  # only then can it be a CancelledError (a BaseException)
        from asyncio import CancelledError

        if isinstance(error, CancelledError):
            return OutcomeCategory.CANCELLATION
    category = getattr(error, "category", None)
    return (
        category if isinstance(category, OutcomeCategory) and category in _FAILING else OutcomeCategory.ERROR
    )


_FAILING = frozenset((OutcomeCategory.FAILURE, OutcomeCategory.ERROR, OutcomeCategory.TIMEOUT))
"""The categories a stage that raised can have (besides a cancellation)."""


def _known(names: Iterable[str], limit: int = 20) -> str:
    ordered = sorted(names)
    if not ordered:
        return "(none)"
    shown = ", ".join(repr(n) for n in ordered[:limit])
    if len(ordered) > limit:
        shown += f", ... ({len(ordered)} in all)"
    return shown


def _rebuild(cls: type[BaseException], args: tuple[object, ...], state: dict[str, object]) -> BaseException:
    """Unpickle a stageflow exception without calling its ``__init__`` (whose signature is not ``args``)."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def _reduce_without_init(error: BaseException) -> tuple[object, ...]:
    """The ``__reduce__`` of an exception whose ``__init__`` does not take its ``args``: pickled as its
    ``args`` and attributes, unpickled by ``_rebuild``."""
    return (_rebuild, (type(error), error.args, error.__dict__))


class StageflowError(Exception):
    """Base class of every exception stageflow raises on purpose.

    Attributes:
        category: the ``OutcomeCategory`` of a stage or run that ended with this error (``ERROR`` unless
            the class says otherwise; subclasses inherit their parent's). ``error_category()`` reads it.

    .. versionchanged:: 0.11
       ``category``.
    """

    category: OutcomeCategory = OutcomeCategory.ERROR


# --------------------------------------------------------------------------- definition errors


class PipelineDefinitionError(StageflowError, ValueError):
    """A pipeline definition is invalid; raised at ``with_stage()``, ``compose()`` or ``build()``."""


class InvalidStageNameError(PipelineDefinitionError):
    """A stage name is not a non-empty string of text that UTF-8 can encode."""

    def __init__(self, name: object) -> None:
        self.name = name
        problem = _unencodable(name) if isinstance(name, str) and name else None
        if problem is None:
            super().__init__(f"stage name {name!r} is invalid; use a non-empty str such as 'stt' or 'llm'")
        else:
            super().__init__(f"stage name {name!r} is invalid: {problem}")


def _unencodable(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (and how to fix it), or ``None`` when it can.

    Telemetry (OTLP protobuf, Prometheus text) and stores encode names as UTF-8; a lone surrogate such
    as ``"\\udcff"`` (what ``os.fsdecode`` makes of undecodable bytes) cannot be, so it is refused early.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        return (
            f"{bad!r} at position {exc.start} cannot be encoded as UTF-8 (a lone surrogate); "
            "use valid Unicode text, e.g. decode bytes with errors='replace'"
        )
    return None


class DuplicateStageError(PipelineDefinitionError):
    """Two stages share one name (also when two composed pipelines both define it)."""

    def __init__(self, name: str, *, composed: bool = False) -> None:
        self.stage = name
        where = "both composed pipelines define" if composed else "the pipeline defines twice"
        super().__init__(
            f"duplicate stage name {name!r}: {where} a stage called {name!r}; "
            "stage names must be unique, so rename one of them"
        )


class UnknownDependencyError(PipelineDefinitionError):
    """A stage depends on a stage that was never added."""

    def __init__(self, stage: str, missing: str, known: Iterable[str]) -> None:
        self.stage, self.missing = stage, missing
        known = list(known)
        from difflib import get_close_matches  # loaded when a definition is wrong

        close = get_close_matches(missing, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        super().__init__(
            f"stage {stage!r} depends on unknown stage {missing!r}; {hint}"
            f"add {missing!r} with with_stage() or fix the dependency (known stages: {_known(known)})"
        )


class SelfDependencyError(PipelineDefinitionError):
    """A stage lists itself among its dependencies."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        super().__init__(f"stage {stage!r} depends on itself; remove {stage!r} from its dependencies")


_CYCLE_SHOWN = 20


class CycleError(PipelineDefinitionError):
    """The dependencies form a cycle; ``cycle`` is the path, first stage repeated at the end."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        shown = self.cycle
        if len(shown) > _CYCLE_SHOWN:  # keep the message readable: the whole path is in ``cycle``
            head = " -> ".join(repr(n) for n in shown[: _CYCLE_SHOWN - 1])
            path = f"{head} -> ... ({len(shown) - _CYCLE_SHOWN} more) -> {shown[-1]!r}"
        else:
            path = " -> ".join(repr(n) for n in shown)
        super().__init__(f"dependency cycle: {path}; remove one of these dependencies")


class InvalidStageKindError(PipelineDefinitionError):
    """A stage kind is not a ``StageKind``."""

    def __init__(self, stage: str, kind: object, valid: Iterable[str]) -> None:
        self.stage, self.kind = stage, kind
        super().__init__(
            f"stage {stage!r} has invalid kind {kind!r}; use a StageKind member ({', '.join(valid)})"
        )


class InvalidRunnerError(PipelineDefinitionError, TypeError):
    """A runner is not a stage class, an object with ``async def execute(ctx)``, or an async function."""

    def __init__(self, stage: str, runner: object, problem: str) -> None:
        self.stage, self.runner = stage, runner
        super().__init__(
            f"stage {stage!r} has invalid runner {runner!r}: {problem}; pass a class or object with "
            "'async def execute(self, ctx) -> StageOutput' (or a plain 'def execute', run in a thread), or a "
            "function 'async def fn(ctx) -> StageOutput' (or a plain 'def fn(ctx)', run in a thread)"
        )

    __reduce__ = _reduce_without_init


class InvalidExecutorError(PipelineDefinitionError, TypeError):
    """``executor=`` is not a ``concurrent.futures.Executor``, is shut down, or names an async stage."""

    def __init__(self, stage: str | None, executor: object, problem: str) -> None:
        self.stage, self.executor = stage, executor
        where = (
            f"build(executor={executor!r})" if stage is None else f"stage {stage!r} has executor={executor!r}"
        )
        super().__init__(f"{where}: {problem}")


class UnpicklableStageError(PipelineDefinitionError):
    """A stage routed to another process (a process pool, Dask, Ray) cannot be pickled.

    Attributes:
        stage: the stage's name.
        part: what failed, e.g. ``"attribute 'lock' (lock)"``, ``"config['client']"``, ``"its function
            (a lambda)"``.
    """

    def __init__(self, stage: str, executor: str, part: str, problem: BaseException) -> None:
        self.stage, self.part = stage, part
        super().__init__(
            f"stage {stage!r} runs on {executor}, in another process, but {part} cannot be pickled "
            f"({type(problem).__name__}: {problem}); a stage sent to another process must pickle: use a "
            "module-level function or class, and keep no lambdas, locks or open clients in its attributes or "
            "config (open them inside the stage, or run it in a thread)"
        )


# --------------------------------------------------------------------------- run errors


class PipelineRunError(StageflowError):
    """A run ended without completing; carries the partial results.

    Attributes:
        stage: the stage that ended the run.
        results: the ``RunResult`` of every stage that finished or was cancelled.
        category: the run's ``OutcomeCategory`` (also ``results.category``): the failing stage's
            category for ``PipelineFailedError``, ``CANCELLATION`` for ``PipelineCancelledError``.
    """

    stage: str
    results: RunResult


class PipelineFailedError(PipelineRunError):
    """A stage failed, so the run stopped (fail-fast).

    Attributes:
        stage: the first stage that failed.
        error: that stage's error (also ``__cause__``).
        failures: every stage that failed before the run stopped, in order, with its error.
        results: the partial results (``RunResult``).
        category: the failing stage's category (``error_category(error)``): ``FAILURE``, ``ERROR`` or
            ``TIMEOUT``.
    """

    def __init__(
        self,
        stage: str,
        error: BaseException,
        failures: Mapping[str, BaseException],
        results: RunResult,
    ) -> None:
        self.stage, self.error, self.failures, self.results = stage, error, failures, results
        self.category = error_category(error)  # the failing stage's
        super().__init__(f"stage {stage!r} failed: {type(error).__name__}: {describe(error)}")


class PipelineCancelledError(PipelineRunError):
    """A stage returned ``StageOutput.cancel(reason)``: the run stopped without an error.

    Attributes:
        stage: the stage that cancelled the run.
        reason: the reason it gave.
        results: the partial results (``RunResult``).
        category: ``CANCELLATION``.
    """

    category = OutcomeCategory.CANCELLATION

    def __init__(self, stage: str, reason: str, results: RunResult) -> None:
        self.stage, self.reason, self.results = stage, reason, results
        super().__init__(f"stage {stage!r} cancelled the pipeline: {reason or '(no reason given)'}")


# --------------------------------------------------------------------------- stage errors


class StageError(StageflowError):
    """Why one stage failed, when the stage itself did not raise."""


class StageFailedError(StageError):
    """The stage returned ``StageOutput.fail(error)``. Its category is ``FAILURE``."""

    category = OutcomeCategory.FAILURE

    def __init__(self, stage: str, message: str) -> None:
        self.stage, self.message = stage, message
        super().__init__(message)


class InvalidStageOutputError(StageError, TypeError):
    """``execute()`` returned something other than a ``StageOutput``.

    Only the value's type is in the message (which reaches events, stores and telemetry): the value itself
    may hold stage data. It stays available in-process as ``value``.
    """

    def __init__(self, stage: str, value: object) -> None:
        self.stage, self.value = stage, value
        if inspect.iscoroutine(value):
            super().__init__(
                f"stage {stage!r} returned a coroutine object: it is a plain function (or its execute() is "
                "a plain def) that returned a coroutine; declare it 'async def' to run it on the event loop, "
                "or return a StageOutput"
            )
            return
        super().__init__(
            f"stage {stage!r} returned a {_type_name(value)} object; execute() must return a StageOutput, "
            "e.g. StageOutput.ok(key=value)"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, {**self.__dict__, "value": None}))


class UnpicklableValueError(StageError, TypeError):
    """An input or output of a stage that runs in another process could not be pickled.

    Attributes:
        stage: the stage's name.
        what: ``"output"`` or ``"input from 'stt'"``.
        key: the key (``repr``) whose value failed.
    """

    def __init__(self, stage: str, what: str, key: str, problem: str) -> None:
        self.stage, self.what, self.key = stage, what, key
        super().__init__(
            f"stage {stage!r} runs in another process, but its {what} key {key} cannot be pickled "
            f"({problem}); pass values that pickle between such stages (str, bytes, numbers, lists, dicts, "
            "dataclasses), or run the stage in a thread"
        )

    __reduce__ = _reduce_without_init


class RemoteStageError(StageError):
    """A stage raised an exception in another process that could not be brought back as itself.

    Attributes:
        type_name: the qualified name of the original exception's class.
        message: its message.
        remote_traceback: the traceback as the worker formatted it.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (RemoteStageError, (self.type_name, self.message, self.remote_traceback))


class StreamError(StageError):
    """The stream a stage was reading failed: the producer raised after sending some chunks.

    Attributes:
        stage: the consumer.
        producer: the stage whose stream failed.
        chunks: how many chunks the consumer had read before the error.
    """

    def __init__(self, stage: str, producer: str, chunks: int, error: BaseException) -> None:
        self.stage, self.producer, self.chunks = stage, producer, chunks
        super().__init__(
            f"stream of stage {producer!r} failed after {chunks} chunk{'s' if chunks != 1 else ''} read by "
            f"{stage!r}: {type(error).__name__}: {error}"
        )

    __reduce__ = _reduce_without_init


class StreamInputError(StageError, LookupError):
    """A stage read the whole output of a dependency it consumes as a stream before that stream ended."""


class ExecutorError(StageError):
    """The stage's executor refused the work: it was shut down, or its cluster is gone.

    Attributes:
        stage: the stage's name.
        executor: the executor's type name.
    """

    def __init__(self, stage: str, executor: object, problem: BaseException, *, lost: bool = False) -> None:
        self.stage, self.executor = stage, type(executor).__name__
        if lost:
            super().__init__(
                f"stage {stage!r} lost its work on its executor {self.executor}: {type(problem).__name__}: "
                f"{problem}, although the run did not cancel it (its cluster closed or lost the task); "
                "check that the executor (its cluster) stays up for the whole run"
            )
            return
        super().__init__(
            f"stage {stage!r} could not be sent to its executor {self.executor}: "
            f"{type(problem).__name__}: {problem}; pass an executor that is running (a shut-down executor "
            "cannot be restarted: make a new one)"
        )

    __reduce__ = _reduce_without_init


def _type_name(value: object) -> str:
    cls = type(value)
    module = getattr(cls, "__module__", "builtins")
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class RetryNotConfiguredError(StageError):
    """The stage asked for a retry but has no retry policy."""

    def __init__(self, stage: str, message: str | None) -> None:
        self.stage = stage
        super().__init__(
            f"stage {stage!r} returned StageOutput.retry({message!r}) but has no retry policy; pass "
            "retry=RetryPolicy(...) to with_stage() or add a RetryInterceptor"
        )


class RetriesExhaustedError(StageError):
    """Every attempt the retry policy allowed failed in a retryable way. Its category is ``FAILURE``.

    Attributes:
        stage: the stage.
        attempts: the attempts made.
        last_error: the last attempt's exception (also ``__cause__``), or ``None`` when the last attempt
            returned ``StageOutput.retry``.
    """

    category = OutcomeCategory.FAILURE

    def __init__(
        self, stage: str, attempts: int, message: str | None, *, error: BaseException | None = None
    ) -> None:
        self.stage, self.attempts, self.last_error = stage, attempts, error
        tried = f"{attempts} attempt{'' if attempts == 1 else 's'}"
        if error is None:
            what = f"still asked to retry after {tried} (last: {message!r})"
        else:
            what = f"failed after {tried} (last: {error_type_name(error)}: {describe(error)})"
        super().__init__(f"stage {stage!r} {what}; raise RetryPolicy.max_attempts or fix the cause")


class UndeclaredDependencyError(StageError, KeyError):
    """A stage read the output of a stage it does not declare as a dependency.

    Attributes:
        stage: the stage that read (also ``accessing_stage``, stageflow-core 0.9.1's name).
        wanted: the stage it read (also ``stage_name``, 0.9.1's name).
        declared_deps: the reader's declared dependencies.
    """

    def __init__(self, stage: str | None, wanted: str, declared: Iterable[str]) -> None:
        self.stage, self.wanted = stage, wanted
        # stageflow-core 0.9.1's names: ``stage_name`` is the stage that was read, not the reader
        self.stage_name, self.accessing_stage = wanted, stage
        self.declared_deps: frozenset[str] = frozenset(declared)
        self.message = (
            f"stage {stage!r} read the output of {wanted!r}, which is not among its dependencies "
            f"({_known(self.declared_deps)}); add {wanted!r} to its dependencies"
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


# --------------------------------------------------------------------------- interceptor errors


class InterceptorError(StageflowError):
    """An interceptor misbehaved."""


class CriticalInterceptorError(InterceptorError):
    """Raised by an interceptor to fail the stage on purpose.

    Every other exception an interceptor raises is logged and the interceptor is bypassed; this one (and its
    subclasses) fails the stage like an exception raised by the stage itself.
    """


class InterceptorFailedError(CriticalInterceptorError):
    """An interceptor raised on its own before its stage (or run) ran, so that did not run (fail closed).

    Attributes:
        stage: the stage that did not run (``None`` when a run interceptor failed before the run).
        interceptor: the interceptor's name.
        error: what the interceptor raised (also ``__cause__``).
    """

    def __init__(
        self, stage: str | None, interceptor: str, error: BaseException, *, pipeline: str | None = None
    ) -> None:
        self.stage, self.interceptor, self.error = stage, interceptor, error
        what = f"stage {stage!r}" if stage is not None else f"the run of pipeline {pipeline!r}"
        super().__init__(
            f"interceptor {interceptor!r} raised {error_type_name(error)}: {describe(error)} before {what} "
            "ran, so it did not run; fix the interceptor, or set fail_open = True on its class if "
            "bypassing it when it fails is safe"
        )


class StageBlockedError(CriticalInterceptorError):
    """An interceptor returned ``InterceptorResult(stage_ran=False)`` without a result."""

    def __init__(self, stage: str, interceptor: str, reason: str | None) -> None:
        self.stage, self.interceptor, self.reason = stage, interceptor, reason
        super().__init__(
            f"interceptor {interceptor!r} blocked stage {stage!r}: {reason or '(no reason given)'}"
        )


class StageTimeoutError(CriticalInterceptorError, TimeoutError):
    """A stage ran longer than its timeout. Its category is ``TIMEOUT``."""

    category = OutcomeCategory.TIMEOUT

    def __init__(self, stage: str, timeout: float) -> None:
        self.stage, self.timeout = stage, timeout
        super().__init__(f"stage {stage!r} timed out after {timeout:g} s")


class CircuitOpenError(CriticalInterceptorError):
    """The stage's circuit breaker is open, so the call was refused without running the stage."""

    def __init__(self, stage: str, retry_in: float) -> None:
        self.stage, self.retry_in = stage, retry_in
        super().__init__(
            f"circuit breaker for stage {stage!r} is open; the next trial call is allowed in {retry_in:.3g} s"
        )
