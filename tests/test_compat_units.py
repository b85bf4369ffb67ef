"""stageflow-core 0.9.1's public API, item by item, with exact values (see README "Migrating").

It runs past 500 lines because it pins 0.9.1's surface item by item, one test per member.

The sections follow ``stageflow/_compat.py`` (the context mixins, the factories, the mixins themselves,
the finder and ``_renamed``'s tables), then the 0.9.1 behaviour the engine's own types keep.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stageflow
import stageflow.stages
from stageflow import (
    DuplicateStageError,
    EventSink,
    InMemoryEventSink,
    LoggingEventSink,
    NoOpEventSink,
    Pipeline,
    PipelineContext,
    PipelineTimer,
    StageArtifact,
    StageContext,
    StageEvent,
    StageKind,
    StageOutput,
    StageSpec,
    StageStatus,
    TimeoutInterceptor,
    UndeclaredDependencyError,
    UnifiedStageSpec,
    _compat,
    clear_event_sink,
    create_stage_context,
    create_stage_inputs,
    get_event_sink,
    set_event_sink,
)
from stageflow.context import ContextSnapshot, RunIdentity
from stageflow.stages import StageInputs

from ._support import make_ctx, ok_stage
from .compat_program_091 import CREATED, IDS, INT, ORG, REQ, RUN, SES, USR, context_without_ids

T = StageKind.TRANSFORM
ID_STRINGS = {key: str(value) for key, value in IDS.items()}
"""The run's ids as ``to_dict`` writes them."""


def full_snapshot() -> ContextSnapshot:
    return ContextSnapshot(
        run_id=RunIdentity(RUN, REQ, SES, USR, ORG, INT, created_at=CREATED),
        input_text="hi",
        topology="chat_fast",
        execution_mode="practice",
        metadata={"k": "v"},
        created_at=CREATED,
    )


def type_error_of(call: Callable[[], object]) -> str:
    """The message of the ``TypeError`` that ``call()`` raises."""
    with pytest.raises(TypeError) as caught:
        call()
    return str(caught.value)


def compat_context(**extra: Any) -> PipelineContext:
    return PipelineContext(
        **IDS,
        topology="chat_fast",
        execution_mode="practice",
        **extra,
    )


# ---------------------------------------------------------------------------- _compat: PipelineContextCompat


class TestPipelineContext:
    def test_keyword_constructor_ids(self) -> None:
        """The 0.9.1 keywords give a context whose ids, topology and mode read back as attributes."""
        ctx = compat_context()
        assert {keyword: getattr(ctx, keyword) for keyword in IDS} == IDS
        assert (ctx.run_id, ctx.topology, ctx.execution_mode) == (RUN, "chat_fast", "practice")
        assert ctx.snapshot.run_id.user_id == USR

    def test_keyword_constructor_defaults(self) -> None:
        """Unset 0.9.1 attributes have 0.9.1's defaults; the sink is the process sink."""
        ctx = context_without_ids()
        assert (
            ctx.service,
            ctx.configuration,
            ctx.db,
            ctx.canceled,
            ctx.artifacts,
            ctx.data,
            ctx.parent_run_id,
            ctx.parent_stage_id,
            ctx.correlation_id,
            ctx.is_child_run,
            ctx.pipeline_name,
        ) == ("pipeline", {}, None, False, [], {}, None, None, None, False, "pipeline")
        assert ctx.event_sink is get_event_sink()
        assert ctx.run_id.version == 4

    def test_process_sink_is_read_at_construction(self, process_sink: InMemoryEventSink) -> None:
        """Without ``event_sink`` the context takes the process sink current when it is made."""
        assert PipelineContext().event_sink is process_sink

    def test_keyword_constructor_keeps_every_attribute(self) -> None:
        """Every 0.9.1 keyword is kept as given."""
        sink = InMemoryEventSink()
        art = StageArtifact("audio", {"ms": 5})
        parent, corr = UUID(int=1), UUID(int=2)
        ctx = compat_context(
            configuration={"model": "m"},
            service="voice",
            event_sink=sink,
            data={"x": 1},
            db="session",
            canceled=True,
            artifacts=[art],
            parent_run_id=parent,
            parent_stage_id="router",
            correlation_id=corr,
        )
        assert (
            ctx.configuration,
            ctx.service,
            ctx.event_sink,
            ctx.data,
            ctx.db,
            ctx.canceled,
            ctx.artifacts,
            ctx.parent_run_id,
            ctx.parent_stage_id,
            ctx.correlation_id,
            ctx.is_child_run,
            ctx.pipeline_name,
        ) == (
            {"model": "m"},
            "voice",
            sink,
            {"x": 1},
            "session",
            True,
            [art],
            parent,
            "router",
            corr,
            True,
            "voice",
        )

    def test_attributes_are_settable(self) -> None:
        """The 0.9.1 attributes can be set after construction, like 0.9.1's dataclass fields."""
        ctx = PipelineContext()
        ctx.service = "chat"
        ctx.db = 3
        ctx.configuration = {"a": 1}
        ctx.artifacts = []
        ctx.parent_run_id = RUN
        ctx.parent_stage_id = "s"
        ctx.correlation_id = REQ
        ctx.canceled = True
        assert (
            ctx.service,
            ctx.db,
            ctx.configuration,
            ctx.parent_run_id,
            ctx.parent_stage_id,
            ctx.correlation_id,
            ctx.is_canceled,
        ) == ("chat", 3, {"a": 1}, RUN, "s", REQ, True)

    def test_snapshot_and_id_keywords_do_not_mix(self) -> None:
        """Ids next to a snapshot are refused, naming the keywords and the fix."""
        assert type_error_of(
            lambda: PipelineContext(snapshot=ContextSnapshot(), user_id=USR, topology="t")
        ) == (
            "PipelineContext got snapshot= together with user_id=, topology=; the ids, topology and "
            "execution_mode come from the snapshot (its RunIdentity): pass either the snapshot or those "
            "keywords"
        )

    def test_unknown_keyword(self) -> None:
        """A keyword neither form has is refused, listing the ones there are."""
        assert type_error_of(lambda: PipelineContext(user=USR)) == (  # type: ignore[call-arg]
            "PipelineContext() got an unexpected keyword argument 'user'; it takes snapshot, graph, "
            "event_sink, timer, data, pipeline_run_id, request_id, session_id, user_id, org_id, "
            "interaction_id, topology, configuration, execution_mode, service, db, canceled, artifacts, "
            "parent_run_id, parent_stage_id, correlation_id"
        )

    def test_snapshot_with_extras(self) -> None:
        """A snapshot goes with the 0.9.1 attributes that are not ids."""
        ctx = PipelineContext(snapshot=full_snapshot(), service="voice", db="db")
        assert (ctx.user_id, ctx.service, ctx.db, ctx.pipeline_name) == (USR, "voice", "db", "voice")

    def test_graph_of_a_context_no_run_made(self) -> None:
        """Reading ``graph`` of a keyword-made context raises AttributeError saying why."""
        with pytest.raises(
            AttributeError, match="^this PipelineContext was not made by a run, so it has no graph$"
        ):
            PipelineContext().graph  # noqa: B018

    def test_cancel_flag_and_metadata(self) -> None:
        """``mark_canceled`` sets the flag; stage metadata is kept per stage."""
        ctx = PipelineContext()
        assert (ctx.is_canceled, ctx.get_stage_metadata("llm")) == (False, None)
        ctx.mark_canceled()
        ctx.set_stage_metadata("llm", {"tokens": 3})
        ctx.set_stage_metadata("llm", {"tokens": 4})
        assert (ctx.canceled, ctx.is_canceled, ctx.get_stage_metadata("llm")) == (True, True, {"tokens": 4})

    def test_now_is_utc(self) -> None:
        """``now()`` is an aware UTC datetime, on the class and on instances."""
        before = datetime.now(UTC)
        now = PipelineContext.now()
        assert now.tzinfo is UTC
        assert before <= now <= PipelineContext().now()

    def test_to_dict(self) -> None:
        """``to_dict`` has 0.9.1's keys; parent ids appear only when set."""
        ctx = compat_context(data={"x": 1}, artifacts=[StageArtifact("a", {})])
        expected: dict[str, Any] = {
            **ID_STRINGS,
            "topology": "chat_fast",
            "execution_mode": "practice",
            "service": "pipeline",
            "data": {"x": 1},
            "canceled": False,
            "artifacts_count": 1,
        }
        assert ctx.to_dict() == expected
        ctx.parent_run_id, ctx.parent_stage_id, ctx.correlation_id = UUID(int=1), "router", UUID(int=2)
        assert ctx.to_dict() == {
            **expected,
            "parent_run_id": str(UUID(int=1)),
            "parent_stage_id": "router",
            "correlation_id": str(UUID(int=2)),
        }

    def test_record_stage_event(self) -> None:
        """``record_stage_event`` emits ``stage.{stage}.{status}`` with the envelope's ``run_id`` and
        ``pipeline`` first, then 0.9.1's ids, labels and UTC timestamp."""
        sink = InMemoryEventSink()
        compat_context(event_sink=sink, service="voice").record_stage_event(
            stage="llm", status="started", payload={"model": "m"}
        )
        [event] = sink.events
        data = dict(event.data)
        stamp = datetime.fromisoformat(data.pop("timestamp"))
        assert (event.type, data) == (
            "stage.llm.started",
            {
                "run_id": str(RUN),
                "pipeline": "voice",
                "request_id": str(REQ),
                "session_id": str(SES),
                "user_id": str(USR),
                "org_id": str(ORG),
                "service": "voice",
                "stage": "llm",
                "status": "started",
                "topology": "chat_fast",
                "execution_mode": "practice",
                "model": "m",
                "pipeline_run_id": str(RUN),
            },
        )
        assert stamp.utcoffset() == timedelta(0)

    def test_try_emit_event_carries_ids(self) -> None:
        """``try_emit_event`` tags the event with the ids, topology, execution mode and service."""
        sink = InMemoryEventSink()
        compat_context(event_sink=sink).try_emit_event("tool.completed", {"tool": "search"})
        [event] = sink.events
        data = dict(event.data)
        assert isinstance(data.pop("timestamp"), float)
        assert (event.type, data) == (
            "tool.completed",
            {
                "run_id": str(RUN),
                "pipeline": "pipeline",
                "pipeline_run_id": str(RUN),
                "request_id": str(REQ),
                "execution_mode": "practice",
                "topology": "chat_fast",
                "service": "pipeline",
                "tool": "search",
            },
        )

    async def test_run_context_reads_ids_from_the_snapshot(self) -> None:
        """During a run, the interceptors' context answers the 0.9.1 id attributes from the snapshot."""
        seen: list[tuple[Any, ...]] = []

        async def stage(ctx: StageContext) -> StageOutput:
            run = ctx.pipeline
            assert run is not None
            seen.append(
                (run.user_id, run.session_id, run.topology, run.service, run.graph.name, run.canceled)
            )
            return StageOutput.ok()

        snapshot = full_snapshot()
        entry = StageContext(snapshot, StageInputs(snapshot), "entry", PipelineTimer())
        await Pipeline(name="p").with_stage("s", stage, T).build().run(entry)
        assert seen == [(USR, SES, "chat_fast", "pipeline", "p", False)]


# ------------------------------------------------------------------------------- _compat: StageContextCompat


class TestStageContext:
    def test_stage_context_started_at_and_now(self) -> None:
        """``StageContext.started_at`` is its timer's start; ``now()`` is UTC."""
        ctx = make_ctx()
        assert ctx.started_at == ctx.timer.started_at
        assert (StageContext.now().tzinfo, ctx.now().tzinfo) == (UTC, UTC)

    def test_stage_context_to_dict(self) -> None:
        """``StageContext.to_dict`` is the snapshot's dict plus the stage name and start time."""
        snapshot = full_snapshot()
        timer = PipelineTimer()
        ctx = StageContext(snapshot, StageInputs(snapshot), "llm", timer)
        assert ctx.to_dict() == {
            **snapshot.to_dict(),
            "stage_name": "llm",
            "started_at": timer.started_at.isoformat(),
        }

    def test_as_pipeline_context(self) -> None:
        """``as_pipeline_context`` carries the snapshot's ids and the sink, and copies what it is given."""
        snapshot, sink = full_snapshot(), InMemoryEventSink()
        ctx = StageContext(snapshot, StageInputs(snapshot), "llm", PipelineTimer(), sink)
        data, conf = {"d": 1}, {"c": 2}
        run = ctx.as_pipeline_context(data=data, configuration=conf, service="voice", db="db")
        assert (run.pipeline_run_id, run.user_id, run.topology, run.execution_mode, run.event_sink) == (
            RUN,
            USR,
            "chat_fast",
            "practice",
            sink,
        )
        assert (run.data, run.configuration, run.service, run.db) == ({"d": 1}, {"c": 2}, "voice", "db")
        assert (run.data is not data, run.configuration is not conf) == (True, True)
        plain = ctx.as_pipeline_context()
        assert (plain.data, plain.configuration, plain.service, plain.db) == ({}, {}, "pipeline", None)

    def test_record_stage_event_on_a_stage_context(self) -> None:
        """``StageContext.record_stage_event`` emits ``stage.{status}`` with the stage and context names."""
        sink = InMemoryEventSink()
        snapshot = full_snapshot()
        StageContext(snapshot, StageInputs(snapshot), "entry", PipelineTimer(), sink).record_stage_event(
            "llm", "completed", tokens=3
        )
        [event] = sink.events
        assert isinstance(event.data["timestamp"], float)
        assert [(e.type, {k: v for k, v in e.data.items() if k != "timestamp"}) for e in sink.events] == [
            (
                "stage.completed",
                {
                    "run_id": str(RUN),
                    "pipeline": None,
                    "pipeline_run_id": str(RUN),
                    "request_id": str(REQ),
                    "execution_mode": "practice",
                    "stage": "llm",
                    "status": "completed",
                    "stage_name": "entry",
                    "tokens": 3,
                },
            )
        ]

    async def test_record_stage_event_during_a_run(self, sink: InMemoryEventSink) -> None:
        """In a stage, ``record_stage_event`` goes to the run's sink with the run's tags."""

        async def stage(ctx: StageContext) -> StageOutput:
            ctx.record_stage_event("s", "progress", n=1)
            return StageOutput.ok()

        ctx = make_ctx(sink=sink)
        await Pipeline(name="p").with_stage("s", stage, T).build().run(ctx)
        [event] = sink.of_type("stage.progress")
        data = dict(event.data)
        data.pop("timestamp")
        assert data == {
            "run_id": str(ctx.snapshot.pipeline_run_id),
            "pipeline": "p",
            "pipeline_run_id": str(ctx.snapshot.pipeline_run_id),
            "request_id": None,
            "execution_mode": None,
            "topology": None,
            "service": "pipeline",
            "stage": "s",
            "status": "progress",
            "stage_name": "s",
            "n": 1,
        }


# ------------------------------------------------------------------------------ _compat: PipelineTimerCompat


class TestPipelineTimer:
    def test_timer_started_at_is_utc(self) -> None:
        """``PipelineTimer.started_at`` is ``pipeline_start_ms`` in UTC; ``perf_start`` is monotonic."""
        timer = PipelineTimer()
        assert timer.started_at == datetime.fromtimestamp(timer.pipeline_start_ms / 1000, UTC)
        assert timer.started_at.tzinfo is UTC
        assert isinstance(timer.perf_start, float)
        assert abs(timer.to_wall(timer.perf_start) * 1000 - timer.pipeline_start_ms) < 1


# ---------------------------------------------------------------------------------------- _compat: factories


class TestFactories:
    def test_create_stage_inputs(self) -> None:
        """``create_stage_inputs`` keeps its arguments; declared dependencies become a frozenset."""
        snapshot = ContextSnapshot()
        prior = {"a": StageOutput.ok(k=1)}
        inputs = create_stage_inputs(
            snapshot, prior_outputs=prior, ports="ports", declared_deps=["a"], stage_name="b", strict=False
        )
        assert (inputs.snapshot, dict(inputs.prior_outputs), inputs.ports, inputs.declared_deps) == (
            snapshot,
            prior,
            "ports",
            frozenset({"a"}),
        )
        assert (inputs.stage_name, inputs.strict, inputs.get_from("zzz", "k", 5)) == ("b", False, 5)

    @pytest.mark.parametrize("declared", [None, [], frozenset()], ids=["none", "empty-list", "empty-set"])
    def test_create_stage_inputs_without_declared_deps_reads_any_stage(self, declared: Any) -> None:
        """As in 0.9.1, no (or empty) declared dependencies mean any stage may be read."""
        inputs = create_stage_inputs(
            ContextSnapshot(), prior_outputs={"a": StageOutput.ok(k=1)}, declared_deps=declared
        )
        assert (inputs.declared_deps, inputs.get_from("a", "k"), inputs.get_from("b", "k", 0)) == (None, 1, 0)

    def test_create_stage_inputs_strict_rejects_undeclared(self) -> None:
        """With declared dependencies, reading another stage raises with 0.9.1's attributes set."""
        inputs = create_stage_inputs(ContextSnapshot(), declared_deps={"a"}, stage_name="b")
        with pytest.raises(UndeclaredDependencyError) as caught:
            inputs.get_from("c", "k")
        assert (caught.value.stage_name, caught.value.accessing_stage, caught.value.declared_deps) == (
            "c",
            "b",
            frozenset({"a"}),
        )
        assert (caught.value.stage, caught.value.wanted) == ("b", "c")

    def test_create_stage_context(self) -> None:
        """``create_stage_context`` makes the ``StageContext`` of its arguments."""
        snapshot, timer, sink = ContextSnapshot(), PipelineTimer(), InMemoryEventSink()
        inputs = create_stage_inputs(snapshot)
        ctx = create_stage_context(snapshot, inputs, "entry", timer, sink)
        assert (ctx.snapshot, ctx.inputs, ctx.stage_name, ctx.timer, ctx.event_sink) == (
            snapshot,
            inputs,
            "entry",
            timer,
            sink,
        )
        assert create_stage_context(snapshot, inputs, "entry", timer).event_sink is None


# ---------------------------------------------------------------------------------------- _compat itself


PIPELINE_CONTEXT_091 = {
    *IDS,  # the six run ids, as the 0.9.1 program spells them
    "topology",
    "execution_mode",
    "service",
    "configuration",
    "db",
    "canceled",
    "artifacts",
    "parent_run_id",
    "parent_stage_id",
    "correlation_id",
    "is_child_run",
    "is_canceled",
    "mark_canceled",
    "set_stage_metadata",
    "get_stage_metadata",
    "now",
    "to_dict",
    "record_stage_event",
    "try_emit_event",
}
"""0.9.1's ``PipelineContext`` members beyond what a stage sees (README "Migrating")."""

STAGE_CONTEXT_091 = {
    "pipeline_run_id",
    "request_id",
    "execution_mode",
    "started_at",
    "now",
    "to_dict",
    "as_pipeline_context",
    "record_stage_event",
    "try_emit_event",
}
"""0.9.1's ``StageContext`` members beyond what a stage sees."""


def public_members(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


class TestMixins:
    def test_each_context_class_inherits_its_mixin(self) -> None:
        """The public context classes inherit 0.9.1's surface from ``stageflow._compat``'s mixins."""
        assert (PipelineContext.__bases__, StageContext.__bases__, PipelineTimer.__bases__) == (
            (_compat.PipelineContextCompat,),
            (_compat.StageContextCompat,),
            (_compat.PipelineTimerCompat,),
        )

    def test_the_091_members_are_defined_once_in_the_mixins(self) -> None:
        """Each 0.9.1 member is defined by its mixin, and none by the class a stage sees."""
        pairs = [
            (_compat.PipelineContextCompat, PipelineContext, PIPELINE_CONTEXT_091),
            (_compat.StageContextCompat, StageContext, STAGE_CONTEXT_091),
            (_compat.PipelineTimerCompat, PipelineTimer, {"started_at"}),
        ]
        for mixin, cls, members in pairs:
            assert public_members(mixin) == members, mixin.__name__
            assert public_members(cls) & members == set(), cls.__name__

    def test_the_factories_are_one_object_on_every_path(self) -> None:
        """``create_stage_inputs`` and ``create_stage_context`` are ``_compat``'s, from every import path."""
        assert (stageflow.create_stage_inputs, stageflow.stages.create_stage_inputs) == (
            _compat.create_stage_inputs,
            _compat.create_stage_inputs,
        )
        assert stageflow.create_stage_context is _compat.create_stage_context


# ------------------------------------------------- _compat's finder and _renamed: 0.9.1's names and modules


V091_TOP_LEVEL = (
    "Stage StageKind StageStatus StageOutput StageContext StageArtifact StageEvent StageError StageResult "
    "create_stage_context PipelineTimer Pipeline UnifiedStageSpec StageGraph StageSpec PipelineContext "
    "BaseInterceptor InterceptorResult ErrorAction CircuitBreakerInterceptor TimeoutInterceptor "
    "get_default_interceptors EventSink NoOpEventSink LoggingEventSink get_event_sink set_event_sink "
    "clear_event_sink RunStore ConfigProvider StageInputs create_stage_inputs"
).split()
"""The names stageflow-core 0.9.1 exports from ``stageflow`` that stageflow also has."""


class TestImportPaths:
    def test_top_level_names(self) -> None:
        """Every shared 0.9.1 top-level name is in ``stageflow.__all__``."""
        assert [n for n in V091_TOP_LEVEL if n not in stageflow.__all__] == []

    def test_interceptors_are_the_same_objects(self) -> None:
        """The interceptor names at the top level are ``stageflow.interceptors``'s."""
        import stageflow.interceptors as interceptors

        names = ["BaseInterceptor", "InterceptorResult", "ErrorAction", "CircuitBreakerInterceptor"]
        names += ["TimeoutInterceptor", "get_default_interceptors"]
        assert [getattr(stageflow, n) is getattr(interceptors, n) for n in names] == [True] * len(names)

    def test_otel_interceptors_from_the_top_level(self) -> None:
        """``from stageflow import TracingInterceptor`` gives stageflow_otel's, outside ``__all__``."""
        stageflow_otel = pytest.importorskip("stageflow_otel")
        from stageflow import LoggingInterceptor, MetricsInterceptor, TracingInterceptor

        assert (TracingInterceptor, MetricsInterceptor, LoggingInterceptor) == (
            stageflow_otel.TracingInterceptor,
            stageflow_otel.MetricsInterceptor,
            stageflow_otel.LoggingInterceptor,
        )
        assert {"TracingInterceptor", "MetricsInterceptor", "LoggingInterceptor"} & set(
            stageflow.__all__
        ) == set()

    def test_unknown_top_level_attribute(self) -> None:
        """An unknown attribute of ``stageflow`` raises a plain AttributeError."""
        with pytest.raises(AttributeError, match="^module 'stageflow' has no attribute 'Nope'$"):
            stageflow.Nope  # noqa: B018

    def test_stages_module(self) -> None:
        """``stageflow.stages`` exports 0.9.1's context, result, error and factory names."""
        assert (
            stageflow.stages.PipelineContext,
            stageflow.stages.StageResult,
            stageflow.stages.UndeclaredDependencyError,
            stageflow.stages.create_stage_inputs,
        ) == (PipelineContext, stageflow.StageResult, UndeclaredDependencyError, create_stage_inputs)
        assert {"PipelineContext", "StageResult", "UndeclaredDependencyError", "create_stage_inputs"} <= set(
            stageflow.stages.__all__
        )


class TestRenamedNames:
    @pytest.mark.parametrize(
        ("old", "message"),
        [
            (
                "CycleDetectedError",
                "CycleDetectedError is CycleError in stageflow: from stageflow import CycleError",
            ),
            (
                "PipelineValidationError",
                "PipelineValidationError is PipelineDefinitionError in stageflow: "
                "from stageflow import PipelineDefinitionError",
            ),
            (
                "create_test_stage_context",
                "create_test_stage_context is stageflow.testing.make_context in stageflow: "
                "from stageflow.testing import make_context",
            ),
            (
                "WideEventEmitter",
                "WideEventEmitter is not part of stageflow; README's 'Migrating from stageflow-core' section "
                "lists what replaces it",
            ),
        ],
        ids=["cycle", "validation", "test-context", "removed"],
    )
    def test_importing_an_old_name_names_the_new_one(self, old: str, message: str) -> None:
        """``from stageflow import <0.9.1 name>`` raises an ``ImportError`` naming what replaces it."""
        with pytest.raises(ImportError) as info:
            exec(f"from stageflow import {old}", {})
        assert (type(info.value), str(info.value)) == (ImportError, f"stageflow-core 0.9.1's {message}")

    def test_every_new_name_exists(self) -> None:
        """Each old name's replacement is a name stageflow has; no old name is exported."""
        import importlib

        from stageflow import _renamed

        def resolve(dotted: str) -> object:
            module, _, attribute = dotted.rpartition(".")
            if module.startswith("stageflow."):
                return getattr(importlib.import_module(module), attribute)
            return getattr(getattr(stageflow, module), attribute) if module else getattr(stageflow, attribute)

        assert sorted({new for new, _ in _renamed.RENAMED.values()}) == [
            "CircuitBreakerInterceptor",
            "CircuitOpenError",
            "CycleError",
            "PipelineDefinitionError",
            "PipelineFailedError",
            "StageGraph.run",
            "stageflow.testing.make_context",
        ]
        assert all(callable(resolve(new)) for new, _ in _renamed.RENAMED.values())
        assert sorted((set(_renamed.RENAMED) | _renamed.REMOVED) & set(stageflow.__all__)) == []

    @pytest.mark.parametrize(
        ("module", "message"),
        [
            (
                "stageflow.core",
                "No module named 'stageflow.core': stageflow-core 0.9.1's inner modules are gone, their "
                "names are in stageflow itself (from stageflow import Pipeline, StageOutput, StageContext, "
                "...) and interceptors in stageflow.interceptors (from stageflow.interceptors import "
                "BaseInterceptor)",
            ),
            (
                "stageflow.pipeline.interceptors",
                "No module named 'stageflow.pipeline': stageflow-core 0.9.1's inner modules are gone, "
                "their names are in stageflow itself (from stageflow import Pipeline, StageOutput, "
                "StageContext, ...) and interceptors in stageflow.interceptors (from stageflow.interceptors "
                "import BaseInterceptor)",
            ),
            (
                "stageflow.helpers.mocks",
                "No module named 'stageflow.helpers': stageflow-core 0.9.1's module is not part of "
                "stageflow; README's 'Migrating from stageflow-core' section lists what replaces it",
            ),
            ("stageflow.nothing", "No module named 'stageflow.nothing'"),
        ],
        ids=["core", "pipeline-interceptors", "removed", "unknown"],
    )
    def test_importing_an_old_module_says_where_its_names_went(self, module: str, message: str) -> None:
        """Importing one of 0.9.1's modules raises ``ModuleNotFoundError`` saying where its names went."""
        import importlib

        with pytest.raises(ModuleNotFoundError) as info:
            importlib.import_module(module)
        assert str(info.value) == message

    def test_unknown_names_keep_the_usual_errors(self) -> None:
        """A name 0.9.1 never had stays an ``AttributeError`` (so ``hasattr`` is ``False``)."""
        assert (hasattr(stageflow, "NoSuchName"), getattr(stageflow, "NoSuchName", 7)) == (False, 7)


# --------------------------------------------- 0.9.1 behaviour the engine's own types keep (outside _compat)


class TestPipelineStages:
    def test_stages_is_an_ordered_read_only_mapping(self) -> None:
        """``Pipeline.stages`` maps names to specs in order and cannot be changed."""
        runner = ok_stage()
        pipeline = Pipeline().with_stage("b", runner, T).with_stage("a", runner, T, dependencies=("b",))
        stages = pipeline.stages
        assert isinstance(stages, MappingProxyType)
        assert list(stages.items()) == [
            ("b", StageSpec("b", runner, T)),
            ("a", StageSpec("a", runner, T, ("b",))),
        ]
        assert pipeline.stages is stages
        with pytest.raises(TypeError):
            stages["c"] = StageSpec("c", runner, T)  # type: ignore[index]

    def test_unified_stage_spec_is_the_spec_type(self) -> None:
        """``UnifiedStageSpec`` is ``StageSpec``, with 0.9.1's positional fields first."""
        assert UnifiedStageSpec is StageSpec
        assert [f.name for f in dataclasses.fields(UnifiedStageSpec)] == [
            "name",
            "runner",
            "kind",
            "dependencies",
            "conditional",
            "config",
            "retry",
            "executor",
            "timeout",
            "stream",
            "streams",
        ]

    async def test_stage_specs_of_a_graph(self) -> None:
        """``StageGraph.stage_specs`` lists specs whose runner awaits the stage itself."""

        class Shout:
            async def execute(self, ctx: StageContext) -> StageOutput:
                return StageOutput.ok(n=len(ctx.stage_name))

        async def fn(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(fn=True)

        graph = (
            Pipeline()
            .with_stage("fn", fn, T)
            .with_stage("cls", Shout, StageKind.WORK, dependencies=("fn",), conditional=True)
            .build()
        )
        specs = graph.stage_specs
        assert [(s.name, s.kind, s.dependencies, s.conditional) for s in specs] == [
            ("fn", T, (), False),
            ("cls", StageKind.WORK, ("fn",), True),
        ]
        assert specs[0].runner is fn
        ctx = make_ctx()
        assert dict((await specs[1].runner(ctx)).data) == {"n": len("pipeline_entry")}
        assert graph.stage_specs[1].runner.__self__ is graph.stage("cls").runner


class TestOutputs:
    def test_positional_field_order(self) -> None:
        """``StageOutput``'s fields are in 0.9.1's order, so positional calls mean the same."""
        art, ev = StageArtifact("a", {}), StageEvent("e", {})
        out = StageOutput(StageStatus.FAIL, {"d": 1}, [art], [ev], "boom", 12, "v1")
        assert [f.name for f in dataclasses.fields(StageOutput)] == [
            "status",
            "data",
            "artifacts",
            "events",
            "error",
            "duration_ms",
            "version",
        ]
        assert (out.status, out.data, out.artifacts, out.events, out.error, out.duration_ms, out.version) == (
            StageStatus.FAIL,
            {"d": 1},
            [art],
            [ev],
            "boom",
            12,
            "v1",
        )

    def test_constructors_leave_the_new_fields_empty(self) -> None:
        """Every constructor's output has empty artifacts and events (one list each) and no duration."""
        outs = [
            StageOutput.ok(a=1),
            StageOutput.skip("r"),
            StageOutput.cancel("r"),
            StageOutput.fail("e"),
            StageOutput.retry("e"),
        ]
        assert [(o.artifacts, o.events, o.duration_ms) for o in outs] == [([], [], None)] * 5
        first, second = StageOutput.ok(), StageOutput.ok()
        first.artifacts.append(StageArtifact("x", {}))
        assert (len(first.artifacts), second.artifacts) == (1, [])

    def test_fast_constructor_equals_the_dataclass_constructor(self) -> None:
        """``ok()`` (which skips ``__init__``) makes an output equal to and shaped like the constructor's."""
        fast = StageOutput.ok({"a": 1}, version="v")
        slow = StageOutput(StageStatus.OK, {"a": 1}, version="v")
        assert fast == slow
        assert (
            repr(fast)
            == repr(slow)
            == (
                "StageOutput(status=<StageStatus.OK: 'ok'>, data={'a': 1}, artifacts=[], events=[], "
                "error=None, duration_ms=None, version='v')"
            )
        )
        assert dataclasses.astuple(fast) == dataclasses.astuple(slow)

    def test_with_duration_and_version(self) -> None:
        """``with_duration`` and ``with_version`` return changed copies and leave the original alone."""
        art = StageArtifact("a", {})
        out = StageOutput(StageStatus.OK, {"a": 1}, [art])
        timed = out.with_duration(42)
        tagged = timed.with_version("v3")
        assert (out.duration_ms, timed.duration_ms, tagged.duration_ms) == (None, 42, 42)
        assert (out.version, timed.version, tagged.version) == (None, None, "v3")
        assert (tagged.status, tagged.data, tagged.artifacts) == (StageStatus.OK, {"a": 1}, [art])

    def test_fail_default_message(self) -> None:
        """``fail()`` with no message gives 0.9.1's "Unknown error"."""
        assert (StageOutput.fail().error, StageOutput.fail(response="r").error) == ("Unknown error", "r")

    def test_artifact_and_event_are_frozen_with_utc_timestamps(self) -> None:
        """``StageArtifact`` and ``StageEvent`` are frozen and stamped with the UTC time they were made."""
        before = datetime.now(UTC)
        art = StageArtifact(type="audio", payload={"ms": 1})
        ev = StageEvent(type="progress", data={"p": 1})
        after = datetime.now(UTC)
        assert before <= art.timestamp <= after and before <= ev.timestamp <= after
        assert (art.timestamp.tzinfo, ev.timestamp.tzinfo) == (UTC, UTC)
        with pytest.raises(dataclasses.FrozenInstanceError):
            art.type = "x"  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            ev.data = {}  # type: ignore[misc]
        assert StageArtifact("a", {}, CREATED) == StageArtifact("a", {}, CREATED)

    async def test_results_expose_output_fields(self) -> None:
        """A run's ``StageResult`` has the output's artifacts, events and version, and ``duration_ms``."""
        art = StageArtifact("a", {})

        async def stage(ctx: StageContext) -> StageOutput:
            return StageOutput(StageStatus.OK, {}, [art], [], version="v9")

        results = await Pipeline().with_stage("s", stage, T).build().run(make_ctx())
        result = results["s"]
        assert (result.artifacts, result.events, result.version) == ([art], [], "v9")
        assert result.duration_ms == int((result.ended_at - result.started_at) * 1000)


class TestStatusStrings:
    @pytest.mark.parametrize(
        ("status", "text", "equal"),
        [
            (StageStatus.FAIL, "failed", True),
            (StageStatus.OK, "completed", True),
            (StageStatus.OK, "failed", False),
            (StageStatus.FAIL, "completed", False),
            (StageStatus.SKIP, "completed", False),
            (StageStatus.CANCEL, "failed", False),
            (StageStatus.FAIL, "fail", True),
            (StageStatus.OK, "ok", True),
            (StageStatus.OK, "started", False),
        ],
        ids=[
            "fail-failed",
            "ok-completed",
            "ok-failed",
            "fail-completed",
            "skip",
            "cancel",
            "fail",
            "ok",
            "started",
        ],
    )
    def test_equality(self, status: StageStatus, text: str, equal: bool) -> None:
        """A status equals its own value and 0.9.1's interceptor string for it, and nothing else."""
        assert ((status == text), (text == status), (status != text)) == (equal, equal, not equal)

    def test_hash_and_identity_are_unchanged(self) -> None:
        """Statuses hash as their values and still compare by identity among themselves."""
        assert [hash(s) for s in StageStatus] == [hash(s.value) for s in StageStatus]
        by_status: dict[str, int] = {StageStatus.OK: 1}
        assert by_status["ok"] == 1
        assert StageStatus.OK != StageStatus.FAIL
        assert StageStatus("fail") is StageStatus.FAIL


class TestEventsAndInputKeys:
    def test_clear_event_sink(self) -> None:
        """``clear_event_sink`` puts the no-op sink back."""
        set_event_sink(InMemoryEventSink())
        clear_event_sink()
        assert isinstance(get_event_sink(), NoOpEventSink)

    def test_event_sink_is_runtime_checkable(self) -> None:
        """``isinstance(x, EventSink)`` is true for the sinks and any object with both methods only."""

        class Duck:
            async def emit(self, *, type: str, data: dict[str, Any] | None) -> None: ...

            def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None: ...

        class Half:
            async def emit(self, *, type: str, data: dict[str, Any] | None) -> None: ...

        assert [
            isinstance(x, EventSink) for x in (InMemoryEventSink(), NoOpEventSink(), LoggingEventSink())
        ] == [
            True,
            True,
            True,
        ]
        assert (isinstance(Duck(), EventSink), isinstance(Half(), EventSink), isinstance(1, EventSink)) == (
            True,
            False,
            False,
        )

    @pytest.mark.parametrize(
        ("key", "error", "message"),
        [
            (
                None,
                TypeError,
                "StageInputs key is None, not a str; pass the name of an output key, "
                "e.g. get_from('stt', 'text')",
            ),
            (
                3,
                TypeError,
                "StageInputs key is 3 (a int), not a str; pass the name of an output key, "
                "e.g. get_from('stt', 'text')",
            ),
            (
                "",
                ValueError,
                "StageInputs key is empty (''); pass the name of an output key, e.g. get_from('stt', 'text')",
            ),
        ],
        ids=["none", "int", "empty"],
    )
    @pytest.mark.parametrize("method", ["get", "get_from", "require_from"])
    def test_bad_keys(self, method: str, key: Any, error: type[Exception], message: str) -> None:
        """``get``, ``get_from``, ``require_from`` reject a None, non-str or empty key with 0.9.1's types."""
        inputs = create_stage_inputs(ContextSnapshot(), prior_outputs={"a": StageOutput.ok(k=1)})
        args = (key,) if method == "get" else ("a", key)
        with pytest.raises(error) as caught:
            getattr(inputs, method)(*args)
        assert str(caught.value) == message

    def test_str_subclass_keys_are_accepted(self) -> None:
        """A str subclass such as a StrEnum member is a valid key."""

        class Key(StrEnum):
            K = "k"

        inputs = create_stage_inputs(ContextSnapshot(), prior_outputs={"a": StageOutput.ok(k=1)})
        assert (inputs.get(Key.K), inputs.get_from("a", Key.K), inputs.require_from("a", Key.K)) == (1, 1, 1)


class TestSnapshot:
    def test_snapshot_ids(self) -> None:
        """``ContextSnapshot`` reads every id of its ``RunIdentity``."""
        snap = full_snapshot()
        assert (snap.pipeline_run_id, snap.request_id, snap.session_id, snap.user_id, snap.org_id) == (
            RUN,
            REQ,
            SES,
            USR,
            ORG,
        )
        assert snap.interaction_id == INT
        assert (ContextSnapshot().user_id, ContextSnapshot().interaction_id) == (None, None)

    def test_snapshot_to_dict(self) -> None:
        """``ContextSnapshot.to_dict`` nests the identity and repeats the ids flat, as strings."""

        class Bundle:
            def to_dict(self) -> dict[str, int]:
                return {"n": 1}

        snap = dataclasses.replace(full_snapshot(), enrichments=Bundle(), conversation=["m"])
        identity = ID_STRINGS
        assert snap.to_dict() == {
            "run_id": {**identity, "created_at": CREATED.isoformat()},
            "input_text": "hi",
            "input_audio_duration_ms": None,
            "topology": "chat_fast",
            "execution_mode": "practice",
            "metadata": {"k": "v"},
            "enrichments": {"n": 1},
            "conversation": ["m"],
            "extensions": None,
            "created_at": "2026-01-02T03:04:05+00:00",
            **identity,
        }


class TestMigrationDifferences:
    """The behaviours README's migration table lists as different from 0.9.1, pinned here."""

    def test_status_text_and_set_lookups(self) -> None:
        """``str()`` of a status is its value, and a set of 0.9.1 strings does not contain it."""
        assert (str(StageStatus.OK), f"{StageStatus.FAIL}") == ("ok", "fail")
        assert (StageStatus.FAIL in {"failed"}, StageStatus.FAIL in ("failed",)) == (False, True)

    async def test_root_stage_cannot_read_other_stages(self) -> None:
        """A stage without dependencies that reads another stage raises ``UndeclaredDependencyError``."""

        async def nosy(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(v=ctx.inputs.get_from("other", "v", "default"))

        graph = Pipeline().with_stage("other", ok_stage(v=1), T).with_stage("nosy", nosy, T).build()
        with pytest.raises(stageflow.PipelineFailedError) as caught:
            await graph.run(make_ctx())
        assert (caught.value.stage, type(caught.value.error)) == ("nosy", UndeclaredDependencyError)

    async def test_mark_canceled_does_not_stop_the_run(self) -> None:
        """``mark_canceled()`` sets the flag only; the stages after it still run."""

        async def flag(ctx: StageContext) -> StageOutput:
            assert ctx.pipeline is not None
            ctx.pipeline.mark_canceled()
            return StageOutput.ok()

        async def later(ctx: StageContext) -> StageOutput:
            assert ctx.pipeline is not None
            return StageOutput.ok(canceled=ctx.pipeline.canceled)

        graph = (
            Pipeline()
            .with_stage("flag", flag, T)
            .with_stage("later", later, T, dependencies=("flag",))
            .build()
        )
        results = await graph.run(make_ctx())
        assert dict(results["later"].data) == {"canceled": True}

    async def test_after_is_not_called_for_a_raising_stage(self) -> None:
        """A stage that raises reaches ``on_error``, not ``after()`` (0.9.1 called both)."""
        calls: list[str] = []

        class Watch(stageflow.BaseInterceptor):
            async def after(
                self, stage_name: str, result: stageflow.StageResult, ctx: PipelineContext
            ) -> None:
                calls.append(f"after {result.status}")

            async def on_error(
                self, stage_name: str, error: Exception, ctx: PipelineContext
            ) -> stageflow.ErrorAction:
                calls.append(f"on_error {error}")
                return stageflow.ErrorAction.FAIL

        async def boom(ctx: StageContext) -> StageOutput:
            raise RuntimeError("boom")

        with pytest.raises(stageflow.PipelineFailedError):
            await Pipeline().with_stage("boom", boom, T).build([Watch()]).run(make_ctx())
        assert calls == ["on_error boom"]

    async def test_dict_data_with_skip_reason_does_not_skip(self) -> None:
        """A conditional stage runs after ``ok(skip_reason=...)``; a dependency's ``skip()`` skips it."""
        ran: list[str] = []

        async def after(ctx: StageContext) -> StageOutput:
            ran.append("after")
            return StageOutput.ok()

        async def routed(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(skip_reason="not needed")

        async def skipped(ctx: StageContext) -> StageOutput:
            return StageOutput.skip("not needed")

        for router in (routed, skipped):
            graph = (
                Pipeline()
                .with_stage("router", router, StageKind.ROUTE)
                .with_stage("after", after, T, dependencies=("router",), conditional=True)
                .build()
            )
            results = await graph.run(make_ctx())
            expected = StageStatus.OK if router is routed else StageStatus.SKIP
            assert results["after"].status is expected
        assert ran == ["after"]


class TestSmallSignatures:
    def test_dependencies_none(self) -> None:
        """``with_stage(..., dependencies=None)`` (0.9.1's default) means no dependencies."""
        pipeline = Pipeline().with_stage("a", ok_stage(), T, dependencies=None)
        assert pipeline.stages["a"].dependencies == ()

    def test_snapshot_subscript(self) -> None:
        """``ContextSnapshot[X]``, 0.9.1's generic spelling, is ``ContextSnapshot`` itself."""
        assert ContextSnapshot[int] is ContextSnapshot  # type: ignore[misc]

    def test_interceptor_defaults_the_table_names(self) -> None:
        """``ErrorAction.RETRY`` allows 3 attempts in all by default; the default stack: breaker, timeout."""
        assert stageflow.BaseInterceptor.retry_policy.max_attempts == 3
        assert [type(ic) for ic in stageflow.get_default_interceptors()] == [
            stageflow.CircuitBreakerInterceptor,
            TimeoutInterceptor,
        ]

    @pytest.mark.parametrize("field", ["artifacts", "events"])
    def test_non_list_artifacts_or_events(self, field: str) -> None:
        """A non-list ``artifacts``/``events`` (an error message given third, say) is refused with the fix."""
        given: dict[str, Any] = {field: "boom"}
        with pytest.raises(TypeError) as caught:
            StageOutput(StageStatus.FAIL, {}, **given)
        assert str(caught.value) == (
            f"StageOutput {field} 'boom' is not a list; the fields are (status, data, artifacts, events, "
            "error, duration_ms, version): pass error= and version= by keyword"
        )

    def test_timeout_default_ms(self) -> None:
        """``TimeoutInterceptor.DEFAULT_TIMEOUT_MS`` is 0.9.1's 30000 and sets the default (per subclass)."""

        class Quick(TimeoutInterceptor):
            DEFAULT_TIMEOUT_MS = 1500

        assert (TimeoutInterceptor.DEFAULT_TIMEOUT_MS, TimeoutInterceptor().default) == (30000, 30.0)
        assert (Quick().default, Quick(2.0).default) == (1.5, 2.0)


Op = tuple[str, int, int, str]
"""("extend", pipeline index, unused, name) or ("compose", left index, right index, unused)."""


@st.composite
def build_ops(draw: st.DrawFn) -> list[Op]:
    """A random history of ``with_stage``/``compose`` calls on pipelines made earlier in the history."""
    ops: list[Op] = []
    for made in range(1, draw(st.integers(1, 30)) + 1):
        if draw(st.booleans()):
            ops.append(("extend", draw(st.integers(0, made - 1)), 0, draw(st.sampled_from("abcdef"))))
        else:
            ops.append(("compose", draw(st.integers(0, made - 1)), draw(st.integers(0, made - 1)), ""))
    return ops


class TestNameTableProperties:
    @settings(max_examples=300, deadline=None)
    @given(build_ops())
    def test_duplicates_follow_each_pipelines_own_names(self, ops: list[Op]) -> None:
        """Over any history of branching ``with_stage``/``compose`` calls, a name is a duplicate exactly
        when that pipeline (not a sibling sharing its table) already has it, and ``stages`` lists its own."""
        runner = ok_stage()
        pipelines: list[tuple[Pipeline, list[str]]] = [(Pipeline(), [])]
        for kind, i, j, name in ops:
            base, names = pipelines[i]
            if kind == "extend":
                if name in names:
                    with pytest.raises(DuplicateStageError):
                        base.with_stage(name, runner, T)
                    new, model = base, names
                else:
                    new, model = base.with_stage(name, runner, T), [*names, name]
            else:
                other, theirs = pipelines[j]
                if set(names) & set(theirs):
                    with pytest.raises(DuplicateStageError):
                        base.compose(other)
                    new, model = base, names
                else:
                    new, model = base.compose(other), names + theirs
            pipelines.append((new, model))
        assert [list(p.stages) for p, _ in pipelines] == [model for _, model in pipelines]
        assert [len(p) for p, _ in pipelines] == [len(model) for _, model in pipelines]


class TestContextClasses:
    def test_contexts_are_not_dataclasses(self) -> None:
        """``StageContext``, ``StageInputs`` and ``PipelineContext`` are plain classes (see README)."""
        assert [dataclasses.is_dataclass(c) for c in (StageContext, StageInputs, PipelineContext)] == [
            False,
            False,
            False,
        ]
        assert [
            dataclasses.is_dataclass(c) for c in (StageOutput, StageArtifact, StageEvent, ContextSnapshot)
        ] == [
            True,
            True,
            True,
            True,
        ]

    def test_threads_extending_one_pipeline(self) -> None:
        """Threads extending one fresh pipeline at once each get the base plus their own stage, and see
        exactly their own names as duplicates (300 rounds of 8 threads racing for the same table slot)."""
        runner = ok_stage()
        bases: list[Pipeline] = []
        rounds = threading.Barrier(8, action=lambda: bases.append(Pipeline().with_stage("a", runner, T)))
        problems: list[str] = []

        def extend(worker: int) -> None:
            try:
                claim(worker)
            except threading.BrokenBarrierError:
                pass  # another thread failed: its traceback is in ``problems``
            except BaseException:
                problems.append(f"w{worker} raised:\n{traceback.format_exc()}")
                rounds.abort()  # release the others instead of leaving them waiting for this thread

        def claim(worker: int) -> None:
            for i in range(300):
                rounds.wait()
                base = bases[i]
                mine, other = f"w{worker}", f"w{(worker + 1) % 8}"
                new = base.with_stage(mine, runner, T)
                if list(new.stages) != ["a", mine]:
                    problems.append(f"round {i} {mine}: {list(new.stages)}")
                try:
                    new.with_stage(mine, runner, T)
                    problems.append(f"round {i} {mine}: duplicate accepted")
                except DuplicateStageError:
                    pass
                try:
                    if list(new.with_stage(other, runner, T).stages) != ["a", mine, other]:
                        problems.append(f"round {i} {mine}: {other} misplaced")
                except DuplicateStageError:
                    problems.append(f"round {i} {mine}: {other} taken for a duplicate")

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible, to interleave the claims
        try:
            threads = [threading.Thread(target=extend, args=(w,)) for w in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(interval)
        assert (len(bases), problems) == (300, [])

    def test_copying_a_table_another_thread_appends_to_copies_again(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An append during the copy of a shared name table (the other thread let in by a garbage collection
        inside the copy) makes the copy start again, and the copy is exactly the first ``count`` entries."""
        from stageflow import _pipeline

        names = {"a": 0, "b": 1, "c": 2}
        appended: list[int] = []
        from itertools import islice as real_islice

        def interrupted(items: Any, count: int) -> Any:
            for n, item in enumerate(real_islice(items, count)):
                yield item
                if n == 0 and not appended:  # the owner appends once, mid-copy
                    names[f"late{len(appended)}"] = 3
                    appended.append(3)

        monkeypatch.setattr(_pipeline, "islice", interrupted)
        assert (_pipeline._first(names, 2), appended) == ({"a": 0, "b": 1}, [3])

    async def test_began_at_is_the_stage_start(self) -> None:
        """During a run ``began_at`` is the stage's ``time.perf_counter()`` start, as its result records."""
        seen: list[float] = []

        async def stage(ctx: StageContext) -> StageOutput:
            seen.append(ctx.began_at)
            return StageOutput.ok()

        results = await Pipeline().with_stage("s", stage, T).build().run(make_ctx())
        assert seen == [results["s"].started_at]
