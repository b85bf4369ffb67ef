"""The executor: dependency order, maximal parallelism, inputs, run data and isolation between runs."""

from __future__ import annotations

import asyncio

import pytest

from stageflow import (
    InMemoryEventSink,
    Pipeline,
    PipelineFailedError,
    StageContext,
    StageOutput,
    StageStatus,
    UndeclaredDependencyError,
)

from ._stages import T
from ._support import VAR, StageFn, make_ctx, ok_stage, recording_stage, run_fails


async def run_recorded(*stages: tuple[str, int, tuple[str, ...]]) -> tuple[list[str], list[str]]:
    """Run the stages ``(name, yields, dependencies)``, added in this order, each a ``recording_stage``:
    the order they ended in, and the order of the run's results."""
    log: list[str] = []
    pipeline = Pipeline()
    for name, yields, dependencies in stages:
        pipeline = pipeline.with_stage(name, recording_stage(log, name, yields=yields), T, dependencies)
    results = await pipeline.build().run(make_ctx())
    return log, list(results)


class TestOrder:
    async def test_independent_stages_start_in_declaration_order(self) -> None:
        """Stages without dependencies start in the order they were added."""
        log, _ = await run_recorded(("first", 0, ()), ("second", 0, ()), ("third", 0, ()))
        assert log == ["first", "second", "third"]

    async def test_chain_runs_in_dependency_order(self) -> None:
        """Stages of a chain run one after another, whatever order they were added in."""
        log, results = await run_recorded(("tts", 0, ("llm",)), ("llm", 3, ("stt",)), ("stt", 5, ()))
        assert log == ["stt", "llm", "tts"]
        assert results == ["stt", "llm", "tts"]

    async def test_join_waits_for_every_dependency(self) -> None:
        """A stage with several dependencies starts only after the slowest one finished."""
        log, _ = await run_recorded(("fast", 0, ()), ("slow", 10, ()), ("join", 0, ("fast", "slow")))
        assert log == ["fast", "slow", "join"]

    async def test_repeated_dependency_counts_once(self) -> None:
        """A dependency listed twice is waited for once and the stage runs once."""
        log, _ = await run_recorded(("a", 0, ()), ("b", 0, ("a", "a")))
        assert log == ["a", "b"]

    async def test_empty_pipeline(self, sink: InMemoryEventSink) -> None:
        """A pipeline without stages completes with an empty result."""
        results = await Pipeline(name="empty").build().run(make_ctx(sink=sink))
        assert dict(results) == {}
        assert results.critical_path == ()
        assert sink.types == ["pipeline.created", "pipeline.started", "pipeline.completed"]


class TestParallelism:
    async def test_independent_stages_overlap(self) -> None:
        """Two independent stages run at once: each waits for the other to have started."""
        a_started, b_started = asyncio.Event(), asyncio.Event()

        def handshake(mine: asyncio.Event, other: asyncio.Event) -> StageFn:
            async def stage(ctx: StageContext) -> StageOutput:
                mine.set()
                await other.wait()
                return StageOutput.ok()

            return stage

        graph = (
            Pipeline()
            .with_stage("a", handshake(a_started, b_started), T)
            .with_stage("b", handshake(b_started, a_started), T)
            .build()
        )
        async with asyncio.timeout(5):
            results = await graph.run(make_ctx())
        assert [r.status for r in results.values()] == [StageStatus.OK, StageStatus.OK]

    async def test_stage_starts_when_its_own_dependencies_finish(self) -> None:
        """A stage starts as soon as its dependencies finish, while an unrelated stage still runs."""
        c_ran = asyncio.Event()

        async def slow(ctx: StageContext) -> StageOutput:
            await c_ran.wait()  # only finishes once "c" (which depends on "a" only) has run
            return StageOutput.ok()

        async def c(ctx: StageContext) -> StageOutput:
            c_ran.set()
            return StageOutput.ok()

        graph = (
            Pipeline()
            .with_stage("a", ok_stage(), T)
            .with_stage("slow", slow, T)
            .with_stage("c", c, T, dependencies=("a",))
            .with_stage("d", ok_stage(), T, dependencies=("c", "slow"))
            .build()
        )
        async with asyncio.timeout(5):
            results = await graph.run(make_ctx())
        assert list(results) == ["a", "c", "slow", "d"]

    async def test_fan_out_runs_all_children_at_once(self) -> None:
        """All children of one stage run concurrently: none finishes before all have started."""
        names = [f"c{i}" for i in range(20)]
        started: set[str] = set()
        all_started = asyncio.Event()

        async def child(ctx: StageContext) -> StageOutput:
            started.add(ctx.stage_name)
            if len(started) == len(names):
                all_started.set()
            await all_started.wait()
            return StageOutput.ok()

        pipeline = Pipeline().with_stage("root", ok_stage(), T)
        for name in names:
            pipeline = pipeline.with_stage(name, child, T, dependencies=("root",))
        async with asyncio.timeout(5):
            results = await pipeline.build().run(make_ctx())
        assert sorted(results) == sorted([*names, "root"])


class TestInputs:
    async def test_direct_dependencies_only(self) -> None:
        """A stage sees the outputs of its direct dependencies, not of transitive ancestors."""
        seen: dict[str, object] = {}

        async def c(ctx: StageContext) -> StageOutput:
            seen["prior"] = sorted(ctx.inputs.prior_outputs)
            seen["b"] = ctx.inputs.get_from("b", "value")
            seen["get"] = ctx.inputs.get("value")
            seen["has_b"] = ctx.inputs.has_output("b")
            return StageOutput.ok()

        graph = (
            Pipeline()
            .with_stage("a", ok_stage(value="from a", only_a=1), T)
            .with_stage("b", ok_stage(value="from b"), T, dependencies=("a",))
            .with_stage("c", c, T, dependencies=("b",))
            .build()
        )
        await graph.run(make_ctx())
        assert seen == {"prior": ["b"], "b": "from b", "get": "from b", "has_b": True}

    async def test_a_missing_key_without_default_warns_naming_the_keys(self) -> None:
        """``get_from`` of a key the dependency lacks returns ``None`` and warns, naming its keys."""

        async def shout(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(shouted=ctx.inputs.get_from("greet", "greting"))

        graph = (
            Pipeline()
            .with_stage("greet", ok_stage(greeting="hi", name="ann"), T)
            .with_stage("shout", shout, T, dependencies=("greet",))
            .build()
        )
        with pytest.warns(UserWarning) as caught:
            results = await graph.run(make_ctx())
        assert results["shout"].data == {"shouted": None}
        assert [(str(w.message), w.filename) for w in caught] == [
            (
                "stage 'shout' read key 'greting' from stage 'greet', whose output has no such key "
                "(its keys: 'greeting', 'name'); get_from returns None. Did you mean 'greeting'? "
                "Pass default=... if the key is optional",
                __file__,
            )
        ]

    async def test_defaults_and_skipped_dependencies_stay_silent(
        self, recwarn: pytest.WarningsRecorder
    ) -> None:
        """An explicit default (even ``None``) or a skipped dependency gives the default, silently."""
        seen: dict[str, object] = {}

        async def read(ctx: StageContext) -> StageOutput:
            seen["default"] = ctx.inputs.get_from("a", "nope", "d")
            seen["none"] = ctx.inputs.get_from("a", "nope", default=None)
            seen["skipped"] = ctx.inputs.get_from("s", "value")
            seen["present"] = ctx.inputs.get_from("a", "value")
            return StageOutput.ok()

        async def skipped(ctx: StageContext) -> StageOutput:
            return StageOutput.skip("nothing to do")

        graph = (
            Pipeline()
            .with_stage("a", ok_stage(value=1), T)
            .with_stage("s", skipped, T)
            .with_stage("read", read, T, dependencies=("a", "s"))
            .build()
        )
        await graph.run(make_ctx())
        assert (seen, list(recwarn)) == ({"default": "d", "none": None, "skipped": None, "present": 1}, [])

    async def test_reading_an_undeclared_stage_fails(self) -> None:
        """Reading the output of a stage that is not a dependency raises ``UndeclaredDependencyError``."""

        async def c(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(value=ctx.inputs.get_from("a", "value"))

        graph = (
            Pipeline()
            .with_stage("a", ok_stage(value=1), T)
            .with_stage("b", ok_stage(), T, dependencies=("a",))
            .with_stage("c", c, T, dependencies=("b",))
            .build()
        )
        error = (await run_fails(graph.run(make_ctx()))).error
        assert isinstance(error, UndeclaredDependencyError)
        assert str(error) == (
            "stage 'c' read the output of 'a', which is not among its dependencies ('b'); "
            "add 'a' to its dependencies"
        )
        assert (error.stage, error.wanted) == ("c", "a")

    @pytest.mark.parametrize("method", ["get_from", "require_from", "has_output", "get_output"])
    async def test_every_accessor_checks_declared(self, method: str) -> None:
        """Every named accessor of ``StageInputs`` rejects an undeclared stage."""

        async def b(ctx: StageContext) -> StageOutput:
            accessor = getattr(ctx.inputs, method)
            if method in ("get_from", "require_from"):
                accessor("elsewhere", "k")
            else:
                accessor("elsewhere")
            return StageOutput.ok()

        graph = Pipeline().with_stage("elsewhere", ok_stage(k=1), T).with_stage("b", b, T).build()
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        assert type(info.value.error) is UndeclaredDependencyError

    async def test_require_from_missing_key(self) -> None:
        """``require_from`` of a missing key fails the stage with a ``KeyError`` listing the keys."""

        async def b(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(v=ctx.inputs.require_from("a", "nope"))

        graph = (
            Pipeline()
            .with_stage("a", ok_stage(x=1, y=2), T)
            .with_stage("b", b, T, dependencies=("a",))
            .build()
        )
        with pytest.raises(PipelineFailedError) as info:
            await graph.run(make_ctx())
        assert type(info.value.error) is KeyError
        assert info.value.error.args == ("stage 'a' produced no key 'nope'; its keys: 'x', 'y'",)

    async def test_snapshot_is_shared(self) -> None:
        """Every stage sees the run's snapshot, and its own name, info and first attempt."""
        seen: list[tuple[str | None, str, str | None, int, bool]] = []

        async def stage(ctx: StageContext) -> StageOutput:
            assert ctx.stage is not None and ctx.pipeline is not None
            seen.append(
                (
                    ctx.snapshot.input_text,
                    ctx.stage_name,
                    ctx.stage.name,
                    ctx.attempt,
                    ctx.pipeline.run_id == ctx.pipeline_run_id,
                )
            )
            return StageOutput.ok()

        graph = Pipeline().with_stage("a", stage, T).with_stage("b", stage, T, dependencies=("a",)).build()
        await graph.run(make_ctx(text="hi"))
        assert seen == [("hi", "a", "a", 1, True), ("hi", "b", "b", 1, True)]


class TestRunData:
    async def test_seeded_from_entry_context(self) -> None:
        """``ctx.data`` starts as a copy of the entry context's ``data`` and is shared by the run's stages."""
        seen: list[dict[str, object]] = []

        async def first(ctx: StageContext) -> StageOutput:
            seen.append(dict(ctx.data))
            ctx.data["first"] = True
            return StageOutput.ok()

        async def second(ctx: StageContext) -> StageOutput:
            seen.append(dict(ctx.data))
            return StageOutput.ok()

        graph = (
            Pipeline()
            .with_stage("first", first, T)
            .with_stage("second", second, T, dependencies=("first",))
            .build()
        )
        seed = {"user": "ada"}
        entry = make_ctx(data=seed)
        await graph.run(entry)
        await graph.run(entry)
        assert seen == [{"user": "ada"}, {"user": "ada", "first": True}] * 2
        assert seed == {"user": "ada"}
        assert entry.data == {"user": "ada"}


class TestConcurrentRuns:
    async def test_one_graph_many_concurrent_runs(self) -> None:
        """One graph runs many overlapping runs, each with its own inputs, data and results."""
        runs = 50
        arrived = 0
        everyone_in = asyncio.Event()

        async def echo(ctx: StageContext) -> StageOutput:
            nonlocal arrived
            ctx.data["mine"] = ctx.snapshot.input_text
            arrived += 1
            if arrived == runs:
                everyone_in.set()
            await everyone_in.wait()  # every run is inside this stage at the same time
            return StageOutput.ok(text=ctx.snapshot.input_text, seen=dict(ctx.data))

        async def shout(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(text=str(ctx.inputs.require_from("echo", "text")).upper())

        graph = (
            Pipeline()
            .with_stage("echo", echo, T)
            .with_stage("shout", shout, T, dependencies=("echo",))
            .build()
        )
        ctxs = [make_ctx(text=f"run{i}", data={"i": i}) for i in range(runs)]
        async with asyncio.timeout(5):
            all_results = await asyncio.gather(*(graph.run(c) for c in ctxs))
        assert [r["shout"].data["text"] for r in all_results] == [f"RUN{i}" for i in range(runs)]
        assert [dict(r["echo"].data["seen"]) for r in all_results] == [
            {"i": i, "mine": f"run{i}"} for i in range(runs)
        ]
        assert [r.run_id for r in all_results] == [c.snapshot.run_id.pipeline_run_id for c in ctxs]
        assert len({r.run_id for r in all_results}) == runs


def setting_var(value: str, done: asyncio.Event, release: asyncio.Event | None = None) -> StageFn:
    """A stage that sets ``VAR`` to ``value``, then sets ``done``; given ``release``, it waits for that before
    it ends."""

    async def stage(ctx: StageContext) -> StageOutput:
        VAR.set(value)
        done.set()
        if release is not None:
            await release.wait()
        return StageOutput.ok()

    return stage


async def seen_by_b(dependencies: tuple[str, ...]) -> list[str]:
    """Run stage ``a``, which sets ``VAR``, and stage ``b`` (with ``dependencies``), which reads it once ``a``
    has set it: the values ``b`` read."""
    a_set = asyncio.Event()
    seen: list[str] = []

    async def b(ctx: StageContext) -> StageOutput:
        await a_set.wait()
        seen.append(VAR.get())
        return StageOutput.ok()

    graph = Pipeline().with_stage("a", setting_var("a", a_set), T).with_stage("b", b, T, dependencies).build()
    async with asyncio.timeout(5):
        await graph.run(make_ctx())
    return seen


class TestContextVars:
    async def test_parallel_stages_do_not_share_contextvars(self) -> None:
        """A contextvar set by one stage is invisible to a stage running in parallel."""
        assert await seen_by_b(()) == ["unset"]

    async def test_dependent_does_not_inherit_the_finishing_stages_context(self) -> None:
        """A stage started when a dependency finished does not see contextvars that dependency set."""
        assert await seen_by_b(("a",)) == ["unset"]

    async def test_stage_started_after_a_sibling_set_a_var(self) -> None:
        """A stage whose task starts after a running sibling set a contextvar does not see it."""
        sibling_set = asyncio.Event()
        release = asyncio.Event()
        seen: list[str] = []

        async def gate(ctx: StageContext) -> StageOutput:
            await sibling_set.wait()
            return StageOutput.ok()

        async def late(ctx: StageContext) -> StageOutput:
            seen.append(VAR.get())
            release.set()
            return StageOutput.ok()

        graph = (
            Pipeline()
            .with_stage("sibling", setting_var("sibling", sibling_set, release), T)
            .with_stage("gate", gate, T)
            .with_stage("late", late, T, dependencies=("gate",))
            .build()
        )
        async with asyncio.timeout(5):
            await graph.run(make_ctx())
        assert seen == ["unset"]

    async def test_caller_context_is_visible(self) -> None:
        """Stages see contextvars the caller of ``run()`` set, and cannot change the caller's values."""
        seen: list[str] = []

        async def a(ctx: StageContext) -> StageOutput:
            seen.append(VAR.get())
            VAR.set("changed")
            return StageOutput.ok()

        token = VAR.set("caller")
        try:
            await Pipeline().with_stage("a", a, T).build().run(make_ctx())
            assert (seen, VAR.get()) == (["caller"], "caller")
        finally:
            VAR.reset(token)
