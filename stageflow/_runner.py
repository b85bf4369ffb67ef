"""The static type of a stage runner: what ``Pipeline.with_stage()`` accepts, as a type checker sees it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeAlias

from ._context import StageContext
from ._types import StageOutput

__all__ = ("StageExecutor", "StageFunction", "StageRunner")


class StageExecutor(Protocol):
    """**Protocol:** an object whose ``async def execute(ctx)`` returns a ``StageOutput``.

    The executor calls ``execute`` once per attempt; a type checker rejects a plain ``def execute`` and an
    ``execute`` returning anything but a ``StageOutput``.

    .. versionadded:: 0.10
    """

    def execute(self, ctx: StageContext, /) -> Awaitable[StageOutput]:
        """Do the stage's work."""
        ...


StageFunction: TypeAlias = Callable[[StageContext], Awaitable[StageOutput]]
"""An ``async def fn(ctx) -> StageOutput`` stage.

.. versionadded:: 0.10
"""

StageRunner: TypeAlias = StageFunction | StageExecutor | type[StageExecutor]
"""What ``with_stage()`` takes: an async stage function, a stage object, or a stage class.

.. versionadded:: 0.10
"""
