"""The HTML report of runs with sync stages and streams: dispatch apart from wait and run time, time to
first chunk per stage, and the runs' time to first output with where it went."""

from __future__ import annotations

import re
from dataclasses import replace

from stageflow import RunRecord, StageRecord
from stageflow.views._report import (
    FirstOutputStats,
    FirstOutputStep,
    bounded,
    first_output_stats,
    render_report,
    stage_stats,
)
from stageflow.views._svg import gantt_svg
from stageflow.views._timeline import TimelineRow

from ._runs_store import RECORDS, STATS_COLUMNS, STREAMED

T = 1000.0


def run(run_id: str, ttfc: float, dispatch: float, path: tuple[tuple[str, float], ...]) -> RunRecord:
    """A two-stage run on small, exactly representable times: ``prep`` (sync) then ``llm`` (streams)."""
    return RunRecord(
        run_id,
        "p",
        "completed",
        T,
        T + 1.0,
        (
            StageRecord("prep", "work", "ok", T, T + 0.5, 0.0, 1, dispatch=dispatch),
            StageRecord(
                "llm",
                "agent",
                "ok",
                T + 0.5,
                T + 1.0,
                0.0,
                1,
                dependencies=("prep",),
                chunks=4,
                time_to_first_chunk=ttfc,
            ),
        ),
        ("prep", "llm"),
        first_output_path=path,
    )


RUNS = (
    run("r1", 0.25, 0.125, (("prep", 0.5), ("llm", 0.25))),
    run("r2", 0.125, 0.0625, (("prep", 0.5), ("llm", 0.125))),
    run("r3", 0.5, 0.25, (("prep", 0.5), ("llm", 0.5))),
)


class TestStats:
    def test_dispatch_run_time_and_time_to_first_chunk_per_stage(self) -> None:
        """Run time is the duration less dispatch; TTFC percentiles only for the stage that streamed."""
        prep, llm = stage_stats(RUNS)
        assert (prep.dispatch_p50, prep.dispatch_p95, prep.dispatch_p99, prep.dispatched) == (
            0.125,
            0.2375,
            0.2475,
            3,
        )
        assert (prep.run_p50, prep.run_p95, prep.run_p99) == (0.375, 0.43125, 0.43625)
        assert (prep.duration_p50, prep.streamed, prep.ttfc_p50) == (0.5, 0, None)
        assert (llm.ttfc_p50, llm.ttfc_p95, llm.ttfc_p99, llm.streamed, llm.dispatched) == (
            0.25,
            0.475,
            0.495,
            3,
            0,
        )
        assert (llm.run_p50, llm.dispatch_p50) == (0.5, 0.0)

    def test_time_to_first_output_and_its_steps(self) -> None:
        """Percentiles of the runs' time to first output and of each stage's part, with its share."""
        assert first_output_stats(RUNS) == FirstOutputStats(
            3,
            0.75,
            0.975,
            0.995,
            (
                FirstOutputStep("prep", 3, 0.5, 0.5, 0.5, 1.5 / 2.375),
                FirstOutputStep("llm", 3, 0.25, 0.475, 0.495, 0.875 / 2.375),
            ),
        )

    def test_runs_without_a_first_output_give_none(self) -> None:
        """Runs stored without a first-output path (failed, or by an earlier stageflow) give no stats."""
        assert first_output_stats(RECORDS) is None


class TestPage:
    def test_a_pipeline_without_streams_or_dispatch_keeps_its_columns(self) -> None:
        """No dispatch, TTFC or first-output columns, and no time-to-first-output section, without them."""
        html = render_report(RECORDS)
        head = re.search(r'<table class="stats"><thead><tr>(.*?)</tr>', html)
        assert head is not None
        assert re.findall(r"<th>(.*?)</th>", head.group(1)) == [
            *STATS_COLUMNS,
            "on critical path",
            "share of run time on the critical path",
        ]
        assert 'class="first-output"' not in html and "<th>first output</th>" not in html
        assert 'class="dispatch"' not in html and 'class="first-chunk"' not in html

    def test_the_streaming_store(self) -> None:
        """Every streaming run gets its breakdown line, its dispatch bar and two first-chunk marks."""
        html = render_report(STREAMED)
        assert html.count('<rect class="dispatch"') == 3
        assert html.count('<line class="first-chunk"') == 6
        assert re.findall(r'<p class="first-output">Time to first output (.*?)</p>', html) == [
            "500.0 ms: stt 50.0 ms → embed 140.0 ms → llm 300.0 ms → tts 10.0 ms.",
            "360.0 ms: stt 50.0 ms → embed 100.0 ms → llm 200.0 ms → tts 10.0 ms.",
            "220.0 ms: stt 50.0 ms → embed 60.0 ms → llm 100.0 ms → tts 10.0 ms.",
        ]
        assert re.findall(r'<tr data-step="(\w+)">', html) == ["stt", "embed", "llm", "tts"]

    def test_names_in_the_first_output_path_are_escaped_and_bounded(self) -> None:
        """A stage name on the first-output path reaches the page escaped, cut like every other name."""
        evil = "<b>" + "x" * 300
        record = replace(STREAMED[0], first_output_path=((evil, 0.25),))
        assert bounded(record).first_output_path == (
            ("<b>" + "x" * 197 + "… [103 more characters not shown]", 0.25),
        )
        html = render_report([record])
        assert "<b>" not in html
        assert (
            "Time to first output 250.0 ms: &lt;b&gt;"
            + "x" * 197
            + "… [103 more characters not shown] 250.0 ms."
            in html
        )


class TestGantt:
    def test_dispatch_bar_run_bar_and_first_chunk_mark(self) -> None:
        """On a 1 s axis of 566 px: the dispatch bar covers start → start + dispatch, the run bar the rest,
        the mark stands at the first chunk; the titles give the numbers."""
        svg = gantt_svg(
            [TimelineRow("s", "ok", 0.0, 0.0, 1.0, "", 0.25, 0.5)], start=0.0, end=1.0, chunks={"s": 3}
        )
        assert re.findall(r'<rect class="dispatch" x="([\d.]+)" y="37" width="([\d.]+)"', svg) == [
            ("142.0", "141.50")
        ]
        assert re.findall(r'<rect class="run ok" x="([\d.]+)" y="37" width="([\d.]+)"', svg) == [
            ("283.5", "424.50")
        ]
        assert re.findall(r'<line class="first-chunk" x1="([\d.]+)"', svg) == ["425.00"]
        assert re.findall(r"<title>(s: [^<]*)</title>", svg) == [
            "s: dispatch 250.0 ms (its work going to its executor and back)",
            "s: ok, ran 750.0 ms (from 250.0 ms to 1.00 s), waited 0.0 ms, dispatch 250.0 ms, 3 chunks, "
            "first after 500.0 ms",
            "s: first chunk after 500.0 ms",
        ]
