"""stageflow.testing: entry contexts and one-call runs."""

from __future__ import annotations

from stageflow import Pipeline, StageContext, StageKind, StageOutput
from stageflow.testing import InMemoryEventSink, make_context, run_graph


class TestTestingHelpers:
    def test_make_context_fills_the_snapshot(self) -> None:
        """make_context builds an entry context with the given text, data, sink and metadata."""
        sink = InMemoryEventSink()
        ctx = make_context(input_text="hi", data={"a": 1}, event_sink=sink, metadata={"traceparent": "x"})
        assert (ctx.snapshot.input_text, ctx.data, ctx.event_sink, dict(ctx.snapshot.metadata)) == (
            "hi",
            {"a": 1},
            sink,
            {"traceparent": "x"},
        )
        assert ctx.stage_name == "pipeline_entry"
        assert make_context().pipeline_run_id != make_context().pipeline_run_id

    async def test_run_graph_runs_once(self) -> None:
        """run_graph runs a graph with ctx.data and input text from its arguments."""

        async def echo(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(text=ctx.snapshot.input_text, user=ctx.data["user"])

        graph = Pipeline().with_stage("echo", echo, StageKind.TRANSFORM).build()
        sink = InMemoryEventSink()
        results = await run_graph(graph, input_text="yo", data={"user": "ada"}, event_sink=sink)
        assert dict(results["echo"].data) == {"text": "yo", "user": "ada"}
        assert sink.types[-1] == "pipeline.completed"
