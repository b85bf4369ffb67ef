"""README.md's examples run and say what README claims."""

from __future__ import annotations

import asyncio
import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from stageflow import Pipeline, StageContext, StageflowError, StageKind, StageOutput
from stageflow.interceptors import Interceptor

from ._support import make_ctx, missing_names

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(heading: str) -> str:
    """The text of README's level-2 section ``heading``, up to the next level-2 heading."""
    start = README.index(f"\n## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start : None if end < 0 else end]


def python_blocks(heading: str) -> list[str]:
    """The ``python`` code blocks of README's section ``heading``, in order."""
    return re.findall(r"```python\n(.*?)```", section(heading), flags=re.S)


def import_table(*, with_extra: bool) -> dict[str, list[str]]:
    """README's import table as module -> names; names that need the extra only when asked."""
    table: dict[str, list[str]] = {}
    for row in section("Where to import things from").splitlines():
        if not row.startswith("| `"):
            continue
        module, names = row.split("`")[1], row.split("|")[2]
        core, _, extra = names.partition("with the extra")
        if module == "stageflow_otel":
            core, extra = "", core
        text = core + extra if with_extra else core
        table[module] = sorted(set(re.findall(r"`([A-Za-z_]+)`", text)))
    return table


def run_program(source: str) -> list[str]:
    """Run ``source`` as a program from the repository root; its stdout lines."""
    proc = subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    return proc.stdout.splitlines()


class TestReadme:
    def test_quick_start_prints_greeting_and_critical_path(self) -> None:
        """The quick start runs as a program and prints what its comments say."""
        assert run_program(python_blocks("Quick start")[0]) == ["HELLO, WORLD!", "('greet', 'shout')"]

    def test_quick_start_entry_context_form_continues_the_first_block(self) -> None:
        """The quick start's second block, run after the first, prints the same greeting."""
        first, second = python_blocks("Quick start")
        assert run_program(first + "\n" + second) == ["HELLO, WORLD!", "('greet', 'shout')", "HELLO, WORLD!"]

    def test_quick_start_quotes_the_type_error(self) -> None:
        """The TypeError README quotes for graph.run("hello") is the one run() raises."""
        assert "`... use graph.run(input_text='hello'), or pass an entry StageContext`" in section(
            "Quick start"
        ).replace("\n", " ")

    def test_telemetry_heading_appears_once(self) -> None:
        """README has one Telemetry heading: the reference, outside the generated block."""
        headings = [line for line in README.splitlines() if line.lstrip("#").strip().startswith("Telemetry")]
        assert headings == ["## Telemetry reference"]

    def test_usage_comes_before_internals_and_benchmarks(self) -> None:
        """Users read install, quick start and usage first; benchmarks come after the reference."""
        order = [line[3:] for line in README.splitlines() if line.startswith("## ")]
        assert order.index("Install") < order.index("Quick start") < order.index("Defining pipelines")
        assert order.index("Instrument your pipeline") < order.index("Telemetry reference")
        assert order.index("Telemetry reference") < order.index("Performance")

    def test_every_stage_kind_is_named(self) -> None:
        """Defining pipelines names every StageKind member with its value."""
        text = section("Defining pipelines")
        assert [k.name for k in StageKind if f"`{k.name}`" not in text or f'`"{k.value}"`' not in text] == []

    def test_import_table_names_are_importable(self) -> None:
        """Every name README's import table lists is importable from the module of its row."""
        assert missing_names(import_table(with_extra=False)) == []

    def test_no_insider_words(self) -> None:
        """README speaks to users: no words from how the project was built ("the seed's ...")."""
        assert re.findall(r"(?<!-)\bseed(?:'s)?\b[^\n]{0,30}", README, flags=re.I) == []

    def test_import_table_lists_every_public_name(self) -> None:
        """Each module's ``__all__`` is in its row of the table (errors as "every error")."""
        unlisted = []
        for module, names in import_table(with_extra=True).items():
            imported = importlib.import_module(module)
            for name in sorted(set(imported.__all__) - set(names)):
                value = getattr(imported, name)
                if not (isinstance(value, type) and issubclass(value, StageflowError)):
                    unlisted.append(f"{module}.{name}")
        assert unlisted == []

    async def test_interceptor_example_is_a_pass_through_interceptor(self) -> None:
        """The interceptor example defines a working pass-through interceptor."""
        namespace: dict[str, Any] = {}
        exec(python_blocks("Interceptors")[0], namespace)
        timing = namespace["Timing"]()
        assert isinstance(timing, Interceptor) and timing.priority == 60

        async def stage(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(v=1)

        graph = Pipeline().with_stage("s", stage, StageKind.WORK).build([timing])
        results = await asyncio.wait_for(graph.run(make_ctx()), 5)
        assert dict(results["s"].data) == {"v": 1}

    def test_example_pipeline_prints_timeline_and_critical_path(self) -> None:
        """examples/voice_pipeline.py prints its timeline (critical path included), reply and flowchart."""
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
        assert "  critical path (*): stt → memory → llm → tts" in lines
        assert lines[0].startswith("pipeline 'voice' · run ") and " · completed in " in lines[0]
        assert "flowchart TD" in lines
