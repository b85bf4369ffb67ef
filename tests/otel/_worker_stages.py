"""Sync stages the worker tests send to other processes (module-level, so a spawned worker imports them)."""

from __future__ import annotations

import os

from opentelemetry import baggage, trace

from stageflow import StageContext, StageOutput


def traced_work(ctx: StageContext) -> StageOutput:
    """Open two nested spans in the worker and return what the worker saw (pid, baggage, its trace)."""
    tracer = trace.get_tracer("tests.worker")
    with tracer.start_as_current_span("user work"), tracer.start_as_current_span("user inner") as inner:
        seen = inner.get_span_context()
    return StageOutput.ok(
        pid=os.getpid(),
        tenant=baggage.get_baggage("tenant"),
        trace_id=f"{seen.trace_id:032x}",
        run=str(ctx.snapshot.run_id.pipeline_run_id),
        stage=ctx.stage_name,
        attempt=ctx.attempt,
    )


def untraced_work(ctx: StageContext) -> StageOutput:
    """Return the worker's pid and whether a span is current there."""
    current = trace.get_current_span().get_span_context()
    return StageOutput.ok(pid=os.getpid(), span_valid=current.is_valid)


def install_user_sdk(endpoint: str) -> None:
    """A worker initializer: the user's own SDK (service ``user-sdk``), exporting each span at once."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource({"service.name": "user-sdk"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)


def run_with_global_setup_and_fork(endpoint: str) -> None:
    """In a fresh interpreter: ``setup()`` with global providers, then a stage in a forked worker, which
    inherits those providers. Prints, as JSON, the stage's output and the spans the receiver got."""
    import asyncio
    import json
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    from stageflow import Pipeline, StageKind
    from stageflow.testing import make_context
    from stageflow_otel import TracingInterceptor, setup

    telemetry = setup("forking-parent", loop_monitor=False)
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    graph = (
        Pipeline(name="fork")
        .with_stage("work", traced_work, StageKind.TRANSFORM, executor=pool)
        .build(interceptors=[TracingInterceptor()])
    )
    try:
        results = asyncio.run(graph.run(make_context()))
        flushed = telemetry.force_flush(10.0)
    finally:
        pool.shutdown(wait=True)
        telemetry.shutdown(5.0)
    output = results["work"].output
    assert output is not None
    lost = {kind: sum(causes.values()) for kind, causes in telemetry.lost.items()}
    sys.stdout.write(json.dumps({"output": dict(output.data), "flushed": flushed, "lost": lost}) + "\n")
