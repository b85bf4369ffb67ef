"""Eight OS processes write 2,000 runs each into one PostgreSQL database at once."""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.synchronize import Barrier
from typing import cast

import psycopg

from stageflow import Pipeline, PostgresRunStore, StageContext, StageKind, StageOutput
from tests._support import make_ctx

PROCESSES = 8
RUNS = 2_000


async def _ok(ctx: StageContext) -> StageOutput:
    return StageOutput.ok()


async def _write_runs(url: str, count: int) -> tuple[list[str], dict[str, int]]:
    pipeline = (
        Pipeline(name="many")
        .with_stage("a", _ok, StageKind.TRANSFORM)
        .with_stage("b", _ok, StageKind.ENRICH, dependencies=("a",))
        .with_stage("c", _ok, StageKind.WORK, dependencies=("a",))
    )
    # a bound no loaded machine reaches: this test is about lost and doubled writes, not latency
    async with PostgresRunStore(url, record_timeout=120, connect_timeout=120) as store:
        graph = pipeline.build(run_store=store)
        ids: list[str] = []
        for _ in range(0, count, 50):
            results = await asyncio.gather(*(graph.run(make_ctx()) for _ in range(50)))
            ids += [str(r.run_id) for r in results]
        return ids, dict(store.dropped)


def _writer(url: str, count: int, barrier: Barrier, results: multiprocessing.Queue[object]) -> None:
    barrier.wait(timeout=600)
    try:
        results.put(asyncio.run(_write_runs(url, count)))
    except BaseException as exc:  # the parent reports it
        results.put(repr(exc))


def test_every_run_of_eight_processes_is_stored_exactly_once(pg_url: str) -> None:
    """16,000 runs from 8 processes writing at once: each stored once, none lost, no process failed."""
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(PROCESSES)
    queue: multiprocessing.Queue[object] = spawn.Queue()
    workers = [spawn.Process(target=_writer, args=(pg_url, RUNS, barrier, queue)) for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    outcomes = [queue.get(timeout=1_800) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert [o for o in outcomes if not isinstance(o, tuple)] == []
    done = cast("list[tuple[list[str], dict[str, int]]]", outcomes)
    written = sorted(run_id for ids, _ in done for run_id in ids)
    assert [dropped for _, dropped in done] == [{"timeout": 0, "unavailable": 0, "error": 0}] * PROCESSES
    assert len(written) == len(set(written)) == PROCESSES * RUNS
    with psycopg.connect(pg_url) as conn:
        stored = [run_id for (run_id,) in conn.execute("SELECT run_id FROM stageflow_runs ORDER BY run_id")]
        stages = conn.execute(
            "SELECT count(*), count(DISTINCT (run_id, name)) FROM stageflow_stages"
        ).fetchone()
    assert stored == written
    assert stages == (3 * PROCESSES * RUNS, 3 * PROCESSES * RUNS)
    assert [w.exitcode for w in workers] == [0] * PROCESSES
