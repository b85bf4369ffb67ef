"""No fault opens a guard or hangs a run: fail-closed interceptors, BaseException, graphs, stores."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import textwrap
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from stageflow import (
    InMemoryEventSink,
    InMemoryRunStore,
    InterceptorFailedError,
    Pipeline,
    PipelineContext,
    PipelineDefinitionError,
    PipelineFailedError,
    RetryPolicy,
    RunRecord,
    RunResult,
    SQLiteRunStore,
    StageContext,
    StageGraph,
    StageInfo,
    StageKind,
    StageOutput,
    StageResult,
    StageStatus,
)
from stageflow.interceptors import (
    BaseInterceptor,
    CallNext,
    Interceptor,
    InterceptorResult,
    RetryInterceptor,
    RunNext,
)

from ._stages import Hanging
from ._support import bypassed, make_ctx, ok_stage

W = StageKind.WORK
T = TypeVar("T")

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

HANG_GUARD = 10.0
"""Seconds after which a run that should end at once is taken as hung (a hang detector, not a speed limit)."""


async def no_hang(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, HANG_GUARD)


# --------------------------------------------------------------------------- fail closed


class AuthBackendDown(ConnectionError):
    pass


class AuthInterceptor(BaseInterceptor):
    """The seed README's shape, asking an auth backend that is down."""

    name = "auth"
    priority = 5

    async def before(self, stage_name: str, ctx: PipelineContext) -> InterceptorResult | None:
        if not await self.check(ctx):
            return InterceptorResult(stage_ran=False, error="Not authenticated")
        return None

    async def after(self, stage_name: str, result: StageResult, ctx: PipelineContext) -> None:
        pass

    async def check(self, ctx: PipelineContext) -> bool:
        raise AuthBackendDown("auth backend unreachable")


class TestFailClosed:
    async def test_a_crashed_auth_check_never_lets_the_guarded_stage_run(self) -> None:
        """The seed's AuthInterceptor with a backend raising ConnectionError: ``charge_card`` never runs."""
        charged: list[str] = []

        async def charge_card(ctx: StageContext) -> StageOutput:
            charged.append("charged")
            return StageOutput.ok(charged=True)

        graph = Pipeline(name="shop").with_stage("charge_card", charge_card, W).build([AuthInterceptor()])
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx(data={"authenticated": False}))
        assert charged == []
        error = info.value.error
        assert type(error) is InterceptorFailedError
        assert (error.stage, error.interceptor) == ("charge_card", "auth")
        assert type(error.__cause__) is AuthBackendDown
        assert error.error is error.__cause__
        assert str(error) == (
            "interceptor 'auth' raised AuthBackendDown: auth backend unreachable before stage 'charge_card' "
            "ran, so it did not run; fix the interceptor, or set fail_open = True on its class if bypassing "
            "it when it fails is safe"
        )
        assert info.value.results["charge_card"].status is StageStatus.FAIL

    async def test_fail_closed_is_not_retried(self) -> None:
        """A retry interceptor outside the guard never retries its failure (no attempt runs the stage)."""
        runs: list[int] = []

        async def charge_card(ctx: StageContext) -> StageOutput:
            runs.append(ctx.attempt)
            return StageOutput.ok()

        policy = RetryPolicy(max_attempts=3, initial_delay=0, jitter=0)
        graph = (
            Pipeline()
            .with_stage("charge_card", charge_card, W, retry=policy)
            .build([RetryInterceptor(policy), AuthInterceptor()])
        )
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        assert (runs, type(info.value.error), info.value.results["charge_card"].attempts) == (
            [],
            InterceptorFailedError,
            1,
        )

    async def test_a_fail_open_interceptor_is_bypassed(self, caplog: pytest.LogCaptureFixture) -> None:
        """An interceptor that declares ``fail_open = True`` is logged and bypassed instead."""

        class Telemetry(Interceptor):
            name = "telemetry"
            fail_open = True

            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                raise RuntimeError("exporter gone")

        graph = Pipeline().with_stage("s", ok_stage(v=1), W).build([Telemetry()])
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            results = await graph.run(make_ctx())
        assert dict(results["s"].data) == {"v": 1}
        assert [r.getMessage() for r in caplog.records] == [
            bypassed("telemetry", "RuntimeError('exporter gone')")
        ]

    async def test_a_run_interceptor_failing_before_the_run_stops_it(self) -> None:
        """A run interceptor raising before ``call_next`` fails closed too: no stage runs."""
        ran: list[str] = []

        class Gate(Interceptor):
            name = "gate"

            async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
                raise PermissionError("policy service down")

        async def stage(ctx: StageContext) -> StageOutput:
            ran.append("s")
            return StageOutput.ok()

        graph = Pipeline(name="p").with_stage("s", stage, W).build([Gate()])
        with pytest.raises(InterceptorFailedError) as info:
            await graph.run(make_ctx())
        assert ran == []
        assert str(info.value).startswith(
            "interceptor 'gate' raised PermissionError: policy service down "
            "before the run of pipeline 'p' ran"
        )

    @pytest.mark.parametrize("module", ["_logging", "_metrics", "_tracing"])
    def test_stageflow_otel_interceptors_declare_fail_open(self, module: str) -> None:
        """stageflow_otel's telemetry interceptors say they are fail-open."""
        pytest.importorskip("opentelemetry.sdk")
        import importlib

        mod = importlib.import_module(f"stageflow_otel.{module}")
        classes = [v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, Interceptor)]
        mine = [c for c in classes if c.__module__ == mod.__name__]
        assert mine, module
        assert all(c.fail_open for c in mine)

    async def test_the_readme_example_fails_closed(self) -> None:
        """README's AuthInterceptor example, with its backend down, keeps ``charge_card`` from running."""
        readme = README
        (block,) = [
            b for b in re.findall(r"```py\n(.*?)```", readme, flags=re.S) if "class AuthInterceptor" in b
        ]

        class Backend:
            async def is_authenticated(self, data: object) -> bool:
                raise ConnectionError("backend down")

        namespace: dict[str, Any] = {
            "BaseInterceptor": BaseInterceptor,
            "InterceptorResult": InterceptorResult,
            "auth_backend": Backend(),
        }
        exec(textwrap.dedent(block), namespace)
        charged: list[int] = []

        async def charge_card(ctx: StageContext) -> StageOutput:
            charged.append(1)
            return StageOutput.ok()

        graph = Pipeline().with_stage("charge_card", charge_card, W).build([namespace["AuthInterceptor"]()])
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        assert charged == []
        assert str(info.value.error).startswith(
            "interceptor 'auth' raised ConnectionError: backend down before stage 'charge_card' ran"
        )

    def test_the_core_default_is_fail_closed(self) -> None:
        assert (Interceptor.fail_open, BaseInterceptor.fail_open) == (False, False)


class Pass(Interceptor):
    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        return await call_next(ctx)


class TestIsolationBlame:
    async def test_an_inner_direct_interceptors_error_is_not_blamed_on_the_outer_one(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An error a non-isolated inner interceptor raises passes an isolated outer one untouched: it is
        not logged as the outer one's bug, and the inner one is called once."""
        calls: list[str] = []

        class Outer(Interceptor):
            name, priority = "outer", 1

            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                return await call_next(ctx)

        class Refuse(Interceptor):
            name, priority, isolated = "refuse", 2, False

            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                calls.append("refuse")
                raise LookupError("no such tenant")

        graph = Pipeline().with_stage("s", ok_stage(), W).build([Outer(), Refuse()])
        with caplog.at_level(logging.ERROR, logger="stageflow"), pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        assert calls == ["refuse"]
        assert (type(info.value.error), str(info.value.error)) == (LookupError, "no such tenant")
        assert caplog.records == []

    async def test_100_isolated_interceptors_run(self) -> None:
        """A deep chain of isolated interceptors runs the stage once and returns.

        100 (300 frames), not more: under a trace function (coverage, a debugger) Python 3.11 spends
        about twice the recursion budget per frame, and 200 overflowed the limit there."""
        runs: list[int] = []

        async def stage(ctx: StageContext) -> StageOutput:
            runs.append(1)
            return StageOutput.ok(v=1)

        graph = Pipeline().with_stage("s", stage, W).build([Pass() for _ in range(100)])
        results = await no_hang(graph.run(make_ctx()))
        assert (runs, dict(results["s"].data)) == ([1], {"v": 1})

    def test_600_isolated_interceptors_are_refused_at_build(self) -> None:
        """A chain too deep for Python's recursion limit is a definition error, not a run that never ends."""
        with pytest.raises(PipelineDefinitionError) as info:
            Pipeline().with_stage("s", ok_stage(), W).build([Pass() for _ in range(600)])
        assert str(info.value) == (
            "600 interceptors override intercept_stage (600 of them isolated), which nests 1800 Python "
            "frames per call; Python's recursion limit (1000) leaves room for 750: merge interceptors, set "
            "isolated = False on those that never raise on their own, or raise sys.setrecursionlimit()"
        )

    async def test_a_run_interceptor_returning_none_still_gives_the_results(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """``run()`` returns the run's results, and logs the interceptor that lost them."""

        class Forgetful(Interceptor):
            name = "forgetful"

            async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
                await call_next(run)
                return None  # type: ignore[return-value]

        graph = Pipeline(name="p").with_stage("s", ok_stage(v=2), W).build([Forgetful()])
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            results = await graph.run(make_ctx())
        assert isinstance(results, RunResult)
        assert dict(results["s"].data) == {"v": 2}
        assert [r.getMessage() for r in caplog.records] == [
            "stageflow: a run interceptor of pipeline 'p' returned None instead of the RunResult; "
            "run() returns the run's results"
        ]


# --------------------------------------------------------------------------- BaseException


class Fatal(BaseException):
    """A custom BaseException that is not an Exception."""


class TestBaseException:
    @pytest.mark.parametrize("error", [Fatal("fatal"), GeneratorExit()], ids=["custom", "GeneratorExit"])
    async def test_a_stage_raising_it_ends_the_run_like_a_task_group(self, error: BaseException) -> None:
        """Siblings are cancelled and awaited, the run is reported and recorded, the error re-raised."""
        sink, store = InMemoryEventSink(), InMemoryRunStore()
        sibling = Hanging()

        async def bad(ctx: StageContext) -> StageOutput:
            await sibling.started["sib"].wait()
            raise error

        graph = (
            Pipeline(name="p").with_stage("sib", sibling, W).with_stage("bad", bad, W).build(run_store=store)
        )
        ctx = make_ctx(sink=sink)
        with pytest.raises(type(error)) as info:
            await no_hang(graph.run(ctx))
        assert info.value is error
        assert sibling.cleaned == ["sib"]
        assert sink.types[-1] == "pipeline.failed"
        assert sink.of_type("pipeline.failed")[0].data["stage"] == "bad"
        assert sink.of_type("stage.sib.cancelled")
        record = await store.get_run(ctx.snapshot.pipeline_run_id)
        assert record is not None
        assert (record.status, record.stage("bad").status, record.stage("sib").status) == (
            "failed",
            "fail",
            "cancel",
        )

    async def test_an_interceptor_raising_it_ends_the_run(self) -> None:
        """An interceptor's BaseException is re-raised by run(), after the run was reported."""
        sink = InMemoryEventSink()

        class Exploding(Interceptor):
            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                raise Fatal("from interceptor")

        graph = Pipeline().with_stage("s", ok_stage(), W).build([Exploding()])
        with pytest.raises(Fatal, match="from interceptor"):
            await no_hang(graph.run(make_ctx(sink=sink)))
        assert sink.types[-1] == "pipeline.failed"

    @pytest.mark.parametrize("when", ["stage.s.started", "stage.s.completed", "pipeline.completed"])
    async def test_a_sink_raising_it_ends_the_run(self, when: str) -> None:
        """A sink's BaseException ends the run and is re-raised; the run is still recorded."""
        store = InMemoryRunStore()

        class Hostile(InMemoryEventSink):
            def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
                super().try_emit(type=type, data=data)
                if type == when:
                    raise Fatal(type)

        graph = Pipeline(name="p").with_stage("s", ok_stage(), W).build(run_store=store)
        ctx = make_ctx(sink=Hostile())
        with pytest.raises(Fatal, match=when):
            await no_hang(graph.run(ctx))
        record = await store.get_run(ctx.snapshot.pipeline_run_id)
        assert record is not None
        assert record.status == ("completed" if when == "pipeline.completed" else "failed")


# --------------------------------------------------------------------------- validated graphs


class TestStageGraphIsValidated:
    def _info(self, name: str, deps: tuple[str, ...]) -> StageInfo:
        return StageInfo(name, W, deps, False, {}, ok_stage(), "p")

    def test_a_cycle_is_refused_by_the_constructor(self) -> None:
        """Two stages that depend on each other never make a graph (it would hang)."""
        with pytest.raises(PipelineDefinitionError, match=r"^dependency cycle: "):
            StageGraph("p", [self._info("a", ("b",)), self._info("b", ("a",))], [0, 1])

    def test_an_order_that_breaks_a_dependency_is_refused(self) -> None:
        with pytest.raises(PipelineDefinitionError) as info:
            StageGraph("p", [self._info("a", ()), self._info("b", ("a",))], [1, 0])
        assert str(info.value) == (
            "StageGraph order runs stage 'b' before its dependency 'a'; build graphs with Pipeline.build()"
        )

    def test_an_order_that_is_no_permutation_is_refused(self) -> None:
        with pytest.raises(PipelineDefinitionError, match=r"^StageGraph order \[0, 0\] is not a permutation"):
            StageGraph("p", [self._info("a", ()), self._info("b", ())], [0, 0])

    async def test_a_valid_hand_built_graph_runs(self) -> None:
        graph = StageGraph("p", [self._info("a", ()), self._info("b", ("a",))], [0, 1])
        results = await graph.run(make_ctx())
        assert list(results) == ["a", "b"]


# --------------------------------------------------------------------------- stores


class TestStoreTimeout:
    async def test_a_hanging_store_never_hangs_the_run(self, caplog: pytest.LogCaptureFixture) -> None:
        """record_run is bounded by the store's ``record_timeout``: the run returns; the overrun is logged."""
        entered, release = asyncio.Event(), asyncio.Event()

        class Hanging:
            record_timeout = 0.01

            async def record_run(self, record: RunRecord) -> None:
                entered.set()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    await release.wait()  # a store that even ignores its cancellation, until released

            async def get_run(self, run_id: object) -> None:
                return None

            async def list_runs(self, *, pipeline: str | None = None, limit: int = 100) -> list[RunRecord]:
                return []

        graph = Pipeline().with_stage("s", ok_stage(v=1), W).build(run_store=Hanging())
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            results = await no_hang(graph.run(make_ctx()))
        release.set()
        assert entered.is_set()
        assert dict(results["s"].data) == {"v": 1}
        (message,) = [r.getMessage() for r in caplog.records]
        assert "record_run did not finish within 0.01 s" in message

    def test_the_default_bound_is_documented(self) -> None:
        from stageflow._store import RUN_STORE_TIMEOUT

        assert RUN_STORE_TIMEOUT == 1.0
        assert SQLiteRunStore(":memory:").record_timeout == 1.0

    async def test_a_locked_sqlite_file_waits_only_the_store_timeout(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Another connection holding the write lock makes the run go unrecorded after ``timeout``."""
        path = tmp_path / "locked.db"
        store = SQLiteRunStore(path, timeout=0.05)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            graph = Pipeline().with_stage("s", ok_stage(), W).build(run_store=store)
            with caplog.at_level(logging.ERROR, logger="stageflow"):
                results = await no_hang(graph.run(make_ctx()))
            assert results["s"].status is StageStatus.OK
            (message,) = [r.getMessage() for r in caplog.records]
            assert "run store" in message
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        store.close()  # waits for the abandoned write, which gives up after its busy timeout
