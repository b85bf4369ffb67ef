"""Zero-loss throughput: the highest sustained rate of instrumented 5-stage runs that loses no telemetry.

Run it (from the repository root)::

    .venv/bin/python -m tests.benchmarks.throughput            # full run (a few minutes)
    .venv/bin/python -m tests.benchmarks.throughput --quick    # fast smoke run
    .venv/bin/python -m tests.benchmarks.throughput --json out.json

What is measured, in one run, on one graph (a 5-stage diamond, ``a -> b, c, d -> e``, trivial
``async def`` bodies):

* ``bare``: the graph built without interceptors, runs without an event sink;
* ``telemetry``: ``stageflow_otel.setup()`` with its defaults, exporting over OTLP/gRPC to a real local
  receiver (``tests/otel/otlp_receiver.py``'s ``GrpcReceiver``, in a child process so it does not share
  this process's interpreter lock), the graph built with ``TracingInterceptor`` + ``MetricsInterceptor``
  on the handle's providers and every run given the handle's ``OtlpEventSink``;
* ``telemetry + log records`` (when the sink has the switch): the same with the sink's OTLP log records
  turned on as well;
* ``log records, no span events``: the sink's log records on and its span events off, which is how
  events were exported before they became span events (for a before/after comparison in one run).

A trial runs a variant at a requested rate for ``duration`` seconds: run ``i`` starts at ``i / rate``
seconds (each run in its own task, so runs overlap when they take longer than the interval). It is
*sustained* when every run finished within ``duration / 0.95`` seconds of the first start (the achieved
rate is at least 95% of the requested one), and *lossless* when, after ``force_flush()``, the receiver got
exactly every span (6 per run) and every event (13 per run, in each view that is on: span events, log
records) and no drop counter moved. The search doubles the rate from ``start`` until a trial fails, then
bisects between the last passing and the first failing rate down to ``precision``. The searches of the
variants advance in lockstep (one trial of each in turn). The reported figure is the highest rate that
passed; the ratio is that figure over the ``bare`` one, measured in the same run. Also reported: this
process's CPU time per run (the loop and the exporter threads, runs and flush) in the trial at the best
passing rate, and its ratio to ``bare``'s; and, after the searches, ``cost_reps`` trials of each variant
at one rate every variant sustains (``cost_rate``), interleaved, with the median CPU time per run and its
ratio to ``bare``'s: a paced rate is bounded by the CPU share the process gets, so on a shared machine the CPU
figures are the steadier ones. Compare ratios, not absolute figures across runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any
from unittest import mock

from stageflow import EventSink, Pipeline, StageContext, StageGraph, StageKind, StageOutput
from stageflow.testing import make_context
from tests.benchmarks import _common

__all__ = ("Settings", "main", "run_benchmark")

SPANS_PER_RUN = 6
"""One run span and five stage spans."""
EVENTS_PER_RUN = 13
"""pipeline.created, pipeline.started, five stage started/completed pairs, pipeline.completed."""


@dataclass(frozen=True, slots=True)
class Settings(
    _common.Presets,
    quick={"duration": 0.5, "precision": 0.25, "max_trials": 6, "cost_reps": 1},
    smallest={
        "duration": 0.2,
        "start": 25.0,
        "precision": 1.0,
        "max_trials": 1,
        "cost_rate": 25.0,
        "cost_reps": 1,
    },
):
    """How long each trial runs and how the rate search proceeds. ``quick``: short trials and a coarse
    search; ``smallest``: one short trial per variant at a low rate, every code path in about a second
    each."""

    duration: float = 2.0
    """Seconds of paced runs per trial."""
    start: float = 200.0
    """First rate tried (runs/s), for every variant."""
    precision: float = 0.05
    """The bisection stops when the failing rate is within this fraction of the passing one."""
    max_trials: int = 12
    """Trials per variant at most."""
    log_records: bool = True
    """Also measure the sink with OTLP log records on (when the sink has that switch)."""
    cost_rate: float = 50.0
    """The rate (runs/s) of the CPU-cost trials, low enough for every variant to sustain it."""
    cost_reps: int = 3
    """CPU-cost trials per variant (interleaved across the variants); the median is reported."""


@dataclass(slots=True)
class Trial:
    """One paced trial of one variant."""

    rate: float
    """Requested runs/s."""
    runs: int
    achieved: float
    """Runs finished per second, from the first start to the last finish."""
    sustained: bool
    spans: int = 0
    span_events: int = 0
    log_records: int = 0
    dropped: int = 0
    """What the telemetry counters report lost (events dropped, spans dropped, failed export batches)."""
    lossless: bool = True
    cpu_us_per_run: float = 0.0
    """This process's CPU time (every thread: the loop and the exporters) per run, over the runs and the
    flush: the figure least disturbed by other processes' load."""
    loop_cpu_us_per_run: float = 0.0
    """The part of it the event loop's thread spent (the rest: the export threads, which take the
    interpreter lock from the loop)."""

    @property
    def passed(self) -> bool:
        return self.sustained and self.lossless


@dataclass(slots=True)
class Variant:
    """The search's result for one variant."""

    name: str
    best: float
    """The highest rate that passed (0.0 if none did)."""
    trials: list[Trial] = field(default_factory=list)


# --------------------------------------------------------------------------- the graph


async def _body(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(x=1)


def diamond() -> Pipeline:
    """The benchmark's 5-stage graph: a -> b, c, d -> e."""
    t = StageKind.TRANSFORM
    return (
        Pipeline(name="throughput")
        .with_stage("a", _body, t)
        .with_stage("b", _body, t, dependencies=("a",))
        .with_stage("c", _body, t, dependencies=("a",))
        .with_stage("d", _body, t, dependencies=("a",))
        .with_stage("e", _body, t, dependencies=("b", "c", "d"))
    )


async def paced(graph: StageGraph, sink: EventSink | None, rate: float, duration: float) -> Trial:
    """Start ``rate * duration`` runs at ``rate`` per second and wait for all of them."""
    runs = max(1, round(rate * duration))
    interval = 1.0 / rate
    create_task = asyncio.get_running_loop().create_task
    tasks: list[asyncio.Task[Any]] = []
    start = time.perf_counter()
    started = 0
    while started < runs:
        now = time.perf_counter()
        due = min(runs, int((now - start) / interval) + 1)
        while started < due:
            tasks.append(create_task(graph.run(make_context(event_sink=sink))))
            started += 1
        if started < runs:
            await asyncio.sleep(max(0.0, start + started * interval - time.perf_counter()))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    achieved = runs / elapsed if elapsed > 0 else float("inf")
    return Trial(rate, runs, achieved, elapsed <= duration / 0.95 + interval)


class Search:
    """The highest passing rate: double from ``settings.start`` until a trial fails, then bisect."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.trials: list[Trial] = []
        self.good = 0.0
        self.bad: float | None = None
        self.rate: float | None = settings.start

    def record(self, result: Trial) -> None:
        """Take one trial's result and choose the next rate (``None`` when the search is over)."""
        self.trials.append(result)
        if result.passed:
            self.good = result.rate
        else:
            self.bad = result.rate
        good, bad = self.good, self.bad
        if len(self.trials) >= self.settings.max_trials:
            self.rate = None
        elif bad is None:
            self.rate = result.rate * 2
        elif good == 0.0:
            self.rate = bad / 2 if bad >= 2.0 else None
        elif bad - good <= self.settings.precision * good:
            self.rate = None
        else:
            self.rate = (good + bad) / 2


# --------------------------------------------------------------------------- the receiver process


def _serve(conn: Connection) -> None:
    """The child process: a gRPC receiver that reports and forgets what it got on each request."""
    from tests.otel.otlp_receiver import GrpcReceiver

    receiver = GrpcReceiver()
    conn.send(receiver.endpoint)
    try:
        while conn.recv() == "take":
            with receiver._cond:
                traces, logs = list(receiver.traces), list(receiver.logs)
                receiver.traces.clear()
                receiver.logs.clear()
                receiver.metrics.clear()
            spans = [s for r in traces for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
            records = sum(len(sl.log_records) for r in logs for rl in r.resource_logs for sl in rl.scope_logs)
            conn.send((len(spans), sum(len(s.events) for s in spans), records))
    finally:
        receiver.stop()


class Receiver:
    """A ``GrpcReceiver`` in a child process; ``take()`` returns (spans, span events, log records) so far."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), daemon=True)
        self._process.start()
        child.close()
        self.endpoint: str = self._conn.recv()

    def take(self) -> tuple[int, int, int]:
        self._conn.send("take")
        spans, events, records = self._conn.recv()
        return int(spans), int(events), int(records)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._conn.close()


# --------------------------------------------------------------------------- trials


def _bare_trial(loop: asyncio.AbstractEventLoop, settings: Settings) -> Callable[[float], Trial]:
    graph = diamond().build()

    def trial(rate: float) -> Trial:
        cpu, own = time.process_time(), time.thread_time()
        result = loop.run_until_complete(paced(graph, None, rate, settings.duration))
        result.cpu_us_per_run = (time.process_time() - cpu) / result.runs * 1e6
        result.loop_cpu_us_per_run = (time.thread_time() - own) / result.runs * 1e6
        return result

    return trial


def _telemetry_trial(
    loop: asyncio.AbstractEventLoop,
    receiver: Receiver,
    settings: Settings,
    *,
    log_records: bool,
    span_events: bool = True,
) -> Callable[[float], Trial]:
    import stageflow_otel

    def trial(rate: float) -> Trial:
        receiver.take()  # forget anything left from an earlier trial
        # no loop monitor: its load-dependent loop_blocked events would upset the exact event count
        telemetry = stageflow_otel.setup("throughput-benchmark", set_global=False, loop_monitor=False)
        sink = telemetry.event_sink
        if log_records:
            sink.log_records = True  # type: ignore[attr-defined]
        if not span_events:
            sink.span_events = False  # type: ignore[attr-defined]
        graph = diamond().build(
            interceptors=[
                stageflow_otel.TracingInterceptor(telemetry.tracer_provider),
                stageflow_otel.MetricsInterceptor(telemetry.meter_provider),
            ]
        )
        try:
            cpu, own = time.process_time(), time.thread_time()
            result = loop.run_until_complete(paced(graph, sink, rate, settings.duration))
            flushed = telemetry.force_flush(timeout=30.0)
            result.cpu_us_per_run = (time.process_time() - cpu) / result.runs * 1e6
            result.loop_cpu_us_per_run = (time.thread_time() - own) / result.runs * 1e6
            result.spans, result.span_events, result.log_records = receiver.take()
            dropped = getattr(sink, "dropped", 0) + telemetry.spans_dropped
            result.dropped = dropped + sum(telemetry.export_failures.values())
        finally:
            telemetry.shutdown(timeout=10.0)
        # Which views carry the events: before the span-event mapping, only log records did.
        span_events_on = getattr(sink, "span_events", False)
        log_records_on = getattr(sink, "log_records", True)
        events = EVENTS_PER_RUN * result.runs
        result.lossless = (
            flushed
            and result.dropped == 0
            and result.spans == SPANS_PER_RUN * result.runs
            and result.span_events == (events if span_events_on else 0)
            and result.log_records == (events if log_records_on else 0)
        )
        return result

    return trial


def run_benchmark(settings: Settings, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Search every variant's highest passing rate; returns the JSON-able report."""
    import stageflow_otel

    variants: list[Variant] = []
    receiver = Receiver()
    loop = asyncio.new_event_loop()
    environment = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # metrics are not what this measures
    }
    has_switch = "log_records" in inspect.signature(stageflow_otel.OtlpEventSink).parameters
    try:
        with mock.patch.dict(os.environ, environment):
            plans: list[tuple[str, Callable[[float], Trial]]] = [
                ("bare", _bare_trial(loop, settings)),
                ("telemetry", _telemetry_trial(loop, receiver, settings, log_records=False)),
            ]
            if settings.log_records and has_switch:
                plans.append(
                    (
                        "telemetry + log records",
                        _telemetry_trial(loop, receiver, settings, log_records=True),
                    )
                )
                plans.append(
                    (
                        "log records, no span events",
                        _telemetry_trial(loop, receiver, settings, log_records=True, span_events=False),
                    )
                )
            # The searches advance in lockstep, one trial of each variant in turn, so that a change in
            # the machine's load affects every variant alike.
            searches = [(name, trial, Search(settings)) for name, trial in plans]
            while any(s.rate is not None for _, _, s in searches):
                for name, trial, state in searches:
                    if state.rate is None:
                        continue
                    result = trial(state.rate)
                    state.record(result)
                    if log is not None:
                        log(f"{name}: {result.rate:.0f} runs/s -> {'pass' if result.passed else 'fail'}")
            variants = [Variant(name, s.good, s.trials) for name, _, s in searches]
            # The cost of a run, at one rate every variant sustains, interleaved: the comparison that
            # depends least on how much of the machine the process gets.
            costs: dict[str, list[float]] = {name: [] for name, _ in plans}
            loop_costs: dict[str, list[float]] = {name: [] for name, _ in plans}
            for _ in range(settings.cost_reps):
                for name, trial in plans:
                    cost = trial(settings.cost_rate)
                    costs[name].append(cost.cpu_us_per_run)
                    loop_costs[name].append(cost.loop_cpu_us_per_run)
    finally:
        loop.close()
        receiver.close()
    bare = variants[0].best
    bare_cpu = _best_cpu(variants[0])
    bare_cost = statistics.median(costs["bare"])
    return {
        "settings": asdict(settings),
        "variants": [
            {
                "name": v.name,
                "best_runs_per_s": v.best,
                "ratio_to_bare": v.best / bare if bare else 0.0,
                "cpu_us_per_run": _best_cpu(v),
                "cpu_ratio_to_bare": _best_cpu(v) / bare_cpu if bare_cpu else 0.0,
                "cost_cpu_us_per_run": statistics.median(costs[v.name]),
                "cost_ratio_to_bare": statistics.median(costs[v.name]) / bare_cost,
                "cost_loop_cpu_us_per_run": statistics.median(loop_costs[v.name]),
                "trials": [asdict(t) | {"passed": t.passed} for t in v.trials],
            }
            for v in variants
        ],
    }


def _best_cpu(variant: Variant) -> float:
    """CPU µs per run of the trial at the best passing rate (0.0 when none passed)."""
    values = [t.cpu_us_per_run for t in variant.trials if t.passed and t.rate == variant.best]
    return min(values) if values else 0.0


def format_report(report: dict[str, Any]) -> str:
    """The report as a small text table."""
    lines = [
        "zero-loss throughput, 5-stage diamond, OTLP/gRPC to a local receiver; highest passing rate:",
    ]
    lines.extend(
        f"  {v['name']:<26} {v['best_runs_per_s']:8.0f} runs/s   ratio to bare {v['ratio_to_bare']:.3f}"
        f"   CPU {v['cpu_us_per_run']:7.0f} µs/run ({v['cpu_ratio_to_bare']:.2f}x bare)"
        for v in report["variants"]
    )
    rate = report["settings"]["cost_rate"]
    lines.append(f"CPU per run at {rate:g} runs/s (median of the interleaved cost trials):")
    lines.extend(
        f"  {v['name']:<26} {v['cost_cpu_us_per_run']:8.0f} µs/run   {v['cost_ratio_to_bare']:.2f}x bare"
        f"   (event loop thread {v['cost_loop_cpu_us_per_run']:.0f}, "
        f"other threads {v['cost_cpu_us_per_run'] - v['cost_loop_cpu_us_per_run']:.0f})"
        for v in report["variants"]
    )
    lines.append("trials (requested -> achieved runs/s, spans / span events / log records, dropped):")
    for v in report["variants"]:
        for t in v["trials"]:
            verdict = (
                "pass"
                if t["passed"]
                else ", ".join(
                    problem
                    for problem, present in (("lossy", not t["lossless"]), ("too slow", not t["sustained"]))
                    if present
                )
            )
            lines.append(
                f"  {v['name']:<26} {t['rate']:8.0f} -> {t['achieved']:8.0f}  "
                f"{t['spans']}/{t['span_events']}/{t['log_records']} of {t['runs']} runs, "
                f"dropped {t['dropped']}, CPU {t['cpu_us_per_run']:.0f} µs/run: {verdict}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the search and print the report."""
    parser = _common.parser(__doc__, quick="short trials, coarse search")
    parser.add_argument("--duration", type=float, help="seconds per trial")
    parser.add_argument("--start", type=float, help="first rate tried, runs/s")
    parser.add_argument("--no-log-records", action="store_true", help="skip the log records variant")
    args = parser.parse_args(argv)
    settings = _common.with_options(
        Settings.quick() if args.quick else Settings(),
        duration=args.duration,
        start=args.start,
        log_records=False if args.no_log_records else None,
    )
    report = run_benchmark(settings, log=_common.log)
    return _common.publish(format_report(report), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
