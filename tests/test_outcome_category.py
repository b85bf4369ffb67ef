"""Outcome categories: one classification of every stage and run outcome, read by every report."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest

import stageflow
from stageflow import (
    BaseInterceptor,
    CircuitOpenError,
    ErrorAction,
    InMemoryEventSink,
    InMemoryRunStore,
    InterceptorResult,
    InvalidStageOutputError,
    OutcomeCategory,
    Pipeline,
    PipelineCancelledError,
    PipelineContext,
    PipelineFailedError,
    PipelineRunError,
    RetriesExhaustedError,
    RetryPolicy,
    RunResult,
    StageBlockedError,
    StageContext,
    StageFailedError,
    StageflowError,
    StageOutput,
    StageResult,
    StageStatus,
    StageTimeoutError,
    error_category,
)
from stageflow.views._timeline import timeline_of_record

from ._stages import E, boom, chain, hang_once_started, skip
from ._support import FakeSleep, cancel_once_started, make_ctx, ok_stage, run_fails

C = OutcomeCategory

ENDED = ("completed", "failed", "skipped", "cancelled")


class SlowQueryError(StageTimeoutError):
    """A timeout of the user's own, subclassing stageflow's."""

    def __init__(self) -> None:
        super().__init__("query", 2.5)


class QuotaFailedError(StageFailedError):
    """A failure of the user's own, subclassing stageflow's."""

    def __init__(self) -> None:
        super().__init__("query", "quota used up")


class Categorised(Exception):
    """A user exception that declares its category."""

    category = OutcomeCategory.TIMEOUT


class Labelled(Exception):
    """A user exception whose ``category`` is not an ``OutcomeCategory``."""

    category = "timeout"


class ClaimsSkip(Exception):
    """A user exception whose category is not one a stage that raised can have."""

    category = OutcomeCategory.SKIP


class ClaimsSuccess(Exception):
    """Likewise, claiming success."""

    category = OutcomeCategory.SUCCESS


def _ended(sink: InMemoryEventSink, stage: str) -> dict[str, Any]:
    """The data of ``stage``'s one stage-ended event."""
    (event,) = [e for e in sink.events if e.type in {f"stage.{stage}.{o}" for o in ENDED}]
    return dict(event.data)


def _run_ended(sink: InMemoryEventSink) -> tuple[str, dict[str, Any]]:
    (event,) = [
        e
        for e in sink.events
        if e.type.startswith("pipeline.") and e.type != "pipeline.created" and e.type != "pipeline.started"
    ]
    return event.type, dict(event.data)


async def _fail_run(pipeline: Pipeline, sink: InMemoryEventSink) -> PipelineRunError:
    return await run_fails(pipeline.build().run(make_ctx(sink=sink)), PipelineRunError)


class TestOutcomeCategory:
    def test_values(self) -> None:
        """The categories are the stageflow.run.result vocabulary, as strings."""
        assert [(c.name, str(c)) for c in OutcomeCategory] == [
            ("SUCCESS", "success"),
            ("FAILURE", "failure"),
            ("ERROR", "error"),
            ("TIMEOUT", "timeout"),
            ("CANCELLATION", "cancellation"),
            ("SKIP", "skip"),
        ]

    def test_public(self) -> None:
        """Both names are exported by the package."""
        assert {"OutcomeCategory", "error_category"} <= set(stageflow.__all__)


class TestErrorCategory:
    @pytest.mark.parametrize(
        ("error", "category"),
        [
            (asyncio.CancelledError(), C.CANCELLATION),
            (ValueError("x"), C.ERROR),
            (StageTimeoutError("a", 1.0), C.TIMEOUT),
            (SlowQueryError(), C.TIMEOUT),
            (StageFailedError("a", "no"), C.FAILURE),
            (QuotaFailedError(), C.FAILURE),
            (RetriesExhaustedError("a", 3, "again"), C.FAILURE),
            (CircuitOpenError("a", 1.0), C.ERROR),
            (StageBlockedError("a", "auth", "denied"), C.ERROR),
            (InvalidStageOutputError("a", 3), C.ERROR),
            (StageflowError("x"), C.ERROR),
            (Categorised(), C.TIMEOUT),
            (Labelled(), C.ERROR),
            (ClaimsSkip(), C.ERROR),
            (ClaimsSuccess(), C.ERROR),
            (PipelineCancelledError("inner", "stop", RunResult(UUID(int=0), "p", 0.0, {})), C.ERROR),
        ],
        ids=[
            "cancelled",
            "plain",
            "timeout",
            "timeout-subclass",
            "failed",
            "failed-subclass",
            "retries-exhausted",
            "circuit-open",
            "blocked",
            "invalid-output",
            "base",
            "own-category",
            "category-not-an-enum",
            "own-skip-is-not-a-failing-category",
            "own-success-is-not-a-failing-category",
            "nested-run-cancellation-let-through",
        ],
    )
    def test_category(self, error: BaseException, category: OutcomeCategory) -> None:
        """error_category reads asyncio cancellation, then the error's category attribute, else ERROR."""
        assert error_category(error) is category

    def test_class_attributes(self) -> None:
        """The error classes carry their category as a class attribute that subclasses inherit."""
        assert (
            StageflowError.category,
            StageTimeoutError.category,
            SlowQueryError.category,
            StageFailedError.category,
            QuotaFailedError.category,
            RetriesExhaustedError.category,
            PipelineCancelledError.category,
        ) == (C.ERROR, C.TIMEOUT, C.TIMEOUT, C.FAILURE, C.FAILURE, C.FAILURE, C.CANCELLATION)

    def test_pipeline_failed_takes_its_stage_error(self) -> None:
        """A PipelineFailedError's category is its failing stage's error category."""
        results = RunResult(make_ctx().snapshot.run_id.pipeline_run_id, "p", 0.0, {})
        error = PipelineFailedError("a", SlowQueryError(), {}, results)
        assert (error.category, error_category(error), PipelineFailedError.category) == (
            C.TIMEOUT,
            C.TIMEOUT,
            C.ERROR,
        )


class TestStageResultCategory:
    @pytest.mark.parametrize(
        ("status", "error", "category"),
        [
            (StageStatus.OK, None, C.SUCCESS),
            (StageStatus.SKIP, None, C.SKIP),
            (StageStatus.CANCEL, None, C.CANCELLATION),
            (StageStatus.FAIL, StageFailedError("a", "no"), C.FAILURE),
            (StageStatus.FAIL, RuntimeError("x"), C.ERROR),
            (StageStatus.FAIL, SlowQueryError(), C.TIMEOUT),
            (StageStatus.FAIL, None, C.FAILURE),
        ],
        ids=["ok", "skip", "cancel", "fail-output", "fail-raised", "fail-timeout", "fail-without-error"],
    )
    def test_by_status(self, status: StageStatus, error: BaseException | None, category: C) -> None:
        """Each final status maps to its category; FAIL takes its error's."""
        result = StageResult("a", E, status, None, error, 0.0, 0.0, 0.0)
        assert result.category is category


class Fallback(BaseInterceptor):
    """Finishes every failing stage with the default fallback (a skip)."""

    name = "fallback"

    async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
        return ErrorAction.FALLBACK


class Refuse(BaseInterceptor):
    """Stops stage ``guarded`` before it runs, finishing it with a skip."""

    name = "refuse"

    async def before(self, stage_name: str, ctx: PipelineContext) -> InterceptorResult | None:
        if stage_name == "guarded":
            return InterceptorResult(stage_ran=False, result=StageOutput.skip("refused, fallback used"))
        return None


class TestRunsReportOneCategory:
    """Every status, run for real: the StageResult, its stage-ended event and the run agree."""

    @pytest.fixture(name="sink")
    def _sink(self) -> InMemoryEventSink:
        return InMemoryEventSink()

    async def test_success(self, sink: InMemoryEventSink) -> None:
        """A completed stage and run are SUCCESS."""
        results = await Pipeline().with_stage("a", ok_stage(), E).build().run(make_ctx(sink=sink))
        assert (results["a"].category, _ended(sink, "a")["category"], results.category) == (
            C.SUCCESS,
            "success",
            C.SUCCESS,
        )
        assert _run_ended(sink) == ("pipeline.completed", _run_ended(sink)[1])
        assert _run_ended(sink)[1]["category"] == "success"

    async def test_own_skip_and_conditional_skip(self, sink: InMemoryEventSink) -> None:
        """A stage's own skip and a conditional skip are both SKIP; the run still succeeds."""
        pipeline = chain(("a", skip), ("c", ok_stage()), kind=E, conditional={"c"})
        results = await pipeline.build().run(make_ctx(sink=sink))
        assert [(n, r.category, _ended(sink, n)["category"]) for n, r in results.items()] == [
            ("a", C.SKIP, "skip"),
            ("c", C.SKIP, "skip"),
        ]
        assert (results["c"].data["reason"], results.category) == ("dependency 'a' was skipped", C.SUCCESS)

    async def test_interceptor_fallbacks_are_skips(self, sink: InMemoryEventSink) -> None:
        """A fallback after an error and an interceptor's stand-in result are SKIP, not errors."""
        pipeline = Pipeline().with_stage("broken", boom, E).with_stage("guarded", ok_stage(), E)
        results = await pipeline.build(interceptors=[Fallback(), Refuse()]).run(make_ctx(sink=sink))
        assert [(n, results[n].category, _ended(sink, n)["category"]) for n in ("broken", "guarded")] == [
            ("broken", C.SKIP, "skip"),
            ("guarded", C.SKIP, "skip"),
        ]
        assert (results["broken"].data["reason"], results.category) == (
            "fallback after RuntimeError: kaput",
            C.SUCCESS,
        )

    @pytest.mark.parametrize(
        ("raised", "error_type", "category"),
        [
            (SlowQueryError, "SlowQueryError", C.TIMEOUT),
            (QuotaFailedError, "QuotaFailedError", C.FAILURE),
            (RuntimeError, "RuntimeError", C.ERROR),
            (ClaimsSkip, "ClaimsSkip", C.ERROR),
        ],
        ids=["timeout-subclass", "failed-subclass", "plain-error", "claims-skip"],
    )
    async def test_raised(
        self, sink: InMemoryEventSink, raised: type[Exception], error_type: str, category: C
    ) -> None:
        """A raised subclass of StageTimeoutError is TIMEOUT, of StageFailedError FAILURE, in every view."""

        async def query(ctx: StageContext) -> StageOutput:
            raise raised()

        error = await _fail_run(Pipeline().with_stage("query", query, E), sink)
        stage = error.results["query"]
        ended = _ended(sink, "query")
        kind, run = _run_ended(sink)
        assert (stage.category, ended["category"], ended["error_type"]) == (
            category,
            str(category),
            error_type,
        )
        assert (kind, run["category"], run["error_type"]) == ("pipeline.failed", str(category), error_type)
        assert (error.category, error.results.category) == (category, category)

    async def test_a_nested_runs_cancellation_let_through_is_an_error(self, sink: InMemoryEventSink) -> None:
        """A stage that runs a graph which cancels, and lets its PipelineCancelledError through, failed: an
        ERROR in its result, its event, the run's error, and both timelines (live and stored) agree."""
        inner = Pipeline().with_stage("stop", lambda ctx: StageOutput.cancel("enough"), E).build()

        async def outer(ctx: StageContext) -> StageOutput:
            await inner.run(make_ctx())
            return StageOutput.ok()

        store = InMemoryRunStore()
        graph = Pipeline("outer").with_stage("nested", outer, E).build(run_store=store)
        error = await run_fails(graph.run(make_ctx(sink=sink)))
        assert (error.results["nested"].category, _ended(sink, "nested")["category"]) == (C.ERROR, "error")
        assert (error.category, error.results.category, _run_ended(sink)[1]["category"]) == (
            C.ERROR,
            C.ERROR,
            "error",
        )
        (record,) = await store.list_runs()
        live = error.results.timeline(color=False).splitlines()[0]
        stored = timeline_of_record(record).splitlines()[0]
        assert "failed" in live
        assert live == stored

    async def test_fail_output_and_exhausted_retries_are_failures(self, sink: InMemoryEventSink) -> None:
        """StageOutput.fail and exhausted retries are FAILURE."""

        async def fails(ctx: StageContext) -> StageOutput:
            return StageOutput.fail("no")

        async def again(ctx: StageContext) -> StageOutput:
            return StageOutput.retry("again")

        policy = RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=0.0, sleep=FakeSleep())
        for stage, pipeline in (
            ("fails", Pipeline().with_stage("fails", fails, E)),
            ("again", Pipeline().with_stage("again", again, E, retry=policy)),
        ):
            sink.clear()
            error = await _fail_run(pipeline, sink)
            assert (error.results[stage].category, _ended(sink, stage)["category"], error.category) == (
                C.FAILURE,
                "failure",
                C.FAILURE,
            )

    async def test_stage_timeout(self, sink: InMemoryEventSink) -> None:
        """with_stage(timeout=) running out is TIMEOUT, with the error's class name as error_type."""

        async def hangs(ctx: StageContext) -> StageOutput:
            await asyncio.Event().wait()
            return StageOutput.ok()

        error = await _fail_run(Pipeline().with_stage("hangs", hangs, E, timeout=0.01), sink)
        ended = _ended(sink, "hangs")
        assert (error.results["hangs"].category, ended["category"], ended["error_type"]) == (
            C.TIMEOUT,
            "timeout",
            "StageTimeoutError",
        )
        assert (_run_ended(sink)[1]["category"], error.category) == ("timeout", C.TIMEOUT)

    async def test_cancel_output_and_stopped_sibling(self, sink: InMemoryEventSink) -> None:
        """A stage's cancel and a sibling the run stopped are CANCELLATION, and so is the run."""
        started = asyncio.Event()
        waits = hang_once_started(started)

        async def stop(ctx: StageContext) -> StageOutput:
            await started.wait()
            return StageOutput.cancel("user hung up")

        error = await _fail_run(Pipeline().with_stage("waits", waits, E).with_stage("stop", stop, E), sink)
        assert isinstance(error, PipelineCancelledError)
        assert [(n, r.category, _ended(sink, n)["category"]) for n, r in error.results.items()] == [
            ("stop", C.CANCELLATION, "cancellation"),
            ("waits", C.CANCELLATION, "cancellation"),
        ]
        assert (_run_ended(sink), error.category, error.results.category) == (
            ("pipeline.cancelled", _run_ended(sink)[1]),
            C.CANCELLATION,
            C.CANCELLATION,
        )
        assert _run_ended(sink)[1]["category"] == "cancellation"

    async def test_failed_run_takes_first_failing_stage(self, sink: InMemoryEventSink) -> None:
        """A failed run's category is its first failing stage's, while stopped siblings are cancellations."""
        started = asyncio.Event()
        waits = hang_once_started(started)

        async def times_out(ctx: StageContext) -> StageOutput:
            await started.wait()
            raise SlowQueryError

        error = await _fail_run(
            Pipeline().with_stage("waits", waits, E).with_stage("query", times_out, E), sink
        )
        assert [(n, r.category) for n, r in error.results.items()] == [
            ("query", C.TIMEOUT),
            ("waits", C.CANCELLATION),
        ]
        assert (error.category, error.results.category, _run_ended(sink)[1]["category"]) == (
            C.TIMEOUT,
            C.TIMEOUT,
            "timeout",
        )

    async def test_caller_cancellation(self, sink: InMemoryEventSink) -> None:
        """Cancelling the caller ends the run as a CANCELLATION in its pipeline.cancelled event."""
        started = asyncio.Event()
        waits = hang_once_started(started)

        await cancel_once_started(
            Pipeline().with_stage("waits", waits, E).build().run(make_ctx(sink=sink)), started
        )
        assert (_ended(sink, "waits")["category"], _run_ended(sink)[0], _run_ended(sink)[1]["category"]) == (
            "cancellation",
            "pipeline.cancelled",
            "cancellation",
        )
