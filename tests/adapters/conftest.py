"""Adapter test fixtures: a throwaway PostgreSQL server (one per session), one store of each kind."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stageflow import InMemoryRunStore, PostgresRunStore, SQLiteRunStore
from tests._postgres import MISSING_BINARIES, PostgresServer, find_binaries, postgres_server

_databases = itertools.count(1)


@pytest.fixture(name="postgres", scope="session")
def _postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server started from Debian's binaries for the whole session."""
    if find_binaries() is None:
        pytest.skip(MISSING_BINARIES)
    with postgres_server() as server:
        yield server


@pytest.fixture(name="pg_url")
def _pg_url(postgres: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres.create_database(f"test_{next(_databases)}")


@pytest.fixture(name="store", params=["memory", "sqlite", "postgresql"])
async def _store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[InMemoryRunStore | SQLiteRunStore | PostgresRunStore]:
    """A fresh, empty run store of each kind."""
    if request.param == "memory":
        yield InMemoryRunStore()
    elif request.param == "sqlite":
        sqlite = SQLiteRunStore(tmp_path / "runs.db")
        yield sqlite
        sqlite.close()
    else:
        url: str = request.getfixturevalue("pg_url")
        async with PostgresRunStore(url) as postgres:
            yield postgres
