"""The executor: the only scheduler in stageflow.

One asyncio task per stage, started the moment its last dependency finishes. Per run the executor does
O(V + E) work: an in-degree counter per stage, decremented along the children adjacency of each finished
stage; a stage's inputs hold only its direct dependencies' outputs. All per-run state lives in ``_Run``, so a
``StageGraph`` is immutable and safe to run many times concurrently.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from inspect import CO_COROUTINE
from types import FunctionType, MappingProxyType
from typing import Any

from ._context import PipelineContext, StageContext, _stage_context
from ._entry import entry_context, not_a_context_error
from ._errors import (
    InvalidStageOutputError,
    PipelineCancelledError,
    PipelineFailedError,
    RetriesExhaustedError,
    RetryNotConfiguredError,
    StageFailedError,
    describe,
)
from ._events import EventSink, NoOpEventSink, emit, report_once, resolve_sink
from ._interceptors import (
    CallNext,
    Interceptor,
    build_run_chain,
    build_stage_chain,
    order_interceptors,
)
from ._pipeline import StageInfo, StageSpec, Topology, _mermaid
from ._results import RunResult, StageResult
from ._retry import RetryPolicy
from ._snapshot import RunIdentity
from ._store import RunRecord, RunStore, StageRecord
from ._types import StageKind, StageOutput, StageStatus

__all__ = ("StageGraph",)

logger = logging.getLogger("stageflow")

_perf = time.perf_counter
_wall = time.time
_OK = StageStatus.OK
_SKIP = StageStatus.SKIP
_FAIL = StageStatus.FAIL
_CANCEL = StageStatus.CANCEL
_RETRY = StageStatus.RETRY
_NO_OUTPUTS: Mapping[str, StageOutput] = MappingProxyType({})
_new = object.__new__


class _Node:
    __slots__ = (
        "call",
        "children",
        "conditional",
        "dep_index",
        "deps",
        "info",
        "kind",
        "name",
        "retry",
    )

    def __init__(
        self, info: StageInfo, call: CallNext, index: Mapping[str, int], dep_index: tuple[int, ...] | None
    ) -> None:
        self.info = info
        self.name = info.name
        self.kind: StageKind = info.kind
        self.call = call
        deps = info.dependencies
        if dep_index is None:
            unique = tuple(dict.fromkeys(deps))
            dep_index = tuple(map(index.__getitem__, unique))
        else:
            unique = deps if len(dep_index) == len(deps) else tuple(dict.fromkeys(deps))
        self.dep_index = dep_index
        self.deps = unique  # distinct dependency names, in declaration order
        self.children: Sequence[int] = ()
        self.conditional = info.conditional
        self.retry: RetryPolicy | None = info.retry

    def event(self, outcome: str) -> str:
        """The stage's event type, e.g. ``stage.llm.completed`` (made only when a sink listens)."""
        return f"stage.{self.name}.{outcome}"


def _runner_call(info: StageInfo) -> CallNext:
    runner = info.runner
    if type(runner) is FunctionType and runner.__code__.co_flags & CO_COROUTINE:
        return runner  # ``async def`` function: the common case
    execute = getattr(runner, "execute", None)
    if execute is not None and not asyncio.iscoroutinefunction(runner):
        return execute  # type: ignore[no-any-return]
    return runner  # type: ignore[no-any-return]


class StageGraph:
    """A built pipeline: immutable, reusable, safe to run concurrently. Made by ``Pipeline.build()``.

    Attributes:
        name: the pipeline's name.
        stages: the ``StageInfo`` of every stage, in the order they were added.
        interceptors: the interceptors, outermost first.
        run_store: where each run is recorded, or ``None``.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[StageInfo],
        order: Sequence[int],
        interceptors: Iterable[Interceptor] = (),
        run_store: RunStore | None = None,
        *,
        _topology: Topology | None = None,
    ) -> None:
        self.name = name
        self.run_store = run_store
        self.stages = tuple(stages)
        self.interceptors = order_interceptors(list(interceptors))
        index = {info.name: i for i, info in enumerate(self.stages)}
        # ``Pipeline.build()`` passes the adjacency it computed while validating; otherwise make it here.
        dep_index: Sequence[tuple[int, ...] | None] = (
            [None] * len(self.stages) if _topology is None else _topology[0]
        )
        ics = self.interceptors
        nodes = [
            _Node(
                info,
                build_stage_chain(info, _runner_call(info), ics) if ics else _runner_call(info),
                index,
                mine,
            )
            for info, mine in zip(self.stages, dep_index, strict=True)
        ]
        if _topology is None:
            children: list[list[int]] = [[] for _ in nodes]
            for i, node in enumerate(nodes):
                for d in node.dep_index:
                    children[d].append(i)
        else:
            children = _topology[1]
        for node, kids in zip(nodes, children, strict=True):
            node.children = kids  # private and never changed after this: no tuple copy
        self._nodes = tuple(nodes)
        self._order = tuple(order)
        self._indegree = [len(n.dep_index) for n in nodes]
        indegree = self._indegree
        self._roots = tuple([i for i in range(len(nodes)) if not indegree[i]])  # in declaration order
        self._deps_by_name: Mapping[str, tuple[str, ...]] = {n.name: n.deps for n in nodes}
        self._index = index
        self._version: str | None = None
        self._run_chain = build_run_chain(self._execute, self.interceptors)
        self._run_wrapped = self._run_chain != self._execute  # build_run_chain returns _execute as is

    @property
    def version(self) -> str:
        """A short hash of the topology (names, kinds, dependencies); equal graphs share it."""
        if self._version is None:
            h = hashlib.sha256()
            for info in sorted(self.stages, key=lambda s: s.name):
                h.update(f"{info.name}\0{info.kind.value}\0{','.join(sorted(info.dependencies))}\n".encode())
            self._version = h.hexdigest()[:12]
        return self._version

    @property
    def stage_specs(self) -> list[StageSpec]:
        """The stages as specs, in the order they were added, each ``runner`` the stage's own call.

        ``await spec.runner(ctx)`` runs the stage alone (without interceptors, events or retries), as
        in stageflow-core 0.9.1.

        .. versionadded:: 0.10
        """
        return [
            StageSpec(
                info.name,
                _runner_call(info),
                info.kind,
                info.dependencies,
                info.conditional,
                info.config,
                info.retry,
            )
            for info in self.stages
        ]

    def stage(self, name: str) -> StageInfo:
        """The ``StageInfo`` of one stage.

        Raises:
            KeyError: no stage has that name.
        """
        try:
            return self.stages[self._index[name]]
        except KeyError:
            msg = f"no stage {name!r} in pipeline {self.name!r}"
            raise KeyError(msg) from None

    @property
    def topological_order(self) -> tuple[str, ...]:
        """The stage names in one valid execution order."""
        return tuple(self.stages[i].name for i in self._order)

    def to_mermaid(self) -> str:
        """The DAG as a Mermaid flowchart."""
        return _mermaid(self.stages)

    def __repr__(self) -> str:
        return f"StageGraph(name={self.name!r}, stages={len(self.stages)})"

    async def run(
        self,
        ctx: StageContext | None = None,
        *,
        input_text: str | None = None,
        data: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        event_sink: EventSink | None = None,
        run_id: RunIdentity | None = None,
    ) -> RunResult:
        """Run the pipeline once: ``await graph.run(input_text="hi")`` or ``await graph.run(ctx)``.

        Args:
            ctx: the entry context: its ``snapshot`` is the run's input, its ``timer`` the run's clock, its
                ``event_sink`` (else the process sink) receives the run's events and its ``data`` seeds
                ``PipelineContext.data``. Without it, one is built from the keyword arguments.
            input_text: the snapshot's ``input_text`` (only without ``ctx``).
            data: the initial ``ctx.data`` of the run (only without ``ctx``).
            metadata: the snapshot's metadata, e.g. a W3C ``traceparent`` (only without ``ctx``).
            event_sink: the run's sink; ``None`` means the process sink (only without ``ctx``).
            run_id: the run's ``RunIdentity``; default a fresh one (only without ``ctx``).

        .. versionchanged:: 0.10
            The keyword arguments build the entry context.

        Returns:
            The ``RunResult``: every stage's ``StageResult`` by name.

        Raises:
            PipelineFailedError: a stage failed (raised, returned ``fail``, or exhausted its retries).
            PipelineCancelledError: a stage returned ``StageOutput.cancel``.
            asyncio.CancelledError: the awaiting task was cancelled; every running stage was cancelled
                and awaited first.
            TypeError: ``ctx`` is not a ``StageContext``, or is given together with keyword arguments.
        """
        if ctx is None:
            ctx = entry_context(
                input_text=input_text, data=data, metadata=metadata, event_sink=event_sink, run_id=run_id
            )
        elif not isinstance(ctx, StageContext):
            raise not_a_context_error(ctx)
        elif any(v is not None for v in (input_text, data, metadata, event_sink, run_id)):
            msg = "graph.run() takes an entry StageContext or keyword arguments, not both"
            raise TypeError(msg)
        sink = resolve_sink(ctx.event_sink)
        run = PipelineContext(
            snapshot=ctx.snapshot,
            graph=self,
            event_sink=sink,
            timer=ctx.timer,
            # an entry context's ``data`` is already a fresh dict; a stage's is its run's: copy that one
            data=ctx.data if ctx.pipeline is None else dict(ctx.data),
        )
        if not isinstance(sink, NoOpEventSink):
            emit(
                sink,
                "pipeline.created",
                {
                    "run_id": str(run.run_id),
                    "pipeline": self.name,
                    "timestamp": _wall(),
                    "stages": len(self.stages),
                    "version": self.version,
                },
            )
        if self._run_wrapped:
            return await self._run_chain(run)
        return await _Run(self, run).go()  # no run interceptors: skip a coroutine layer

    async def _execute(self, run: PipelineContext) -> RunResult:
        return await _Run(self, run).go()


class _Run:
    """The state of one run."""

    __slots__ = (
        "_create_task",
        "_run_id",
        "base_context",
        "cancelled_by",
        "done",
        "failures",
        "graph",
        "left",
        "nodes",
        "outputs",
        "remaining",
        "results",
        "run",
        "sink",
        "stopping",
        "tasks",
    )

    base_context: contextvars.Context  # set by go(), before any stage starts

    def __init__(self, graph: StageGraph, run: PipelineContext) -> None:
        self.graph = graph
        self.run = run
        self.nodes = graph._nodes
        n = len(self.nodes)
        self.remaining = graph._indegree.copy()
        self.outputs: list[StageOutput | None] = [None] * n
        self.tasks: list[asyncio.Task[None] | None] = [None] * n
        self.left = n
        self.stopping = False
        self.failures: dict[str, BaseException] = {}
        self.cancelled_by: tuple[str, str] | None = None
        sink: EventSink = run.event_sink
        self.sink: EventSink | None = None if isinstance(sink, NoOpEventSink) else sink
        self._run_id: str | None = None
        loop = asyncio.get_running_loop()
        self._create_task = loop.create_task
        self.done: asyncio.Future[None] = loop.create_future()
        self.results = RunResult(run.run_id, graph.name, 0.0, graph._deps_by_name)

    @property
    def run_id(self) -> str:
        """The run id as text (for events and records; not made unless one needs it)."""
        if self._run_id is None:
            self._run_id = str(self.run.run_id)
        return self._run_id

    def _event(self, **data: Any) -> dict[str, Any]:
        return {"run_id": self.run_id, "pipeline": self.graph.name, "timestamp": _wall(), **data}

    async def go(self) -> RunResult:
        results = self.results
        started = _perf()
        results.started_at = started
        if self.sink is not None:
            emit(self.sink, "pipeline.started", self._event(stages=len(self.nodes)))
        # Stage tasks start from the context the run interceptors set up, each in its own copy, never
        # from the context of the stage that happened to finish last.
        self.base_context = contextvars.copy_context()
        if self.left:
            for i in self.graph._roots:
                self._start(i, started)
            cancelled: asyncio.CancelledError | None = None
            try:
                await self.done
            except asyncio.CancelledError as exc:
                cancelled = exc
            if cancelled is not None or self.stopping:
                self.stopping = True
                cancelled = await self._stop_running() or cancelled
            if cancelled is not None:  # the caller's cancellation wins, also over a stage's failure
                results.ended_at = _perf()
                if self.sink is not None:
                    emit(self.sink, "pipeline.cancelled", self._summary(reason="cancelled by caller"))
                if self.graph.run_store is not None:
                    await self._record("cancelled", "cancelled by caller")
                raise cancelled
        results.ended_at = _perf()
        if self.failures:
            stage, error = next(iter(self.failures.items()))
            if self.sink is not None:
                emit(
                    self.sink,
                    "pipeline.failed",
                    self._summary(
                        stage=stage,
                        error=describe(error),
                        error_type=type(error).__name__,
                    ),
                )
            if self.graph.run_store is not None:
                await self._record("failed", f"{stage}: {type(error).__name__}: {describe(error)}")
            raise PipelineFailedError(stage, error, dict(self.failures), results) from error
        if self.cancelled_by is not None:
            stage, reason = self.cancelled_by
            if self.sink is not None:
                emit(self.sink, "pipeline.cancelled", self._summary(stage=stage, reason=reason))
            if self.graph.run_store is not None:
                await self._record("cancelled", f"{stage}: {reason}")
            raise PipelineCancelledError(stage, reason, results)
        if self.sink is not None:
            emit(self.sink, "pipeline.completed", self._summary())
        if self.graph.run_store is not None:
            await self._record("completed", None)
        return results

    async def _record(self, status: str, error: str | None) -> None:
        store = self.graph.run_store
        assert store is not None
        results = self.results
        wall = self.run.timer.to_wall
        stages = tuple(
            StageRecord(
                r.name,
                r.kind.value,
                r.status.value,
                wall(r.started_at),
                wall(r.ended_at),
                r.wait,
                r.attempts,
                None if r.error is None else describe(r.error),
                None if r.error is None else type(r.error).__name__,
                self.graph._deps_by_name[r.name],
            )
            for r in results.values()
        )
        record = RunRecord(
            self.run_id,
            self.graph.name,
            status,
            wall(results.started_at),
            wall(results.ended_at),
            stages,
            results.critical_path,
            error,
        )
        try:
            await store.record_run(record)
        except Exception as exc:  # a store never changes the run's outcome
            report_once("run store", store, exc)

    def _summary(self, **extra: Any) -> dict[str, Any]:
        results = self.results
        return self._event(
            duration=results.duration,
            critical_path=list(results.critical_path),
            stages={
                name: {"status": r.status.value, "wait": r.wait, "duration": r.duration}
                for name, r in results.items()
            },
            **extra,
        )

    async def _stop_running(self) -> asyncio.CancelledError | None:
        """Cancel and await every running stage; the caller's cancellation if it came meanwhile."""
        running = [t for t in self.tasks if t is not None and not t.done()]
        for task in running:
            task.cancel()
        cancelled: asyncio.CancelledError | None = None
        while running:
            try:
                await asyncio.wait(running)
            except asyncio.CancelledError as exc:
                cancelled = exc  # keep waiting: no stage task may outlive the run
            running = [t for t in running if not t.done()]
        return cancelled

    def _start(self, i: int, ready_at: float) -> None:
        self.tasks[i] = self._create_task(self._stage(i, ready_at), context=self.base_context.copy())

    def _finish(self, i: int, output: StageOutput, ended: float) -> None:
        """Record ``output`` for stage ``i`` and start (or skip) every child it made ready."""
        outputs, remaining, nodes = self.outputs, self.remaining, self.nodes
        # Auto-skipped children are finished in turn through ``stack``, made only when one is needed.
        stack: list[tuple[int, StageOutput, float]] | None = None
        while True:
            outputs[i] = output
            self.left -= 1
            if not self.stopping:
                for c in nodes[i].children:
                    left = remaining[c] - 1
                    remaining[c] = left
                    if left:
                        continue
                    child = nodes[c]
                    if child.conditional:
                        skipped = next(
                            (
                                d
                                for d, k in zip(child.deps, child.dep_index, strict=True)
                                if outputs[k].status is _SKIP  # type: ignore[union-attr]
                            ),
                            None,
                        )
                        if skipped is not None:
                            if stack is None:
                                stack = []
                            out = self._auto_skip(child, skipped, ended)
                            # its own children become ready when it ended, not when ``i`` did
                            stack.append((c, out, self.results[child.name].ended_at))
                            continue
                    self.tasks[c] = self._create_task(self._stage(c, ended), context=self.base_context.copy())
            if not stack:
                break
            i, output, ended = stack.pop()
        if not self.left and not self.done.done():
            self.done.set_result(None)

    def _auto_skip(self, node: _Node, dependency: str, ready_at: float) -> StageOutput:
        output = StageOutput.skip(reason=f"dependency {dependency!r} was skipped")
        now = _perf()
        self.results[node.name] = StageResult(
            node.name, node.kind, _SKIP, output, None, ready_at, now, now, 0
        )
        if self.sink is not None:
            self._stage_event(
                node,
                "skipped",
                reason=output.data["reason"],
                duration=0.0,
            )
        return output

    def _stage_event(self, node: _Node, outcome: str, **data: Any) -> None:
        """Emit ``stage.{name}.{outcome}`` with the stage's name and kind (only while a sink listens)."""
        assert self.sink is not None
        emit(self.sink, node.event(outcome), self._event(stage=node.name, kind=node.kind.value, **data))

    def _stop(self) -> None:
        self.stopping = True
        if not self.done.done():
            self.done.set_result(None)

    async def _stage(self, i: int, ready_at: float) -> None:
        node = self.nodes[i]
        run = self.run
        started = _perf()
        outputs = self.outputs
        deps = node.deps
        # Outputs of finished dependencies are never None.
        prior: Mapping[str, StageOutput]
        if not deps:
            prior = _NO_OUTPUTS
        elif len(deps) == 1:
            prior = {deps[0]: outputs[node.dep_index[0]]}  # type: ignore[dict-item]
        else:
            prior = {d: outputs[k] for d, k in zip(deps, node.dep_index, strict=True)}  # type: ignore[misc]
        ctx = _stage_context(run, node.info, prior, deps, ready_at, started)
        sink = self.sink
        if sink is not None:
            self._stage_event(
                node,
                "started",
                wait=started - ready_at,
                dependencies=list(node.deps),
            )
        call = node.call
        error: BaseException | None = None
        output: StageOutput | None = None
        try:
            while True:
                try:
                    output = await call(ctx)
                except Exception as exc:
                    policy = node.retry
                    if policy is not None and ctx.attempt < policy.max_attempts and policy.should_retry(exc):
                        await self._backoff(node, ctx, policy, exc)
                        continue
                    error = exc
                    break
                if type(output) is not StageOutput and not isinstance(output, StageOutput):
                    error = InvalidStageOutputError(node.name, output)
                    output = None
                    break
                if output.status is _RETRY:
                    policy = node.retry
                    if policy is None:
                        error = RetryNotConfiguredError(node.name, output.error)
                    elif ctx.attempt >= policy.max_attempts:
                        error = RetriesExhaustedError(node.name, ctx.attempt, output.error)
                    else:
                        await self._backoff(node, ctx, policy, output.error)
                        continue
                elif output.status is _FAIL:
                    error = StageFailedError(node.name, output.error or "Unknown error")
                break
        except asyncio.CancelledError:
            ended = _perf()
            self.tasks[i] = None
            self.results[node.name] = StageResult(
                node.name, node.kind, _CANCEL, None, None, ready_at, started, ended, ctx.attempt
            )
            if sink is not None:
                self._stage_event(
                    node,
                    "cancelled",
                    duration=ended - started,
                )
            if not self.stopping:  # cancelled on its own, not by the run: that ends the run as cancelled
                self.cancelled_by = (node.name, "stage task was cancelled")
                self.left -= 1
                self._stop()
            raise
        except Exception as exc:  # raised by the retry policy itself (retry_on, delay, sleep)
            error, output = exc, None
        try:
            ended = _perf()
            self.tasks[i] = None
            if error is not None:
                self.results[node.name] = StageResult(
                    node.name, node.kind, _FAIL, output, error, ready_at, started, ended, ctx.attempt
                )
                if sink is not None:
                    self._stage_event(
                        node,
                        "failed",
                        duration=ended - started,
                        error=describe(error),
                        error_type=type(error).__name__,
                        attempts=ctx.attempt,
                    )
                self.failures[node.name] = error
                self.left -= 1
                self._stop()
                return
            assert output is not None
            status = output.status
            # ``StageResult(name, kind, status, output, None, ready_at, started, ended, attempts)``, inlined:
            # this is the one result every stage makes.
            result = _new(StageResult)
            result.name = node.name
            result.kind = node.kind
            result.status = status
            result.output = output
            result.error = None
            result.ready_at = ready_at
            result.started_at = started
            result.ended_at = ended
            result.attempts = ctx.attempt
            self.results[node.name] = result
            if status is _CANCEL:
                reason = str(output.data.get("cancel_reason", ""))
                if sink is not None:
                    self._stage_event(
                        node,
                        "cancelled",
                        duration=ended - started,
                        reason=reason,
                    )
                if self.cancelled_by is None and not self.failures:
                    self.cancelled_by = (node.name, reason)
                self.left -= 1
                self._stop()
                return
            if sink is not None:
                if status is _SKIP:
                    self._stage_event(
                        node,
                        "skipped",
                        duration=ended - started,
                        reason=output.data.get("reason", ""),
                    )
                else:
                    self._stage_event(
                        node,
                        "completed",
                        duration=ended - started,
                        wait=started - ready_at,
                        attempts=ctx.attempt,
                    )
            self._finish(i, output, ended)
        except Exception as exc:  # never leave the run waiting: a failure in our own bookkeeping ends it
            self._crashed(node.name, node.kind, exc, ready_at, started, ctx.attempt)

    def _crashed(
        self, name: str, kind: StageKind, exc: Exception, ready_at: float, started: float, attempts: int
    ) -> None:
        logger.error("stageflow: finishing stage %r failed; the run fails: %r", name, exc, exc_info=exc)
        self.results[name] = StageResult(name, kind, _FAIL, None, exc, ready_at, started, _perf(), attempts)
        self.failures.setdefault(name, exc)
        self._stop()

    async def _backoff(
        self, node: _Node, ctx: StageContext, policy: RetryPolicy, reason: BaseException | str | None
    ) -> None:
        delay = policy.delay(ctx.attempt)
        if self.sink is not None:
            self._stage_event(
                node,
                "retrying",
                attempt=ctx.attempt,
                delay=delay,
                error=None if reason is None else reason if isinstance(reason, str) else describe(reason),
            )
        await policy.sleep(delay)
        ctx.attempt += 1
