"""README.md's examples run and say what README claims."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from stageflow import Pipeline, StageContext, StageKind, StageOutput
from stageflow.interceptors import Interceptor

from ._support import make_ctx

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


class TestReadme:
    def test_quick_start_prints_greeting_and_critical_path(self) -> None:
        """The quick start runs as a program and prints what its comments say."""
        proc = subprocess.run(
            [sys.executable, "-c", BLOCKS[0]],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=True,
        )
        assert proc.stdout.splitlines() == ["HELLO, WORLD!", "('greet', 'shout')"]

    async def test_interceptor_example_is_a_pass_through_interceptor(self) -> None:
        """The interceptor example defines a working pass-through interceptor."""
        namespace: dict[str, Any] = {}
        exec(BLOCKS[1], namespace)
        timing = namespace["Timing"]()
        assert isinstance(timing, Interceptor) and timing.priority == 60

        async def stage(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(v=1)

        graph = Pipeline().with_stage("s", stage, StageKind.WORK).build([timing])
        results = await asyncio.wait_for(graph.run(make_ctx()), 5)
        assert dict(results["s"].data) == {"v": 1}

    def test_example_pipeline_prints_timeline_and_critical_path(self) -> None:
        """examples/voice_pipeline.py prints its reply, the critical path and the flowchart."""
        proc = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "voice_pipeline.py")],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=True,
        )
        lines = proc.stdout.splitlines()
        assert "reply: Hello Ada, I remember you likes tea." in lines
        assert "critical path (*): stt -> memory -> llm -> tts" in lines
        assert "flowchart TD" in lines
