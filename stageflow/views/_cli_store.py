"""The ``stageflow`` command's access to run stores: a SQLite file or a PostgreSQL URL, read without writing.

A read command never creates anything: a SQLite path must name an existing run store (opened with
``create=False``), and a PostgreSQL database must already hold the schema (``migrate=False``; ``stageflow
db migrate URL`` creates or upgrades it). A PostgreSQL URL is shown without its password everywhere.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from stageflow._events import RecordedEvent
from stageflow._store import MalformedRunError, RunRecord, SQLiteRunStore

if TYPE_CHECKING:
    from stageflow.adapters._postgres import PostgresRunStore

__all__ = (
    "JAEGER_ENV",
    "STORE_ENV",
    "CommandError",
    "Found",
    "Location",
    "find_run",
    "is_url",
    "location",
    "migrate_store",
    "pipeline_names",
    "read_runs",
)

STORE_ENV = "STAGEFLOW_STORE"
"""The environment variable naming the run store when no ``DB`` argument or ``--store`` is given."""

JAEGER_ENV = "STAGEFLOW_JAEGER_URL"
"""The environment variable with Jaeger's UI address, for the trace links of ``runs show``."""

_T = TypeVar("_T")


class CommandError(Exception):
    """A command could not do its work; the message says why and what to do (exit status 1)."""


def is_url(target: str) -> bool:
    """Whether ``target`` is a PostgreSQL URL rather than a SQLite path."""
    return target.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True)
class Location:
    """Where the runs are: ``target`` to open, ``shown`` to print (a URL without its password)."""

    target: str
    shown: str

    @property
    def postgres(self) -> bool:
        return is_url(self.target)


def location(db: str | None, store: str | None) -> Location:
    """The run store named by the ``DB`` argument, ``--store``, or ``$STAGEFLOW_STORE``, in that order.

    Raises:
        CommandError: none or both of ``DB`` and ``--store`` were given and the environment names none.
    """
    if db is not None and store is not None:
        msg = f"give the run store once: as DB ({_shown(db)!r}) or as --store ({_shown(store)!r}), not both"
        raise CommandError(msg)
    target = db if db is not None else store if store is not None else os.environ.get(STORE_ENV) or None
    if target is None:
        msg = (
            "no run store given: pass a SQLite file or a postgresql:// URL as DB or --store, "
            f"or set {STORE_ENV}"
        )
        raise CommandError(msg)
    return Location(target, _shown(target))


def _shown(target: str) -> str:
    if not is_url(target):
        return target
    from stageflow.adapters._postgres import mask_dsn

    return mask_dsn(target)


_Store = Any  # SQLiteRunStore | PostgresRunStore: both offer the same reading methods


def _with_store(where: Location, use: Callable[[_Store], Awaitable[_T]]) -> _T:
    """``use(store)`` on the store at ``where``, opened for reading and closed afterwards."""
    if where.postgres:
        return asyncio.run(_with_postgres(where, use))
    try:
        store = SQLiteRunStore(where.target, create=False)
    except FileNotFoundError:
        msg = (
            f"no run store at {where.shown!r}: the file does not exist; record runs into it with "
            f"pipeline.build(run_store=SQLiteRunStore({where.shown!r}))"
        )
        raise CommandError(msg) from None
    except RuntimeError as exc:  # not a run store, or a newer schema
        raise CommandError(str(exc)) from exc
    try:
        return asyncio.run(_use(use, store))
    except sqlite3.DatabaseError as exc:
        msg = f"{where.shown!r} is not a stageflow run store: {exc}"
        raise CommandError(msg) from exc
    finally:
        store.close()


async def _use(use: Callable[[_Store], Awaitable[_T]], store: _Store) -> _T:
    return await use(store)


async def _with_postgres(where: Location, use: Callable[[_Store], Awaitable[_T]]) -> _T:
    try:
        from stageflow.adapters._postgres import PostgresRunStore, SchemaError, scrub
    except ImportError as exc:  # pragma: no cover - the package itself imports only the standard library
        raise CommandError(str(exc)) from None
    try:
        store: PostgresRunStore = PostgresRunStore(where.target, migrate=False, pool_size=1)
    except (ImportError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    from psycopg import Error as PsycopgError
    from psycopg_pool import PoolTimeout

    from stageflow.adapters._postgres import _password_of

    password = _password_of(where.target)
    try:
        return await use(store)
    except SchemaError as exc:
        raise CommandError(str(exc)) from None
    except PoolTimeout:
        msg = (
            f"cannot connect to {where.shown}: no connection within {store._db.connect_timeout:g} s (is the "
            "server up, and are the host, port, user and password right?)"
        )
        raise CommandError(msg) from None
    except PsycopgError as exc:
        msg = f"{where.shown}: {scrub(str(exc).strip(), password)}"
        raise CommandError(msg) from None
    finally:
        await store.aclose()


def read_runs(
    where: Location, pipeline: str | None, limit: int
) -> tuple[list[RunRecord], list[MalformedRunError]]:
    """The most recent runs, and the stored runs that could not be read (skipped)."""
    problems: list[MalformedRunError] = []

    async def read(store: _Store) -> list[RunRecord]:
        records: list[RunRecord] = await store.list_runs(pipeline=pipeline, limit=limit, problems=problems)
        return records

    return _with_store(where, read), problems


def pipeline_names(where: Location) -> list[str]:
    """The pipelines the store holds runs of, in name order."""

    async def read(store: _Store) -> list[str]:
        names: list[str] = await store.pipelines()
        return names

    return _with_store(where, read)


@dataclass(frozen=True)
class Found:
    """The run ``runs show`` found, and its stored events (when asked for)."""

    record: RunRecord
    events: list[RecordedEvent]


def find_run(where: Location, run_id: str, *, events: bool = False) -> Found:
    """The run with this id, or the one run whose id starts with it (an index lookup either way).

    Raises:
        CommandError: no run, several runs, or a malformed one.
    """

    async def find(store: _Store) -> Found | list[RunRecord]:
        record: RunRecord | None = await store.get_run(run_id)
        if record is None:
            problems: list[MalformedRunError] = []
            matches: list[RunRecord] = await store.find_runs(run_id, limit=6, problems=problems)
            if problems and not matches and len(problems) == 1:
                raise problems[0]
            if len(matches) + len(problems) != 1:
                return matches
            record = matches[0]
        stored: list[RecordedEvent] = await store.events_of(record.run_id) if events else []
        return Found(record, stored)

    try:
        found = _with_store(where, find)
    except MalformedRunError as exc:
        msg = f"{exc} (in {where.shown!r}); the row was not written by stageflow or was changed since"
        raise CommandError(msg) from None
    if isinstance(found, Found):
        return found
    if not found:
        msg = (
            f"no run {run_id!r} in {where.shown!r}; "
            f"`stageflow runs list {where.shown}` lists the runs it holds"
        )
        raise CommandError(msg)
    ids = ", ".join(r.run_id for r in found[:5])
    if len(found) > 5:
        msg = (
            f"run id prefix {run_id!r} matches more than 5 runs in {where.shown!r} ({ids}, ...); "
            "give more of it"
        )
    else:
        msg = (
            f"run id prefix {run_id!r} matches {len(found)} runs in {where.shown!r} ({ids}); give more of it"
        )
    raise CommandError(msg)


def migrate_store(target: str) -> str:
    """Create or upgrade the schema of the store at ``target``; what was done, for printing."""
    where = Location(target, _shown(target))
    if not where.postgres:
        try:
            existed = os.path.exists(target)
            store = SQLiteRunStore(target)
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        version = store.schema_version
        store.close()
        return f"{'upgraded' if existed else 'created'} run store {where.shown!r}: schema version {version}"
    from stageflow.adapters._postgres import POSTGRES_SCHEMA_VERSION

    async def run(store: _Store) -> int:
        before: int = await store.migrate()
        return before

    before = asyncio.run(_with_postgres(where, run))
    if before == POSTGRES_SCHEMA_VERSION:
        return f"{where.shown}: stageflow schema version {before} is current"
    return f"{where.shown}: stageflow schema version {before} → {POSTGRES_SCHEMA_VERSION}"
