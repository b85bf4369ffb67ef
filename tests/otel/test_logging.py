"""LoggingInterceptor and the ``add_trace_context`` structlog processor."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("structlog")

import asyncio
import json
import logging
from typing import Any

import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stageflow import Pipeline, PipelineFailedError, StageContext, StageKind, StageOutput
from stageflow_otel import LoggingInterceptor, MetricsInterceptor, TracingInterceptor, add_trace_context
from tests._stages import T, boom, fail, ok, skip

from .conftest import entry_ctx, one_stage_graph

VOLATILE = ("duration", "wait")


class ListLogger:
    """A structlog wrapped logger that keeps every rendered line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def msg(self, message: str) -> None:
        """Keep one rendered line."""
        self.lines.append(message)

    info = warning = error = debug = msg

    def records(self) -> list[dict[str, Any]]:
        """The lines parsed as JSON."""
        return [json.loads(line) for line in self.lines]


def json_logger(sink: ListLogger, *, trace_context: bool = False) -> Any:
    """A structlog logger rendering JSON lines into ``sink``."""
    processors: list[Any] = [structlog.processors.add_log_level]
    if trace_context:
        processors.append(add_trace_context)
    processors.append(structlog.processors.JSONRenderer(sort_keys=True))
    return structlog.wrap_logger(
        sink, processors=processors, wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )


async def logged_run(name: str, stage: Any, *, fails: bool = False) -> list[dict[str, Any]]:
    """The JSON lines of one run of pipeline ``demo`` whose one stage ``name`` runs ``stage``, logged by
    ``LoggingInterceptor`` alone; with ``fails`` the run must raise ``PipelineFailedError``."""
    sink = ListLogger()
    graph = one_stage_graph("demo", name, stage, LoggingInterceptor(json_logger(sink)))
    if fails:
        with pytest.raises(PipelineFailedError):
            await graph.run(entry_ctx())
    else:
        await graph.run(entry_ctx())
    return sink.records()


def talking(sink: ListLogger) -> Pipeline:
    """Pipeline ``demo`` whose one stage ``talk`` logs ``hello`` through a user logger with the
    trace-context processor, writing into ``sink``."""
    log = json_logger(sink, trace_context=True)

    async def talk(ctx: StageContext) -> StageOutput:
        log.info("hello")
        return StageOutput.ok()

    return Pipeline(name="demo").with_stage("talk", talk, T)


def ids(span: ReadableSpan) -> dict[str, str]:
    """A span's ids as the log fields carry them."""
    return {"trace_id": f"{span.context.trace_id:032x}", "span_id": f"{span.context.span_id:016x}"}


def stable(record: dict[str, Any]) -> dict[str, Any]:
    """A log record without its timing fields."""
    return {k: v for k, v in record.items() if k not in VOLATILE}


class TestLoggingInterceptor:
    """One JSON line per run and stage start and finish, with trace context."""

    async def test_lines_with_trace_context(
        self, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
    ) -> None:
        """Each stage logs a start and a finish line carrying its span's W3C ids and the run's fields."""
        sink = ListLogger()
        graph = (
            Pipeline(name="demo")
            .with_stage("a", ok, T)
            .with_stage("b", ok, StageKind.ENRICH, dependencies=("a",))
            .build(interceptors=[TracingInterceptor(tracer_provider), LoggingInterceptor(json_logger(sink))])
        )
        ctx = entry_ctx()
        await graph.run(ctx)
        spans = {s.name: s for s in span_exporter.get_finished_spans()}
        run_id = str(ctx.pipeline_run_id)
        run = {"run_id": run_id, "pipeline": "demo", **ids(spans["pipeline demo"])}

        def stage(name: str, kind: str) -> dict[str, Any]:
            return {**run, "stage": name, "kind": kind, "attempt": 1, **ids(spans[f"stage {name}"])}

        assert [stable(r) for r in sink.records()] == [
            {"event": "stageflow.pipeline.started", "level": "info", **run},
            {"event": "stageflow.stage.started", "level": "info", **stage("a", "transform")},
            {
                "event": "stageflow.stage.completed",
                "level": "info",
                "status": "success",
                **stage("a", "transform"),
            },
            {"event": "stageflow.stage.started", "level": "info", **stage("b", "enrich")},
            {
                "event": "stageflow.stage.completed",
                "level": "info",
                "status": "success",
                **stage("b", "enrich"),
            },
            {"event": "stageflow.pipeline.completed", "level": "info", "status": "success", **run},
        ]

    async def test_timing_fields(self) -> None:
        """Start lines carry the stage's wait and finish lines the duration, in seconds."""
        started, finished = (await logged_run("a", ok))[1:3]
        assert (isinstance(started["wait"], float), started["wait"] >= 0) == (True, True)
        assert (isinstance(finished["duration"], float), finished["duration"] >= 0) == (True, True)
        # rounded to the microsecond
        assert (round(started["wait"], 6), round(finished["duration"], 6)) == (
            started["wait"],
            finished["duration"],
        )

    async def test_failure_line(self) -> None:
        """A failing stage logs at error level with status, ``error`` and ``error_type``."""
        records = [stable(r) for r in await logged_run("x", boom, fails=True)]
        assert [(r["event"], r["level"], r.get("status"), r.get("error_type")) for r in records] == [
            ("stageflow.pipeline.started", "info", None, None),
            ("stageflow.stage.started", "info", None, None),
            ("stageflow.stage.failed", "error", "error", "RuntimeError"),
            ("stageflow.pipeline.failed", "error", "error", "RuntimeError"),
        ]
        assert records[2]["error"] == "kaput"
        assert "trace_id" not in records[2]

    async def test_fail_output_line(self) -> None:
        """A stage returning ``StageOutput.fail`` logs a failure with its message."""
        line = (await logged_run("f", fail, fails=True))[2]
        assert {k: line[k] for k in ("event", "level", "status", "error", "error_type")} == {
            "event": "stageflow.stage.failed",
            "level": "error",
            "status": "failure",
            "error": "bad input",
            "error_type": "StageFailedError",
        }

    async def test_skip_line(self) -> None:
        """A stage that skips itself logs ``stageflow.stage.skipped`` with status ``skip``."""
        assert [(r["event"], r.get("status")) for r in await logged_run("s", skip)][2] == (
            "stageflow.stage.skipped",
            "skip",
        )

    async def test_concurrent_runs_full_stack(
        self,
        tracer_provider: TracerProvider,
        span_exporter: InMemorySpanExporter,
        meter_provider: MeterProvider,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Under many concurrent runs every stage line carries its own stage span's ids, and nothing warns."""
        caplog.set_level(logging.DEBUG)
        sink = ListLogger()
        gate = asyncio.Event()

        async def wait(ctx: StageContext) -> StageOutput:
            await gate.wait()
            return StageOutput.ok()

        graph = (
            Pipeline(name="demo")
            .with_stage("a", wait, T)
            .with_stage("b", wait, T, dependencies=("a",))
            .with_stage("c", wait, T, dependencies=("a",))
            .build(
                interceptors=[
                    LoggingInterceptor(json_logger(sink)),
                    MetricsInterceptor(meter_provider),
                    TracingInterceptor(tracer_provider),
                ]
            )
        )
        tasks = [asyncio.create_task(graph.run(entry_ctx())) for _ in range(30)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        spans = {
            (str((s.attributes or {})["stageflow.run.id"]), s.name): s
            for s in span_exporter.get_finished_spans()
        }
        records = sink.records()
        assert len(records) == 30 * 8
        for record in records:
            name = f"stage {record['stage']}" if "stage" in record else "pipeline demo"
            assert {k: record[k] for k in ("trace_id", "span_id")} == ids(spans[(record["run_id"], name)])
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

    async def test_broken_logger(self, caplog: pytest.LogCaptureFixture) -> None:
        """A logger that raises never fails the run and is reported once."""

        class Broken:
            def info(self, event: str, **fields: Any) -> None:
                raise OSError("disk full")

        graph = (
            Pipeline(name="demo")
            .with_stage("a", ok, T)
            .with_stage("b", ok, T)
            .build(interceptors=[LoggingInterceptor(Broken())])
        )
        assert sorted(await graph.run(entry_ctx())) == ["a", "b"]
        assert len([r for r in caplog.records if r.name == "stageflow_otel"]) == 1

    async def test_default_logger_writes_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without a logger and without a structlog configuration, lines are JSON on stdout."""
        assert not structlog.is_configured()
        graph = Pipeline(name="demo").with_stage("a", ok, T).build(interceptors=[LoggingInterceptor()])
        await graph.run(entry_ctx())
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(r["event"], r["level"]) for r in lines] == [
            ("stageflow.pipeline.started", "info"),
            ("stageflow.stage.started", "info"),
            ("stageflow.stage.completed", "info"),
            ("stageflow.pipeline.completed", "info"),
        ]
        assert all("timestamp" in r for r in lines)


class TestAddTraceContext:
    """The public structlog processor."""

    def test_inside_span(self, tracer_provider: TracerProvider) -> None:
        """Inside a span the processor adds the span's ids as lowercase hex."""
        with tracer_provider.get_tracer("t").start_as_current_span("s") as span:
            event = add_trace_context(None, "info", {"event": "x"})
            context = span.get_span_context()
        assert event == {
            "event": "x",
            "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
        }

    def test_outside_span(self) -> None:
        """Outside any span the event is unchanged."""
        assert add_trace_context(None, "info", {"event": "x"}) == {"event": "x"}

    def test_keeps_existing_ids(self, tracer_provider: TracerProvider) -> None:
        """Ids already in the event are kept."""
        with tracer_provider.get_tracer("t").start_as_current_span("s"):
            event = add_trace_context(None, "info", {"event": "x", "trace_id": "given", "span_id": "given"})
        assert event == {"event": "x", "trace_id": "given", "span_id": "given"}

    async def test_user_logs_inside_execute(
        self, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
    ) -> None:
        """A user logger with the processor tags lines written in ``execute()`` with the stage span."""
        sink = ListLogger()
        graph = talking(sink).build(interceptors=[TracingInterceptor(tracer_provider)])
        results = await graph.run(entry_ctx())
        span = next(s for s in span_exporter.get_finished_spans() if s.name == "stage talk")
        assert sink.records() == [
            {
                "event": "hello",
                "level": "info",
                "run_id": str(results.run_id),
                "pipeline": "demo",
                "stage": "talk",
                **ids(span),
            }
        ]

    async def test_run_and_stage_without_tracing(self) -> None:
        """With LoggingInterceptor and no tracing, user lines still carry the run id and stage name."""
        sink = ListLogger()
        graph = talking(sink).build(interceptors=[LoggingInterceptor(json_logger(ListLogger()))])
        first, second = await graph.run(entry_ctx()), await graph.run(entry_ctx())
        assert sink.records() == [
            {"event": "hello", "level": "info", "run_id": str(r.run_id), "pipeline": "demo", "stage": "talk"}
            for r in (first, second)
        ]
        assert add_trace_context(None, "info", {"event": "after"}) == {"event": "after"}

    async def test_run_level_lines_get_the_run_only(self) -> None:
        """A line written by a run interceptor inside LoggingInterceptor gets the run, not a stage."""
        from stageflow.interceptors import Interceptor

        sink = ListLogger()
        log = json_logger(sink, trace_context=True)

        class Announce(Interceptor):
            name, priority = "announce", 90

            async def intercept_run(self, run: Any, call_next: Any) -> Any:
                log.info("run begins")
                return await call_next(run)

        graph = one_stage_graph("demo", "a", ok, LoggingInterceptor(json_logger(ListLogger())), Announce())
        results = await graph.run(entry_ctx())
        assert sink.records() == [
            {"event": "run begins", "level": "info", "run_id": str(results.run_id), "pipeline": "demo"}
        ]
