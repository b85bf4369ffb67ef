"""Executor hops: what running a sync stage through stageflow costs over the bare hop, in the same process.

Run it (from the repository root)::

    .venv/bin/python -m tests.benchmarks.offload                  # full run (about 20 seconds)
    .venv/bin/python -m tests.benchmarks.offload --quick          # fast smoke run
    .venv/bin/python -m tests.benchmarks.offload --json out.json  # also write the figures as JSON

What is measured, each pair in the same event loop, on the same executor, with the same function
(``hop``: a module-level ``def hop(ctx)`` returning ``StageOutput.ok(x=1)``):

* **thread hop**: one run of a one-stage graph whose stage is ``hop`` (the graph's own thread pool) against
  ``await asyncio.to_thread(hop, ctx)``;
* **process hop**: the same graph with ``executor=`` a ``ProcessPoolExecutor`` of one worker process against
  ``await loop.run_in_executor(pool, hop, ctx)`` on that pool;
* **Dask hop**: the same graph with ``executor=client.get_executor()`` of a local cluster (one worker
  process, one thread, 127.0.0.1, no dashboard) against a bare ``client.submit(hop, ctx, pure=False)``
  awaited through its done callback;
* for each, a one-stage graph whose stage is ``async def`` (no hop), so the hop's own share of a run shows:
  ``graph - async graph`` is what the hop costs inside stageflow;
* **1,000 sync stages** (independent, each ``hop``) in one run of a graph built with ``max_threads=4``: wall
  time and stages per second.

Targets: each ``graph / bare`` ratio at most 1.2. Method: every variant warms up first; then ``reps``
repetitions, in each of which the variants of a pair run interleaved; a sample is ``hops`` sequential awaits,
timed with ``time.perf_counter`` (a hop waits on another thread or process, so its cost is wall time);
``gc.collect()`` before every sample. Figures are medians over the repetitions, ratios medians of the
per-repetition pairs; the best (minimum) samples are printed too: on a shared machine they are the least
disturbed by other processes. Every run gets a fresh entry context, made before its sample's clock starts.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from stageflow import Pipeline, StageContext, StageGraph, StageKind, StageOutput
from tests._support import local_dask_cluster, make_ctx
from tests.benchmarks import _common

__all__ = ("TARGET", "Settings", "format_report", "hop", "main", "run_benchmark")

TARGET = 1.2
"""The largest acceptable ``graph / bare`` ratio of a hop."""

T = StageKind.TRANSFORM


def hop(ctx: StageContext) -> StageOutput:
    """The sync function every hop runs."""
    return StageOutput.ok(x=1)


async def async_hop(ctx: StageContext) -> StageOutput:
    """The same body as an ``async def`` stage: a run without any hop."""
    return StageOutput.ok(x=1)


@dataclass(frozen=True, slots=True)
class Settings(
    _common.Presets,
    quick={"hops": 80, "reps": 3, "many_reps": 2},
    smallest={"hops": 4, "reps": 1, "stages": 20, "many_reps": 1},
):
    """How much to measure. ``quick``: a fast run, every figure, fewer repetitions and smaller samples;
    ``smallest``: every code path in a few seconds (the smoke test)."""

    hops: int = 200
    """Sequential awaits per sample (thread hops; process and Dask hops take ``hops // 4``)."""
    reps: int = 9
    stages: int = 1_000
    """Sync stages of the many-stages run."""
    threads: int = 4
    many_reps: int = 5


Sample = Callable[[], Awaitable[None]]


async def _timed(sample: Sample) -> float:
    gc.collect()
    start = time.perf_counter()
    await sample()
    return time.perf_counter() - start


def _hops(count: int, one: Callable[[StageContext], Awaitable[object]]) -> Sample:
    """``count`` sequential ``await one(ctx)``, each with a fresh entry context."""

    async def sample() -> None:
        contexts = [make_ctx() for _ in range(count)]
        for ctx in contexts:
            await one(ctx)

    return sample


def _graph_runs(graph: StageGraph, count: int) -> Sample:
    return _hops(count, graph.run)


def _to_thread(count: int) -> Sample:
    return _hops(count, lambda ctx: asyncio.to_thread(hop, ctx))


def _run_in_executor(pool: Executor, count: int) -> Sample:
    loop = asyncio.get_running_loop()
    return _hops(count, lambda ctx: loop.run_in_executor(pool, hop, ctx))


def _client_submit(client: Any, count: int) -> Sample:
    async def one(ctx: StageContext) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(_: Any) -> None:
            loop.call_soon_threadsafe(done.set_result, None)

        future = client.submit(hop, ctx, pure=False)
        future.add_done_callback(settle)
        await done
        future.result()

    return _hops(count, one)


async def _pair(
    name: str, variants: dict[str, Sample], reps: int, hops: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Time the variants interleaved; ``graph`` against ``bare``, and ``async graph`` for the hop's share."""
    for sample in variants.values():
        await sample()  # warm-up: pools started, code paths compiled
    times: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(reps):
        for key, sample in variants.items():
            times[key].append(await _timed(sample) / hops)
    log(f"{name}: done")
    us = {key: [t * 1e6 for t in values] for key, values in times.items()}
    ratios = [g / b for g, b in zip(us["graph"], us["bare"], strict=True)]
    shares = [(g - a) / b for g, a, b in zip(us["graph"], us["async graph"], us["bare"], strict=True)]
    return {
        "name": name,
        "hops_per_sample": hops,
        "us_per_hop": {key: statistics.median(values) for key, values in us.items()},
        "best_us_per_hop": {key: min(values) for key, values in us.items()},
        "ratio": statistics.median(ratios),
        "hop_share_ratio": statistics.median(shares),
        "target": TARGET,
        "meets_target": statistics.median(ratios) <= TARGET,
    }


def _one_stage(name: str, executor: Executor | None = None) -> StageGraph:
    return Pipeline(name).with_stage("hop", hop, T, executor=executor).build()


def _async_stage(name: str) -> StageGraph:
    return Pipeline(name).with_stage("hop", async_hop, T).build()


async def _threads(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    n = settings.hops
    return await _pair(
        "thread hop",
        {
            "graph": _graph_runs(_one_stage("thread"), n),
            "bare": _to_thread(n),
            "async graph": _graph_runs(_async_stage("thread"), n),
        },
        settings.reps,
        n,
        log,
    )


async def _processes(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    n = max(1, settings.hops // 4)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await _pair(
            "process hop",
            {
                "graph": _graph_runs(_one_stage("process", pool), n),
                "bare": _run_in_executor(pool, n),
                "async graph": _graph_runs(_async_stage("process"), n),
            },
            settings.reps,
            n,
            log,
        )


async def _dask(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    from distributed import Client

    n = max(1, settings.hops // 4)
    cluster = await asyncio.to_thread(local_dask_cluster, 1)
    try:
        client = await asyncio.to_thread(Client, cluster)
        try:
            return await _pair(
                "Dask hop",
                {
                    "graph": _graph_runs(_one_stage("dask", _dask_executor(client)), n),
                    "bare": _client_submit(client, n),
                    "async graph": _graph_runs(_async_stage("dask"), n),
                },
                settings.reps,
                n,
                log,
            )
        finally:
            await asyncio.to_thread(client.close)
    finally:
        await asyncio.to_thread(cluster.close)


def _dask_executor(client: Any) -> Executor:
    executor: Executor = client.get_executor()
    return executor


async def _many(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    pipeline = Pipeline("many")
    for i in range(settings.stages):
        pipeline = pipeline.with_stage(f"s{i}", hop, T)
    graph = pipeline.build(max_threads=settings.threads)
    await graph.run(make_ctx())  # warm-up: the pool's threads started
    seconds: list[float] = []
    for _ in range(settings.many_reps):
        ctx = make_ctx()
        gc.collect()
        start = time.perf_counter()
        result = await graph.run(ctx)
        seconds.append(time.perf_counter() - start)
        assert len(result) == settings.stages
    log("many sync stages: done")
    wall = statistics.median(seconds)
    return {
        "stages": settings.stages,
        "threads": settings.threads,
        "wall_s": wall,
        "best_wall_s": min(seconds),
        "stages_per_s": settings.stages / wall,
        "us_per_stage": wall / settings.stages * 1e6,
    }


async def _run_all(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    hops = [await _threads(settings, log), await _processes(settings, log), await _dask(settings, log)]
    return {
        "meta": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "settings": asdict(settings),
            "clock": "time.perf_counter (wall)",
        },
        "hops": hops,
        "many": await _many(settings, log),
    }


def run_benchmark(
    settings: Settings | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every measurement in a fresh event loop and return the figures (the ``--json`` document)."""
    return asyncio.run(_run_all(settings or Settings(), log or (lambda _: None)))


def format_report(report: dict[str, Any]) -> str:
    """The figures as a readable table."""
    meta = report["meta"]
    lines = [
        f"stageflow executor hops  (python {meta['python']}, {meta['cpus']} cpus; {meta['clock']}; "
        "medians, best in brackets)",
        "",
        f"{'hop':<13}{'graph us':>17}{'bare us':>17}{'async graph us':>17}{'graph/bare':>12}"
        f"{'hop share':>11}  target <= {TARGET}",
    ]
    for row in report["hops"]:
        us, best = row["us_per_hop"], row["best_us_per_hop"]
        cells = "".join(f"{us[k]:>9.1f} ({best[k]:>5.0f})" for k in ("graph", "bare", "async graph"))
        verdict = "met" if row["meets_target"] else "MISSED"
        lines.append(
            f"{row['name']:<13}{cells}{row['ratio']:>11.2f}x{row['hop_share_ratio']:>10.2f}x  {verdict}"
        )
    many = report["many"]
    lines += [
        "",
        "hop share = (graph - async graph) / bare: the hop's own cost inside a run, against the bare hop",
        "",
        f"{many['stages']:,} sync stages on {many['threads']} threads: {many['wall_s'] * 1e3:.1f} ms "
        f"(best {many['best_wall_s'] * 1e3:.1f} ms), {many['stages_per_s']:,.0f} stages/s, "
        f"{many['us_per_stage']:.1f} us/stage",
    ]
    return "\n".join(lines)


main = _common.main_for("tests.benchmarks.offload", quick="fewer repetitions, smaller samples")
"""Parse arguments, measure and print the report: with the importable module's names even when run as
``__main__``, whose ``hop`` would not pickle by a name workers can import."""


if __name__ == "__main__":
    sys.exit(main())
