"""Burst absorption: the largest burst of concurrent runs ``setup()``'s defaults export without loss.

Run it (from the repository root)::

    .venv/bin/python -m tests.benchmarks.burst             # search the largest lossless burst (minutes)
    .venv/bin/python -m tests.benchmarks.burst --quick     # the 1,000-run burst and complete mode only
    .venv/bin/python -m tests.benchmarks.burst --json out.json
    .venv/bin/python -m tests.benchmarks.burst --jaeger 5000   # through the real collector to Jaeger

A *burst* of N starts N concurrent runs of the 5-stage diamond (``a -> b, c, d -> e``) at once
(``asyncio.gather``) with full telemetry: ``stageflow_otel.setup()`` with its defaults (but the loop
monitor, whose load-dependent ``loop_blocked`` events would upset the exact count) exporting over
OTLP/gRPC to a healthy local receiver (``tests/otel/otlp_receiver.py``'s ``GrpcReceiver`` in a child
process), ``TracingInterceptor`` + ``MetricsInterceptor`` on the handle's providers and every run given
the handle's ``OtlpEventSink`` (with its OTLP log records on, when the sink has that switch). After the
burst, ``force_flush()``; the burst is *lossless* when the receiver got every span (6 per run), every
event in each view that is on (13 per run) and ``Telemetry.lost`` counts nothing. Otherwise the report
checks that the loss is counted exactly: received + counted == produced.

Each trial runs in a fresh process, so its peak RSS is its own; the memory a burst costs is that peak
minus the peak of the same burst without telemetry (``bare``: the graph without interceptors, in a
process that loaded ``stageflow_otel`` and ran ``setup()`` and ``shutdown()`` first), measured in the same
run. The search
doubles N from ``start`` until a burst loses something, then bisects to ``precision``. Then the
``complete`` mode (``STAGEFLOW_OTEL_MODE=complete``) runs ``complete_runs`` concurrent runs, which must
be lossless, and reports its duration next to the bounded mode's and the bare graph's at the same N.

``--jaeger N`` is the burst as a user sees it: N concurrent runs of the diamond whose every stage opens
one span of its own (11 spans a run), in a fresh process with ``setup()``'s defaults (only the service
name and the OTLP endpoint and protocol set), exporting to the shipped collector config
(``collector/otelcol.yaml``), which forwards to a real Jaeger (``collector/jaeger/config.yaml``), both
built by ``collector/build-stack.sh`` and started on free loopback ports (``tests/benchmarks/_stack.py``);
once over OTLP/gRPC, once over OTLP/HTTP. After ``force_flush()`` the burst is lossless when Jaeger holds
every span and nothing was counted lost; either way it reports whether Jaeger's spans plus the counted
losses make up every span produced.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from stageflow import EventSink, StageGraph
from stageflow.testing import make_context
from tests.benchmarks import _common
from tests.benchmarks._common import in_child
from tests.benchmarks.throughput import EVENTS_PER_RUN, SPANS_PER_RUN, Receiver, diamond

__all__ = (
    "EVENTS_PER_RUN",
    "JAEGER_SPANS_PER_RUN",
    "SPANS_PER_RUN",
    "Burst",
    "JaegerBurst",
    "Settings",
    "format_jaeger",
    "format_report",
    "main",
    "run_benchmark",
    "run_jaeger",
)


@dataclass(frozen=True, slots=True)
class Settings(
    _common.Presets,
    quick={"search": False},
    smallest={"start": 20, "complete_runs": 40, "search": False},
):
    """The burst search and the complete-mode trial. ``quick``: the 1,000-run burst and the complete-mode
    trial, no search; ``smallest``: tiny bursts, every code path in a few seconds (the smoke test)."""

    start: int = 1000
    """First burst size tried (runs)."""
    precision: float = 0.1
    """The bisection stops when the losing size is within this fraction of the lossless one."""
    max_trials: int = 8
    complete_runs: int = 10_000
    """Concurrent runs of the complete-mode trial."""
    search: bool = True
    """Search the largest lossless burst (``False``: only try ``start``)."""


@dataclass(slots=True)
class Burst:
    """One burst in one fresh process."""

    variant: str
    """``bare``, ``bounded`` (the defaults) or ``complete``."""
    runs: int
    seconds: float = 0.0
    """From the first run's start to the end of ``force_flush()``."""
    peak_rss_mib: float = 0.0
    spans: int = 0
    span_events: int = 0
    log_records: int = 0
    expected_span_events: int = 0
    expected_log_records: int = 0
    lost: dict[str, dict[str, int]] = field(default_factory=dict)
    flushed: bool = True

    @property
    def lost_total(self) -> int:
        """Spans plus events counted lost (events in both views counted once per view)."""
        return sum(sum(causes.values()) for causes in self.lost.values())

    @property
    def lossless(self) -> bool:
        if self.variant == "bare":
            return True
        return (
            self.flushed
            and self.lost_total == 0
            and self.spans == SPANS_PER_RUN * self.runs
            and self.span_events == self.expected_span_events
            and self.log_records == self.expected_log_records
        )

    @property
    def exact(self) -> bool:
        """Received + counted == produced, for spans and for each event view that is on."""
        if self.variant == "bare":
            return True
        spans_ok = self.spans + sum(self.lost.get("spans", {}).values()) == SPANS_PER_RUN * self.runs
        events_lost = sum(self.lost.get("events", {}).values())
        records_ok = (
            self.expected_log_records == 0 or self.log_records + events_lost == self.expected_log_records
        )
        return spans_ok and records_ok


# --------------------------------------------------------------------------- one burst, in a child


def _burst_process(conn: Connection, variant: str, runs: int, environment: dict[str, str]) -> None:
    os.environ.update(environment)
    if variant == "complete":
        os.environ["STAGEFLOW_OTEL_MODE"] = "complete"
    result = Burst(variant, runs)
    loop = asyncio.new_event_loop()
    try:
        if variant == "bare":
            _idle_telemetry()
            graph = diamond().build()
            start = time.perf_counter()
            loop.run_until_complete(_all(graph, None, runs))
            result.seconds = time.perf_counter() - start
        else:
            _telemetry_burst(loop, result)
    finally:
        loop.close()
    result.peak_rss_mib = _peak_rss_mib()
    conn.send(asdict(result))
    conn.close()


def _peak_rss_mib() -> float:
    """This process's own peak resident memory (MiB).

    ``VmHWM``, not ``getrusage``'s ``ru_maxrss``: Linux keeps the latter across ``execve``, so a child
    spawned by a parent that once held more would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _idle_telemetry() -> None:
    """Load what the telemetry variants load (``setup()`` and back), so memory compares like with like."""
    import stageflow_otel

    stageflow_otel.setup("burst-benchmark", set_global=False).shutdown(timeout=10.0)


async def _all(graph: StageGraph, sink: EventSink | None, runs: int) -> None:
    await asyncio.gather(*(graph.run(make_context(event_sink=sink)) for _ in range(runs)))


def _telemetry_burst(loop: asyncio.AbstractEventLoop, result: Burst) -> None:
    import stageflow_otel

    # the loop monitor's loop_blocked events depend on the machine's load, and this burst counts every
    # event exactly: it is left off here (its cost is measured by tests/benchmarks/monitor.py)
    telemetry = stageflow_otel.setup("burst-benchmark", set_global=False, loop_monitor=False)
    sink = telemetry.event_sink
    if hasattr(sink, "log_records"):
        sink.log_records = True
    graph = diamond().build(
        interceptors=[
            stageflow_otel.TracingInterceptor(telemetry.tracer_provider),
            stageflow_otel.MetricsInterceptor(telemetry.meter_provider),
        ]
    )
    try:
        start = time.perf_counter()
        loop.run_until_complete(_all(graph, sink, result.runs))
        result.flushed = telemetry.force_flush(timeout=120.0)
        result.seconds = time.perf_counter() - start
        result.lost = {kind: dict(causes) for kind, causes in telemetry.lost.items()}
    finally:
        telemetry.shutdown(timeout=10.0)
    events = EVENTS_PER_RUN * result.runs
    result.expected_span_events = events if getattr(sink, "span_events", False) else 0
    result.expected_log_records = events if getattr(sink, "log_records", True) else 0


def burst(variant: str, runs: int, receiver: Receiver) -> Burst:
    """One burst of ``runs`` concurrent runs in a fresh process; the receiver's counts filled in."""
    receiver.take()
    environment = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
    }
    result = Burst(**in_child(_burst_process, variant, runs, environment))
    result.spans, result.span_events, result.log_records = receiver.take()
    return result


# --------------------------------------------------------------------------- the search


def run_benchmark(settings: Settings, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Search the largest lossless burst, then time the complete mode; returns the JSON-able report."""
    say = log or (lambda line: None)
    receiver = Receiver()
    trials: list[tuple[Burst, Burst]] = []
    try:

        def trial(runs: int) -> bool:
            bare, bounded = burst("bare", runs, receiver), burst("bounded", runs, receiver)
            trials.append((bare, bounded))
            say(f"burst {runs}: {'lossless' if bounded.lossless else 'lossy'}")
            return bounded.lossless

        good, bad, runs = 0, 0, settings.start
        while len(trials) < settings.max_trials:
            if trial(runs):
                good = runs
            else:
                bad = runs
            if not settings.search:
                break
            if bad == 0:
                runs *= 2
            elif good == 0:
                runs //= 2
                if runs < 1:
                    break
            elif bad - good <= settings.precision * good:
                break
            else:
                runs = (good + bad) // 2
        n = settings.complete_runs
        complete = [burst(v, n, receiver) for v in ("bare", "bounded", "complete")]
        say(f"complete mode, {n} runs: {'lossless' if complete[2].lossless else 'lossy'}")
    finally:
        receiver.close()
    return {
        "settings": asdict(settings),
        "largest_lossless_burst": good,
        "smallest_lossy_burst": bad or None,
        "trials": [_pair(bare, bounded) for bare, bounded in trials],
        "complete": {
            "runs": settings.complete_runs,
            "bare": _row(complete[0]),
            "bounded": _row(complete[1]),
            "complete": _row(complete[2]),
            "complete_over_bounded": complete[2].seconds / complete[1].seconds,
            "complete_over_bare": complete[2].seconds / complete[0].seconds,
        },
    }


def _row(result: Burst) -> dict[str, Any]:
    return asdict(result) | {
        "lossless": result.lossless,
        "exact": result.exact,
        "lost_total": result.lost_total,
    }


def _pair(bare: Burst, bounded: Burst) -> dict[str, Any]:
    return {
        "runs": bounded.runs,
        "bare": _row(bare),
        "bounded": _row(bounded),
        "memory_mib": bounded.peak_rss_mib - bare.peak_rss_mib,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as text."""
    lines = [
        "burst absorption, 5-stage diamond, full telemetry, setup() defaults, OTLP/gRPC to a local receiver:",
        f"  largest lossless burst: {report['largest_lossless_burst']} runs"
        + (f" (first lossy: {report['smallest_lossy_burst']})" if report["smallest_lossy_burst"] else ""),
    ]
    for t in report["trials"]:
        b = t["bounded"]
        verdict = "lossless" if b["lossless"] else f"lost {b['lost_total']} ({_causes(b['lost'])})"
        lines.append(
            f"  {t['runs']:6d} runs: {b['spans']} spans, {b['span_events']} span events, "
            f"{b['log_records']} log records; {verdict}; counted exactly: {b['exact']}; "
            f"{b['seconds']:.2f} s (bare {t['bare']['seconds']:.2f} s); "
            f"memory {t['memory_mib']:.1f} MiB over bare (peak {b['peak_rss_mib']:.0f} MiB)"
        )
    c = report["complete"]
    lines.append(f"complete mode, {c['runs']} concurrent runs:")
    for name in ("bare", "bounded", "complete"):
        row = c[name]
        state = (
            ""
            if name == "bare"
            else ("lossless" if row["lossless"] else f"lost {row['lost_total']} ({_causes(row['lost'])})")
        )
        lines.append(f"  {name:<9} {row['seconds']:7.2f} s  peak {row['peak_rss_mib']:.0f} MiB  {state}")
    lines.append(
        f"  complete / bounded: {c['complete_over_bounded']:.2f}x; "
        f"complete / bare: {c['complete_over_bare']:.2f}x"
    )
    return "\n".join(lines)


def _causes(lost: dict[str, dict[str, int]]) -> str:
    parts = [
        f"{kind} {cause} {count}" for kind, causes in lost.items() for cause, count in causes.items() if count
    ]
    return ", ".join(parts) or "nothing counted"


# --------------------------------------------------------------------------- to Jaeger, as a user would

USER_SPANS_PER_RUN = 5
"""Each stage of the Jaeger burst opens one span of its own."""
JAEGER_SPANS_PER_RUN = SPANS_PER_RUN + USER_SPANS_PER_RUN


@dataclass(slots=True)
class JaegerBurst:
    """One burst exported through the shipped collector to Jaeger, with ``setup()``'s defaults."""

    protocol: str
    runs: int
    produced: int = 0
    """Spans ended in the process (``JAEGER_SPANS_PER_RUN`` per run)."""
    in_jaeger: int = 0
    """Spans of the burst's service that Jaeger holds once the flow settled."""
    lost: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    """From the first run's start to the end of ``force_flush()``."""
    burst_seconds: float = 0.0
    """From the first run's start to the last run's end."""
    peak_rss_mib: float = 0.0
    flushed: bool = True

    @property
    def spans_lost(self) -> int:
        return sum(self.lost.get("spans", {}).values())

    @property
    def lossless(self) -> bool:
        return self.flushed and self.spans_lost == 0 and self.in_jaeger == self.produced

    @property
    def exact(self) -> bool:
        """Every span reached Jaeger or was counted lost."""
        return self.in_jaeger + self.spans_lost == self.produced


def _user_diamond(tracer: Any) -> Any:
    """The 5-stage diamond whose every stage opens one span of its own."""
    from stageflow import Pipeline, StageContext, StageKind, StageOutput

    async def body(ctx: StageContext) -> StageOutput:
        with tracer.start_as_current_span("user work"):
            return StageOutput.ok(x=1)

    t = StageKind.TRANSFORM
    return (
        Pipeline(name="burst")
        .with_stage("a", body, t)
        .with_stage("b", body, t, dependencies=("a",))
        .with_stage("c", body, t, dependencies=("a",))
        .with_stage("d", body, t, dependencies=("a",))
        .with_stage("e", body, t, dependencies=("b", "c", "d"))
    )


def _jaeger_process(conn: Connection, protocol: str, runs: int, environment: dict[str, str]) -> None:
    os.environ.update(environment)
    from opentelemetry import trace

    import stageflow_otel

    result = JaegerBurst(protocol, runs, produced=JAEGER_SPANS_PER_RUN * runs)
    telemetry = stageflow_otel.setup()  # every default; the service name comes from OTEL_SERVICE_NAME
    graph = _user_diamond(trace.get_tracer("burst.user")).build(
        interceptors=[
            stageflow_otel.TracingInterceptor(telemetry.tracer_provider),
            stageflow_otel.MetricsInterceptor(telemetry.meter_provider),
        ]
    )
    loop = asyncio.new_event_loop()
    try:
        start = time.perf_counter()
        loop.run_until_complete(_all(graph, telemetry.event_sink, runs))
        result.burst_seconds = time.perf_counter() - start
        result.flushed = telemetry.force_flush(timeout=300.0)
        result.seconds = time.perf_counter() - start
        result.lost = {kind: dict(causes) for kind, causes in telemetry.lost.items()}
    finally:
        telemetry.shutdown(timeout=30.0)
        loop.close()
    result.peak_rss_mib = _peak_rss_mib()
    conn.send(asdict(result))
    conn.close()


def jaeger_burst(stack: Any, protocol: str, runs: int) -> JaegerBurst:
    """``runs`` concurrent runs in a fresh process exporting to ``stack``'s collector over ``protocol``."""
    service = f"burst-{protocol.split('/')[0]}-{runs}-{time.time_ns()}"
    environment = {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.grpc if protocol == "grpc" else stack.http,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }
    result = JaegerBurst(**in_child(_jaeger_process, protocol, runs, environment))
    result.in_jaeger = stack.settled_spans(service, result.produced, traces=runs + 100)
    return result


def _span_memory_process(conn: Connection, runs: int) -> None:
    import gc
    import tracemalloc

    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

    import stageflow_otel

    held: list[ReadableSpan] = []

    class Hold(SpanProcessor):
        """Keeps every ended span, as the export queue does while the exporter lags."""

        def on_end(self, span: ReadableSpan) -> None:
            held.append(span)

    provider = TracerProvider()
    provider.add_span_processor(Hold())
    sink = stageflow_otel.OtlpEventSink()
    graph = _user_diamond(provider.get_tracer("burst.user")).build(
        interceptors=[stageflow_otel.TracingInterceptor(provider)]
    )
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_all(graph, sink, 10))  # warm: caches and interned names
    held.clear()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    loop.run_until_complete(_all(graph, sink, runs))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    loop.close()
    conn.send(((after - before) / len(held), len(held)))
    conn.close()


def span_memory(runs: int = 1000) -> dict[str, float]:
    """Memory each ended span of the Jaeger burst holds while it waits in an export queue (bytes), and
    what ``setup()``'s default span queue therefore holds at most (MiB), measured in a fresh process."""
    from stageflow_otel import _settings

    per_span, spans = in_child(_span_memory_process, runs)
    capacity = _settings.SPAN_QUEUE.capacity + _settings.SPAN_QUEUE.batch_size
    return {
        "bytes_per_span": per_span,
        "spans": spans,
        "queue_spans": capacity,
        "queue_mib": per_span * capacity / 2**20,
    }


def run_jaeger(runs: int, protocols: Sequence[str] = ("grpc", "http/protobuf")) -> dict[str, Any]:
    """The burst of ``runs`` runs to Jaeger over each protocol; the JSON-able report."""
    from tests.benchmarks._stack import JaegerStack

    stack = JaegerStack()
    try:
        results = [jaeger_burst(stack, protocol, runs) for protocol in protocols]
    finally:
        stack.stop()
    return {
        "runs": runs,
        "span_memory": span_memory(),
        "bursts": [
            asdict(r) | {"lossless": r.lossless, "exact": r.exact, "spans_lost": r.spans_lost}
            for r in results
        ],
    }


def format_jaeger(report: dict[str, Any]) -> str:
    """The Jaeger bursts as text."""
    lines = [
        f"{report['runs']} concurrent 5-stage runs, a span of their own in each stage, setup() defaults, "
        "through the shipped collector to Jaeger:"
    ]
    for b in report["bursts"]:
        verdict = "nothing lost" if b["lossless"] else f"lost {b['spans_lost']} ({_causes(b['lost'])})"
        lines.append(
            f"  {b['protocol']:<14} {b['in_jaeger']} of {b['produced']} spans in Jaeger; {verdict}; "
            f"counted exactly: {b['exact']}; burst {b['burst_seconds']:.2f} s, flushed after "
            f"{b['seconds']:.2f} s; peak {b['peak_rss_mib']:.0f} MiB"
        )
    memory = report["span_memory"]
    lines.append(
        f"  a queued span of this burst holds {memory['bytes_per_span']:,.0f} B "
        f"(over {memory['spans']} spans): "
        f"the default span queue ({memory['queue_spans']:,} with the batch in flight) holds at most "
        f"{memory['queue_mib']:.0f} MiB"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the search and print the report."""
    parser = _common.parser(__doc__, quick="the 1,000-run burst and complete mode only")
    parser.add_argument("--start", type=int, help="first burst size")
    parser.add_argument("--complete-runs", type=int, help="runs of the complete-mode trial")
    parser.add_argument(
        "--jaeger",
        type=int,
        metavar="RUNS",
        help="instead: RUNS runs, a span of their own in each stage, through the collector to Jaeger",
    )
    args = parser.parse_args(argv)
    if args.jaeger is not None:
        report = run_jaeger(args.jaeger)
        return _common.publish(format_jaeger(report), report, args.json)
    settings = _common.with_options(
        Settings.quick() if args.quick else Settings(), start=args.start, complete_runs=args.complete_runs
    )
    report = run_benchmark(settings, log=_common.log)
    return _common.publish(format_report(report), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
