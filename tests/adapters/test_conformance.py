"""One conformance suite for every run store: in-memory, SQLite and PostgreSQL behave the same."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, Future
from dataclasses import replace
from typing import Any

import pytest

from stageflow import (
    MAX_MESSAGE_CHARS,
    InMemoryRunStore,
    OutcomeCategory,
    Pipeline,
    PipelineCancelledError,
    PipelineContext,
    PipelineFailedError,
    PostgresRunStore,
    RunRecord,
    SQLiteRunStore,
    StageContext,
    StageOutput,
    StageRecord,
    reset_run_trace_id,
    set_run_trace_id,
)
from stageflow.interceptors import BaseInterceptor, ErrorAction, TimeoutInterceptor
from tests._stages import W, hang, ok, skip, sync_voice
from tests._support import FakeClock, make_ctx, output_stage, raising_stage

AnyStore = InMemoryRunStore | SQLiteRunStore | PostgresRunStore

T0 = 1_780_000_000.0
"""2026-05-28 20:26:40 UTC."""


def record(
    run_id: str, start: float, *, pipeline: str = "p", error: str | None = None, **fields: object
) -> RunRecord:
    """A two-stage run starting at ``start``."""
    stages = (
        StageRecord("a", "transform", "ok", start, start + 0.25, 0.0, 1),
        StageRecord(
            "b",
            "work",
            "fail" if error else "ok",
            start + 0.25,
            start + 0.5,
            0.125,
            2,
            error,
            "ValueError" if error else None,
            ("a",),
        ),
    )
    base = RunRecord(
        run_id, pipeline, "failed" if error else "completed", start, start + 0.5, stages, ("a", "b"), error
    )
    return replace(base, **fields)  # type: ignore[arg-type]


class NeverStarts(Executor):
    """An executor that takes work and never starts it."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        return Future()


def pending(ctx: StageContext) -> StageOutput:
    return StageOutput.ok()


class TestRecordAndRead:
    async def test_round_trip_is_exact(self, store: AnyStore) -> None:
        """Every field of a record, floats included, reads back exactly."""
        written = record(
            "r-1", T0 + 0.1234567891, error="b: ValueError: bad", trace_id="0af7651916cd43dd8448eb211c80319c"
        )
        await store.record_run(written)
        assert await store.get_run("r-1") == written

    async def test_dispatch_work_and_streaming_fields_round_trip(self, store: AnyStore) -> None:
        """A stage's dispatch, work outcome, chunk count and time to first chunk, and the run's first-output
        path, read back exactly; a stage without them reads back as 0.0, None, 0 and None."""
        base = record("r-1", T0)
        written = replace(
            base,
            stages=(
                replace(base.stages[0], dispatch=0.0123456789, work="abandoned"),
                replace(base.stages[1], chunks=12, time_to_first_chunk=0.0456789012),
            ),
            first_output_path=(("a", 0.25), ("b", 0.0456789012)),
        )
        await store.record_run(written)
        await store.record_run(record("r-2", T0 + 1))
        got = await store.get_run("r-1")
        assert got == written
        assert got is not None and got.time_to_first_output == 0.25 + 0.0456789012
        assert [(s.dispatch, s.work, s.chunks, s.time_to_first_chunk) for s in got.stages] == [
            (0.0123456789, "abandoned", 0, None),
            (0.0, None, 12, 0.0456789012),
        ]
        plain = await store.get_run("r-2")
        assert plain is not None
        assert [(s.dispatch, s.work, s.chunks, s.time_to_first_chunk) for s in plain.stages] == [
            (0.0, None, 0, None),
            (0.0, None, 0, None),
        ]
        assert (plain.first_output_path, plain.time_to_first_output, plain.streamed) == ((), None, False)
        assert [r.run_id for r in await store.list_runs()] == ["r-2", "r-1"]
        assert (await store.list_runs())[1] == written

    async def test_a_run_records_what_the_engine_measured(self, store: AnyStore, clock: FakeClock) -> None:
        """A run with a sync stage and two streaming stages is stored with the dispatch time, chunk counts,
        times to first chunk and first-output path its RunResult has (stage times on a controlled clock)."""
        graph = sync_voice(clock, more=2).build(run_store=store)
        results = await graph.run(make_ctx())
        stored = await store.get_run(results.run_id)
        assert stored is not None
        assert [(s.name, s.chunks, s.time_to_first_chunk, s.work) for s in stored.stages] == [
            ("stt", 0, None, None),
            ("llm", 3, 0.25, None),
            ("tts", 3, 0.0625, None),
        ]
        assert stored.stage("stt").dispatch == results["stt"].dispatch > 0
        assert [s.dispatch for s in stored.stages[1:]] == [0.0, 0.0]
        assert stored.first_output_path == results.first_output_path
        assert [name for name, _ in stored.first_output_path] == ["stt", "llm", "tts"]
        assert [seconds for _, seconds in stored.first_output_path][1:] == [0.25, 0.0625]
        assert stored.time_to_first_output == results.time_to_first_output
        assert stored.streamed

    async def test_a_sync_stage_whose_work_was_stopped_is_stored_so(self, store: AnyStore) -> None:
        """A sync stage cancelled by a failing sibling before its executor started it is stored cancelled,
        its work ``stopped``."""

        async def failing(ctx: StageContext) -> StageOutput:
            raise RuntimeError("sibling failed")

        graph = (
            Pipeline(name="p")
            .with_stage("pending", pending, W, executor=NeverStarts())
            .with_stage("failing", failing, W)
            .build(run_store=store, cancel_grace=0)
        )
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        stored = await store.get_run(info.value.results.run_id)
        assert stored is not None
        assert [(s.name, s.status, s.work, s.chunks) for s in stored.stages] == [
            ("failing", "fail", None, 0),
            ("pending", "cancel", "stopped", 0),
        ]
        assert stored.first_output_path == ()

    async def test_categories_and_stages_never_started_round_trip(self, store: AnyStore) -> None:
        """Each stage's category, the run's, and the stages that never started read back exactly, the
        categories as ``OutcomeCategory`` values; a record without them reads back without them."""
        base = record("r-1", T0, error="b: StageTimeoutError: late")
        written = replace(
            base,
            stages=(
                replace(base.stages[0], category="skip"),
                replace(base.stages[1], category=OutcomeCategory.TIMEOUT),
            ),
            category="timeout",
            not_started=("c", "d"),
        )
        await store.record_run(written)
        await store.record_run(record("r-2", T0 + 1))
        got = await store.get_run("r-1")
        assert got == written
        assert got is not None
        assert [type(c) for c in (got.category, *(s.category for s in got.stages))] == [OutcomeCategory] * 3
        assert (got.category, got.not_started) == (OutcomeCategory.TIMEOUT, ("c", "d"))
        plain = await store.get_run("r-2")
        assert plain is not None
        assert (plain.category, plain.not_started, [s.category for s in plain.stages]) == (
            None,
            (),
            [None] * 2,
        )

    async def test_a_run_records_the_engine_categories_and_the_stages_never_started(
        self, store: AnyStore
    ) -> None:
        """A failed run is stored with each stage's category and the run's as its RunResult has them (a
        fallback and a conditional skip are skips, a timed-out stage a timeout), and the stages that
        never started, in declaration order."""

        class Fallback(BaseInterceptor):
            name = "fallback"

            async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
                return ErrorAction.FALLBACK if stage_name == "search" else ErrorAction.FAIL

        graph = (
            Pipeline(name="p")
            .with_stage("a", ok, W)
            .with_stage("memory", skip, W, dependencies=("a",))
            .with_stage("personal", ok, W, dependencies=("memory",), conditional=True)
            .with_stage("search", raising_stage(ConnectionError, "503"), W, dependencies=("a",))
            .with_stage("slow", hang, W, dependencies=("search", "personal"))
            .with_stage("after", ok, W, dependencies=("slow",))
            .with_stage("last", ok, W, dependencies=("after",))
            .build([Fallback(), TimeoutInterceptor(5.0, per_stage={"slow": 0.01})], run_store=store)
        )
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        results = info.value.results
        stored = await store.get_run(results.run_id)
        assert stored is not None
        assert {s.name: s.category for s in stored.stages} == {
            name: r.category for name, r in results.items()
        }
        assert {s.name: str(s.category) for s in stored.stages} == {
            "a": "success",
            "memory": "skip",
            "personal": "skip",
            "search": "skip",
            "slow": "timeout",
        }
        assert (stored.category, stored.not_started) == (OutcomeCategory.TIMEOUT, ("after", "last"))
        assert stored.category == results.category == info.value.category

    async def test_unknown_run_is_none(self, store: AnyStore) -> None:
        """An id that was never recorded reads as None."""
        await store.record_run(record("r-1", T0))
        assert await store.get_run("r-2") is None

    async def test_a_second_write_of_a_run_id_changes_nothing(self, store: AnyStore) -> None:
        """Writes are idempotent: the first record of a run id stays, a retried or other one is ignored."""
        first = record("r-1", T0)
        await store.record_run(first)
        await store.record_run(first)
        await store.record_run(replace(first, status="failed", error="later", stages=first.stages[:1]))
        assert await store.get_run("r-1") == first
        assert await store.list_runs() == [first]


class TestListing:
    async def test_newest_first_then_by_id_with_filters_and_pages(self, store: AnyStore) -> None:
        """Runs list newest first (ties by id), filter by pipeline, and page with limit and offset."""
        runs = [
            record("r-1", T0, pipeline="etl"),
            record("r-3", T0 + 60),
            record("r-2", T0 + 60),
            record("r-4", T0 + 86_400 * 3, pipeline="etl"),
            record("r-5", T0 + 120),
        ]
        for run in runs:
            await store.record_run(run)
        ids = [r.run_id for r in await store.list_runs()]
        assert ids == ["r-4", "r-5", "r-2", "r-3", "r-1"]
        assert [r.run_id for r in await store.list_runs(pipeline="etl")] == ["r-4", "r-1"]
        assert [r.run_id for r in await store.list_runs(pipeline="nope")] == []
        assert [r.run_id for r in await store.list_runs(limit=2)] == ["r-4", "r-5"]
        assert [r.run_id for r in await store.list_runs(limit=2, offset=2)] == ["r-2", "r-3"]
        assert [r.run_id for r in await store.list_runs(limit=2, offset=4)] == ["r-1"]
        assert [r.run_id for r in await store.list_runs(limit=2, offset=5)] == []

    @pytest.mark.parametrize(
        ("keywords", "message"),
        [
            ({"limit": 0}, "limit=0 is invalid; pass a whole number of at least 1"),
            ({"limit": True}, "limit=True is invalid; pass a whole number of at least 1"),
            ({"offset": -1}, "offset=-1 is invalid; pass a whole number of at least 0"),
        ],
        ids=["limit-0", "limit-bool", "offset-negative"],
    )
    async def test_bad_page_is_refused(self, store: AnyStore, keywords: dict[str, int], message: str) -> None:
        """A limit below 1 or an offset below 0 is refused, naming the value."""
        with pytest.raises(ValueError) as info:
            await store.list_runs(limit=keywords.get("limit", 10), offset=keywords.get("offset", 0))
        assert str(info.value) == message

    async def test_find_by_prefix(self, store: AnyStore) -> None:
        """Runs are found by id prefix, in id order, up to a limit; % and _ in a prefix are literal."""
        for run_id in ("ab-2", "ab-1", "abc", "b%", "a_c", "axc"):
            await store.record_run(record(run_id, T0))
        assert [r.run_id for r in await store.find_runs("ab")] == ["ab-1", "ab-2", "abc"]
        assert [r.run_id for r in await store.find_runs("ab", limit=2)] == ["ab-1", "ab-2"]
        assert [r.run_id for r in await store.find_runs("a_")] == ["a_c"]
        assert [r.run_id for r in await store.find_runs("b%")] == ["b%"]
        assert [r.run_id for r in await store.find_runs("zz")] == []


HOSTILE = [
    pytest.param('it\'s "quoted"', 'it\'s "quoted"', id="quote"),
    pytest.param("x'); DROP TABLE runs; --", "x'); DROP TABLE runs; --", id="injection"),
    pytest.param(
        "x'); DROP TABLE stageflow_runs; --", "x'); DROP TABLE stageflow_runs; --", id="pg-injection"
    ),
    pytest.param("résumé ✓ 名前 🎉", "résumé ✓ 名前 🎉", id="unicode"),
    pytest.param("C:\\new\\table", "C:\\new\\table", id="backslash"),
    pytest.param("a\x00b", "a\\x00b", id="nul"),
    pytest.param("bad \udce9 byte", "bad \\udce9 byte", id="lone-surrogate"),
]
"""``(text, stored)``: a text, and how it reads back."""


def hostile_record(text: str) -> RunRecord:
    """A failed one-stage run whose every name and message holds ``text``."""
    stage = StageRecord(
        f"s-{text}", "work", "fail", T0, T0 + 1, 0.0, 1, f"err-{text}", f"E-{text}", (f"d-{text}",)
    )
    return RunRecord(
        f"id-{text}", f"pipe-{text}", "failed", T0, T0 + 1, (stage,), (f"s-{text}",), f"run-{text}"
    )


class TestHostileInput:
    @pytest.mark.parametrize(("text", "stored"), HOSTILE)
    async def test_text_reads_back_exactly_or_escaped(self, store: AnyStore, text: str, stored: str) -> None:
        """Hostile names and messages read back exactly; NUL and lone surrogates read back escaped."""
        written = hostile_record(text)
        await store.record_run(written)
        expected = hostile_record(stored)
        assert await store.get_run(f"id-{stored}") == expected
        assert await store.list_runs(pipeline=f"pipe-{stored}") == [expected]
        assert await store.find_runs(f"id-{stored}") == [expected]

    async def test_a_megabyte_message_is_cut_to_the_limit(self, store: AnyStore) -> None:
        """A 1 MB error keeps its first MAX_MESSAGE_CHARS characters and says how many were cut."""
        message = "x" * 1_000_000
        await store.record_run(record("big", T0, error=message))
        found = await store.get_run("big")
        assert found is not None
        cut = "x" * MAX_MESSAGE_CHARS + "… [995,904 more characters not shown]"
        assert (found.error, found.stages[1].error, MAX_MESSAGE_CHARS) == (cut, cut, 4096)

    async def test_runs_whose_texts_hold_lone_surrogates_are_all_recorded(self, store: AnyStore) -> None:
        """Eight runs whose error, skip or cancel text holds a lone surrogate are all recorded, escaped."""
        runners = (
            output_stage(StageOutput.fail, "bad \udcff input"),
            raising_stage(ValueError, "bad \ud800 input"),
            output_stage(StageOutput.skip, "no \udfff data"),
            output_stage(StageOutput.cancel, "stop \udc80 now"),
        )
        ids = []
        for runner in runners * 2:
            graph = Pipeline(name="hostile").with_stage("s", runner, W).build(run_store=store)
            try:
                results = await graph.run(make_ctx())
                ids.append(str(results.run_id))
            except (PipelineFailedError, PipelineCancelledError) as exc:
                ids.append(str(exc.results.run_id))
        runs = {r.run_id: r for r in await store.list_runs(limit=100)}
        assert sorted(runs) == sorted(ids)
        assert [runs[i].stages[0].error for i in ids[:4]] == [
            "bad \\udcff input",
            "bad \\ud800 input",
            "no \\udfff data",
            "stop \\udc80 now",
        ]


class TestConcurrencyAndTraces:
    async def test_concurrent_writers_lose_nothing(self, store: AnyStore) -> None:
        """Two hundred concurrent writes, some of them repeats, store each run exactly once."""
        runs = [record(f"r-{i:03}", T0 + i) for i in range(200)]
        await asyncio.gather(*(store.record_run(r) for r in runs + runs[::7]))
        assert await store.list_runs(limit=1000) == runs[::-1]

    async def test_the_trace_id_of_the_current_run_is_kept(self, store: AnyStore) -> None:
        """A run recorded while a trace id is set keeps it; one without keeps None."""
        graph = Pipeline(name="traced").with_stage("a", ok, W).build(run_store=store)
        token = set_run_trace_id("4bf92f3577b34da6a3ce929d0e0e4736")
        try:
            traced = await graph.run(make_ctx())
        finally:
            reset_run_trace_id(token)
        untraced = await graph.run(make_ctx())
        got = [await store.get_run(r.run_id) for r in (traced, untraced)]
        assert [g.trace_id if g else "missing" for g in got] == ["4bf92f3577b34da6a3ce929d0e0e4736", None]
