"""A voice-assistant pipeline on the bare core: prints each stage's result, timing and the critical path.

Run: ``python examples/voice_pipeline.py``
"""

from __future__ import annotations

import asyncio

from stageflow import (
    InMemoryEventSink,
    Pipeline,
    PipelineTimer,
    RunResult,
    StageContext,
    StageKind,
    StageOutput,
)
from stageflow.context import ContextSnapshot, RunIdentity
from stageflow.stages import StageInputs


async def stt(ctx: StageContext) -> StageOutput:
    await asyncio.sleep(0.03)
    return StageOutput.ok(transcript=(ctx.snapshot.input_text or "").lower())


async def enrich(ctx: StageContext) -> StageOutput:
    await asyncio.sleep(0.02)
    return StageOutput.ok(profile={"name": "Ada", "locale": "en-GB"})


async def memory(ctx: StageContext) -> StageOutput:
    await asyncio.sleep(0.04)
    return StageOutput.ok(memories=["likes tea"])


async def llm(ctx: StageContext) -> StageOutput:
    await asyncio.sleep(0.05)
    name = ctx.inputs.get_from("enrich", "profile", default={}).get("name", "there")
    memories = ctx.inputs.require_from("memory", "memories")
    return StageOutput.ok(reply=f"Hello {name}, I remember you {memories[0]}.")


async def tts(ctx: StageContext) -> StageOutput:
    await asyncio.sleep(0.02)
    return StageOutput.ok(audio_bytes=len(ctx.inputs.require_from("llm", "reply")) * 320)


PIPELINE = (
    Pipeline(name="voice")
    .with_stage("stt", stt, StageKind.TRANSFORM)
    .with_stage("enrich", enrich, StageKind.ENRICH, dependencies=("stt",))
    .with_stage("memory", memory, StageKind.ENRICH, dependencies=("stt",))
    .with_stage("llm", llm, StageKind.TRANSFORM, dependencies=("enrich", "memory"))
    .with_stage("tts", tts, StageKind.TRANSFORM, dependencies=("llm",))
)


def render(results: RunResult) -> str:
    lines = [f"run {results.run_id} of {results.pipeline_name!r}: {results.duration * 1000:.1f} ms"]
    on_path = set(results.critical_path)
    for name, r in results.items():
        start = (r.started_at - results.started_at) * 1000
        mark = "*" if name in on_path else " "
        lines.append(
            f" {mark} {name:<8} {r.status.value:<6} start {start:6.1f} ms  took {r.duration * 1000:6.1f} ms"
            f"  wait {r.wait * 1e6:5.0f} us"
        )
    lines.append("critical path (*): " + " -> ".join(results.critical_path))
    return "\n".join(lines)


async def main() -> None:
    sink = InMemoryEventSink()
    snapshot = ContextSnapshot(run_id=RunIdentity(), input_text="HELLO THERE")
    ctx = StageContext(
        snapshot=snapshot,
        inputs=StageInputs(snapshot=snapshot),
        stage_name="pipeline_entry",
        timer=PipelineTimer(),
        event_sink=sink,
    )
    results = await PIPELINE.build().run(ctx)
    print(render(results))
    print("reply:", results["llm"].data["reply"])
    print("events:", ", ".join(sink.types))
    print()
    print(PIPELINE.to_mermaid())


if __name__ == "__main__":
    asyncio.run(main())
