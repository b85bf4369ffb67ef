"""Interceptors: onion ordering, isolation of interceptor bugs, BaseInterceptor hooks, run interceptors.

It runs past 500 lines because the ordering, isolation and cancellation of interceptors interact, and their
cases are read together.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from stageflow import (
    CriticalInterceptorError,
    InMemoryEventSink,
    Pipeline,
    PipelineCancelledError,
    PipelineContext,
    PipelineFailedError,
    RetryPolicy,
    RunResult,
    StageBlockedError,
    StageContext,
    StageInfo,
    StageOutput,
    StageResult,
    StageStatus,
)
from stageflow.interceptors import (
    BaseInterceptor,
    CallNext,
    ErrorAction,
    Interceptor,
    InterceptorResult,
    RunNext,
)

from ._stages import Hanging, W
from ._support import VAR, AuthInterceptor, bypassed, cancel_once_started, make_ctx, ok_stage


class Around(Interceptor):
    """Records ``name:before`` and ``name:after`` around each stage."""

    def __init__(self, name: str, priority: int, log: list[str]) -> None:
        self.name, self.priority, self.log = name, priority, log

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        self.log.append(f"{self.name}:before:{stage.name}")
        try:
            return await call_next(ctx)
        finally:
            self.log.append(f"{self.name}:after:{stage.name}")


class Hooks(BaseInterceptor):
    """Records its ``before``/``after`` hooks."""

    def __init__(self, name: str, priority: int, log: list[str]) -> None:
        self.name, self.priority, self.log = name, priority, log

    async def before(self, stage_name: str, ctx: PipelineContext) -> InterceptorResult | None:
        self.log.append(f"{self.name}:before:{stage_name}")
        return None

    async def after(self, stage_name: str, result: StageResult, ctx: PipelineContext) -> None:
        self.log.append(f"{self.name}:after:{stage_name}:{result.status.value}")


def logging_stage(log: list[str]) -> CallNext:
    async def stage(ctx: StageContext) -> StageOutput:
        log.append(f"execute:{ctx.stage_name}")
        return StageOutput.ok(n=1)

    return stage


class TestOrdering:
    async def test_lower_priority_is_outer(self) -> None:
        """Interceptors nest by priority: lower is outer, so it runs first before and last after."""
        log: list[str] = []
        interceptors = [Around("c", 30, log), Around("a", 10, log), Hooks("b", 20, log)]
        graph = Pipeline().with_stage("s", logging_stage(log), W).build(interceptors=interceptors)
        await graph.run(make_ctx())
        assert log == [
            "a:before:s",
            "b:before:s",
            "c:before:s",
            "execute:s",
            "c:after:s",
            "b:after:s:ok",
            "a:after:s",
        ]
        assert [ic.name for ic in graph.interceptors] == ["a", "b", "c"]

    async def test_equal_priorities_keep_their_order(self) -> None:
        """Interceptors of equal priority nest in the order they were given."""
        log: list[str] = []
        interceptors = [Around("first", 1, log), Around("second", 1, log), Around("third", 1, log)]
        graph = Pipeline().with_stage("s", logging_stage(log), W).build(interceptors=interceptors)
        await graph.run(make_ctx())
        assert log == [
            "first:before:s",
            "second:before:s",
            "third:before:s",
            "execute:s",
            "third:after:s",
            "second:after:s",
            "first:after:s",
        ]

    async def test_wraps_every_stage(self) -> None:
        """An interceptor wraps each stage, in dependency order."""
        log: list[str] = []
        graph = (
            Pipeline()
            .with_stage("a", logging_stage(log), W)
            .with_stage("b", logging_stage(log), W, dependencies=("a",))
            .build(interceptors=[Around("i", 1, log)])
        )
        await graph.run(make_ctx())
        assert log == ["i:before:a", "execute:a", "i:after:a", "i:before:b", "execute:b", "i:after:b"]

    def test_pass_through_interceptors_are_not_in_the_chain(self) -> None:
        """An interceptor that overrides nothing adds no layer around stages or runs."""
        runner = ok_stage()
        graph = Pipeline().with_stage("a", runner, W).build(interceptors=[Interceptor(), Interceptor()])
        assert graph._nodes[0].call is runner
        assert graph._run_chain == graph._execute

    def test_stage_only_interceptor_is_not_in_the_run_chain(self) -> None:
        """An interceptor overriding only ``intercept_stage`` is not wrapped around runs."""
        graph = Pipeline().with_stage("a", ok_stage(), W).build(interceptors=[Hooks("h", 1, [])])
        assert graph._run_chain == graph._execute
        assert graph._nodes[0].call is not graph.stages[0].runner


class TestContextVars:
    async def test_stage_interceptor_vars_visible_in_execute(self) -> None:
        """A contextvar an interceptor sets before ``call_next`` is visible in ``execute()``."""
        seen: list[str] = []

        class Setter(Interceptor):
            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                token = VAR.set(f"set for {stage.name}")
                try:
                    return await call_next(ctx)
                finally:
                    VAR.reset(token)

        async def stage(ctx: StageContext) -> StageOutput:
            seen.append(VAR.get())
            return StageOutput.ok()

        graph = Pipeline().with_stage("a", stage, W).build(interceptors=[Setter()])
        await graph.run(make_ctx())
        assert seen == ["set for a"]

    async def test_run_interceptor_wraps_the_run(self, sink: InMemoryEventSink) -> None:
        """``intercept_run`` wraps the whole run, and stage tasks see the contextvars it set."""
        seen: list[str] = []
        log: list[str] = []

        class RunScope(Interceptor):
            async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
                log.append(f"run:before:{run.pipeline_name}")
                token = VAR.set("run scope")
                try:
                    result = await call_next(run)
                finally:
                    VAR.reset(token)
                log.append(f"run:after:{sorted(result)}")
                return result

        async def stage(ctx: StageContext) -> StageOutput:
            seen.append(VAR.get())
            return StageOutput.ok()

        graph = (
            Pipeline(name="p")
            .with_stage("a", stage, W)
            .with_stage("b", stage, W, dependencies=("a",))
            .build(interceptors=[RunScope()])
        )
        await graph.run(make_ctx(sink=sink))
        assert seen == ["run scope", "run scope"]
        assert log == ["run:before:p", "run:after:['a', 'b']"]
        assert VAR.get() == "unset"


class TestBaseInterceptor:
    async def test_seed_auth_interceptor_blocks(self, sink: InMemoryEventSink) -> None:
        """The seed's AuthInterceptor fails an unauthenticated stage with ``StageBlockedError``, unrun."""
        ran: list[str] = []
        graph = (
            Pipeline().with_stage("guarded", logging_stage(ran), W).build(interceptors=[AuthInterceptor()])
        )
        with pytest.raises(
            PipelineFailedError,
            match=r"^stage 'guarded' failed: StageBlockedError: interceptor 'auth' blocked stage 'guarded': "
            r"Not authenticated$",
        ) as info:
            await graph.run(make_ctx(sink=sink))
        error = info.value.error
        assert isinstance(error, StageBlockedError)
        assert (error.stage, error.interceptor, error.reason) == ("guarded", "auth", "Not authenticated")
        assert ran == []
        assert sink.of_type("stage.guarded.failed")[0].data["error_type"] == "StageBlockedError"

    async def test_seed_auth_interceptor_allows(self) -> None:
        """The seed's AuthInterceptor lets the stage run when ``data["authenticated"]`` is set."""
        ran: list[str] = []
        graph = (
            Pipeline().with_stage("guarded", logging_stage(ran), W).build(interceptors=[AuthInterceptor()])
        )
        results = await graph.run(make_ctx(data={"authenticated": True}))
        assert ran == ["execute:guarded"]
        assert results["guarded"].status is StageStatus.OK

    async def test_block_is_not_retried(self) -> None:
        """A blocked stage is not retried by its retry policy."""
        delays: list[float] = []

        async def sleep(delay: float) -> None:
            delays.append(delay)

        graph = (
            Pipeline()
            .with_stage("guarded", ok_stage(), W, retry=RetryPolicy(sleep=sleep))
            .build(interceptors=[AuthInterceptor()])
        )
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        assert info.value.results["guarded"].attempts == 1
        assert delays == []

    @pytest.mark.parametrize(
        "result",
        [{"cached": True}, StageOutput.ok(cached=True)],
        ids=["mapping", "stage-output"],
    )
    async def test_block_with_result(self, result: object) -> None:
        """A block that supplies a result finishes the stage with it, and ``after`` sees it."""
        ran: list[str] = []
        log: list[str] = []

        class Cache(Hooks):
            async def before(self, stage_name: str, ctx: PipelineContext) -> InterceptorResult | None:
                return InterceptorResult(stage_ran=False, result=result)

        graph = Pipeline().with_stage("s", logging_stage(ran), W).build(interceptors=[Cache("cache", 1, log)])
        results = await graph.run(make_ctx())
        assert ran == []
        assert (results["s"].status, dict(results["s"].data)) == (StageStatus.OK, {"cached": True})
        assert log == ["cache:after:s:ok"]

    async def test_on_error_retry(self) -> None:
        """``ErrorAction.RETRY`` reruns the stage under the interceptor's retry policy."""
        attempts: list[int] = []
        errors: list[str] = []
        delays: list[float] = []

        async def sleep(delay: float) -> None:
            delays.append(delay)

        class Retrying(BaseInterceptor):
            retry_policy = RetryPolicy(max_attempts=3, initial_delay=0.2, jitter=0, sleep=sleep)

            async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
                errors.append(str(error))
                return ErrorAction.RETRY

        async def flaky(ctx: StageContext) -> StageOutput:
            attempts.append(len(attempts) + 1)
            if len(attempts) < 3:
                raise ConnectionError(f"down {len(attempts)}")
            return StageOutput.ok(ok=True)

        graph = Pipeline().with_stage("s", flaky, W).build(interceptors=[Retrying()])
        results = await graph.run(make_ctx())
        assert (attempts, errors, delays) == ([1, 2, 3], ["down 1", "down 2"], [0.2, 0.4])
        assert results["s"].status is StageStatus.OK

    async def test_on_error_retry_exhausted(self) -> None:
        """When its retries run out, RetriesExhaustedError (caused by the last error) fails the stage."""

        class Retrying(BaseInterceptor):
            retry_policy = RetryPolicy(max_attempts=2, initial_delay=0, jitter=0)

            async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
                return ErrorAction.RETRY

        calls: list[int] = []

        async def down(ctx: StageContext) -> StageOutput:
            calls.append(1)
            raise ConnectionError(f"down {len(calls)}")

        graph = Pipeline().with_stage("s", down, W).build(interceptors=[Retrying()])
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        assert str(info.value.error) == (
            "stage 's' failed after 2 attempts (last: ConnectionError: down 2); "
            "raise RetryPolicy.max_attempts or fix the cause"
        )
        assert str(info.value.error.__cause__) == "down 2"
        assert info.value.results["s"].attempts == 2
        assert calls == [1, 1]

    async def test_on_error_fallback(self) -> None:
        """``ErrorAction.FALLBACK`` finishes the stage with a skip whose reason names the error."""
        log: list[str] = []

        class Fallback(Hooks):
            async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
                return ErrorAction.FALLBACK

        async def broken(ctx: StageContext) -> StageOutput:
            raise ValueError("bad input")

        graph = (
            Pipeline()
            .with_stage("s", broken, W)
            .with_stage("t", ok_stage(), W, dependencies=("s",))
            .build(interceptors=[Fallback("fb", 1, log)])
        )
        results = await graph.run(make_ctx())
        assert results["s"].status is StageStatus.SKIP
        assert dict(results["s"].data) == {"reason": "fallback after ValueError: bad input"}
        assert results["t"].status is StageStatus.OK
        assert log == ["fb:before:s", "fb:after:s:skip", "fb:before:t", "fb:after:t:ok"]

    async def test_on_error_fail(self) -> None:
        """``ErrorAction.FAIL`` (the default) lets the stage's own error fail the run."""
        log: list[str] = []

        async def broken(ctx: StageContext) -> StageOutput:
            raise ValueError("bad input")

        graph = Pipeline().with_stage("s", broken, W).build(interceptors=[Hooks("h", 1, log)])
        with pytest.raises(PipelineFailedError, match=r"^stage 's' failed: ValueError: bad input$"):
            await graph.run(make_ctx())
        assert log == ["h:before:s"]

    async def test_on_error_not_called_for_cancellation(self) -> None:
        """Cancelling the run does not reach ``on_error``; the interceptor sees ``CancelledError`` pass."""
        started = asyncio.Event()
        log: list[str] = []

        class Watch(BaseInterceptor):
            async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
                log.append("on_error")
                return ErrorAction.FALLBACK

        async def hang(ctx: StageContext) -> StageOutput:
            started.set()
            await asyncio.Event().wait()
            return StageOutput.ok()

        graph = Pipeline().with_stage("s", hang, W).build(interceptors=[Watch()])
        await cancel_once_started(graph.run(make_ctx()), started)
        assert log == []


class TestIsolation:
    async def test_bug_before_call_next_is_bypassed(self, caplog: pytest.LogCaptureFixture) -> None:
        """A fail-open interceptor raising before ``call_next`` is logged and skipped; the rest runs."""
        log: list[str] = []

        class Buggy(Interceptor):
            name = "buggy"
            priority = 1
            fail_open = True

            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                raise ValueError("oops")

        graph = (
            Pipeline()
            .with_stage("s", logging_stage(log), W)
            .build(interceptors=[Buggy(), Around("inner", 2, log)])
        )
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            results = await graph.run(make_ctx())
        assert log == ["inner:before:s", "execute:s", "inner:after:s"]
        assert results["s"].status is StageStatus.OK
        assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
            (
                "stageflow",
                logging.ERROR,
                bypassed("buggy", "ValueError('oops')"),
            )
        ]

    async def test_bug_after_call_next_keeps_the_result(self, caplog: pytest.LogCaptureFixture) -> None:
        """An interceptor raising after ``call_next`` is logged; the stage's result stands, run once."""
        log: list[str] = []

        class Buggy(BaseInterceptor):
            name = "buggy"

            async def after(self, stage_name: str, result: StageResult, ctx: PipelineContext) -> None:
                raise RuntimeError("after bug")

        graph = Pipeline().with_stage("s", logging_stage(log), W).build(interceptors=[Buggy()])
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            results = await graph.run(make_ctx())
        assert log == ["execute:s"]
        assert dict(results["s"].data) == {"n": 1}
        assert [r.getMessage() for r in caplog.records] == [bypassed("buggy", "RuntimeError('after bug')")]

    async def test_stage_error_passes_through_unchanged(self, caplog: pytest.LogCaptureFixture) -> None:
        """A stage's exception passes through interceptors unchanged and is not logged as a bug."""
        log: list[str] = []

        async def broken(ctx: StageContext) -> StageOutput:
            raise KeyError("k")

        graph = (
            Pipeline()
            .with_stage("s", broken, W)
            .build(interceptors=[Around("a", 1, log), Around("b", 2, log)])
        )
        with caplog.at_level(logging.ERROR, logger="stageflow"), pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        assert type(info.value.error) is KeyError
        assert caplog.records == []

    async def test_critical_interceptor_error_fails_the_stage(self, caplog: pytest.LogCaptureFixture) -> None:
        """``CriticalInterceptorError`` from an interceptor fails the stage and is not logged as a bug."""
        ran: list[str] = []

        class Strict(Interceptor):
            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                raise CriticalInterceptorError("policy says no")

        graph = Pipeline().with_stage("s", logging_stage(ran), W).build(interceptors=[Strict()])
        with (
            caplog.at_level(logging.ERROR, logger="stageflow"),
            pytest.raises(
                PipelineFailedError, match=r"^stage 's' failed: CriticalInterceptorError: policy says no$"
            ),
        ):
            await graph.run(make_ctx())
        assert ran == []
        assert caplog.records == []

    async def test_cancelled_error_from_interceptor_propagates(self) -> None:
        """An interceptor raising ``CancelledError`` is not bypassed: the stage and run end cancelled."""

        class Cancels(Interceptor):
            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                raise asyncio.CancelledError

        ran: list[str] = []
        graph = Pipeline().with_stage("s", logging_stage(ran), W).build(interceptors=[Cancels()])
        async with asyncio.timeout(5):
            with pytest.raises(
                PipelineCancelledError, match=r"^stage 's' cancelled the pipeline: stage task was cancelled$"
            ):
                await graph.run(make_ctx())
        assert ran == []

    async def test_run_interceptor_bug_is_bypassed(self, caplog: pytest.LogCaptureFixture) -> None:
        """A fail-open run interceptor that raises before ``call_next`` is logged and the run proceeds."""

        class Buggy(Interceptor):
            name = "buggy-run"
            fail_open = True

            async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
                raise ValueError("run oops")

        graph = Pipeline().with_stage("s", ok_stage(v=1), W).build(interceptors=[Buggy()])
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            results = await graph.run(make_ctx())
        assert dict(results["s"].data) == {"v": 1}
        assert [r.getMessage() for r in caplog.records] == [
            "stageflow: interceptor 'buggy-run' raised in run and was bypassed: ValueError('run oops')"
        ]

    async def test_run_failure_passes_through_run_interceptor(self) -> None:
        """A run's ``PipelineFailedError`` passes through a run interceptor unchanged."""
        seen: list[str] = []

        class Watch(Interceptor):
            async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
                try:
                    return await call_next(run)
                except Exception as exc:
                    seen.append(type(exc).__name__)
                    raise

        async def broken(ctx: StageContext) -> StageOutput:
            raise ValueError("x")

        graph = Pipeline().with_stage("s", broken, W).build(interceptors=[Watch()])
        with pytest.raises(PipelineFailedError):
            await graph.run(make_ctx())
        assert seen == ["PipelineFailedError"]


class BrokenOnCancel(Interceptor):
    """Raises when the stage it wraps is cancelled."""

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        try:
            return await call_next(ctx)
        except asyncio.CancelledError:
            raise RuntimeError("telemetry backend down") from None


class OwnDeadline(Interceptor):
    """Times out the call it wraps itself, after 0.01 s."""

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        async with asyncio.timeout(0.01):
            return await call_next(ctx)


class TestIsolationWithCancellation:
    async def test_interceptor_failing_on_a_cancelled_stage_does_not_run_it_again(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An interceptor that raises while the caller cancels the stage is logged; the stage runs once."""
        body = Hanging()
        graph = Pipeline().with_stage("s", body, W).build([BrokenOnCancel()])
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            task = asyncio.create_task(graph.run(make_ctx()))
            await body.started["s"].wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)  # a stage run again would wait forever: TimeoutError
        assert body.cleaned == ["s"]
        assert [r.getMessage() for r in caplog.records] == [
            bypassed("interceptor", "RuntimeError('telemetry backend down')")
        ]

    async def test_interceptor_ending_its_own_cancellation_fails_the_stage_with_its_error(self) -> None:
        """An interceptor that times out its inner call itself fails the stage with its error, once."""
        body = Hanging()
        graph = Pipeline().with_stage("s", body, W).build([OwnDeadline()])
        with pytest.raises(PipelineFailedError) as info:
            await asyncio.wait_for(graph.run(make_ctx()), 5)
        assert type(info.value.error) is TimeoutError
        assert body.cleaned == ["s"]


class TestNotIsolated:
    async def test_exception_from_a_not_isolated_interceptor_fails_the_stage(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An interceptor with isolated=False is not bypassed: what it raises fails the stage, unlogged."""

        class Strict(Interceptor):
            isolated = False

            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                await call_next(ctx)
                raise LookupError("strict says no")

        graph = Pipeline().with_stage("s", ok_stage(v=1), W).build([Strict()])
        with caplog.at_level(logging.ERROR, logger="stageflow"), pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        assert (type(info.value.error), str(info.value.error)) == (LookupError, "strict says no")
        assert caplog.records == []

    async def test_isolated_and_not_isolated_interceptors_nest(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Around a not-isolated interceptor, an isolated one's bug still falls back to the inner output."""
        order: list[str] = []

        class Inner(Interceptor):
            isolated = False
            priority = 60

            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                order.append("inner before")
                out = await call_next(ctx)
                order.append("inner after")
                return out

        class BuggyOuter(Interceptor):
            priority = 50

            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                await call_next(ctx)
                raise KeyError("bug")

        class RunWide(Interceptor):
            isolated = False

            async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
                token = VAR.set("run-wide")
                try:
                    return await call_next(run)
                finally:
                    VAR.reset(token)

        async def body(ctx: StageContext) -> StageOutput:
            order.append(f"body sees {VAR.get()}")
            return StageOutput.ok(v=1)

        graph = Pipeline().with_stage("s", body, W).build([Inner(), BuggyOuter(), RunWide()])
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            results = await graph.run(make_ctx())
        assert dict(results["s"].data) == {"v": 1}
        assert order == ["inner before", "body sees run-wide", "inner after"]
        assert [r.getMessage() for r in caplog.records] == [bypassed("interceptor", "KeyError('bug')")]

    def test_built_in_interceptors_are_not_isolated(self) -> None:
        """The core's built-in interceptors promise not to raise on their own."""
        from stageflow.interceptors import CircuitBreakerInterceptor, RetryInterceptor, TimeoutInterceptor

        assert [c.isolated for c in (TimeoutInterceptor, CircuitBreakerInterceptor, RetryInterceptor)] == [
            False,
            False,
            False,
        ]
        assert Interceptor.isolated is True
