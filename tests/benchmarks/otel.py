"""OpenTelemetry interceptor benchmark: what tracing, metrics and logging cost per stage.

Run it (from the repository root)::

    .venv/bin/python -m tests.benchmarks.otel            # full run (about a minute)
    .venv/bin/python -m tests.benchmarks.otel --quick    # fast smoke run

What is measured, all in one process and one event loop, on one graph (a fan-out: one root, ``stages - 2``
parallel stages, one join; trivial ``async def`` bodies):

* ``bare``: the graph built without interceptors;
* ``empty x2``: two empty pass-through interceptors (the core chain's own cost, for comparison);
* ``no-sdk``: ``TracingInterceptor()`` + ``MetricsInterceptor()`` with no SDK configured (the global
  providers are the API's proxies), i.e. the fast path; target: well under 1 µs per stage over ``bare``;
* ``dropped``: ``TracingInterceptor`` with a tracer provider whose sampler drops every run (head
  sampling); target: under 1 µs per stage over ``bare``;
* ``t+m``: ``TracingInterceptor`` + ``MetricsInterceptor`` with the SDK providers below (a traced run's
  events are span events whatever its sink, so this is ``setup()``'s default telemetry on the loop but
  for the event counter);
* ``full``: ``TracingInterceptor`` + ``MetricsInterceptor`` + ``LoggingInterceptor`` with SDK providers
  (``BatchSpanProcessor`` with an exporter that drops everything, a ``MeterProvider`` with an in-memory
  reader, structlog JSON lines written to ``os.devnull``);
* ``floor``: the bare SDK cost we cannot avoid, per stage: one ``start_span`` + one ``Histogram.record`` +
  ``end``, through the same providers, in a plain loop;
* ``t+m+events``: ``t+m`` with every run given an ``OtlpEventSink`` (its default: each event a span event
  on its span, and counted), and ``t+m+records``: the same sink with span events off and an OTLP log
  record per event instead (a ``BatchLogRecordProcessor`` with an exporter that drops everything), the
  way events were exported before span events; ``floor+events``: ``floor`` plus the two ``add_event``
  calls of a stage's started and completed events (the events of a run, 2 + 2 per stage, counted per
  stage).

Reported: µs per stage of each graph variant, overheads over ``bare``, and the ratios
``(full - bare) / floor``, ``(t+m - bare) / floor``, ``(t+m+events - bare) / floor+events``, the cost of
the events as span events against as log records (``t+m+events - t+m`` against ``t+m+records - t+m``),
and ``no-sdk - bare``. Method: every variant is warmed up, then ``reps``
repetitions run the variants interleaved; each sample is a batch of runs, timed with
``time.process_time`` (the CPU time of every thread of the process: the loop, the span processor's and the
event sink's threads; the runs never block, and other processes disturb CPU time much less than wall
time; ``--clock wall`` uses ``time.perf_counter``); ``gc.collect()`` before each sample, garbage collector
disabled while timing;
figures are medians. The best (minimum) samples are printed too: on a shared machine they are the
least disturbed by other processes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog
from opentelemetry.metrics import Histogram
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Tracer

from stageflow import EventSink, Pipeline, StageContext, StageGraph, StageKind, StageOutput
from stageflow.interceptors import CallNext, Interceptor, StageInfo
from stageflow.testing import make_context
from stageflow_otel import LoggingInterceptor, MetricsInterceptor, OtlpEventSink, TracingInterceptor, semconv

__all__ = ("main",)

_clock: Callable[[], float] = time.process_time
"""The sample clock: this process's CPU time (every thread) unless ``--clock wall``."""

Sample = Callable[[], Awaitable[float]]
"""One timed sample: returns µs per stage."""


class _DropExporter(SpanExporter):
    """Accepts every batch and does nothing with it."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _DropLogExporter(LogRecordExporter):
    """Accepts every batch of log records and does nothing with it."""

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class _PassThrough(Interceptor):
    """An empty interceptor: what any stage interceptor costs in the core's chain."""

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        return await call_next(ctx)


async def _body(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(x=1)


def _fanout(stages: int) -> Pipeline:
    p = Pipeline(name="bench").with_stage("root", _body, StageKind.TRANSFORM)
    middle = [f"s{i}" for i in range(stages - 2)]
    for name in middle:
        p = p.with_stage(name, _body, StageKind.TRANSFORM, dependencies=("root",))
    return p.with_stage("join", _body, StageKind.TRANSFORM, dependencies=tuple(middle))


async def _us_per(work: Callable[[], Awaitable[None]], count: int) -> float:
    """µs per item of ``work()``, which handles ``count`` items: ``_clock`` time, with the GC collected first
    and then disabled."""
    gc.collect()
    gc.disable()
    try:
        start = _clock()
        await work()
        elapsed = _clock() - start
    finally:
        gc.enable()
    return elapsed / count * 1e6


def _graph_sample(graph: StageGraph, runs: int, sink: EventSink | None = None) -> Sample:
    ctx = make_context(event_sink=sink)
    stages = len(graph.stages)

    async def work() -> None:
        for _ in range(runs):
            await graph.run(ctx)

    return functools.partial(_us_per, work, runs * stages)


def _floor_sample(tracer: Tracer, histogram: Histogram, ops: int, *, events: bool = False) -> Sample:
    attrs = {semconv.PIPELINE_NAME: "bench", semconv.STAGE_NAME: "s"}
    started = {semconv.EVENT_TYPE: "stage.s.started", semconv.STAGE_NAME: "s"}
    completed = {semconv.EVENT_TYPE: "stage.s.completed", semconv.STAGE_NAME: "s"}

    async def work() -> None:
        for _ in range(ops):
            span = tracer.start_span("stage s", attributes=attrs)
            if events:
                span.add_event(semconv.EVENTS["stage.started"], started)
            histogram.record(0.001, attrs)
            if events:
                span.add_event(semconv.EVENTS["stage.completed"], completed)
            span.end()

    return functools.partial(_us_per, work, ops)


async def _measure(
    variants: dict[str, Sample], reps: int, flush: Callable[[], object] = lambda: None
) -> dict[str, float]:
    for sample in variants.values():
        await sample()
        flush()
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, sample in variants.items():
            results[name].append(await sample())
            flush()  # the log record thread's backlog is not carried into the next sample
    figures = {name: statistics.median(values) for name, values in results.items()}
    figures.update({f"{name} (min)": min(values) for name, values in results.items()})
    return figures


async def run(stages: int, runs: int, reps: int) -> dict[str, float]:
    """Measure every variant; returns µs per stage (per operation for ``floor``)."""
    pipeline = _fanout(stages)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_DropExporter(), max_queue_size=1 << 16))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    devnull = open(os.devnull, "w")  # noqa: ASYNC230 - set-up, not timed; closed below
    logger = structlog.wrap_logger(
        structlog.WriteLogger(devnull),
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    )
    full: list[Interceptor] = [
        TracingInterceptor(tracer_provider),
        MetricsInterceptor(meter_provider),
        LoggingInterceptor(logger),
    ]
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(_DropLogExporter(), max_queue_size=1 << 16)
    )
    span_events = OtlpEventSink(meter_provider=meter_provider, logger_provider=logger_provider)
    log_records = OtlpEventSink(
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        span_events=False,
        log_records=True,
        max_buffer=1 << 20,
    )
    dropping_provider = TracerProvider(sampler=ALWAYS_OFF)
    dropping_provider.add_span_processor(BatchSpanProcessor(_DropExporter(), max_queue_size=1 << 16))
    tracer = tracer_provider.get_tracer("bench")
    histogram = meter_provider.get_meter("bench").create_histogram("bench.floor", unit="s")
    variants: dict[str, Sample] = {
        "bare": _graph_sample(pipeline.build(), runs),
        "empty x2": _graph_sample(pipeline.build(interceptors=[_PassThrough(), _PassThrough()]), runs),
        "no-sdk": _graph_sample(
            pipeline.build(interceptors=[TracingInterceptor(), MetricsInterceptor()]), runs
        ),
        "dropped": _graph_sample(pipeline.build(interceptors=[TracingInterceptor(dropping_provider)]), runs),
        "t+m": _graph_sample(pipeline.build(interceptors=full[:2]), runs),
        "full": _graph_sample(pipeline.build(interceptors=full), runs),
        "floor": _floor_sample(tracer, histogram, runs * stages),
        "t+m+events": _graph_sample(pipeline.build(interceptors=full[:2]), runs, span_events),
        "t+m+records": _graph_sample(pipeline.build(interceptors=full[:2]), runs, log_records),
        "floor+events": _floor_sample(tracer, histogram, runs * stages, events=True),
    }
    try:
        return await _measure(variants, reps, flush=log_records.flush)
    finally:
        span_events.shutdown()
        log_records.shutdown()
        tracer_provider.shutdown()
        dropping_provider.shutdown()
        meter_provider.shutdown()
        logger_provider.shutdown()
        devnull.close()


def report(figures: dict[str, float], stages: int) -> str:
    """The figures as a small text table with the ratios."""
    bare, no_sdk, full, floor = figures["bare"], figures["no-sdk"], figures["full"], figures["floor"]
    t_m = figures["t+m"]
    best_bare = figures["bare (min)"]
    best_no_sdk = figures["no-sdk (min)"] - best_bare
    best_ratio = (figures["full (min)"] - best_bare) / figures["floor (min)"]
    lines = [
        f"graph: fan-out of {stages} stages; µs per stage (median)",
        f"  bare (no interceptors)                 {bare:8.2f}",
        f"  two empty pass-through interceptors    {figures['empty x2']:8.2f}   overhead "
        f"{figures['empty x2'] - bare:+.2f} µs/stage (the core chain's own cost)",
        f"  no SDK: tracing+metrics (fast path)    {no_sdk:8.2f}   overhead {no_sdk - bare:+.2f} µs/stage",
        f"  tracing, head sampling drops the run   {figures['dropped']:8.2f}   overhead "
        f"{figures['dropped'] - bare:+.2f} µs/stage (target < 1 µs)",
        f"  tracing+metrics, SDK                   {t_m:8.2f}   overhead {t_m - bare:+.2f} µs/stage",
        f"  full: tracing+metrics+logging, SDK     {full:8.2f}   overhead {full - bare:+.2f} µs/stage",
        f"  floor: span start/end + histogram      {floor:8.2f}   (per operation, BatchSpanProcessor)",
        f"  t+m + OtlpEventSink: span events        {figures['t+m+events']:8.2f}   events "
        f"{figures['t+m+events'] - t_m:+.2f} µs/stage over t+m",
        f"  t+m + OtlpEventSink: log records       {figures['t+m+records']:8.2f}   events "
        f"{figures['t+m+records'] - t_m:+.2f} µs/stage over t+m",
        f"  floor + 2 add_event per stage          {figures['floor+events']:8.2f}   (per operation)",
        f"ratio full overhead / SDK floor: {(full - bare) / floor:.2f}x",
        f"ratio t+m overhead / SDK floor: {(t_m - bare) / floor:.2f}x",
        f"ratio default telemetry (t+m, events as span events) overhead / SDK floor with events: "
        f"{(t_m - bare) / figures['floor+events']:.2f}x (target <= 2x)",
        f"ratio t+m+events overhead / SDK floor with events: "
        f"{(figures['t+m+events'] - bare) / figures['floor+events']:.2f}x",
        f"events as span events / as log records (cost over t+m): "
        f"{(figures['t+m+events'] - t_m) / (figures['t+m+records'] - t_m):.2f}x",
        f"ratio no-SDK / bare: {no_sdk / bare:.3f}x ({no_sdk - bare:+.2f} µs/stage; target < 1 µs)",
        "best samples (least disturbed by other processes), µs per stage:",
        "  "
        + ", ".join(f"{name[:-6]} {value:.2f}" for name, value in figures.items() if name.endswith("(min)")),
        f"  no-SDK overhead {best_no_sdk:+.2f} µs/stage; full overhead / floor {best_ratio:.2f}x",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few repetitions, small batches")
    parser.add_argument("--stages", type=int, default=50)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="sample clock (default cpu)")
    args = parser.parse_args(argv)
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    runs, reps = (10, 3) if args.quick else (100, 11)
    figures = asyncio.run(run(args.stages, runs, reps))
    print(report(figures, args.stages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
