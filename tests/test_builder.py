"""The fluent builder: immutability, composition, validation errors and the Mermaid rendering.

It runs past 500 lines because each builder rule has its error message pinned, case by case.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

import pytest

from stageflow import (
    CycleError,
    DuplicateStageError,
    InvalidRunnerError,
    InvalidStageKindError,
    InvalidStageNameError,
    Pipeline,
    PipelineDefinitionError,
    RetryPolicy,
    SelfDependencyError,
    StageContext,
    StageInfo,
    StageKind,
    StageOutput,
    StageSpec,
    UnknownDependencyError,
)
from stageflow.interceptors import Interceptor

from ._support import exact, make_ctx, ok_stage

T = StageKind.TRANSFORM


class Greeter:
    """A stage class that takes its greeting from its config."""

    instances = 0

    def __init__(self, greeting: str = "hi") -> None:
        type(self).instances += 1
        self.greeting = greeting

    async def execute(self, ctx: StageContext) -> StageOutput:
        return StageOutput.ok(greeting=self.greeting)


def generator_fn(ctx: StageContext) -> Any:
    yield StageOutput.ok()


class GeneratorExecute:
    def execute(self, ctx: StageContext) -> Any:
        yield StageOutput.ok()


class NoExecute:
    """A class without ``execute``."""


class SyncExecute:
    """A class whose ``execute`` is not async."""

    def execute(self, ctx: StageContext) -> StageOutput:
        return StageOutput.ok()


def sync_fn(ctx: StageContext) -> StageOutput:
    return StageOutput.ok()


class TestImmutability:
    def test_attributes_cannot_be_changed(self) -> None:
        """A pipeline's name and stages cannot be reassigned or deleted."""
        pipeline = Pipeline(name="voice")
        with pytest.raises(AttributeError) as info:
            pipeline.name = "other"
        assert str(info.value) == (
            "Pipeline is immutable (cannot set 'name'); with_stage() and compose() return new ones"
        )
        with pytest.raises(AttributeError, match=r"Pipeline is immutable \(cannot delete '_last'\)"):
            del pipeline._last
        assert pipeline.name == "voice"

    def test_with_stage_returns_a_new_pipeline(self) -> None:
        """``with_stage`` leaves the original pipeline untouched and returns a new one."""
        empty = Pipeline(name="p")
        one = empty.with_stage("a", ok_stage(), T)
        two = one.with_stage("b", ok_stage(), T, dependencies=("a",))
        assert (len(empty), len(one), len(two)) == (0, 1, 2)
        assert list(one.stages) == ["a"]
        assert list(two.stages) == ["a", "b"]
        assert dict(empty.stages) == {}
        assert two.name == "p"

    def test_branching_from_one_pipeline(self) -> None:
        """Two pipelines extended from one base do not see each other's stages."""
        base = Pipeline().with_stage("a", ok_stage(), T)
        left = base.with_stage("left", ok_stage(), T)
        right = base.with_stage("right", ok_stage(), T)
        assert list(left.stages) == ["a", "left"]
        assert list(right.stages) == ["a", "right"]

    def test_with_stage_shares_the_existing_stages(self) -> None:
        """``with_stage`` is O(1): the new pipeline links to the old stages instead of copying them."""
        one = Pipeline().with_stage("a", ok_stage(), T)
        two = one.with_stage("b", ok_stage(), T)
        assert two._last is not None
        assert two._last.prev is one._last

    def test_stage_spec_is_frozen(self) -> None:
        """A ``StageSpec`` cannot be changed after ``with_stage``."""
        spec = Pipeline().with_stage("a", ok_stage(), T).stages["a"]
        with pytest.raises(AttributeError):
            spec.name = "b"  # type: ignore[misc]

    def test_spec_records_the_call(self) -> None:
        """A ``StageSpec`` holds exactly what ``with_stage`` was given."""
        runner = ok_stage()
        policy = RetryPolicy(max_attempts=2)
        kind: Any = "enrich"
        pipeline = Pipeline().with_stage(
            "a", runner, kind, dependencies=["x"], conditional=True, config={"k": 1}, retry=policy
        )
        spec = pipeline.stages["a"]
        assert spec == StageSpec("a", runner, StageKind.ENRICH, ("x",), True, {"k": 1}, policy)

    def test_built_config_is_read_only(self) -> None:
        """``StageInfo.config`` is a read-only view of the stage's config."""
        graph = Pipeline().with_stage("a", Greeter, T, config={"greeting": "yo"}).build()
        config = graph.stage("a").config
        assert isinstance(config, MappingProxyType)
        assert dict(config) == {"greeting": "yo"}

    def test_repr(self) -> None:
        """``repr`` names the pipeline and its stages."""
        pipeline = Pipeline(name="p").with_stage("a", ok_stage(), T).with_stage("b", ok_stage(), T)
        assert repr(pipeline) == "Pipeline(name='p', stages=['a', 'b'])"
        assert repr(pipeline.build()) == "StageGraph(name='p', stages=2)"


class TestCompose:
    def test_concatenates_stages(self) -> None:
        """``compose`` returns a new pipeline with this pipeline's stages, then the other's."""
        core = Pipeline(name="core").with_stage("llm", ok_stage(), T)
        tts = Pipeline(name="other").with_stage("tts", ok_stage(), T, dependencies=("llm",))
        voice = core.compose(tts)
        assert list(voice.stages) == ["llm", "tts"]
        assert voice.name == "core"
        assert list(core.stages) == ["llm"]
        assert list(tts.stages) == ["tts"]

    async def test_composed_pipeline_runs(self) -> None:
        """A composed pipeline resolves dependencies across the two halves."""
        core = Pipeline().with_stage("llm", ok_stage(reply="r"), T)

        async def tts(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(audio=ctx.inputs.require_from("llm", "reply") * 2)

        voice = core.compose(Pipeline().with_stage("tts", tts, T, dependencies=("llm",)))
        results = await voice.build().run(make_ctx())
        assert dict(results["tts"].data) == {"audio": "rr"}

    def test_duplicate_across_pipelines(self) -> None:
        """Composing two pipelines that both define a stage raises ``DuplicateStageError`` at once."""
        a = Pipeline().with_stage("llm", ok_stage(), T)
        with pytest.raises(
            DuplicateStageError,
            match=exact(
                "duplicate stage name 'llm': both composed pipelines define a stage called 'llm'; "
                "stage names must be unique, so rename one of them"
            ),
        ) as info:
            a.compose(Pipeline().with_stage("llm", ok_stage(), T))
        assert info.value.stage == "llm"

    def test_not_a_pipeline(self) -> None:
        """``compose`` with something other than a ``Pipeline`` raises ``TypeError``."""
        with pytest.raises(TypeError, match=exact("compose() takes a Pipeline, got 42")):
            Pipeline().compose(42)  # type: ignore[arg-type]


class TestRunners:
    async def test_runner_forms(self) -> None:
        """A stage class, an object with ``execute`` and an async function all run."""

        class Obj:
            async def execute(self, ctx: StageContext) -> StageOutput:
                return StageOutput.ok(form="object")

        graph = (
            Pipeline()
            .with_stage("cls", Greeter, T, config={"greeting": "class"})
            .with_stage("obj", Obj(), T)
            .with_stage("fn", ok_stage(form="function"), T)
            .build()
        )
        results = await graph.run(make_ctx())
        assert {name: dict(r.data) for name, r in results.items()} == {
            "cls": {"greeting": "class"},
            "obj": {"form": "object"},
            "fn": {"form": "function"},
        }

    async def test_stage_class_instantiated_once_at_build(self) -> None:
        """A stage class is instantiated once, at ``build()``, not per run."""
        Greeter.instances = 0
        graph = Pipeline().with_stage("g", Greeter, T).build()
        assert Greeter.instances == 1
        await graph.run(make_ctx())
        await graph.run(make_ctx())
        assert Greeter.instances == 1
        assert isinstance(graph.stage("g").runner, Greeter)

    def test_kind_given_as_string(self) -> None:
        """A kind given as its string value is converted to the ``StageKind``."""
        spec = Pipeline().with_stage("a", ok_stage(), "guard").stages["a"]  # type: ignore[arg-type]
        assert spec.kind is StageKind.GUARD

    def test_stage_info(self) -> None:
        """``graph.stage(name)`` returns the built ``StageInfo``."""
        runner = ok_stage()
        graph = (
            Pipeline(name="p")
            .with_stage("a", runner, T)
            .with_stage("b", runner, StageKind.WORK, dependencies=("a",), conditional=True)
            .build()
        )
        assert graph.stage("b") == StageInfo("b", StageKind.WORK, ("a",), True, {}, runner, "p", None)

    def test_unknown_stage_lookup(self) -> None:
        """``graph.stage`` of an unknown name raises ``KeyError`` naming the stage and pipeline."""
        graph = Pipeline(name="p").build()
        with pytest.raises(KeyError) as info:
            graph.stage("x")
        assert info.value.args == ("no stage 'x' in pipeline 'p'",)


class TestGraphProperties:
    def test_topological_order(self) -> None:
        """``topological_order`` lists every stage after all of its dependencies."""
        graph = (
            Pipeline()
            .with_stage("d", ok_stage(), T, dependencies=("b", "c"))
            .with_stage("c", ok_stage(), T, dependencies=("a",))
            .with_stage("b", ok_stage(), T, dependencies=("a",))
            .with_stage("a", ok_stage(), T)
            .build()
        )
        order = graph.topological_order
        assert sorted(order) == ["a", "b", "c", "d"]
        assert order[0] == "a"
        assert order[-1] == "d"

    def test_version_depends_on_topology_only(self) -> None:
        """``version`` is equal for equal topologies and differs when a dependency changes."""

        def build(deps: tuple[str, ...], order: str = "ab") -> str:
            pipeline = Pipeline()
            for name in order:
                pipeline = pipeline.with_stage(name, ok_stage(), T, dependencies=deps if name == "b" else ())
            return pipeline.build().version

        assert build(("a",)) == build(("a",), order="ba")
        assert build(("a",)) != build(())
        assert re.fullmatch("[0-9a-f]{12}", build(()))


class TestDefinitionErrors:
    @pytest.mark.parametrize("name", ["", None, 3], ids=["empty", "none", "int"])
    def test_invalid_stage_name(self, name: Any) -> None:
        """A stage name that is not a non-empty str raises ``InvalidStageNameError``."""
        with pytest.raises(
            InvalidStageNameError,
            match=exact(f"stage name {name!r} is invalid; use a non-empty str such as 'stt' or 'llm'"),
        ):
            Pipeline().with_stage(name, ok_stage(), T)

    @pytest.mark.parametrize(
        ("name", "position"), [("\udcff", 0), ("stt-\ud800", 4)], ids=["alone", "after-text"]
    )
    def test_stage_name_not_encodable_as_utf8(self, name: str, position: int) -> None:
        """A stage name holding a lone surrogate is refused by ``with_stage()``, naming it and the fix."""
        bad = name[position]
        with pytest.raises(
            InvalidStageNameError,
            match=exact(
                f"stage name {name!r} is invalid: {bad!r} at position {position} cannot be encoded as "
                "UTF-8 (a lone surrogate); use valid Unicode text, e.g. decode bytes with errors='replace'"
            ),
        ):
            Pipeline().with_stage(name, ok_stage(), T)

    def test_non_ascii_stage_name_accepted(self) -> None:
        """Any text UTF-8 encodes (accents, CJK, emoji) is a valid stage name."""
        pipeline = Pipeline().with_stage("süß-語-🚀", ok_stage(), T)
        assert list(pipeline.stages) == ["süß-語-🚀"]

    def test_pipeline_name_not_encodable_as_utf8(self) -> None:
        """A pipeline name holding a lone surrogate is refused by ``Pipeline()``, naming it and the fix."""
        with pytest.raises(
            PipelineDefinitionError,
            match=exact(
                "pipeline name 'p\\udcff' is invalid: '\\udcff' at position 1 cannot be encoded as UTF-8 "
                "(a lone surrogate); use valid Unicode text, e.g. decode bytes with errors='replace'"
            ),
        ):
            Pipeline(name="p\udcff")

    def test_invalid_pipeline_name(self) -> None:
        """An empty pipeline name raises ``PipelineDefinitionError``."""
        with pytest.raises(
            PipelineDefinitionError, match=exact("pipeline name '' is invalid; use a non-empty str")
        ):
            Pipeline(name="")

    def test_invalid_kind(self) -> None:
        """An unknown kind raises ``InvalidStageKindError`` listing the valid kinds."""
        with pytest.raises(
            InvalidStageKindError,
            match=exact(
                "stage 'a' has invalid kind 'nope'; use a StageKind member (StageKind.TRANSFORM, "
                "StageKind.ENRICH, StageKind.ROUTE, StageKind.GUARD, StageKind.WORK, StageKind.AGENT)"
            ),
        ) as info:
            Pipeline().with_stage("a", ok_stage(), "nope")  # type: ignore[arg-type]
        assert (info.value.stage, info.value.kind) == ("a", "nope")

    @pytest.mark.parametrize(
        ("runner", "problem"),
        [
            (NoExecute, "it has no execute() method"),
            (42, "it has no execute() method"),
            (
                generator_fn,
                "it is a generator function (it yields); a stage returns one StageOutput, and a streaming "
                "stage is an 'async def' that yields",
            ),
            (
                GeneratorExecute,
                "its execute() is a generator (it yields); a stage returns one StageOutput, and a streaming "
                "stage is an 'async def' that yields",
            ),
        ],
        ids=["class-without-execute", "int", "generator-function", "generator-execute"],
    )
    def test_invalid_runner(self, runner: Any, problem: str) -> None:
        """A runner that cannot be a stage raises ``InvalidRunnerError`` saying why."""
        with pytest.raises(
            InvalidRunnerError,
            match=exact(
                f"stage 'a' has invalid runner {runner!r}: {problem}; pass a class or object with "
                "'async def execute(self, ctx) -> StageOutput' (or a plain 'def execute', run in a thread), "
                "or a function 'async def fn(ctx) -> StageOutput' (or a plain 'def fn(ctx)', run in a thread)"
            ),
        ):
            Pipeline().with_stage("a", runner, T)

    @pytest.mark.parametrize(
        "runner", [SyncExecute, SyncExecute(), sync_fn], ids=["class", "object", "function"]
    )
    def test_sync_runners_are_stages(self, runner: Any) -> None:
        """A plain function and a class or object with a plain ``execute`` are sync stages."""
        graph = Pipeline().with_stage("a", runner, T).build()
        assert graph.stage("a").sync is True
        assert graph.stage("a").executor is None

    def test_runner_config_mismatch(self) -> None:
        """A stage class that rejects its config raises ``InvalidRunnerError`` at ``build()``."""
        pipeline = Pipeline().with_stage("g", Greeter, T, config={"colour": "red"})
        with pytest.raises(InvalidRunnerError) as info:
            pipeline.build()
        assert str(info.value).startswith(
            f"stage 'g' has invalid runner {Greeter!r}: Greeter(**{{'colour': 'red'}}) failed: "
        )
        assert isinstance(info.value.__cause__, TypeError)

    def test_dependencies_given_as_a_string(self) -> None:
        """A single string as ``dependencies`` is rejected with a hint to use a tuple."""
        with pytest.raises(
            PipelineDefinitionError,
            match=exact(
                "stage 'b' has dependencies='a'; pass a sequence of stage names, e.g. dependencies=('a',)"
            ),
        ):
            Pipeline().with_stage("b", ok_stage(), T, dependencies="a")

    def test_dependency_not_a_string(self) -> None:
        """A dependency that is not a stage name is rejected."""
        with pytest.raises(
            PipelineDefinitionError,
            match=exact("stage 'b' lists dependency 1; dependencies are stage names (str)"),
        ):
            Pipeline().with_stage("b", ok_stage(), T, dependencies=(1,))  # type: ignore[arg-type]

    def test_config_not_a_mapping(self) -> None:
        """A config that is not a mapping is rejected."""
        with pytest.raises(
            PipelineDefinitionError,
            match=exact("stage 'b' has config=[1]; pass a mapping of settings or None"),
        ):
            Pipeline().with_stage("b", ok_stage(), T, config=[1])  # type: ignore[arg-type]

    def test_retry_not_a_policy(self) -> None:
        """A retry that is not a ``RetryPolicy`` is rejected."""
        with pytest.raises(
            PipelineDefinitionError,
            match=exact("stage 'b' has retry=3; pass a RetryPolicy or None"),
        ):
            Pipeline().with_stage("b", ok_stage(), T, retry=3)  # type: ignore[arg-type]

    def test_duplicate_stage(self) -> None:
        """Adding a second stage of one name raises ``DuplicateStageError`` in that ``with_stage``."""
        pipeline = Pipeline().with_stage("a", ok_stage(), T).with_stage("b", ok_stage(), T)
        with pytest.raises(
            DuplicateStageError,
            match=exact(
                "duplicate stage name 'a': the pipeline defines twice a stage called 'a'; "
                "stage names must be unique, so rename one of them"
            ),
        ):
            pipeline.with_stage("a", ok_stage(), T)
        assert list(pipeline.stages) == ["a", "b"]

    def test_duplicate_check_sees_only_its_own_branch(self) -> None:
        """A name another pipeline added to a shared base is free on this branch, and taken on that one."""
        base = Pipeline().with_stage("a", ok_stage(), T)
        left = base.with_stage("x", ok_stage(), T)
        right = base.with_stage("x", ok_stage(), T).with_stage("y", ok_stage(), T)
        assert (list(left.stages), list(right.stages)) == (["a", "x"], ["a", "x", "y"])
        assert list(left.with_stage("y", ok_stage(), T).stages) == ["a", "x", "y"]
        with pytest.raises(DuplicateStageError):
            left.with_stage("x", ok_stage(), T)
        with pytest.raises(DuplicateStageError):
            right.with_stage("y", ok_stage(), T)
        assert list(base.with_stage("y", ok_stage(), T).stages) == ["a", "y"]

    def test_failed_compose_leaves_both_pipelines_usable(self) -> None:
        """A compose() that hits a duplicate changes neither pipeline."""
        one = Pipeline().with_stage("a", ok_stage(), T)
        two = Pipeline().with_stage("b", ok_stage(), T).with_stage("a", ok_stage(), T)
        with pytest.raises(DuplicateStageError):
            one.compose(two)
        assert list(one.with_stage("b", ok_stage(), T).stages) == ["a", "b"]
        assert list(one.compose(Pipeline().with_stage("c", ok_stage(), T)).stages) == ["a", "c"]

    def test_unknown_dependency(self) -> None:
        """A dependency on a stage never added raises ``UnknownDependencyError`` listing known stages."""
        pipeline = (
            Pipeline().with_stage("a", ok_stage(), T).with_stage("b", ok_stage(), T, dependencies=("zzz",))
        )
        with pytest.raises(
            UnknownDependencyError,
            match=exact(
                "stage 'b' depends on unknown stage 'zzz'; add 'zzz' with with_stage() or fix the "
                "dependency (known stages: 'a', 'b')"
            ),
        ) as info:
            pipeline.build()
        assert (info.value.stage, info.value.missing) == ("b", "zzz")

    def test_unknown_dependency_suggests_a_close_name(self) -> None:
        """A misspelt dependency gets a "did you mean" hint."""
        pipeline = (
            Pipeline()
            .with_stage("enrich", ok_stage(), T)
            .with_stage("llm", ok_stage(), T, dependencies=("enrch",))
        )
        with pytest.raises(
            UnknownDependencyError,
            match=exact(
                "stage 'llm' depends on unknown stage 'enrch'; did you mean 'enrich'? add 'enrch' with "
                "with_stage() or fix the dependency (known stages: 'enrich', 'llm')"
            ),
        ):
            pipeline.build()

    def test_self_dependency(self) -> None:
        """A stage depending on itself raises ``SelfDependencyError``."""
        pipeline = Pipeline().with_stage("a", ok_stage(), T, dependencies=("a",))
        with pytest.raises(
            SelfDependencyError, match=exact("stage 'a' depends on itself; remove 'a' from its dependencies")
        ):
            pipeline.build()

    def test_cycle(self) -> None:
        """A dependency cycle raises ``CycleError`` naming the cycle in execution order."""
        pipeline = (
            Pipeline()
            .with_stage("root", ok_stage(), T)
            .with_stage("alpha", ok_stage(), T, dependencies=("root", "gamma"))
            .with_stage("beta", ok_stage(), T, dependencies=("alpha",))
            .with_stage("gamma", ok_stage(), T, dependencies=("beta",))
        )
        with pytest.raises(
            CycleError,
            match=exact(
                "dependency cycle: 'beta' -> 'gamma' -> 'alpha' -> 'beta'; remove one of these dependencies"
            ),
        ) as info:
            pipeline.build()
        assert info.value.cycle == ("beta", "gamma", "alpha", "beta")

    def test_not_an_interceptor(self) -> None:
        """Passing something that is not an ``Interceptor`` to ``build`` raises ``TypeError``."""
        with pytest.raises(
            TypeError,
            match=exact(
                "interceptor 'x' is not an Interceptor; subclass stageflow.interceptors.Interceptor "
                "or BaseInterceptor"
            ),
        ):
            Pipeline().build(interceptors=["x"])  # type: ignore[list-item]

    def test_definition_errors_are_value_errors(self) -> None:
        """Definition errors can be caught as ``ValueError``."""
        with pytest.raises(ValueError, match="depends on itself"):
            Pipeline().with_stage("a", ok_stage(), T, dependencies=("a",)).build()

    def test_interceptor_base_accepted(self) -> None:
        """A plain ``Interceptor`` instance is accepted by ``build``."""
        graph = Pipeline().with_stage("a", ok_stage(), T).build(interceptors=[Interceptor()])
        assert len(graph.interceptors) == 1


MERMAID_PIPELINE = (
    Pipeline()
    .with_stage("stt", ok_stage(), T)
    .with_stage("enrich", ok_stage(), StageKind.ENRICH, dependencies=("stt",))
    .with_stage("route", ok_stage(), StageKind.ROUTE, dependencies=("stt",))
    .with_stage("llm", ok_stage(), T, dependencies=("enrich", "route"), conditional=True)
)


class TestMermaid:
    def test_exact_text(self) -> None:
        """``to_mermaid`` renders nodes, kinds, conditional shapes and dotted conditional edges."""
        assert MERMAID_PIPELINE.to_mermaid() == (
            "flowchart TD\n"
            '    s0["stt<br/>transform"]\n'
            '    s1["enrich<br/>enrich"]\n'
            '    s2["route<br/>route"]\n'
            '    s3{{"llm<br/>transform"}}\n'
            "    s0 --> s1\n"
            "    s0 --> s2\n"
            "    s1 -.-> s3\n"
            "    s2 -.-> s3\n"
        )

    def test_graph_renders_the_same(self) -> None:
        """A built graph renders the same flowchart as its pipeline."""
        assert MERMAID_PIPELINE.build().to_mermaid() == MERMAID_PIPELINE.to_mermaid()

    def test_quotes_are_escaped(self) -> None:
        """A double quote in a stage name is escaped for Mermaid."""
        text = Pipeline().with_stage('say "hi"', ok_stage(), T).to_mermaid()
        assert text == 'flowchart TD\n    s0["say #quot;hi#quot;<br/>transform"]\n'

    def test_unknown_dependency(self) -> None:
        """``to_mermaid`` rejects an unknown dependency like ``build``."""
        with pytest.raises(UnknownDependencyError):
            Pipeline().with_stage("a", ok_stage(), T, dependencies=("b",)).to_mermaid()

    def test_cycle(self) -> None:
        """``to_mermaid`` rejects a cycle like ``build``."""
        pipeline = (
            Pipeline()
            .with_stage("a", ok_stage(), T, dependencies=("b",))
            .with_stage("b", ok_stage(), T, dependencies=("a",))
        )
        with pytest.raises(
            CycleError, match=exact("dependency cycle: 'b' -> 'a' -> 'b'; remove one of these dependencies")
        ):
            pipeline.to_mermaid()
