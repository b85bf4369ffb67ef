"""Tiny stages and pipelines shared by the tests."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from stageflow import Pipeline, StageContext, StageKind, StageOutput, Streaming

from ._support import FakeClock

__all__ = (
    "E",
    "Hanging",
    "R",
    "T",
    "W",
    "boom",
    "chain",
    "diamond",
    "fail",
    "hang",
    "hang_once_started",
    "ok",
    "skip",
    "sync_voice",
    "voice",
)

T = StageKind.TRANSFORM
W = StageKind.WORK
E = StageKind.ENRICH
R = StageKind.ROUTE


async def ok(ctx: StageContext) -> StageOutput:
    """A stage that succeeds."""
    return StageOutput.ok(done=True)


async def boom(ctx: StageContext) -> StageOutput:
    """A stage that raises."""
    raise RuntimeError("kaput")


async def fail(ctx: StageContext) -> StageOutput:
    """A stage that returns a failure."""
    return StageOutput.fail("bad input")


async def skip(ctx: StageContext) -> StageOutput:
    """A stage that skips itself."""
    return StageOutput.skip("nothing to do")


async def hang(ctx: StageContext) -> StageOutput:
    """A stage that waits until it is cancelled."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def chain(
    *stages: tuple[str, Any],
    kind: StageKind = T,
    name: str = "pipeline",
    conditional: Collection[str] = (),
) -> Pipeline:
    """Pipeline ``name`` of the ``(stage name, runner)`` pairs, each of kind ``kind`` and depending on the
    stage before it; the stages named in ``conditional`` are conditional."""
    pipeline = Pipeline(name)
    before: tuple[str, ...] = ()
    for stage, runner in stages:
        pipeline = pipeline.with_stage(
            stage, runner, kind, dependencies=before, conditional=stage in conditional
        )
        before = (stage,)
    return pipeline


def diamond(name: str = "demo") -> Pipeline:
    """Pipeline ``name``: a -> (b, c) -> d, with d fanning in from both."""
    return (
        Pipeline(name=name)
        .with_stage("a", ok, T)
        .with_stage("b", ok, T, dependencies=("a",))
        .with_stage("c", ok, StageKind.ENRICH, dependencies=("a",))
        .with_stage("d", ok, T, dependencies=("b", "c"))
    )


def voice(
    clock: FakeClock,
    *,
    token: float = 0.125,
    audio: float = 0.0625,
    streamed: bool = True,
    llm_config: dict[str, Any] | None = None,
) -> Pipeline:
    """Pipeline ``voice`` on a hand-moved clock: stt (0.5 s) -> llm (first token at 0.25 s, then three
    more ``token`` s apart, collected as ``text``) -> tts (``audio`` s per chunk it speaks: each token as
    it streams, or, not ``streamed``, each of the collected tokens once llm ended)."""

    async def stt(ctx: StageContext) -> StageOutput:
        clock.now += 0.5
        return StageOutput.ok(text="hi")

    async def llm(ctx: StageContext) -> AsyncIterator[str]:
        clock.now += 0.25
        yield "Hello."
        await asyncio.sleep(0)  # tts starts at this first chunk and speaks it
        for _ in range(3):
            clock.now += token
            yield " more"

    async def tts(ctx: StageContext) -> AsyncIterator[bytes]:
        if streamed:
            async for _ in ctx.inputs.stream("llm"):
                clock.now += audio
                yield b"audio"
        else:
            for _ in ctx.inputs.get_from("llm", "text"):
                clock.now += audio
                yield b"audio"

    return (
        Pipeline("voice")
        .with_stage("stt", stt, T)
        .with_stage(
            "llm", llm, T, dependencies=("stt",), stream=Streaming(key="text"), config=llm_config or {}
        )
        .with_stage("tts", tts, T, dependencies=("llm",), streams=("llm",) if streamed else ())
    )


def sync_voice(clock: FakeClock, *, stt_seconds: float = 0.0, more: int) -> Pipeline:
    """Pipeline ``voice`` on a hand-moved clock: a sync stt (the engine runs it in a worker thread;
    ``stt_seconds`` long) -> llm, an agent (first chunk at 0.25 s, then ``more`` chunks 0.125 s apart) ->
    tts (0.0625 s per chunk it reads from llm's stream)."""

    def stt(ctx: StageContext) -> StageOutput:
        clock.now += stt_seconds
        return StageOutput.ok(text="hi")

    async def llm(ctx: StageContext) -> AsyncIterator[str]:
        clock.now += 0.25
        yield "Hello."
        await asyncio.sleep(0)
        for _ in range(more):
            clock.now += 0.125
            yield " more"

    async def tts(ctx: StageContext) -> AsyncIterator[bytes]:
        async for _ in ctx.inputs.stream("llm"):
            clock.now += 0.0625
            yield b"audio"

    return (
        Pipeline(name="voice")
        .with_stage("stt", stt, StageKind.TRANSFORM)
        .with_stage("llm", llm, StageKind.AGENT, dependencies=("stt",))
        .with_stage("tts", tts, StageKind.TRANSFORM, dependencies=("llm",), streams=("llm",))
    )


def hang_once_started(started: asyncio.Event) -> Callable[[StageContext], Awaitable[StageOutput]]:
    """A stage that sets ``started``, then waits until it is cancelled (for a caller to cancel the run)."""

    async def hang_started(ctx: StageContext) -> StageOutput:
        started.set()
        return await hang(ctx)

    return hang_started


class Hanging:
    """A stage that waits until it is cancelled, then cleans up: ``started[name]`` is set once stage ``name``
    waits; its cleanup sets ``cleaning[name]``, yields to the loop once if ``awaits_in_cleanup`` (a cleanup
    that itself awaits), waits for ``release`` if one is given, and then adds the stage's name to
    ``cleaned``."""

    def __init__(self, release: asyncio.Event | None = None, *, awaits_in_cleanup: bool = False) -> None:
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.cleaning: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.cleaned: list[str] = []
        self.release = release
        self.awaits_in_cleanup = awaits_in_cleanup

    async def __call__(self, ctx: StageContext) -> StageOutput:
        self.started[ctx.stage_name].set()
        try:
            await asyncio.Event().wait()
        finally:
            self.cleaning[ctx.stage_name].set()
            if self.awaits_in_cleanup:
                await asyncio.sleep(0)
            if self.release is not None:
                await self.release.wait()
            self.cleaned.append(ctx.stage_name)
        raise AssertionError("unreachable")
