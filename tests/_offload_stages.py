"""Module-level sync stages for the executor tests: importable in worker processes, so they pickle."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from stageflow import StageContext, StageOutput


def where(ctx: StageContext) -> StageOutput:
    """Report the process, the run identity and what the stage read."""
    return StageOutput.ok(
        pid=os.getpid(),
        run_id=str(ctx.pipeline_run_id),
        stage=ctx.stage_name,
        attempt=ctx.attempt,
        text=ctx.snapshot.input_text,
        config=dict(ctx.stage.config) if ctx.stage is not None else None,
    )


def add_one(ctx: StageContext) -> StageOutput:
    """Read ``n`` from the dependency ``"src"`` and return ``n + 1``."""
    return StageOutput.ok(n=ctx.inputs.get_from("src", "n") + 1)


def source(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(n=41)


def returns_lock(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(text="fine", lock=threading.Lock())


def source_with_lock(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(n=1, lock=threading.Lock())


def reads_lock(ctx: StageContext) -> StageOutput:
    return StageOutput.ok()


def raises_value_error(ctx: StageContext) -> StageOutput:
    raise ValueError(f"bad input in {ctx.stage_name}")


class UnpicklableError(Exception):
    """An exception holding a lock: it cannot be pickled back to the parent."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raises_unpicklable(ctx: StageContext) -> StageOutput:
    raise UnpicklableError("held a lock")


def emits_event(ctx: StageContext) -> StageOutput:
    ctx.try_emit_event("custom.progress", {"done": 3})
    return StageOutput.ok()


def returns_coroutine(ctx: StageContext) -> Any:
    async def work() -> StageOutput:
        return StageOutput.ok()

    return work()


def wait_for_file(ctx: StageContext) -> StageOutput:
    """Touch ``config['started']``, then wait until ``config['release']`` exists (bounded), then return."""
    assert ctx.stage is not None
    Path(ctx.stage.config["started"]).touch()
    release = Path(ctx.stage.config["release"])
    for _ in range(600_000):
        if release.exists():
            break
        threading.Event().wait(0.0001)
    return StageOutput.ok(released=release.exists())


class Holder:
    """A stage class holding a lock in an attribute: it cannot be sent to another process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def execute(self, ctx: StageContext) -> StageOutput:
        return StageOutput.ok()


class Scaler:
    """A picklable sync stage class configured through its constructor."""

    def __init__(self, factor: int = 2) -> None:
        self.factor = factor

    def execute(self, ctx: StageContext) -> StageOutput:
        return StageOutput.ok(value=ctx.inputs.get_from("src", "n") * self.factor, pid=os.getpid())


def _refuse_rebuild(code: int) -> Exception:
    raise TypeError(f"cannot rebuild the error with code {code}")


class NeedsTwoArguments(Exception):
    """An exception that pickles but cannot be rebuilt (as one whose ``__init__`` needs more than its
    message; its rebuild refuses outright, so a library that patches exception pickling cannot rescue it)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        return (_refuse_rebuild, (self.code,))


def raises_unrebuildable(ctx: StageContext) -> StageOutput:
    raise NeedsTwoArguments(503, "upstream down")


class EnterFails:
    """A worker hook whose ``enter`` raises."""

    def enter(self) -> None:
        raise RuntimeError("enter broke")

    def exit(self, error: BaseException | None) -> object:
        return "exit ran"

    def returned(self, report: object) -> None:
        EnterFails.reports.append(report)

    reports: list[object] = []
