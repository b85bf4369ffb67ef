"""Core executor benchmark: stageflow against a plain-asyncio baseline, in the same process.

It runs past 500 lines because every figure is measured against its plain-asyncio baseline in the same
process, and each baseline lives beside the stageflow run it is compared with.

Run it (from the repository root)::

    .venv/bin/python -m tests.benchmarks.core                    # full run (about a minute)
    .venv/bin/python -m tests.benchmarks.core --quick            # fast smoke run
    .venv/bin/python -m tests.benchmarks.core --json out.json    # also write the figures as JSON

What is measured:

* shapes ``chain``, ``fanout`` (one root, size-2 parallel stages, one join), ``lattice`` (10 wide, size/10
  layers; stage (r, c) depends on (r-1, c) and (r, c-1)) and ``random`` (seeded; each stage depends on up to
  3 distinct earlier stages) at 10, 100, 1,000 and 10,000 stages (no lattice at 10: it would be a chain);
  a 5-stage diamond (a -> b, c, d -> e) run sequentially and 1,000 runs concurrently;
* against a plain-asyncio baseline on the same DAG: one task per stage, all created up front, each awaiting
  its dependencies' futures, then a trivial ``async def`` body returning a small dict. Our stage body is an
  ``async def`` returning ``StageOutput.ok(x=1)``;
* µs/stage, ours/baseline ratio, the scaling exponent (least-squares log-log slope of total run time over
  the sizes from 100 to 10,000), the time to build a 10,000-stage pipeline (``with_stage`` calls and
  ``build()`` separately), memory per in-flight run (tracemalloc, 1,000 concurrent diamond runs held at an
  ``asyncio.Event``; peak minus baseline, divided by 1,000) and the per-stage cost of one empty interceptor
  and of the default interceptor stack (when ``stageflow.interceptors.get_default_interceptors`` exists).

Method: one event loop for everything; every variant is warmed up once; then ``reps`` repetitions, in each
of which the variants run interleaved (ours, baseline, ours, baseline, ...); every sample is a batch of runs
sized so a batch touches about ``batch_stages`` stages; ``gc.collect()`` runs before every sample and the
garbage collector is **disabled while a sample is timed**. Figures are medians over the repetitions;
ratios and interceptor deltas are medians of the per-repetition pairs. Samples are timed with
``time.process_time`` by default: every run here is CPU-bound and never blocks, so its CPU time is its cost,
and other processes on the machine disturb it much less than wall time (``--clock wall`` uses
``time.perf_counter``). The build figures take the median of ``build_reps`` builds after one warm-up build.
Every run gets its own entry ``StageContext``, made before its sample's clock starts (its creation is not
part of a run's cost, and a reused one would cost a fresh run id; the memory figure likewise makes the
1,000 entry contexts before its baseline). The timing figures are
noisy on a shared 2-core machine: compare ratios, which pair runs made back to back, rather than absolute
figures across runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math
import random
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stageflow import (
    Pipeline,
    StageContext,
    StageGraph,
    StageKind,
    StageOutput,
)
from stageflow.interceptors import CallNext, Interceptor, StageInfo
from stageflow.testing import make_context
from tests.benchmarks import _common

__all__ = (
    "SHAPES",
    "Settings",
    "format_report",
    "main",
    "make_deps",
    "run_benchmarks",
)

Deps = list[tuple[int, ...]]
"""A DAG: for each stage (by index, dependencies always earlier), the indices of its dependencies."""

SHAPES = ("chain", "fanout", "lattice", "random")
LATTICE_WIDTH = 10
RANDOM_DEPS = 3
SEED = 20240601


@dataclass(frozen=True)
class Settings(
    _common.Presets,
    quick={"reps": 3, "batch_stages": 3_000, "build_reps": 2},
    smallest={
        "sizes": (10, 100, 200),
        "reps": 1,
        "batch_stages": 1,
        "diamond_runs": 10,
        "memory_runs": 10,
        "build_stages": 100,
        "build_reps": 1,
        "interceptor_stages": 20,
    },
):
    """How much to measure. ``quick``: a fast smoke run, every figure, fewer repetitions and smaller
    batches; ``smallest``: the smallest settings that still produce every row (for the smoke test)."""

    sizes: tuple[int, ...] = (10, 100, 1_000, 10_000)
    reps: int = 9
    batch_stages: int = 20_000
    diamond_runs: int = 1_000
    memory_runs: int = 1_000
    build_stages: int = 10_000
    build_reps: int = 9
    interceptor_stages: int = 1_000
    clock: str = "cpu"
    """``cpu``: ``time.process_time`` (the runs never block, so this is their cost, and other processes on
    the machine disturb it less); ``wall``: ``time.perf_counter``."""


# --------------------------------------------------------------------------- shapes


def make_deps(shape: str, size: int) -> Deps | None:
    """The DAG of ``shape`` with about ``size`` stages, or ``None`` where the shape makes no sense."""
    if shape == "chain":
        return [()] + [(i - 1,) for i in range(1, size)]
    if shape == "fanout":
        middle = tuple(range(1, size - 1))
        return [()] + [(0,)] * len(middle) + [middle]
    if shape == "lattice":
        rows = size // LATTICE_WIDTH
        if rows < 2:
            return None
        deps: Deps = []
        for r in range(rows):
            for c in range(LATTICE_WIDTH):
                mine = []
                if r:
                    mine.append((r - 1) * LATTICE_WIDTH + c)
                if c:
                    mine.append(r * LATTICE_WIDTH + c - 1)
                deps.append(tuple(mine))
        return deps
    if shape == "random":
        rng = random.Random(SEED + size)
        return [tuple(sorted(rng.sample(range(i), min(i, RANDOM_DEPS)))) for i in range(size)]
    if shape == "diamond":
        return [(), (0,), (0,), (0,), (1, 2, 3)]
    msg = f"unknown shape {shape!r}; known: {', '.join((*SHAPES, 'diamond'))}"
    raise ValueError(msg)


async def our_stage(ctx: StageContext) -> StageOutput:
    """Our stage body."""
    return StageOutput.ok(x=1)


def build_pipeline(deps: Deps, runner: Any = our_stage) -> Pipeline:
    names = [f"s{i}" for i in range(len(deps))]
    pipeline = Pipeline(name="bench")
    for i, ds in enumerate(deps):
        pipeline = pipeline.with_stage(
            names[i], runner, StageKind.TRANSFORM, dependencies=tuple(names[d] for d in ds)
        )
    return pipeline


# --------------------------------------------------------------------------- baseline


async def _baseline_body(inputs: dict[int, Any]) -> dict[str, int]:
    return {"x": 1}


async def _baseline_stage(futures: list[asyncio.Future[Any]], i: int, deps: tuple[int, ...]) -> None:
    inputs = {d: await futures[d] for d in deps}
    futures[i].set_result(await _baseline_body(inputs))


async def baseline_run(deps: Deps) -> list[asyncio.Future[Any]]:
    """Plain asyncio: one task per stage, each awaiting its dependencies' futures."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in deps]
    tasks = [loop.create_task(_baseline_stage(futures, i, ds)) for i, ds in enumerate(deps)]
    for task in tasks:
        await task
    return futures


# --------------------------------------------------------------------------- timing

Sample = Callable[[], Awaitable[object]]


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


class Samples(dict[str, list[float]]):
    """Seconds per call of each variant, one figure per repetition (repetition ``i`` of every variant ran
    back to back, so figures with the same index are paired)."""

    def median(self, name: str) -> float:
        return statistics.median(self[name])

    def ratio(self, name: str, other: str) -> float:
        """Median of the paired ratios ``name / other``."""
        return statistics.median(a / b for a, b in zip(self[name], self[other], strict=True))

    def delta(self, name: str, other: str) -> float:
        """Median of the paired differences ``name - other``."""
        return statistics.median(a - b for a, b in zip(self[name], self[other], strict=True))


async def interleaved(variants: dict[str, Sample], count: int, settings: Settings) -> Samples:
    """Time every variant ``settings.reps`` times; the variants alternate within each repetition."""
    clock = CLOCKS[settings.clock]
    for sample in variants.values():
        prepare = getattr(sample, "prepare", None)
        if prepare is not None:
            prepare(1)
        await sample()  # warm-up
    samples = Samples({name: [] for name in variants})
    for _ in range(settings.reps):
        for name, sample in variants.items():
            samples[name].append(await _common.timed(sample, count, clock))
    return samples


def _batch(settings: Settings, stages: int) -> int:
    return max(1, round(settings.batch_stages / stages))


class _Ours:
    """One run of ``graph`` per call, each with its own entry context made by ``prepare``."""

    def __init__(self, graph: StageGraph, runs: int = 1) -> None:
        self.graph = graph
        self.runs = runs
        self.contexts: list[StageContext] = []

    def prepare(self, count: int) -> None:
        self.contexts = [make_context() for _ in range(count * self.runs)]

    def __call__(self) -> Awaitable[object]:
        return self.graph.run(self.contexts.pop())


def _ours(graph: StageGraph) -> Sample:
    return _Ours(graph)


def _baseline(deps: Deps) -> Sample:
    def sample() -> Awaitable[object]:
        return baseline_run(deps)

    return sample


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) over log(x), or ``None`` with fewer than two points."""
    if len(points) < 2:
        return None
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


# --------------------------------------------------------------------------- benchmarks


async def bench_shapes(settings: Settings) -> list[dict[str, Any]]:
    rows = []
    for shape in SHAPES:
        for size in settings.sizes:
            deps = make_deps(shape, size)
            if deps is None:
                continue
            graph = build_pipeline(deps).build()
            n = len(deps)
            samples = await interleaved(
                {"ours": _ours(graph), "baseline": _baseline(deps)}, _batch(settings, n), settings
            )
            m = {"ours": samples.median("ours"), "baseline": samples.median("baseline")}
            rows.append(
                {
                    "shape": shape,
                    "size": size,
                    "stages": n,
                    "edges": sum(len(d) for d in deps),
                    "ours_ms": m["ours"] * 1e3,
                    "baseline_ms": m["baseline"] * 1e3,
                    "ours_best_ms": min(samples["ours"]) * 1e3,
                    "baseline_best_ms": min(samples["baseline"]) * 1e3,
                    "ours_us_per_stage": m["ours"] * 1e6 / n,
                    "baseline_us_per_stage": m["baseline"] * 1e6 / n,
                    "ratio": samples.ratio("ours", "baseline"),
                }
            )
    return rows


def scaling(rows: Sequence[dict[str, Any]], low: int = 100, high: int = 10_000) -> list[dict[str, Any]]:
    out = []
    for shape in SHAPES:
        mine = [r for r in rows if r["shape"] == shape and low <= r["size"] <= high]
        out.append(
            {
                "shape": shape,
                "sizes": [r["size"] for r in mine],
                "ours_exponent": slope([(r["stages"], r["ours_ms"]) for r in mine]),
                "baseline_exponent": slope([(r["stages"], r["baseline_ms"]) for r in mine]),
                # from each size's least disturbed repetition: on a shared VM the medians of the largest
                # sizes absorb most of the noise, so both figures are reported
                "ours_exponent_best": slope([(r["stages"], r["ours_best_ms"]) for r in mine]),
                "baseline_exponent_best": slope([(r["stages"], r["baseline_best_ms"]) for r in mine]),
            }
        )
    return out


async def bench_diamond(settings: Settings) -> list[dict[str, Any]]:
    deps = make_deps("diamond", 5)
    assert deps is not None
    graph = build_pipeline(deps).build()
    runs = settings.diamond_runs
    one = _Ours(graph, runs)

    class OursSequential:
        prepare = one.prepare

        async def __call__(self) -> None:
            for _ in range(runs):
                await one()

    class OursConcurrent:
        prepare = one.prepare

        async def __call__(self) -> None:
            await asyncio.gather(*(one() for _ in range(runs)))

    async def baseline_sequential() -> None:
        for _ in range(runs):
            await baseline_run(deps)

    async def baseline_concurrent() -> None:
        await asyncio.gather(*(baseline_run(deps) for _ in range(runs)))

    rows = []
    for mode, ours, base in (
        ("sequential", OursSequential(), baseline_sequential),
        ("concurrent", OursConcurrent(), baseline_concurrent),
    ):
        samples = await interleaved({"ours": ours, "baseline": base}, 1, settings)
        m = {"ours": samples.median("ours"), "baseline": samples.median("baseline")}
        rows.append(
            {
                "mode": mode,
                "runs": runs,
                "stages": 5,
                "ours_us_per_run": m["ours"] * 1e6 / runs,
                "baseline_us_per_run": m["baseline"] * 1e6 / runs,
                "ours_us_per_stage": m["ours"] * 1e6 / runs / 5,
                "baseline_us_per_stage": m["baseline"] * 1e6 / runs / 5,
                "ratio": samples.ratio("ours", "baseline"),
            }
        )
    return rows


def bench_build(settings: Settings) -> dict[str, Any]:
    deps = make_deps("random", settings.build_stages)
    assert deps is not None
    names = [f"s{i}" for i in range(len(deps))]
    dep_names = [tuple(names[d] for d in ds) for ds in deps]
    clock = CLOCKS[settings.clock]
    add_times, build_times = [], []
    for rep in range(settings.build_reps + 1):
        gc.collect()
        gc.disable()
        try:
            start = clock()
            pipeline = Pipeline(name="bench")
            for name, ds in zip(names, dep_names, strict=True):
                pipeline = pipeline.with_stage(name, our_stage, StageKind.TRANSFORM, dependencies=ds)
            added = clock()
            graph = pipeline.build()
            built = clock()
        finally:
            gc.enable()
        del pipeline, graph  # freed outside the timed region: we measure building, not tearing down
        if rep:  # the first one is a warm-up
            add_times.append(added - start)
            build_times.append(built - added)
    with_stage = statistics.median(add_times)
    build = statistics.median(build_times)
    return {
        "shape": "random",
        "stages": len(deps),
        "with_stage_ms": with_stage * 1e3,
        "build_ms": build * 1e3,
        "total_ms": (with_stage + build) * 1e3,
    }


class _Gate:
    """Holds stages at a barrier and tells when ``expected`` of them are waiting there."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.all_arrived = asyncio.Event()
        self.barrier = asyncio.Event()

    async def hold(self) -> None:
        self.arrived += 1
        if self.arrived == self.expected:
            self.all_arrived.set()
        await self.barrier.wait()


async def _held_memory(start_runs: Callable[[_Gate], list[asyncio.Task[Any]]], gate: _Gate) -> int:
    """Bytes traced while the runs ``start_runs`` starts are all held at the gate (peak - baseline)."""
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        tasks = start_runs(gate)
        await gate.all_arrived.wait()
        _, peak = tracemalloc.get_traced_memory()
        gate.barrier.set()
        await asyncio.gather(*tasks)
    finally:
        tracemalloc.stop()
    return peak - base


async def bench_memory(settings: Settings) -> dict[str, Any]:
    """1,000 diamond runs in flight, each held with its middle stages (b, c, d) waiting at one barrier."""
    runs = settings.memory_runs
    deps = make_deps("diamond", 5)
    assert deps is not None
    gates: list[_Gate] = []

    async def held_stage(ctx: StageContext) -> StageOutput:
        await gates[-1].hold()
        return StageOutput.ok(x=1)

    pipeline = (
        Pipeline(name="bench")
        .with_stage("a", our_stage, StageKind.TRANSFORM)
        .with_stage("b", held_stage, StageKind.TRANSFORM, dependencies=("a",))
        .with_stage("c", held_stage, StageKind.TRANSFORM, dependencies=("a",))
        .with_stage("d", held_stage, StageKind.TRANSFORM, dependencies=("a",))
        .with_stage("e", our_stage, StageKind.TRANSFORM, dependencies=("b", "c", "d"))
    )
    graph = pipeline.build()
    contexts = [make_context() for _ in range(runs)]

    async def baseline_held_stage(futures: list[asyncio.Future[Any]], i: int, ds: tuple[int, ...]) -> None:
        inputs = {d: await futures[d] for d in ds}
        if i in (1, 2, 3):
            await gates[-1].hold()
        futures[i].set_result(await _baseline_body(inputs))

    async def baseline_held_run() -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in deps]
        tasks = [loop.create_task(baseline_held_stage(futures, i, ds)) for i, ds in enumerate(deps)]
        for task in tasks:
            await task

    def start_ours(gate: _Gate) -> list[asyncio.Task[Any]]:
        gates.append(gate)
        return [asyncio.ensure_future(graph.run(ctx)) for ctx in contexts]

    def start_baseline(gate: _Gate) -> list[asyncio.Task[Any]]:
        gates.append(gate)
        return [asyncio.ensure_future(baseline_held_run()) for _ in range(runs)]

    await _held_memory(start_ours, _Gate(3 * runs))  # warm-up: first-use caches
    ours = await _held_memory(start_ours, _Gate(3 * runs))
    base = await _held_memory(start_baseline, _Gate(3 * runs))
    return {
        "runs": runs,
        "ours_bytes_per_run": ours / runs,
        "baseline_bytes_per_run": base / runs,
        "ratio": ours / base,
    }


class EmptyInterceptor(Interceptor):
    """An interceptor that only passes the call through."""

    name = "empty"

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        return await call_next(ctx)


def default_interceptors() -> tuple[list[Interceptor] | None, str]:
    """HOOK (issue 3 item 4): the default interceptor stack, if ``get_default_interceptors`` exists yet."""
    try:
        from stageflow.interceptors import get_default_interceptors  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None, "stageflow.interceptors.get_default_interceptors is not importable yet; row skipped"
    try:
        stack = list(get_default_interceptors())
    except Exception as exc:
        return None, f"get_default_interceptors() raised {exc!r}; row skipped"
    names = ", ".join(getattr(ic, "name", type(ic).__name__) for ic in stack)
    return stack, f"default interceptor stack: [{names}]"


async def bench_interceptors(settings: Settings) -> tuple[list[dict[str, Any]], str]:
    deps = make_deps("chain", settings.interceptor_stages)
    assert deps is not None
    n = len(deps)
    pipeline = build_pipeline(deps)
    variants: dict[str, Sample] = {
        "none": _ours(pipeline.build()),
        "empty": _ours(pipeline.build(interceptors=[EmptyInterceptor()])),
    }
    defaults, note = default_interceptors()
    if defaults is not None:
        variants["default_stack"] = _ours(pipeline.build(interceptors=defaults))
    samples = await interleaved(variants, _batch(settings, n), settings)
    rows = [
        {
            "interceptors": name,
            "shape": "chain",
            "stages": n,
            "us_per_stage": samples.median(name) * 1e6 / n,
            "delta_us_per_stage": samples.delta(name, "none") * 1e6 / n,
        }
        for name in samples
    ]
    return rows, note


# --------------------------------------------------------------------------- report

TARGETS = {
    "ratio": 2.0,
    "exponent": 1.05,
    "build_ms": 50.0,
    "empty_interceptor_us": 1.0,
}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    ratios = [r["ratio"] for r in report["shapes"]] + [r["ratio"] for r in report["diamond"]]
    exponents = [s["ours_exponent"] for s in report["scaling"] if s["ours_exponent"] is not None]
    best_exponents = [
        s["ours_exponent_best"] for s in report["scaling"] if s["ours_exponent_best"] is not None
    ]
    empty = next((r for r in report["interceptors"] if r["interceptors"] == "empty"), None)
    out = [
        {
            "target": "per-stage cost <= 2x baseline (worst shape/size)",
            "value": max(ratios),
            "limit": TARGETS["ratio"],
        },
        {
            "target": "scaling exponent 100 -> 10,000 <= 1.05 (worst shape, medians)",
            "value": max(exponents) if exponents else None,
            "limit": TARGETS["exponent"],
        },
        {
            "target": "scaling exponent 100 -> 10,000 <= 1.05 (worst shape, best repetitions)",
            "value": max(best_exponents) if best_exponents else None,
            "limit": TARGETS["exponent"],
        },
        {
            "target": f"build {report['build']['stages']} stages (with_stage + build) < 50 ms",
            "value": report["build"]["total_ms"],
            "limit": TARGETS["build_ms"],
        },
        {
            "target": "empty interceptor < 1 us/stage over none",
            "value": None if empty is None else empty["delta_us_per_stage"],
            "limit": TARGETS["empty_interceptor_us"],
        },
    ]
    for t in out:
        t["met"] = None if t["value"] is None else t["value"] <= t["limit"]
    return out


async def _run_all(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    log("build ...")
    build = bench_build(settings)  # first, while the process is fresh, as when an application starts
    log("shapes ...")
    shapes = await bench_shapes(settings)
    log("diamond ...")
    diamond = await bench_diamond(settings)
    log("memory ...")
    memory = await bench_memory(settings)
    log("interceptors ...")
    interceptor_rows, note = await bench_interceptors(settings)
    report: dict[str, Any] = {
        "meta": _common.meta(
            settings,
            method=f"{settings.clock} time, interleaved ours/baseline, medians over {settings.reps} reps "
            "(ratios and deltas: medians of the per-rep pairs), gc.collect() before and gc disabled "
            "during every timed sample",
        ),
        "shapes": shapes,
        "scaling": scaling(shapes),
        "diamond": diamond,
        "build": build,
        "memory": memory,
        "interceptors": interceptor_rows,
        "notes": [note],
    }
    report["targets"] = targets(report)
    return report


def run_benchmarks(
    settings: Settings | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every benchmark in a fresh event loop and return the figures (the ``--json`` document)."""
    return asyncio.run(_run_all(settings or Settings(), log or (lambda _: None)))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: dict[str, Any]) -> str:
    """The figures as readable tables."""
    lines = [
        f"stageflow core benchmark  (python {report['meta']['python']}, {report['meta']['cpus']} cpus; "
        f"{report['meta']['method']})",
        "",
        f"{'shape':<9}{'stages':>7}{'edges':>7}{'ours ms':>11}{'base ms':>11}"
        f"{'ours us/st':>12}{'base us/st':>12}{'ratio':>8}",
    ]
    lines.extend(
        f"{r['shape']:<9}{r['stages']:>7}{r['edges']:>7}{r['ours_ms']:>11.3f}{r['baseline_ms']:>11.3f}"
        f"{r['ours_us_per_stage']:>12.2f}{r['baseline_us_per_stage']:>12.2f}{r['ratio']:>8.2f}"
        for r in report["shapes"]
    )
    lines += [
        "",
        f"{'scaling exponent (log-log, 100..10,000)':<42}{'ours':>8}{'base':>8}"
        f"{'ours best':>11}{'base best':>11}",
    ]
    for s in report["scaling"]:
        lines.append(
            f"{s['shape']:<42}{_fmt(s['ours_exponent'], '.3f'):>8}{_fmt(s['baseline_exponent'], '.3f'):>8}"
            f"{_fmt(s['ours_exponent_best'], '.3f'):>11}{_fmt(s['baseline_exponent_best'], '.3f'):>11}"
        )
    lines += [
        "",
        f"{'diamond (5 stages)':<20}{'runs':>6}{'ours us/run':>13}{'base us/run':>13}"
        f"{'ours us/st':>12}{'base us/st':>12}{'ratio':>8}",
    ]
    for r in report["diamond"]:
        lines.append(
            f"{r['mode']:<20}{r['runs']:>6}{r['ours_us_per_run']:>13.2f}{r['baseline_us_per_run']:>13.2f}"
            f"{r['ours_us_per_stage']:>12.2f}{r['baseline_us_per_stage']:>12.2f}{r['ratio']:>8.2f}"
        )
    b = report["build"]
    lines += [
        "",
        f"build {b['stages']} stages ({b['shape']}): with_stage {b['with_stage_ms']:.2f} ms, "
        f"build() {b['build_ms']:.2f} ms, total {b['total_ms']:.2f} ms",
    ]
    m = report["memory"]
    lines += [
        f"memory per in-flight diamond run ({m['runs']} held): ours {m['ours_bytes_per_run']:.0f} B, "
        f"baseline {m['baseline_bytes_per_run']:.0f} B, ratio {m['ratio']:.2f}",
        "",
        f"{'interceptors (chain)':<22}{'stages':>7}{'us/stage':>10}{'+us/stage vs none':>19}",
    ]
    for r in report["interceptors"]:
        lines.append(
            f"{r['interceptors']:<22}{r['stages']:>7}{r['us_per_stage']:>10.2f}{r['delta_us_per_stage']:>19.2f}"
        )
    lines += ["", *(f"note: {n}" for n in report["notes"]), "", "targets:"]
    for t in report["targets"]:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"  [{verdict:>6}] {t['target']}: {_fmt(t['value'], '.3f')} (limit {t['limit']})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _common.parser(__doc__, quick="fewer repetitions, smaller batches")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: process time (default; less disturbed by other processes), wall: perf_counter",
    )
    args = parser.parse_args(argv)
    settings = dataclasses.replace(Settings.quick() if args.quick else Settings(), clock=args.clock)
    report = run_benchmarks(settings, log=_common.log)
    return _common.publish(format_report(report), report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
