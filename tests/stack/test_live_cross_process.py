"""Many processes, one picture: a run whose work crosses three process boundaries is one trace in Jaeger.

Started here on free 127.0.0.1 ports: Jaeger v2 and the slim collector (``collector/build-stack.sh``), each
with its shipped config and only the endpoints rewritten (as ``test_live_stack`` does), and a second OS
process, ``tests/stack/_traced_service.py``, an HTTP service with its own ``setup()``. The pipeline runs in
this process with ``setup()`` exporting OTLP to the collector; its stages cross:

* ``pool``: a ``ProcessPoolExecutor`` worker (spawned);
* ``dask``: a Dask worker process of a ``distributed.LocalCluster`` on 127.0.0.1, through
  ``client.get_executor()``; the cluster starts before any ``OTEL_*`` variable is set, so its worker knows
  the collector only from the settings that travel with the stage;
* ``service``: a sync stage calling the HTTP service with ``stageflow_otel.inject_context()`` headers; the
  service opens its span from the extracted context.

The stages in the two worker processes open two nested spans each. Everything is read back through
Jaeger's query API: one trace per run, holding every span, each with the right parent, and the worker
spans from processes that are not this one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stageflow import Pipeline, RunResult, StageContext, StageKind, StageOutput
from stageflow.testing import make_context
from stageflow_otel import TracingInterceptor, inject_context, semconv, setup
from tests._support import local_dask_cluster
from tests.otel._worker_stages import traced_work
from tests.otel.otlp_receiver import HttpReceiver

from ._live import Child, healthy, wait_until
from ._stack import STACK_PORTS, JaegerAPI, collector_config, free_ports, jaeger_config, stack_binary
from .test_live_stack import _write

distributed = pytest.importorskip("distributed")

SERVICE = "stageflow-cross-process"
"""The pipeline's service name; its worker processes report under it too (their own instance ids)."""
HTTP_SERVICE = "stageflow-cross-process-http"
"""The called service's own service name."""
RUNS = 3
READY_TIMEOUT = 60.0
DATA_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
SPANS_PER_RUN = (
    "pipeline cross",
    "stage prepare",
    "stage pool",
    "stage dask",
    "stage service",
    "stage combine",
    "user work",
    "user inner",
    "user work",
    "user inner",
    "GET /enrich",
)
"""Every span of one run: the run and its five stages, two in each worker, one in the HTTP service."""


@dataclass(frozen=True, slots=True)
class Consumers:
    """Jaeger, the collector and the HTTP service, running."""

    jaeger: JaegerAPI
    collector_otlp: str
    service_url: str
    started: float


@pytest.fixture(name="consumers", scope="module")
def _consumers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consumers]:
    jaeger_bin, collector_bin = stack_binary("jaeger"), stack_binary("otelcol")
    directory = tmp_path_factory.mktemp("live-cross-process")
    ports = free_ports([*STACK_PORTS, "service"])
    loki = HttpReceiver(base_path="/otlp")  # the collector's logs pipeline needs a receiver; none is sent
    loki_port = int(loki.endpoint.rsplit(":", 1)[1].split("/")[0])
    started = time.time()
    children: list[Child] = []
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGEFLOW_"))}
    try:
        jaeger_env = dict(clean, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{ports['jaeger_otlp_grpc']}")
        config = _write(directory, "jaeger.yaml", jaeger_config(ports))
        children.append(
            Child("jaeger", [jaeger_bin, "--config", str(config)], directory / "jaeger.log", jaeger_env)
        )
        jaeger_health = f"http://127.0.0.1:{ports['jaeger_health']}/status"
        if not wait_until(lambda: healthy(jaeger_health) or not children[0].running(), timeout=READY_TIMEOUT):
            pytest.fail(f"Jaeger not healthy within {READY_TIMEOUT} s:\n{children[0].output()}")
        config = _write(directory, "otelcol.yaml", collector_config(ports, loki_port))
        collector = Child("otelcol", [collector_bin, f"--config={config}"], directory / "otelcol.log", clean)
        children.append(collector)
        collector_health = f"http://127.0.0.1:{ports['collector_health']}/"
        if not wait_until(
            lambda: healthy(collector_health) or not collector.running(), timeout=READY_TIMEOUT
        ):
            pytest.fail(f"the collector not healthy within {READY_TIMEOUT} s:\n{collector.output()}")
        collector_otlp = f"http://127.0.0.1:{ports['collector_otlp_http']}"
        service_env = dict(
            clean,
            OTEL_SERVICE_NAME=HTTP_SERVICE,
            OTEL_EXPORTER_OTLP_ENDPOINT=collector_otlp,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
        )
        service = Child(
            "traced-service",
            [sys.executable, "-m", "tests.stack._traced_service", str(ports["service"])],
            directory / "traced-service.log",
            service_env,
            cwd=Path(__file__).resolve().parents[2],
        )
        children.append(service)
        service_url = f"http://127.0.0.1:{ports['service']}"
        if not wait_until(
            lambda: healthy(f"{service_url}/health") or not service.running(), timeout=READY_TIMEOUT
        ):
            pytest.fail(f"the traced service not up within {READY_TIMEOUT} s:\n{service.output()}")
        yield Consumers(
            JaegerAPI(f"http://127.0.0.1:{ports['jaeger_query']}"), collector_otlp, service_url, started
        )
    finally:
        codes = {c.name: c.stop(STOP_TIMEOUT) for c in reversed(children)}
        loki.stop()
    assert codes == dict.fromkeys(codes, 0), {c.name: c.output() for c in children}


def prepare(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(text="lisbon")


async def combine(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(
        pool_pid=ctx.inputs.get_from("pool", "pid"),
        dask_pid=ctx.inputs.get_from("dask", "pid"),
        service_pid=ctx.inputs.get_from("service", "pid"),
    )


def _call_service(url: str) -> Any:
    def service(ctx: StageContext) -> StageOutput:
        request = urllib.request.Request(f"{url}/enrich", headers=dict(inject_context()))
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        return StageOutput.ok(**answer)

    return service


def _data(results: RunResult, stage: str) -> dict[str, Any]:
    output = results[stage].output
    assert output is not None, stage
    return dict(output.data)


def _process_tags(trace: dict[str, Any], span: dict[str, Any]) -> dict[str, Any]:
    process = trace["processes"][span["processID"]]
    return {"service.name": process["serviceName"], **{t["key"]: t["value"] for t in process["tags"]}}


def _tree(trace: dict[str, Any]) -> list[str]:
    """The trace as indented lines, ``name [service pid]`` under its parent (for the test's output)."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in trace["spans"]:
        children.setdefault(_parent(span), []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: (s["startTime"], s["operationName"])):
            process = _process_tags(trace, span)
            where = f"{process['service.name']} pid {process.get('process.pid', '-')}"
            lines.append(f"{'  ' * depth}{span['operationName']}  [{where}]")
            walk(span["spanID"], depth + 1)

    walk(None, 0)
    return lines


def _parent(span: dict[str, Any]) -> str | None:
    parents = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    assert len(parents) <= 1, span
    return parents[0] if parents else None


class TestOneTracePerRun:
    async def test_a_run_across_three_process_boundaries_is_one_trace_with_the_right_parents(
        self, consumers: Consumers, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        # The Dask cluster starts before the OTEL_* settings exist: its worker learns them from the stage.
        for name in [n for n in os.environ if n.startswith(("OTEL_", "STAGEFLOW_"))]:
            monkeypatch.delenv(name)
        cluster = local_dask_cluster(1)
        client = distributed.Client(cluster)
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", consumers.collector_otlp)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        telemetry = setup(SERVICE, set_global=False, loop_monitor=False)
        try:
            dask_executor: Executor = client.get_executor()
            graph = (
                Pipeline(name="cross")
                .with_stage("prepare", prepare, StageKind.TRANSFORM)
                .with_stage("pool", traced_work, StageKind.TRANSFORM, ("prepare",), executor=pool)
                .with_stage("dask", traced_work, StageKind.TRANSFORM, ("prepare",), executor=dask_executor)
                .with_stage("service", _call_service(consumers.service_url), StageKind.ENRICH, ("prepare",))
                .with_stage("combine", combine, StageKind.TRANSFORM, ("pool", "dask", "service"))
                .build(interceptors=[TracingInterceptor(telemetry.tracer_provider)])
            )
            results: list[RunResult] = [
                await graph.run(make_context(event_sink=telemetry.event_sink)) for _ in range(RUNS)
            ]
            assert telemetry.force_flush(30.0)
            lost = {kind: sum(causes.values()) for kind, causes in telemetry.lost.items()}
        finally:
            telemetry.shutdown(10.0)
            pool.shutdown(wait=True)
            client.close()
            cluster.close()
        assert lost == {"spans": 0, "log_records": 0, "metric_points": 0, "events": 0}

        trace_ids = []
        for result in results:
            pool_out, dask_out, service_out = (_data(result, s) for s in ("pool", "dask", "service"))
            assert pool_out["trace_id"] == dask_out["trace_id"] == service_out["trace_id"]
            trace_ids.append(pool_out["trace_id"])
        assert len(set(trace_ids)) == RUNS

        def complete() -> bool:
            found = consumers.jaeger.traces(
                SERVICE,
                start_us=int((consumers.started - 60) * 1e6),
                end_us=int((time.time() + 60) * 1e6),
                limit=100,
            )
            return len(found) == RUNS and all(len(t["spans"]) == len(SPANS_PER_RUN) for t in found)

        assert wait_until(complete, timeout=DATA_TIMEOUT, interval=1.0)
        found = consumers.jaeger.traces(
            SERVICE,
            start_us=int((consumers.started - 60) * 1e6),
            end_us=int((time.time() + 60) * 1e6),
            limit=100,
        )
        assert sorted(t["traceID"] for t in found) == sorted(trace_ids)  # one trace per run, no other

        for result, trace_id in zip(results, trace_ids, strict=True):
            (trace,) = consumers.jaeger.trace(trace_id)
            sys.stdout.write("\n  ".join([f"run {result.run_id}: trace {trace_id}", *_tree(trace)]) + "\n")
            spans = trace["spans"]
            assert sorted(s["operationName"] for s in spans) == sorted(SPANS_PER_RUN)
            by_id = {s["spanID"]: s for s in spans}
            named = {
                s["operationName"]: s for s in spans if s["operationName"] not in ("user work", "user inner")
            }
            run_span = named["pipeline cross"]
            assert _parent(run_span) is None
            for stage in ("prepare", "pool", "dask", "service", "combine"):
                span = named[f"stage {stage}"]
                assert _parent(span) == run_span["spanID"], stage
                tags = {t["key"]: t["value"] for t in span["tags"]}
                assert (tags[semconv.STAGE_NAME], tags[semconv.RUN_ID]) == (stage, str(result.run_id))
            assert _parent(named["GET /enrich"]) == named["stage service"]["spanID"]
            assert _process_tags(trace, named["GET /enrich"])["service.name"] == HTTP_SERVICE
            combined = _data(result, "combine")
            for stage, pid in (("pool", combined["pool_pid"]), ("dask", combined["dask_pid"])):
                (work,) = [
                    s
                    for s in spans
                    if s["operationName"] == "user work" and _parent(s) == named[f"stage {stage}"]["spanID"]
                ]
                (inner,) = [
                    s for s in spans if s["operationName"] == "user inner" and _parent(s) == work["spanID"]
                ]
                process = _process_tags(trace, work)
                assert (process["service.name"], process["process.pid"]) == (SERVICE, pid), stage
                assert pid != os.getpid()
                assert _process_tags(trace, inner)["process.pid"] == pid
                assert by_id[_parent(work)]["operationName"] == f"stage {stage}"
            assert combined["service_pid"] not in (os.getpid(), combined["pool_pid"], combined["dask_pid"])
