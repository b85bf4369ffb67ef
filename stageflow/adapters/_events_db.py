"""The database event sink: every event of every run into PostgreSQL or SQLite, batched off the hot path.

``try_emit`` only appends the event to a bounded queue (it never blocks and never touches the database);
one background task writes the queue in batches (PostgreSQL: ``COPY``; SQLite: ``executemany`` in a
worker thread). Every event is either stored (``stored``) or counted as dropped by cause (``dropped``):
``queue_full`` (the queue held ``queue_size`` events), ``error`` (the database refused or did not answer
a batch within ``write_timeout``) and ``closed`` (emitted after ``aclose``, or still queued when
``aclose`` gave up). ``flush`` and ``aclose`` wait at most their ``timeout``.

Example::

    sink = DatabaseEventSink("postgresql://stageflow@db.internal/stageflow")
    results = await graph.run(create_stage_context(event_sink=sink))
    await sink.aclose()
    events = await PostgresRunStore("postgresql://stageflow@db.internal/stageflow").events_of(results.run_id)
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from stageflow._store import MAX_MESSAGE_CHARS, SQLiteRunStore, storable_text

from ._postgres import _Database, _retention, _seconds, day_of

__all__ = ("DatabaseEventSink",)

logger = logging.getLogger("stageflow")

_Row = tuple[str | None, int, str, float, str]
"""A stored event: run id, sequence number, type, timestamp (epoch seconds), data as JSON."""


def _clean(value: Any) -> Any:
    """``value`` made storable as JSON text in any database (see ``storable_text``), long text cut."""
    if isinstance(value, str):
        if len(value) > MAX_MESSAGE_CHARS:
            value = (
                f"{value[:MAX_MESSAGE_CHARS]}… [{len(value) - MAX_MESSAGE_CHARS:,} more characters not shown]"
            )
        return storable_text(value)
    if isinstance(value, Mapping):
        return {storable_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return _clean(repr(value))


def _row(seq: int, type: str, data: Mapping[str, Any] | None, emitted: float) -> _Row:
    data = data or {}
    run_id = data.get("run_id")
    stamp = data.get("timestamp")
    when = float(stamp) if isinstance(stamp, int | float) and math.isfinite(stamp) else emitted
    return (
        None if run_id is None else storable_text(str(run_id)),
        seq,
        storable_text(str(type)),
        when,
        json.dumps(_clean(data), ensure_ascii=False),
    )


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{name}={value!r} is invalid; pass a whole number of at least 1"
        raise ValueError(msg)
    return value


class DatabaseEventSink:
    """Stores every event of every run in PostgreSQL or SQLite, in batches, off the hot path.

    PostgreSQL events land in ``stageflow_events`` (partitioned by day, next to ``PostgresRunStore``'s
    tables); SQLite events in the ``events`` table of a ``SQLiteRunStore`` file. Read them back with the
    store's ``events_of(run_id)``, or ``stageflow runs show --events``.

    Args:
        target: a ``postgresql://`` URL (or libpq connection string with ``host=``), or the path of a
            SQLite run store file (created if missing).
        queue_size: events held while waiting to be written; beyond it new events are dropped (counted).
        batch_size: the most events one write carries.
        write_timeout: seconds one batch may take before it is given up (its events counted as dropped).
        connect_timeout: seconds to wait for a PostgreSQL connection.
        retention: PostgreSQL: keep this many days of events (the run store's partitions are dropped too).

    Raises:
        ImportError: a PostgreSQL URL without psycopg installed (the message names the extra).
        ValueError: a bad option or a malformed URL (the message names it).

    .. versionadded:: 0.10
    """

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        queue_size: int = 100_000,
        batch_size: int = 1_000,
        write_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        retention: int | timedelta | None = None,
    ) -> None:
        self.queue_size = _positive_int("queue_size", queue_size)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.write_timeout = _seconds("write_timeout", write_timeout)
        text = os.fspath(target)
        self._db: _Database | None = None
        self._sqlite: SQLiteRunStore | None = None
        if isinstance(text, str) and (
            text.startswith(("postgresql://", "postgres://"))
            or (not os.path.exists(text) and "host=" in text)
        ):
            self._db = _Database(
                "DatabaseEventSink",
                text,
                pool_size=2,
                connect_timeout=_seconds("connect_timeout", connect_timeout),
                prepare_threshold=None,
                migrate=True,
                retention=_retention(retention),
            )
            self._shown = self._db.shown
        else:
            self._sqlite = SQLiteRunStore(text)
            self._shown = self._sqlite.path
        self._queue: collections.deque[tuple[int, str, dict[str, Any] | None, float]] = collections.deque()
        self._seq = 0
        self._inflight = 0
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._failed_once = False
        self.stored = 0
        """Events written to the database."""
        self.dropped: dict[str, int] = {"queue_full": 0, "error": 0, "closed": 0}
        """Events not written, by cause."""

    def __repr__(self) -> str:
        return f"DatabaseEventSink({self._shown!r})"

    @property
    def pending(self) -> int:
        """Events queued or being written."""
        return len(self._queue) + self._inflight

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Queue one event for the next batch; never blocks. A full queue drops it (counted)."""
        if self._closed:
            self.dropped["closed"] += 1
            return
        if len(self._queue) >= self.queue_size:
            self.dropped["queue_full"] += 1
            if self.dropped["queue_full"] == 1:
                logger.warning(
                    "stageflow: %r holds %d events; dropping new ones (counting them)", self, self.queue_size
                )
            return
        self._seq += 1
        self._queue.append((self._seq, type, data, time.time()))
        if self._wake is None or self._task is None:
            self._start()
        if self._wake is not None:
            self._wake.set()

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Queue one event (as ``try_emit``); ``flush`` waits for it to be written."""
        self.try_emit(type=type, data=data)

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet: the writer starts with the next event or flush in one
            return
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wake, self._idle = asyncio.Event(), asyncio.Event()
            self._task = loop.create_task(self._writer(), name="stageflow DatabaseEventSink writer")

    async def _writer(self) -> None:
        assert self._wake is not None and self._idle is not None
        wake, idle = self._wake, self._idle
        while True:
            if not self._queue:
                idle.set()
                wake.clear()
                await wake.wait()
                continue
            idle.clear()
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._inflight = len(batch)
            try:
                async with asyncio.timeout(self.write_timeout):
                    await self._write(batch)
                self.stored += len(batch)
            except asyncio.CancelledError:
                self.dropped["closed"] += len(batch)
                raise
            except Exception as exc:
                self.dropped["error"] += len(batch)
                if not self._failed_once:
                    self._failed_once = True
                    problem = exc if self._db is None else self._db.scrub(repr(exc))
                    logger.error(
                        "stageflow: %r could not write %d events (dropped, counting them): %s",
                        self,
                        len(batch),
                        problem,
                    )
            finally:
                self._inflight = 0

    async def _write(self, batch: Sequence[tuple[int, str, dict[str, Any] | None, float]]) -> None:
        if self._sqlite is not None:
            store = self._sqlite
            await asyncio.to_thread(lambda: store.write_events([_row(*event) for event in batch]))
            return
        db = self._db
        assert db is not None
        rows = [_row(*event) for event in batch]
        pool = await db.pool()
        async with pool.connection(timeout=db.connect_timeout) as conn:
            for day in sorted({day_of(row[3]) for row in rows}):
                await db.ensure_day(conn, day)
            async with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY stageflow_events (day, run_id, seq, type, timestamp, data) FROM STDIN"
                ) as copy,
            ):
                for run_id, seq, type_, stamp, data in rows:
                    await copy.write_row((day_of(stamp), run_id, seq, type_, stamp, data))

    async def flush(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 (a bound is its contract)
        """Wait until every queued event is written or dropped, at most ``timeout`` seconds.

        Returns:
            ``True`` when nothing is left pending.
        """
        if self.pending:
            self._start()
            if self._wake is not None:
                self._wake.set()
        idle = self._idle
        if idle is None or not self.pending:
            return not self.pending
        try:
            async with asyncio.timeout(timeout):
                while self.pending:
                    await idle.wait()
                    if self.pending:
                        await asyncio.sleep(0)
        except TimeoutError:
            return False
        return True

    async def aclose(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (a bound is its contract)
        """Write what is queued (at most ``timeout`` seconds), stop the writer and close the database;
        events still queued then, and events emitted later, are counted as dropped (``closed``)."""
        await self.flush(timeout)
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.dropped["closed"] += len(self._queue)
        self._queue.clear()
        if self._db is not None:
            await self._db.close()
        if self._sqlite is not None:
            self._sqlite.close()
