"""SKIP semantics: skipped outputs are visible, conditional stages are skipped transitively."""

from __future__ import annotations

import pytest

from stageflow import InMemoryEventSink, Pipeline, StageContext, StageOutput, StageStatus

from ._stages import R, chain
from ._support import StageFn, make_ctx, ok_stage


async def skipper(ctx: StageContext) -> StageOutput:
    return StageOutput.skip("not needed", {"hint": 1})


def observer(seen: dict[str, object], dep: str) -> StageFn:
    """A stage that records what it sees of ``dep``'s output."""

    async def stage(ctx: StageContext) -> StageOutput:
        output = ctx.inputs.get_output(dep)
        assert output is not None
        seen["status"] = output.status
        seen["data"] = dict(output.data)
        seen["missing"] = ctx.inputs.get_from(dep, "value", default="default")
        return StageOutput.ok(ran=True)

    return stage


class TestSkip:
    async def test_dependents_of_a_skipped_stage_run(self) -> None:
        """A non-conditional dependent of a skipped stage runs and sees the skip output."""
        seen: dict[str, object] = {}
        graph = (
            Pipeline()
            .with_stage("a", skipper, R)
            .with_stage("b", observer(seen, "a"), R, dependencies=("a",))
            .build()
        )
        results = await graph.run(make_ctx())
        assert seen == {
            "status": StageStatus.SKIP,
            "data": {"reason": "not needed", "hint": 1},
            "missing": "default",
        }
        assert {n: r.status for n, r in results.items()} == {"a": StageStatus.SKIP, "b": StageStatus.OK}

    async def test_conditional_stage_is_auto_skipped(self, sink: InMemoryEventSink) -> None:
        """A conditional stage with a skipped dependency is skipped unrun, naming that dependency."""
        ran: list[str] = []

        async def never(ctx: StageContext) -> StageOutput:
            ran.append(ctx.stage_name)
            return StageOutput.ok()

        graph = (
            Pipeline()
            .with_stage("x", skipper, R)
            .with_stage("c", never, R, dependencies=("x",), conditional=True)
            .build()
        )
        results = await graph.run(make_ctx(sink=sink))
        assert ran == []
        assert results["c"].status is StageStatus.SKIP
        assert dict(results["c"].data) == {"reason": "dependency 'x' was skipped"}
        assert results["c"].attempts == 0
        assert "stage.c.started" not in sink.types

    async def test_conditional_stage_runs_when_nothing_skipped(self) -> None:
        """A conditional stage whose dependencies all succeeded runs normally."""
        graph = (
            Pipeline()
            .with_stage("x", ok_stage(), R)
            .with_stage("c", ok_stage(v=1), R, dependencies=("x",), conditional=True)
            .build()
        )
        results = await graph.run(make_ctx())
        assert (results["c"].status, dict(results["c"].data)) == (StageStatus.OK, {"v": 1})

    @pytest.mark.parametrize(
        ("first", "second", "dependencies", "reason"),
        [
            (("ok", ok_stage()), ("skipped", skipper), ("ok", "skipped"), "dependency 'skipped' was skipped"),
            (("p", skipper), ("q", skipper), ("q", "p"), "dependency 'q' was skipped"),
        ],
        ids=["any-skipped-dependency-skips", "the-first-declared-is-named"],
    )
    async def test_a_skipped_dependency_skips_and_is_named(
        self,
        first: tuple[str, StageFn],
        second: tuple[str, StageFn],
        dependencies: tuple[str, ...],
        reason: str,
    ) -> None:
        """One skipped dependency among several skips a conditional stage, and the reason names it; with
        several skipped dependencies the reason names the first one declared."""
        graph = (
            Pipeline()
            .with_stage(*first, R)
            .with_stage(*second, R)
            .with_stage("c", ok_stage(), R, dependencies=dependencies, conditional=True)
            .build()
        )
        results = await graph.run(make_ctx())
        assert dict(results["c"].data) == {"reason": reason}

    async def test_skip_propagates_through_conditional_stages_only(self) -> None:
        """Skips propagate transitively through conditional stages and stop at a non-conditional one."""
        stages = [("a", skipper), *((name, ok_stage()) for name in "bcde")]
        graph = chain(*stages, kind=R, conditional={"b", "c", "e"}).build()
        results = await graph.run(make_ctx())
        assert {n: r.status.value for n, r in results.items()} == {
            "a": "skip",
            "b": "skip",
            "c": "skip",
            "d": "ok",
            "e": "ok",
        }
        assert dict(results["c"].data) == {"reason": "dependency 'b' was skipped"}

    async def test_long_conditional_chain(self) -> None:
        """A chain of 3000 conditional stages behind a skipped stage is skipped without recursion."""
        n = 3000
        pipeline = Pipeline().with_stage("s0", skipper, R)
        for i in range(1, n + 1):
            pipeline = pipeline.with_stage(
                f"s{i}", ok_stage(), R, dependencies=(f"s{i - 1}",), conditional=True
            )
        pipeline = pipeline.with_stage("tail", ok_stage(done=True), R, dependencies=(f"s{n}",))
        results = await pipeline.build().run(make_ctx())
        assert len(results) == n + 2
        assert [r.status for r in results.values()].count(StageStatus.SKIP) == n + 1
        assert list(results)[:3] == ["s0", "s1", "s2"]
        assert dict(results[f"s{n}"].data) == {"reason": f"dependency 's{n - 1}' was skipped"}
        assert results["tail"].status is StageStatus.OK
        assert results.critical_path[-1] == "tail"
        assert len(results.critical_path) == n + 2
