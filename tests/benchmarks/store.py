"""Run stores side by side: SQLite and PostgreSQL, measured in the same run.

Run it (from the repository root; PostgreSQL's binaries must be installed, the benchmark starts its own
throwaway server as the tests do)::

    .venv/bin/python -m tests.benchmarks.store            # full run (about a minute)
    .venv/bin/python -m tests.benchmarks.store --quick    # fast smoke run
    .venv/bin/python -m tests.benchmarks.store --json out.json

What is measured, for each store:

* ``record p50 / p99``: the latency of ``record_run`` for a 10-stage run, one write at a time (the
  executor's view: the time it awaits the store);
* ``runs/s, 8 processes``: 8 OS processes each writing ``process_runs`` runs (10 stages each, 16 writes in
  flight per process) into one database or file at once; total runs over the wall time from the moment all
  started to the last one finishing;
* ``events/s``: ``DatabaseEventSink.try_emit`` of ``events`` events (the size of an executor event) then
  ``flush()``; events over the time from the first emit to the end of the flush;
* ``bytes per run``: the store's size on disk (PostgreSQL: the runs' and stages' partitions with their
  indexes; SQLite: the file after a checkpoint) over the runs it holds.

The PostgreSQL server is the test server: loopback TCP, ``fsync=off`` (a throwaway server; a production
server with ``fsync`` pays one WAL flush per commit). Compare the two stores within one run, not figures
across machines.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg

from stageflow import DatabaseEventSink, PostgresRunStore, RunRecord, SQLiteRunStore, StageRecord
from tests._postgres import postgres_server
from tests.benchmarks import _common

__all__ = ("Settings", "run_benchmark")

STAGES = 10


@dataclass(frozen=True)
class Settings(
    _common.Presets,
    quick={"latency_runs": 200, "processes": 8, "process_runs": 100, "events": 10_000},
    smallest={"latency_runs": 20, "processes": 2, "process_runs": 10, "events": 200},
):
    """How much to measure."""

    latency_runs: int = 2_000
    processes: int = 8
    process_runs: int = 1_000
    events: int = 100_000


def ten_stage_run(start: float | None = None) -> RunRecord:
    """A completed run of a 10-stage chain, as the executor records it."""
    t0 = time.time() if start is None else start
    stages = tuple(
        StageRecord(
            f"stage_{i}",
            "transform",
            "ok",
            t0 + i * 0.01,
            t0 + (i + 1) * 0.01,
            0.0001,
            1,
            dependencies=() if i == 0 else (f"stage_{i - 1}",),
        )
        for i in range(STAGES)
    )
    return RunRecord(
        str(uuid4()), "bench", "completed", t0, t0 + STAGES * 0.01, stages, tuple(s.name for s in stages)
    )


def _open(target: str) -> SQLiteRunStore | PostgresRunStore:
    if target.startswith("postgresql://"):
        return PostgresRunStore(target, record_timeout=60, connect_timeout=60)
    return SQLiteRunStore(target, timeout=60)


async def _close(store: SQLiteRunStore | PostgresRunStore) -> None:
    if isinstance(store, PostgresRunStore):
        await store.aclose()
    else:
        store.close()


async def _latency(target: str, runs: int) -> tuple[float, float]:
    store = _open(target)
    try:
        await store.record_run(ten_stage_run())  # schema, partition, connection: not measured
        samples = []
        for _ in range(runs):
            record = ten_stage_run()
            started = time.perf_counter()
            await store.record_run(record)
            samples.append(time.perf_counter() - started)
    finally:
        await _close(store)
    samples.sort()
    return statistics.median(samples) * 1e3, samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3


async def _write_many(target: str, runs: int) -> None:
    store = _open(target)
    try:
        pending: set[asyncio.Task[None]] = set()
        for _ in range(runs):
            if len(pending) >= 16:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending.add(asyncio.ensure_future(store.record_run(ten_stage_run())))
        await asyncio.gather(*pending)
        dropped = getattr(store, "dropped", {})
        if any(dropped.values()):
            msg = f"{store!r} dropped runs: {dropped}"
            raise RuntimeError(msg)
    finally:
        await _close(store)


def _writer(target: str, runs: int, barrier: Barrier, done: multiprocessing.Queue[Any]) -> None:
    barrier.wait(timeout=600)
    try:
        asyncio.run(_write_many(target, runs))
        done.put((time.perf_counter(), None))
    except BaseException as exc:
        done.put((time.perf_counter(), repr(exc)))


def _processes(target: str, processes: int, runs: int) -> float:
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(processes + 1)
    done: multiprocessing.Queue[Any] = spawn.Queue()
    workers = [spawn.Process(target=_writer, args=(target, runs, barrier, done)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    barrier.wait(timeout=600)
    started = time.perf_counter()
    ends = [done.get(timeout=3_600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    failures = [error for _, error in ends if error is not None]
    if failures:
        msg = f"writers failed: {failures}"
        raise RuntimeError(msg)
    finished: float = max(end for end, _ in ends)
    return processes * runs / (finished - started)


async def _events(target: str, events: int) -> tuple[float, int, dict[str, int]]:
    sink = DatabaseEventSink(
        target, queue_size=events, batch_size=5_000, write_timeout=60, connect_timeout=60
    )
    sink.try_emit(type="pipeline.created", data={"run_id": "warm-up", "timestamp": time.time()})
    await sink.flush(timeout=60)  # schema, partition, connection: not measured
    run_id = str(uuid4())
    started = time.perf_counter()
    for i in range(events):
        sink.try_emit(
            type=f"stage.stage_{i % STAGES}.completed",
            data={
                "run_id": run_id,
                "pipeline": "bench",
                "timestamp": time.time(),
                "stage": f"stage_{i % STAGES}",
                "kind": "transform",
                "duration": 0.01,
                "wait": 0.0001,
                "attempts": 1,
            },
        )
    await sink.flush(timeout=600)
    elapsed = time.perf_counter() - started
    await sink.aclose()
    return events / elapsed, sink.stored - 1, dict(sink.dropped)


def _bytes_per_run(target: str) -> tuple[int, int]:
    if target.startswith("postgresql://"):
        with psycopg.connect(target) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM stageflow_runs), "
                "coalesce(sum(pg_total_relation_size(c.oid)), 0) "
                "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent IN ('stageflow_runs'::regclass, 'stageflow_stages'::regclass)"
            ).fetchone()
        assert row is not None
        runs, size = int(row[0]), int(row[1])
    else:
        with _sqlite(target) as conn:
            runs = int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = Path(target).stat().st_size
    return runs, size


def _sqlite(target: str) -> Any:
    import sqlite3
    from contextlib import closing

    return closing(sqlite3.connect(target))


def _measure(name: str, target: str, settings: Settings) -> dict[str, Any]:
    p50, p99 = asyncio.run(_latency(target, settings.latency_runs))
    rate = _processes(target, settings.processes, settings.process_runs)
    events_per_s, stored, dropped = asyncio.run(_events(target, settings.events))
    runs, size = _bytes_per_run(target)
    return {
        "store": name,
        "record_p50_ms": round(p50, 3),
        "record_p99_ms": round(p99, 3),
        "runs_per_s_8_processes": round(rate, 1),
        "events_per_s": round(events_per_s, 1),
        "events_stored": stored,
        "events_dropped": dropped,
        "runs_stored": runs,
        "bytes_per_run": round(size / runs) if runs else 0,
    }


def run_benchmark(settings: Settings) -> dict[str, Any]:
    """Measure both stores; a JSON-ready report."""
    results = []
    with tempfile.TemporaryDirectory(prefix="stageflow-store-bench-") as scratch:
        results.append(_measure("sqlite", os.path.join(scratch, "runs.db"), settings))
        with postgres_server() as server:
            results.append(_measure("postgresql", server.create_database("bench"), settings))
    return {"settings": asdict(settings), "stages_per_run": STAGES, "results": results}


def _table(report: dict[str, Any]) -> str:
    rows = [("", *(r["store"] for r in report["results"]))]
    for key, label in (
        ("record_p50_ms", "record p50 (ms)"),
        ("record_p99_ms", "record p99 (ms)"),
        ("runs_per_s_8_processes", "runs/s, 8 processes"),
        ("events_per_s", "events/s"),
        ("bytes_per_run", "bytes per run"),
    ):
        rows.append((label, *(f"{r[key]:,}" for r in report["results"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    args = _common.parser(__doc__, quick="a fast smoke run").parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    report = run_benchmark(settings)
    return _common.publish(_table(report), report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
