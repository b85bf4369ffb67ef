"""``Interceptor.run_sink``: an interceptor receives every event of a run itself, from the first."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from stageflow import EventSink, InMemoryEventSink, Pipeline, PipelineContext, StageKind
from stageflow.interceptors import Interceptor

from ._support import make_ctx, ok_stage

T = StageKind.TRANSFORM


class Tap:
    """A sink that notes each event's type under its name, then hands the event on."""

    def __init__(self, name: str, inner: EventSink, seen: list[tuple[str, str]]) -> None:
        self.name, self.inner, self.seen = name, inner, seen

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.seen.append((self.name, type))
        self.inner.try_emit(type=type, data=data)


class Tapping(Interceptor):
    isolated = False

    def __init__(self, name: str, priority: int, seen: list[tuple[str, str]]) -> None:
        self.name, self.priority, self.seen = name, priority, seen
        self.runs: list[PipelineContext] = []

    def run_sink(self, run: PipelineContext, sink: EventSink) -> EventSink:
        self.runs.append(run)
        return Tap(self.name, sink, self.seen)


class Raising(Interceptor):
    name = "raising"

    def run_sink(self, run: PipelineContext, sink: EventSink) -> EventSink:
        raise RuntimeError("no sink for you")


class TestRunSink:
    async def test_every_event_of_the_run_reaches_the_interceptors_sink_outermost_first(self) -> None:
        """pipeline.created included, without a sink of the run's own: outer taps first, then inner."""
        seen: list[tuple[str, str]] = []
        outer, inner = Tapping("outer", 10, seen), Tapping("inner", 20, seen)
        graph = Pipeline(name="p").with_stage("a", ok_stage(), T).build(interceptors=[inner, outer])
        await graph.run(make_ctx())
        types = ["pipeline.created", "pipeline.started", "stage.a.started", "stage.a.completed"]
        types.append("pipeline.completed")
        assert seen == [(name, t) for t in types for name in ("outer", "inner")]
        assert len(outer.runs) == len(inner.runs) == 1

    async def test_the_run_s_own_sink_still_gets_every_event(self) -> None:
        """The hooked sink hands each event on: the run's sink sees what it would without the hook."""
        plain, hooked = InMemoryEventSink(), InMemoryEventSink()
        pipeline = Pipeline(name="p").with_stage("a", ok_stage(), T)
        await pipeline.build().run(make_ctx(sink=plain))
        await pipeline.build(interceptors=[Tapping("tap", 10, [])]).run(make_ctx(sink=hooked))
        assert [e.type for e in hooked.events] == [e.type for e in plain.events]

    async def test_a_raising_hook_is_logged_and_the_run_keeps_its_sink(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The run is unaffected and its events reach its sink."""
        sink = InMemoryEventSink()
        graph = Pipeline(name="p").with_stage("a", ok_stage(), T).build(interceptors=[Raising()])
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            results = await graph.run(make_ctx(sink=sink))
        assert results["a"].output is not None
        assert [e.type for e in sink.events][0] == "pipeline.created"
        assert [r.getMessage().split(";")[1] for r in caplog.records] == [" the run keeps its event sink"]

    def test_only_interceptors_that_override_it_are_called(self) -> None:
        """A graph without such an interceptor folds no hook (its runs pay nothing for the seam)."""
        seen: list[tuple[str, str]] = []
        plain = Pipeline(name="p").with_stage("a", ok_stage(), T).build(interceptors=[Interceptor()])
        tapped = (
            Pipeline(name="p")
            .with_stage("a", ok_stage(), T)
            .build(interceptors=[Interceptor(), Tapping("tap", 10, seen)])
        )
        assert (len(plain._sink_hooks), len(tapped._sink_hooks)) == (0, 1)

    async def test_a_run_started_from_a_stage_does_not_report_to_the_outer_runs_hook(self) -> None:
        """The hooked sink is the outer run's alone: a run a stage starts with its context reports to the
        sink the outer run was given, and the outer tap sees only the outer run's events."""
        seen: list[tuple[str, str]] = []
        inner_graph = Pipeline(name="inner").with_stage("x", ok_stage(), T).build()
        inner_run_ids: list[str] = []

        async def nest(ctx: Any) -> Any:
            inner_run_ids.append(str((await inner_graph.run(ctx)).run_id))
            return await ok_stage()(ctx)

        sink = InMemoryEventSink()
        tap = Tapping("outer", 10, seen)
        graph = Pipeline(name="outer").with_stage("a", nest, T).build(interceptors=[tap])
        results = await graph.run(make_ctx(sink=sink))
        outer_types = ["pipeline.created", "pipeline.started", "stage.a.started", "stage.a.completed"]
        assert seen == [("outer", t) for t in [*outer_types, "pipeline.completed"]]
        inner_types = ["pipeline.created", "pipeline.started", "stage.x.started", "stage.x.completed"]
        assert [(e.data or {}).get("pipeline") for e in sink.events] == [
            "outer",
            "outer",
            "outer",
            *["inner"] * 5,
            "outer",
            "outer",
        ]
        assert [e.type for e in sink.events] == [
            *outer_types[:3],
            *inner_types,
            "pipeline.completed",
            *outer_types[3:],
            "pipeline.completed",
        ]
        assert {(e.data or {})["run_id"] for e in sink.events if (e.data or {})["pipeline"] == "inner"} == {
            inner_run_ids[0]
        }
        assert str(results.run_id) != inner_run_ids[0]
