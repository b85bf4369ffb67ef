"""Where a sync stage runs: a worker thread, a process pool or a cluster, behind ``concurrent.futures``.

A sync stage (``def fn(ctx)``, or a class whose ``execute`` is a plain ``def``) never runs on the event loop.
Its innermost call is one of the two hops below; interceptors wrap it as they wrap an async stage, so a span
an interceptor made current is current when the work is submitted.

* **Same process** (a ``ThreadPoolExecutor``, the graph's own pool by default): every submit runs in its own
  ``contextvars.copy_context()``, so whatever the caller set (an OpenTelemetry parent, structlog's bound
  context) is visible in the thread. The stage's ``ctx.stop_requested`` turns true when the run no longer
  wants the result.
* **Another process** (any other ``concurrent.futures.Executor``: ``ProcessPoolExecutor``, Dask's
  ``Client.get_executor()``, ``stageflow.adapters.ray.RayExecutor``): the callable, the stage's context
  (snapshot, run identity, attempt, its dependencies' outputs, config) and the worker hooks (a W3C trace
  context, for instance) travel as one pickled payload; the worker returns one pickled reply with the output
  or the error, the time the work took there, the events the stage emitted and the hooks' reports. Both are
  pickled by us, so an input or output that cannot cross fails the stage with an error naming its key.

Cancellation (fail-fast, a timeout, the caller) is reported as data on the stage's result and event: the
work was **stopped** (it never started, it ended within the grace period, or the executor's ``terminate``
stopped it) or **abandoned** (still running when the grace ran out; nothing waits for it and its late result
is discarded). A run never waits for abandoned work longer than the grace.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import pickle
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._errors import (
    ExecutorError,
    InvalidStageOutputError,
    RemoteStageError,
    UnpicklableStageError,
    UnpicklableValueError,
    describe,
)
from ._results import Hop

if TYPE_CHECKING:
    from ._context import StageContext
    from ._dag import StageInfo
    from ._types import StageOutput

__all__ = (
    "ABANDONED",
    "STOPPED",
    "OffloadedCall",
    "WorkerHook",
    "add_worker_hook",
    "check_picklable",
    "default_thread_count",
    "executor_is_shut_down",
    "is_in_process",
    "remove_worker_hook",
    "run_remote",
)

logger = logging.getLogger("stageflow")

_perf = time.perf_counter

STOPPED = "stopped"
ABANDONED = "abandoned"


def default_thread_count() -> int:
    """The size of a graph's own thread pool unless ``build(max_threads=...)`` says otherwise.

    ``min(32, os.cpu_count() + 4)``, the standard library's default for ``ThreadPoolExecutor``.
    """
    import os

    return min(32, (os.cpu_count() or 1) + 4)


def is_in_process(executor: Executor) -> bool:
    """Whether ``executor`` runs work in this process (a thread pool): no pickling, contextvars are copied."""
    return isinstance(executor, ThreadPoolExecutor)


def executor_is_shut_down(executor: Executor) -> bool:
    """Whether ``executor`` is known to refuse new work (the standard pools' shutdown flags)."""
    for flag in ("_shutdown", "_shutdown_thread"):
        if getattr(executor, flag, False) is True:
            return True
    return False


@runtime_checkable
class WorkerHook(Protocol):
    """Work that travels with a stage to another process and runs there around it (picklable).

    A factory registered with ``add_worker_hook`` makes one per hop, on the event loop, inside the stage's
    context (so it can capture, say, the current trace context). In the worker, ``enter()`` runs before the
    stage and ``exit(error)`` after it; ``exit`` returns a picklable report that comes back with the result
    and is handed to the original hook's ``returned(report)`` on the event loop. A hook that raises is logged
    and never changes the stage's outcome.

    .. versionadded:: 0.11
    """

    def enter(self) -> None:
        """In the worker, before the stage runs."""
        ...

    def exit(self, error: BaseException | None) -> object:
        """In the worker, after the stage ran (``error`` is what it raised); returns a picklable report."""
        ...

    def returned(self, report: object) -> None:
        """On the event loop, with what ``exit`` returned (``None`` if the worker never ran the hook)."""
        ...


WorkerHookFactory = Callable[["StageInfo", "StageContext"], "WorkerHook | None"]
_hook_factories: list[WorkerHookFactory] = []


def add_worker_hook(factory: WorkerHookFactory) -> None:
    """Make ``factory(stage, ctx)`` run for every stage sent to another process; it returns a ``WorkerHook``
    or ``None``. Adding the same factory twice adds it once.

    .. versionadded:: 0.11
    """
    if not callable(factory):
        msg = f"add_worker_hook() takes a callable factory(stage, ctx) -> WorkerHook | None, got {factory!r}"
        raise TypeError(msg)
    if factory not in _hook_factories:
        _hook_factories.append(factory)


def remove_worker_hook(factory: WorkerHookFactory) -> None:
    """Undo ``add_worker_hook(factory)`` (no error if it was not added)."""
    if factory in _hook_factories:
        _hook_factories.remove(factory)


# --------------------------------------------------------------------------- checks at build()


def _pickle_error(value: object) -> Exception | None:
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return exc
    return None


def check_picklable(stage: str, runner: object, config: Mapping[str, Any], executor: Executor) -> None:
    """Refuse, naming what failed, a stage that cannot be sent to ``executor``'s processes."""
    where = type(executor).__name__
    problem = _pickle_error(runner)
    if problem is not None:
        part = _first_unpicklable_part(runner)
        raise UnpicklableStageError(stage, where, part, problem)
    for key, value in config.items():
        problem = _pickle_error(value)
        if problem is not None:
            raise UnpicklableStageError(stage, where, f"config[{key!r}]", problem)


def _first_unpicklable_part(runner: object) -> str:
    """Which part of a runner fails to pickle: an attribute, its class, or the function itself."""
    if inspect.isfunction(runner) or inspect.ismethod(runner):
        fn = runner.__func__ if inspect.ismethod(runner) else runner
        if fn.__name__ == "<lambda>":
            return "its function (a lambda)"
        if "<locals>" in fn.__qualname__:
            return f"its function {fn.__qualname__} (defined inside another function)"
        if inspect.ismethod(runner):
            owner = runner.__self__
            return _first_unpicklable_part(owner)
        return f"its function {fn.__qualname__}"
    cls = type(runner)
    if "<locals>" in cls.__qualname__:
        return f"its class {cls.__qualname__} (defined inside a function)"
    state = getattr(runner, "__dict__", None)
    if isinstance(state, dict):
        for name, value in state.items():
            if _pickle_error(value) is not None:
                return f"attribute {name!r} ({type(value).__name__})"
    for name in getattr(cls, "__slots__", ()):
        value = getattr(runner, name, None)
        if _pickle_error(value) is not None:
            return f"attribute {name!r} ({type(value).__name__})"
    return f"its class {cls.__qualname__}"


# --------------------------------------------------------------------------- the hops


class _CollectingSink:
    """The event sink of a stage running in another process: events come back with the result."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.events.append((type, dict(data or {})))


def run_remote(payload: bytes) -> bytes:
    """The worker side of a hop to another process: run the stage and reply (both pickled by us).

    Module-level and importable as ``stageflow._offload.run_remote``, so every executor can send it.
    """
    fn, ctx, hooks = pickle.loads(payload)
    sink = _CollectingSink()
    ctx.event_sink = sink
    entered: list[Any] = []
    error: BaseException | None = None
    output: object = None
    elapsed = 0.0
    try:
        for hook in hooks:
            try:
                hook.enter()
            except Exception as exc:  # a hook never changes the stage's outcome
                logger.error("stageflow: worker hook %r failed on enter: %r", hook, exc)
                continue
            entered.append(hook)
        began = _perf()
        try:
            output = fn(ctx)
        finally:
            elapsed = _perf() - began
        if inspect.iscoroutine(output):
            output.close()
            error = InvalidStageOutputError(ctx.stage_name, output)
            output = None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        error = exc
    reports: list[object] = [None] * len(hooks)
    for hook in reversed(entered):
        try:
            reports[hooks.index(hook)] = hook.exit(error)
        except Exception as exc:  # a hook never changes the stage's outcome
            logger.error("stageflow: worker hook %r failed on exit: %r", hook, exc)
    if error is not None and not _round_trips(error):
        error = _remote_error(error)
    reply = (elapsed, output, error, sink.events, reports)
    try:
        return pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return _reply_without_unpicklable(ctx.stage_name, reply, exc)


def _reply_without_unpicklable(stage: str, reply: tuple[Any, ...], problem: Exception) -> bytes:
    """A reply that pickles: an unpicklable output becomes an error naming its key; an unpicklable
    exception becomes a ``RemoteStageError``; unpicklable events and reports are dropped with a log line."""
    elapsed, output, error, events, reports = reply
    if output is not None and _pickle_error(output) is not None:
        key, why = _first_unpicklable_key(output)
        output = None
        error = UnpicklableValueError(stage, "output", key, why or f"{type(problem).__name__}: {problem}")
    if error is not None and _pickle_error(error) is not None:
        import traceback

        text = "".join(traceback.format_exception(error))
        error = RemoteStageError(
            f"{type(error).__module__}.{type(error).__qualname__}", describe(error), text
        )
    kept_events = [e for e in events if _pickle_error(e) is None]
    if len(kept_events) < len(events):
        logger.error(
            "stageflow: %d events of stage %r could not be pickled", len(events) - len(kept_events), stage
        )
    kept_reports = [r if _pickle_error(r) is None else None for r in reports]
    return pickle.dumps((elapsed, output, error, kept_events, kept_reports), protocol=pickle.HIGHEST_PROTOCOL)


def _round_trips(error: BaseException) -> bool:
    """Whether ``error`` pickles and unpickles (an ``__init__`` with more than the message may not)."""
    try:
        pickle.loads(pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return False
    return True


def _remote_error(error: BaseException) -> RemoteStageError:
    import traceback

    text = "".join(traceback.format_exception(error))
    return RemoteStageError(f"{type(error).__module__}.{type(error).__qualname__}", describe(error), text)


def _first_unpicklable_key(output: object) -> tuple[str, str | None]:
    """The first key of ``output`` whose value does not pickle, and why (``repr`` of the key)."""
    data = getattr(output, "data", None)
    if isinstance(data, Mapping):
        for key, value in data.items():
            problem = _pickle_error(value)
            if problem is not None:
                return repr(key), f"{type(problem).__name__}: {problem}"
    for field in ("artifacts", "events", "error"):
        value = getattr(output, field, None)
        problem = None if value is None else _pickle_error(value)
        if problem is not None:
            return repr(field), f"{type(problem).__name__}: {problem}"
    return "'value'", None


class _Raised:
    """A sync stage's exception, brought back with the time it ran (so its dispatch is measured too)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _in_thread(fn: Callable[[StageContext], Any], ctx: StageContext) -> tuple[float, Any]:
    began = _perf()
    try:
        output = fn(ctx)
    except Exception as exc:
        return _perf() - began, _Raised(exc)
    elapsed = _perf() - began
    if inspect.iscoroutine(output):
        output.close()
        return elapsed, _Raised(InvalidStageOutputError(ctx.stage_name, output))
    return elapsed, output


class _PoolHolder:
    """A graph's own thread pool, made on first use and shut down when the graph is collected."""

    __slots__ = ("__weakref__", "_lock", "_pool", "name", "size")

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def get(self) -> ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            with self._lock:
                pool = self._pool
                if pool is None:
                    pool = ThreadPoolExecutor(self.size, thread_name_prefix=f"stageflow-{self.name}")
                    self._pool = pool
                    weakref.finalize(self, pool.shutdown, wait=False)
        return pool


class OffloadedCall:
    """The innermost call of a sync stage: ``await call(ctx)`` runs it on its executor."""

    __slots__ = ("executor", "fn", "grace", "pool", "remote", "stage")

    def __init__(
        self,
        stage: StageInfo,
        fn: Callable[[StageContext], Any],
        executor: Executor | None,
        pool: _PoolHolder,
        grace: float,
    ) -> None:
        self.stage = stage
        self.fn = fn
        self.executor = executor
        self.pool = pool
        self.remote = executor is not None and not is_in_process(executor)
        self.grace = grace

    def __call__(self, ctx: StageContext) -> Awaitable[StageOutput]:
        if self.remote:
            return self._remote(ctx)
        return self._thread(ctx)

    def _submit(self, executor: Executor, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        try:
            return executor.submit(fn, *args)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown", a dead cluster
            raise ExecutorError(self.stage.name, executor, exc) from exc

    async def _thread(self, ctx: StageContext) -> StageOutput:
        executor = self.executor or self.pool.get()
        hop = ctx._hop
        if hop is None:
            hop = ctx._hop = Hop()
        hop.stop = False  # a new attempt
        dispatched = _perf()
        future = self._submit(executor, contextvars.copy_context().run, _in_thread, self.fn, ctx)
        elapsed, output = await self._wait(future, hop, executor, True)
        hop.dispatch += (_perf() - dispatched) - elapsed
        if type(output) is _Raised:
            raise output.error
        return output  # type: ignore[no-any-return]

    async def _remote(self, ctx: StageContext) -> StageOutput:
        executor = self.executor
        assert executor is not None
        hooks: list[WorkerHook] = []
        for factory in tuple(_hook_factories):
            try:
                hook = factory(self.stage, ctx)
            except Exception as exc:  # telemetry fails open
                logger.error("stageflow: worker hook factory %r failed: %r", factory, exc)
                continue
            if hook is not None:
                hooks.append(hook)
        try:
            payload = pickle.dumps((self.fn, ctx, tuple(hooks)), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise _unpicklable_input(self.stage.name, ctx, hooks, exc) from exc
        hop = ctx._hop
        if hop is None:
            hop = ctx._hop = Hop()
        dispatched = _perf()
        future = self._submit(executor, run_remote, payload)
        reply = await self._wait(future, hop, executor, False)
        elapsed, output, error, events, reports = pickle.loads(reply)
        hop.dispatch += (_perf() - dispatched) - elapsed
        for hook, report in zip(hooks, reports, strict=False):
            try:
                hook.returned(report)
            except Exception as exc:
                logger.error("stageflow: worker hook %r failed on return: %r", hook, exc)
        for type_, data in events:
            ctx.try_emit_event(type_, data)
        if error is not None:
            raise error
        return output  # type: ignore[no-any-return]

    async def _wait(self, future: Future[Any], hop: Hop, executor: Executor, in_thread: bool) -> Any:
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and task is not None and not task.cancelling():
                # nobody cancelled this stage: the executor dropped the work (a Dask cluster that closed)
                raise ExecutorError(
                    self.stage.name, executor, RuntimeError("the executor cancelled the work"), lost=True
                ) from None
            hop.work = await _wind_down(future, executor, hop if in_thread else None, self.grace)
            raise


async def _wind_down(future: Future[Any], executor: Executor, stop: Hop | None, grace: float) -> str:
    """After the stage was cancelled: stop the work if it can be stopped, else abandon it after ``grace``."""
    if future.cancel() or future.cancelled():
        return STOPPED
    if stop is not None:
        stop.stop = True
    if not future.done():
        try:
            await asyncio.wait((asyncio.wrap_future(future),), timeout=grace)
        except asyncio.CancelledError:
            pass  # cancelled again while winding down: stop waiting
    if future.done():
        return STOPPED
    terminate = getattr(executor, "terminate", None)
    if callable(terminate):
        try:
            if terminate(future):
                return STOPPED
        except Exception as exc:
            logger.error("stageflow: %r.terminate() failed: %r", executor, exc)
    return ABANDONED


def _unpicklable_input(
    stage: str, ctx: StageContext, hooks: list[WorkerHook], problem: Exception
) -> Exception:
    """The error for a payload that did not pickle, naming the first input key at fault."""
    for dep, output in ctx.inputs._prior.items():
        data = getattr(output, "data", {})
        for key, value in data.items():
            why = _pickle_error(value)
            if why is not None:
                return UnpicklableValueError(
                    stage, f"input from {dep!r}", repr(key), f"{type(why).__name__}: {why}"
                )
    for hook in hooks:
        why = _pickle_error(hook)
        if why is not None:
            return UnpicklableValueError(stage, "worker hook", repr(type(hook).__name__), str(why))
    return UnpicklableValueError(stage, "context", "(the snapshot or the run's data)", str(problem))
