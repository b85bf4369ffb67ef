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
