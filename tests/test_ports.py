"""Ports: run stores (in-memory and SQLite) and configuration providers."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from uuid import UUID

import pytest

from stageflow import (
    ConfigError,
    DictConfigProvider,
    EnvConfigProvider,
    InMemoryRunStore,
    Pipeline,
    PipelineCancelledError,
    PipelineFailedError,
    RunRecord,
    SQLiteRunStore,
    StageOutput,
    StageRecord,
    TimeoutInterceptor,
)
from stageflow._config import config_value

from ._stages import W, boom, diamond, hang_once_started, ok
from ._support import cancel_once_started, make_ctx, output_stage


@pytest.fixture(name="sqlite_store")
def _sqlite_store(tmp_path: Path) -> SQLiteRunStore:
    return SQLiteRunStore(tmp_path / "runs.db")


def write_sqlite(path: Path, *scripts: str) -> None:
    """A SQLite database at ``path`` as ``scripts`` leave it, run in turn and committed."""
    conn = sqlite3.connect(path)
    for script in scripts:
        conn.executescript(script)
    conn.commit()
    conn.close()


def shape(record: RunRecord) -> tuple[str, str, list[tuple[str, str, str, int, str | None, str | None]]]:
    """The parts of a record that do not depend on the clock."""
    return (
        record.pipeline,
        record.status,
        [(s.name, s.kind, s.status, s.attempts, s.error, s.error_type) for s in record.stages],
    )


class TestRunStores:
    @pytest.mark.parametrize("kind", ["memory", "sqlite"], ids=["memory", "sqlite"])
    async def test_completed_run_round_trip(self, kind: str, tmp_path: Path) -> None:
        """A completed run is recorded with its stages, timing and critical path."""
        store = InMemoryRunStore() if kind == "memory" else SQLiteRunStore(tmp_path / "r.db")
        results = await diamond().build(run_store=store).run(make_ctx())
        record = await store.get_run(results.run_id)
        assert record is not None
        assert record.run_id == str(results.run_id)
        assert shape(record) == (
            "demo",
            "completed",
            [(name, results[name].kind.value, "ok", 1, None, None) for name in results],
        )
        assert record.critical_path == results.critical_path
        assert record.critical_path[0] == "a" and record.critical_path[-1] == "d"
        assert record.error is None
        for stage in record.stages:
            assert record.started_at <= stage.started_at <= stage.ended_at <= record.ended_at
            assert stage.wait == pytest.approx(results[stage.name].wait)
        assert record.duration == pytest.approx(results.duration, abs=1e-5)
        assert record.stage("d").name == "d"
        assert await store.get_run(UUID(int=0)) is None

    async def test_failed_run_is_recorded_with_its_error(self, sqlite_store: SQLiteRunStore) -> None:
        """A failed run is recorded as failed, with the failing stage's error and type."""
        graph = (
            Pipeline(name="f").with_stage("a", ok, W).with_stage("boom", boom, W, dependencies=("a",))
        ).build(run_store=sqlite_store)
        ctx = make_ctx()
        with pytest.raises(PipelineFailedError):
            await graph.run(ctx)
        record = await sqlite_store.get_run(ctx.snapshot.run_id.pipeline_run_id)
        assert record is not None
        assert shape(record) == (
            "f",
            "failed",
            [("a", "work", "ok", 1, None, None), ("boom", "work", "fail", 1, "kaput", "RuntimeError")],
        )
        assert record.error == "boom: RuntimeError: kaput"

    async def test_cancelled_runs_are_recorded(self, sqlite_store: SQLiteRunStore) -> None:
        """Runs cancelled by a stage or by the caller are recorded as cancelled with the reason."""
        by_stage = (
            Pipeline(name="c")
            .with_stage("stop", output_stage(StageOutput.cancel, "user hung up"), W)
            .build(run_store=sqlite_store)
        )
        ctx = make_ctx()
        with pytest.raises(PipelineCancelledError):
            await by_stage.run(ctx)
        record = await sqlite_store.get_run(ctx.snapshot.pipeline_run_id)
        assert record is not None and (record.status, record.error) == ("cancelled", "stop: user hung up")

        started = asyncio.Event()
        by_caller = (
            Pipeline(name="c").with_stage("w", hang_once_started(started), W).build(run_store=sqlite_store)
        )
        ctx = make_ctx()
        await cancel_once_started(by_caller.run(ctx), started)
        record = await sqlite_store.get_run(ctx.snapshot.pipeline_run_id)
        assert record is not None
        assert shape(record) == ("c", "cancelled", [("w", "work", "cancel", 1, None, None)])
        assert record.error == "cancelled by caller"

    async def test_concurrent_runs_into_one_sqlite_store(self, tmp_path: Path) -> None:
        """Fifty concurrent runs of two pipelines are all recorded, none mixed up."""
        store = SQLiteRunStore(tmp_path / "many.db")
        graphs = [diamond("left").build(run_store=store), diamond("right").build(run_store=store)]
        results = await asyncio.gather(*(graphs[i % 2].run(make_ctx()) for i in range(50)))
        runs = await store.list_runs(limit=1000)
        assert sorted(r.run_id for r in runs) == sorted(str(r.run_id) for r in results)
        assert all(
            [s.name for s in r.stages] == list(next(x for x in results if str(x.run_id) == r.run_id))
            for r in runs
        )
        assert len(await store.list_runs(pipeline="left", limit=1000)) == 25
        assert len(await store.list_runs(limit=7)) == 7
        starts = [r.started_at for r in runs]
        assert starts == sorted(starts, reverse=True)
        store.close()

    def test_sqlite_schema_is_versioned_and_uses_wal(self, tmp_path: Path) -> None:
        """A new database gets schema version 5 in WAL mode, and reopening it keeps it."""
        path = tmp_path / "v.db"
        store = SQLiteRunStore(path)
        assert store.schema_version == 5
        store.close()
        again = SQLiteRunStore(path)
        assert again.schema_version == 5
        again.close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()

    async def test_version_1_database_is_migrated(self, tmp_path: Path) -> None:
        """A version-1 database gains the dependencies and trace id columns; its old runs read back with
        neither."""
        path = tmp_path / "v1.db"
        write_sqlite(
            path,
            V1_SCHEMA,
            "INSERT INTO runs VALUES ('r', 'p', 'completed', 1.0, 2.0, '[\"a\"]', NULL)",
            "INSERT INTO stages VALUES ('r', 0, 'a', 'work', 'ok', 1.0, 2.0, 0.0, 1, NULL, NULL)",
        )
        store = SQLiteRunStore(path)
        assert store.schema_version == 5
        old = await store.get_run("r")
        assert old is not None
        assert old.stages == (StageRecord("a", "work", "ok", 1.0, 2.0, 0.0, 1, category="success"),)
        graph = diamond().build(run_store=store)
        results = await graph.run(make_ctx())
        new = await store.get_run(results.run_id)
        assert new is not None
        assert [(s.name, s.dependencies) for s in new.stages] == [
            ("a", ()),
            ("b", ("a",)),
            ("c", ("a",)),
            ("d", ("b", "c")),
        ]
        store.close()

    def test_newer_schema_is_refused(self, tmp_path: Path) -> None:
        """A database written by a newer schema is refused with a clear message."""
        path = tmp_path / "new.db"
        write_sqlite(path, "PRAGMA user_version = 9")
        with pytest.raises(RuntimeError) as info:
            SQLiteRunStore(path)
        assert str(info.value) == (
            f"run store {str(path)!r} has schema version 9, newer than 5 which this stageflow understands; "
            "upgrade stageflow or use another file"
        )

    async def test_failing_store_never_changes_the_run(self, caplog: pytest.LogCaptureFixture) -> None:
        """A store that raises is logged once, and every run still returns its results."""

        class BrokenStore(InMemoryRunStore):
            async def record_run(self, record: RunRecord) -> None:
                raise OSError("disk full")

        store = BrokenStore()
        graph = diamond().build(run_store=store)
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            for _ in range(3):
                results = await graph.run(make_ctx())
                assert list(results) == ["a", "b", "c", "d"]
        assert [r.getMessage() for r in caplog.records] == [
            f"stageflow: run store {store!r} failed and is ignored: OSError('disk full')"
        ]

    def test_record_stage_lookup_names_missing_stage(self) -> None:
        """Asking a record for a stage it lacks names the stages it has."""
        record = RunRecord("r1", "p", "completed", 0.0, 1.0, (StageRecord("a", "work", "ok", 0, 1, 0, 1),))
        with pytest.raises(KeyError, match=r"run 'r1' has no stage 'zz'; it has \['a'\]"):
            record.stage("zz")


class TestConfigProviders:
    def test_env_provider_maps_keys_to_variables(self) -> None:
        """Dotted keys become upper-case, underscore-separated variables under the prefix."""
        provider = EnvConfigProvider(environ={"STAGEFLOW_TIMEOUT_LLM_V2": "12"})
        assert provider.variable("timeout.llm-v2") == "STAGEFLOW_TIMEOUT_LLM_V2"
        assert provider.get("timeout.llm-v2") == "12"
        assert provider.get("timeout.other", "d") == "d"

    def test_env_provider_reads_os_environ(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without an explicit mapping the provider reads os.environ at each get."""
        provider = EnvConfigProvider(prefix="APP_")
        monkeypatch.setenv("APP_RETRY_MAX_ATTEMPTS", "4")
        assert provider.get("retry.max_attempts") == "4"

    def test_dict_provider(self) -> None:
        """The dict provider returns stored values and defaults."""
        provider = DictConfigProvider({"timeout.default": 3})
        assert (provider.get("timeout.default"), provider.get("nope", 1)) == (3, 1)

    @pytest.mark.parametrize(
        ("raw", "kind", "expected"),
        [("3", int, 3), (" 2.5 ", float, 2.5), (4, float, 4.0), ("", int, 99), (None, float, 99.0)],
        ids=["int-str", "float-str", "int-as-float", "empty", "missing"],
    )
    def test_config_value_converts(self, raw: object, kind: type, expected: object) -> None:
        """Values are converted to the key's type; empty or missing values give the default."""
        provider = DictConfigProvider({} if raw is None else {"k": raw})
        assert config_value(provider, "k", kind, kind(99)) == expected

    def test_bad_value_names_key_and_value(self) -> None:
        """A value that cannot be converted raises ConfigError naming the key and the value."""
        with pytest.raises(ConfigError) as info:
            config_value(DictConfigProvider({"retry.max_attempts": "three"}), "retry.max_attempts", int, 1)
        assert (
            str(info.value)
            == "configuration 'retry.max_attempts' = 'three' is not a valid int; fix or unset it"
        )
        assert isinstance(info.value, ValueError)

    def test_bad_environment_value_names_the_variable(self) -> None:
        """A bad value read from the environment is reported by the variable the user set."""
        provider = EnvConfigProvider(environ={"STAGEFLOW_TIMEOUT_DEFAULT": "5s"})
        with pytest.raises(ConfigError) as info:
            TimeoutInterceptor(config=provider)
        assert (str(info.value), info.value.key, info.value.variable) == (
            "environment variable STAGEFLOW_TIMEOUT_DEFAULT='5s' (configuration 'timeout.default') is not a "
            "valid number; fix or unset STAGEFLOW_TIMEOUT_DEFAULT",
            "timeout.default",
            "STAGEFLOW_TIMEOUT_DEFAULT",
        )


V1_SCHEMA = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, status TEXT NOT NULL,
    started_at REAL NOT NULL, ended_at REAL NOT NULL, critical_path TEXT NOT NULL, error TEXT);
CREATE INDEX runs_by_pipeline ON runs (pipeline, started_at);
CREATE INDEX runs_by_start ON runs (started_at);
CREATE TABLE stages (run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    position INTEGER NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
    started_at REAL NOT NULL, ended_at REAL NOT NULL, wait REAL NOT NULL, attempts INTEGER NOT NULL,
    error TEXT, error_type TEXT, PRIMARY KEY (run_id, name));
PRAGMA user_version = 1;
"""
