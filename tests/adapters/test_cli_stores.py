"""``stageflow runs`` / ``report`` / ``db migrate`` on SQLite files and PostgreSQL URLs."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from stageflow import PostgresRunStore, RunRecord, SQLiteRunStore
from stageflow.views._timeline import timeline_of_record
from tests._postgres import PostgresServer
from tests._runs_store import RECORDS, STREAMED, write_store
from tests._support import cli_error, run_cli

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(autouse=True)
def _utc_and_no_store(utc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local time is UTC; no store or Jaeger address comes from the environment."""
    monkeypatch.delenv("STAGEFLOW_STORE", raising=False)
    monkeypatch.delenv("STAGEFLOW_JAEGER_URL", raising=False)


def fill_postgres(url: str, records: tuple[RunRecord, ...] = RECORDS) -> None:
    async def fill() -> None:
        async with PostgresRunStore(url) as store:
            for record in records:
                await store.record_run(record)

    asyncio.run(fill())


class TestSQLiteReadsWriteNothing:
    @pytest.mark.parametrize(
        "argv",
        [
            ["runs", "list", "{db}"],
            ["runs", "show", "{db}", "aaaa0001"],
            ["report", "{db}", "--output", "{out}"],
        ],
        ids=["list", "show", "report"],
    )
    def test_read_commands_leave_no_file_behind(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
    ) -> None:
        """list, show and report leave the store's directory as they found it (no -wal or -shm files)."""
        stores = tmp_path / "stores"
        stores.mkdir()
        db = str(write_store(stores / "runs.db"))
        before = sorted(p.name for p in stores.iterdir())
        out = tmp_path / "report.html"
        status, _, err = run_cli(capsys, *[a.replace("{out}", str(out)).replace("{db}", db) for a in argv])
        assert (status, err) == (0, "")
        assert (before, sorted(p.name for p in stores.iterdir())) == (["runs.db"], ["runs.db"])

    def test_an_empty_file_is_refused_and_left_empty(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """An empty file is no run store: the command says so and writes no schema into it."""
        empty = tmp_path / "empty.db"
        empty.touch()
        err = cli_error(capsys, "runs", "list", str(empty))
        assert err == (
            f"stageflow: error: run store {str(empty)!r} is not a stageflow run store: it holds no tables; "
            "pass the path of a new file (or of one an earlier SQLiteRunStore created), "
            "or move this file away\n"
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]
        assert empty.stat().st_size == 0

    def test_show_by_prefix_reads_through_the_index(self, tmp_path: Path) -> None:
        """A prefix lookup is an index search of the runs table, never a scan of every run."""
        store = SQLiteRunStore(write_store(tmp_path / "runs.db"))
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)
        assert [r.run_id for r in asyncio.run(store.find_runs("aaaa"))] == [r.run_id for r in RECORDS[:2]]
        store._conn.set_trace_callback(None)
        plans = [
            " | ".join(row[3] for row in store._conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            for sql in statements
            if sql.startswith("SELECT") and "FROM runs" in sql
        ]
        store.close()
        assert plans == [
            "SEARCH runs USING INDEX sqlite_autoindex_runs_1 (run_id>? AND run_id<?)",
        ]


class TestMalformedRows:
    @pytest.fixture(name="broken")
    def _broken(self, tmp_path: Path) -> str:
        db = write_store(tmp_path / "runs.db")
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE runs SET critical_path = 'not json' WHERE run_id = ?",
                ("aaaa0002-0000-0000-0000-000000000002",),
            )
        conn.close()
        return str(db)

    def test_list_reports_the_row_and_shows_the_rest(
        self, capsys: pytest.CaptureFixture[str], broken: str
    ) -> None:
        """``runs list`` names the malformed run on stderr and lists the others."""
        status, out, err = run_cli(capsys, "runs", "list", broken)
        assert status == 0
        assert [line.split()[0] for line in out.splitlines()[1:]] == [
            "cccc0004-0000-0000-0000-000000000004",
            "bbbb0003-0000-0000-0000-000000000003",
            "aaaa0001-0000-0000-0000-000000000001",
        ]
        assert err == (
            "stageflow: warning: stored run 'aaaa0002-0000-0000-0000-000000000002' is malformed: "
            "JSONDecodeError: Expecting value: line 1 column 1 (char 0); skipped\n"
        )

    def test_show_of_a_malformed_run_is_an_error(
        self, capsys: pytest.CaptureFixture[str], broken: str
    ) -> None:
        """``runs show`` of the malformed run says what is wrong with it, without a traceback."""
        assert run_cli(capsys, "runs", "show", broken, "aaaa0002") == (
            1,
            "",
            "stageflow: error: stored run 'aaaa0002-0000-0000-0000-000000000002' is malformed: "
            f"JSONDecodeError: Expecting value: line 1 column 1 (char 0) (in {broken!r}); the row was not "
            "written by stageflow or was changed since\n",
        )

    def test_report_skips_the_row(
        self, capsys: pytest.CaptureFixture[str], broken: str, tmp_path: Path
    ) -> None:
        """``report`` writes the other runs and names the malformed one."""
        out_file = tmp_path / "r.html"
        status, out, err = run_cli(capsys, "report", broken, "-o", str(out_file))
        assert (status, out) == (0, f"wrote {out_file} (3 runs)\n")
        assert err.startswith(
            "stageflow: warning: stored run 'aaaa0002-0000-0000-0000-000000000002' is malformed"
        )


class TestPostgres:
    def test_list_through_store_option_and_environment(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, pg_url: str, tmp_path: Path
    ) -> None:
        """``--store URL`` and ``$STAGEFLOW_STORE`` list what the SQLite file of the same runs lists."""
        fill_postgres(pg_url)
        sqlite = str(write_store(tmp_path / "runs.db"))
        expected = run_cli(capsys, "runs", "list", sqlite)
        assert run_cli(capsys, "runs", "list", "--store", pg_url) == expected
        monkeypatch.setenv("STAGEFLOW_STORE", pg_url)
        assert run_cli(capsys, "runs", "list") == expected

    def test_report_equals_the_sqlite_one(
        self, capsys: pytest.CaptureFixture[str], pg_url: str, tmp_path: Path
    ) -> None:
        """The HTML report of runs read from PostgreSQL is the SQLite one, but for the source it names and
        the time it was generated; dispatch, streams and first outputs included."""
        fill_postgres(pg_url, RECORDS + STREAMED)
        sqlite = str(write_store(tmp_path / "runs.db", RECORDS + STREAMED))
        assert run_cli(capsys, "report", sqlite, "-o", str(tmp_path / "s.html"))[0] == 0
        assert run_cli(capsys, "report", "--store", pg_url, "-o", str(tmp_path / "p.html"))[0] == 0
        shown = (
            pg_url.split("@")[0].split(":")[0]
            + "://"
            + pg_url.split("://")[1].split(":")[0]
            + "@"
            + pg_url.split("@")[1]
        )
        generated = re.compile(r"generated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
        from_sqlite = generated.sub(
            "generated NOW", (tmp_path / "s.html").read_text().replace(sqlite, "SOURCE")
        )
        from_postgres = generated.sub(
            "generated NOW", (tmp_path / "p.html").read_text().replace(shown, "SOURCE")
        )
        assert "SOURCE" in from_sqlite and "generated NOW" in from_sqlite
        assert from_sqlite.count('<line class="first-chunk"') == 6
        assert from_postgres == from_sqlite

    def test_show_prints_the_trace_and_a_jaeger_link(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, pg_url: str
    ) -> None:
        """``runs show`` prints the run's trace id, and a link to it when a Jaeger URL is configured."""
        record = replace(RECORDS[0], trace_id=TRACE)
        fill_postgres(pg_url, (record,))
        timeline = timeline_of_record(record, width=20)
        assert run_cli(
            capsys, "runs", "show", "aaaa", "--store", pg_url, "--width", "20", "--color", "never"
        ) == (
            0,
            f"{timeline}\n  trace: {TRACE}\n",
            "",
        )
        monkeypatch.setenv("STAGEFLOW_JAEGER_URL", "http://127.0.0.1:16686/")
        assert run_cli(
            capsys, "runs", "show", "aaaa", "--store", pg_url, "--width", "20", "--color", "never"
        ) == (
            0,
            f"{timeline}\n  trace: {TRACE}\n  jaeger: http://127.0.0.1:16686/trace/{TRACE}\n",
            "",
        )

    def test_a_wrong_password_is_reported_without_any_password(
        self, capsys: pytest.CaptureFixture[str], postgres: PostgresServer, pg_url: str
    ) -> None:
        """A wrong password is a one-line error that shows neither the given nor the real password."""
        wrong = pg_url.replace(postgres.password, "Wr0ng-S3cret")
        status, out, err = run_cli(capsys, "runs", "list", wrong)
        assert (status, out) == (1, "")
        assert err.startswith(
            f"stageflow: error: cannot connect to postgresql://stageflow@127.0.0.1:{postgres.port}/"
        )
        assert "Wr0ng-S3cret" not in err and postgres.password not in err

    def test_reading_a_database_without_the_schema_creates_nothing(
        self, capsys: pytest.CaptureFixture[str], postgres: PostgresServer, pg_url: str
    ) -> None:
        """A read command on a database without stageflow's schema says to migrate, and creates no table."""
        status, _, err = run_cli(capsys, "runs", "list", pg_url)
        name = pg_url.rsplit("/", 1)[1]
        assert (status, err) == (
            1,
            f"stageflow: error: database postgresql://stageflow@127.0.0.1:{postgres.port}/{name} has no "
            "stageflow schema; create it with `stageflow db migrate URL` (or a PostgresRunStore)\n",
        )
        with psycopg.connect(pg_url) as conn:
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)

    def test_db_migrate(
        self, capsys: pytest.CaptureFixture[str], postgres: PostgresServer, pg_url: str
    ) -> None:
        """``db migrate`` creates the schema once, then says it is current."""
        shown = f"postgresql://stageflow@127.0.0.1:{postgres.port}/{pg_url.rsplit('/', 1)[1]}"
        assert run_cli(capsys, "db", "migrate", pg_url) == (
            0,
            f"{shown}: stageflow schema version 0 → 4\n",
            "",
        )
        assert run_cli(capsys, "db", "migrate", "--store", pg_url) == (
            0,
            f"{shown}: stageflow schema version 4 is current\n",
            "",
        )
        assert run_cli(capsys, "runs", "list", pg_url) == (0, f"no runs in {shown!r}\n", "")

    def test_db_migrate_creates_a_sqlite_store(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """``db migrate PATH`` creates a SQLite run store with the current schema."""
        path = tmp_path / "new.db"
        assert run_cli(capsys, "db", "migrate", str(path)) == (
            0,
            f"created run store {str(path)!r}: schema version 5\n",
            "",
        )

    def test_the_store_given_twice_or_never(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A store given both as DB and --store, or not at all, is an error that says what to pass."""
        assert run_cli(capsys, "runs", "list", "a.db", "--store", "postgresql://u:hunter2@h/d") == (
            1,
            "",
            "stageflow: error: give the run store once: as DB ('a.db') or as --store ('postgresql://u@h/d'), "
            "not both\n",
        )
        assert run_cli(capsys, "runs", "list") == (
            1,
            "",
            "stageflow: error: no run store given: pass a SQLite file or a postgresql:// URL as DB or "
            "--store, or set STAGEFLOW_STORE\n",
        )
