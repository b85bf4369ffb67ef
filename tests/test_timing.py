"""Per-stage timing: ready/start/end ordering, waits and the exact critical path."""

from __future__ import annotations

import asyncio

import pytest

from stageflow import Pipeline, RunResult, StageContext, StageOutput

from ._stages import W, chain, skip
from ._support import StageFn, make_ctx, ok_stage


def finishes_after(other: asyncio.Event, mine: asyncio.Event | None = None) -> StageFn:
    """A stage that finishes only once ``other`` is set, then sets ``mine``."""

    async def stage(ctx: StageContext) -> StageOutput:
        await other.wait()
        await asyncio.sleep(0)
        if mine is not None:
            mine.set()
        return StageOutput.ok()

    return stage


def signals(mine: asyncio.Event) -> StageFn:
    async def stage(ctx: StageContext) -> StageOutput:
        mine.set()
        return StageOutput.ok()

    return stage


def diamond(last: str) -> Pipeline:
    """a -> (b, c) -> d, where ``last`` of b and c finishes after the other."""
    first_done = asyncio.Event()
    first = "c" if last == "b" else "b"
    stages = {first: signals(first_done), last: finishes_after(first_done)}
    return (
        Pipeline()
        .with_stage("a", ok_stage(), W)
        .with_stage("b", stages["b"], W, dependencies=("a",))
        .with_stage("c", stages["c"], W, dependencies=("a",))
        .with_stage("d", ok_stage(), W, dependencies=("b", "c"))
    )


def assert_timing_invariants(results: RunResult, deps: dict[str, tuple[str, ...]]) -> None:
    for name, r in results.items():
        assert r.ready_at <= r.started_at <= r.ended_at, name
        if deps[name]:
            assert r.ready_at == max(results[d].ended_at for d in deps[name]), name
        else:
            assert r.ready_at == results.started_at, name
    assert results.started_at <= min(r.ready_at for r in results.values())
    assert max(r.ended_at for r in results.values()) <= results.ended_at


class TestTimes:
    async def test_ready_start_end_order(self) -> None:
        """Each stage is ready when its last dependency ended, and starts and ends after that."""
        pipeline = diamond(last="b")
        async with asyncio.timeout(5):
            results = await pipeline.build().run(make_ctx())
        assert_timing_invariants(results, {s.name: s.dependencies for s in pipeline.stages.values()})

    async def test_auto_skipped_stage_times(self) -> None:
        """Timing invariants also hold across auto-skipped conditional stages."""
        stages = [("a", skip), *((name, ok_stage()) for name in "bcd")]
        pipeline = chain(*stages, kind=W, conditional={"b", "c"})
        results = await pipeline.build().run(make_ctx())
        assert_timing_invariants(results, {s.name: s.dependencies for s in pipeline.stages.values()})
        assert results.critical_path == ("a", "b", "c", "d")

    async def test_waits(self) -> None:
        """``RunResult.waits`` is each stage's start minus its ready time."""
        results = await diamond(last="c").build().run(make_ctx())
        assert results.waits == {name: r.started_at - r.ready_at for name, r in results.items()}
        assert list(results.waits) == list(results)
        assert all(w >= 0 for w in results.waits.values())

    async def test_run_duration(self) -> None:
        """``RunResult.duration`` spans the run's recorded start and end."""
        results = await diamond(last="b").build().run(make_ctx())
        assert results.duration == results.ended_at - results.started_at
        assert results.duration > 0


class TestCriticalPath:
    @pytest.mark.parametrize("last", ["b", "c"], ids=["b-last", "c-last"])
    async def test_diamond(self, last: str) -> None:
        """On a diamond the critical path goes through the branch that finished last."""
        async with asyncio.timeout(5):
            results = await diamond(last).build().run(make_ctx())
        assert results.critical_path == ("a", last, "d")

    @pytest.mark.parametrize("last", [0, 3, 7], ids=["first", "middle", "last-added"])
    async def test_fan_in(self, last: int) -> None:
        """On a fan-in the critical path is the root that finished last, then the sink."""
        others_done = asyncio.Event()
        remaining = 7

        async def quick(ctx: StageContext) -> StageOutput:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                others_done.set()
            return StageOutput.ok()

        pipeline = Pipeline()
        for i in range(8):
            pipeline = pipeline.with_stage(f"r{i}", finishes_after(others_done) if i == last else quick, W)
        pipeline = pipeline.with_stage("sink", ok_stage(), W, dependencies=tuple(f"r{i}" for i in range(8)))
        async with asyncio.timeout(5):
            results = await pipeline.build().run(make_ctx())
        assert results.critical_path == (f"r{last}", "sink")

    async def test_last_finishing_stage_ends_the_path(self) -> None:
        """The path ends at the stage that finished last, not at a sink that finished earlier."""
        short_done = asyncio.Event()
        pipeline = (
            Pipeline()
            .with_stage("a", ok_stage(), W)
            .with_stage("short", signals(short_done), W, dependencies=("a",))
            .with_stage("long", finishes_after(short_done), W)
        )
        async with asyncio.timeout(5):
            results = await pipeline.build().run(make_ctx())
        assert results.critical_path == ("long",)

    async def test_chain(self) -> None:
        """On a chain the critical path is the whole chain."""
        pipeline = Pipeline()
        names = [f"s{i}" for i in range(10)]
        for prev, name in zip([None, *names], names, strict=False):
            pipeline = pipeline.with_stage(name, ok_stage(), W, dependencies=(prev,) if prev else ())
        results = await pipeline.build().run(make_ctx())
        assert results.critical_path == tuple(names)
