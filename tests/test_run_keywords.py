"""``StageGraph.run()`` builds the entry context from keywords, and rejects a wrong first argument."""

from __future__ import annotations

from typing import Any

import pytest

from stageflow import InMemoryEventSink, Pipeline, RunIdentity, StageContext, StageKind, StageOutput

from ._support import make_ctx


async def echo(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(
        text=ctx.snapshot.input_text,
        shared=dict(ctx.data),
        metadata=dict(ctx.snapshot.metadata),
        entry=ctx.pipeline.snapshot is ctx.snapshot if ctx.pipeline else None,
    )


GRAPH = Pipeline(name="echo").with_stage("echo", echo, StageKind.TRANSFORM).build()


class TestRunKeywords:
    async def test_keywords_build_the_entry_context(self) -> None:
        """input_text, data, metadata and event_sink reach the stage and the sink."""
        sink = InMemoryEventSink()
        results = await GRAPH.run(
            input_text="hi", data={"user": "ada"}, metadata={"traceparent": "t"}, event_sink=sink
        )
        assert dict(results["echo"].data) == {
            "text": "hi",
            "shared": {"user": "ada"},
            "metadata": {"traceparent": "t"},
            "entry": True,
        }
        assert sink.types == [
            "pipeline.created",
            "pipeline.started",
            "stage.echo.started",
            "stage.echo.completed",
            "pipeline.completed",
        ]

    async def test_no_arguments_runs_with_empty_input(self) -> None:
        """graph.run() alone runs with no input text, empty data and a fresh run id per run."""
        first, second = await GRAPH.run(), await GRAPH.run()
        assert dict(first["echo"].data) == {"text": None, "shared": {}, "metadata": {}, "entry": True}
        assert first.run_id != second.run_id

    async def test_run_id_keyword_names_the_run(self) -> None:
        """run_id= gives the run its identity."""
        identity = RunIdentity()
        results = await GRAPH.run(run_id=identity)
        assert results.run_id == identity.pipeline_run_id

    async def test_data_is_copied(self) -> None:
        """The caller's data mapping is not mutated by the run."""
        data = {"n": 1}

        async def bump(ctx: StageContext) -> StageOutput:
            ctx.data["n"] = 2
            return StageOutput.ok()

        await Pipeline().with_stage("bump", bump, StageKind.WORK).build().run(data=data)
        assert data == {"n": 1}

    async def test_entry_context_form_still_works(self) -> None:
        """The explicit entry context form keeps working, positionally."""
        results = await GRAPH.run(make_ctx(text="x"))
        assert results["echo"].data["text"] == "x"


class TestRunArgumentErrors:
    async def test_a_string_names_input_text(self) -> None:
        """graph.run("hello") raises a TypeError telling to pass input_text="hello"."""
        with pytest.raises(TypeError) as exc:
            await GRAPH.run("hello")  # type: ignore[arg-type]
        assert str(exc.value) == (
            "graph.run() takes a StageContext or keyword arguments, not str 'hello'; "
            "use graph.run(input_text='hello'), or pass an entry StageContext"
        )

    @pytest.mark.parametrize("value", [{"input_text": "x"}, 42, None.__class__], ids=["dict", "int", "type"])
    async def test_other_values_name_the_keywords(self, value: Any) -> None:
        """Any other non-context first argument gets the keyword form in its message."""
        with pytest.raises(TypeError, match=r"use graph\.run\(input_text=\.\.\., data=\.\.\., metadata="):
            await GRAPH.run(value)

    async def test_context_and_keywords_together_is_an_error(self) -> None:
        """Giving an entry context and keywords is rejected instead of ignoring either."""
        with pytest.raises(TypeError, match="not both"):
            await GRAPH.run(make_ctx(), input_text="x")

    async def test_long_values_are_shortened(self) -> None:
        """The message quotes at most 80 characters of the bad value."""
        with pytest.raises(TypeError) as exc:
            await GRAPH.run("x" * 500)  # type: ignore[arg-type]
        assert "x" * 81 not in str(exc.value).split("use ")[0]
