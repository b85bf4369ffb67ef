"""Events: the taxonomy in causal order, event data, failing sinks, process sink and shipped sinks."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

import stageflow._events as events_module
from stageflow import (
    EventSink,
    InMemoryEventSink,
    LoggingEventSink,
    NoOpEventSink,
    Pipeline,
    PipelineCancelledError,
    PipelineFailedError,
    RetryPolicy,
    StageContext,
    StageKind,
    StageOutput,
    dropped_event_count,
    get_event_sink,
    set_event_sink,
)

from ._stages import boom, skip
from ._support import make_ctx, ok_stage

E = StageKind.ENRICH


class HangingSink(EventSink):
    """An explicit ``EventSink`` whose ``emit`` waits until released (default ``try_emit``)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.emitted: list[str] = []

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        await self.release.wait()
        self.emitted.append(type)


class RaisingSink:
    """A sink whose ``try_emit`` always raises."""

    calls = 0

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        raise OSError("disk full")

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.calls += 1
        raise OSError("disk full")


def run_events(*stage_events: str, end: str = "completed") -> list[str]:
    """The event types of a run, in order: created, started, then ``stage.<e>`` for each of ``stage_events``
    (``"a.started"`` and so on), then ``pipeline.<end>``."""
    return ["pipeline.created", "pipeline.started", *(f"stage.{e}" for e in stage_events), f"pipeline.{end}"]


CHAIN = (
    Pipeline(name="chain").with_stage("a", ok_stage(), E).with_stage("b", ok_stage(), E, dependencies=("a",))
)
CHAIN_EVENTS = run_events("a.started", "a.completed", "b.started", "b.completed")
"""The events of a successful ``CHAIN`` run, in order."""


class TestSequences:
    async def test_success(self, sink: InMemoryEventSink) -> None:
        """A successful run emits created, started, each stage's started/completed and completed."""
        await CHAIN.build().run(make_ctx(sink=sink))
        assert sink.types == CHAIN_EVENTS

    async def test_failure(self, sink: InMemoryEventSink) -> None:
        """A failing stage emits ``stage.x.failed`` then ``pipeline.failed``; its dependents emit nothing."""
        graph = (
            Pipeline()
            .with_stage("a", ok_stage(), E)
            .with_stage("boom", boom, E, dependencies=("a",))
            .with_stage("after", ok_stage(), E, dependencies=("boom",))
            .build()
        )
        with pytest.raises(PipelineFailedError):
            await graph.run(make_ctx(sink=sink))
        assert sink.types == run_events(
            "a.started", "a.completed", "boom.started", "boom.failed", end="failed"
        )

    async def test_skip(self, sink: InMemoryEventSink) -> None:
        """A skip emits ``stage.x.skipped``; a conditional dependent is skipped without starting."""
        graph = (
            Pipeline()
            .with_stage("a", skip, E)
            .with_stage("c", ok_stage(), E, dependencies=("a",), conditional=True)
            .with_stage("d", ok_stage(), E, dependencies=("c",))
            .build()
        )
        await graph.run(make_ctx(sink=sink))
        assert sink.types == run_events("a.started", "a.skipped", "c.skipped", "d.started", "d.completed")
        assert sink.of_type("stage.a.skipped")[0].data["reason"] == "nothing to do"
        conditional = sink.of_type("stage.c.skipped")[0].data
        assert (conditional["reason"], conditional["duration"]) == ("dependency 'a' was skipped", 0.0)

    async def test_cancel(self, sink: InMemoryEventSink) -> None:
        """A stage returning cancel emits ``stage.x.cancelled`` then ``pipeline.cancelled``."""

        async def stop(ctx: StageContext) -> StageOutput:
            return StageOutput.cancel("done early")

        graph = (
            Pipeline()
            .with_stage("stop", stop, E)
            .with_stage("after", ok_stage(), E, dependencies=("stop",))
            .build()
        )
        with pytest.raises(PipelineCancelledError):
            await graph.run(make_ctx(sink=sink))
        assert sink.types == run_events("stop.started", "stop.cancelled", end="cancelled")
        assert sink.events[-2].data["reason"] == "done early"

    async def test_retry(self, sink: InMemoryEventSink) -> None:
        """Each retry emits ``stage.x.retrying`` with the attempt, delay and error."""

        async def no_sleep(delay: float) -> None:
            return None

        async def flaky(ctx: StageContext) -> StageOutput:
            if ctx.attempt < 3:
                return StageOutput.retry(f"try {ctx.attempt}")
            return StageOutput.ok()

        policy = RetryPolicy(initial_delay=0.5, jitter=0, sleep=no_sleep)
        await Pipeline().with_stage("a", flaky, E, retry=policy).build().run(make_ctx(sink=sink))
        assert sink.types == run_events("a.started", "a.retrying", "a.retrying", "a.completed")
        assert [
            (e.data["attempt"], e.data["delay"], e.data["error"]) for e in sink.of_type("stage.a.retrying")
        ] == [
            (1, 0.5, "try 1"),
            (2, 1.0, "try 2"),
        ]
        assert sink.of_type("stage.a.completed")[0].data["attempts"] == 3


class TestData:
    async def test_common_fields(self, sink: InMemoryEventSink) -> None:
        """Every event carries the run id, the pipeline name and a wall-clock timestamp."""
        ctx = make_ctx(sink=sink)
        await CHAIN.build().run(ctx)
        run_id = str(ctx.snapshot.run_id.pipeline_run_id)
        assert {(e.data["run_id"], e.data["pipeline"]) for e in sink.events} == {(run_id, "chain")}
        stamps = [e.data["timestamp"] for e in sink.events]
        assert stamps == sorted(stamps)
        assert all(isinstance(t, float) and t > 1.6e9 for t in stamps)

    async def test_created_and_started(self, sink: InMemoryEventSink) -> None:
        """``pipeline.created`` carries stage count and topology version; ``pipeline.started`` the count."""
        graph = CHAIN.build()
        await graph.run(make_ctx(sink=sink))
        created, started = sink.events[0].data, sink.events[1].data
        assert (created["stages"], created["version"]) == (2, graph.version)
        assert started["stages"] == 2

    async def test_stage_fields(self, sink: InMemoryEventSink) -> None:
        """Stage events carry the stage name, kind, duration, wait, attempts and dependencies."""
        graph = (
            Pipeline()
            .with_stage("x", ok_stage(), E)
            .with_stage("y", ok_stage(), E)
            .with_stage("z", ok_stage(), StageKind.AGENT, dependencies=("y", "x"))
            .build()
        )
        await graph.run(make_ctx(sink=sink))
        started = sink.of_type("stage.z.started")[0].data
        completed = sink.of_type("stage.z.completed")[0].data
        assert (started["stage"], started["kind"], started["dependencies"]) == ("z", "agent", ["y", "x"])
        assert started["wait"] >= 0
        assert (completed["stage"], completed["kind"], completed["attempts"]) == ("z", "agent", 1)
        assert completed["duration"] >= 0 and completed["wait"] >= 0

    async def test_failure_fields(self, sink: InMemoryEventSink) -> None:
        """``stage.x.failed`` and ``pipeline.failed`` carry the error message and type."""
        with pytest.raises(PipelineFailedError):
            await Pipeline().with_stage("boom", boom, E).build().run(make_ctx(sink=sink))
        failed = sink.of_type("stage.boom.failed")[0].data
        assert (
            failed["stage"],
            failed["kind"],
            failed["error"],
            failed["error_type"],
            failed["attempts"],
        ) == (
            "boom",
            "enrich",
            "kaput",
            "RuntimeError",
            1,
        )
        assert failed["duration"] >= 0
        summary = sink.of_type("pipeline.failed")[0].data
        assert (summary["stage"], summary["error"], summary["error_type"]) == (
            "boom",
            "kaput",
            "RuntimeError",
        )

    async def test_completed_summary(self, sink: InMemoryEventSink) -> None:
        """``pipeline.completed`` carries duration, critical path and per-stage status, wait and duration."""
        results = await CHAIN.build().run(make_ctx(sink=sink))
        summary = sink.events[-1].data
        assert summary["critical_path"] == ["a", "b"]
        assert summary["duration"] == results.duration
        assert summary["stages"] == {
            name: {"status": "ok", "wait": r.wait, "duration": r.duration} for name, r in results.items()
        }


class TestFailingSinks:
    async def test_raising_sink_is_logged_once(self, caplog: pytest.LogCaptureFixture) -> None:
        """A sink whose ``try_emit`` raises is logged once, and the run completes."""
        sink = RaisingSink()
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            results = await CHAIN.build().run(make_ctx(sink=sink))
        assert list(results) == ["a", "b"]
        assert sink.calls == 7
        assert [r.getMessage() for r in caplog.records] == [
            f"stageflow: event sink {sink!r} failed and is ignored: OSError('disk full')"
        ]

    async def test_hanging_sink_does_not_block(self) -> None:
        """A hanging ``emit`` does not block the run: the default ``try_emit`` runs it in the background."""
        sink = HangingSink()
        async with asyncio.timeout(5):
            results = await CHAIN.build().run(make_ctx(sink=sink))
        assert list(results) == ["a", "b"]
        await asyncio.sleep(0)  # every background emit is now waiting, in the order they were started
        assert sink.emitted == []
        sink.release.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert sink.emitted == CHAIN_EVENTS

    async def test_failing_background_emit_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """An ``emit`` that raises in the background is logged, and the run completes."""

        class Broken(EventSink):
            async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
                raise OSError(f"lost {type}")

        with caplog.at_level(logging.ERROR, logger="stageflow"):
            await Pipeline().build().run(make_ctx(sink=Broken()))
            for _ in range(5):
                await asyncio.sleep(0)
        assert [r.getMessage() for r in caplog.records] == [
            "stageflow: event sink emit() failed: OSError('lost pipeline.created')",
            "stageflow: event sink emit() failed: OSError('lost pipeline.started')",
            "stageflow: event sink emit() failed: OSError('lost pipeline.completed')",
        ]

    async def test_dropped_events_are_counted(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Events beyond ``MAX_PENDING_EMITS`` in flight are dropped and counted."""
        monkeypatch.setattr(events_module, "MAX_PENDING_EMITS", 2)
        sink = HangingSink()
        before = dropped_event_count()
        await CHAIN.build().run(make_ctx(sink=sink))
        assert (dropped_event_count() - before, dropped_event_count(sink)) == (5, 5)
        sink.release.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert sink.emitted == ["pipeline.created", "pipeline.started"]

    async def test_a_hanging_sink_does_not_starve_a_healthy_one(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The in-flight budget is per sink: a sink whose emit hangs loses its events, a healthy one none."""
        monkeypatch.setattr(events_module, "MAX_PENDING_EMITS", 100)
        hanging, healthy = HangingSink(), HangingSink()
        healthy.release.set()
        graph = CHAIN.build()
        with caplog.at_level(logging.WARNING, logger="stageflow"):
            for _ in range(20):  # 140 events: the hanging sink's budget of 100 runs out
                await graph.run(make_ctx(sink=hanging))
            for _ in range(10):  # 70 events to the healthy sink
                await graph.run(make_ctx(sink=healthy))
            for _ in range(5):
                await asyncio.sleep(0)
        assert (len(healthy.emitted), dropped_event_count(healthy), dropped_event_count(hanging)) == (
            70,
            0,
            40,
        )
        assert [r.getMessage() for r in caplog.records] == [
            f"stageflow: event sink {hanging!r} has 100 emits in flight; dropping its events (counting them)"
        ]
        hanging.release.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(hanging.emitted) == 100

    def test_emit_without_loop_is_dropped(self) -> None:
        """The default ``try_emit`` called outside an event loop drops and counts the event."""

        class Quiet(EventSink):
            async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
                return None

        before = dropped_event_count()
        Quiet().try_emit(type="x", data=None)
        assert dropped_event_count() - before == 1


class TestProcessSink:
    async def test_used_when_context_has_none(self, process_sink: InMemoryEventSink) -> None:
        """A run whose entry context has no sink reports to the process sink."""
        assert get_event_sink() is process_sink
        await CHAIN.build().run(make_ctx())
        assert process_sink.types[0] == "pipeline.created"
        assert len(process_sink.types) == 7

    async def test_context_sink_wins(self, process_sink: InMemoryEventSink, sink: InMemoryEventSink) -> None:
        """A sink on the entry context takes precedence over the process sink."""
        await CHAIN.build().run(make_ctx(sink=sink))
        assert (len(sink.types), process_sink.types) == (7, [])

    def test_reset(self) -> None:
        """``set_event_sink(None)`` restores the no-op default."""
        set_event_sink(InMemoryEventSink())
        set_event_sink(None)
        assert isinstance(get_event_sink(), NoOpEventSink)


class TestShippedSinks:
    async def test_logging_sink_writes_json_lines(self, caplog: pytest.LogCaptureFixture) -> None:
        """``LoggingEventSink`` logs each event as one JSON object with its type and data."""
        with caplog.at_level(logging.INFO, logger="stageflow.events"):
            await CHAIN.build().run(make_ctx(sink=LoggingEventSink()))
        records = [r for r in caplog.records if r.name == "stageflow.events"]
        lines = [json.loads(r.getMessage()) for r in records]
        assert [line["type"] for line in lines] == CHAIN_EVENTS
        assert {line["pipeline"] for line in lines} == {"chain"}
        assert {r.levelno for r in records} == {logging.INFO}

    async def test_logging_sink_rounds_floats(self, caplog: pytest.LogCaptureFixture) -> None:
        """Floats in the JSON lines, nested ones included, are rounded to the microsecond."""
        with caplog.at_level(logging.INFO, logger="stageflow.events"):
            await LoggingEventSink().emit(
                type="t",
                data={
                    "duration": 5.0726000040413055e-05,
                    "stages": {"a": {"wait": 0.1234567891}},
                    "n": [1.0000001],
                },
            )
        assert json.loads(caplog.records[-1].getMessage()) == {
            "type": "t",
            "duration": 5.1e-05,
            "stages": {"a": {"wait": 0.123457}},
            "n": [1.0],
        }

    async def test_logging_sink_redacts_error_messages(self, caplog: pytest.LogCaptureFixture) -> None:
        """``redact_error`` rewrites the ``error`` of failed and run-level events before they are logged."""

        async def leaky(ctx: StageContext) -> StageOutput:
            raise PermissionError("login as bob with password=hunter2 refused")

        seen: list[str] = []

        def redact(message: str) -> str:
            seen.append(message)
            return message.replace("hunter2", "***")

        pipeline = Pipeline(name="leak").with_stage("a", leaky, E)
        with caplog.at_level(logging.INFO, logger="stageflow.events"), pytest.raises(PipelineFailedError):
            await pipeline.build().run(make_ctx(sink=LoggingEventSink(redact_error=redact)))
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "stageflow.events"]
        errors = [(line["type"], line["error"]) for line in lines if "error" in line]
        assert errors == [
            ("stage.a.failed", "login as bob with password=*** refused"),
            ("pipeline.failed", "login as bob with password=*** refused"),
        ]
        assert seen == ["login as bob with password=hunter2 refused"] * 2
        assert "hunter2" not in caplog.text

    async def test_logging_sink_hook_returning_none_leaves_the_error_out(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A ``redact_error`` hook returning ``None`` leaves the ``error`` field out and keeps the rest."""
        with caplog.at_level(logging.INFO, logger="stageflow.events"):
            await LoggingEventSink(redact_error=lambda message: None).emit(
                type="stage.a.failed", data={"stage": "a", "error": "token=abc", "error_type": "ValueError"}
            )
        assert json.loads(caplog.records[-1].getMessage()) == {
            "type": "stage.a.failed",
            "stage": "a",
            "error_type": "ValueError",
        }

    async def test_logging_sink_raising_hook_fails_closed(self, caplog: pytest.LogCaptureFixture) -> None:
        """A ``redact_error`` hook that raises costs the message (logged once), never the event."""

        def broken(message: str) -> str:
            raise RuntimeError("hook bug")

        sink = LoggingEventSink(redact_error=broken)
        with caplog.at_level(logging.INFO):
            for _ in range(2):
                await sink.emit(type="stage.a.failed", data={"stage": "a", "error": "token=abc"})
        events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "stageflow.events"]
        complaints = [r.getMessage() for r in caplog.records if r.name == "stageflow"]
        assert events == [{"type": "stage.a.failed", "stage": "a"}] * 2
        assert complaints == [
            f"stageflow: LoggingEventSink's redact_error hook {broken!r} raised RuntimeError('hook bug'); "
            "error messages are left out (logged once)"
        ]

    async def test_logging_sink_disabled_level(self, caplog: pytest.LogCaptureFixture) -> None:
        """``LoggingEventSink`` logs nothing when its level is disabled."""
        with caplog.at_level(logging.WARNING, logger="stageflow.events"):
            await CHAIN.build().run(make_ctx(sink=LoggingEventSink(level=logging.DEBUG)))
        assert [r for r in caplog.records if r.name == "stageflow.events"] == []

    async def test_in_memory_sink_helpers(self, sink: InMemoryEventSink) -> None:
        """``InMemoryEventSink`` keeps events in order and can filter and clear them."""
        await sink.emit(type="one", data={"k": 1})
        sink.try_emit(type="two", data=None)
        assert sink.types == ["one", "two"]
        assert [dict(e.data) for e in sink.of_type("one")] == [{"k": 1}]
        assert dict(sink.of_type("two")[0].data) == {}
        sink.clear()
        assert sink.events == []

    async def test_custom_stage_event(self, sink: InMemoryEventSink) -> None:
        """``ctx.try_emit_event`` sends a custom event tagged with run, pipeline and stage."""

        async def custom(ctx: StageContext) -> StageOutput:
            ctx.try_emit_event("app.note", {"n": 1})
            return StageOutput.ok()

        ctx = make_ctx(sink=sink)
        await Pipeline(name="p").with_stage("s", custom, E).build().run(ctx)
        note = sink.of_type("app.note")[0].data
        assert (note["run_id"], note["pipeline"], note["stage"], note["n"]) == (
            str(ctx.snapshot.run_id.pipeline_run_id),
            "p",
            "s",
            1,
        )
