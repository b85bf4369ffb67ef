"""Run sync stages on a Ray cluster: ``RayExecutor``, a ``concurrent.futures.Executor`` of Ray tasks.

Needs the ``ray`` extra: ``pip install 'stageflow-core[ray]'``. Importing this module does not import ray;
constructing a ``RayExecutor`` does, and connects to Ray.

Example::

    from stageflow import Pipeline, StageKind, StageOutput
    from stageflow.adapters.ray import RayExecutor

    def embed(ctx):  # a module-level sync stage: it is pickled to a Ray worker
        return StageOutput.ok(vector=model(ctx.snapshot.input_text))

    ray_tasks = RayExecutor(num_cpus=1)  # the Ray this process is connected to, else a local one
    graph = Pipeline("rag").with_stage("embed", embed, StageKind.TRANSFORM, executor=ray_tasks).build()
    ...
    ray_tasks.shutdown()

Cancellation: ``future.cancel()`` asks Ray to cancel the task (``ray.cancel(ref)``): a task still queued
never runs; a running one gets ``KeyboardInterrupt`` in its Python code (code blocked outside Python, in a
lock wait or a C call, does not see it). Ray cannot say at once which it was, so ``cancel()`` returns
``False`` and the future ends *cancelled* when Ray confirms. ``terminate(future)`` forces it
(``ray.cancel(ref, force=True)``): Ray kills the worker process that runs the task. stageflow calls
``terminate`` when a cancelled stage's work is still running after ``build(cancel_grace=...)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, InvalidStateError
from typing import Any, TypeVar

from stageflow._checks import finite_number

__all__ = ("RayExecutor",)

logger = logging.getLogger("stageflow")

_T = TypeVar("_T")

INSTALL_HINT = "pip install 'stageflow-core[ray]'"

WATCH_INTERVAL = 0.2
"""Seconds between two checks, while tasks are pending, that this process is still connected to Ray."""

_NOT_CONNECTED = (
    "Ray was shut down in this process (ray.shutdown()), so this RayExecutor has no cluster; make a new "
    "RayExecutor"
)

_ORPHANS: list[Any] = []
"""References to the tasks that were pending when this process's Ray was shut down (see ``_watch``)."""

_GONE = (
    "Ray was shut down in this process (ray.shutdown()) while the task was pending, so its outcome will "
    "never arrive; shut the RayExecutor down after the runs that use it"
)


def _import_ray() -> Any:
    """The ``ray`` module, or an ``ImportError`` that names the extra to install."""
    try:
        import ray
    except ImportError as exc:
        msg = f"RayExecutor needs ray, which is not installed: {INSTALL_HINT}"
        raise ImportError(msg) from exc
    return ray


def _init_on_loopback(ray: Any, options: dict[str, Any]) -> None:
    """Start a local Ray whose node address is 127.0.0.1, so that its servers listen on loopback only.

    On Linux Ray gives a local instance the machine's routable address, and its servers listen there (or on
    every interface). With clustering off (what ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` sets when Ray is
    imported), a local Ray is a single-machine instance on 127.0.0.1; a node address given in ``options``
    is left alone.
    """
    import importlib

    constants: Any = None
    if "_node_ip_address" not in options:
        try:
            constants = importlib.import_module("ray._private.ray_constants")
        except ImportError:  # a Ray without the switch: it picks its address itself
            constants = None
    previous = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if previous is None:
        ray.init(**options)
        return
    constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(**options)
    finally:
        constants.ENABLE_RAY_CLUSTER = previous


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """The body of every Ray task a ``RayExecutor`` submits (module-level, so workers import it)."""
    return fn(*args)


class _RayFuture(Future[Any]):
    """The ``concurrent.futures.Future`` of one Ray task; ``cancel()`` asks Ray to cancel it."""

    def __init__(self, ref: Any, ray: Any) -> None:
        super().__init__()
        self.ref: Any = ref  # ``None`` once the task ended
        self._ray = ray

    def cancel(self) -> bool:
        """Ask Ray to cancel the task; ``True`` only if the future already ended cancelled.

        Ray cannot tell at once whether the task was still queued, so the answer comes later: the future
        ends cancelled when Ray confirms, or with the task's result if it finished first.
        """
        ref = self.ref
        if ref is None or self.done():
            return self.cancelled()
        try:
            self._ray.cancel(ref)
        except Exception as exc:  # Ray gone: nothing left to cancel there
            logger.error("stageflow: ray.cancel(%r) failed: %r", ref, exc)
        return False

    def _settle(self, outcome: Future[Any]) -> None:
        """Copy the outcome of Ray's own future of the task into this one (on Ray's thread)."""
        # Drop the reference now: an ended future may sit in a reference cycle (its exception's traceback),
        # and Ray ends the process if the collector frees a reference while ray.shutdown() runs.
        self.ref = None
        if outcome.cancelled():
            self._cancelled()
            return
        error = outcome.exception()  # not ``result()``: raising here would tie this frame into a cycle
        if error is None:
            try:
                self.set_result(outcome.result())
            except InvalidStateError:  # already failed: Ray went away first
                pass
        elif isinstance(error, self._ray.exceptions.TaskCancelledError):
            self._cancelled()
        else:
            self._end(error)

    def _cancelled(self) -> None:
        if Future.cancel(self):
            self.set_running_or_notify_cancel()

    def _end(self, error: BaseException) -> None:
        self.ref = None
        try:
            self.set_exception(error)
        except InvalidStateError:  # already ended
            pass


class RayExecutor(Executor):
    """A ``concurrent.futures.Executor`` that runs each call as a Ray task.

    Pass it as ``executor=`` to ``Pipeline.with_stage`` or ``Pipeline.build`` to run sync stages on Ray;
    what crosses to the worker is pickled, as for a process pool.

    Args:
        address: the Ray cluster to connect to, as ``ray.init(address=...)`` takes it (``"auto"``,
            ``"ray://head:10001"``, ``"head:6379"``). Default: the Ray this process is already connected to,
            else a new local Ray on 127.0.0.1 without the dashboard, which ``shutdown()`` stops.
        num_cpus: CPUs each task reserves (Ray schedules no more tasks than the cluster has CPUs).
        max_retries: times Ray reruns a task whose worker process died (default 0: a stage's retries are
            its ``RetryPolicy``'s).
        init_options: more keywords for ``ray.init()`` when this executor starts or connects to Ray, such
            as ``{"num_cpus": 4}`` for a local Ray.

    Raises:
        ImportError: ray is not installed (``pip install 'stageflow-core[ray]'``).
        TypeError, ValueError: an argument is invalid (the message names it and the fix).
        RuntimeError: ``address`` is given but this process is already connected to a Ray.

    .. versionadded:: 0.11
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: float = 1,
        max_retries: int = 0,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        if address is not None and (not isinstance(address, str) or not address):
            msg = f"RayExecutor(address={address!r}) is invalid; pass a Ray address such as 'auto', or None"
            raise TypeError(msg)
        if not finite_number(num_cpus) or num_cpus < 0:
            msg = f"RayExecutor(num_cpus={num_cpus!r}) is invalid; pass the CPUs a task reserves, such as 1"
            raise ValueError(msg)
        if type(max_retries) is not int or max_retries < 0:
            msg = f"RayExecutor(max_retries={max_retries!r}) is invalid; pass an int >= 0, such as 0"
            raise ValueError(msg)
        if init_options is not None and not isinstance(init_options, Mapping):
            msg = (
                f"RayExecutor(init_options={init_options!r}) is invalid; pass a mapping of ray.init() "
                "keywords, such as {'num_cpus': 4}"
            )
            raise TypeError(msg)
        ray = _import_ray()
        self._ray = ray
        self._owns_ray = False
        if ray.is_initialized():
            if address is not None:
                msg = (
                    f"RayExecutor(address={address!r}): this process is already connected to Ray; pass "
                    "address=None to use that connection, or call ray.shutdown() first"
                )
                raise RuntimeError(msg)
        else:
            options = dict(init_options or {})
            if address is None:
                options.setdefault("include_dashboard", False)
                _init_on_loopback(ray, options)
            else:
                ray.init(address=address, **options)
            self._owns_ray = True
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self._task = ray.remote(num_cpus=num_cpus, max_retries=max_retries)(_call)
        self._lock = threading.Lock()
        self._futures: set[_RayFuture] = set()
        self._shutdown = False
        self._watching = False

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` as a Ray task; its future's ``cancel()`` maps to ``ray.cancel``.

        Raises:
            RuntimeError: the executor was shut down, or Ray was (``ray.shutdown()``).
        """
        with self._lock:
            if self._shutdown:
                msg = "cannot schedule new futures after shutdown"
                raise RuntimeError(msg)
            if not self._ray.is_initialized():  # else Ray would quietly start a new local instance
                raise RuntimeError(_NOT_CONNECTED)
            call = fn if not kwargs else _Bound(fn, kwargs)
            ref = self._task.remote(call, args)
            future = _RayFuture(ref, self._ray)
            self._futures.add(future)
            watch = not self._watching
            self._watching = True
        future.add_done_callback(self._forget)
        ref.future().add_done_callback(future._settle)
        if watch:
            threading.Thread(target=self._watch, name="stageflow-ray-watch", daemon=True).start()
        return future

    def terminate(self, future: Future[Any]) -> bool:
        """Force-cancel the task of ``future`` (``ray.cancel(ref, force=True)``: its worker process is
        killed); ``True`` when Ray accepted, ``False`` for a future that is not a Ray task's.

        stageflow calls it for a cancelled stage whose work outlived ``build(cancel_grace=...)``.
        """
        if not isinstance(future, _RayFuture):
            return False
        ref = future.ref
        if ref is not None:
            self._ray.cancel(ref, force=True)
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more work; with ``cancel_futures`` cancel the tasks still running, with ``wait`` wait
        for them; then stop the local Ray this executor started (a Ray it found or connected to is left
        running). Calling it again does nothing."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            for future in pending:
                try:
                    future.exception()
                except BaseException:  # cancelled: nothing to wait for
                    pass
        if self._owns_ray:
            self._ray.shutdown()

    def _watch(self) -> None:
        """While tasks are pending, fail them if this process's Ray goes away (``ray.shutdown()``): Ray
        itself never ends their futures then."""
        while True:
            time.sleep(WATCH_INTERVAL)
            with self._lock:
                if not self._futures:
                    self._watching = False
                    return
            if not self._ray.is_initialized():
                with self._lock:
                    pending = list(self._futures)
                # Ray ends the process if a reference is freed while ray.shutdown() still runs: keep these
                _ORPHANS.extend(future.ref for future in pending)
                for future in pending:
                    future._end(RuntimeError(_GONE))

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "running"
        return f"RayExecutor(num_cpus={self.num_cpus!r}, max_retries={self.max_retries!r}, {state})"


class _Bound:
    """``fn`` with keyword arguments, picklable when ``fn`` and the values are."""

    __slots__ = ("fn", "kwargs")

    def __init__(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args, **self.kwargs)
