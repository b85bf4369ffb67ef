"""One trace across a cluster hop: stages on a real Dask ``LocalCluster`` worker process and a real local Ray
worker, exported to a real OTLP receiver. The cluster starts before any ``OTEL_*`` variable is set, so its
workers know where to export only from the settings that travel with each stage."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import os
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path

from stageflow import Pipeline, RunResult, StageKind
from stageflow_otel import TracingInterceptor, setup
from tests._support import local_dask_cluster

from ._worker_stages import traced_work
from .conftest import entry_ctx
from .otlp_receiver import HttpReceiver
from .test_worker import HANG_GUARD, received

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(name="dask_executor", scope="module")
def _dask_executor() -> Iterator[Executor]:
    """One single-threaded Dask worker process on 127.0.0.1, started with no ``OTEL_*`` variable set."""
    distributed = pytest.importorskip("distributed")
    saved = {k: os.environ.pop(k) for k in [n for n in os.environ if n.startswith("OTEL_")]}
    try:
        cluster = local_dask_cluster(1)
    finally:
        os.environ.update(saved)
    with cluster, distributed.Client(cluster) as client:
        yield client.get_executor()


@pytest.fixture(name="ray_executor", scope="module")
def _ray_executor() -> Iterator[Executor]:
    """A local Ray with two CPUs whose workers import this checkout, and a ``RayExecutor`` on it."""
    ray = pytest.importorskip("ray")
    from stageflow.adapters.ray import RayExecutor

    saved = {k: os.environ.pop(k) for k in [n for n in os.environ if n.startswith("OTEL_")]}
    try:
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    except Exception as exc:
        pytest.skip(f"Ray could not start here: ray.init() raised {type(exc).__name__}: {exc}")
    finally:
        os.environ.update(saved)
    try:
        executor = RayExecutor()
        yield executor
        executor.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(name="receiver")
def _receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.stop()


def _data(results: RunResult) -> dict[str, object]:
    output = results["work"].output
    assert output is not None
    return dict(output.data)


async def _check_one_trace_per_run(
    executor: Executor, env: pytest.MonkeyPatch, receiver: HttpReceiver
) -> None:
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    env.setenv("OTEL_METRICS_EXPORTER", "none")
    env.setenv("OTEL_LOGS_EXPORTER", "none")
    telemetry = setup("cluster-parent", set_global=False)
    try:
        graph = (
            Pipeline(name="hop")
            .with_stage("work", traced_work, StageKind.TRANSFORM, executor=executor)
            .build(interceptors=[TracingInterceptor(telemetry.tracer_provider)])
        )
        outputs = [_data(await graph.run(entry_ctx())) for _ in range(2)]
        assert telemetry.force_flush(HANG_GUARD)
        assert receiver.wait_for(lambda: len(receiver.spans()) >= 8, HANG_GUARD)
        lost = {kind: sum(causes.values()) for kind, causes in telemetry.lost.items()}
    finally:
        telemetry.shutdown(10.0)
    assert lost == {"spans": 0, "log_records": 0, "metric_points": 0, "events": 0}
    spans = received(receiver)
    assert len(spans) == 8
    for output in outputs:
        by_name = {s.name: s for s in spans if s.trace_id == output["trace_id"]}
        assert sorted(by_name) == ["pipeline hop", "stage work", "user inner", "user work"]
        assert (by_name["user work"].parent, by_name["user inner"].parent) == (
            by_name["stage work"].span_id,
            by_name["user work"].span_id,
        )
        worker = by_name["user work"].resource
        assert (worker["service.name"], worker["process.pid"]) == ("cluster-parent", output["pid"])
        assert output["pid"] != os.getpid()


class TestClusterWorkers:
    async def test_a_dask_workers_spans_nest_under_the_stage_span(
        self, dask_executor: Executor, otel_env: pytest.MonkeyPatch, receiver: HttpReceiver
    ) -> None:
        """Through ``client.get_executor()``: each run is one trace, the worker's spans under its stage."""
        await _check_one_trace_per_run(dask_executor, otel_env, receiver)

    async def test_a_ray_workers_spans_nest_under_the_stage_span(
        self, ray_executor: Executor, otel_env: pytest.MonkeyPatch, receiver: HttpReceiver
    ) -> None:
        """Through ``RayExecutor``: each run is one trace, the worker's spans under its stage."""
        await _check_one_trace_per_run(ray_executor, otel_env, receiver)
