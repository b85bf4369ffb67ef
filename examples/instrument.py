"""Instrument a pipeline: traces, metrics, structured logs and content capture, in one script.

Run (from the repository root, with the ``otel`` extra installed)::

    python examples/instrument.py                                   # spans recorded, not exported
    OTEL_TRACES_EXPORTER=console python examples/instrument.py      # spans printed as JSON
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc \\
        python examples/instrument.py                               # spans and metrics to a collector
    python examples/instrument.py --serve                           # keep /metrics up until Ctrl-C
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import urllib.request
from collections.abc import Mapping

import structlog

import stageflow_otel
from stageflow import Pipeline, StageContext, StageInfo, StageKind, StageOutput

# 1. Your own log lines: add_trace_context adds trace_id, span_id, run_id, pipeline and stage.
structlog.configure(
    processors=[
        structlog.processors.add_log_level,
        stageflow_otel.add_trace_context,
        structlog.processors.JSONRenderer(sort_keys=True),
    ]
)
log = structlog.get_logger()


async def retrieve(ctx: StageContext) -> StageOutput:
    log.info("retrieving", query=ctx.snapshot.input_text)
    await asyncio.sleep(0.01)
    return StageOutput.ok(documents=["guide.md", "faq.md"])


async def answer(ctx: StageContext) -> StageOutput:
    documents = ctx.inputs.get_from("retrieve", "documents", default=[])
    await asyncio.sleep(0.02)
    return StageOutput.ok(answer=f"See {', '.join(documents)}.", tokens=42)


PIPELINE = (
    Pipeline(name="ask")
    .with_stage("retrieve", retrieve, StageKind.ENRICH)
    .with_stage("answer", answer, StageKind.AGENT, dependencies=("retrieve",))
)


# 2. Content capture is opt-in: the hook returns the only output values that may leave the process.
def capture(stage: StageInfo, output: StageOutput) -> Mapping[str, int] | None:
    if stage.name == "answer":
        return {"tokens": output.data["tokens"]}  # span attribute stageflow.stage.output.tokens
    return None


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def main(metrics_port: int, serve: bool) -> None:
    # 3. Providers from the OTEL_* environment, plus /metrics on 127.0.0.1.
    telemetry = stageflow_otel.setup("ask-service", metrics_port=metrics_port)
    graph = PIPELINE.build(
        interceptors=[
            stageflow_otel.TracingInterceptor(telemetry.tracer_provider, capture_content=capture),
            stageflow_otel.MetricsInterceptor(telemetry.meter_provider),
            stageflow_otel.LoggingInterceptor(),
        ]
    )
    try:
        for question in ("What is stageflow?", "Where do my spans go?"):
            results = await graph.run(input_text=question)
        print(results.timeline())
        assert telemetry.metrics_server is not None
        url = telemetry.metrics_server.url
        print(f"metrics: {url}")
        text = await asyncio.to_thread(fetch, url)  # what `curl` shows
        print(
            *(
                line
                for line in text.splitlines()
                if line.startswith("stageflow_stage_duration_seconds_count")
            ),
            sep="\n",
        )
        if serve:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            print("serving /metrics until Ctrl-C", flush=True)  # only once Ctrl-C is handled
            await stop.wait()
    finally:
        telemetry.shutdown(timeout=5.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-port", type=int, default=9464, help="port of /metrics (0: any free one)")
    parser.add_argument("--serve", action="store_true", help="keep serving /metrics until Ctrl-C")
    args = parser.parse_args()
    asyncio.run(main(args.metrics_port, args.serve))
