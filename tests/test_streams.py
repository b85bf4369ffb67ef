"""Streaming stages: chunks along the DAG's edges, backpressure, failures, cancellation, measurements.

It runs past 500 lines because the streaming contract's edges, backpressure, failures and cancellation
interact and are read together.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from stageflow import (
    CycleError,
    InMemoryEventSink,
    InvalidRunnerError,
    Pipeline,
    PipelineDefinitionError,
    PipelineFailedError,
    RetryPolicy,
    StageContext,
    StageKind,
    StageOutput,
    StageStatus,
    StageTimeoutError,
    StreamError,
    Streaming,
    StreamInputError,
)

from ._stages import voice
from ._support import FakeClock, exact, make_ctx

T = StageKind.TRANSFORM


def llm_to_tts(llm: Any, tts: Any, *, stream: Streaming | None = None) -> Pipeline:
    """Pipeline ``p``: stage ``llm`` (with ``stream``), whose stream stage ``tts`` reads."""
    return (
        Pipeline("p")
        .with_stage("llm", llm, T, stream=stream)
        .with_stage("tts", tts, T, dependencies=("llm",), streams=("llm",))
    )


async def words(ctx: StageContext) -> AsyncIterator[str]:
    for word in ("Hello", " there.", " How", " are", " you?"):
        await asyncio.sleep(0)
        yield word


async def nothing(ctx: StageContext) -> AsyncIterator[str]:
    return
    yield ""  # an async generator that yields no chunk


async def speak(ctx: StageContext) -> StageOutput:
    heard = [chunk async for chunk in ctx.inputs.stream("llm")]
    return StageOutput.ok(heard=heard)


async def ended(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(text=ctx.inputs.get_from("llm", "text"))


async def ended_chunks(ctx: StageContext) -> StageOutput:
    return StageOutput.ok(chunks=ctx.inputs.get_from("llm", "chunks"))


class TestAggregate:
    async def test_the_default_aggregate_is_the_list_of_chunks(self) -> None:
        result = await Pipeline("p").with_stage("llm", words, T).build().run()
        assert result["llm"].data == {"chunks": ["Hello", " there.", " How", " are", " you?"]}
        assert result["llm"].chunks == 5

    async def test_a_reducer_makes_the_aggregate(self) -> None:
        graph = (
            Pipeline("p")
            .with_stage("llm", words, T, stream=Streaming(key="text", reduce="".join))
            .with_stage("after", ended, T, dependencies=("llm",))
            .build()
        )
        result = await graph.run()
        assert result["llm"].data == {"text": "Hello there. How are you?"}
        assert result["after"].data == {"text": "Hello there. How are you?"}

    async def test_collect_false_keeps_only_the_count(self) -> None:
        result = (
            await Pipeline("p").with_stage("llm", words, T, stream=Streaming(collect=False)).build().run()
        )
        assert result["llm"].data == {"chunk_count": 5}

    async def test_a_chunk_of_the_wrong_type_fails_the_stage(self) -> None:
        async def mixed(ctx: StageContext) -> AsyncIterator[object]:
            yield "a"
            yield 2

        graph = Pipeline("p").with_stage("llm", mixed, T, stream=Streaming(chunk_type=str)).build()
        with pytest.raises(PipelineFailedError) as info:
            await graph.run()
        assert type(info.value.error) is TypeError
        assert str(info.value.error) == (
            "stage 'llm' yielded chunk 1 of type int; its Streaming(chunk_type=...) wants str"
        )

    async def test_a_class_whose_execute_yields_streams(self) -> None:
        class Llm:
            async def execute(self, ctx: StageContext) -> AsyncIterator[int]:
                for i in range(3):
                    yield i

        result = await Pipeline("p").with_stage("llm", Llm, T).build().run()
        assert result["llm"].data == {"chunks": [0, 1, 2]}


class TestEdges:
    async def test_a_consumer_starts_at_the_first_chunk(self) -> None:
        """After its first chunk the producer waits for the consumer to read it: so the consumer runs."""
        read_first = asyncio.Event()

        async def llm(ctx: StageContext) -> AsyncIterator[str]:
            yield "one"
            await read_first.wait()
            yield "two"

        async def tts(ctx: StageContext) -> StageOutput:
            heard = []
            async for chunk in ctx.inputs.stream("llm"):
                heard.append(chunk)
                read_first.set()
            return StageOutput.ok(heard=heard)

        sink = InMemoryEventSink()
        graph = (
            Pipeline("p")
            .with_stage("llm", llm, T)
            .with_stage("tts", tts, T, dependencies=("llm",), streams=("llm",))
            .with_stage("after", ended_chunks, T, dependencies=("llm",))
            .build()
        )
        result = await asyncio.wait_for(graph.run(make_ctx(sink=sink)), 30)
        assert result["tts"].data == {"heard": ["one", "two"]}
        assert result["after"].data == {"chunks": ["one", "two"]}
        types = [e.type for e in sink.events]
        assert (
            types.index("stage.llm.first_chunk")
            < types.index("stage.tts.started")
            < types.index("stage.llm.completed")
        )
        assert types.index("stage.llm.completed") < types.index("stage.after.started")
        assert types.count("stage.llm.first_chunk") == 1

    async def test_every_consumer_sees_every_chunk_in_order(self) -> None:
        graph = (
            Pipeline("p")
            .with_stage("llm", words, T)
            .with_stage("tts", speak, T, dependencies=("llm",), streams=("llm",))
            .with_stage("captions", speak, T, dependencies=("llm",), streams=("llm",))
            .build()
        )
        result = await graph.run()
        expected = ["Hello", " there.", " How", " are", " you?"]
        assert result["tts"].data == {"heard": expected}
        assert result["captions"].data == {"heard": expected}

    async def test_a_stream_with_no_chunk_releases_its_consumers_at_its_end(self) -> None:
        graph = llm_to_tts(nothing, speak).build()
        result = await graph.run()
        assert result["tts"].data == {"heard": []}
        assert result["llm"].time_to_first_chunk is None

    async def test_a_consumer_waits_for_its_other_dependencies_too(self) -> None:
        gate = asyncio.Event()
        order: list[str] = []

        async def slow(ctx: StageContext) -> StageOutput:
            await gate.wait()
            order.append("slow ended")
            return StageOutput.ok(voice="alto")

        async def llm(ctx: StageContext) -> AsyncIterator[str]:
            yield "hi"
            order.append("first chunk out")
            gate.set()

        async def tts(ctx: StageContext) -> StageOutput:
            order.append("tts started")
            heard = [c async for c in ctx.inputs.stream("llm")]
            return StageOutput.ok(heard=heard, voice=ctx.inputs.get_from("slow", "voice"))

        graph = (
            Pipeline("p")
            .with_stage("slow", slow, T)
            .with_stage("llm", llm, T)
            .with_stage("tts", tts, T, dependencies=("llm", "slow"), streams=("llm",))
            .build()
        )
        result = await graph.run()
        assert order == ["first chunk out", "slow ended", "tts started"]
        assert result["tts"].data == {"heard": ["hi"], "voice": "alto"}

    async def test_reading_a_streamed_output_before_its_end_says_how_to_read_it(self) -> None:
        async def impatient(ctx: StageContext) -> StageOutput:
            try:
                ctx.inputs.get_from("llm", "chunks")
            except StreamInputError as exc:
                return StageOutput.ok(error=str(exc))
            return StageOutput.ok(error=None)

        hold = asyncio.Event()

        async def llm(ctx: StageContext) -> AsyncIterator[str]:
            yield "a"
            await hold.wait()

        async def releaser(ctx: StageContext) -> StageOutput:
            return StageOutput.ok()

        async def impatient_then_release(ctx: StageContext) -> StageOutput:
            out = await impatient(ctx)
            hold.set()
            return out

        graph = llm_to_tts(llm, impatient_then_release).build()
        result = await graph.run()
        assert result["tts"].data["error"] == (
            "stage 'tts' reads 'llm' as a stream, which has not ended: read its chunks with "
            "'async for chunk in ctx.inputs.stream('llm')'; its whole output exists only once it has ended"
        )

    async def test_asking_for_a_stream_not_declared_names_the_fix(self) -> None:
        async def asks(ctx: StageContext) -> StageOutput:
            try:
                ctx.inputs.stream("llm")
            except KeyError as exc:
                return StageOutput.ok(error=exc.args[0])
            return StageOutput.ok(error=None)

        graph = (
            Pipeline("p")
            .with_stage("llm", words, T)
            .with_stage("tts", asks, T, dependencies=("llm",))
            .build()
        )
        result = await graph.run()
        assert result["tts"].data["error"] == (
            "stage 'tts' does not consume the stream of 'llm' (it consumes: none); declare it with "
            "with_stage(..., dependencies=('llm',), streams=('llm',))"
        )


class TestBackpressure:
    async def test_a_slow_consumer_holds_the_producer_within_its_buffer(self) -> None:
        log: list[tuple[str, int]] = []

        async def llm(ctx: StageContext) -> AsyncIterator[int]:
            for i in range(40):
                log.append(("yield", i))
                yield i

        async def slow(ctx: StageContext) -> StageOutput:
            async for i in ctx.inputs.stream("llm"):
                log.append(("read", i))
                for _ in range(3):
                    await asyncio.sleep(0)
            return StageOutput.ok()

        graph = (
            Pipeline("p")
            .with_stage("llm", llm, T, stream=Streaming(buffer=2))
            .with_stage("slow", slow, T, dependencies=("llm",), streams=("llm",))
            .build()
        )
        await graph.run()
        ahead = 0
        most = 0
        for what, _ in log:
            ahead += 1 if what == "yield" else -1
            most = max(most, ahead)
        assert [i for what, i in log if what == "read"] == list(range(40))
        assert most <= 3  # two buffered, one in the producer's hands


class TestFailures:
    async def test_a_consumer_sees_the_error_at_the_chunk_where_it_happened(self) -> None:
        async def llm(ctx: StageContext) -> AsyncIterator[str]:
            yield "a"
            yield "b"
            raise ValueError("model crashed")

        seen: list[str] = []

        async def tts(ctx: StageContext) -> StageOutput:
            async for chunk in ctx.inputs.stream("llm"):
                seen.append(chunk)  # noqa: PERF401 - each chunk as it arrives, before the error
            return StageOutput.ok()

        graph = llm_to_tts(llm, tts).build()
        with pytest.raises(PipelineFailedError) as info:
            await graph.run()
        assert info.value.stage == "llm"
        assert type(info.value.error) is ValueError
        assert seen == ["a", "b"]
        consumer = info.value.results["tts"]
        assert consumer.status is StageStatus.FAIL
        assert isinstance(consumer.error, StreamError)
        assert str(consumer.error) == (
            "stream of stage 'llm' failed after 2 chunks read by 'tts': ValueError: model crashed"
        )
        assert consumer.error.__cause__ is info.value.error

    async def test_no_retry_once_a_chunk_went_out(self) -> None:
        attempts: list[int] = []

        async def llm(ctx: StageContext) -> AsyncIterator[str]:
            attempts.append(ctx.attempt)
            yield "a"
            raise ConnectionError("dropped")

        policy = RetryPolicy(max_attempts=3, initial_delay=0)
        graph = Pipeline("p").with_stage("llm", llm, T, retry=policy).build()
        with pytest.raises(PipelineFailedError) as info:
            await graph.run()
        assert attempts == [1]
        assert type(info.value.error) is ConnectionError

    async def test_a_retry_before_the_first_chunk_is_allowed(self) -> None:
        attempts: list[int] = []

        async def llm(ctx: StageContext) -> AsyncIterator[str]:
            attempts.append(ctx.attempt)
            if ctx.attempt == 1:
                raise ConnectionError("not yet")
            yield "a"

        policy = RetryPolicy(max_attempts=3, initial_delay=0)
        result = await Pipeline("p").with_stage("llm", llm, T, retry=policy).build().run()
        assert (attempts, result["llm"].data) == ([1, 2], {"chunks": ["a"]})

    async def test_a_timeout_bounds_the_whole_stream(self) -> None:
        async def endless(ctx: StageContext) -> AsyncIterator[int]:
            i = 0
            while True:
                await asyncio.sleep(0)
                yield i
                i += 1

        graph = (
            Pipeline("p").with_stage("llm", endless, T, timeout=0.05, stream=Streaming(collect=False)).build()
        )
        with pytest.raises(PipelineFailedError) as info:
            await graph.run()
        assert isinstance(info.value.error, StageTimeoutError)
        assert info.value.results["llm"].chunks > 0


class TestCancellation:
    async def test_a_barge_in_stops_every_stream_within_one_chunk(self) -> None:
        produced: list[int] = []
        closed = asyncio.Event()
        started = asyncio.Event()

        async def llm(ctx: StageContext) -> AsyncIterator[int]:
            try:
                i = 0
                while True:
                    produced.append(i)
                    yield i
                    i += 1
                    await asyncio.sleep(0)
            finally:
                closed.set()

        async def tts(ctx: StageContext) -> StageOutput:
            async for _ in ctx.inputs.stream("llm"):
                started.set()
            return StageOutput.ok()

        graph = llm_to_tts(llm, tts).build()
        task = asyncio.ensure_future(graph.run())
        await started.wait()
        at_cancel = len(produced)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert closed.is_set()
        assert len(produced) - at_cancel <= 1

    async def test_a_generator_that_yields_after_cancellation_still_ends_the_run(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The chunk it yields after the cancellation is dropped; the run ends cancelled, nothing hangs."""
        started = asyncio.Event()

        async def stubborn(ctx: StageContext) -> AsyncIterator[int]:
            while True:
                try:
                    started.set()
                    await asyncio.Event().wait()
                    yield 1
                except asyncio.CancelledError:
                    yield 2  # refuses to stop

        sink = InMemoryEventSink()
        graph = Pipeline("p").with_stage("llm", stubborn, T).build()
        task = asyncio.ensure_future(graph.run(make_ctx(sink=sink)))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        assert [e.type for e in sink.events][-2:] == ["stage.llm.cancelled", "pipeline.cancelled"]


class TestBuild:
    def test_consuming_a_stage_that_does_not_stream_is_refused(self) -> None:
        async def plain(ctx: StageContext) -> StageOutput:
            return StageOutput.ok()

        pipeline = llm_to_tts(plain, speak)
        with pytest.raises(PipelineDefinitionError) as info:
            pipeline.build()
        assert str(info.value) == (
            "stage 'tts' consumes the stream of 'llm', but 'llm' does not stream (it returns one "
            "StageOutput); make 'llm' an 'async def' that yields chunks, or drop 'llm' from the streams of "
            "'tts'"
        )

    def test_a_stream_must_be_a_dependency(self) -> None:
        with pytest.raises(PipelineDefinitionError) as info:
            Pipeline("p").with_stage("llm", words, T).with_stage("tts", speak, T, streams=("llm",))
        assert str(info.value) == (
            "stage 'tts' consumes the stream of 'llm', which is not among its dependencies (); add 'llm' to "
            "dependencies"
        )

    def test_streams_must_be_a_sequence_listing_each_once(self) -> None:
        base = Pipeline("p").with_stage("llm", words, T)
        with pytest.raises(PipelineDefinitionError, match=r"has streams='llm'; pass a sequence"):
            base.with_stage("tts", speak, T, dependencies=("llm",), streams="llm")
        with pytest.raises(PipelineDefinitionError, match=r"lists a stream twice"):
            base.with_stage("tts", speak, T, dependencies=("llm",), streams=("llm", "llm"))

    def test_a_cycle_through_streams_is_a_cycle(self) -> None:
        pipeline = (
            Pipeline("p")
            .with_stage("a", words, T, dependencies=("b",), streams=("b",))
            .with_stage("b", words, T, dependencies=("a",), streams=("a",))
        )
        with pytest.raises(CycleError):
            pipeline.build()

    def test_stream_settings_on_a_stage_that_does_not_stream_are_refused(self) -> None:
        with pytest.raises(PipelineDefinitionError) as info:
            Pipeline("p").with_stage("a", speak, T, stream=Streaming())
        assert str(info.value).startswith("stage 'a' has stream=Streaming(")
        assert str(info.value).endswith(
            "but does not stream: make it an 'async def' that yields chunks, or drop stream="
        )

    def test_a_plain_generator_is_not_a_stream(self) -> None:
        def gen(ctx: StageContext) -> Iterator[str]:
            yield "a"

        with pytest.raises(InvalidRunnerError, match="a streaming stage is an 'async def' that yields"):
            Pipeline("p").with_stage("a", gen, T)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"key": ""}, ValueError, "Streaming(key='') is invalid; pass a non-empty str such as 'text'"),
            ({"buffer": 0}, ValueError, "Streaming(buffer=0) is invalid; pass a positive int such as 16"),
            (
                {"reduce": 3},
                TypeError,
                "Streaming(reduce=3) is not callable; pass a function of the chunk list",
            ),
            (
                {"reduce": "".join, "collect": False},
                ValueError,
                "Streaming(reduce=..., collect=False) cannot reduce chunks it does not keep; drop one",
            ),
            (
                {"chunk_type": "str"},
                TypeError,
                "Streaming(chunk_type='str') is invalid; pass a type or a tuple of types",
            ),
        ],
    )
    def test_bad_streaming_settings(
        self, kwargs: dict[str, Any], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=exact(message)):
            Streaming(**kwargs)


class TestMeasurements:
    async def test_time_to_first_chunk_and_per_chunk_on_a_controlled_clock(self, clock: FakeClock) -> None:
        sink = InMemoryEventSink()
        graph = voice(clock, token=0.1, audio=0.05).build()
        result = await graph.run(make_ctx(sink=sink))
        llm_result = result["llm"]
        assert llm_result.chunks == 4
        assert llm_result.time_to_first_chunk == pytest.approx(0.25)
        # between its first and last chunk: tts's 0.05 s for the first chunk, then 0.1 s per chunk
        assert llm_result.time_per_output_chunk == pytest.approx((0.05 + 0.3) / 3)
        assert result["tts"].chunks == 4
        first = [e.data for e in sink.events if e.type == "stage.llm.first_chunk"]
        assert len(first) == 1 and first[0]["time_to_first_chunk"] == pytest.approx(0.25)
        completed = next(e.data for e in sink.events if e.type == "stage.llm.completed")
        assert completed["chunks"] == 4
        assert completed["time_to_first_chunk"] == pytest.approx(0.25)
        assert completed["time_per_output_chunk"] == pytest.approx((0.05 + 0.3) / 3)
        # the run's first output is tts's first chunk: stt 0.5 s, llm's first chunk 0.25 s, tts's 0.05 s
        path = result.first_output_path
        assert [name for name, _ in path] == ["stt", "llm", "tts"]
        assert [round(seconds, 6) for _, seconds in path] == [0.5, 0.25, 0.05]
        assert result.time_to_first_output == pytest.approx(0.8)

    async def test_without_streaming_the_first_output_is_the_final_stages_end(self, clock: FakeClock) -> None:
        async def stt(ctx: StageContext) -> StageOutput:
            clock.now += 0.5
            return StageOutput.ok()

        async def llm(ctx: StageContext) -> StageOutput:
            clock.now += 1.0
            return StageOutput.ok()

        graph = (
            Pipeline("p").with_stage("stt", stt, T).with_stage("llm", llm, T, dependencies=("stt",)).build()
        )
        result = await graph.run()
        assert [(n, round(s, 6)) for n, s in result.first_output_path] == [("stt", 0.5), ("llm", 1.0)]
        assert result.time_to_first_output == pytest.approx(1.5)

    async def test_a_failed_run_has_no_first_output(self) -> None:
        async def broken(ctx: StageContext) -> StageOutput:
            raise ValueError("no")

        with pytest.raises(PipelineFailedError) as info:
            await Pipeline("p").with_stage("a", broken, T).build().run()
        assert (info.value.results.first_output_path, info.value.results.time_to_first_output) == ((), None)

    async def test_the_timeline_marks_the_first_chunk(self, clock: FakeClock) -> None:
        async def llm(ctx: StageContext) -> AsyncIterator[str]:
            clock.now += 0.25
            yield "a"
            clock.now += 0.75
            yield "b"

        result = await Pipeline("p").with_stage("llm", llm, T).build().run()
        lines = result.timeline(width=20, color=False).splitlines()
        assert lines[2] == "  * llm    █████┃██████████████    0.0 ms    1.00 s"


class TestConsumersThatStopEarly:
    @pytest.mark.parametrize("how", ["break", "skip"])
    async def test_a_consumer_that_stops_reading_never_holds_the_producer(self, how: str) -> None:
        """Regression: the producer waited forever for room in the buffer of a consumer that had ended."""

        async def long(ctx: StageContext) -> AsyncIterator[int]:
            for i in range(200):
                yield i

        async def first_only(ctx: StageContext) -> StageOutput:
            first = None
            async for chunk in ctx.inputs.stream("llm"):
                if how == "skip":
                    return StageOutput.skip(reason="heard enough")
                first = chunk
                break
            return StageOutput.ok(first=first)

        graph = llm_to_tts(long, first_only, stream=Streaming(buffer=2)).build()
        result = await asyncio.wait_for(graph.run(), 30)
        assert result["llm"].chunks == 200
        assert result["tts"].status is (StageStatus.SKIP if how == "skip" else StageStatus.OK)

    async def test_a_skipped_conditional_consumer_never_holds_the_producer(self) -> None:
        async def skipper(ctx: StageContext) -> StageOutput:
            return StageOutput.skip(reason="no")

        async def long(ctx: StageContext) -> AsyncIterator[int]:
            for i in range(100):
                yield i

        graph = (
            Pipeline("p")
            .with_stage("gate", skipper, T)
            .with_stage("llm", long, T, stream=Streaming(buffer=2))
            .with_stage("tts", speak, T, dependencies=("llm", "gate"), streams=("llm",), conditional=True)
            .build()
        )
        result = await asyncio.wait_for(graph.run(), 30)
        assert result["llm"].chunks == 100
        assert result["tts"].status is StageStatus.SKIP

    async def test_a_consumer_reads_the_whole_output_once_the_stream_ended(self) -> None:
        """Regression: ``get_from`` kept refusing after the stream it had read had ended."""

        async def tts(ctx: StageContext) -> StageOutput:
            heard = [chunk async for chunk in ctx.inputs.stream("llm")]  # ends once the producer ended
            return StageOutput.ok(heard=heard, text=ctx.inputs.get_from("llm", "text"))

        graph = llm_to_tts(words, tts, stream=Streaming(key="text", reduce="".join)).build()
        result = await graph.run()
        assert result["tts"].data["text"] == "Hello there. How are you?"
