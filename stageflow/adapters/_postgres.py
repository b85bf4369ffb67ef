"""The PostgreSQL run store: runs from many processes and hosts in one database.

Needs the ``postgres`` extra (psycopg 3 and its pool): ``pip install 'stageflow-core[postgres]'``. Nothing
here imports psycopg until a store is constructed.

The schema is write-once: a run is one row in ``stageflow_runs`` and one row per stage in
``stageflow_stages``, inserted by one statement (one round trip) that does nothing when the run id is
already stored. There is no UPDATE and no foreign key. Both tables, and the ``stageflow_events`` table the
``DatabaseEventSink`` fills, are partitioned by day (UTC, from the run's start or the event's time);
``retention=`` drops whole partitions. Versioned migrations run under an advisory lock on first use (or
``stageflow db migrate URL``).

Example::

    store = PostgresRunStore("postgresql://stageflow@db.internal/stageflow", retention=timedelta(days=30))
    graph = pipeline.build(run_store=store)
    ...
    await store.aclose()

It is over 500 lines because the schema, its migrations, the partition retention and the one-statement
write are one unit that must change together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from stageflow._checks import finite_number
from stageflow._errors import StageflowError
from stageflow._events import RecordedEvent
from stageflow._store import (
    LEGACY_RUN_CATEGORY,
    LEGACY_STAGE_CATEGORY,
    RUN_STORE_TIMEOUT,
    MalformedRunError,
    RunRecord,
    RunStoreWrite,
    WriteObserver,
    check_page,
    observe,
    readable,
    run_record,
    storable_record,
    the_one,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

__all__ = (
    "POSTGRES_SCHEMA_VERSION",
    "PostgresRunStore",
    "SchemaError",
    "day_of",
    "mask_dsn",
    "migrate",
    "require_psycopg",
    "schema_version",
    "scrub",
)

logger = logging.getLogger("stageflow")

_LOCK_KEY = 5_314_032_717_013_271_801
"""The advisory lock that serialises migrations, partition creation and retention across processes."""

_TABLES = ("stageflow_runs", "stageflow_stages", "stageflow_events")

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: runs and their stages
        """CREATE TABLE stageflow_schema (version integer NOT NULL)""",
        """INSERT INTO stageflow_schema VALUES (0)""",
        """CREATE TABLE stageflow_runs (
            day date NOT NULL,
            run_id text NOT NULL,
            pipeline text NOT NULL,
            status text NOT NULL,
            started_at double precision NOT NULL,
            ended_at double precision NOT NULL,
            critical_path jsonb NOT NULL,
            error text,
            trace_id text,
            PRIMARY KEY (day, run_id)
        ) PARTITION BY RANGE (day)""",
        """CREATE INDEX stageflow_runs_by_id ON stageflow_runs (run_id text_pattern_ops)""",
        """CREATE INDEX stageflow_runs_by_start ON stageflow_runs (started_at DESC, run_id)""",
        """CREATE INDEX stageflow_runs_by_pipeline ON stageflow_runs (pipeline, started_at DESC, run_id)""",
        """CREATE TABLE stageflow_stages (
            day date NOT NULL,
            run_id text NOT NULL,
            position integer NOT NULL,
            name text NOT NULL,
            kind text NOT NULL,
            status text NOT NULL,
            started_at double precision NOT NULL,
            ended_at double precision NOT NULL,
            wait double precision NOT NULL,
            attempts integer NOT NULL,
            error text,
            error_type text,
            dependencies jsonb NOT NULL,
            PRIMARY KEY (day, run_id, position)
        ) PARTITION BY RANGE (day)""",
    ),
    (  # 2: the events of DatabaseEventSink
        """CREATE TABLE stageflow_events (
            day date NOT NULL,
            run_id text,
            seq bigint NOT NULL,
            type text NOT NULL,
            timestamp double precision NOT NULL,
            data jsonb NOT NULL
        ) PARTITION BY RANGE (day)""",
        """CREATE INDEX stageflow_events_by_run ON stageflow_events (run_id, timestamp, seq)""",
    ),
    (  # 3: dispatch time, the fate of a sync stage's work, streaming measurements, time to first output
        """ALTER TABLE stageflow_runs ADD COLUMN first_output_path jsonb NOT NULL DEFAULT '[]'::jsonb""",
        """ALTER TABLE stageflow_stages
            ADD COLUMN dispatch double precision NOT NULL DEFAULT 0,
            ADD COLUMN work text,
            ADD COLUMN chunks integer NOT NULL DEFAULT 0,
            ADD COLUMN time_to_first_chunk double precision""",
    ),
    (  # 4: the outcome category of each stage and run, and the stages that never started
        """ALTER TABLE stageflow_runs
            ADD COLUMN category text,
            ADD COLUMN not_started jsonb NOT NULL DEFAULT '[]'::jsonb""",
        """ALTER TABLE stageflow_stages ADD COLUMN category text""",
        # rows recorded before the engine stored categories get the one their status and error type name
        f"""UPDATE stageflow_stages SET category = {LEGACY_STAGE_CATEGORY}""",
        # a run's stages share its day: looking in that partition only keeps the backfill off a full scan
        "UPDATE stageflow_runs AS runs SET category = "
        + LEGACY_RUN_CATEGORY.format(stages="stageflow_stages", same_day=" AND s.day = runs.day"),
    ),
)

POSTGRES_SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version this stageflow writes (``stageflow_schema.version``)."""

_WRITE = """
WITH run AS (
    INSERT INTO stageflow_runs
        (day, run_id, pipeline, status, started_at, ended_at, critical_path, error, trace_id,
         first_output_path, category, not_started)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT DO NOTHING
    RETURNING day, run_id
)
INSERT INTO stageflow_stages
    (day, run_id, position, name, kind, status, started_at, ended_at, wait, attempts, error, error_type,
     dependencies, dispatch, work, chunks, time_to_first_chunk, category)
SELECT run.day, run.run_id, s.position, s.name, s.kind, s.status, s.started_at, s.ended_at, s.wait,
       s.attempts, s.error, s.error_type, s.dependencies, s.dispatch, s.work, s.chunks,
       s.time_to_first_chunk, s.category
FROM run, jsonb_to_recordset(%s::jsonb) AS s(
    position integer, name text, kind text, status text, started_at double precision,
    ended_at double precision, wait double precision, attempts integer, error text, error_type text,
    dependencies jsonb, dispatch double precision, work text, chunks integer,
    time_to_first_chunk double precision, category text
)
"""

_READ = """
SELECT r.run_id, r.pipeline, r.status, r.started_at, r.ended_at, r.critical_path, r.error, r.trace_id,
    r.first_output_path, r.category, r.not_started,
    (SELECT coalesce(jsonb_agg(jsonb_build_array(s.name, s.kind, s.status, s.started_at, s.ended_at, s.wait,
                                                 s.attempts, s.error, s.error_type, s.dependencies,
                                                 s.dispatch, s.work, s.chunks, s.time_to_first_chunk,
                                                 s.category)
                               ORDER BY s.position), '[]'::jsonb)
     FROM stageflow_stages s WHERE s.day = r.day AND s.run_id = r.run_id)
FROM stageflow_runs r
"""


class SchemaError(StageflowError, RuntimeError):
    """The database's stageflow schema is missing, foreign or newer than this stageflow knows.

    .. versionadded:: 0.10
    """


def require_psycopg(what: str) -> None:
    """Import psycopg and its pool, or raise an ``ImportError`` that names the extra to install."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        msg = f"{what} needs psycopg 3 and psycopg-pool: pip install 'stageflow-core[postgres]'"
        raise ImportError(msg) from exc


_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _password_of(dsn: str) -> str | None:
    if "://" in dsn:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            return None
        return None if password is None else unquote(password)
    found = _KEYWORD_PASSWORD.search(dsn)
    return None if found is None else found.group(1).strip("'")


def mask_dsn(dsn: str) -> str:
    """``dsn`` as it may be shown: ``postgresql://user@host:port/dbname``, never with its password."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:
        return "<a malformed PostgreSQL connection string>"
    user = parts.get("user")
    host = parts.get("host") or ""
    port = parts.get("port")
    where = f"{host}:{port}" if port else str(host)
    return f"postgresql://{f'{user}@' if user else ''}{where}/{parts.get('dbname') or ''}"


def scrub(text: str, password: str | None) -> str:
    """``text`` with ``password`` (as given and URL-encoded) written as ``***``."""
    if password:
        from urllib.parse import quote

        for form in {password, quote(password, safe="")}:
            text = text.replace(form, "***")
    return text


def day_of(epoch: float) -> date:
    """The UTC day an epoch second falls on (the partition of a run or an event)."""
    return datetime.fromtimestamp(epoch, UTC).date()


def _partition(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


_PARTITION_NAME = re.compile(r"^stageflow_runs_p(\d{8})$")


class _Database:
    """The pool, the schema and the partitions, shared by ``PostgresRunStore`` and ``DatabaseEventSink``."""

    def __init__(
        self,
        owner: str,
        dsn: str,
        *,
        pool_size: int,
        connect_timeout: float,
        prepare_threshold: int | None,
        migrate: bool,
        retention: timedelta | None,
    ) -> None:
        if not isinstance(dsn, str) or not dsn:
            msg = f"{owner} needs a PostgreSQL URL such as 'postgresql://USER@HOST:5432/DBNAME', got {dsn!r}"
            raise ValueError(msg)
        require_psycopg(owner)
        from psycopg.conninfo import conninfo_to_dict

        self._password = _password_of(dsn)
        try:
            conninfo_to_dict(dsn)
        except Exception as exc:
            problem = scrub(str(exc).strip(), self._password) if self._password else type(exc).__name__
            msg = (
                f"{owner} was given a malformed PostgreSQL connection string ({problem}); write it like "
                "'postgresql://USER:PASSWORD@HOST:5432/DBNAME'"
            )
            raise ValueError(msg) from None
        self.owner = owner
        self.dsn = dsn
        self.shown = mask_dsn(dsn)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.prepare_threshold = prepare_threshold
        self.migrate = migrate
        self.retention = retention
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Lock | None = None
        self._checked = False
        self._days: set[date] = set()
        self._retained_on: date | None = None

    def scrub(self, text: str) -> str:
        return scrub(text, self._password)

    def _new_pool(self) -> AsyncConnectionPool[AsyncConnection[Any]]:
        from psycopg import AsyncConnection
        from psycopg_pool import AsyncConnectionPool

        return AsyncConnectionPool(
            self.dsn,
            connection_class=AsyncConnection[Any],
            kwargs={
                "autocommit": True,
                "prepare_threshold": self.prepare_threshold,
                "connect_timeout": max(1, round(self.connect_timeout)),
                "application_name": "stageflow",
            },
            min_size=1,
            max_size=self.pool_size,
            open=False,
            name="stageflow",
            timeout=self.connect_timeout,
            reconnect_timeout=max(self.connect_timeout, 30.0),
        )

    async def pool(self, *, check: bool = True) -> AsyncConnectionPool[AsyncConnection[Any]]:
        """The pool of the running event loop, opened (and the schema checked) on first use."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # a pool belongs to one event loop: a store used from a new loop (asyncio.run again) starts over
            self._loop, self._pool, self._ready = loop, None, asyncio.Lock()
            self._days.clear()
        assert self._ready is not None
        async with self._ready:
            if self._pool is None:
                pool = self._new_pool()
                await pool.open(wait=False)
                self._pool = pool
            if check and not self._checked:
                await self._prepare(self._pool)
                self._checked = True
        return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._loop is asyncio.get_running_loop():
            await pool.close(timeout=self.connect_timeout)

    async def _prepare(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        async with pool.connection(timeout=self.connect_timeout) as conn:
            version = await schema_version(conn)
            if version != POSTGRES_SCHEMA_VERSION:
                if not self.migrate or (version or 0) > POSTGRES_SCHEMA_VERSION:
                    self._refuse(version, "stageflow db migrate")
                await migrate(conn, self.shown)
            if self.retention is not None:
                await self.apply_retention(conn)

    def _refuse(self, version: int | None, command: str) -> None:
        where = f"database {self.shown}"
        if version is not None and version > POSTGRES_SCHEMA_VERSION:
            msg = (
                f"{where} has stageflow schema version {version}, newer than {POSTGRES_SCHEMA_VERSION} "
                "which this stageflow understands; upgrade stageflow"
            )
        elif version is None:
            msg = f"{where} has no stageflow schema; create it with `{command} URL` (or a PostgresRunStore)"
        else:
            msg = (
                f"{where} has stageflow schema version {version} and this stageflow reads version "
                f"{POSTGRES_SCHEMA_VERSION}; upgrade it with `{command} URL`"
            )
        raise SchemaError(msg)

    async def ensure_day(self, conn: AsyncConnection[Any], day: date) -> None:
        """Create the day's partitions of every table unless this process saw them already."""
        if day in self._days:
            return
        cur = await conn.execute("SELECT to_regclass(%s)", (_partition("stageflow_events", day),))
        row = await cur.fetchone()
        if row is None or row[0] is None:
            from psycopg import sql

            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                for table in _TABLES:
                    await conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
                        ).format(
                            sql.Identifier(_partition(table, day)),
                            sql.Identifier(table),
                            sql.Literal(day),
                            sql.Literal(day + timedelta(days=1)),
                        )
                    )
        self._days.add(day)
        if self.retention is not None and self._retained_on != _today():
            await self.apply_retention(conn)

    async def apply_retention(self, conn: AsyncConnection[Any]) -> list[date]:
        """Drop the partitions of the days older than ``retention``; the days dropped, oldest first."""
        assert self.retention is not None
        from psycopg import sql

        cutoff = (datetime.now(UTC) - self.retention).date()
        dropped = []
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            cur = await conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'stageflow_runs'::regclass"
            )
            for (name,) in await cur.fetchall():
                found = _PARTITION_NAME.match(name)
                if found is None:
                    continue
                day = datetime.strptime(found.group(1), "%Y%m%d").date()
                if day < cutoff:
                    dropped.append(day)
            for day in sorted(dropped):
                await conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(
                        sql.SQL(", ").join(sql.Identifier(_partition(t, day)) for t in _TABLES)
                    )
                )
                self._days.discard(day)
        self._retained_on = _today()
        return sorted(dropped)


def _today() -> date:
    return datetime.now(UTC).date()


async def schema_version(conn: AsyncConnection[Any]) -> int | None:
    """The stageflow schema version of the connection's database, ``None`` without one.

    Raises:
        SchemaError: a ``stageflow_runs`` table exists that stageflow did not create.
    """
    cur = await conn.execute(
        "SELECT to_regclass('stageflow_schema') IS NOT NULL, "
        "(SELECT relkind FROM pg_class WHERE oid = to_regclass('stageflow_runs'))"
    )
    row = await cur.fetchone()
    assert row is not None
    has_schema, runs_kind = row
    if not has_schema:
        if runs_kind is not None:
            msg = (
                "the database holds a table 'stageflow_runs' that stageflow did not create (there is no "
                "stageflow_schema table); point the store at another database, or rename that table"
            )
            raise SchemaError(msg)
        return None
    cur = await conn.execute("SELECT max(version) FROM stageflow_schema")
    found = await cur.fetchone()
    return None if found is None or found[0] is None else int(found[0])


async def migrate(conn: AsyncConnection[Any], shown: str, *, target: int = POSTGRES_SCHEMA_VERSION) -> int:
    """Bring the database to schema version ``target`` in one transaction; the version it had.

    Raises:
        SchemaError: the schema is foreign, or newer than this stageflow knows.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        version = await schema_version(conn)
        before = version or 0
        if before > POSTGRES_SCHEMA_VERSION:
            msg = (
                f"database {shown} has stageflow schema version {before}, newer than "
                f"{POSTGRES_SCHEMA_VERSION} which this stageflow understands; upgrade stageflow"
            )
            raise SchemaError(msg)
        for statements in _MIGRATIONS[before:target]:
            for statement in statements:
                await conn.execute(statement)
        if target > before:
            await conn.execute("UPDATE stageflow_schema SET version = %s", (target,))
    return before


def _stages_json(record: RunRecord) -> str:
    return json.dumps(
        [
            {
                "position": i,
                "name": s.name,
                "kind": s.kind,
                "status": s.status,
                "started_at": s.started_at,
                "ended_at": s.ended_at,
                "wait": s.wait,
                "attempts": s.attempts,
                "error": s.error,
                "error_type": s.error_type,
                "dependencies": list(s.dependencies),
                "dispatch": s.dispatch,
                "work": s.work,
                "chunks": s.chunks,
                "time_to_first_chunk": s.time_to_first_chunk,
                "category": _text_of(s.category),
            }
            for i, s in enumerate(record.stages)
        ]
    )


def _text_of(category: str | None) -> str | None:
    """A category as plain text (psycopg would write an enum by its member name)."""
    return None if category is None else str(category)


def _escape_like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _retention(value: object) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        days = value
    elif isinstance(value, int) and not isinstance(value, bool):
        days = timedelta(days=value)
    else:
        days = timedelta(days=-1)
    if days < timedelta(days=1):
        msg = (
            f"retention={value!r} is invalid; pass whole days (an int of at least 1) or a timedelta of a day"
        )
        raise ValueError(msg)
    return days


def _seconds(name: str, value: object) -> float:
    if not finite_number(value) or value <= 0:
        msg = f"{name}={value!r} is invalid; use a finite number of seconds > 0"
        raise ValueError(msg)
    return float(value)


class PostgresRunStore:
    """Records runs in PostgreSQL (psycopg 3 with an async connection pool).

    Many processes on many hosts may record into one database at once. Each run is written by one
    statement that does nothing when the run id is already stored, so a retried write changes nothing.
    The pool opens on first use in the running event loop, and the schema is created or upgraded then
    (``migrate=False`` refuses a missing or older schema instead). Prepared statements are off by default,
    so the store works behind PgBouncer's transaction pooling.

    A write never fails or hangs a run: the executor waits at most ``record_timeout`` seconds, and a write
    given up on (``timeout``), one without a connection (``unavailable``) or one the database refused
    (``error``) is counted in ``dropped`` and logged.

    Args:
        dsn: a libpq connection string or ``postgresql://`` URL. Its password is never shown (errors,
            logs, ``repr``); ``PGPASSWORD`` or ``~/.pgpass`` work as with any libpq client.
        record_timeout: seconds the executor waits for ``record_run``.
        connect_timeout: seconds to wait for a connection (reads, migrations, the pool's connects).
        pool_size: the most connections the pool opens.
        retention: keep this many days of runs (an ``int`` or a ``timedelta``); older days' partitions are
            dropped on first use and once a day. ``None`` keeps everything.
        migrate: create or upgrade the schema on first use.
        prepare_threshold: psycopg's ``prepare_threshold``; ``None`` (the default) never prepares.
        observer: called after every ``record_run`` with its ``RunStoreWrite`` (e.g. stageflow_otel's
            ``RunStoreMetrics``).

    Raises:
        ImportError: psycopg is not installed (the message names the extra).
        ValueError: a malformed ``dsn`` or a bad option (the message names it).

    .. versionadded:: 0.10
    """

    def __init__(
        self,
        dsn: str,
        *,
        record_timeout: float = RUN_STORE_TIMEOUT,
        connect_timeout: float = 5.0,
        pool_size: int = 4,
        retention: int | timedelta | None = None,
        migrate: bool = True,
        prepare_threshold: int | None = None,
        observer: WriteObserver | None = None,
    ) -> None:
        self.record_timeout = _seconds("record_timeout", record_timeout)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            msg = f"pool_size={pool_size!r} is invalid; pass a whole number of at least 1"
            raise ValueError(msg)
        self._db = _Database(
            "PostgresRunStore",
            dsn,
            pool_size=pool_size,
            connect_timeout=_seconds("connect_timeout", connect_timeout),
            prepare_threshold=prepare_threshold,
            migrate=migrate,
            retention=_retention(retention),
        )
        self._observer = observer
        self.dropped: dict[str, int] = {"timeout": 0, "unavailable": 0, "error": 0}
        """Runs not recorded, by cause."""

    def __repr__(self) -> str:
        return f"PostgresRunStore({self._db.shown!r})"

    async def __aenter__(self) -> PostgresRunStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pool (call it from the event loop that used the store)."""
        await self._db.close()

    async def migrate(self) -> int:
        """Create or upgrade the schema now; returns the version the database had (0: none).

        Raises:
            SchemaError: the schema is foreign or newer than this stageflow knows.
        """
        db = self._db
        pool = await db.pool(check=False)
        async with pool.connection(timeout=db.connect_timeout) as conn:
            before = await migrate(conn, db.shown)
        db._checked = True
        return before

    async def apply_retention(self) -> list[date]:
        """Drop the partitions older than ``retention`` now; the days dropped, oldest first."""
        db = self._db
        if db.retention is None:
            return []
        pool = await db.pool()
        async with pool.connection(timeout=db.connect_timeout) as conn:
            return await db.apply_retention(conn)

    async def partitions(self) -> list[date]:
        """The days that have partitions, oldest first."""
        pool = await self._db.pool()
        async with pool.connection(timeout=self._db.connect_timeout) as conn:
            cur = await conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'stageflow_runs'::regclass"
            )
            names = [name for (name,) in await cur.fetchall()]
        days = [_PARTITION_NAME.match(n) for n in names]
        return sorted(datetime.strptime(d.group(1), "%Y%m%d").date() for d in days if d is not None)

    async def record_run(self, record: RunRecord) -> None:
        """Store one run in one round trip; a record with an existing ``run_id`` changes nothing.

        Raises:
            RuntimeError: the database is unreachable or refused the write (counted in ``dropped``;
                the executor logs it and the run's outcome stays as it was).
        """
        from psycopg import Error as PsycopgError
        from psycopg_pool import PoolTimeout

        started = time.perf_counter()
        cause: str | None = "error"
        db = self._db
        try:
            stored = storable_record(record)
            day = day_of(stored.started_at)
            row = (
                day,
                stored.run_id,
                stored.pipeline,
                stored.status,
                stored.started_at,
                stored.ended_at,
                json.dumps(list(stored.critical_path)),
                stored.error,
                stored.trace_id,
                json.dumps([list(step) for step in stored.first_output_path]),
                _text_of(stored.category),
                json.dumps(list(stored.not_started)),
                _stages_json(stored),
            )
            pool = await db.pool()
            for attempt in (1, 2):
                used: AsyncConnection[Any] | None = None
                try:
                    async with pool.connection(timeout=self.record_timeout) as conn:
                        used = conn
                        await db.ensure_day(conn, day)
                        await conn.execute(_WRITE, row)
                    break
                except PoolTimeout:
                    raise
                except PsycopgError as exc:
                    # a pooled connection the server dropped (a restart, an idle timeout) fails at once:
                    # the write is idempotent, so it is tried once more on a fresh connection
                    if attempt == 2 or used is None or not used.broken:
                        raise exc from None
            cause = None
        except asyncio.CancelledError:
            cause = "timeout"
            raise
        except PoolTimeout as exc:
            cause = "unavailable"
            msg = f"{self!r} has no connection to the database: {db.scrub(str(exc))}"
            raise RuntimeError(msg) from None
        except PsycopgError as exc:
            if _is_connection_error(exc):
                cause = "unavailable"
            msg = f"{self!r} could not record run {record.run_id}: {db.scrub(str(exc).strip())}"
            raise RuntimeError(msg) from None
        finally:
            if cause is not None:
                self.dropped[cause] += 1
            observe(self._observer, RunStoreWrite("postgresql", time.perf_counter() - started, cause))

    async def _query(self, query: str, params: Sequence[object]) -> list[RunRecord | MalformedRunError]:
        db = self._db
        pool = await db.pool()
        async with pool.connection(timeout=db.connect_timeout) as conn:
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
        found: list[RunRecord | MalformedRunError] = []
        for row in rows:
            try:
                stages = row[11]
                if not isinstance(stages, list):
                    raise MalformedRunError(str(row[0]), f"its stages are {stages!r}")
                found.append(run_record(row[:11], stages))
            except MalformedRunError as exc:
                found.append(exc)
        return found

    async def get_run(self, run_id: UUID | str) -> RunRecord | None:
        """As ``SQLiteRunStore.get_run``: the run with this id, or ``None``; a malformed row raises."""
        return the_one(await self._query(_READ + "WHERE r.run_id = %s LIMIT 1", (str(run_id),)))

    async def list_runs(
        self,
        *,
        pipeline: str | None = None,
        limit: int = 100,
        offset: int = 0,
        problems: list[MalformedRunError] | None = None,
    ) -> list[RunRecord]:
        """As ``SQLiteRunStore.list_runs`` (same arguments, order and paging), in one query."""
        check_page(limit, offset)
        where, params = ("", ()) if pipeline is None else ("WHERE r.pipeline = %s ", (pipeline,))
        found = await self._query(
            _READ + where + "ORDER BY r.started_at DESC, r.run_id LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        return readable(found, problems)

    async def find_runs(
        self, prefix: str, *, limit: int = 10, problems: list[MalformedRunError] | None = None
    ) -> list[RunRecord]:
        """Runs whose id starts with ``prefix``, in id order, at most ``limit`` (an index scan)."""
        check_page(limit, 0)
        found = await self._query(
            _READ + "WHERE r.run_id LIKE %s ORDER BY r.run_id LIMIT %s", (_escape_like(prefix), limit)
        )
        return readable(found, problems)

    async def pipelines(self) -> list[str]:
        """The names of the pipelines with stored runs, in order."""
        db = self._db
        pool = await db.pool()
        async with pool.connection(timeout=db.connect_timeout) as conn:
            cur = await conn.execute("SELECT DISTINCT pipeline FROM stageflow_runs ORDER BY pipeline")
            return [name for (name,) in await cur.fetchall()]

    async def events_of(self, run_id: UUID | str) -> list[RecordedEvent]:
        """The events a ``DatabaseEventSink`` stored for this run, in the order they were emitted."""
        db = self._db
        pool = await db.pool()
        async with pool.connection(timeout=db.connect_timeout) as conn:
            cur = await conn.execute(
                "SELECT type, data FROM stageflow_events WHERE run_id = %s ORDER BY seq",
                (str(run_id),),
            )
            rows = await cur.fetchall()
        return [RecordedEvent(t, d if isinstance(d, Mapping) else {"data": d}) for t, d in rows]


def _is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached (no connection, or the server went away),
    as opposed to a database that answered and refused the write (a full disk, a constraint)."""
    from psycopg import OperationalError

    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None:  # raised by the client: the connection failed or broke
        return isinstance(exc, OperationalError)
    return str(sqlstate).startswith(("08", "57P"))  # connection exception; operator intervention
