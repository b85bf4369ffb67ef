"""Run store details outside the conformance suite: malformed rows by value, observers, readers, events."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from stageflow import (
    InMemoryRunStore,
    MalformedRunError,
    OutcomeCategory,
    RunRecord,
    RunStoreWrite,
    SQLiteRunStore,
    StageRecord,
    current_run_trace_id,
    reset_run_trace_id,
    set_run_trace_id,
)
from stageflow._store import _MIGRATIONS, _SCHEMA, storable_text
from tests.adapters import _version4 as version4

T0 = 1_780_000_000.0


def record(run_id: str = "r", pipeline: str = "p") -> RunRecord:
    return RunRecord(
        run_id,
        pipeline,
        "completed",
        T0,
        T0 + 1,
        (StageRecord("a", "work", "ok", T0, T0 + 1, 0.0, 1),),
        ("a",),
    )


@pytest.fixture(name="sqlite")
def _sqlite(tmp_path: Path) -> SQLiteRunStore:
    store = SQLiteRunStore(tmp_path / "runs.db")
    asyncio.run(store.record_run(record()))
    return store


class TestMalformedRows:
    @pytest.mark.parametrize(
        ("table", "column", "value", "problem"),
        [
            ("runs", "pipeline", b"p", "TypeError: pipeline is b'p', not text"),
            ("runs", "started_at", "soon", "TypeError: started_at is 'soon', not a number"),
            ("stages", "attempts", 1.5, "TypeError: stage attempts is 1.5, not a whole number"),
            (
                "runs",
                "critical_path",
                '{"a": 1}',
                "ValueError: critical_path is '{\"a\": 1}', not a list of names",
            ),
            ("stages", "dispatch", "soon", "TypeError: stage dispatch is 'soon', not a number"),
            ("stages", "work", b"stopped", "TypeError: stage work is b'stopped', not text"),
            ("stages", "chunks", 2.5, "TypeError: stage chunks is 2.5, not a whole number"),
            (
                "stages",
                "time_to_first_chunk",
                "x",
                "TypeError: stage time_to_first_chunk is 'x', not a number",
            ),
            (
                "runs",
                "first_output_path",
                '[["a"]]',
                "ValueError: first_output_path is '[[\"a\"]]', not a list of [stage, seconds] pairs",
            ),
            (
                "stages",
                "category",
                "oops",
                "ValueError: stage 'a' category is 'oops', not one of success, failure, error, timeout, "
                "cancellation, skip",
            ),
            ("runs", "category", b"timeout", "TypeError: category is b'timeout', not text"),
            (
                "runs",
                "not_started",
                '"b"',
                "ValueError: not_started is '\"b\"', not a list of names",
            ),
        ],
        ids=[
            "text",
            "number",
            "whole-number",
            "names",
            "dispatch",
            "work",
            "chunks",
            "ttfc",
            "first-output",
            "stage-category",
            "run-category",
            "not-started",
        ],
    )
    async def test_a_bad_value_is_named(
        self, sqlite: SQLiteRunStore, table: str, column: str, value: object, problem: str
    ) -> None:
        """A value of the wrong type raises MalformedRunError naming the run, the column and the value."""
        sqlite._conn.execute(f"UPDATE {table} SET {column} = ?", (value,))
        with pytest.raises(MalformedRunError) as info:
            await sqlite.get_run("r")
        assert (info.value.run_id, str(info.value)) == ("r", f"stored run 'r' is malformed: {problem}")
        sqlite.close()

    async def test_listing_logs_and_skips_without_a_problems_list(
        self, sqlite: SQLiteRunStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Without ``problems=``, list_runs logs each malformed run and returns the others."""
        await sqlite.record_run(record("s"))
        sqlite._conn.execute("UPDATE runs SET status = ? WHERE run_id = 'r'", (b"ok",))
        with caplog.at_level(logging.WARNING, logger="stageflow"):
            assert [r.run_id for r in await sqlite.list_runs()] == ["s"]
        assert [r.getMessage() for r in caplog.records] == [
            "stageflow: stored run 'r' is malformed: TypeError: status is b'ok', not text; skipped"
        ]
        sqlite.close()


class TestObservers:
    async def test_an_observer_that_raises_is_logged_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An observer's exception is logged once and never stops a write."""

        def broken(write: RunStoreWrite) -> None:
            raise RuntimeError("observer down")

        store = SQLiteRunStore(tmp_path / "runs.db", observer=broken)
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            await store.record_run(record("r"))
            await store.record_run(record("s"))
        assert [r.run_id for r in await store.list_runs()] == ["r", "s"]
        assert [r.getMessage() for r in caplog.records] == [
            f"stageflow: run store observer {broken!r} failed and is ignored: RuntimeError('observer down')"
        ]
        store.close()

    async def test_each_store_reports_its_kind(self, tmp_path: Path) -> None:
        """Stored writes report their store kind and no drop."""
        writes: list[RunStoreWrite] = []
        memory = InMemoryRunStore(observer=writes.append)
        sqlite = SQLiteRunStore(tmp_path / "runs.db", observer=writes.append)
        await memory.record_run(record())
        await sqlite.record_run(record())
        sqlite.close()
        assert [(w.store, w.dropped, w.duration >= 0) for w in writes] == [
            ("memory", None, True),
            ("sqlite", None, True),
        ]


class TestReaders:
    def test_a_reader_never_creates_a_file(self, tmp_path: Path) -> None:
        """``create=False`` on a missing path raises FileNotFoundError and leaves nothing behind."""
        with pytest.raises(FileNotFoundError) as info:
            SQLiteRunStore(tmp_path / "none.db", create=False)
        assert str(info.value) == f"no run store at {str(tmp_path / 'none.db')!r}: the file does not exist"
        assert list(tmp_path.iterdir()) == []

    async def test_a_reader_upgrades_an_older_schema(self, tmp_path: Path) -> None:
        """A version-2 file opened for reading gains the trace id column and the events table."""
        path = tmp_path / "v2.db"
        SQLiteRunStore(path).close()
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE events")
            conn.execute("ALTER TABLE runs DROP COLUMN trace_id")
            for column in ("first_output_path", "category", "not_started"):
                conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
            for column in ("dispatch", "work", "chunks", "time_to_first_chunk", "category"):
                conn.execute(f"ALTER TABLE stages DROP COLUMN {column}")
            conn.execute("PRAGMA user_version = 2")
        conn.close()
        reader = SQLiteRunStore(path, create=False)
        assert reader.schema_version == 5
        assert await reader.events_of("r") == []
        reader.close()

    @pytest.mark.parametrize("create", [True, False], ids=["writer", "reader"])
    async def test_a_version_3_file_gains_the_streaming_columns_and_keeps_its_runs(
        self, tmp_path: Path, create: bool
    ) -> None:
        """A file written by the version-3 schema is upgraded to version 5 when opened; its runs read back
        with no dispatch, no work outcome, no chunks and no first output, and new runs keep all four."""
        path = tmp_path / "v3.db"
        with sqlite3.connect(path) as conn:
            for statement in _SCHEMA + _MIGRATIONS[1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO runs VALUES ('old', 'p', 'completed', ?, ?, '[\"a\"]', NULL, NULL)", (T0, T0 + 1)
            )
            conn.execute(
                "INSERT INTO stages VALUES ('old', 0, 'a', 'work', 'ok', ?, ?, 0.0, 1, NULL, NULL, '[]')",
                (T0, T0 + 1),
            )
            conn.execute("PRAGMA user_version = 3")
        conn.close()
        store = SQLiteRunStore(path, create=create)
        assert store.schema_version == 5
        assert await store.get_run("old") == replace(
            record("old"),
            stages=(replace(record("old").stages[0], category="success"),),
            category="success",
        )
        new = replace(
            record("new"),
            stages=(
                replace(
                    record().stages[0], dispatch=0.125, work="abandoned", chunks=3, time_to_first_chunk=0.25
                ),
            ),
            first_output_path=(("a", 0.25),),
        )
        await store.record_run(new)
        assert await store.get_run("new") == new
        store.close()

    @pytest.mark.parametrize("create", [True, False], ids=["writer", "reader"])
    async def test_a_version_4_file_gains_categories_from_its_rows(
        self, tmp_path: Path, create: bool
    ) -> None:
        """A file written by the version-4 schema is upgraded to version 5 when opened: each stored stage
        gets the category its status and error type name, each run its first failing stage's (success for
        a completed run, cancellation for a cancelled one, error for a failed one without a failed stage),
        and no run lists stages that never started; runs written afterwards keep the engine's categories."""
        path = tmp_path / "v4.db"
        with sqlite3.connect(path) as conn:
            for statement in _SCHEMA + _MIGRATIONS[1] + _MIGRATIONS[2]:
                conn.execute(statement)
            for run_id, status in version4.RUNS:
                conn.execute(
                    "INSERT INTO runs VALUES (?, 'p', ?, ?, ?, '[]', NULL, NULL, '[]')",
                    (run_id, status, T0, T0 + 1),
                )
            for position, (run_id, status, error_type) in enumerate(version4.STAGES):
                conn.execute(
                    "INSERT INTO stages VALUES (?, ?, ?, 'work', ?, ?, ?, 0.0, 1, NULL, ?, '[]', 0, NULL, 0, "
                    "NULL)",
                    (run_id, position, f"s{position}", status, T0, T0 + 1, error_type),
                )
            conn.execute("PRAGMA user_version = 4")
        conn.close()
        store = SQLiteRunStore(path, create=create)
        assert store.schema_version == 5
        read = {r.run_id: r for r in await store.list_runs()}
        assert {run_id: (r.category, r.not_started) for run_id, r in read.items()} == version4.RUN_CATEGORIES
        assert [s.category for r in version4.RUNS for s in read[r[0]].stages] == version4.STAGE_CATEGORIES
        assert all(type(s.category) is OutcomeCategory for r in read.values() for s in r.stages)
        new = replace(
            record("new"),
            stages=(replace(record().stages[0], category=OutcomeCategory.SKIP),),
            category=OutcomeCategory.SUCCESS,
            not_started=("b", "c"),
        )
        await store.record_run(new)
        assert await store.get_run("new") == new
        store.close()

    async def test_pipelines_are_listed_once_in_order(self, tmp_path: Path) -> None:
        """``pipelines()`` names each pipeline with runs once, in order, in both local stores."""
        memory, sqlite = InMemoryRunStore(), SQLiteRunStore(tmp_path / "runs.db")
        for store in (memory, sqlite):
            for run_id, pipeline in (("1", "b"), ("2", "a"), ("3", "b")):
                await store.record_run(record(run_id, pipeline))
        assert (await memory.pipelines(), await sqlite.pipelines()) == (["a", "b"], ["a", "b"])
        sqlite.close()


class TestText:
    @pytest.mark.parametrize(
        ("text", "stored"),
        [
            ("plain", "plain"),
            ("nul\x00", "nul\\x00"),
            ("é ok", "é ok"),
            ("é\x00", "é\\x00"),
            ("\udc80é", "\\udc80é"),
        ],
        ids=["ascii", "ascii-nul", "unicode", "unicode-nul", "surrogate"],
    )
    def test_storable_text(self, text: str, stored: str) -> None:
        """Only NUL and lone surrogates change, written as escapes."""
        assert storable_text(text) == stored

    def test_trace_id_context(self) -> None:
        """``set_run_trace_id`` names the current context's trace until reset."""
        assert current_run_trace_id() is None
        token = set_run_trace_id("ab" * 16)
        assert current_run_trace_id() == "ab" * 16
        reset_run_trace_id(token)
        assert current_run_trace_id() is None

    @pytest.mark.parametrize("timeout", [0, float("inf"), float("nan")], ids=["zero", "infinite", "nan"])
    def test_bad_timeout_is_refused(self, tmp_path: Path, timeout: float) -> None:
        """A timeout that is not finite positive seconds is refused, naming it (inf used to overflow)."""
        with pytest.raises(ValueError) as info:
            SQLiteRunStore(tmp_path / "x.db", timeout=timeout)
        assert (
            str(info.value)
            == f"SQLiteRunStore timeout={timeout!r} is invalid; use a finite number of seconds > 0"
        )


class TestWithoutTheExtra:
    @pytest.mark.parametrize("what", ["PostgresRunStore", "DatabaseEventSink"])
    def test_the_missing_extra_is_named(self, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
        """Without psycopg, a PostgreSQL store or sink says which extra to install."""
        import stageflow

        monkeypatch.setitem(sys.modules, "psycopg", None)
        with pytest.raises(ImportError) as info:
            getattr(stageflow, what)("postgresql://u@127.0.0.1/d")
        assert str(info.value) == (
            f"{what} needs psycopg 3 and psycopg-pool: pip install 'stageflow-core[postgres]'"
        )
