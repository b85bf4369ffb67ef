"""Run stores: the port the executor records finished runs to, and the stores stageflow ships.

Attach a store with ``pipeline.build(run_store=store)``; the executor then records every run once it
ended (completed, failed or cancelled), before ``run()`` returns or raises. A store that raises is logged
once (``logging.getLogger("stageflow")``) and otherwise ignored: the run's outcome never changes. A write
is bounded by the store's ``record_timeout`` attribute (``RUN_STORE_TIMEOUT``, 1 s, when it has none):
past it the run is not recorded (logged once) and ``run()`` returns or raises without waiting longer.

Example::

    store = SQLiteRunStore("runs.db")
    graph = pipeline.build(run_store=store)
    results = await graph.run(ctx)
    record = await store.get_run(results.run_id)

Records are written once: a second write of the same run id changes nothing. Before a record is stored,
every text in it is made storable the same way by every store (``storable_record``): a lone surrogate
becomes the escape ``\\udXXX`` and a NUL character ``\\x00``, and an error message or reason longer than
``MAX_MESSAGE_CHARS`` characters keeps its beginning and says how many characters were cut.

It is over 500 lines because the port, the record types, their validation and both stores that need
no extra (in memory, SQLite with its schema migrations) are read together: each store keeps the port's
semantics the types define.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from ._checks import finite_number
from ._errors import StageflowError
from ._events import RecordedEvent
from ._types import OutcomeCategory

__all__ = (
    "MAX_MESSAGE_CHARS",
    "RUN_STORE_TIMEOUT",
    "InMemoryRunStore",
    "MalformedRunError",
    "RunRecord",
    "RunStore",
    "RunStoreWrite",
    "SQLiteRunStore",
    "StageRecord",
    "WriteObserver",
    "check_page",
    "current_run_trace_id",
    "event_data",
    "observe",
    "read_checked",
    "readable",
    "reset_run_trace_id",
    "run_record",
    "set_run_trace_id",
    "storable_record",
    "storable_text",
    "the_one",
)

logger = logging.getLogger("stageflow")

SCHEMA_VERSION = 5

MAX_MESSAGE_CHARS = 4096
"""Characters of an error message or reason a store keeps; the rest is cut, and the kept text ends with
``… [N more characters not shown]``.

.. versionadded:: 0.10
"""

RUN_STORE_TIMEOUT = 1.0
"""Seconds ``run()`` waits for ``record_run`` when the store has no ``record_timeout`` attribute."""

_OPEN_TIMEOUT = 10.0  # seconds a constructor waits for another process that is creating the schema


@dataclass(frozen=True, slots=True)
class StageRecord:
    """One stage of a recorded run. Times are Unix-epoch seconds."""

    name: str
    kind: str
    status: str
    """``ok``, ``skip``, ``fail`` or ``cancel``."""
    started_at: float
    ended_at: float
    wait: float
    """Seconds from ready (dependencies resolved) to start."""
    attempts: int
    error: str | None = None
    """The stage's error message; for a skipped or cancelled stage, the reason it gave (if any)."""
    error_type: str | None = None
    dependencies: tuple[str, ...] = ()
    """The stage's declared dependencies, so a stored run can draw its DAG (``stageflow report``).

    .. versionadded:: 0.10
    """
    dispatch: float = 0.0
    """Seconds a sync stage's work spent going to its executor and back, apart from ``wait`` and the run
    time (``ended_at - started_at - dispatch``); ``0.0`` for an async stage.

    .. versionadded:: 0.11
    """
    work: str | None = None
    """What became of a sync stage's running work when it was cancelled or timed out: ``stopped`` or
    ``abandoned``; else ``None``.

    .. versionadded:: 0.11
    """
    chunks: int = 0
    """How many chunks a streaming stage yielded (0 for other stages).

    .. versionadded:: 0.11
    """
    time_to_first_chunk: float | None = None
    """Seconds from a streaming stage's start to its first chunk; ``None`` if it yielded none or does not
    stream.

    .. versionadded:: 0.11
    """
    category: str | None = None
    """The stage's outcome category as the engine classified it (``StageResult.category``): ``success``,
    ``failure``, ``error``, ``timeout``, ``cancellation`` or ``skip`` (conditional skips and interceptor
    fallbacks alike: the reason kept in ``error`` says which). Read back as an ``OutcomeCategory``; ``None``
    only in a record made without one.

    .. versionadded:: 0.11
    """

    @property
    def run_time(self) -> float:
        """Seconds the stage's own code ran: its duration less ``dispatch``.

        .. versionadded:: 0.11
        """
        return self.ended_at - self.started_at - self.dispatch

    @property
    def first_chunk_at(self) -> float | None:
        """When a streaming stage yielded its first chunk (Unix-epoch seconds), else ``None``.

        .. versionadded:: 0.11
        """
        ttfc = self.time_to_first_chunk
        return None if ttfc is None else self.started_at + ttfc


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One recorded run. Times are Unix-epoch seconds."""

    run_id: str
    pipeline: str
    status: str
    """``completed``, ``failed`` or ``cancelled``."""
    started_at: float
    ended_at: float
    stages: tuple[StageRecord, ...]
    critical_path: tuple[str, ...] = ()
    error: str | None = None
    """For failed runs the failing stage's error; for cancelled runs the reason."""
    trace_id: str | None = None
    """The run's OpenTelemetry trace id (32 hex digits) when the run was traced, else ``None``.

    Stores fill it in from ``current_run_trace_id()`` when the record carries none.

    .. versionadded:: 0.10
    """
    first_output_path: tuple[tuple[str, float], ...] = ()
    """Where the run's time to first output went: ``(stage, seconds)`` along the streaming critical path,
    as ``RunResult.first_output_path`` gave it; empty when the run produced no output.

    .. versionadded:: 0.11
    """
    category: str | None = None
    """The run's outcome category (``RunResult.category``): ``success`` for a completed run,
    ``cancellation`` for a cancelled one, and for a failed run its first failing stage's category
    (``failure``, ``error`` or ``timeout``). Read back as an ``OutcomeCategory``; ``None`` only in a record
    made without one.

    .. versionadded:: 0.11
    """
    not_started: tuple[str, ...] = ()
    """The declared stages that never started (a dependency failed, or the run stopped first), in
    declaration order: they have no ``StageRecord``. Empty for runs recorded before 0.11, which did not
    store them.

    .. versionadded:: 0.11
    """

    @property
    def time_to_first_output(self) -> float | None:
        """Seconds from the run's start to its first output (the sum of ``first_output_path``), else
        ``None``.

        .. versionadded:: 0.11
        """
        path = self.first_output_path
        return sum(seconds for _, seconds in path) if path else None

    @property
    def streamed(self) -> bool:
        """Whether a stage of the run yielded chunks.

        .. versionadded:: 0.11
        """
        return any(s.chunks for s in self.stages)

    @property
    def duration(self) -> float:
        """Seconds from start to end."""
        return self.ended_at - self.started_at

    def stage(self, name: str) -> StageRecord:
        """The record of one stage.

        Raises:
            KeyError: the run has no record of that stage.
        """
        for record in self.stages:
            if record.name == name:
                return record
        msg = f"run {self.run_id!r} has no stage {name!r}; it has {[s.name for s in self.stages]!r}"
        raise KeyError(msg)


class RunStore(Protocol):
    """**Protocol:** where finished runs are recorded.

    The executor awaits ``record_run`` once per run, after the last stage ended and before ``run()``
    returns or raises; exceptions are logged and swallowed. It waits at most ``record_timeout`` seconds
    (an optional attribute; ``RUN_STORE_TIMEOUT`` without it), then cancels the write and moves on.
    ``get_run`` and ``list_runs`` are for users.
    """

    async def record_run(self, record: RunRecord) -> None:
        """Store one run. Writes are idempotent: a record with an existing ``run_id`` changes nothing."""
        ...

    async def get_run(self, run_id: UUID | str) -> RunRecord | None:
        """The run with this id, or ``None``."""
        ...

    async def list_runs(self, *, pipeline: str | None = None, limit: int = 100) -> list[RunRecord]:
        """The most recently started runs first, optionally of one pipeline."""
        ...


class InMemoryRunStore:
    """Keeps runs in a dict. For tests and short-lived processes.

    Args:
        observer: called after every ``record_run`` with its ``RunStoreWrite`` (e.g. stageflow_otel's
            ``RunStoreMetrics``).
    """

    def __init__(self, *, observer: WriteObserver | None = None) -> None:
        self._runs: dict[str, RunRecord] = {}
        self._observer = observer

    async def record_run(self, record: RunRecord) -> None:
        """Store one run; a record with an existing ``run_id`` changes nothing."""
        started = time.perf_counter()
        stored = storable_record(record)
        self._runs.setdefault(stored.run_id, stored)
        observe(self._observer, RunStoreWrite("memory", time.perf_counter() - started, None))

    async def get_run(self, run_id: UUID | str) -> RunRecord | None:
        """The run with this id, or ``None``."""
        return self._runs.get(str(run_id))

    async def list_runs(
        self, *, pipeline: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[RunRecord]:
        """The most recently started runs first (ties by run id), optionally of one pipeline.

        Args:
            pipeline: only runs of this pipeline.
            limit: at most this many runs.
            offset: skip this many runs first (the next page starts at ``offset + limit``).
        """
        check_page(limit, offset)
        runs = [r for r in self._runs.values() if pipeline is None or r.pipeline == pipeline]
        runs.sort(key=_newest_first)
        return runs[offset : offset + limit]

    async def pipelines(self) -> list[str]:
        """The names of the pipelines with stored runs, in order."""
        return sorted({r.pipeline for r in self._runs.values()})

    async def find_runs(self, prefix: str, *, limit: int = 10) -> list[RunRecord]:
        """Runs whose id starts with ``prefix``, in id order, at most ``limit``."""
        check_page(limit, 0)
        return sorted((r for r in self._runs.values() if r.run_id.startswith(prefix)), key=_by_id)[:limit]


def _newest_first(record: RunRecord) -> tuple[float, str]:
    return (-record.started_at, record.run_id)


def _by_id(record: RunRecord) -> str:
    return record.run_id


def check_page(limit: int, offset: int) -> None:
    """Refuse a ``limit`` below 1 or an ``offset`` below 0 with a message naming the value."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        msg = f"limit={limit!r} is invalid; pass a whole number of at least 1"
        raise ValueError(msg)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        msg = f"offset={offset!r} is invalid; pass a whole number of at least 0"
        raise ValueError(msg)


# ------------------------------------------------------------------------------------ storable text


def storable_text(text: str) -> str:
    """``text`` with each lone surrogate written as ``\\udXXX`` and each NUL as ``\\x00``.

    Neither can be encoded as UTF-8 text in a database (PostgreSQL refuses NUL in ``text`` too), so every
    store writes them escaped, the same way.

    .. versionadded:: 0.10
    """
    if text.isascii():
        if "\x00" not in text:
            return text
    else:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            if "\x00" not in text:
                return text
    return "".join([_ESCAPES.get(c, c) for c in text])


_ESCAPES = {"\x00": "\\x00"} | {chr(c): f"\\u{c:04x}" for c in range(0xD800, 0xE000)}


def _message(text: str | None) -> str | None:
    if text is None:
        return None
    if len(text) > MAX_MESSAGE_CHARS:
        text = f"{text[:MAX_MESSAGE_CHARS]}… [{len(text) - MAX_MESSAGE_CHARS:,} more characters not shown]"
    return storable_text(text)


def storable_record(record: RunRecord) -> RunRecord:
    """``record`` as every store keeps it: text made storable (``storable_text``), messages cut to
    ``MAX_MESSAGE_CHARS``, and the trace id from ``current_run_trace_id()`` when it has none.

    .. versionadded:: 0.10
    """
    clean = storable_text
    stages = tuple(
        replace(
            s,
            name=clean(s.name),
            kind=clean(s.kind),
            status=clean(s.status),
            error=_message(s.error),
            error_type=None if s.error_type is None else clean(s.error_type),
            dependencies=tuple(clean(d) for d in s.dependencies),
            work=None if s.work is None else clean(s.work),
            category=_stored_category(s.category),
        )
        for s in record.stages
    )
    trace_id = record.trace_id if record.trace_id is not None else _trace_id.get()
    return replace(
        record,
        run_id=clean(record.run_id),
        pipeline=clean(record.pipeline),
        status=clean(record.status),
        stages=stages,
        critical_path=tuple(clean(c) for c in record.critical_path),
        first_output_path=tuple((clean(name), seconds) for name, seconds in record.first_output_path),
        error=_message(record.error),
        trace_id=None if trace_id is None else clean(trace_id),
        category=_stored_category(record.category),
        not_started=tuple(clean(name) for name in record.not_started),
    )


def _stored_category(category: str | None) -> str | None:
    """A category as stores keep it: an ``OutcomeCategory`` (what every store reads back), or text made
    storable when it is none (a read then reports the record malformed)."""
    if category is None:
        return None
    try:
        return OutcomeCategory(category)
    except ValueError:
        return storable_text(str(category))


# --------------------------------------------------------------------------------------- trace id

_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("stageflow_run_trace_id", default=None)


def set_run_trace_id(trace_id: str | None) -> contextvars.Token[str | None]:
    """Name the trace of the run the current context belongs to; stores record it with the run.

    A tracing integration (stageflow_otel's ``TracingInterceptor``) calls this when it opens a run's
    span, and ``reset_run_trace_id`` with the token when the run ends.

    .. versionadded:: 0.10
    """
    return _trace_id.set(trace_id)


def reset_run_trace_id(token: contextvars.Token[str | None]) -> None:
    """Undo the ``set_run_trace_id`` call that returned ``token``.

    .. versionadded:: 0.10
    """
    _trace_id.reset(token)


def current_run_trace_id() -> str | None:
    """The trace id ``set_run_trace_id`` gave the current context, else ``None``.

    .. versionadded:: 0.10
    """
    return _trace_id.get()


# ----------------------------------------------------------------------------------- write telemetry


@dataclass(frozen=True, slots=True)
class RunStoreWrite:
    """One ``record_run`` of a store, as its ``observer`` sees it.

    .. versionadded:: 0.10
    """

    store: str
    """``memory``, ``sqlite`` or ``postgresql``."""
    duration: float
    """Seconds the write took (until it was stored or given up)."""
    dropped: str | None
    """``None`` when the run was stored; else why it was not: ``timeout`` (cancelled at the store's
    ``record_timeout``; a database server may still finish a statement it had already received, which
    the idempotent write makes harmless), ``unavailable`` (no connection to the database) or ``error``
    (the database refused the write)."""


WriteObserver = Callable[[RunStoreWrite], None]
"""Called by a store after each ``record_run`` (stored or dropped); exceptions are logged once."""

_observer_failed: set[int] = set()


def observe(observer: WriteObserver | None, write: RunStoreWrite) -> None:
    """Tell ``observer`` about ``write``; an observer that raises is logged once and ignored."""
    if observer is None:
        return
    try:
        observer(write)
    except Exception as exc:
        if id(observer) not in _observer_failed:
            _observer_failed.add(id(observer))
            logger.error("stageflow: run store observer %r failed and is ignored: %r", observer, exc)


class MalformedRunError(StageflowError, ValueError):
    """A stored run cannot be read back: a value in its row is not what the schema promises.

    .. versionadded:: 0.10
    """

    def __init__(self, run_id: str, problem: str) -> None:
        self.run_id, self.problem = run_id, problem
        super().__init__(f"stored run {run_id!r} is malformed: {problem}")


def read_checked(run_id: str, read: Callable[[], RunRecord]) -> RunRecord:
    """``read()``, with any error from a malformed row raised as ``MalformedRunError``."""
    try:
        return read()
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise MalformedRunError(run_id, f"{type(exc).__name__}: {exc}") from exc


def readable(
    records: Iterable[RunRecord | MalformedRunError], problems: list[MalformedRunError] | None
) -> list[RunRecord]:
    """The records among ``records``; each malformed one is appended to ``problems`` (or logged)."""
    out = []
    for record in records:
        if isinstance(record, MalformedRunError):
            if problems is None:
                logger.warning("stageflow: %s; skipped", record)
            else:
                problems.append(record)
        else:
            out.append(record)
    return out


def the_one(found: Sequence[RunRecord | MalformedRunError]) -> RunRecord | None:
    """The run a lookup by id found, or ``None``; a malformed one raises its ``MalformedRunError``."""
    if not found:
        return None
    if isinstance(found[0], MalformedRunError):
        raise found[0]
    return found[0]


_COLUMNS = {
    "runs": (
        "run_id",
        "pipeline",
        "status",
        "started_at",
        "ended_at",
        "critical_path",
        "error",
        "trace_id",
        "first_output_path",
        "category",
        "not_started",
    ),
    "stages": (
        "run_id",
        "position",
        "name",
        "kind",
        "status",
        "started_at",
        "ended_at",
        "wait",
        "attempts",
        "error",
        "error_type",
        "dependencies",
        "dispatch",
        "work",
        "chunks",
        "time_to_first_chunk",
        "category",
    ),
}

LEGACY_STAGE_CATEGORY = """CASE status
    WHEN 'ok' THEN 'success' WHEN 'skip' THEN 'skip' WHEN 'cancel' THEN 'cancellation'
    ELSE CASE
        WHEN error_type = 'StageTimeoutError' THEN 'timeout'
        WHEN error_type IN ('StageFailedError', 'RetriesExhaustedError') THEN 'failure'
        ELSE 'error'
    END
END"""
"""SQL giving a stage row stored before categories were (its status and error type name) its category: the
migration's one-time backfill, shared by the SQLite and PostgreSQL stores."""

LEGACY_RUN_CATEGORY = """CASE status
    WHEN 'completed' THEN 'success' WHEN 'cancelled' THEN 'cancellation'
    ELSE coalesce(
        (SELECT s.category FROM {stages} s
         WHERE s.run_id = runs.run_id{same_day} AND s.status = 'fail' ORDER BY s.position LIMIT 1),
        'error'
    )
END"""
"""SQL giving a run row stored before categories were its category (its first failing stage's, by
position); ``{stages}`` is the stage table's name, ``{same_day}`` an extra condition that lets a store whose
stage table is partitioned by day look in the run's partition only."""

_SCHEMA = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL,
        critical_path TEXT NOT NULL,
        error TEXT
    )""",
    "CREATE INDEX runs_by_pipeline ON runs (pipeline, started_at)",
    "CREATE INDEX runs_by_start ON runs (started_at)",
    """CREATE TABLE stages (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL,
        wait REAL NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT,
        error_type TEXT,
        dependencies TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (run_id, name)
    )""",
)
# the statements that bring a database of schema version N - 1 to N (index N - 2); a new file gets
# _SCHEMA (version 2) and then every migration after the first
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    ("ALTER TABLE stages ADD COLUMN dependencies TEXT NOT NULL DEFAULT '[]'",),
    (
        "ALTER TABLE runs ADD COLUMN trace_id TEXT",
        """CREATE TABLE events (
            run_id TEXT,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            timestamp REAL NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX events_by_run ON events (run_id, timestamp, seq)",
    ),
    (
        "ALTER TABLE runs ADD COLUMN first_output_path TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE stages ADD COLUMN dispatch REAL NOT NULL DEFAULT 0",
        "ALTER TABLE stages ADD COLUMN work TEXT",
        "ALTER TABLE stages ADD COLUMN chunks INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE stages ADD COLUMN time_to_first_chunk REAL",
    ),
    (
        "ALTER TABLE runs ADD COLUMN category TEXT",
        "ALTER TABLE runs ADD COLUMN not_started TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE stages ADD COLUMN category TEXT",
        # rows recorded before the engine stored categories get the one their status and error type name;
        # from this version on the engine's own category is stored and nothing derives it
        f"UPDATE stages SET category = {LEGACY_STAGE_CATEGORY}",
        f"UPDATE runs SET category = {LEGACY_RUN_CATEGORY.format(stages='stages', same_day='')}",
    ),
)


def event_data(stored: object) -> dict[str, Any]:
    """An event's data as stored (JSON text or an already decoded object), as a dict."""
    try:
        data = json.loads(stored) if isinstance(stored, str) else stored
    except ValueError:
        return {"data": stored}
    return data if isinstance(data, dict) else {"data": data}


def _stage_record(row: Sequence[Any]) -> StageRecord:
    (
        name,
        kind,
        status,
        started,
        ended,
        wait,
        attempts,
        error,
        error_type,
        deps,
        dispatch,
        work,
        chunks,
        ttfc,
        category,
    ) = row
    dependencies = _names(deps, f"stage {name!r} dependencies")
    return StageRecord(
        _text(name, "stage name"),
        _text(kind, "stage kind"),
        _text(status, "stage status"),
        _number(started, "stage started_at"),
        _number(ended, "stage ended_at"),
        _number(wait, "stage wait"),
        _whole(attempts, "stage attempts"),
        _optional_text(error, "stage error"),
        _optional_text(error_type, "stage error_type"),
        dependencies,
        _number(dispatch, "stage dispatch"),
        _optional_text(work, "stage work"),
        _whole(chunks, "stage chunks"),
        None if ttfc is None else _number(ttfc, "stage time_to_first_chunk"),
        _category(category, f"stage {name!r} category"),
    )


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        msg = f"{what} is {value!r}, not text"
        raise TypeError(msg)
    return value


def _optional_text(value: object, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{what} is {value!r}, not a number"
        raise TypeError(msg)
    return float(value)


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{what} is {value!r}, not a whole number"
        raise TypeError(msg)
    return value


def _category(value: object, what: str) -> OutcomeCategory | None:
    if value is None:
        return None
    try:
        return OutcomeCategory(_text(value, what))
    except ValueError:
        msg = f"{what} is {value!r}, not one of {', '.join(c.value for c in OutcomeCategory)}"
        raise ValueError(msg) from None


def _names(value: object, what: str) -> tuple[str, ...]:
    names = json.loads(value) if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        msg = f"{what} is {value!r}, not a list of names"
        raise ValueError(msg)
    return tuple(names)


def _path(value: object) -> tuple[tuple[str, float], ...]:
    steps = json.loads(value) if isinstance(value, str) else value
    if not isinstance(steps, list) or not all(
        isinstance(step, list)
        and len(step) == 2
        and isinstance(step[0], str)
        and isinstance(step[1], int | float)
        and not isinstance(step[1], bool)
        for step in steps
    ):
        msg = f"first_output_path is {value!r}, not a list of [stage, seconds] pairs"
        raise ValueError(msg)
    return tuple((name, float(seconds)) for name, seconds in steps)


def run_record(row: Sequence[Any], stages: Iterable[Sequence[Any]]) -> RunRecord:
    """A ``RunRecord`` from a run row (run_id, pipeline, status, started_at, ended_at, critical_path,
    error, trace_id, first_output_path, category, not_started) and its stage rows, every value checked;
    ``MalformedRunError`` names the run and the bad value."""
    run_id = str(row[0])

    def build() -> RunRecord:
        _, pipeline, status, started_at, ended_at, critical, error, trace_id, path, category, unstarted = row
        return RunRecord(
            _text(run_id, "run_id"),
            _text(pipeline, "pipeline"),
            _text(status, "status"),
            _number(started_at, "started_at"),
            _number(ended_at, "ended_at"),
            tuple(_stage_record(s) for s in stages),
            _names(critical, "critical_path"),
            _optional_text(error, "error"),
            _optional_text(trace_id, "trace_id"),
            _path(path),
            _category(category, "category"),
            _names(unstarted, "not_started"),
        )

    return read_checked(run_id, build)


_RUN_COLUMNS = (
    "run_id, pipeline, status, started_at, ended_at, critical_path, error, trace_id, first_output_path, "
    "category, not_started"
)
_STAGE_COLUMNS = (
    "name, kind, status, started_at, ended_at, wait, attempts, error, error_type, dependencies, "
    "dispatch, work, chunks, time_to_first_chunk, category"
)


class SQLiteRunStore:
    """Records runs in a SQLite database (stdlib ``sqlite3``, WAL journal, versioned schema).

    One connection serves the process; writes and reads run in worker threads under a lock, so the
    event loop never blocks on disk and concurrent runs in one process are safe. Processes may open the
    same file at once: the schema is created in one write transaction, by whichever comes first. Each
    run is one row in ``runs`` and one row per stage in ``stages``, written once in one transaction.

    Args:
        path: the database file (created if missing), or ``":memory:"``.
        timeout: seconds a write waits for a lock another connection holds (SQLite's busy timeout); also
            the ``record_timeout`` the executor bounds ``record_run`` by. A locked file makes the run go
            unrecorded (logged once) after this long, never longer.
        create: ``False`` opens only an existing run store and creates nothing (no file, no schema): what
            ``stageflow runs`` does.
        observer: called after every ``record_run`` with its ``RunStoreWrite`` (e.g. stageflow_otel's
            ``RunStoreMetrics``).

    Raises:
        RuntimeError: the file is not a stageflow run store (corrupt, another application's database, or a
            schema version this stageflow does not know); the message names the path and the fix.
        FileNotFoundError: ``create=False`` and there is no file at ``path``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        timeout: float = RUN_STORE_TIMEOUT,
        create: bool = True,
        observer: WriteObserver | None = None,
    ) -> None:
        if not finite_number(timeout) or timeout <= 0:
            msg = f"SQLiteRunStore timeout={timeout!r} is invalid; use a finite number of seconds > 0"
            raise ValueError(msg)
        self.path = str(path)
        self.record_timeout = float(timeout)
        self._observer = observer
        self._lock = threading.Lock()
        if not create and (self.path == ":memory:" or not Path(self.path).is_file()):
            msg = f"no run store at {self.path!r}: the file does not exist"
            raise FileNotFoundError(msg)
        target = self.path if create else f"{Path(self.path).absolute().as_uri()}?mode=rw"
        try:
            self._conn = sqlite3.connect(
                target, check_same_thread=False, isolation_level=None, timeout=_OPEN_TIMEOUT, uri=not create
            )
        except sqlite3.Error as exc:
            raise self._not_a_store(f"it cannot be opened ({exc})") from exc
        try:
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._open(create)
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.record_timeout * 1000)}")
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise self._not_a_store(f"it is not a readable SQLite database ({exc})") from exc
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteRunStore({self.path!r})"

    def _open(self, create: bool) -> None:
        """Switch to WAL and create or check the schema, waiting out other processes doing the same.

        Switching the journal mode can report "database is locked" at once, without SQLite's busy
        handler, while another connection opens the file: that is retried until ``_OPEN_TIMEOUT``.
        """
        deadline = time.monotonic() + _OPEN_TIMEOUT
        while True:
            try:
                if self.path != ":memory:" and create:
                    self._conn.execute("PRAGMA journal_mode = WAL")
                self._migrate(create)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # another process holds the lock for a moment: try again

    def _not_a_store(self, problem: str) -> RuntimeError:
        return RuntimeError(
            f"run store {self.path!r} is not a stageflow run store: {problem}; pass the path of a new file "
            "(or of one an earlier SQLiteRunStore created), or move this file away"
        )

    @property
    def schema_version(self) -> int:
        """The database's schema version (``PRAGMA user_version``)."""
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self, create: bool) -> None:
        conn = self._conn
        with self._lock:
            # IMMEDIATE takes the write lock first: of processes opening a fresh file at once, one creates
            # the schema and the others, waiting for the lock, find it made
            conn.execute("BEGIN IMMEDIATE" if create else "BEGIN")
            try:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                tables = {
                    name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
                if version > SCHEMA_VERSION:
                    msg = (
                        f"run store {self.path!r} has schema version {version}, newer than {SCHEMA_VERSION} "
                        "which this stageflow understands; upgrade stageflow or use another file"
                    )
                    raise RuntimeError(msg)
                if version < 0 or (version == 0 and tables) or (version > 0 and not set(_COLUMNS) <= tables):
                    raise self._not_a_store(
                        f"its schema version is {version} and it holds tables {sorted(tables)!r}"
                    )
                if version == 0 and not create:
                    raise self._not_a_store("it holds no tables")
                if version < SCHEMA_VERSION:
                    if not create:
                        # a reader does not write: the migration runs when a writer opens the file
                        conn.execute("ROLLBACK")
                        conn.execute("BEGIN IMMEDIATE")
                    statements = (
                        _SCHEMA + sum(_MIGRATIONS[1:], ())
                        if version == 0
                        else sum(_MIGRATIONS[version - 1 :], ())
                    )
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                for table, columns in _COLUMNS.items():
                    found = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
                    if found != columns:
                        raise self._not_a_store(
                            f"its schema version is {version} but table {table!r} has columns {found!r}"
                        )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def _write(self, record: RunRecord) -> None:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.run_id,
                        record.pipeline,
                        record.status,
                        record.started_at,
                        record.ended_at,
                        json.dumps(list(record.critical_path)),
                        record.error,
                        record.trace_id,
                        json.dumps([list(step) for step in record.first_output_path]),
                        None if record.category is None else str(record.category),
                        json.dumps(list(record.not_started)),
                    ),
                ).rowcount
                if inserted:
                    conn.executemany(
                        "INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                record.run_id,
                                i,
                                s.name,
                                s.kind,
                                s.status,
                                s.started_at,
                                s.ended_at,
                                s.wait,
                                s.attempts,
                                s.error,
                                s.error_type,
                                json.dumps(list(s.dependencies)),
                                s.dispatch,
                                s.work,
                                s.chunks,
                                s.time_to_first_chunk,
                                None if s.category is None else str(s.category),
                            )
                            for i, s in enumerate(record.stages)
                        ],
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, where: str, params: Sequence[object], order: str) -> list[RunRecord | MalformedRunError]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs {where} {order}", params).fetchall()
            records: list[RunRecord | MalformedRunError] = []
            for row in rows:
                stages = self._conn.execute(
                    f"SELECT {_STAGE_COLUMNS} FROM stages WHERE run_id = ? ORDER BY position", (row[0],)
                ).fetchall()
                try:
                    records.append(run_record(row, stages))
                except MalformedRunError as exc:
                    records.append(exc)
            return records

    async def record_run(self, record: RunRecord) -> None:
        """Store one run; a record with an existing ``run_id`` changes nothing."""
        started = time.perf_counter()
        dropped: str | None = "error"
        try:
            await asyncio.to_thread(self._write, storable_record(record))
            dropped = None
        except asyncio.CancelledError:
            dropped = "timeout"
            raise
        finally:
            observe(self._observer, RunStoreWrite("sqlite", time.perf_counter() - started, dropped))

    async def get_run(self, run_id: UUID | str) -> RunRecord | None:
        """The run with this id, or ``None``.

        Raises:
            MalformedRunError: the run's stored row cannot be read back.
        """
        return the_one(await asyncio.to_thread(self._read, "WHERE run_id = ?", (str(run_id),), ""))

    async def list_runs(
        self,
        *,
        pipeline: str | None = None,
        limit: int = 100,
        offset: int = 0,
        problems: list[MalformedRunError] | None = None,
    ) -> list[RunRecord]:
        """The most recently started runs first (ties by run id), optionally of one pipeline.

        Args:
            pipeline: only runs of this pipeline.
            limit: at most this many runs.
            offset: skip this many runs first (the next page starts at ``offset + limit``).
            problems: a list to append each malformed run to; without it they are logged and skipped.
        """
        check_page(limit, offset)
        where, params = ("", ()) if pipeline is None else ("WHERE pipeline = ?", (pipeline,))
        found = await asyncio.to_thread(
            self._read, where, (*params, limit, offset), "ORDER BY started_at DESC, run_id LIMIT ? OFFSET ?"
        )
        return readable(found, problems)

    def _pipelines(self) -> list[str]:
        with self._lock:
            return [
                name for (name,) in self._conn.execute("SELECT DISTINCT pipeline FROM runs ORDER BY pipeline")
            ]

    async def pipelines(self) -> list[str]:
        """The names of the pipelines with stored runs, in order.

        .. versionadded:: 0.10
        """
        return await asyncio.to_thread(self._pipelines)

    def write_events(self, rows: Sequence[tuple[str | None, int, str, float, str]]) -> None:
        """Insert event rows (run id, sequence, type, timestamp, JSON data) in one transaction; blocking
        (``DatabaseEventSink`` calls it from a worker thread)."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _events(self, run_id: str) -> list[RecordedEvent]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT type, data FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
        return [RecordedEvent(t, event_data(d)) for t, d in rows]

    async def events_of(self, run_id: UUID | str) -> list[RecordedEvent]:
        """The events a ``DatabaseEventSink`` stored for this run, in the order they were emitted.

        .. versionadded:: 0.10
        """
        return await asyncio.to_thread(self._events, str(run_id))

    async def find_runs(
        self, prefix: str, *, limit: int = 10, problems: list[MalformedRunError] | None = None
    ) -> list[RunRecord]:
        """Runs whose id starts with ``prefix``, in id order, at most ``limit`` (an index range scan).

        .. versionadded:: 0.10
        """
        check_page(limit, 0)
        found = await asyncio.to_thread(
            self._read,
            "WHERE run_id >= ? AND run_id < ?",
            (prefix, prefix + "\U0010ffff", limit),
            "ORDER BY run_id LIMIT ?",
        )
        return readable(found, problems)
