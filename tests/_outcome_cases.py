"""One pipeline per outcome, for the tests that check every view calls each outcome the same thing.

Each case's pipeline has a stage ``s`` that ends the case's way and a stage ``after`` that depends on it
(it never starts when ``s`` stops the run); the conditional skip adds a ``gate`` that skips first, the
fallback an interceptor that turns ``s``'s error into a skip. ``EXPECTED`` is the README's table of what
the views say, for ``s`` and for the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from stageflow import (
    EventSink,
    Pipeline,
    PipelineContext,
    PipelineRunError,
    RunResult,
    RunStore,
    StageContext,
    StageGraph,
    StageKind,
    StageOutput,
)
from stageflow.interceptors import BaseInterceptor, ErrorAction, Interceptor, TimeoutInterceptor

from ._support import make_ctx

__all__ = ("CASES", "EXPECTED", "Expected", "Ran", "build_case", "run_case")

CASES = ("success", "failure", "error", "timeout", "cancel", "skip", "conditional-skip", "fallback")
"""The outcomes, by the names the README's table gives them."""


@dataclass(frozen=True, slots=True)
class Expected:
    """What the views say of one case: of stage ``s`` and of the run."""

    status: str
    """``s``'s ``StageResult.status`` value (the stored ``StageRecord.status``)."""
    category: str
    """``s``'s category: ``StageResult.category``, ``StageRecord.category``, event data ``category``."""
    note: str
    """What ``timeline()`` and ``stageflow runs show`` print after ``s``'s bar."""
    error_type: str | None
    """``s``'s ``error_type`` (event data, ``StageRecord.error_type``) and span ``error.type``."""
    run_status: str
    """``RunRecord.status`` and the ``status`` column of ``runs list`` and the report."""
    run_category: str
    """``RunResult.category``, ``RunRecord.category``, the ``result`` column of ``runs list`` and of the
    report."""
    run_said: str
    """What the timeline's heading, the report's run heading and the demo's summary call the run."""
    after_started: bool
    """Whether ``after`` (which depends on ``s``) started; when not, every view lists it as not started."""


EXPECTED: dict[str, Expected] = {
    "success": Expected("ok", "success", "", None, "completed", "success", "completed", True),
    "failure": Expected(
        "fail",
        "failure",
        "failed: StageFailedError: refused",
        "StageFailedError",
        "failed",
        "failure",
        "failed (failure)",
        False,
    ),
    "error": Expected(
        "fail",
        "error",
        "error: ValueError: bad input",
        "ValueError",
        "failed",
        "error",
        "failed (error)",
        False,
    ),
    "timeout": Expected(
        "fail",
        "timeout",
        "timed out: stage 's' timed out after 0.01 s",
        "StageTimeoutError",
        "failed",
        "timeout",
        "failed (timeout)",
        False,
    ),
    "cancel": Expected(
        "cancel", "cancellation", "cancelled: enough", None, "cancelled", "cancellation", "cancelled", False
    ),
    "skip": Expected(
        "skip", "skip", "skipped: nothing to do", None, "completed", "success", "completed", True
    ),
    "conditional-skip": Expected(
        "skip",
        "skip",
        "skipped: dependency 'gate' was skipped",
        None,
        "completed",
        "success",
        "completed",
        True,
    ),
    "fallback": Expected(
        "skip",
        "skip",
        "skipped: fallback after ConnectionError: web search API returned 503",
        None,
        "completed",
        "success",
        "completed",
        True,
    ),
}


async def _ok(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(done=True)


async def _fail(ctx: StageContext) -> StageOutput:
    return StageOutput.fail(error="refused")


async def _raise(ctx: StageContext) -> StageOutput:
    raise ValueError("bad input")


async def _hang(ctx: StageContext) -> StageOutput:
    await asyncio.Event().wait()
    return StageOutput.ok()


async def _cancel(ctx: StageContext) -> StageOutput:
    return StageOutput.cancel(reason="enough")


async def _skip(ctx: StageContext) -> StageOutput:
    return StageOutput.skip(reason="nothing to do")


async def _unavailable(ctx: StageContext) -> StageOutput:
    raise ConnectionError("web search API returned 503")


class SearchFallback(BaseInterceptor):
    """Turns ``s``'s error into a skip (``BaseInterceptor.fallback``'s default output)."""

    name = "fallback"
    priority = 5

    async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
        return ErrorAction.FALLBACK


_STAGES = {
    "success": _ok,
    "failure": _fail,
    "error": _raise,
    "timeout": _hang,
    "cancel": _cancel,
    "skip": _skip,
    "conditional-skip": _ok,
    "fallback": _unavailable,
}


def build_case(
    case: str, interceptors: Sequence[Interceptor] = (), run_store: RunStore | None = None
) -> StageGraph:
    """The pipeline ``case-{case}``, built with ``interceptors`` (the case's own come innermost)."""
    pipeline = Pipeline(name=f"case-{case}")
    own: list[Interceptor] = [TimeoutInterceptor(5.0, per_stage={"s": 0.01})]
    if case == "conditional-skip":
        pipeline = pipeline.with_stage("gate", _skip, StageKind.WORK)
        pipeline = pipeline.with_stage("s", _ok, StageKind.WORK, dependencies=("gate",), conditional=True)
    else:
        pipeline = pipeline.with_stage("s", _STAGES[case], StageKind.WORK)
    if case == "fallback":
        own.insert(0, SearchFallback())
    pipeline = pipeline.with_stage("after", _ok, StageKind.WORK, dependencies=("s",))
    return pipeline.build([*interceptors, *own], run_store=run_store)


@dataclass(frozen=True, slots=True)
class Ran:
    """One case's run: its results, and the exception it raised (``None`` when it completed)."""

    results: RunResult
    error: PipelineRunError | None


async def run_case(graph: StageGraph, sink: EventSink | None = None) -> Ran:
    """Run ``graph`` once; a run that fails or is cancelled is returned with its exception."""
    try:
        return Ran(await graph.run(make_ctx(sink=sink)), None)
    except PipelineRunError as exc:
        return Ran(exc.results, exc)
