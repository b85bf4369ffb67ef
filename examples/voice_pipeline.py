"""A voice-assistant pipeline on the bare core: prints the run's timeline, its reply and the DAG.

Run: ``python examples/voice_pipeline.py``
"""

from __future__ import annotations

import asyncio

from stageflow import InMemoryEventSink, Pipeline, StageContext, StageKind, StageOutput


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


async def main() -> None:
    sink = InMemoryEventSink()
    results = await PIPELINE.build().run(input_text="HELLO THERE", event_sink=sink)
    print(results.timeline())
    print("reply:", results["llm"].data["reply"])
    print("events:", ", ".join(sink.types))
    print()
    print(PIPELINE.to_mermaid())


if __name__ == "__main__":
    asyncio.run(main())
