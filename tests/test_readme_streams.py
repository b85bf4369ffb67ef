"""README.md's "Streaming stages": its example runs as printed, and what it quotes is what the code does."""

from __future__ import annotations

import asyncio
import inspect
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stageflow import (
    Pipeline,
    PipelineDefinitionError,
    PipelineFailedError,
    StageContext,
    StageKind,
    StageOutput,
    StreamError,
    Streaming,
    StreamInputError,
)

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
HEADING = "Streaming stages"
T = StageKind.TRANSFORM


def _section() -> str:
    start = README.index(f"\n## {HEADING}\n")
    end = README.find("\n## ", start + 1)
    return README[start : None if end < 0 else end]


def _flat() -> str:
    return " ".join(_section().split())


class TestStreamingSection:
    def test_the_voice_example_prints_what_its_comments_say(self) -> None:
        """The example, run, prints its comments' values, then a timeline marking first chunks."""
        [block] = re.findall(r"```python\n(.*?)```", _section(), flags=re.S)
        proc = subprocess.run(
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=120, cwd=ROOT, check=True
        )
        lines = proc.stdout.splitlines()
        assert lines[:5] == [
            "['<audio: You said hello.>', '<audio: What next?>']",
            "You said hello. What next?",
            "5 2",
            "['stt', 'llm', 'tts']",
            "True",
        ]
        rows = {line[4:].split()[0]: line for line in lines[7:11]}
        assert sorted(rows) == ["llm", "save", "stt", "tts"]
        assert ["┃" in rows[name] for name in ("stt", "llm", "tts", "save")] == [False, True, True, False]
        assert lines[11] == "  critical path (*): stt → llm → tts"
        comments = re.findall(r"print\(.*\)  # (.*)", block)
        assert comments[:4] == lines[:4]
        assert comments[4].startswith(f"{lines[4]}: ")

    def test_the_printed_timeline_is_the_examples(self) -> None:
        """The timeline shown under the example has the example's stages, with the first chunks marked."""
        [text] = re.findall(r"```text\n(.*?)```", _section(), flags=re.S)
        lines = text.splitlines()
        assert lines[0].startswith("pipeline 'voice' · run ")
        assert [line[4:].split()[0] for line in lines[2:6]] == ["stt", "llm", "tts", "save"]
        assert ["┃" in line for line in lines[2:6]] == [False, True, True, False]
        assert lines[6] == "  critical path (*): stt → llm → tts"

    def test_every_streaming_option_is_in_the_table_with_its_default(self) -> None:
        """The options table lists every ``Streaming`` field, in order, with its default value."""
        rows = [line.split(" | ") for line in _section().splitlines() if line.startswith("| `")]
        names = [row[0].strip("| `") for row in rows]
        assert names == list(Streaming.__dataclass_fields__)
        defaults = {field: getattr(Streaming(), field) for field in names}
        assert [row[1].split()[0].strip("`") for row in rows] == [
            f'"{value}"' if isinstance(value, str) else str(value) for value in defaults.values()
        ]

    async def test_the_quoted_stream_error_is_the_one_a_consumer_gets(self) -> None:
        """The ``StreamError`` message README quotes is the one a consumer reading a failed stream gets."""

        async def llm(ctx: StageContext) -> AsyncIterator[str]:
            yield "a"
            yield "b"
            raise ValueError("model crashed")

        async def tts(ctx: StageContext) -> StageOutput:
            async for _ in ctx.inputs.stream("llm"):
                pass
            return StageOutput.ok()

        graph = (
            Pipeline("p")
            .with_stage("llm", llm, T)
            .with_stage("tts", tts, T, dependencies=("llm",), streams=("llm",))
            .build()
        )
        with pytest.raises(PipelineFailedError) as info:
            await asyncio.wait_for(graph.run(), 30)
        error = info.value.results["tts"].error
        assert isinstance(error, StreamError)
        assert f"`{error}`" in _flat()
        assert (error.producer, error.chunks, error.__cause__) == ("llm", 2, info.value.error)

    async def test_collect_false_outputs_only_the_chunk_count(self) -> None:
        """``Streaming(collect=False)`` leaves ``{"chunk_count": n}`` as the output, as the table says."""

        async def llm(ctx: StageContext) -> AsyncIterator[int]:
            for i in range(3):
                yield i

        graph = Pipeline("p").with_stage("llm", llm, T, stream=Streaming(collect=False)).build()
        result = await graph.run()
        assert dict(result["llm"].data) == {"chunk_count": 3}
        assert '`{"chunk_count": n}`' in _flat()

    async def test_a_consumer_asking_for_the_aggregate_mid_stream_is_told_to_read_the_stream(self) -> None:
        """``get_from`` on a stream still running when the consumer started raises ``StreamInputError``."""
        errors: list[str] = []

        async def llm(ctx: StageContext) -> AsyncIterator[str]:
            yield "Hi"
            await asyncio.sleep(0)  # still running when its consumer starts
            yield "!"

        async def tts(ctx: StageContext) -> StageOutput:
            try:
                ctx.inputs.get_from("llm", "reply")
            except StreamInputError as exc:
                errors.append(str(exc))
            heard = [chunk async for chunk in ctx.inputs.stream("llm")]
            return StageOutput.ok(heard=heard)

        graph = (
            Pipeline("p")
            .with_stage("llm", llm, T, stream=Streaming(key="reply", reduce="".join))
            .with_stage("tts", tts, T, dependencies=("llm",), streams=("llm",))
            .build()
        )
        result = await asyncio.wait_for(graph.run(), 30)
        assert result["tts"].data == {"heard": ["Hi", "!"]}
        [error] = errors
        assert "read its chunks with 'async for chunk in ctx.inputs.stream('llm')'" in error

    def test_consuming_a_stage_that_does_not_stream_names_both_at_build(self) -> None:
        """``build()`` refuses a consumer of a stage that does not stream, naming both stages."""

        async def plain(ctx: StageContext) -> StageOutput:
            return StageOutput.ok()

        pipeline = (
            Pipeline("p")
            .with_stage("stt", plain, T)
            .with_stage("tts", plain, T, dependencies=("stt",), streams=("stt",))
        )
        with pytest.raises(
            PipelineDefinitionError, match="stage 'tts' consumes the stream of 'stt', but 'stt'"
        ):
            pipeline.build()

    def test_the_section_follows_sync_stages(self) -> None:
        """Users find it after "Sync stages and scaling out" and before "Interceptors"."""
        order = [line[3:] for line in README.splitlines() if line.startswith("## ")]
        assert order.index("Sync stages and scaling out") + 1 == order.index(HEADING)
        assert order.index(HEADING) + 1 == order.index("Interceptors")

    def test_defining_pipelines_gives_with_stages_signature(self) -> None:
        """ "Defining pipelines" spells ``with_stage``'s parameters and defaults as the code has them."""
        start = README.index("\n## Defining pipelines\n")
        text = " ".join(README[start : README.index("\n## ", start + 1)].split())
        [quoted] = re.findall(r"`with_stage\((name, runner, kind, [^`]*)\)`", text)
        parameters = list(inspect.signature(Pipeline.with_stage).parameters.values())[1:]
        spelled = [
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in parameters
        ]
        spelled.insert([p.kind for p in parameters].index(inspect.Parameter.KEYWORD_ONLY), "*")
        assert quoted == ", ".join(spelled)
        assert "[Streaming stages](#streaming-stages)" in text

    def test_the_benchmark_command_exists(self) -> None:
        """The benchmark the section and "Performance" cite is the module their command names."""
        start = README.index("\n## Performance\n")
        performance = README[start : README.index("\n## ", start + 1)]
        for text in (_section(), performance):
            assert "`.venv/bin/python -m tests.benchmarks.streams`" in text
        assert (ROOT / "tests" / "benchmarks" / "streams.py").is_file()
