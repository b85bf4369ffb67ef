"""A program written against stageflow-core 0.9.1's public API, run unchanged under both packages.

``tests/test_compat_091.py`` runs it with this repository's stageflow and with stageflow-core 0.9.1 from
PyPI and compares what it prints: one JSON object of observations. It uses only names both export and
behaviour both document; where the two differ on purpose (README "Migrating from stageflow-core") it
observes only what they share (for instance that a failure's message names "Unknown error").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import typing
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from stageflow import (
    BaseInterceptor,
    EventSink,
    InterceptorResult,
    NoOpEventSink,
    Pipeline,
    PipelineContext,
    PipelineTimer,
    StageArtifact,
    StageContext,
    StageEvent,
    StageKind,
    StageOutput,
    StageResult,
    StageStatus,
    TimeoutInterceptor,
    UnifiedStageSpec,
    clear_event_sink,
    create_stage_context,
    create_stage_inputs,
    get_event_sink,
    set_event_sink,
)
from stageflow.context import ContextSnapshot, RunIdentity
from stageflow.stages import UndeclaredDependencyError

RUN = UUID("10000000-0000-4000-8000-000000000000")
REQ = UUID("20000000-0000-4000-8000-000000000000")
SES = UUID("30000000-0000-4000-8000-000000000000")
USR = UUID("40000000-0000-4000-8000-000000000000")
ORG = UUID("50000000-0000-4000-8000-000000000000")
INT = UUID("60000000-0000-4000-8000-000000000000")
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Ids(typing.TypedDict):
    """The run's ids, as the keywords of both ``RunIdentity`` and ``PipelineContext``."""

    pipeline_run_id: UUID
    request_id: UUID
    session_id: UUID
    user_id: UUID
    org_id: UUID
    interaction_id: UUID


IDS = Ids(pipeline_run_id=RUN, request_id=REQ, session_id=SES, user_id=USR, org_id=ORG, interaction_id=INT)


class Sink(EventSink):
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.events.append((type, dict(data or {})))

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.events.append((type, dict(data or {})))


class Duck:
    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        pass

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        pass


class Transcribe:
    name = "transcribe"
    kind = StageKind.TRANSFORM

    async def execute(self, ctx: StageContext) -> StageOutput:
        text = ctx.snapshot.input_text or ""
        return StageOutput(
            StageStatus.OK,
            {"transcript": text},
            [StageArtifact("transcript", {"text": text}, CREATED)],
            [StageEvent("progress", {"percent": 100}, CREATED)],
        )


class Reply:
    name = "reply"
    kind = StageKind.AGENT

    async def execute(self, ctx: StageContext) -> StageOutput:
        transcript = ctx.inputs.require_from("transcribe", "transcript")
        ctx.record_stage_event("reply", "progress", chars=len(transcript))
        return StageOutput.ok(reply=transcript.upper(), user=str(ctx.snapshot.user_id)).with_version("v2")


async def maybe(ctx: StageContext) -> StageOutput:
    return StageOutput.skip("nothing to do")


async def after_skip(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(saw=ctx.inputs.get_from("maybe", "reason"))


async def reject(ctx: StageContext) -> StageOutput:
    return StageOutput.fail()


async def first(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(step=1)


async def hang_up(ctx: StageContext) -> StageOutput:
    return StageOutput.cancel("user hung up")


class Auth(BaseInterceptor):
    name = "auth"
    priority = 5

    async def before(self, stage_name: str, ctx: PipelineContext) -> InterceptorResult | None:
        if not ctx.data.get("authenticated"):
            return InterceptorResult(stage_ran=False, error=f"{ctx.user_id} is not authenticated")
        return None

    async def after(self, stage_name: str, result: StageResult, ctx: PipelineContext) -> None:
        pass


def snapshot() -> ContextSnapshot:
    return ContextSnapshot(
        run_id=RunIdentity(**IDS, created_at=CREATED),
        input_text="hello",
        topology="voice_fast",
        execution_mode="practice",
        metadata={"k": "v"},
        created_at=CREATED,
    )


def entry(
    snap: ContextSnapshot,
    name: str = "entry",
    *,
    timer: PipelineTimer | None = None,
    sink: EventSink | None = None,
) -> StageContext:
    """A run's entry context for ``snap``, made with 0.9.1's two factories."""
    timer = PipelineTimer() if timer is None else timer
    return create_stage_context(snap, create_stage_inputs(snap), name, timer, event_sink=sink)


def context_without_ids(user_id: UUID | None = None) -> PipelineContext:
    """A ``PipelineContext`` made with the six id keywords 0.9.1 requires, all None but ``user_id``."""
    return PipelineContext(
        pipeline_run_id=None,
        request_id=None,
        session_id=None,
        user_id=user_id,
        org_id=None,
        interaction_id=None,
    )


async def reply_alone(graph: Any, snap: ContextSnapshot) -> StageOutput:
    """Stage ``reply`` of ``graph`` run on its own by its spec's runner, given the transcript "hey"."""
    spec = {s.name: s for s in graph.stage_specs}["reply"]
    inputs = create_stage_inputs(
        snap,
        prior_outputs={"transcribe": StageOutput.ok(transcript="hey")},
        declared_deps=spec.dependencies,
        stage_name="reply",
    )
    output: StageOutput = await spec.runner(create_stage_context(snap, inputs, "reply", PipelineTimer()))
    return output


def shared_keys(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: data.get(key, "<missing>") for key in keys}


def error_of(call: Any) -> str:
    try:
        call()
    except Exception as exc:
        return type(exc).__name__
    return "no error"


async def run_pipeline(seen: dict[str, Any]) -> None:
    pipeline = (
        Pipeline()
        .with_stage("transcribe", Transcribe, StageKind.TRANSFORM)
        .with_stage("reply", Reply, StageKind.AGENT, dependencies=("transcribe",))
        .with_stage("maybe", maybe, StageKind.ROUTE, dependencies=None)
        .with_stage("after_skip", after_skip, StageKind.WORK, dependencies=("maybe",))
    )
    seen["stages"] = list(pipeline.stages)
    seen["specs"] = [
        [s.name, s.kind.value, list(s.dependencies), s.conditional, isinstance(s, UnifiedStageSpec)]
        for s in pipeline.stages.values()
    ]
    graph = pipeline.build()
    seen["graph_specs"] = [
        [s.name, s.kind.value, list(s.dependencies), s.conditional] for s in graph.stage_specs
    ]
    snap = snapshot()
    sink = Sink()
    results = await graph.run(entry(snap, "pipeline_entry", sink=sink))
    seen["results"] = {
        name: {
            "status": results[name].status.value,
            "data": dict(results[name].data),
            "artifacts": [[a.type, a.payload, a.timestamp.isoformat()] for a in results[name].artifacts],
            "events": [[e.type, e.data, e.timestamp.isoformat()] for e in results[name].events],
            "version": results[name].version,
            "duration_ms_is_int": isinstance(results[name].duration_ms, int),
        }
        for name in sorted(results)
    }
    progress = [data for type, data in sink.events if type == "stage.progress"]
    keys = ("pipeline_run_id", "request_id", "execution_mode", "stage", "status", "stage_name", "chars")
    seen["progress_events"] = [shared_keys(data, keys) for data in progress]
    alone = await reply_alone(graph, snap)
    seen["runner_alone"] = [alone.status.value, dict(alone.data), alone.version]
    failing = Pipeline().with_stage("reject", reject, StageKind.GUARD).build()
    try:
        await failing.run(entry(snap))
    except Exception as exc:
        seen["failure"] = ["Unknown error" in str(exc), getattr(exc, "stage", "<missing>")]
    else:
        seen["failure"] = "run did not fail"
    cancelling = (
        Pipeline()
        .with_stage("first", first, StageKind.WORK)
        .with_stage("hang_up", hang_up, StageKind.WORK, dependencies=("first",))
        .build()
    )
    try:
        await cancelling.run(entry(snap))
    except Exception as exc:
        results_of = getattr(exc, "results", {})
        seen["cancel"] = [
            getattr(exc, "stage", "<missing>"),
            getattr(exc, "reason", "<missing>"),
            sorted(results_of),
        ]
    else:
        seen["cancel"] = "run was not cancelled"


async def pipeline_context(seen: dict[str, Any]) -> None:
    sink = Sink()
    ctx = PipelineContext(
        **IDS,
        topology="chat_fast",
        execution_mode="doc_edit",
        service="voice",
        event_sink=sink,
        data={"authenticated": True},
    )
    seen["ctx_ids"] = [str(ctx.pipeline_run_id), str(ctx.user_id), str(ctx.org_id), ctx.topology, ctx.service]
    seen["ctx_to_dict"] = ctx.to_dict()
    ctx.record_stage_event(stage="llm", status="started", payload={"model": "m"})
    ctx.try_emit_event("tool.completed", {"tool": "search"})
    recorded = sink.events[0][1]
    seen["record_stage_event"] = [sink.events[0][0], [k for k in recorded if k != "timestamp"]]
    seen["record_stage_event_data"] = {k: v for k, v in recorded.items() if k != "timestamp"}
    seen["record_stage_event_utc"] = datetime.fromisoformat(recorded["timestamp"]).utcoffset() is not None
    tool_keys = ("pipeline_run_id", "request_id", "execution_mode", "topology", "service", "tool")
    seen["try_emit_event"] = [sink.events[1][0], shared_keys(sink.events[1][1], tool_keys)]
    ctx.set_stage_metadata("llm", {"tokens": 3})
    seen["metadata"] = [ctx.get_stage_metadata("llm"), ctx.get_stage_metadata("other")]
    seen["canceled"] = [ctx.is_canceled]
    ctx.mark_canceled()
    seen["canceled"].append(ctx.is_canceled)
    seen["now_utc"] = PipelineContext.now().tzinfo is UTC
    auth = Auth()
    allowed = await auth.before("llm", ctx)
    blocked = await auth.before("llm", context_without_ids(USR))
    seen["auth"] = [allowed, None if blocked is None else [blocked.stage_ran, blocked.error]]


def sinks(seen: dict[str, Any]) -> None:
    sink = Sink()
    set_event_sink(sink)
    try:
        seen["default_sink_is_process_sink"] = context_without_ids().event_sink is sink
    finally:
        clear_event_sink()
    seen["cleared_sink_is_noop"] = isinstance(get_event_sink(), NoOpEventSink)
    seen["runtime_checkable"] = [isinstance(Duck(), EventSink), isinstance(object(), EventSink)]


def inputs_and_errors(seen: dict[str, Any]) -> None:
    snap = snapshot()
    inputs = create_stage_inputs(
        snap, prior_outputs={"a": StageOutput.ok(k=1)}, declared_deps=["a"], stage_name="b"
    )
    seen["inputs"] = [inputs.get("k"), inputs.get_from("a", "k"), inputs.get_from("a", "zz", "dflt")]
    try:
        inputs.get_from("c", "k")
    except UndeclaredDependencyError as exc:
        seen["undeclared"] = [exc.stage_name, exc.accessing_stage, sorted(exc.declared_deps)]
    seen["missing_key"] = error_of(lambda: inputs.require_from("a", "zz"))
    seen["bad_keys"] = {
        method: [error_of(lambda m=method, k=key: call(inputs, m, k)) for key in (None, 1, "")]
        for method in ("get", "get_from", "require_from")
    }
    open_inputs = create_stage_inputs(snap, prior_outputs={"a": StageOutput.ok(k=1)})
    seen["undeclared_allowed_without_declared_deps"] = open_inputs.get_from("zz", "k", "dflt")


def call(inputs: Any, method: str, key: Any) -> Any:
    if method == "get":
        return inputs.get(key)
    return getattr(inputs, method)("a", key)


def contexts_and_values(seen: dict[str, Any]) -> None:
    snap = snapshot()
    alias = ContextSnapshot[Any]  # type: ignore[type-arg]  # generic in 0.9.1, plain here
    seen["generic_snapshot"] = isinstance(snap, typing.get_origin(alias) or alias)
    seen["snapshot_ids"] = [str(snap.request_id), str(snap.session_id), str(snap.user_id), str(snap.org_id)]
    seen["snapshot_interaction_id"] = str(snap.interaction_id)
    keys = (
        "input_text",
        "topology",
        "execution_mode",
        "created_at",
        "metadata",
        "pipeline_run_id",
        "user_id",
    )
    snap_dict = snap.to_dict()
    seen["snapshot_to_dict"] = [shared_keys(snap_dict, keys), snap_dict["run_id"]]
    timer = PipelineTimer()
    seen["timer"] = [
        timer.started_at == datetime.fromtimestamp(timer.pipeline_start_ms / 1000, UTC),
        timer.started_at.tzinfo is UTC,
    ]
    sink = Sink()
    ctx = entry(snap, timer=timer, sink=sink)
    seen["stage_ctx"] = [ctx.started_at == timer.started_at, StageContext.now().tzinfo is UTC]
    ctx_dict = ctx.to_dict()
    seen["stage_ctx_to_dict"] = [
        ctx_dict["stage_name"],
        ctx_dict["started_at"] == timer.started_at.isoformat(),
    ]
    seen["as_pipeline_context"] = ctx.as_pipeline_context(data={"d": 1}, service="svc", db="db").to_dict()
    ctx.record_stage_event("llm", "completed", tokens=3)
    seen["stage_ctx_record"] = sink.events
    art, ev = StageArtifact("a", {"x": 1}, CREATED), StageEvent("e", {"y": 2}, CREATED)
    out = StageOutput(StageStatus.OK, {"d": 1}, [art], [ev], None, 5, "v1")
    seen["output_fields"] = [f.name for f in dataclasses.fields(StageOutput)]
    seen["output"] = [
        out.status.value,
        out.data,
        len(out.artifacts),
        len(out.events),
        out.duration_ms,
        out.version,
    ]
    seen["with"] = [out.with_duration(9).duration_ms, out.with_version("v2").version, out.version]
    seen["fail_default"] = StageOutput.fail().error
    ok = StageOutput.ok(a=1)
    seen["ok_defaults"] = [ok.artifacts, ok.events, ok.error, ok.duration_ms, ok.version]
    seen["timeout_default_ms"] = TimeoutInterceptor.DEFAULT_TIMEOUT_MS


async def main() -> None:
    seen: dict[str, Any] = {}
    await run_pipeline(seen)
    await pipeline_context(seen)
    sinks(seen)
    inputs_and_errors(seen)
    contexts_and_values(seen)
    json.dump(seen, sys.stdout, default=str, sort_keys=True, indent=1)


if __name__ == "__main__":
    asyncio.run(main())
