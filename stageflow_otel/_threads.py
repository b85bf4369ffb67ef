"""What the export books, the exporter guards and the event sink share about threads and processes:
starting afresh in a forked child, and waking runs that await room on their event loops."""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable

__all__ = ("LoopWaiters", "reinit_after_fork")


def reinit_after_fork(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every forked child, unless its object is gone by then (held weakly)."""
    if hasattr(os, "register_at_fork"):
        ref = weakref.WeakMethod(method)

        def after_in_child() -> None:
            if (reinit := ref()) is not None:
                reinit()

        os.register_at_fork(after_in_child=after_in_child)


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class LoopWaiters:
    """Runs awaiting room, each a future on its own event loop, woken from whichever thread made room.

    Not thread-safe itself: the owner calls every method with its lock held.
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def add(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A new future on ``loop`` that ``wake()`` sets."""
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((loop, future))
        return future

    def discard(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        """Forget ``future`` (its run stopped waiting) if ``wake()`` has not taken it yet."""
        if (loop, future) in self._waiters:
            self._waiters.remove((loop, future))

    def wake(self) -> None:
        """Set every waiting future, each on its own loop's thread."""
        waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_set, future)
            except RuntimeError:  # that loop is closed: nobody awaits any more
                pass
