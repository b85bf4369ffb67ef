"""Tiny stages and pipelines shared by the tests."""

from __future__ import annotations

import asyncio

from stageflow import Pipeline, StageContext, StageKind, StageOutput

__all__ = ("T", "boom", "diamond", "fail", "hang", "ok", "skip")

T = StageKind.TRANSFORM


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


def diamond() -> Pipeline:
    """a -> (b, c) -> d, with d fanning in from both."""
    return (
        Pipeline(name="demo")
        .with_stage("a", ok, T)
        .with_stage("b", ok, T, dependencies=("a",))
        .with_stage("c", ok, StageKind.ENRICH, dependencies=("a",))
        .with_stage("d", ok, T, dependencies=("b", "c"))
    )
