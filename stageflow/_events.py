"""Event sinks: the port the executor reports a run's events to, and the sinks stageflow ships.

The executor emits, in causal order, ``pipeline.created``, ``pipeline.started``,
``stage.{name}.started``, ``stage.{name}.retrying``, ``stage.{name}.completed|failed|skipped|cancelled``
and ``pipeline.completed|failed|cancelled`` through ``EventSink.try_emit``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = (
    "EventSink",
    "clear_event_sink",
    "InMemoryEventSink",
    "LoggingEventSink",
    "NoOpEventSink",
    "RecordedEvent",
    "dropped_event_count",
    "emit",
    "get_event_sink",
    "report_once",
    "resolve_sink",
    "set_event_sink",
)

logger = logging.getLogger("stageflow")

MAX_PENDING_EMITS = 10_000
"""Background emits in flight (``EventSink.try_emit``'s default) beyond which new events are dropped."""

_pending: set[asyncio.Task[None]] = set()
_dropped = 0
_reported: dict[str, weakref.WeakSet[object]] = {}


def dropped_event_count() -> int:
    """Events dropped by ``EventSink.try_emit``'s default because ``MAX_PENDING_EMITS`` were in flight."""
    return _dropped


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    global _dropped
    if len(_pending) >= MAX_PENDING_EMITS:
        coro.close()
        _dropped += 1
        if _dropped == 1:
            logger.warning("stageflow: event emits are backing up; dropping events (counting them)")
        return
    try:
        task = asyncio.get_running_loop().create_task(coro)
    except RuntimeError:
        coro.close()
        _dropped += 1
        return
    _pending.add(task)
    task.add_done_callback(_done)


def _done(task: asyncio.Task[None]) -> None:
    _pending.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("stageflow: event sink emit() failed: %r", exc)


@runtime_checkable
class EventSink(Protocol):
    """**Protocol:** where a run's events go.

    ``isinstance(obj, EventSink)`` tells whether ``obj`` has both methods (runtime-checkable, as in
    stageflow-core 0.9.1).

    The executor calls ``try_emit`` for every event, from the event loop, and never awaits anything for
    it; ``try_emit`` must not block. ``emit`` is the awaitable variant for callers that want to wait.
    Exceptions from either are logged once per sink and swallowed: a sink never affects a run.

    Subclassing ``EventSink`` explicitly gives a default ``try_emit`` that runs ``emit`` in a background
    task, keeps a reference to it until it ends, and drops (and counts, see ``dropped_event_count``)
    events while ``MAX_PENDING_EMITS`` are in flight.
    """

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Record one event."""
        ...

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Record one event without blocking."""
        _spawn(self.emit(type=type, data=data))


class NoOpEventSink:
    """Discards every event. The executor skips building event data when the run's sink is this one."""

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Discard the event."""

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Discard the event."""


class LoggingEventSink:
    """Writes each event as one JSON line (``{"type": ..., **data}``) to a stdlib logger.

    Args:
        logger: the logger to write to (default ``logging.getLogger("stageflow.events")``).
        level: the level to log at (default ``INFO``); nothing is formatted when it is disabled.
    """

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger or logging.getLogger("stageflow.events")
        self.level = level

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Log the event."""
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Log the event."""
        if self.logger.isEnabledFor(self.level):
            self.logger.log(self.level, "%s", json.dumps({"type": type, **(data or {})}, default=str))


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One event kept by ``InMemoryEventSink``."""

    type: str
    data: Mapping[str, Any]


class InMemoryEventSink:
    """Keeps every event in ``events``, in emission order. Meant for tests."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Keep the event."""
        self.events.append(RecordedEvent(type, data or {}))

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Keep the event."""
        self.events.append(RecordedEvent(type, data or {}))

    @property
    def types(self) -> list[str]:
        """The event types, in order."""
        return [e.type for e in self.events]

    def of_type(self, type: str) -> list[RecordedEvent]:
        """The events of one type, in order."""
        return [e for e in self.events if e.type == type]

    def clear(self) -> None:
        """Forget every event."""
        self.events.clear()


_NOOP = NoOpEventSink()
_process_sink: EventSink = _NOOP


def set_event_sink(sink: EventSink | None) -> None:
    """Set the process-wide sink used by runs whose context has no ``event_sink`` (``None`` resets)."""
    global _process_sink
    _process_sink = _NOOP if sink is None else sink


def clear_event_sink() -> None:
    """Reset the process-wide sink to the no-op sink (``set_event_sink(None)``).

    .. versionadded:: 0.10
    """
    set_event_sink(None)


def get_event_sink() -> EventSink:
    """The process-wide sink (a ``NoOpEventSink`` unless ``set_event_sink`` was called)."""
    return _process_sink


def resolve_sink(sink: EventSink | None) -> EventSink:
    """``sink`` if given, else the process sink."""
    return _process_sink if sink is None else sink


def emit(sink: EventSink, type: str, data: dict[str, Any]) -> None:
    """Hand one event to ``sink.try_emit``; a failing sink is logged once and otherwise ignored."""
    try:
        sink.try_emit(type=type, data=data)
    except Exception as exc:  # a sink never affects the run
        _report(sink, exc)


def report_once(role: str, obj: object, exc: Exception) -> None:
    """Log that ``obj`` (an event ``sink``, a run ``store``...) failed and is ignored: once per object."""
    seen = _reported.setdefault(role, weakref.WeakSet())
    try:
        if obj in seen:
            return
        seen.add(obj)
    except TypeError:  # not weak-referenceable: report every time rather than never
        pass
    logger.error("stageflow: %s %r failed and is ignored: %r", role, obj, exc)


def _report(sink: object, exc: Exception) -> None:
    report_once("event sink", sink, exc)
