"""The README's telemetry reference, rendered from ``semconv`` so the docs cannot drift from the code.

It runs past 500 lines because it holds the reference's prose next to the tables it renders from ``semconv``,
so a name and its explanation change together.

Usage::

    python -m stageflow_otel.docs            # rewrite README.md between the telemetry markers
    python -m stageflow_otel.docs --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import _http, _prometheus, _settings, semconv

__all__ = ("END_MARKER", "START_MARKER", "main", "render_reference", "replace_section")

START_MARKER = "<!-- telemetry:start -->"
END_MARKER = "<!-- telemetry:end -->"

_PIPELINE_EVENTS = ("pipeline.created", "pipeline.started", "pipeline.completed", "pipeline.failed")


def _code(value: str) -> str:
    return f"`{value}`" if value else ""


def _severity(kind: str) -> str:
    if kind.endswith(".failed"):
        return "ERROR"
    if kind.endswith((".cancelled", ".loop_blocked")):
        return "WARN"
    return "INFO"


_CAUSE_MEANINGS = {
    semconv.DROP_CAUSE_QUEUE_FULL: "arrived while the export queue (or the event sink's buffer) was full",
    semconv.DROP_CAUSE_EXPORT_FAILED: "in a batch the exporter reported failed (collector down or rejecting)",
    semconv.DROP_CAUSE_TIMEOUT: "a bounded wait ran out: `complete` mode's wait for queue room, or "
    "`shutdown()`'s deadline with the item still queued or in flight",
    semconv.DROP_CAUSE_SHUTDOWN: "arrived after `shutdown()` began",
    semconv.DROP_CAUSE_TOO_LARGE: f"alone encodes to more than `{semconv.ENV_MAX_EXPORT_BYTES}` (4 MiB); "
    "a batch that would exceed it is split, so the other items still go out",
}


def _delivery() -> list[str]:
    """The "Delivery and loss accounting" section."""
    counters = ", ".join(
        f"`{m.name}`"
        for m in (
            semconv.TELEMETRY_SPANS_DROPPED,
            semconv.EVENTS_DROPPED,
            semconv.TELEMETRY_LOG_RECORDS_DROPPED,
            semconv.TELEMETRY_METRIC_POINTS_DROPPED,
        )
    )
    lines = [
        "### Delivery and loss accounting",
        "",
        "With `setup()`, every span, event, log record and metric data point the process gives up on is "
        f"counted, by `{semconv.TELEMETRY_CAUSE}`, in {counters} (the *Telemetry health* dashboard shows "
        "them), and in `Telemetry.lost`. `force_flush()` and `shutdown()` return `False` when anything "
        "was lost since the previous `force_flush()` (or `setup()`). Span events travel inside their "
        f"span: a lost span's events are counted with it in `{semconv.TELEMETRY_SPANS_DROPPED.name}`; "
        f"`{semconv.EVENTS_DROPPED.name}` counts the event log records (when switched on) given up on.",
        "",
        f"| `{semconv.TELEMETRY_CAUSE}` | the item... |",
        "|---|---|",
    ]
    lines += [f"| `{cause}` | {_CAUSE_MEANINGS[cause]} |" for cause in semconv.DROP_CAUSES]
    lines += [
        "",
        f"Two delivery modes (`setup(mode=...)`, else `{semconv.ENV_MODE}`): `bounded` (the default) never "
        "makes the application wait: what finds a full queue is dropped and counted (`queue_full`). "
        "`complete` is for audits and batch jobs that must not lose telemetry: a span or log record that "
        f"finds the queue full waits for room, at most `{semconv.ENV_COMPLETE_TIMEOUT}` seconds per stall, "
        "without blocking the event loop: ended on the loop, it is parked and the run that ended it awaits "
        "room (`TracingInterceptor` awaits after each span it ends), so runs slow down to the exporter's "
        "pace while other tasks keep being served (events as log records, opt-in, likewise wait for the "
        "event sink's buffer; another thread ending a span blocks until there is room); what still finds "
        "no room is dropped and counted (`timeout`), and until the exporter takes a batch again later "
        "items do not wait, so a stalled collector costs one timeout, not one per span.",
        "",
        "The defaults are sized for bursts: span and log record queues of 16,384 (the SDK's hold "
        "2,048), batches of 512 (`OTEL_BSP_*`, `OTEL_BLRP_*` below). Measured by "
        "`python -m tests.benchmarks.burst` (N concurrent runs of a 5-stage graph started at once, "
        "tracing and metrics interceptors, the event sink with span events and log records on, "
        "OTLP/gRPC to a local receiver, on 2 cores shared with other jobs): bursts of 1,000 to 8,000 "
        "runs were delivered whole (8,000 runs: 48,000 spans, 104,000 span events, 104,000 log "
        "records); at 9,000 runs 301 event log records were lost, every one counted (no span was lost "
        "at any size: the log record queue fills first). A burst's peak memory over the same burst "
        "without telemetry: 31 MiB at 1,000 runs, 110 MiB at 8,000. In `complete` mode a 10,000-run "
        "burst lost nothing and took 56.9 s, 1.26x the `bounded` mode's 45.1 s (which lost nothing "
        "either that time): waiting runs await room while the event loop serves the others. As a "
        "user meets it (`python -m tests.benchmarks.burst --jaeger 5000`: 5,000 concurrent runs whose "
        "every stage opens a span of its own, 55,000 spans, `setup()`'s defaults, through the shipped "
        "collector config to a real Jaeger, 2026-12-06): every span reached Jaeger over OTLP/gRPC and "
        "over OTLP/HTTP, and so they did at 20,000 runs (220,000 spans) with the export encoder of this "
        "release (before it, 2,114 spans of the HTTP burst were counted `queue_full`). Memory: a queued "
        "span of that burst holds about 2.4 KB (stage spans with their events and links, and the "
        "stages' own), so the span queue (16,384 plus the batch in flight) holds at most about 40 MiB.",
        "",
        "After `os.fork()` the child's telemetry works: it starts with empty queues and its own export "
        "threads and connections (what the parent had queued stays the parent's to deliver).",
        "",
    ]
    return lines


def render_reference() -> str:
    """The markdown of the telemetry reference (without the markers and without a heading)."""
    lines = [
        "Generated from `stageflow_otel/semconv.py` by `python -m stageflow_otel.docs`; do not edit by hand.",
        f"Instrumentation scope: `{semconv.INSTRUMENTATION_SCOPE}`. Durations are in seconds. Run ids appear",
        "only on spans, logs and events, never on metrics.",
        "",
        "Set up everything from the `OTEL_*` environment with one call, and shut down with a bound:",
        "",
        "```python",
        "import stageflow_otel",
        "",
        'telemetry = stageflow_otel.setup("checkout")  # providers, event sink, /metrics',
        "graph = pipeline.build(interceptors=[",
        "    stageflow_otel.TracingInterceptor(telemetry.tracer_provider),",
        "    stageflow_otel.MetricsInterceptor(telemetry.meter_provider),",
        "])",
        "...",
        "telemetry.shutdown(timeout=5.0)  # returns within ~5 s even if the collector is down",
        "```",
        "",
        "With an OTLP endpoint configured, that signal goes to it (`grpc` or `http/protobuf`). Without one,",
        "nothing needs a server: metrics are served at `http://127.0.0.1:9464/metrics` (OpenMetrics with",
        "`trace_id` exemplars), and spans and events are recorded (so logs and exemplars carry trace ids)",
        "but only exported when `OTEL_TRACES_EXPORTER` / `OTEL_LOGS_EXPORTER` name `console` or `otlp`.",
        "`OTEL_SDK_DISABLED=true` makes everything a no-op.",
        "",
        "A service stopped with SIGTERM (`docker stop`, Kubernetes, systemd) or Ctrl-C dies at once, and "
        "what is",
        "still queued for export is lost: the interpreter's exit hooks do not run on a signal. Opt in to a "
        "flush",
        "first, from the main thread, after installing your own handlers (if any):",
        "",
        "```python",
        'telemetry = stageflow_otel.setup("checkout")',
        "telemetry.shutdown_on_signals(timeout=5.0)  # SIGTERM and SIGINT: flush (at most ~5 s), then let "
        "them act",
        "```",
        "",
        "On the first signal `shutdown(timeout)` runs in a thread while the service goes on; then the signal "
        "takes",
        "effect as before (the process ends by SIGTERM, `KeyboardInterrupt` for Ctrl-C, or your handler "
        "runs). A",
        "second signal skips the rest of the flush. A service running `asyncio.run(main())` still ends with",
        "`KeyboardInterrupt` on Ctrl-C, once the flush is done.",
        "",
        "### Spans",
        "",
        "| span | kind | parent |",
        "|---|---|---|",
        f"| `{semconv.SPAN_PIPELINE_PREFIX}{{pipeline name}}` | INTERNAL "
        "| the current span, else the W3C `traceparent` in the run's metadata, else `TRACEPARENT` |",
        f"| `{semconv.SPAN_STAGE_PREFIX}{{stage name}}` | INTERNAL "
        "| the run span, always; one link per dependency "
        f"(`{semconv.LINK_TYPE}={semconv.LINK_TYPE_DEPENDENCY}`), up to {semconv.DEFAULT_LINK_LIMIT} "
        f"with `setup()` (`OTEL_SPAN_LINK_COUNT_LIMIT`); links beyond are counted in "
        f"`{semconv.TELEMETRY_LINKS_DROPPED.name}` |",
        "",
        "### Attributes",
        "",
        "| attribute | type | where | description |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{a.name}` | {a.type} | {a.where} | {a.description} |" for a in semconv.ATTRIBUTES]
    lines += [
        "",
        f"`{semconv.RUN_RESULT}` and `{semconv.STAGE_RESULT}` take the values "
        + ", ".join(f"`{r}`" for r in semconv.RESULTS)
        + f"; `{semconv.ERROR_TYPE}` is set only on failure: the exception's class name "
        f"(`stageflow.error_type_name`), `{semconv.ERROR_TYPE_CANCELLED}` for a cancelled task, "
        f"`{semconv.ERROR_TYPE_RETRY_REQUESTED}` for a `StageOutput.retry` attempt (`{semconv.OTHER}` "
        "when unknown).",
        "",
        "### Metrics",
        "",
        "The Prometheus name is the same scraped from the collector's Prometheus exporter and from the",
        f"in-process `/metrics` endpoint (which also adds the `{semconv.OTEL_SCOPE_LABEL}` label, as the "
        "collector does).",
        "",
        "| metric | instrument | unit | Prometheus | attributes | description |",
        "|---|---|---|---|---|---|",
    ]
    for m in semconv.METRICS:
        attributes = ", ".join(f"`{a}`" for a in m.attributes) or "none"
        lines.append(
            f"| `{m.name}` | {m.instrument} | `{m.unit}` | `{m.prometheus}` | {attributes} "
            f"| {m.description} |"
        )
    lines += [
        "",
        "Histogram buckets (seconds, every histogram but the time-to-first ones): "
        + ", ".join(f"{b:g}" for b in semconv.DURATION_BUCKETS)
        + ". The time to first chunk, per output chunk and to first output histograms (and "
        f"`{semconv.GEN_AI_TIME_TO_FIRST_CHUNK.name}`) use the GenAI conventions' boundaries, 10 ms to "
        "82 s doubling: "
        + ", ".join(f"{b:g}" for b in semconv.FIRST_CHUNK_BUCKETS)
        + " (`setup()`'s views set them, and any reader that honours the boundaries an instrument "
        "advises; a `PrometheusMetricReader` on a provider of your own, without views, gives every "
        "histogram the duration buckets). Labels are the attributes with dots replaced by underscores.",
        "",
        "### Events",
        "",
        "`TracingInterceptor` puts every event of a traced run on the trace, whatever event sink the run "
        "was given (none too): each event is a **span event** on the span it belongs to, with the event's "
        "own timestamp, in the order the executor emitted them. `pipeline.*` events are on the run span "
        "(`pipeline.created` too: the run span starts just before it), "
        "`stage.{name}.*` events on that stage's span (the span starts at `started` and ends at the event "
        "that closes the attempt: `completed`, `failed`, `skipped`, `cancelled`, or a `retrying` between "
        "two attempts; that event's result wins, so a stage an interceptor fell back from is a `skip` "
        "span), and the events of a stage that never had a span (a conditional stage the executor "
        "skipped) on the run span. An event outside "
        f"the taxonomy (a stage's `ctx.try_emit_event(...)`) is named `{semconv.EVENT_OTHER}` and goes on "
        "the span of the stage it names, else the run span. Each has a static "
        f"name, the event's type (such as `stage.llm.completed`) in `{semconv.EVENT_TYPE}`, and the "
        "event data as `stageflow.*` attributes (stage, kind, attempt, wait, duration, reason, "
        f"`{semconv.ERROR_TYPE}`: the exception's class name, and the redacted message in "
        f"`{semconv.EXCEPTION_MESSAGE}`); durations, "
        "waits and retry delays are seconds rounded to the microsecond, in the log records' body too. "
        "`OtlpEventSink` (the sink `setup()` installs) only exports: it counts every event in "
        f"`{semconv.EVENTS_EMITTED.name}` by `{semconv.EVENT_NAME}`, pipeline and stage, and "
        "`OtlpEventSink(span_events=False)` keeps its runs' events off the spans.",
        "",
        "**Log records are opt-in**: `STAGEFLOW_EVENT_LOG_RECORDS=true` (or "
        "`setup(event_log_records=True)`, or `OtlpEventSink(log_records=True)`) also exports every event "
        "as an OTLP log record, for searching events in Loki: the same name and attributes as the span "
        f"event plus `{semconv.RUN_ID}` and `{semconv.PIPELINE_NAME}` (which the span event takes from "
        "its span), the event data as body, the severity below, and the trace context of the run span "
        "(of the stage's span for an event a stage emits while it runs, such as its own "
        "`ctx.try_emit_event(...)`; for an untraced run, the context current when it was emitted). The "
        "sink never blocks the event loop; a log record that finds the sink's buffer full is dropped and "
        "counted in "
        f"`{semconv.EVENTS_DROPPED.name}`.",
        "",
        "| event type | event name | severity |",
        "|---|---|---|",
    ]
    for kind, name in semconv.EVENTS.items():
        event_type = (
            kind
            if kind in _PIPELINE_EVENTS or kind.startswith("pipeline.")
            else kind.replace("stage.", "stage.{name}.", 1)
        )
        lines.append(f"| `{event_type}` | `{name}` | {_severity(kind)} |")
    lines += [f"| any other type | `{semconv.EVENT_OTHER}` | INFO |", "", *_delivery()]
    lines += _streams_section()
    lines += _hops_section()
    lines += _loop_section()
    lines += _safety_section()
    lines += [
        "### Environment variables",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{e.name}` | {e.default or '(unset)'} | {e.description} |" for e in semconv.ENVIRONMENT]
    sdk_read = [f"`{e.name}`" for e in semconv.ENVIRONMENT if e.name in _settings.SDK_VARIABLES]
    lines += [
        "",
        "The OTLP exporters also honour their own `OTEL_EXPORTER_OTLP_*` headers, certificate, compression "
        "and per-signal timeout variables, and the batch processors `OTEL_BSP_*` / `OTEL_BLRP_*`.",
        "",
        "`setup()` reads these variables once, when it is called, and checks each: a value it cannot use "
        "is logged with the variable, the value and what it must be, and the default applies; an export "
        "batch larger than its queue and an unusable "
        f"`{_settings.ENV_MAX_SERIES}` raise `ValueError` naming the fix. The OpenTelemetry SDK reads "
        f"{', '.join(sdk_read[:-1])} and {sdk_read[-1]} itself, and `TracingInterceptor` reads "
        "`TRACEPARENT` and `TRACESTATE` at each run.",
    ]
    return "\n".join(lines) + "\n"


def _streams_section() -> list[str]:
    """The "Streaming stages" section: the first-chunk span event, the attributes, the histograms."""
    return [
        "### Streaming stages",
        "",
        "A streaming stage (an async generator) is measured by the engine on its monotonic clock. Its span "
        f"gets **one** `{semconv.EVENTS['stage.first_chunk']}` span event at its first chunk (never one "
        f"per chunk), with `{semconv.STAGE_TIME_TO_FIRST_CHUNK}`, which the span carries from then on, "
        "also when the stream fails later; its closing event adds "
        f"`{semconv.STAGE_CHUNKS}` and `{semconv.STAGE_TIME_PER_OUTPUT_CHUNK}` (two chunks or more) to "
        "the span (with `OtlpEventSink`, as for every span event). The run span of a pipeline with a "
        f"streaming stage carries `{semconv.RUN_TIME_TO_FIRST_OUTPUT}`: the first chunk of the final "
        "stage (or its end), as `RunResult.time_to_first_output` measures it.",
        "",
        f"`MetricsInterceptor` records `{semconv.STAGE_TIME_TO_FIRST_CHUNK}` and "
        f"`{semconv.STAGE_TIME_PER_OUTPUT_CHUNK}` per streaming stage, and "
        f"`{semconv.PIPELINE_RUN_TIME_TO_FIRST_OUTPUT.name}` per run of a pipeline with a streaming "
        "stage, at the run's end from its `RunResult` (a run cancelled by its caller has none; its spans "
        "still carry what was measured). A stage that declares the GenAI operation in its config is a "
        f"GenAI stage: its time to first chunk is also recorded as "
        f"`{semconv.GEN_AI_TIME_TO_FIRST_CHUNK.name}`, with the GenAI attributes its config holds "
        f"(`{semconv.GEN_AI_OPERATION_NAME}` marks it; "
        + ", ".join(f"`{a}`" for a in semconv.GEN_AI_ATTRIBUTES[1:])
        + f" are optional; `{semconv.ERROR_TYPE}` when the stage did not succeed):",
        "",
        "```python",
        "pipeline.with_stage(",
        '    "llm", llm, StageKind.TRANSFORM, dependencies=("stt",),',
        '    config={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",',
        '            "gen_ai.request.model": "gpt-4o-mini"},',
        ")",
        "```",
        "",
        "A stage class receives its config as constructor keywords, except dotted keys such as these, which "
        "its constructor gets only if it takes them (`**kwargs`).",
        "",
    ]


def _hops_section() -> list[str]:
    """The "Across threads and processes" section: dispatch time, abandoned work, worker processes."""
    return [
        "### Across threads and processes",
        "",
        "A sync stage runs in a thread or on an executor (a process pool, Dask, Ray). Its span and its "
        f"`completed` event carry `{semconv.STAGE_DISPATCH_DURATION}`, the seconds the hop to the executor "
        "and back added (queueing, pickling, the trip), and `MetricsInterceptor` records it for each "
        f"sync stage that completed in the `{semconv.STAGE_DISPATCH_DURATION_METRIC.name}` histogram at "
        "the end of the run (a run cancelled by its caller has no result to take it from). When a hop is "
        "cancelled (fail-fast, a timeout, the caller), the span and the `failed`/`cancelled` event "
        f"carry `{semconv.STAGE_WORK}`: "
        f"`{semconv.WORK_STOPPED}` (it never started, ended within the grace period or was terminated) or "
        f"`{semconv.WORK_ABANDONED}` (still running when the grace ran out; its late result is discarded), "
        f"and the OTLP event sink counts the latter in `{semconv.STAGE_ABANDONED.name}`. The span "
        "takes these attributes from the stage's events, which the tracing side receives whatever sink "
        "the run was given.",
        "",
        "**One trace across processes.** With `setup()`, every stage sent to another process carries the "
        "W3C context of its stage span (`traceparent`, `tracestate`, `baggage`) and this process's "
        "telemetry settings: its resource, the OTLP endpoints, protocols and exporters, queue and batch "
        "sizes, length and link limits, the delivery mode. Never secrets: OTLP headers, "
        "certificates and client keys are read in the worker from its own environment, as is what the "
        "OpenTelemetry SDK reads itself (the sampler, OTLP timeouts and compression, the metric export "
        "interval); under the default parent-based sampler the worker's spans follow the stage span's "
        "sampling decision. The worker "
        "configures its SDK once per process from those settings (its resource gets a "
        "`service.instance.id` of its own and `process.pid`; it serves no `/metrics` and sends metrics "
        "over OTLP only if this process does), attaches the context, so the spans your code opens there "
        "are children of the stage span, and after the stage flushes its telemetry for at most "
        f"`{semconv.ENV_WORKER_FLUSH_TIMEOUT}` seconds before the result returns. A worker that already "
        "has an SDK keeps it (yours, or the one a forked worker inherited). No extra span is opened in "
        "the worker: the stage span covers the hop and the dispatch time splits it. What a worker "
        "could not deliver comes back with the result and is added to this process's "
        f"`{semconv.TELEMETRY_SPANS_DROPPED.name}`, `{semconv.TELEMETRY_LOG_RECORDS_DROPPED.name}` and "
        f"`{semconv.TELEMETRY_METRIC_POINTS_DROPPED.name}` with the same `{semconv.TELEMETRY_CAUSE}`, "
        f"its failed export batches to `{semconv.TELEMETRY_EXPORT_FAILURES.name}` and its truncated links "
        f"to `{semconv.TELEMETRY_LINKS_DROPPED.name}`; a worker configured this way keeps its own copies "
        "of these counters at zero, so nothing is counted twice. What it loses after the last stage it "
        "ran is reported with its next stage. The latest `setup()` of a process is the one whose settings "
        "travel. With metrics over OTLP, start process pools with `spawn` or `forkserver` "
        '(`ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn"))`): a forked worker '
        "inherits the parent's meter provider with the figures it held at the fork, and its exports repeat "
        "them under the worker's own `service.instance.id`, so sums across instances count them twice.",
        "",
        "To continue a trace in a process you call yourself (an HTTP service, a queue consumer), put "
        "`stageflow_otel.inject_context()` in the request's headers and extract them there with "
        "OpenTelemetry's propagator.",
        "",
    ]


def _loop_section() -> list[str]:
    """The "The event loop" section: the loop monitor's metrics and span events."""
    return [
        "### The event loop",
        "",
        "`setup()` starts the core's `stageflow.LoopMonitor` for the process (`setup(loop_monitor=False)` "
        f"or `{semconv.ENV_LOOP_MONITOR}=false` leave it off; `shutdown()` stops it). OpenTelemetry has no "
        "semantic convention for CPython's event loop, so its metrics follow the shape of Node's "
        f"`nodejs.eventloop.*`: `{semconv.LOOP_LAG.name}` (histogram of how late each 10 ms heartbeat ran: "
        "the loop's delay, whose percentiles Node reports as `nodejs.eventloop.delay.*` gauges) and "
        f"`{semconv.LOOP_UTILIZATION.name}` (the loop's busy share over the last completed second, like "
        "`nodejs.eventloop.utilization`; estimated as the larger of the loop thread's CPU time and the "
        "heartbeats' lag, since CPython exposes no idle time). A block of the loop over the threshold "
        "(50 ms) is blamed on the "
        "stage whose code was running: a `stageflow.stage.loop_blocked` span event on that stage's span "
        f"with `{semconv.STAGE_LOOP_BLOCK_DURATION}`, `{semconv.CODE_FILE_PATH}` and "
        f"`{semconv.CODE_LINE_NUMBER}`, the `{semconv.STAGE_LOOP_BLOCK_DURATION_METRIC.name}` histogram by "
        "pipeline and stage, and one warning per run and stage from the core. The location is sampled once, "
        "while the loop is stuck, on asyncio and uvloop alike; the duration may read short by up to the "
        "10 ms heartbeat plus the watchdog thread's wake-up time. With several event loops in one "
        "process, the lag histogram holds all their heartbeats and "
        "the busy share is that of the loop that last ran a pipeline.",
        "",
    ]


def _safety_section() -> list[str]:
    """What leaves the process by default, the length limits and the error redaction hook."""
    limit = semconv.DEFAULT_VALUE_LENGTH_LIMIT
    return [
        "### What leaves the process",
        "",
        "By default only the structure of a run is exported: pipeline and stage names, kinds, dependencies,",
        "the runner's qualified function name, run ids, attempts, timings, results, `error.type`,",
        "*redacted* error messages, and the reasons given to `StageOutput.skip()` / `StageOutput.cancel()`",
        "(as given, cut to the length limit). Stage inputs, outputs and the data a stage returns never are:",
        "`TracingInterceptor(capture_content=...)` is the only way to put output values on spans, and it",
        "records only what your hook returns. A stage that returns something other than a `StageOutput`",
        "is reported by the type of what it returned (`stage 'b' returned a dict object; ...`), never its",
        "value.",
        "",
        "Error messages (span status, the `exception` span event, events, `LoggingInterceptor`'s",
        "`error` field) pass through an `ErrorRedactor` first: `redact_error=` on `TracingInterceptor`,",
        "`OtlpEventSink` and `LoggingInterceptor`. The default, `redact_error_message`, replaces with",
        "`[REDACTED]` the value after a credential-like key (`password=`, `pass=`, `PGPASSWORD=`, `token:`,",
        "`api_key=`, `Authorization:`, `secret`, `cookie`, `session`), a password in prose (`the password",
        "is hunter2`), `Bearer`/`Basic` credentials, URL user:password (`redis://:pw@host` too), e-mail",
        "addresses, runs of 12+ digits, AWS access key ids, Slack, GitHub and JSON Web Tokens, and",
        "API-key-like tokens; it is a best effort on free text, in time linear in the message's length",
        "(no pattern backtracks, so a hostile message cannot stall the event loop).",
        "`redact_error=stageflow_otel.redact_error_message_and_pii` opts into masking personal data too:",
        "US social security numbers, phone numbers and IBANs.",
        "`redact_error=stageflow_otel.error_type_only` exports no message at all (failures keep",
        "`error.type`), or pass your own `Callable[[ErrorDetails], str | None]`. The",
        "`exception.stacktrace` holds the exception's own frames (file, line number, function) and its",
        "redacted message, never chained exceptions' messages, and no source lines (a line may hold a",
        "literal secret) unless you ask: `TracingInterceptor(stacktrace_source_lines=True)`.",
        "",
        "The core's `LoggingEventSink` logs messages as raised unless given a hook:",
        '`LoggingEventSink(redact_error=lambda m: redact_error_message(ErrorDetails("error", m)))`.',
        "",
        "Run stores are local (a file you name, or memory) and keep error messages unredacted, as the run",
        "result does: they never hold stage inputs or outputs, and a non-`StageOutput` return is recorded by",
        "its type only.",
        "",
        f"**Length limits.** Every string exported is cut to {limit} characters unless the OpenTelemetry",
        "variables say otherwise: `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT` (spans: attributes, span event",
        "attributes, span names, status descriptions) and `OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT` (log",
        "records: attributes and every string in the body), each falling back to",
        "`OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`; `unset` means no limit. `setup()` gives the SDK providers",
        "these limits (the SDK's own default is unlimited). So a 5 MB error message is exported as 4096",
        "characters, and the batches it travels in stay far below a receiver's message limit (gRPC: 4 MiB)",
        "instead of failing with the other runs' spans and events in them.",
        "",
        "**Encoding.** Stage and pipeline names must be text UTF-8 can encode: `with_stage()` and",
        "`Pipeline(name=...)` refuse a lone surrogate such as `'\\udcff'`. Other exported text holding one",
        "(an error message built from an undecodable file name) is written with a backslash escape",
        "(`caf\\udce9.txt`), so it cannot make its batch, or `/metrics`, fail to encode.",
        "",
        "### Cardinality",
        "",
        f"Metric attributes carry at most {semconv.DEFAULT_MAX_PIPELINE_NAMES} pipeline names and "
        f"{semconv.DEFAULT_MAX_STAGE_NAMES} stage names at a time",
        "(`MetricsInterceptor(max_pipeline_series=..., max_stage_series=...)`). A new name takes a free",
        "slot, else the slot of the least recently used name if that name has gone unused for",
        f"{semconv.DEFAULT_NAME_IDLE_TIMEOUT:g} s (`series_idle_timeout=`), else it is recorded as "
        f"`{semconv.OTHER}` (one warning is",
        "logged). So the first names seen never hold the slots forever, and a burst of new names cannot",
        f"push out names in use. Names longer than {semconv.METRIC_VALUE_LENGTH_LIMIT} characters are "
        f"always `{semconv.OTHER}`. The SDK caps",
        "each instrument at 2,000 attribute sets (`otel.metric.overflow=true` past that) and, for OTLP,",
        "keeps every series it has seen (cumulative temporality). `/metrics` is bounded in total: the SDK",
        "hands it deltas and `PrometheusMetricReader` keeps the cumulative series, at most",
        f"{_prometheus.DEFAULT_MAX_SERIES:,} (`{_prometheus.ENV_MAX_SERIES}`, or `max_series=`); a new",
        "series beyond that evicts the one updated least recently (counted in `series_evicted`, logged",
        "once), and one that comes back restarts from zero, which Prometheus reads as a counter reset. So",
        "names rotating through, however slowly, cannot grow the page or the memory. 10,000 distinct",
        "pipelines give 51 pipeline label",
        f"values (50 names and `{semconv.OTHER}`). `/metrics` serves any label value escaped if it",
        f"holds a lone surrogate and, past {semconv.METRIC_VALUE_LENGTH_LIMIT} characters, cut with `~` and",
        "a 16-digit hash of the whole value.",
        f"`{semconv.EVENTS_EMITTED.name}` follows the same policy, with `OtlpEventSink(max_series=200)` "
        "pipeline and stage",
        "names each (an evicted name's counts go with it, so the sink's memory stays bounded).",
        "The collector's spanmetrics connector is bounded too (`collector/otelcol.yaml`:",
        "`aggregation_cardinality_limit`, `series_expiration`).",
        "",
        "### The `/metrics` server",
        "",
        f"One thread owns every connection (non-blocking sockets) and {_http.DEFAULT_WORKERS} worker threads "
        "answer complete",
        "requests, however many clients connect: 300 idle connections cost no thread. A request head must",
        f"arrive whole within {_http.DEFAULT_REQUEST_TIMEOUT:g} s of connecting (trickling bytes does not "
        "extend it; else `408`), be",
        f"at most {_http.MAX_REQUEST_HEAD // 1024} KiB (else `431`), and its response is written within "
        f"{_http.DEFAULT_WRITE_TIMEOUT:g} s. At most",
        f"{_http.DEFAULT_MAX_CONNECTIONS} connections are open; one more closes the one waiting longest for "
        "its request, so a",
        "slowloris cannot lock a scraper out. Requests for the same page that arrive while it is queued",
        "or being rendered share that rendering: clients that ask for a page and never read it cost one",
        "rendering between them, and a scrape meanwhile waits for that one alone (their responses are",
        "written without blocking, each within its write timeout). `start_metrics_server(workers=,",
        "max_connections=, request_timeout=, write_timeout=)` change these. It binds 127.0.0.1 unless told",
        "otherwise. If its port is in use, `start_metrics_server` raises an `OSError` naming the address and",
        f"how to choose another (`{semconv.ENV_PROMETHEUS_PORT}` or `setup(metrics_port=...)`, `0` for any",
        f"free port, or `{semconv.ENV_METRICS_EXPORTER}=otlp` for none); `setup()` logs that message as an",
        "error and runs on without `/metrics`.",
        "",
    ]


def replace_section(text: str, reference: str) -> str:
    """``text`` with everything between the telemetry markers replaced by ``reference``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        msg = f"README needs {START_MARKER!r} followed by {END_MARKER!r}"
        raise ValueError(msg)
    return text[: start + len(START_MARKER)] + "\n" + reference + text[end:]


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check``, verify) the README's telemetry section."""
    parser = argparse.ArgumentParser(prog="python -m stageflow_otel.docs", description=__doc__)
    parser.add_argument("readme", nargs="?", default="README.md", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if the section is out of date")
    args = parser.parse_args(argv)
    current = args.readme.read_text(encoding="utf-8")
    updated = replace_section(current, render_reference())
    if args.check:
        if updated != current:
            sys.stderr.write(
                f"{args.readme}: telemetry reference out of date; run python -m stageflow_otel.docs\n"
            )
            return 1
        return 0
    if updated != current:
        args.readme.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
