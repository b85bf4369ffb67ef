"""Event sinks: the port the executor reports a run's events to, and the sinks stageflow ships.

The executor emits, in causal order, ``pipeline.created``, ``pipeline.started``,
``stage.{name}.started``, ``stage.{name}.retrying``, ``stage.{name}.completed|failed|skipped|cancelled``
and ``pipeline.completed|failed|cancelled`` through ``EventSink.try_emit``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import asyncio

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
"""Background emits in flight per sink (``EventSink.try_emit``'s default) beyond which its new events are
dropped: a sink whose ``emit`` hangs loses its own events, never another sink's."""

_pending: dict[int, set[asyncio.Task[None]]] = {}
"""In-flight emit tasks by ``id(sink)``; an entry lives only while it has tasks, and each task keeps its
sink alive, so an id is never reused while its entry exists."""
_dropped = 0


def _load_running_loop() -> asyncio.AbstractEventLoop:
    """``asyncio.get_running_loop()``, importing asyncio on the first emit (``import stageflow`` does not)
    and putting its function in ``_running_loop``'s place, so later emits call it directly."""
    global _running_loop
    from asyncio import get_running_loop

    _running_loop = get_running_loop
    return get_running_loop()


_running_loop: Callable[[], asyncio.AbstractEventLoop] = _load_running_loop
_dropped_by_sink: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
_reported: dict[str, weakref.WeakSet[object]] = {}


def dropped_event_count(sink: object | None = None) -> int:
    """Events ``EventSink.try_emit``'s default dropped: all of them, or those of one ``sink``.

    An event is dropped when its sink already has ``MAX_PENDING_EMITS`` emits in flight, or when
    ``try_emit`` is called outside an event loop.
    """
    if sink is None:
        return _dropped
    try:
        return _dropped_by_sink.get(sink, 0)
    except TypeError:  # not weak-referenceable: only the total is kept
        return 0


def _drop(sink: object, coro: Coroutine[Any, Any, None], why: str) -> None:
    global _dropped
    coro.close()
    _dropped += 1
    try:
        count = _dropped_by_sink.get(sink, 0) + 1
        _dropped_by_sink[sink] = count
    except TypeError:  # not weak-referenceable: warn on the first drop of all
        count = _dropped
    if count == 1:
        logger.warning("stageflow: event sink %r %s; dropping its events (counting them)", sink, why)


def _spawn(sink: object, coro: Coroutine[Any, Any, None]) -> None:
    key = id(sink)
    tasks = _pending.get(key)
    if tasks is not None and len(tasks) >= MAX_PENDING_EMITS:
        _drop(sink, coro, f"has {MAX_PENDING_EMITS} emits in flight")
        return
    try:
        task = _running_loop().create_task(coro)
    except RuntimeError:
        _drop(sink, coro, "was called outside an event loop")
        return
    if tasks is None:
        tasks = _pending[key] = set()
    tasks.add(task)
    task.add_done_callback(partial(_done, key))


def _done(key: int, task: asyncio.Task[None]) -> None:
    tasks = _pending.get(key)
    if tasks is not None:
        tasks.discard(task)
        if not tasks:
            del _pending[key]
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
    events while ``MAX_PENDING_EMITS`` of this sink's emits are in flight.
    """

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Record one event."""
        ...

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Record one event without blocking."""
        _spawn(self, self.emit(type=type, data=data))


class NoOpEventSink:
    """Discards every event. The executor skips building event data when the run's sink is this one."""

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Discard the event."""

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Discard the event."""


def _rounded(value: Any) -> Any:
    """``value`` with every float rounded to the microsecond (durations and timestamps are seconds)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


class LoggingEventSink:
    """Writes each event as one JSON line (``{"type": ..., **data}``) to a stdlib logger.

    Floats (durations, waits, timestamps: seconds) are rounded to the microsecond.

    Args:
        logger: the logger to write to (default ``logging.getLogger("stageflow.events")``).
        level: the level to log at (default ``INFO``); nothing is formatted when it is disabled.
        redact_error: a hook every event's ``error`` message passes through before it is logged: it
            returns the text to log, or ``None`` to leave the field out. Without it messages are logged
            as raised. ``stageflow_otel``'s redactors fit through a lambda:
            ``redact_error=lambda m: redact_error_message(ErrorDetails("error", m))``. A hook that raises
            costs the message (logged once), never the event.

    .. versionchanged:: 0.10
       ``redact_error``.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        level: int = logging.INFO,
        *,
        redact_error: Callable[[str], str | None] | None = None,
    ) -> None:
        self.logger = logger or logging.getLogger("stageflow.events")
        self.level = level
        self.redact_error = redact_error
        self._hook_failed = False

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Log the event."""
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Log the event."""
        if self.logger.isEnabledFor(self.level):
            line = {"type": type, **{k: _rounded(v) for k, v in (data or {}).items()}}
            if self.redact_error is not None and isinstance(line.get("error"), str):
                error = self._redacted(line["error"])
                if error is None:
                    del line["error"]
                else:
                    line["error"] = error
            from json import dumps  # loaded by the first event this sink logs

            self.logger.log(self.level, "%s", dumps(line, default=str))

    def _redacted(self, message: str) -> str | None:
        assert self.redact_error is not None
        try:
            redacted = self.redact_error(message)
        except Exception as exc:  # fail closed: a broken hook costs the message, never the event
            if not self._hook_failed:
                self._hook_failed = True
                logger.error(
                    "stageflow: LoggingEventSink's redact_error hook %r raised %r; error messages are "
                    "left out (logged once)",
                    self.redact_error,
                    exc,
                )
            return None
        return None if redacted is None else str(redacted)


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
