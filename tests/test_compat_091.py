"""Programs written against stageflow-core 0.9.1's documented public API run here unchanged.

``compat_program_091.py`` runs under both this stageflow and stageflow-core 0.9.1 itself (installed from
PyPI), and both must print the same observations. The programs below use only names 0.9.1 exports
(top-level ``stageflow``, ``stageflow.context``, ``stageflow.stages``, ``stageflow.interceptors``) with
this package's executor features (interceptors on ``build()``); the reply stage, the sink and the context
factories they share with that program are its own, while the transcribe stage here is the keyword form of
the program's positional one. ``test_compat_units.py`` pins every item with exact values.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from stageflow import (
    EventSink,
    NoOpEventSink,
    Pipeline,
    PipelineContext,
    StageArtifact,
    StageContext,
    StageEvent,
    StageKind,
    StageOutput,
    StageResult,
    StageStatus,
    UnifiedStageSpec,
    clear_event_sink,
    get_event_sink,
    set_event_sink,
)
from stageflow.context import ContextSnapshot, RunIdentity
from stageflow.interceptors import BaseInterceptor, InterceptorResult
from stageflow.stages import UndeclaredDependencyError

from ._support import AuthInterceptor
from .compat_program_091 import Reply, Sink, context_without_ids, entry, reply_alone

USER = UUID("00000000-0000-4000-8000-000000000001")
ORG = UUID("00000000-0000-4000-8000-000000000002")


class TranscribeStage:
    """The program's ``Transcribe`` in keyword form, its artifact and event stamped by default."""

    name = "transcribe"
    kind = StageKind.TRANSFORM

    async def execute(self, ctx: StageContext) -> StageOutput:
        text = ctx.snapshot.input_text or ""
        return StageOutput(
            status=StageStatus.OK,
            data={"transcript": text},
            artifacts=[StageArtifact(type="transcript", payload={"text": text})],
            events=[StageEvent(type="progress", data={"percent": 100})],
        )


class RejectStage:
    name = "reject"
    kind = StageKind.GUARD

    async def execute(self, ctx: StageContext) -> StageOutput:
        return StageOutput.fail()


class PeekStage:
    name = "peek"
    kind = StageKind.WORK

    async def execute(self, ctx: StageContext) -> StageOutput:
        ctx.inputs.get_from("transcribe", "transcript")
        return StageOutput.ok()


class AuditInterceptor(BaseInterceptor):
    """An interceptor as 0.9.1 documents them: reads the run's ids, compares result statuses with strings."""

    name = "audit"
    priority = 30

    def __init__(self) -> None:
        self.seen: list[tuple[str, UUID | None, UUID | None, str | None, str | None]] = []
        self.completed: list[str] = []
        self.failed: list[str] = []

    async def before(self, stage_name: str, ctx: PipelineContext) -> InterceptorResult | None:
        self.seen.append((stage_name, ctx.user_id, ctx.org_id, ctx.topology, ctx.execution_mode))
        return None

    async def after(self, stage_name: str, result: StageResult, ctx: PipelineContext) -> None:
        if result.status == "completed":
            self.completed.append(stage_name)
        elif result.status == "failed":
            self.failed.append(stage_name)


def entry_context(*, sink: EventSink | None = None) -> StageContext:
    """The entry context, made with 0.9.1's factories."""
    snapshot = ContextSnapshot(
        run_id=RunIdentity(user_id=USER, org_id=ORG),
        input_text="hello",
        topology="voice_fast",
        execution_mode="practice",
    )
    return entry(snapshot, "pipeline_entry", sink=sink)


def voice_pipeline() -> Pipeline:
    return (
        Pipeline()
        .with_stage("transcribe", TranscribeStage, StageKind.TRANSFORM)
        .with_stage("reply", Reply, StageKind.AGENT, dependencies=("transcribe",))
    )


class TestProgram091:
    async def test_voice_pipeline_runs_unchanged(self) -> None:
        """A two-stage 0.9.1 program (artifacts, events, versions, ids in interceptors) gives its values."""
        pipeline = voice_pipeline()
        assert list(pipeline.stages) == ["transcribe", "reply"]
        assert isinstance(pipeline.stages["reply"], UnifiedStageSpec)
        assert pipeline.stages["reply"].dependencies == ("transcribe",)
        audit = AuditInterceptor()
        graph = pipeline.build(interceptors=[audit])
        assert [(s.name, s.kind, s.dependencies, s.conditional) for s in graph.stage_specs] == [
            ("transcribe", StageKind.TRANSFORM, (), False),
            ("reply", StageKind.AGENT, ("transcribe",), False),
        ]
        sink = Sink()
        results = await graph.run(entry_context(sink=sink))
        assert results["reply"].data == {"reply": "HELLO", "user": str(USER)}
        assert results["reply"].status == StageStatus.OK
        assert results["reply"].version == "v2"
        transcript = results["transcribe"].artifacts[0]
        assert (transcript.type, transcript.payload) == ("transcript", {"text": "hello"})
        assert [(e.type, e.data) for e in results["transcribe"].events] == [("progress", {"percent": 100})]
        assert results["transcribe"].duration_ms >= 0
        assert audit.seen == [
            ("transcribe", USER, ORG, "voice_fast", "practice"),
            ("reply", USER, ORG, "voice_fast", "practice"),
        ]
        assert (audit.completed, audit.failed) == (["transcribe", "reply"], [])
        progress = [data or {} for type, data in sink.events if type == "stage.progress"]
        assert len(progress) == 1
        assert {k: progress[0][k] for k in ("stage", "status", "stage_name", "chars", "execution_mode")} == {
            "stage": "reply",
            "status": "progress",
            "stage_name": "reply",
            "chars": 5,
            "execution_mode": "practice",
        }

    async def test_after_sees_failed_status(self) -> None:
        """An ``after()`` comparing ``result.status == "failed"`` sees a stage that returned ``fail()``."""
        audit = AuditInterceptor()
        graph = (
            voice_pipeline()
            .with_stage("reject", RejectStage, StageKind.GUARD, dependencies=("transcribe",))
            .build(interceptors=[audit])
        )
        with pytest.raises(Exception, match="Unknown error"):
            await graph.run(entry_context())
        assert audit.failed == ["reject"]
        assert "transcribe" in audit.completed

    async def test_interceptor_blocks_unauthenticated_runs(self) -> None:
        """The 0.9.1 README's auth interceptor stops the first stage when ``ctx.data`` lacks the flag."""
        audit = AuditInterceptor()
        graph = voice_pipeline().build(interceptors=[AuthInterceptor(), audit])
        with pytest.raises(Exception, match="Not authenticated"):
            await graph.run(entry_context())
        assert audit.seen == []

    async def test_seeded_data_reaches_the_interceptors(self) -> None:
        """With ``data=`` on the entry context (the migration table's change) the auth check passes."""
        graph = voice_pipeline().build(interceptors=[AuthInterceptor()])
        plain = entry_context()
        ctx = StageContext(
            plain.snapshot, plain.inputs, "pipeline_entry", plain.timer, data={"authenticated": True}
        )
        assert (await graph.run(ctx))["reply"].data == {"reply": "HELLO", "user": str(USER)}

    async def test_undeclared_dependency_carries_091_attributes(self) -> None:
        """Reading a non-dependency raises ``UndeclaredDependencyError`` with 0.9.1's attributes."""
        graph = (
            voice_pipeline().with_stage("peek", PeekStage, StageKind.WORK, dependencies=("reply",)).build()
        )
        with pytest.raises(Exception) as caught:
            await graph.run(entry_context())
        error = caught.value.__cause__
        assert isinstance(error, UndeclaredDependencyError)
        assert (error.stage_name, error.accessing_stage, error.declared_deps) == (
            "transcribe",
            "peek",
            frozenset({"reply"}),
        )

    async def test_process_sink_and_clear(self) -> None:
        """``set_event_sink`` routes a run's events to a sink; ``clear_event_sink`` restores the no-op."""
        sink = Sink()
        assert isinstance(sink, EventSink)
        set_event_sink(sink)
        try:
            await voice_pipeline().build().run(entry_context())
        finally:
            clear_event_sink()
        assert isinstance(get_event_sink(), NoOpEventSink)
        assert [t for t, _ in sink.events if not t.startswith("stage.progress")] == [
            "pipeline.created",
            "pipeline.started",
            "stage.transcribe.started",
            "stage.transcribe.completed",
            "stage.reply.started",
            "stage.reply.completed",
            "pipeline.completed",
        ]

    async def test_stage_spec_runner_runs_the_stage_alone(self) -> None:
        """``await spec.runner(ctx)`` of ``stage_specs`` runs one stage with the inputs it is given."""
        graph = voice_pipeline().build()
        output = await reply_alone(graph, ContextSnapshot(input_text="hey"))
        assert (output.status, dict(output.data), output.version) == (
            StageStatus.OK,
            {"reply": "HEY", "user": "None"},
            "v2",
        )

    async def test_pipeline_context_for_interceptor_tests(self) -> None:
        """A 0.9.1-style unit test builds a ``PipelineContext`` by keywords and calls the hooks directly."""
        audit = AuditInterceptor()
        auth = AuthInterceptor()
        ctx = PipelineContext(
            pipeline_run_id=UUID(int=7),
            request_id=None,
            session_id=None,
            user_id=USER,
            org_id=ORG,
            interaction_id=None,
            topology="chat_fast",
            execution_mode="doc_edit",
            data={"authenticated": True},
        )
        assert await audit.before("llm", ctx) is None
        assert await auth.before("llm", ctx) is None
        blocked = await auth.before("llm", context_without_ids())
        assert blocked == InterceptorResult(stage_ran=False, error="Not authenticated")
        assert audit.seen == [("llm", USER, ORG, "chat_fast", "doc_edit")]
        assert ctx.to_dict()["pipeline_run_id"] == str(UUID(int=7))

    async def test_concurrent_runs_of_one_graph(self) -> None:
        """One built graph runs twice at once with each run's own identity."""
        graph = voice_pipeline().build()
        first, second = await asyncio.gather(graph.run(entry_context()), graph.run(entry_context()))
        assert first.run_id != second.run_id
        assert first["reply"].data == second["reply"].data == {"reply": "HELLO", "user": str(USER)}


PROGRAM = Path(__file__).with_name("compat_program_091.py")
CHECKOUT = Path(__file__).resolve().parents[1]
"""The stageflow under test: this checkout's, whichever one the environment has installed."""
RUN_ID = "10000000-0000-4000-8000-000000000000"
"""The run id the program gives its contexts."""


@pytest.fixture(name="stageflow_core_091", scope="session")
def _stageflow_core_091(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stageflow-core 0.9.1 and its dependencies, installed from PyPI into a directory of their own."""
    target = tmp_path_factory.mktemp("stageflow-core-0.9.1")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(target),
        ]
        + ["stageflow-core==0.9.1"],
        check=True,
        timeout=600,
    )
    return target


def run_program(pythonpath: Path | None) -> tuple[str, dict[str, Any]]:
    """Run the 0.9.1 program under 0.9.1 (in ``pythonpath``) or, given ``None``, under this checkout's
    stageflow: the stageflow it used, its output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(CHECKOUT if pythonpath is None else pythonpath)
    where = subprocess.run(
        [sys.executable, "-c", "import stageflow; print(stageflow.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=PROGRAM.parent,  # where no stageflow package is: the import comes from the install
    ).stdout.strip()
    proc = subprocess.run(
        [sys.executable, str(PROGRAM)], capture_output=True, text=True, check=True, env=env, timeout=120
    )
    observed: dict[str, Any] = json.loads(proc.stdout)
    return where, observed


def added_on_top(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the keys our events add on top of 0.9.1's (the envelope: ``run_id``, ``pipeline``,
    ``timestamp``) out of the event observations: ``ours`` without them, and what was added where."""
    ours = dict(ours)
    added: dict[str, Any] = {}
    kind, keys = ours["record_stage_event"]
    added["record_stage_event"] = [k for k in keys if k not in theirs["record_stage_event"][1]]
    ours["record_stage_event"] = [kind, [k for k in keys if k in theirs["record_stage_event"][1]]]
    data, their_data = ours["record_stage_event_data"], theirs["record_stage_event_data"]
    added["record_stage_event_data"] = {k: v for k, v in data.items() if k not in their_data}
    ours["record_stage_event_data"] = {k: v for k, v in data.items() if k in their_data}
    events = []
    added["stage_ctx_record"] = []
    for (kind, data), (_, their_data) in zip(
        ours["stage_ctx_record"], theirs["stage_ctx_record"], strict=True
    ):
        events.append([kind, {k: v for k, v in data.items() if k in their_data}])
        added["stage_ctx_record"].append({k: v for k, v in data.items() if k not in their_data})
    ours["stage_ctx_record"] = events
    return ours, added


class TestAgainst091Itself:
    def test_same_observations_under_both_packages(self, stageflow_core_091: Path) -> None:
        """The 0.9.1 program prints exactly the same observations under 0.9.1 and under this stageflow."""
        where_091, theirs = run_program(stageflow_core_091)
        where_ours, ours = run_program(None)
        assert where_091.startswith(str(stageflow_core_091))
        assert not where_ours.startswith(str(stageflow_core_091))
        ours, added = added_on_top(ours, theirs)
        assert ours == theirs  # 0.9.1's keys and values, in 0.9.1's order
        [stage_ctx_added] = added.pop("stage_ctx_record")
        assert isinstance(stage_ctx_added.pop("timestamp"), float)
        assert (added, stage_ctx_added) == (
            {
                "record_stage_event": ["run_id", "pipeline"],
                "record_stage_event_data": {"run_id": RUN_ID, "pipeline": "voice"},
            },
            {"run_id": RUN_ID, "pipeline": None},
        )
        assert "<missing>" not in json.dumps(ours)
        assert (ours["results"]["reply"]["data"], ours["fail_default"], ours["timeout_default_ms"]) == (
            {"reply": "HELLO", "user": "40000000-0000-4000-8000-000000000000"},
            "Unknown error",
            30000,
        )
        assert len(ours) == 41
