"""Exact loss accounting against real OTLP receivers: received + counted == produced, for every cause.

It runs past 500 lines because every loss cause is checked against the same real receivers and the same
produced counts.

Each test produces a known number of spans (five per run of the diamond), events (eleven per run) and
metric points, makes the export path lose some for one cause, and checks the receiver's count plus the
telemetry-health counters add up to what was produced, over gRPC and HTTP.
"""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading

from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from stageflow import (
    Pipeline,
    StageContext,
    StageGraph,
    StageOutput,
)
from stageflow_otel import (
    MetricsInterceptor,
    OtlpEventSink,
    Telemetry,
    TracingInterceptor,
    _export,
    _settings,
    semconv,
    setup,
)
from tests._stages import T, diamond, ok

from .conftest import entry_ctx, metric_points, one_stage_graph
from .otlp_receiver import GrpcReceiver, OtlpReceiver

SPANS_PER_RUN = 5
EVENTS_PER_RUN = 11
NOTHING = dict.fromkeys(semconv.DROP_CAUSES, 0)


def only(**causes: int) -> dict[str, int]:
    """Every cause at 0 but the given ones."""
    return NOTHING | causes


def instrumented(telemetry: Telemetry) -> StageGraph:
    """The diamond with the tracing and metrics interceptors on ``telemetry``'s providers."""
    return diamond().build(
        interceptors=[
            TracingInterceptor(telemetry.tracer_provider),
            MetricsInterceptor(telemetry.meter_provider),
        ]
    )


DIAMOND_EVENTS = frozenset(
    {
        "stageflow.pipeline.created",
        "stageflow.pipeline.started",
        "stageflow.pipeline.completed",
        "stageflow.stage.started",
        "stageflow.stage.completed",
    }
)
"""What the instrumented diamond emits: 11 events a run (created, started, 4 x 2 stage events, completed)."""


async def run(telemetry: Telemetry, runs: int) -> None:
    """``runs`` concurrent runs of the instrumented diamond, reporting to ``telemetry``'s sink."""
    graph = instrumented(telemetry)
    await asyncio.gather(*(graph.run(entry_ctx(sink=telemetry.event_sink)) for _ in range(runs)))


def counted(reader: InMemoryMetricReader, metric: semconv.Metric) -> dict[str, int]:
    """The ``cause`` breakdown of a dropped counter, read from the SDK."""
    return {
        str(p.attributes[semconv.TELEMETRY_CAUSE]): int(p.value)
        for p in metric_points(reader, metric.name)
        if isinstance(p, NumberDataPoint) and p.attributes is not None
    }


def data_points(metric: Metric) -> int:
    """How many data points one received OTLP metric holds."""
    kind = metric.WhichOneof("data")
    assert kind is not None
    return len(getattr(metric, kind).data_points)


def spans_only(env: pytest.MonkeyPatch, **variables: str) -> None:
    """Sets the environment ``variables``, and exports no log records and no metrics: spans only."""
    for name, value in {**variables, "OTEL_LOGS_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}.items():
        env.setenv(name, value)


async def lost_after_flush(name: str, *, runs: int, flush_seconds: float) -> dict[str, int]:
    """Telemetry ``name`` set up from the environment: ``runs`` runs, a flush within ``flush_seconds``
    that must succeed, then shutdown. How much it lost of each kind of item."""
    telemetry = setup(name, set_global=False)
    try:
        await run(telemetry, runs)
        assert telemetry.force_flush(flush_seconds) is True
        return {kind: sum(causes.values()) for kind, causes in telemetry.lost.items()}
    finally:
        telemetry.shutdown(flush_seconds)


@pytest.fixture(name="env")
def _env(otel_env: pytest.MonkeyPatch, receiver: OtlpReceiver) -> pytest.MonkeyPatch:
    """Every signal exported to ``receiver``; no export before a flush (batches never fill on their own)."""
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", receiver.protocol)
    otel_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")
    otel_env.setenv("STAGEFLOW_EVENT_LOG_RECORDS", "true")  # events as log records too: their accounting
    for prefix in ("BSP", "BLRP"):
        otel_env.setenv(f"OTEL_{prefix}_SCHEDULE_DELAY", "600000")
        otel_env.setenv(f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE", "4096")
    return otel_env


class TestQueueFull:
    async def test_spans_and_events_beyond_the_queues_are_counted(
        self, env: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """With one 40-span and one 88-record batch held in flight, 40 spans and 88 records more fit in the
        queues: 12 further runs deliver those and count the rest as queue_full."""
        env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "40")
        env.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "40")
        env.setenv("OTEL_BLRP_MAX_QUEUE_SIZE", "88")
        env.setenv("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "88")
        reader = InMemoryMetricReader()
        telemetry = setup("acct", set_global=False, metric_readers=[reader])
        receiver.hold()
        try:
            await run(telemetry, 8)  # 40 spans and 88 records: one full batch of each, taken and held
            assert receiver.wait_for(lambda: receiver.held == 2)
            await run(telemetry, 12)  # 60 spans and 132 records: the queues take 40 and 88
            # the sink's thread hands records to the log queue after the runs end: all of them must have met
            # the full queue before the held batch is released and the exporter makes room again
            assert isinstance(telemetry.event_sink, OtlpEventSink)
            assert telemetry.event_sink.flush(10.0) is True
            receiver.release()
            assert telemetry.force_flush(10.0) is False
            # this telemetry's records of the diamond's events: a record another process or an earlier
            # test's provider sends to a reused port is not part of this count
            records = [
                rec
                for r in receiver.logs
                for rl in r.resource_logs
                if any(
                    a.key == "service.name" and a.value.string_value == "acct" for a in rl.resource.attributes
                )
                for sl in rl.scope_logs
                for rec in sl.log_records
                if rec.event_name in DIAMOND_EVENTS
            ]
            assert (len(receiver.spans()), len(records)) == (80, 176), Counter(
                r.event_name for r in receiver.log_records()
            )
            assert telemetry.lost == {
                "spans": only(queue_full=20),
                "log_records": only(queue_full=44),
                "metric_points": NOTHING,
                "events": only(queue_full=44),
            }
            assert (
                counted(reader, semconv.TELEMETRY_SPANS_DROPPED),
                counted(reader, semconv.TELEMETRY_LOG_RECORDS_DROPPED),
                counted(reader, semconv.EVENTS_DROPPED),
            ) == (only(queue_full=20), only(queue_full=44), only(queue_full=44))
            assert telemetry.force_flush(10.0) is True  # nothing lost since the previous flush
        finally:
            receiver.release()
            telemetry.shutdown(5.0)


class TestExportFailed:
    async def test_rejected_batches_are_counted_by_item(
        self, env: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """A receiver rejecting every request keeps nothing; every span, event and point is counted."""
        receiver.rejecting = True
        reader = InMemoryMetricReader()
        telemetry = setup("acct", set_global=False, metric_readers=[reader])
        try:
            await run(telemetry, 3)
            assert telemetry.force_flush(10.0) is False
            lost = telemetry.lost
            receiver.rejecting = False
            assert telemetry.force_flush(10.0) is True
            # cumulative metrics: the next export carries exactly the series the failed one held
            points = sum(data_points(m) for m in receiver.iter_metrics())
        finally:
            telemetry.shutdown(5.0)
        assert (len(receiver.spans()), len(receiver.log_records()), receiver.rejected) == (0, 0, 3)
        assert lost == {
            "spans": only(export_failed=15),
            "log_records": only(export_failed=33),
            "metric_points": only(export_failed=points),
            "events": only(export_failed=33),
        }
        assert points > 0
        assert telemetry.export_failures == {"traces": 1, "metrics": 1, "logs": 1}


class TestTimeout:
    async def test_complete_mode_counts_what_waited_too_long(
        self, env: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """In complete mode with a stalled receiver, spans wait at most the timeout, then are counted."""
        spans_only(
            env,
            STAGEFLOW_OTEL_MODE="complete",
            STAGEFLOW_OTEL_COMPLETE_TIMEOUT="0.05",
            OTEL_BSP_MAX_QUEUE_SIZE="10",
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE="5",
        )
        receiver.hold()
        telemetry = setup("acct", set_global=False)
        try:
            assert telemetry.mode == "complete"
            await run(telemetry, 10)
            receiver.release()
            assert telemetry.force_flush(10.0) is False
            received, lost = len(receiver.spans()), telemetry.lost["spans"]
        finally:
            telemetry.shutdown(5.0)
        assert (received + lost["timeout"], lost) == (50, only(timeout=50 - received))
        assert received >= 10

    def test_shutdown_counts_what_its_deadline_left_behind(
        self, env: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """A receiver that never answers: shutdown(1) returns False and counts every span as timeout."""
        spans_only(env, OTEL_BSP_SCHEDULE_DELAY="10", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="5")
        receiver.hold()
        telemetry = setup("acct", set_global=False)
        asyncio.run(run(telemetry, 3))
        assert receiver.wait_for(lambda: receiver.held >= 1)
        assert telemetry.shutdown(1.0) is False
        lost = telemetry.lost["spans"]
        receiver.rejecting = True  # the request left in flight fails when it is finally answered
        receiver.release()
        assert receiver.wait_for(lambda: receiver.rejected == receiver.held)
        assert (len(receiver.spans()), lost, telemetry.lost["spans"]) == (0, only(timeout=15), lost)


class TestShutdownCause:
    async def test_telemetry_after_shutdown_is_counted(
        self, env: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """Runs after shutdown() lose every span and event, all counted as shutdown."""
        telemetry = setup("acct", set_global=False)
        assert telemetry.shutdown(5.0) is True
        await run(telemetry, 2)
        assert (len(receiver.spans()), len(receiver.log_records())) == (0, 0)
        assert {k: telemetry.lost[k] for k in ("spans", "events")} == {
            "spans": only(shutdown=10),
            "events": only(shutdown=22),
        }


class TestNothingLost:
    async def test_a_healthy_receiver_gets_everything_and_flush_says_so(
        self, env: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """With room in every queue, all spans and events arrive, nothing is counted, flush is True."""
        totals = await lost_after_flush("acct", runs=20, flush_seconds=10.0)
        assert (len(receiver.spans()), len(receiver.log_records()), totals) == (
            100,
            220,
            dict.fromkeys(("spans", "log_records", "metric_points", "events"), 0),
        )


def fan_in(width: int) -> Pipeline:
    """``width`` independent stages feeding one ``join`` stage."""
    pipeline = Pipeline(name="fan-in")
    for i in range(width):
        pipeline = pipeline.with_stage(f"s{i}", ok, T)
    return pipeline.with_stage("join", ok, T, dependencies=tuple(f"s{i}" for i in range(width)))


class TestDependencyLinks:
    @pytest.mark.parametrize(
        ("limit", "kept"),
        [(None, 300), ("100", 100)],
        ids=["default-limit", "env-limit"],
    )
    async def test_links_are_kept_up_to_the_limit_and_the_rest_counted(
        self, env: pytest.MonkeyPatch, receiver: OtlpReceiver, limit: str | None, kept: int
    ) -> None:
        """A stage with 300 dependencies keeps 300 links (limit 1024), or 100 with the rest counted."""
        if limit is not None:
            env.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", limit)
        reader = InMemoryMetricReader()
        telemetry = setup("links", set_global=False, metric_readers=[reader])
        try:
            graph = fan_in(300).build(interceptors=[TracingInterceptor(telemetry.tracer_provider)])
            await graph.run(entry_ctx(sink=telemetry.event_sink))
            assert telemetry.force_flush(10.0) is True
            join = next(s for s in receiver.spans() if s.name == "stage join")
            links_counter = [
                p.value
                for p in metric_points(reader, semconv.TELEMETRY_LINKS_DROPPED.name)
                if isinstance(p, NumberDataPoint)
            ]
        finally:
            telemetry.shutdown(5.0)
        assert (len(join.links), join.dropped_links_count, telemetry.links_dropped, links_counter) == (
            kept,
            300 - kept,
            300 - kept,
            [300 - kept],
        )


FORK_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os
    import stageflow_otel
    from stageflow import Pipeline, StageKind, StageOutput

    async def ok(ctx):
        return StageOutput.ok(done=True)

    pipeline = (
        Pipeline(name="forked")
        .with_stage("a", ok, StageKind.TRANSFORM)
        .with_stage("b", ok, StageKind.TRANSFORM, dependencies=("a",))
    )
    telemetry = stageflow_otel.setup("fork", set_global=False)
    graph = pipeline.build(interceptors=[stageflow_otel.TracingInterceptor(telemetry.tracer_provider)])

    async def runs(n):
        for _ in range(n):
            await graph.run(event_sink=telemetry.event_sink)

    asyncio.run(runs(2))
    assert telemetry.force_flush(5.0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        asyncio.run(runs(10))
        report = {"flushed": telemetry.force_flush(5.0), "shutdown": telemetry.shutdown(5.0)}
        report["lost"] = {k: sum(v.values()) for k, v in telemetry.lost.items()}
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as child:
        print(child.read())
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "shutdown": telemetry.shutdown(5.0)}))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
class TestFork:
    def test_a_forked_child_exports_its_own_telemetry(self, receiver: OtlpReceiver) -> None:
        """After setup() and os.fork(), the child's spans and events all arrive and nothing is lost."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGEFLOW_OTEL_"))}
        env |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": receiver.protocol,
            "OTEL_METRICS_EXPORTER": "none",
            "STAGEFLOW_EVENT_LOG_RECORDS": "true",
        }
        done = subprocess.run(
            [sys.executable, "-c", FORK_SCRIPT], env=env, capture_output=True, text=True, timeout=120
        )
        assert (done.returncode, done.stderr) == (0, "")
        child, parent = (json.loads(line) for line in done.stdout.splitlines())
        nothing = dict.fromkeys(("spans", "log_records", "metric_points", "events"), 0)
        assert (child, parent) == (
            {"flushed": True, "shutdown": True, "lost": nothing},
            {"exit": 0, "shutdown": True},
        )
        # 2 runs before the fork and 10 in the child: 3 spans and 7 events each
        assert (len(receiver.spans()), len(receiver.log_records())) == (36, 84)


class TestCompleteMode:
    async def test_event_log_records_wait_for_room_too(
        self, env: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """Complete mode with 32-record queues and log records on: 100 runs deliver all 1,100 records."""
        env.setenv("STAGEFLOW_OTEL_MODE", "complete")
        for prefix in ("BSP", "BLRP"):
            env.setenv(f"OTEL_{prefix}_MAX_QUEUE_SIZE", "32")
            env.setenv(f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE", "16")
            env.setenv(f"OTEL_{prefix}_SCHEDULE_DELAY", "10")
        totals = await lost_after_flush("complete", runs=100, flush_seconds=30.0)
        assert (len(receiver.spans()), len(receiver.log_records()), totals) == (
            500,
            1_100,
            dict.fromkeys(("spans", "log_records", "metric_points", "events"), 0),
        )

    async def test_a_run_waiting_for_queue_room_leaves_the_loop_serving_other_tasks(
        self, env: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """With a 5-span queue full and a batch held in flight, a run's span is parked and the run awaits
        room while the loop serves other tasks; released, every span arrives and nothing is lost."""
        spans_only(
            env,
            STAGEFLOW_OTEL_MODE="complete",
            STAGEFLOW_OTEL_COMPLETE_TIMEOUT="120",  # no stall may end before the release
            OTEL_EXPORTER_OTLP_TIMEOUT="120",
            OTEL_BSP_MAX_QUEUE_SIZE="5",
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE="5",
        )
        telemetry = setup("complete", set_global=False)
        receiver.hold()
        try:
            graph = instrumented(telemetry)
            pressure = _export.backpressure_of(telemetry.tracer_provider)
            assert pressure is not None
            await graph.run(entry_ctx(sink=telemetry.event_sink))  # five spans: a full batch, taken and held
            assert receiver.wait_for(lambda: receiver.held == 1)
            await graph.run(entry_ctx(sink=telemetry.event_sink))  # five more: the queue is full
            awaiting_room = asyncio.Event()
            room = pressure.room

            async def noted_room() -> None:
                awaiting_room.set()
                await room()

            pressure.room = noted_room  # type: ignore[method-assign]
            waiting = asyncio.create_task(graph.run(entry_ctx(sink=telemetry.event_sink)))
            async with asyncio.timeout(60):
                await awaiting_room.wait()  # the third run's first span found no room: the run awaits
                served = asyncio.Event()
                asyncio.get_running_loop().call_soon(served.set)
                await served.wait()  # another task ran while the run waits for room
                assert (waiting.done(), pressure.parked) == (False, True)
                receiver.release()
                await waiting
            assert telemetry.force_flush(10.0) is True
            lost = {k: sum(v.values()) for k, v in telemetry.lost.items()}
        finally:
            receiver.release()
            telemetry.shutdown(5.0)
        assert (len(receiver.spans()), lost) == (
            15,
            dict.fromkeys(("spans", "log_records", "metric_points", "events"), 0),
        )

    async def test_events_over_the_sink_buffer_leave_the_loop_serving_other_tasks(self) -> None:
        """With the sink's 2-event buffer full and its thread held by the log processor, one more event
        emitted on the loop is held over the buffer, not waited for; awaiting room lets other tasks run,
        and released, every event becomes a record and none is dropped."""
        entered, gate = threading.Event(), threading.Event()
        records: list[ReadWriteLogRecord] = []

        class Held(LogRecordProcessor):
            """Holds the first record until the test releases it, then passes every record on."""

            def on_emit(self, log_record: ReadWriteLogRecord) -> None:
                entered.set()
                gate.wait(60)
                records.append(log_record)

            def shutdown(self) -> None:
                gate.set()

            def force_flush(self, timeout_millis: int = 30_000) -> bool:
                return True

        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(Held())
        sink = OtlpEventSink(
            logger_provider=logger_provider,
            meter_provider=MeterProvider(),
            max_buffer=2,
            wait_timeout=120.0,
            log_records=True,
        )
        try:
            sink.try_emit(type="stage.a.started", data={"stage": "a"})  # taken by the thread, held
            assert await asyncio.to_thread(entered.wait, 60)
            for stage in ("b", "c", "d"):  # two fill the buffer; the third is held over it
                sink.try_emit(type="stage.started", data={"stage": stage})
            assert sink.parked is True
            waiting = asyncio.create_task(sink.room())
            served = asyncio.Event()
            asyncio.get_running_loop().call_soon(served.set)
            await served.wait()
            assert waiting.done() is False
            gate.set()
            async with asyncio.timeout(60):
                await waiting
            assert sink.flush(60.0) is True
        finally:
            gate.set()
            sink.shutdown(10.0)
            logger_provider.shutdown()
        assert (len(records), sink.dropped, sink.parked) == (4, 0, False)

    async def test_a_10000_run_burst_loses_nothing(self, otel_env: pytest.MonkeyPatch) -> None:
        """Complete mode: 10,000 concurrent runs through 256-item queues deliver every span and event."""
        receiver = GrpcReceiver()
        try:
            otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
            otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", receiver.protocol)
            otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
            otel_env.setenv("STAGEFLOW_OTEL_MODE", "complete")
            otel_env.setenv("STAGEFLOW_EVENT_LOG_RECORDS", "false")
            for prefix in ("BSP", "BLRP"):
                otel_env.setenv(f"OTEL_{prefix}_MAX_QUEUE_SIZE", "256")
                otel_env.setenv(f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE", "128")
            telemetry = setup("complete", set_global=False)
            graph = one_stage_graph("one", "a", ok, TracingInterceptor(telemetry.tracer_provider))
            try:
                await asyncio.gather(
                    *(graph.run(entry_ctx(sink=telemetry.event_sink)) for _ in range(10_000))
                )
                assert telemetry.force_flush(60.0) is True
                totals = {k: sum(v.values()) for k, v in telemetry.lost.items()}
            finally:
                telemetry.shutdown(10.0)
            # per run: the run span and one stage span; created, started, a.started, a.completed, completed
            spans = receiver.spans()
            assert (len(spans), sum(len(s.events) for s in spans), len(receiver.log_records()), totals) == (
                20_000,
                50_000,
                0,
                dict.fromkeys(("spans", "log_records", "metric_points", "events"), 0),
            )
        finally:
            receiver.stop()


async def huge_failure(ctx: StageContext) -> StageOutput:
    """A stage failing with a 400 kB message: the span and the event carrying it exceed 256 KiB."""
    raise RuntimeError("x" * 400_000)


class TestTooLarge:
    async def test_an_oversized_item_is_counted_and_the_others_still_arrive(
        self, env: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """One run's 400 kB error over a 256 KiB request limit: its items are counted, the rest arrive."""
        env.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "1000000")  # let the message through whole
        env.setenv("STAGEFLOW_OTEL_MAX_EXPORT_BYTES", str(256 * 1024))
        telemetry = setup("big", set_global=False)
        failing = one_stage_graph("big", "big", huge_failure, TracingInterceptor(telemetry.tracer_provider))
        try:
            outcomes = await asyncio.gather(
                failing.run(entry_ctx(sink=telemetry.event_sink)), run(telemetry, 10), return_exceptions=True
            )
            assert telemetry.force_flush(10.0) is False
            lost = telemetry.lost
        finally:
            telemetry.shutdown(5.0)
        assert isinstance(outcomes[0], Exception) and outcomes[1] is None
        # the failing run's two spans and its two failure events carry the message: each alone too large
        assert lost == {
            "spans": only(too_large=2),
            "log_records": only(too_large=2),
            "metric_points": NOTHING,
            "events": only(too_large=2),
        }
        names = sorted({s.name for s in receiver.spans()})
        assert (len(receiver.spans()), names, len(receiver.log_records())) == (
            50,
            ["pipeline demo", "stage a", "stage b", "stage c", "stage d"],
            115 - 2,
        )


class TestDocumentedDefaults:
    def test_the_reference_states_the_queue_defaults_setup_uses(self) -> None:
        """The environment table's OTEL_BSP_* / OTEL_BLRP_* defaults are the ones setup() applies."""
        documented = {e.name: e.default for e in semconv.ENVIRONMENT}
        expected: dict[str, str] = {}
        for prefix, settings in (("BSP", _settings.SPAN_QUEUE), ("BLRP", _settings.LOG_QUEUE)):
            expected |= {
                f"OTEL_{prefix}_MAX_QUEUE_SIZE": str(settings.capacity),
                f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE": str(settings.batch_size),
                f"OTEL_{prefix}_SCHEDULE_DELAY": str(int(settings.delay_millis)),
            }
        assert {name: documented.get(name) for name in expected} == expected


class TestQueueSettings:
    @pytest.mark.parametrize(
        ("prefix", "env", "message"),
        [
            (
                "BSP",
                {"OTEL_BSP_MAX_QUEUE_SIZE": "100"},
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=512 (the default) is larger than "
                "OTEL_BSP_MAX_QUEUE_SIZE=100: an export batch must fit in the queue; set "
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE to at most 100 or OTEL_BSP_MAX_QUEUE_SIZE to at least 512",
            ),
            (
                "BLRP",
                {"OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "20000"},
                "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE=20000 is larger than OTEL_BLRP_MAX_QUEUE_SIZE=16384 "
                "(the default): an export batch must fit in the queue; set OTEL_BLRP_MAX_EXPORT_BATCH_SIZE "
                "to at most 16384 or OTEL_BLRP_MAX_QUEUE_SIZE to at least 20000",
            ),
            (
                "BSP",
                {"OTEL_BSP_MAX_QUEUE_SIZE": "8", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "9"},
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=9 is larger than OTEL_BSP_MAX_QUEUE_SIZE=8: an export batch "
                "must fit in the queue; set OTEL_BSP_MAX_EXPORT_BATCH_SIZE to at most 8 or "
                "OTEL_BSP_MAX_QUEUE_SIZE to at least 9",
            ),
        ],
        ids=["small-queue", "large-batch", "both-set"],
    )
    def test_a_batch_larger_than_its_queue_is_refused_naming_the_fix(
        self, otel_env: pytest.MonkeyPatch, prefix: str, env: dict[str, str], message: str
    ) -> None:
        """setup() refuses an export batch larger than its queue, as the SDK does, whatever the exporters."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        for name, value in env.items():
            otel_env.setenv(name, value)
        with pytest.raises(ValueError) as caught:
            setup("q", set_global=False)
        assert str(caught.value) == message

    def test_a_batch_equal_to_its_queue_is_accepted(self, otel_env: pytest.MonkeyPatch) -> None:
        """A batch exactly as large as the queue is valid (the SDK's own bound)."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        otel_env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
        otel_env.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64")
        assert setup("q", set_global=False).shutdown(1.0) is True


class TestModeSetting:
    def test_an_unknown_mode_argument_is_refused_naming_the_choices(
        self, otel_env: pytest.MonkeyPatch
    ) -> None:
        """setup(mode=...) accepts only 'bounded' and 'complete', and says so."""
        with pytest.raises(ValueError, match=r"^setup\(mode='fast'\): mode must be 'bounded' or 'complete'$"):
            setup("m", set_global=False, mode="fast")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("variable", "value", "message"),
        [
            (
                "STAGEFLOW_OTEL_MODE",
                "fast",
                "stageflow_otel: STAGEFLOW_OTEL_MODE='fast' unknown; using 'bounded'",
            ),
            (
                "STAGEFLOW_OTEL_COMPLETE_TIMEOUT",
                "soon",
                "stageflow_otel: STAGEFLOW_OTEL_COMPLETE_TIMEOUT='soon' is not a number of seconds; using 10",
            ),
        ],
        ids=["mode", "timeout"],
    )
    def test_a_bad_variable_is_logged_and_the_default_used(
        self,
        otel_env: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        variable: str,
        value: str,
        message: str,
    ) -> None:
        """An unusable STAGEFLOW_OTEL_* value logs a warning naming it, and the default applies."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        otel_env.setenv(variable, value)
        if variable == "STAGEFLOW_OTEL_COMPLETE_TIMEOUT":
            otel_env.setenv("STAGEFLOW_OTEL_MODE", "complete")
        with caplog.at_level(logging.WARNING, logger="stageflow_otel"):
            telemetry = setup("m", set_global=False)
        telemetry.shutdown(1.0)
        expected_mode = "bounded" if variable == "STAGEFLOW_OTEL_MODE" else "complete"
        assert ([r.getMessage() for r in caplog.records], telemetry.mode) == ([message], expected_mode)

    def test_the_mode_argument_wins_over_the_variable(self, otel_env: pytest.MonkeyPatch) -> None:
        """setup(mode='bounded') ignores STAGEFLOW_OTEL_MODE=complete."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        otel_env.setenv("STAGEFLOW_OTEL_MODE", "complete")
        telemetry = setup("m", set_global=False, mode="bounded")
        telemetry.shutdown(1.0)
        assert telemetry.mode == "bounded"


class TestBooks:
    def test_a_wait_ended_by_shutdown_counts_the_item_as_shutdown(self) -> None:
        """An item waiting for room in complete mode when shutdown begins is refused as shutdown."""
        lost: list[tuple[int, int, str]] = []
        books = _export.Books(
            _export.BatchSettings(capacity=1, batch_size=1, delay_millis=1, wait=30.0),
            lambda items, events, cause: lost.append((items, events, cause)),
        )
        assert books.admit() is True
        checking = threading.Event()
        has_room = books._has_room

        def checked() -> bool:
            checking.set()  # called under the lock, right before the waiter waits (and releases it)
            return has_room()

        books._has_room = checked  # type: ignore[method-assign]
        results: list[bool] = []
        waiter = threading.Thread(target=lambda: results.append(books.admit(event=True)))
        waiter.start()
        assert checking.wait(5.0)
        books.close()  # takes the lock: only once the waiter is waiting
        waiter.join(5.0)
        assert (results, lost) == ([False], [(1, 1, "shutdown")])
        assert (books.abandon(), lost[1:]) == (1, [(1, 0, "timeout")])


class _Recording:
    """An exporter that records the batches it was given (and, with ``own_split``, splits them itself)."""

    def __init__(self, own_split: bool) -> None:
        self.batches: list[list[str]] = []
        self.split_calls: list[tuple[int, int]] = []
        if own_split:
            self.requests = self._requests

    def _requests(self, items: list[object], limit: int) -> tuple[list[list[object]], list[object]]:
        self.split_calls.append((len(items), limit))
        return [items[:1], items[1:2]], items[2:]

    def export(self, batch: list[object]) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.batches.append([getattr(s, "name", "?") for s in batch])
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        pass


class TestOneCountingExporter:
    def _spans(self, n: int) -> list[object]:
        from opentelemetry.sdk.trace import ReadableSpan

        return [ReadableSpan(name=str(i)) for i in range(n)]

    def _books(self) -> tuple[_export.Accounting, _export.Books]:
        """An accounting, and the books of a 10-span queue (batches of 5) counting spans into it."""
        accounting = _export.Accounting()
        books = _export.Books(
            _export.BatchSettings(capacity=10, batch_size=5, delay_millis=1),
            lambda n, e, c: accounting.dropped("spans", n, c),
        )
        return accounting, books

    def test_an_exporter_that_splits_itself_is_trusted_with_the_split_and_its_too_large_counted(self) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        from stageflow_otel._export import CountingExporter

        accounting, books = self._books()
        inner = _Recording(own_split=True)
        for _ in range(4):
            assert books.admit()
        exporter = CountingExporter(inner, "traces", accounting, books, max_bytes=1234)  # type: ignore[arg-type]
        assert exporter.export(self._spans(4)) is SpanExportResult.FAILURE  # two were too large
        assert (inner.split_calls, inner.batches) == ([(4, 1234)], [["0"], ["1"]])
        assert accounting.snapshot()["spans"]["too_large"] == 2 and books.queued == 0

    def test_any_other_exporter_gets_the_estimated_split(self) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        from stageflow_otel._export import CountingExporter

        accounting, books = self._books()
        inner = _Recording(own_split=False)
        exporter = CountingExporter(inner, "traces", accounting, books)  # type: ignore[arg-type]
        assert exporter.export(self._spans(3)) is SpanExportResult.SUCCESS
        assert inner.batches == [["0", "1", "2"]] and accounting.everything() == 0


class TestUnencodable:
    async def test_an_unencodable_span_is_counted_and_the_others_still_arrive(
        self, env: pytest.MonkeyPatch, receiver: OtlpReceiver
    ) -> None:
        """An application span named with a lone surrogate, in the batch of ten runs' spans: it is counted
        export_failed, every other span arrives, and export returns normally (its batch settled)."""
        spans_only(env)
        telemetry = setup("surrogate", set_global=False)
        try:
            telemetry.tracer_provider.get_tracer("app").start_span("bad \ud800 name").end()
            await run(telemetry, 10)
            flushed = telemetry.force_flush(10.0)
            lost, failures = telemetry.lost, dict(telemetry.export_failures)
        finally:
            telemetry.shutdown(5.0)
        assert (flushed, lost["spans"], lost["events"], failures["traces"]) == (
            False,
            only(export_failed=1),
            NOTHING,
            1,
        )
        names = sorted({s.name for s in receiver.spans()})
        assert (len(receiver.spans()), names) == (
            50,
            ["pipeline demo", "stage a", "stage b", "stage c", "stage d"],
        )
