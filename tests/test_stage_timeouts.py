"""Stage timeouts a newcomer reaches for: ``with_stage(timeout=)``, ``config['timeout']`` on a stage class,
a ``timeout`` class attribute; and a ``StageOutput`` subclass returned as ok."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest

from stageflow import (
    InMemoryEventSink,
    Pipeline,
    PipelineDefinitionError,
    PipelineFailedError,
    StageContext,
    StageOutput,
    StageStatus,
    StageTimeoutError,
)
from stageflow.interceptors import Interceptor, TimeoutInterceptor

from ._stages import T, hang
from ._support import make_ctx


class Transcribe:
    """A stage class whose constructor takes no arguments."""

    async def execute(self, ctx: StageContext) -> StageOutput:
        await asyncio.Event().wait()
        return StageOutput.ok()


class Done:
    """A stage class that succeeds at once; the tests' subclasses add what they are about."""

    async def execute(self, ctx: StageContext) -> StageOutput:
        return StageOutput.ok()


class Patient(Done):
    """A stage class with a ``timeout`` attribute."""

    timeout = 0.05


def enforcing(key: str) -> Interceptor:
    """An interceptor of the user's own that declares it enforces the config key ``key``."""

    class Enforcing(Interceptor):
        name = "enforcing"
        enforces = frozenset({key})

    return Enforcing()


class TestWithStageTimeout:
    async def test_an_async_stage_times_out_without_an_interceptor(self) -> None:
        graph = Pipeline("p").with_stage("slow", hang, T, timeout=0.01).build()
        with pytest.raises(PipelineFailedError) as info:
            await graph.run()
        assert isinstance(info.value.error, StageTimeoutError)
        assert str(info.value.error) == "stage 'slow' timed out after 0.01 s"
        assert graph.stage("slow").timeout == 0.01

    async def test_a_sync_stage_times_out_and_its_work_is_reported(self) -> None:
        release = threading.Event()

        def stuck(ctx: StageContext) -> StageOutput:
            release.wait(120)
            return StageOutput.ok()

        sink = InMemoryEventSink()
        graph = Pipeline("p").with_stage("stuck", stuck, T, timeout=0.01).build(cancel_grace=0)
        try:
            with pytest.raises(PipelineFailedError) as info:
                await graph.run(make_ctx(sink=sink))
        finally:
            release.set()
        assert isinstance(info.value.error, StageTimeoutError)
        assert info.value.results["stuck"].work == "abandoned"

    async def test_each_attempt_has_the_timeout(self) -> None:
        from stageflow import RetryPolicy

        attempts: list[int] = []

        async def slow_then_fast(ctx: StageContext) -> StageOutput:
            attempts.append(ctx.attempt)
            if ctx.attempt == 1:
                await asyncio.Event().wait()
            return StageOutput.ok(attempt=ctx.attempt)

        policy = RetryPolicy(max_attempts=2, initial_delay=0, retry_on=(StageTimeoutError,))
        graph = Pipeline("p").with_stage("a", slow_then_fast, T, timeout=0.01, retry=policy).build()
        result = await graph.run()
        assert (attempts, result["a"].data) == ([1, 2], {"attempt": 2})

    async def test_a_stage_that_ends_in_time_is_untouched(self) -> None:
        async def quick(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(done=True)

        result = await Pipeline("p").with_stage("a", quick, T, timeout=30).build().run()
        assert result["a"].data == {"done": True}

    async def test_a_timeout_error_the_stage_raises_itself_passes_through(self) -> None:
        async def own(ctx: StageContext) -> StageOutput:
            raise TimeoutError("upstream took too long")

        with pytest.raises(PipelineFailedError) as info:
            await Pipeline("p").with_stage("a", own, T, timeout=30).build().run()
        assert type(info.value.error) is TimeoutError

    @pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "1", True])
    def test_a_bad_timeout_is_refused_at_with_stage(self, value: object) -> None:
        with pytest.raises(PipelineDefinitionError) as info:
            Pipeline("p").with_stage("a", hang, T, timeout=value)  # type: ignore[arg-type]
        assert (
            str(info.value)
            == f"stage 'a' has timeout={value!r}; pass seconds as a finite number > 0, or None"
        )


class TestConfigTimeoutOnAClass:
    async def test_a_class_without_constructor_arguments_builds_and_is_timed(self) -> None:
        """``config={'timeout': ...}`` is for TimeoutInterceptor: the class is built without it."""
        graph = (
            Pipeline("p")
            .with_stage("stt", Transcribe, T, config={"timeout": 0.01})
            .build(interceptors=[TimeoutInterceptor()])
        )
        assert isinstance(graph.stage("stt").runner, Transcribe)
        with pytest.raises(PipelineFailedError) as info:
            await graph.run()
        assert str(info.value.error) == "stage 'stt' timed out after 0.01 s"

    def test_a_class_that_takes_timeout_still_gets_it(self) -> None:
        class Takes(Done):
            def __init__(self, timeout: float) -> None:
                self.timeout = timeout

        graph = Pipeline("p").with_stage("a", Takes, T, config={"timeout": 3.0}).build()
        assert graph.stage("a").runner.timeout == 3.0

    def test_dotted_telemetry_keys_are_not_constructor_arguments(self) -> None:
        class Llm(Done):
            def __init__(self, model: str) -> None:
                self.model = model

        config = {"model": "small", "gen_ai.operation.name": "chat"}
        graph = Pipeline("p").with_stage("llm", Llm, T, config=config).build()
        assert graph.stage("llm").runner.model == "small"
        assert graph.stage("llm").config["gen_ai.operation.name"] == "chat"

    def test_other_unknown_keys_still_fail_the_build(self) -> None:
        from stageflow import InvalidRunnerError

        with pytest.raises(InvalidRunnerError, match=r"Transcribe\(\*\*\{'modle': 'small'\}\) failed"):
            Pipeline("p").with_stage("stt", Transcribe, T, config={"modle": "small"}).build()

    async def test_a_timeout_attribute_without_an_interceptor_warns(self) -> None:
        graph = Pipeline("p").with_stage("patient", Patient, T).build()
        with pytest.warns(UserWarning) as record:
            await graph.run()
        assert [str(w.message) for w in record] == [
            "pipeline 'p' runs without a TimeoutInterceptor, so nothing enforces the timeout "
            "(config['timeout'] or a timeout attribute) of stage 'patient'; add TimeoutInterceptor() to "
            "build(interceptors=[...]), or pass with_stage(..., timeout=seconds)"
        ]

    async def test_with_stage_timeout_is_enforced_so_nothing_warns(self) -> None:
        graph = Pipeline("p").with_stage("patient", Patient, T, timeout=5).build()
        await graph.run()  # filterwarnings = error: a warning would fail this

    async def test_an_interceptor_that_enforces_timeouts_silences_the_warning(self) -> None:
        """An interceptor of the user's own that declares ``enforces = {"timeout"}`` enforces them."""
        graph = Pipeline("p").with_stage("patient", Patient, T).build([enforcing("timeout")])
        await graph.run()  # filterwarnings = error: a warning would fail this

    async def test_an_interceptor_enforcing_something_else_still_warns(self) -> None:
        """Only an interceptor that enforces ``timeout`` counts: one that enforces another key warns."""
        graph = Pipeline("p").with_stage("patient", Patient, T).build([enforcing("budget")])
        with pytest.warns(UserWarning, match="nothing enforces the timeout"):
            await graph.run()

    def test_what_the_builtins_enforce(self) -> None:
        """``TimeoutInterceptor`` (and a subclass) enforces timeouts; the base interceptor nothing."""

        class Mine(TimeoutInterceptor):
            pass

        assert (TimeoutInterceptor().enforces, Mine().enforces, Interceptor.enforces) == (
            frozenset({"timeout"}),
            frozenset({"timeout"}),
            frozenset(),
        )


@dataclass(frozen=True, slots=True)
class TaggedOutput(StageOutput):
    """A user's ``StageOutput`` subclass."""


class TestStageOutputSubclass:
    async def test_a_subclass_returned_ok_completes_the_stage(self) -> None:
        """Regression: it used to cancel the pipeline ("(no reason given)")."""

        async def tagged(ctx: StageContext) -> StageOutput:
            return TaggedOutput.ok(text="hi")

        async def reader(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(seen=ctx.inputs.get_from("tagged", "text"))

        sink = InMemoryEventSink()
        graph = (
            Pipeline("p")
            .with_stage("tagged", tagged, T)
            .with_stage("reader", reader, T, dependencies=("tagged",))
            .build()
        )
        result = await graph.run(make_ctx(sink=sink))
        assert result["tagged"].status is StageStatus.OK
        assert type(result["tagged"].output) is TaggedOutput
        assert result["reader"].data == {"seen": "hi"}
        assert [e.type for e in sink.events if e.type.startswith("stage.tagged.")] == [
            "stage.tagged.started",
            "stage.tagged.completed",
        ]
