"""The loop monitor: lag, busy share, and blocks blamed on the stage whose code held the loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stageflow import (
    InMemoryEventSink,
    LoopBlock,
    LoopMonitor,
    Pipeline,
    StageContext,
    StageKind,
    StageOutput,
    get_loop_monitor,
    set_loop_monitor,
)

from ._support import make_ctx

T = StageKind.TRANSFORM
BLOCK = 0.15  # a block three times the default threshold


def block_line(fn: Callable[..., Any]) -> int:
    """The line of ``fn`` that calls ``time.sleep`` (where the loop is stuck)."""
    import inspect

    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, text in enumerate(lines) if "time.sleep" in text)


async def embed(ctx: StageContext) -> StageOutput:
    time.sleep(BLOCK)  # noqa: ASYNC251 - the block under test
    return StageOutput.ok()


async def blocks_then_awaits(ctx: StageContext) -> StageOutput:
    await asyncio.sleep(0)
    time.sleep(BLOCK)  # noqa: ASYNC251 - the block under test
    await asyncio.sleep(0.03)  # the heartbeat reports the block while the stage still runs
    return StageOutput.ok()


async def blocks_twice(ctx: StageContext) -> StageOutput:
    for _ in range(2):
        time.sleep(BLOCK)  # noqa: ASYNC251 - the block under test
        await asyncio.sleep(0.03)
    return StageOutput.ok()


async def polite(ctx: StageContext) -> StageOutput:
    await asyncio.sleep(0.03)
    return StageOutput.ok()


@pytest.fixture
def blocks() -> Iterator[list[LoopBlock]]:
    found: list[LoopBlock] = []
    monitor = LoopMonitor(on_block=found.append)
    set_loop_monitor(monitor)
    try:
        yield found
    finally:
        set_loop_monitor(None)


class TestBlame:
    @pytest.mark.parametrize("stage", [embed, blocks_then_awaits], ids=["ends-in-the-block", "goes-on-after"])
    async def test_a_block_is_an_event_on_the_stage_that_blocked(
        self, blocks: list[LoopBlock], stage: Callable[..., Any], caplog: pytest.LogCaptureFixture
    ) -> None:
        """The event comes between the stage's ``started`` and ``completed`` and names the code location."""
        sink = InMemoryEventSink()
        graph = Pipeline("p").with_stage("embed", stage, T).build()
        ctx = make_ctx(sink=sink)
        with caplog.at_level(logging.WARNING, logger="stageflow"):
            await graph.run(ctx)
        types = [e.type for e in sink.events]
        assert types == [
            "pipeline.created",
            "pipeline.started",
            "stage.embed.started",
            "stage.embed.loop_blocked",
            "stage.embed.completed",
            "pipeline.completed",
        ]
        event = sink.events[3].data
        run_id = str(ctx.snapshot.run_id.pipeline_run_id)
        assert (event["run_id"], event["pipeline"], event["stage"], event["kind"]) == (
            run_id,
            "p",
            "embed",
            "transform",
        )
        assert (event["code.file.path"], event["code.line.number"]) == (__file__, block_line(stage))
        # over the threshold, and no longer than the stage took (one interval of slack)
        assert 0.05 < event["duration"] <= sink.events[4].data["duration"] + 0.011
        assert [(b.stage, b.pipeline, b.run_id, b.file, b.line) for b in blocks] == [
            ("embed", "p", run_id, __file__, block_line(stage))
        ]
        assert blocks[0].duration == event["duration"]
        warnings = [r.getMessage() for r in caplog.records if "blocked the event loop" in r.getMessage()]
        assert len(warnings) == 1
        assert warnings[0] == (
            f"stage 'embed' blocked the event loop for {round(event['duration'] * 1000)} ms at "
            f"tests/test_loop_monitor.py:{block_line(stage)}; make it a sync stage to run it in a thread"
        )

    async def test_one_warning_per_run_and_stage(
        self, blocks: list[LoopBlock], caplog: pytest.LogCaptureFixture
    ) -> None:
        sink = InMemoryEventSink()
        graph = Pipeline("p").with_stage("twice", blocks_twice, T).build()
        with caplog.at_level(logging.WARNING, logger="stageflow"):
            await graph.run(make_ctx(sink=sink))
            await graph.run(make_ctx(sink=sink))
        assert [e.type for e in sink.events].count("stage.twice.loop_blocked") == 4
        assert len(blocks) == 4
        warned = [r for r in caplog.records if "blocked the event loop" in r.getMessage()]
        assert len(warned) == 2  # one per run

    async def test_a_block_outside_any_stage_has_no_stage(self, blocks: list[LoopBlock]) -> None:
        graph = Pipeline("p").with_stage("polite", polite, T).build()
        await graph.run()  # the loop is watched from the first run on
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def stuck() -> None:
            time.sleep(BLOCK)

        loop.call_soon(stuck)
        loop.call_later(0.03, done.set_result, None)
        await done
        assert [(b.stage, b.pipeline, b.run_id, b.file, b.line) for b in blocks] == [
            (None, None, None, __file__, block_line(stuck))
        ]

    async def test_stages_that_await_are_never_blamed(self, blocks: list[LoopBlock]) -> None:
        sink = InMemoryEventSink()
        graph = (
            Pipeline("p").with_stage("a", polite, T).with_stage("b", polite, T, dependencies=("a",)).build()
        )
        await graph.run(make_ctx(sink=sink))
        assert blocks == []
        assert not any(e.type.endswith(".loop_blocked") for e in sink.events)

    async def test_a_sync_stage_that_blocks_runs_in_a_thread_and_is_not_blamed(
        self, blocks: list[LoopBlock]
    ) -> None:
        def embed_sync(ctx: StageContext) -> StageOutput:
            time.sleep(BLOCK)
            return StageOutput.ok()

        graph = Pipeline("p").with_stage("embed", embed_sync, T).with_stage("polite", polite, T).build()
        await graph.run()
        assert blocks == []

    def test_uvloop_blames_the_stage_too(self) -> None:
        import uvloop

        found: list[LoopBlock] = []
        set_loop_monitor(LoopMonitor(on_block=found.append))
        try:
            graph = Pipeline("p").with_stage("embed", embed, T).build()
            uvloop.run(graph.run())
        finally:
            set_loop_monitor(None)
        assert [(b.stage, b.file, b.line) for b in found] == [("embed", __file__, block_line(embed))]


class TestLagAndUtilization:
    async def test_every_heartbeat_reports_its_lag(self) -> None:
        lags: list[float] = []
        three = asyncio.Event()

        def on_lag(lag: float) -> None:
            lags.append(lag)
            if len(lags) == 3:
                three.set()

        async with LoopMonitor(on_lag=on_lag):
            await three.wait()
        assert len(lags) >= 3
        assert all(lag >= 0.0 for lag in lags)

    async def test_utilization_is_the_busy_share_of_each_second(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each completed second's busy share is the larger of the loop thread's CPU time and the beats' lag,
        over the second (driven here by a controlled clock, the watchdog stopped)."""
        import stageflow._monitor as monitor_module

        now, cpu = [100.0], [10.0]
        monkeypatch.setattr(monitor_module, "_perf", lambda: now[0])
        monkeypatch.setattr(time, "thread_time", lambda: cpu[0])
        monitor = LoopMonitor()
        assert monitor.utilization() == 0.0
        watch = monitor._watch(asyncio.get_running_loop())
        watch.close()  # beats are driven by hand below
        watch.thread.join(10)
        # second 1: the thread ran 0.3 s of CPU, beats lagged 0.1 s in all: busy 0.3 of 1.0
        for _ in range(10):
            requested = now[0]
            now[0] += 0.01  # each beat ran 10 ms after it was asked for
            watch.beat(requested)
            now[0] += 0.09
        cpu[0] += 0.3
        now[0] += 0.001
        watch.beat(now[0])
        assert monitor.utilization() == pytest.approx(0.3 / 1.001, rel=1e-6)
        # second 2: a blocking sleep (no CPU) held one beat 0.8 s: busy 0.8 of the second
        requested = now[0]
        now[0] += 0.8
        watch.beat(requested)
        now[0] += 0.2
        watch.beat(now[0])
        assert monitor.utilization() == pytest.approx(0.8, rel=1e-6)

    async def test_callbacks_that_raise_are_logged_and_change_nothing(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        lagged = asyncio.Event()

        def broken(value: object) -> None:
            if isinstance(value, float):
                lagged.set()
            raise RuntimeError("callback broke")

        set_loop_monitor(LoopMonitor(on_lag=broken, on_block=broken))
        try:
            with caplog.at_level(logging.ERROR, logger="stageflow"):
                result = await Pipeline("p").with_stage("embed", embed, T).build().run()
                await lagged.wait()
        finally:
            set_loop_monitor(None)
        assert result["embed"].status == "ok"
        messages = [r.getMessage() for r in caplog.records]
        assert any("on_block" in m and "callback broke" in m for m in messages)
        assert any("on_lag" in m and "callback broke" in m for m in messages)


class TestLifecycle:
    async def test_the_core_watches_nothing_until_asked(self) -> None:
        assert get_loop_monitor() is None
        before = set(threading.enumerate())
        await Pipeline("p").with_stage("a", polite, T).build().run()
        started = set(threading.enumerate()) - before
        assert not any(t.name == "stageflow-loop-monitor" for t in started)

    async def test_replacing_or_clearing_the_monitor_stops_its_watchdog(self) -> None:
        first = LoopMonitor()
        set_loop_monitor(first)
        await Pipeline("p").with_stage("a", polite, T).build().run()
        (watch,) = first._watches.values()
        assert watch.thread.is_alive()
        set_loop_monitor(LoopMonitor())
        watch.thread.join(10)
        assert not watch.thread.is_alive()
        set_loop_monitor(None)
        assert get_loop_monitor() is None


class TestBadInput:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"threshold": 0}, "LoopMonitor(threshold=0) is invalid; pass seconds as a finite number > 0"),
            (
                {"threshold": float("nan")},
                "LoopMonitor(threshold=nan) is invalid; pass seconds as a finite number > 0",
            ),
            ({"interval": "1"}, "LoopMonitor(interval='1') is invalid; pass seconds as a finite number > 0"),
            (
                {"threshold": 0.05, "interval": 0.03},
                "LoopMonitor(interval=0.03) is too long for threshold=0.05: the heartbeat must beat at least "
                "twice per threshold; pass interval <= 0.025",
            ),
        ],
    )
    def test_bad_settings_are_refused(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError) as info:
            LoopMonitor(**kwargs)
        assert str(info.value) == message

    def test_callbacks_must_be_callable(self) -> None:
        with pytest.raises(TypeError) as info:
            LoopMonitor(on_block=42)  # type: ignore[arg-type]
        assert str(info.value) == "LoopMonitor(on_block=42) is not callable; pass a function or None"

    def test_set_loop_monitor_takes_a_monitor(self) -> None:
        with pytest.raises(TypeError) as info:
            set_loop_monitor("on")  # type: ignore[arg-type]
        assert str(info.value) == "set_loop_monitor() takes a LoopMonitor or None, got 'on'"
