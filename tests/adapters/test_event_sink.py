"""DatabaseEventSink: the whole event taxonomy into PostgreSQL and SQLite, every event stored or counted."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from stageflow import (
    DatabaseEventSink,
    InMemoryEventSink,
    Pipeline,
    PipelineFailedError,
    PostgresRunStore,
    SQLiteRunStore,
    StageContext,
    StageKind,
    StageOutput,
)
from stageflow.views._cli import main
from tests._support import Tee, make_ctx


async def ok(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(value=1)


async def skip(ctx: StageContext) -> StageOutput:
    return StageOutput.skip("nothing to do \udce9")


async def boom(ctx: StageContext) -> StageOutput:
    raise ValueError("x" * 10_000)


def pipeline() -> Pipeline:
    return (
        Pipeline(name="taxonomy")
        .with_stage("a", ok, StageKind.TRANSFORM)
        .with_stage("b", skip, StageKind.ENRICH, dependencies=("a",))
        .with_stage("c", boom, StageKind.WORK, dependencies=("a",))
    )


@pytest.fixture(name="target", params=["sqlite", "postgresql"])
def _target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "runs.db")
    url: str = request.getfixturevalue("pg_url")
    return url


async def events_of(target: str, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    if target.startswith("postgresql://"):
        async with PostgresRunStore(target) as store:
            events = await store.events_of(run_id)
    else:
        sqlite = SQLiteRunStore(target)
        events = await sqlite.events_of(run_id)
        sqlite.close()
    return [(e.type, dict(e.data)) for e in events]


def as_stored(data: Any) -> Any:
    """An event's data as the sink stores it: JSON values, long text cut, lone surrogates escaped."""
    text = json.dumps(data, default=repr)
    text = text.replace('"' + "x" * 10_000, '"' + "x" * 4096 + "… [5,904 more characters not shown]")
    return json.loads(text.replace("\\udce9", "\\\\udce9"))


class TestTaxonomy:
    async def test_every_event_of_a_run_is_stored_in_order(self, target: str) -> None:
        """Every event of a run reads back by run id, in emission order, with its data."""
        memory = InMemoryEventSink()
        sink = DatabaseEventSink(target)
        graph = pipeline().build()
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx(sink=Tee(memory, sink)))
        assert await sink.flush()
        await sink.aclose()
        run_id = str(info.value.results.run_id)
        stored = await events_of(target, run_id)
        assert (
            [t for t, _ in stored]
            == [
                "pipeline.created",
                "pipeline.started",
                "stage.a.started",
                "stage.a.completed",
                "stage.b.started",
                "stage.b.skipped",
                "stage.c.started",
                "stage.c.failed",
                "pipeline.failed",
            ]
            == [e.type for e in memory.events]
        )
        assert stored == [(e.type, as_stored(e.data)) for e in memory.events]
        assert (sink.stored, sink.dropped) == (9, {"queue_full": 0, "error": 0, "closed": 0})


class TestCounting:
    async def test_a_full_queue_drops_and_counts(self, target: str) -> None:
        """Past queue_size, events are dropped at once (try_emit never waits) and counted."""
        sink = DatabaseEventSink(target, queue_size=3)
        for n in range(5):
            sink.try_emit(type="custom", data={"run_id": "r", "n": n, "timestamp": time.time()})
        assert (sink.pending, sink.dropped["queue_full"]) == (3, 2)
        assert await sink.flush()
        await sink.aclose()
        assert (sink.stored, sink.dropped) == (3, {"queue_full": 2, "error": 0, "closed": 0})
        assert [d["n"] for _, d in await events_of(target, "r")] == [0, 1, 2]

    async def test_events_after_close_are_counted(self, target: str) -> None:
        """An event emitted after aclose is counted as dropped (closed), never written."""
        sink = DatabaseEventSink(target)
        sink.try_emit(type="custom", data={"run_id": "r"})
        await sink.aclose()
        sink.try_emit(type="custom", data={"run_id": "r"})
        assert (sink.stored, sink.dropped) == (1, {"queue_full": 0, "error": 0, "closed": 1})

    async def test_an_unreachable_database_counts_every_event(self, caplog: pytest.LogCaptureFixture) -> None:
        """With no server, flush returns within its bound and every event is counted as an error drop."""
        sink = DatabaseEventSink(
            "postgresql://u:pw-never-shown@127.0.0.1:1/d", connect_timeout=0.5, batch_size=2
        )
        for n in range(5):
            sink.try_emit(type="custom", data={"run_id": "r", "n": n})
        assert await sink.flush(timeout=30)
        await sink.aclose()
        assert (sink.stored, sink.dropped) == (0, {"queue_full": 0, "error": 5, "closed": 0})
        messages = [r.getMessage() for r in caplog.records if r.name == "stageflow"]
        assert len(messages) == 1
        assert messages[0].startswith(
            "stageflow: DatabaseEventSink('postgresql://u@127.0.0.1:1/d') could not write 2 events (dropped, "
            "counting them): "
        )
        assert all("pw-never-shown" not in r.getMessage() for r in caplog.records)

    @pytest.mark.parametrize(
        ("keyword", "value", "message"),
        [
            ("queue_size", 0, "queue_size=0 is invalid; pass a whole number of at least 1"),
            ("batch_size", 2.5, "batch_size=2.5 is invalid; pass a whole number of at least 1"),
            ("write_timeout", 0, "write_timeout=0 is invalid; use a finite number of seconds > 0"),
            (
                "write_timeout",
                float("inf"),
                "write_timeout=inf is invalid; use a finite number of seconds > 0",
            ),
        ],
        ids=["queue", "batch", "timeout", "infinite-timeout"],
    )
    def test_bad_options_are_refused(self, tmp_path: Path, keyword: str, value: object, message: str) -> None:
        """A bad queue size, batch size or timeout is refused, naming it."""
        with pytest.raises(ValueError) as info:
            DatabaseEventSink(tmp_path / "e.db", **{keyword: value})  # type: ignore[arg-type]
        assert str(info.value) == message


class TestRunsShowEvents:
    def test_runs_show_lists_the_stored_events(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """``runs show --events`` prints the run's stored events after its timeline."""
        import asyncio

        db = tmp_path / "runs.db"
        store = SQLiteRunStore(db)
        sink = DatabaseEventSink(db)

        async def go() -> str:
            graph = Pipeline(name="one").with_stage("a", ok, StageKind.WORK).build(run_store=store)
            results = await graph.run(make_ctx(sink=sink))
            await sink.aclose()
            return str(results.run_id)

        run_id = asyncio.run(go())
        store.close()
        capsys.readouterr()
        assert main(["runs", "show", str(db), run_id[:8], "--events", "--color", "never"]) == 0
        out = capsys.readouterr().out
        assert [line.split()[-1] for line in out.split("  events:\n")[1].splitlines()] == [
            "pipeline.created",
            "pipeline.started",
            "stage.a.started",
            "stage.a.completed",
            "pipeline.completed",
        ]
