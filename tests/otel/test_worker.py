"""One trace across processes: stages sent to a real ProcessPoolExecutor (fork and spawn), exported to a real
OTLP receiver; what a worker cannot deliver is counted in the parent."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import json
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

import stageflow
from stageflow import Pipeline, RunResult, StageKind
from stageflow_otel import TracingInterceptor, _worker, semconv, setup
from stageflow_otel._export import Accounting

from ._worker_stages import install_user_sdk, traced_work, untraced_work
from .conftest import entry_ctx, metric_points
from .otlp_receiver import HttpReceiver, closed_port

START_METHODS = ("fork", "spawn")
SETTINGS = _worker.WorkerSettings(
    resource=(("service.name", "parent-svc"),),
    environment=(),
    mode="bounded",
    event_log_records=False,
    flush_timeout=1.0,
)
HANG_GUARD = 60.0
"""Seconds after which waiting for the receiver counts as a hang (never reached when it works)."""


@dataclass(frozen=True, slots=True)
class Received:
    """One span as the receiver got it, with its resource."""

    name: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


def data(results: RunResult) -> dict[str, Any]:
    """The data the stage ``work`` returned."""
    output = results["work"].output
    assert output is not None
    return dict(output.data)


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


def received(receiver: HttpReceiver) -> list[Received]:
    """Every span the receiver holds, with its resource attributes."""
    with receiver._cond:
        requests = list(receiver.traces)
    found = []
    for request in requests:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            found += [
                Received(
                    span.name,
                    span.trace_id.hex(),
                    span.span_id.hex(),
                    span.parent_span_id.hex(),
                    {a.key: _value(a.value) for a in span.attributes},
                    resource,
                )
                for scope in resource_spans.scope_spans
                for span in scope.spans
            ]
    return found


@pytest.fixture(name="receiver")
def _receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(name="start_method", params=START_METHODS)
def _start_method(request: pytest.FixtureRequest) -> str:
    method: str = request.param
    return method


@pytest.fixture(name="pool")
def _pool(start_method: str) -> Iterator[ProcessPoolExecutor]:
    """One worker process, so consecutive stages meet the same worker (configured once, context per hop)."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(start_method))
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def _export_to(env: pytest.MonkeyPatch, endpoint: str) -> None:
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    env.setenv("OTEL_METRICS_EXPORTER", "none")
    env.setenv("OTEL_LOGS_EXPORTER", "none")


def _graph(pool: ProcessPoolExecutor, provider: Any, stage: Any = traced_work) -> Any:
    pipeline = Pipeline(name="hop").with_stage("work", stage, StageKind.TRANSFORM, executor=pool)
    return pipeline.build(interceptors=[TracingInterceptor(provider)])


class TestOneTrace:
    async def test_worker_spans_nest_under_their_stage_span_run_after_run(
        self, otel_env: pytest.MonkeyPatch, receiver: HttpReceiver, pool: ProcessPoolExecutor
    ) -> None:
        """Spans the stage opens in the worker are children of its stage span, in the stage's trace, with
        the parent's baggage and resource; two runs through one worker each get their own parent."""
        _export_to(otel_env, receiver.endpoint)
        telemetry = setup(
            "parent-svc",
            set_global=False,
            loop_monitor=False,
            resource_attributes={"deployment.environment.name": "test"},
        )
        try:
            graph = _graph(pool, telemetry.tracer_provider)
            token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
            try:
                outputs = [data(await graph.run(entry_ctx())) for _ in range(2)]
            finally:
                otel_context.detach(token)
            assert telemetry.force_flush(10.0)
            assert receiver.wait_for(lambda: len(receiver.spans()) >= 8, HANG_GUARD)
        finally:
            telemetry.shutdown(10.0)
        spans = received(receiver)
        assert sorted(s.name for s in spans) == sorted(
            ["pipeline hop", "stage work", "user work", "user inner"] * 2
        )
        worker_pid = outputs[0]["pid"]
        instance_ids = set()
        for output in outputs:
            run = [s for s in spans if s.trace_id == output["trace_id"]]
            by_name = {s.name: s for s in run}
            assert sorted(by_name) == ["pipeline hop", "stage work", "user inner", "user work"]
            stage = by_name["stage work"]
            assert stage.attributes[semconv.RUN_ID] == output["run"]
            assert (by_name["user work"].parent, by_name["user inner"].parent) == (
                stage.span_id,
                by_name["user work"].span_id,
            )
            assert stage.parent == by_name["pipeline hop"].span_id
            worker_resource = by_name["user work"].resource
            assert (
                worker_resource["service.name"],
                worker_resource["deployment.environment.name"],
                worker_resource["process.pid"],
            ) == ("parent-svc", "test", worker_pid)
            assert worker_resource["service.instance.id"] != stage.resource["service.instance.id"]
            assert "process.pid" not in stage.resource
            instance_ids.add(worker_resource["service.instance.id"])
            assert (output["tenant"], output["stage"], output["attempt"], output["pid"]) == (
                "acme",
                "work",
                1,
                worker_pid,
            )
        assert len(instance_ids) == 1  # configured once per worker process
        assert {k: sum(v.values()) for k, v in telemetry.lost.items()} == {
            "spans": 0,
            "log_records": 0,
            "metric_points": 0,
            "events": 0,
        }

    async def test_a_worker_with_its_own_sdk_keeps_it(
        self, otel_env: pytest.MonkeyPatch, receiver: HttpReceiver, start_method: str
    ) -> None:
        """A worker whose process already has an SDK (the user's) is not reconfigured: its spans carry the
        user's resource, and still nest under the stage span."""
        _export_to(otel_env, receiver.endpoint)
        pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context(start_method),
            initializer=install_user_sdk,
            initargs=(f"{receiver.endpoint}/v1/traces",),
        )
        telemetry = setup("parent-svc", set_global=False, loop_monitor=False)
        try:
            output = data(await _graph(pool, telemetry.tracer_provider).run(entry_ctx()))
            assert telemetry.force_flush(10.0)
            assert receiver.wait_for(lambda: len(receiver.spans()) >= 4, HANG_GUARD)
        finally:
            telemetry.shutdown(10.0)
            pool.shutdown(wait=True)
        by_name = {s.name: s for s in received(receiver)}
        assert sorted(by_name) == ["pipeline hop", "stage work", "user inner", "user work"]
        assert by_name["user work"].parent == by_name["stage work"].span_id
        assert by_name["user work"].trace_id == by_name["stage work"].trace_id == output["trace_id"]
        assert by_name["user work"].resource["service.name"] == "user-sdk"
        assert "process.pid" not in by_name["user work"].resource

    async def test_without_a_traced_stage_the_worker_has_no_current_span(
        self, otel_env: pytest.MonkeyPatch, pool: ProcessPoolExecutor
    ) -> None:
        """No stage span (no TracingInterceptor): the worker's code sees no current span."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        telemetry = setup("parent-svc", set_global=False, loop_monitor=False)
        try:
            pipeline = Pipeline(name="hop").with_stage(
                "work", untraced_work, StageKind.TRANSFORM, executor=pool
            )
            output = data(await pipeline.build().run(entry_ctx()))
        finally:
            telemetry.shutdown(5.0)
        assert output["span_valid"] is False


class TestLossAccounting:
    async def test_spans_a_worker_could_not_deliver_are_counted_in_the_parent(
        self, otel_env: pytest.MonkeyPatch, pool: ProcessPoolExecutor
    ) -> None:
        """Pointed at a dead port, the worker's two spans fail to export; the parent counts them, by
        cause, in ``Telemetry.lost`` and ``stageflow.telemetry.spans.dropped`` as the run returns."""
        _export_to(otel_env, f"http://127.0.0.1:{closed_port()}")
        otel_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
        otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # the parent's own spans stay queued
        reader = InMemoryMetricReader()
        telemetry = setup("parent-svc", set_global=False, loop_monitor=False, metric_readers=[reader])
        try:
            await _graph(pool, telemetry.tracer_provider).run(entry_ctx())
            lost = telemetry.lost["spans"]
            failures = dict(telemetry.export_failures)
            points = {
                str((p.attributes or {})[semconv.TELEMETRY_CAUSE]): p.value
                for p in metric_points(reader, semconv.TELEMETRY_SPANS_DROPPED.name)
                if isinstance(p, NumberDataPoint)
            }
        finally:
            telemetry.shutdown(0.5)
        assert lost == {
            "queue_full": 0,
            "export_failed": 2,
            "timeout": 0,
            "shutdown": 0,
            "too_large": 0,
        }
        assert points == lost
        assert failures == {"traces": 1, "metrics": 0, "logs": 0}  # the worker's one failed batch


class TestReports:
    def test_the_parent_counts_what_it_knows_and_names_what_it_does_not(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A report's known kinds and causes are counted (items lost by cause, failed batches by signal,
        truncated links); anything else (a worker of another version) is logged with the item, never
        guessed at."""
        accounting = Accounting()
        hook = _worker.WorkerTelemetry({}, SETTINGS, accounting)
        with caplog.at_level(logging.ERROR, logger="stageflow_otel"):
            hook.returned(
                (
                    ("spans", "export_failed", 2),
                    ("export_failures", "traces", 2),
                    ("links", "", 3),
                    ("spans", "lost", 1),
                    ("events", "timeout", 1),
                    ("export_failures", "profiles", 1),
                    ("spans", "timeout", -1),
                )
            )
            hook.returned(None)
        assert accounting.snapshot()["spans"] == {
            "queue_full": 0,
            "export_failed": 2,
            "timeout": 0,
            "shutdown": 0,
            "too_large": 0,
        }
        assert (accounting.failures, accounting.links_dropped) == ({"traces": 2, "metrics": 0, "logs": 0}, 3)
        assert [r.getMessage() for r in caplog.records] == [
            f"stageflow_otel: a worker reported a loss it cannot be counted as: {item!r}"
            for item in (("spans", "lost", 1), ("events", "timeout", 1), ("export_failures", "profiles", 1))
        ] + ["stageflow_otel: a worker reported a loss it cannot be counted as: ('spans', 'timeout', -1)"]


class TestWhatTravels:
    def test_the_hook_carries_the_context_and_settings_never_secrets(
        self, otel_env: pytest.MonkeyPatch
    ) -> None:
        """The pickled hook holds the W3C carrier and the parent's settings; OTLP headers (secrets) stay
        behind, as does the parent's loss accounting."""
        endpoint = f"http://127.0.0.1:{closed_port()}"
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        otel_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer s3cret")
        otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=s3cret")
        otel_env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "1000")
        otel_env.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "7")
        telemetry = setup("parent-svc", set_global=False, loop_monitor=False, mode="complete")
        try:
            assert _worker._installed is not None
            settings = _worker._installed.settings
            tracer = telemetry.tracer_provider.get_tracer("t")
            with tracer.start_as_current_span("stage x") as span:
                hook = _worker._installed(None, None)  # type: ignore[arg-type]
            sent = pickle.dumps(hook)
        finally:
            telemetry.shutdown(0.5)
        context = span.get_span_context()
        flags = int(context.trace_flags)
        assert hook.carrier == {
            "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
        }
        assert dict(settings.environment) == {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_MAX_QUEUE_SIZE": "1000",
            "OTEL_SPAN_LINK_COUNT_LIMIT": "7",
            "OTEL_METRICS_EXPORTER": "otlp",
        }
        assert (settings.mode, settings.event_log_records, settings.flush_timeout) == ("complete", False, 5.0)
        assert dict(settings.resource)["service.name"] == "parent-svc"
        assert b"s3cret" not in sent
        arrived = pickle.loads(sent)
        assert (arrived.carrier, arrived.settings, arrived._accounting) == (hook.carrier, settings, None)

    def test_prometheus_is_never_a_workers_exporter(self, otel_env: pytest.MonkeyPatch) -> None:
        """Without an OTLP endpoint the parent serves /metrics; its workers export no metrics at all."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "prometheus,console")
        telemetry = setup("parent-svc", set_global=False, loop_monitor=False, metrics_port=0)
        try:
            assert _worker._installed is not None
            environment = dict(_worker._installed.settings.environment)
        finally:
            telemetry.shutdown(5.0)
        assert environment == {"OTEL_METRICS_EXPORTER": "console"}

    def test_the_latest_setup_owns_the_hook_until_its_shutdown(self, otel_env: pytest.MonkeyPatch) -> None:
        """A second setup() replaces the first's hook; shutting down the first leaves the second's; shutting
        down the second removes it."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        first = setup("one", set_global=False, loop_monitor=False)
        first_hook = _worker._installed
        second = setup("two", set_global=False, loop_monitor=False)
        second_hook = _worker._installed
        first.shutdown(5.0)
        kept = _worker._installed
        second.shutdown(5.0)
        assert first_hook is not None and second_hook is not None and first_hook is not second_hook
        assert dict(second_hook.settings.resource)["service.name"] == "two"
        assert (kept, _worker._installed) == (second_hook, None)


class TestFlushTimeout:
    @pytest.mark.parametrize(
        ("raw", "seconds", "warned"), [("", 5.0, False), ("0.5", 0.5, False), ("soon", 5.0, True)]
    )
    def test_the_flush_bound_comes_from_the_environment(
        self,
        otel_env: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        raw: str,
        seconds: float,
        warned: bool,
    ) -> None:
        """STAGEFLOW_OTEL_WORKER_FLUSH_TIMEOUT bounds a worker's flush; a value that is not seconds is
        reported and the default used."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        otel_env.setenv(semconv.ENV_WORKER_FLUSH_TIMEOUT, raw)
        with caplog.at_level(logging.WARNING, logger="stageflow_otel"):
            telemetry = setup("parent-svc", set_global=False)
        try:
            assert _worker._installed is not None
            assert _worker._installed.settings.flush_timeout == seconds
        finally:
            telemetry.shutdown(5.0)
        assert [r.getMessage() for r in caplog.records] == (
            [f"stageflow_otel: {semconv.ENV_WORKER_FLUSH_TIMEOUT}='soon' is not a number of seconds; using 5"]
            if warned
            else []
        )


class TestForkedWorkerOfAGlobalSetup:
    def test_a_forked_worker_keeps_the_providers_it_inherited(
        self, otel_env: pytest.MonkeyPatch, receiver: HttpReceiver
    ) -> None:
        """A process whose ``setup()`` installed global providers forks its worker: the worker exports
        through the inherited providers (the parent's resource, no worker resource of its own), its spans
        nest under the stage span, and nothing is lost."""
        _export_to(otel_env, receiver.endpoint)
        script = (
            "from tests.otel._worker_stages import run_with_global_setup_and_fork; "
            f"run_with_global_setup_and_fork({receiver.endpoint!r})"
        )
        root = Path(__file__).resolve().parents[2]
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=HANG_GUARD
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout.splitlines()[-1])
        assert (report["flushed"], report["lost"]) == (
            True,
            {"spans": 0, "log_records": 0, "metric_points": 0, "events": 0},
        )
        assert receiver.wait_for(lambda: len(receiver.spans()) >= 4, HANG_GUARD)
        by_name = {s.name: s for s in received(receiver)}
        assert sorted(by_name) == ["pipeline fork", "stage work", "user inner", "user work"]
        assert by_name["user work"].parent == by_name["stage work"].span_id
        assert by_name["user work"].trace_id == report["output"]["trace_id"]
        # The inherited resource, not one of ours (no process.pid); the SDK gives a forked child an
        # instance id of its own.
        worker, parent = dict(by_name["user work"].resource), dict(by_name["stage work"].resource)
        assert worker.pop("service.instance.id") != parent.pop("service.instance.id")
        assert (worker, "process.pid" in worker) == (parent, False)
        assert report["output"]["pid"] != os.getpid()


class TestNeverBreaksAStage:
    async def test_a_worker_whose_sdk_cannot_be_configured_still_runs_the_stage_in_its_context(
        self, otel_env: pytest.MonkeyPatch
    ) -> None:
        """Settings the worker's ``setup()`` refuses (an export batch larger than its queue): the stage
        runs all the same, with the stage span's context current, and the hop reports nothing."""
        bad = _worker.WorkerSettings(
            resource=(("service.name", "parent-svc"),),
            environment=(("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100"), ("OTEL_BSP_MAX_QUEUE_SIZE", "10")),
            mode="bounded",
            event_log_records=False,
            flush_timeout=1.0,
        )
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        reports: list[object] = []

        class Recording(_worker.WorkerTelemetry):
            def returned(self, report: object) -> None:
                reports.append(report)

        def factory(stage: Any, ctx: Any) -> _worker.WorkerTelemetry:
            return Recording({"traceparent": traceparent}, bad)

        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        stageflow.add_worker_hook(factory)
        try:
            pipeline = Pipeline(name="hop").with_stage(
                "work", untraced_work, StageKind.TRANSFORM, executor=pool
            )
            output = data(await pipeline.build().run(entry_ctx()))
        finally:
            stageflow.remove_worker_hook(factory)
            pool.shutdown(wait=True)
        assert (output["span_valid"], reports) == (True, [None])
