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
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

__all__ = (
    "RUN_STORE_TIMEOUT",
    "InMemoryRunStore",
    "RunRecord",
    "RunStore",
    "SQLiteRunStore",
    "StageRecord",
)

SCHEMA_VERSION = 2

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
        """Store one run (a record with an existing ``run_id`` replaces it)."""
        ...

    async def get_run(self, run_id: UUID | str) -> RunRecord | None:
        """The run with this id, or ``None``."""
        ...

    async def list_runs(self, *, pipeline: str | None = None, limit: int = 100) -> list[RunRecord]:
        """The most recently started runs first, optionally of one pipeline."""
        ...


class InMemoryRunStore:
    """Keeps runs in a dict. For tests and short-lived processes."""

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}

    async def record_run(self, record: RunRecord) -> None:
        """Store one run."""
        self._runs[record.run_id] = record

    async def get_run(self, run_id: UUID | str) -> RunRecord | None:
        """The run with this id, or ``None``."""
        return self._runs.get(str(run_id))

    async def list_runs(self, *, pipeline: str | None = None, limit: int = 100) -> list[RunRecord]:
        """The most recently started runs first."""
        runs = [r for r in self._runs.values() if pipeline is None or r.pipeline == pipeline]
        runs.sort(key=lambda r: r.started_at, reverse=True)
        return runs[:limit]


_COLUMNS = {
    "runs": ("run_id", "pipeline", "status", "started_at", "ended_at", "critical_path", "error"),
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
    ),
}

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
# the statements that bring a database of schema version N - 1 to N (index N - 2)
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    ("ALTER TABLE stages ADD COLUMN dependencies TEXT NOT NULL DEFAULT '[]'",),
)


def _stage_record(row: Sequence[Any]) -> StageRecord:
    name, kind, status, started, ended, wait, attempts, error, error_type, deps = row
    return StageRecord(
        name, kind, status, started, ended, wait, attempts, error, error_type, tuple(json.loads(deps))
    )


class SQLiteRunStore:
    """Records runs in a SQLite database (stdlib ``sqlite3``, WAL journal, versioned schema).

    One connection serves the process; writes and reads run in worker threads under a lock, so the
    event loop never blocks on disk and concurrent runs in one process are safe. Processes may open the
    same file at once: the schema is created in one write transaction, by whichever comes first.

    Args:
        path: the database file (created if missing), or ``":memory:"``.
        timeout: seconds a write waits for a lock another connection holds (SQLite's busy timeout); also
            the ``record_timeout`` the executor bounds ``record_run`` by. A locked file makes the run go
            unrecorded (logged once) after this long, never longer.

    Raises:
        RuntimeError: the file is not a stageflow run store (corrupt, another application's database, or a
            schema version this stageflow does not know); the message names the path and the fix.
    """

    def __init__(self, path: str | Path, *, timeout: float = RUN_STORE_TIMEOUT) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            msg = f"SQLiteRunStore timeout={timeout!r} is invalid; use seconds > 0"
            raise ValueError(msg)
        self.path = str(path)
        self.record_timeout = float(timeout)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=_OPEN_TIMEOUT
            )
        except sqlite3.Error as exc:
            raise self._not_a_store(f"it cannot be opened ({exc})") from exc
        try:
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._open()
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.record_timeout * 1000)}")
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise self._not_a_store(f"it is not a readable SQLite database ({exc})") from exc
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        """Switch to WAL and create or check the schema, waiting out other processes doing the same.

        Switching the journal mode can report "database is locked" at once, without SQLite's busy
        handler, while another connection opens the file: that is retried until ``_OPEN_TIMEOUT``.
        """
        deadline = time.monotonic() + _OPEN_TIMEOUT
        while True:
            try:
                if self.path != ":memory:":
                    self._conn.execute("PRAGMA journal_mode = WAL")
                self._migrate()
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

    def _migrate(self) -> None:
        conn = self._conn
        with self._lock:
            # IMMEDIATE takes the write lock first: of processes opening a fresh file at once, one creates
            # the schema and the others, waiting for the lock, find it made
            conn.execute("BEGIN IMMEDIATE")
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
                if version < SCHEMA_VERSION:
                    statements = _SCHEMA if version == 0 else sum(_MIGRATIONS[version - 1 :], ())
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
                conn.execute("DELETE FROM stages WHERE run_id = ?", (record.run_id,))
                conn.execute(
                    "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.run_id,
                        record.pipeline,
                        record.status,
                        record.started_at,
                        record.ended_at,
                        json.dumps(list(record.critical_path)),
                        record.error,
                    ),
                )
                conn.executemany(
                    "INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                        )
                        for i, s in enumerate(record.stages)
                    ],
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, where: str, params: Sequence[object], limit: int) -> list[RunRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT run_id, pipeline, status, started_at, ended_at, critical_path, error FROM runs "
                f"{where} ORDER BY started_at DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            records = []
            for run_id, pipeline, status, started_at, ended_at, critical, error in rows:
                stages = tuple(
                    _stage_record(row)
                    for row in self._conn.execute(
                        "SELECT name, kind, status, started_at, ended_at, wait, attempts, error, error_type, "
                        "dependencies FROM stages WHERE run_id = ? ORDER BY position",
                        (run_id,),
                    )
                )
                records.append(
                    RunRecord(
                        run_id,
                        pipeline,
                        status,
                        started_at,
                        ended_at,
                        stages,
                        tuple(json.loads(critical)),
                        error,
                    )
                )
            return records

    async def record_run(self, record: RunRecord) -> None:
        """Store one run (replacing a record with the same id)."""
        await asyncio.to_thread(self._write, record)

    async def get_run(self, run_id: UUID | str) -> RunRecord | None:
        """The run with this id, or ``None``."""
        found = await asyncio.to_thread(self._read, "WHERE run_id = ?", (str(run_id),), 1)
        return found[0] if found else None

    async def list_runs(self, *, pipeline: str | None = None, limit: int = 100) -> list[RunRecord]:
        """The most recently started runs first, optionally of one pipeline."""
        if pipeline is None:
            return await asyncio.to_thread(self._read, "", (), limit)
        return await asyncio.to_thread(self._read, "WHERE pipeline = ?", (pipeline,), limit)
