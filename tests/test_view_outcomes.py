"""Every view says the same of each outcome: ``timeline()``, the run stores, ``stageflow runs list/show``
and the HTML report read the engine's category, list the stages that never started, and count skips apart."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from stageflow import (
    Pipeline,
    PipelineFailedError,
    RunRecord,
    SQLiteRunStore,
    StageContext,
    StageKind,
    StageOutput,
    StageRecord,
    StageTimeoutError,
)
from stageflow.views._cli import main
from stageflow.views._report import render_report, stage_stats

from ._outcome_cases import CASES, EXPECTED, build_case, run_case
from ._support import make_ctx

T0 = 1_780_000_000.0


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``stageflow ARGV`` in process; its stdout (it must succeed)."""
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def stage_line(text: str, name: str) -> str:
    """The timeline line of stage ``name`` (marked ``*`` or not)."""
    (line,) = [line for line in text.splitlines() if re.match(rf"^  [* ] {name} ", line)]
    return line


def note_of(line: str) -> str:
    """What a timeline line says after its numbers (``""`` when nothing)."""
    found = re.search(r".*\d (?:ms|s)  (\S.*)$", line)
    if found is not None:
        return found.group(1)
    return "not started" if line.endswith("  not started") else ""


@pytest.mark.parametrize("case", CASES)
class TestEveryViewAgrees:
    async def test_results_and_timeline(self, case: str) -> None:
        """``StageResult`` and ``RunResult`` carry the case's categories; ``timeline()`` says the table's
        note for ``s``, the run as the table calls it, and lists ``after`` as not started when it was not."""
        expected = EXPECTED[case]
        ran = await run_case(build_case(case))
        s = ran.results["s"]
        assert (s.status.value, s.category, ran.results.category) == (
            expected.status,
            expected.category,
            expected.run_category,
        )
        text = ran.results.timeline(color=False)
        assert f" · {expected.run_said} in " in text.splitlines()[0]
        assert note_of(stage_line(text, "s")) == expected.note
        assert (note_of(stage_line(text, "after")) == "not started") is not expected.after_started

    def test_stored_runs_list_show_and_report(
        self, case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The stored record, ``runs list``, ``runs show`` and the report say what ``timeline()`` says."""
        expected = EXPECTED[case]
        path = tmp_path / "runs.db"
        store = SQLiteRunStore(path)
        ran = asyncio.run(run_case(build_case(case, run_store=store)))
        record = asyncio.run(store.get_run(ran.results.run_id))
        store.close()
        assert record is not None
        s = record.stage("s")
        assert (s.status, s.category, s.error_type) == (
            expected.status,
            expected.category,
            expected.error_type,
        )
        assert (record.status, record.category) == (expected.run_status, expected.run_category)
        assert record.not_started == (() if expected.after_started else ("after",))

        listed = cli(capsys, "runs", "list", str(path)).splitlines()
        assert listed[0].split()[:4] == ["id", "pipeline", "status", "result"]
        assert listed[1].split()[:4] == [
            record.run_id,
            f"case-{case}",
            expected.run_status,
            expected.run_category,
        ]

        shown = cli(capsys, "runs", "show", str(path), record.run_id, "--color", "never")
        drawn = ran.results.timeline(color=False)
        assert shown.splitlines()[0] == drawn.splitlines()[0]
        for name in ("s", "after"):
            assert note_of(stage_line(shown, name)) == note_of(stage_line(drawn, name))

        page = render_report([record])
        runs_row = re.search(r'<td class="status">(.*?)</td><td class="result">(.*?)</td>', page)
        assert runs_row is not None and runs_row.groups() == (expected.run_status, expected.run_category)
        assert f" · {html.escape(expected.run_said)} in " in page
        items = dict(re.findall(r'<li data-stage="(\w+)"><strong>\w+</strong> (.*?)</li>', page))
        if expected.note:
            said = re.sub(r"<[^>]+>", "", items["s"])
            assert html.unescape(said) == expected.note
        else:
            assert "s" not in items
        if not expected.after_started:
            assert items["after"] == '<span class="not-started">not started</span>'
        (stats,) = [st for st in stage_stats([record]) if st.name == "s"]
        assert (stats.failures, stats.skipped) == (
            int(expected.status == "fail"),
            int(expected.category == "skip"),
        )


def memory_cells(page: str) -> list[str]:
    """The numbers of the ``memory`` row of a report's stage table."""
    row = re.search(r'<tr data-stage="memory">(.*?)</tr>', page)
    assert row is not None
    return re.findall(r'<td class="num">([^<]*)</td>', row.group(1))


class TestSkippedRunsInTheStatistics:
    def runs(self) -> list[RunRecord]:
        """Five runs of ``memory``: it ran 40, 30 and 50 ms, and was skipped twice (anonymous users, in
        2 ms; a fallback, in 1 ms)."""
        shapes = [(0.040, "ok", None), (0.002, "skip", "anonymous user"), (0.030, "ok", None)]
        shapes += [(0.001, "skip", "fallback after ConnectionError: 503"), (0.050, "ok", None)]
        return [
            RunRecord(
                f"r{i}",
                "p",
                "completed",
                T0 + i,
                T0 + i + took,
                (
                    StageRecord(
                        "memory",
                        "enrich",
                        status,
                        T0 + i,
                        T0 + i + took,
                        0.001 * i,
                        1,
                        reason,
                        category="success" if status == "ok" else "skip",
                    ),
                ),
                ("memory",),
                category="success",
            )
            for i, (took, status, reason) in enumerate(shapes)
        ]

    def test_percentiles_are_over_the_runs_in_which_the_stage_ran(self) -> None:
        """Duration, run-time and wait percentiles leave out the skipped runs, which are counted apart."""
        (memory,) = stage_stats(self.runs())
        assert (memory.runs, memory.skipped, memory.failures) == (5, 2, 0)
        assert (memory.duration_p50, memory.duration_p95, memory.duration_p99) == pytest.approx(
            (0.040, 0.049, 0.0498)
        )
        assert (memory.run_p50, memory.wait_p50) == pytest.approx((0.040, 0.002))

    def test_a_stage_skipped_in_every_run_has_no_times(self) -> None:
        """A stage that never ran has no percentiles (``None``, drawn as ``–``) and every run skipped."""
        skipped = [r for r in self.runs() if r.stages[0].status == "skip"]
        (memory,) = stage_stats(skipped)
        assert (memory.runs, memory.skipped, memory.duration_p50, memory.wait_p99, memory.run_p95) == (
            2,
            2,
            None,
            None,
            None,
        )
        assert memory_cells(render_report(skipped))[:6] == ["2", "0", "2", "0", "–", "–"]

    def test_the_stage_table_has_a_skipped_column(self) -> None:
        """The report's stage table counts each stage's skips in a column of its own, after ``failed``."""
        page = render_report(self.runs())
        head = re.search(r'<table class="stats"><thead><tr>(.*?)</tr>', page)
        assert head is not None
        assert re.findall(r"<th>(.*?)</th>", head.group(1))[:5] == [
            "stage",
            "runs",
            "failed",
            "skipped",
            "retried",
        ]
        assert memory_cells(page)[:5] == ["5", "0", "2", "0", "40.0 ms"]


class LlmTimeout(StageTimeoutError):
    """A timeout of the application's own: its class name is not ``StageTimeoutError``."""


class Client:
    class QuotaError(Exception):
        """An error class nested in another class: its qualified name differs from its name."""


async def llm_times_out(ctx: StageContext) -> StageOutput:
    raise LlmTimeout("llm", 0.5)


async def over_quota(ctx: StageContext) -> StageOutput:
    raise Client.QuotaError("quota exceeded")


def failed_and_stored(
    path: Path, name: str, runner: Callable[[StageContext], Awaitable[StageOutput]], kind: StageKind
) -> tuple[PipelineFailedError, RunRecord]:
    """Run a one-stage pipeline that fails, recorded in a SQLite store at ``path``: its error and record."""
    store = SQLiteRunStore(path)
    graph = Pipeline(name="p").with_stage(name, runner, kind).build(run_store=store)
    with pytest.raises(PipelineFailedError) as info:
        asyncio.run(graph.run(make_ctx()))
    record = asyncio.run(store.get_run(info.value.results.run_id))
    store.close()
    assert record is not None
    return info.value, record


class TestTheCategoryDecidesTheWords:
    def test_a_timeout_subclass_is_a_timeout_in_every_view(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A ``StageTimeoutError`` subclass reads ``timed out`` in ``timeline()``, ``runs show``, the runs
        list and the report: the views go by the category, not by the error's class name."""
        path = tmp_path / "runs.db"
        error, record = failed_and_stored(path, "llm", llm_times_out, StageKind.AGENT)
        note = "timed out: stage 'llm' timed out after 0.5 s"
        assert note_of(stage_line(error.results.timeline(color=False), "llm")) == note
        shown = cli(capsys, "runs", "show", str(path), record.run_id, "--color", "never")
        assert shown.splitlines()[0].endswith(
            " · failed (timeout) in " + shown.splitlines()[0].split(" in ")[-1]
        )
        assert note_of(stage_line(shown, "llm")) == note
        assert cli(capsys, "runs", "list", str(path)).splitlines()[1].split()[2:4] == ["failed", "timeout"]
        page = render_report([record])
        assert "✗ timed out</text>" in page
        assert 'timed out: <span class="message">stage &#x27;llm&#x27; timed out after 0.5 s</span>' in page

    def test_a_nested_error_class_is_named_alike(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``timeline()`` names an error by its qualified name, as the store, ``runs show`` and events do."""
        path = tmp_path / "runs.db"
        error, record = failed_and_stored(path, "q", over_quota, StageKind.WORK)
        note = "error: Client.QuotaError: quota exceeded"
        assert note_of(stage_line(error.results.timeline(color=False), "q")) == note
        assert note_of(stage_line(cli(capsys, "runs", "show", str(path), record.run_id), "q")) == note


class TestStagesThatNeverStarted:
    def failed(self) -> RunRecord:
        return RunRecord(
            "r1",
            "p",
            "failed",
            T0,
            T0 + 0.2,
            (StageRecord("a", "work", "fail", T0, T0 + 0.2, 0.0, 1, "boom", "ValueError", category="error"),),
            ("a",),
            "a: ValueError: boom",
            category="error",
            not_started=("b", "c"),
        )

    def test_runs_show_lists_them_last(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """``runs show`` draws a stored run's stages that never started last, as ``timeline()`` does."""
        path = tmp_path / "runs.db"
        store = SQLiteRunStore(path)
        asyncio.run(store.record_run(self.failed()))
        store.close()
        lines = cli(capsys, "runs", "show", str(path), "r1", "--color", "never", "--width", "10").splitlines()
        assert lines[2:5] == [
            "  * a      ✗✗✗✗✗✗✗✗✗✗    0.0 ms  200.0 ms  error: ValueError: boom",
            "    b                                      not started",
            "    c                                      not started",
        ]

    def test_the_report_draws_and_lists_them(self) -> None:
        """The report's Gantt chart has a row for each stage that never started, and its list names them."""
        page = render_report([self.failed()])
        assert re.findall(r'<text class="not-started"[^>]*>([^<]*)</text>', page) == ["not started"] * 2
        assert re.findall(r'<li data-stage="(\w)">', page) == ["a", "b", "c"]

    def test_an_older_record_without_them_lists_none(self) -> None:
        """A record made without ``not_started`` draws only the stages it holds."""
        page = render_report([replace(self.failed(), not_started=())])
        assert 'class="not-started"' not in page
