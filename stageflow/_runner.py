"""The static type of a stage runner: what ``Pipeline.with_stage()`` accepts, as a type checker sees it;
and how long a cancelled stage waits for the work it handed to an executor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeAlias

from ._context import StageContext
from ._types import StageOutput

__all__ = (
    "DEFAULT_CANCEL_GRACE",
    "StageExecutor",
    "StageFunction",
    "StageRunner",
    "StreamStageExecutor",
    "StreamStageFunction",
    "SyncStageExecutor",
    "SyncStageFunction",
)

DEFAULT_CANCEL_GRACE = 1.0
"""Seconds a cancelled stage waits for work already running on an executor before abandoning it."""


class StageExecutor(Protocol):
    """**Protocol:** an object whose ``async def execute(ctx)`` returns a ``StageOutput``.

    The executor calls ``execute`` once per attempt; a type checker rejects a plain ``def execute`` and an
    ``execute`` returning anything but a ``StageOutput``.

    .. versionadded:: 0.10
    """

    def execute(self, ctx: StageContext, /) -> Awaitable[StageOutput]:
        """Do the stage's work."""
        ...


class SyncStageExecutor(Protocol):
    """**Protocol:** an object whose plain ``def execute(ctx)`` returns a ``StageOutput``: a sync stage,
    run off the event loop (in a worker thread, or on the stage's executor).

    .. versionadded:: 0.11
    """

    def execute(self, ctx: StageContext, /) -> StageOutput:
        """Do the stage's work (blocking is fine: it never runs on the event loop)."""
        ...


class StreamStageExecutor(Protocol):
    """**Protocol:** an object whose ``execute(ctx)`` is an async generator: a streaming stage.

    .. versionadded:: 0.11
    """

    def execute(self, ctx: StageContext, /) -> AsyncIterator[Any]:
        """Yield the stage's chunks."""
        ...


StageFunction: TypeAlias = Callable[[StageContext], Awaitable[StageOutput]]
"""An ``async def fn(ctx) -> StageOutput`` stage.

.. versionadded:: 0.10
"""

SyncStageFunction: TypeAlias = Callable[[StageContext], StageOutput]
"""A plain ``def fn(ctx) -> StageOutput`` stage, run off the event loop.

.. versionadded:: 0.11
"""

StreamStageFunction: TypeAlias = Callable[[StageContext], AsyncIterator[Any]]
"""An async generator function ``async def fn(ctx): ... yield chunk``: a streaming stage.

.. versionadded:: 0.11
"""

StageRunner: TypeAlias = (
    StageFunction
    | SyncStageFunction
    | StreamStageFunction
    | StageExecutor
    | SyncStageExecutor
    | StreamStageExecutor
    | type[StageExecutor]
    | type[SyncStageExecutor]
    | type[StreamStageExecutor]
)
"""What ``with_stage()`` takes: a stage function, a stage object, or a stage class; async or sync.

.. versionadded:: 0.10
.. versionchanged:: 0.11
   Sync stages (a plain function, a plain ``execute``) and streaming stages (async generators).
"""
