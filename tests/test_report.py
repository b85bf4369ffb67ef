"""The HTML report: statistics, structure, self-containment, and ``stageflow report``.

It runs past 500 lines because the report's statistics, page structure and command are one view, checked end
to end.
"""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stageflow import Pipeline, RunRecord, SQLiteRunStore, StageKind, StageOutput, StageRecord
from stageflow.views import _svg
from stageflow.views._cli import main
from stageflow.views._report import MESSAGE_LIMIT, NAME_LIMIT, bounded, percentile, render_report, stage_stats
from stageflow.views._svg import STATUS_STYLES, DagNode, dag_svg, gantt_svg
from stageflow.views._timeline import TimelineRow

from ._runs_store import RECORDS, T0, write_store

SVG = "{http://www.w3.org/2000/svg}"
ASSISTANT = [
    DagNode("stt", "transform", ()),
    DagNode("enrich", "enrich", ("stt",)),
    DagNode("memory", "enrich", ("stt",)),
    DagNode("search", "enrich", ("stt",)),
    DagNode("personalize", "enrich", ("memory",), conditional=True),
    DagNode("llm", "agent", ("enrich", "search", "personalize")),
    DagNode("guard", "guard", ("llm",)),
    DagNode("tts", "transform", ("guard",)),
]
"""A voice assistant's DAG, whose two edges into ``llm`` from the first column pass ``personalize``."""

Box = tuple[float, float, float, float]
"""x, y, width, height."""


pytestmark = pytest.mark.usefixtures("utc")


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
            "timed out: stage &#x27;llm&#x27; timed out after 0.2 s</title>"
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


def path_points(d: str, steps: int = 64) -> list[tuple[float, float]]:
    """Points along an SVG path made of ``M``, ``L`` and ``C`` commands, ``steps`` per segment."""
    tokens = d.replace(",", " ").split()
    points: list[tuple[float, float]] = []
    at = (0.0, 0.0)
    i = 0
    while i < len(tokens):
        command = tokens[i]
        numbers = [float(t) for t in tokens[i + 1 : i + {"M": 3, "L": 3, "C": 7}[command]]]
        i += len(numbers) + 1
        if command == "M":
            at = (numbers[0], numbers[1])
            points.append(at)
            continue
        controls = (
            [at, (numbers[0], numbers[1])]
            if command == "L"
            else [at, *zip(numbers[::2], numbers[1::2], strict=True)]
        )
        for step in range(1, steps + 1):
            t = step / steps
            if command == "L":
                (x0, y0), (x1, y1) = controls
                points.append((x0 + (x1 - x0) * t, y0 + (y1 - y0) * t))
            else:
                (x0, y0), (x1, y1), (x2, y2), (x3, y3) = controls
                a, b, c, e = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
                points.append((a * x0 + b * x1 + c * x2 + e * x3, a * y0 + b * y1 + c * y2 + e * y3))
        at = points[-1]
    return points


def inside(point: tuple[float, float], box: Box, margin: float = 0.5) -> bool:
    """Whether ``point`` lies strictly inside ``box`` (more than ``margin`` from its outline)."""
    x, y, w, h = box
    return x + margin < point[0] < x + w - margin and y + margin < point[1] < y + h - margin


def drawing(nodes: list[DagNode]) -> tuple[dict[str, Box], list[tuple[str, str, str, str]]]:
    """The boxes (by stage) and edges (from, to, path, which end has the arrow) of ``dag_svg(nodes)``."""
    svg = ET.fromstring(dag_svg(nodes))
    boxes: dict[str, Box] = {}
    for g in svg.iter(f"{SVG}g"):
        rect = g.find(f"{SVG}rect")
        assert rect is not None
        boxes[g.get("data-stage", "")] = (
            float(rect.get("x", "")),
            float(rect.get("y", "")),
            float(rect.get("width", "")),
            float(rect.get("height", "")),
        )
    edges = [
        (
            p.get("data-from", ""),
            p.get("data-to", ""),
            p.get("d", ""),
            "start" if p.get("marker-start") else "end",
        )
        for p in svg.iter(f"{SVG}path")
        if p.get("class") == "edge"
    ]
    return boxes, edges


def crossings(boxes: dict[str, Box], edges: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str]]:
    """Every (edge source, edge target, box) where the edge passes through the box's inside."""
    return [
        (source, target, name)
        for source, target, d, _ in edges
        for name, box in boxes.items()
        if any(inside(point, box) for point in path_points(d))
    ]


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 16) -> list[DagNode]:
    """A random DAG: node i may depend on up to 4 nodes j < i; declared in a random order."""
    n = draw(st.integers(min_value=1, max_value=max_nodes))
    deps = [
        tuple(f"s{j}" for j in draw(st.lists(st.integers(0, i - 1), max_size=4))) if i else ()
        for i in range(n)
    ]
    order = draw(st.permutations(range(n)))
    return [DagNode(f"s{i}", "work", deps[i]) for i in order]


class TestDagLayout:
    def test_long_edges_pass_beside_the_boxes_between(self) -> None:
        """The edges into ``llm`` from the first column run in lanes above and below ``personalize``."""
        boxes, edges = drawing(ASSISTANT)
        assert {name: box[:2] for name, box in boxes.items()} == {
            "stt": (12, 74),
            "enrich": (218, 12),
            "memory": (218, 74),
            "search": (218, 136),
            "personalize": (424, 74),
            "llm": (630, 74),
            "guard": (836, 74),
            "tts": (1042, 74),
        }
        lanes = {(source, target): d for source, target, d, _ in edges if " L " in d}
        assert lanes == {
            ("enrich", "llm"): "M 368 34 C 396 34, 396 62, 424 62 L 574 62 C 602 62, 602 85, 630 85",
            ("search", "llm"): "M 368 158 C 396 158, 396 130, 424 130 L 574 130 C 602 130, 602 107, 630 107",
        }
        assert crossings(boxes, edges) == []

    def test_edges_into_one_stage_arrive_apart(self) -> None:
        """Three edges into ``llm`` end at three points spread down its left side, ordered by source."""
        _, edges = drawing(ASSISTANT)
        ends = [(source, path_points(d)[-1]) for source, target, d, _ in edges if target == "llm"]
        assert ends == [("enrich", (630, 85)), ("search", (630, 107)), ("personalize", (630, 96))]

    @given(dags())
    @settings(max_examples=150, deadline=None, database=None)
    def test_no_edge_crosses_a_box(self, nodes: list[DagNode]) -> None:
        """In any DAG, boxes do not overlap, and every edge leaves its source's right side, enters its
        target's left side, and passes through no box."""
        boxes, edges = drawing(nodes)
        names = sorted(boxes)
        overlapping = [
            (a, b)
            for a in names
            for b in names
            if a < b and any(inside(corner, boxes[b], -1) for corner in corners(boxes[a]))
        ]
        assert overlapping == []
        declared = [(dep, node.name) for node in nodes for dep in dict.fromkeys(node.dependencies)]
        assert [(source, target) for source, target, _, _ in edges] == declared
        for source, target, d, _ in edges:
            (sx, sy), (ex, ey) = path_points(d)[0], path_points(d)[-1]
            x, y, w, h = boxes[source]
            assert (sx, y < sy < y + h) == (x + w, True)
            x, y, w, h = boxes[target]
            assert (ex, y < ey < y + h) == (x, True)
        assert crossings(boxes, edges) == []

    @given(dags())
    @settings(max_examples=60, deadline=None, database=None)
    def test_columns_are_dependency_depths(self, nodes: list[DagNode]) -> None:
        """A stage's column is the length of the longest dependency chain leading to it."""
        boxes, _ = drawing(nodes)
        by_name = {node.name: node for node in nodes}
        depth: dict[str, int] = {}

        def depth_of(name: str) -> int:
            if name not in depth:
                depth[name] = 1 + max((depth_of(d) for d in by_name[name].dependencies), default=-1)
            return depth[name]

        assert {name: box[0] for name, box in boxes.items()} == {
            name: 12 + 206 * depth_of(name) for name in by_name
        }

    def test_dense_dags_get_fewer_rounds_and_stay_clear(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With the least work budget (one ordering sweep, one placement round) edges still pass clear of
        every box: lanes, not the ordering, keep them apart."""
        monkeypatch.setattr(_svg, "_WORK_BUDGET", 1)
        rng = random.Random(7)
        dense = [
            DagNode(f"s{i}", "work", tuple(f"s{j}" for j in rng.sample(range(i), min(i, 4))))
            for i in range(40)
        ]
        for nodes in (ASSISTANT, dense):
            boxes, edges = drawing(nodes)
            assert (len(edges), crossings(boxes, edges)) == (sum(len(n.dependencies) for n in nodes), [])

    def test_a_cyclic_stored_dag_is_drawn(self) -> None:
        """A cycle (possible only in a damaged store) is drawn with one edge reversed, arrow at its start;
        self and unknown dependencies are left out and a repeated name keeps its first node."""
        nodes = [
            DagNode("a", "work", ("c", "a", "ghost")),
            DagNode("b", "work", ("a",)),
            DagNode("c", "work", ("b",)),
            DagNode("a", "other", ()),
        ]
        boxes, edges = drawing(nodes)
        assert [(source, target, arrow) for source, target, _, arrow in edges] == [
            ("c", "a", "start"),
            ("a", "b", "end"),
            ("b", "c", "end"),
        ]
        assert [box[0] for box in boxes.values()] == [12, 218, 424]
        assert crossings(boxes, edges) == []

    def test_no_stages(self) -> None:
        """An empty DAG is an empty drawing of one column's size."""
        svg = ET.fromstring(dag_svg([]))
        assert (svg.get("width"), svg.get("height"), len(list(svg.iter(f"{SVG}g")))) == ("174", "68", 0)


def corners(box: Box) -> list[tuple[float, float]]:
    x, y, w, h = box
    return [(x, y), (x + w, y), (x, y + h), (x + w, y + h), (x + w / 2, y + h / 2)]


def stage(
    name: str,
    status: str = "ok",
    *,
    attempts: int = 1,
    error: str | None = None,
    error_type: str | None = None,
    dependencies: tuple[str, ...] = (),
) -> StageRecord:
    """A stage of ``run``: started at T0 + 0.1, ended at T0 + 0.2."""
    return StageRecord(
        name, "work", status, T0 + 0.1, T0 + 0.2, 0.0, attempts, error, error_type, dependencies
    )


def run(
    *stages: StageRecord, status: str = "completed", error: str | None = None, run_id: str = "r1"
) -> RunRecord:
    """A run of pipeline ``p`` from T0 to T0 + 0.3 with ``stages``."""
    return RunRecord(run_id, "p", status, T0, T0 + 0.3, stages, (), error)


class TestStatusesInTheReport:
    def test_labels_take_their_status_colour_from_the_legend(self) -> None:
        """A skipped stage's label is grey like its legend entry, a failed one red, a cancelled one amber."""
        html = render_report(
            [run(stage("a", "skip"), stage("b", "fail", error="boom"), stage("c", "cancel"), status="failed")]
        )
        marks = re.findall(r'<text class="mark (\w+)"[^>]* fill="(#\w+)">([^<]*)</text>', html)
        assert marks == [
            ("skip", "#616161", "skipped"),
            ("fail", "#b71c1c", "✗ failed"),
            ("cancel", "#8a5300", "cancelled"),
        ]
        legend = re.search(r'<p class="legend">(.*?)</p>', html)
        assert legend is not None
        assert re.findall(r'<span class="status-(\w+)">(\w+)</span>', legend.group(1)) == [
            ("ok", "ok"),
            ("fail", "failed"),
            ("skip", "skipped"),
            ("cancel", "cancelled"),
        ]
        rules = dict(re.findall(r"\.status-(\w+) \{ color: (#\w+); \}", html))
        assert rules == {"ok": "#2e7d32", "fail": "#b71c1c", "skip": "#616161", "cancel": "#8a5300"}
        assert {status: style.text for status, style in STATUS_STYLES.items()} == rules

    def test_reasons_are_shown_on_the_page(self) -> None:
        """Under each Gantt chart, every stage that did not simply succeed is listed with its reason."""
        record = run(
            stage("stt"),
            stage("memory", "skip", error="anonymous user: no memory"),
            stage("personalize", "skip", error="dependency 'memory' was skipped"),
            stage("search", attempts=2),
            stage("cite", "skip"),
            stage("llm", "fail", attempts=3, error="timed out after 0.2 s", error_type="StageTimeoutError"),
            stage("tts", "cancel", error="caller went away"),
            status="failed",
        )
        items = re.findall(r'<ul class="outcomes">\n(.*?)\n</ul>', render_report([record]), re.S)
        assert items[0].split("\n") == [
            '<li data-stage="memory"><strong>memory</strong> <span class="status-skip">skipped: '
            '<span class="message">anonymous user: no memory</span></span></li>',
            '<li data-stage="personalize"><strong>personalize</strong> <span class="status-skip">skipped: '
            '<span class="message">dependency &#x27;memory&#x27; was skipped</span></span></li>',
            '<li data-stage="search"><strong>search</strong> '
            '<span class="status-ok">ok after 2 attempts</span></li>',
            '<li data-stage="cite"><strong>cite</strong> '
            '<span class="status-skip">skipped (no reason given)</span></li>',
            '<li data-stage="llm"><strong>llm</strong> <span class="status-fail">failed after 3 attempts: '
            '<span class="message">StageTimeoutError: timed out after 0.2 s</span></span></li>',
            '<li data-stage="tts"><strong>tts</strong> <span class="status-cancel">cancelled: '
            '<span class="message">caller went away</span></span></li>',
        ]

    def test_a_run_where_every_stage_succeeded_at_once_lists_nothing(self) -> None:
        """No list is written for a run without failures, skips, cancellations or retries."""
        assert '<ul class="outcomes">' not in render_report([run(stage("a"), stage("b"))])

    def test_attempts_beside_the_bars_and_in_their_titles(self) -> None:
        """A stage that took several attempts says so beside its bar and in its hover title."""
        rows = [TimelineRow("a", "ok", 0.0, 0.0, 1.0), TimelineRow("b", "fail", 1.0, 1.0, 2.0, "E: x")]
        svg = gantt_svg(rows, start=0.0, end=4.0, attempts={"a": 2, "b": 3})
        assert re.findall(r'<text class="mark (\w+)"[^>]*>([^<]*)</text>', svg) == [
            ("ok", "2 attempts"),
            ("fail", "✗ failed after 3 attempts"),
        ]
        assert re.findall(r"<rect class=\"run [^>]*><title>([^<]*)</title>", svg) == [
            "a: ok, 2 attempts, ran 1.00 s (from 0.0 ms to 1.00 s), waited 0.0 ms",
            "b: fail, 3 attempts, ran 1.00 s (from 1.00 s to 2.00 s), waited 0.0 ms; E: x",
        ]

    def test_retried_runs_per_stage(self) -> None:
        """The stage table counts, per stage, the runs in which it took more than one attempt."""
        records = [
            run(stage("a", attempts=2), stage("b"), run_id="r1"),
            run(stage("a", attempts=3), stage("b"), run_id="r2"),
            run(stage("a"), stage("b"), run_id="r3"),
        ]
        assert [(s.name, s.retried) for s in stage_stats(records)] == [("a", 2), ("b", 0)]
        html = render_report(records)
        cells = re.findall(r'<tr data-stage="a"><td>a</td>((?:<td class="num">[^<]*</td>){4})', html)
        assert cells == [
            '<td class="num">3</td><td class="num">0</td><td class="num">0</td><td class="num">2</td>'
        ]


class TestReportSize:
    def test_long_text_is_cut_with_a_marker(self) -> None:
        """Messages keep MESSAGE_LIMIT characters, names NAME_LIMIT, each followed by what was cut."""
        long_name = "n" * (NAME_LIMIT + 5)
        record = run(
            stage(long_name, "fail", error="m" * (MESSAGE_LIMIT + 1234), error_type="E" * NAME_LIMIT),
            status="failed",
            error="e" * MESSAGE_LIMIT,
            run_id="i" * (NAME_LIMIT + 1),
        )
        cut = bounded(replace(record, critical_path=(long_name,), pipeline="p" * 300))
        name = "n" * NAME_LIMIT + "… [5 more characters not shown]"
        assert cut.stages == (
            replace(
                record.stages[0], name=name, error="m" * MESSAGE_LIMIT + "… [1,234 more characters not shown]"
            ),
        )
        assert (cut.run_id, cut.pipeline, cut.critical_path, cut.error) == (
            "i" * NAME_LIMIT + "… [1 more characters not shown]",
            "p" * NAME_LIMIT + "… [100 more characters not shown]",
            (name,),
            "e" * MESSAGE_LIMIT,
        )
        assert (MESSAGE_LIMIT, NAME_LIMIT) == (1000, 200)

    def test_a_message_the_store_cut_counts_everything_left_out(self) -> None:
        """A message a store cut (with the same marker) is cut again, the marker adding both counts."""
        stored = "m" * 4096 + "… [995,904 more characters not shown]"
        cut = bounded(run(stage("a", "fail", error=stored), status="failed", error=stored))
        shown = "m" * MESSAGE_LIMIT + "… [999,000 more characters not shown]"
        assert (cut.stages[0].error, cut.error) == (shown, shown)

    def test_a_hundred_runs_failing_with_a_megabyte_each(self) -> None:
        """100 failed runs whose stage and run messages are 1 MB each give a page under 1 MB."""
        message = "x" * 1_000_000
        records = [
            run(
                stage("a"),
                stage("b", "fail", error=message, error_type="ValueError", dependencies=("a",)),
                status="failed",
                error=f"b: ValueError: {message}",
                run_id=f"run-{i:03}",
            )
            for i in range(100)
        ]
        html = render_report(records)
        assert len(html.encode()) < 1_000_000
        assert (
            html.count("… [999,000 more characters not shown]") == 200
        )  # per run: the bar's title, the reason list
        assert html.count("… [999,015 more characters not shown]") == 100  # the run's error


class TestReportOfAnUnknownPipeline:
    def test_fails_naming_the_pipelines_there(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--pipeline`` naming no pipeline of the store exits 1 naming those it has, and writes nothing."""
        db = write_store(tmp_path / "runs.db")
        out = tmp_path / "report.html"
        assert main(["report", str(db), "-o", str(out), "--pipeline", "nope"]) == 1
        assert capsys.readouterr() == (
            "",
            f"stageflow: error: no runs of pipeline 'nope' in {str(db)!r}; it holds runs of 'etl', 'voice': "
            "pass one of those to --pipeline, or leave --pipeline out\n",
        )
        assert not out.exists()

    def test_an_empty_store(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """In a store without runs, ``--pipeline`` says the store holds none, and writes nothing."""
        db = tmp_path / "empty.db"
        SQLiteRunStore(db).close()
        out = tmp_path / "report.html"
        assert main(["report", str(db), "-o", str(out), "--pipeline", "voice"]) == 1
        assert capsys.readouterr().err == (
            f"stageflow: error: no runs of pipeline 'voice' in {str(db)!r}: it holds no runs yet\n"
        )
        assert not out.exists()

    def test_an_existing_file_is_left_as_it_was(self, tmp_path: Path) -> None:
        """A report written before is not replaced by an empty one."""
        db = write_store(tmp_path / "runs.db")
        out = tmp_path / "report.html"
        out.write_text("the previous report", encoding="utf-8")
        assert main(["report", str(db), "-o", str(out), "--pipeline", "Voice"]) == 1
        assert out.read_text(encoding="utf-8") == "the previous report"
