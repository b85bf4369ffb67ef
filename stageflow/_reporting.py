"""What a run reports: the event types, the one event envelope, and the per-run reporter.

Every event stageflow emits is built by ``envelope()``: ``run_id`` (text), ``pipeline`` (the pipeline's
name; ``None`` for a context outside any run) and ``timestamp`` (Unix seconds, a float), then the event's
own fields. The executor's events (``pipeline.created`` ... ``pipeline.completed|failed|cancelled``,
``stage.{name}.started|retrying|first_chunk|loop_blocked|completed|failed|skipped|cancelled``), the
attempt loop's ``retrying`` and the custom events of ``record_stage_event``/``try_emit_event`` all go
through a ``RunReporter``, and so does the run's one store write. stageflow-core 0.9.1's emitters put
0.9.1's keys on top of the envelope (``legacy=``): where 0.9.1 had a key (``record_stage_event``'s ISO
``timestamp``), its value is 0.9.1's.

A run gets a reporter only when it has somewhere to report to (a sink that is not a ``NoOpEventSink`` or a
run store): otherwise ``reporter_for()`` returns ``None`` and the executor builds no event
data at all, which keeps the run's fast path free. ``StageGraph.run()`` makes it for ``pipeline.created``;
the run makes it again (``current_reporter()``) if a run interceptor's ``intercept_run`` gave the run
another sink meanwhile (``Interceptor.run_sink`` hooks are applied before the reporter is made).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._errors import describe, error_type_name
from ._events import EventSink, NoOpEventSink, emit, report_once
from ._types import StageStatus

if TYPE_CHECKING:
    import asyncio

    from ._results import RunResult, StageResult
    from ._store import RunRecord, RunStore

__all__ = (
    "PIPELINE_CANCELLED",
    "PIPELINE_COMPLETED",
    "PIPELINE_CREATED",
    "PIPELINE_FAILED",
    "PIPELINE_STARTED",
    "RUN_ENDED",
    "STAGE_CANCELLED",
    "STAGE_COMPLETED",
    "STAGE_FAILED",
    "STAGE_FIRST_CHUNK",
    "STAGE_LOOP_BLOCKED",
    "STAGE_RETRYING",
    "STAGE_SKIPPED",
    "STAGE_STARTED",
    "RunReporter",
    "current_reporter",
    "envelope",
    "record_bounded",
    "reporter_for",
    "stage_event_type",
    "stage_note",
)

_wall = time.time
_SKIP = StageStatus.SKIP
_CANCEL = StageStatus.CANCEL

PIPELINE_CREATED = "pipeline.created"
PIPELINE_STARTED = "pipeline.started"
PIPELINE_COMPLETED = "pipeline.completed"
PIPELINE_FAILED = "pipeline.failed"
PIPELINE_CANCELLED = "pipeline.cancelled"

# a stage's event type is ``stage.{name}.{outcome}``: these are the outcomes
STAGE_STARTED = "started"
STAGE_RETRYING = "retrying"
STAGE_FIRST_CHUNK = "first_chunk"
STAGE_LOOP_BLOCKED = "loop_blocked"
STAGE_COMPLETED = "completed"
STAGE_FAILED = "failed"
STAGE_SKIPPED = "skipped"
STAGE_CANCELLED = "cancelled"

RUN_ENDED: Mapping[str, str] = {
    "completed": PIPELINE_COMPLETED,
    "failed": PIPELINE_FAILED,
    "cancelled": PIPELINE_CANCELLED,
}
"""The run-ended event type of each status a run store records."""


def stage_event_type(stage: str, outcome: str) -> str:
    """The event type of one stage's ``outcome``, e.g. ``stage.llm.completed``."""
    return f"stage.{stage}.{outcome}"


def envelope(
    run_id: str | None,
    pipeline: str | None,
    data: Mapping[str, Any] | None = None,
    legacy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one event envelope: ``run_id``, ``pipeline``, ``timestamp`` (float), then ``data``'s items.

    ``legacy`` (stageflow-core 0.9.1's fields of its own emitters) goes on top: a key 0.9.1 had keeps its
    0.9.1 value. ``data`` comes last of all, as the caller gave it.
    """
    event: dict[str, Any] = {"run_id": run_id, "pipeline": pipeline, "timestamp": _wall()}
    if legacy:
        event.update(legacy)
    if data:
        event.update(data)
    return event


class RunReporter:
    """Everything one run reports: its events (through the one envelope) and its run record.

    Made by ``reporter_for()`` (``None`` when there is nowhere to report to). ``sink`` is ``None`` when the
    run only has a store: then no event data is built.
    """

    __slots__ = ("given", "pipeline", "run_id", "sink", "store")

    def __init__(
        self,
        sink: EventSink | None,
        store: RunStore | None,
        run_id: str,
        pipeline: str | None,
    ) -> None:
        self.given = sink  # the sink it was made for (a run interceptor may give the run another)
        if isinstance(sink, NoOpEventSink):
            sink = None
        self.sink: EventSink | None = sink
        self.store = store
        self.run_id = run_id
        self.pipeline = pipeline

    def event(self, type: str, data: Mapping[str, Any]) -> None:
        """Emit one event of the run. A sink's ``Exception`` is logged once; a ``BaseException`` is raised."""
        sink = self.sink
        if sink is not None:
            emit(sink, type, envelope(self.run_id, self.pipeline, data))

    def custom(
        self, type: str, data: Mapping[str, Any] | None, legacy: Mapping[str, Any] | None = None
    ) -> None:
        """Emit a custom event (``try_emit_event``, ``record_stage_event``) through ``envelope``."""
        sink = self.sink
        if sink is not None:
            emit(sink, type, envelope(self.run_id, self.pipeline, data, legacy))

    @staticmethod
    def summary(results: RunResult, extra: Mapping[str, Any]) -> dict[str, Any]:
        """The data of the run's ``pipeline.completed|failed|cancelled`` (besides the envelope)."""
        return {
            "duration": results.duration,
            "category": results.category.value,
            "critical_path": list(results.critical_path),
            "stages": {
                name: {"status": r.status.value, "wait": r.wait, "duration": r.duration}
                for name, r in results.items()
            },
            **extra,
        }

    async def record(
        self,
        status: str,
        error: str | None,
        results: RunResult,
        deps: Mapping[str, tuple[str, ...]],
        wall: Callable[[float], float],
    ) -> None:
        """Write the run's one ``RunRecord`` to the store (if any), bounded (see ``record_bounded``)."""
        store = self.store
        if store is None:
            return
        from ._store import RunRecord, StageRecord  # a store is loaded: so is its module

        stages = tuple(
            StageRecord(
                r.name,
                r.kind.value,
                r.status.value,
                wall(r.started_at),
                wall(r.ended_at),
                r.wait,
                r.attempts,
                stage_note(r),
                None if r.error is None else error_type_name(r.error),
                deps[r.name],
                r.dispatch,
                r.work,
                r.chunks,
                r.time_to_first_chunk,
                r.category,
            )
            for r in results.values()
        )
        record = RunRecord(
            self.run_id,
            results.pipeline_name,
            status,
            wall(results.started_at),
            wall(results.ended_at),
            stages,
            results.critical_path,
            error,
            first_output_path=results.first_output_path,
            category=results.category,
            not_started=results.not_started,
        )
        await record_bounded(store, record)


def reporter_for(
    sink: EventSink | None,
    store: RunStore | None,
    run_id: object,
    pipeline: str | None,
) -> RunReporter | None:
    """The reporter of one run, or ``None`` when it has no sink (but the no-op one) and no store."""
    if store is None and (sink is None or isinstance(sink, NoOpEventSink)):
        return None
    return RunReporter(sink, store, str(run_id), pipeline)


def current_reporter(
    reporter: RunReporter | None, sink: EventSink, store: RunStore | None, run_id: object, pipeline: str
) -> RunReporter | None:
    """``reporter`` if it still reports to ``sink``, else the reporter for ``sink`` (a run interceptor may
    have given the run another sink since ``reporter`` was made, e.g. one that traces its events)."""
    if reporter is None:
        if store is None and isinstance(sink, NoOpEventSink):
            return None
    elif reporter.given is sink:
        return reporter
    return reporter_for(sink, store, run_id, pipeline)


def stage_note(result: StageResult) -> str | None:
    """What a stage's record and its timeline row say after its outcome: its error (``describe``d), else
    the reason it skipped or cancelled."""
    if result.error is not None:
        return describe(result.error)
    if result.status is _SKIP or result.status is _CANCEL:
        reason = result.data.get("reason" if result.status is _SKIP else "cancel_reason")
        return str(reason) if reason else None
    return None


_store_writes: set[asyncio.Task[None]] = set()  # writes that outlived their timeout, kept until they end


async def record_bounded(store: RunStore, record: RunRecord) -> None:
    """``await store.record_run(record)``, bounded by the store's ``record_timeout`` (default
    ``RUN_STORE_TIMEOUT``). A store that raises or overruns is logged once and otherwise ignored: the
    run's outcome never changes and ``run()`` never waits longer than the bound."""
    import asyncio

    from ._store import RUN_STORE_TIMEOUT

    timeout = getattr(store, "record_timeout", RUN_STORE_TIMEOUT)
    try:
        task = asyncio.ensure_future(store.record_run(record))
    except Exception as exc:
        report_once("run store", store, exc)
        return
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()  # a store that ignores the cancellation runs on, unawaited: the run does not wait
        _store_writes.add(task)
        task.add_done_callback(_store_writes.discard)
        report_once(
            "run store",
            store,
            TimeoutError(
                f"record_run did not finish within {timeout:g} s; run {record.run_id} was not recorded"
            ),
        )
        return
    if task.cancelled():
        return
    failure = task.exception()
    if failure is None:
        return
    if isinstance(failure, Exception):
        report_once("run store", store, failure)
        return
    raise failure
