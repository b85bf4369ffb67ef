"""Sync stages off the event loop: worker threads, process pools, pickling, dispatch time and cancellation.

It runs past 500 lines because threads and process pools share their cases: dispatch, pickling and
cancellation are checked on both.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from stageflow import (
    ExecutorError,
    InMemoryEventSink,
    InvalidExecutorError,
    InvalidRunnerError,
    InvalidStageOutputError,
    Pipeline,
    PipelineDefinitionError,
    PipelineFailedError,
    RemoteStageError,
    StageContext,
    StageKind,
    StageOutput,
    StageStatus,
    StageTimeoutError,
    UnpicklableStageError,
    UnpicklableValueError,
    add_worker_hook,
    remove_worker_hook,
)
from stageflow._offload import default_thread_count
from stageflow.interceptors import Interceptor, TimeoutInterceptor

from . import _offload_stages as stages
from ._stages import chain
from ._support import MUST_PICKLE, VAR, exact, make_ctx, run_fails

T = StageKind.TRANSFORM


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as executor:
        yield executor


def where_thread(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(thread=threading.current_thread().name, var=VAR.get())


class TestThreads:
    async def test_a_sync_function_runs_in_a_worker_thread_with_the_callers_context(self) -> None:
        """The stage runs off the loop's thread, in the graph's pool, and sees the caller's contextvars."""
        token = VAR.set("caller")
        try:
            graph = Pipeline("p").with_stage("a", where_thread, T).build()
            result = await graph.run()
        finally:
            VAR.reset(token)
        data = result["a"].data
        assert data["var"] == "caller"
        assert data["thread"].startswith("stageflow-p_")
        assert data["thread"] != threading.current_thread().name
        assert result["a"].status is StageStatus.OK

    async def test_each_submit_runs_in_its_own_copy_of_the_context(self) -> None:
        """A contextvar a sync stage sets is seen neither by its siblings nor by the caller."""

        def setter(ctx: StageContext) -> StageOutput:
            VAR.set("from-a")
            return StageOutput.ok(var=VAR.get())

        graph = (
            Pipeline("p")
            .with_stage("a", setter, T)
            .with_stage("b", where_thread, T, dependencies=("a",))
            .build(max_threads=1)
        )
        result = await graph.run()
        assert (result["a"].data["var"], result["b"].data["var"], VAR.get()) == (
            "from-a",
            "unset",
            "unset",
        )

    async def test_sync_classes_and_objects_are_stages(self) -> None:
        """A class with a plain ``execute`` is built with its config; an object with one runs as is."""
        graph = (
            Pipeline("p")
            .with_stage("src", stages.source, T)
            .with_stage("cls", stages.Scaler, T, dependencies=("src",), config={"factor": 3})
            .with_stage("obj", stages.Scaler(10), T, dependencies=("src",))
            .build()
        )
        result = await graph.run()
        assert (result["cls"].data["value"], result["obj"].data["value"]) == (123, 410)
        assert graph.stage("cls").sync and graph.stage("obj").sync and graph.stage("src").sync

    async def test_events_are_those_of_an_async_stage_plus_dispatch(self) -> None:
        """A sync stage emits the same events, in the same order, with ``dispatch`` on ``completed``."""

        async def twin(ctx: StageContext) -> StageOutput:
            return StageOutput.ok()

        def sync_twin(ctx: StageContext) -> StageOutput:
            return StageOutput.ok()

        shapes = []
        for runner in (twin, sync_twin):
            sink = InMemoryEventSink()
            result = await chain(("a", runner), ("b", runner), name="p").build().run(make_ctx(sink=sink))
            shapes.append([(e.type, sorted(e.data)) for e in sink.events])
            assert result.critical_path == ("a", "b")
        async_shape, sync_shape = shapes
        expected = [
            (t, sorted([*keys, "dispatch"]) if t.endswith(".completed") and t.startswith("stage.") else keys)
            for t, keys in async_shape
        ]
        assert sync_shape == expected

    async def test_a_stage_that_raises_still_has_its_dispatch_time(self) -> None:
        seen: list[float] = []

        def broken(ctx: StageContext) -> StageOutput:
            raise ValueError("broken")

        class Record(Interceptor):
            async def intercept_stage(self, stage: Any, ctx: StageContext, call_next: Any) -> StageOutput:
                try:
                    return await call_next(ctx)  # type: ignore[no-any-return]
                finally:
                    seen.append(ctx.dispatch)

        graph = Pipeline("p").with_stage("a", broken, T).build(interceptors=[Record()])
        with pytest.raises(PipelineFailedError) as info:
            await graph.run()
        assert type(info.value.error) is ValueError
        assert info.value.results["a"].dispatch > 0.0
        assert seen == [info.value.results["a"].dispatch]

    async def test_dispatch_and_run_time_add_up_to_the_duration(self) -> None:
        """``dispatch`` is positive for a sync stage, zero for an async one; ``run_time`` is the rest."""

        async def on_loop(ctx: StageContext) -> StageOutput:
            return StageOutput.ok()

        result = await chain(("sync", where_thread), ("async", on_loop), name="p").build().run()
        sync, loop_stage = result["sync"], result["async"]
        assert sync.dispatch > 0.0
        assert sync.run_time == sync.ended_at - sync.started_at - sync.dispatch
        assert sync.run_time >= 0.0
        assert (loop_stage.dispatch, loop_stage.work) == (0.0, None)
        assert loop_stage.run_time == loop_stage.duration

    async def test_the_default_pool_is_bounded_and_configurable(self) -> None:
        """A graph's own pool has ``min(32, cpu + 4)`` threads unless ``build(max_threads=)`` says so."""
        assert default_thread_count() == min(32, (os.cpu_count() or 1) + 4)
        graph = Pipeline("p").with_stage("a", where_thread, T).build()
        assert graph._pool.size == default_thread_count()
        pipeline = Pipeline("p")
        for i in range(6):
            pipeline = pipeline.with_stage(f"s{i}", where_thread, T)
        graph = pipeline.build(max_threads=2)
        result = await graph.run()
        names = {r.data["thread"] for r in result.values()}
        assert names <= {"stageflow-p_0", "stageflow-p_1"}
        assert graph._pool.get()._max_workers == 2

    async def test_one_thread_runs_a_diamond_without_deadlock(self) -> None:
        """The engine never holds a worker thread waiting for another stage: one thread is enough."""
        log: list[str] = []

        def step(name: str) -> Any:
            def run(ctx: StageContext) -> StageOutput:
                log.append(name)
                return StageOutput.ok()

            return run

        graph = (
            Pipeline("p")
            .with_stage("a", step("a"), T)
            .with_stage("b", step("b"), T, dependencies=("a",))
            .with_stage("c", step("c"), T, dependencies=("a",))
            .with_stage("d", step("d"), T, dependencies=("b", "c"))
            .build(max_threads=1)
        )
        await asyncio.wait_for(graph.run(), 60)
        assert log[0] == "a" and log[-1] == "d" and sorted(log[1:3]) == ["b", "c"]

    async def test_a_graph_wide_executor_runs_every_sync_stage_without_its_own(self) -> None:
        with (
            ThreadPoolExecutor(1, thread_name_prefix="mine") as mine,
            ThreadPoolExecutor(1, thread_name_prefix="theirs") as theirs,
        ):
            graph = (
                Pipeline("p")
                .with_stage("a", where_thread, T)
                .with_stage("b", where_thread, T, executor=theirs)
                .build(executor=mine)
            )
            result = await graph.run()
        assert result["a"].data["thread"] == "mine_0"
        assert result["b"].data["thread"] == "theirs_0"
        assert (graph.stage("a").executor, graph.stage("b").executor) == (mine, theirs)


class TestBadInput:
    def test_an_executor_that_is_not_one_is_refused_at_with_stage(self) -> None:
        with pytest.raises(
            InvalidExecutorError,
            match=exact(
                "stage 'a' has executor='pool': it is not a concurrent.futures.Executor; pass a "
                "ThreadPoolExecutor, a ProcessPoolExecutor, Dask's client.get_executor() or "
                "stageflow.adapters.ray.RayExecutor()"
            ),
        ):
            Pipeline().with_stage("a", where_thread, T, executor="pool")  # type: ignore[arg-type]
        with pytest.raises(InvalidExecutorError, match=r"^build\(executor=4\): it is not a concurrent"):
            Pipeline().with_stage("a", where_thread, T).build(executor=4)  # type: ignore[arg-type]

    def test_an_async_stage_with_an_executor_is_refused(self) -> None:
        async def on_loop(ctx: StageContext) -> StageOutput:
            return StageOutput.ok()

        with ThreadPoolExecutor(1) as executor:
            with pytest.raises(
                InvalidExecutorError,
                match=exact(
                    f"stage 'a' has executor={executor!r}: the stage is an async stage and runs on the event "
                    "loop, where an executor has nothing to do; make it a plain 'def' (or its execute() a "
                    "plain 'def') to run it on this executor"
                ),
            ):
                Pipeline().with_stage("a", on_loop, T, executor=executor)

    def test_a_shut_down_executor_is_refused_at_with_stage(self) -> None:
        executor = ThreadPoolExecutor(1)
        executor.shutdown()
        with pytest.raises(
            InvalidExecutorError,
            match=exact(
                f"stage 'a' has executor={executor!r}: it was shut down and accepts no work; "
                "pass a running executor"
            ),
        ):
            Pipeline().with_stage("a", where_thread, T, executor=executor)

    async def test_an_executor_shut_down_after_build_fails_the_stage(self) -> None:
        """The run ends with ``ExecutorError`` naming the stage; finished stages keep their results."""
        executor = ThreadPoolExecutor(1)
        graph = (
            Pipeline("p")
            .with_stage("first", stages.source, T)
            .with_stage("a", where_thread, T, dependencies=("first",), executor=executor)
            .build()
        )
        executor.shutdown()
        with pytest.raises(PipelineFailedError) as info:
            await graph.run()
        error = info.value.error
        assert isinstance(error, ExecutorError)
        assert str(error) == (
            "stage 'a' could not be sent to its executor ThreadPoolExecutor: RuntimeError: cannot schedule "
            "new futures after shutdown; pass an executor that is running (a shut-down executor cannot be "
            "restarted: make a new one)"
        )
        assert info.value.results["first"].data == {"n": 41}

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (0, "build(max_threads=0) is invalid; pass a positive int such as 8, or None"),
            (2.5, "build(max_threads=2.5) is invalid; pass a positive int such as 8, or None"),
        ],
    )
    def test_bad_thread_counts_are_refused(self, value: Any, message: str) -> None:
        with pytest.raises(PipelineDefinitionError, match=exact(message)):
            Pipeline().with_stage("a", where_thread, T).build(max_threads=value)

    @pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "1", True])
    def test_bad_cancel_graces_are_refused(self, value: Any) -> None:
        with pytest.raises(
            PipelineDefinitionError,
            match=exact(
                f"build(cancel_grace={value!r}) is invalid; pass seconds as a finite number >= 0, such as 1.0"
            ),
        ):
            Pipeline().with_stage("a", where_thread, T).build(cancel_grace=value)

    async def test_a_sync_function_returning_a_coroutine_fails_its_stage(self) -> None:
        """The coroutine is closed (no "never awaited" warning) and the error says to use ``async def``."""
        graph = Pipeline("p").with_stage("a", stages.returns_coroutine, T).build()
        with pytest.raises(PipelineFailedError) as info:
            await graph.run()
        assert isinstance(info.value.error, InvalidStageOutputError)
        assert str(info.value.error) == (
            "stage 'a' returned a coroutine object: it is a plain function (or its execute() is a plain def) "
            "that returned a coroutine; declare it 'async def' to run it on the event loop, or return a "
            "StageOutput"
        )

    def test_a_generator_function_is_refused(self) -> None:
        def gen(ctx: StageContext) -> Any:
            yield StageOutput.ok()

        with pytest.raises(InvalidRunnerError, match="it is a generator function"):
            Pipeline().with_stage("a", gen, T)

    def test_an_object_with_an_async_call_is_an_async_stage(self) -> None:
        class Callable:
            async def __call__(self, ctx: StageContext) -> StageOutput:
                return StageOutput.ok()

        graph = Pipeline().with_stage("a", Callable(), T).build()
        assert graph.stage("a").sync is False


async def error_of(stage: Callable[[StageContext], StageOutput], pool: Executor) -> BaseException:
    """The error a run of ``stage`` alone, on ``pool``, fails with."""
    graph = Pipeline("p").with_stage("a", stage, T, executor=pool).build()
    with pytest.raises(PipelineFailedError) as info:
        await graph.run()
    return info.value.error


class TestProcesses:
    async def test_a_stage_runs_in_another_process_with_its_context(self, pool: ProcessPoolExecutor) -> None:
        """Snapshot, run identity, attempt, config and its dependencies' outputs cross; outputs come back."""
        graph = (
            Pipeline("p")
            .with_stage("src", stages.source, T)
            .with_stage("where", stages.where, T, config={"model": "small"}, executor=pool)
            .with_stage("add", stages.add_one, T, dependencies=("src",), executor=pool)
            .with_stage("scale", stages.Scaler, T, dependencies=("src",), config={"factor": 2}, executor=pool)
            .build()
        )
        ctx = make_ctx(text="hello")
        result = await graph.run(ctx)
        data = result["where"].data
        assert data["pid"] != os.getpid()
        assert (data["run_id"], data["stage"], data["attempt"], data["text"], data["config"]) == (
            str(ctx.snapshot.run_id.pipeline_run_id),
            "where",
            1,
            "hello",
            {"model": "small"},
        )
        assert result["add"].data == {"n": 42}
        assert result["scale"].data["value"] == 82
        assert result["where"].dispatch > 0.0
        assert result["where"].run_time >= 0.0

    async def test_a_spawned_pool_works_too(self) -> None:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as spawned:
            graph = Pipeline("p").with_stage("src", stages.source, T, executor=spawned).build()
            result = await graph.run()
        assert result["src"].data == {"n": 41}

    async def test_events_a_stage_emits_in_the_worker_reach_the_runs_sink(
        self, pool: ProcessPoolExecutor
    ) -> None:
        sink = InMemoryEventSink()
        graph = Pipeline("p").with_stage("a", stages.emits_event, T, executor=pool).build()
        ctx = make_ctx(sink=sink)
        await graph.run(ctx)
        custom = [e for e in sink.events if e.type == "custom.progress"]
        assert len(custom) == 1
        assert custom[0].data["done"] == 3
        assert custom[0].data["stage"] == "a"
        assert custom[0].data["run_id"] == str(ctx.snapshot.run_id.pipeline_run_id)
        types = [e.type for e in sink.events]
        assert (
            types.index("stage.a.started") < types.index("custom.progress") < types.index("stage.a.completed")
        )

    async def test_an_error_keeps_its_type_and_message(self, pool: ProcessPoolExecutor) -> None:
        error = await error_of(stages.raises_value_error, pool)
        assert type(error) is ValueError
        assert str(error) == "bad input in a"

    async def test_an_unpicklable_error_comes_back_as_a_remote_stage_error(
        self, pool: ProcessPoolExecutor
    ) -> None:
        error = await error_of(stages.raises_unpicklable, pool)
        assert isinstance(error, RemoteStageError)
        assert (error.type_name, error.message) == ("tests._offload_stages.UnpicklableError", "held a lock")
        assert str(error) == "tests._offload_stages.UnpicklableError: held a lock"
        assert "raise UnpicklableError" in error.remote_traceback

    async def test_an_unpicklable_output_fails_the_stage_naming_its_key(
        self, pool: ProcessPoolExecutor
    ) -> None:
        error = await error_of(stages.returns_lock, pool)
        assert isinstance(error, UnpicklableValueError)
        assert str(error) == (
            "stage 'a' runs in another process, but its output key 'lock' cannot be pickled (TypeError: "
            "cannot pickle '_thread.lock' object); pass values that pickle between such stages (str, bytes, "
            "numbers, lists, dicts, dataclasses), or run the stage in a thread"
        )

    async def test_an_unpicklable_input_fails_the_stage_naming_its_key(
        self, pool: ProcessPoolExecutor
    ) -> None:
        graph = (
            Pipeline("p")
            .with_stage("src", stages.source_with_lock, T)
            .with_stage("a", stages.reads_lock, T, dependencies=("src",), executor=pool)
            .build()
        )
        with pytest.raises(PipelineFailedError) as info:
            await graph.run()
        assert isinstance(info.value.error, UnpicklableValueError)
        assert (info.value.error.what, info.value.error.key) == ("input from 'src'", "'lock'")
        assert str(info.value.error).startswith(
            "stage 'a' runs in another process, but its input from 'src' key 'lock' cannot be pickled"
        )
        assert info.value.results["src"].status is StageStatus.OK

    async def test_an_error_that_pickles_but_cannot_be_rebuilt_is_a_remote_stage_error(
        self, pool: ProcessPoolExecutor
    ) -> None:
        error = await error_of(stages.raises_unrebuildable, pool)
        assert isinstance(error, RemoteStageError)
        assert (error.type_name, error.message) == (
            "tests._offload_stages.NeedsTwoArguments",
            "503: upstream down",
        )

    async def test_a_coroutine_returned_in_a_worker_fails_the_stage(self, pool: ProcessPoolExecutor) -> None:
        error = await error_of(stages.returns_coroutine, pool)
        assert isinstance(error, InvalidStageOutputError)
        assert "returned a coroutine object" in str(error)


class TestPicklingAtBuild:
    def test_a_lambda_is_refused(self, pool: ProcessPoolExecutor) -> None:
        runner = lambda ctx: StageOutput.ok()  # noqa: E731
        with pytest.raises(UnpicklableStageError) as info:
            Pipeline().with_stage("embed", runner, T, executor=pool).build()
        message = str(info.value)
        assert message.startswith(
            "stage 'embed' runs on ProcessPoolExecutor, in another process, but its function (a lambda) "
            "cannot be pickled ("
        )
        assert message.endswith(MUST_PICKLE)
        assert info.value.part == "its function (a lambda)"

    def test_a_nested_function_is_refused(self, pool: ProcessPoolExecutor) -> None:
        def nested(ctx: StageContext) -> StageOutput:
            return StageOutput.ok()

        with pytest.raises(UnpicklableStageError) as info:
            Pipeline().with_stage("embed", nested, T, executor=pool).build()
        assert info.value.part == (
            "its function TestPicklingAtBuild.test_a_nested_function_is_refused.<locals>.nested "
            "(defined inside another function)"
        )

    def test_a_stage_holding_a_lock_is_refused_naming_the_attribute(self, pool: ProcessPoolExecutor) -> None:
        with pytest.raises(UnpicklableStageError) as info:
            Pipeline().with_stage("embed", stages.Holder, T, executor=pool).build()
        assert info.value.part == "attribute 'lock' (lock)"
        assert (
            "but attribute 'lock' (lock) cannot be pickled (TypeError: cannot pickle '_thread.lock' object)"
            in str(info.value)
        )

    def test_an_unpicklable_config_value_is_refused(self, pool: ProcessPoolExecutor) -> None:
        with pytest.raises(UnpicklableStageError) as info:
            Pipeline().with_stage(
                "embed", stages.where, T, config={"client": threading.Lock()}, executor=pool
            ).build()
        assert info.value.part == "config['client']"

    def test_thread_pools_need_no_pickling(self) -> None:
        with ThreadPoolExecutor(1) as executor:
            graph = Pipeline().with_stage("embed", stages.Holder, T, executor=executor).build()
        assert graph.stage("embed").executor is executor

    def test_a_pickled_context_keeps_what_a_stage_reads(self) -> None:
        ctx = make_ctx(text="hi")
        copy = pickle.loads(pickle.dumps(ctx))
        assert (copy.snapshot, copy.stage_name, copy.attempt, copy.pipeline) == (
            ctx.snapshot,
            ctx.stage_name,
            1,
            None,
        )
        assert abs(copy.timer.perf_start - ctx.timer.perf_start) < 1.0


def stuck_stage(started: threading.Event, release: threading.Event) -> Callable[[StageContext], StageOutput]:
    """A sync stage that sets ``started``, then blocks until ``release`` is set (two minutes at most)."""

    def stuck(ctx: StageContext) -> StageOutput:
        started.set()
        release.wait(120)
        return StageOutput.ok()

    return stuck


def failing_after(started: threading.Event) -> Callable[[StageContext], Awaitable[StageOutput]]:
    """A stage that raises ``RuntimeError("sibling failed")`` once ``started`` is set."""

    async def failing(ctx: StageContext) -> StageOutput:
        await asyncio.to_thread(started.wait)
        raise RuntimeError("sibling failed")

    return failing


class TestCancellation:
    async def test_a_thread_that_checks_stop_requested_is_stopped(self) -> None:
        """Fail-fast cancels the sync stage; it sees ``stop_requested`` and returns: its work was stopped."""
        started = threading.Event()
        saw_stop = threading.Event()

        def slow(ctx: StageContext) -> StageOutput:
            started.set()
            while not ctx.stop_requested:
                saw_stop.wait(0.001)
            saw_stop.set()
            return StageOutput.ok(late=True)

        failing = failing_after(started)

        sink = InMemoryEventSink()
        graph = (
            Pipeline("p").with_stage("slow", slow, T).with_stage("failing", failing, T).build(cancel_grace=60)
        )
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx(sink=sink))
        slow_result = info.value.results["slow"]
        assert (slow_result.status, slow_result.work, slow_result.output) == (
            StageStatus.CANCEL,
            "stopped",
            None,
        )
        assert saw_stop.is_set()
        cancelled = [e for e in sink.events if e.type == "stage.slow.cancelled"]
        assert [e.data["work"] for e in cancelled] == ["stopped"]

    async def test_a_thread_that_ignores_the_stop_is_abandoned_after_the_grace(self) -> None:
        """The run ends without waiting for it; the thread runs on until released, its result discarded."""
        started = threading.Event()
        release = threading.Event()
        stuck, failing = stuck_stage(started, release), failing_after(started)

        graph = (
            Pipeline("p")
            .with_stage("stuck", stuck, T)
            .with_stage("failing", failing, T)
            .build(cancel_grace=0)
        )
        try:
            with pytest.raises(PipelineFailedError) as info:
                await graph.run()
            assert not release.is_set()  # the run ended while the work still ran
            assert info.value.results["stuck"].work == "abandoned"
        finally:
            release.set()

    async def test_a_timeout_reports_the_work_on_the_failed_stage(self) -> None:
        started = threading.Event()
        release = threading.Event()
        stuck = stuck_stage(started, release)

        sink = InMemoryEventSink()
        graph = (
            Pipeline("p")
            .with_stage("stuck", stuck, T, config={"timeout": 0.05})
            .build(interceptors=[TimeoutInterceptor()], cancel_grace=0)
        )
        try:
            error = await run_fails(graph.run(make_ctx(sink=sink)))
        finally:
            release.set()
        assert isinstance(error.error, StageTimeoutError)
        assert error.results["stuck"].work == "abandoned"
        failed = [e for e in sink.events if e.type == "stage.stuck.failed"]
        assert [(e.data["error_type"], e.data["work"]) for e in failed] == [
            ("StageTimeoutError", "abandoned")
        ]

    async def test_queued_work_is_stopped_and_running_work_abandoned(self, tmp_path: Path) -> None:
        """On a one-worker pool: queued futures are cancelled (stopped); the running one is abandoned."""
        started, release = tmp_path / "started", tmp_path / "release"
        config = {"started": str(started), "release": str(release)}

        def gate(ctx: StageContext) -> StageOutput:
            for _ in range(1_200_000):
                if started.exists():
                    break
                threading.Event().wait(0.0001)
            return StageOutput.ok()

        async def failing(ctx: StageContext) -> StageOutput:
            raise RuntimeError("sibling failed")

        queued = [f"q{i}" for i in range(4)]
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as one:
            pipeline = (
                Pipeline("p")
                .with_stage("running", stages.wait_for_file, T, config=config, executor=one)
                .with_stage("gate", gate, T)
            )
            for (
                name
            ) in queued:  # their tasks submit before "failing" runs: they come first among gate's children
                pipeline = pipeline.with_stage(name, stages.where, T, dependencies=("gate",), executor=one)
            graph = pipeline.with_stage("failing", failing, T, dependencies=("gate",)).build(cancel_grace=0)
            try:
                with pytest.raises(PipelineFailedError) as info:
                    await asyncio.wait_for(graph.run(), 120)
            finally:
                release.touch()
        results = info.value.results
        assert results["running"].work == "abandoned"
        works = [results[name].work for name in queued]
        # the pool hands at most two calls to its worker ahead of time; the rest are still queued
        assert works.count("stopped") >= 2
        assert set(works) <= {"stopped", "abandoned"}

    async def test_work_an_executor_never_started_is_stopped(self) -> None:
        """A future still pending when the stage is cancelled is cancelled: the work never runs."""
        submitted: list[Future[Any]] = []

        class NeverStarts(Executor):
            def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
                future: Future[Any] = Future()
                submitted.append(future)
                return future

        async def failing(ctx: StageContext) -> StageOutput:
            raise RuntimeError("sibling failed")

        graph = (
            Pipeline("p")
            .with_stage("pending", stages.where, T, executor=NeverStarts())
            .with_stage("failing", failing, T)
            .build(cancel_grace=0)
        )
        with pytest.raises(PipelineFailedError) as info:
            await graph.run()
        assert info.value.results["pending"].work == "stopped"
        assert [f.cancelled() for f in submitted] == [True]

    async def test_an_executor_with_terminate_stops_work_after_the_grace(self) -> None:
        """``terminate(future)`` returning True reports the work stopped (the Ray adapter's forced cancel)."""
        release = threading.Event()
        terminated: list[Future[Any]] = []

        class Terminating(ThreadPoolExecutor):
            def terminate(self, future: Future[Any]) -> bool:
                terminated.append(future)
                release.set()
                return True

        started = threading.Event()
        stuck, failing = stuck_stage(started, release), failing_after(started)

        with Terminating(1) as executor:
            graph = (
                Pipeline("p")
                .with_stage("stuck", stuck, T, executor=executor)
                .with_stage("failing", failing, T)
                .build(cancel_grace=0)
            )
            with pytest.raises(PipelineFailedError) as info:
                await graph.run()
        assert info.value.results["stuck"].work == "stopped"
        assert len(terminated) == 1

    async def test_cancelling_the_caller_cancels_the_sync_stage(self) -> None:
        started = threading.Event()

        def slow(ctx: StageContext) -> StageOutput:
            started.set()
            while not ctx.stop_requested:
                started.wait(0.001)
            return StageOutput.ok()

        sink = InMemoryEventSink()
        graph = Pipeline("p").with_stage("slow", slow, T).build()
        task = asyncio.ensure_future(graph.run(make_ctx(sink=sink)))
        await asyncio.to_thread(started.wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled = [e.data.get("work") for e in sink.events if e.type == "stage.slow.cancelled"]
        assert cancelled == ["stopped"]


RETURNED: list[object] = []


class Recorder:
    """A picklable worker hook recording what happened in the worker."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.seen: list[str] = []

    def enter(self) -> None:
        self.seen.append(f"enter {self.stage} in {os.getpid()}")

    def exit(self, error: BaseException | None) -> object:
        self.seen.append(f"exit {type(error).__name__ if error else None}")
        return list(self.seen)

    def returned(self, report: object) -> None:
        RETURNED.append(report)


def recorder_factory(stage: Any, ctx: StageContext) -> Recorder:
    return Recorder(stage.name)


def failing_factory(stage: Any, ctx: StageContext) -> Recorder:
    raise RuntimeError("factory broke")


class TestWorkerHooks:
    async def test_hooks_run_around_the_stage_in_the_worker_and_report_back(
        self, pool: ProcessPoolExecutor
    ) -> None:
        RETURNED.clear()
        add_worker_hook(recorder_factory)
        add_worker_hook(recorder_factory)  # once only
        try:
            graph = (
                Pipeline("p")
                .with_stage("ok", stages.source, T, executor=pool)
                .with_stage("bad", stages.raises_value_error, T, dependencies=("ok",), executor=pool)
                .build()
            )
            with pytest.raises(PipelineFailedError):
                await graph.run()
        finally:
            remove_worker_hook(recorder_factory)
        assert len(RETURNED) == 2
        first, second = RETURNED
        assert isinstance(first, list) and isinstance(second, list)
        assert first[0].startswith("enter ok in ") and first[1:] == ["exit None"]
        assert second[0].startswith("enter bad in ") and second[1:] == ["exit ValueError"]
        assert first[0] != f"enter ok in {os.getpid()}"

    async def test_a_failing_factory_is_logged_and_the_stage_runs(
        self, pool: ProcessPoolExecutor, caplog: pytest.LogCaptureFixture
    ) -> None:
        add_worker_hook(failing_factory)
        try:
            with caplog.at_level(logging.ERROR, logger="stageflow"):
                result = await Pipeline("p").with_stage("a", stages.source, T, executor=pool).build().run()
        finally:
            remove_worker_hook(failing_factory)
        assert result["a"].data == {"n": 41}
        assert any(
            "worker hook factory" in r.getMessage() and "factory broke" in r.getMessage()
            for r in caplog.records
        )

    async def test_a_hook_whose_enter_raises_is_logged_and_skipped(
        self, pool: ProcessPoolExecutor, caplog: pytest.LogCaptureFixture
    ) -> None:
        stages.EnterFails.reports.clear()

        def factory(stage: Any, ctx: StageContext) -> stages.EnterFails:
            return stages.EnterFails()

        add_worker_hook(factory)
        try:
            result = await Pipeline("p").with_stage("a", stages.source, T, executor=pool).build().run()
        finally:
            remove_worker_hook(factory)
        assert result["a"].data == {"n": 41}
        assert stages.EnterFails.reports == [None]  # its exit never ran: it never entered

    def test_a_factory_must_be_callable(self) -> None:
        with pytest.raises(TypeError, match=r"^add_worker_hook\(\) takes a callable factory"):
            add_worker_hook(42)  # type: ignore[arg-type]
