"""The HTML report: statistics, structure, self-containment, and ``stageflow report``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from stageflow import Pipeline, StageKind, StageOutput
from stageflow._cli import main
from stageflow._report import percentile, render_report, stage_stats

from ._runs_store import RECORDS, write_store


@pytest.fixture(name="utc", autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, in document order."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def having(self, tag: str, cls: str = "") -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and cls in a.get("class", "").split() + [""]]


class TestPercentile:
    @pytest.mark.parametrize(
        ("q", "expected"),
        [(0, 1.0), (50, 2.5), (95, 3.85), (99, 3.97), (100, 4.0)],
        ids=["p0", "p50", "p95", "p99", "p100"],
    )
    def test_interpolates_between_ranks(self, q: float, expected: float) -> None:
        """Percentiles interpolate linearly between the closest ranks."""
        assert percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)

    def test_one_value(self) -> None:
        """A single value is every percentile."""
        assert [percentile([7.0], q) for q in (50, 99)] == [7.0, 7.0]

    @pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], 101)], ids=["empty", "above-100"])
    def test_bad_input(self, values: list[float], q: float) -> None:
        """No values, or a percentile outside 0-100, is a ValueError."""
        with pytest.raises(ValueError, match="percentile"):
            percentile(values, q)


class TestStageStats:
    def test_known_runs(self) -> None:
        """Durations, waits, failures and critical-path shares across the three voice runs."""
        stats = {s.name: s for s in stage_stats(RECORDS[:3])}
        assert list(stats) == ["stt", "memory", "enrich", "llm", "tts"]
        llm = stats["llm"]
        assert (llm.runs, llm.failures, llm.critical_runs) == (3, 1, 3)
        assert (llm.duration_p50, llm.duration_p95, llm.duration_p99) == pytest.approx((0.10, 0.19, 0.198))
        assert (llm.wait_p50, llm.wait_p95, llm.wait_p99) == pytest.approx((0.01, 0.01, 0.01))
        assert (stats["tts"].runs, stats["tts"].critical_runs, stats["enrich"].critical_runs) == (2, 2, 0)
        shares = {name: s.critical_share for name, s in stats.items()}
        assert shares == pytest.approx(
            {"stt": 0.09 / 0.63, "memory": 0.12 / 0.63, "enrich": 0.0, "llm": 0.38 / 0.63, "tts": 0.04 / 0.63}
        )


class TestReportPage:
    def test_structure_of_a_known_store(self) -> None:
        """One section per pipeline, a DAG each, a Gantt chart per run, failures and skips marked."""
        page = Tags(render_report(RECORDS, source="runs.db"))
        assert [a["id"] for a in page.having("section", "pipeline")] == ["pipeline-etl", "pipeline-voice"]
        assert len(page.having("svg", "dag")) == 2
        assert len(page.having("svg", "gantt")) == 4
        assert [a["id"] for a in page.having("div", "run")] == [f"run-{r.run_id}" for r in reversed(RECORDS)]
        runs = page.having("rect", "run")
        assert sorted({a["class"] for a in runs}) == [
            "run fail critical",
            "run ok",
            "run ok critical",
            "run skip critical",
        ]
        edges = [(a["data-from"], a["data-to"]) for a in page.having("path", "edge")]
        assert edges == [
            ("extract", "load"),
            ("stt", "memory"),
            ("stt", "enrich"),
            ("memory", "llm"),
            ("enrich", "llm"),
            ("llm", "tts"),
        ]
        stats_rows = [a["data-stage"] for a in page.having("tr") if "data-stage" in a]
        assert stats_rows == ["extract", "load", "stt", "memory", "enrich", "llm", "tts"]

    def test_self_contained(self) -> None:
        """No scripts and no reference to anything outside the page (only in-page #anchors)."""
        html = render_report(RECORDS)
        page = Tags(html)
        assert page.having("script") == [] and page.having("link") == [] and page.having("img") == []
        refs = [v for _, a in page.tags for k, v in a.items() if k in ("href", "src", "xlink:href")]
        assert refs and all(ref.startswith("#") for ref in refs)
        assert "url(" not in html.replace("url(#dag0-arrow)", "").replace("url(#dag1-arrow)", "")

    def test_hover_titles_carry_the_numbers(self) -> None:
        """Each run bar's <title> gives status, duration, start, end and wait."""
        html = render_report([RECORDS[2]])
        assert (
            "<title>llm: fail, ran 200.0 ms (from 80.0 ms to 280.0 ms), waited 10.0 ms; "
            "StageTimeoutError: stage &#x27;llm&#x27; timed out after 0.2 s</title>"
        ) in html
        assert "<title>llm waited 10.0 ms for its dependencies</title>" in html

    def test_names_are_escaped(self) -> None:
        """Pipeline and stage names reach the page escaped, and ids stay fragment-safe."""
        evil = replace(RECORDS[3], pipeline="<b>x y</b>", run_id="r <1>")
        html = render_report([evil])
        assert "<b>" not in html and "&lt;b&gt;x y&lt;/b&gt;" in html
        assert 'id="pipeline--b-x-y--b-"' in html and 'id="run-r--1-"' in html

    def test_empty_store(self) -> None:
        """A store without runs gives a page saying so."""
        assert '<p class="empty">The store holds no runs yet.</p>' in render_report([])

    def test_declared_graph_replaces_the_recorded_dag(self) -> None:
        """A pipeline passed as a graph is drawn as declared, with stages no run reached."""

        async def ok(ctx: object) -> StageOutput:
            return StageOutput.ok()

        graph = (
            Pipeline(name="etl")
            .with_stage("extract", ok, StageKind.WORK)
            .with_stage("load", ok, StageKind.WORK, dependencies=("extract",))
            .with_stage("audit", ok, StageKind.WORK, dependencies=("load",), conditional=True)
            .build()
        )
        page = Tags(render_report([RECORDS[3]], graphs=[graph]))
        assert [a["data-stage"] for a in page.having("g", "node")] == ["extract", "load", "audit"]


class TestReportCommand:
    def test_writes_the_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """``stageflow report DB --output FILE`` writes the page for the store's runs."""
        db = write_store(tmp_path / "runs.db")
        out = tmp_path / "report.html"
        assert main(["report", str(db), "--output", str(out)]) == 0
        assert capsys.readouterr().out == f"wrote {out} (4 runs)\n"
        html = out.read_text(encoding="utf-8")
        assert html.startswith("<!DOCTYPE html>") and f"stageflow runs — {db}" in html
        assert len(Tags(html).having("svg", "gantt")) == 4

    def test_pipeline_filter(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """``--pipeline`` keeps one pipeline's runs."""
        db = write_store(tmp_path / "runs.db")
        out = tmp_path / "r.html"
        assert main(["report", str(db), "-o", str(out), "--pipeline", "etl"]) == 0
        assert [a["id"] for a in Tags(out.read_text()).having("section", "pipeline")] == ["pipeline-etl"]
