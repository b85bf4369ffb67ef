"""TracingInterceptor: span tree, links, attributes, parents, failures, skips and context propagation.

It runs past 500 lines because the span tree is one contract: its shape, links, attributes and failure
handling are read together.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import logging
from collections.abc import Mapping
from contextvars import ContextVar

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from stageflow import (
    Pipeline,
    PipelineCancelledError,
    PipelineContext,
    PipelineFailedError,
    RetryPolicy,
    RunResult,
    StageContext,
    StageInfo,
    StageKind,
    StageOutput,
)
from stageflow.interceptors import (
    CallNext,
    CircuitBreakerInterceptor,
    Interceptor,
    RunNext,
    TimeoutInterceptor,
)
from stageflow_otel import TracingInterceptor, inject_context, semconv
from stageflow_otel._outcome import Outcome, observe_stage
from tests._stages import T, boom, diamond, fail, hang, hang_once_started, ok, skip
from tests._support import cancel_once_started

from .conftest import Traced, by_name, diamond_of, dump_spans, entry_ctx, one_stage_graph


def attrs(span: ReadableSpan, *drop: str) -> dict[str, AttributeValue]:
    """A span's attributes without the volatile keys in ``drop``."""
    return {k: v for k, v in (span.attributes or {}).items() if k not in drop}


def ending(span: ReadableSpan) -> tuple[StatusCode, AttributeValue, AttributeValue | None]:
    """How a stage or run span ended: its status code, its result (which must be set) and its
    ``error.type`` (``None``: not set)."""
    attributes = span.attributes or {}
    result = "stageflow.run.result" if span.name.startswith("pipeline ") else "stageflow.stage.result"
    return span.status.status_code, attributes[result], attributes.get("error.type")


class TestSpanTree:
    """The run span, the stage spans under it and their dependency links."""

    async def test_tree_with_links(self, traced: Traced) -> None:
        """Every stage span is a child of the run span and links to each dependency's span."""
        graph = traced.build(diamond())
        await graph.run(entry_ctx())
        assert dump_spans(traced.finished()) == [
            "pipeline demo",
            "  stage a",
            "  stage b [links: stage a]",
            "  stage c [links: stage a]",
            "  stage d [links: stage b, stage c]",
        ]

    async def test_one_trace_internal_kind(self, traced: Traced) -> None:
        """All spans of a run share one trace id and are INTERNAL."""
        graph = traced.build(diamond())
        await graph.run(entry_ctx())
        spans = traced.finished()
        assert {s.context.trace_id for s in spans} == {spans[0].context.trace_id}
        assert {s.kind for s in spans} == {SpanKind.INTERNAL}

    async def test_link_attributes(self, traced: Traced) -> None:
        """Each dependency link carries ``stageflow.link.type=dependency``."""
        graph = traced.build(diamond())
        await graph.run(entry_ctx())
        d = traced.spans()["stage d"]
        assert [dict(link.attributes or {}) for link in d.links] == [
            {"stageflow.link.type": "dependency"},
            {"stageflow.link.type": "dependency"},
        ]

    async def test_run_span_attributes(self, traced: Traced) -> None:
        """The run span carries the pipeline, version, run id, result, critical path and duration."""
        graph = traced.build(diamond())
        ctx = entry_ctx()
        result = await graph.run(ctx)
        run = traced.spans()["pipeline demo"]
        duration = (run.attributes or {})["stageflow.run.duration"]
        assert isinstance(duration, float) and duration >= 0.0
        assert attrs(run, "stageflow.run.duration") == {
            "stageflow.pipeline.name": "demo",
            "stageflow.pipeline.version": graph.version,
            "stageflow.run.id": str(ctx.pipeline_run_id),
            "stageflow.run.result": "success",
            "stageflow.run.critical_path": result.critical_path,
        }
        assert run.status.status_code is StatusCode.UNSET

    async def test_stage_span_attributes(self, traced: Traced) -> None:
        """A stage span carries the stage's static attributes, attempt, wait and result, and no error."""
        graph = traced.build(diamond())
        ctx = entry_ctx()
        await graph.run(ctx)
        c = traced.spans()["stage c"]
        wait = (c.attributes or {})["stageflow.stage.wait.duration"]
        assert isinstance(wait, float) and wait >= 0.0
        assert attrs(c, "stageflow.stage.wait.duration") == {
            "stageflow.pipeline.name": "demo",
            "stageflow.run.id": str(ctx.pipeline_run_id),
            "stageflow.stage.name": "c",
            "stageflow.stage.kind": "enrich",
            "stageflow.stage.dependencies": ("a",),
            "stageflow.stage.attempt": 1,
            "stageflow.stage.result": "success",
            "code.function.name": f"{ok.__module__}.ok",
        }
        assert c.status.status_code is StatusCode.UNSET

    async def test_stage_object_function_name(self, traced: Traced) -> None:
        """A stage object's span names its ``execute`` method in ``code.function.name``."""

        class Greet:
            async def execute(self, ctx: StageContext) -> StageOutput:
                return StageOutput.ok()

        graph = one_stage_graph("p", "greet", Greet, traced.interceptor)
        await graph.run(entry_ctx())
        span = traced.spans()["stage greet"]
        assert (span.attributes or {})["code.function.name"] == f"{__name__}.{Greet.__qualname__}.execute"

    async def test_names_come_from_semconv(self, traced: Traced) -> None:
        """Span names are the semconv prefixes followed by the pipeline or stage name."""
        graph = one_stage_graph("p", "a", ok, traced.interceptor)
        await graph.run(entry_ctx())
        assert sorted(s.name for s in traced.finished()) == [
            semconv.SPAN_PIPELINE_PREFIX + "p",
            semconv.SPAN_STAGE_PREFIX + "a",
        ]


class TestRunParent:
    """Where the run span's parent comes from."""

    async def test_ambient_span(self, traced: Traced) -> None:
        """A span current when ``run()`` is called is the run span's parent."""
        graph = traced.build(diamond())
        tracer = traced.provider.get_tracer("test")
        with tracer.start_as_current_span("request"):
            await graph.run(entry_ctx({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}))
        assert dump_spans(traced.finished())[:2] == ["request", "  pipeline demo"]

    async def test_traceparent_in_metadata(self, traced: Traced) -> None:
        """Without a current span, ``snapshot.metadata["traceparent"]`` gives the parent."""
        graph = traced.build(diamond())
        await graph.run(entry_ctx({"traceparent": "00-" + "a1" * 16 + "-" + "b2" * 8 + "-01"}))
        run = traced.spans()["pipeline demo"]
        assert run.parent is not None and run.parent.is_remote
        assert (format(run.context.trace_id, "032x"), format(run.parent.span_id, "016x")) == (
            "a1" * 16,
            "b2" * 8,
        )

    async def test_extracted_parent_keeps_ambient_baggage(self, traced: Traced) -> None:
        """With a parent from ``traceparent``, ambient values such as baggage still reach the stages."""
        seen: list[object] = []

        async def read(ctx: StageContext) -> StageOutput:
            seen.append(baggage.get_baggage("tenant"))
            return StageOutput.ok()

        graph = one_stage_graph("p", "r", read, traced.interceptor)
        token = otel_context.attach(baggage.set_baggage("tenant", "t1"))
        try:
            await graph.run(entry_ctx({"traceparent": "00-" + "a1" * 16 + "-" + "b2" * 8 + "-01"}))
        finally:
            otel_context.detach(token)
        assert seen == ["t1"]
        run = traced.spans()["pipeline p"]
        assert format(run.context.trace_id, "032x") == "a1" * 16

    async def test_traceparent_env(
        self,
        traced: Traced,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Without a current span or metadata, the ``TRACEPARENT`` environment variable gives the parent."""
        monkeypatch.setenv("TRACEPARENT", "00-" + "c3" * 16 + "-" + "d4" * 8 + "-01")
        graph = traced.build(diamond())
        await graph.run(entry_ctx())
        run = traced.spans()["pipeline demo"]
        assert run.parent is not None
        assert (format(run.context.trace_id, "032x"), format(run.parent.span_id, "016x")) == (
            "c3" * 16,
            "d4" * 8,
        )

    async def test_invalid_traceparent_starts_new_trace(self, traced: Traced) -> None:
        """A malformed ``traceparent`` is ignored: the run span is a root."""
        graph = traced.build(diamond())
        await graph.run(entry_ctx({"traceparent": "garbage"}))
        assert traced.spans()["pipeline demo"].parent is None


class TestFailures:
    """Error status, ``error.type`` and results for every way a stage can end badly."""

    async def test_raising_stage(self, traced: Traced) -> None:
        """A raising stage's span is ERROR with the class name and an exception event; so is the run."""
        graph = traced.build(
            Pipeline(name="p").with_stage("a", ok, T).with_stage("boom", boom, T, dependencies=("a",))
        )
        spans = await traced.failed(graph)
        stage, run = spans["stage boom"], spans["pipeline p"]
        assert stage.status.description == "kaput"
        assert ending(stage) == (StatusCode.ERROR, "error", "RuntimeError")
        assert [e.name for e in stage.events] == [
            semconv.EVENTS["stage.started"],
            "exception",
            semconv.EVENTS["stage.failed"],
        ]
        assert ending(run) == (StatusCode.ERROR, "error", "RuntimeError")
        assert (run.attributes or {})["stageflow.run.critical_path"] == ("a", "boom")
        assert "error.type" not in (spans["stage a"].attributes or {})

    async def test_fail_output(self, traced: Traced) -> None:
        """``StageOutput.fail`` makes the stage span an error although the stage did not raise."""
        spans = await traced.failed(one_stage_graph("p", "f", fail, traced.interceptor))
        assert spans["stage f"].status.description == "bad input"
        assert [ending(spans["stage f"]), ending(spans["pipeline p"])] == [
            (StatusCode.ERROR, "failure", "StageFailedError")
        ] * 2

    async def test_timeout(self, traced: Traced) -> None:
        """A ``StageTimeoutError`` is result ``timeout`` with its class name as ``error.type``."""
        spans = await traced.failed(
            one_stage_graph("p", "slow", hang, traced.interceptor, TimeoutInterceptor(0.01))
        )
        assert [ending(spans["stage slow"]), ending(spans["pipeline p"])] == [
            (StatusCode.ERROR, "timeout", "StageTimeoutError")
        ] * 2

    async def test_circuit_open(self, traced: Traced) -> None:
        """A call refused by an open circuit breaker has ``error.type`` ``CircuitOpenError``."""
        breaker = CircuitBreakerInterceptor(failure_threshold=1, recovery_timeout=3600)
        graph = one_stage_graph("p", "boom", boom, traced.interceptor, breaker)
        for _ in range(2):
            with pytest.raises(PipelineFailedError):
                await graph.run(entry_ctx())
        first, second = sorted(
            (s for s in traced.finished() if s.name == "stage boom"),
            key=lambda s: s.start_time or 0,
        )
        assert [(s.attributes or {})["error.type"] for s in (first, second)] == [
            "RuntimeError",
            "CircuitOpenError",
        ]
        assert (second.attributes or {})["stageflow.stage.result"] == "error"

    async def test_sibling_cancelled(self, traced: Traced) -> None:
        """A stage cancelled because its sibling failed ends with result ``cancellation``, ``cancelled``."""
        hang_started = asyncio.Event()

        async def late_boom(ctx: StageContext) -> StageOutput:
            await hang_started.wait()
            raise RuntimeError("kaput")

        graph = traced.build(
            Pipeline(name="p")
            .with_stage("hang", hang_once_started(hang_started), T)
            .with_stage("boom", late_boom, T)
        )
        hung = (await traced.failed(graph))["stage hang"]
        assert hung.status.description == "cancelled"
        assert ending(hung) == (StatusCode.ERROR, "cancellation", "cancelled")

    async def test_caller_cancels_run(self, traced: Traced) -> None:
        """Cancelling the task awaiting ``run()`` ends every span, the run span as ``cancelled``."""
        started = asyncio.Event()

        graph = one_stage_graph("p", "hang", hang_once_started(started), traced.interceptor)
        await cancel_once_started(graph.run(entry_ctx()), started)
        spans = traced.spans()
        assert dump_spans(tuple(spans.values())) == ["pipeline p", "  stage hang"]
        assert ending(spans["pipeline p"]) == (StatusCode.ERROR, "cancellation", "cancelled")

    async def test_cancel_output_is_not_an_error(self, traced: Traced) -> None:
        """``StageOutput.cancel`` ends stage and run as ``cancellation`` without error status."""

        async def stop(ctx: StageContext) -> StageOutput:
            return StageOutput.cancel("enough")

        spans = await traced.failed(
            one_stage_graph("p", "stop", stop, traced.interceptor), PipelineCancelledError
        )
        assert [ending(spans["stage stop"]), ending(spans["pipeline p"])] == [
            (StatusCode.UNSET, "cancellation", None)
        ] * 2

    async def test_retry_attempts(self, traced: Traced) -> None:
        """Each executor retry attempt gets its own span; dependents link to the last attempt."""
        calls: list[int] = []

        async def flaky(ctx: StageContext) -> StageOutput:
            calls.append(ctx.attempt)
            return StageOutput.retry("again") if ctx.attempt == 1 else StageOutput.ok()

        graph = traced.build(
            Pipeline(name="p")
            .with_stage("flaky", flaky, T, retry=RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=0.0))
            .with_stage("after", ok, T, dependencies=("flaky",))
        )
        await graph.run(entry_ctx())
        spans = traced.finished()
        attempts = sorted((s for s in spans if s.name == "stage flaky"), key=lambda s: s.start_time or 0)
        assert [
            {
                k: (s.attributes or {}).get(k)
                for k in ("stageflow.stage.attempt", "stageflow.stage.result", "error.type")
            }
            for s in attempts
        ] == [
            {
                "stageflow.stage.attempt": 1,
                "stageflow.stage.result": "failure",
                "error.type": "retry_requested",
            },
            {"stageflow.stage.attempt": 2, "stageflow.stage.result": "success", "error.type": None},
        ]
        after = next(s for s in spans if s.name == "stage after")
        assert [link.context.span_id for link in after.links] == [attempts[1].context.span_id]

    async def test_retries_inside_the_span_report_the_last_attempt(self, traced: Traced) -> None:
        """Attempts a RetryInterceptor makes inside the stage span leave one span with the last attempt."""
        from stageflow.interceptors import RetryInterceptor

        async def flaky(ctx: StageContext) -> StageOutput:
            if ctx.attempt < 3:
                raise ConnectionError("down")
            return StageOutput.ok()

        async def no_sleep(delay: float) -> None:
            return None

        retry = RetryInterceptor(RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0, sleep=no_sleep))
        graph = one_stage_graph("p", "flaky", flaky, traced.interceptor, retry)
        await graph.run(entry_ctx())
        (span,) = [s for s in traced.finished() if s.name == "stage flaky"]
        assert {
            k: (span.attributes or {}).get(k) for k in ("stageflow.stage.attempt", "stageflow.stage.result")
        } == {
            "stageflow.stage.attempt": 3,
            "stageflow.stage.result": "success",
        }

    async def test_a_keyboard_interrupt_inside_the_run_ends_its_span_and_detaches_its_context(
        self, traced: Traced
    ) -> None:
        """A ``KeyboardInterrupt`` raised inside the run (here by an inner interceptor) still ends the run
        span as an error and detaches its context; the next run is a root span of its own trace."""
        graph = one_stage_graph("p", "a", ok, traced.interceptor, _InterruptingRun())
        with pytest.raises(KeyboardInterrupt):
            await graph.run(entry_ctx())
        assert trace.get_current_span() is trace.INVALID_SPAN
        assert [(s.name, ending(s)) for s in traced.finished()] == [
            ("pipeline p", (StatusCode.ERROR, "error", "KeyboardInterrupt"))
        ]
        await one_stage_graph("q", "a", ok, traced.interceptor).run(entry_ctx())
        again = traced.spans()["pipeline q"]
        assert (again.parent, again.context.trace_id == traced.finished()[0].context.trace_id) == (
            None,
            False,
        )

    async def test_a_keyboard_interrupt_in_a_stage_attempt_is_told_once_as_an_error(self) -> None:
        """``observe_stage`` (the scaffold of every stage span) tells ``ended`` of a ``KeyboardInterrupt``
        once, as an error naming it, and lets it through. (Called directly: raised in a real stage's
        task, it would leave the event loop running the test.)"""
        told: list[tuple[object, ...]] = []
        failures: list[Exception] = []

        async def interrupted(ctx: StageContext) -> StageOutput:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            await observe_stage(entry_ctx(), interrupted, lambda *end: told.append(end), failures.append)
        assert (told, failures) == ([(Outcome("error", "KeyboardInterrupt", ""), None, None)], [])


class _InterruptingRun(Interceptor):
    """An inner interceptor whose run hook raises ``KeyboardInterrupt``."""

    priority = 1000

    async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
        raise KeyboardInterrupt


class TestSkips:
    """Stages that skip themselves and stages the executor skips."""

    async def test_skip_output(self, traced: Traced) -> None:
        """A stage returning ``StageOutput.skip`` has result ``skip`` and no error."""
        graph = one_stage_graph("p", "s", skip, traced.interceptor)
        await graph.run(entry_ctx())
        span = traced.spans()["stage s"]
        assert (span.attributes or {})["stageflow.stage.result"] == "skip"
        assert span.status.status_code is StatusCode.UNSET

    async def test_conditional_skip_has_no_span_and_its_events_go_on_the_run_span(
        self, traced: Traced
    ) -> None:
        """A conditional stage the executor skips has no span; its event is on the run span, with no sink.

        A traced run's events are span events whatever sink the run was given (none here).
        """
        graph = traced.build(
            Pipeline(name="p")
            .with_stage("s", skip, T)
            .with_stage("cond", ok, StageKind.GUARD, dependencies=("s",), conditional=True)
        )
        await graph.run(entry_ctx())
        spans = traced.finished()
        assert dump_spans(spans) == ["pipeline p", "  stage s"]
        assert [[str((e.attributes or {})[semconv.EVENT_TYPE]) for e in s.events] for s in spans] == [
            ["stage.s.started", "stage.s.skipped"],
            [
                "pipeline.created",
                "pipeline.started",
                "stage.cond.skipped",
                "pipeline.completed",
            ],
        ]


class TestContextPropagation:
    """Spans opened inside ``execute()`` and the W3C helpers."""

    async def test_user_spans_are_stage_children(self, traced: Traced) -> None:
        """A span opened inside ``execute()`` is a child of that stage's span, also for concurrent stages."""
        tracer = traced.provider.get_tracer("user")
        b_started, c_started = asyncio.Event(), asyncio.Event()

        async def b(ctx: StageContext) -> StageOutput:
            with tracer.start_as_current_span("user b"):
                b_started.set()
                await c_started.wait()
            return StageOutput.ok()

        async def c(ctx: StageContext) -> StageOutput:
            with tracer.start_as_current_span("user c"):
                c_started.set()
                await b_started.wait()
            return StageOutput.ok()

        graph = traced.build(
            Pipeline(name="p")
            .with_stage("a", ok, T)
            .with_stage("b", b, T, dependencies=("a",))
            .with_stage("c", c, T, dependencies=("a",))
        )
        await asyncio.wait_for(graph.run(entry_ctx()), 5)
        assert dump_spans(traced.finished()) == [
            "pipeline p",
            "  stage a",
            "  stage b [links: stage a]",
            "    user b",
            "  stage c [links: stage a]",
            "    user c",
        ]

    async def test_outer_interceptor_context_reaches_execute(self, traced: Traced) -> None:
        """Baggage and context variables set by interceptors around the stage span reach ``execute()``."""
        tracer = traced.provider.get_tracer("user")
        request: ContextVar[str] = ContextVar("request", default="-")
        seen: list[tuple[object, object, str]] = []

        class StageBaggage(Interceptor):
            """An outer stage interceptor (priority 5) setting baggage and opening its own span."""

            name = "stage_baggage"
            priority = 5

            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
                try:
                    with tracer.start_as_current_span(f"outer {stage.name}"):
                        return await call_next(ctx)
                finally:
                    otel_context.detach(token)

        class RunBaggage(Interceptor):
            """An inner run interceptor (priority 15) setting baggage and a context variable."""

            name = "run_baggage"
            priority = 15

            async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
                token = otel_context.attach(baggage.set_baggage("request", "r-1"))
                var_token = request.set("r-1")
                try:
                    return await call_next(run)
                finally:
                    request.reset(var_token)
                    otel_context.detach(token)

        async def read(ctx: StageContext) -> StageOutput:
            seen.append((baggage.get_baggage("tenant"), baggage.get_baggage("request"), request.get()))
            with tracer.start_as_current_span(f"user {ctx.stage_name}"):
                return StageOutput.ok()

        graph = (
            Pipeline(name="p")
            .with_stage("a", read, T)
            .with_stage("b", read, T, dependencies=("a",))
            .build(interceptors=[StageBaggage(), RunBaggage(), traced.interceptor])
        )
        await graph.run(entry_ctx())
        assert seen == [("acme", "r-1", "r-1"), ("acme", "r-1", "r-1")]
        assert dump_spans(traced.finished()) == [
            "pipeline p",
            "  outer a",
            "  outer b",
            "  stage a",
            "    user a",
            "  stage b [links: stage a]",
            "    user b",
        ]

    async def test_many_concurrent_runs(
        self,
        traced: Traced,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Many concurrent runs keep every parent, child and link right and never fail to detach a context."""
        caplog.set_level(logging.DEBUG)
        tracer = traced.provider.get_tracer("user")
        runs = 50
        gate = asyncio.Event()

        async def work(ctx: StageContext) -> StageOutput:
            with tracer.start_as_current_span(f"user {ctx.stage_name}"):
                await gate.wait()
                with tracer.start_as_current_span(f"inner {ctx.stage_name}"):
                    await asyncio.sleep(0)
            return StageOutput.ok()

        graph = traced.build(diamond_of(work))
        tasks = [asyncio.create_task(graph.run(entry_ctx())) for _ in range(runs)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        spans = traced.finished()
        traces: dict[int, list[ReadableSpan]] = {}
        for span in spans:
            traces.setdefault(span.context.trace_id, []).append(span)
        assert len(traces) == runs
        expected = [
            "pipeline demo",
            "  stage a",
            "    user a",
            "      inner a",
            "  stage b [links: stage a]",
            "    user b",
            "      inner b",
            "  stage c [links: stage a]",
            "    user c",
            "      inner c",
            "  stage d [links: stage b, stage c]",
            "    user d",
            "      inner d",
        ]
        for members in traces.values():
            assert dump_spans(members) == expected
            named = by_name(tuple(members))
            for stage in "abcd":
                assert named[f"stage {stage}"].parent == named["pipeline demo"].context
                assert named[f"user {stage}"].parent == named[f"stage {stage}"].context
                assert named[f"inner {stage}"].parent == named[f"user {stage}"].context
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert not trace.get_current_span().get_span_context().is_valid

    async def test_inject_context(self, traced: Traced) -> None:
        """``inject_context`` inside a stage writes the stage span's ``traceparent``."""
        carriers: list[Mapping[str, str]] = []

        async def call_out(ctx: StageContext) -> StageOutput:
            carriers.append(inject_context())
            return StageOutput.ok()

        graph = one_stage_graph("p", "out", call_out, traced.interceptor)
        await graph.run(entry_ctx())
        span = traced.spans()["stage out"]
        ids = f"{span.context.trace_id:032x}-{span.context.span_id:016x}"
        assert carriers[0]["traceparent"].startswith(f"00-{ids}-")

    async def test_inject_context_into_given_carrier(self) -> None:
        """``inject_context`` writes into and returns the carrier it is given."""
        carrier = {"x": "1"}
        assert inject_context(carrier) is carrier
        assert carrier == {"x": "1"}


class TestContentCapture:
    """Stage content is captured only through the redaction hook."""

    async def test_off_by_default(self, traced: Traced) -> None:
        """Without a hook no output attribute is recorded."""

        async def secret(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(password="hunter2")

        graph = one_stage_graph("p", "s", secret, traced.interceptor)
        await graph.run(entry_ctx())
        span = traced.spans()["stage s"]
        assert [k for k in span.attributes or {} if k.startswith(semconv.STAGE_OUTPUT_PREFIX)] == []
        assert "hunter2" not in repr(dict(span.attributes or {}))

    async def test_hook_attributes(self, traced: Traced) -> None:
        """The hook's attributes are recorded under the ``stageflow.stage.output.`` prefix."""

        def hook(stage: StageInfo, output: StageOutput) -> Mapping[str, AttributeValue]:
            return {"length": len(output.data["text"])}

        async def text(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(text="hello")

        graph = one_stage_graph("p", "t", text, TracingInterceptor(traced.provider, capture_content=hook))
        await graph.run(entry_ctx())
        span = traced.spans()["stage t"]
        assert (span.attributes or {})["stageflow.stage.output.length"] == 5

    async def test_broken_hook_is_logged_once(
        self,
        traced: Traced,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A hook that raises is logged once and never fails the run."""

        def hook(stage: StageInfo, output: StageOutput) -> Mapping[str, AttributeValue]:
            raise KeyError("oops")

        graph = (
            Pipeline(name="p")
            .with_stage("a", ok, T)
            .with_stage("b", ok, T)
            .build(interceptors=[TracingInterceptor(traced.provider, capture_content=hook)])
        )
        await graph.run(entry_ctx())
        await graph.run(entry_ctx())
        assert len([r for r in caplog.records if r.name == "stageflow_otel"]) == 1
        assert len(traced.finished()) == 6


class TestNoSdk:
    """The fast path when no SDK is configured."""

    async def test_noop_provider(self) -> None:
        """With a no-op provider the run works and its result is unchanged."""
        graph = diamond().build(interceptors=[TracingInterceptor(NoOpTracerProvider())])
        result = await graph.run(entry_ctx())
        assert sorted(result) == ["a", "b", "c", "d"]

    async def test_sdk_disabled(
        self, span_exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``OTEL_SDK_DISABLED=true`` makes the SDK provider a no-op: nothing is exported."""
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        graph = diamond().build(interceptors=[TracingInterceptor(provider)])
        await graph.run(entry_ctx())
        assert span_exporter.get_finished_spans() == ()

    async def test_global_default_without_sdk(self) -> None:
        """``TracingInterceptor()`` with no global SDK provider passes runs straight through."""
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        graph = diamond().build(interceptors=[TracingInterceptor()])
        result = await graph.run(entry_ctx())
        assert sorted(result) == ["a", "b", "c", "d"]
