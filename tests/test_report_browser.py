"""The HTML report in a real headless Chromium: it renders, quietly, offline, with what it promises.

It runs past 500 lines because each module-scoped page is opened once in one headless Chromium, and every
check of it runs there.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from stageflow import (
    Pipeline,
    PipelineRunError,
    RetryPolicy,
    RunIdentity,
    SQLiteRunStore,
    StageContext,
    StageKind,
    StageOutput,
)
from stageflow.views._cli import main

from ._chromium import Chromium, chromium_path
from ._runs_store import RECORDS, STATS_COLUMNS, STREAMED, write_store

CHROMIUM = chromium_path()
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(name="browser", scope="module")
def _browser() -> Iterator[Chromium]:
    assert CHROMIUM is not None, "CI must install Chromium (.ci/run: apt-get install chromium)"
    with Chromium(CHROMIUM) as browser:
        yield browser


@pytest.fixture(name="report", scope="module")
def _report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    db = write_store(folder / "runs.db")
    out = folder / "report.html"
    assert main(["report", str(db), "--output", str(out)]) == 0
    return out


async def record_assistant_runs(store: SQLiteRunStore) -> None:
    """Run a voice assistant three times into ``store``: its ``search`` fails once and
    succeeds on a second attempt; the second run is anonymous (``memory`` and ``personalize`` skipped);
    the third fails in ``llm`` with a 5,000-character message."""
    search_fails = deque([True, False, False, False])

    async def ok(ctx: StageContext) -> StageOutput:
        return StageOutput.ok()

    async def memory(ctx: StageContext) -> StageOutput:
        if ctx.data.get("anonymous"):
            return StageOutput.skip(reason="anonymous user: no memory")
        return StageOutput.ok()

    async def search(ctx: StageContext) -> StageOutput:
        if search_fails.popleft():
            raise ConnectionError("web search API returned 503")
        return StageOutput.ok()

    async def llm(ctx: StageContext) -> StageOutput:
        if ctx.data.get("refuse"):
            raise ValueError("model refused: " + "x" * 4985)
        return StageOutput.ok()

    async def no_wait(seconds: float) -> None:
        pass

    graph = (
        Pipeline(name="assistant")
        .with_stage("stt", ok, StageKind.TRANSFORM)
        .with_stage("enrich", ok, StageKind.ENRICH, dependencies=("stt",))
        .with_stage("memory", memory, StageKind.ENRICH, dependencies=("stt",))
        .with_stage(
            "search", search, StageKind.ENRICH, dependencies=("stt",), retry=RetryPolicy(sleep=no_wait)
        )
        .with_stage("personalize", ok, StageKind.ENRICH, dependencies=("memory",), conditional=True)
        .with_stage("llm", llm, StageKind.AGENT, dependencies=("enrich", "search", "personalize"))
        .with_stage("guard", ok, StageKind.GUARD, dependencies=("llm",))
        .with_stage("tts", ok, StageKind.TRANSFORM, dependencies=("guard",))
        .build(run_store=store)
    )
    for n, data in enumerate(({}, {"anonymous": True}), start=1):
        await graph.run(data=data, run_id=RunIdentity(pipeline_run_id=UUID(int=n)))
    with pytest.raises(PipelineRunError):
        await graph.run(data={"refuse": True}, run_id=RunIdentity(pipeline_run_id=UUID(int=3)))


def report_of(folder: Path, record: Callable[[SQLiteRunStore], Coroutine[Any, Any, None]]) -> Path:
    """The report ``stageflow report`` writes of the runs ``record`` stores in ``folder / "runs.db"``."""
    db = folder / "runs.db"
    store = SQLiteRunStore(db)
    try:
        asyncio.run(record(store))
    finally:
        store.close()
    out = folder / "report.html"
    assert main(["report", str(db), "--output", str(out)]) == 0
    return out


@pytest.fixture(name="assistant", scope="module")
def _assistant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return report_of(tmp_path_factory.mktemp("assistant"), record_assistant_runs)


CROSSINGS = """
[...document.querySelectorAll('svg.dag')].flatMap(svg => {
  const boxes = [...svg.querySelectorAll('g.node')]
    .map(g => [g.dataset.stage, g.querySelector('rect').getBBox()]);
  return [...svg.querySelectorAll('path.edge')].map(path => {
    const length = path.getTotalLength(), crossed = new Set();
    for (let at = 0; at <= length; at += 0.5) {
      const p = path.getPointAtLength(at);
      for (const [name, b] of boxes)
        if (p.x > b.x + 0.5 && p.x < b.x + b.width - 0.5 && p.y > b.y + 0.5 && p.y < b.y + b.height - 0.5)
          crossed.add(name);
    }
    return [path.dataset.from, path.dataset.to, Math.round(length) > 0, [...crossed]];
  });
})
"""
"""Per DAG edge on the page: its ends, whether it has a length, and the boxes it passes through."""


def count(browser: Chromium, selector: str) -> int:
    value = browser.evaluate(f"document.querySelectorAll({selector!r}).length")
    assert isinstance(value, int)
    return value


class TestReportInChromium:
    def test_renders_with_no_console_errors_and_no_network(self, browser: Chromium, report: Path) -> None:
        """Opened from file://, the page logs nothing and requests nothing but itself."""
        load = browser.load(report.as_uri())
        assert load.console == []
        assert load.requests == [report.as_uri()]

    def test_expected_elements(self, browser: Chromium, report: Path) -> None:
        """Both pipelines, both DAGs, a Gantt per run, the failed bar and the stats rows are in the DOM."""
        browser.load(report.as_uri())
        assert [count(browser, s) for s in ("section.pipeline", "svg.dag", "svg.gantt", "div.run")] == [
            2,
            2,
            4,
            4,
        ]
        failed = f"#run-{RECORDS[2].run_id} rect.run.fail.critical"
        assert count(browser, failed) == 1
        assert browser.evaluate(f"document.querySelector({failed!r}).querySelector('title').textContent") == (
            "llm: fail, ran 200.0 ms (from 80.0 ms to 280.0 ms), waited 10.0 ms; "
            "timed out: stage 'llm' timed out after 0.2 s"
        )
        assert count(browser, "rect.run.skip") == 1
        assert count(browser, "#pipeline-voice g.node.critical") == 3  # the latest voice run's path
        rows = browser.evaluate(
            "[...document.querySelectorAll('#pipeline-voice table.stats tbody tr')]"
            ".map(r => [...r.cells].map(c => c.textContent))"
        )
        assert rows[3] == [
            "llm",
            "3",
            "1",
            "0",
            "0",
            "100.0 ms",
            "190.0 ms",
            "198.0 ms",
            "10.0 ms",
            "10.0 ms",
            "10.0 ms",
            "3 (100%)",
            "60%",
        ]

    def test_every_drawing_has_a_size_on_screen(self, browser: Chromium, report: Path) -> None:
        """Every SVG lays out with a positive size, and every run bar is at least a pixel wide."""
        browser.load(report.as_uri())
        sizes = browser.evaluate(
            "[...document.querySelectorAll('svg')].map(s => { const b = s.getBoundingClientRect();"
            " return [b.width > 100, b.height > 20]; })"
        )
        assert sizes == [[True, True]] * 6
        assert browser.evaluate(
            "[...document.querySelectorAll('rect.run')].every(r => r.getBoundingClientRect().width >= 1)"
        )

    def test_screenshot(self, browser: Chromium, report: Path, tmp_path: Path) -> None:
        """A full-page PNG screenshot of the report is produced."""
        browser.load(report.as_uri())
        shot = browser.screenshot(tmp_path / "report.png")
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 700 and height >= 1000

    def test_the_harness_sees_errors_and_requests(self, browser: Chromium, tmp_path: Path) -> None:
        """A page with a console error, an exception and a remote image is reported as such."""
        page = tmp_path / "bad.html"
        page.write_text(
            "<html><body><script>console.error('oops'); missing();</script>"
            '<img src="http://127.0.0.1:9/x.png"></body></html>'
        )
        load = browser.load(page.as_uri())
        assert "error: oops" in load.console
        assert any(
            line.startswith("exception: ReferenceError: missing is not defined") for line in load.console
        )
        assert load.requests == [page.as_uri(), "http://127.0.0.1:9/x.png"]


class TestAssistantReportInChromium:
    def test_no_edge_passes_through_a_box(self, browser: Chromium, assistant: Path) -> None:
        """As Chromium lays the DAG out, no edge passes through any box, those it joins included."""
        assert browser.load(assistant.as_uri()).console == []
        assert browser.evaluate(CROSSINGS) == [
            ["stt", "enrich", True, []],
            ["stt", "memory", True, []],
            ["stt", "search", True, []],
            ["memory", "personalize", True, []],
            ["enrich", "llm", True, []],
            ["search", "llm", True, []],
            ["personalize", "llm", True, []],
            ["llm", "guard", True, []],
            ["guard", "tts", True, []],
        ]

    def test_the_known_store_too(self, browser: Chromium, report: Path) -> None:
        """Both DAGs of the known store are drawn clear of their boxes."""
        browser.load(report.as_uri())
        crossings = browser.evaluate(CROSSINGS)
        assert [(source, target, crossed) for source, target, _, crossed in crossings] == [
            ("extract", "load", []),
            ("stt", "memory", []),
            ("stt", "enrich", []),
            ("memory", "llm", []),
            ("enrich", "llm", []),
            ("llm", "tts", []),
        ]

    def test_screenshot(self, browser: Chromium, assistant: Path, tmp_path: Path) -> None:
        """A full-page screenshot of the voice assistant's report is produced."""
        browser.load(assistant.as_uri())
        data = browser.screenshot(tmp_path / "assistant.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"

    def test_labels_and_legend_agree_on_colours(self, browser: Chromium, assistant: Path) -> None:
        """Each label beside a bar has the colour of its status's legend text, each bar its swatch's."""
        browser.load(assistant.as_uri())
        colours = browser.evaluate(
            "[...document.querySelectorAll('text.mark')].map(t => { const status = t.classList[1];"
            " const legend = document.querySelector('.legend .status-' + status);"
            " const bar = t.parentNode.querySelector('rect.run'), swatch = legend.previousElementSibling;"
            " return [status, t.textContent, getComputedStyle(t).fill === getComputedStyle(legend).color,"
            " getComputedStyle(bar).fill === getComputedStyle(swatch).backgroundColor]; })"
        )
        assert colours == [
            ["fail", "✗ error", True, True],
            ["skip", "skipped", True, True],
            ["skip", "skipped", True, True],
            ["ok", "2 attempts", True, True],
        ]
        assert (
            browser.evaluate("getComputedStyle(document.querySelector('text.mark.skip')).fill")
            == "rgb(97, 97, 97)"
        )

    def test_reasons_and_retries_are_on_the_page(self, browser: Chromium, assistant: Path) -> None:
        """Skip reasons, retries, failures and stages that never started are visible text under each chart,
        long messages cut."""
        browser.load(assistant.as_uri())
        items = browser.evaluate(
            "[...document.querySelectorAll('ul.outcomes li')].map(li => "
            "[li.closest('div.run').id, li.innerText, li.getBoundingClientRect().height > 0])"
        )
        message = "ValueError: model refused: " + "x" * 985 + "… [4,000 more characters not shown]"
        assert items == [
            ["run-00000000-0000-0000-0000-000000000003", f"llm error: {message}", True],
            ["run-00000000-0000-0000-0000-000000000003", "guard not started", True],
            ["run-00000000-0000-0000-0000-000000000003", "tts not started", True],
            ["run-00000000-0000-0000-0000-000000000002", "memory skipped: anonymous user: no memory", True],
            [
                "run-00000000-0000-0000-0000-000000000002",
                "personalize skipped: dependency 'memory' was skipped",
                True,
            ],
            ["run-00000000-0000-0000-0000-000000000001", "search ok after 2 attempts", True],
        ]

    def test_no_horizontal_overflow_on_a_phone(self, browser: Chromium, assistant: Path) -> None:
        """At a phone's 375 px the page is no wider than the screen: wide tables and drawings scroll in
        their own box."""
        browser.set_viewport(375, 812, mobile=True)
        try:
            browser.load(assistant.as_uri())
            widths = browser.evaluate(
                "[window.innerWidth, document.documentElement.scrollWidth,"
                " Math.max(...[...document.body.querySelectorAll('*')]"
                ".filter(e => !e.closest('.scroll') || e.classList.contains('scroll'))"
                ".map(e => Math.ceil(e.getBoundingClientRect().right)))]"
            )
            assert widths[:2] == [375, 375] and widths[2] <= 375
            scrolled = browser.evaluate(
                "[...document.querySelectorAll('.scroll')].map(box => "
                "[box.firstElementChild.tagName.toLowerCase(), box.scrollWidth > box.clientWidth])"
            )
            assert scrolled == [["svg", True], ["table", True], ["table", True]] + [["svg", True]] * 3
        finally:
            browser.reset_viewport()


@pytest.fixture(name="streaming", scope="module")
def _streaming(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("streaming")
    db = write_store(folder / "runs.db", STREAMED)
    out = folder / "report.html"
    assert main(["report", str(db), "--output", str(out)]) == 0
    return out


def cells(browser: Chromium, table: str) -> Any:
    return browser.evaluate(
        f"[...document.querySelectorAll({table!r})].map(r => [...r.cells].map(c => c.textContent))"
    )


class TestStreamingReportInChromium:
    def test_dispatch_and_time_to_first_chunk_per_stage(self, browser: Chromium, streaming: Path) -> None:
        """The stage table shows run time, wait and dispatch apart, and TTFC p50/p95/p99 for the streams."""
        assert browser.load(streaming.as_uri()).console == []
        assert cells(browser, "table.stats thead tr") == [
            [
                *STATS_COLUMNS,
                "dispatch p50",
                "dispatch p95",
                "dispatch p99",
                "TTFC p50",
                "TTFC p95",
                "TTFC p99",
                "on critical path",
                "share of run time on the critical path",
            ]
        ]
        zero, none = ["0.0 ms"] * 3, ["–"] * 3
        assert cells(browser, "table.stats tbody tr") == [
            ["stt", "3", "0", "0", "0", *["50.0 ms"] * 3, *zero, *none, *none, "3 (100%)", "8%"],
            ["embed", "3", "0", "0", "1", "80.0 ms", "116.0 ms", "119.2 ms", *zero, *["20.0 ms"] * 3, *none]
            + ["3 (100%)", "17%"],
            ["llm", "3", "0", "0", "0", *["400.0 ms"] * 3, *zero, *none, "200.0 ms", "290.0 ms", "298.0 ms"]
            + ["3 (100%)", "67%"],
            ["tts", "3", "0", "0", "0", "250.0 ms", "340.0 ms", "348.0 ms", *zero, *none, *["10.0 ms"] * 3]
            + ["3 (100%)", "42%"],
        ]

    def test_time_to_first_output_across_runs_and_per_run(self, browser: Chromium, streaming: Path) -> None:
        """The pipeline's time to first output (p50/p95/p99), where it went, and each run's breakdown."""
        browser.load(streaming.as_uri())
        assert browser.evaluate("document.querySelector('p.first-output').innerText") == (
            "From each run's start to its first output (the final stage's first chunk, or its end when it "
            "does not stream), across 3 runs: p50 360.0 ms, p95 486.0 ms, p99 497.2 ms."
        )
        assert cells(browser, "table.first-output tbody tr") == [
            ["stt", "3", "50.0 ms", "50.0 ms", "50.0 ms", "14%"],
            ["embed", "3", "100.0 ms", "136.0 ms", "139.2 ms", "28%"],
            ["llm", "3", "200.0 ms", "290.0 ms", "298.0 ms", "56%"],
            ["tts", "3", "10.0 ms", "10.0 ms", "10.0 ms", "3%"],
        ]
        assert [row[5] for row in cells(browser, "table.runs tbody tr")] == [
            "500.0 ms",
            "360.0 ms",
            "220.0 ms",
        ]
        assert browser.evaluate(
            "[...document.querySelectorAll('div.run p.first-output')].map(p => p.innerText)"
        ) == [
            "Time to first output 500.0 ms: stt 50.0 ms → embed 140.0 ms → llm 300.0 ms → tts 10.0 ms.",
            "Time to first output 360.0 ms: stt 50.0 ms → embed 100.0 ms → llm 200.0 ms → tts 10.0 ms.",
            "Time to first output 220.0 ms: stt 50.0 ms → embed 60.0 ms → llm 100.0 ms → tts 10.0 ms.",
        ]
        assert browser.evaluate(
            "[...document.querySelectorAll('ul.outcomes li')].map(li => li.innerText)"
        ) == ["embed ok after 2 attempts (its work stopped)"]

    def test_dispatch_bars_and_first_chunk_marks_on_screen(self, browser: Chromium, streaming: Path) -> None:
        """Each embed has a dispatch bar right before its run bar, 20 ms of the 566 px axis wide (runs of
        640, 600 and 560 ms);
        each first-chunk mark stands inside its stage's run bar, at its time to first chunk."""
        browser.load(streaming.as_uri())
        bars = browser.evaluate(
            "[...document.querySelectorAll('rect.dispatch')].map(d => { const r = d.parentNode"
            ".querySelector('rect.run').getBBox(), b = d.getBBox();"
            " return [d.parentNode.dataset.stage, Math.abs(b.x + b.width - r.x) < 0.01,"
            " Math.round(b.width * 100) / 100, d.querySelector('title').textContent]; })"
        )
        assert bars == [
            ["embed", True, 17.69, "embed: dispatch 20.0 ms (its work going to its executor and back)"],
            ["embed", True, 18.86, "embed: dispatch 20.0 ms (its work going to its executor and back)"],
            ["embed", True, 20.21, "embed: dispatch 20.0 ms (its work going to its executor and back)"],
        ]
        marks = browser.evaluate(
            "[...document.querySelectorAll('#run-dddd0007-0000-0000-0000-000000000007 line.first-chunk')]"
            ".map(l => { const r = l.parentNode.querySelector('rect.run').getBBox(), x = l.x1.baseVal.value;"
            " return [l.parentNode.dataset.stage, x > r.x && x < r.x + r.width,"
            " Math.round((x - r.x) * 100) / 100, l.getBoundingClientRect().height > 0]; })"
        )
        # 566 px of axis for 640 ms: llm's first chunk 300 ms after its start, tts's 10 ms after its own
        assert marks == [["llm", True, 265.31, True], ["tts", True, 8.85, True]]
        llm = "#run-dddd0007-0000-0000-0000-000000000007 g[data-stage=llm] rect.run"
        assert browser.evaluate(f"document.querySelector({llm!r}).querySelector('title').textContent") == (
            "llm: ok, ran 400.0 ms (from 190.0 ms to 590.0 ms), waited 0.0 ms, 8 chunks, first after 300.0 ms"
        )

    def test_screenshot(self, browser: Chromium, streaming: Path) -> None:
        """A full-page screenshot of the streaming report is produced (kept in $STAGEFLOW_SCREENSHOTS)."""
        browser.load(streaming.as_uri())
        folder = Path(os.environ.get("STAGEFLOW_SCREENSHOTS") or streaming.parent)
        data = browser.screenshot(folder / "streaming-report.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 700 and height >= 1000

    def test_no_horizontal_overflow_on_a_phone(self, browser: Chromium, streaming: Path) -> None:
        """At 375 px the wider stage table and the first-output table scroll in their own boxes."""
        browser.set_viewport(375, 812, mobile=True)
        try:
            browser.load(streaming.as_uri())
            widths = browser.evaluate("[window.innerWidth, document.documentElement.scrollWidth]")
            assert widths == [375, 375]
        finally:
            browser.reset_viewport()


def embed_sync(ctx: StageContext) -> StageOutput:
    """A sync stage: the engine runs it in a worker thread."""
    return StageOutput.ok(vector=[0.5])


async def record_streaming_runs(store: SQLiteRunStore) -> None:
    """Record into ``store`` three real runs of stt → embed (sync) → llm (streams 3 chunks) → tts (reads
    llm's stream)."""

    async def stt(ctx: StageContext) -> StageOutput:
        return StageOutput.ok(text="hi")

    async def llm(ctx: StageContext) -> AsyncIterator[str]:
        for token in ("Hello", ",", " world."):
            yield token

    async def tts(ctx: StageContext) -> AsyncIterator[bytes]:
        async for token in ctx.inputs.stream("llm"):
            yield token.encode()

    graph = (
        Pipeline(name="live")
        .with_stage("stt", stt, StageKind.TRANSFORM)
        .with_stage("embed", embed_sync, StageKind.ENRICH, dependencies=("stt",))
        .with_stage("llm", llm, StageKind.AGENT, dependencies=("embed",))
        .with_stage("tts", tts, StageKind.TRANSFORM, dependencies=("llm",), streams=("llm",))
        .build(run_store=store)
    )
    for _ in range(3):
        await graph.run()


@pytest.fixture(name="live", scope="module")
def _live(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return report_of(tmp_path_factory.mktemp("live"), record_streaming_runs)


class TestRealStreamingRunsInChromium:
    def test_what_the_engine_measured_reaches_the_page(self, browser: Chromium, live: Path) -> None:
        """Runs recorded by the engine show embed's dispatch, llm's and tts's TTFC, a dispatch bar per run,
        two first-chunk marks per run, and each run's time to first output along stt → embed → llm → tts."""
        assert browser.load(live.as_uri()).console == []
        rows = cells(browser, "table.stats tbody tr")
        time = r"\d+\.\d ms|\d+\.\d\d s"
        shape = [[re.fullmatch(time, cell) is not None for cell in row[11:17]] for row in rows]
        assert [row[0] for row in rows] == ["stt", "embed", "llm", "tts"]
        assert shape == [
            [False] * 6,  # stt: no dispatch, no stream: "–"
            [True] * 3 + [False] * 3,  # embed: dispatch, no stream
            [False] * 3 + [True] * 3,  # llm: streams
            [False] * 3 + [True] * 3,  # tts: streams
        ]
        assert [row[11:14] for row in rows if row[0] in ("stt", "llm", "tts")] == [["–"] * 3] * 3
        assert [
            count(browser, s) for s in ("rect.dispatch", "line.first-chunk", "div.run p.first-output")
        ] == [
            3,
            6,
            3,
        ]
        steps = browser.evaluate(
            "[...document.querySelectorAll('table.first-output tbody tr')].map(r => r.dataset.step)"
        )
        assert steps == ["stt", "embed", "llm", "tts"]
        lines = browser.evaluate(
            "[...document.querySelectorAll('div.run p.first-output')].map(p => p.innerText)"
        )
        pattern = (
            rf"Time to first output ({time}): stt ({time}) → embed ({time}) → llm ({time}) → tts ({time})\."
        )
        assert [re.fullmatch(pattern, line) is not None for line in lines] == [True] * 3
