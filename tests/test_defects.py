"""Regression tests for defects found by review and fault probes: leaks, wrong answers, definition gaps.

It runs past 500 lines because each defect keeps its own regression test, grouped by what it pins.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import sqlite3
import weakref
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from stageflow import (
    CycleError,
    InMemoryEventSink,
    InvalidRunnerError,
    Pipeline,
    PipelineContext,
    PipelineDefinitionError,
    PipelineFailedError,
    RetriesExhaustedError,
    RetryPolicy,
    SQLiteRunStore,
    StageContext,
    StageInfo,
    StageInputs,
    StageKind,
    StageOutput,
    StageResult,
    StageSpec,
    StageStatus,
    StageTimeoutError,
    UndeclaredDependencyError,
)
from stageflow._dag import _new_info, _new_spec
from stageflow._store import SCHEMA_VERSION
from stageflow.interceptors import (
    BaseInterceptor,
    CallNext,
    ErrorAction,
    Interceptor,
    RetryInterceptor,
    TimeoutInterceptor,
)

from ._support import FakeSleep, make_ctx, ok_stage

W = StageKind.WORK


# --------------------------------------------------------------------------- leaks and wrong answers


class TestTimeoutInterceptorKeepsNothingAlive:
    async def test_a_dropped_graph_frees_its_stages_and_cache_entries(self) -> None:
        """Building a graph per request with one TimeoutInterceptor keeps no stage alive."""
        interceptor = TimeoutInterceptor(5.0)

        class Work:
            async def execute(self, ctx: StageContext) -> StageOutput:
                return StageOutput.ok()

        refs = []
        for _ in range(3):
            graph = Pipeline().with_stage("w", Work, W).build([interceptor])
            await graph.run(make_ctx())
            refs.append(weakref.ref(graph.stages[0].runner))
            del graph
        gc.collect()
        assert [r() for r in refs] == [None, None, None]
        assert interceptor._resolved == {}


class FlakyDown:
    """Raises ConnectionError("down") until attempt ``ok_at`` (never, by default)."""

    def __init__(self, ok_at: int = 0) -> None:
        self.ok_at = ok_at
        self.seen: list[int] = []

    async def execute(self, ctx: StageContext) -> StageOutput:
        self.seen.append(ctx.attempt)
        if ctx.attempt != self.ok_at:
            raise ConnectionError("down")
        return StageOutput.ok(attempt=ctx.attempt)


def _policy(sleep: FakeSleep) -> RetryPolicy:
    return RetryPolicy(max_attempts=3, initial_delay=0.1, multiplier=2, jitter=0, sleep=sleep)


def _graph(path: str, stage: FlakyDown, sleep: FakeSleep) -> Any:
    policy = _policy(sleep)
    if path == "with_stage":
        return Pipeline(name="p").with_stage("a", stage, W, retry=policy).build()
    if path == "RetryInterceptor":
        return Pipeline(name="p").with_stage("a", stage, W).build([RetryInterceptor(policy)])

    class Retrying(BaseInterceptor):
        retry_policy = policy

        async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
            return ErrorAction.RETRY

    return Pipeline(name="p").with_stage("a", stage, W).build([Retrying()])


PATHS = ["with_stage", "RetryInterceptor", "ErrorAction.RETRY"]


class TestRetryMechanismsAgree:
    @pytest.mark.parametrize("path", PATHS)
    async def test_attempts_events_and_result(self, path: str) -> None:
        """Every path: ctx.attempt 1..3, attempts=3, the same two stage.a.retrying events."""
        sleep, sink, stage = FakeSleep(), InMemoryEventSink(), FlakyDown(ok_at=3)
        results = await _graph(path, stage, sleep).run(make_ctx(sink=sink))
        assert stage.seen == [1, 2, 3]
        assert (results["a"].attempts, dict(results["a"].data)) == (3, {"attempt": 3})
        assert sleep.delays == [0.1, 0.2]
        retrying = [
            {k: v for k, v in e.data.items() if k not in ("run_id", "timestamp")}
            for e in sink.of_type("stage.a.retrying")
        ]
        assert retrying == [
            {
                "pipeline": "p",
                "stage": "a",
                "kind": "work",
                "attempt": n,
                "delay": delay,
                "error": "down",
                "error_type": "ConnectionError",
            }
            for n, delay in ((1, 0.1), (2, 0.2))
        ]
        assert sink.of_type("stage.a.completed")[0].data["attempts"] == 3

    @pytest.mark.parametrize("path", PATHS)
    async def test_the_exhausted_error(self, path: str) -> None:
        """Every path fails a stage that always raised with RetriesExhaustedError after 3 attempts."""
        sleep, stage = FakeSleep(), FlakyDown()
        with pytest.raises(PipelineFailedError) as info:
            await _graph(path, stage, sleep).run(make_ctx())
        error = info.value.error
        assert type(error) is RetriesExhaustedError
        assert str(error) == (
            "stage 'a' failed after 3 attempts (last: ConnectionError: down); "
            "raise RetryPolicy.max_attempts or fix the cause"
        )
        assert (type(error.__cause__), error.attempts, info.value.results["a"].attempts) == (
            ConnectionError,
            3,
            3,
        )
        assert stage.seen == [1, 2, 3]


class TestRetryPolicy:
    def test_retry_on_a_single_class_retries_only_that_class(self) -> None:
        """retry_on=ValueError is the tuple (ValueError,), not a predicate that accepts everything."""
        policy = RetryPolicy(retry_on=ValueError)
        assert policy.retry_on == (ValueError,)
        assert (policy.should_retry(ValueError()), policy.should_retry(KeyError())) == (True, False)

    def test_retry_on_that_is_neither_classes_nor_a_predicate_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"retry_on=\(<class 'ValueError'>, 'x'\)"):
            RetryPolicy(retry_on=(ValueError, "x"))  # type: ignore[arg-type]

    @pytest.mark.parametrize("attempt", [1025, 10**6])
    def test_backoff_never_overflows(self, attempt: int) -> None:
        """Past float range the delay is max_delay."""
        assert RetryPolicy(initial_delay=0.1, max_delay=5.0, jitter=0).delay(attempt) == 5.0


class TestSwallowedTimeout:
    async def test_a_stage_that_swallows_its_cancellation_still_times_out(self) -> None:
        """Catching the deadline's CancelledError and returning ok does not make the attempt OK."""

        async def stubborn(ctx: StageContext) -> StageOutput:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return StageOutput.ok(late=True)
            raise AssertionError("unreachable")

        graph = Pipeline().with_stage("s", stubborn, W).build([TimeoutInterceptor(0.01)])
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        assert type(info.value.error) is StageTimeoutError
        assert str(info.value.error) == "stage 's' timed out after 0.01 s"


class TestInputs:
    async def test_entry_context_ports_reach_every_stage(self) -> None:
        ports = object()
        seen: list[object] = []

        async def stage(ctx: StageContext) -> StageOutput:
            seen.append(ctx.inputs.ports)
            return StageOutput.ok()

        entry = make_ctx()
        entry.inputs = StageInputs(snapshot=entry.snapshot, ports=ports)
        graph = Pipeline().with_stage("a", stage, W).with_stage("b", stage, W, dependencies=("a",)).build()
        await graph.run(entry)
        assert seen == [ports, ports]

    def test_a_hand_built_strict_inputs_checks_declared_dependencies(self) -> None:
        """An output present but not declared is refused, as the docstring says."""
        snapshot = make_ctx().snapshot
        inputs = StageInputs(
            snapshot,
            prior_outputs={"a": StageOutput.ok(k=1), "b": StageOutput.ok(k=2)},
            declared_deps=("a",),
            stage_name="s",
        )
        assert inputs.get_from("a", "k") == 1
        with pytest.raises(UndeclaredDependencyError, match=r"^stage 's' read the output of 'b'"):
            inputs.get_from("b", "k")


class TestRunIds:
    async def test_a_reused_entry_context_gives_each_run_its_own_id(self) -> None:
        """The first run takes the snapshot's id; the next one gets a fresh id, in results and events."""
        sink = InMemoryEventSink()
        ctx = make_ctx(sink=sink)
        graph = Pipeline().with_stage("a", ok_stage(), W).build()
        first, second = await graph.run(ctx), await graph.run(ctx)
        assert first.run_id == ctx.snapshot.pipeline_run_id
        assert second.run_id != first.run_id
        assert [e.data["run_id"] for e in sink.of_type("pipeline.completed")] == [
            str(first.run_id),
            str(second.run_id),
        ]

    async def test_a_fresh_run_id_keeps_the_rest_of_the_snapshot(self) -> None:
        ctx = make_ctx(text="hello")
        seen: list[tuple[object, object]] = []

        async def stage(c: StageContext) -> StageOutput:
            seen.append((c.snapshot.input_text, c.pipeline_run_id))
            return StageOutput.ok()

        graph = Pipeline().with_stage("a", stage, W).build()
        await graph.run(ctx)
        second = await graph.run(ctx)
        assert seen[1] == ("hello", second.run_id)


class TestUnenforcedTimeout:
    async def test_config_timeout_without_a_timeout_interceptor_warns_once(self) -> None:
        """The first run warns; later runs and building (say, to draw the graph) do not."""
        graph = (
            Pipeline(name="p")
            .with_stage("slow", ok_stage(), W, config={"timeout": 2.0})
            .with_stage("llm", ok_stage(), W, config={"timeout": 9})
            .build()
        )
        with pytest.warns(UserWarning) as record:
            await graph.run(make_ctx())
        assert [str(w.message) for w in record] == [
            "pipeline 'p' runs without a TimeoutInterceptor, so nothing enforces the timeout "
            "(config['timeout'] or a timeout attribute) of stages 'slow', 'llm'; add TimeoutInterceptor() "
            "to build(interceptors=[...]), or pass with_stage(..., timeout=seconds)"
        ]
        await graph.run(make_ctx())  # filterwarnings = error: a second warning would fail this

    async def test_with_a_timeout_interceptor_it_does_not(self) -> None:
        pipeline = Pipeline(name="p").with_stage("slow", ok_stage(), W, config={"timeout": 2.0})
        await pipeline.build([TimeoutInterceptor()]).run(make_ctx())


# --------------------------------------------------------------------------- SQLite store


def _open_store(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        SQLiteRunStore(path).close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(repr(exc))


class TestSQLiteStore:
    def test_processes_opening_a_fresh_file_at_once_all_succeed(self, tmp_path: Path) -> None:
        """Four processes construct a store on one new file at the same moment: none fails."""
        path = str(tmp_path / "shared.db")
        mp = multiprocessing.get_context("spawn")
        barrier, results = mp.Barrier(4), mp.Queue()
        procs = [mp.Process(target=_open_store, args=(path, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert sorted(results.get(timeout=5) for _ in procs) == ["ok"] * 4
        store = SQLiteRunStore(path)
        assert store.schema_version == SCHEMA_VERSION
        store.close()

    def test_another_process_creating_the_schema_meanwhile_is_no_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The race, made deterministic: the moment the constructor begins its schema transaction,
        another connection creates the whole schema first; the constructor then finds it made."""
        path = str(tmp_path / "raced.db")
        real_connect = sqlite3.connect
        raced: list[str] = []

        def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn: sqlite3.Connection = real_connect(*args, **kwargs)
            if not raced:
                raced.append("armed")

                def on_statement(statement: str) -> None:
                    if statement.startswith("BEGIN") and raced == ["armed"]:
                        raced.append("other store created the schema")
                        SQLiteRunStore(path).close()  # "another process", in between

                conn.set_trace_callback(on_statement)
            return conn

        monkeypatch.setattr(sqlite3, "connect", connect)
        store = SQLiteRunStore(path)
        monkeypatch.undo()
        assert raced == ["armed", "other store created the schema"]
        assert store.schema_version == SCHEMA_VERSION
        store.close()

    def test_a_corrupt_file_is_refused_naming_the_path_and_fix(self, tmp_path: Path) -> None:
        path = tmp_path / "corrupt.db"
        path.write_bytes(b"definitely not sqlite" * 100)
        with pytest.raises(RuntimeError) as info:
            SQLiteRunStore(path)
        assert str(info.value) == (
            f"run store {str(path)!r} is not a stageflow run store: it is not a readable SQLite database "
            "(file is not a database); pass the path of a new file (or of one an earlier SQLiteRunStore "
            "created), or move this file away"
        )

    @pytest.mark.parametrize(
        ("version", "problem"),
        [
            (1, "its schema version is 1 and it holds tables ['accounts']"),
            (-1, "its schema version is -1 and it holds tables ['accounts']"),
            (0, "its schema version is 0 and it holds tables ['accounts']"),
            (2, "its schema version is 2 and it holds tables ['accounts']"),
        ],
    )
    def test_a_foreign_database_is_refused(self, tmp_path: Path, version: int, problem: str) -> None:
        path = tmp_path / "foreign.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE accounts (id INTEGER)")
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
        conn.close()
        with pytest.raises(RuntimeError) as info:
            SQLiteRunStore(path)
        assert str(info.value) == (
            f"run store {str(path)!r} is not a stageflow run store: {problem}; pass the path of a new file "
            "(or of one an earlier SQLiteRunStore created), or move this file away"
        )


# --------------------------------------------------------------------------- definition-time gaps


class TestDefinitionErrors:
    def test_a_stage_init_raising_names_the_stage(self) -> None:
        class Needy:
            def __init__(self) -> None:
                raise RuntimeError("no API key")

            async def execute(self, ctx: StageContext) -> StageOutput:
                return StageOutput.ok()  # pragma: no cover - never built

        with pytest.raises(InvalidRunnerError) as info:
            Pipeline().with_stage("llm", Needy, W).build()
        assert str(info.value).startswith(
            "stage 'llm' has invalid runner <class 'tests.test_defects.TestDefinitionErrors."
            "test_a_stage_init_raising_names_the_stage.<locals>.Needy'>: Needy(**{}) raised RuntimeError: "
            "no API key; "
        )
        assert type(info.value.__cause__) is RuntimeError

    def test_an_async_generator_is_a_streaming_stage(self) -> None:
        async def streaming(ctx: StageContext) -> Any:
            yield "chunk"

        graph = Pipeline().with_stage("s", streaming, W).build()
        assert graph.stage("s").streaming is not None

    def test_bytes_dependencies_are_refused(self) -> None:
        with pytest.raises(PipelineDefinitionError) as info:
            Pipeline().with_stage("s", ok_stage(), W, dependencies=b"a")  # type: ignore[arg-type]
        assert str(info.value) == (
            "stage 's' has dependencies=b'a'; pass a sequence of stage names, e.g. dependencies=(b'a',)"
        )

    def test_build_with_interceptors_none_means_none(self) -> None:
        graph = Pipeline().with_stage("s", ok_stage(), W).build(interceptors=None)
        assert graph.interceptors == ()

    def test_build_with_one_interceptor_not_in_a_list_says_so(self) -> None:
        one = Interceptor()
        with pytest.raises(
            TypeError, match=r"takes an iterable of interceptors, e\.g\. build\(interceptors=\["
        ):
            Pipeline().with_stage("s", ok_stage(), W).build(interceptors=one)  # type: ignore[arg-type]

    @pytest.mark.parametrize("value", ["no", 1, None])
    def test_conditional_must_be_a_bool(self, value: object) -> None:
        with pytest.raises(PipelineDefinitionError) as info:
            Pipeline().with_stage("s", ok_stage(), W, conditional=value)  # type: ignore[arg-type]
        assert str(info.value) == f"stage 's' has conditional={value!r}; pass True or False"

    def test_a_huge_cycle_has_a_bounded_message(self) -> None:
        """A 50,000-stage cycle: the message shows 20 names, the error keeps the whole path."""
        n = 50_000
        pipeline = Pipeline()
        for i in range(n):
            pipeline = pipeline.with_stage(f"s{i}", ok_stage(), W, dependencies=(f"s{(i + 1) % n}",))
        with pytest.raises(CycleError) as info:
            pipeline.build()
        assert len(info.value.cycle) == n + 1
        message = str(info.value)
        assert len(message) < 400
        assert f"... ({n + 1 - 20} more) -> " in message


# --------------------------------------------------------------------------- fast paths


def _slots(cls: type) -> list[str]:
    return [s for c in cls.__mro__ for s in getattr(c, "__slots__", ()) if s != "__weakref__"]


def _state(obj: object) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in _slots(type(obj))}


class TestFastPathsMatchTheirConstructors:
    """Values built without ``__init__`` for speed have every slot ``__init__`` would set, equal."""

    def test_stage_output_ok(self) -> None:
        fast = StageOutput.ok({"a": 1}, b=2, version="v1")
        built = StageOutput(StageStatus.OK, {"a": 1, "b": 2}, version="v1")
        assert _state(fast) == _state(built)
        assert fast == built

    def test_stage_spec_and_stage_info(self) -> None:
        retry = RetryPolicy()
        spec_args: tuple[Any, ...] = ("s", ok_stage, W, ("a",), True, {"k": 1}, retry)
        assert _state(_new_spec(*spec_args)) == _state(StageSpec(*spec_args))
        assert [f.name for f in fields(StageSpec)] == _slots(StageSpec)
        info_args: tuple[Any, ...] = ("s", W, ("a",), True, {"k": 1}, ok_stage, "p", retry)
        assert _state(_new_info(*info_args)) == _state(StageInfo(*info_args))
        assert [f.name for f in fields(StageInfo)] == _slots(StageInfo)

    async def test_the_isolation_guard(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The guard each isolated layer makes per call sets what ``_Guard.__init__`` sets."""
        from stageflow import _interceptors

        made: list[object] = []
        real_new = _interceptors._new

        def spy(cls: type) -> object:
            obj: object = real_new(cls)
            if cls is _interceptors._Guard:
                made.append(obj)
            return obj

        class Pass(Interceptor):
            async def intercept_stage(
                self, stage: StageInfo, ctx: StageContext, call_next: CallNext
            ) -> StageOutput:
                return await call_next(ctx)

        graph = Pipeline().with_stage("s", ok_stage(), W).build([Pass()])
        monkeypatch.setattr(_interceptors, "_new", spy)
        await graph.run(make_ctx())
        monkeypatch.undo()
        (fast,) = made
        by_init = _interceptors._Guard(fast._inner)  # type: ignore[attr-defined]

        def set_slots(obj: object) -> dict[str, object]:
            return {s: getattr(obj, s) for s in _slots(type(obj)) if hasattr(obj, s) and s != "value"}

        assert set(set_slots(by_init)) == {"_inner", "state"} == set(set_slots(fast))
        assert not hasattr(by_init, "value")

    async def test_the_executors_stage_result_context_and_inputs(self) -> None:
        """The OK StageResult, the stage's StageContext and StageInputs: every slot set, as __init__ does."""
        seen: list[StageContext] = []

        async def stage(ctx: StageContext) -> StageOutput:
            seen.append(ctx)
            return StageOutput.ok(x=1)

        results = await Pipeline().with_stage("s", stage, W).build().run(make_ctx())
        r = results["s"]
        built = StageResult(
            r.name, r.kind, r.status, r.output, r.error, r.ready_at, r.started_at, r.ended_at, r.attempts
        )
        assert _state(r) == _state(built)
        (ctx,) = seen
        assert set(_state(ctx)) == set(_slots(StageContext))  # every slot set (getattr raised otherwise)
        by_init = StageContext(ctx.snapshot, ctx.inputs, ctx.stage_name, ctx.timer, ctx.event_sink)
        assert set(_state(by_init)) == set(_state(ctx))
        inputs = ctx.inputs
        made = StageInputs(inputs.snapshot, {}, inputs.ports, inputs.declared_deps, inputs.stage_name)
        assert set(_state(inputs)) == set(_state(made))
