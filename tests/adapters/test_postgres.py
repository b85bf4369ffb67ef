"""PostgresRunStore against a real PostgreSQL: schema, migrations, retention, bad input, security.

It runs past 500 lines because every class runs against the one real server the test session starts, and the
store's schema, retention, failures and security are read together.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from stageflow import (
    OutcomeCategory,
    Pipeline,
    PipelineFailedError,
    PostgresRunStore,
    RunRecord,
    RunStoreWrite,
    StageContext,
    StageKind,
    StageOutput,
    StageRecord,
)
from stageflow.adapters import SchemaError
from stageflow.adapters._postgres import _MIGRATIONS, POSTGRES_SCHEMA_VERSION
from tests._postgres import PostgresServer
from tests._support import make_ctx
from tests.adapters import _version4 as version4


def record(run_id: str, start: float) -> RunRecord:
    return RunRecord(
        run_id,
        "p",
        "completed",
        start,
        start + 1,
        (StageRecord("a", "work", "ok", start, start + 1, 0.0, 1),),
    )


def epoch(day: date) -> float:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()


async def ok(ctx: StageContext) -> StageOutput:
    return StageOutput.ok()


def one_stage() -> Pipeline:
    return Pipeline(name="one").with_stage("a", ok, StageKind.WORK)


class TestSchema:
    async def test_first_use_creates_the_versioned_partitioned_schema(self, pg_url: str) -> None:
        """The first write creates the schema at the current version and the day's partitions."""
        async with PostgresRunStore(pg_url) as store:
            await store.record_run(record("r", epoch(date(2026, 5, 28))))
            assert await store.partitions() == [date(2026, 5, 28)]
        with psycopg.connect(pg_url) as conn:
            tables = conn.execute(
                "SELECT relname, relkind FROM pg_class "
                "WHERE relname LIKE 'stageflow%' AND relkind IN ('r', 'p') ORDER BY relname"
            ).fetchall()
            version = conn.execute("SELECT version FROM stageflow_schema").fetchall()
        assert version == [(POSTGRES_SCHEMA_VERSION,)] == [(4,)]
        assert tables == [
            ("stageflow_events", "p"),
            ("stageflow_events_p20260528", "r"),
            ("stageflow_runs", "p"),
            ("stageflow_runs_p20260528", "r"),
            ("stageflow_schema", "r"),
            ("stageflow_stages", "p"),
            ("stageflow_stages_p20260528", "r"),
        ]

    async def test_an_older_schema_is_migrated_on_first_use(self, pg_url: str) -> None:
        """A database at schema version 1 (no events table) is brought to version 4; its runs stay."""
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for statement in _MIGRATIONS[0]:
                conn.execute(statement)
            conn.execute("UPDATE stageflow_schema SET version = 1")
        async with PostgresRunStore(pg_url, migrate=False) as reader:
            with pytest.raises(SchemaError) as info:
                await reader.list_runs()
        assert str(info.value).endswith(
            "has stageflow schema version 1 and this stageflow reads version 4; upgrade it with "
            "`stageflow db migrate URL`"
        )
        async with PostgresRunStore(pg_url) as store:
            await store.record_run(record("r", epoch(date(2026, 5, 28))))
            assert [r.run_id for r in await store.list_runs()] == ["r"]
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT version FROM stageflow_schema").fetchall() == [(4,)]

    async def test_a_version_2_database_keeps_its_runs_and_gains_the_streaming_columns(
        self, pg_url: str
    ) -> None:
        """Runs written at schema version 2 read back after the migration to version 4 with no dispatch, no
        work outcome, no chunks and no first output; runs written after it keep all four."""
        start = epoch(date(2026, 5, 28))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for statement in _MIGRATIONS[0] + _MIGRATIONS[1]:
                conn.execute(statement)
            conn.execute("UPDATE stageflow_schema SET version = 2")
            for table in ("stageflow_runs", "stageflow_stages", "stageflow_events"):
                conn.execute(
                    f"CREATE TABLE {table}_p20260528 PARTITION OF {table} "
                    "FOR VALUES FROM ('2026-05-28') TO ('2026-05-29')"
                )
            conn.execute(
                "INSERT INTO stageflow_runs VALUES (%s, 'old', 'p', 'completed', %s, %s, '[]', NULL, NULL)",
                (date(2026, 5, 28), start, start + 1),
            )
            conn.execute(
                "INSERT INTO stageflow_stages VALUES (%s, 'old', 0, 'a', 'work', 'ok', %s, %s, 0.0, 1, NULL, "
                "NULL, '[]')",
                (date(2026, 5, 28), start, start + 1),
            )
        streamed = replace(
            record("new", start),
            stages=(
                replace(
                    record("new", start).stages[0],
                    dispatch=0.0625,
                    work="stopped",
                    chunks=7,
                    time_to_first_chunk=0.1234567891,
                ),
            ),
            first_output_path=(("a", 0.1234567891),),
        )
        async with PostgresRunStore(pg_url) as store:
            await store.record_run(streamed)
            old = record("old", start)
            assert await store.get_run("old") == replace(
                old, stages=(replace(old.stages[0], category="success"),), category="success"
            )
            assert await store.get_run("new") == streamed
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT version FROM stageflow_schema").fetchall() == [(4,)]

    async def test_a_version_3_database_gains_categories_from_its_rows(self, pg_url: str) -> None:
        """The migration to version 4 gives each stored stage the category its status and error type name
        and each run its first failing stage's (success for a completed run, cancellation for a cancelled
        one, error for a failed one without a failed stage); runs written after it keep the engine's."""
        day = date(2026, 5, 28)
        start = epoch(day)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for statement in _MIGRATIONS[0] + _MIGRATIONS[1] + _MIGRATIONS[2]:
                conn.execute(statement)
            conn.execute("UPDATE stageflow_schema SET version = 3")
            for table in ("stageflow_runs", "stageflow_stages", "stageflow_events"):
                conn.execute(
                    f"CREATE TABLE {table}_p20260528 PARTITION OF {table} "
                    "FOR VALUES FROM ('2026-05-28') TO ('2026-05-29')"
                )
            for run_id, status in version4.RUNS:
                conn.execute(
                    "INSERT INTO stageflow_runs (day, run_id, pipeline, status, started_at, ended_at, "
                    "critical_path) VALUES (%s, %s, 'p', %s, %s, %s, '[]')",
                    (day, run_id, status, start, start + 1),
                )
            for position, (run_id, status, error_type) in enumerate(version4.STAGES):
                conn.execute(
                    "INSERT INTO stageflow_stages (day, run_id, position, name, kind, status, started_at, "
                    "ended_at, wait, attempts, error_type, dependencies) "
                    "VALUES (%s, %s, %s, %s, 'work', %s, %s, %s, 0.0, 1, %s, '[]')",
                    (day, run_id, position, f"s{position}", status, start, start + 1, error_type),
                )
        new = replace(
            record("new", start),
            stages=(replace(record("new", start).stages[0], category=OutcomeCategory.TIMEOUT),),
            category=OutcomeCategory.TIMEOUT,
            not_started=("b",),
        )
        async with PostgresRunStore(pg_url) as store:
            read = {r.run_id: r for r in await store.list_runs()}
            await store.record_run(new)
            assert await store.get_run("new") == new
        assert {run_id: (r.category, r.not_started) for run_id, r in read.items()} == version4.RUN_CATEGORIES
        assert [s.category for r in version4.RUNS for s in read[r[0]].stages] == version4.STAGE_CATEGORIES
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT version FROM stageflow_schema").fetchall() == [(4,)]

    @pytest.mark.parametrize("migrate", [True, False], ids=["migrate", "read-only"])
    async def test_a_foreign_table_of_the_same_name_is_refused(self, pg_url: str, migrate: bool) -> None:
        """A stageflow_runs table stageflow did not create is refused, never written to."""
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE stageflow_runs (id int)")
        async with PostgresRunStore(pg_url, migrate=migrate) as store:
            with pytest.raises(SchemaError) as info:
                await store.list_runs()
        assert str(info.value) == (
            "the database holds a table 'stageflow_runs' that stageflow did not create (there is no "
            "stageflow_schema table); point the store at another database, or rename that table"
        )

    async def test_a_newer_schema_is_refused(self, postgres: PostgresServer, pg_url: str) -> None:
        """A schema newer than this stageflow's is refused with the fix."""
        async with PostgresRunStore(pg_url) as store:
            await store.migrate()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE stageflow_schema SET version = 9")
        async with PostgresRunStore(pg_url) as store:
            with pytest.raises(SchemaError) as info:
                await store.list_runs()
        name = pg_url.rsplit("/", 1)[1]
        assert str(info.value) == (
            f"database postgresql://stageflow@127.0.0.1:{postgres.port}/{name} has stageflow schema "
            "version 9, newer than 4 which this stageflow understands; upgrade stageflow"
        )

    async def test_concurrent_first_uses_create_the_schema_once(self, pg_url: str) -> None:
        """Eight stores opening one empty database at once all write; the schema is made once."""
        stores = [PostgresRunStore(pg_url) for _ in range(8)]
        await asyncio.gather(
            *(s.record_run(record(f"r{i}", epoch(date(2026, 5, 28)))) for i, s in enumerate(stores))
        )
        assert sorted(r.run_id for r in await stores[0].list_runs()) == [f"r{i}" for i in range(8)]
        await asyncio.gather(*(s.aclose() for s in stores))
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT version FROM stageflow_schema").fetchall() == [(4,)]


class TestRetention:
    async def test_retention_drops_whole_days(self, pg_url: str) -> None:
        """``retention=`` drops the partitions of days older than it on first use; newer days stay."""
        today = datetime.now(UTC).date()
        days = [today - timedelta(days=n) for n in (40, 31, 29, 1, 0)]
        async with PostgresRunStore(pg_url) as store:
            for n, day in enumerate(days):
                await store.record_run(record(f"r{n}", epoch(day)))
        async with PostgresRunStore(pg_url) as store:
            assert await store.partitions() == days
        async with PostgresRunStore(pg_url, retention=30) as kept:
            assert await kept.partitions() == days[2:]
            assert [r.run_id for r in await kept.list_runs()] == ["r4", "r3", "r2"]
            assert await kept.apply_retention() == []
        async with PostgresRunStore(pg_url, retention=1) as short:
            assert await short.apply_retention() == []
            assert await short.partitions() == days[3:]

    @pytest.mark.parametrize("value", [0, -3, 1.5, "30", timedelta(hours=5), True], ids=str)
    def test_bad_retention_is_refused(self, value: object) -> None:
        """A retention that is not whole days of at least one is refused, naming it."""
        with pytest.raises(ValueError) as info:
            PostgresRunStore("postgresql://u@127.0.0.1/d", retention=value)  # type: ignore[arg-type]
        assert str(info.value) == (
            f"retention={value!r} is invalid; pass whole days (an int of at least 1) or a timedelta of a day"
        )


class TestFailuresNeverReachTheRun:
    async def test_a_locked_table_times_out_and_counts_a_drop(self, pg_url: str) -> None:
        """A write blocked by a lock is given up at record_timeout: the run returns, the drop is counted."""
        writes: list[RunStoreWrite] = []
        given_up = asyncio.Event()

        def observe(write: RunStoreWrite) -> None:
            writes.append(write)
            if write.dropped is not None:
                given_up.set()

        store = PostgresRunStore(pg_url, record_timeout=0.5, observer=observe)
        try:
            await store.migrate()
            await store.record_run(record("warm", datetime.now(UTC).timestamp()))
            graph = one_stage().build(run_store=store)
            async with await psycopg.AsyncConnection.connect(pg_url) as blocker:
                await blocker.execute("LOCK TABLE stageflow_runs IN ACCESS EXCLUSIVE MODE")
                results = await graph.run(make_ctx())
                await blocker.rollback()
            assert list(results) == ["a"]
            # the cancelled write ends once psycopg has cancelled its query on the server
            async with asyncio.timeout(30):
                await given_up.wait()
            assert store.dropped == {"timeout": 1, "unavailable": 0, "error": 0}
            assert [w.dropped for w in writes] == [None, "timeout"]
            after = await graph.run(make_ctx())
            assert (await store.get_run(after.run_id)) is not None
        finally:
            await store.aclose()

    async def test_a_server_that_is_not_there_counts_unavailable(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """No server on the port: every run returns within its bound and each write is counted."""
        password = secrets.token_hex(8)
        store = PostgresRunStore(
            f"postgresql://u:{password}@127.0.0.1:1/d", record_timeout=2, connect_timeout=0.5
        )
        try:
            graph = one_stage().build(run_store=store)
            with caplog.at_level(logging.DEBUG):
                for _ in range(2):
                    assert list(await graph.run(make_ctx())) == ["a"]
            assert store.dropped == {"timeout": 0, "unavailable": 2, "error": 0}
            assert [r.getMessage() for r in caplog.records if r.name == "stageflow"] == [
                "stageflow: run store PostgresRunStore('postgresql://u@127.0.0.1:1/d') failed and is "
                "ignored: RuntimeError(\"PostgresRunStore('postgresql://u@127.0.0.1:1/d') has no connection "
                "to the database: couldn't get a connection after 0.50 sec\")"
            ]
            assert all(password not in r.getMessage() for r in caplog.records)
        finally:
            await store.aclose()

    async def test_the_server_killed_mid_run_and_restarted(
        self, postgres: PostgresServer, pg_url: str
    ) -> None:
        """Runs while the server is down are dropped and counted; once it is back, runs are recorded again."""
        store = PostgresRunStore(pg_url, record_timeout=2, connect_timeout=1)
        try:
            started, release = asyncio.Event(), asyncio.Event()

            async def slow(ctx: StageContext) -> StageOutput:
                started.set()
                await release.wait()
                return StageOutput.ok()

            graph = Pipeline(name="slow").with_stage("a", slow, StageKind.WORK).build(run_store=store)
            first = await one_stage().build(run_store=store).run(make_ctx())
            running = asyncio.ensure_future(graph.run(make_ctx()))
            await started.wait()
            await asyncio.to_thread(postgres.stop, "immediate")
            release.set()
            try:
                during = await running
            finally:
                await asyncio.to_thread(postgres.start)
            assert list(during) == ["a"]
            assert sum(store.dropped.values()) == 1
            again = await graph.run(make_ctx())
            assert [r.run_id for r in await store.list_runs()] == [str(again.run_id), str(first.run_id)]
        finally:
            await store.aclose()


class TestSecurity:
    def test_repr_hides_the_password(self) -> None:
        """repr shows user, host, port and database, never the password."""
        store = PostgresRunStore("postgresql://app:s3cr%40t@db.internal:6432/runs")
        assert repr(store) == "PostgresRunStore('postgresql://app@db.internal:6432/runs')"
        keywords = PostgresRunStore("host=db.internal user=app password=hunter2 dbname=runs")
        assert repr(keywords) == "PostgresRunStore('postgresql://app@db.internal/runs')"

    @pytest.mark.parametrize(
        ("dsn", "problem"),
        [
            ("postgresql://app:hunter2@db/ru%zzns", 'invalid percent-encoded token: "ru%zzns"'),
            ("postgresql://app:hunter2@[db/runs", "ProgrammingError"),
            (
                "host=db password=hunter2 port=x dbname",
                'missing "=" after "dbname" in connection info string',
            ),
        ],
        ids=["url", "url-unparsable", "keywords"],
    )
    def test_a_malformed_dsn_is_refused_without_its_password(self, dsn: str, problem: str) -> None:
        """A malformed connection string is refused at construction; the message hides the password."""
        with pytest.raises(ValueError) as info:
            PostgresRunStore(dsn)
        assert str(info.value) == (
            f"PostgresRunStore was given a malformed PostgreSQL connection string ({problem}); write it like "
            "'postgresql://USER:PASSWORD@HOST:5432/DBNAME'"
        )
        assert info.value.__cause__ is None and info.value.__suppress_context__

    async def test_a_wrong_password_never_shows_a_password(
        self, postgres: PostgresServer, pg_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A wrong password fails reads with an error, and no password reaches the error or a log line."""
        wrong = pg_url.replace(postgres.password, "Wr0ng-S3cret")
        with caplog.at_level(logging.DEBUG):
            async with PostgresRunStore(wrong, connect_timeout=1) as store:
                with pytest.raises(Exception) as info:
                    await store.list_runs()
                assert list(await one_stage().build(run_store=store).run(make_ctx())) == ["a"]
        text = "\n".join([str(info.value), repr(info.value), *(r.getMessage() for r in caplog.records)])
        assert "Wr0ng-S3cret" not in text and postgres.password not in text

    async def test_least_privilege_role(self, postgres: PostgresServer) -> None:
        """A role that may only connect and create in its own schema runs the store end to end."""
        admin = postgres.dsn()
        password = secrets.token_urlsafe(16)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE least_privilege TEMPLATE template0")
            conn.execute(
                psycopg.sql.SQL("CREATE ROLE stageflow_app LOGIN PASSWORD {}").format(
                    psycopg.sql.Literal(password)
                )
            )
            conn.execute("REVOKE ALL ON DATABASE least_privilege FROM PUBLIC")
            conn.execute("GRANT CONNECT ON DATABASE least_privilege TO stageflow_app")
        with psycopg.connect(postgres.dsn("least_privilege"), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA stageflow AUTHORIZATION stageflow_app")
            conn.execute("ALTER ROLE stageflow_app SET search_path = stageflow")
        url = f"postgresql://stageflow_app:{password}@127.0.0.1:{postgres.port}/least_privilege"
        with psycopg.connect(url) as conn:
            flags = conn.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            assert flags == (False, False, False)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("CREATE TABLE public.probe (x int)")
        today = datetime.now(UTC).date()
        async with PostgresRunStore(url, retention=7) as store:
            await store.record_run(record("old", epoch(today - timedelta(days=10))))
            graph = one_stage().build(run_store=store)
            results = await graph.run(make_ctx())
            assert await store.apply_retention() == [today - timedelta(days=10)]
            assert [r.run_id for r in await store.list_runs()] == [str(results.run_id)]

    async def test_prepared_statements_are_off(self, pg_url: str) -> None:
        """The store's connections never prepare statements (PgBouncer transaction pooling works)."""
        async with PostgresRunStore(pg_url, pool_size=1) as store:
            for n in range(10):
                await store.record_run(record(f"r{n}", epoch(date(2026, 5, 28))))
                await store.get_run(f"r{n}")
            pool = await store._db.pool()
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
                assert await cur.fetchone() == (0,)


@pytest.fixture(name="tiny_tablespace")
def _tiny_tablespace(postgres: PostgresServer) -> Iterator[str]:
    """A database whose tables go to a tablespace on a 1 MB file system (root only: it mounts a tmpfs)."""
    if os.geteuid() != 0:
        pytest.skip("mounting the small file system that stands for a full disk needs root")
    where = Path(tempfile.mkdtemp(prefix="stageflow-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    owner = pwd.getpwnam("postgres")
    os.chown(where, owner.pw_uid, owner.pw_gid)
    url = postgres.create_database("full_disk")
    admin = postgres.dsn()
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("CREATE TABLESPACE tiny LOCATION {}").format(psycopg.sql.Literal(str(where)))
            )
            conn.execute("ALTER DATABASE full_disk SET default_tablespace = tiny")
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS full_disk WITH (FORCE)")
            conn.execute("DROP TABLESPACE IF EXISTS tiny")
        subprocess.run(["umount", str(where)], check=False)
        where.rmdir()


class TestFullDisk:
    async def test_a_full_disk_drops_records_never_runs(self, tiny_tablespace: str) -> None:
        """Once the database's disk is full, runs still return and each unrecorded run counts as an error."""

        async def fail(ctx: StageContext) -> StageOutput:
            return StageOutput.fail("x" * 4_000)

        async with PostgresRunStore(tiny_tablespace, record_timeout=10) as store:
            graph = Pipeline(name="full").with_stage("a", fail, StageKind.WORK).build(run_store=store)
            returned = 0
            while store.dropped["error"] < 3 and returned < 5_000:
                with pytest.raises(PipelineFailedError):
                    await graph.run(make_ctx())
                returned += 1
            stored = len(await store.list_runs(limit=10_000))
        assert store.dropped["error"] == 3
        assert (store.dropped["timeout"], store.dropped["unavailable"]) == (0, 0)
        assert stored + 3 == returned


class TestIndexes:
    async def test_an_id_prefix_is_an_index_search(self, pg_url: str) -> None:
        """The prefix query can search the run id index (text_pattern_ops), never needing a full scan."""
        async with PostgresRunStore(pg_url) as store:
            for n in range(50):
                await store.record_run(record(f"run-{n:03}", epoch(date(2026, 5, 28))))
            assert [r.run_id for r in await store.find_runs("run-04", limit=3)] == [
                "run-040",
                "run-041",
                "run-042",
            ]
        with psycopg.connect(pg_url) as conn:
            conn.execute("SET enable_seqscan = off")
            plan = "\n".join(
                row[0]
                for row in conn.execute(
                    "EXPLAIN SELECT run_id FROM stageflow_runs r "
                    "WHERE r.run_id LIKE %s ORDER BY r.run_id LIMIT 6",
                    ("run-04%",),
                )
            )
        assert "stageflow_runs_p20260528_run_id_idx" in plan
        assert "Seq Scan" not in plan
