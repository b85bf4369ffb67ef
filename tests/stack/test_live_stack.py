"""The compose user's path, live: the demo -> the real collector -> real Jaeger and Prometheus 3.

It runs past 500 lines because the stack is started once for the module, and every check of the user's path
runs against that one live stack.

Started here, each on free 127.0.0.1 ports, from binaries ``collector/build-stack.sh`` built from the Go
module proxy: Jaeger v2 with ``collector/jaeger/config.yaml``, the slim collector with
``collector/otelcol.yaml``, Prometheus with ``collector/prometheus.yml`` (all its scrape jobs and rules),
and ``python -m stageflow_otel demo`` twice, exporting OTLP to the collector once over gRPC (as compose
runs it, with its own ``/metrics`` too) and once over HTTP. Only endpoints are rewritten (every receiver,
processor, connector, exporter and pipeline is as shipped; the fixture checks it). Loki cannot run
here: the logs exporter posts to an OTLP/HTTP receiver serving Loki's ``/otlp`` path instead.

Each assertion goes through a consumer's own API (Jaeger's query and Monitor-tab API, Prometheus's HTTP
API) against what the demo itself wrote to its ``--log-file`` (its trace and span ids, stages, results).
Waiting is bounded polling of those APIs for data to arrive, never a fixed sleep.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from stageflow_otel import semconv
from stageflow_otel._demo import ADVICE, LLM_CONFIG, _tokens, build_demo_pipeline
from tests.otel.otlp_receiver import HttpReceiver

from ._assets import COLLECTOR, load_yaml
from ._live import Child, PrometheusAPI, healthy, listening_sockets, wait_until
from ._stack import (
    STACK_PORTS,
    JaegerAPI,
    collector_config,
    free_ports,
    jaeger_config,
    stack_binary,
)
from .dashboards import PanelQuery, each_variable, label_values_query, panel_queries

PIPELINE = "voice-assistant"
DIRECT_JOB = "stageflow-demo"
"""The demo's own /metrics, scraped directly (the compose ``stageflow-demo`` job)."""
GRPC_SERVICE = "stageflow-demo-otlp"
"""The compose demo's OTLP service name (gRPC); on the collector path it is the ``job``."""
HTTP_SERVICE = "stageflow-demo-otlp-http"
SERVICES = (GRPC_SERVICE, HTTP_SERVICE)
SCRAPE_INTERVAL = "3s"
RATE_INTERVAL = "15s"
TIME_RANGE = "5m"
READY_TIMEOUT = 60.0
DATA_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
DEMO_ARGS = ("--speed", "0.2", "--concurrency", "2", "--seed", "7", "--quiet")

PANELS = [
    (service, query)
    for service in SERVICES
    for query in panel_queries(service, PIPELINE, rate_interval=RATE_INTERVAL, time_range=TIME_RANGE)
]
HEX_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
SUMMARY_RUNS = re.compile(r"^(\d+) runs$", re.MULTILINE)
FALLBACK_STAGES = frozenset({"search"})
"""Stages whose errors the demo's fallback interceptor turns into a skip."""
STREAMING = frozenset({"llm", "guard", "tts"})
"""The demo's streaming stages: each span logs one ``first_chunk`` event if the stage yielded a chunk."""
FIRST_CHUNK = semconv.EVENTS["stage.first_chunk"]
LLM_CHUNKS = frozenset(
    len(_tokens(forecast + ADVICE))
    for forecast in ("Tomorrow in Lisbon: 21°C, sunny.", "I couldn't look that up.")
)
"""How many tokens the demo's llm streams: its reply with search results, or without."""
SENTENCES = 3
"""Sentences in every reply: guard passes each on, tts speaks each as one audio chunk."""
LOOP_BLOCKED = semconv.EVENTS["stage.loop_blocked"]
"""A span event any stage span may carry besides its taxonomy (see ``test_events_are_span_logs...``)."""
DEPENDENCIES = {name: spec.dependencies for name, spec in build_demo_pipeline().stages.items()}

KEY_SERIES = tuple(
    series
    for service in SERVICES
    for series in (
        f'stageflow_pipeline_run_duration_seconds_count{{job="{service}", stageflow_run_result="success"}}',
        f'stageflow_pipeline_run_errors_total{{job="{service}"}}',
        f'stageflow_stage_duration_seconds_count{{job="{service}", error_type!=""}}',
        f'stageflow_stage_wait_duration_seconds_count{{job="{service}"}}',
        f'stageflow_stage_critical_path_duration_seconds_count{{job="{service}"}}',
        f'stageflow_stage_skips_total{{job="{service}"}}',
        f'stageflow_stage_time_to_first_chunk_seconds_count{{job="{service}"}}',
        f'stageflow_pipeline_run_time_to_first_output_seconds_count{{job="{service}"}}',
        f'stageflow_circuit_breaker_state{{job="{service}"}}',
        f'traces_span_metrics_calls_total{{job="{service}", status_code="STATUS_CODE_ERROR"}}',
        f'traces_span_metrics_duration_milliseconds_bucket{{job="{service}"}}',
    )
) + (f'stageflow_stage_duration_seconds_count{{job="{DIRECT_JOB}"}}',)
"""Series that must have a few samples before rates over them mean anything (both OTLP paths)."""
MIN_SCRAPES = 4

LOG_LEVEL = re.compile(r"\t(error|warn|dpanic|panic|fatal)\t", re.IGNORECASE)
DEPRECATION = re.compile(r"deprecat", re.IGNORECASE)
ZAP_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z\t\w+\t")
"""A line of the collector's logger; anything else (the OpenTelemetry SDK's own prints) is judged by
whether it mentions an error."""
EXPECTED_WARNINGS = {
    "jaeger": ("\tui assets not embedded in the binary, using a placeholder\t",),
    "otelcol": (),
}
"""Warnings about the build, not the configuration: Jaeger is built without its UI bundle (npm-built)."""


@dataclass(slots=True)
class Demo:
    """One demo process, its service name and what it wrote to its ``--log-file``."""

    service: str
    child: Child
    log_file: Path
    runs: int | None = None

    def records(self) -> list[dict[str, Any]]:
        """The demo's structured log lines (one JSON object per line)."""
        text = self.log_file.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass(slots=True)
class Stack:
    """The running consumers, their APIs, the demos and the Loki stand-in."""

    jaeger: Child
    collector: Child
    prometheus: Child
    demos: dict[str, Demo]
    loki: HttpReceiver
    jaeger_api: JaegerAPI
    prometheus_api: PrometheusAPI
    ports: dict[str, int]
    started: float
    stopped: bool = False
    stopped_at: float = 0.0
    """When the demos were told to stop (Unix time): the end of the time range they produced data in."""
    traces: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def children(self) -> list[Child]:
        return [self.jaeger, self.collector, self.prometheus, *(d.child for d in self.demos.values())]


def _failure(message: str, *children: Child) -> str:
    logs = "\n".join(f"--- {c.name} (pid {c.pid}) output:\n{c.output()}" for c in children)
    return f"{message}\n{logs}"


def _prometheus_config(directory: Path, ports: dict[str, int]) -> Path:
    """collector/prometheus.yml with every scrape job's compose target mapped; scrapes every 3 s.

    The scrape timeout is the interval: at 1 s a scrape of the collector on a loaded machine can time
    out, and the collector logs the closed connection as an error.
    """
    shipped: dict[str, Any] = load_yaml(COLLECTOR / "prometheus.yml")
    targets = {
        "otel-collector:8889": f"127.0.0.1:{ports['collector_prometheus']}",
        "otel-collector:8888": f"127.0.0.1:{ports['collector_telemetry']}",
        "demo:9464": f"127.0.0.1:{ports['demo_metrics']}",
    }
    config = json.loads(json.dumps(shipped))
    config["global"].update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [targets[t] for t in static["targets"]]
    (directory / "rules").mkdir()
    for rule_file in sorted((COLLECTOR / "rules").glob("*.yml")):
        (directory / "rules" / rule_file.name).write_bytes(rule_file.read_bytes())
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _write(directory: Path, name: str, config: dict[str, Any]) -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _start_demo(directory: Path, service: str, env: dict[str, str], metrics_port: int | None) -> Demo:
    log_file = directory / f"{service}.jsonl"
    argv = [sys.executable, "-m", "stageflow_otel", "demo", *DEMO_ARGS, "--log-file", str(log_file)]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    child = Child(service, argv, directory / f"{service}.log", env, cwd=directory)
    return Demo(service, child, log_file)


DEMO_ENV = {
    "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
    # Export every second instead of every minute / five seconds: only when data arrives changes.
    "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    "OTEL_BSP_SCHEDULE_DELAY": "500",
    "OTEL_BLRP_SCHEDULE_DELAY": "500",
    # Events travel as span events; as in the compose demo, log records too, so Loki shows them.
    "STAGEFLOW_EVENT_LOG_RECORDS": "true",
}
"""What both demos' environments set, whatever their service and protocol."""


def _environ(**variables: str) -> dict[str, str]:
    """This process's environment without its ``OTEL_*`` variables, and ``variables``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | variables


def _demo_env(service: str, endpoint: str, protocol: str, metrics: str) -> dict[str, str]:
    return _environ(
        OTEL_SERVICE_NAME=service,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_METRICS_EXPORTER=metrics,
        **DEMO_ENV,
    )


def _has_key_series(api: PrometheusAPI) -> bool:
    return all(
        any(float(s["value"][1]) >= MIN_SCRAPES for s in api.query(f"count_over_time({series}[1m])"))
        for series in KEY_SERIES
    )


@pytest.fixture(name="stack", scope="module")
def _stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Jaeger, the collector, Prometheus, the Loki stand-in and both demos, until the module is done."""
    jaeger_bin, collector_bin = stack_binary("jaeger"), stack_binary("otelcol")
    prometheus_bin = stack_binary("prometheus")
    directory = tmp_path_factory.mktemp("live-stack")
    ports = free_ports([*STACK_PORTS, "demo_metrics"])
    loki = HttpReceiver(base_path="/otlp")
    loki_port = int(loki.endpoint.rsplit(":", 1)[1].split("/")[0])
    started = time.time()
    children: list[Child] = []
    demos: dict[str, Demo] = {}
    try:
        prometheus_config = _prometheus_config(directory, ports)
        prometheus = Child(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={directory / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                "--enable-feature=exemplar-storage",
            ],
            directory / "prometheus.log",
            cwd=directory,
        )
        children.append(prometheus)
        jaeger_file = _write(directory, "jaeger.yaml", jaeger_config(ports))
        # Jaeger traces its own Prometheus queries to the SDK's default endpoint, localhost:4317: in
        # its container that is its own OTLP receiver, here a free port.
        jaeger_env = _environ(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{ports['jaeger_otlp_grpc']}")
        jaeger = Child(
            "jaeger", [jaeger_bin, "--config", str(jaeger_file)], directory / "jaeger.log", jaeger_env
        )
        children.append(jaeger)
        prometheus_api = PrometheusAPI(f"http://127.0.0.1:{ports['prometheus']}")
        jaeger_health = f"http://127.0.0.1:{ports['jaeger_health']}/status"
        # As compose orders it: the collector starts once Jaeger is healthy.
        if not wait_until(
            lambda: (
                (prometheus_api.ready() and healthy(jaeger_health)) or not all(c.running() for c in children)
            ),
            timeout=READY_TIMEOUT,
        ):
            pytest.fail(_failure(f"Prometheus or Jaeger not ready within {READY_TIMEOUT} s", *children))
        collector_file = _write(directory, "otelcol.yaml", collector_config(ports, loki_port))
        collector = Child("otelcol", [collector_bin, f"--config={collector_file}"], directory / "otelcol.log")
        children.append(collector)
        collector_health = f"http://127.0.0.1:{ports['collector_health']}/"
        if not wait_until(
            lambda: healthy(collector_health) or not collector.running(), timeout=READY_TIMEOUT
        ):
            pytest.fail(_failure(f"the collector not healthy within {READY_TIMEOUT} s", *children))
        grpc_env = _demo_env(
            GRPC_SERVICE, f"http://127.0.0.1:{ports['collector_otlp_grpc']}", "grpc", "otlp,prometheus"
        )
        http_env = _demo_env(
            HTTP_SERVICE, f"http://127.0.0.1:{ports['collector_otlp_http']}", "http/protobuf", "otlp"
        )
        demos[GRPC_SERVICE] = _start_demo(directory, GRPC_SERVICE, grpc_env, ports["demo_metrics"])
        demos[HTTP_SERVICE] = _start_demo(directory, HTTP_SERVICE, http_env, None)
        children += [d.child for d in demos.values()]
        if not wait_until(
            lambda: not all(c.running() for c in children) or _has_key_series(prometheus_api),
            timeout=DATA_TIMEOUT,
            interval=0.5,
        ):
            pytest.fail(_failure(f"the key series not scraped within {DATA_TIMEOUT} s", *children))
        if not all(c.running() for c in children):
            pytest.fail(_failure("a process exited early", *children))
        yield Stack(
            jaeger=jaeger,
            collector=collector,
            prometheus=prometheus,
            demos=demos,
            loki=loki,
            jaeger_api=JaegerAPI(f"http://127.0.0.1:{ports['jaeger_query']}"),
            prometheus_api=prometheus_api,
            ports=ports,
            started=started,
        )
    finally:
        # The demos first (they flush), then the collector (it flushes to Jaeger), then the rest.
        codes = {d.child.name: d.child.stop(STOP_TIMEOUT) for d in demos.values()}
        codes |= {c.name: c.stop(STOP_TIMEOUT) for c in reversed(children) if c.name not in codes}
        loki.stop()
    assert codes == dict.fromkeys(codes, 0), _failure(f"exit codes after SIGTERM: {codes}", *children)


def _stop_demos(stack: Stack) -> None:
    """Stop both demos (they finish the runs in flight and flush), once; read their run counts."""
    if stack.stopped:
        return
    stack.stopped = True
    stack.stopped_at = time.time()
    for demo in stack.demos.values():
        code = demo.child.stop(STOP_TIMEOUT)
        assert code == 0, _failure(f"{demo.service} exit code {code}", demo.child)
        counts = SUMMARY_RUNS.findall(demo.child.log.read_text(encoding="utf-8"))
        assert len(counts) == 1, _failure("no run count in the demo's summary", demo.child)
        demo.runs = int(counts[0])


@pytest.fixture(name="finished", scope="module")
def _finished(stack: Stack) -> Stack:
    """The stack once both demos have stopped and Jaeger holds every span the demos logged.

    A trace's run span ends last, but it does not arrive last: the collector's exporter sends batches
    concurrently, so a batch holding a run span can reach Jaeger before an earlier one holding some of
    its stage spans. So the wait is for every logged span id of every logged run, not for the run spans.
    """
    _stop_demos(stack)
    end_us = int((time.time() + 60) * 1e6)
    start_us = int((stack.started - 60) * 1e6)
    for service, demo in stack.demos.items():
        assert demo.runs is not None
        runs = demo.runs
        logged = {trace_id: _logged_span_ids(run) for trace_id, run in _logged_runs(demo).items()}

        def missing(
            service: str = service, runs: int = runs, logged: dict[str, set[str]] = logged
        ) -> dict[str, list[str]]:
            traces = stack.jaeger_api.traces(service, start_us=start_us, end_us=end_us, limit=runs + 100)
            stack.traces[service] = {t["traceID"]: t for t in traces}
            return _missing_spans(stack.traces[service], logged)

        assert wait_until(lambda: not missing(), timeout=DATA_TIMEOUT, interval=1.0), (
            service,
            runs,
            len(stack.traces.get(service, {})),
            dict(list(missing().items())[:3]),
        )
    return stack


def _logged_span_ids(run: LoggedRun) -> set[str]:
    """The span ids the demo logged for one run: its run span and the span of each executed stage."""
    return {run.run_span, *run.stage_spans.values()}


def _missing_spans(traces: dict[str, dict[str, Any]], logged: dict[str, set[str]]) -> dict[str, list[str]]:
    """Per logged trace id, the logged span ids Jaeger does not return (a missing trace: all of them)."""
    found = {trace_id: {s["spanID"] for s in trace["spans"]} for trace_id, trace in traces.items()}
    gaps = {trace_id: sorted(spans - found.get(trace_id, set())) for trace_id, spans in logged.items()}
    return {trace_id: spans for trace_id, spans in gaps.items() if spans}


def _fields(log: dict[str, Any]) -> dict[str, Any]:
    return {f["key"]: f["value"] for f in log["fields"]}


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def _span_events(span: dict[str, Any]) -> list[tuple[str, str]]:
    """``(event name, stageflow.event.type)`` of each of a Jaeger span's logs (its span events), in order."""
    events = []
    for log in sorted(span["logs"], key=lambda entry: entry["timestamp"]):
        fields = {f["key"]: f["value"] for f in log["fields"]}
        events.append((fields.get("event", ""), fields.get(semconv.EVENT_TYPE, "")))
    return events


@dataclass(frozen=True, slots=True)
class LoggedRun:
    """One run as the demo logged it: its span ids, and each executed stage's span and outcome."""

    trace_id: str
    run_span: str
    stage_spans: dict[str, str]
    """Stage name -> span id of its (single) attempt."""
    failed: dict[str, str]
    """Stage name -> error type, for stages whose attempt failed."""
    outcomes: dict[str, str] = field(default_factory=dict)
    """Stage name -> how its attempt ended, as logged (``completed``, ``failed``, ``skipped``)."""
    run_outcome: str = ""
    """How the run ended, as logged (``completed``, ``failed``)."""


def _runs_with_spans(stack: Stack, service: str) -> Iterator[tuple[str, LoggedRun, dict[str, Any]]]:
    """Each run the demo of ``service`` logged: its trace id, what the demo logged of it and Jaeger's spans
    of its trace by span id."""
    for trace_id, run in _logged_runs(stack.demos[service]).items():
        yield trace_id, run, {s["spanID"]: s for s in stack.traces[service][trace_id]["spans"]}


def _logged_runs(demo: Demo) -> dict[str, LoggedRun]:
    runs: dict[str, LoggedRun] = {}
    records = demo.records()
    for record in records:
        if record["event"] == "stageflow.pipeline.started":
            runs[record["trace_id"]] = LoggedRun(record["trace_id"], record["span_id"], {}, {})
    for record in records:
        run = runs[record["trace_id"]]
        if record["event"] == "stageflow.stage.started":
            assert (record["stage"] not in run.stage_spans, record["attempt"]) == (True, 1), record
            run.stage_spans[record["stage"]] = record["span_id"]
        elif record["event"] == "stageflow.stage.failed":
            run.failed[record["stage"]] = record["error_type"]
        if record["event"].startswith("stageflow.stage.") and record["event"] != "stageflow.stage.started":
            run.outcomes[record["stage"]] = record["event"].rsplit(".", 1)[1]
        elif record["event"] in ("stageflow.pipeline.completed", "stageflow.pipeline.failed"):
            runs[record["trace_id"]] = replace(run, run_outcome=record["event"].rsplit(".", 1)[1])
    return runs


class TestJaegerMonitor:
    """Jaeger's Monitor tab (SPM) reads the collector's spanmetrics back from Prometheus."""

    @pytest.mark.parametrize(
        ("metric", "extra"),
        [("calls", {}), ("latencies", {"quantile": "0.95"}), ("errors", {})],
        ids=["calls", "latencies", "errors"],
    )
    @pytest.mark.parametrize("service", SERVICES)
    def test_monitor_series_are_not_empty(
        self, stack: Stack, service: str, metric: str, extra: dict[str, str]
    ) -> None:
        """Calls, p95 latencies and errors of the service's internal spans: series with finite points."""

        def points() -> list[float]:
            answer = stack.jaeger_api.monitor(metric, service, end_ms=int(time.time() * 1000), **extra)
            return [
                float(p["gaugeValue"]["doubleValue"])
                for m in answer["metrics"]
                for p in m["metricPoints"]
                if "doubleValue" in p.get("gaugeValue", {})
                and math.isfinite(float(p["gaugeValue"]["doubleValue"]))
            ]

        assert wait_until(lambda: max(points(), default=0.0) > 0, timeout=DATA_TIMEOUT, interval=1.0), (
            stack.jaeger_api.monitor(metric, service, end_ms=int(time.time() * 1000), **extra)
        )


def _panel_id(item: tuple[str, PanelQuery]) -> str:
    service, query = item
    return f"{service}/{query.dashboard.removesuffix('.json')}/{query.panel}/{query.ref_id}"


class TestStreamingHistograms:
    """The streaming histograms reach Prometheus through the collector with their own buckets."""

    @pytest.mark.parametrize(
        ("family", "by", "expected"),
        [
            (
                semconv.STAGE_TIME_TO_FIRST_CHUNK_METRIC.prometheus,
                (semconv.prometheus_label(semconv.STAGE_NAME),),
                {(s,) for s in STREAMING},
            ),
            (
                semconv.STAGE_TIME_PER_OUTPUT_CHUNK_METRIC.prometheus,
                (semconv.prometheus_label(semconv.STAGE_NAME),),
                {(s,) for s in STREAMING},
            ),
            (
                semconv.PIPELINE_RUN_TIME_TO_FIRST_OUTPUT.prometheus,
                (semconv.prometheus_label(semconv.PIPELINE_NAME),),
                {(PIPELINE,)},
            ),
            (
                semconv.GEN_AI_TIME_TO_FIRST_CHUNK.prometheus,
                tuple(semconv.prometheus_label(k) for k in LLM_CONFIG),
                {tuple(LLM_CONFIG.values())},
            ),
        ],
        ids=["time_to_first_chunk", "time_per_output_chunk", "time_to_first_output", "gen_ai"],
    )
    @pytest.mark.parametrize("service", SERVICES)
    def test_histogram_has_the_voice_latency_buckets(
        self, stack: Stack, service: str, family: str, by: tuple[str, ...], expected: set[tuple[str, ...]]
    ) -> None:
        """Each series of the family has exactly the 10 ms to 82 s buckets, and the labels the demo gives."""
        series: list[dict[str, Any]] = []

        def scraped() -> bool:
            series[:] = stack.prometheus_api.query(f'{family}_bucket{{job="{service}"}}')
            return {tuple(s["metric"].get(k, "") for k in by) for s in series} >= expected

        assert wait_until(scraped, timeout=DATA_TIMEOUT, interval=1.0), series
        bounds: dict[tuple[str, ...], set[float]] = {}
        for s in series:
            bounds.setdefault(tuple(s["metric"].get(k, "") for k in by), set()).add(float(s["metric"]["le"]))
        assert bounds == dict.fromkeys(expected, {*semconv.FIRST_CHUNK_BUCKETS, math.inf})
        assert not any(semconv.prometheus_label(semconv.RUN_ID) in s["metric"] for s in series)


class TestDashboardsOnTheCollectorPath:
    """Every dashboard query returns data for the collector path's jobs (each OTLP service name)."""

    @pytest.mark.parametrize("item", PANELS, ids=[_panel_id(i) for i in PANELS])
    def test_panel_query_returns_data(self, stack: Stack, item: tuple[str, PanelQuery]) -> None:
        """The resolved query yields at least one finite sample, every one for that job.

        A quantile or ratio over a 15 s window is NaN while that window holds no new sample (a scrape
        late on a loaded machine, the 15 s spanmetrics flush): polled, as a dashboard refreshes."""
        service, query = item
        result: list[dict[str, Any]] = []

        def drawn() -> bool:
            result[:] = stack.prometheus_api.finite(query.expr)
            return bool(result)

        assert wait_until(drawn, timeout=DATA_TIMEOUT, interval=1.0), (
            f"no data: {query.expr} -> {stack.prometheus_api.query(query.expr)}"
        )
        assert {s["metric"].get("job", service) for s in result} == {service}, result

    @each_variable()
    def test_variable_query_offers_the_collector_jobs(
        self, stack: Stack, dashboard: str, name: str, query: str
    ) -> None:
        """``$service`` lists both OTLP jobs and the direct scrape job; ``$pipeline`` the demo's pipeline."""
        selector, label = label_values_query(query, GRPC_SERVICE)
        expected = {"service": sorted([DIRECT_JOB, *SERVICES]), "pipeline": [PIPELINE]}
        assert stack.prometheus_api.label_values(label, selector) == expected[name]

    @pytest.mark.parametrize(
        "family",
        ["stageflow_stage_duration_seconds_bucket", "traces_span_metrics_duration_milliseconds_bucket"],
    )
    @pytest.mark.parametrize("service", SERVICES)
    def test_exemplars_are_traces_jaeger_returns(self, stack: Stack, service: str, family: str) -> None:
        """Exemplars scraped through the collector carry trace ids that Jaeger returns as traces."""
        series: list[dict[str, Any]] = []

        def scraped() -> bool:
            # spanmetrics exemplars come with the connector's 15 s flush: polled until scraped.
            series[:] = stack.prometheus_api.exemplars(
                f'{family}{{job="{service}"}}', stack.started, time.time() + 1
            )
            return any(s["exemplars"] for s in series)

        assert wait_until(scraped, timeout=DATA_TIMEOUT, interval=1.0), series
        trace_ids = sorted({e["labels"].get("trace_id", "") for s in series for e in s["exemplars"]})
        assert trace_ids, series
        assert [t for t in trace_ids if not HEX_TRACE_ID.match(t)] == []
        sample = trace_ids[:: max(1, len(trace_ids) // 10)]

        def missing() -> list[str]:
            return [t for t in sample if not stack.jaeger_api.trace(t)]

        assert wait_until(lambda: not missing(), timeout=DATA_TIMEOUT, interval=1.0), missing()

    @pytest.mark.parametrize("service", SERVICES)
    def test_grafana_trace_to_metrics_queries_return_data(self, finished: Stack, service: str) -> None:
        """The Jaeger datasource's metric links, with ``$__tags`` from a real stage span, return data."""
        datasource = _jaeger_datasource()["jsonData"]["tracesToMetrics"]
        trace = next(iter(finished.traces[service].values()))
        span = next(s for s in trace["spans"] if s["operationName"].startswith(semconv.SPAN_STAGE_PREFIX))
        tags = _tags(span)
        # As Grafana interpolates $__tags: `label="value"` for each mapped tag the span carries.
        matchers = ", ".join(
            f'{t["value"]}="{tags[t["key"]]}"' for t in datasource["tags"] if t["key"] in tags
        )
        assert matchers.count("=") == len(datasource["tags"]), (tags, datasource["tags"])
        # Evaluated when the demos stopped, as a trace's link opens a range around its span: later, a
        # rate over the last minute of series that no longer move is zero, and its quantile NaN.
        empty = []
        for query in datasource["queries"]:
            expr = query["query"].replace("$$__tags", matchers).replace("[5m]", "[1m]")
            if not finished.prometheus_api.finite(expr, at=finished.stopped_at):
                empty.append(expr)
        assert empty == []


def _jaeger_datasource() -> dict[str, Any]:
    path = COLLECTOR / "grafana" / "provisioning" / "datasources" / "stageflow.yml"
    datasource: dict[str, Any] = next(d for d in load_yaml(path)["datasources"] if d["uid"] == "jaeger")
    return datasource


class TestNetwork:
    """Every process the test started listens on loopback only, on the ports it was given."""

    def test_nothing_listens_outside_loopback(self, stack: Stack) -> None:
        """Jaeger, the collector and Prometheus hold listening sockets on 127.0.0.1 and chosen ports only."""
        given = set(stack.ports.values())
        found = {c.name: listening_sockets(c.pid) for c in (stack.jaeger, stack.collector, stack.prometheus)}
        outside = {
            n: [s for s in sockets if s[1] != "127.0.0.1" or s[2] not in given]
            for n, sockets in found.items()
        }
        assert outside == {"jaeger": [], "otelcol": [], "prometheus": []}


class TestJaegerTraces:
    """Jaeger's query API returns each run of each demo as the demo logged it."""

    @pytest.mark.parametrize("service", SERVICES)
    def test_one_trace_per_run(self, finished: Stack, service: str) -> None:
        """The service's traces are exactly the runs the demo counted and logged (their trace ids)."""
        demo = finished.demos[service]
        logged = _logged_runs(demo)
        assert (len(finished.traces[service]), sorted(finished.traces[service])) == (
            demo.runs,
            sorted(logged),
        )
        services = {
            p["serviceName"] for t in finished.traces[service].values() for p in t["processes"].values()
        }
        assert services == {service}

    @pytest.mark.parametrize("service", SERVICES)
    def test_one_stage_span_per_executed_stage_child_of_the_run_span(
        self, finished: Stack, service: str
    ) -> None:
        """Each trace: the run span as root, and one ``stage <name>`` span per logged attempt, its child."""
        wrong = []
        for trace_id, run, spans in _runs_with_spans(finished, service):
            expected = {run.run_span: semconv.SPAN_PIPELINE_PREFIX + PIPELINE} | {
                span_id: semconv.SPAN_STAGE_PREFIX + stage for stage, span_id in run.stage_spans.items()
            }
            parents = {
                span_id: [(r["refType"], r["spanID"]) for r in s["references"] if r["refType"] == "CHILD_OF"]
                for span_id, s in spans.items()
            }
            expected_parents: dict[str, list[tuple[str, str]]] = {run.run_span: []} | {
                span_id: [("CHILD_OF", run.run_span)] for span_id in run.stage_spans.values()
            }
            got = ({k: s["operationName"] for k, s in spans.items()}, parents)
            if got != (expected, expected_parents):
                wrong.append((trace_id, got, (expected, expected_parents)))
        assert wrong == []

    @pytest.mark.parametrize("service", SERVICES)
    def test_dependencies_are_references_to_their_spans(self, finished: Stack, service: str) -> None:
        """A stage span's FOLLOWS_FROM references are the spans of its dependencies that ran."""
        wrong = []
        for trace_id, run, spans in _runs_with_spans(finished, service):
            for stage, span_id in run.stage_spans.items():
                links = sorted(
                    r["spanID"] for r in spans[span_id]["references"] if r["refType"] == "FOLLOWS_FROM"
                )
                expected = sorted(run.stage_spans[d] for d in DEPENDENCIES[stage] if d in run.stage_spans)
                if links != expected:
                    wrong.append((trace_id, stage, links, expected))
        assert wrong == []

    @pytest.mark.parametrize("service", SERVICES)
    def test_run_span_carries_the_critical_path(self, finished: Stack, service: str) -> None:
        """The run span's critical path is a chain of dependency edges through stages that ran."""
        wrong = []
        for trace_id, run, spans in _runs_with_spans(finished, service):
            path = json.loads(_tags(spans[run.run_span])[semconv.RUN_CRITICAL_PATH])
            chain = all(a in DEPENDENCIES[b] for a, b in zip(path, path[1:], strict=False))
            if not (path and chain and set(path) <= set(run.stage_spans)):
                wrong.append((trace_id, path, sorted(run.stage_spans)))
        assert wrong == []

    @pytest.mark.parametrize("service", SERVICES)
    def test_failed_stages_have_error_status_and_type(self, finished: Stack, service: str) -> None:
        """Exactly the stages the demo logged as failed carry error status and their ``error.type``, but
        for a stage the fallback turned into a skip: its span is a skip span, as the core settled it."""
        logged = _logged_runs(finished.demos[service])
        assert any(run.failed for run in logged.values()), "the demo logged no failed stage"
        wrong = []
        for trace_id, run in logged.items():
            spans = {s["spanID"]: s for s in finished.traces[service][trace_id]["spans"]}
            for stage, span_id in run.stage_spans.items():
                tags = _tags(spans[span_id])
                got: tuple[object, ...] = (
                    tags.get("error"),
                    tags.get("otel.status_code"),
                    tags.get(semconv.ERROR_TYPE),
                )
                expected: tuple[object, ...]
                if stage in run.failed and stage in FALLBACK_STAGES:
                    got = (*got, tags.get(semconv.STAGE_RESULT))
                    expected = (None, None, None, semconv.RESULT_SKIP)
                elif stage in run.failed:
                    expected = (True, "ERROR", run.failed[stage])
                elif run.outcomes[stage] == "cancelled":  # a producer its failing consumer stopped mid-stream
                    expected = (True, "ERROR", semconv.ERROR_TYPE_CANCELLED)
                else:
                    expected = (None, None, None)
                if got != expected:
                    wrong.append((trace_id, stage, got, expected))
        assert wrong == []

    @pytest.mark.parametrize("service", SERVICES)
    def test_events_are_span_logs_of_their_spans(self, finished: Stack, service: str) -> None:
        """Jaeger shows the event taxonomy as span logs, within each span's time: a stage span has its
        stage's started and closing event, and between them, for a streaming stage that yielded, one
        first_chunk; the run span has the run's events and those of stages that never had a span (a
        conditional stage the executor skipped). A stage span may also log that the stage blocked the
        event loop (the demo's memory stage does now and then; any stage may on a loaded machine): those
        are set apart."""
        closing = {semconv.EVENTS[f"stage.{o}"] for o in ("completed", "failed", "skipped", "cancelled")}
        run_closing = {semconv.EVENTS[f"pipeline.{o}"] for o in ("completed", "failed", "cancelled")}
        wrong = []
        for trace_id, run, spans in _runs_with_spans(finished, service):
            stage_of = {span_id: stage for stage, span_id in run.stage_spans.items()}
            for span_id, span in spans.items():
                logs = [_fields(log) for log in span["logs"]]
                events = [
                    (f.get("event"), f.get(semconv.EVENT_TYPE))
                    for f in logs
                    if f.get("event") not in ("exception", LOOP_BLOCKED)
                ]
                start, end = span["startTime"], span["startTime"] + span["duration"]
                outside = [
                    log["timestamp"] for log in span["logs"] if not start <= log["timestamp"] <= end + 1
                ]
                stage = stage_of.get(span_id)
                if stage is not None:
                    middle = events[1:-1]
                    good = (
                        len(events) >= 2
                        and events[0] == (semconv.EVENTS["stage.started"], f"stage.{stage}.started")
                        and middle in ([], [(FIRST_CHUNK, f"stage.{stage}.first_chunk")])
                        and (not middle or stage in STREAMING)
                        and events[-1][0] in closing
                        and events[-1][1] == f"stage.{stage}.{str(events[-1][0]).rsplit('.', 1)[1]}"
                    )
                else:
                    good = (
                        [e[0] for e in events[:2]]
                        == [semconv.EVENTS["pipeline.created"], semconv.EVENTS["pipeline.started"]]
                        and events[-1][0] in run_closing
                        and all(
                            str(t).split(".")[1] not in run.stage_spans and str(t).startswith("stage.")
                            for _, t in events[2:-1]
                        )
                    )
                if not good or outside:
                    wrong.append((trace_id, span["operationName"], events, outside))
        assert wrong == []

    @pytest.mark.parametrize("service", SERVICES)
    def test_span_logs_match_the_demo_log(self, finished: Stack, service: str) -> None:
        """Exactly: a stage span logs started, its exception if the attempt raised, and the core's
        verdict on what the demo logged; the run span starts with created, started and ends as logged."""
        wrong: list[tuple[object, ...]] = []
        for trace_id, run, spans in _runs_with_spans(finished, service):
            for stage, span_id in run.stage_spans.items():
                events = _span_events(spans[span_id])
                outcome = run.outcomes[stage]
                if stage in run.failed:
                    # The attempt's exception, then the core's verdict: the fallback turns a failed
                    # search into a skip; any other failure fails the stage.
                    outcome = "skipped" if stage in FALLBACK_STAGES else "failed"
                raised = stage in run.failed  # every failure of the demo's stages is raised
                # a streaming stage logs its first chunk once, if it yielded one (its span says so)
                yielded = semconv.STAGE_TIME_TO_FIRST_CHUNK in _tags(spans[span_id])
                first = [(FIRST_CHUNK, f"stage.{stage}.first_chunk")] if yielded else []
                # The exception event's time is taken as the attempt unwinds, the closing event's
                # by the core: their order is not defined, so the exception is counted apart.
                got = (
                    [e for e in events if e[0] not in ("exception", LOOP_BLOCKED)],
                    len([e for e in events if e[0] == "exception"]),
                )
                expected = (
                    [
                        ("stageflow.stage.started", f"stage.{stage}.started"),
                        *first,
                        (f"stageflow.stage.{outcome}", f"stage.{stage}.{outcome}"),
                    ],
                    1 if raised else 0,
                )
                if got != expected:
                    wrong.append((trace_id, stage, run.failed.get(stage), got, expected))
            run_events = [name for name, _ in _span_events(spans[run.run_span])]
            expected_run = ["stageflow.pipeline.created", "stageflow.pipeline.started"]
            final = f"stageflow.pipeline.{run.run_outcome}"
            if run_events[:2] != expected_run or run_events[-1:] != [final]:
                wrong.append((trace_id, "run", run_events, [*expected_run, "...", final]))
        assert wrong == [], json.dumps(wrong[:3], indent=1)

    @pytest.mark.parametrize("service", SERVICES)
    def test_streaming_stages_log_their_first_chunk_once_with_their_measurements(
        self, finished: Stack, service: str
    ) -> None:
        """A completed streaming stage's span logs one first_chunk, whose time to first chunk its tags
        repeat with its chunk count (llm's tokens, one per sentence for guard and tts) and time per chunk;
        llm, which every run reaches only once its dependencies succeeded, always yielded; other stages
        carry none of it; a successful run's span carries its time to first output."""
        wrong: list[tuple[object, ...]] = []
        completed = 0
        for trace_id, run, spans in _runs_with_spans(finished, service):
            for stage, span_id in run.stage_spans.items():
                span = spans[span_id]
                tags = _tags(span)
                logs = [_fields(log) for log in span["logs"] if _fields(log).get("event") == FIRST_CHUNK]
                measured: dict[str, Any] = {
                    k: tags[k]
                    for k in (
                        semconv.STAGE_CHUNKS,
                        semconv.STAGE_TIME_TO_FIRST_CHUNK,
                        semconv.STAGE_TIME_PER_OUTPUT_CHUNK,
                    )
                    if k in tags
                }
                if stage not in STREAMING:
                    if logs or measured:
                        wrong.append((trace_id, stage, logs, measured))
                    continue
                if run.outcomes[stage] == "completed":
                    completed += 1
                    chunks = LLM_CHUNKS if stage == "llm" else {SENTENCES}
                    good = (
                        len(logs) == 1
                        and logs[0][semconv.STAGE_TIME_TO_FIRST_CHUNK]
                        == measured[semconv.STAGE_TIME_TO_FIRST_CHUNK]
                        and measured.get(semconv.STAGE_CHUNKS) in chunks
                        and measured.get(semconv.STAGE_TIME_PER_OUTPUT_CHUNK, 0) > 0
                        and 0
                        < measured.get(semconv.STAGE_TIME_TO_FIRST_CHUNK, 0) * 1e6
                        <= span["duration"] + 1
                    )
                else:  # failed or cancelled: a first chunk if it yielded one, its time on the span
                    good = len(logs) == (1 if semconv.STAGE_TIME_TO_FIRST_CHUNK in measured else 0) and (
                        stage != "llm" or len(logs) == 1
                    )
                if not good:
                    wrong.append((trace_id, stage, run.outcomes[stage], logs, measured))
            first_output = _tags(spans[run.run_span]).get(semconv.RUN_TIME_TO_FIRST_OUTPUT)
            if run.run_outcome == "completed" and not (
                isinstance(first_output, float) and 0 < first_output * 1e6 <= spans[run.run_span]["duration"]
            ):
                wrong.append((trace_id, "run", first_output))
        assert completed > 0
        assert wrong == [], json.dumps(wrong[:3], indent=1)

    def test_service_name_is_the_process_not_a_tag(self, finished: Stack) -> None:
        """Jaeger moves ``service.name`` out of the tags (why no Grafana link may rely on that tag)."""
        trace = next(iter(finished.traces[GRPC_SERVICE].values()))
        keys = {t["key"] for s in trace["spans"] for t in s["tags"]}
        keys |= {t["key"] for p in trace["processes"].values() for t in p["tags"]}
        assert "service.name" not in keys


class TestLokiStandIn:
    """What the collector's logs pipeline posts to Loki's ``/otlp`` path."""

    def test_log_records_carry_trace_context_attributes_and_service_name(self, finished: Stack) -> None:
        """Each service's records: stageflow.* attributes, trace and span ids of traces Jaeger holds."""
        by_service: dict[str, list[Any]] = {}
        for request in finished.loki.logs:
            for resource_logs in request.resource_logs:
                resource = {a.key: a.value.string_value for a in resource_logs.resource.attributes}
                for scope_logs in resource_logs.scope_logs:
                    by_service.setdefault(resource.get("service.name", ""), []).extend(scope_logs.log_records)
        assert sorted(by_service) == sorted(SERVICES)
        for service, records in by_service.items():
            traces = finished.traces[service]
            stage_events = [r for r in records if _attributes(r).get(semconv.STAGE_NAME)]
            assert stage_events, service
            # A stage's events carry the context of that stage's span (or, for those emitted before it
            # starts, of the run span), in a trace Jaeger returns.
            wrong = [
                (r.trace_id.hex(), r.span_id.hex(), _attributes(r)[semconv.STAGE_NAME])
                for r in stage_events
                if _span_name(traces, r.trace_id.hex(), r.span_id.hex())
                not in (
                    semconv.SPAN_STAGE_PREFIX + _attributes(r)[semconv.STAGE_NAME],
                    semconv.SPAN_PIPELINE_PREFIX + PIPELINE,
                )
            ]
            # Every record with a trace context (run events, the demo's own log lines) names a known span.
            unknown = [
                (r.trace_id.hex(), r.span_id.hex())
                for r in records
                if r.trace_id and _span_name(traces, r.trace_id.hex(), r.span_id.hex()) is None
            ]
            assert (wrong, unknown) == ([], []), service


def _attributes(record: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in record.attributes}


def _span_name(traces: dict[str, dict[str, Any]], trace_id: str, span_id: str) -> str | None:
    """The operation name of a span of a Jaeger trace, ``None`` when Jaeger has no such span."""
    trace = traces.get(trace_id)
    spans = {s["spanID"]: s["operationName"] for s in trace["spans"]} if trace else {}
    return spans.get(span_id)


class TestConsumerLogs:
    """Neither the collector nor Jaeger complains about our configuration."""

    @pytest.mark.parametrize("name", ["otelcol", "jaeger"])
    def test_no_error_or_deprecation_logged(self, finished: Stack, name: str) -> None:
        """No line at level warn or above, none mentioning a deprecation, while starting and running."""
        child = finished.collector if name == "otelcol" else finished.jaeger
        lines = child.log.read_text(encoding="utf-8", errors="replace").splitlines()
        bad = [
            line
            for line in lines
            if (
                LOG_LEVEL.search(line)
                or DEPRECATION.search(line)
                or (not ZAP_LINE.match(line) and "error" in line.lower())
            )
            and not any(expected in line for expected in EXPECTED_WARNINGS[name])
        ]
        assert (bad, child.running()) == ([], True)
