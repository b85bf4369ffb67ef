"""The per-run scheduler: the compiled stages a graph runs, and ``_Run``, the state of one run.

One asyncio task per stage, started the moment its last dependency finishes. Per run the scheduler does
O(V + E) work: an in-degree counter per stage, decremented along the children adjacency of each finished
stage; a stage's inputs hold only its direct dependencies' outputs. All per-run state lives in ``_Run``, so
a ``StageGraph`` is immutable and safe to run many times concurrently. Every stage ends in ``_settle`` and
every run in ``_end``. It is over 500 lines because one run's life (start, release, streams, settle, end)
reads best in one class: cutting ``_Run`` would spread its hot path over modules.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from inspect import CO_COROUTINE
from types import FunctionType, MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _monitor
from ._attempts import run_attempts
from ._context import PipelineContext, StageContext, _stage_context
from ._dag import StageInfo
from ._errors import (
    InvalidStageOutputError,
    PipelineCancelledError,
    PipelineFailedError,
    RetryNotConfiguredError,
    StageFailedError,
    StageTimeoutError,
    describe,
    error_category,
    error_type_name,
)
from ._interceptors import (
    CallNext,
)
from ._monitor import LoopBlock
from ._offload import OffloadedCall, _PoolHolder
from ._reporting import (
    PIPELINE_STARTED,
    RUN_ENDED,
    STAGE_CANCELLED,
    STAGE_COMPLETED,
    STAGE_FAILED,
    STAGE_FIRST_CHUNK,
    STAGE_LOOP_BLOCKED,
    STAGE_SKIPPED,
    STAGE_STARTED,
    current_reporter,
    stage_event_type,
)
from ._results import Hop, RunResult, StageResult
from ._retry import RetryPolicy
from ._runner import DEFAULT_CANCEL_GRACE
from ._streams import Channel, StreamCall, StreamState, per_chunk
from ._types import OutcomeCategory, StageKind, StageOutput, StageStatus

if TYPE_CHECKING:
    from ._graph import StageGraph

__all__ = ("deadline_call", "runner_call", "stage_of_task")

logger = logging.getLogger("stageflow")

_perf = time.perf_counter
_OK = StageStatus.OK
_SKIP = StageStatus.SKIP
_FAIL = StageStatus.FAIL
_CANCEL = StageStatus.CANCEL
_SUCCESS = OutcomeCategory.SUCCESS.value
_SKIPPED = OutcomeCategory.SKIP.value
_CANCELLED = OutcomeCategory.CANCELLATION.value
_NO_DATA: Mapping[str, Any] = MappingProxyType({})
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
        "stream_children",
        "stream_deps",
        "streamy",
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
        self.stream_children: tuple[int, ...] = ()  # dependents that consume this stage's stream
        self.stream_deps: tuple[int, ...] = tuple(index[p] for p in info.streams)  # streams it consumes
        self.streamy = info.streaming is not None or bool(info.streams)  # a producer or a consumer


@dataclass(slots=True, eq=False, repr=False)
class _Deadline:
    """A stage's ``with_stage(timeout=)``: each attempt fails with ``StageTimeoutError`` past it."""

    stage: str
    seconds: float
    call: CallNext

    async def __call__(self, ctx: StageContext) -> StageOutput:
        deadline = asyncio.timeout(self.seconds)
        try:
            async with deadline:
                output = await self.call(ctx)
        except TimeoutError as exc:
            if deadline.expired():
                raise StageTimeoutError(self.stage, self.seconds) from exc
            raise
        if deadline.expired():  # the stage swallowed the cancellation and returned: it still timed out
            raise StageTimeoutError(self.stage, self.seconds)
        return output


def deadline_call(info: StageInfo, call: CallNext) -> CallNext:
    return call if info.timeout is None else _Deadline(info.name, info.timeout, call)


def runner_call(
    info: StageInfo, pool: _PoolHolder | None = None, grace: float = DEFAULT_CANCEL_GRACE
) -> CallNext:
    """The awaitable call of one stage: the function or ``execute`` itself, or its executor hop."""
    runner = info.runner
    if type(runner) is FunctionType and runner.__code__.co_flags & CO_COROUTINE:
        return runner  # ``async def`` function: the common case
    execute = getattr(runner, "execute", None)
    if execute is None or asyncio.iscoroutinefunction(runner):
        call = runner
    else:
        call = execute
    if info.sync:
        return OffloadedCall(info, call, info.executor, pool or _PoolHolder(1, info.pipeline), grace)
    if info.streaming is not None:
        return StreamCall(info.name, call, info.streaming)
    return call  # type: ignore[no-any-return]


class _Run:
    """The state of one run.

    Every stage ends in ``_settle``: the one place that turns a stage's outcome (a ``StageOutput``, an
    exception, or whatever ``execute`` returned instead) into its ``StageResult``, emits its stage event,
    records its timing and releases its dependents (or stops the run); a conditional stage a skipped
    dependency skips too. Every run ends in ``_end``: the one place that gives the run its category, its
    run-ended event and its record, then returns its ``RunResult`` or raises.
    """

    __slots__ = (
        "_create_task",
        "base_context",
        "blocked",
        "cancelled_by",
        "done",
        "events",
        "failures",
        "fatal",
        "graph",
        "left",
        "nodes",
        "outputs",
        "remaining",
        "reporter",
        "results",
        "run",
        "stopping",
        "streams",
        "tasks",
        "watch",
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
        # a BaseException that is not an Exception (raised by a stage, an interceptor or a sink): like
        # ``asyncio.TaskGroup``, the run stops, is reported and recorded, and ``run()`` re-raises it
        self.fatal: BaseException | None = None
        self.cancelled_by: tuple[str, str] | None = None
        # made by run() for pipeline.created; made again if a run interceptor gave the run another sink
        reporter = self.reporter = run._reporter = current_reporter(
            run._reporter, run.event_sink, graph.run_store, run.run_id, graph.name
        )
        # the reporter when the run has a sink: every event's data is built only then
        self.events = None if reporter is None or reporter.sink is None else reporter
        loop = asyncio.get_running_loop()
        self._create_task = loop.create_task
        self.done: asyncio.Future[None] = loop.create_future()
        self.results = RunResult(run.run_id, graph.name, 0.0, graph._deps_by_name, graph._streams_by_name)
        self.watch = None if _monitor._current is None else _monitor.running_watch()
        self.blocked: set[str] | None = None  # stages already warned about blocking the loop
        self.streams: dict[int, StreamState] | None = None  # the streaming stages that started

    @property
    def run_id(self) -> str:
        """The run id as text (for the loop monitor's reports)."""
        reporter = self.reporter
        return str(self.run.run_id) if reporter is None else reporter.run_id

    def _emit(self, type: str, data: Mapping[str, Any], stage: str | None = None) -> None:
        """Emit one event; a sink raising a ``BaseException`` (``emit`` logs ``Exception``s) ends the run."""
        assert self.events is not None
        try:
            self.events.event(type, data)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            if stage is not None:
                self.failures.setdefault(stage, exc)
            self._fatal(exc)

    def _fatal(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self._stop()

    async def go(self) -> RunResult:
        results = self.results
        started = _perf()
        results.started_at = started
        if self.events is not None:
            self._emit(PIPELINE_STARTED, {"stages": len(self.nodes)})
        # Stage tasks start from the context the run interceptors set up, each in its own copy, never
        # from the context of the stage that happened to finish last.
        self.base_context = contextvars.copy_context()
        cancelled: asyncio.CancelledError | None = None
        if self.left and self.fatal is None:
            for i in self.graph._roots:
                self._start(i, started)
            try:
                await self.done
            except asyncio.CancelledError as exc:
                cancelled = exc
            if cancelled is not None or self.stopping:
                self.stopping = True
                cancelled = await self._stop_running() or cancelled
        return await self._end(cancelled)

    async def _end(self, cancelled: asyncio.CancelledError | None) -> RunResult:
        """End the run (the run's twin of ``_settle``): its category, its one run-ended event, its one
        record, then its result or the exception ``run()`` raises.

        The caller's cancellation wins over everything, a stage's failure over a stage's cancel; a
        ``BaseException`` that stopped the run (``fatal``, also one a sink raised on the run-ended event)
        is re-raised itself.
        """
        results = self.results
        results.ended_at = _perf()
        error: BaseException | None = None
        extra: dict[str, Any]
        if cancelled is not None:
            status, category, note = "cancelled", OutcomeCategory.CANCELLATION, "cancelled by caller"
            extra = {"reason": note}
        elif self.failures or self.fatal is not None:
            if self.failures:
                stage, error = next(iter(self.failures.items()))
            else:  # a sink raised on pipeline.started
                stage, error = "", self.fatal
            assert error is not None
            status, category = "failed", error_category(error)
            kind, message = error_type_name(error), describe(error)
            note = f"{stage}: {kind}: {message}"
            extra = {"stage": stage, "error": message, "error_type": kind}
        elif self.cancelled_by is not None:
            stage, reason = self.cancelled_by
            status, category, note = "cancelled", OutcomeCategory.CANCELLATION, f"{stage}: {reason}"
            extra = {"stage": stage, "reason": reason}
        else:
            status, category, note, extra = "completed", OutcomeCategory.SUCCESS, None, {}
        results.category = category
        reporter = self.reporter
        if reporter is not None:
            if self.events is not None:
                self._emit(RUN_ENDED[status], reporter.summary(results, extra))
            await reporter.record(status, note, results, self.graph._deps_by_name, self.run.timer.to_wall)
        if cancelled is not None:
            raise cancelled
        if self.fatal is not None:
            raise self.fatal
        if error is not None:
            raise PipelineFailedError(stage, error, dict(self.failures), results) from error
        if self.cancelled_by is not None:
            raise PipelineCancelledError(stage, reason, results)
        return results

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

    def _stop(self) -> None:
        self.stopping = True
        if not self.done.done():
            self.done.set_result(None)

    async def _stage(self, i: int, ready_at: float) -> None:
        """One stage's task: build its context, run its attempts, settle its outcome."""
        node = self.nodes[i]
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
        ctx = _stage_context(self.run, node.info, prior, deps, ready_at, started)
        if node.streamy:
            self._open_streams(i, node, ctx)
        if self.events is not None:
            self._stage_event(node, STAGE_STARTED, wait=started - ready_at, dependencies=list(deps))
        outcome: object
        try:
            if node.retry is None:
                outcome = await node.call(ctx)
            else:  # the one attempt loop, shared with RetryInterceptor and ErrorAction.RETRY
                outcome = await run_attempts(node.info, ctx, node.call, node.retry)
        except asyncio.CancelledError as exc:
            self._settle(i, exc, ctx)
            raise
        except (KeyboardInterrupt, SystemExit):
            raise  # as in asyncio: they leave the event loop at once
        except BaseException as exc:
            outcome = exc
        self._settle(i, outcome, ctx)

    def _open_streams(self, i: int, node: _Node, ctx: StageContext) -> None:
        """Give a streaming stage its channel and a consumer its readers (and only finished outputs)."""
        if node.info.streaming is not None:
            consumers = tuple(self.nodes[c].name for c in node.stream_children)
            channel = Channel(consumers, node.info.streaming.buffer) if consumers else None
            state = StreamState(channel, partial(self._first_chunk, i, ctx))
            ctx._stream = state
            if self.streams is None:
                self.streams = {}
            self.streams[i] = state
        if node.stream_deps:
            streams = self.streams or {}
            readers = {}
            for p in node.stream_deps:
                producer = self.nodes[p]
                started = streams.get(p)
                channel = None if started is None else started.channel
                if channel is None:  # the producer never ran (skipped): its stream is empty
                    channel = Channel((node.name,), 1)
                    channel.close()
                elif started is not None:
                    started.readers.append(ctx.inputs)  # given the aggregate at the producer's end
                readers[producer.name] = channel.reader(node.name, producer.name)
            inputs = ctx.inputs
            inputs._streams = readers
            outputs = self.outputs
            inputs._prior = {
                d: out
                for d, k in zip(node.deps, node.dep_index, strict=True)
                if (out := outputs[k]) is not None
            }

    @staticmethod
    def _end_stream(state: StreamState, outcome: object) -> None:
        """Close a streaming stage's channel: its consumers see the end, or its error where it happened."""
        channel = state.channel
        state.on_first = None
        if channel is None:
            return
        if isinstance(outcome, asyncio.CancelledError):
            channel.close(outcome)
        elif isinstance(outcome, BaseException):
            channel.close(outcome)
        else:
            channel.close()

    def _first_chunk(self, i: int, ctx: StageContext) -> None:
        """Stage ``i`` yielded its first chunk: report it and start the stages that consume its stream."""
        node = self.nodes[i]
        state: StreamState = ctx._stream
        if self.events is not None:
            assert state.first_at is not None
            self._stage_event(node, STAGE_FIRST_CHUNK, time_to_first_chunk=state.first_at - ctx.began_at)
        self._release_streams(node, _perf())

    def _release_streams(self, node: _Node, now: float) -> None:
        """Count ``node``'s stream as arrived for each of its consumers; start those now ready."""
        if self.stopping:
            return
        remaining = self.remaining
        for c in node.stream_children:
            left = remaining[c] - 1
            remaining[c] = left
            if not left:
                child = self.nodes[c]
                skipped = _skipped_dependency(child, self.outputs) if child.conditional else None
                if skipped is not None:
                    out = self._auto_skip(c, skipped, now)
                    self._release(c, out, self.results[child.name].ended_at)
                else:
                    self.tasks[c] = self._create_task(self._stage(c, now), context=self.base_context.copy())

    def _settle(self, i: int, outcome: object, ctx: StageContext | None, ready_at: float = 0.0) -> None:
        """End stage ``i`` with ``outcome`` (see the class docstring); raises only ``KeyboardInterrupt``.

        ``ctx`` is ``None`` for a stage that never started (a conditional stage that a skipped dependency
        skips, ready at ``ready_at``): it starts and ends now after no attempt, and ``_release``, which
        found it ready, releases its dependents.
        """
        node = self.nodes[i]
        if ctx is None:
            state = hop = None
        else:
            watch = self.watch
            if watch is not None and watch.suspect is not None:
                watch.settled(self, node)  # a block this stage's code caused, before its closing event
            state = ctx._stream
            if state is not None:
                self._end_stream(state, outcome)
            hop = ctx._hop
        if node.stream_deps:
            self._detach(node)
        try:
            self.tasks[i] = None
            ended = _perf()
            if ctx is None:
                started, attempts = ended, 0
            else:
                ready_at, started, attempts = ctx.ready_at, ctx.began_at, ctx.attempt
            if (type(outcome) is StageOutput or isinstance(outcome, StageOutput)) and outcome.status is _OK:
                # ``StageResult(name, kind, OK, outcome, None, ready_at, started, ended, attempts)``,
                # inlined: this is the one result almost every stage makes
                result = _new(StageResult)
                result.name = node.name
                result.kind = node.kind
                result.status = _OK
                result.output = outcome
                result.error = None
                result.ready_at = ready_at
                result.started_at = started
                result.ended_at = ended
                result.attempts = attempts
                result._hop = hop
                result.stream = state
                self.results[node.name] = result
                if self.events is not None:
                    self._stage_event(
                        node,
                        STAGE_COMPLETED,
                        duration=ended - started,
                        wait=started - ready_at,
                        attempts=attempts,
                        category=_SUCCESS,
                        **(
                            _NO_DATA if hop is None and state is None else _hop_or_stream(hop, state, started)
                        ),
                    )
                self._release(i, outcome, ended)
                return
            status, output, error = _classify(node, outcome)
            work = None if hop is None or hop.work is None else {"work": hop.work}
            result = StageResult(
                node.name, node.kind, status, output, error, ready_at, started, ended, attempts
            )
            result._hop = hop
            result.stream = state
            self.results[node.name] = result
            if status is _SKIP:
                assert output is not None
                if self.events is not None:
                    self._stage_event(
                        node,
                        STAGE_SKIPPED,
                        duration=ended - started,
                        reason=output.data.get("reason", ""),
                        category=_SKIPPED,
                    )
                if ctx is not None:
                    self._release(i, output, ended)
            elif status is _FAIL:
                assert error is not None
                if self.events is not None:
                    self._stage_event(
                        node,
                        STAGE_FAILED,
                        duration=ended - started,
                        error=describe(error),
                        error_type=error_type_name(error),
                        attempts=attempts,
                        category=error_category(error).value,
                        **(work or {}),
                    )
                self.failures[node.name] = error
                if isinstance(error, Exception):
                    self._stop()
                else:
                    self._fatal(error)
            elif output is not None:  # returned StageOutput.cancel: the run stops without an error
                reason = str(output.data.get("cancel_reason", ""))
                if self.events is not None:
                    self._stage_event(
                        node, STAGE_CANCELLED, duration=ended - started, reason=reason, category=_CANCELLED
                    )
                if self.cancelled_by is None and not self.failures:
                    self.cancelled_by = (node.name, reason)
                self._stop()
            else:  # its task was cancelled
                if self.events is not None:
                    self._stage_event(
                        node, STAGE_CANCELLED, duration=ended - started, category=_CANCELLED, **(work or {})
                    )
                if not self.stopping:  # cancelled on its own, not by the run: the run ends as cancelled
                    self.cancelled_by = (node.name, "stage task was cancelled")
                    self._stop()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # never leave the run waiting: a failure in our own bookkeeping ends it
            logger.error(
                "stageflow: settling stage %r failed; the run fails: %r", node.name, exc, exc_info=exc
            )
            self.failures.setdefault(node.name, exc)
            if isinstance(exc, Exception):
                self._stop()
            else:
                self._fatal(exc)

    def _release(self, i: int, output: StageOutput, ended: float) -> None:
        """Record ``output`` for stage ``i`` and start (or skip) every child it made ready."""
        outputs, remaining, nodes = self.outputs, self.remaining, self.nodes
        # Auto-skipped children are released in turn through ``stack``, made only when one is needed.
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
                        skipped = _skipped_dependency(child, outputs)
                        if skipped is not None:
                            if stack is None:
                                stack = []
                            out = self._auto_skip(c, skipped, ended)
                            stack.append((c, out, self.results[child.name].ended_at))
                            continue
                    self.tasks[c] = self._create_task(self._stage(c, ended), context=self.base_context.copy())
                if nodes[i].stream_children:
                    state = None if self.streams is None else self.streams.get(i)
                    if state is not None:
                        for inputs in state.readers:  # consumers still running read the aggregate now
                            inputs._prior[nodes[i].name] = output
                    if state is None or state.first_at is None:  # it yielded nothing (or never ran)
                        self._release_streams(nodes[i], ended)
            if not stack:
                break
            # its own children become ready when it ended, not when ``i`` did
            i, output, ended = stack.pop()
        if not self.left and not self.done.done():
            self.done.set_result(None)

    def _detach(self, node: _Node) -> None:
        """Consumer ``node`` ended or was skipped: the streams it read no longer wait for it."""
        streams = self.streams
        if streams is None:
            return
        for p in node.stream_deps:
            state = streams.get(p)
            if state is not None and state.channel is not None:
                state.channel.detach(node.name)

    def _auto_skip(self, i: int, dependency: str, ready_at: float) -> StageOutput:
        """Settle conditional stage ``i``, which a skipped dependency skips without running; its output."""
        output = StageOutput.skip(reason=f"dependency {dependency!r} was skipped")
        self._settle(i, output, None, ready_at)
        return output

    def loop_blocked(self, node: _Node, block: LoopBlock) -> None:
        """Report that ``node``'s code blocked the loop: its event, and one warning per run and stage."""
        if self.events is not None:
            self._stage_event(
                node,
                STAGE_LOOP_BLOCKED,
                duration=block.duration,
                **{"code.file.path": block.file, "code.line.number": block.line},
            )
        if self.blocked is None:
            self.blocked = set()
        if node.name in self.blocked:
            return
        self.blocked.add(node.name)
        logger.warning(
            "stage %r blocked the event loop for %d ms at %s:%s; make it a sync stage to run it in a thread",
            node.name,
            round(block.duration * 1000),
            _shown_path(block.file),
            block.line,
        )

    def _stage_event(self, node: _Node, outcome: str, **data: Any) -> None:
        """Emit ``stage.{name}.{outcome}`` with the stage's name and kind (only while a sink listens)."""
        self._emit(
            stage_event_type(node.name, outcome),
            {"stage": node.name, "kind": node.kind.value, **data},
            node.name,
        )


def _shown_path(path: str | None) -> str | None:
    """``path`` relative to the working directory when it lies under it (as a person reads it)."""
    if path is None:
        return None
    import os

    here = os.path.join(os.getcwd(), "")
    return path[len(here) :] if path.startswith(here) else path


def _hop_or_stream(hop: Hop | None, state: StreamState | None, started: float) -> dict[str, Any]:
    """The ``completed`` event's measurements of a sync stage (dispatch) or a streaming one (chunks)."""
    extra: dict[str, Any] = {}
    if hop is not None:
        extra["dispatch"] = hop.dispatch
    if state is not None:
        extra["chunks"] = state.chunks
        extra["time_to_first_chunk"] = None if state.first_at is None else state.first_at - started
        extra["time_per_output_chunk"] = per_chunk(state.chunks, state.first_at, state.last_at)
    return extra


def _skipped_dependency(child: _Node, outputs: list[StageOutput | None]) -> str | None:
    """The first finished dependency of ``child`` that was skipped, if any."""
    for d, k in zip(child.deps, child.dep_index, strict=True):
        out = outputs[k]
        if out is not None and out.status is _SKIP:
            return d
    return None


def stage_of_task(task: asyncio.Task[Any] | None) -> tuple[_Run, _Node] | None:
    """The run and stage whose task ``task`` is, while it has not ended (for the loop monitor)."""
    if task is None:
        return None
    coro = task.get_coro()
    frame = getattr(coro, "cr_frame", None)
    if frame is None or getattr(coro, "cr_code", None) is not _STAGE_CODE:
        return None
    found = frame.f_locals
    return found["self"], found["node"]


def _classify(node: _Node, outcome: object) -> tuple[StageStatus, StageOutput | None, BaseException | None]:
    """A stage's final status, output and error from its outcome (anything but a plain OK output)."""
    if isinstance(outcome, StageOutput):
        status = outcome.status
        if status is _SKIP or status is _CANCEL:  # an ok output settled before it got here
            return status, outcome, None
        if status is _FAIL:
            return _FAIL, outcome, StageFailedError(node.name, outcome.error or "Unknown error")
        # a StageOutput.retry that no retry mechanism took: none is configured
        return _FAIL, outcome, RetryNotConfiguredError(node.name, outcome.error)
    if isinstance(outcome, asyncio.CancelledError):
        return _CANCEL, None, None
    if isinstance(outcome, BaseException):
        return _FAIL, None, outcome
    return _FAIL, None, InvalidStageOutputError(node.name, outcome)


_STAGE_CODE = _Run._stage.__code__
