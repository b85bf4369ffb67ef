"""Streaming stages: the cost of a chunk along an edge, and memory under a slow consumer, in the same process.

Run it (from the repository root)::

    .venv/bin/python -m tests.benchmarks.streams                  # full run (about a minute)
    .venv/bin/python -m tests.benchmarks.streams --quick          # fast smoke run
    .venv/bin/python -m tests.benchmarks.streams --json out.json  # also write the figures as JSON

What is measured:

* **per-chunk overhead**: one run of a two-stage graph, a producer (``async def`` yielding ``chunks``
  integers, ``Streaming(collect=False)``, the default buffer of 16) and a consumer reading them with
  ``async for chunk in ctx.inputs.stream("producer")``, against the bare form: two tasks joined by an
  ``asyncio.Queue(maxsize=16)``, one putting the same integers then an end marker, the other getting them
  until the marker. A third variant, the same two tasks with the producer written as an async generator
  drained into the queue, shows how much of the difference is the generator protocol itself. The figure is
  µs per chunk (a run's time divided by its chunks; the run's fixed cost is spread over ``chunks``), and
  the ratio graph / bare (target <= 1.5). A fourth row, the graph with the default ``Streaming()`` (the
  chunks kept for the aggregate), is reported for information.
* **memory with a slow consumer**: one run in which the consumer yields to the event loop three times per
  chunk, so the producer always waits for room in its buffer, over ``memory_chunks`` chunks (1,000,000) with
  ``Streaming(collect=False)``; every ``memory_chunks / samples`` chunks the consumer records the bytes
  ``tracemalloc`` traces and the process's resident set size, and how far the producer is ahead of it. The
  figure is the growth from the first tenth of the samples to the last tenth (means), in bytes and bytes
  per 1,000 chunks; flat means the growth stays near zero while a million chunks went through.

Method: one event loop for everything; every variant is warmed up first; then ``reps`` repetitions, in each
of which the variants run interleaved; ``gc.collect()`` before every sample and the garbage collector off
while a sample is timed, with ``time.process_time`` (the runs never block: their CPU time is their cost).
Figures are medians over the repetitions; ratios are medians of the per-repetition pairs, so they compare
runs made back to back. On a shared 2-core machine compare ratios, not absolute figures.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import statistics
import sys
import time
import tracemalloc
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from stageflow import Pipeline, StageContext, StageGraph, StageKind, StageOutput, Streaming
from tests._support import make_ctx
from tests.benchmarks import _common

__all__ = ("TARGET", "Settings", "format_report", "main", "run_benchmark")

TARGET = 1.5
"""The largest acceptable graph / bare ratio of the per-chunk cost."""

BUFFER = 16
"""Chunks in flight per edge: ``Streaming``'s default buffer, and the bare queue's ``maxsize``."""

T = StageKind.TRANSFORM
_END = object()


@dataclass(frozen=True)
class Settings(
    _common.Presets,
    quick={"chunks": 5_000, "reps": 5, "memory_chunks": 100_000},
    smallest={"chunks": 100, "reps": 1, "memory_chunks": 2_000, "samples": 20},
):
    """How much to measure. ``quick``: a fast smoke run, every figure, fewer repetitions and chunks;
    ``smallest``: the smallest settings that still produce every figure (for the smoke test)."""

    chunks: int = 20_000
    """Chunks per run of the per-chunk benchmark."""
    reps: int = 15
    memory_chunks: int = 1_000_000
    samples: int = 100
    """Memory samples taken along the slow-consumer run."""


# --------------------------------------------------------------------------- the graph


def producer_of(chunks: int) -> Callable[[StageContext], AsyncIterator[int]]:
    async def producer(ctx: StageContext) -> AsyncIterator[int]:
        for i in range(chunks):
            yield i

    return producer


async def consumer(ctx: StageContext) -> StageOutput:
    n = 0
    async for _ in ctx.inputs.stream("producer"):
        n += 1
    return StageOutput.ok(n=n)


def streaming_graph(chunks: int, stream: Streaming, reader: Any = consumer) -> StageGraph:
    return (
        Pipeline("streams")
        .with_stage("producer", producer_of(chunks), T, stream=stream)
        .with_stage("consumer", reader, T, dependencies=("producer",), streams=("producer",))
        .build()
    )


class _Graph:
    """One run of ``graph`` per call, each with its own entry context made by ``prepare``."""

    def __init__(self, graph: StageGraph) -> None:
        self.graph = graph
        self.contexts: list[StageContext] = []

    def prepare(self, count: int) -> None:
        self.contexts = [make_ctx() for _ in range(count)]

    def __call__(self) -> Awaitable[object]:
        return self.graph.run(self.contexts.pop())


# --------------------------------------------------------------------------- the bare pipes


async def _bare_put(queue: asyncio.Queue[Any], chunks: int) -> None:
    for i in range(chunks):
        await queue.put(i)
    await queue.put(_END)


async def _generator(chunks: int) -> AsyncIterator[int]:
    for i in range(chunks):
        yield i


async def _generator_put(queue: asyncio.Queue[Any], chunks: int) -> None:
    async for chunk in _generator(chunks):
        await queue.put(chunk)
    await queue.put(_END)


async def _bare_get(queue: asyncio.Queue[Any]) -> int:
    n = 0
    while (await queue.get()) is not _END:
        n += 1
    return n


def bare_pipe(
    chunks: int, put: Callable[[asyncio.Queue[Any], int], Coroutine[Any, Any, None]]
) -> Callable[[], Any]:
    """Two tasks joined by an ``asyncio.Queue(maxsize=BUFFER)``: ``put`` fills it, a reader drains it."""

    async def run() -> int:
        queue: asyncio.Queue[Any] = asyncio.Queue(BUFFER)
        loop = asyncio.get_running_loop()
        writer = loop.create_task(put(queue, chunks))
        reader = loop.create_task(_bare_get(queue))
        await writer
        return await reader

    return run


# --------------------------------------------------------------------------- timing


async def bench_per_chunk(settings: Settings) -> dict[str, Any]:
    chunks = settings.chunks
    variants: dict[str, Callable[[], Awaitable[object]]] = {
        "graph": _Graph(streaming_graph(chunks, Streaming(collect=False))),
        "bare": bare_pipe(chunks, _bare_put),
        "bare_generator": bare_pipe(chunks, _generator_put),
        "graph_collect": _Graph(streaming_graph(chunks, Streaming())),
    }
    for sample in variants.values():  # warm-up
        await _common.timed(sample, 1)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(settings.reps):
        for name, sample in variants.items():
            samples[name].append(await _common.timed(sample, 1))

    def ratio(name: str) -> float:
        return statistics.median(a / b for a, b in zip(samples[name], samples["bare"], strict=True))

    return {
        "chunks": chunks,
        "buffer": BUFFER,
        "us_per_chunk": {name: statistics.median(s) / chunks * 1e6 for name, s in samples.items()},
        "best_us_per_chunk": {name: min(s) / chunks * 1e6 for name, s in samples.items()},
        "ratio": ratio("graph"),
        "ratio_bare_generator": ratio("bare_generator"),
        "ratio_graph_collect": ratio("graph_collect"),
        "target": TARGET,
        "meets_target": ratio("graph") <= TARGET,
    }


# --------------------------------------------------------------------------- memory


class _Rss:
    """The resident set size, read from ``/proc/self/statm`` through a descriptor opened once (Linux), else
    the peak from ``getrusage``: opening a file per sample would allocate what the samples count."""

    def __init__(self) -> None:
        try:
            self.fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self.fd = None
        self.page = os.sysconf("SC_PAGE_SIZE")

    def __call__(self) -> int:
        if self.fd is None:
            scale = 1 if sys.platform == "darwin" else 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return int(os.pread(self.fd, 256, 0).split()[1]) * self.page

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


async def bench_memory(settings: Settings) -> dict[str, Any]:
    chunks = settings.memory_chunks
    every = max(2, chunks // settings.samples)
    half = every // 2
    produced = [0]
    # preallocated, so recording a sample allocates nothing the samples would then count as growth
    size = chunks // every + 1
    traced = array("q", bytes(8 * size))
    rss = array("q", bytes(8 * size))
    ahead = array("q", bytes(8 * size))
    taken = [0]

    async def producer(ctx: StageContext) -> AsyncIterator[int]:
        for i in range(chunks):
            produced[0] = i + 1
            yield i

    async def slow_consumer(ctx: StageContext) -> StageOutput:
        n = 0
        async for _ in ctx.inputs.stream("producer"):
            n += 1
            for _ in range(3):  # slower than the producer: it always waits for room
                await asyncio.sleep(0)
            if n % every == half:  # mid-stream only: the last sample is taken before the end
                k = taken[0]
                traced[k] = tracemalloc.get_traced_memory()[0]
                rss[k] = read_rss()
                ahead[k] = produced[0] - n
                taken[0] = k + 1
        return StageOutput.ok(n=n)

    graph = (
        Pipeline("streams")
        .with_stage("producer", producer, T, stream=Streaming(collect=False))
        .with_stage("consumer", slow_consumer, T, dependencies=("producer",), streams=("producer",))
        .build()
    )
    ctx = make_ctx()
    read_rss = _Rss()
    gc.collect()
    tracemalloc.start()
    try:
        start = time.perf_counter()
        result = await graph.run(ctx)
        wall = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        read_rss.close()
    count = taken[0]
    del traced[count:], rss[count:], ahead[count:]
    tenth = max(1, count // 10)

    def growth(values: array[int]) -> float:
        return statistics.fmean(values[-tenth:]) - statistics.fmean(values[:tenth])

    traced_growth = growth(traced)
    return {
        "chunks": result["consumer"].data["n"],
        "producer_chunks": result["producer"].chunks,
        "samples": count,
        "wall_s": wall,
        "traced_first_tenth_bytes": statistics.fmean(traced[:tenth]),
        "traced_last_tenth_bytes": statistics.fmean(traced[-tenth:]),
        "traced_growth_bytes": traced_growth,
        "traced_growth_bytes_per_1000_chunks": traced_growth / chunks * 1000,
        "traced_peak_bytes": peak,
        "rss_first_tenth_bytes": statistics.fmean(rss[:tenth]),
        "rss_growth_bytes": growth(rss),
        "max_producer_ahead": max(ahead),
        "buffer": BUFFER,
    }


# --------------------------------------------------------------------------- report


async def _run_all(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    log("per-chunk overhead ...")
    per_chunk = await bench_per_chunk(settings)
    log(f"memory over {settings.memory_chunks:,} chunks with a slow consumer ...")
    memory = await bench_memory(settings)
    return {
        "meta": _common.meta(settings),
        "per_chunk": per_chunk,
        "memory": memory,
    }


def run_benchmark(
    settings: Settings | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run both benchmarks in a fresh event loop and return the figures (the ``--json`` document)."""
    return asyncio.run(_run_all(settings or Settings(), log or (lambda _: None)))


def format_report(report: dict[str, Any]) -> str:
    """The figures as readable lines."""
    p, m = report["per_chunk"], report["memory"]
    us, best = p["us_per_chunk"], p["best_us_per_chunk"]
    verdict = "met" if p["meets_target"] else "MISSED"
    lines = [
        f"stageflow streaming benchmark (python {report['meta']['python']}, {report['meta']['cpus']} cpus)",
        f"per chunk, {p['chunks']:,} chunks per run, buffer {p['buffer']} (µs/chunk, median / best):",
        f"  graph, Streaming(collect=False)   {us['graph']:7.3f} / {best['graph']:7.3f}",
        f"  bare asyncio.Queue, two tasks     {us['bare']:7.3f} / {best['bare']:7.3f}",
        f"  bare, async generator producer    {us['bare_generator']:7.3f} / {best['bare_generator']:7.3f}",
        f"  graph, Streaming() (collected)    {us['graph_collect']:7.3f} / {best['graph_collect']:7.3f}",
        f"  graph / bare: {p['ratio']:.2f} (target <= {p['target']}: {verdict}); bare generator / bare: "
        f"{p['ratio_bare_generator']:.2f}; collected graph / bare: {p['ratio_graph_collect']:.2f}",
        f"memory, slow consumer, {m['chunks']:,} chunks, {m['samples']} samples, {m['wall_s']:.1f} s:",
        f"  traced: first tenth {m['traced_first_tenth_bytes']:,.0f} B, last tenth "
        f"{m['traced_last_tenth_bytes']:,.0f} B, growth {m['traced_growth_bytes']:+,.0f} B "
        f"({m['traced_growth_bytes_per_1000_chunks']:+.2f} B per 1,000 chunks); peak "
        f"{m['traced_peak_bytes']:,} B",
        f"  rss: first tenth {m['rss_first_tenth_bytes']:,.0f} B, growth {m['rss_growth_bytes']:+,.0f} B; "
        f"producer at most "
        f"{m['max_producer_ahead']} chunks ahead (buffer {m['buffer']})",
    ]
    return "\n".join(lines)


main = _common.main_for(__name__, quick="fewer repetitions and chunks")
"""Parse arguments, measure and print the report."""


if __name__ == "__main__":
    raise SystemExit(main())
