"""Failure semantics: fail-fast, cancellation, retries and invalid outputs.

It runs past 500 lines because fail-fast, cancellation and retries interact, and their cases are read
together.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest

from stageflow import (
    InMemoryEventSink,
    InvalidStageOutputError,
    Pipeline,
    PipelineCancelledError,
    PipelineFailedError,
    PipelineRunError,
    RetriesExhaustedError,
    RetryNotConfiguredError,
    RetryPolicy,
    SQLiteRunStore,
    StageContext,
    StageFailedError,
    StageGraph,
    StageKind,
    StageOutput,
    StageStatus,
)

from ._stages import Hanging, boom
from ._support import FakeSleep, StageFn, cancel_once_started, make_ctx, ok_stage, run_fails

W = StageKind.WORK
INVALID_OUTPUT = (
    "stage 'a' returned a dict object; execute() must return a StageOutput, e.g. StageOutput.ok(key=value)"
)
"""What ``InvalidStageOutputError`` says of stage ``a`` returning a dict."""


def never_called(log: list[str], name: str) -> StageFn:
    """A stage that records that it ran (tests assert it never does)."""

    async def stage(ctx: StageContext) -> StageOutput:
        log.append(name)
        return StageOutput.ok()

    return stage


async def cancelled_run(
    graph: StageGraph, message: str, sink: InMemoryEventSink | None = None
) -> PipelineCancelledError:
    """Run ``graph`` (reporting to ``sink``), which must end within 5 s with ``PipelineCancelledError``
    reading exactly ``message``: that error."""
    async with asyncio.timeout(5):
        cancelled = await run_fails(graph.run(make_ctx(sink=sink)), PipelineCancelledError)
    assert str(cancelled) == message
    return cancelled


class TestFailFast:
    async def test_raising_stage_fails_the_run(self) -> None:
        """A raising stage fails the run with ``PipelineFailedError`` carrying stage, error and results."""
        ran: list[str] = []
        graph = (
            Pipeline()
            .with_stage("greet", ok_stage(hello=1), W)
            .with_stage("boom", boom, W, dependencies=("greet",))
            .with_stage("after", never_called(ran, "after"), W, dependencies=("boom",))
            .build()
        )
        with pytest.raises(PipelineFailedError, match=r"^stage 'boom' failed: RuntimeError: kaput$") as info:
            await graph.run(make_ctx())
        err = info.value
        assert err.stage == "boom"
        assert isinstance(err.error, RuntimeError) and err.error.args == ("kaput",)
        assert err.__cause__ is err.error
        assert err.failures == {"boom": err.error}
        assert {name: r.status for name, r in err.results.items()} == {
            "greet": StageStatus.OK,
            "boom": StageStatus.FAIL,
        }
        assert err.results["boom"].error is err.error
        assert dict(err.results["greet"].data) == {"hello": 1}
        assert ran == []
        assert isinstance(err, PipelineRunError)

    async def test_fail_output_fails_the_run(self) -> None:
        """``StageOutput.fail(msg)`` fails the run with ``StageFailedError(msg)`` and keeps the output."""

        async def refuse(ctx: StageContext) -> StageOutput:
            return StageOutput.fail("no quota", {"quota": 0})

        with pytest.raises(
            PipelineFailedError, match=r"^stage 'a' failed: StageFailedError: no quota$"
        ) as info:
            await Pipeline().with_stage("a", refuse, W).build().run(make_ctx())
        error = info.value.error
        assert isinstance(error, StageFailedError)
        assert (error.stage, error.message) == ("a", "no quota")
        assert dict(info.value.results["a"].data) == {"quota": 0}

    async def test_fail_without_message(self) -> None:
        """``StageOutput.fail()`` without a message fails with "Unknown error"."""

        async def refuse(ctx: StageContext) -> StageOutput:
            return StageOutput.fail()

        with pytest.raises(PipelineFailedError, match=r"^stage 'a' failed: StageFailedError: Unknown error$"):
            await Pipeline().with_stage("a", refuse, W).build().run(make_ctx())

    async def test_running_sibling_is_cancelled_and_awaited(self) -> None:
        """A failure cancels running siblings and waits for their cleanup before ``run()`` raises."""
        sibling = Hanging(awaits_in_cleanup=True)  # its cleanup itself awaits, and still completes

        async def failing(ctx: StageContext) -> StageOutput:
            await sibling.started["sibling"].wait()
            raise RuntimeError("kaput")

        graph = Pipeline().with_stage("sibling", sibling, W).with_stage("failing", failing, W).build()
        async with asyncio.timeout(5):
            with pytest.raises(PipelineFailedError) as info:
                await graph.run(make_ctx())
        assert sibling.cleaned == ["sibling"]
        assert {n: r.status for n, r in info.value.results.items()} == {
            "failing": StageStatus.FAIL,
            "sibling": StageStatus.CANCEL,
        }

    async def test_two_simultaneous_failures_are_both_reported(self) -> None:
        """Stages failing before the run stopped are all in ``failures``; the first one is ``stage``."""

        async def fail_a(ctx: StageContext) -> StageOutput:
            raise ValueError("a")

        async def fail_b(ctx: StageContext) -> StageOutput:
            raise KeyError("b")

        graph = Pipeline().with_stage("a", fail_a, W).with_stage("b", fail_b, W).build()
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        failures = info.value.failures
        assert sorted(failures) == ["a", "b"]
        assert next(iter(failures)) == info.value.stage
        assert failures[info.value.stage] is info.value.error

    async def test_invalid_output(self) -> None:
        """Returning a non-``StageOutput`` fails with ``InvalidStageOutputError``, never retried."""
        calls: list[int] = []

        async def bad(ctx: StageContext) -> StageOutput:
            calls.append(ctx.attempt)
            return {"x": 1}  # type: ignore[return-value]

        graph = Pipeline().with_stage("a", bad, W, retry=RetryPolicy(sleep=FakeSleep())).build()
        failure = await run_fails(graph.run(make_ctx()))
        assert isinstance(failure.error, InvalidStageOutputError)
        assert str(failure.error) == INVALID_OUTPUT
        assert calls == [1]
        assert failure.results["a"].output is None

    async def test_invalid_output_value_reaches_no_event_or_store(self, tmp_path: Path) -> None:
        """Only the type of a non-``StageOutput`` return reaches events and the store, never its repr."""

        class Secretive:
            def __repr__(self) -> str:
                return "sk-live-0000"

        async def bad(ctx: StageContext) -> StageOutput:
            return {"token": "sk-live-0000", "obj": Secretive()}  # type: ignore[return-value]

        sink, store = InMemoryEventSink(), SQLiteRunStore(tmp_path / "runs.db")
        graph = Pipeline().with_stage("a", bad, W).build(run_store=store)
        ctx = make_ctx(sink=sink)
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(ctx)
        record = await store.get_run(ctx.snapshot.pipeline_run_id)
        store.close()
        assert record is not None
        assert (record.stage("a").error, record.error) == (
            INVALID_OUTPUT,
            f"a: InvalidStageOutputError: {INVALID_OUTPUT}",
        )
        assert str(info.value) == f"stage 'a' failed: InvalidStageOutputError: {INVALID_OUTPUT}"
        assert [e.data["error"] for e in sink.events if "error" in e.data] == [INVALID_OUTPUT, INVALID_OUTPUT]
        assert "sk-live" not in repr([e.data for e in sink.events])


class TestStageCancel:
    async def test_cancel_output_cancels_the_run(self, sink: InMemoryEventSink) -> None:
        """``StageOutput.cancel(reason)`` ends the run with ``PipelineCancelledError`` and partial results."""
        ran: list[str] = []
        sibling = Hanging()

        async def stop(ctx: StageContext) -> StageOutput:
            await sibling.started["sibling"].wait()
            return StageOutput.cancel("user hung up")

        graph = (
            Pipeline()
            .with_stage("sibling", sibling, W)
            .with_stage("stop", stop, W)
            .with_stage("after", never_called(ran, "after"), W, dependencies=("stop",))
            .build()
        )
        cancelled = await cancelled_run(graph, "stage 'stop' cancelled the pipeline: user hung up", sink)
        assert (cancelled.stage, cancelled.reason) == ("stop", "user hung up")
        assert {n: r.status for n, r in cancelled.results.items()} == {
            "stop": StageStatus.CANCEL,
            "sibling": StageStatus.CANCEL,
        }
        assert ran == []
        assert sibling.cleaned == ["sibling"]
        assert sink.of_type("pipeline.cancelled")[0].data["reason"] == "user hung up"
        assert sink.of_type("pipeline.cancelled")[0].data["stage"] == "stop"


class TestExternalCancellation:
    async def test_cancelling_the_caller_cancels_every_stage(self, sink: InMemoryEventSink) -> None:
        """Cancelling the task awaiting ``run()`` cancels and awaits every running stage, leaving no task."""
        hang = Hanging()
        ran: list[str] = []
        graph = (
            Pipeline()
            .with_stage("a", hang, W)
            .with_stage("b", hang, W)
            .with_stage("c", never_called(ran, "c"), W, dependencies=("a", "b"))
            .build()
        )
        before = asyncio.all_tasks()
        task = asyncio.create_task(graph.run(make_ctx(sink=sink)))
        async with asyncio.timeout(5):
            await hang.started["a"].wait()
            await hang.started["b"].wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert sorted(hang.cleaned) == ["a", "b"]
        assert ran == []
        assert asyncio.all_tasks() == before
        assert sink.types[-1] == "pipeline.cancelled"
        assert sorted(sink.types[-3:-1]) == ["stage.a.cancelled", "stage.b.cancelled"]
        assert sink.events[-1].data["reason"] == "cancelled by caller"
        assert {n: s["status"] for n, s in sink.events[-1].data["stages"].items()} == {
            "a": "cancel",
            "b": "cancel",
        }

    async def test_cancelled_again_while_stopping(self) -> None:
        """A second cancellation while stages clean up still waits for them and leaves no task behind."""
        release = asyncio.Event()
        slow_cleanup = Hanging(release)
        graph = Pipeline().with_stage("a", slow_cleanup, W).build()
        before = asyncio.all_tasks()
        task = asyncio.create_task(graph.run(make_ctx()))
        async with asyncio.timeout(5):
            await slow_cleanup.started["a"].wait()
            task.cancel()
            await slow_cleanup.cleaning["a"].wait()
            task.cancel()
            for _ in range(3):
                await asyncio.sleep(0)
            assert not task.done()
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert slow_cleanup.cleaned == ["a"]
        assert asyncio.all_tasks() == before

    async def test_stage_swallowing_cancellation_starts_no_new_stage(self) -> None:
        """A stage that swallows the run's cancellation does not get its dependents started."""
        started = asyncio.Event()
        ran: list[str] = []

        async def stubborn(ctx: StageContext) -> StageOutput:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return StageOutput.ok()  # misbehaves on purpose
            return StageOutput.ok()

        graph = (
            Pipeline()
            .with_stage("a", stubborn, W)
            .with_stage("b", never_called(ran, "b"), W, dependencies=("a",))
            .build()
        )
        before = asyncio.all_tasks()
        await cancel_once_started(graph.run(make_ctx()), started)
        for _ in range(3):
            await asyncio.sleep(0)
        assert ran == []
        assert asyncio.all_tasks() == before

    async def test_stage_raising_cancelled_error_ends_the_run(self) -> None:
        """A stage that raises ``CancelledError`` on its own ends the run as cancelled instead of hanging."""

        async def self_cancel(ctx: StageContext) -> StageOutput:
            raise asyncio.CancelledError

        ran: list[str] = []
        graph = (
            Pipeline()
            .with_stage("a", self_cancel, W)
            .with_stage("b", never_called(ran, "b"), W, dependencies=("a",))
            .build()
        )
        cancelled = await cancelled_run(graph, "stage 'a' cancelled the pipeline: stage task was cancelled")
        assert cancelled.results["a"].status is StageStatus.CANCEL
        assert ran == []


class TestRetry:
    async def test_retry_output_until_success(self) -> None:
        """``StageOutput.retry`` reruns the stage under its policy with exponential, capped delays."""
        sleep = FakeSleep()
        attempts: list[int] = []

        async def flaky(ctx: StageContext) -> StageOutput:
            attempts.append(ctx.attempt)
            if ctx.attempt < 4:
                return StageOutput.retry(f"flaky {ctx.attempt}")
            return StageOutput.ok(done=True)

        policy = RetryPolicy(
            max_attempts=5, initial_delay=0.1, multiplier=2, max_delay=0.3, jitter=0, sleep=sleep
        )
        results = await Pipeline().with_stage("a", flaky, W, retry=policy).build().run(make_ctx())
        assert attempts == [1, 2, 3, 4]
        assert sleep.delays == [0.1, 0.2, 0.3]
        assert (results["a"].status, results["a"].attempts) == (StageStatus.OK, 4)

    async def test_retries_exhausted(self) -> None:
        """A stage still asking to retry after ``max_attempts`` fails with ``RetriesExhaustedError``."""
        sleep = FakeSleep()
        attempts: list[int] = []

        async def flaky(ctx: StageContext) -> StageOutput:
            attempts.append(ctx.attempt)
            return StageOutput.retry(f"flaky {ctx.attempt}")

        policy = RetryPolicy(max_attempts=3, initial_delay=1.0, multiplier=3, jitter=0, sleep=sleep)
        failure = await run_fails(Pipeline().with_stage("a", flaky, W, retry=policy).build().run(make_ctx()))
        error = failure.error
        assert isinstance(error, RetriesExhaustedError)
        assert str(error) == (
            "stage 'a' still asked to retry after 3 attempts (last: 'flaky 3'); "
            "raise RetryPolicy.max_attempts or fix the cause"
        )
        assert (error.stage, error.attempts) == ("a", 3)
        assert attempts == [1, 2, 3]
        assert sleep.delays == [1.0, 3.0]
        assert failure.results["a"].attempts == 3

    async def test_retry_without_policy(self) -> None:
        """``StageOutput.retry`` without a retry policy fails with ``RetryNotConfiguredError``."""

        async def again(ctx: StageContext) -> StageOutput:
            return StageOutput.retry("again")

        with pytest.raises(PipelineFailedError) as info:
            await Pipeline().with_stage("a", again, W).build().run(make_ctx())
        assert isinstance(info.value.error, RetryNotConfiguredError)
        assert str(info.value.error) == (
            "stage 'a' returned StageOutput.retry('again') but has no retry policy; pass "
            "retry=RetryPolicy(...) to with_stage() or add a RetryInterceptor"
        )

    async def test_exceptions_are_retried(self) -> None:
        """An exception accepted by ``retry_on`` is retried; the stage then succeeds."""
        sleep = FakeSleep()

        async def flaky(ctx: StageContext) -> StageOutput:
            if ctx.attempt < 3:
                raise ConnectionError(f"down {ctx.attempt}")
            return StageOutput.ok(attempt=ctx.attempt)

        policy = RetryPolicy(
            max_attempts=3, initial_delay=0.5, jitter=0, retry_on=(ConnectionError,), sleep=sleep
        )
        results = await Pipeline().with_stage("a", flaky, W, retry=policy).build().run(make_ctx())
        assert dict(results["a"].data) == {"attempt": 3}
        assert sleep.delays == [0.5, 1.0]

    async def test_last_exception_fails_after_max_attempts(self) -> None:
        """When every attempt raises, the run fails with RetriesExhaustedError caused by the last error."""
        sleep = FakeSleep()

        async def down(ctx: StageContext) -> StageOutput:
            raise ConnectionError(f"down {ctx.attempt}")

        policy = RetryPolicy(max_attempts=2, initial_delay=0.5, jitter=0, sleep=sleep)
        with pytest.raises(PipelineFailedError) as info:
            await Pipeline().with_stage("a", down, W, retry=policy).build().run(make_ctx())
        assert str(info.value) == (
            "stage 'a' failed: RetriesExhaustedError: stage 'a' failed after 2 attempts "
            "(last: ConnectionError: down 2); raise RetryPolicy.max_attempts or fix the cause"
        )
        assert isinstance(info.value.error, RetriesExhaustedError)
        assert str(info.value.error.__cause__) == "down 2"
        assert info.value.results["a"].attempts == 2
        assert sleep.delays == [0.5]

    async def test_other_exceptions_are_not_retried(self) -> None:
        """An exception ``retry_on`` does not accept fails the stage at once."""
        sleep = FakeSleep()
        attempts: list[int] = []

        async def broken(ctx: StageContext) -> StageOutput:
            attempts.append(ctx.attempt)
            raise ValueError("bug")

        policy = RetryPolicy(retry_on=(ConnectionError,), sleep=sleep)
        with pytest.raises(PipelineFailedError, match=r"^stage 'a' failed: ValueError: bug$"):
            await Pipeline().with_stage("a", broken, W, retry=policy).build().run(make_ctx())
        assert (attempts, sleep.delays) == ([1], [])

    async def test_retry_on_predicate(self) -> None:
        """A ``retry_on`` predicate decides which exceptions are retried."""
        sleep = FakeSleep()
        attempts: list[int] = []

        async def stage(ctx: StageContext) -> StageOutput:
            attempts.append(ctx.attempt)
            raise RuntimeError("transient" if ctx.attempt == 1 else "permanent")

        policy = RetryPolicy(max_attempts=5, jitter=0, retry_on=lambda e: "transient" in str(e), sleep=sleep)
        with pytest.raises(PipelineFailedError, match=r"^stage 'a' failed: RuntimeError: permanent$"):
            await Pipeline().with_stage("a", stage, W, retry=policy).build().run(make_ctx())
        assert attempts == [1, 2]
        assert sleep.delays == [0.1]

    async def test_raising_predicate_fails_the_stage(self) -> None:
        """A ``retry_on`` predicate that raises fails the stage with that error instead of hanging the run."""

        def predicate(error: BaseException) -> bool:
            raise LookupError("predicate bug")

        policy = RetryPolicy(retry_on=predicate, sleep=FakeSleep())
        graph = Pipeline().with_stage("a", boom, W, retry=policy).build()
        async with asyncio.timeout(5):
            with pytest.raises(PipelineFailedError, match=r"^stage 'a' failed: LookupError: predicate bug$"):
                await graph.run(make_ctx())

    async def test_cancelled_error_is_not_retried(self) -> None:
        """Cancelling a run during a retry backoff cancels the stage instead of retrying it."""
        in_backoff = asyncio.Event()

        async def hang_sleep(delay: float) -> None:
            in_backoff.set()
            await asyncio.Event().wait()

        async def flaky(ctx: StageContext) -> StageOutput:
            return StageOutput.retry("again")

        graph = Pipeline().with_stage("a", flaky, W, retry=RetryPolicy(sleep=hang_sleep)).build()
        await cancel_once_started(graph.run(make_ctx()), in_backoff)


DELAYS = {1: 0.1, 2: 0.2, 3: 0.4, 4: 0.5, 10: 0.5}
"""The delay before each retry attempt, starting at 0.1 s, doubling, capped at 0.5 s, without jitter."""


class TestRetryPolicy:
    @pytest.mark.parametrize("attempt", DELAYS, ids=str)
    def test_delay_without_jitter(self, attempt: int) -> None:
        """Delays grow by ``multiplier`` per attempt and are capped at ``max_delay``."""
        policy = RetryPolicy(initial_delay=0.1, multiplier=2, max_delay=0.5, jitter=0)
        assert policy.delay(attempt) == pytest.approx(DELAYS[attempt])

    @pytest.mark.parametrize(
        ("draw", "expected"), [(0.0, 0.75), (0.5, 1.0), (1.0, 1.25)], ids=["low", "mid", "high"]
    )
    def test_jitter_bounds(self, draw: float, expected: float) -> None:
        """Jitter scales the delay by a factor in ``[1 - jitter, 1 + jitter]``."""
        policy = RetryPolicy(initial_delay=1.0, jitter=0.25, random=lambda: draw)
        assert policy.delay(1) == pytest.approx(expected)

    def test_invalid_policy(self) -> None:
        """An invalid policy lists every problem in one ``ValueError``."""
        with pytest.raises(
            ValueError,
            match=re.escape(
                "invalid RetryPolicy: max_attempts=0 (use an int >= 1); "
                "multiplier=0.5 (use a multiplier >= 1); jitter=2 (use a fraction in [0, 1])"
            ),
        ):
            RetryPolicy(max_attempts=0, multiplier=0.5, jitter=2)

    @pytest.mark.parametrize(
        ("fields", "error", "message"),
        [
            (
                {"initial_delay": math.nan},
                ValueError,
                "initial_delay=nan (not a finite number; use a delay >= 0)",
            ),
            ({"max_delay": math.inf}, ValueError, "max_delay=inf (not a finite number; use a delay >= 0)"),
            (
                {"multiplier": -math.inf, "jitter": math.nan},
                ValueError,
                "multiplier=-inf (not a finite number; use a multiplier >= 1); "
                "jitter=nan (not a finite number; use a fraction in [0, 1])",
            ),
            ({"initial_delay": "1"}, TypeError, "initial_delay='1' (a str, not a number; use a delay >= 0)"),
            (
                {"max_attempts": 2.0, "jitter": None},
                TypeError,
                "max_attempts=2.0 (a float, not an int; use an int >= 1); "
                "jitter=None (a NoneType, not a number; use a fraction in [0, 1])",
            ),
            (
                {"multiplier": True},
                TypeError,
                "multiplier=True (a bool, not a number; use a multiplier >= 1)",
            ),
            (
                {"initial_delay": "1", "max_delay": -1},
                TypeError,
                "initial_delay='1' (a str, not a number; use a delay >= 0); max_delay=-1 (use a delay >= 0)",
            ),
            ({"sleep": 3}, TypeError, "sleep=3 (use a coroutine function taking seconds)"),
            ({"random": 0.5}, TypeError, "random=0.5 (use a function returning [0, 1))"),
        ],
        ids=[
            "nan",
            "inf",
            "several-non-finite",
            "str",
            "float-attempts-and-none",
            "bool",
            "type-and-range",
            "sleep",
            "random",
        ],
    )
    def test_every_field_is_checked(
        self, fields: dict[str, Any], error: type[Exception], message: str
    ) -> None:
        """Each field is checked for type and finite range; the error names every bad field and value."""
        with pytest.raises(error) as info:
            RetryPolicy(**fields)
        assert (type(info.value), str(info.value)) == (error, f"invalid RetryPolicy: {message}")


class TestBookkeepingFailure:
    async def test_failure_while_finishing_a_stage_fails_the_run_instead_of_hanging(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An exception raised while the executor records a stage's output fails the run; it never hangs."""
        from collections.abc import Iterator, Mapping

        from stageflow import InMemoryEventSink, Pipeline, PipelineFailedError, StageKind, StageOutput
        from stageflow import StageStatus as Status

        class Hostile(Mapping[str, object]):
            def __getitem__(self, key: str) -> object:
                raise LookupError("hostile mapping")

            def __iter__(self) -> Iterator[str]:
                return iter(())

            def __len__(self) -> int:
                return 0

            def get(self, key: str, default: object = None) -> object:
                raise LookupError("hostile mapping")

        async def odd(ctx: StageContext) -> StageOutput:
            return StageOutput(Status.SKIP, Hostile())

        graph = Pipeline().with_stage("odd", odd, StageKind.WORK).build()
        with caplog.at_level(logging.ERROR, logger="stageflow"), pytest.raises(PipelineFailedError) as info:
            await asyncio.wait_for(graph.run(make_ctx(sink=InMemoryEventSink())), 5)
        assert (info.value.stage, type(info.value.error), str(info.value.error)) == (
            "odd",
            LookupError,
            "hostile mapping",
        )
        assert [r.getMessage() for r in caplog.records] == [
            "stageflow: settling stage 'odd' failed; the run fails: LookupError('hostile mapping')"
        ]

    async def test_unprintable_exception_still_fails_the_run_cleanly(self) -> None:
        """A stage error whose __str__ raises still gives PipelineFailedError, with a stand-in message."""
        from stageflow import InMemoryEventSink, Pipeline, PipelineFailedError, StageKind

        class Unprintable(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no str for you")

        async def bad(ctx: StageContext) -> StageOutput:
            raise Unprintable

        sink = InMemoryEventSink()
        graph = Pipeline().with_stage("bad", bad, StageKind.WORK).build()
        with pytest.raises(PipelineFailedError) as info:
            await asyncio.wait_for(graph.run(make_ctx(sink=sink)), 5)
        assert str(info.value) == "stage 'bad' failed: Unprintable: <Unprintable whose str() failed>"
        assert [e.data["error"] for e in sink.of_type("pipeline.failed")] == [
            "<Unprintable whose str() failed>"
        ]


class TestCancelledDuringCleanup:
    async def test_caller_cancelling_while_a_failure_is_cleaned_up_is_reported_and_recorded(self) -> None:
        """Cancelling the caller while fail-fast waits for a slow sibling still emits and records the end."""
        from stageflow import InMemoryEventSink, InMemoryRunStore, Pipeline, StageKind

        release = asyncio.Event()
        slow = Hanging(release)  # a slow cleanup that outlives the first cancellation

        async def boom(ctx: StageContext) -> StageOutput:
            await slow.started["slow"].wait()
            raise RuntimeError("kaput")

        sink, store = InMemoryEventSink(), InMemoryRunStore()
        graph = (
            Pipeline().with_stage("slow", slow, StageKind.WORK).with_stage("boom", boom, StageKind.WORK)
        ).build(run_store=store)
        ctx = make_ctx(sink=sink)
        task = asyncio.create_task(graph.run(ctx))
        await slow.cleaning["slow"].wait()
        task.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sink.types[-3:] == ["stage.boom.failed", "stage.slow.cancelled", "pipeline.cancelled"]
        record = await store.get_run(ctx.snapshot.pipeline_run_id)
        assert record is not None and (record.status, record.error) == ("cancelled", "cancelled by caller")
