"""Module-level stages for the Dask and Ray tests: importable in the workers, so they pickle.

Stages that coordinate with the test do it through files in ``config['dir']``: ``started`` (holding the
worker's pid) when they begin, and they wait for ``release``; ``finished`` when they end.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from stageflow import StageContext, StageOutput

from ._offload_stages import Holder, UnpicklableError, returns_lock, where

__all__ = (
    "Holder",
    "StageBroke",
    "UnpicklableError",
    "block_outside_python",
    "emit_progress",
    "fail_now",
    "fail_once_started",
    "file_exists",
    "gate_on_started",
    "plus_one",
    "raise_locked",
    "raise_stage_broke",
    "report",
    "returns_lock",
    "source",
    "touch_ran",
    "wait_for_release",
)

_POLL = 0.005
"""Seconds between two looks at a coordination file (in a worker, or on the test's loop)."""


def _dir(ctx: StageContext) -> Path:
    assert ctx.stage is not None
    return Path(ctx.stage.config["dir"])


def report(ctx: StageContext) -> StageOutput:
    """Where and as what the stage ran (what ``where`` reports: the process, the run identity, the attempt,
    its input and config), plus the run's ``ctx.data`` as it sees it and whether it sees the run itself."""
    return StageOutput.ok(
        **where(ctx).data,
        stop_requested=ctx.stop_requested,
        run_data=dict(ctx.data),
        in_run=ctx.pipeline is not None,
    )


def source(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(n=41, pid=os.getpid())


def plus_one(ctx: StageContext) -> StageOutput:
    """``n`` of the dependency ``"source"``, plus one."""
    return StageOutput.ok(n=ctx.inputs.get_from("source", "n") + 1, pid=os.getpid())


def emit_progress(ctx: StageContext) -> StageOutput:
    ctx.try_emit_event("custom.progress", {"done": 3, "pid": os.getpid()})
    return StageOutput.ok()


class StageBroke(LookupError):
    """An error of the stage's own type, defined where workers can import it."""


def raise_stage_broke(ctx: StageContext) -> StageOutput:
    raise StageBroke(f"no row for {ctx.snapshot.input_text!r}")


def raise_locked(ctx: StageContext) -> StageOutput:
    raise UnpicklableError("the index was locked")


def _announce(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` at once: whoever sees the file sees all of it (written aside, renamed)."""
    aside = path.with_name(path.name + ".part")
    aside.write_text(text)
    os.replace(aside, path)


def wait_for_release(ctx: StageContext) -> StageOutput:
    """Write ``started`` (the pid), wait in Python code until ``release`` exists, write ``finished``."""
    where = _dir(ctx)
    _announce(where / "started", str(os.getpid()))
    while not (where / "release").exists():
        time.sleep(_POLL)
    _announce(where / "finished", str(os.getpid()))
    return StageOutput.ok(pid=os.getpid())


def block_outside_python(ctx: StageContext) -> StageOutput:
    """Write ``started`` (the pid), then wait on an event nobody sets (Ray's interrupt does not reach it)."""
    _announce(_dir(ctx) / "started", str(os.getpid()))
    threading.Event().wait()  # never returns: only killing the process ends it
    return StageOutput.ok()


def touch_ran(ctx: StageContext) -> StageOutput:
    """Write ``ran-<stage>`` when it runs."""
    (_dir(ctx) / f"ran-{ctx.stage_name}").touch()
    return StageOutput.ok()


async def gate_on_started(ctx: StageContext) -> StageOutput:
    """An async stage that ends once a sibling wrote ``started``."""
    await file_exists(_dir(ctx) / "started")
    return StageOutput.ok()


async def fail_now(ctx: StageContext) -> StageOutput:
    msg = "sibling failed"
    raise RuntimeError(msg)


async def file_exists(path: Path) -> None:
    """Return once ``path`` exists: a worker process signals the test through the file system only."""
    # the writer is another process: no asyncio.Event reaches us, and a stat() does not block the loop
    while not path.exists():  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(_POLL)


async def fail_once_started(ctx: StageContext) -> StageOutput:
    """An async stage that fails as soon as a sibling wrote ``started``."""
    await file_exists(_dir(ctx) / "started")
    msg = "sibling failed"
    raise RuntimeError(msg)
