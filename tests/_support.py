"""Helpers shared by the tests: entry contexts, tiny stage factories and a sink that tees events."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import re
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

import pytest

from stageflow import (
    EventSink,
    PipelineContext,
    PipelineFailedError,
    PipelineRunError,
    PipelineTimer,
    StageContext,
    StageOutput,
    StageResult,
)
from stageflow.context import ContextSnapshot, RunIdentity
from stageflow.interceptors import BaseInterceptor, InterceptorResult
from stageflow.stages import StageInputs

__all__ = (
    "MUST_PICKLE",
    "AuthInterceptor",
    "FakeClock",
    "FakeSleep",
    "StageFn",
    "Tee",
    "VAR",
    "bypassed",
    "cancel_once_started",
    "cli_error",
    "exact",
    "killed_if_running",
    "local_dask_cluster",
    "make_ctx",
    "missing_names",
    "ok_stage",
    "output_stage",
    "raising_stage",
    "recording_stage",
    "run_cli",
    "run_fails",
)

if TYPE_CHECKING:
    from distributed import LocalCluster

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")
"""A context variable the tests set and read across stages, threads and interceptors."""

StageFn = Callable[[StageContext], Awaitable[StageOutput]]
"""An ``async def fn(ctx) -> StageOutput`` stage."""

MUST_PICKLE = (
    "a stage sent to another process must pickle: use a module-level function or class, and keep no lambdas, "
    "locks or open clients in its attributes or config (open them inside the stage, or run it in a thread)"
)
"""How every ``UnpicklableStageError`` message ends: the fix."""


def exact(message: str) -> str:
    """A ``match=`` pattern that accepts exactly ``message``."""
    return rf"\A{re.escape(message)}\Z"


def make_ctx(
    *,
    sink: EventSink | None = None,
    data: Mapping[str, Any] | None = None,
    text: str | None = None,
) -> StageContext:
    """An entry ``StageContext`` for ``StageGraph.run()``, with a fresh run identity."""
    snapshot = ContextSnapshot(run_id=RunIdentity(), input_text=text)
    return StageContext(
        snapshot=snapshot,
        inputs=StageInputs(snapshot=snapshot),
        stage_name="pipeline_entry",
        timer=PipelineTimer(),
        event_sink=sink,
        data=data,
    )


def ok_stage(**values: Any) -> StageFn:
    """A stage function that returns ``StageOutput.ok(**values)``."""

    async def stage(ctx: StageContext) -> StageOutput:
        return StageOutput.ok(**values)

    return stage


def output_stage(make: Callable[..., StageOutput], *args: Any, **kwargs: Any) -> StageFn:
    """A stage function that returns ``make(*args, **kwargs)``: ``output_stage(StageOutput.skip, "why")``."""

    async def stage(ctx: StageContext) -> StageOutput:
        return make(*args, **kwargs)

    return stage


def raising_stage(error_type: type[BaseException], *args: Any) -> StageFn:
    """A stage function that raises ``error_type(*args)``."""

    async def stage(ctx: StageContext) -> StageOutput:
        raise error_type(*args)

    return stage


def recording_stage(log: list[str], name: str, *, yields: int = 0) -> StageFn:
    """A stage function that yields ``yields`` times, then appends ``name`` to ``log`` and returns ok."""

    async def stage(ctx: StageContext) -> StageOutput:
        for _ in range(yields):
            await asyncio.sleep(0)
        log.append(name)
        return StageOutput.ok({name: True})

    return stage


class Tee:
    """Hands every event to each sink in turn: put a recorder first, and it keeps the data the core built
    before the sink under test sees it."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        for sink in self.sinks:
            sink.try_emit(type=type, data=data)


def local_dask_cluster(workers: int) -> LocalCluster:
    """``workers`` single-threaded Dask worker processes on 127.0.0.1, no dashboard.

    Without a dashboard the scheduler still serves its HTTP routes (health, metrics), on 127.0.0.1:8787 by
    default; a free port lets two clusters (and anything else on 8787) coexist.
    """
    from distributed import LocalCluster

    return LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=workers,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )


class FakeClock:
    """A clock tests move by hand: ``clock.now += 0.5``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSleep:
    """Records requested delays instead of sleeping (for ``sleep=`` parameters)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``stageflow ARGV`` in process: (exit status, stdout, stderr)."""
    from stageflow.views._cli import main

    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str, status: int = 1) -> str:
    """``stageflow ARGV`` in process, which must exit with ``status``: its stderr."""
    got, _, err = run_cli(capsys, *argv)
    assert got == status
    return err


RunErrorT = TypeVar("RunErrorT", bound=PipelineRunError)


@overload
async def run_fails(run: Awaitable[object]) -> PipelineFailedError: ...
@overload
async def run_fails(run: Awaitable[object], error: type[RunErrorT]) -> RunErrorT: ...
async def run_fails(run: Awaitable[object], error: type[PipelineRunError] = PipelineFailedError) -> Any:
    """Await ``run``, which must raise ``error`` (``PipelineFailedError`` unless given; or a subclass):
    that error."""
    with pytest.raises(error) as info:
        await run
    return info.value


async def cancel_once_started(run: Awaitable[object], started: asyncio.Event) -> None:
    """Start ``run`` as a task, cancel it once ``started`` is set, and check that it ends cancelled, the
    way a caller cancels a run under way (all within 5 s: a hang fails the test)."""
    task = asyncio.ensure_future(run)
    async with asyncio.timeout(5):
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@contextlib.contextmanager
def killed_if_running(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``proc`` for the block; if it still runs when the block is left (a failed assertion, a timeout), it is
    killed and reaped, so no child process outlives the test."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def missing_names(table: Mapping[str, Iterable[str]]) -> list[str]:
    """``module.name`` for every name of ``table`` (names by module) that its module does not have."""
    return [
        f"{module}.{name}"
        for module, names in table.items()
        for name in names
        if not hasattr(importlib.import_module(module), name)
    ]


class AuthInterceptor(BaseInterceptor):
    """The README's example interceptor (stageflow-core 0.9.1's too), verbatim: it blocks each stage unless
    the run's ``data["authenticated"]`` is set."""

    name = "auth"
    priority = 5  # Lower = runs first

    async def before(self, stage_name: str, ctx: PipelineContext) -> InterceptorResult | None:
        if not ctx.data.get("authenticated"):
            return InterceptorResult(stage_ran=False, error="Not authenticated")
        return None

    async def after(self, stage_name: str, result: StageResult, ctx: PipelineContext) -> None:
        pass


def bypassed(interceptor: str, error: str) -> str:
    """What the core logs when ``interceptor`` raised ``error`` (its repr) in stage ``s`` and was bypassed."""
    return f"stageflow: interceptor '{interceptor}' raised in stage 's' and was bypassed: {error}"
