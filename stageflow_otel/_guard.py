"""The cardinality guard of a metric attribute holding names (pipelines, stages): bounded, never frozen."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from . import semconv

__all__ = ("NameGuard",)

logger = logging.getLogger("stageflow_otel")


class NameGuard:
    """The cardinality guard of one metric attribute (pipeline or stage names).

    At most ``capacity`` names hold a slot at a time. A name seen again keeps its slot (least recently
    used order); a new name takes a free slot, else the slot of the least recently used name if that one
    has not been used for ``idle_timeout`` seconds, else it is recorded as ``_OTHER``. So the first names
    seen never hold the slots forever, and a burst of new names cannot evict names in use. Names longer
    than ``semconv.METRIC_VALUE_LENGTH_LIMIT`` are always ``_OTHER``.

    ``__call__`` is called from one thread at a time (the event loop's, or under the caller's lock);
    ``peek`` (no bookkeeping) is safe from any thread.
    """

    __slots__ = (
        "_capacity",
        "_idle",
        "_on_evict",
        "_option",
        "_slots",
        "_what",
        "_warned",
        "evicted",
        "overflowed",
    )

    def __init__(
        self,
        what: str,
        capacity: int,
        idle_timeout: float,
        *,
        option: str | None = None,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self._what = what
        self._option = option or f"max_{what}_series"
        self._on_evict = on_evict
        self._capacity = capacity
        self._idle = idle_timeout
        self._slots: OrderedDict[str, float] = OrderedDict()
        self._warned = False
        self.evicted = 0
        self.overflowed = 0

    def __call__(self, name: str, now: float) -> str:
        slots = self._slots
        try:
            if name in slots:
                slots[name] = now
                slots.move_to_end(name)
                return name
            if len(name) > semconv.METRIC_VALUE_LENGTH_LIMIT:
                return self._overflow(name)
            if len(slots) >= self._capacity:
                oldest, last_used = next(iter(slots.items()))
                if now - last_used < self._idle:
                    return self._overflow(name)
                del slots[oldest]
                self.evicted += 1
                if self._on_evict is not None:
                    self._on_evict(oldest)
            slots[name] = now
        except (KeyError, RuntimeError, StopIteration):
            # Only when two threads share the guard (one interceptor on graphs run from several
            # threads) and race on one slot: the measurement is kept, under ``_OTHER``, never raised.
            return semconv.OTHER
        return name

    def peek(self, name: str) -> str:
        """``name`` if it holds a slot, else ``_OTHER`` (nothing recorded)."""
        return name if name in self._slots else semconv.OTHER

    def names(self) -> list[str]:
        """The names holding a slot, least recently used first."""
        return list(self._slots)

    def _overflow(self, name: str) -> str:
        self.overflowed += 1
        if not self._warned:
            self._warned = True
            logger.warning(
                "stageflow_otel: more than %d %s names in use (or one longer than %d characters); metrics "
                "record %s %.200r and any further new names as %r until a name goes unused for %g s "
                "(raise %s to keep them apart)",
                self._capacity,
                self._what,
                semconv.METRIC_VALUE_LENGTH_LIMIT,
                self._what,
                name,
                semconv.OTHER,
                self._idle,
                self._option,
            )
        return semconv.OTHER
