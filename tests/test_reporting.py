"""The one event envelope and the per-run reporter every event and run record goes through."""

from __future__ import annotations

from datetime import datetime

from stageflow import (
    InMemoryEventSink,
    InMemoryRunStore,
    NoOpEventSink,
    Pipeline,
    RetryPolicy,
    StageContext,
    StageOutput,
)
from stageflow._reporting import envelope, reporter_for

from ._stages import E
from ._support import FakeSleep, make_ctx, ok_stage


class TestEnvelope:
    def test_fields_then_data(self) -> None:
        """The envelope is run_id, pipeline and a float timestamp, then the event's own fields."""
        event = envelope("r1", "p", {"stage": "a"})
        assert isinstance(event.pop("timestamp"), float)
        assert list(event.items()) == [("run_id", "r1"), ("pipeline", "p"), ("stage", "a")]

    def test_legacy_keys_stay_on_top(self) -> None:
        """0.9.1's keys keep their values (its ISO timestamp too) and their place; data comes last."""
        event = envelope("r1", "p", {"n": 1}, legacy={"timestamp": "2026-01-01T00:00:00+00:00", "x": 2})
        assert list(event.items()) == [
            ("run_id", "r1"),
            ("pipeline", "p"),
            ("timestamp", "2026-01-01T00:00:00+00:00"),
            ("x", 2),
            ("n", 1),
        ]


class TestReporterFor:
    def test_nothing_to_report_to(self) -> None:
        """A run without a sink (or with the no-op one), a store or an observer has no reporter."""
        assert (reporter_for(None, None, "r", "p"), reporter_for(NoOpEventSink(), None, "r", "p")) == (
            None,
            None,
        )

    def test_store_only(self) -> None:
        """A run with a store but no sink gets a reporter that builds no events."""
        reporter = reporter_for(NoOpEventSink(), InMemoryRunStore(), "r", "p")
        assert reporter is not None
        assert (reporter.sink, reporter.run_id, reporter.pipeline) == (None, "r", "p")

    async def test_fast_path_has_no_reporter(self) -> None:
        """Without a sink or store, the run's context carries no reporter at all."""
        seen: list[object] = []

        async def look(ctx: StageContext) -> StageOutput:
            assert ctx.pipeline is not None
            seen.append(ctx.pipeline._reporter)
            return StageOutput.ok()

        await Pipeline().with_stage("a", look, E).build().run(make_ctx())
        assert seen == [None]


class TestEveryEventCarriesTheRun:
    async def test_a_run_with_every_kind_of_event(self) -> None:
        """Every event of a run, custom ones included, carries the run's id, its pipeline and a timestamp."""
        sink = InMemoryEventSink()
        attempts = 0

        async def flaky(ctx: StageContext) -> StageOutput:
            nonlocal attempts
            attempts += 1
            assert ctx.pipeline is not None
            ctx.try_emit_event("tool.called", {"tool": "search"})
            ctx.pipeline.try_emit_event("run.note", {"n": 1})
            ctx.pipeline.record_stage_event(stage="a", status="progress", payload={"done": 1})
            ctx.record_stage_event("a", "checkpoint", n=2)
            if attempts == 1:
                raise ConnectionError("down")
            return StageOutput.ok()

        async def skipper(ctx: StageContext) -> StageOutput:
            return StageOutput.skip("nothing")

        policy = RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=0.0, sleep=FakeSleep())
        pipeline = (
            Pipeline(name="every")
            .with_stage("a", flaky, E, retry=policy)
            .with_stage("b", skipper, E, dependencies=("a",))
        )
        ctx = make_ctx(sink=sink)
        results = await pipeline.build().run(ctx)
        run_id = str(results.run_id)
        assert sink.types == [
            "pipeline.created",
            "pipeline.started",
            "stage.a.started",
            "tool.called",
            "run.note",
            "stage.a.progress",
            "stage.checkpoint",
            "stage.a.retrying",
            "tool.called",
            "run.note",
            "stage.a.progress",
            "stage.checkpoint",
            "stage.a.completed",
            "stage.b.started",
            "stage.b.skipped",
            "pipeline.completed",
        ]
        assert {(e.data["run_id"], e.data["pipeline"]) for e in sink.events} == {(run_id, "every")}
        stamps = {e.type: type(e.data["timestamp"]) for e in sink.events}
        assert {t for t, kind in stamps.items() if kind is not float} == {"stage.a.progress"}
        # stageflow-core 0.9.1's record_stage_event keeps its own UTC ISO timestamp
        progress = sink.of_type("stage.a.progress")[0].data
        assert datetime.fromisoformat(progress["timestamp"]).utcoffset() is not None

    async def test_record_stage_event_on_the_run_carries_run_id(self) -> None:
        """An event recorded with ctx.pipeline.record_stage_event carries run_id, not only pipeline_run_id."""
        sink = InMemoryEventSink()

        async def stage(ctx: StageContext) -> StageOutput:
            assert ctx.pipeline is not None
            ctx.pipeline.record_stage_event(stage="a", status="progress", payload={"done": 1})
            return StageOutput.ok()

        results = await Pipeline(name="p").with_stage("a", stage, E).build().run(make_ctx(sink=sink))
        [event] = sink.of_type("stage.a.progress")
        assert (event.data["run_id"], event.data["pipeline_run_id"], event.data["pipeline"]) == (
            str(results.run_id),
            str(results.run_id),
            "p",
        )

    def test_entry_context_outside_a_run(self) -> None:
        """An entry context's custom event carries its run id, no pipeline and a float timestamp."""
        sink = InMemoryEventSink()
        ctx = make_ctx(sink=sink)
        ctx.try_emit_event("warmup", {"n": 1})
        [event] = sink.events
        data = dict(event.data)
        assert isinstance(data.pop("timestamp"), float)
        assert data == {
            "run_id": str(ctx.snapshot.run_id.pipeline_run_id),
            "pipeline": None,
            "pipeline_run_id": str(ctx.snapshot.run_id.pipeline_run_id),
            "request_id": None,
            "execution_mode": None,
            "stage": "pipeline_entry",
            "n": 1,
        }


class TestRecord:
    async def test_store_only_run_is_recorded(self) -> None:
        """A run with a store and no sink writes its one record, with its category-bearing status."""
        store = InMemoryRunStore()
        graph = Pipeline(name="stored").with_stage("a", ok_stage(), E).build(run_store=store)
        results = await graph.run(make_ctx())
        record = await store.get_run(str(results.run_id))
        assert record is not None
        assert (record.pipeline, record.status, [s.name for s in record.stages]) == (
            "stored",
            "completed",
            ["a"],
        )
