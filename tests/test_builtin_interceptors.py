"""The built-in core interceptors: timeouts, circuit breakers, retries and the default stack.

It runs past 500 lines because the three interceptors are tested alone and stacked, in one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from stageflow import (
    CircuitOpenError,
    DictConfigProvider,
    InMemoryEventSink,
    Pipeline,
    PipelineContext,
    PipelineFailedError,
    RetriesExhaustedError,
    RetryPolicy,
    StageContext,
    StageGraph,
    StageOutput,
    StageResult,
    StageStatus,
    StageTimeoutError,
)
from stageflow.interceptors import (
    BaseInterceptor,
    CircuitBreakerInterceptor,
    CircuitState,
    CircuitStateChange,
    Interceptor,
    RetryAttempt,
    RetryInterceptor,
    TimeoutInterceptor,
    get_default_interceptors,
)

from ._stages import W, hang, ok
from ._support import FakeClock, FakeSleep, StageFn, cancel_once_started, make_ctx, output_stage, run_fails


async def run_error(graph_run: Awaitable[object]) -> BaseException:
    return (await run_fails(graph_run)).error


async def retried_error(body: StageFn, policy: RetryPolicy) -> BaseException:
    """The error stage ``s`` (``body``) fails with under ``RetryInterceptor(policy)``."""
    return await run_error(
        Pipeline().with_stage("s", body, W).build([RetryInterceptor(policy)]).run(make_ctx())
    )


class TestTimeoutInterceptor:
    async def test_default_timeout_fails_the_stage_with_stage_timeout_error(self) -> None:
        """A stage running past the default timeout fails with StageTimeoutError after being cancelled."""
        cancelled: list[bool] = []

        async def body(ctx: StageContext) -> StageOutput:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            raise AssertionError("unreachable")

        graph = Pipeline().with_stage("hang", body, W).build([TimeoutInterceptor(0.01)])
        error = await run_error(graph.run(make_ctx()))
        assert type(error) is StageTimeoutError
        assert str(error) == "stage 'hang' timed out after 0.01 s"
        assert (error.stage, error.timeout) == ("hang", 0.01)
        assert isinstance(error, TimeoutError)
        assert cancelled == [True]

    async def test_stage_within_its_timeout_completes(self) -> None:
        """A stage that finishes before its timeout is unaffected."""
        graph = Pipeline().with_stage("ok", ok, W).build([TimeoutInterceptor(5.0)])
        results = await graph.run(make_ctx())
        assert dict(results["ok"].data) == {"done": True}

    async def test_per_stage_override_by_name(self) -> None:
        """A per-stage timeout overrides the default, and None disables it for that stage."""
        interceptor = TimeoutInterceptor(5.0, per_stage={"hang": 0.01, "free": None})
        graph = (
            Pipeline().with_stage("free", ok, W).with_stage("hang", hang, W, dependencies=("free",))
        ).build([interceptor])
        error = await run_error(graph.run(make_ctx()))
        assert str(error) == "stage 'hang' timed out after 0.01 s"
        assert interceptor.timeout_for(graph.stage("free")) is None

    async def test_timeout_error_raised_by_the_stage_is_not_a_stage_timeout(self) -> None:
        """A TimeoutError the stage raises itself passes through unchanged."""

        async def body(ctx: StageContext) -> StageOutput:
            raise TimeoutError("upstream said so")

        graph = Pipeline().with_stage("s", body, W).build([TimeoutInterceptor(5.0)])
        error = await run_error(graph.run(make_ctx()))
        assert type(error) is TimeoutError
        assert str(error) == "upstream said so"

    def test_resolution_order(self) -> None:
        """Name override beats spec config, which beats the runner attribute, the provider and the default."""

        class WithAttr:
            timeout = 3.0

            async def execute(self, ctx: StageContext) -> StageOutput:
                return StageOutput.ok()

        graph = (
            Pipeline()
            .with_stage("named", WithAttr, W, config=None)
            .with_stage("configured", ok, W, config={"timeout": 2.0})
            .with_stage("attribute", WithAttr, W)
            .with_stage("provided", ok, W)
            .with_stage("plain", ok, W)
        ).build()
        interceptor = TimeoutInterceptor(
            9.0, per_stage={"named": 1.0}, config=DictConfigProvider({"timeout.provided": "4.5"})
        )
        got = {s.name: interceptor.timeout_for(s) for s in graph.stages}
        assert got == {"named": 1.0, "configured": 2.0, "attribute": 3.0, "provided": 4.5, "plain": 9.0}

    async def test_one_interceptor_serves_graphs_that_configure_a_stage_differently(self) -> None:
        """Timeouts are resolved per built stage, so equal pipeline and stage names do not share one."""
        interceptor = TimeoutInterceptor(5.0)
        relaxed = Pipeline().with_stage("x", ok, W, config={"timeout": 10.0}).build([interceptor])
        strict = Pipeline().with_stage("x", hang, W, config={"timeout": 0.01}).build([interceptor])
        assert dict((await relaxed.run(make_ctx()))["x"].data) == {"done": True}
        error = await run_error(strict.run(make_ctx()))
        assert str(error) == "stage 'x' timed out after 0.01 s"
        assert [interceptor.timeout_for(g.stage("x")) for g in (relaxed, strict)] == [10.0, 0.01]

    def test_default_from_config_provider(self) -> None:
        """timeout.default from the provider is the default when none is passed."""
        interceptor = TimeoutInterceptor(config=DictConfigProvider({"timeout.default": 7}))
        assert interceptor.default == 7.0
        assert TimeoutInterceptor().default == 30.0
        assert TimeoutInterceptor(None).default is None

    @pytest.mark.parametrize("bad", [0, -1.0, "5", float("nan")], ids=["zero", "negative", "str", "nan"])
    def test_invalid_timeout_is_rejected(self, bad: object) -> None:
        """A timeout that is not a positive number is rejected with the fix in the message."""
        with pytest.raises(ValueError, match=r"is not a valid timeout; use a number of seconds > 0"):
            TimeoutInterceptor(bad)  # type: ignore[arg-type]


def breaker_graph(
    breaker: CircuitBreakerInterceptor, outcomes: list[str], calls: list[int]
) -> Callable[[], Awaitable[StageStatus | BaseException]]:
    """A one-stage graph whose stage pops its outcome ("ok", "fail", "raise") from ``outcomes``."""

    async def body(ctx: StageContext) -> StageOutput:
        calls.append(1)
        outcome = outcomes.pop(0)
        if outcome == "raise":
            raise ConnectionError("down")
        if outcome == "fail":
            return StageOutput.fail("bad answer")
        return StageOutput.ok()

    graph = Pipeline(name="p").with_stage("svc", body, W).build([breaker])

    async def once() -> StageStatus | BaseException:
        try:
            results = await graph.run(make_ctx())
        except PipelineFailedError as exc:
            return exc.error
        return results["svc"].status

    return once


async def due_for_a_trial(body: StageFn, mode: list[str]) -> tuple[CircuitBreakerInterceptor, StageGraph]:
    """Stage ``svc`` running ``body`` behind a breaker (threshold 1, recovery 5 s): a first run, with ``mode``
    ``["raise"]``, opens it; the recovery timeout then passes and ``mode`` becomes ``["block"]``, so the
    next run is the trial call."""
    clock = FakeClock()
    breaker = CircuitBreakerInterceptor(failure_threshold=1, recovery_timeout=5, clock=clock)
    graph = Pipeline(name="p").with_stage("svc", body, W).build([breaker])
    mode[:] = ["raise"]
    with pytest.raises(PipelineFailedError):
        await graph.run(make_ctx())
    clock.now += 5
    mode[:] = ["block"]
    return breaker, graph


class TestCircuitBreakerInterceptor:
    async def test_opens_after_threshold_consecutive_failures(self) -> None:
        """Three consecutive failures (raised or returned) open the breaker, and it reports the change."""
        clock = FakeClock()
        changes: list[CircuitStateChange] = []
        breaker = CircuitBreakerInterceptor(failure_threshold=3, recovery_timeout=10, clock=clock)
        breaker.add_listener(changes.append)
        calls: list[int] = []
        once = breaker_graph(breaker, ["raise", "fail", "raise"], calls)
        for _ in range(2):
            await once()
            assert breaker.state("svc", "p") is CircuitState.CLOSED
        await once()
        assert breaker.state("svc", "p") is CircuitState.OPEN
        assert changes == [CircuitStateChange("svc", "p", CircuitState.CLOSED, CircuitState.OPEN, 1000.0)]
        assert breaker.states() == {("p", "svc"): CircuitState.OPEN}

    async def test_open_breaker_refuses_without_running_the_stage(self) -> None:
        """While open, calls fail fast with CircuitOpenError naming the time left."""
        clock = FakeClock()
        breaker = CircuitBreakerInterceptor(failure_threshold=1, recovery_timeout=10, clock=clock)
        calls: list[int] = []
        once = breaker_graph(breaker, ["raise"], calls)
        await once()
        clock.now += 4
        error = await once()
        assert type(error) is CircuitOpenError
        assert str(error) == (
            "circuit breaker for stage 'svc' is open; the next trial call is allowed in 6 s"
        )
        assert len(calls) == 1

    async def test_trial_success_closes(self) -> None:
        """After the recovery timeout one trial call runs (half-open) and its success closes the breaker."""
        clock = FakeClock()
        changes: list[tuple[CircuitState, CircuitState, float]] = []
        breaker = CircuitBreakerInterceptor(
            failure_threshold=1,
            recovery_timeout=10,
            clock=clock,
            listeners=[lambda c: changes.append((c.old, c.new, c.at))],
        )
        calls: list[int] = []
        once = breaker_graph(breaker, ["raise", "ok"], calls)
        await once()
        clock.now += 10
        assert await once() is StageStatus.OK
        assert breaker.state("svc", "p") is CircuitState.CLOSED
        assert changes == [
            (CircuitState.CLOSED, CircuitState.OPEN, 1000.0),
            (CircuitState.OPEN, CircuitState.HALF_OPEN, 1010.0),
            (CircuitState.HALF_OPEN, CircuitState.CLOSED, 1010.0),
        ]

    async def test_trial_failure_reopens(self) -> None:
        """A failed trial call opens the breaker again for a full recovery timeout."""
        clock = FakeClock()
        breaker = CircuitBreakerInterceptor(failure_threshold=1, recovery_timeout=10, clock=clock)
        calls: list[int] = []
        once = breaker_graph(breaker, ["raise", "fail"], calls)
        await once()
        clock.now += 11
        error = await once()
        assert isinstance(error, Exception) and str(error) == "bad answer"
        assert breaker.state("svc", "p") is CircuitState.OPEN
        clock.now += 9
        refused = await once()
        assert type(refused) is CircuitOpenError
        assert refused.retry_in == pytest.approx(1.0)
        assert len(calls) == 2

    async def test_retry_output_counts_as_a_failure(self) -> None:
        """A stage asking for a retry failed this call: it counts toward opening and fails a trial."""
        clock = FakeClock()
        breaker = CircuitBreakerInterceptor(failure_threshold=2, recovery_timeout=5, clock=clock)

        async def body(ctx: StageContext) -> StageOutput:
            return StageOutput.retry("busy")

        graph = Pipeline(name="p").with_stage("svc", body, W).build([breaker])
        for _ in range(2):
            with pytest.raises(PipelineFailedError):
                await graph.run(make_ctx())
        assert breaker.state("svc", "p") is CircuitState.OPEN
        clock.now += 5
        with pytest.raises(PipelineFailedError):
            await graph.run(make_ctx())
        assert breaker.state("svc", "p") is CircuitState.OPEN

    async def test_exactly_one_trial_call(self) -> None:
        """While the trial call runs, a concurrent call is refused; the trial's success then closes it."""
        trial_started, release = asyncio.Event(), asyncio.Event()
        mode: list[str] = []

        async def body(ctx: StageContext) -> StageOutput:
            if mode[0] == "raise":
                raise ConnectionError("down")
            trial_started.set()
            await release.wait()
            return StageOutput.ok()

        breaker, graph = await due_for_a_trial(body, mode)
        trial = asyncio.create_task(graph.run(make_ctx()))
        async with asyncio.timeout(5):
            await trial_started.wait()
        assert breaker.state("svc", "p") is CircuitState.HALF_OPEN
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        assert type(info.value.error) is CircuitOpenError
        release.set()
        results = await trial
        assert results["svc"].status is StageStatus.OK
        assert breaker.state("svc", "p") is CircuitState.CLOSED

    async def test_cancelled_trial_leaves_half_open_for_the_next_call(self) -> None:
        """A cancelled trial call does not decide the state; the next call becomes the trial."""
        started = asyncio.Event()
        mode: list[str] = []

        async def body(ctx: StageContext) -> StageOutput:
            if mode[0] == "raise":
                raise ConnectionError("down")
            if mode[0] == "block":
                started.set()
                await asyncio.Event().wait()
            return StageOutput.ok()

        breaker, graph = await due_for_a_trial(body, mode)
        await cancel_once_started(graph.run(make_ctx()), started)
        assert breaker.state("svc", "p") is CircuitState.HALF_OPEN
        mode[0] = "ok"
        results = await graph.run(make_ctx())
        assert results["svc"].status is StageStatus.OK
        assert breaker.state("svc", "p") is CircuitState.CLOSED

    async def test_success_resets_the_failure_count(self) -> None:
        """Only consecutive failures count: a success in between starts the count again."""
        breaker = CircuitBreakerInterceptor(failure_threshold=3, clock=FakeClock())
        calls: list[int] = []
        once = breaker_graph(breaker, ["raise", "raise", "ok", "raise", "raise"], calls)
        for _ in range(5):
            await once()
        assert breaker.state("svc", "p") is CircuitState.CLOSED

    async def test_failing_listener_is_logged_and_ignored(self, caplog: pytest.LogCaptureFixture) -> None:
        """A listener that raises does not affect the stage or the other listeners."""
        seen: list[CircuitState] = []

        def broken(change: CircuitStateChange) -> None:
            raise RuntimeError("listener bug")

        breaker = CircuitBreakerInterceptor(
            failure_threshold=1, clock=FakeClock(), listeners=[broken, lambda c: seen.append(c.new)]
        )
        once = breaker_graph(breaker, ["raise"], [])
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            error = await once()
        assert type(error) is ConnectionError
        assert seen == [CircuitState.OPEN]
        assert [r.getMessage() for r in caplog.records] == [
            f"stageflow: circuit breaker listener {broken!r} failed: RuntimeError('listener bug')"
        ]

    def test_settings_from_config_provider(self) -> None:
        """Threshold and recovery timeout come from the provider when not passed."""
        config = DictConfigProvider(
            {"circuit_breaker.failure_threshold": "7", "circuit_breaker.recovery_timeout": "2.5"}
        )
        breaker = CircuitBreakerInterceptor(config=config)
        assert (breaker.failure_threshold, breaker.recovery_timeout) == (7, 2.5)
        assert (
            CircuitBreakerInterceptor().failure_threshold,
            CircuitBreakerInterceptor().recovery_timeout,
        ) == (
            5,
            30.0,
        )

    def test_invalid_threshold_is_rejected(self) -> None:
        """A threshold below 1 is rejected with the fix in the message."""
        with pytest.raises(ValueError, match=r"failure_threshold=0 is invalid; use an int >= 1"):
            CircuitBreakerInterceptor(failure_threshold=0)


class TestRetryInterceptor:
    async def test_retries_exceptions_with_exponential_backoff(self) -> None:
        """Failed attempts are retried after 0.1 s, then 0.2 s, and each attempt is observable."""
        sleep = FakeSleep()
        attempts_seen: list[int] = []
        reported: list[RetryAttempt] = []

        async def body(ctx: StageContext) -> StageOutput:
            attempts_seen.append(ctx.attempt)
            if ctx.attempt < 3:
                raise ConnectionError(f"try {ctx.attempt}")
            return StageOutput.ok(attempt=ctx.attempt)

        policy = RetryPolicy(max_attempts=3, initial_delay=0.1, multiplier=2, jitter=0, sleep=sleep)
        sink = InMemoryEventSink()
        graph = (
            Pipeline(name="p")
            .with_stage("s", body, W)
            .build([RetryInterceptor(policy, listeners=[reported.append])])
        )
        results = await graph.run(make_ctx(sink=sink))
        assert attempts_seen == [1, 2, 3]
        assert sleep.delays == [0.1, 0.2]
        assert dict(results["s"].data) == {"attempt": 3}
        assert results["s"].attempts == 3
        assert reported == [
            RetryAttempt("s", "p", 1, "try 1", 0.1, "ConnectionError"),
            RetryAttempt("s", "p", 2, "try 2", 0.2, "ConnectionError"),
        ]
        assert sink.types == [
            "pipeline.created",
            "pipeline.started",
            "stage.s.started",
            "stage.s.retrying",
            "stage.s.retrying",
            "stage.s.completed",
            "pipeline.completed",
        ]
        assert [e.data["attempt"] for e in sink.of_type("stage.s.retrying")] == [1, 2]

    async def test_last_exception_propagates_when_attempts_run_out(self) -> None:
        """After max_attempts failures the stage fails with RetriesExhaustedError caused by the last one."""
        sleep = FakeSleep()

        async def body(ctx: StageContext) -> StageOutput:
            raise ConnectionError(f"try {ctx.attempt}")

        policy = RetryPolicy(max_attempts=2, initial_delay=1, jitter=0, sleep=sleep)
        error = await retried_error(body, policy)
        assert type(error) is RetriesExhaustedError
        assert str(error) == (
            "stage 's' failed after 2 attempts (last: ConnectionError: try 2); "
            "raise RetryPolicy.max_attempts or fix the cause"
        )
        assert (type(error.__cause__), str(error.__cause__)) == (ConnectionError, "try 2")
        assert error.last_error is error.__cause__
        assert error.attempts == 2
        assert sleep.delays == [1.0]

    async def test_retry_output_exhausted(self) -> None:
        """A stage that keeps returning StageOutput.retry fails with RetriesExhaustedError."""
        policy = RetryPolicy(max_attempts=3, initial_delay=0.5, multiplier=3, jitter=0, sleep=FakeSleep())
        error = await retried_error(output_stage(StageOutput.retry, "rate limited"), policy)
        assert type(error) is RetriesExhaustedError
        assert str(error) == (
            "stage 's' still asked to retry after 3 attempts (last: 'rate limited'); "
            "raise RetryPolicy.max_attempts or fix the cause"
        )
        assert policy.sleep.delays == [0.5, 1.5]  # type: ignore[attr-defined]

    async def test_retry_on_limits_what_is_retried(self) -> None:
        """An exception retry_on does not accept is not retried."""
        calls: list[int] = []

        async def body(ctx: StageContext) -> StageOutput:
            calls.append(ctx.attempt)
            raise ValueError("bad input")

        policy = RetryPolicy(retry_on=(ConnectionError,), sleep=FakeSleep())
        error = await retried_error(body, policy)
        assert type(error) is ValueError
        assert calls == [1]

    def test_jitter_spreads_the_delay(self) -> None:
        """Jitter scales the delay by a factor in [1 - jitter, 1 + jitter]."""
        low = RetryPolicy(initial_delay=1, jitter=0.5, random=lambda: 0.0)
        high = RetryPolicy(initial_delay=1, jitter=0.5, random=lambda: 1.0)
        capped = RetryPolicy(initial_delay=1, multiplier=10, max_delay=5, jitter=0)
        assert (low.delay(1), high.delay(1), capped.delay(3)) == (0.5, 1.5, 5.0)

    def test_policy_from_config_provider(self) -> None:
        """retry.* settings come from the provider."""
        config = DictConfigProvider(
            {
                "retry.max_attempts": "5",
                "retry.initial_delay": "0.25",
                "retry.multiplier": 3,
                "retry.max_delay": "2",
                "retry.jitter": "0",
            }
        )
        policy = RetryInterceptor(config=config).policy
        assert (
            policy.max_attempts,
            policy.initial_delay,
            policy.multiplier,
            policy.max_delay,
            policy.jitter,
        ) == (
            5,
            0.25,
            3.0,
            2.0,
            0.0,
        )

    def test_invalid_policy_names_every_problem(self) -> None:
        """A RetryPolicy with bad values lists each bad value and its fix."""
        with pytest.raises(ValueError) as info:
            RetryPolicy(max_attempts=0, jitter=2)
        assert str(info.value) == (
            "invalid RetryPolicy: max_attempts=0 (use an int >= 1); jitter=2 (use a fraction in [0, 1])"
        )


class TestStackedInterceptors:
    async def test_retry_breaker_timeout_and_user_interceptor_together(self) -> None:
        """Each retry attempt passes the breaker and the timeout; the open breaker's refusal is final."""
        log: list[str] = []
        clock = FakeClock()

        class Audit(BaseInterceptor):
            name = "audit"
            priority = 5

            async def before(self, stage_name: str, ctx: PipelineContext) -> None:
                log.append(f"before {stage_name}")

            async def after(self, stage_name: str, result: StageResult, ctx: PipelineContext) -> None:
                log.append(f"after {stage_name} {result.status.value}")

        async def body(ctx: StageContext) -> StageOutput:
            log.append(f"attempt {ctx.attempt}")
            raise ConnectionError("down")

        breaker = CircuitBreakerInterceptor(failure_threshold=2, recovery_timeout=60, clock=clock)
        retry = RetryInterceptor(RetryPolicy(max_attempts=5, initial_delay=0, jitter=0, sleep=FakeSleep()))
        graph = (
            Pipeline(name="p")
            .with_stage("svc", body, W)
            .build([TimeoutInterceptor(5.0), breaker, retry, Audit()])
        )
        assert [i.name for i in graph.interceptors] == ["audit", "retry", "circuit_breaker", "timeout"]
        error = await run_error(graph.run(make_ctx()))
        assert type(error) is CircuitOpenError
        assert log == ["before svc", "attempt 1", "attempt 2"]
        assert breaker.state("svc", "p") is CircuitState.OPEN

    async def test_stack_passes_a_healthy_stage_through(self) -> None:
        """With every built-in stacked, a healthy stage's output arrives unchanged."""
        graph = Pipeline().with_stage("ok", ok, W).build([*get_default_interceptors(), RetryInterceptor()])
        results = await graph.run(make_ctx())
        assert dict(results["ok"].data) == {"done": True}
        assert results["ok"].status is StageStatus.OK


class TestDefaultInterceptors:
    def test_default_stack(self) -> None:
        """The default stack is a circuit breaker then a 30 s timeout."""
        stack = get_default_interceptors()
        assert [type(i) for i in stack] == [CircuitBreakerInterceptor, TimeoutInterceptor]
        assert [i.priority for i in stack] == [40, 50]
        assert isinstance(stack[1], TimeoutInterceptor) and stack[1].default == 30.0

    def test_default_stack_reads_config(self) -> None:
        """The default stack takes its settings from a provider."""
        config = DictConfigProvider({"timeout.default": "2", "circuit_breaker.failure_threshold": "9"})
        breaker, timeout = get_default_interceptors(config=config)
        assert isinstance(breaker, CircuitBreakerInterceptor) and breaker.failure_threshold == 9
        assert isinstance(timeout, TimeoutInterceptor) and timeout.default == 2.0

    def test_all_are_interceptors(self) -> None:
        """Every built-in is an Interceptor."""
        assert all(isinstance(i, Interceptor) for i in [*get_default_interceptors(), RetryInterceptor()])
