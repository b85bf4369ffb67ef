"""``with_stage`` is typed: ``mypy --strict`` accepts real stages and rejects what would fail at build()."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HEADER = """\
from stageflow import Pipeline, StageContext, StageKind, StageOutput

"""

SNIPPETS = {
    "good": HEADER
    + """\
class Greet:
    async def execute(self, ctx: StageContext) -> StageOutput:
        return StageOutput.ok(greeting="hi")


async def shout(ctx: StageContext) -> StageOutput:
    return StageOutput.ok()


pipeline = (
    Pipeline(name="typed")
    .with_stage("greet", Greet, StageKind.TRANSFORM)
    .with_stage("object", Greet(), StageKind.TRANSFORM)
    .with_stage("shout", shout, StageKind.TRANSFORM, dependencies=("greet",))
)
""",
    "sync": HEADER
    + """\
from concurrent.futures import ThreadPoolExecutor


class Greet:
    def execute(self, ctx: StageContext) -> StageOutput:
        return StageOutput.ok()


def shout(ctx: StageContext) -> StageOutput:
    return StageOutput.ok()


pool = ThreadPoolExecutor(2)
pipeline = (
    Pipeline()
    .with_stage("greet", Greet, StageKind.TRANSFORM)
    .with_stage("object", Greet(), StageKind.TRANSFORM, executor=pool)
    .with_stage("shout", shout, StageKind.TRANSFORM, executor=pool)
)
graph = pipeline.build(executor=pool, max_threads=4, cancel_grace=0.5)
""",
    "sync_returns_dict": HEADER
    + """\
def shout(ctx: StageContext) -> dict[str, str]:
    return {}


Pipeline().with_stage("shout", shout, StageKind.TRANSFORM)
""",
    "sync_execute_returns_dict": HEADER
    + """\
class Greet:
    def execute(self, ctx: StageContext) -> dict[str, str]:
        return {}


Pipeline().with_stage("greet", Greet(), StageKind.TRANSFORM)
""",
    "returns_dict": HEADER
    + """\
async def shout(ctx: StageContext) -> dict[str, str]:
    return {"shouted": "HI"}


Pipeline().with_stage("shout", shout, StageKind.TRANSFORM)
""",
    "execute_returns_dict": HEADER
    + """\
class Greet:
    async def execute(self, ctx: StageContext) -> dict[str, str]:
        return {}


Pipeline().with_stage("greet", Greet(), StageKind.TRANSFORM)
""",
    "partial_results": """\
from stageflow import PipelineCancelledError, PipelineFailedError, StageGraph


async def run(graph: StageGraph) -> str:
    try:
        await graph.run(input_text="hi")
    except PipelineFailedError as exc:
        return exc.results.timeline() + " ".join(exc.results.critical_path)
    except PipelineCancelledError as exc:
        return exc.results.timeline(color=False) + str(exc.results.duration)
    return ""
""",
}


@pytest.fixture(name="errors", scope="module")
def _errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """mypy --strict's error codes per snippet (one mypy run for all of them)."""
    folder = tmp_path_factory.mktemp("typing")
    paths = {}
    for name, source in SNIPPETS.items():
        paths[name] = folder / f"snippet_{name}.py"
        paths[name].write_text(source, encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--cache-dir",
            str(folder / ".mypy_cache"),
            *map(str, paths.values()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    found: dict[str, list[str]] = {name: [] for name in SNIPPETS}
    for line in proc.stdout.splitlines():
        match = re.match(r".*snippet_(\w+)\.py:\d+: error: .*\[([\w-]+)\]$", line)
        if match:
            found[match.group(1)].append(match.group(2))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return found


class TestWithStageTyping:
    def test_real_stages_type_check(self, errors: dict[str, list[str]]) -> None:
        """A stage class, a stage object and an async function pass mypy --strict."""
        assert errors["good"] == []

    def test_sync_stages_type_check(self, errors: dict[str, list[str]]) -> None:
        """A sync function, a class and an object with a plain ``execute``, and ``executor=`` pass."""
        assert errors["sync"] == []

    def test_partial_results_are_run_results(self, errors: dict[str, list[str]]) -> None:
        """A run error's ``results`` is typed ``RunResult``: its timeline needs no isinstance first."""
        assert errors["partial_results"] == []

    @pytest.mark.parametrize(
        "snippet",
        ["sync_returns_dict", "sync_execute_returns_dict", "returns_dict", "execute_returns_dict"],
        ids=["sync-returns-dict", "sync-execute-returns-dict", "returns-dict", "execute-returns-dict"],
    )
    def test_wrong_stages_are_rejected(self, errors: dict[str, list[str]], snippet: str) -> None:
        """A stage, sync or async, returning something other than a ``StageOutput`` is an arg-type error."""
        assert errors[snippet] == ["arg-type"]
